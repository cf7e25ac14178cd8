//! `memory_op` arguments (`xen/include/public/memory.h`).

use crate::domain::DomId;

/// `XENMEM_add_to_physmap`: map a Xen-owned page at a guest frame.
pub const XENMEM_add_to_physmap: u32 = 7;
/// `XENMAPSPACE_shared_info`: the shared-info page (index must be 0).
pub const XENMAPSPACE_shared_info: u32 = 0;
/// `XENMAPSPACE_grant_table`: a grant-table frame (index = frame number).
pub const XENMAPSPACE_grant_table: u32 = 1;

/// `struct xen_add_to_physmap`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct XenAddToPhysmap {
    /// Domain whose physmap changes (`DOMID_SELF`).
    pub domid: u16,
    /// Page count, for `XENMAPSPACE_gmfn_range` only.
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    /// Index into the space (`xen_ulong_t`).
    pub idx: u64,
    /// Guest frame where the page appears (`xen_pfn_t`).
    pub gpfn: u64,
}

crate::assert_layout!(XenAddToPhysmap, size 24, align 8,
    domid @ 0, size @ 2, space @ 4, idx @ 8, gpfn @ 16);

/// The spaces this kernel maps pages from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum XenMapSpace {
    /// The shared-info page; Xen accepts only index 0.
    SharedInfo,
    /// Grant-table frame number `idx`.
    GrantTable,
}

impl XenMapSpace {
    /// The `XENMAPSPACE_*` value.
    pub const fn raw(self) -> u32 {
        match self {
            Self::SharedInfo => XENMAPSPACE_shared_info,
            Self::GrantTable => XENMAPSPACE_grant_table,
        }
    }
}

impl XenAddToPhysmap {
    /// Maps page `idx` of `space` at guest frame `gpfn` of the calling domain.
    pub const fn new(space: XenMapSpace, idx: u64, gpfn: u64) -> Self {
        Self {
            domid: DomId::SELF.0,
            size: 0,
            space: space.raw(),
            idx,
            gpfn,
        }
    }
}
