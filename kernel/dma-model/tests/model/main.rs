//! The real DMA layer on the cache model (`tidepool-dma-model`): property
//! tests for every row of the policy table and every direction (`rows`), and
//! one named test per maintenance operation (`omissions`).

mod omissions;
mod rows;
mod world;
