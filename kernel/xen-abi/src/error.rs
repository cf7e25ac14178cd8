//! Typed hypercall results: the Xen errno, the grant-table status, and the
//! operation that produced them.

use core::fmt;

use crate::cache_flush::GNTTABOP_cache_flush;
use crate::grant::{
    GNTTABOP_map_grant_ref, GNTTABOP_query_size, GNTTABOP_setup_table, GNTTABOP_unmap_grant_ref,
};
use crate::hvm::HVMOP_get_param;
use crate::memory::XENMEM_add_to_physmap;
use crate::version::{XENVER_extraversion, XENVER_get_features, XENVER_version};

macro_rules! xen_errnos {
    ($($name:ident = $value:literal, $text:literal;)*) => {
        /// An errno as Xen reports it (`xen/include/public/errno.h`): a
        /// hypercall returns its negation.
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        #[allow(clippy::upper_case_acronyms)]
        pub enum XenErrno {
            $(
                #[doc = $text]
                $name,
            )*
            /// A value `errno.h` does not define for guests; holds the
            /// positive errno.
            Other(i64),
        }

        impl XenErrno {
            /// The errno for a positive errno value.
            pub const fn from_code(code: i64) -> Self {
                match code {
                    $($value => Self::$name,)*
                    other => Self::Other(other),
                }
            }

            /// The positive errno value.
            pub const fn code(self) -> i64 {
                match self {
                    $(Self::$name => $value,)*
                    Self::Other(code) => code,
                }
            }

            /// The symbolic name (`"EPERM"`), or `None` for [`XenErrno::Other`].
            pub const fn name(self) -> Option<&'static str> {
                match self {
                    $(Self::$name => Some(stringify!($name)),)*
                    Self::Other(_) => None,
                }
            }
        }
    };
}

xen_errnos! {
    EPERM = 1, "Operation not permitted.";
    ENOENT = 2, "No such file or directory.";
    ESRCH = 3, "No such process.";
    EIO = 5, "I/O error.";
    ENXIO = 6, "No such device or address.";
    E2BIG = 7, "Argument list too long.";
    ENOEXEC = 8, "Exec format error.";
    EBADF = 9, "Bad file number.";
    ECHILD = 10, "No child processes.";
    EAGAIN = 11, "Try again.";
    ENOMEM = 12, "Out of memory.";
    EACCES = 13, "Permission denied.";
    EFAULT = 14, "Bad address.";
    EBUSY = 16, "Device or resource busy.";
    EEXIST = 17, "File exists.";
    EXDEV = 18, "Cross-device link.";
    ENODEV = 19, "No such device.";
    EINVAL = 22, "Invalid argument.";
    ENFILE = 23, "File table overflow.";
    EMFILE = 24, "Too many open files.";
    ENOSPC = 28, "No space left on device.";
    EMLINK = 31, "Too many links.";
    EDOM = 33, "Argument out of domain of function.";
    ERANGE = 34, "Result not representable.";
    EDEADLK = 35, "Resource deadlock would occur.";
    ENAMETOOLONG = 36, "File name too long.";
    ENOLCK = 37, "No record locks available.";
    ENOSYS = 38, "Function not implemented.";
    EBADRQC = 56, "Invalid request code.";
    EBADSLT = 57, "Invalid slot.";
    ENODATA = 61, "No data available.";
    ETIME = 62, "Timer expired.";
    EBADMSG = 74, "Not a data message.";
    EOVERFLOW = 75, "Value too large for defined data type.";
    EILSEQ = 84, "Illegal byte sequence.";
    EUSERS = 87, "Too many users.";
    ENOTSOCK = 88, "Socket operation on non-socket.";
    EOPNOTSUPP = 95, "Operation not supported.";
    EADDRINUSE = 98, "Address already in use.";
    EADDRNOTAVAIL = 99, "Cannot assign requested address.";
    ENOBUFS = 105, "No buffer space available.";
    EISCONN = 106, "Transport endpoint is already connected.";
    ENOTCONN = 107, "Transport endpoint is not connected.";
    ESHUTDOWN = 108, "Cannot send after transport endpoint shutdown.";
    ETOOMANYREFS = 109, "Too many references.";
    ETIMEDOUT = 110, "Connection timed out.";
}

impl XenErrno {
    /// Splits a hypercall's return value (x0): negative values are errors,
    /// anything else is the call's result.
    pub const fn check(ret: i64) -> Result<u64, XenErrno> {
        if ret < 0 {
            Err(Self::from_code(ret.wrapping_neg()))
        } else {
            Ok(ret.unsigned_abs())
        }
    }
}

impl fmt::Display for XenErrno {
    /// `EPERM (-1)`: the name and the value the hypercall returned.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ret = self.code().wrapping_neg();
        match self.name() {
            Some(name) => write!(f, "{name} ({ret})"),
            None => write!(f, "unknown errno ({ret})"),
        }
    }
}

macro_rules! grant_statuses {
    ($($name:ident = $value:literal, $cname:literal, $text:literal;)*) => {
        /// A failed `GNTST_*` status, written by Xen into the `status` field of
        /// a grant-table operation whose hypercall itself returned 0.
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        pub enum GrantStatus {
            $(
                #[doc = $text]
                $name,
            )*
            /// A negative status `grant_table.h` does not define.
            Other(i16),
        }

        impl GrantStatus {
            /// `Ok` for `GNTST_okay` (0), the failure otherwise.
            pub const fn check(status: i16) -> Result<(), GrantStatus> {
                match status {
                    0 => Ok(()),
                    $($value => Err(Self::$name),)*
                    other => Err(Self::Other(other)),
                }
            }

            /// The raw status value.
            pub const fn code(self) -> i16 {
                match self {
                    $(Self::$name => $value,)*
                    Self::Other(code) => code,
                }
            }

            /// The C name (`"GNTST_bad_domain"`), or `None` for
            /// [`GrantStatus::Other`].
            pub const fn name(self) -> Option<&'static str> {
                match self {
                    $(Self::$name => Some($cname),)*
                    Self::Other(_) => None,
                }
            }
        }
    };
}

grant_statuses! {
    GeneralError = -1, "GNTST_general_error", "General undefined error.";
    BadDomain = -2, "GNTST_bad_domain", "Unrecognised domain id.";
    BadGntref = -3, "GNTST_bad_gntref", "Unrecognised or inappropriate grant reference.";
    BadHandle = -4, "GNTST_bad_handle", "Unrecognised or inappropriate handle.";
    BadVirtAddr = -5, "GNTST_bad_virt_addr", "Inappropriate virtual address to map.";
    BadDevAddr = -6, "GNTST_bad_dev_addr", "Inappropriate device address to unmap.";
    NoDeviceSpace = -7, "GNTST_no_device_space", "Out of space in the I/O MMU.";
    PermissionDenied = -8, "GNTST_permission_denied", "Not enough privilege for the operation.";
    BadPage = -9, "GNTST_bad_page", "Specified page was invalid for the operation.";
    BadCopyArg = -10, "GNTST_bad_copy_arg", "Copy arguments cross a page boundary.";
    AddressTooBig = -11, "GNTST_address_too_big", "Transfer page address too large.";
    Eagain = -12, "GNTST_eagain", "Operation not done; try again.";
    NoSpace = -13, "GNTST_no_space", "Out of space (handles etc.).";
}

impl fmt::Display for GrantStatus {
    /// `GNTST_bad_domain (-2)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.code()),
            None => write!(f, "unknown grant status ({})", self.code()),
        }
    }
}

/// Every hypercall operation this crate issues, as one name for errors and
/// one source of the hypercall and command numbers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum XenOp {
    /// `xen_version(XENVER_version)`.
    XenVersion,
    /// `xen_version(XENVER_extraversion)`.
    XenExtraVersion,
    /// `xen_version(XENVER_get_features)`.
    XenGetFeatures,
    /// `console_io(CONSOLEIO_write)`.
    ConsoleWrite,
    /// `console_io(CONSOLEIO_read)`.
    ConsoleRead,
    /// `memory_op(XENMEM_add_to_physmap)`.
    AddToPhysmap,
    /// `hvm_op(HVMOP_get_param)`.
    HvmGetParam,
    /// `event_channel_op(EVTCHNOP_bind_virq)`.
    EvtchnBindVirq,
    /// `event_channel_op(EVTCHNOP_bind_interdomain)`.
    EvtchnBindInterdomain,
    /// `event_channel_op(EVTCHNOP_alloc_unbound)`.
    EvtchnAllocUnbound,
    /// `event_channel_op(EVTCHNOP_bind_ipi)`.
    EvtchnBindIpi,
    /// `event_channel_op(EVTCHNOP_send)`.
    EvtchnSend,
    /// `event_channel_op(EVTCHNOP_unmask)`.
    EvtchnUnmask,
    /// `event_channel_op(EVTCHNOP_close)`.
    EvtchnClose,
    /// `event_channel_op(EVTCHNOP_status)`.
    EvtchnStatus,
    /// `sched_op(SCHEDOP_shutdown)`.
    SchedShutdown,
    /// `grant_table_op(GNTTABOP_setup_table)`.
    GrantSetupTable,
    /// `grant_table_op(GNTTABOP_query_size)`.
    GrantQuerySize,
    /// `grant_table_op(GNTTABOP_map_grant_ref)`.
    GrantMap,
    /// `grant_table_op(GNTTABOP_unmap_grant_ref)`.
    GrantUnmap,
    /// `grant_table_op(GNTTABOP_cache_flush)`.
    GrantCacheFlush,
    /// `sysctl(XEN_SYSCTL_readconsole)`.
    SysctlReadConsole,
}

impl XenOp {
    /// The hypercall number (`__HYPERVISOR_*`, passed in x16).
    pub const fn hypercall_number(self) -> u32 {
        match self {
            Self::XenVersion | Self::XenExtraVersion | Self::XenGetFeatures => {
                xen_sys::__HYPERVISOR_xen_version
            }
            Self::ConsoleWrite | Self::ConsoleRead => xen_sys::__HYPERVISOR_console_io,
            Self::AddToPhysmap => xen_sys::__HYPERVISOR_memory_op,
            Self::HvmGetParam => xen_sys::__HYPERVISOR_hvm_op,
            Self::EvtchnBindVirq
            | Self::EvtchnBindInterdomain
            | Self::EvtchnAllocUnbound
            | Self::EvtchnBindIpi
            | Self::EvtchnSend
            | Self::EvtchnUnmask
            | Self::EvtchnClose
            | Self::EvtchnStatus => xen_sys::__HYPERVISOR_event_channel_op,
            Self::SchedShutdown => xen_sys::__HYPERVISOR_sched_op,
            Self::GrantSetupTable
            | Self::GrantQuerySize
            | Self::GrantMap
            | Self::GrantUnmap
            | Self::GrantCacheFlush => xen_sys::__HYPERVISOR_grant_table_op,
            Self::SysctlReadConsole => xen_sys::__HYPERVISOR_sysctl,
        }
    }

    /// The sub-command number (first argument, x0).
    pub const fn command(self) -> u32 {
        match self {
            Self::XenVersion => XENVER_version,
            Self::XenExtraVersion => XENVER_extraversion,
            Self::XenGetFeatures => XENVER_get_features,
            Self::ConsoleWrite => xen_sys::CONSOLEIO_write,
            Self::ConsoleRead => xen_sys::CONSOLEIO_read,
            Self::AddToPhysmap => XENMEM_add_to_physmap,
            Self::HvmGetParam => HVMOP_get_param,
            Self::EvtchnBindVirq => xen_sys::EVTCHNOP_bind_virq,
            Self::EvtchnBindInterdomain => xen_sys::EVTCHNOP_bind_interdomain,
            Self::EvtchnAllocUnbound => xen_sys::EVTCHNOP_alloc_unbound,
            Self::EvtchnBindIpi => xen_sys::EVTCHNOP_bind_ipi,
            Self::EvtchnSend => xen_sys::EVTCHNOP_send,
            Self::EvtchnUnmask => xen_sys::EVTCHNOP_unmask,
            Self::EvtchnClose => xen_sys::EVTCHNOP_close,
            Self::EvtchnStatus => xen_sys::EVTCHNOP_status,
            Self::SchedShutdown => xen_sys::SCHEDOP_shutdown,
            Self::GrantSetupTable => GNTTABOP_setup_table,
            Self::GrantQuerySize => GNTTABOP_query_size,
            Self::GrantMap => GNTTABOP_map_grant_ref,
            Self::GrantUnmap => GNTTABOP_unmap_grant_ref,
            Self::GrantCacheFlush => GNTTABOP_cache_flush,
            // In the argument struct (`cmd`); x0 holds its address.
            Self::SysctlReadConsole => crate::sysctl::XEN_SYSCTL_readconsole,
        }
    }

    /// The hypercall's name as Xen spells it (`"grant_table_op"`).
    pub const fn hypercall_name(self) -> &'static str {
        match self {
            Self::XenVersion | Self::XenExtraVersion | Self::XenGetFeatures => "xen_version",
            Self::ConsoleWrite | Self::ConsoleRead => "console_io",
            Self::AddToPhysmap => "memory_op",
            Self::HvmGetParam => "hvm_op",
            Self::EvtchnBindVirq
            | Self::EvtchnBindInterdomain
            | Self::EvtchnAllocUnbound
            | Self::EvtchnBindIpi
            | Self::EvtchnSend
            | Self::EvtchnUnmask
            | Self::EvtchnClose
            | Self::EvtchnStatus => "event_channel_op",
            Self::SchedShutdown => "sched_op",
            Self::GrantSetupTable
            | Self::GrantQuerySize
            | Self::GrantMap
            | Self::GrantUnmap
            | Self::GrantCacheFlush => "grant_table_op",
            Self::SysctlReadConsole => "sysctl",
        }
    }

    /// The sub-command's name without its prefix (`"cache_flush"`).
    pub const fn command_name(self) -> &'static str {
        match self {
            Self::XenVersion => "version",
            Self::XenExtraVersion => "extraversion",
            Self::XenGetFeatures => "get_features",
            Self::ConsoleWrite => "write",
            Self::ConsoleRead => "read",
            Self::AddToPhysmap => "add_to_physmap",
            Self::HvmGetParam => "get_param",
            Self::EvtchnBindVirq => "bind_virq",
            Self::EvtchnBindInterdomain => "bind_interdomain",
            Self::EvtchnAllocUnbound => "alloc_unbound",
            Self::EvtchnBindIpi => "bind_ipi",
            Self::EvtchnSend => "send",
            Self::EvtchnUnmask => "unmask",
            Self::EvtchnClose => "close",
            Self::EvtchnStatus => "status",
            Self::SchedShutdown => "shutdown",
            Self::GrantSetupTable => "setup_table",
            Self::GrantQuerySize => "query_size",
            Self::GrantMap => "map_grant_ref",
            Self::GrantUnmap => "unmap_grant_ref",
            Self::GrantCacheFlush => "cache_flush",
            Self::SysctlReadConsole => "readconsole",
        }
    }
}

impl fmt::Display for XenOp {
    /// `grant_table_op(cache_flush)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.hypercall_name(), self.command_name())
    }
}

/// Why a hypercall failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum XenErrorCause {
    /// The hypercall returned `-errno`.
    Errno(XenErrno),
    /// The hypercall returned 0 but the operation's `status` field holds a
    /// `GNTST_*` failure.
    GrantStatus(GrantStatus),
}

impl fmt::Display for XenErrorCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Errno(errno) => errno.fmt(f),
            Self::GrantStatus(status) => status.fmt(f),
        }
    }
}

/// A failed hypercall: which operation, and why.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct XenError {
    /// The operation that failed.
    pub op: XenOp,
    /// What Xen reported.
    pub cause: XenErrorCause,
}

impl XenError {
    /// An error carrying an errno.
    pub const fn errno(op: XenOp, errno: XenErrno) -> Self {
        Self {
            op,
            cause: XenErrorCause::Errno(errno),
        }
    }

    /// The errno, if the hypercall itself failed (rather than a `status`).
    pub const fn as_errno(&self) -> Option<XenErrno> {
        match self.cause {
            XenErrorCause::Errno(errno) => Some(errno),
            XenErrorCause::GrantStatus(_) => None,
        }
    }

    /// Converts the return value (x0) of `op` into its result.
    pub const fn check(op: XenOp, ret: i64) -> Result<u64, XenError> {
        match XenErrno::check(ret) {
            Ok(value) => Ok(value),
            Err(errno) => Err(Self::errno(op, errno)),
        }
    }
}

impl fmt::Display for XenError {
    /// `grant_table_op(cache_flush): EPERM (-1)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.op, self.cause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_round_trips_and_names() {
        for (code, name) in [
            (1, "EPERM"),
            (2, "ENOENT"),
            (12, "ENOMEM"),
            (14, "EFAULT"),
            (16, "EBUSY"),
            (17, "EEXIST"),
            (22, "EINVAL"),
            (28, "ENOSPC"),
            (38, "ENOSYS"),
            (84, "EILSEQ"),
            (95, "EOPNOTSUPP"),
            (110, "ETIMEDOUT"),
        ] {
            let errno = XenErrno::from_code(code);
            assert_eq!(errno.code(), code);
            assert_eq!(errno.name(), Some(name));
        }
        // EINTR (4) and ERESTART (85) are Xen-internal and never reach a guest.
        assert_eq!(XenErrno::from_code(4), XenErrno::Other(4));
        assert_eq!(XenErrno::from_code(85), XenErrno::Other(85));
    }

    #[test]
    fn return_values_split_into_result_and_errno() {
        assert_eq!(XenErrno::check(0), Ok(0));
        assert_eq!(XenErrno::check(0x0004_0011), Ok(0x0004_0011));
        assert_eq!(XenErrno::check(-1), Err(XenErrno::EPERM));
        assert_eq!(XenErrno::check(-38), Err(XenErrno::ENOSYS));
        assert_eq!(XenErrno::check(-200), Err(XenErrno::Other(200)));
        assert_eq!(XenErrno::check(i64::MIN), Err(XenErrno::Other(i64::MIN)));
    }

    #[test]
    fn errno_display_names_the_returned_value() {
        assert_eq!(XenErrno::EPERM.to_string(), "EPERM (-1)");
        assert_eq!(XenErrno::EOPNOTSUPP.to_string(), "EOPNOTSUPP (-95)");
        assert_eq!(XenErrno::Other(200).to_string(), "unknown errno (-200)");
    }

    #[test]
    fn error_display_names_hypercall_and_command() {
        let err = XenError::check(XenOp::GrantCacheFlush, -1).unwrap_err();
        assert_eq!(err.to_string(), "grant_table_op(cache_flush): EPERM (-1)");
        assert_eq!(err.as_errno(), Some(XenErrno::EPERM));
        let err = XenError {
            op: XenOp::GrantQuerySize,
            cause: XenErrorCause::GrantStatus(GrantStatus::BadDomain),
        };
        assert_eq!(
            err.to_string(),
            "grant_table_op(query_size): GNTST_bad_domain (-2)"
        );
        assert_eq!(err.as_errno(), None);
    }

    #[test]
    fn grant_status_decodes() {
        assert_eq!(GrantStatus::check(0), Ok(()));
        assert_eq!(GrantStatus::check(-8), Err(GrantStatus::PermissionDenied));
        assert_eq!(GrantStatus::check(-13), Err(GrantStatus::NoSpace));
        assert_eq!(GrantStatus::check(-99), Err(GrantStatus::Other(-99)));
        assert_eq!(
            GrantStatus::Other(-99).to_string(),
            "unknown grant status (-99)"
        );
    }

    #[test]
    fn op_numbers_match_the_public_headers() {
        // xen-abi.md section 5, "Numbers".
        assert_eq!(XenOp::AddToPhysmap.hypercall_number(), 12);
        assert_eq!(XenOp::XenVersion.hypercall_number(), 17);
        assert_eq!(XenOp::ConsoleWrite.hypercall_number(), 18);
        assert_eq!(XenOp::GrantCacheFlush.hypercall_number(), 20);
        assert_eq!(XenOp::SchedShutdown.hypercall_number(), 29);
        assert_eq!(XenOp::EvtchnSend.hypercall_number(), 32);
        assert_eq!(XenOp::HvmGetParam.hypercall_number(), 34);
        let commands = [
            (XenOp::XenVersion, 0),
            (XenOp::XenExtraVersion, 1),
            (XenOp::XenGetFeatures, 6),
            (XenOp::ConsoleWrite, 0),
            (XenOp::ConsoleRead, 1),
            (XenOp::AddToPhysmap, 7),
            (XenOp::HvmGetParam, 1),
            (XenOp::EvtchnBindInterdomain, 0),
            (XenOp::EvtchnBindVirq, 1),
            (XenOp::EvtchnClose, 3),
            (XenOp::EvtchnStatus, 5),
            (XenOp::EvtchnSend, 4),
            (XenOp::EvtchnAllocUnbound, 6),
            (XenOp::EvtchnBindIpi, 7),
            (XenOp::EvtchnUnmask, 9),
            (XenOp::SchedShutdown, 2),
            (XenOp::GrantSetupTable, 2),
            (XenOp::GrantQuerySize, 6),
            (XenOp::GrantMap, 0),
            (XenOp::GrantUnmap, 1),
            (XenOp::GrantCacheFlush, 12),
        ];
        for (op, command) in commands {
            assert_eq!(op.command(), command, "{op}");
        }
    }
}
