//! The hypercall boundary: every call this crate makes, as a typed value that
//! borrows its argument buffers, and the [`Hypervisor`] trait the kernel
//! implements with a single `hvc`.
//!
//! The kernel's implementation is one line of `unsafe`:
//! `let regs = call.registers(); hypercall(regs.number, regs.args)`. Its
//! safety rests on two things:
//!
//! - [`Hypercall::registers`]: every pointer it produces comes from a
//!   reference the [`Hypercall`] holds for the whole call, to a buffer of
//!   the size Xen reads or writes (the layouts are checked at compile time).
//! - The variants whose arguments name memory by address (a frame to place
//!   a page at, a mapping to remove, machine addresses to flush) carry
//!   arguments safe code cannot build: their fields are private and only
//!   the typed methods below fill them, from tokens the memory's owner made
//!   in `unsafe` ([`VacantFrame`], [`GrantMapping`],
//!   [`CacheFlushTarget`](crate::CacheFlushTarget)). So [`Hypervisor::call`]
//!   stays safe: no value safe code can pass it makes Xen touch memory the
//!   caller does not own. See the crate documentation for the list.
//!
//! Host tests implement the trait with fakes that match on the variants and
//! read or fill the typed arguments.

use core::ptr;

use crate::cache_flush::CacheFlushEntries;
use crate::domain::DomId;
use crate::error::{GrantStatus, XenError, XenErrorCause, XenOp};
use crate::event::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindIpi, EvtchnBindVirq, EvtchnClose,
    EvtchnPort, EvtchnPortStatus, EvtchnSend, EvtchnStatus, EvtchnUnmask, Virq,
};
use crate::grant::{
    GnttabMapGrantRef, GnttabQuerySize, GnttabSetupTable, GnttabUnmapGrantRef, GrantAccess,
    GrantHandle, GrantMapping, GrantRef, GrantTableSize,
};
use crate::hvm::{HvmParam, XenHvmParam};
use crate::memory::{VacantFrame, XenAddToPhysmap, XenMapSpace};
use crate::sched::{SchedShutdown, ShutdownReason};
use crate::sysctl::{ConsoleRingRead, XenSysctl};
use crate::version::{XenExtraVersion, XenFeatureInfo, XenFeatures, XenVersion};

/// One hypercall with its arguments. Buffers Xen only reads are shared
/// references; buffers it writes are exclusive ones.
#[derive(Debug)]
pub enum Hypercall<'a> {
    /// `xen_version(XENVER_version, NULL)`: returns `major << 16 | minor`.
    XenVersion,
    /// `xen_version(XENVER_extraversion, buf)`.
    XenExtraVersion(&'a mut XenExtraVersion),
    /// `xen_version(XENVER_get_features, info)`.
    XenGetFeatures(&'a mut XenFeatureInfo),
    /// `console_io(CONSOLEIO_write, len, bytes)`.
    ConsoleWrite(&'a [u8]),
    /// `console_io(CONSOLEIO_read, len, buffer)`: returns the bytes read.
    ConsoleRead(&'a mut [u8]),
    /// `memory_op(XENMEM_add_to_physmap, arg)`. Names a guest frame: only
    /// [`Hypervisor::add_to_physmap`] builds the argument.
    AddToPhysmap(&'a mut XenAddToPhysmap),
    /// `hvm_op(HVMOP_get_param, arg)`.
    HvmGetParam(&'a mut XenHvmParam),
    /// `event_channel_op(EVTCHNOP_bind_virq, arg)`.
    EvtchnBindVirq(&'a mut EvtchnBindVirq),
    /// `event_channel_op(EVTCHNOP_bind_interdomain, arg)`.
    EvtchnBindInterdomain(&'a mut EvtchnBindInterdomain),
    /// `event_channel_op(EVTCHNOP_alloc_unbound, arg)`.
    EvtchnAllocUnbound(&'a mut EvtchnAllocUnbound),
    /// `event_channel_op(EVTCHNOP_bind_ipi, arg)`.
    EvtchnBindIpi(&'a mut EvtchnBindIpi),
    /// `event_channel_op(EVTCHNOP_send, arg)`.
    EvtchnSend(&'a EvtchnSend),
    /// `event_channel_op(EVTCHNOP_unmask, arg)`.
    EvtchnUnmask(&'a EvtchnUnmask),
    /// `event_channel_op(EVTCHNOP_close, arg)`.
    EvtchnClose(&'a EvtchnClose),
    /// `event_channel_op(EVTCHNOP_status, arg)`.
    EvtchnStatus(&'a mut EvtchnStatus),
    /// `sched_op(SCHEDOP_shutdown, arg)`.
    SchedShutdown(&'a SchedShutdown),
    /// `grant_table_op(GNTTABOP_setup_table, arg, 1)`. [`registers`]
    /// sets `setup.nr_frames` and `setup.frame_list` from `frames`.
    ///
    /// [`registers`]: Hypercall::registers
    GrantSetupTable {
        /// The request.
        setup: &'a mut GnttabSetupTable,
        /// Receives the frames' GFNs; its length is the frame count.
        frames: &'a mut [u64],
    },
    /// `grant_table_op(GNTTABOP_query_size, arg, 1)`.
    GrantQuerySize(&'a mut GnttabQuerySize),
    /// `grant_table_op(GNTTABOP_map_grant_ref, arg, 1)`. Names a guest
    /// frame: only [`Hypervisor::grant_map`] builds the argument.
    GrantMap(&'a mut GnttabMapGrantRef),
    /// `grant_table_op(GNTTABOP_unmap_grant_ref, arg, 1)`. Names a mapping:
    /// only [`Hypervisor::grant_unmap`] builds the argument.
    GrantUnmap(&'a mut GnttabUnmapGrantRef),
    /// `grant_table_op(GNTTABOP_cache_flush, entries, count)`. Names
    /// machine addresses: only [`cache_flush_range`](crate::cache_flush_range)
    /// and the probe build the entries.
    GrantCacheFlush(CacheFlushEntries<'a>),
    /// `sysctl(op)` with `XEN_SYSCTL_readconsole`. [`registers`] sets
    /// `u.readconsole.buffer` and `count` from `buffer`. Only
    /// [`Hypervisor::read_console_ring`] builds `op`: another command in
    /// it would make Xen read the union's other guest handles.
    ///
    /// [`registers`]: Hypercall::registers
    SysctlReadConsole {
        /// The request (and Xen's answer).
        op: &'a mut XenSysctl,
        /// Receives console bytes; its length is the count.
        buffer: &'a mut [u8],
    },
}

/// The register values of one hypercall: number in x16, arguments in x0-x4.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HypercallRegisters {
    /// `__HYPERVISOR_*`, for x16.
    pub number: u32,
    /// x0-x4.
    pub args: [u64; 5],
}

/// A guest buffer a hypercall reads or writes, by virtual address (the
/// address Xen on Arm translates through the guest's stage-1 tables).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuestBuffer {
    /// Virtual address of the first byte.
    pub address: u64,
    /// Length in bytes.
    pub len: usize,
}

fn address_of<T: ?Sized>(value: &T) -> u64 {
    ptr::from_ref(value).cast::<u8>().addr() as u64
}

fn buffer_of<T: ?Sized>(value: &T) -> GuestBuffer {
    GuestBuffer {
        address: address_of(value),
        len: size_of_val(value),
    }
}

impl Hypercall<'_> {
    /// The operation, for errors and numbers.
    pub const fn op(&self) -> XenOp {
        match self {
            Self::XenVersion => XenOp::XenVersion,
            Self::XenExtraVersion(_) => XenOp::XenExtraVersion,
            Self::XenGetFeatures(_) => XenOp::XenGetFeatures,
            Self::ConsoleWrite(_) => XenOp::ConsoleWrite,
            Self::ConsoleRead(_) => XenOp::ConsoleRead,
            Self::AddToPhysmap(_) => XenOp::AddToPhysmap,
            Self::HvmGetParam(_) => XenOp::HvmGetParam,
            Self::EvtchnBindVirq(_) => XenOp::EvtchnBindVirq,
            Self::EvtchnBindInterdomain(_) => XenOp::EvtchnBindInterdomain,
            Self::EvtchnAllocUnbound(_) => XenOp::EvtchnAllocUnbound,
            Self::EvtchnBindIpi(_) => XenOp::EvtchnBindIpi,
            Self::EvtchnSend(_) => XenOp::EvtchnSend,
            Self::EvtchnUnmask(_) => XenOp::EvtchnUnmask,
            Self::EvtchnClose(_) => XenOp::EvtchnClose,
            Self::EvtchnStatus(_) => XenOp::EvtchnStatus,
            Self::SchedShutdown(_) => XenOp::SchedShutdown,
            Self::GrantSetupTable { .. } => XenOp::GrantSetupTable,
            Self::GrantQuerySize(_) => XenOp::GrantQuerySize,
            Self::GrantMap(_) => XenOp::GrantMap,
            Self::GrantUnmap(_) => XenOp::GrantUnmap,
            Self::GrantCacheFlush(_) => XenOp::GrantCacheFlush,
            Self::SysctlReadConsole { .. } => XenOp::SysctlReadConsole,
        }
    }

    /// The register values for `hvc #0xEA1`. Every pointer refers to a buffer
    /// this value borrows, valid for the size Xen accesses; for
    /// [`Hypercall::GrantSetupTable`] it first points `frame_list` at
    /// `frames` and sets `nr_frames` to its length.
    pub fn registers(&mut self) -> HypercallRegisters {
        let op = self.op();
        let command = u64::from(op.command());
        let args = match self {
            Self::XenVersion => [command, 0, 0, 0, 0],
            Self::XenExtraVersion(buf) => [command, address_of(*buf), 0, 0, 0],
            Self::XenGetFeatures(info) => [command, address_of(*info), 0, 0, 0],
            Self::ConsoleWrite(bytes) => [command, bytes.len() as u64, address_of(*bytes), 0, 0],
            Self::ConsoleRead(buffer) => [command, buffer.len() as u64, address_of(*buffer), 0, 0],
            Self::AddToPhysmap(arg) => [command, address_of(*arg), 0, 0, 0],
            Self::HvmGetParam(arg) => [command, address_of(*arg), 0, 0, 0],
            Self::EvtchnBindVirq(arg) => [command, address_of(*arg), 0, 0, 0],
            Self::EvtchnBindInterdomain(arg) => [command, address_of(*arg), 0, 0, 0],
            Self::EvtchnAllocUnbound(arg) => [command, address_of(*arg), 0, 0, 0],
            Self::EvtchnBindIpi(arg) => [command, address_of(*arg), 0, 0, 0],
            Self::EvtchnSend(arg) => [command, address_of(*arg), 0, 0, 0],
            Self::EvtchnUnmask(arg) => [command, address_of(*arg), 0, 0, 0],
            Self::EvtchnClose(arg) => [command, address_of(*arg), 0, 0, 0],
            Self::EvtchnStatus(arg) => [command, address_of(*arg), 0, 0, 0],
            Self::SchedShutdown(arg) => [command, address_of(*arg), 0, 0, 0],
            Self::GrantSetupTable { setup, frames } => {
                // Never more frames than the buffer holds.
                setup.nr_frames = u32::try_from(frames.len()).unwrap_or(u32::MAX);
                setup.frame_list = address_of(*frames);
                [command, address_of(*setup), 1, 0, 0]
            }
            Self::GrantQuerySize(arg) => [command, address_of(*arg), 1, 0, 0],
            Self::GrantMap(arg) => [command, address_of(*arg), 1, 0, 0],
            Self::GrantUnmap(arg) => [command, address_of(*arg), 1, 0, 0],
            Self::GrantCacheFlush(entries) => {
                // Xen reads `count` entries; a count it rejects (negative as
                // an int) fails with -EINVAL before any read.
                let entries = entries.entries();
                [command, address_of(entries), entries.len() as u64, 0, 0]
            }
            Self::SysctlReadConsole { op, buffer } => {
                // Never more bytes than the buffer holds.
                op.u.readconsole.count = u32::try_from(buffer.len()).unwrap_or(u32::MAX);
                op.u.readconsole.buffer = address_of(*buffer);
                [address_of(*op), 0, 0, 0, 0]
            }
        };
        HypercallRegisters {
            number: op.hypercall_number(),
            args,
        }
    }

    /// The guest buffers the call hands to Xen, e.g. for cache maintenance
    /// while the data cache is still off.
    pub fn guest_buffers(&self) -> [Option<GuestBuffer>; 2] {
        match self {
            Self::XenVersion => [None, None],
            Self::XenExtraVersion(buf) => [Some(buffer_of(*buf)), None],
            Self::XenGetFeatures(info) => [Some(buffer_of(*info)), None],
            Self::ConsoleWrite(bytes) => [Some(buffer_of(*bytes)), None],
            Self::ConsoleRead(buffer) => [Some(buffer_of(*buffer)), None],
            Self::AddToPhysmap(arg) => [Some(buffer_of(*arg)), None],
            Self::HvmGetParam(arg) => [Some(buffer_of(*arg)), None],
            Self::EvtchnBindVirq(arg) => [Some(buffer_of(*arg)), None],
            Self::EvtchnBindInterdomain(arg) => [Some(buffer_of(*arg)), None],
            Self::EvtchnAllocUnbound(arg) => [Some(buffer_of(*arg)), None],
            Self::EvtchnBindIpi(arg) => [Some(buffer_of(*arg)), None],
            Self::EvtchnSend(arg) => [Some(buffer_of(*arg)), None],
            Self::EvtchnUnmask(arg) => [Some(buffer_of(*arg)), None],
            Self::EvtchnClose(arg) => [Some(buffer_of(*arg)), None],
            Self::EvtchnStatus(arg) => [Some(buffer_of(*arg)), None],
            Self::SchedShutdown(arg) => [Some(buffer_of(*arg)), None],
            Self::GrantSetupTable { setup, frames } => {
                [Some(buffer_of(*setup)), Some(buffer_of(*frames))]
            }
            Self::GrantQuerySize(arg) => [Some(buffer_of(*arg)), None],
            Self::GrantMap(arg) => [Some(buffer_of(*arg)), None],
            Self::GrantUnmap(arg) => [Some(buffer_of(*arg)), None],
            Self::GrantCacheFlush(entries) => [Some(buffer_of(entries.entries())), None],
            Self::SysctlReadConsole { op, buffer } => {
                [Some(buffer_of(*op)), Some(buffer_of(*buffer))]
            }
        }
    }
}

/// Checks a grant-table operation: the hypercall's own result, then the
/// operation's `status` field.
fn grant_result(op: XenOp, ret: i64, status: i16) -> Result<(), XenError> {
    XenError::check(op, ret)?;
    GrantStatus::check(status).map_err(|status| XenError {
        op,
        cause: XenErrorCause::GrantStatus(status),
    })
}

/// The hypervisor, as the rest of the kernel sees it.
///
/// Implementors provide [`Hypervisor::call`]; the other methods are the typed
/// operations built on it, each turning Xen's result into a [`XenError`]
/// that names the operation and the errno.
///
/// # Implementation safety
///
/// [`call`](Self::call) issues exactly the hypercall
/// [`Hypercall::registers`] describes, once, and returns Xen's x0 unchanged
/// (a host fake instead emulates it on the borrowed arguments and touches
/// nothing else); it keeps no pointer past its return. Callers build on
/// those answers: an `Ok` from [`grant_unmap`](Self::grant_unmap) hands a
/// frame back for reuse, an `Ok` from
/// [`cache_flush_range`](crate::cache_flush_range) tells the DMA layer that
/// memory is clean before a device reads it. Hence `unsafe impl`.
///
/// ```compile_fail,E0200
/// // Implementing it takes `unsafe impl`: its answers are relied on.
/// use tidepool_xen_abi::{Hypercall, Hypervisor};
/// struct Liar;
/// impl Hypervisor for Liar {
///     fn call(&mut self, _: Hypercall<'_>) -> i64 {
///         0
///     }
/// }
/// ```
#[allow(unsafe_code)] // Declares the contract above; no unsafe operation.
pub unsafe trait Hypervisor {
    /// Issues one hypercall and returns Xen's x0 unchanged.
    fn call(&mut self, call: Hypercall<'_>) -> i64;

    /// `XENVER_version`.
    fn xen_version(&mut self) -> Result<XenVersion, XenError> {
        let raw = XenError::check(XenOp::XenVersion, self.call(Hypercall::XenVersion))?;
        // The packed version is major << 16 | minor: 32 bits.
        Ok(XenVersion::from_raw(raw as u32))
    }

    /// `XENVER_extraversion`.
    fn xen_extra_version(&mut self) -> Result<XenExtraVersion, XenError> {
        let mut extra = XenExtraVersion::default();
        let ret = self.call(Hypercall::XenExtraVersion(&mut extra));
        XenError::check(XenOp::XenExtraVersion, ret)?;
        Ok(extra)
    }

    /// `XENVER_get_features`, submap 0 (the only one Xen defines).
    fn xen_features(&mut self) -> Result<XenFeatures, XenError> {
        let mut info = XenFeatureInfo {
            submap_idx: 0,
            submap: 0,
        };
        let ret = self.call(Hypercall::XenGetFeatures(&mut info));
        XenError::check(XenOp::XenGetFeatures, ret)?;
        Ok(XenFeatures {
            submap: info.submap,
        })
    }

    /// `CONSOLEIO_write`. A domain other than the hardware domain gets only
    /// printable characters through, possibly buffered until `'\n'`.
    fn console_write(&mut self, bytes: &[u8]) -> Result<(), XenError> {
        let ret = self.call(Hypercall::ConsoleWrite(bytes));
        XenError::check(XenOp::ConsoleWrite, ret).map(|_| ())
    }

    /// `CONSOLEIO_read`: moves what Xen's console has received for this
    /// domain (the hardware domain, or a domain Xen lets read it) into
    /// `buffer`; returns how many bytes, 0 when nothing is waiting.
    fn console_read(&mut self, buffer: &mut [u8]) -> Result<usize, XenError> {
        let ret = self.call(Hypercall::ConsoleRead(buffer));
        XenError::check(XenOp::ConsoleRead, ret).map(|n| (n as usize).min(buffer.len()))
    }

    /// `XENMEM_add_to_physmap` for the calling domain: page `idx` of `space`
    /// appears at `frame`, which keeps it (on an error too: the frame's
    /// owner gave it up).
    ///
    /// ```compile_fail,E0308
    /// // A frame number is not a frame its owner gave up.
    /// use tidepool_xen_abi::{Hypervisor, XenMapSpace};
    /// fn remap<H: Hypervisor>(xen: &mut H) {
    ///     let _ = xen.add_to_physmap(XenMapSpace::SharedInfo, 0, 0x40000);
    /// }
    /// ```
    fn add_to_physmap(
        &mut self,
        space: XenMapSpace,
        idx: u64,
        frame: VacantFrame,
    ) -> Result<(), XenError> {
        let mut arg = XenAddToPhysmap::new(space, idx, frame);
        let ret = self.call(Hypercall::AddToPhysmap(&mut arg));
        XenError::check(XenOp::AddToPhysmap, ret).map(|_| ())
    }

    /// `HVMOP_get_param` for the calling domain.
    fn hvm_get_param(&mut self, param: HvmParam) -> Result<u64, XenError> {
        let mut arg = XenHvmParam::get(param);
        let ret = self.call(Hypercall::HvmGetParam(&mut arg));
        XenError::check(XenOp::HvmGetParam, ret)?;
        Ok(arg.value)
    }

    /// `EVTCHNOP_bind_virq`: a port for `virq`, delivered to `vcpu`.
    fn evtchn_bind_virq(&mut self, virq: Virq, vcpu: u32) -> Result<EvtchnPort, XenError> {
        let mut arg = EvtchnBindVirq {
            virq: virq.0,
            vcpu,
            port: 0,
        };
        let ret = self.call(Hypercall::EvtchnBindVirq(&mut arg));
        XenError::check(XenOp::EvtchnBindVirq, ret)?;
        Ok(EvtchnPort(arg.port))
    }

    /// `EVTCHNOP_bind_interdomain`: connects to `remote_port` of `remote`.
    fn evtchn_bind_interdomain(
        &mut self,
        remote: DomId,
        remote_port: EvtchnPort,
    ) -> Result<EvtchnPort, XenError> {
        let mut arg = EvtchnBindInterdomain {
            remote_dom: remote.0,
            remote_port: remote_port.0,
            local_port: 0,
        };
        let ret = self.call(Hypercall::EvtchnBindInterdomain(&mut arg));
        XenError::check(XenOp::EvtchnBindInterdomain, ret)?;
        Ok(EvtchnPort(arg.local_port))
    }

    /// `EVTCHNOP_alloc_unbound`: a port `remote` may bind to.
    fn evtchn_alloc_unbound(&mut self, remote: DomId) -> Result<EvtchnPort, XenError> {
        let mut arg = EvtchnAllocUnbound {
            dom: DomId::SELF.0,
            remote_dom: remote.0,
            port: 0,
        };
        let ret = self.call(Hypercall::EvtchnAllocUnbound(&mut arg));
        XenError::check(XenOp::EvtchnAllocUnbound, ret)?;
        Ok(EvtchnPort(arg.port))
    }

    /// `EVTCHNOP_bind_ipi`: a port that notifies `vcpu` of this domain.
    fn evtchn_bind_ipi(&mut self, vcpu: u32) -> Result<EvtchnPort, XenError> {
        let mut arg = EvtchnBindIpi { vcpu, port: 0 };
        let ret = self.call(Hypercall::EvtchnBindIpi(&mut arg));
        XenError::check(XenOp::EvtchnBindIpi, ret)?;
        Ok(EvtchnPort(arg.port))
    }

    /// `EVTCHNOP_send`: notifies the other end of `port`.
    fn evtchn_send(&mut self, port: EvtchnPort) -> Result<(), XenError> {
        let ret = self.call(Hypercall::EvtchnSend(&EvtchnSend { port: port.0 }));
        XenError::check(XenOp::EvtchnSend, ret).map(|_| ())
    }

    /// `EVTCHNOP_unmask`: Xen clears the mask bit and, if the port is
    /// pending, raises the upcall that a local unmask would lose.
    fn evtchn_unmask(&mut self, port: EvtchnPort) -> Result<(), XenError> {
        let ret = self.call(Hypercall::EvtchnUnmask(&EvtchnUnmask { port: port.0 }));
        XenError::check(XenOp::EvtchnUnmask, ret).map(|_| ())
    }

    /// `EVTCHNOP_close`.
    fn evtchn_close(&mut self, port: EvtchnPort) -> Result<(), XenError> {
        let ret = self.call(Hypercall::EvtchnClose(&EvtchnClose { port: port.0 }));
        XenError::check(XenOp::EvtchnClose, ret).map(|_| ())
    }

    /// `EVTCHNOP_status` of one of the calling domain's ports.
    fn evtchn_status(&mut self, port: EvtchnPort) -> Result<EvtchnPortStatus, XenError> {
        let mut arg = EvtchnStatus::query(port);
        let ret = self.call(Hypercall::EvtchnStatus(&mut arg));
        XenError::check(XenOp::EvtchnStatus, ret)?;
        Ok(EvtchnPortStatus {
            state: arg.state(),
            vcpu: arg.vcpu,
        })
    }

    /// `SCHEDOP_shutdown`. Returns only if Xen refused, or with `Ok` after a
    /// suspend when the domain resumes.
    fn sched_shutdown(&mut self, reason: ShutdownReason) -> Result<(), XenError> {
        let ret = self.call(Hypercall::SchedShutdown(&SchedShutdown::new(reason)));
        XenError::check(XenOp::SchedShutdown, ret).map(|_| ())
    }

    /// `GNTTABOP_query_size` for the calling domain.
    fn grant_query_size(&mut self) -> Result<GrantTableSize, XenError> {
        let mut arg = GnttabQuerySize::new();
        let ret = self.call(Hypercall::GrantQuerySize(&mut arg));
        grant_result(XenOp::GrantQuerySize, ret, arg.status)?;
        Ok(GrantTableSize {
            nr_frames: arg.nr_frames,
            max_nr_frames: arg.max_nr_frames,
        })
    }

    /// `GNTTABOP_setup_table`: grows the table to `frames.len()` frames and
    /// fills `frames` with their GFNs (on Arm, only frames already mapped
    /// with `add_to_physmap` have one).
    fn grant_setup_table(&mut self, frames: &mut [u64]) -> Result<(), XenError> {
        let mut setup = GnttabSetupTable::new();
        let ret = self.call(Hypercall::GrantSetupTable {
            setup: &mut setup,
            frames,
        });
        grant_result(XenOp::GrantSetupTable, ret, setup.status)
    }

    /// `GNTTABOP_map_grant_ref` as a host mapping: `dom`'s grant `gref`
    /// appears at frame `at` of the calling domain. While mapped, Xen marks
    /// the grant entry in use (`GTF_reading`/`GTF_writing`). If Xen refuses,
    /// the frame is dropped with the error (its owner may vouch for it
    /// again: nothing was placed there).
    ///
    /// ```compile_fail,E0308
    /// // A guest-physical address is not a frame its owner gave up.
    /// use tidepool_xen_abi::{DomId, GrantAccess, GrantRef, Hypervisor};
    /// fn map_over_ram<H: Hypervisor>(xen: &mut H) {
    ///     let _ = xen.grant_map(DomId(1), GrantRef(8), 0x4000_0000, GrantAccess::ReadWrite);
    /// }
    /// ```
    fn grant_map(
        &mut self,
        dom: DomId,
        gref: GrantRef,
        at: VacantFrame,
        access: GrantAccess,
    ) -> Result<GrantMapping, XenError> {
        let mut arg = GnttabMapGrantRef::host(dom, gref, &at, access);
        let ret = self.call(Hypercall::GrantMap(&mut arg));
        grant_result(XenOp::GrantMap, ret, arg.status)?;
        Ok(GrantMapping::new(at, GrantHandle(arg.handle)))
    }

    /// `GNTTABOP_unmap_grant_ref` of a mapping made by
    /// [`Hypervisor::grant_map`]; gives its frame back. If Xen refuses, the
    /// mapping stays and is forgotten with the error: its frame is never
    /// handed out again.
    ///
    /// ```compile_fail,E0061
    /// // Only the mapping itself names what to unmap.
    /// use tidepool_xen_abi::{GrantHandle, Hypervisor};
    /// fn unmap_anything<H: Hypervisor>(xen: &mut H) {
    ///     let _ = xen.grant_unmap(0x4040_1000, GrantHandle(0));
    /// }
    /// ```
    fn grant_unmap(&mut self, mapping: GrantMapping) -> Result<VacantFrame, XenError> {
        let mut arg = GnttabUnmapGrantRef::host(&mapping);
        let ret = self.call(Hypercall::GrantUnmap(&mut arg));
        grant_result(XenOp::GrantUnmap, ret, arg.status)?;
        Ok(mapping.into_frame())
    }

    /// `XEN_SYSCTL_readconsole`: Xen's console ring from `index` into
    /// `buffer` (hardware domain only). Xen answers with the bytes it wrote
    /// and the index to continue from; an answer claiming more bytes than
    /// the buffer holds is clamped to the buffer.
    fn read_console_ring(
        &mut self,
        index: u32,
        buffer: &mut [u8],
    ) -> Result<ConsoleRingRead, XenError> {
        let mut op = XenSysctl::read_console(index);
        let len = buffer.len();
        let ret = self.call(Hypercall::SysctlReadConsole {
            op: &mut op,
            buffer,
        });
        XenError::check(XenOp::SysctlReadConsole, ret)?;
        Ok(ConsoleRingRead {
            next_index: op.u.readconsole.index,
            count: (op.u.readconsole.count as usize).min(len),
        })
    }
}

#[cfg(test)]
#[allow(unsafe_code)] // A fake implements `Hypervisor`; it touches no memory.
pub(crate) mod tests {
    use super::*;
    use crate::cache_flush::{GnttabCacheFlush, cache_flush_available};
    use crate::error::XenErrno;

    /// Records each hypercall's operation and registers, and answers like Xen.
    #[derive(Default)]
    pub(crate) struct RecordingXen {
        pub(crate) log: Vec<(XenOp, HypercallRegisters)>,
        pub(crate) ret: i64,
        pub(crate) status: i16,
    }

    // SAFETY: a fake: it emulates each call on the borrowed arguments only.
    unsafe impl Hypervisor for RecordingXen {
        fn call(&mut self, mut call: Hypercall<'_>) -> i64 {
            let regs = call.registers();
            self.log.push((call.op(), regs));
            match call {
                Hypercall::XenVersion if self.ret == 0 => return 4 << 16 | 17,
                Hypercall::XenExtraVersion(extra) => extra.bytes[..2].copy_from_slice(b".7"),
                Hypercall::XenGetFeatures(info) => {
                    assert_eq!(info.submap_idx, 0);
                    info.submap = 1 << 17 | 1 << 11;
                }
                Hypercall::HvmGetParam(arg) => {
                    assert_eq!((arg.domid, arg.index), (DomId::SELF.0, 2));
                    arg.value = 0x1234;
                }
                Hypercall::EvtchnBindVirq(arg) => arg.port = 5 + arg.virq,
                Hypercall::EvtchnBindInterdomain(arg) => arg.local_port = arg.remote_port + 1,
                Hypercall::EvtchnAllocUnbound(arg) => {
                    assert_eq!(arg.dom, DomId::SELF.0);
                    arg.port = 9;
                }
                Hypercall::EvtchnBindIpi(arg) => arg.port = 20 + arg.vcpu,
                Hypercall::EvtchnStatus(arg) => {
                    assert_eq!(arg.dom, DomId::SELF.0);
                    arg.status = xen_sys::EVTCHNSTAT_unbound;
                    arg.vcpu = 0;
                    arg.u = [1, 0];
                }
                Hypercall::AddToPhysmap(arg) => assert_eq!(arg.domid, DomId::SELF.0),
                Hypercall::GrantMap(arg) => {
                    assert_ne!(arg.flags & crate::grant::GNTMAP_host_map, 0);
                    arg.handle = arg.gref + 100;
                    arg.status = self.status;
                }
                Hypercall::GrantUnmap(arg) => {
                    // The mapping's own address and handle.
                    assert_eq!((arg.host_addr, arg.handle), (0x4040_1000, 108));
                    assert_eq!(arg.dev_bus_addr, 0);
                    arg.status = self.status;
                }
                Hypercall::GrantQuerySize(arg) => {
                    arg.nr_frames = 1;
                    arg.max_nr_frames = 64;
                    arg.status = self.status;
                }
                Hypercall::GrantSetupTable { setup, frames } => {
                    assert_eq!(setup.nr_frames as usize, frames.len());
                    assert_eq!(setup.frame_list, address_of(&*frames));
                    for (i, frame) in frames.iter_mut().enumerate() {
                        *frame = 0x40200 + i as u64;
                    }
                    setup.status = self.status;
                }
                Hypercall::SysctlReadConsole { op, buffer } => {
                    assert_eq!(op.cmd, crate::sysctl::XEN_SYSCTL_readconsole);
                    assert_eq!(op.interface_version, 0x15);
                    let rc = &mut op.u.readconsole;
                    assert_eq!((rc.incremental, rc.clear), (1, 0));
                    assert_eq!(rc.count as usize, buffer.len());
                    assert_eq!(rc.buffer, address_of(&*buffer));
                    let text = b"(XEN) Xen version 4.17\n";
                    let n = text.len().min(buffer.len());
                    buffer[..n].copy_from_slice(&text[..n]);
                    rc.index += n as u32;
                    // A lying answer: more than the buffer holds.
                    rc.count = if self.status == 0 { n as u32 } else { u32::MAX };
                }
                _ => {}
            }
            self.ret
        }
    }

    #[test]
    fn console_ring_reads_continue_and_clamp() {
        let mut xen = RecordingXen::default();
        let mut buffer = [0u8; 64];
        let read = xen.read_console_ring(7, &mut buffer).unwrap();
        assert_eq!(read.count, 23);
        assert_eq!(read.next_index, 30);
        assert_eq!(&buffer[..read.count], b"(XEN) Xen version 4.17\n");
        let (op, regs) = xen.log[0];
        assert_eq!(op, XenOp::SysctlReadConsole);
        assert_eq!(regs.number, 35);
        assert_eq!(op.to_string(), "sysctl(readconsole)");
        xen.status = 1;
        let mut small = [0u8; 4];
        assert_eq!(xen.read_console_ring(0, &mut small).unwrap().count, 4);
        xen.ret = -13;
        assert_eq!(
            xen.read_console_ring(0, &mut buffer)
                .unwrap_err()
                .to_string(),
            "sysctl(readconsole): EACCES (-13)"
        );
    }

    #[test]
    fn typed_calls_decode_results() {
        let mut xen = RecordingXen::default();
        assert_eq!(xen.xen_version().unwrap().to_string(), "4.17");
        assert_eq!(xen.xen_extra_version().unwrap().as_str(), ".7");
        let features = xen.xen_features().unwrap();
        assert!(features.has(crate::XenFeature::DirectMapped));
        assert_eq!(xen.hvm_get_param(HvmParam::StoreEvtchn).unwrap(), 0x1234);
        assert_eq!(
            xen.evtchn_bind_virq(Virq::CONSOLE, 0).unwrap(),
            EvtchnPort(7)
        );
        assert_eq!(
            xen.evtchn_bind_interdomain(DomId(0), EvtchnPort(3))
                .unwrap(),
            EvtchnPort(4)
        );
        assert_eq!(xen.evtchn_alloc_unbound(DomId(0)).unwrap(), EvtchnPort(9));
        assert_eq!(xen.evtchn_bind_ipi(1).unwrap(), EvtchnPort(21));
        assert_eq!(
            xen.evtchn_status(EvtchnPort(9)).unwrap(),
            EvtchnPortStatus {
                state: crate::EvtchnState::Unbound {
                    remote_dom: DomId(1)
                },
                vcpu: 0
            }
        );
        let at = VacantFrame::reclaimed(0x40401);
        let mapping = xen
            .grant_map(DomId(1), GrantRef(8), at, GrantAccess::ReadWrite)
            .unwrap();
        assert_eq!(
            (mapping.gpa(), mapping.handle()),
            (0x4040_1000, GrantHandle(108))
        );
        // Unmapping hands the frame back.
        assert_eq!(
            xen.grant_unmap(mapping).unwrap(),
            VacantFrame::reclaimed(0x40401)
        );
        assert_eq!(
            xen.grant_query_size().unwrap(),
            GrantTableSize {
                nr_frames: 1,
                max_nr_frames: 64
            }
        );
        let mut frames = [0u64; 2];
        xen.grant_setup_table(&mut frames).unwrap();
        assert_eq!(frames, [0x40200, 0x40201]);
    }

    #[test]
    fn errors_name_the_operation() {
        let mut xen = RecordingXen {
            ret: -1,
            ..Default::default()
        };
        let err = xen
            .add_to_physmap(XenMapSpace::SharedInfo, 0, VacantFrame::reclaimed(0x40000))
            .unwrap_err();
        assert_eq!(err.to_string(), "memory_op(add_to_physmap): EPERM (-1)");
        let err = xen.evtchn_send(EvtchnPort(3)).unwrap_err();
        assert_eq!(err, XenError::errno(XenOp::EvtchnSend, XenErrno::EPERM));
        let mut xen = RecordingXen {
            ret: -22,
            ..Default::default()
        };
        assert_eq!(
            cache_flush_available(&mut xen).unwrap_err().to_string(),
            "grant_table_op(cache_flush): EINVAL (-22)"
        );
        xen.ret = -38;
        assert_eq!(
            xen.xen_version().unwrap_err(),
            XenError::errno(XenOp::XenVersion, XenErrno::ENOSYS)
        );
    }

    #[test]
    fn grant_status_failures_are_errors() {
        let mut xen = RecordingXen {
            status: -8,
            ..Default::default()
        };
        let err = xen.grant_query_size().unwrap_err();
        assert_eq!(
            err.to_string(),
            "grant_table_op(query_size): GNTST_permission_denied (-8)"
        );
        let err = xen.grant_setup_table(&mut [0; 1]).unwrap_err();
        assert_eq!(
            err.cause,
            XenErrorCause::GrantStatus(GrantStatus::PermissionDenied)
        );
        let at = VacantFrame::reclaimed(0x40401);
        let err = xen
            .grant_map(DomId(1), GrantRef(8), at, GrantAccess::ReadOnly)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "grant_table_op(map_grant_ref): GNTST_permission_denied (-8)"
        );
        // A refused unmap keeps the frame: no VacantFrame comes back.
        let mapping = GrantMapping::new(VacantFrame::reclaimed(0x40401), GrantHandle(108));
        let err = xen.grant_unmap(mapping).unwrap_err();
        assert_eq!(err.op, XenOp::GrantUnmap);
        // A failing hypercall wins over whatever the status field holds.
        let mut xen = RecordingXen {
            ret: -14,
            status: -1,
            ..Default::default()
        };
        assert_eq!(
            xen.grant_query_size().unwrap_err().as_errno(),
            Some(XenErrno::EFAULT)
        );
    }

    #[test]
    fn registers_follow_the_arm64_convention() {
        let mut xen = RecordingXen::default();
        xen.xen_version().unwrap();
        xen.console_write(b"hello\n").unwrap();
        xen.sched_shutdown(ShutdownReason::Crash).unwrap();
        xen.evtchn_unmask(EvtchnPort(3)).unwrap();
        xen.evtchn_close(EvtchnPort(3)).unwrap();
        let entries = [GnttabCacheFlush::PROBE; 3];
        xen.call(Hypercall::GrantCacheFlush(CacheFlushEntries(&entries)));
        let expect = [
            (XenOp::XenVersion, 17, 0, None),
            (XenOp::ConsoleWrite, 18, 0, Some(6)),
            (XenOp::SchedShutdown, 29, 2, None),
            (XenOp::EvtchnUnmask, 32, 9, None),
            (XenOp::EvtchnClose, 32, 3, None),
            (XenOp::GrantCacheFlush, 20, 12, None),
        ];
        assert_eq!(xen.log.len(), expect.len());
        for ((op, regs), (want_op, number, command, arg1)) in xen.log.iter().zip(expect) {
            assert_eq!(*op, want_op);
            assert_eq!(regs.number, number, "{op}");
            assert_eq!(regs.args[0], command, "{op}");
            if let Some(arg1) = arg1 {
                assert_eq!(regs.args[1], arg1, "{op}");
            }
        }
        // cache_flush: pointer to the entries in x1, count in x2.
        let (_, regs) = xen.log[5];
        assert_eq!(regs.args[1], address_of(&entries[..]));
        assert_eq!(regs.args[2], 3);
    }

    #[test]
    fn pointers_and_buffers_name_the_borrowed_arguments() {
        let frame = VacantFrame::reclaimed(0x40202);
        let mut arg = XenAddToPhysmap::new(XenMapSpace::GrantTable, 2, frame);
        assert_eq!((arg.space, arg.idx, arg.gpfn), (1, 2, 0x40202));
        let address = address_of(&arg);
        let mut call = Hypercall::AddToPhysmap(&mut arg);
        let regs = call.registers();
        assert_eq!(regs.args, [7, address, 0, 0, 0]);
        assert_eq!(
            call.guest_buffers(),
            [Some(GuestBuffer { address, len: 24 }), None]
        );

        let mut setup = GnttabSetupTable::new();
        let mut frames = [0u64; 4];
        let frames_address = address_of(&frames[..]);
        let mut call = Hypercall::GrantSetupTable {
            setup: &mut setup,
            frames: &mut frames,
        };
        let regs = call.registers();
        assert_eq!(regs.number, 20);
        assert_eq!(regs.args[2], 1);
        assert_eq!(
            call.guest_buffers()[1],
            Some(GuestBuffer {
                address: frames_address,
                len: 32
            })
        );
        assert_eq!((setup.nr_frames, setup.frame_list), (4, frames_address));

        let text = b"abc";
        let mut call = Hypercall::ConsoleWrite(text);
        assert_eq!(call.registers().args[..3], [0, 3, address_of(&text[..])]);
        let mut input = [0u8; 16];
        let address = address_of(&input[..]);
        let mut call = Hypercall::ConsoleRead(&mut input);
        assert_eq!(call.registers().args[..3], [1, 16, address]);
        assert_eq!(
            call.guest_buffers(),
            [Some(GuestBuffer { address, len: 16 }), None]
        );
        assert_eq!(Hypercall::XenVersion.guest_buffers(), [None, None]);
    }
}
