//! Grant devices: the pages of a device's pool buffers granted to another
//! domain, persistently (see [`Addressing::Grant`]).

use alloc::vec::Vec;
use core::fmt;

use tidepool_mm::{PAGE_SIZE, PhysAddr, PhysRange};
use tidepool_xen_abi::{DomId, Grant, GrantAccess};

use super::{DmaDevice, DmaEnv};
use crate::boundary::OwnedPhysRange;
use crate::error::DmaError;
use crate::pool::PoolId;

/// How a device reaches the memory it is given: the kind of its addresses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Addressing {
    /// By bus address ([`DmaAddr`](crate::DmaAddr)): a bus master of this machine.
    Bus,
    /// By grant reference, page by page: the "device" is another domain
    /// (a Xen PV back end), which maps each page through this domain's
    /// grant table ([`PageGrants`](crate::PageGrants)). Its memory comes from its own pool:
    /// pool buffers are granted page by page at the first map that covers
    /// the page and stay granted until freed (persistent grants, Linux's
    /// model: a later map of a granted page is a reuse, not a new grant);
    /// coherent memory (a ring) is granted whole when it is allocated. It is
    /// coherent whatever the device tree says ([`snoops_cpu_caches`](crate::snoops_cpu_caches)).
    Grant {
        /// The domain the pages are granted to.
        domid: DomId,
    },
}

impl fmt::Display for Addressing {
    /// `phys` (bus addresses are physical) or `grant(d0)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bus => f.write_str("phys"),
            Self::Grant { domid } => write!(f, "grant({domid})"),
        }
    }
}

impl<'a> DmaDevice<'a> {
    /// Ends every grant of `grants` (a buffer's, over `block`); the first
    /// one not ended, and how many, make the error.
    pub(super) fn end_grants(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        block: PhysRange,
        grants: Vec<Option<Grant>>,
    ) -> Result<(), DmaError<'a>> {
        let device = self.name;
        let Addressing::Grant { domid } = self.addressing else {
            return Ok(());
        };
        let mut grants = grants.into_iter().flatten().peekable();
        if grants.peek().is_none() {
            return Ok(());
        }
        let Some(table) = env.grants.as_deref_mut() else {
            // Nothing can end them: the grants stay, and so do the pages.
            self.stats.grants_leaked += grants.count() as u64;
            return Err(DmaError::NoGrantTable { device });
        };
        let mut first = None;
        let mut count = 0;
        for grant in grants {
            match table.end(grant) {
                Ok(()) => self.stats.grants_ended += 1,
                Err(not_ended) => {
                    // The grant stays valid for good: its page is never
                    // freed, so the other domain can never reach another
                    // owner's data through it.
                    first.get_or_insert((not_ended.grant.gref(), not_ended.error));
                    count += 1;
                }
            }
        }
        self.stats.grants_leaked += count as u64;
        match first {
            None => Ok(()),
            Some((gref, error)) => Err(DmaError::GrantsStillMapped {
                device,
                domid,
                gref,
                error,
                count,
                leaked: block,
            }),
        }
    }

    /// Grants a grant device every page of `grants` (a buffer over `block`)
    /// among the first `len` bytes that is not granted yet, and counts the
    /// others as reused. On a refusal the pages granted so far stay granted
    /// to the buffer.
    pub(super) fn grant_pages(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        block: PhysRange,
        grants: &mut [Option<Grant>],
        len: u64,
    ) -> Result<(), DmaError<'a>> {
        let device = self.name;
        let Addressing::Grant { domid } = self.addressing else {
            return Ok(());
        };
        let table = env
            .grants
            .as_deref_mut()
            .ok_or(DmaError::NoGrantTable { device })?;
        let pages = len.div_ceil(PAGE_SIZE) as usize;
        let mut made = 0;
        for (index, slot) in grants.iter_mut().take(pages).enumerate() {
            if slot.is_some() {
                continue;
            }
            let page = PhysRange {
                base: PhysAddr(block.base.0 + index as u64 * PAGE_SIZE),
                size: PAGE_SIZE,
            };
            // Read-write whatever the direction: a persistent grant serves
            // every later request, and Linux's blkback maps persistent grants
            // read-write (a read-only grant fails that map).
            let grant = table
                .grant(domid, &OwnedPhysRange::new(page), GrantAccess::ReadWrite)
                .map_err(|error| DmaError::GrantRefused {
                    device,
                    domid,
                    phys: page.base,
                    error,
                })?;
            *slot = Some(grant);
            made += 1;
            self.stats.grants_made += 1;
        }
        self.stats.grants_reused += (pages - made) as u64;
        Ok(())
    }

    /// Grants a grant device every page of `block`, a coherent allocation
    /// of `pool` (see [`DmaDevice::alloc_coherent`]); nothing for a bus
    /// device. On a refusal the grants made are ended and the block freed
    /// (left allocated for good if a grant could not be ended, which
    /// `grants_leaked` counts), and the refusal is returned.
    pub(super) fn grant_coherent(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        pool: PoolId,
        block: PhysRange,
    ) -> Result<Vec<Option<Grant>>, DmaError<'a>> {
        let mut grants = self.no_grants_yet(block);
        match self.grant_pages(env, block, &mut grants, block.size) {
            Ok(()) => Ok(grants),
            Err(refused) => {
                // The refusal is the cause; a grant not ended is counted.
                let _ = self.release_block(env, pool, block, grants);
                Err(refused)
            }
        }
    }

    /// The page grants of a new allocation `block`, none made yet: a slot
    /// per page for a grant device, nothing for a bus device.
    pub(super) fn no_grants_yet(&self, block: PhysRange) -> Vec<Option<Grant>> {
        match self.addressing {
            Addressing::Bus => Vec::new(),
            Addressing::Grant { .. } => (0..block.size / PAGE_SIZE).map(|_| None).collect(),
        }
    }

    /// Refuses what only a bus device does (CPU buffers).
    pub(super) fn refuse_grant_device(&self) -> Result<(), DmaError<'a>> {
        match self.addressing {
            Addressing::Bus => Ok(()),
            Addressing::Grant { .. } => {
                Err(DmaError::GrantDeviceNeedsPoolBuffer { device: self.name })
            }
        }
    }
}
