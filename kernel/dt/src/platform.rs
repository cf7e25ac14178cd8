//! Platform facts the kernel needs once at boot: `/chosen`, the Xen
//! `/hypervisor` node, the GIC, the architected timer, PSCI, virtio-mmio
//! transports, i.MX uSDHC controllers and UARTs.
//!
//! Only available nodes (`status` absent or okay on the node and every
//! ancestor) are read. Every `reg` is translated to a root (CPU physical)
//! address through the `ranges` of the buses above it. A node with an error
//! is left out and the error recorded in [`Platform::errors`].

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::blob;
use crate::error::{DtbError, NodeError, NodeErrorKind};
use crate::range::AddrRange;
use crate::tree::{self, ROOT, Tree};

/// GICv2 `compatible` strings.
const GIC_V2: &[&str] = &[
    "arm,gic-400",
    "arm,cortex-a15-gic",
    "arm,cortex-a9-gic",
    "arm,cortex-a7-gic",
];
/// GICv3 `compatible` strings.
const GIC_V3: &[&str] = &["arm,gic-v3"];
/// Architected (generic) timer `compatible` strings.
const ARCH_TIMER: &[&str] = &["arm,armv8-timer", "arm,armv7-timer"];
/// Position of the virtual timer among the architected timer's interrupts
/// (secure physical, non-secure physical, virtual, hypervisor).
const VIRTUAL_TIMER: usize = 2;
/// i.MX uSDHC `compatible` strings: the i.MX 8M Plus and the earlier
/// parts with the same register layout its node also lists.
const USDHC: &[&str] = &["fsl,imx8mp-usdhc", "fsl,imx8mm-usdhc", "fsl,imx7d-usdhc"];
/// Largest SPI number (INTID 1019).
const MAX_SPI: u32 = 987;
/// Largest PPI number (INTID 31).
const MAX_PPI: u32 = 15;

/// Facts from `/chosen`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chosen {
    /// `bootargs`.
    pub bootargs: Option<String>,
    /// `stdout-path` (or `linux,stdout-path`), resolved.
    pub stdout: Option<Stdout>,
}

/// The console `stdout-path` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stdout {
    /// Full path of the node (aliases resolved).
    pub path: String,
    /// What follows `:` in `stdout-path` (for example `115200n8`).
    pub options: Option<String>,
    /// The node's `compatible` strings.
    pub compatible: Vec<String>,
    /// Its first `reg` entry, translated; `None` if it has none.
    pub reg: Option<AddrRange>,
}

/// An interrupt on the GIC, from a three-cell specifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GicInterrupt {
    /// SPI or PPI.
    pub kind: InterruptKind,
    /// Number within its kind (second cell).
    pub number: u32,
    /// Third cell: trigger type in bits 3:0 (1 rising edge, 2 falling edge,
    /// 4 level high, 8 level low), GICv2 PPI CPU mask in bits 15:8.
    pub flags: u32,
}

/// The kind of a GIC interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptKind {
    /// Shared peripheral interrupt (first cell 0).
    Spi,
    /// Private peripheral interrupt (first cell 1).
    Ppi,
}

impl GicInterrupt {
    /// The GIC interrupt ID: SPI n is 32 + n, PPI n is 16 + n.
    pub fn intid(&self) -> u32 {
        match self.kind {
            InterruptKind::Spi => 32 + self.number,
            InterruptKind::Ppi => 16 + self.number,
        }
    }
}

/// The Xen `/hypervisor` node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hypervisor {
    /// Full path (`/hypervisor`).
    pub path: String,
    /// `compatible`, for example `xen,xen-4.17`, `xen,xen`.
    pub compatible: Vec<String>,
    /// First `reg` entry: where to map the grant table.
    pub grant_table: AddrRange,
    /// Further `reg` entries: free guest-physical space (extended regions).
    pub extended_regions: Vec<AddrRange>,
    /// The event-channel upcall interrupt.
    pub event_channel: GicInterrupt,
}

/// GIC architecture version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicVersion {
    /// GICv2 (`arm,gic-400`, `arm,cortex-a15-gic`, ...).
    V2,
    /// GICv3 (`arm,gic-v3`).
    V3,
}

/// The interrupt controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gic {
    /// Full path.
    pub path: String,
    /// Version, from `compatible`.
    pub version: GicVersion,
    /// Distributor (first `reg` entry).
    pub distributor: AddrRange,
    /// CPU interface: v2's second `reg` entry; v3's optional legacy GICC
    /// entry after the redistributors.
    pub cpu_interface: Option<AddrRange>,
    /// v3 redistributor regions (`#redistributor-regions`, default 1); empty
    /// for v2.
    pub redistributors: Vec<AddrRange>,
}

/// The architected (generic) timer (`arm,armv8-timer`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchTimer {
    /// Full path.
    pub path: String,
    /// The virtual timer's interrupt (the third specifier): PPI 11
    /// (INTID 27) on QEMU `virt` and under Xen.
    pub virtual_timer: GicInterrupt,
}

/// How PSCI calls are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciMethod {
    /// `hvc`.
    Hvc,
    /// `smc`.
    Smc,
}

/// The PSCI node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Psci {
    /// Full path.
    pub path: String,
    /// `compatible` (`arm,psci-1.0`, ...).
    pub compatible: Vec<String>,
    /// `method`.
    pub method: PsciMethod,
}

/// A memory-mapped device that does DMA: its registers, its interrupt, and
/// what its DMA needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaDeviceNode {
    /// Full path.
    pub path: String,
    /// Register window (first `reg` entry), translated.
    pub reg: AddrRange,
    /// Its interrupt (first specifier).
    pub interrupt: GicInterrupt,
    /// DMA-coherent: `dma-coherent` on the node or the nearest ancestor
    /// that says either `dma-coherent` or `dma-noncoherent`.
    pub dma_coherent: bool,
    /// Paths of the nodes its `memory-region` names, in order.
    pub memory_regions: Vec<String>,
}

/// A virtio-mmio transport (`virtio,mmio`).
pub type VirtioMmio = DmaDeviceNode;

/// An i.MX uSDHC controller (`fsl,imx8mp-usdhc` and its family).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usdhc {
    /// The node, its registers, interrupt and DMA.
    pub device: DmaDeviceNode,
    /// Whether the controller's write-protect input means something:
    /// `fsl,wp-controller` and no `disable-wp`. As Linux's i.MX driver
    /// reads the tree: without `fsl,wp-controller` the pin may be unwired
    /// (the i.MX 8M Plus EVK's SD slot), and its level says nothing.
    pub write_protect_pin: bool,
    /// The first `assigned-clock-rates` entry: the controller's input
    /// clock in Hz, when the tree sets it.
    pub clock_hz: Option<u32>,
}

/// The kind of a UART.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UartKind {
    /// `arm,pl011`.
    Pl011,
    /// `arm,sbsa-uart` (Xen's vpl011 in a domU).
    SbsaUart,
    /// An NXP i.MX UART: `fsl,imx6q-uart`, the fallback every later i.MX
    /// (6, 7, 8M: `fsl,imx8mp-uart`, ...) lists.
    Imx,
}

impl UartKind {
    /// The kind of UART a node with these `compatible` strings is, if the
    /// kernel has a driver for it.
    pub fn from_compatible<'a>(compatible: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        compatible.into_iter().find_map(|c| match c {
            "arm,pl011" => Some(Self::Pl011),
            "arm,sbsa-uart" => Some(Self::SbsaUart),
            "fsl,imx6q-uart" => Some(Self::Imx),
            _ => None,
        })
    }
}

/// A UART the kernel can drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uart {
    /// Full path.
    pub path: String,
    /// Kind, from `compatible`.
    pub kind: UartKind,
    /// Register window (first `reg` entry), translated.
    pub reg: AddrRange,
    /// Its (first) interrupt; `None` without an `interrupts` property or
    /// with one that cannot be used (reported in [`Platform::errors`]).
    pub interrupt: Option<GicInterrupt>,
}

/// Everything the kernel learns about the platform from the device tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Platform {
    /// `/chosen`.
    pub chosen: Chosen,
    /// An available `/hypervisor` node is compatible with `xen,xen`: the
    /// kernel runs under Xen, even when that node is unusable (then
    /// `hypervisor` is `None` and the reason is in `errors`).
    pub xen: bool,
    /// The Xen `/hypervisor` node, if present and usable.
    pub hypervisor: Option<Hypervisor>,
    /// The first available GIC node, in tree order.
    pub gic: Option<Gic>,
    /// The first available architected timer node, in tree order.
    pub timer: Option<ArchTimer>,
    /// The first available PSCI node, in tree order.
    pub psci: Option<Psci>,
    /// virtio-mmio transports, in tree order.
    pub virtio_mmio: Vec<VirtioMmio>,
    /// i.MX uSDHC controllers, in tree order.
    pub usdhc: Vec<Usdhc>,
    /// PL011, SBSA and i.MX UARTs, in tree order.
    pub uarts: Vec<Uart>,
    /// `/aliases`: each name and the path it stands for.
    pub aliases: Vec<(String, String)>,
    /// Nodes left out (or facts left unset) and why.
    pub errors: Vec<NodeError>,
}

impl Platform {
    /// The UART `spec` names, if it is one the kernel drives: a node path or
    /// an `/aliases` name, optionally followed by `:options` (as in
    /// `stdout-path`). A path component without a unit address matches one
    /// with any (`/soc/serial` matches `/soc@0/serial@30890000`).
    pub fn uart(&self, spec: &str) -> Option<&Uart> {
        let name = spec.split(':').next().unwrap_or(spec);
        let path = if name.starts_with('/') {
            name
        } else {
            self.aliases
                .iter()
                .find(|(alias, _)| alias == name)
                .map(|(_, path)| path.as_str())?
        };
        let matches = |node_path: &str| {
            let mut want = path.split('/').filter(|c| !c.is_empty());
            let mut have = node_path.split('/').filter(|c| !c.is_empty());
            loop {
                match (want.next(), have.next()) {
                    (None, None) => return true,
                    (Some(w), Some(h))
                        if w == h || (!w.contains('@') && h.split('@').next() == Some(w)) => {}
                    _ => return false,
                }
            }
        };
        self.uarts
            .iter()
            .find(|u| u.path == path)
            .or_else(|| self.uarts.iter().find(|u| matches(&u.path)))
    }

    /// The UART `/chosen/stdout-path` names, if it is one the kernel drives.
    pub fn stdout_uart(&self) -> Option<&Uart> {
        let stdout = self.chosen.stdout.as_ref()?;
        self.uarts.iter().find(|u| u.path == stdout.path)
    }

    /// The node whose interrupt is `intid`, among those the kernel drives:
    /// the virtual timer, Xen's event-channel upcall, UARTs and virtio-mmio
    /// transports (what the monitor's `irq` names).
    pub fn interrupt_owner(&self, intid: u32) -> Option<&str> {
        let timer = self
            .timer
            .iter()
            .filter(|t| t.virtual_timer.intid() == intid)
            .map(|t| t.path.as_str());
        let xen = self
            .hypervisor
            .iter()
            .filter(|h| h.event_channel.intid() == intid)
            .map(|h| h.path.as_str());
        let uarts = self
            .uarts
            .iter()
            .filter(|u| u.interrupt.is_some_and(|i| i.intid() == intid))
            .map(|u| u.path.as_str());
        let virtio = self
            .virtio_mmio
            .iter()
            .filter(|v| v.interrupt.intid() == intid)
            .map(|v| v.path.as_str());
        timer.chain(xen).chain(uarts).chain(virtio).next()
    }

    /// The platform facts of the device tree blob `dtb`.
    pub fn from_dtb(dtb: &[u8]) -> Result<Platform, DtbError> {
        let checked = blob::check(dtb)?;
        Ok(Self::build(&Tree::new(&checked)?))
    }

    pub(crate) fn build(tree: &Tree<'_>) -> Platform {
        let mut platform = Platform::default();
        let errors = &mut platform.errors;
        platform.chosen = chosen(tree, errors);
        let xen = tree
            .child(ROOT, "hypervisor")
            .filter(|&n| tree.nodes[n].available && tree.is_compatible(n, &["xen,xen"]));
        platform.xen = xen.is_some();
        platform.hypervisor = xen.and_then(|n| keep(hypervisor(tree, n), errors));
        if let Some(aliases) = tree.child(ROOT, "aliases") {
            platform.aliases = tree.nodes[aliases]
                .properties
                .iter()
                .filter_map(|p| {
                    // An alias is a path; `phandle` and the like are not.
                    let path = tree::first_string(p.value).filter(|v| v.starts_with('/'))?;
                    Some((p.name.to_string(), path.to_string()))
                })
                .collect();
        }
        for node in (0..tree.nodes.len()).filter(|&n| tree.nodes[n].available) {
            // One reading of `compatible` per node; a malformed one matches
            // nothing.
            let Some(compatible) = tree.strings(node, "compatible").ok().flatten() else {
                continue;
            };
            let is = |candidates: &[&str]| compatible.iter().any(|c| candidates.contains(c));
            if platform.gic.is_none() && (is(GIC_V2) || is(GIC_V3)) {
                platform.gic = keep(gic(tree, node), errors);
            }
            if platform.timer.is_none() && is(ARCH_TIMER) {
                platform.timer = keep(arch_timer(tree, node), errors);
            }
            if platform.psci.is_none()
                && compatible
                    .iter()
                    .any(|c| *c == "arm,psci" || c.starts_with("arm,psci-"))
            {
                platform.psci = keep(psci(tree, node), errors);
            }
            if is(&["virtio,mmio"]) {
                platform
                    .virtio_mmio
                    .extend(keep(dma_device(tree, node), errors));
            }
            if is(USDHC) {
                let usdhc = dma_device(tree, node).map(|device| Usdhc {
                    device,
                    write_protect_pin: tree.has(node, "fsl,wp-controller")
                        && !tree.has(node, "disable-wp"),
                    clock_hz: tree
                        .property(node, "assigned-clock-rates")
                        .filter(|value| value.len() >= 4)
                        .map(|value| u32::from_be_bytes([value[0], value[1], value[2], value[3]])),
                });
                platform.usdhc.extend(keep(usdhc, errors));
            }
            if let Some(kind) = UartKind::from_compatible(compatible.iter().copied()) {
                // A UART serves output without an interrupt: only a
                // malformed one is an error, and the UART is kept.
                let interrupt = tree.has(node, "interrupts").then(|| {
                    keep(interrupts(tree, node), errors).and_then(|list| list.first().copied())
                });
                let uart = first_reg(tree, node).map(|reg| Uart {
                    path: tree.nodes[node].path.clone(),
                    kind,
                    reg,
                    interrupt: interrupt.flatten(),
                });
                platform.uarts.extend(keep(uart, errors));
            }
        }
        platform
    }
}

fn keep<T>(result: Result<T, NodeError>, errors: &mut Vec<NodeError>) -> Option<T> {
    result.map_err(|error| errors.push(error)).ok()
}

fn owned(strings: Vec<&str>) -> Vec<String> {
    strings.into_iter().map(String::from).collect()
}

fn chosen(tree: &Tree<'_>, errors: &mut Vec<NodeError>) -> Chosen {
    let Some(node) = tree.child(ROOT, "chosen") else {
        return Chosen::default();
    };
    let bootargs = keep(
        tree.string(node, "bootargs")
            .map_err(|kind| tree.error(node, kind)),
        errors,
    )
    .flatten();
    let stdout_property = if tree.has(node, "stdout-path") {
        "stdout-path"
    } else {
        "linux,stdout-path"
    };
    let spec = keep(
        tree.string(node, stdout_property)
            .map_err(|kind| tree.error(node, kind)),
        errors,
    )
    .flatten();
    let stdout = spec.and_then(|spec| keep(stdout(tree, node, spec), errors));
    Chosen {
        bootargs: bootargs.map(String::from),
        stdout,
    }
}

fn stdout(tree: &Tree<'_>, chosen: usize, spec: &str) -> Result<Stdout, NodeError> {
    let (name, options) = match spec.split_once(':') {
        Some((name, options)) => (name, Some(options.to_string())),
        None => (spec, None),
    };
    let path = if name.starts_with('/') {
        name
    } else {
        let alias = tree
            .child(ROOT, "aliases")
            .and_then(|aliases| tree.property(aliases, name));
        alias
            .and_then(tree::first_string)
            .ok_or_else(|| tree.error(chosen, NodeErrorKind::UnknownAlias(name.to_string())))?
    };
    let node = tree
        .find(path)
        .ok_or_else(|| tree.error(chosen, NodeErrorKind::NoSuchNode(path.to_string())))?;
    let compatible = owned(
        tree.strings(node, "compatible")
            .map_err(|kind| tree.error(node, kind))?
            .unwrap_or_default(),
    );
    let reg = if tree.has(node, "reg") {
        Some(first_reg(tree, node)?)
    } else {
        None
    };
    Ok(Stdout {
        path: tree.nodes[node].path.clone(),
        options,
        compatible,
        reg,
    })
}

/// All `reg` entries of `node`, decoded with its parent's cells and
/// translated to root addresses.
fn regs(tree: &Tree<'_>, node: usize) -> Result<Vec<AddrRange>, NodeError> {
    let value = tree
        .property(node, "reg")
        .ok_or_else(|| tree.error(node, NodeErrorKind::Missing { property: "reg" }))?;
    let parent = tree.nodes[node].parent.unwrap_or(ROOT);
    let cells = tree.cells(parent)?;
    let entries = tree::decode(value, "reg", [cells.address, cells.size])
        .map_err(|kind| tree.error(node, kind))?;
    if entries.is_empty() {
        return Err(tree.error(node, NodeErrorKind::Missing { property: "reg" }));
    }
    entries
        .iter()
        .map(|entry| {
            let range = AddrRange::new(entry[0], entry[1]);
            let range = range.ok_or_else(|| {
                tree.error(
                    node,
                    NodeErrorKind::Wraps {
                        property: "reg",
                        base: entry[0],
                        size: entry[1],
                    },
                )
            })?;
            tree.to_root(node, range)
        })
        .collect()
}

fn first_reg(tree: &Tree<'_>, node: usize) -> Result<AddrRange, NodeError> {
    Ok(regs(tree, node)?[0])
}

/// The interrupt parent of `node`, found as Linux does: follow
/// `interrupt-parent` where a node has one, else go to the tree parent,
/// until a node with `#interrupt-cells`.
fn interrupt_parent(tree: &Tree<'_>, node: usize) -> Result<usize, NodeError> {
    let mut current = node;
    // Each step visits a node; more steps than nodes means a cycle.
    for _ in 0..tree.nodes.len() {
        let next = match tree
            .u32(current, "interrupt-parent")
            .map_err(|kind| tree.error(current, kind))?
        {
            Some(phandle) => tree.target(current, "interrupt-parent", 0, phandle)?,
            None => tree.nodes[current]
                .parent
                .ok_or_else(|| tree.error(node, NodeErrorKind::NoInterruptParent))?,
        };
        if tree.has(next, "#interrupt-cells") {
            return Ok(next);
        }
        current = next;
    }
    Err(tree.error(node, NodeErrorKind::NoInterruptParent))
}

/// The interrupts of `node`, decoded by its interrupt parent, which must be
/// a GIC with three interrupt cells; at least one is required.
fn interrupts(tree: &Tree<'_>, node: usize) -> Result<Vec<GicInterrupt>, NodeError> {
    let error = |kind| tree.error(node, kind);
    let value = tree.property(node, "interrupts").ok_or_else(|| {
        error(NodeErrorKind::Missing {
            property: "interrupts",
        })
    })?;
    let parent = interrupt_parent(tree, node)?;
    if !(tree.is_compatible(parent, GIC_V2) || tree.is_compatible(parent, GIC_V3)) {
        return Err(error(NodeErrorKind::InterruptParentNotGic {
            parent: tree.nodes[parent].path.clone(),
        }));
    }
    let cells = tree
        .u32(parent, "#interrupt-cells")
        .map_err(|kind| tree.error(parent, kind))?
        .unwrap_or(0);
    if cells != 3 {
        return Err(tree.error(parent, NodeErrorKind::UnsupportedInterruptCells(cells)));
    }
    let specifiers = tree::decode(value, "interrupts", [1, 1, 1]).map_err(error)?;
    if specifiers.is_empty() {
        return Err(error(NodeErrorKind::Truncated {
            property: "interrupts",
            len: 0,
            unit: 12,
        }));
    }
    specifiers
        .iter()
        .map(|specifier| {
            let (kind, number, flags) = (
                specifier[0] as u32,
                specifier[1] as u32,
                specifier[2] as u32,
            );
            let (kind, max) = match kind {
                0 => (InterruptKind::Spi, MAX_SPI),
                1 => (InterruptKind::Ppi, MAX_PPI),
                other => return Err(error(NodeErrorKind::UnsupportedInterruptType(other))),
            };
            if number > max {
                return Err(error(NodeErrorKind::InterruptOutOfRange {
                    kind: specifier[0] as u32,
                    number,
                }));
            }
            Ok(GicInterrupt {
                kind,
                number,
                flags,
            })
        })
        .collect()
}

/// The first interrupt of `node` (see [`interrupts`]).
fn interrupt(tree: &Tree<'_>, node: usize) -> Result<GicInterrupt, NodeError> {
    Ok(interrupts(tree, node)?[0])
}

fn arch_timer(tree: &Tree<'_>, node: usize) -> Result<ArchTimer, NodeError> {
    let interrupts = interrupts(tree, node)?;
    let virtual_timer = *interrupts.get(VIRTUAL_TIMER).ok_or_else(|| {
        tree.error(
            node,
            NodeErrorKind::TooFewInterrupts {
                found: interrupts.len(),
                required: VIRTUAL_TIMER + 1,
            },
        )
    })?;
    Ok(ArchTimer {
        path: tree.nodes[node].path.clone(),
        virtual_timer,
    })
}

fn hypervisor(tree: &Tree<'_>, node: usize) -> Result<Hypervisor, NodeError> {
    let compatible = owned(
        tree.strings(node, "compatible")
            .map_err(|kind| tree.error(node, kind))?
            .unwrap_or_default(),
    );
    let regs = regs(tree, node)?;
    Ok(Hypervisor {
        path: tree.nodes[node].path.clone(),
        compatible,
        grant_table: regs[0],
        extended_regions: regs[1..].to_vec(),
        event_channel: interrupt(tree, node)?,
    })
}

fn gic(tree: &Tree<'_>, node: usize) -> Result<Gic, NodeError> {
    let regs = regs(tree, node)?;
    let path = tree.nodes[node].path.clone();
    let too_few = |required: usize| {
        tree.error(
            node,
            NodeErrorKind::TooFewRegEntries {
                found: regs.len(),
                required,
            },
        )
    };
    if tree.is_compatible(node, GIC_V3) {
        let count = tree
            .u32(node, "#redistributor-regions")
            .map_err(|kind| tree.error(node, kind))?
            .unwrap_or(1) as usize;
        let redistributors = regs.get(1..count.saturating_add(1)).filter(|_| count > 0);
        let redistributors = redistributors
            .ok_or_else(|| too_few(count.saturating_add(1)))?
            .to_vec();
        let cpu_interface = regs.get(count + 1).copied();
        Ok(Gic {
            path,
            version: GicVersion::V3,
            distributor: regs[0],
            cpu_interface,
            redistributors,
        })
    } else {
        let cpu_interface = *regs.get(1).ok_or_else(|| too_few(2))?;
        Ok(Gic {
            path,
            version: GicVersion::V2,
            distributor: regs[0],
            cpu_interface: Some(cpu_interface),
            redistributors: Vec::new(),
        })
    }
}

fn psci(tree: &Tree<'_>, node: usize) -> Result<Psci, NodeError> {
    let compatible = owned(
        tree.strings(node, "compatible")
            .map_err(|kind| tree.error(node, kind))?
            .unwrap_or_default(),
    );
    let method = tree
        .string(node, "method")
        .map_err(|kind| tree.error(node, kind))?;
    let method = match method {
        Some("hvc") => PsciMethod::Hvc,
        Some("smc") => PsciMethod::Smc,
        Some(other) => {
            return Err(tree.error(node, NodeErrorKind::BadPsciMethod(other.to_string())));
        }
        None => return Err(tree.error(node, NodeErrorKind::Missing { property: "method" })),
    };
    Ok(Psci {
        path: tree.nodes[node].path.clone(),
        compatible,
        method,
    })
}

/// Whether `node`'s DMA is cache-coherent: the nearest of the node and its
/// ancestors with `dma-coherent` or `dma-noncoherent` decides (as Linux's
/// `of_dma_is_coherent` reads them); with neither, not coherent (arm64's
/// default). QEMU 10's `virt` puts `dma-coherent` on the root node, so a
/// scenario makes one device non-coherent with `dma-noncoherent` on it.
pub(crate) fn dma_coherent(tree: &Tree<'_>, node: usize) -> bool {
    let mut current = Some(node);
    while let Some(n) = current {
        if tree.has(n, "dma-coherent") {
            return true;
        }
        if tree.has(n, "dma-noncoherent") {
            return false;
        }
        current = tree.nodes[n].parent;
    }
    false
}

fn dma_device(tree: &Tree<'_>, node: usize) -> Result<DmaDeviceNode, NodeError> {
    let reg = first_reg(tree, node)?;
    let interrupt = interrupt(tree, node)?;
    let dma_coherent = dma_coherent(tree, node);
    let mut memory_regions = Vec::new();
    if let Some(value) = tree.property(node, "memory-region") {
        let phandles =
            tree::decode(value, "memory-region", [1]).map_err(|kind| tree.error(node, kind))?;
        for (entry, phandle) in phandles.iter().map(|p| p[0] as u32).enumerate() {
            let target = tree.target(node, "memory-region", entry, phandle)?;
            memory_regions.push(tree.nodes[target].path.clone());
        }
    }
    Ok(DmaDeviceNode {
        path: tree.nodes[node].path.clone(),
        reg,
        interrupt,
        dma_coherent,
        memory_regions,
    })
}
