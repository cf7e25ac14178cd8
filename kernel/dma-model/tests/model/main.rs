//! The real DMA layer on the cache model (`tidepool-dma-model`): property
//! tests for every row of the policy table and every direction (`rows`), and
//! one named test per maintenance operation (`omissions`), and a grant
//! device against another domain's CPU (`grants`).

mod grants;
mod omissions;
mod rows;
mod world;
