//! The `/chosen` pieces a boot needs: the command line for a bare QEMU boot,
//! and for Xen its own command line plus the boot modules and dom0less
//! domains of Xen's multiboot device-tree binding
//! (Xen 4.17 `docs/misc/arm/device-tree/booting.txt`).
//!
//! Module addresses are the caller's choice; they must stay clear of where
//! QEMU itself puts the DTB (0x48000000 for a `-kernel` boot).

use super::{DtEditError, Tree};

const CHOSEN: &str = "/chosen";
/// Module `reg` cells: 64-bit addresses and sizes.
const MODULE_CELLS: u32 = 2;

/// A boot module: an image loaded at `addr` (e.g. by QEMU's `-device
/// loader`), `size` bytes long, started with `bootargs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Load address.
    pub addr: u64,
    /// Size in bytes (Xen wants the exact image size).
    pub size: u64,
    /// The kernel's command line.
    pub bootargs: String,
}

/// Sets `/chosen/bootargs`: the kernel command line for a bare QEMU boot.
pub fn set_bootargs(tree: &mut Tree, args: &str) -> Result<(), DtEditError> {
    tree.get_or_create(CHOSEN)?;
    tree.set_string(CHOSEN, "bootargs", args)
}

/// Sets `/chosen/xen,xen-bootargs`: Xen's own command line.
pub fn set_xen_bootargs(tree: &mut Tree, args: &str) -> Result<(), DtEditError> {
    tree.get_or_create(CHOSEN)?;
    tree.set_string(CHOSEN, "xen,xen-bootargs", args)
}

/// Makes `kernel` Xen's dom0: `/chosen` gets 2+2 cells, `xen,xen-bootargs`
/// and a `module@<addr>` child (`multiboot,kernel`).
pub fn add_xen_dom0(
    tree: &mut Tree,
    xen_bootargs: &str,
    kernel: &Module,
) -> Result<(), DtEditError> {
    set_xen_bootargs(tree, xen_bootargs)?;
    tree.set_u32s(CHOSEN, "#address-cells", &[MODULE_CELLS])?;
    tree.set_u32s(CHOSEN, "#size-cells", &[MODULE_CELLS])?;
    add_kernel_module(tree, CHOSEN, kernel)
}

/// Gives Xen's dom0 an initial ramdisk: a `/chosen/module@<addr>` child
/// (`multiboot,ramdisk`) for the `size` bytes loaded at `addr`. Call after
/// [`add_xen_dom0`], which sets `/chosen`'s 2+2 cells.
pub fn add_xen_dom0_ramdisk(tree: &mut Tree, addr: u64, size: u64) -> Result<(), DtEditError> {
    let path = format!("{CHOSEN}/module@{addr:x}");
    tree.add_node(&path)?;
    tree.set_strings(
        &path,
        "compatible",
        &["multiboot,ramdisk", "multiboot,module"],
    )?;
    tree.set_address_size_pairs(&path, "reg", &[(addr, size)])
}

/// Adds a dom0less domU `/chosen/<name>` that boots `kernel` with
/// `memory_kib` KiB of RAM and `cpus` vCPUs, and a virtual PL011 if `vpl011`.
///
/// What Xen 4.17 does with it (its `booting.txt`, `dom0less.pandoc`,
/// `setup.c` and `domain_build.c`, release 4.17.7):
/// - Xen needs no dom0: with no dom0 kernel module and at least one domU,
///   `is_dom0less_mode()` holds, Xen logs "Xen dom0less mode detected" and
///   creates only the domUs (since 4.16). With no hardware domain, a domU's
///   `SCHEDOP_shutdown` does not halt the machine: Xen keeps running.
/// - Without `xen,enhanced` (or with "disabled") the domU gets no PV
///   interfaces and no `/hypervisor` node, so the guest cannot find Xen in its
///   device tree. `"enabled"` (or an empty value) adds xenstore and panics
///   without dom0 ("At the moment, Xenstore support requires dom0 to be
///   present"). `"no-xenstore"` (new in 4.17) gives the grant table, event
///   channels and the `/hypervisor` node, and works with or without dom0, so
///   that is what this sets.
pub fn add_xen_dom0less_domu(
    tree: &mut Tree,
    name: &str,
    memory_kib: u64,
    cpus: u32,
    vpl011: bool,
    kernel: &Module,
) -> Result<(), DtEditError> {
    let path = format!("{CHOSEN}/{name}");
    tree.get_or_create(CHOSEN)?;
    tree.add_node(&path)?;
    tree.set_string(&path, "compatible", "xen,domain")?;
    tree.set_u32s(&path, "#address-cells", &[MODULE_CELLS])?;
    tree.set_u32s(&path, "#size-cells", &[MODULE_CELLS])?;
    // A 64-bit KiB count, two cells whatever the node's cell sizes.
    tree.set_u64(&path, "memory", memory_kib)?;
    tree.set_u32s(&path, "cpus", &[cpus])?;
    if vpl011 {
        tree.set_empty(&path, "vpl011")?;
    }
    tree.set_string(&path, "xen,enhanced", "no-xenstore")?;
    add_kernel_module(tree, &path, kernel)
}

/// Adds `<parent>/module@<addr>` describing `kernel`.
fn add_kernel_module(tree: &mut Tree, parent: &str, kernel: &Module) -> Result<(), DtEditError> {
    let path = format!("{parent}/module@{:x}", kernel.addr);
    tree.add_node(&path)?;
    tree.set_strings(
        &path,
        "compatible",
        &["multiboot,kernel", "multiboot,module"],
    )?;
    tree.set_address_size_pairs(&path, "reg", &[(kernel.addr, kernel.size)])?;
    tree.set_string(&path, "bootargs", &kernel.bootargs)
}

#[cfg(test)]
mod tests {
    use super::super::test_fixture;
    use super::super::{DtEditReason, Tree};
    use super::*;

    const KERNEL: u64 = 0x4700_0000;

    fn fixture() -> Tree {
        Tree::from_dtb(&test_fixture::qemu_like_dtb()).expect("the fixture parses")
    }

    fn module() -> Module {
        Module {
            addr: KERNEL,
            size: 0x12_3456,
            bootargs: "log=debug".into(),
        }
    }

    fn cells(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|c| c.to_be_bytes()).collect()
    }

    /// The properties of `path` in the written DTB, as the `fdt` crate reads them.
    fn props_of(dtb: &[u8], path: &str) -> Vec<(String, Vec<u8>)> {
        let fdt = fdt::Fdt::new(dtb).expect("the fdt crate reads the DTB");
        let node = fdt
            .find_node(path)
            .unwrap_or_else(|| panic!("{path} is in the DTB"));
        node.properties()
            .map(|p| (p.name.to_string(), p.value.to_vec()))
            .collect()
    }

    fn owned(props: &[(&str, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
        props
            .iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect()
    }

    fn kernel_module_props() -> Vec<(String, Vec<u8>)> {
        owned(&[
            (
                "compatible",
                b"multiboot,kernel\0multiboot,module\0".to_vec(),
            ),
            ("reg", cells(&[0, 0x4700_0000, 0, 0x12_3456])),
            ("bootargs", b"log=debug\0".to_vec()),
        ])
    }

    #[test]
    fn bare_bootargs() {
        let mut tree = fixture();
        set_bootargs(&mut tree, "log=info").unwrap();
        let dtb = tree.to_dtb().unwrap();
        let chosen = props_of(&dtb, "/chosen");
        assert!(chosen.contains(&("bootargs".into(), b"log=info\0".to_vec())));
        assert!(
            chosen.iter().any(|(n, _)| n == "stdout-path"),
            "QEMU's own /chosen properties stay"
        );
    }

    #[test]
    fn xen_dom0_chosen_and_module() {
        let mut tree = fixture();
        let xen_args = "console=dtuart dtuart=/pl011@9000000 dom0_mem=256M";
        add_xen_dom0(&mut tree, xen_args, &module()).unwrap();
        let dtb = tree.to_dtb().unwrap();

        let chosen = props_of(&dtb, "/chosen");
        let added: Vec<_> = chosen
            .iter()
            .filter(|(n, _)| n != "stdout-path")
            .cloned()
            .collect();
        assert_eq!(
            added,
            owned(&[
                ("xen,xen-bootargs", format!("{xen_args}\0").into_bytes()),
                ("#address-cells", cells(&[2])),
                ("#size-cells", cells(&[2])),
            ])
        );
        assert_eq!(
            props_of(&dtb, "/chosen/module@47000000"),
            kernel_module_props()
        );
        let fdt = fdt::Fdt::new(&dtb).unwrap();
        let children: Vec<&str> = fdt
            .find_node("/chosen")
            .unwrap()
            .children()
            .map(|c| c.name)
            .collect();
        assert_eq!(children, ["module@47000000"]);
    }

    #[test]
    fn xen_dom0less_domu_node() {
        let mut tree = fixture();
        set_xen_bootargs(&mut tree, "console=dtuart dtuart=/pl011@9000000").unwrap();
        add_xen_dom0less_domu(&mut tree, "domU1", 8 * 1024, 1, true, &module()).unwrap();
        let dtb = tree.to_dtb().unwrap();

        assert_eq!(
            props_of(&dtb, "/chosen/domU1"),
            owned(&[
                ("compatible", b"xen,domain\0".to_vec()),
                ("#address-cells", cells(&[2])),
                ("#size-cells", cells(&[2])),
                ("memory", cells(&[0, 8192])),
                ("cpus", cells(&[1])),
                ("vpl011", Vec::new()),
                ("xen,enhanced", b"no-xenstore\0".to_vec()),
            ])
        );
        assert_eq!(
            props_of(&dtb, "/chosen/domU1/module@47000000"),
            kernel_module_props()
        );
        let fdt = fdt::Fdt::new(&dtb).unwrap();
        assert!(
            fdt.find_node("/chosen")
                .unwrap()
                .property("xen,xen-bootargs")
                .is_some()
        );
        assert!(
            fdt.find_node("/chosen/module@47000000").is_none(),
            "no dom0 module"
        );
    }

    #[test]
    fn domu_without_vpl011_and_duplicates() {
        let mut tree = fixture();
        add_xen_dom0less_domu(&mut tree, "domU1", 1 << 33, 2, false, &module()).unwrap();
        let node = tree.node("/chosen/domU1").unwrap();
        assert!(node.property("vpl011").is_none());
        assert_eq!(node.property("memory").unwrap(), cells(&[2, 0]));
        assert_eq!(node.property("cpus").unwrap(), cells(&[2]));
        let err = add_xen_dom0less_domu(&mut tree, "domU1", 1024, 1, false, &module()).unwrap_err();
        assert_eq!(
            (err.path.as_str(), err.reason),
            ("/chosen/domU1", DtEditReason::NodeExists)
        );
    }

    #[test]
    fn xen_dom0_ramdisk_module() {
        let mut tree = fixture();
        add_xen_dom0(&mut tree, "dom0_mem=512M", &module()).unwrap();
        add_xen_dom0_ramdisk(&mut tree, 0x5800_0000, 0x20_1000).unwrap();
        let dtb = tree.to_dtb().unwrap();
        assert_eq!(
            props_of(&dtb, "/chosen/module@58000000"),
            owned(&[
                (
                    "compatible",
                    b"multiboot,ramdisk\0multiboot,module\0".to_vec(),
                ),
                ("reg", cells(&[0, 0x5800_0000, 0, 0x20_1000])),
            ])
        );
        let err = add_xen_dom0_ramdisk(&mut tree, 0x5800_0000, 1).unwrap_err();
        assert_eq!(err.reason, DtEditReason::NodeExists);
    }

    #[test]
    fn chosen_is_created_when_missing() {
        let mut tree = fixture();
        tree.delete_node("/chosen").unwrap();
        add_xen_dom0(&mut tree, "console=dtuart", &module()).unwrap();
        assert!(tree.node("/chosen/module@47000000").is_ok());
    }
}
