//! The PV console ring (`xen/include/public/io/console.h`), guest side.
//!
//! One page shared with the console back end (xenconsoled in dom0): an
//! input ring the back end produces into and an output ring the guest
//! produces into, each with free-running 32-bit indices masked by the ring
//! size. The back end may write the page at any time, so every field is an
//! atomic and every index it writes is checked before it is trusted.

use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicU32, Ordering};

/// `sizeof(in)`: the input ring (back end to guest).
pub const CONSOLE_IN_BYTES: usize = 1024;
/// `sizeof(out)`: the output ring (guest to back end).
pub const CONSOLE_OUT_BYTES: usize = 2048;

/// `struct xencons_interface` (4.17 layout; the `connection` byte of 4.21
/// and later is not used).
#[repr(C)]
#[derive(Debug)]
pub struct ConsoleInterface {
    /// Input ring.
    pub input: [AtomicU8; CONSOLE_IN_BYTES],
    /// Output ring.
    pub output: [AtomicU8; CONSOLE_OUT_BYTES],
    /// Input consumed (guest).
    pub in_cons: AtomicU32,
    /// Input produced (back end).
    pub in_prod: AtomicU32,
    /// Output consumed (back end).
    pub out_cons: AtomicU32,
    /// Output produced (guest).
    pub out_prod: AtomicU32,
}

crate::assert_layout!(ConsoleInterface, size 3088, align 4,
    input @ 0, output @ 1024, in_cons @ 3072, in_prod @ 3076, out_cons @ 3080, out_prod @ 3084);

impl ConsoleInterface {
    /// An empty interface (for tests and simulated back ends).
    pub const fn new() -> Self {
        Self {
            input: [const { AtomicU8::new(0) }; CONSOLE_IN_BYTES],
            output: [const { AtomicU8::new(0) }; CONSOLE_OUT_BYTES],
            in_cons: AtomicU32::new(0),
            in_prod: AtomicU32::new(0),
            out_cons: AtomicU32::new(0),
            out_prod: AtomicU32::new(0),
        }
    }
}

impl Default for ConsoleInterface {
    fn default() -> Self {
        Self::new()
    }
}

/// The back end broke the ring's invariant: more bytes in flight than the
/// ring holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ConsoleRingError {
    /// Which ring.
    pub ring: &'static str,
    /// Its producer index.
    pub prod: u32,
    /// Its consumer index.
    pub cons: u32,
}

impl fmt::Display for ConsoleRingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "console {} ring corrupt: prod {} cons {}",
            self.ring, self.prod, self.cons
        )
    }
}

/// Copies as much of `bytes` as fits into the output ring and publishes it;
/// returns how many were taken. The caller notifies the back end's event
/// channel when that is not 0.
pub fn write(page: &ConsoleInterface, bytes: &[u8]) -> Result<usize, ConsoleRingError> {
    let used = pending_output(page)?;
    let prod = page.out_prod.load(Ordering::Relaxed);
    let n = bytes.len().min(CONSOLE_OUT_BYTES - used);
    for (i, &b) in bytes[..n].iter().enumerate() {
        let at = prod.wrapping_add(i as u32) as usize % CONSOLE_OUT_BYTES;
        page.output[at].store(b, Ordering::Relaxed);
    }
    // The bytes before the index that publishes them (`wmb()` in Xen's
    // drivers).
    page.out_prod
        .store(prod.wrapping_add(n as u32), Ordering::Release);
    Ok(n)
}

/// Bytes of output the back end has not consumed yet.
pub fn pending_output(page: &ConsoleInterface) -> Result<usize, ConsoleRingError> {
    let cons = page.out_cons.load(Ordering::Acquire);
    let prod = page.out_prod.load(Ordering::Relaxed);
    let used = prod.wrapping_sub(cons) as usize;
    if used > CONSOLE_OUT_BYTES {
        return Err(ConsoleRingError {
            ring: "out",
            prod,
            cons,
        });
    }
    Ok(used)
}

/// Takes up to `buf.len()` bytes of input; returns how many. The caller
/// notifies the back end when that is not 0 (room was made).
pub fn read(page: &ConsoleInterface, buf: &mut [u8]) -> Result<usize, ConsoleRingError> {
    let prod = page.in_prod.load(Ordering::Acquire);
    let cons = page.in_cons.load(Ordering::Relaxed);
    let avail = prod.wrapping_sub(cons) as usize;
    if avail > CONSOLE_IN_BYTES {
        return Err(ConsoleRingError {
            ring: "in",
            prod,
            cons,
        });
    }
    let n = buf.len().min(avail);
    for (i, slot) in buf[..n].iter_mut().enumerate() {
        let at = cons.wrapping_add(i as u32) as usize % CONSOLE_IN_BYTES;
        *slot = page.input[at].load(Ordering::Relaxed);
    }
    // Done reading the bytes before handing their room back (`mb()`).
    page.in_cons
        .store(cons.wrapping_add(n as u32), Ordering::Release);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What xenconsoled does with the output ring: take everything.
    fn drain(page: &ConsoleInterface) -> Vec<u8> {
        let prod = page.out_prod.load(Ordering::Acquire);
        let mut cons = page.out_cons.load(Ordering::Relaxed);
        let mut out = Vec::new();
        while cons != prod {
            out.push(page.output[cons as usize % CONSOLE_OUT_BYTES].load(Ordering::Relaxed));
            cons = cons.wrapping_add(1);
        }
        page.out_cons.store(cons, Ordering::Release);
        out
    }

    /// What xenconsoled does with keyboard input.
    fn type_in(page: &ConsoleInterface, bytes: &[u8]) {
        let mut prod = page.in_prod.load(Ordering::Relaxed);
        for &b in bytes {
            page.input[prod as usize % CONSOLE_IN_BYTES].store(b, Ordering::Relaxed);
            prod = prod.wrapping_add(1);
        }
        page.in_prod.store(prod, Ordering::Release);
    }

    #[test]
    fn output_wraps_and_stops_when_full() {
        let page = ConsoleInterface::new();
        // Start near the index wrap to cover both the ring and u32 wrap.
        page.out_prod.store(u32::MAX - 5, Ordering::Relaxed);
        page.out_cons.store(u32::MAX - 5, Ordering::Relaxed);
        assert_eq!(write(&page, b"boot: hello\n").unwrap(), 12);
        assert_eq!(pending_output(&page).unwrap(), 12);
        assert_eq!(drain(&page), b"boot: hello\n");
        let big = [b'x'; CONSOLE_OUT_BYTES + 10];
        assert_eq!(write(&page, &big).unwrap(), CONSOLE_OUT_BYTES);
        assert_eq!(write(&page, b"more").unwrap(), 0, "full ring takes nothing");
        assert_eq!(drain(&page).len(), CONSOLE_OUT_BYTES);
        assert_eq!(write(&page, b"more").unwrap(), 4);
    }

    #[test]
    fn input_is_read_in_order() {
        let page = ConsoleInterface::new();
        type_in(&page, b"help\r");
        let mut buf = [0u8; 3];
        assert_eq!(read(&page, &mut buf).unwrap(), 3);
        assert_eq!(&buf, b"hel");
        assert_eq!(read(&page, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"p\r");
        assert_eq!(read(&page, &mut buf).unwrap(), 0);
    }

    #[test]
    fn a_corrupt_back_end_is_an_error() {
        let page = ConsoleInterface::new();
        page.out_cons.store(5000, Ordering::Relaxed);
        let err = write(&page, b"x").unwrap_err();
        assert_eq!(err.ring, "out");
        assert!(err.to_string().contains("corrupt"));
        page.in_prod
            .store(CONSOLE_IN_BYTES as u32 + 1, Ordering::Relaxed);
        assert_eq!(read(&page, &mut [0; 4]).unwrap_err().ring, "in");
    }
}
