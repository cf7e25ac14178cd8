//! `hvm_op` arguments (`xen/include/public/hvm/hvm_op.h`, `hvm/params.h`).
//! On Arm a guest may only read a few parameters of itself.

use crate::domain::DomId;

/// `HVMOP_get_param`.
pub const HVMOP_get_param: u32 = 1;

/// `struct xen_hvm_param`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct XenHvmParam {
    /// Domain to query (`DOMID_SELF`).
    pub domid: u16,
    /// Padding.
    pub pad: u16,
    /// `HVM_PARAM_*`.
    pub index: u32,
    /// OUT: the parameter's value.
    pub value: u64,
}

crate::assert_layout!(XenHvmParam, size 16, align 8, domid @ 0, pad @ 2, index @ 4, value @ 8);

impl XenHvmParam {
    /// A query of `param` of the calling domain.
    pub const fn get(param: HvmParam) -> Self {
        Self {
            domid: DomId::SELF.0,
            pad: 0,
            index: param.index(),
            value: 0,
        }
    }
}

/// The parameters Arm lets a guest read (x4.17 `xen/arch/arm/hvm.c`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HvmParam {
    /// `HVM_PARAM_CALLBACK_IRQ` (0).
    CallbackIrq,
    /// `HVM_PARAM_STORE_PFN` (1): the xenstore ring's frame.
    StorePfn,
    /// `HVM_PARAM_STORE_EVTCHN` (2): the xenstore event channel.
    StoreEvtchn,
    /// `HVM_PARAM_CONSOLE_PFN` (17): the PV console ring's frame.
    ConsolePfn,
    /// `HVM_PARAM_CONSOLE_EVTCHN` (18): the PV console event channel.
    ConsoleEvtchn,
}

impl HvmParam {
    /// The `HVM_PARAM_*` index.
    pub const fn index(self) -> u32 {
        match self {
            Self::CallbackIrq => 0,
            Self::StorePfn => 1,
            Self::StoreEvtchn => 2,
            Self::ConsolePfn => 17,
            Self::ConsoleEvtchn => 18,
        }
    }
}
