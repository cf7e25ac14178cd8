//! The console: whole lines, no locks, no allocation.
//!
//! Every line is formatted into a fixed buffer on the stack and handed to the
//! backend in one piece (one `console_io` hypercall under Xen). With no lock
//! anywhere on the path, the same code serves as the emergency console of the
//! fault and panic handlers. The backend is chosen once at boot: Xen's
//! `console_io`, the UART named by `/chosen/stdout-path` (PL011 or i.MX), or,
//! when the device tree is unusable, the build-time early UART. An `xl` guest
//! moves to the PV console ring once its page is mapped; the lines written to
//! `console_io` before (which a release Xen drops for a domU) are kept in a
//! small buffer and replayed there.

use core::fmt;

/// Longest line the console emits; longer ones end in `...`.
pub const LINE_MAX: usize = 320;

/// A line being formatted.
pub struct Line {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; LINE_MAX],
            len: 0,
        }
    }

    /// Formats `args` and terminates the line with `\n` (truncating with
    /// `...` if it does not fit).
    pub fn format(args: fmt::Arguments<'_>) -> Self {
        let mut line = Self::new();
        // Writing to a Line never fails: overflow truncates instead.
        let _ = fmt::write(&mut line, args);
        line.finish();
        line
    }

    /// The bytes to emit.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn finish(&mut self) {
        if self.len >= LINE_MAX {
            self.len = LINE_MAX - 4;
            self.buf[self.len..self.len + 3].copy_from_slice(b"...");
            self.len += 3;
        }
        self.buf[self.len] = b'\n';
        self.len += 1;
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Keep one byte for the newline; remember overflow with len == LINE_MAX.
        for &b in s.as_bytes() {
            if self.len >= LINE_MAX - 1 {
                self.len = LINE_MAX;
                break;
            }
            self.buf[self.len] = if b == b'\n' { b' ' } else { b };
            self.len += 1;
        }
        Ok(())
    }
}

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub use backend::{Backend, move_to_window, select, select_pv, write_bytes, write_line};

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
mod backend {
    use core::fmt;
    use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

    use super::Line;

    /// Where console lines go.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Backend {
        /// Nowhere (before selection).
        None,
        /// Xen's `console_io(CONSOLEIO_write)` hypercall.
        Xen,
        /// A PL011 (or SBSA) UART at this address.
        Pl011(usize),
        /// An i.MX UART at this address.
        ImxUart(usize),
        /// The PV console ring (`xl console`).
        XenPv,
    }

    impl fmt::Display for Backend {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Backend::None => f.write_str("none"),
                Backend::Xen => f.write_str("console_io"),
                Backend::Pl011(base) => write!(f, "pl011@{base:#x}"),
                Backend::ImxUart(base) => write!(f, "imx-uart@{base:#x}"),
                Backend::XenPv => f.write_str("xen-pv"),
            }
        }
    }

    // Plain atomic loads and stores only (no read-modify-write), so this is
    // safe to use before the MMU is on.
    static KIND: AtomicU8 = AtomicU8::new(0);
    static UART: AtomicUsize = AtomicUsize::new(0);

    /// Bytes of the first lines written to `console_io`, replayed on the PV
    /// console: the boot banner and platform lines an `xl` guest prints
    /// before its console page is mapped. Filled by one CPU before anything
    /// else runs (plain loads and stores, as above); what does not fit is
    /// not replayed.
    const EARLY_BYTES: usize = 4096;
    static EARLY: [AtomicU8; EARLY_BYTES] = [const { AtomicU8::new(0) }; EARLY_BYTES];
    static EARLY_LEN: AtomicUsize = AtomicUsize::new(0);

    fn keep_early(bytes: &[u8]) {
        let len = EARLY_LEN.load(Ordering::Relaxed);
        if len + bytes.len() > EARLY_BYTES {
            return;
        }
        for (slot, &b) in EARLY[len..].iter().zip(bytes) {
            slot.store(b, Ordering::Relaxed);
        }
        EARLY_LEN.store(len + bytes.len(), Ordering::Relaxed);
    }

    /// Moves the console to the PV ring (mapped by
    /// `crate::xen::pv_console::init`) and replays the early lines there.
    pub fn select_pv() {
        let len = EARLY_LEN.load(Ordering::Relaxed);
        let mut chunk = [0u8; 256];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(chunk.len());
            for (dst, src) in chunk[..n].iter_mut().zip(&EARLY[at..at + n]) {
                *dst = src.load(Ordering::Relaxed);
            }
            crate::xen::pv_console::write(&chunk[..n]);
            at += n;
        }
        KIND.store(4, Ordering::Release);
    }

    /// Selects the backend. Called at boot before anything else runs.
    /// Selects the backend. Called at boot before anything else runs; an
    /// i.MX UART nobody set up is enabled here (see `tidepool_imx_uart`).
    pub fn select(backend: Backend) {
        let (kind, base) = match backend {
            Backend::None => (0, 0),
            Backend::Xen => (1, 0),
            Backend::Pl011(base) => (2, base),
            Backend::ImxUart(base) => {
                // SAFETY: as in `write_line`: the base is the stdout-path
                // UART's, mapped as Device memory (identity before the MMU
                // is on, its window after), and only the console drives it.
                unsafe { tidepool_imx_uart::ImxUart::new(base) }.enable();
                (3, base)
            }
            Backend::XenPv => (4, 0),
        };
        UART.store(base, Ordering::Relaxed);
        KIND.store(kind, Ordering::Release);
    }

    /// Once the MMU is on, moves a UART console to its window in `map`
    /// (the identity address is no longer mapped). A UART without a window
    /// (not named by `stdout-path`, e.g. the build-time early UART) goes
    /// quiet rather than fault.
    pub fn move_to_window(map: &tidepool_mm::AddressMap) {
        let kind = KIND.load(Ordering::Acquire);
        if kind == 2 || kind == 3 {
            let base = UART.load(Ordering::Relaxed) as u64;
            match map.window_address(tidepool_mm::PhysAddr(base)) {
                Some(window) if kind == 2 => select(Backend::Pl011(window.0 as usize)),
                Some(window) => select(Backend::ImxUart(window.0 as usize)),
                None => select(Backend::None),
            }
        }
    }

    /// Formats and emits one line.
    pub fn write_line(args: fmt::Arguments<'_>) {
        write_bytes(Line::format(args).as_bytes());
    }

    /// Emits `bytes` as they are (a prompt, the echo of typed characters):
    /// not a line, so no newline is added.
    pub fn write_bytes(bytes: &[u8]) {
        match KIND.load(Ordering::Acquire) {
            1 => {
                keep_early(bytes);
                crate::xen::console_write(bytes);
            }
            4 if !crate::xen::pv_console::write(bytes) => {
                crate::xen::console_write(bytes);
            }
            2 => {
                // SAFETY: the base was taken from the device tree's
                // stdout-path node (or is the documented early UART) and is
                // mapped as Device memory (identity before the MMU is on, by
                // the MMU's MMIO window after); the PL011 is only ever driven
                // through this stateless transmit path.
                let uart = unsafe { tidepool_pl011::Pl011::new(UART.load(Ordering::Relaxed)) };
                // A UART that reports an error has nowhere else to report it.
                let _ = uart.write_bytes(bytes);
            }
            3 => {
                // SAFETY: the base was taken from the device tree's
                // stdout-path node and is mapped as Device memory (identity
                // before the MMU is on, by its MMIO window after); the
                // console only transmits, and receive is left to whoever
                // takes the UART's interrupt.
                let uart = unsafe { tidepool_imx_uart::ImxUart::new(UART.load(Ordering::Relaxed)) };
                // A UART that reports an error has nowhere else to report it.
                let _ = uart.write_bytes(bytes);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_line_gets_newline() {
        let l = Line::format(format_args!("boot: el={}", 1));
        assert_eq!(l.as_bytes(), b"boot: el=1\n");
    }

    #[test]
    fn embedded_newlines_are_flattened() {
        let l = Line::format(format_args!("a\nb"));
        assert_eq!(l.as_bytes(), b"a b\n");
    }

    #[test]
    fn long_line_is_truncated_visibly() {
        let long = "x".repeat(LINE_MAX * 2);
        let l = Line::format(format_args!("{long}"));
        assert_eq!(l.as_bytes().len(), LINE_MAX);
        assert!(l.as_bytes().ends_with(b"...\n"));
        let exact = "y".repeat(LINE_MAX - 1);
        let l = Line::format(format_args!("{exact}"));
        assert_eq!(
            l.as_bytes().len(),
            LINE_MAX,
            "a line that exactly fits is kept whole"
        );
        assert!(l.as_bytes().ends_with(b"y\n"));
        let one_more = "z".repeat(LINE_MAX);
        let l = Line::format(format_args!("{one_more}"));
        assert!(
            l.as_bytes().ends_with(b"...\n"),
            "one byte too many is marked"
        );
    }
}
