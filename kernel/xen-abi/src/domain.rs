//! Domain identifiers (`domid_t`, `xen/include/public/xen.h`).

use core::fmt;

/// A Xen domain id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DomId(pub u16);

impl DomId {
    /// `DOMID_SELF`: the calling domain.
    pub const SELF: DomId = DomId(0x7FF0);
    /// `DOMID_IO`: the owner of I/O memory (and, by default, of static
    /// shared memory).
    pub const IO: DomId = DomId(0x7FF1);
    /// `DOMID_XEN`: the owner of Xen's own pages.
    pub const XEN: DomId = DomId(0x7FF2);
    /// Domain 0 (the hardware domain on Arm).
    pub const DOM0: DomId = DomId(0);
}

impl fmt::Display for DomId {
    /// `d1`, as Xen prints domains; the reserved ids by name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::SELF => f.write_str("DOMID_SELF"),
            Self::IO => f.write_str("DOMID_IO"),
            Self::XEN => f.write_str("DOMID_XEN"),
            DomId(id) => write!(f, "d{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_reserved_ids() {
        assert_eq!(DomId(1).to_string(), "d1");
        assert_eq!(DomId::DOM0.to_string(), "d0");
        assert_eq!(DomId::SELF.to_string(), "DOMID_SELF");
        assert_eq!(DomId::IO.to_string(), "DOMID_IO");
        assert_eq!(DomId::XEN.to_string(), "DOMID_XEN");
    }
}
