//! The byte ring between the console's receive interrupt and the monitor.

use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

/// A ring of received bytes with one producer (the receive interrupt) and
/// one consumer (the monitor), neither of which ever waits for the other:
/// no lock, only atomics. A full ring drops the newest byte and counts it.
pub struct InputRing<const N: usize> {
    bytes: [AtomicU8; N],
    /// Bytes ever pushed (written by the producer only).
    written: AtomicUsize,
    /// Bytes ever popped (written by the consumer only).
    read: AtomicUsize,
    dropped: AtomicU64,
}

impl<const N: usize> Default for InputRing<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> InputRing<N> {
    /// An empty ring.
    pub const fn new() -> Self {
        Self {
            bytes: [const { AtomicU8::new(0) }; N],
            written: AtomicUsize::new(0),
            read: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Appends `byte` (producer side); `false` if the ring was full and the
    /// byte was dropped.
    pub fn push(&self, byte: u8) -> bool {
        let written = self.written.load(Ordering::Relaxed);
        if written.wrapping_sub(self.read.load(Ordering::Acquire)) >= N {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.bytes[written % N].store(byte, Ordering::Relaxed);
        self.written
            .store(written.wrapping_add(1), Ordering::Release);
        true
    }

    /// The oldest byte (consumer side), if any.
    pub fn pop(&self) -> Option<u8> {
        let read = self.read.load(Ordering::Relaxed);
        if read == self.written.load(Ordering::Acquire) {
            return None;
        }
        let byte = self.bytes[read % N].load(Ordering::Relaxed);
        self.read.store(read.wrapping_add(1), Ordering::Release);
        Some(byte)
    }

    /// Whether a byte is waiting.
    pub fn is_empty(&self) -> bool {
        self.read.load(Ordering::Relaxed) == self.written.load(Ordering::Acquire)
    }

    /// Bytes dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_out_in_order_across_the_wrap() {
        let ring: InputRing<4> = InputRing::new();
        assert!(ring.is_empty());
        for round in 0..5u8 {
            for i in 0..3 {
                assert!(ring.push(round * 3 + i));
            }
            for i in 0..3 {
                assert_eq!(ring.pop(), Some(round * 3 + i));
            }
        }
        assert_eq!(ring.pop(), None);
        assert_eq!(ring.dropped(), 0);
    }

    #[test]
    fn a_full_ring_drops_the_newest_and_counts() {
        let ring: InputRing<2> = InputRing::new();
        assert!(ring.push(1) && ring.push(2));
        assert!(!ring.push(3));
        assert!(!ring.push(4));
        assert_eq!(ring.dropped(), 2);
        assert_eq!(
            (ring.pop(), ring.pop(), ring.pop()),
            (Some(1), Some(2), None)
        );
        assert!(ring.push(5));
        assert_eq!(ring.pop(), Some(5));
    }

    #[test]
    fn one_producer_and_one_consumer_on_two_threads_lose_nothing() {
        let ring: InputRing<8> = InputRing::new();
        const COUNT: usize = 100_000;
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut sent = 0;
                while sent < COUNT {
                    if ring.push(sent as u8) {
                        sent += 1;
                    } else {
                        std::thread::yield_now();
                    }
                }
            });
            let mut expected = 0;
            while expected < COUNT {
                match ring.pop() {
                    Some(byte) => {
                        assert_eq!(byte, expected as u8);
                        expected += 1;
                    }
                    None => std::thread::yield_now(),
                }
            }
        });
        assert!(ring.dropped() > 0, "the producer outran an 8-byte ring");
    }
}
