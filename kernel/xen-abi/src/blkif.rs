//! PV block protocol messages (`xen/include/public/io/blkif.h`, arm64), and
//! the ring (one page, or `2^ring-page-order` pages) that carries them.
//!
//! Sector numbers are in 512-byte units whatever the disk's `sector-size`.

use crate::ring::{FrontRing, SharedRing, ring_slots};

/// `XENBUS_MAX_RING_GRANT_ORDER`: the largest ring order Linux's blkfront
/// and blkback use (16 pages), whatever a back end offers.
pub const BLKIF_MAX_RING_ORDER: u32 = 4;

/// `BLKIF_OP_READ`.
pub const BLKIF_OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`.
pub const BLKIF_OP_WRITE: u8 = 1;
/// `BLKIF_OP_WRITE_BARRIER`.
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// `BLKIF_OP_FLUSH_DISKCACHE`.
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// `BLKIF_OP_DISCARD`.
pub const BLKIF_OP_DISCARD: u8 = 5;
/// `BLKIF_OP_INDIRECT`.
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments of a direct request.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;

/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`: indirect pages of one request.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;

/// Segments one 4 KiB indirect page holds.
pub const BLKIF_SEGMENTS_PER_INDIRECT_PAGE: usize = 4096 / size_of::<BlkifRequestSegment>();

/// `BLKIF_RSP_OKAY`.
pub const BLKIF_RSP_OKAY: i16 = 0;
/// `BLKIF_RSP_ERROR`.
pub const BLKIF_RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_EOPNOTSUPP`.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;

/// `struct blkif_request_segment`: sectors `first_sect..=last_sect` of a
/// granted page.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BlkifRequestSegment {
    /// Grant reference of the page.
    pub gref: u32,
    /// First 512-byte sector of the page to transfer.
    pub first_sect: u8,
    /// Last 512-byte sector of the page to transfer (inclusive).
    pub last_sect: u8,
}

crate::assert_layout!(BlkifRequestSegment, size 8, align 4,
    gref @ 0, first_sect @ 4, last_sect @ 5);

/// `struct blkif_request`: a direct read or write.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BlkifRequest {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Segments used.
    pub nr_segments: u8,
    /// The virtual device (only for read and write).
    pub handle: u16,
    /// Guest cookie, echoed in the response.
    pub id: u64,
    /// First 512-byte sector on the disk.
    pub sector_number: u64,
    /// The segments.
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

crate::assert_layout!(BlkifRequest, size 112, align 8,
    operation @ 0, nr_segments @ 1, handle @ 2, id @ 8, sector_number @ 16, seg @ 24);

/// `struct blkif_request_indirect`: a read or write whose segments are in
/// granted indirect pages.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BlkifRequestIndirect {
    /// `BLKIF_OP_INDIRECT`.
    pub operation: u8,
    /// `BLKIF_OP_READ` or `BLKIF_OP_WRITE`.
    pub indirect_op: u8,
    /// Segments in the indirect pages.
    pub nr_segments: u16,
    /// Guest cookie, echoed in the response.
    pub id: u64,
    /// First 512-byte sector on the disk.
    pub sector_number: u64,
    /// The virtual device.
    pub handle: u16,
    /// Grants of the pages holding the segments.
    pub indirect_grefs: [u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
}

crate::assert_layout!(BlkifRequestIndirect, size 64, align 8,
    operation @ 0, indirect_op @ 1, nr_segments @ 2, id @ 8, sector_number @ 16, handle @ 24,
    indirect_grefs @ 28);

impl BlkifRequestIndirect {
    /// The request as the little-endian words of a ring slot (the rest of
    /// the slot is zero), following the offsets checked above.
    pub fn to_words(&self) -> [u64; BLKIF_SLOT_WORDS] {
        let mut words = [0u64; BLKIF_SLOT_WORDS];
        words[0] = u64::from(self.operation)
            | u64::from(self.indirect_op) << 8
            | u64::from(self.nr_segments) << 16;
        words[1] = self.id;
        words[2] = self.sector_number;
        let g = &self.indirect_grefs;
        words[3] = u64::from(self.handle) | u64::from(g[0]) << 32;
        for i in 0..3 {
            words[4 + i] = u64::from(g[1 + 2 * i]) | u64::from(g[2 + 2 * i]) << 32;
        }
        words[7] = u64::from(g[7]);
        words
    }
}

impl BlkifRequestSegment {
    /// The segment as one little-endian word (its 8 bytes, padding zero),
    /// as it sits in a request or an indirect page.
    pub fn to_word(&self) -> u64 {
        u64::from(self.gref) | u64::from(self.first_sect) << 32 | u64::from(self.last_sect) << 40
    }
}

/// `struct blkif_response`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct BlkifResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's `operation`.
    pub operation: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
}

crate::assert_layout!(BlkifResponse, size 16, align 8, id @ 0, operation @ 8, status @ 10);

/// 64-bit words in a ring slot (a request is the larger member).
pub const BLKIF_SLOT_WORDS: usize = size_of::<BlkifRequest>() / 8;

/// 64-bit words of a response.
pub const BLKIF_RESPONSE_WORDS: usize = size_of::<BlkifResponse>() / 8;

/// Slots of a block ring of `2^order` pages (`BLK_RING_SIZE`): 32 for one
/// page, doubling with each order.
pub const fn blkif_ring_slots(order: u32) -> usize {
    ring_slots(1 << order, size_of::<BlkifRequest>())
}

/// The shared area of a block ring of any size (`blkif_sring`).
pub type BlkifSharedRing = SharedRing<BLKIF_SLOT_WORDS>;

/// The front end of a block ring.
pub type BlkifFrontRing<'a> = FrontRing<'a, BLKIF_SLOT_WORDS>;

/// A one-page block ring, sized: what `blkif_sring` is in C.
type BlkifRingPage = SharedRing<
    BLKIF_SLOT_WORDS,
    [[core::sync::atomic::AtomicU64; BLKIF_SLOT_WORDS]; blkif_ring_slots(0)],
>;

crate::assert_layout!(BlkifRingPage, size 3648, align 8,
    req_prod @ 0, req_event @ 4, rsp_prod @ 8, rsp_event @ 12, pad @ 16, slots @ 64);

impl BlkifRequest {
    /// The request as the little-endian words of its ring slot, following
    /// the offsets checked above.
    pub fn to_words(&self) -> [u64; BLKIF_SLOT_WORDS] {
        let mut words = [0u64; BLKIF_SLOT_WORDS];
        words[0] = u64::from(self.operation)
            | u64::from(self.nr_segments) << 8
            | u64::from(self.handle) << 16;
        words[1] = self.id;
        words[2] = self.sector_number;
        for (word, seg) in words[3..].iter_mut().zip(&self.seg) {
            *word = seg.to_word();
        }
        words
    }
}

impl BlkifResponse {
    /// Decodes the little-endian words of a response slot.
    pub fn from_words(words: [u64; BLKIF_RESPONSE_WORDS]) -> Self {
        Self {
            id: words[0],
            operation: (words[1] & 0xff) as u8,
            status: ((words[1] >> 16) & 0xffff) as u16 as i16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::Ordering;

    /// The struct's bytes in memory (little-endian), built field by field
    /// from the checked offsets.
    fn request_bytes(req: &BlkifRequest) -> [u8; 112] {
        let mut bytes = [0u8; 112];
        bytes[0] = req.operation;
        bytes[1] = req.nr_segments;
        bytes[2..4].copy_from_slice(&req.handle.to_le_bytes());
        bytes[8..16].copy_from_slice(&req.id.to_le_bytes());
        bytes[16..24].copy_from_slice(&req.sector_number.to_le_bytes());
        for (i, seg) in req.seg.iter().enumerate() {
            let at = 24 + 8 * i;
            bytes[at..at + 4].copy_from_slice(&seg.gref.to_le_bytes());
            bytes[at + 4] = seg.first_sect;
            bytes[at + 5] = seg.last_sect;
        }
        bytes
    }

    #[test]
    fn ring_geometry_matches_blkif_h() {
        assert_eq!((BLKIF_SLOT_WORDS, BLKIF_RESPONSE_WORDS), (14, 2));
        // __CONST_RING_SIZE(blkif, XEN_PAGE_SIZE << order): (4096 << order
        // - 64) / 112 entries fit (36, 72, 145, 292, 584), rounded down to a
        // power of two.
        let slots: Vec<usize> = (0..=BLKIF_MAX_RING_ORDER).map(blkif_ring_slots).collect();
        assert_eq!(slots, [32, 64, 128, 256, 512]);
        for order in 0..=BLKIF_MAX_RING_ORDER {
            let bytes = 4096 << order;
            let used = 64 + blkif_ring_slots(order) * 112;
            // It fits its pages, and twice the slots would not.
            assert!(used <= bytes && used + blkif_ring_slots(order) * 112 > bytes);
        }
    }

    #[test]
    fn request_words_are_the_struct_layout() {
        let mut req = BlkifRequest {
            operation: BLKIF_OP_WRITE,
            nr_segments: 2,
            handle: 0x51a,
            id: 0x1122_3344_5566_7788,
            sector_number: 0x0abc_def0_1234,
            ..Default::default()
        };
        req.seg[0] = BlkifRequestSegment {
            gref: 8,
            first_sect: 0,
            last_sect: 7,
        };
        req.seg[10] = BlkifRequestSegment {
            gref: 0xdead_beef,
            first_sect: 3,
            last_sect: 4,
        };
        let words: Vec<u8> = req
            .to_words()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert_eq!(words, request_bytes(&req));
    }

    #[test]
    fn indirect_request_words_are_the_struct_layout() {
        let req = BlkifRequestIndirect {
            operation: BLKIF_OP_INDIRECT,
            indirect_op: BLKIF_OP_READ,
            nr_segments: 256,
            id: 0x0102_0304_0506_0708,
            sector_number: 0x1122,
            handle: 0xca00,
            indirect_grefs: [11, 12, 13, 14, 15, 16, 17, 0xffee_ddcc],
        };
        let mut want = [0u8; 112];
        want[0] = req.operation;
        want[1] = req.indirect_op;
        want[2..4].copy_from_slice(&req.nr_segments.to_le_bytes());
        want[8..16].copy_from_slice(&req.id.to_le_bytes());
        want[16..24].copy_from_slice(&req.sector_number.to_le_bytes());
        want[24..26].copy_from_slice(&req.handle.to_le_bytes());
        for (i, g) in req.indirect_grefs.iter().enumerate() {
            want[28 + 4 * i..32 + 4 * i].copy_from_slice(&g.to_le_bytes());
        }
        let got: Vec<u8> = req
            .to_words()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        assert_eq!(got, want);
        assert_eq!(BLKIF_SEGMENTS_PER_INDIRECT_PAGE, 512);
    }

    #[test]
    fn response_decodes_from_words() {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&42u64.to_le_bytes());
        bytes[8] = BLKIF_OP_READ;
        bytes[10..12].copy_from_slice(&BLKIF_RSP_EOPNOTSUPP.to_le_bytes());
        let words = [
            u64::from_le_bytes(bytes[..8].try_into().unwrap()),
            u64::from_le_bytes(bytes[8..].try_into().unwrap()),
        ];
        assert_eq!(
            BlkifResponse::from_words(words),
            BlkifResponse {
                id: 42,
                operation: BLKIF_OP_READ,
                status: BLKIF_RSP_EOPNOTSUPP
            }
        );
    }

    #[test]
    fn request_round_trip_through_the_ring() {
        let shared = BlkifRingPage::new();
        let mut ring = BlkifFrontRing::init(&shared).unwrap();
        let req = BlkifRequest {
            operation: BLKIF_OP_READ,
            id: 7,
            ..Default::default()
        };
        ring.put_request(&req.to_words()).unwrap();
        assert!(ring.push_requests());
        // The back end overwrites the slot with its response.
        shared.slots[0][0].store(7, Ordering::SeqCst);
        shared.slots[0][1].store(u64::from(BLKIF_RSP_ERROR as u16) << 16, Ordering::SeqCst);
        shared.rsp_prod.store(1, Ordering::SeqCst);
        let words = ring
            .take_response::<BLKIF_RESPONSE_WORDS>()
            .unwrap()
            .unwrap();
        let rsp = BlkifResponse::from_words(words);
        assert_eq!((rsp.id, rsp.status), (7, BLKIF_RSP_ERROR));
    }
}
