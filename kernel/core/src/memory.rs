//! What the kernel knows about an address, for fault reports.

use core::fmt;

use tidepool_mm::{AddressClass, AddressMap, PhysAddr};

use crate::arch::aarch64::linker::image_layout;

static ADDRESS_MAP: spin::Once<AddressMap> = spin::Once::new();

/// Publishes the address map once the MMU is on; from then on fault reports
/// name the memory class of a faulting address.
pub fn install_address_map(map: AddressMap) -> &'static AddressMap {
    ADDRESS_MAP.call_once(|| map)
}

/// The address map, once installed.
pub fn address_map() -> Option<&'static AddressMap> {
    ADDRESS_MAP.get()
}

/// A description of a virtual address, printable without allocating.
pub enum VirtDescription {
    /// Inside the kernel image.
    Image(&'static str),
    /// A guard page.
    Guard(&'static str),
    /// In the linear map's span: the physical address behind it and its class.
    LinearAlias(PhysAddr, AddressClass<'static>),
    /// Nothing the kernel maps.
    Unknown,
}

impl fmt::Display for VirtDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Image(section) => write!(f, "kernel {section}"),
            Self::Guard(which) => write!(f, "the {which} guard page (stack overflow)"),
            Self::LinearAlias(pa, AddressClass::LinearRam { .. }) => {
                write!(f, "linear map of RAM {pa}")
            }
            Self::LinearAlias(pa, class) => write!(
                f,
                "the linear alias of {pa}: {class}, which is not in the linear map"
            ),
            Self::Unknown => f.write_str("not mapped by the kernel"),
        }
    }
}

/// Describes `va` for a fault report.
pub fn describe_virt(va: u64) -> VirtDescription {
    let layout = image_layout();
    let va_usize = va as usize;
    if layout.stack_guard.contains(va_usize) {
        return VirtDescription::Guard("kernel stack");
    }
    if layout.exception_stack_guard.contains(va_usize) {
        return VirtDescription::Guard("exception stack");
    }
    for (span, name) in [
        (layout.text, "text"),
        (layout.rodata, "rodata"),
        (layout.data, "data/bss"),
        (layout.stack, "stack"),
    ] {
        if span.contains(va_usize) {
            return VirtDescription::Image(name);
        }
    }
    if let Some(map) = address_map() {
        if let Some(pa) = va.checked_sub(map.linear_offset()) {
            let class = map.classify(PhysAddr(pa));
            if class != AddressClass::Unknown {
                return VirtDescription::LinearAlias(PhysAddr(pa), class);
            }
        }
    }
    VirtDescription::Unknown
}
