//! The address map: what every physical address is, and how (or whether) the
//! kernel may reach it.
//!
//! This is the one place that answers `phys_to_virt`. It refuses, with a typed
//! error naming the region, every address that is not in the linear map: a
//! no-map DMA pool in particular, whose linear alias is deliberately left
//! unmapped. Pool memory is reached only through the pool's own window.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{PhysAddr, PhysRange, VirtAddr};

/// What a region of physical address space is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegionKind {
    /// RAM in the linear map (Normal write-back).
    LinearRam,
    /// A `no-map` `shared-dma-pool`: RAM that is not in the linear map and is
    /// reached only through the pool's own window.
    NoMapPool,
    /// A `shared-dma-pool` without `no-map`: in the linear map, and also the
    /// private pool of its devices.
    MappedPool,
    /// A `no-map` reserved region that is not a DMA pool: never mapped.
    NoMapReserved,
    /// Device registers (mapped Device-nGnRE where the kernel uses them).
    Mmio,
}

/// One classified physical range.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Region {
    /// Device-tree path (or another stable name) of the region.
    pub name: String,
    /// The physical range, exact to the byte.
    pub phys: PhysRange,
    /// What the range is.
    pub kind: RegionKind,
    /// Where the kernel maps the range outside the linear map (a pool's
    /// window, an MMIO mapping), if it does.
    pub window: Option<VirtAddr>,
}

/// The class of one physical address, as [`AddressMap::classify`] answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AddressClass<'a> {
    /// Linear-mapped RAM at this virtual address.
    LinearRam {
        /// The linear-map address of the byte.
        virt: VirtAddr,
    },
    /// A no-map pool; `window` is the byte's address in the pool's window.
    NoMapPool {
        /// Name of the pool's region.
        pool: &'a str,
        /// The byte's address in the pool window, if the window is mapped.
        window: Option<VirtAddr>,
    },
    /// A mapped (not no-map) pool; `virt` is its linear-map address.
    MappedPool {
        /// Name of the pool's region.
        pool: &'a str,
        /// The linear-map address of the byte.
        virt: VirtAddr,
    },
    /// A no-map reserved region that is not a pool.
    NoMapReserved {
        /// Name of the region.
        region: &'a str,
    },
    /// Device registers.
    Mmio {
        /// Name of the device.
        device: &'a str,
    },
    /// Nothing the kernel knows of.
    Unknown,
}

impl fmt::Display for AddressClass<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LinearRam { .. } => f.write_str("linear RAM"),
            Self::NoMapPool { pool, .. } => write!(f, "no-map pool {pool}"),
            Self::MappedPool { pool, .. } => write!(f, "mapped pool {pool}"),
            Self::NoMapReserved { region } => write!(f, "no-map reserved {region}"),
            Self::Mmio { device } => write!(f, "MMIO {device}"),
            Self::Unknown => f.write_str("unknown memory"),
        }
    }
}

/// Why an address could not be translated.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum TranslationError {
    /// `phys_to_virt` of an address outside the linear map; says what it is.
    NotLinear {
        /// The address asked for.
        phys: PhysAddr,
        /// What the address is instead (e.g. "no-map pool /reserved-memory/dma@78000000").
        class: String,
    },
    /// `virt_to_phys` of an address in no window the kernel maps.
    NotMapped {
        /// The address asked for.
        virt: VirtAddr,
    },
}

impl fmt::Display for TranslationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotLinear { phys, class } => {
                write!(
                    f,
                    "phys_to_virt({phys}) refused: {class}, not in the linear map"
                )
            }
            Self::NotMapped { virt } => write!(f, "virt_to_phys({virt}): not a kernel mapping"),
        }
    }
}

/// A range the kernel maps at its physical address (VA == PA), such as a
/// section of the kernel image.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IdentityRange {
    /// What the range is (e.g. "kernel text").
    pub name: String,
    /// The physical (and virtual) range.
    pub phys: PhysRange,
}

/// Every classified physical range plus the linear-map offset.
///
/// Invariant: regions are sorted by base and do not overlap.
#[derive(Clone, Debug, Default)]
pub struct AddressMap {
    regions: Vec<Region>,
    linear_offset: u64,
    identity: Vec<IdentityRange>,
}

impl AddressMap {
    /// An address map whose linear map places physical `pa` at virtual
    /// `pa + linear_offset`. Regions may come in any order but must not
    /// overlap; overlapping regions are a bug in the caller's plan and
    /// are reported as `Err` with the two names.
    pub fn new(linear_offset: u64, mut regions: Vec<Region>) -> Result<Self, (String, String)> {
        regions.sort_by_key(|r| r.phys.base);
        for pair in regions.windows(2) {
            if pair[0].phys.overlaps(&pair[1].phys) {
                return Err((pair[0].name.clone(), pair[1].name.clone()));
            }
        }
        Ok(Self {
            regions,
            linear_offset,
            identity: Vec::new(),
        })
    }

    /// The same map, also recording `ranges` as mapped at VA == PA, so that
    /// [`Self::virt_to_phys`] answers for them. They may overlap the
    /// regions (the kernel image is RAM that is also in the linear map).
    pub fn with_identity_ranges(mut self, mut ranges: Vec<IdentityRange>) -> Self {
        ranges.sort_by_key(|r| r.phys.base);
        self.identity = ranges;
        self
    }

    /// The ranges mapped at VA == PA, sorted by base.
    pub fn identity_ranges(&self) -> &[IdentityRange] {
        &self.identity
    }

    /// The address of `pa` in the window of the region containing it (a
    /// no-map pool's window, an MMIO mapping), if that region has one.
    pub fn window_address(&self, pa: PhysAddr) -> Option<VirtAddr> {
        let region = self.region_of(pa)?;
        region
            .window
            .map(|w| VirtAddr(w.0 + (pa.0 - region.phys.base.0)))
    }

    /// The regions, sorted by base.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The offset from a linear-mapped physical address to its virtual address.
    pub fn linear_offset(&self) -> u64 {
        self.linear_offset
    }

    /// The region containing `pa`, if any.
    pub fn region_of(&self, pa: PhysAddr) -> Option<&Region> {
        let idx = self.regions.partition_point(|r| r.phys.end() <= pa.0);
        self.regions.get(idx).filter(|r| r.phys.contains(pa))
    }

    /// What `pa` is.
    pub fn classify(&self, pa: PhysAddr) -> AddressClass<'_> {
        let Some(region) = self.region_of(pa) else {
            return AddressClass::Unknown;
        };
        let offset_in_region = pa.0 - region.phys.base.0;
        match region.kind {
            RegionKind::LinearRam => AddressClass::LinearRam {
                virt: self.linear(pa),
            },
            RegionKind::MappedPool => AddressClass::MappedPool {
                pool: &region.name,
                virt: self.linear(pa),
            },
            RegionKind::NoMapPool => AddressClass::NoMapPool {
                pool: &region.name,
                window: region.window.map(|w| VirtAddr(w.0 + offset_in_region)),
            },
            RegionKind::NoMapReserved => AddressClass::NoMapReserved {
                region: &region.name,
            },
            RegionKind::Mmio => AddressClass::Mmio {
                device: &region.name,
            },
        }
    }

    /// The linear-map address of `pa`, refused for anything not in the linear map.
    pub fn phys_to_virt(&self, pa: PhysAddr) -> Result<VirtAddr, TranslationError> {
        match self.classify(pa) {
            AddressClass::LinearRam { virt } | AddressClass::MappedPool { virt, .. } => Ok(virt),
            other => Err(TranslationError::NotLinear {
                phys: pa,
                class: other.to_string_lossless(),
            }),
        }
    }

    /// The physical address behind a kernel virtual address in the linear map,
    /// in any region's window, or in an identity-mapped range.
    pub fn virt_to_phys(&self, va: VirtAddr) -> Result<PhysAddr, TranslationError> {
        if self
            .identity
            .iter()
            .any(|r| r.phys.contains(PhysAddr(va.0)))
        {
            return Ok(PhysAddr(va.0));
        }
        let linear_candidate = va.0.checked_sub(self.linear_offset).map(PhysAddr);
        if let Some(pa) = linear_candidate
            && matches!(
                self.region_of(pa).map(|r| r.kind),
                Some(RegionKind::LinearRam | RegionKind::MappedPool)
            )
        {
            return Ok(pa);
        }
        self.regions
            .iter()
            .find_map(|r| {
                let w = r.window?;
                (va.0 >= w.0 && va.0 - w.0 < r.phys.size)
                    .then(|| PhysAddr(r.phys.base.0 + (va.0 - w.0)))
            })
            .ok_or(TranslationError::NotMapped { virt: va })
    }

    fn linear(&self, pa: PhysAddr) -> VirtAddr {
        VirtAddr(pa.0.wrapping_add(self.linear_offset))
    }
}

impl AddressClass<'_> {
    fn to_string_lossless(self) -> String {
        use core::fmt::Write;
        let mut s = String::new();
        let _ = write!(s, "{self}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AddressMap {
        AddressMap::new(
            0xffff_0000_0000_0000,
            alloc::vec![
                Region {
                    name: "/memory@40000000".into(),
                    phys: PhysRange::new(0x4000_0000, 0x3800_0000),
                    kind: RegionKind::LinearRam,
                    window: None,
                },
                Region {
                    name: "/reserved-memory/dma@78000000".into(),
                    phys: PhysRange::new(0x7800_0000, 0x40_0000),
                    kind: RegionKind::NoMapPool,
                    window: Some(VirtAddr(0xffff_f000_0000_0000)),
                },
                Region {
                    name: "/pl011@9000000".into(),
                    phys: PhysRange::new(0x0900_0000, 0x1000),
                    kind: RegionKind::Mmio,
                    window: Some(VirtAddr(0xffff_e000_0000_0000)),
                },
            ],
        )
        .unwrap()
    }

    #[test]
    fn linear_ram_translates_both_ways() {
        let map = sample();
        let va = map.phys_to_virt(PhysAddr(0x4000_1234)).unwrap();
        assert_eq!(va, VirtAddr(0xffff_0000_4000_1234));
        assert_eq!(map.virt_to_phys(va).unwrap(), PhysAddr(0x4000_1234));
    }

    #[test]
    fn no_map_pool_is_refused_by_name() {
        let map = sample();
        let err = map.phys_to_virt(PhysAddr(0x7800_0010)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "phys_to_virt(0x78000010) refused: no-map pool /reserved-memory/dma@78000000, not in the linear map"
        );
    }

    #[test]
    fn pool_window_translates_back() {
        let map = sample();
        assert_eq!(
            map.classify(PhysAddr(0x7800_0010)),
            AddressClass::NoMapPool {
                pool: "/reserved-memory/dma@78000000",
                window: Some(VirtAddr(0xffff_f000_0000_0010))
            }
        );
        assert_eq!(
            map.virt_to_phys(VirtAddr(0xffff_f000_0000_0010)).unwrap(),
            PhysAddr(0x7800_0010)
        );
        // The pool's linear alias is not a kernel mapping.
        assert!(map.virt_to_phys(VirtAddr(0xffff_0000_7800_0010)).is_err());
    }

    #[test]
    fn mmio_and_unknown_are_refused() {
        let map = sample();
        assert!(map.phys_to_virt(PhysAddr(0x0900_0000)).is_err());
        assert_eq!(map.classify(PhysAddr(0x1000)), AddressClass::Unknown);
        assert_eq!(map.classify(PhysAddr(0x7840_0000)), AddressClass::Unknown);
    }

    #[test]
    fn identity_ranges_translate_to_themselves_only() {
        let map = sample().with_identity_ranges(alloc::vec![IdentityRange {
            name: "kernel text".into(),
            phys: PhysRange::new(0x4008_0000, 0x2000),
        }]);
        assert_eq!(
            map.virt_to_phys(VirtAddr(0x4008_1fff)).unwrap(),
            PhysAddr(0x4008_1fff)
        );
        assert_eq!(
            map.virt_to_phys(VirtAddr(0x4008_2000)).unwrap_err(),
            TranslationError::NotMapped {
                virt: VirtAddr(0x4008_2000)
            }
        );
        // The image is still reached through the linear map by phys_to_virt.
        assert_eq!(
            map.phys_to_virt(PhysAddr(0x4008_0000)).unwrap(),
            VirtAddr(0xffff_0000_4008_0000)
        );
        assert_eq!(map.identity_ranges().len(), 1);
    }

    #[test]
    fn window_address_follows_the_region_offset() {
        let map = sample();
        assert_eq!(
            map.window_address(PhysAddr(0x0900_0018)),
            Some(VirtAddr(0xffff_e000_0000_0018))
        );
        assert_eq!(
            map.window_address(PhysAddr(0x7800_0010)),
            Some(VirtAddr(0xffff_f000_0000_0010))
        );
        assert_eq!(
            map.window_address(PhysAddr(0x4000_0000)),
            None,
            "linear RAM has no window"
        );
        assert_eq!(map.window_address(PhysAddr(0x1000)), None);
    }

    #[test]
    fn overlapping_regions_are_rejected() {
        let r = |name: &str, base| Region {
            name: name.into(),
            phys: PhysRange::new(base, 0x2000),
            kind: RegionKind::LinearRam,
            window: None,
        };
        assert_eq!(
            AddressMap::new(0, alloc::vec![r("a", 0x1000), r("b", 0x2000)]).unwrap_err(),
            ("a".into(), "b".into())
        );
    }
}
