//! The generic Xen shared ring (`xen/include/public/io/ring.h`), front end.
//!
//! A shared ring is one page or several (`2^order` of them, virtually
//! contiguous, for back ends that offer `max-ring-page-order`): a 64-byte
//! header of free-running producer and event indices, then a power-of-two
//! number of slots, each a union of a request and a response, over the whole
//! area. The area is shared with another domain that may write it at any
//! time, so every slot is an array of `AtomicU64` words: requests are written
//! and responses copied out word by word (little-endian, the only byte order
//! Xen on Arm has), never referenced in place.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// Bytes before the first slot: four indices, `pvt` and `__pad[44]`.
pub const RING_HEADER_BYTES: usize = 64;

/// Bytes of a ring page (`XEN_PAGE_SIZE`: 4 KiB whatever the guest's page size).
pub const RING_PAGE_BYTES: usize = 4096;

/// Slots of a ring of `pages` 4 KiB pages whose slot is `slot_bytes` long:
/// as many as fit after the header, rounded down to a power of two, as
/// `__CONST_RING_SIZE(name, XEN_PAGE_SIZE * pages)` computes them.
pub const fn ring_slots(pages: usize, slot_bytes: usize) -> usize {
    let fit = (pages * RING_PAGE_BYTES).saturating_sub(RING_HEADER_BYTES) / slot_bytes;
    if fit == 0 { 0 } else { 1 << fit.ilog2() }
}

/// The shared area of a ring with slots of `WORDS` 64-bit words
/// (`struct *_sring`): the header, then `S`, the slots. A reference to the
/// unsized default (`&SharedRing<WORDS>`) carries the slot count, so one
/// type serves rings of every size; a sized `SharedRing<WORDS, [_; N]>`
/// (made with [`SharedRing::new`]) coerces to it.
#[repr(C)]
#[derive(Debug)]
pub struct SharedRing<const WORDS: usize, S: ?Sized = [[AtomicU64; WORDS]]> {
    /// Requests produced (free-running); written by the front end.
    pub req_prod: AtomicU32,
    /// Back end wants a notification when `req_prod` passes this.
    pub req_event: AtomicU32,
    /// Responses produced (free-running); written by the back end.
    pub rsp_prod: AtomicU32,
    /// Front end wants a notification when `rsp_prod` passes this.
    pub rsp_event: AtomicU32,
    /// The `pvt` union and `__pad[44]`.
    pub pad: [AtomicU32; 12],
    /// The slots.
    pub slots: S,
}

impl<const WORDS: usize, const SLOTS: usize> SharedRing<WORDS, [[AtomicU64; WORDS]; SLOTS]> {
    /// A ring of `SLOTS` slots in its initial state (`SHARED_RING_INIT`).
    pub const fn new() -> Self {
        Self {
            req_prod: AtomicU32::new(0),
            req_event: AtomicU32::new(1),
            rsp_prod: AtomicU32::new(0),
            rsp_event: AtomicU32::new(1),
            pad: [const { AtomicU32::new(0) }; 12],
            slots: [const { [const { AtomicU64::new(0) }; WORDS] }; SLOTS],
        }
    }
}

impl<const WORDS: usize, const SLOTS: usize> Default
    for SharedRing<WORDS, [[AtomicU64; WORDS]; SLOTS]>
{
    fn default() -> Self {
        Self::new()
    }
}

/// Errors of the front end of a ring.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RingError {
    /// A ring's slot count must be a power of two (and not zero) for its
    /// free-running indices to wrap onto the slots.
    BadSize {
        /// Slots in the area given.
        slots: usize,
    },
    /// Every slot holds a request without a response.
    Full {
        /// Slots in the ring.
        slots: usize,
    },
    /// The back end published more responses than there are requests
    /// outstanding: its `rsp_prod` cannot be trusted.
    ResponseOverflow {
        /// The back end's `rsp_prod`.
        rsp_prod: u32,
        /// Responses consumed so far.
        rsp_cons: u32,
        /// Requests produced so far.
        req_prod: u32,
    },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadSize { slots } => write!(f, "a ring of {slots} slots (not 2^n)"),
            Self::Full { slots } => write!(f, "ring full ({slots} requests outstanding)"),
            Self::ResponseOverflow {
                rsp_prod,
                rsp_cons,
                req_prod,
            } => write!(
                f,
                "back end overran the ring: rsp_prod {rsp_prod}, rsp_cons {rsp_cons}, \
                 req_prod {req_prod}"
            ),
        }
    }
}

/// The front end's private indices over a [`SharedRing`]
/// (`struct *_front_ring`).
#[derive(Debug)]
pub struct FrontRing<'a, const WORDS: usize> {
    shared: &'a SharedRing<WORDS>,
    req_prod_pvt: u32,
    rsp_cons: u32,
}

impl<'a, const WORDS: usize> FrontRing<'a, WORDS> {
    /// Resets `shared` (`SHARED_RING_INIT`) and attaches a front end to it
    /// (`FRONT_RING_INIT`). Call before the back end is given the pages'
    /// grant references.
    /// Its slot count must be a power of two (as [`ring_slots`] gives).
    pub fn init(shared: &'a SharedRing<WORDS>) -> Result<Self, RingError> {
        let slots = shared.slots.len();
        if !slots.is_power_of_two() || slots > 1 << 31 {
            return Err(RingError::BadSize { slots });
        }
        shared.req_prod.store(0, Ordering::Relaxed);
        shared.rsp_prod.store(0, Ordering::Relaxed);
        shared.req_event.store(1, Ordering::Relaxed);
        shared.rsp_event.store(1, Ordering::Relaxed);
        for word in &shared.pad {
            word.store(0, Ordering::Relaxed);
        }
        fence(Ordering::Release);
        Ok(Self {
            shared,
            req_prod_pvt: 0,
            rsp_cons: 0,
        })
    }

    /// Slots in the ring (`RING_SIZE`).
    pub fn size(&self) -> usize {
        self.shared.slots.len()
    }

    /// The slot a free-running index names.
    fn slot(&self, index: u32) -> &'a [AtomicU64; WORDS] {
        &self.shared.slots[index as usize & (self.size() - 1)]
    }

    /// Slots free for new requests (`RING_FREE_REQUESTS`).
    pub fn free_requests(&self) -> usize {
        self.size() - self.req_prod_pvt.wrapping_sub(self.rsp_cons) as usize
    }

    /// Writes a request into the next slot, privately: the back end sees it
    /// only after [`FrontRing::push_requests`].
    pub fn put_request(&mut self, request: &[u64; WORDS]) -> Result<(), RingError> {
        if self.free_requests() == 0 {
            return Err(RingError::Full { slots: self.size() });
        }
        let slot = self.slot(self.req_prod_pvt);
        for (word, value) in slot.iter().zip(request) {
            word.store(*value, Ordering::Relaxed);
        }
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the requests written so far and says whether the back end
    /// asked to be notified (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    pub fn push_requests(&mut self) -> bool {
        let old = self.shared.req_prod.load(Ordering::Relaxed);
        let new = self.req_prod_pvt;
        // Requests before the index (wmb).
        self.shared.req_prod.store(new, Ordering::Release);
        // The index before reading req_event (mb).
        fence(Ordering::SeqCst);
        let event = self.shared.req_event.load(Ordering::Relaxed);
        new.wrapping_sub(event) < new.wrapping_sub(old)
    }

    /// Copies out the first `N` words (at most `WORDS`) of the next response,
    /// if the back end has published one.
    pub fn take_response<const N: usize>(&mut self) -> Result<Option<[u64; N]>, RingError> {
        const { assert!(N <= WORDS, "a response cannot be larger than its slot") };
        if !self.has_unconsumed_responses()? {
            return Ok(None);
        }
        let slot = self.slot(self.rsp_cons);
        let mut response = [0u64; N];
        for (value, word) in response.iter_mut().zip(slot) {
            *value = word.load(Ordering::Relaxed);
        }
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Ok(Some(response))
    }

    /// Whether responses are waiting; if none, asks the back end for a
    /// notification on the next one and checks again, closing the race with
    /// a response published meanwhile (`RING_FINAL_CHECK_FOR_RESPONSES`).
    pub fn final_check_for_responses(&mut self) -> Result<bool, RingError> {
        if self.has_unconsumed_responses()? {
            return Ok(true);
        }
        self.shared
            .rsp_event
            .store(self.rsp_cons.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.has_unconsumed_responses()
    }

    /// Whether the back end has published responses not yet taken, without
    /// touching the ring (`RING_HAS_UNCONSUMED_RESPONSES`).
    pub fn has_unconsumed_responses(&self) -> Result<bool, RingError> {
        // Response contents after the index (rmb).
        let rsp_prod = self.shared.rsp_prod.load(Ordering::Acquire);
        let unconsumed = rsp_prod.wrapping_sub(self.rsp_cons);
        let outstanding = self.req_prod_pvt.wrapping_sub(self.rsp_cons);
        if unconsumed > outstanding {
            return Err(RingError::ResponseOverflow {
                rsp_prod,
                rsp_cons: self.rsp_cons,
                req_prod: self.req_prod_pvt,
            });
        }
        Ok(unconsumed != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestRing = SharedRing<2, [[AtomicU64; 2]; 4]>;

    /// What the test back end writes into word 1 of a response.
    const RESPONDED: u64 = 0xacc;

    /// Answers every published request the way a back end does: the slot's
    /// word 0 (the request id) stays, word 1 becomes [`RESPONDED`].
    fn respond_all(ring: &SharedRing<2>) {
        let req_prod = ring.req_prod.load(Ordering::SeqCst);
        let mut rsp_prod = ring.rsp_prod.load(Ordering::SeqCst);
        while rsp_prod != req_prod {
            let slot = &ring.slots[rsp_prod as usize % ring.slots.len()];
            slot[1].store(RESPONDED, Ordering::SeqCst);
            rsp_prod = rsp_prod.wrapping_add(1);
        }
        ring.rsp_prod.store(rsp_prod, Ordering::SeqCst);
    }

    /// `__RD32` of `io/ring.h`, as the header spells it: a cascade of
    /// masks, not a logarithm.
    fn rd32(x: usize) -> usize {
        let rd2 = |x: usize| if x & 0x2 != 0 { 0x2 } else { x & 0x1 };
        let rd4 = |x: usize| {
            if x & 0xc != 0 {
                rd2(x >> 2) << 2
            } else {
                rd2(x)
            }
        };
        let rd8 = |x: usize| {
            if x & 0xf0 != 0 {
                rd4(x >> 4) << 4
            } else {
                rd4(x)
            }
        };
        let rd16 = |x: usize| {
            if x & 0xff00 != 0 {
                rd8(x >> 8) << 8
            } else {
                rd8(x)
            }
        };
        if x & 0xffff_0000 != 0 {
            rd16(x >> 16) << 16
        } else {
            rd16(x)
        }
    }

    #[test]
    fn slot_count_rounds_down_to_a_power_of_two() {
        assert_eq!(ring_slots(1, 112), 32); // blkif: 36 fit.
        assert_eq!(ring_slots(1, 8), 256); // 504 fit.
        assert_eq!(ring_slots(1, 4032), 1);
        assert_eq!(ring_slots(1, 5000), 0);
        assert_eq!(ring_slots(2, 5000), 1);
        assert_eq!(ring_slots(0, 8), 0);
    }

    #[test]
    fn slot_count_is_xen_const_ring_size_over_every_order() {
        // __CONST_RING_SIZE(s, XEN_PAGE_SIZE << order): __RD32((size -
        // offsetof(ring)) / sizeof(ring[0])), for the orders a back end may
        // offer (XENBUS_MAX_RING_GRANT_ORDER is 4) and beyond.
        for order in 0..=9 {
            let bytes = RING_PAGE_BYTES << order;
            for slot_bytes in [8, 16, 48, 64, 112, 120, 200, 1000, 4032] {
                assert_eq!(
                    ring_slots(1 << order, slot_bytes),
                    rd32((bytes - RING_HEADER_BYTES) / slot_bytes),
                    "order {order}, {slot_bytes}-byte slots"
                );
            }
        }
    }

    #[test]
    fn a_ring_whose_size_is_not_a_power_of_two_is_refused() {
        let three = SharedRing::<2, [[AtomicU64; 2]; 3]>::new();
        let err = FrontRing::init(&three).unwrap_err();
        assert_eq!(err, RingError::BadSize { slots: 3 });
        assert_eq!(err.to_string(), "a ring of 3 slots (not 2^n)");
        let empty = SharedRing::<2, [[AtomicU64; 2]; 0]>::new();
        assert_eq!(
            FrontRing::init(&empty).unwrap_err(),
            RingError::BadSize { slots: 0 }
        );
    }

    #[test]
    fn requests_fill_the_ring_and_responses_free_it() {
        let shared = TestRing::new();
        let mut ring = FrontRing::init(&shared).unwrap();
        for id in 0..4 {
            ring.put_request(&[id, 0]).unwrap();
        }
        assert_eq!(ring.put_request(&[9, 0]), Err(RingError::Full { slots: 4 }));
        // Nothing is visible before the push.
        assert_eq!(shared.req_prod.load(Ordering::SeqCst), 0);
        assert!(ring.push_requests());
        assert_eq!(ring.take_response::<2>(), Ok(None));
        respond_all(&shared);
        for id in 0..4 {
            assert_eq!(ring.take_response::<2>(), Ok(Some([id, RESPONDED])));
        }
        assert_eq!(ring.free_requests(), 4);
    }

    #[test]
    fn notify_follows_req_event() {
        let shared = TestRing::new();
        let mut ring = FrontRing::init(&shared).unwrap();
        ring.put_request(&[1, 0]).unwrap();
        // req_event 1: the back end waits for request 1.
        assert!(ring.push_requests());
        // The back end has not re-armed (req_event still 1): no notification.
        ring.put_request(&[2, 0]).unwrap();
        assert!(!ring.push_requests());
        // Re-armed for the next request.
        shared.req_event.store(3, Ordering::SeqCst);
        ring.put_request(&[3, 0]).unwrap();
        assert!(ring.push_requests());
    }

    /// Fills the whole ring with requests whose indices cross 2^32, then
    /// takes every response: each request sits in slot `index mod size`,
    /// and the responses come back in order.
    fn fill_across_the_wrap<const WORDS: usize>(shared: &SharedRing<WORDS>) {
        let mut ring = FrontRing::init(shared).unwrap();
        let size = ring.size();
        // The indices, as a ring that has carried 2^32 - 3 requests leaves
        // them (both sides agree: all answered).
        let start = u32::MAX - 2;
        ring.req_prod_pvt = start;
        ring.rsp_cons = start;
        for index in [&shared.req_prod, &shared.rsp_prod] {
            index.store(start, Ordering::SeqCst);
        }
        shared
            .req_event
            .store(start.wrapping_add(1), Ordering::SeqCst);
        for id in 0..size as u64 {
            let mut request = [0; WORDS];
            request[0] = id;
            ring.put_request(&request).unwrap();
        }
        assert_eq!(ring.free_requests(), 0);
        assert_eq!(
            ring.put_request(&[0; WORDS]),
            Err(RingError::Full { slots: size })
        );
        assert!(ring.push_requests());
        let req_prod = shared.req_prod.load(Ordering::SeqCst);
        assert_eq!(req_prod, start.wrapping_add(size as u32));
        for id in [0, 2, 3, size - 1] {
            let index = start.wrapping_add(id as u32) as usize;
            assert_eq!(
                shared.slots[index % size][0].load(Ordering::SeqCst),
                id as u64
            );
        }
        // The back end answers every one in place (word 0, the id, stays).
        let mut index = start;
        while index != req_prod {
            shared.slots[index as usize % size][1].store(RESPONDED, Ordering::SeqCst);
            index = index.wrapping_add(1);
        }
        shared.rsp_prod.store(req_prod, Ordering::SeqCst);
        for id in 0..size as u64 {
            let response = ring.take_response::<2>().unwrap().unwrap();
            assert_eq!(response, [id, RESPONDED]);
        }
        assert_eq!(ring.take_response::<2>(), Ok(None));
        assert_eq!(ring.free_requests(), size);
    }

    #[test]
    fn indices_wrap_around_u32() {
        fill_across_the_wrap(&TestRing::new());
    }

    #[test]
    fn indices_wrap_around_u32_on_a_sixteen_page_ring() {
        use crate::blkif::{BLKIF_SLOT_WORDS, blkif_ring_slots};
        type Order4 =
            SharedRing<BLKIF_SLOT_WORDS, [[AtomicU64; BLKIF_SLOT_WORDS]; blkif_ring_slots(4)]>;
        const { assert!(size_of::<Order4>() <= 16 * RING_PAGE_BYTES) };
        let shared = std::boxed::Box::new(Order4::new());
        assert_eq!(shared.slots.len(), 512);
        fill_across_the_wrap(&*shared);
    }

    #[test]
    fn final_check_arms_rsp_event() {
        let shared = TestRing::new();
        let mut ring = FrontRing::init(&shared).unwrap();
        ring.put_request(&[1, 0]).unwrap();
        ring.push_requests();
        assert_eq!(ring.final_check_for_responses(), Ok(false));
        assert_eq!(shared.rsp_event.load(Ordering::SeqCst), 1);
        respond_all(&shared);
        assert_eq!(ring.final_check_for_responses(), Ok(true));
        ring.take_response::<2>().unwrap();
        assert_eq!(ring.final_check_for_responses(), Ok(false));
        assert_eq!(shared.rsp_event.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn back_end_overrun_is_an_error() {
        let shared = TestRing::new();
        let mut ring = FrontRing::init(&shared).unwrap();
        ring.put_request(&[1, 0]).unwrap();
        ring.push_requests();
        shared.rsp_prod.store(3, Ordering::SeqCst);
        let err = ring.take_response::<2>().unwrap_err();
        assert_eq!(
            err,
            RingError::ResponseOverflow {
                rsp_prod: 3,
                rsp_cons: 0,
                req_prod: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "back end overran the ring: rsp_prod 3, rsp_cons 0, req_prod 1"
        );
    }

    #[test]
    fn init_resets_a_used_page() {
        let shared = TestRing::new();
        shared.req_prod.store(7, Ordering::SeqCst);
        shared.req_event.store(9, Ordering::SeqCst);
        shared.pad[3].store(5, Ordering::SeqCst);
        FrontRing::init(&shared).unwrap();
        assert_eq!(shared.req_prod.load(Ordering::SeqCst), 0);
        assert_eq!(shared.req_event.load(Ordering::SeqCst), 1);
        assert_eq!(shared.pad[3].load(Ordering::SeqCst), 0);
    }
}
