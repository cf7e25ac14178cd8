//! `vcpu_op` arguments (`xen/include/public/vcpu.h`).

/// `VCPUOP_register_vcpu_info`: place a vCPU's `vcpu_info` in guest memory.
pub const VCPUOP_register_vcpu_info: u32 = 10;

/// `struct vcpu_register_vcpu_info`. Xen refuses (`-EINVAL`) a `vcpu_info`
/// that would cross the page's end.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VcpuRegisterVcpuInfo {
    /// Guest frame of the page holding the `vcpu_info` (named `mfn` in Xen).
    pub mfn: u64,
    /// Byte offset of the `vcpu_info` in that page.
    pub offset: u32,
    /// Unused, zero.
    pub rsvd: u32,
}

crate::assert_layout!(VcpuRegisterVcpuInfo, size 16, align 8, mfn @ 0, offset @ 8, rsvd @ 12);

impl VcpuRegisterVcpuInfo {
    /// A `vcpu_info` at `offset` in guest frame `gfn`.
    pub const fn new(gfn: u64, offset: u32) -> Self {
        Self {
            mfn: gfn,
            offset,
            rsvd: 0,
        }
    }
}
