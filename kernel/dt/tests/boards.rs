//! Real board device trees: every `*.dtb` under `$TIDEPOOL_BOARD_DTBS`
//! (Debian's arm64 kernel package ships ~577, `cargo xtask test` fetches
//! them). For each, the plan is compared with an independent reading of the
//! same file by `fdtdump` (libfdt, Debian's `device-tree-compiler`; its path
//! in `$TIDEPOOL_FDTDUMP`, which `cargo xtask test` fetches too): memory
//! banks, `/memreserve/`, reserved-memory children (reg, size, no-map,
//! reusable, compatible), memory-region users and the linear map. Every
//! static reserved region of every board is kept (inside memory, or outside
//! every bank, as Linux keeps it), and every dynamic one is placed unless
//! memory has no room. A few known facts about specific boards are checked
//! too. The node index itself is compared, node by node, with a third
//! reader, the `fdt` crate: same nodes, property names in blob order and
//! children.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use tidepool_dt::{AddrRange, DeviceTree, InterruptKind, Placement, Plan, Platform};

/// One node as `fdtdump` prints it: full path, parent, properties as bytes.
struct DumpNode {
    path: String,
    parent: Option<usize>,
    children: Vec<usize>,
    properties: BTreeMap<String, Vec<u8>>,
}

/// A device tree as read by `fdtdump`.
struct Dump {
    nodes: Vec<DumpNode>,
    memreserve: Vec<(u64, u64)>,
}

fn hex(text: &str) -> u64 {
    u64::from_str_radix(text.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("not hex: {text}"))
}

/// The bytes of a property value as `fdtdump` prints it: `<cells>`,
/// `[bytes]` or `"strings", ...`.
fn value_bytes(text: &str) -> Vec<u8> {
    if let Some(cells) = text.strip_prefix('<') {
        let cells = cells.strip_suffix('>').expect("cells end with >");
        cells
            .split_whitespace()
            .flat_map(|c| (hex(c) as u32).to_be_bytes())
            .collect()
    } else if let Some(bytes) = text.strip_prefix('[') {
        let bytes = bytes.strip_suffix(']').expect("bytes end with ]");
        bytes
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    } else {
        let inner = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .expect("quoted strings");
        inner
            .split("\", \"")
            .flat_map(|s| s.bytes().chain([0]))
            .collect()
    }
}

fn fdtdump(file: &Path) -> Dump {
    let fdtdump = std::env::var_os("TIDEPOOL_FDTDUMP")
        .expect("TIDEPOOL_FDTDUMP must name libfdt's fdtdump (device-tree-compiler)");
    let output = Command::new(fdtdump)
        .arg(file)
        .output()
        .expect("run fdtdump");
    assert!(output.status.success(), "fdtdump {} failed", file.display());
    let text = String::from_utf8_lossy(&output.stdout);
    let mut dump = Dump {
        nodes: Vec::new(),
        memreserve: Vec::new(),
    };
    let mut open: Vec<usize> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty()
            || line.starts_with("//")
            || line.starts_with("****")
            || line == "/dts-v1/;"
        {
            continue;
        }
        if let Some(entry) = line.strip_prefix("/memreserve/ ") {
            let mut fields = entry.trim_end_matches(';').split_whitespace().map(hex);
            dump.memreserve
                .push((fields.next().unwrap(), fields.next().unwrap()));
        } else if let Some(name) = line.strip_suffix(" {") {
            let parent = open.last().copied();
            let path = match parent {
                None => "/".to_string(),
                Some(0) => format!("/{name}"),
                Some(p) => format!("{}/{name}", dump.nodes[p].path),
            };
            let index = dump.nodes.len();
            dump.nodes.push(DumpNode {
                path,
                parent,
                children: Vec::new(),
                properties: BTreeMap::new(),
            });
            if let Some(p) = parent {
                dump.nodes[p].children.push(index);
            }
            open.push(index);
        } else if line == "};" {
            open.pop();
        } else {
            let line = line
                .strip_suffix(';')
                .unwrap_or_else(|| panic!("unexpected fdtdump line {line:?}"));
            let (name, value) = match line.split_once(" = ") {
                Some((name, value)) => (name, value_bytes(value)),
                None => (line, Vec::new()),
            };
            let node = *open.last().expect("property inside a node");
            dump.nodes[node].properties.insert(name.to_string(), value);
        }
    }
    dump
}

impl Dump {
    fn property(&self, node: usize, name: &str) -> Option<&[u8]> {
        self.nodes[node].properties.get(name).map(Vec::as_slice)
    }

    fn string(&self, node: usize, name: &str) -> Option<String> {
        let value = self.property(node, name)?;
        Some(
            String::from_utf8_lossy(value.split(|&b| b == 0).next().unwrap_or_default())
                .into_owned(),
        )
    }

    fn strings(&self, node: usize, name: &str) -> Vec<String> {
        let Some(value) = self.property(node, name).and_then(|v| v.strip_suffix(&[0])) else {
            return Vec::new();
        };
        value
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    }

    fn available(&self, node: usize) -> bool {
        let own = self
            .string(node, "status")
            .is_none_or(|s| s == "okay" || s == "ok");
        own && self.nodes[node].parent.is_none_or(|p| self.available(p))
    }

    fn cell(&self, node: usize, name: &str, default: usize) -> usize {
        self.property(node, name).map_or(default, |v| {
            u32::from_be_bytes(v.try_into().unwrap()) as usize
        })
    }

    /// `(address, size)` pairs of property `name`, with `node`'s parent's
    /// cells (given); `None` if the length is not a whole number of pairs.
    fn pairs(&self, node: usize, name: &str, cells: (usize, usize)) -> Option<Vec<(u64, u64)>> {
        let value = self.property(node, name)?;
        let unit = (cells.0 + cells.1) * 4;
        if value.len() % unit != 0 {
            return None;
        }
        let number = |bytes: &[u8]| bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        Some(
            value
                .chunks(unit)
                .map(|c| (number(&c[..cells.0 * 4]), number(&c[cells.0 * 4..])))
                .collect(),
        )
    }

    fn child(&self, node: usize, name: &str) -> Option<usize> {
        self.nodes[node]
            .children
            .iter()
            .copied()
            .find(|&c| self.nodes[c].path.rsplit('/').next() == Some(name))
    }
}

/// Sorted, merged (overlapping or touching) `[start, end)` intervals.
fn merged(mut intervals: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    intervals.retain(|(s, e)| s < e);
    intervals.sort();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in intervals {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `from` minus `holes`, interval by interval.
fn minus(from: &[(u64, u64)], holes: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut pieces = from.to_vec();
    for &(hs, he) in holes {
        pieces = pieces
            .into_iter()
            .flat_map(|(s, e)| {
                if he <= s || e <= hs {
                    vec![(s, e)]
                } else {
                    [(s, hs.max(s)), (he.min(e), e)]
                        .into_iter()
                        .filter(|(a, b)| a < b)
                        .collect()
                }
            })
            .collect();
    }
    pieces
}

fn intervals(ranges: &[AddrRange]) -> Vec<(u64, u64)> {
    ranges.iter().map(|r| (r.base(), r.end())).collect()
}

/// A static reserved region as the independent reading expects it.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Expected {
    base: u64,
    size: u64,
    path: String,
    no_map: bool,
    reusable: bool,
    in_memory: bool,
    compatible: Vec<String>,
}

/// Totals over all boards, printed at the end.
#[derive(Default)]
struct Totals {
    boards: usize,
    banks: usize,
    static_regions: usize,
    dynamic_regions: usize,
    users: usize,
    no_map_pools: usize,
    outside_memory: usize,
    boards_outside_memory: usize,
    errors: usize,
}

fn check_board(file: &Path, totals: &mut Totals) {
    let bytes = std::fs::read(file).unwrap();
    let dt = DeviceTree::from_dtb_with(&bytes, &[])
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let plan = &dt.plan;
    assert_eq!(
        Plan::from_dtb(&bytes).as_ref(),
        Ok(plan),
        "{}: Plan and DeviceTree disagree",
        file.display()
    );
    let dump = fdtdump(file);
    let name = file.display();

    // Memory banks.
    let root_cells = (
        dump.cell(0, "#address-cells", 2),
        dump.cell(0, "#size-cells", 1),
    );
    let mut banks = Vec::new();
    for &node in &dump.nodes[0].children {
        if dump.available(node) && dump.string(node, "device_type").as_deref() == Some("memory") {
            let pairs = dump
                .pairs(node, "reg", root_cells)
                .unwrap_or_else(|| panic!("{name}: memory reg"));
            banks.extend(
                pairs
                    .into_iter()
                    .filter(|p| p.1 != 0)
                    .map(|(a, s)| (a, a + s)),
            );
        }
    }
    let memory = merged(banks);
    assert_eq!(intervals(plan.memory()), memory, "{name}: memory banks");

    // /memreserve/.
    let mut memreserve: Vec<(u64, u64)> = dump
        .memreserve
        .iter()
        .filter(|e| e.1 != 0)
        .copied()
        .collect();
    memreserve.sort();
    let planned: Vec<(u64, u64)> = plan
        .memreserve()
        .iter()
        .map(|r| (r.base(), r.size()))
        .collect();
    assert_eq!(planned, memreserve, "{name}: memreserve");

    // Reserved-memory children.
    let reserved_memory = dump
        .child(0, "reserved-memory")
        .filter(|&n| dump.available(n));
    let mut candidates = Vec::new();
    let mut no_map_holes = Vec::new();
    let mut readable_static = Vec::new();
    let mut dynamic_children = Vec::new();
    let mut invalid = BTreeSet::new();
    if let Some(rm) = reserved_memory {
        assert_eq!(
            dump.property(rm, "ranges"),
            Some(&[][..]),
            "{name}: /reserved-memory ranges must be empty"
        );
        let cells = (
            dump.cell(rm, "#address-cells", 2),
            dump.cell(rm, "#size-cells", 1),
        );
        for (order, &child) in dump.nodes[rm]
            .children
            .iter()
            .enumerate()
            .filter(|(_, c)| dump.available(**c))
        {
            let path = dump.nodes[child].path.clone();
            let has = |p: &str| dump.property(child, p).is_some();
            let (no_map, reusable) = (has("no-map"), has("reusable"));
            let reg = dump.pairs(child, "reg", cells);
            let entries: Vec<(u64, u64)> = reg
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.1 != 0)
                .collect();
            readable_static.extend(entries.iter().map(|&(a, s)| (a, a + s)));
            if no_map {
                no_map_holes.extend(entries.iter().map(|&(a, s)| (a, a + s)));
            }
            let valid = (has("reg") != has("size"))
                && !(no_map && reusable)
                && (!has("reg") || reg.is_some());
            if !valid {
                invalid.insert(path);
                continue;
            }
            if has("size") {
                dynamic_children.push((child, path));
                continue;
            }
            let compatible = dump.strings(child, "compatible");
            for (base, size) in entries {
                let in_memory = memory.iter().any(|&(s, e)| s <= base && base + size <= e);
                let outside = memory.iter().all(|&(s, e)| base + size <= s || e <= base);
                if in_memory || outside {
                    let region = Expected {
                        base,
                        size,
                        path: path.clone(),
                        no_map,
                        reusable,
                        in_memory,
                        compatible: compatible.clone(),
                    };
                    candidates.push((base, order, region));
                } else {
                    invalid.insert(path.clone());
                }
            }
        }
    }
    candidates.sort_by_key(|(base, order, _)| (*base, *order));
    let mut expected_static: Vec<Expected> = Vec::new();
    let mut reach = 0u64;
    for (_, _, region) in candidates {
        if !region.in_memory {
            expected_static.push(region);
            continue;
        }
        if region.base < reach {
            invalid.insert(region.path.clone());
            continue;
        }
        reach = reach.max(region.base + region.size);
        expected_static.push(region);
    }
    let mut planned_static: Vec<Expected> = plan
        .reserved()
        .iter()
        .filter(|r| r.placement == Placement::Static)
        .map(|r| Expected {
            base: r.range.base(),
            size: r.range.size(),
            path: r.path.clone(),
            no_map: r.no_map,
            reusable: r.reusable,
            in_memory: r.in_memory,
            compatible: r.compatible.clone(),
        })
        .collect();
    planned_static.sort();
    expected_static.sort();
    assert_eq!(
        planned_static, expected_static,
        "{name}: static reserved regions"
    );
    // Real boards: every static region is kept, none partly in memory or
    // overlapping another.
    assert_eq!(
        invalid,
        BTreeSet::new(),
        "{name}: every reserved region is kept"
    );
    let error_paths: BTreeSet<&str> = plan.errors().iter().map(|e| e.path.as_str()).collect();
    for path in &invalid {
        assert!(
            error_paths.contains(path.as_str()),
            "{name}: {path} should be reported"
        );
    }

    // Dynamic children: placed inside memory and alloc-ranges, aligned,
    // clear of everything else; or reported.
    let (rm_cells, taken) = match reserved_memory {
        Some(rm) => (
            (
                dump.cell(rm, "#address-cells", 2),
                dump.cell(rm, "#size-cells", 1),
            ),
            merged(readable_static.clone()),
        ),
        None => ((2, 1), Vec::new()),
    };
    for (child, path) in &dynamic_children {
        let placed: Vec<_> = plan.regions_of(path).collect();
        if placed.is_empty() {
            // Only a lack of room may leave a dynamic region out.
            let reasons: Vec<String> = plan
                .errors()
                .iter()
                .filter(|e| e.path == *path)
                .map(|e| e.kind.to_string())
                .collect();
            assert!(
                !reasons.is_empty() && reasons.iter().all(|r| r.starts_with("no free place")),
                "{name}: {path} neither placed nor left out for lack of room: {reasons:?}"
            );
            continue;
        }
        assert!(placed[0].in_memory, "{name}: {path} placed outside memory");
        assert_eq!(placed.len(), 1, "{name}: {path}");
        let region = placed[0];
        let number = |p: &str| {
            dump.property(*child, p)
                .map(|v| v.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
        };
        assert_eq!(
            Some(region.range.size()),
            number("size"),
            "{name}: {path} size"
        );
        let alignment = number("alignment").unwrap_or(0).max(0x1000);
        assert_eq!(
            region.range.base() % alignment,
            0,
            "{name}: {path} alignment"
        );
        assert_eq!(region.no_map, dump.property(*child, "no-map").is_some());
        assert_eq!(region.reusable, dump.property(*child, "reusable").is_some());
        let (start, end) = (region.range.base(), region.range.end());
        assert!(
            memory.iter().any(|&(s, e)| s <= start && end <= e),
            "{name}: {path} outside memory"
        );
        if let Some(windows) = dump.pairs(*child, "alloc-ranges", rm_cells) {
            assert!(
                windows.iter().any(|&(a, s)| a <= start && end <= a + s),
                "{name}: {path} outside alloc-ranges"
            );
        }
        assert!(
            taken.iter().all(|&(s, e)| end <= s || e <= start),
            "{name}: {path} overlaps a static region"
        );
        assert!(
            memreserve.iter().all(|&(a, s)| end <= a || a + s <= start),
            "{name}: {path} overlaps memreserve"
        );
        if region.no_map {
            no_map_holes.push((start, end));
        }
        totals.dynamic_regions += 1;
    }
    let in_memory: Vec<AddrRange> = plan
        .reserved()
        .iter()
        .filter(|r| r.in_memory)
        .map(|r| r.range)
        .collect();
    let all = intervals(&in_memory);
    assert_eq!(
        merged(all.clone()).iter().map(|(s, e)| e - s).sum::<u64>(),
        all.iter().map(|(s, e)| e - s).sum::<u64>(),
        "{name}: reserved regions in memory overlap"
    );

    // Users: every available node's memory-region phandles.
    let mut phandles = BTreeMap::new();
    for (index, node) in dump.nodes.iter().enumerate() {
        for key in ["phandle", "linux,phandle"] {
            if let Some(value) = node.properties.get(key) {
                phandles
                    .entry(u32::from_be_bytes(value.as_slice().try_into().unwrap()))
                    .or_insert(index);
            }
        }
    }
    let mut expected_users: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (index, node) in dump.nodes.iter().enumerate() {
        let Some(value) = node
            .properties
            .get("memory-region")
            .filter(|_| dump.available(index))
        else {
            continue;
        };
        for phandle in value
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        {
            let target = phandles.get(&phandle).copied();
            if let Some(target) =
                target.filter(|&t| dump.nodes[t].parent == reserved_memory && dump.available(t))
            {
                expected_users
                    .entry(dump.nodes[target].path.clone())
                    .or_default()
                    .insert(node.path.clone());
            }
        }
    }
    for region in plan.reserved() {
        let users: BTreeSet<String> = region.users.iter().map(|u| u.path.clone()).collect();
        assert_eq!(
            users,
            expected_users
                .get(&region.path)
                .cloned()
                .unwrap_or_default(),
            "{name}: users of {}",
            region.path
        );
        totals.users += users.len();
    }

    // Linear map.
    let expected_linear = merged(minus(&memory, &merged(no_map_holes)));
    assert_eq!(
        intervals(plan.linear_map()),
        expected_linear,
        "{name}: linear map"
    );

    // The other outputs hold together.
    let lines = plan.console_lines().count();
    let expected_lines = plan.memory().len()
        + plan.memreserve().len()
        + plan.reserved().len()
        + plan.linear_map().len()
        + plan.errors().len()
        + 1;
    assert_eq!(lines, expected_lines, "{name}: console lines");
    assert!(plan.to_json().starts_with("{\"memory\":["), "{name}: json");

    totals.boards += 1;
    totals.banks += plan.memory().len();
    totals.static_regions += expected_static.len();
    totals.no_map_pools += plan.dma_pools().filter(|p| p.no_map).count();
    let outside = plan.reserved().iter().filter(|r| !r.in_memory).count();
    totals.outside_memory += outside;
    totals.boards_outside_memory += usize::from(outside > 0);
    totals.errors += plan.errors().len();
}

fn dtbs_under(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            dtbs_under(&path, found);
        } else if path.extension().is_some_and(|e| e == "dtb") {
            found.push(path);
        }
    }
}

fn board_dtbs() -> Vec<PathBuf> {
    let dir = std::env::var_os("TIDEPOOL_BOARD_DTBS")
        .expect("TIDEPOOL_BOARD_DTBS must name a directory of board DTBs");
    let mut found = Vec::new();
    dtbs_under(Path::new(&dir), &mut found);
    found.sort();
    assert!(
        !found.is_empty(),
        "no *.dtb under TIDEPOOL_BOARD_DTBS={}",
        Path::new(&dir).display()
    );
    found
}

fn board(dtbs: &[PathBuf], suffix: &str) -> Plan {
    let file = dtbs
        .iter()
        .find(|p| p.ends_with(suffix))
        .unwrap_or_else(|| panic!("{suffix} is not among the board DTBs"));
    Plan::from_dtb(&std::fs::read(file).unwrap()).unwrap()
}

/// The i.MX 8M Plus EVK's uSDHC controllers: the SD slot (usdhc2) and the
/// eMMC (usdhc3) are enabled, with their interrupts, the 400 MHz clock the
/// tree assigns, and no write-protect pin (no `fsl,wp-controller`).
#[test]
#[ignore = "needs TIDEPOOL_BOARD_DTBS; run by cargo xtask test"]
fn imx8mp_evk_usdhc_controllers() {
    let dtbs = board_dtbs();
    let file = dtbs
        .iter()
        .find(|p| p.ends_with("freescale/imx8mp-evk.dtb"))
        .expect("imx8mp-evk.dtb is among the board DTBs");
    let platform = Platform::from_dtb(&std::fs::read(file).unwrap()).unwrap();
    let usdhc: Vec<_> = platform
        .usdhc
        .iter()
        .map(|u| {
            (
                u.device.path.rsplit('/').next().unwrap().to_string(),
                u.device.reg,
                u.device.interrupt.kind,
                u.device.interrupt.number,
                u.clock_hz,
                u.write_protect_pin,
                u.device.dma_coherent,
            )
        })
        .collect();
    let slot = |name: &str, base: u64, spi: u32| {
        (
            name.to_string(),
            AddrRange::new(base, 0x1_0000).unwrap(),
            InterruptKind::Spi,
            spi,
            Some(400_000_000),
            false,
            false,
        )
    };
    assert_eq!(
        usdhc,
        [
            slot("mmc@30b50000", 0x30b5_0000, 23),
            slot("mmc@30b60000", 0x30b6_0000, 24)
        ]
    );
}

#[test]
#[ignore = "needs TIDEPOOL_BOARD_DTBS; run by cargo xtask test"]
fn every_board_plan_matches_fdtdump() {
    let mut totals = Totals::default();
    for file in board_dtbs() {
        check_board(&file, &mut totals);
    }
    eprintln!(
        "boards: {} DTBs, {} memory banks, {} static and {} dynamic reserved regions \
         ({} outside memory, on {} boards), {} users, {} no-map DMA pools, {} errors",
        totals.boards,
        totals.banks,
        totals.static_regions,
        totals.dynamic_regions,
        totals.outside_memory,
        totals.boards_outside_memory,
        totals.users,
        totals.no_map_pools,
        totals.errors
    );
    assert!(
        totals.no_map_pools > 0,
        "the set should have no-map DMA pools"
    );
    assert!(
        totals.outside_memory > 0,
        "the set should have reserved regions outside memory"
    );
}

/// Every node of `dtb` as the `fdt` crate reads it: full path, property
/// names and children's names, in blob order.
fn fdt_crate_nodes(dtb: &[u8]) -> Vec<(String, Vec<String>, Vec<String>)> {
    fn walk(
        node: fdt::node::FdtNode<'_, '_>,
        path: String,
        out: &mut Vec<(String, Vec<String>, Vec<String>)>,
    ) {
        let properties = node.properties().map(|p| p.name.to_string()).collect();
        let children: Vec<_> = node.children().collect();
        let names = children.iter().map(|c| c.name.to_string()).collect();
        out.push((path.clone(), properties, names));
        for child in children {
            let prefix = if path == "/" { "" } else { path.as_str() };
            walk(child, format!("{prefix}/{}", child.name), out);
        }
    }
    let fdt = fdt::Fdt::new(dtb).expect("the fdt crate reads the DTB");
    let mut out = Vec::new();
    walk(
        fdt.find_node("/").expect("a root node"),
        "/".into(),
        &mut out,
    );
    out
}

#[test]
#[ignore = "needs TIDEPOOL_BOARD_DTBS; run by cargo xtask test"]
fn every_board_node_matches_the_fdt_crate() {
    let (mut boards, mut nodes) = (0, 0);
    for file in board_dtbs() {
        let dtb = std::fs::read(&file).unwrap();
        let ours =
            tidepool_dt::describe_tree(&dtb).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let theirs = fdt_crate_nodes(&dtb);
        assert_eq!(ours.len(), theirs.len(), "{}: nodes", file.display());
        for (ours, (path, properties, children)) in ours.iter().zip(theirs) {
            let names: Vec<_> = ours.properties.iter().map(|(n, _)| n.clone()).collect();
            assert_eq!(
                (ours.path.as_str(), &names, &ours.children),
                (path.as_str(), &properties, &children),
                "{}",
                file.display()
            );
            nodes += 1;
        }
        boards += 1;
    }
    eprintln!("boards: {boards} DTBs, {nodes} nodes read alike by tidepool-dt and the fdt crate");
    assert!(boards > 0 && nodes > boards);
}

#[test]
#[ignore = "needs TIDEPOOL_BOARD_DTBS; run by cargo xtask test"]
fn known_board_facts() {
    let dtbs = board_dtbs();
    let overlaps_linear =
        |plan: &Plan, range: AddrRange| plan.linear_map().iter().any(|l| l.overlaps(range));

    // i.MX8QXP MEK: the VPU's no-map boot region, used by both its cores'
    // first memory-region entries, is out of the linear map.
    let mek = board(&dtbs, "freescale/imx8qxp-mek.dtb");
    let boot: Vec<_> = mek
        .regions_of("/reserved-memory/decoder-boot@84000000")
        .collect();
    assert_eq!(boot.len(), 1);
    assert_eq!(
        boot[0].range,
        AddrRange::new(0x8400_0000, 0x200_0000).unwrap()
    );
    assert!(boot[0].no_map && !overlaps_linear(&mek, boot[0].range));
    assert_eq!(
        boot[0]
            .users
            .iter()
            .map(|u| u.path.as_str())
            .collect::<Vec<_>>(),
        ["/vpu@2c000000/vpu-core@2d080000"]
    );

    // i.MX8DXL EVK: the dynamic CMA pool fills its alloc-ranges exactly, so
    // its place is known; it is reusable, so it stays in the linear map.
    let dxl = board(&dtbs, "freescale/imx8dxl-evk.dtb");
    let cma: Vec<_> = dxl.regions_of("/reserved-memory/linux,cma").collect();
    assert_eq!(cma.len(), 1);
    assert_eq!(
        cma[0].range,
        AddrRange::new(0x9800_0000, 0x1400_0000).unwrap()
    );
    assert!(
        cma[0].reusable
            && cma[0].is_dma_pool()
            && matches!(cma[0].placement, Placement::Dynamic { .. })
    );
    assert!(dxl.linear_map().iter().any(|l| l.contains(cma[0].range)));

    // TI AM642 SK: no-map shared-dma-pools for the R5F cores, out of the
    // linear map, each with its remoteproc user.
    let am642 = board(&dtbs, "ti/k3-am642-sk.dtb");
    let pool: Vec<_> = am642
        .regions_of("/reserved-memory/r5f-dma-memory@a0000000")
        .collect();
    assert_eq!(pool.len(), 1);
    assert_eq!(
        pool[0].range,
        AddrRange::new(0xa000_0000, 0x10_0000).unwrap()
    );
    assert!(pool[0].no_map && pool[0].is_dma_pool() && !overlaps_linear(&am642, pool[0].range));
    assert_eq!(pool[0].users.len(), 1);
    assert!(am642.dma_pools().filter(|p| p.no_map).count() >= 8);

    // Arm FVP: the display's VRAM is a no-map pool in board memory outside
    // DRAM, kept with its user and out of the linear map.
    let fvp = board(&dtbs, "arm/fvp-base-revc.dtb");
    let vram: Vec<_> = fvp.regions_of("/reserved-memory/vram@18000000").collect();
    assert_eq!(vram.len(), 1);
    assert_eq!(
        vram[0].range,
        AddrRange::new(0x1800_0000, 0x80_0000).unwrap()
    );
    assert!(vram[0].no_map && vram[0].is_dma_pool() && !vram[0].in_memory);
    assert!(!overlaps_linear(&fvp, vram[0].range));
    assert_eq!(
        vram[0]
            .users
            .iter()
            .map(|u| u.path.as_str())
            .collect::<Vec<_>>(),
        ["/bus@8000000/motherboard-bus@8000000/iofpga-bus@300000000/clcd@1f0000"]
    );
    assert_eq!(fvp.errors(), []);
}
