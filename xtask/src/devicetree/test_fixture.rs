//! A small device tree shaped like QEMU 7.2's `virt` machine (GICv3), built
//! with `vm-fdt` so tests need neither QEMU nor a checked-in binary.

use vm_fdt::{FdtReserveEntry, FdtWriter};

use super::MemoryReservation;

/// QEMU's virt machine has 32 virtio-mmio transports.
pub(crate) const VIRTIO_MMIO_COUNT: usize = 32;
const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
const VIRTIO_MMIO_STRIDE: u64 = 0x200;
/// The first virtio-mmio SPI.
const VIRTIO_MMIO_SPI: u32 = 16;
const GIC_PHANDLE: u32 = 0x8002;
const CPU_PHANDLE: u32 = 0x8001;
const CLOCK_PHANDLE: u32 = 0x8000;

/// `/memreserve/` entries the fixture carries (QEMU's has none), to check
/// they survive a round trip.
pub(crate) const MEMORY_RESERVATIONS: [MemoryReservation; 2] = [
    MemoryReservation {
        address: 0x4000_0000,
        size: 0x1000,
    },
    MemoryReservation {
        address: 0x4800_0000,
        size: 0x10_0000,
    },
];
/// A non-zero boot CPU, to check the header field survives.
pub(crate) const BOOT_CPUID_PHYS: u32 = 3;

fn reg(pairs: &[(u64, u64)]) -> Vec<u64> {
    pairs.iter().flat_map(|&(a, s)| [a, s]).collect()
}

/// The fixture as a DTB.
pub(crate) fn qemu_like_dtb() -> Vec<u8> {
    build().expect("the fixture is a valid device tree")
}

fn build() -> vm_fdt::FdtWriterResult<Vec<u8>> {
    let reservations: Vec<FdtReserveEntry> = MEMORY_RESERVATIONS
        .iter()
        .map(|r| FdtReserveEntry::new(r.address, r.size))
        .collect::<Result<_, _>>()?;
    let mut fdt = FdtWriter::new_with_mem_reserv(&reservations)?;
    fdt.set_boot_cpuid_phys(BOOT_CPUID_PHYS);
    let root = fdt.begin_node("")?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;
    fdt.property_string("model", "linux,dummy-virt")?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_string("compatible", "linux,dummy-virt")?;

    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec![
            "arm,psci-1.0".into(),
            "arm,psci-0.2".into(),
            "arm,psci".into(),
        ],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;

    let memory = fdt.begin_node("memory@40000000")?;
    fdt.property_array_u64("reg", &reg(&[(0x4000_0000, 0x8000_0000)]))?;
    fdt.property_string("device_type", "memory")?;
    fdt.end_node(memory)?;

    for n in 0..VIRTIO_MMIO_COUNT as u64 {
        let base = VIRTIO_MMIO_BASE + VIRTIO_MMIO_STRIDE * n;
        let node = fdt.begin_node(&format!("virtio_mmio@{base:x}"))?;
        fdt.property_null("dma-coherent")?;
        fdt.property_array_u32("interrupts", &[0, VIRTIO_MMIO_SPI + n as u32, 1])?;
        fdt.property_array_u64("reg", &reg(&[(base, VIRTIO_MMIO_STRIDE)]))?;
        fdt.property_string("compatible", "virtio,mmio")?;
        fdt.end_node(node)?;
    }

    let uart = fdt.begin_node("pl011@9000000")?;
    fdt.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    fdt.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    fdt.property_array_u32("interrupts", &[0, 1, 4])?;
    fdt.property_array_u64("reg", &reg(&[(0x0900_0000, 0x1000)]))?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    fdt.end_node(uart)?;

    let gic = fdt.begin_node("intc@8000000")?;
    fdt.property_phandle(GIC_PHANDLE)?;
    fdt.property_array_u64(
        "reg",
        &reg(&[(0x0800_0000, 0x1_0000), (0x080a_0000, 0xf6_0000)]),
    )?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.end_node(gic)?;

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#size-cells", 0)?;
    fdt.property_u32("#address-cells", 1)?;
    let cpu = fdt.begin_node("cpu@0")?;
    fdt.property_phandle(CPU_PHANDLE)?;
    fdt.property_u32("reg", 0)?;
    fdt.property_string("compatible", "arm,cortex-a57")?;
    fdt.property_string("device_type", "cpu")?;
    fdt.end_node(cpu)?;
    fdt.end_node(cpus)?;

    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_phandle(CLOCK_PHANDLE)?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.end_node(clock)?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("stdout-path", "/pl011@9000000")?;
    fdt.end_node(chosen)?;

    fdt.end_node(root)?;
    fdt.finish()
}
