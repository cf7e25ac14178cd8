//! `GNTTABOP_cache_flush`: cache maintenance by machine address, for memory
//! the guest cannot (or must not) reach through its own mapping.
//!
//! Facts this is built on (xen-abi.md section 3.1, platform.md):
//! - one entry covers at most one 4 KiB page (`offset + length <= 4096`),
//!   otherwise Xen returns `-EINVAL`;
//! - the address is a *machine* address, meaningful only where
//!   guest-physical equals machine-physical (dom0, direct-mapped domUs);
//! - several entries may go in one call (`count > 1`), but Xen stops at the
//!   first failing entry and reports only its errno, not which entry failed;
//! - Xen 4.17 refuses pages owned by no domain, such as a static no-map
//!   `shared-dma-pool`, with `-EPERM`: that result must reach the caller;
//! - `length == 0` or `op == 0` returns 0: the availability probe.
//!
//! An invalidate discards dirty lines, and every operation acts on whatever
//! memory the machine address names, so a flush that names memory takes a
//! [`CacheFlushTarget`], which only the memory's owner makes (in `unsafe`).
//! The hypercall's entries ride in [`CacheFlushEntries`], which only this
//! module builds: from a target, or the probe that names no memory.

use core::fmt;

use tidepool_mm::CacheOp;

use crate::error::{XenErrno, XenError, XenOp};
use crate::hypercall::{Hypercall, Hypervisor};

/// `GNTTABOP_cache_flush`.
pub const GNTTABOP_cache_flush: u32 = 12;
/// `GNTTAB_CACHE_CLEAN`: write dirty lines back to the point of coherency.
pub const GNTTAB_CACHE_CLEAN: u32 = 1 << 0;
/// `GNTTAB_CACHE_INVAL`: invalidate lines (Xen cleans partial lines first).
pub const GNTTAB_CACHE_INVAL: u32 = 1 << 1;

/// The page size Xen's entries are bounded by.
pub const XEN_PAGE_SIZE: u64 = 4096;

/// Entries issued per hypercall: 128 pages, 512 KiB, more than the largest
/// DMA mapping the kernel makes (a 256 KiB block request with its header
/// and status). Longer ranges are issued as several batches. Xen sets no
/// limit: it preempts long batches with a continuation.
pub const CACHE_FLUSH_MAX_BATCH: usize = 128;

/// `struct gnttab_cache_flush` (the `a` union used as `dev_bus_addr`; the
/// grant-reference source, `GNTTAB_CACHE_SOURCE_GREF`, is unimplemented in
/// Xen).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct GnttabCacheFlush {
    /// Machine address of the page (its low 12 bits are ignored).
    pub dev_bus_addr: u64,
    /// Byte offset of the range in the page.
    pub offset: u16,
    /// Length of the range; `offset + length <= 4096`.
    pub length: u16,
    /// `GNTTAB_CACHE_*`.
    pub op: u32,
}

crate::assert_layout!(GnttabCacheFlush, size 16, align 8,
    dev_bus_addr @ 0, offset @ 8, length @ 10, op @ 12);

impl GnttabCacheFlush {
    /// The availability probe: `length == 0` and `op == 0`, which Xen
    /// accepts without touching memory.
    pub const PROBE: GnttabCacheFlush = GnttabCacheFlush {
        dev_bus_addr: 0,
        offset: 0,
        length: 0,
        op: 0,
    };

    /// Address of the entry's first byte.
    pub const fn start(&self) -> u64 {
        (self.dev_bus_addr & !(XEN_PAGE_SIZE - 1)) + self.offset as u64
    }
}

/// The entries of one `GNTTABOP_cache_flush`
/// ([`Hypercall::GrantCacheFlush`]): built only here, from a
/// [`CacheFlushTarget`] or as the probe, so safe code cannot put an address
/// of its choice in one.
///
/// ```compile_fail,E0308
/// // Raw entries are not a flush request.
/// use tidepool_xen_abi::{GnttabCacheFlush, Hypercall, Hypervisor};
/// fn invalidate<H: Hypervisor>(xen: &mut H) {
///     let entry = GnttabCacheFlush { dev_bus_addr: 0x4000_0000, offset: 0, length: 4096, op: 2 };
///     xen.call(Hypercall::GrantCacheFlush(&[entry]));
/// }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct CacheFlushEntries<'a>(pub(crate) &'a [GnttabCacheFlush]);

impl<'a> CacheFlushEntries<'a> {
    /// The entries, for a hypervisor that emulates the call.
    pub const fn entries(&self) -> &'a [GnttabCacheFlush] {
        self.0
    }
}

/// A range of machine addresses its owner lets Xen apply one cache
/// operation to, for [`cache_flush_range`]. Only
/// [`CacheFlushTarget::new`], the owner's promise, makes one.
///
/// ```compile_fail,E0133
/// // Asking Xen to invalidate memory is the owner's promise.
/// use tidepool_mm::CacheOp;
/// use tidepool_xen_abi::CacheFlushTarget;
/// let target = CacheFlushTarget::new(0x4000_0000, 0x1000, CacheOp::Invalidate);
/// ```
#[derive(PartialEq, Eq, Debug)]
pub struct CacheFlushTarget {
    start: u64,
    len: u64,
    op: CacheOp,
}

impl CacheFlushTarget {
    /// `op` on the `len` bytes from machine address `start`.
    ///
    /// # Safety
    ///
    /// The range is this domain's own memory named by machine address:
    /// the domain is direct-mapped (dom0, or a direct-mapped domU), so its
    /// guest-physical addresses are machine addresses. With
    /// [`CacheOp::Invalidate`] the caller also owns every byte of the range
    /// for the call: Xen discards the dirty lines wholly inside it (it
    /// cleans partial lines first). `Clean` and `CleanInvalidate` lose no
    /// data.
    #[allow(unsafe_code)] // Declares the contract above; no unsafe operation.
    pub const unsafe fn new(start: u64, len: u64, op: CacheOp) -> Self {
        Self { start, len, op }
    }
}

/// The `GNTTAB_CACHE_*` bits of `op`.
pub const fn gnttab_cache_bits(op: CacheOp) -> u32 {
    match op {
        CacheOp::Clean => GNTTAB_CACHE_CLEAN,
        CacheOp::Invalidate => GNTTAB_CACHE_INVAL,
        CacheOp::CleanInvalidate => GNTTAB_CACHE_CLEAN | GNTTAB_CACHE_INVAL,
    }
}

/// The buffer a flush builds its batches in, owned by the caller so that the
/// I/O path never allocates (1 KiB).
#[derive(Clone, Debug)]
pub struct CacheFlushBatch {
    entries: [GnttabCacheFlush; CACHE_FLUSH_MAX_BATCH],
}

impl CacheFlushBatch {
    /// An empty batch buffer.
    pub const fn new() -> Self {
        Self {
            entries: [GnttabCacheFlush::PROBE; CACHE_FLUSH_MAX_BATCH],
        }
    }
}

impl Default for CacheFlushBatch {
    fn default() -> Self {
        Self::new()
    }
}

/// A successful flush.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CacheFlushDone {
    /// 4 KiB pages the range touches (all flushed).
    pub pages: u64,
    /// Hypercalls issued.
    pub hypercalls: u32,
}

/// Xen refused part of a flush. Pages are numbered from the page holding the
/// range's first byte; pages `0..pages_done` are known flushed, page
/// `pages_done` (at `failed_page`) failed, later pages were not flushed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CacheFlushRefusal {
    /// First byte of the range.
    pub start: u64,
    /// Length of the range in bytes.
    pub len: u64,
    /// The operation.
    pub op: CacheOp,
    /// What Xen returned for the failing page.
    pub errno: XenErrno,
    /// 4 KiB pages the range touches.
    pub pages_total: u64,
    /// Pages at the start of the range known to be flushed.
    pub pages_done: u64,
    /// Address of the (4 KiB-aligned) page Xen refused.
    pub failed_page: u64,
    /// Hypercalls issued, including those that located the failing page.
    pub hypercalls: u32,
}

/// A cache flush that did not complete.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CacheFlushError {
    /// `start + len` overflows the address space; nothing was issued.
    RangeOverflow {
        /// First byte of the range.
        start: u64,
        /// Length of the range.
        len: u64,
    },
    /// Xen refused a page.
    Refused(CacheFlushRefusal),
}

impl CacheFlushError {
    /// Hypercalls issued before the flush stopped.
    pub const fn hypercalls(&self) -> u32 {
        match self {
            Self::RangeOverflow { .. } => 0,
            Self::Refused(refusal) => refusal.hypercalls,
        }
    }

    /// What Xen returned, if it refused a page.
    pub const fn errno(&self) -> Option<XenErrno> {
        match self {
            Self::RangeOverflow { .. } => None,
            Self::Refused(refusal) => Some(refusal.errno),
        }
    }
}

impl fmt::Display for CacheFlushRefusal {
    /// `cache_flush 0x78000000+0x3000: EPERM (-1) at page 0x78000000, 0 of 3
    /// pages known done (clean, 2 hypercalls)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cache_flush {:#x}+{:#x}: {} at page {:#x}, {} of {} pages known done ({}, {} hypercalls)",
            self.start,
            self.len,
            self.errno,
            self.failed_page,
            self.pages_done,
            self.pages_total,
            self.op,
            self.hypercalls
        )
    }
}

impl fmt::Display for CacheFlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RangeOverflow { start, len } => {
                write!(
                    f,
                    "cache_flush {start:#x}+{len:#x}: range overflows the address space"
                )
            }
            Self::Refused(refusal) => refusal.fmt(f),
        }
    }
}

/// Splits `[start, end)` into per-page entries: the first at its offset in
/// its page, none crossing a 4 KiB boundary.
struct PageEntries {
    next: u64,
    end: u64,
    op: u32,
}

impl Iterator for PageEntries {
    type Item = GnttabCacheFlush;

    fn next(&mut self) -> Option<GnttabCacheFlush> {
        if self.next >= self.end {
            return None;
        }
        let page = self.next & !(XEN_PAGE_SIZE - 1);
        let offset = self.next - page;
        let length = (XEN_PAGE_SIZE - offset).min(self.end - self.next);
        self.next += length;
        // offset < 4096 and length <= 4096: both fit u16.
        Some(GnttabCacheFlush {
            dev_bus_addr: page,
            offset: offset as u16,
            length: length as u16,
            op: self.op,
        })
    }
}

/// Applies the target's operation to its range.
///
/// Pages go to Xen in batches of up to [`CACHE_FLUSH_MAX_BATCH`] entries,
/// one hypercall per batch. When a batch fails, Xen has flushed an unknown
/// prefix of it; its entries are then re-issued one per hypercall (flushes
/// are idempotent) to find the exact page that fails and its errno. If every
/// entry then succeeds, the batch counts as done and the flush continues.
/// A zero-length range issues nothing.
///
/// ```compile_fail,E0061
/// // An address range is not a target: only its owner makes one.
/// use tidepool_xen_abi::{CacheFlushBatch, Hypervisor, cache_flush_range};
/// use tidepool_mm::CacheOp;
/// fn invalidate<H: Hypervisor>(xen: &mut H, batch: &mut CacheFlushBatch) {
///     let _ = cache_flush_range(xen, batch, 0x4000_0000, 0x1000, CacheOp::Invalidate);
/// }
/// ```
pub fn cache_flush_range<H: Hypervisor + ?Sized>(
    hypervisor: &mut H,
    batch: &mut CacheFlushBatch,
    target: &CacheFlushTarget,
) -> Result<CacheFlushDone, CacheFlushError> {
    let CacheFlushTarget { start, len, op } = *target;
    if len == 0 {
        return Ok(CacheFlushDone {
            pages: 0,
            hypercalls: 0,
        });
    }
    let end = start
        .checked_add(len)
        .ok_or(CacheFlushError::RangeOverflow { start, len })?;
    let pages_total = ((end - 1) / XEN_PAGE_SIZE) - (start / XEN_PAGE_SIZE) + 1;
    let mut entries = PageEntries {
        next: start,
        end,
        op: gnttab_cache_bits(op),
    };
    let mut pages_done = 0u64;
    let mut hypercalls = 0u32;
    let refused = |errno, pages_done, failed: &GnttabCacheFlush, hypercalls| {
        CacheFlushError::Refused(CacheFlushRefusal {
            start,
            len,
            op,
            errno,
            pages_total,
            pages_done,
            failed_page: failed.dev_bus_addr,
            hypercalls,
        })
    };
    loop {
        let mut count = 0;
        for (slot, entry) in batch.entries.iter_mut().zip(&mut entries) {
            *slot = entry;
            count += 1;
        }
        if count == 0 {
            return Ok(CacheFlushDone {
                pages: pages_total,
                hypercalls,
            });
        }
        let issued = &batch.entries[..count];
        hypercalls = hypercalls.saturating_add(1);
        if let Err(errno) = flush_entries(hypervisor, issued) {
            if count == 1 {
                return Err(refused(errno, pages_done, &issued[0], hypercalls));
            }
            for (index, entry) in issued.iter().enumerate() {
                hypercalls = hypercalls.saturating_add(1);
                if let Err(errno) = flush_entries(hypervisor, core::slice::from_ref(entry)) {
                    let done = pages_done + index as u64;
                    return Err(refused(errno, done, entry, hypercalls));
                }
            }
        }
        pages_done += count as u64;
    }
}

fn flush_entries<H: Hypervisor + ?Sized>(
    hypervisor: &mut H,
    entries: &[GnttabCacheFlush],
) -> Result<(), XenErrno> {
    let entries = CacheFlushEntries(entries);
    XenErrno::check(hypervisor.call(Hypercall::GrantCacheFlush(entries))).map(|_| ())
}

/// Whether Xen implements `GNTTABOP_cache_flush`: `Ok(false)` on `-ENOSYS`
/// (as Linux's probe decides), an error for any other refusal. The probe
/// names no memory.
pub fn cache_flush_available<H: Hypervisor + ?Sized>(hypervisor: &mut H) -> Result<bool, XenError> {
    match flush_entries(hypervisor, &[GnttabCacheFlush::PROBE]) {
        Ok(()) => Ok(true),
        Err(XenErrno::ENOSYS) => Ok(false),
        Err(errno) => Err(XenError::errno(XenOp::GrantCacheFlush, errno)),
    }
}

#[cfg(test)]
#[allow(unsafe_code)] // Fakes implement `Hypervisor`; they touch no memory.
mod tests {
    use super::*;

    /// A fake Xen that records each cache_flush batch and refuses listed
    /// pages the way Xen does: entries before the first refused one are
    /// done, the rest of the batch is abandoned.
    #[derive(Default)]
    struct FakeXen {
        refuse: Vec<(u64, XenErrno)>,
        calls: Vec<Vec<GnttabCacheFlush>>,
        flushed: Vec<u64>,
    }

    // SAFETY: a fake: it emulates the call on the borrowed entries only.

    unsafe impl Hypervisor for FakeXen {
        fn call(&mut self, call: Hypercall<'_>) -> i64 {
            let Hypercall::GrantCacheFlush(entries) = call else {
                panic!("unexpected hypercall {:?}", call.op());
            };
            let entries = entries.entries();
            self.calls.push(entries.to_vec());
            for entry in entries {
                assert!(u32::from(entry.offset) + u32::from(entry.length) <= 4096);
                assert_eq!(entry.dev_bus_addr % XEN_PAGE_SIZE, 0);
                if entry.length == 0 || entry.op == 0 {
                    continue;
                }
                if let Some(&(_, errno)) = self
                    .refuse
                    .iter()
                    .find(|(page, _)| *page == entry.dev_bus_addr)
                {
                    return -errno.code();
                }
                self.flushed.push(entry.dev_bus_addr);
            }
            0
        }
    }

    fn entry(page: u64, offset: u16, length: u16, op: u32) -> GnttabCacheFlush {
        GnttabCacheFlush {
            dev_bus_addr: page,
            offset,
            length,
            op,
        }
    }

    fn flush(
        xen: &mut FakeXen,
        start: u64,
        len: u64,
        op: CacheOp,
    ) -> Result<CacheFlushDone, CacheFlushError> {
        cache_flush_range(xen, &mut CacheFlushBatch::new(), &target(start, len, op))
    }

    /// A target (the fakes flush nothing real).
    fn target(start: u64, len: u64, op: CacheOp) -> CacheFlushTarget {
        CacheFlushTarget { start, len, op }
    }

    #[test]
    fn op_bits() {
        use CacheOp::*;
        assert_eq!(
            (
                gnttab_cache_bits(Clean),
                gnttab_cache_bits(Invalidate),
                gnttab_cache_bits(CleanInvalidate)
            ),
            (1, 2, 3)
        );
    }

    #[test]
    fn unaligned_range_splits_at_pages() {
        let mut xen = FakeXen::default();
        let done = flush(&mut xen, 0x4000_0f00, 0x1100, CacheOp::Clean).unwrap();
        assert_eq!(
            done,
            CacheFlushDone {
                pages: 2,
                hypercalls: 1
            }
        );
        assert_eq!(
            xen.calls,
            [vec![
                entry(0x4000_0000, 0xf00, 0x100, 1),
                entry(0x4000_1000, 0, 0x1000, 1)
            ]]
        );
        assert_eq!(xen.calls[0][0].start(), 0x4000_0f00);
    }

    #[test]
    fn unaligned_start_and_end_within_three_pages() {
        let mut xen = FakeXen::default();
        let done = flush(&mut xen, 0x1010, 0x2000, CacheOp::Invalidate).unwrap();
        assert_eq!(done.pages, 3);
        assert_eq!(
            xen.calls,
            [vec![
                entry(0x1000, 0x10, 0xff0, 2),
                entry(0x2000, 0, 0x1000, 2),
                entry(0x3000, 0, 0x10, 2)
            ]]
        );
    }

    #[test]
    fn exactly_one_page() {
        let mut xen = FakeXen::default();
        let done = flush(&mut xen, 0x7000, 0x1000, CacheOp::CleanInvalidate).unwrap();
        assert_eq!(
            done,
            CacheFlushDone {
                pages: 1,
                hypercalls: 1
            }
        );
        assert_eq!(xen.calls, [vec![entry(0x7000, 0, 0x1000, 3)]]);
    }

    #[test]
    fn sub_page_range_and_range_near_the_top() {
        let mut xen = FakeXen::default();
        flush(&mut xen, 0x7ffe, 1, CacheOp::Clean).unwrap();
        flush(&mut xen, u64::MAX - 0x1fff, 0x1000, CacheOp::Clean).unwrap();
        assert_eq!(
            xen.calls,
            [
                vec![entry(0x7000, 0xffe, 1, 1)],
                vec![entry(u64::MAX - 0x1fff, 0, 0x1000, 1)]
            ]
        );
    }

    #[test]
    fn zero_length_issues_nothing() {
        let mut xen = FakeXen::default();
        let done = flush(&mut xen, 0x1234, 0, CacheOp::Clean).unwrap();
        assert_eq!(
            done,
            CacheFlushDone {
                pages: 0,
                hypercalls: 0
            }
        );
        assert!(xen.calls.is_empty());
    }

    #[test]
    fn overflowing_range_is_refused_before_any_hypercall() {
        let mut xen = FakeXen::default();
        let err = flush(&mut xen, u64::MAX - 10, 100, CacheOp::Clean).unwrap_err();
        assert_eq!(
            err,
            CacheFlushError::RangeOverflow {
                start: u64::MAX - 10,
                len: 100
            }
        );
        assert_eq!((err.hypercalls(), err.errno()), (0, None));
        assert!(xen.calls.is_empty());
    }

    #[test]
    fn long_range_goes_in_full_batches() {
        let mut xen = FakeXen::default();
        let pages = 2 * CACHE_FLUSH_MAX_BATCH as u64 + 5;
        let done = flush(&mut xen, 0x8000_0000, pages * 4096, CacheOp::Clean).unwrap();
        assert_eq!(
            done,
            CacheFlushDone {
                pages,
                hypercalls: 3
            }
        );
        let sizes: Vec<_> = xen.calls.iter().map(Vec::len).collect();
        let full = CACHE_FLUSH_MAX_BATCH;
        assert_eq!(sizes, [full, full, 5]);
        let flushed: Vec<u64> = (0..pages).map(|i| 0x8000_0000 + i * 4096).collect();
        assert_eq!(xen.flushed, flushed);
    }

    #[test]
    fn failing_entry_is_located_by_single_retries() {
        let mut xen = FakeXen::default();
        // Page 3 of a 6-page range fails.
        xen.refuse.push((0x5000_3000, XenErrno::EPERM));
        let err = flush(&mut xen, 0x5000_0000, 0x6000, CacheOp::Clean).unwrap_err();
        let CacheFlushError::Refused(refusal) = err else {
            panic!("{err}")
        };
        assert_eq!(refusal.errno, XenErrno::EPERM);
        assert_eq!(refusal.pages_total, 6);
        assert_eq!(refusal.pages_done, 3);
        assert_eq!(refusal.failed_page, 0x5000_3000);
        // One batch, then entries 0..=3 one at a time.
        assert_eq!(refusal.hypercalls, 5);
        assert_eq!((err.hypercalls(), err.errno()), (5, Some(XenErrno::EPERM)));
        let counts: Vec<_> = xen.calls.iter().map(Vec::len).collect();
        assert_eq!(counts, [6, 1, 1, 1, 1]);
        assert_eq!(
            err.to_string(),
            "cache_flush 0x50000000+0x6000: EPERM (-1) at page 0x50003000, \
             3 of 6 pages known done (clean, 5 hypercalls)"
        );
    }

    #[test]
    fn pool_page_refused_on_the_first_entry() {
        // The measured Xen 4.17 case: every page of a static no-map pool is
        // owned by no domain and refused with EPERM.
        let mut xen = FakeXen::default();
        for page in 0..3 {
            xen.refuse
                .push((0x7800_0000 + page * 4096, XenErrno::EPERM));
        }
        let err = flush(&mut xen, 0x7800_0000, 0x3000, CacheOp::Clean).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cache_flush 0x78000000+0x3000: EPERM (-1) at page 0x78000000, \
             0 of 3 pages known done (clean, 2 hypercalls)"
        );
        let CacheFlushError::Refused(refusal) = err else {
            panic!("{err}")
        };
        assert_eq!((refusal.pages_done, refusal.failed_page), (0, 0x7800_0000));
        assert!(xen.flushed.is_empty());
    }

    #[test]
    fn single_entry_batch_needs_no_retry() {
        let mut xen = FakeXen::default();
        xen.refuse.push((0x9000, XenErrno::EINVAL));
        let err = flush(&mut xen, 0x9800, 0x100, CacheOp::Invalidate).unwrap_err();
        let CacheFlushError::Refused(refusal) = err else {
            panic!("{err}")
        };
        assert_eq!(
            (refusal.hypercalls, refusal.pages_done, refusal.failed_page),
            (1, 0, 0x9000)
        );
        assert_eq!(refusal.errno, XenErrno::EINVAL);
    }

    #[test]
    fn failure_in_a_later_batch_counts_earlier_batches_as_done() {
        let mut xen = FakeXen::default();
        let full = CACHE_FLUSH_MAX_BATCH as u64;
        let failing = 0x1_0000_0000 + (full + 6) * 4096;
        xen.refuse.push((failing, XenErrno::EPERM));
        let err = flush(&mut xen, 0x1_0000_0000, (full + 36) * 4096, CacheOp::Clean).unwrap_err();
        let CacheFlushError::Refused(refusal) = err else {
            panic!("{err}")
        };
        assert_eq!(refusal.pages_done, full + 6);
        assert_eq!(refusal.pages_total, full + 36);
        assert_eq!(refusal.failed_page, failing);
        // Batch 1 (full), batch 2 (36) fails, then its entries 0..=6 singly.
        assert_eq!(refusal.hypercalls, 2 + 7);
    }

    /// Fails the first batch it sees (as a transient fault would) and then
    /// behaves.
    struct FailOnce {
        failed: bool,
        counts: Vec<usize>,
    }

    // SAFETY: a fake: it emulates the call on the borrowed entries only.

    unsafe impl Hypervisor for FailOnce {
        fn call(&mut self, call: Hypercall<'_>) -> i64 {
            let Hypercall::GrantCacheFlush(entries) = call else {
                panic!("unexpected call")
            };
            let entries = entries.entries();
            self.counts.push(entries.len());
            if self.failed {
                0
            } else {
                self.failed = true;
                -XenErrno::EFAULT.code()
            }
        }
    }

    #[test]
    fn batch_failure_not_reproduced_singly_completes() {
        let mut xen = FailOnce {
            failed: false,
            counts: Vec::new(),
        };
        let mut batch = CacheFlushBatch::new();
        let done = cache_flush_range(&mut xen, &mut batch, &target(0, 0x3000, CacheOp::Clean));
        assert_eq!(
            done,
            Ok(CacheFlushDone {
                pages: 3,
                hypercalls: 4
            })
        );
        assert_eq!(xen.counts, [3, 1, 1, 1]);
    }

    struct Probe(i64, Vec<GnttabCacheFlush>);

    // SAFETY: a fake: it emulates the call on the borrowed entries only.

    unsafe impl Hypervisor for Probe {
        fn call(&mut self, call: Hypercall<'_>) -> i64 {
            let Hypercall::GrantCacheFlush(entries) = call else {
                panic!("unexpected call")
            };
            let entries = entries.entries();
            self.1.extend_from_slice(entries);
            self.0
        }
    }

    #[test]
    fn probe_distinguishes_enosys() {
        let mut xen = Probe(0, Vec::new());
        assert_eq!(cache_flush_available(&mut xen), Ok(true));
        assert_eq!(xen.1, [GnttabCacheFlush::PROBE]);
        assert_eq!(
            cache_flush_available(&mut Probe(-38, Vec::new())),
            Ok(false)
        );
        assert_eq!(
            cache_flush_available(&mut Probe(-22, Vec::new())),
            Err(XenError::errno(XenOp::GrantCacheFlush, XenErrno::EINVAL))
        );
    }
}
