//! The first look at the device tree, before the MMU is on: is the blob
//! usable, are we under Xen, where is the console, how do we power off. Only
//! the boot heap exists (a blob with NOP tokens is copied into it); the full
//! memory plan is computed later (tidepool-dt).

use alloc::borrow::Cow;
use alloc::boxed::Box;
use core::fmt;

/// Largest device tree accepted (Linux's limit too).
const MAX_DTB_SIZE: usize = 2 << 20;
const FDT_MAGIC: u32 = 0xd00d_feed;

/// Why the blob at x0 is not a usable device tree.
#[derive(Clone, Debug)]
pub enum DtbError {
    /// x0 was 0: the loader passed no device tree.
    Null,
    /// Not 8-byte aligned, as the boot protocol requires.
    Misaligned(usize),
    /// No FDT magic at the address.
    BadMagic(u32),
    /// `totalsize` is implausible.
    BadSize(usize),
    /// The structural check (tidepool-dt) rejected the blob.
    Structure(tidepool_dt::DtbError),
    /// The `fdt` crate rejected the blob.
    Parse(fdt::FdtError),
}

impl fmt::Display for DtbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("x0 is 0 (the loader passed no device tree)"),
            Self::Misaligned(a) => write!(f, "address {a:#x} is not 8-byte aligned"),
            Self::BadMagic(m) => {
                write!(f, "no FDT magic (found {m:#010x}, want {FDT_MAGIC:#010x})")
            }
            Self::BadSize(s) => write!(f, "implausible totalsize {s:#x} (limit {MAX_DTB_SIZE:#x})"),
            Self::Structure(e) => write!(f, "malformed: {e}"),
            Self::Parse(e) => write!(f, "malformed: {e}"),
        }
    }
}

/// The device-tree blob at physical address `addr`, as a byte slice.
///
/// # Safety
/// `addr` must be readable memory for at least the FDT header (8 bytes) and,
/// if the header is valid, for `totalsize` bytes, and must stay unmodified
/// for the kernel's lifetime (the loader hands it over).
pub unsafe fn blob_at(addr: usize) -> Result<&'static [u8], DtbError> {
    if addr == 0 {
        return Err(DtbError::Null);
    }
    if !addr.is_multiple_of(8) {
        return Err(DtbError::Misaligned(addr));
    }
    let header = addr as *const u32;
    // SAFETY: the caller guarantees the first 8 bytes are readable; `addr` is aligned.
    let (magic, size) = unsafe {
        (
            u32::from_be(header.read_volatile()),
            u32::from_be(header.add(1).read_volatile()),
        )
    };
    if magic != FDT_MAGIC {
        return Err(DtbError::BadMagic(magic));
    }
    let size = size as usize;
    if !(40..=MAX_DTB_SIZE).contains(&size) {
        return Err(DtbError::BadSize(size));
    }
    // SAFETY: the caller guarantees `size` bytes at `addr` are readable and
    // never modified while the kernel runs.
    Ok(unsafe { core::slice::from_raw_parts(addr as *const u8, size) })
}

/// `blob` as the `fdt` crate can read it without panicking (see
/// [`tidepool_dt::fdt_readable`]); a copy without NOP tokens lives in the
/// heap for the kernel's lifetime.
pub fn readable(blob: &'static [u8]) -> Result<&'static [u8], DtbError> {
    match tidepool_dt::fdt_readable(blob).map_err(DtbError::Structure)? {
        Cow::Borrowed(bytes) => Ok(bytes),
        Cow::Owned(copy) => Ok(Box::leak(copy.into_boxed_slice())),
    }
}

/// How PSCI is reached, from `/psci`'s `method`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciMethod {
    /// `method = "hvc"`.
    Hvc,
    /// `method = "smc"`.
    Smc,
}

/// What the kernel needs before it can do anything else.
#[derive(Clone, Copy, Debug)]
pub struct EarlyPlatform<'a> {
    /// A `/hypervisor` node compatible with `xen,xen` exists.
    pub xen: bool,
    /// The UART named by `/chosen/stdout-path`, if the kernel drives its
    /// kind: the kind and its first `reg` address.
    pub stdout_uart: Option<(tidepool_dt::UartKind, u64)>,
    /// PSCI's conduit, if a `/psci` node says.
    pub psci: Option<PsciMethod>,
    /// `/chosen/bootargs` (empty if absent).
    pub bootargs: &'a str,
}

/// The node at absolute `path`, found by walking children from the root.
///
/// `fdt` 0.1.5's own `find_node` stops at NOP tokens, which QEMU leaves in
/// the blob when it edits a `-dtb` file (it then misses `/chosen`); its child
/// iteration skips them correctly. A component without `@` matches a node
/// name with any unit address.
fn node_at<'b, 'a>(dt: &'b fdt::Fdt<'a>, path: &str) -> Option<fdt::node::FdtNode<'b, 'a>> {
    let mut node = dt.find_node("/")?;
    for component in path.split('/').filter(|c| !c.is_empty()) {
        node = node.children().find(|child| {
            child.name == component
                || (!component.contains('@') && child.name.split('@').next() == Some(component))
        })?;
    }
    Some(node)
}

/// The UART `spec` names (a node path or an `/aliases` name, optionally
/// followed by `:options`, as in `stdout-path`), if the kernel drives its
/// kind: the kind and its first `reg` address.
pub fn uart(dt: &fdt::Fdt<'_>, spec: &str) -> Option<(tidepool_dt::UartKind, u64)> {
    let path = spec.split(':').next().unwrap_or(spec);
    let node = if path.starts_with('/') {
        node_at(dt, path)
    } else {
        dt.aliases()?.resolve_node(path)
    }?;
    let kind = tidepool_dt::UartKind::from_compatible(node.compatible()?.all())?;
    // The fdt crate does not translate through bus `ranges`: the buses above
    // the UARTs this reads (QEMU virt, i.MX 8M) map 1:1. The full device
    // tree (tidepool-dt) translates, and the console moves to its window
    // once the MMU is on.
    let region = node.reg()?.next()?;
    Some((kind, region.starting_address as u64))
}

/// Reads the early facts from a parsed tree.
pub fn discover<'a>(dt: &fdt::Fdt<'a>) -> EarlyPlatform<'a> {
    let xen = dt.find_compatible(&["xen,xen"]).is_some();
    let chosen = node_at(dt, "/chosen");
    let bootargs = chosen
        .and_then(|c| c.property("bootargs"))
        .and_then(|p| p.as_str())
        .unwrap_or("");
    let stdout_uart = chosen
        .and_then(|c| c.property("stdout-path"))
        .and_then(|p| p.as_str())
        .and_then(|spec| uart(dt, spec));
    let psci = node_at(dt, "/psci")
        .and_then(|n| n.property("method"))
        .and_then(|p| p.as_str())
        .and_then(|m| match m {
            "hvc" => Some(PsciMethod::Hvc),
            "smc" => Some(PsciMethod::Smc),
            _ => None,
        });
    EarlyPlatform {
        xen,
        stdout_uart,
        psci,
        bootargs,
    }
}
