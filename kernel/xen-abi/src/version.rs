//! `xen_version` results (`xen/include/public/version.h`) and the feature
//! flags of `XENVER_get_features` (`xen/include/public/features.h`).

use core::fmt;

/// `XENVER_version`: returns `major << 16 | minor`.
pub const XENVER_version: u32 = 0;
/// `XENVER_extraversion`: fills a `char[16]`.
pub const XENVER_extraversion: u32 = 1;
/// `XENVER_get_features`: fills a [`XenFeatureInfo`].
pub const XENVER_get_features: u32 = 6;

/// Xen's version as `XENVER_version` packs it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct XenVersion {
    /// Major version (4 for Xen 4.17).
    pub major: u16,
    /// Minor version (17 for Xen 4.17).
    pub minor: u16,
}

impl XenVersion {
    /// Decodes the `major << 16 | minor` value `XENVER_version` returns.
    pub const fn from_raw(raw: u32) -> Self {
        Self {
            major: (raw >> 16) as u16,
            minor: (raw & 0xffff) as u16,
        }
    }
}

impl fmt::Display for XenVersion {
    /// `4.17`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// `xen_extraversion_t`: the version suffix (`".7"`, `"-unstable"`),
/// NUL-padded. Also the buffer `XENVER_extraversion` writes.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct XenExtraVersion {
    /// The raw characters.
    pub bytes: [u8; 16],
}

crate::assert_layout!(XenExtraVersion, size 16, align 1, bytes @ 0);

impl XenExtraVersion {
    /// The suffix up to the first NUL. Bytes that are not UTF-8 end it early:
    /// the longest valid prefix is returned.
    pub fn as_str(&self) -> &str {
        let len = self
            .bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.bytes.len());
        let text = &self.bytes[..len];
        match core::str::from_utf8(text) {
            Ok(s) => s,
            // The prefix up to `valid_up_to` is valid UTF-8 by definition.
            Err(e) => core::str::from_utf8(&text[..e.valid_up_to()]).unwrap_or_default(),
        }
    }
}

impl fmt::Display for XenExtraVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `struct xen_feature_info`, the argument of `XENVER_get_features`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct XenFeatureInfo {
    /// IN: which 32-bit submap to return (Xen defines only submap 0).
    pub submap_idx: u32,
    /// OUT: the submap's bits.
    pub submap: u32,
}

crate::assert_layout!(XenFeatureInfo, size 8, align 4, submap_idx @ 0, submap @ 4);

macro_rules! xen_features {
    ($($name:ident = $bit:literal, $cname:literal, $text:literal;)*) => {
        /// A `XENFEAT_*` flag of submap 0.
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        pub enum XenFeature {
            $(
                #[doc = $text]
                $name = $bit,
            )*
        }

        impl XenFeature {
            /// Every flag, in bit order.
            pub const ALL: &'static [XenFeature] = &[$(Self::$name),*];

            /// The flag's name without the `XENFEAT_` prefix.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$name => $cname,)*
                }
            }
        }
    };
}

xen_features! {
    WritablePageTables = 0, "writable_page_tables", "x86 PV: page tables are writable.";
    WritableDescriptorTables = 1, "writable_descriptor_tables",
        "x86 PV: descriptor tables are writable.";
    AutoTranslatedPhysmap = 2, "auto_translated_physmap",
        "Xen translates guest-physical to machine addresses.";
    SupervisorModeKernel = 3, "supervisor_mode_kernel", "The guest kernel runs in supervisor mode.";
    PaePgdirAbove4gb = 4, "pae_pgdir_above_4gb", "x86 PAE page directories may lie above 4 GiB.";
    MmuPtUpdatePreserveAd = 5, "mmu_pt_update_preserve_ad",
        "x86: MMU_PT_UPDATE_PRESERVE_AD is supported.";
    HighmemAssist = 6, "highmem_assist", "x86: MMU_{CLEAR,COPY}_PAGE are supported.";
    GnttabMapAvailBits = 7, "gnttab_map_avail_bits",
        "Grant mappings may use the PTE's available bits.";
    HvmCallbackVector = 8, "hvm_callback_vector", "x86 HVM: events arrive on a callback vector.";
    HvmSafePvclock = 9, "hvm_safe_pvclock", "x86 HVM: the PV clock is safe to use.";
    HvmPirqs = 10, "hvm_pirqs", "x86 HVM: physical interrupts arrive as event channels.";
    Dom0 = 11, "dom0", "The guest is the initial (hardware) domain.";
    GrantMapIdentity = 12, "grant_map_identity", "Grants are mapped 1:1 in the hardware domain.";
    MemoryOpVnodeSupported = 13, "memory_op_vnode_supported", "XENMEMF_vnode is supported.";
    ArmSmcccSupported = 14, "ARM_SMCCC_supported", "Arm: the SMCCC firmware interface is available.";
    LinuxRsdpUnrestricted = 15, "linux_rsdp_unrestricted",
        "x86 PVH: the ACPI RSDP may be anywhere.";
    NotDirectMapped = 16, "not_direct_mapped",
        "Guest-physical differs from machine-physical (not 1:1).";
    DirectMapped = 17, "direct_mapped", "Guest-physical equals machine-physical (1:1).";
    RunstatePhysArea = 18, "runstate_phys_area", "VCPUOP_register_runstate_phys_area is available.";
    VcpuTimePhysArea = 19, "vcpu_time_phys_area",
        "VCPUOP_register_vcpu_time_phys_area is available.";
    DmMsixAllWrites = 20, "dm_msix_all_writes",
        "Device models see all MSI-X table writes.";
}

impl XenFeature {
    /// The flag's bit number in submap 0.
    pub const fn bit(self) -> u32 {
        self as u32
    }
}

/// Submap 0 of `XENVER_get_features`, decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct XenFeatures {
    /// The raw submap.
    pub submap: u32,
}

impl XenFeatures {
    /// Whether `feature` is set.
    pub const fn has(self, feature: XenFeature) -> bool {
        self.submap & (1 << feature.bit()) != 0
    }

    /// The flags that are set, in bit order.
    pub fn iter(self) -> impl Iterator<Item = XenFeature> {
        XenFeature::ALL
            .iter()
            .copied()
            .filter(move |&f| self.has(f))
    }

    /// Set bits this crate has no name for.
    pub fn unknown_bits(self) -> u32 {
        XenFeature::ALL
            .iter()
            .fold(self.submap, |bits, f| bits & !(1 << f.bit()))
    }
}

impl fmt::Display for XenFeatures {
    /// `0x00030800 (dom0 not_direct_mapped direct_mapped)`, with any unnamed
    /// bits as `+0x...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x} (", self.submap)?;
        let mut first = true;
        for feature in self.iter() {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(feature.name())?;
            first = false;
        }
        let unknown = self.unknown_bits();
        if unknown != 0 {
            if !first {
                f.write_str(" ")?;
            }
            write!(f, "+{unknown:#x}")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_decodes_major_and_minor() {
        let v = XenVersion::from_raw(4 << 16 | 17);
        assert_eq!(
            v,
            XenVersion {
                major: 4,
                minor: 17
            }
        );
        assert_eq!(v.to_string(), "4.17");
        assert_eq!(XenVersion::from_raw(0x0004_0015).to_string(), "4.21");
        assert!(XenVersion::from_raw(4 << 16 | 21) > XenVersion::from_raw(4 << 16 | 17));
    }

    #[test]
    fn extraversion_stops_at_nul() {
        let mut extra = XenExtraVersion::default();
        extra.bytes[..2].copy_from_slice(b".7");
        assert_eq!(extra.as_str(), ".7");
        extra.bytes = *b"-unstable-abcdef";
        assert_eq!(extra.as_str(), "-unstable-abcdef");
        assert_eq!(XenExtraVersion::default().as_str(), "");
    }

    #[test]
    fn extraversion_keeps_valid_prefix_of_bad_utf8() {
        let mut extra = XenExtraVersion::default();
        extra.bytes[..4].copy_from_slice(&[b'.', b'7', 0xff, b'x']);
        assert_eq!(extra.as_str(), ".7");
    }

    #[test]
    fn features_decode_with_names() {
        let features = XenFeatures {
            submap: 1 << 11 | 1 << 17 | 1 << 2,
        };
        assert!(features.has(XenFeature::DirectMapped));
        assert!(features.has(XenFeature::Dom0));
        assert!(!features.has(XenFeature::NotDirectMapped));
        let names: Vec<_> = features.iter().map(XenFeature::name).collect();
        assert_eq!(names, ["auto_translated_physmap", "dom0", "direct_mapped"]);
        assert_eq!(
            features.to_string(),
            "0x00020804 (auto_translated_physmap dom0 direct_mapped)"
        );
    }

    #[test]
    fn features_report_unknown_bits() {
        let features = XenFeatures {
            submap: 1 << 16 | 1 << 30,
        };
        assert_eq!(features.unknown_bits(), 1 << 30);
        assert_eq!(
            features.to_string(),
            "0x40010000 (not_direct_mapped +0x40000000)"
        );
        assert_eq!(XenFeatures { submap: 0 }.to_string(), "0x00000000 ()");
    }

    #[test]
    fn feature_bits_match_features_h() {
        assert_eq!(XenFeature::NotDirectMapped.bit(), 16);
        assert_eq!(XenFeature::DirectMapped.bit(), 17);
        for (i, feature) in XenFeature::ALL.iter().enumerate() {
            assert_eq!(feature.bit() as usize, i);
        }
    }
}
