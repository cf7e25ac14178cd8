//! The generic Xen shared ring (`xen/include/public/io/ring.h`), front end.
//!
//! A shared ring is one page: a 64-byte header of free-running producer and
//! event indices, then a power-of-two number of slots, each a union of a
//! request and a response. The page is shared with another domain that may
//! write it at any time, so every slot is an array of `AtomicU64` words:
//! requests are written and responses copied out word by word (little-endian,
//! the only byte order Xen on Arm has), never referenced in place.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

/// Bytes before the first slot: four indices, `pvt` and `__pad[44]`.
pub const RING_HEADER_BYTES: usize = 64;

/// Slots of a one-page (4 KiB) ring whose slot is `slot_bytes` long: as many
/// as fit after the header, rounded down to a power of two (`__RING_SIZE`).
pub const fn ring_slots(slot_bytes: usize) -> usize {
    let fit = (4096 - RING_HEADER_BYTES) / slot_bytes;
    if fit == 0 { 0 } else { 1 << fit.ilog2() }
}

/// The shared page of a ring with `SLOTS` slots of `WORDS` 64-bit words
/// (`struct *_sring`).
#[repr(C)]
#[derive(Debug)]
pub struct SharedRing<const SLOTS: usize, const WORDS: usize> {
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
    pub slots: [[AtomicU64; WORDS]; SLOTS],
}

impl<const SLOTS: usize, const WORDS: usize> SharedRing<SLOTS, WORDS> {
    /// A ring in its initial state (`SHARED_RING_INIT`).
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

impl<const SLOTS: usize, const WORDS: usize> Default for SharedRing<SLOTS, WORDS> {
    fn default() -> Self {
        Self::new()
    }
}

/// Errors of the front end of a ring.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RingError {
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
pub struct FrontRing<'a, const SLOTS: usize, const WORDS: usize> {
    shared: &'a SharedRing<SLOTS, WORDS>,
    req_prod_pvt: u32,
    rsp_cons: u32,
}

impl<'a, const SLOTS: usize, const WORDS: usize> FrontRing<'a, SLOTS, WORDS> {
    /// Resets `shared` (`SHARED_RING_INIT`) and attaches a front end to it
    /// (`FRONT_RING_INIT`). Call before granting the page to the back end.
    pub fn init(shared: &'a SharedRing<SLOTS, WORDS>) -> Self {
        const {
            assert!(
                SLOTS.is_power_of_two() && SLOTS <= 1 << 31,
                "ring slots must be 2^n"
            )
        };
        shared.req_prod.store(0, Ordering::Relaxed);
        shared.rsp_prod.store(0, Ordering::Relaxed);
        shared.req_event.store(1, Ordering::Relaxed);
        shared.rsp_event.store(1, Ordering::Relaxed);
        for word in &shared.pad {
            word.store(0, Ordering::Relaxed);
        }
        fence(Ordering::Release);
        Self {
            shared,
            req_prod_pvt: 0,
            rsp_cons: 0,
        }
    }

    /// Slots free for new requests (`RING_FREE_REQUESTS`).
    pub fn free_requests(&self) -> usize {
        SLOTS - self.req_prod_pvt.wrapping_sub(self.rsp_cons) as usize
    }

    /// Writes a request into the next slot, privately: the back end sees it
    /// only after [`FrontRing::push_requests`].
    pub fn put_request(&mut self, request: &[u64; WORDS]) -> Result<(), RingError> {
        if self.free_requests() == 0 {
            return Err(RingError::Full { slots: SLOTS });
        }
        let slot = &self.shared.slots[self.req_prod_pvt as usize & (SLOTS - 1)];
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
        let slot = &self.shared.slots[self.rsp_cons as usize & (SLOTS - 1)];
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

    type TestRing = SharedRing<4, 2>;

    /// What the test back end writes into word 1 of a response.
    const RESPONDED: u64 = 0xacc;

    /// Answers every published request the way a back end does: the slot's
    /// word 0 (the request id) stays, word 1 becomes [`RESPONDED`].
    fn respond_all(ring: &TestRing) {
        let req_prod = ring.req_prod.load(Ordering::SeqCst);
        let mut rsp_prod = ring.rsp_prod.load(Ordering::SeqCst);
        while rsp_prod != req_prod {
            let slot = &ring.slots[rsp_prod as usize % 4];
            slot[1].store(RESPONDED, Ordering::SeqCst);
            rsp_prod = rsp_prod.wrapping_add(1);
        }
        ring.rsp_prod.store(rsp_prod, Ordering::SeqCst);
    }

    #[test]
    fn slot_count_rounds_down_to_a_power_of_two() {
        assert_eq!(ring_slots(112), 32); // blkif: 36 fit.
        assert_eq!(ring_slots(8), 256); // 504 fit.
        assert_eq!(ring_slots(4032), 1);
        assert_eq!(ring_slots(5000), 0);
    }

    #[test]
    fn requests_fill_the_ring_and_responses_free_it() {
        let shared = TestRing::new();
        let mut ring = FrontRing::init(&shared);
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
        let mut ring = FrontRing::init(&shared);
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

    #[test]
    fn indices_wrap_around_u32() {
        let shared = TestRing::new();
        let mut ring = FrontRing::init(&shared);
        let start = u32::MAX - 1;
        ring.req_prod_pvt = start;
        ring.rsp_cons = start;
        for ring_index in [&shared.req_prod, &shared.rsp_prod] {
            ring_index.store(start, Ordering::SeqCst);
        }
        shared
            .req_event
            .store(start.wrapping_add(1), Ordering::SeqCst);
        for id in 0..4 {
            ring.put_request(&[id, 0]).unwrap();
        }
        assert!(ring.push_requests());
        respond_all(&shared);
        let ids: Vec<u64> = (0..4)
            .map(|_| ring.take_response::<1>().unwrap().unwrap()[0])
            .collect();
        assert_eq!(ids, [0, 1, 2, 3]);
        assert_eq!(ring.free_requests(), 4);
    }

    #[test]
    fn final_check_arms_rsp_event() {
        let shared = TestRing::new();
        let mut ring = FrontRing::init(&shared);
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
        let mut ring = FrontRing::init(&shared);
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
        FrontRing::init(&shared);
        assert_eq!(shared.req_prod.load(Ordering::SeqCst), 0);
        assert_eq!(shared.req_event.load(Ordering::SeqCst), 1);
        assert_eq!(shared.pad[3].load(Ordering::SeqCst), 0);
    }
}
