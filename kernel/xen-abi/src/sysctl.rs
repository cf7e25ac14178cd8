//! `sysctl` arguments (`xen/include/public/sysctl.h`): only
//! `XEN_SYSCTL_readconsole`, which lets the hardware domain read Xen's
//! console ring (on a board whose UART Xen cannot drive, the only way to see
//! Xen's messages).

/// `XEN_SYSCTL_INTERFACE_VERSION` of Xen 4.17 to 4.20: bumped to 0x15 in
/// the 4.17 cycle ("Last version bump: Xen 4.17"), to 0x16 in 4.21. Xen
/// refuses a sysctl with another version (`-EACCES`).
pub const XEN_SYSCTL_INTERFACE_VERSION: u32 = 0x0000_0015;

/// `XEN_SYSCTL_readconsole`.
pub const XEN_SYSCTL_readconsole: u32 = 1;

/// `struct xen_sysctl_readconsole`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct XenSysctlReadconsole {
    /// IN: non-zero clears the ring after reading.
    pub clear: u8,
    /// IN: non-zero starts at `index`.
    pub incremental: u8,
    /// Padding.
    pub pad0: u8,
    /// Padding.
    pub pad1: u8,
    /// IN: where to start (if `incremental`); OUT: where reading stopped.
    pub index: u32,
    /// IN: guest virtual address of the buffer (`XEN_GUEST_HANDLE_64(char)`).
    pub buffer: u64,
    /// IN: the buffer's size; OUT: bytes written to it.
    pub count: u32,
}

crate::assert_layout!(
    XenSysctlReadconsole,
    size 24,
    align 8,
    clear @ 0,
    incremental @ 1,
    index @ 4,
    buffer @ 8,
    count @ 16,
);

/// The union `u` of `struct xen_sysctl`, as far as this crate uses it: the
/// read-console member and the union's padding to 128 bytes (Xen copies the
/// whole union in and out).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct XenSysctlPayload {
    /// `u.readconsole`.
    pub readconsole: XenSysctlReadconsole,
    /// The rest of `u.pad[128]`.
    pub pad: [u8; 128 - 24],
}

crate::assert_layout!(XenSysctlPayload, size 128, align 8, readconsole @ 0);

/// `struct xen_sysctl`. Its fields are private and only
/// [`Hypervisor::read_console_ring`](crate::Hypervisor::read_console_ring)
/// builds one: with another command, Xen would read the union as that
/// command's arguments, guest addresses included, which
/// [`Hypercall::registers`](crate::Hypercall::registers) does not fill from
/// borrowed buffers.
///
/// ```compile_fail,E0624
/// // No sysctl of safe code's making.
/// let op = tidepool_xen_abi::XenSysctl::read_console(0);
/// ```
#[repr(C)]
#[derive(PartialEq, Eq, Debug)]
pub struct XenSysctl {
    /// `XEN_SYSCTL_*`.
    pub(crate) cmd: u32,
    /// [`XEN_SYSCTL_INTERFACE_VERSION`].
    pub(crate) interface_version: u32,
    /// The command's arguments.
    pub(crate) u: XenSysctlPayload,
}

crate::assert_layout!(XenSysctl, size 136, align 8, cmd @ 0, interface_version @ 4, u @ 8);

impl XenSysctl {
    /// `XEN_SYSCTL_readconsole` from ring index `index`, incremental, not
    /// clearing the ring. The buffer is set by
    /// [`Hypercall::registers`](crate::Hypercall::registers).
    pub(crate) const fn read_console(index: u32) -> Self {
        Self {
            cmd: XEN_SYSCTL_readconsole,
            interface_version: XEN_SYSCTL_INTERFACE_VERSION,
            u: XenSysctlPayload {
                readconsole: XenSysctlReadconsole {
                    clear: 0,
                    incremental: 1,
                    pad0: 0,
                    pad1: 0,
                    index,
                    buffer: 0,
                    count: 0,
                },
                pad: [0; 128 - 24],
            },
        }
    }
}

/// What one `XEN_SYSCTL_readconsole` returned.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ConsoleRingRead {
    /// The ring index to continue from.
    pub next_index: u32,
    /// How many bytes of the buffer Xen filled.
    pub count: usize,
}

/// What [`read_console_lines`] read.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ConsoleRingSummary {
    /// Bytes read from the ring.
    pub bytes: usize,
    /// Lines handed out.
    pub lines: usize,
}

/// The longest line [`read_console_lines`] hands out; longer ones are cut
/// there (the rest follows as another line).
pub const CONSOLE_LINE_MAX: usize = 256;

/// Reads Xen's whole console ring, from its oldest byte, with
/// `XEN_SYSCTL_readconsole` calls of at most `buffer.len()` bytes, and hands
/// `line` each line without its `\n` (a line split across two reads is
/// joined; one longer than [`CONSOLE_LINE_MAX`] is cut). Stops when Xen has
/// nothing more, or after `max_reads` calls (Xen may keep writing).
pub fn read_console_lines(
    xen: &mut impl crate::Hypervisor,
    buffer: &mut [u8],
    max_reads: usize,
    mut line: impl FnMut(&[u8]),
) -> Result<ConsoleRingSummary, crate::XenError> {
    let mut summary = ConsoleRingSummary::default();
    let mut pending = [0u8; CONSOLE_LINE_MAX];
    let mut pending_len = 0;
    let mut index = 0;
    for _ in 0..max_reads {
        let read = xen.read_console_ring(index, buffer)?;
        if read.count == 0 {
            break;
        }
        index = read.next_index;
        summary.bytes += read.count;
        for &byte in &buffer[..read.count] {
            if byte == b'\n' || pending_len == CONSOLE_LINE_MAX {
                line(&pending[..pending_len]);
                summary.lines += 1;
                pending_len = 0;
                if byte == b'\n' {
                    continue;
                }
            }
            pending[pending_len] = byte;
            pending_len += 1;
        }
    }
    if pending_len > 0 {
        line(&pending[..pending_len]);
        summary.lines += 1;
    }
    Ok(summary)
}

#[cfg(test)]
#[allow(unsafe_code)] // A fake implements `Hypervisor`; it touches no memory.
mod tests {
    use super::*;
    use crate::{Hypercall, Hypervisor};

    /// A console ring of `text`, served `chunk` bytes at a time at most.
    struct Ring {
        text: Vec<u8>,
        chunk: usize,
        calls: usize,
    }

    // SAFETY: a fake: it emulates the call on the borrowed arguments only.
    unsafe impl Hypervisor for Ring {
        fn call(&mut self, mut call: Hypercall<'_>) -> i64 {
            call.registers();
            let Hypercall::SysctlReadConsole { op, buffer } = call else {
                panic!("unexpected {:?}", call.op());
            };
            self.calls += 1;
            let rc = &mut op.u.readconsole;
            let start = rc.index as usize;
            let n = (self.text.len() - start).min(buffer.len()).min(self.chunk);
            buffer[..n].copy_from_slice(&self.text[start..start + n]);
            rc.index = (start + n) as u32;
            rc.count = n as u32;
            0
        }
    }

    fn lines_of(text: &[u8], chunk: usize, max_reads: usize) -> (Vec<String>, ConsoleRingSummary) {
        let mut ring = Ring {
            text: text.to_vec(),
            chunk,
            calls: 0,
        };
        let mut buffer = [0u8; 16];
        let mut out = Vec::new();
        let summary = read_console_lines(&mut ring, &mut buffer, max_reads, |l| {
            out.push(String::from_utf8_lossy(l).into_owned())
        })
        .unwrap();
        (out, summary)
    }

    #[test]
    fn lines_are_joined_across_reads() {
        let text = b"(XEN) Xen version 4.17.7\n(XEN) Freed 344kB init memory.\nlast";
        let (lines, summary) = lines_of(text, 7, 100);
        assert_eq!(
            lines,
            [
                "(XEN) Xen version 4.17.7",
                "(XEN) Freed 344kB init memory.",
                "last"
            ]
        );
        assert_eq!(
            summary,
            ConsoleRingSummary {
                bytes: text.len(),
                lines: 3
            }
        );
    }

    #[test]
    fn long_lines_are_cut_and_reads_bounded() {
        let text = [b'x'; CONSOLE_LINE_MAX + 3];
        let (lines, _) = lines_of(&text, 16, 100);
        assert_eq!(
            lines.iter().map(String::len).collect::<Vec<_>>(),
            [CONSOLE_LINE_MAX, 3]
        );
        let (lines, summary) = lines_of(b"ab\ncd\nef\n", 2, 2);
        assert_eq!(
            lines,
            ["ab", "c"],
            "what was read is printed, even unfinished"
        );
        assert_eq!(summary.bytes, 4);
    }

    #[test]
    fn an_empty_ring_reads_once() {
        let (lines, summary) = lines_of(b"", 16, 100);
        assert!(lines.is_empty());
        assert_eq!(summary, ConsoleRingSummary::default());
    }
}
