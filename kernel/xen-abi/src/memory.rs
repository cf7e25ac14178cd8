//! `memory_op` arguments (`xen/include/public/memory.h`), and the token that
//! names the guest frame Xen places a page at.

use crate::domain::DomId;

/// `XENMEM_add_to_physmap`: map a Xen-owned page at a guest frame.
pub const XENMEM_add_to_physmap: u32 = 7;
/// `XENMAPSPACE_shared_info`: the shared-info page (index must be 0).
pub const XENMAPSPACE_shared_info: u32 = 0;
/// `XENMAPSPACE_grant_table`: a grant-table frame (index = frame number).
pub const XENMAPSPACE_grant_table: u32 = 1;

/// A frame of this domain's guest-physical space that its owner hands over
/// so that Xen places a page there: a Xen page
/// ([`Hypervisor::add_to_physmap`](crate::Hypervisor::add_to_physmap)) or
/// another domain's granted frame
/// ([`Hypervisor::grant_map`](crate::Hypervisor::grant_map)).
///
/// Xen replaces whatever the frame held, so naming a frame is `unsafe`: a
/// frame of the kernel's own RAM would vanish from under whoever uses it.
/// Only [`VacantFrame::new`] (the owner's promise), a successful
/// [`Hypervisor::grant_unmap`](crate::Hypervisor::grant_unmap) (which
/// hands the frame back) and a [`GrantRegion`](crate::GrantRegion) (whose
/// `unsafe` constructor is the promise for the region's frames) make one. It is neither `Clone` nor `Copy`: one
/// frame, one placement.
///
/// ```compile_fail,E0133
/// // Naming a frame is the owner's promise, made in `unsafe`.
/// let frame = tidepool_xen_abi::VacantFrame::new(0x40000);
/// ```
///
/// ```compile_fail,E0451
/// // The number is private: no struct literal, no forged frame.
/// let frame = tidepool_xen_abi::VacantFrame { gfn: 0x40000 };
/// ```
#[derive(PartialEq, Eq, Debug)]
pub struct VacantFrame {
    gfn: u64,
}

impl VacantFrame {
    /// The frame `gfn` (guest-physical address >> 12), handed over by its
    /// owner.
    ///
    /// # Safety
    ///
    /// The caller owns guest frame `gfn` of this domain and gives it up:
    /// it is guest-physical space nothing uses (an extended region's page,
    /// the grant-table region) or RAM the caller gives up for good; from
    /// now on nothing accesses the frame except as the page Xen places
    /// there, for as long as it stays; and no other `VacantFrame` names it.
    #[allow(unsafe_code)] // Declares the contract above; no unsafe operation.
    pub const unsafe fn new(gfn: u64) -> Self {
        Self { gfn }
    }

    /// A frame whose [`VacantFrame::new`] contract another promise already
    /// covers: one a successful unmap handed back (it holds again for its
    /// former owner), or a frame of a [`GrantRegion`](crate::GrantRegion).
    pub(crate) const fn reclaimed(gfn: u64) -> Self {
        Self { gfn }
    }

    /// The guest frame number.
    pub const fn gfn(&self) -> u64 {
        self.gfn
    }

    /// The frame's guest-physical address.
    pub const fn gpa(&self) -> u64 {
        self.gfn << 12
    }
}

/// `struct xen_add_to_physmap`. Its fields are private and only
/// [`Hypervisor::add_to_physmap`](crate::Hypervisor::add_to_physmap) builds
/// one, from a [`VacantFrame`]: safe code cannot name a frame in a
/// [`Hypercall::AddToPhysmap`](crate::Hypercall::AddToPhysmap).
///
/// ```compile_fail,E0624
/// // No constructor outside this crate, even with a frame in hand: the
/// // typed call is the only way to issue the hypercall.
/// use tidepool_xen_abi::{VacantFrame, XenMapSpace, memory::XenAddToPhysmap};
/// // SAFETY: (for the example) a frame nothing uses.
/// let frame = unsafe { VacantFrame::new(0x40000) };
/// let arg = XenAddToPhysmap::new(XenMapSpace::SharedInfo, 0, frame);
/// ```
#[repr(C)]
#[derive(PartialEq, Eq, Debug)]
pub struct XenAddToPhysmap {
    /// Domain whose physmap changes (`DOMID_SELF`).
    pub(crate) domid: u16,
    /// Page count, for `XENMAPSPACE_gmfn_range` only.
    pub(crate) size: u16,
    /// `XENMAPSPACE_*`.
    pub(crate) space: u32,
    /// Index into the space (`xen_ulong_t`).
    pub(crate) idx: u64,
    /// Guest frame where the page appears (`xen_pfn_t`).
    pub(crate) gpfn: u64,
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
    /// Maps page `idx` of `space` at `frame` of the calling domain.
    pub(crate) const fn new(space: XenMapSpace, idx: u64, frame: VacantFrame) -> Self {
        Self {
            domid: DomId::SELF.0,
            size: 0,
            space: space.raw(),
            idx,
            gpfn: frame.gfn,
        }
    }
}
