//! Typed addresses. A physical and a virtual address are different types so
//! that one can never be used where the other is meant.

use core::fmt;

/// Size of a translation granule and of the smallest mapping.
pub const PAGE_SIZE: u64 = 4096;

/// A physical (intermediate-physical under Xen) address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PhysAddr(pub u64);

/// A virtual address in the kernel's address space.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct VirtAddr(pub u64);

/// A half-open physical range `[base, base + size)`, exact to the byte.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct PhysRange {
    /// First byte of the range.
    pub base: PhysAddr,
    /// Length in bytes.
    pub size: u64,
}

macro_rules! address_impls {
    ($t:ident, $tag:literal) => {
        impl $t {
            /// The raw address value.
            pub const fn as_u64(self) -> u64 {
                self.0
            }
            /// Rounds down to a multiple of `align` (a power of two).
            pub const fn align_down(self, align: u64) -> Self {
                Self(self.0 & !(align - 1))
            }
            /// Rounds up to a multiple of `align` (a power of two); `None` on overflow.
            pub const fn checked_align_up(self, align: u64) -> Option<Self> {
                match self.0.checked_add(align - 1) {
                    Some(v) => Some(Self(v & !(align - 1))),
                    None => None,
                }
            }
            /// Whether the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
            /// The address `offset` bytes further; `None` on overflow.
            pub const fn checked_add(self, offset: u64) -> Option<Self> {
                match self.0.checked_add(offset) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($tag, "({:#x})"), self.0)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}
address_impls!(PhysAddr, "PA");
address_impls!(VirtAddr, "VA");

impl PhysRange {
    /// A range from its base and size.
    pub const fn new(base: u64, size: u64) -> Self {
        Self {
            base: PhysAddr(base),
            size,
        }
    }
    /// One past the last byte (saturating at `u64::MAX`).
    pub const fn end(&self) -> u64 {
        self.base.0.saturating_add(self.size)
    }
    /// Whether `pa` lies in the range.
    pub const fn contains(&self, pa: PhysAddr) -> bool {
        pa.0 >= self.base.0 && pa.0 < self.end()
    }
    /// Whether the two ranges share at least one byte.
    pub const fn overlaps(&self, other: &PhysRange) -> bool {
        self.base.0 < other.end() && other.base.0 < self.end()
    }
}

impl fmt::Display for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}..{:#x})", self.base.0, self.end())
    }
}
