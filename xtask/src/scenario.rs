//! Device-tree scenarios: what a test boot adds to QEMU's own device tree,
//! written as TOML under `qemu/scenarios/` (format in its README.md).
//!
//! A scenario can add `/reserved-memory` regions (static `reg`, or dynamic
//! `size` + `alignment` + `alloc-ranges`), point existing nodes at them with
//! `memory-region` (by label), delete properties (`dma-coherent`), set extra
//! properties, and remove nodes. Files are checked when loaded; applying one
//! is all-or-nothing and fails with the path of any node the tree lacks.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::devicetree::{DtEditError, Tree};

const RESERVED_MEMORY: &str = "/reserved-memory";
/// The `machine` of a scenario for QEMU's `virt`.
pub const VIRT: &str = "virt";

/// A loaded, checked scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    description: String,
    machine: String,
    remove_nodes: Vec<String>,
    regions: Vec<Region>,
    edits: Vec<NodeEdit>,
}

/// A `/reserved-memory` child to add.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Region {
    name: String,
    label: Option<String>,
    compatible: Option<String>,
    placement: Placement,
    no_map: bool,
    reusable: bool,
    dma_default: bool,
    properties: Vec<(String, PropertyValue)>,
}

/// Where a region is: fixed by `reg`, or placed by the OS.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Placement {
    Static(Range),
    Dynamic {
        size: u64,
        alignment: Option<u64>,
        alloc_ranges: Vec<Range>,
    },
}

/// Edits to a node QEMU's tree already has.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NodeEdit {
    path: String,
    delete_properties: Vec<String>,
    memory_region: Vec<String>,
    memory_region_names: Vec<String>,
    properties: Vec<(String, PropertyValue)>,
}

/// An extra property's value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PropertyValue {
    Empty,
    Cells(Vec<u32>),
    Strings(Vec<String>),
}

/// A scenario that could not be loaded.
#[derive(Debug)]
pub enum ScenarioError {
    /// The file could not be read.
    Read(std::io::Error),
    /// Not TOML, or not the scenario format.
    Syntax(toml::de::Error),
    /// Well-formed but inconsistent.
    Invalid {
        /// Which part: `description`, `reserved-memory NAME` or `node PATH`.
        item: String,
        /// What is wrong with it.
        problem: Problem,
    },
}

/// What is inconsistent in a scenario.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// The description is empty.
    EmptyDescription,
    /// A region name is empty or contains `/`.
    BadRegionName,
    /// A region has neither `reg` nor `size`.
    NoPlacement,
    /// A region has both `reg` and `size`.
    RegAndSize,
    /// `alignment` or `alloc-ranges` on a static (`reg`) region.
    DynamicOnly(&'static str),
    /// A size of zero.
    ZeroSize,
    /// An alignment that is not a power of two.
    AlignmentNotPowerOfTwo(u64),
    /// `no-map` and `reusable` together (the binding forbids it).
    NoMapAndReusable,
    /// A static region's unit address does not match its `reg` base.
    UnitAddress {
        /// The name it should have, e.g. `dma@78000000`.
        expected: String,
    },
    /// A dynamic region (no `reg`) has a unit address.
    UnexpectedUnitAddress,
    /// Two regions share a label.
    DuplicateLabel(String),
    /// `memory-region` names a label no region has.
    UnknownLabel(String),
    /// `memory-region-names` does not have one name per region.
    RegionNamesCount {
        /// Entries in `memory-region`.
        regions: usize,
        /// Entries in `memory-region-names`.
        names: usize,
    },
    /// An extra property set to `false` (write `true` for an empty property;
    /// list it in `delete-properties` to remove it).
    FalseProperty(String),
    /// An extra property set to an empty list (write `true` for an empty property).
    EmptyList(String),
    /// `machine` names neither `virt` nor a board xtask knows.
    UnknownMachine(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyDescription => f.write_str("the description is empty"),
            Self::UnknownMachine(name) => {
                let boards: Vec<&str> = crate::board::BOARDS.iter().map(|b| b.name()).collect();
                write!(
                    f,
                    "machine `{name}` is neither `virt` nor a board ({})",
                    boards.join(", ")
                )
            }
            Self::BadRegionName => {
                f.write_str("a region name must be non-empty and contain no `/`")
            }
            Self::NoPlacement => f.write_str("needs `reg` (static) or `size` (dynamic)"),
            Self::RegAndSize => f.write_str("has both `reg` and `size`"),
            Self::DynamicOnly(field) => {
                write!(f, "`{field}` only applies to a dynamic (`size`) region")
            }
            Self::ZeroSize => f.write_str("size 0"),
            Self::AlignmentNotPowerOfTwo(a) => write!(f, "alignment {a:#x} is not a power of two"),
            Self::NoMapAndReusable => f.write_str("`no-map` and `reusable` exclude each other"),
            Self::UnitAddress { expected } => {
                write!(f, "the name should be `{expected}` to match `reg`")
            }
            Self::UnexpectedUnitAddress => {
                f.write_str("a dynamic region has no unit address (no `@`)")
            }
            Self::DuplicateLabel(label) => write!(f, "label `{label}` is used twice"),
            Self::UnknownLabel(label) => write!(f, "no region has label `{label}`"),
            Self::RegionNamesCount { regions, names } => {
                write!(
                    f,
                    "{names} memory-region-names for {regions} memory-region entries"
                )
            }
            Self::FalseProperty(name) => {
                write!(
                    f,
                    "`{name} = false`: use `true` for an empty property, `delete-properties` to remove one"
                )
            }
            Self::EmptyList(name) => write!(f, "`{name} = []`: use `true` for an empty property"),
        }
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(err) => write!(f, "cannot read: {err}"),
            Self::Syntax(err) => write!(f, "{err}"),
            Self::Invalid { item, problem } => write!(f, "{item}: {problem}"),
        }
    }
}

impl std::error::Error for ScenarioError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Read(err) => Some(err),
            Self::Syntax(err) => Some(err),
            Self::Invalid { .. } => None,
        }
    }
}

/// The file format, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ScenarioFile {
    description: String,
    #[serde(default)]
    machine: Option<String>,
    #[serde(default)]
    remove_nodes: Vec<String>,
    #[serde(default)]
    reserved_memory: Vec<RegionFile>,
    #[serde(default)]
    node: Vec<NodeEditFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RegionFile {
    name: String,
    label: Option<String>,
    compatible: Option<String>,
    reg: Option<Range>,
    size: Option<u64>,
    alignment: Option<u64>,
    #[serde(default)]
    alloc_ranges: Vec<Range>,
    #[serde(default)]
    no_map: bool,
    #[serde(default)]
    reusable: bool,
    #[serde(default, rename = "linux,dma-default")]
    dma_default: bool,
    #[serde(default)]
    properties: BTreeMap<String, PropertyValueFile>,
}

/// `{ base = ..., size = ... }`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Range {
    base: u64,
    size: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct NodeEditFile {
    path: String,
    #[serde(default)]
    delete_properties: Vec<String>,
    #[serde(default)]
    memory_region: Vec<String>,
    #[serde(default)]
    memory_region_names: Vec<String>,
    #[serde(default)]
    properties: BTreeMap<String, PropertyValueFile>,
}

/// `true`, a u32, a string, or a list of either.
#[derive(Deserialize)]
#[serde(untagged)]
enum PropertyValueFile {
    Flag(bool),
    Cell(u32),
    Text(String),
    Cells(Vec<u32>),
    Texts(Vec<String>),
}

fn invalid(item: &str, problem: Problem) -> ScenarioError {
    ScenarioError::Invalid {
        item: item.to_string(),
        problem,
    }
}

fn check_properties(
    item: &str,
    properties: BTreeMap<String, PropertyValueFile>,
) -> Result<Vec<(String, PropertyValue)>, ScenarioError> {
    properties
        .into_iter()
        .map(|(name, value)| {
            let value = match value {
                PropertyValueFile::Flag(true) => PropertyValue::Empty,
                PropertyValueFile::Flag(false) => {
                    return Err(invalid(item, Problem::FalseProperty(name)));
                }
                PropertyValueFile::Cell(cell) => PropertyValue::Cells(vec![cell]),
                PropertyValueFile::Text(text) => PropertyValue::Strings(vec![text]),
                PropertyValueFile::Cells(cells) if cells.is_empty() => {
                    return Err(invalid(item, Problem::EmptyList(name)));
                }
                PropertyValueFile::Cells(cells) => PropertyValue::Cells(cells),
                PropertyValueFile::Texts(texts) => PropertyValue::Strings(texts),
            };
            Ok((name, value))
        })
        .collect()
}

fn check_region(file: RegionFile) -> Result<Region, ScenarioError> {
    let item = format!("reserved-memory {}", file.name);
    let fail = |problem| Err(invalid(&item, problem));
    if file.name.is_empty() || file.name.contains('/') {
        return fail(Problem::BadRegionName);
    }
    if file.no_map && file.reusable {
        return fail(Problem::NoMapAndReusable);
    }
    let placement = match (file.reg, file.size) {
        (None, None) => return fail(Problem::NoPlacement),
        (Some(_), Some(_)) => return fail(Problem::RegAndSize),
        (Some(reg), None) => {
            if file.alignment.is_some() {
                return fail(Problem::DynamicOnly("alignment"));
            }
            if !file.alloc_ranges.is_empty() {
                return fail(Problem::DynamicOnly("alloc-ranges"));
            }
            let node_name = file.name.split('@').next().unwrap_or_default();
            let expected = format!("{node_name}@{:x}", reg.base);
            if file.name != expected {
                return fail(Problem::UnitAddress { expected });
            }
            Placement::Static(reg)
        }
        (None, Some(size)) => {
            if file.name.contains('@') {
                return fail(Problem::UnexpectedUnitAddress);
            }
            if let Some(alignment) = file.alignment.filter(|a| !a.is_power_of_two()) {
                return fail(Problem::AlignmentNotPowerOfTwo(alignment));
            }
            Placement::Dynamic {
                size,
                alignment: file.alignment,
                alloc_ranges: file.alloc_ranges,
            }
        }
    };
    let sizes = match &placement {
        Placement::Static(reg) => vec![reg.size],
        Placement::Dynamic {
            size, alloc_ranges, ..
        } => std::iter::once(*size)
            .chain(alloc_ranges.iter().map(|r| r.size))
            .collect(),
    };
    if sizes.contains(&0) {
        return fail(Problem::ZeroSize);
    }
    Ok(Region {
        properties: check_properties(&item, file.properties)?,
        name: file.name,
        label: file.label,
        compatible: file.compatible,
        placement,
        no_map: file.no_map,
        reusable: file.reusable,
        dma_default: file.dma_default,
    })
}

fn check_edit(file: NodeEditFile, labels: &[&str]) -> Result<NodeEdit, ScenarioError> {
    let item = format!("node {}", file.path);
    if let Some(unknown) = file
        .memory_region
        .iter()
        .find(|l| !labels.contains(&l.as_str()))
    {
        return Err(invalid(&item, Problem::UnknownLabel(unknown.clone())));
    }
    if !file.memory_region_names.is_empty()
        && file.memory_region_names.len() != file.memory_region.len()
    {
        let problem = Problem::RegionNamesCount {
            regions: file.memory_region.len(),
            names: file.memory_region_names.len(),
        };
        return Err(invalid(&item, problem));
    }
    Ok(NodeEdit {
        properties: check_properties(&item, file.properties)?,
        path: file.path,
        delete_properties: file.delete_properties,
        memory_region: file.memory_region,
        memory_region_names: file.memory_region_names,
    })
}

fn set_extra(
    tree: &mut Tree,
    path: &str,
    properties: &[(String, PropertyValue)],
) -> Result<(), DtEditError> {
    for (name, value) in properties {
        match value {
            PropertyValue::Empty => tree.set_empty(path, name)?,
            PropertyValue::Cells(cells) => tree.set_u32s(path, name, cells)?,
            PropertyValue::Strings(texts) => tree.set_strings(path, name, texts)?,
        }
    }
    Ok(())
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(ScenarioError::Read)?;
        Self::parse(&text)
    }

    /// Parses and checks a scenario.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let file: ScenarioFile = toml::from_str(text).map_err(ScenarioError::Syntax)?;
        if file.description.trim().is_empty() {
            return Err(invalid("description", Problem::EmptyDescription));
        }
        let machine = file.machine.unwrap_or_else(|| VIRT.to_string());
        if machine != VIRT && crate::board::Board::from_name(&machine).is_err() {
            return Err(invalid("machine", Problem::UnknownMachine(machine)));
        }
        let regions = file
            .reserved_memory
            .into_iter()
            .map(check_region)
            .collect::<Result<Vec<_>, _>>()?;
        let mut labels: Vec<&str> = Vec::new();
        for region in &regions {
            if let Some(label) = region.label.as_deref() {
                if labels.contains(&label) {
                    let item = format!("reserved-memory {}", region.name);
                    return Err(invalid(&item, Problem::DuplicateLabel(label.to_string())));
                }
                labels.push(label);
            }
        }
        let edits = file
            .node
            .into_iter()
            .map(|edit| check_edit(edit, &labels))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            description: file.description,
            machine,
            remove_nodes: file.remove_nodes,
            regions,
            edits,
        })
    }

    /// The scenario's one-line description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The machine whose tree it edits: `virt` (the default) or a board's
    /// name (`imx8mp-evk`).
    pub fn machine(&self) -> &str {
        &self.machine
    }

    /// Applies the scenario to `tree`. On error `tree` is left unchanged.
    pub fn apply(&self, tree: &mut Tree) -> Result<(), DtEditError> {
        let mut edited = tree.clone();
        self.apply_in_place(&mut edited)?;
        *tree = edited;
        Ok(())
    }

    fn apply_in_place(&self, tree: &mut Tree) -> Result<(), DtEditError> {
        for path in &self.remove_nodes {
            tree.delete_node(path)?;
        }
        let phandles = self.add_regions(tree)?;
        for edit in &self.edits {
            let path = edit.path.as_str();
            tree.node(path)?;
            for name in &edit.delete_properties {
                tree.delete_property(path, name)?;
            }
            if !edit.memory_region.is_empty() {
                let cells: Vec<u32> = edit
                    .memory_region
                    .iter()
                    .map(|label| phandles[label.as_str()])
                    .collect();
                tree.set_u32s(path, "memory-region", &cells)?;
            }
            if !edit.memory_region_names.is_empty() {
                tree.set_strings(path, "memory-region-names", &edit.memory_region_names)?;
            }
            set_extra(tree, path, &edit.properties)?;
        }
        Ok(())
    }

    /// Adds the regions under `/reserved-memory` (created with the root's
    /// cell sizes and an empty `ranges` if absent) and returns each label's phandle.
    fn add_regions(&self, tree: &mut Tree) -> Result<HashMap<&str, u32>, DtEditError> {
        let mut phandles = HashMap::new();
        if self.regions.is_empty() {
            return Ok(phandles);
        }
        if tree.node(RESERVED_MEMORY).is_err() {
            let root_cells = tree.cell_sizes("/")?;
            tree.add_node(RESERVED_MEMORY)?;
            tree.set_u32s(RESERVED_MEMORY, "#address-cells", &[root_cells.address])?;
            tree.set_u32s(RESERVED_MEMORY, "#size-cells", &[root_cells.size])?;
            tree.set_empty(RESERVED_MEMORY, "ranges")?;
        }
        for region in &self.regions {
            let path = format!("{RESERVED_MEMORY}/{}", region.name);
            tree.add_node(&path)?;
            if let Some(compatible) = &region.compatible {
                tree.set_string(&path, "compatible", compatible)?;
            }
            match &region.placement {
                Placement::Static(reg) => {
                    tree.set_address_size_pairs(&path, "reg", &[(reg.base, reg.size)])?
                }
                Placement::Dynamic {
                    size,
                    alignment,
                    alloc_ranges,
                } => {
                    tree.set_size(&path, "size", *size)?;
                    if let Some(alignment) = alignment {
                        tree.set_size(&path, "alignment", *alignment)?;
                    }
                    if !alloc_ranges.is_empty() {
                        let pairs: Vec<(u64, u64)> =
                            alloc_ranges.iter().map(|r| (r.base, r.size)).collect();
                        tree.set_address_size_pairs(&path, "alloc-ranges", &pairs)?;
                    }
                }
            }
            for (flag, name) in [
                (region.no_map, "no-map"),
                (region.reusable, "reusable"),
                (region.dma_default, "linux,dma-default"),
            ] {
                if flag {
                    tree.set_empty(&path, name)?;
                }
            }
            set_extra(tree, &path, &region.properties)?;
            if let Some(label) = &region.label {
                phandles.insert(label.as_str(), tree.assign_phandle(&path)?);
            }
        }
        Ok(phandles)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::devicetree::test_fixture;
    use crate::devicetree::{DtEditReason, Node};

    fn fixture() -> Tree {
        Tree::from_dtb(&test_fixture::qemu_like_dtb()).expect("the fixture parses")
    }

    fn scenarios_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu/scenarios")
    }

    /// The tree a scenario for `machine` edits: the fixture for `virt`, the
    /// board's own tree (`None` if Debian's kernel package, which the board
    /// test fetches, is not in build/ yet).
    fn machine_tree(machine: &str) -> Option<Tree> {
        if machine == VIRT {
            return Some(fixture());
        }
        let ws = crate::Workspace::locate();
        let board = crate::board::Board::from_name(machine).unwrap();
        ws.build
            .join("linux-image/.unpacked")
            .exists()
            .then(|| board.tree(&ws).expect("the board's tree"))
    }

    /// Loads `qemu/scenarios/NAME.toml`, applies it to its machine's tree,
    /// and returns the tree as re-read from the written DTB (`None` for a
    /// board whose tree is not fetched).
    fn applied_to_machine(name: &str) -> Option<Tree> {
        let path = scenarios_dir().join(format!("{name}.toml"));
        let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut tree = machine_tree(scenario.machine())?;
        scenario
            .apply(&mut tree)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        Some(Tree::from_dtb(&tree.to_dtb().expect("writes")).expect("re-parses"))
    }

    /// Loads `qemu/scenarios/NAME.toml`, applies it to the fixture, and
    /// returns the tree as re-read from the written DTB.
    fn applied(name: &str) -> Tree {
        let path = scenarios_dir().join(format!("{name}.toml"));
        let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(scenario.machine(), VIRT, "{name}");
        let mut tree = fixture();
        scenario
            .apply(&mut tree)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        Tree::from_dtb(&tree.to_dtb().expect("writes")).expect("re-parses")
    }

    fn cells(values: &[u32]) -> Vec<u8> {
        values.iter().flat_map(|c| c.to_be_bytes()).collect()
    }

    fn u32_at(node: &Node, name: &str) -> u32 {
        u32::from_be_bytes(
            node.property(name)
                .unwrap_or_else(|| panic!("{name}"))
                .try_into()
                .expect("one cell"),
        )
    }

    fn transport(tree: &Tree, n: u64) -> &Node {
        tree.node(&format!("/virtio_mmio@{:x}", 0x0a00_0000 + 0x200 * n))
            .expect("transport")
    }

    fn assert_static_pool(tree: &Tree) -> u32 {
        let pool = tree
            .node("/reserved-memory/dma@78000000")
            .expect("static pool");
        assert_eq!(pool.property("compatible").unwrap(), b"shared-dma-pool\0");
        assert_eq!(
            pool.property("reg").unwrap(),
            cells(&[0, 0x7800_0000, 0, 0x40_0000])
        );
        assert_eq!(pool.property("no-map").unwrap(), b"");
        assert!(pool.property("size").is_none());
        u32_at(pool, "phandle")
    }

    fn assert_dynamic_pool(tree: &Tree) -> u32 {
        let parent = tree.node("/reserved-memory").unwrap();
        let pool = parent
            .children
            .iter()
            .find(|n| n.property("size").is_some())
            .expect("dynamic pool");
        assert!(!pool.name.contains('@'));
        assert_eq!(pool.property("compatible").unwrap(), b"shared-dma-pool\0");
        assert_eq!(pool.property("size").unwrap(), cells(&[0, 0x40_0000]));
        assert_eq!(pool.property("alignment").unwrap(), cells(&[0, 0x20_0000]));
        assert_eq!(pool.property("no-map").unwrap(), b"");
        assert!(pool.property("reg").is_none());
        u32_at(pool, "phandle")
    }

    fn assert_reserved_memory_parent(tree: &Tree) {
        let parent = tree.node("/reserved-memory").expect("/reserved-memory");
        assert_eq!(parent.property("#address-cells").unwrap(), cells(&[2]));
        assert_eq!(parent.property("#size-cells").unwrap(), cells(&[2]));
        assert_eq!(parent.property("ranges").unwrap(), b"");
    }

    fn coherent(node: &Node) -> bool {
        node.property("dma-coherent").is_some()
    }

    #[test]
    fn every_scenario_file_loads_and_applies() {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(scenarios_dir()).expect("qemu/scenarios exists") {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                assert!(!Scenario::load(&path).unwrap().description().is_empty());
                applied_to_machine(&name);
                names.push(name);
            }
        }
        names.sort();
        for expected in [
            "dynamic-pool",
            "imx8mp-evk-dynamic-pool",
            "imx8mp-evk-rpmsg",
            "imx8mp-evk-stock",
            "imx8-like",
            "noncoherent",
            "static-pool",
            "stock",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "qemu/scenarios/{expected}.toml is missing"
            );
        }
    }

    #[test]
    fn unknown_machines_are_refused() {
        let err = Scenario::parse("description = \"x\"\nmachine = \"pi5\"").unwrap_err();
        assert!(
            err.to_string()
                .contains("machine `pi5` is neither `virt` nor a board (imx8mp-evk)"),
            "{err}"
        );
        let board = Scenario::parse("description = \"x\"\nmachine = \"imx8mp-evk\"").unwrap();
        assert_eq!(board.machine(), "imx8mp-evk");
        assert_eq!(
            Scenario::parse("description = \"x\"").unwrap().machine(),
            VIRT
        );
    }

    /// The SD slot's uSDHC in the EVK's tree.
    const EVK_SD: &str = "/soc@0/bus@30800000/mmc@30b50000";

    #[test]
    fn evk_rpmsg_layout_wires_vdevbuffer_to_the_sd_slot() {
        let Some(tree) = applied_to_machine("imx8mp-evk-rpmsg") else {
            eprintln!("board tree not fetched: skipping");
            return;
        };
        for (name, size) in [
            ("vdev0vring0@55000000", 0x8000),
            ("vdev0vring1@55008000", 0x8000),
            ("rsc-table@550ff000", 0x1000),
            ("vdevbuffer@55400000", 0x10_0000),
        ] {
            let node = tree.node(&format!("{RESERVED_MEMORY}/{name}")).unwrap();
            assert_eq!(node.property("no-map").unwrap(), b"", "{name}");
            let reg = node.property("reg").unwrap();
            assert_eq!(&reg[12..16], &(size as u32).to_be_bytes(), "{name}");
        }
        let pool = tree
            .node(&format!("{RESERVED_MEMORY}/vdevbuffer@55400000"))
            .unwrap();
        assert_eq!(pool.property("compatible").unwrap(), b"shared-dma-pool\0");
        assert_eq!(
            u32_at(tree.node(EVK_SD).unwrap(), "memory-region"),
            u32_at(pool, "phandle")
        );
        // The board's own no-map region is kept.
        assert!(
            tree.node(&format!("{RESERVED_MEMORY}/dsp@92400000"))
                .is_ok()
        );
    }

    #[test]
    fn evk_dynamic_pool_is_wired_to_the_sd_slot() {
        let Some(tree) = applied_to_machine("imx8mp-evk-dynamic-pool") else {
            eprintln!("board tree not fetched: skipping");
            return;
        };
        let pool = tree
            .node(&format!("{RESERVED_MEMORY}/sd-dma-pool"))
            .unwrap();
        assert!(pool.property("reg").is_none());
        assert_eq!(pool.property("no-map").unwrap(), b"");
        assert_eq!(
            u32_at(tree.node(EVK_SD).unwrap(), "memory-region"),
            u32_at(pool, "phandle")
        );
    }

    #[test]
    fn stock_changes_nothing() {
        assert_eq!(applied("stock"), fixture());
    }

    #[test]
    fn static_pool() {
        let tree = applied("static-pool");
        assert_reserved_memory_parent(&tree);
        let pool = assert_static_pool(&tree);
        let device = transport(&tree, 31);
        assert_eq!(u32_at(device, "memory-region"), pool);
        assert!(!coherent(device));
        assert!(coherent(transport(&tree, 30)));
    }

    #[test]
    fn dynamic_pool() {
        let tree = applied("dynamic-pool");
        assert_reserved_memory_parent(&tree);
        let pool = assert_dynamic_pool(&tree);
        let device = transport(&tree, 30);
        assert_eq!(u32_at(device, "memory-region"), pool);
        assert!(!coherent(device));
        assert!(coherent(transport(&tree, 31)));
    }

    #[test]
    fn imx8_like_has_all_four_dma_cases() {
        let tree = applied("imx8-like");
        let static_pool = assert_static_pool(&tree);
        let dynamic_pool = assert_dynamic_pool(&tree);
        assert_ne!(static_pool, dynamic_pool);
        let (a003e00, a003c00, a003a00, a003800) = (
            transport(&tree, 31),
            transport(&tree, 30),
            transport(&tree, 29),
            transport(&tree, 28),
        );
        assert_eq!(u32_at(a003e00, "memory-region"), static_pool);
        assert_eq!(u32_at(a003c00, "memory-region"), dynamic_pool);
        assert!(!coherent(a003e00) && !coherent(a003c00) && !coherent(a003a00));
        assert!(a003a00.property("memory-region").is_none());
        assert!(coherent(a003800) && a003800.property("memory-region").is_none());
    }

    #[test]
    fn noncoherent_without_pool() {
        let tree = applied("noncoherent");
        let device = transport(&tree, 31);
        assert!(!coherent(device));
        assert!(device.property("memory-region").is_none());
        assert!(tree.node("/reserved-memory").is_err());
    }

    const FULL: &str = r#"
        description = "everything the format can say"
        remove-nodes = ["/psci"]

        [[reserved-memory]]
        name = "a@78000000"
        label = "a"
        compatible = "shared-dma-pool"
        reg = { base = 0x78000000, size = 0x400000 }
        no-map = true

        [[reserved-memory]]
        name = "b"
        label = "b"
        compatible = "shared-dma-pool"
        size = 0x100000
        alignment = 0x10000
        alloc-ranges = [{ base = 0x40000000, size = 0x20000000 }]
        reusable = true
        "linux,dma-default" = true
        properties = { "extra-cells" = [1, 2] }

        [[node]]
        path = "/virtio_mmio@a003e00"
        delete-properties = ["dma-coherent"]
        memory-region = ["a", "b"]
        memory-region-names = ["static", "dynamic"]
        properties = { "x-flag" = true, "x-cell" = 7, "x-text" = "hi", "x-texts" = ["p", "q"] }
    "#;

    #[test]
    fn full_format_applies() {
        let scenario = Scenario::parse(FULL).unwrap();
        let mut tree = fixture();
        scenario.apply(&mut tree).unwrap();
        assert!(tree.node("/psci").is_err());
        let a = u32_at(tree.node("/reserved-memory/a@78000000").unwrap(), "phandle");
        let b_node = tree.node("/reserved-memory/b").unwrap();
        let b = u32_at(b_node, "phandle");
        assert_eq!((a, b), (0x8003, 0x8004));
        assert_eq!(
            b_node.property("alloc-ranges").unwrap(),
            cells(&[0, 0x4000_0000, 0, 0x2000_0000])
        );
        assert_eq!(b_node.property("reusable").unwrap(), b"");
        assert_eq!(b_node.property("linux,dma-default").unwrap(), b"");
        assert_eq!(b_node.property("extra-cells").unwrap(), cells(&[1, 2]));
        let device = transport(&tree, 31);
        assert_eq!(device.property("memory-region").unwrap(), cells(&[a, b]));
        assert_eq!(
            device.property("memory-region-names").unwrap(),
            b"static\0dynamic\0"
        );
        assert_eq!(device.property("x-flag").unwrap(), b"");
        assert_eq!(device.property("x-cell").unwrap(), cells(&[7]));
        assert_eq!(device.property("x-text").unwrap(), b"hi\0");
        assert_eq!(device.property("x-texts").unwrap(), b"p\0q\0");
        assert!(!coherent(device));
        tree.to_dtb().expect("the result is a valid DTB");
    }

    #[test]
    fn existing_reserved_memory_is_kept() {
        let mut tree = fixture();
        tree.add_node("/reserved-memory").unwrap();
        tree.set_u32s("/reserved-memory", "#address-cells", &[1])
            .unwrap();
        tree.set_u32s("/reserved-memory", "#size-cells", &[1])
            .unwrap();
        tree.set_empty("/reserved-memory", "ranges").unwrap();
        tree.add_node("/reserved-memory/firmware@50000000").unwrap();
        let text = r#"
            description = "d"
            [[reserved-memory]]
            name = "dma@78000000"
            reg = { base = 0x78000000, size = 0x400000 }
        "#;
        Scenario::parse(text).unwrap().apply(&mut tree).unwrap();
        let parent = tree.node("/reserved-memory").unwrap();
        let names: Vec<&str> = parent.children.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["firmware@50000000", "dma@78000000"]);
        assert_eq!(
            parent.children[1].property("reg").unwrap(),
            cells(&[0x7800_0000, 0x40_0000])
        );
    }

    #[test]
    fn applying_to_a_tree_without_the_node_names_it_and_changes_nothing() {
        let scenario = Scenario::parse(FULL).unwrap();
        let mut tree = fixture();
        tree.delete_node("/virtio_mmio@a003e00").unwrap();
        let before = tree.clone();
        let err = scenario.apply(&mut tree).unwrap_err();
        assert_eq!(err.path, "/virtio_mmio@a003e00");
        assert_eq!(err.reason, DtEditReason::NoSuchNode);
        assert_eq!(err.to_string(), "/virtio_mmio@a003e00: no such node");
        assert_eq!(tree, before);

        let mut tree = fixture();
        tree.delete_property("/virtio_mmio@a003e00", "dma-coherent")
            .unwrap();
        let err = scenario.apply(&mut tree).unwrap_err();
        assert_eq!(
            err.reason,
            DtEditReason::NoSuchProperty("dma-coherent".into())
        );
    }

    fn problem(text: &str) -> Problem {
        match Scenario::parse(text) {
            Err(ScenarioError::Invalid { problem, .. }) => problem,
            other => panic!("expected a problem, got {other:?}"),
        }
    }

    fn region(body: &str) -> String {
        format!("description = \"d\"\n[[reserved-memory]]\n{body}")
    }

    #[test]
    fn inconsistent_scenarios_are_rejected() {
        assert_eq!(problem("description = \" \""), Problem::EmptyDescription);
        assert_eq!(
            problem(&region("name = \"a/b\"\nsize = 1")),
            Problem::BadRegionName
        );
        assert_eq!(problem(&region("name = \"a\"")), Problem::NoPlacement);
        assert_eq!(
            problem(&region(
                "name = \"a@10\"\nsize = 1\nreg = { base = 0x10, size = 1 }"
            )),
            Problem::RegAndSize
        );
        assert_eq!(
            problem(&region(
                "name = \"a@10\"\nalignment = 16\nreg = { base = 0x10, size = 1 }"
            )),
            Problem::DynamicOnly("alignment")
        );
        assert_eq!(
            problem(&region(
                "name = \"a@10\"\nreg = { base = 0x10, size = 1 }\nalloc-ranges = [{ base = 0, size = 1 }]"
            )),
            Problem::DynamicOnly("alloc-ranges")
        );
        assert_eq!(
            problem(&region("name = \"a\"\nsize = 0")),
            Problem::ZeroSize
        );
        assert_eq!(
            problem(&region("name = \"a\"\nsize = 1\nalignment = 3")),
            Problem::AlignmentNotPowerOfTwo(3)
        );
        assert_eq!(
            problem(&region(
                "name = \"a\"\nsize = 1\nno-map = true\nreusable = true"
            )),
            Problem::NoMapAndReusable
        );
        assert_eq!(
            problem(&region(
                "name = \"dma@78000001\"\nreg = { base = 0x78000000, size = 1 }"
            )),
            Problem::UnitAddress {
                expected: "dma@78000000".into()
            }
        );
        assert_eq!(
            problem(&region("name = \"a@10\"\nsize = 1")),
            Problem::UnexpectedUnitAddress
        );
        assert_eq!(
            problem(&format!(
                "{}\n[[reserved-memory]]\nname = \"b\"\nsize = 1\nlabel = \"l\"",
                region("name = \"a\"\nsize = 1\nlabel = \"l\"")
            )),
            Problem::DuplicateLabel("l".into())
        );
        let node = |body: &str| format!("description = \"d\"\n[[node]]\npath = \"/x\"\n{body}");
        assert_eq!(
            problem(&node("memory-region = [\"nope\"]")),
            Problem::UnknownLabel("nope".into())
        );
        assert_eq!(
            problem(&format!(
                "{}\n[[node]]\npath = \"/x\"\nmemory-region = [\"l\"]\nmemory-region-names = [\"a\", \"b\"]",
                region("name = \"a\"\nsize = 1\nlabel = \"l\"")
            )),
            Problem::RegionNamesCount {
                regions: 1,
                names: 2
            }
        );
        assert_eq!(
            problem(&node("properties = { p = false }")),
            Problem::FalseProperty("p".into())
        );
        assert_eq!(
            problem(&node("properties = { p = [] }")),
            Problem::EmptyList("p".into())
        );
    }

    #[test]
    fn syntax_errors_and_unknown_fields_are_rejected() {
        assert!(matches!(
            Scenario::parse("description = "),
            Err(ScenarioError::Syntax(_))
        ));
        assert!(matches!(
            Scenario::parse("description = \"d\"\nno-such-key = 1"),
            Err(ScenarioError::Syntax(_))
        ));
        let typo = "description = \"d\"\n[[reserved-memory]]\nname = \"a\"\nsize = 1\nnomap = true";
        assert!(matches!(
            Scenario::parse(typo),
            Err(ScenarioError::Syntax(_))
        ));
        assert!(matches!(
            Scenario::load(Path::new("/nonexistent.toml")),
            Err(ScenarioError::Read(_))
        ));
    }
}
