//! Tests of the plan, the platform facts and the output formats, on blobs
//! built with `vm-fdt`.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use crate::testing::{Dt, N};
use crate::*;

fn r(base: u64, size: u64) -> AddrRange {
    AddrRange::new(base, size).unwrap()
}

fn plan(dt: Dt) -> Plan {
    Plan::from_dtb(&dt.build()).unwrap()
}

fn plan_with(dt: Dt, busy: &[AddrRange]) -> Plan {
    Plan::from_dtb_with(&dt.build(), busy).unwrap()
}

fn reasons(plan: &Plan) -> Vec<(String, String)> {
    plan.errors()
        .iter()
        .map(|e| (e.path.clone(), e.kind.to_string()))
        .collect()
}

fn has_error(plan: &Plan, path: &str, kind: &NodeErrorKind) -> bool {
    plan.errors()
        .iter()
        .any(|e| e.path == path && &e.kind == kind)
}

fn ranges_of(plan: &Plan) -> Vec<(&str, AddrRange)> {
    plan.reserved()
        .iter()
        .map(|region| (region.path.as_str(), region.range))
        .collect()
}

/// 2 GiB at 0x40000000, like QEMU `virt -m 2G`.
fn two_gib() -> Dt {
    Dt::new().memory(&[(0x4000_0000, 0x8000_0000)])
}

fn pool(n: N, base: u64, size: u64) -> N {
    n.str("compatible", "shared-dma-pool")
        .reg64("reg", &[(base, size)])
        .empty("no-map")
}

// ---- memory banks ----

#[test]
fn memory_banks_from_every_memory_node_and_entry_sorted_and_merged() {
    let dt = Dt::new()
        .node("memory@80000000", |n| {
            n.str("device_type", "memory")
                .reg64("reg", &[(0x8000_0000, 0x1000_0000), (0x4000_0000, 0x1000)])
        })
        .node("memory@40001000", |n| {
            n.str("device_type", "memory")
                .reg64("reg", &[(0x4000_1000, 0xf000), (0x0, 0x0)])
        })
        .node("memory@90000000", |n| {
            n.str("device_type", "memory")
                .reg64("reg", &[(0x8800_0000, 0x1000_0000)])
        })
        .node("memory@c0000000", |n| {
            n.str("device_type", "memory")
                .str("status", "disabled")
                .reg64("reg", &[(0xc000_0000, 0x1000)])
        })
        .node("sram@10000000", |n| {
            n.reg64("reg", &[(0x1000_0000, 0x1000)])
        });
    let plan = plan(dt);
    assert_eq!(
        plan.memory(),
        &[r(0x4000_0000, 0x1_0000), r(0x8000_0000, 0x1800_0000)]
    );
    assert!(plan.errors().is_empty(), "{:?}", reasons(&plan));
    assert_eq!(plan.linear_map(), plan.memory());
}

#[test]
fn memory_cells_come_from_the_root() {
    let one_one = Dt::new()
        .root(|n| n.u32("#address-cells", 1).u32("#size-cells", 1))
        .node("memory@40000000", |n| {
            n.str("device_type", "memory")
                .cells("reg", &[0x4000_0000, 0x1000_0000, 0x6000_0000, 0x1000])
        });
    assert_eq!(
        plan(one_one).memory(),
        &[r(0x4000_0000, 0x1000_0000), r(0x6000_0000, 0x1000)]
    );

    let two_one = Dt::new()
        .root(|n| n.u32("#address-cells", 2).u32("#size-cells", 1))
        .node("memory@100000000", |n| {
            n.str("device_type", "memory")
                .cells("reg", &[0x1, 0x0, 0x2000_0000])
        });
    assert_eq!(plan(two_one).memory(), &[r(0x1_0000_0000, 0x2000_0000)]);

    // Missing cell counts: the defaults, 2 and 1.
    let defaults = Dt::new().root(|n| n).node("memory@0", |n| {
        n.str("device_type", "memory")
            .cells("reg", &[0x0, 0x4000_0000, 0x1000])
    });
    assert_eq!(plan(defaults).memory(), &[r(0x4000_0000, 0x1000)]);
}

#[test]
fn memory_errors_impossible_cells_truncated_and_missing_reg() {
    let three = Dt::new()
        .root(|n| n.u32("#address-cells", 3).u32("#size-cells", 1))
        .node("memory@0", |n| {
            n.str("device_type", "memory").cells("reg", &[0, 0, 0, 1])
        });
    let plan_three = plan(three);
    assert!(plan_three.memory().is_empty());
    assert!(has_error(
        &plan_three,
        "/",
        &NodeErrorKind::UnsupportedCells {
            property: "#address-cells",
            value: 3
        }
    ));

    let zero_size_cells = Dt::new()
        .root(|n| n.u32("#address-cells", 2).u32("#size-cells", 0))
        .node("memory@0", |n| {
            n.str("device_type", "memory").cells("reg", &[0, 0])
        });
    assert!(has_error(
        &plan(zero_size_cells),
        "/",
        &NodeErrorKind::UnsupportedCells {
            property: "#size-cells",
            value: 0
        }
    ));

    let truncated = Dt::new()
        .memory(&[(0x4000_0000, 0x1000)])
        .node("memory@50000000", |n| {
            n.str("device_type", "memory")
                .cells("reg", &[0, 0x5000_0000, 0])
        });
    let plan_truncated = plan(truncated);
    assert_eq!(plan_truncated.memory(), &[r(0x4000_0000, 0x1000)]);
    let kind = NodeErrorKind::Truncated {
        property: "reg",
        len: 12,
        unit: 16,
    };
    assert!(has_error(&plan_truncated, "/memory@50000000", &kind));

    let no_reg = Dt::new().node("memory", |n| n.str("device_type", "memory"));
    assert!(has_error(
        &plan(no_reg),
        "/memory",
        &NodeErrorKind::Missing { property: "reg" }
    ));

    let wraps = Dt::new().memory(&[(u64::MAX - 0xfff, 0x1000)]);
    let plan_wraps = plan(wraps);
    assert!(plan_wraps.memory().is_empty());
    assert_eq!(plan_wraps.errors().len(), 1);
    assert!(matches!(
        plan_wraps.errors()[0].kind,
        NodeErrorKind::Wraps {
            property: "reg",
            ..
        }
    ));
}

// ---- /memreserve/ ----

#[test]
fn memreserve_entries_sorted_and_kept_in_the_linear_map() {
    let plan = plan(
        two_gib()
            .memreserve(0x5000_0000, 0x2000)
            .memreserve(0x4800_0000, 0x10000),
    );
    assert_eq!(
        plan.memreserve(),
        &[r(0x4800_0000, 0x10000), r(0x5000_0000, 0x2000)]
    );
    assert_eq!(plan.linear_map(), plan.memory());
}

#[test]
fn memreserve_zero_size_entry_is_reported() {
    let mut blob = two_gib()
        .memreserve(0x4800_0000, 0x1000)
        .memreserve(0x4900_0000, 0x1000)
        .build();
    // vm-fdt refuses zero-size entries: clear the second entry's size (the
    // reservation block follows the 40-byte header, 8-byte aligned).
    blob[40 + 16 + 8..40 + 32].fill(0);
    let plan = Plan::from_dtb(&blob).unwrap();
    assert_eq!(plan.memreserve(), &[r(0x4800_0000, 0x1000)]);
    assert_eq!(plan.errors()[0].path, MEMRESERVE_PATH);
    assert_eq!(
        plan.errors()[0].kind,
        NodeErrorKind::ZeroSize {
            property: "memreserve",
            entry: Some(1)
        }
    );
}

// ---- /reserved-memory: static regions ----

#[test]
fn static_regions_one_per_reg_entry_with_flags_and_compatible() {
    let dt = two_gib().reserved(|n| {
        n.node("dma@78000000", |n| {
            pool(n, 0x7800_0000, 0x40_0000).empty("linux,dma-default")
        })
        .node("multi", |n| {
            n.strs("compatible", &["vendor,thing", "shared-dma-pool"])
                .reg64("reg", &[(0x7000_0000, 0x1000), (0x6000_0000, 0x2000)])
                .empty("reusable")
        })
        .node("disabled@71000000", |n| {
            n.reg64("reg", &[(0x7100_0000, 0x1000)])
                .empty("no-map")
                .str("status", "disabled")
        })
        .node("restricted@72000000", |n| {
            n.str("compatible", "restricted-dma-pool")
                .reg64("reg", &[(0x7200_0000, 0x1234)])
        })
    });
    let plan = plan(dt);
    assert!(plan.errors().is_empty(), "{:?}", reasons(&plan));
    assert_eq!(
        ranges_of(&plan),
        vec![
            ("/reserved-memory/multi", r(0x6000_0000, 0x2000)),
            ("/reserved-memory/multi", r(0x7000_0000, 0x1000)),
            (
                "/reserved-memory/restricted@72000000",
                r(0x7200_0000, 0x1234)
            ),
            ("/reserved-memory/dma@78000000", r(0x7800_0000, 0x40_0000)),
        ]
    );
    let dma = &plan.reserved()[3];
    assert!(dma.no_map && !dma.reusable && dma.dma_default && dma.placement == Placement::Static);
    assert_eq!(dma.compatible, vec!["shared-dma-pool"]);
    let multi = &plan.reserved()[0];
    assert!(!multi.no_map && multi.reusable && !multi.dma_default);
    assert_eq!(multi.compatible, vec!["vendor,thing", "shared-dma-pool"]);
    assert!(plan.reserved()[2].is_compatible("restricted-dma-pool"));
    let pools: Vec<_> = plan.dma_pools().map(|p| p.range).collect();
    assert_eq!(
        pools,
        vec![
            r(0x6000_0000, 0x2000),
            r(0x7000_0000, 0x1000),
            r(0x7800_0000, 0x40_0000)
        ]
    );
    assert_eq!(plan.regions_of("/reserved-memory/multi").count(), 2);
    // Only the (enabled) no-map pool leaves the linear map; the disabled
    // node is ignored entirely.
    assert_eq!(
        plan.linear_map(),
        &[r(0x4000_0000, 0x3800_0000), r(0x7840_0000, 0x47c0_0000)]
    );
}

#[test]
fn reserved_memory_cells_come_from_reserved_memory() {
    let dt = two_gib().node("reserved-memory", |n| {
        n.u32("#address-cells", 1)
            .u32("#size-cells", 1)
            .empty("ranges")
            .node("a", |n| n.cells("reg", &[0x7800_0000, 0x1000]))
    });
    assert_eq!(
        ranges_of(&plan(dt)),
        vec![("/reserved-memory/a", r(0x7800_0000, 0x1000))]
    );

    let bad = two_gib().node("reserved-memory", |n| {
        n.u32("#address-cells", 2)
            .u32("#size-cells", 3)
            .empty("ranges")
            .node("a", |n| n.empty("no-map"))
    });
    let plan_bad = plan(bad);
    assert!(plan_bad.reserved().is_empty());
    let kind = NodeErrorKind::UnsupportedCells {
        property: "#size-cells",
        value: 3,
    };
    assert!(has_error(&plan_bad, "/reserved-memory", &kind));
}

#[test]
fn reserved_memory_ranges_translate_or_are_reported_missing() {
    let translated = two_gib().node("reserved-memory", |n| {
        n.u32("#address-cells", 1)
            .u32("#size-cells", 1)
            .cells("ranges", &[0x0, 0x0, 0x7000_0000, 0x1000_0000])
            .node("a", |n| {
                n.cells("reg", &[0x80_0000, 0x1000]).empty("no-map")
            })
    });
    let plan_translated = plan(translated);
    assert_eq!(
        ranges_of(&plan_translated),
        vec![("/reserved-memory/a", r(0x7080_0000, 0x1000))]
    );

    let missing = two_gib().node("reserved-memory", |n| {
        n.u32("#address-cells", 2)
            .u32("#size-cells", 2)
            .node("a", |n| {
                n.reg64("reg", &[(0x7800_0000, 0x1000)]).empty("no-map")
            })
    });
    let plan_missing = plan(missing);
    assert!(has_error(
        &plan_missing,
        "/reserved-memory",
        &NodeErrorKind::MissingRanges
    ));
    assert_eq!(
        ranges_of(&plan_missing),
        vec![("/reserved-memory/a", r(0x7800_0000, 0x1000))]
    );
    assert!(
        !plan_missing
            .linear_map()
            .iter()
            .any(|l| l.overlaps(r(0x7800_0000, 0x1000)))
    );
}

#[test]
fn disabled_reserved_memory_node_is_ignored() {
    let dt = two_gib().node("reserved-memory", |n| {
        n.u32("#address-cells", 2)
            .u32("#size-cells", 2)
            .empty("ranges")
            .str("status", "disabled")
            .node("a", |n| pool(n, 0x7800_0000, 0x1000))
    });
    let plan = plan(dt);
    assert!(plan.reserved().is_empty() && plan.errors().is_empty());
    assert_eq!(plan.linear_map(), plan.memory());
}

// ---- /reserved-memory: errors ----

#[test]
fn overlapping_static_regions_keep_the_lower_then_earlier_one() {
    let dt = two_gib().reserved(|n| {
        n.node("b", |n| {
            n.reg64("reg", &[(0x7000_1000, 0x1000)]).empty("no-map")
        })
        .node("a", |n| n.reg64("reg", &[(0x7000_0000, 0x2000)]))
        .node("c", |n| n.reg64("reg", &[(0x7000_0000, 0x100)]))
        .node("d", |n| n.reg64("reg", &[(0x7000_2000, 0x1000)]))
    });
    let plan = plan(dt);
    assert_eq!(
        ranges_of(&plan),
        vec![
            ("/reserved-memory/a", r(0x7000_0000, 0x2000)),
            ("/reserved-memory/d", r(0x7000_2000, 0x1000))
        ]
    );
    let overlap_b = NodeErrorKind::Overlaps {
        range: r(0x7000_1000, 0x1000).into(),
        other: "/reserved-memory/a".into(),
    };
    let overlap_c = NodeErrorKind::Overlaps {
        range: r(0x7000_0000, 0x100).into(),
        other: "/reserved-memory/a".into(),
    };
    assert!(has_error(&plan, "/reserved-memory/b", &overlap_b));
    assert!(has_error(&plan, "/reserved-memory/c", &overlap_c));
    // b is left out but is no-map: its range stays out of the linear map.
    assert!(
        !plan
            .linear_map()
            .iter()
            .any(|l| l.overlaps(r(0x7000_1000, 0x1000)))
    );
}

#[test]
fn regions_partly_in_memory_zero_size_and_wrapping_entries() {
    let dt = two_gib().reserved(|n| {
        n.node("outside", |n| {
            n.reg64("reg", &[(0x1000, 0x1000), (0x7000_0000, 0x1000)])
                .empty("no-map")
        })
        .node("straddles", |n| n.reg64("reg", &[(0xbfff_f000, 0x2000)]))
        .node("below", |n| n.reg64("reg", &[(0x3fff_f000, 0x2000)]))
        .node("zero", |n| n.reg64("reg", &[(0x7100_0000, 0)]))
        .node("wraps", |n| n.reg64("reg", &[(u64::MAX, 2)]))
    });
    let plan = plan(dt);
    assert_eq!(
        ranges_of(&plan),
        vec![
            ("/reserved-memory/outside", r(0x1000, 0x1000)),
            ("/reserved-memory/outside", r(0x7000_0000, 0x1000))
        ]
    );
    assert_eq!(
        plan.reserved()
            .iter()
            .map(|region| region.in_memory)
            .collect::<Vec<_>>(),
        [false, true]
    );
    assert_eq!(
        reasons(&plan),
        vec![
            (
                "/reserved-memory/below".to_string(),
                "0x3ffff000+0x2000 is partly inside memory and partly outside it".to_string()
            ),
            (
                "/reserved-memory/straddles".to_string(),
                "0xbffff000+0x2000 is partly inside memory and partly outside it".to_string()
            ),
            (
                "/reserved-memory/wraps".to_string(),
                "`reg` entry 0xffffffffffffffff+0x2 runs past the end of the 64-bit address space"
                    .to_string()
            ),
            (
                "/reserved-memory/zero".to_string(),
                "`reg` entry 0 has size 0".to_string()
            ),
        ]
    );
}

/// Arm FVP's shape: a no-map `shared-dma-pool` in board memory outside
/// DRAM, used by the display controller.
#[test]
fn a_pool_outside_memory_is_kept_with_its_user_and_never_linear() {
    let dt = two_gib()
        .reserved(|n| {
            n.node("vram@18000000", |n| {
                pool(n, 0x1800_0000, 0x80_0000).u32("phandle", 1)
            })
        })
        .node("hdlcd@7ff60000", |n| n.u32("memory-region", 1));
    let plan = plan(dt);
    assert_eq!(plan.errors(), []);
    let pool: Vec<_> = plan.dma_pools().collect();
    assert_eq!(pool.len(), 1);
    let pool = pool[0];
    assert_eq!(pool.range, r(0x1800_0000, 0x80_0000));
    assert!(!pool.in_memory && pool.no_map && !pool.is_linear());
    assert_eq!(pool.users.len(), 1);
    assert_eq!(pool.users[0].path, "/hdlcd@7ff60000");
    assert_eq!(plan.linear_map(), [r(0x4000_0000, 0x8000_0000)]);
    let line = plan.console_lines().nth(1).unwrap().to_string();
    assert_eq!(
        line,
        "mem: reserved /reserved-memory/vram@18000000 base=0x18000000 size=0x800000 static no-map outside-memory compatible=shared-dma-pool users=/hdlcd@7ff60000"
    );
    assert!(plan.to_json().contains(
        r#""no_map":true,"reusable":false,"dynamic":false,"in_memory":false,"users":["/hdlcd@7ff60000"]"#
    ));
    assert!(alloc::format!("{plan}").contains("outside-memory"));
}

#[test]
fn a_region_outside_memory_without_no_map_is_not_linear_either() {
    let dt = two_gib().reserved(|n| n.node("sram@1000", |n| n.reg64("reg", &[(0x1000, 0x1000)])));
    let plan = plan(dt);
    let region = &plan.reserved()[0];
    assert!(!region.in_memory && !region.no_map && !region.is_linear());
    assert_eq!(plan.linear_map(), [r(0x4000_0000, 0x8000_0000)]);
    // Inside memory without no-map, the same region is linear.
    let dt = two_gib().reserved(|n| n.node("ram", |n| n.reg64("reg", &[(0x5000_0000, 0x1000)])));
    assert!(plan_of_one(dt).is_linear());
}

fn plan_of_one(dt: Dt) -> ReservedRegion {
    let plan = plan(dt);
    assert_eq!(plan.reserved().len(), 1);
    plan.reserved()[0].clone()
}

#[test]
fn regions_outside_memory_may_overlap_those_inside_may_not() {
    let dt = two_gib().reserved(|n| {
        n.node("a", |n| n.reg64("reg", &[(0x1000_0000, 0x2000)]))
            .node("b", |n| {
                n.reg64("reg", &[(0x1000_1000, 0x1000)]).empty("no-map")
            })
            .node("c", |n| n.reg64("reg", &[(0x5000_0000, 0x2000)]))
            .node("d", |n| {
                n.reg64("reg", &[(0x5000_1000, 0x1000)]).empty("no-map")
            })
    });
    let plan = plan(dt);
    assert_eq!(
        ranges_of(&plan),
        vec![
            ("/reserved-memory/a", r(0x1000_0000, 0x2000)),
            ("/reserved-memory/b", r(0x1000_1000, 0x1000)),
            ("/reserved-memory/c", r(0x5000_0000, 0x2000)),
        ]
    );
    let overlap = NodeErrorKind::Overlaps {
        range: r(0x5000_1000, 0x1000).into(),
        other: "/reserved-memory/c".into(),
    };
    assert!(has_error(&plan, "/reserved-memory/d", &overlap));
    assert_eq!(plan.errors().len(), 1);
}

#[test]
fn a_region_across_a_gap_between_banks_is_partly_in_memory() {
    let dt = Dt::new()
        .memory(&[(0x4000_0000, 0x1000_0000), (0x6000_0000, 0x1000_0000)])
        .reserved(|n| n.node("gap", |n| n.reg64("reg", &[(0x4fff_f000, 0x1000_2000)])));
    let plan = plan(dt);
    assert_eq!(plan.reserved(), []);
    assert_eq!(
        plan.errors()[0].kind,
        NodeErrorKind::PartlyInMemory(r(0x4fff_f000, 0x1000_2000).into())
    );
}

/// Boards whose boot loader fills `/memory` have no banks in the blob:
/// every static region is kept, outside memory; a dynamic one has no room.
#[test]
fn without_memory_static_regions_are_kept_outside_memory() {
    let dt = Dt::new().reserved(|n| {
        n.node("pool@90000000", |n| pool(n, 0x9000_0000, 0x10_0000))
            .node("dyn", |n| n.cells("size", &[0, 0x1000]))
    });
    let plan = plan(dt);
    assert_eq!(plan.memory(), []);
    assert_eq!(plan.linear_map(), []);
    assert_eq!(
        ranges_of(&plan),
        vec![("/reserved-memory/pool@90000000", r(0x9000_0000, 0x10_0000))]
    );
    assert!(!plan.reserved()[0].in_memory);
    assert_eq!(
        reasons(&plan),
        vec![(
            "/reserved-memory/dyn".to_string(),
            "no free place for 0x1000 bytes aligned to 0x1000".to_string()
        )]
    );
}

#[test]
fn reg_and_size_neither_no_map_with_reusable_and_bad_lengths() {
    let dt = two_gib().reserved(|n| {
        n.node("both", |n| {
            n.reg64("reg", &[(0x7000_0000, 0x1000)])
                .cells("size", &[0, 0x1000])
                .empty("no-map")
        })
        .node("neither", |n| n.empty("no-map"))
        .node("conflict", |n| {
            n.reg64("reg", &[(0x7100_0000, 0x1000)])
                .empty("no-map")
                .empty("reusable")
        })
        .node("short-size", |n| n.cells("size", &[0x1000]))
        .node("zero-size", |n| n.cells("size", &[0, 0]))
        .node("truncated", |n| n.cells("reg", &[0, 0x7200_0000, 0]))
        .node("bad-compatible", |n| {
            n.bytes("compatible", b"shared-dma-pool")
                .reg64("reg", &[(0x7300_0000, 0x1000)])
        })
    });
    let plan = plan(dt);
    assert!(plan.reserved().is_empty(), "{:?}", plan.reserved());
    let expect = [
        ("/reserved-memory/both", NodeErrorKind::RegAndSize),
        ("/reserved-memory/neither", NodeErrorKind::NoRegOrSize),
        ("/reserved-memory/conflict", NodeErrorKind::NoMapAndReusable),
        (
            "/reserved-memory/short-size",
            NodeErrorKind::BadLength {
                property: "size",
                len: 4,
                expected: 8,
            },
        ),
        (
            "/reserved-memory/zero-size",
            NodeErrorKind::ZeroSize {
                property: "size",
                entry: None,
            },
        ),
        (
            "/reserved-memory/truncated",
            NodeErrorKind::Truncated {
                property: "reg",
                len: 12,
                unit: 16,
            },
        ),
        (
            "/reserved-memory/bad-compatible",
            NodeErrorKind::BadString {
                property: "compatible",
            },
        ),
    ];
    for (path, kind) in &expect {
        assert!(
            has_error(&plan, path, kind),
            "missing {path}: {kind}; got {:?}",
            reasons(&plan)
        );
    }
    assert_eq!(plan.errors().len(), expect.len());
    // The readable no-map ranges of left-out nodes stay out of the linear map.
    assert_eq!(
        plan.linear_map(),
        &[
            r(0x4000_0000, 0x3000_0000),
            r(0x7000_1000, 0xfff000),
            r(0x7100_1000, 0x4eff_f000)
        ]
    );
}

// ---- dynamic placement ----

#[test]
fn dynamic_region_takes_the_highest_aligned_free_place() {
    let dt = two_gib().reserved(|n| {
        n.node("top", |n| {
            n.str("compatible", "shared-dma-pool")
                .cells("size", &[0, 0x40_0000])
                .empty("no-map")
        })
    });
    let plan = plan(dt);
    let top = &plan.reserved()[0];
    assert_eq!(top.range, r(0xbfc0_0000, 0x40_0000));
    assert_eq!(
        top.placement,
        Placement::Dynamic {
            alignment: MIN_DYNAMIC_ALIGNMENT
        }
    );
    assert_eq!(plan.linear_map(), &[r(0x4000_0000, 0x7fc0_0000)]);
}

#[test]
fn dynamic_regions_avoid_static_memreserve_busy_and_earlier_dynamic_ones() {
    let dt = two_gib().memreserve(0xbff0_0000, 0x10_0000).reserved(|n| {
        n.node("static", |n| n.reg64("reg", &[(0xbfe0_0000, 0x10_0000)]))
            // Left out for an error, but its range is still avoided.
            .node("bad", |n| {
                n.reg64("reg", &[(0xbfd0_0000, 0x10_0000)])
                    .empty("no-map")
                    .empty("reusable")
            })
            .node("first", |n| n.cells("size", &[0, 0x10_0000]))
            .node("second", |n| {
                n.cells("size", &[0, 0x10_0000]).empty("no-map")
            })
    });
    let plan = plan_with(dt, &[r(0xbfa0_0000, 0x20_0000)]);
    assert_eq!(
        plan.regions_of("/reserved-memory/first")
            .next()
            .unwrap()
            .range,
        r(0xbfc0_0000, 0x10_0000)
    );
    assert_eq!(
        plan.regions_of("/reserved-memory/second")
            .next()
            .unwrap()
            .range,
        r(0xbf90_0000, 0x10_0000)
    );
    assert_eq!(
        plan.linear_map(),
        &[
            r(0x4000_0000, 0x7f90_0000),
            r(0xbfa0_0000, 0x30_0000),
            r(0xbfe0_0000, 0x20_0000)
        ]
    );
}

#[test]
fn dynamic_alignment_and_alloc_ranges_in_listed_order() {
    let dt = two_gib().reserved(|n| {
        n.node("aligned", |n| {
            n.cells("size", &[0, 0x1800])
                .cells("alignment", &[0, 0x10_0000])
                .reg64("alloc-ranges", &[(0x5000_0000, 0x20_0000)])
        })
        .node("small-align", |n| {
            n.cells("size", &[0, 0x10])
                .cells("alignment", &[0, 0x40])
                .reg64("alloc-ranges", &[(0x6000_0000, 0x1_0000)])
        })
        // The first alloc-ranges entry lies outside memory, the second is too
        // small: the third is used even though it is lower.
        .node("ordered", |n| {
            n.cells("size", &[0, 0x2000]).reg64(
                "alloc-ranges",
                &[
                    (0x1000, 0x10_0000),
                    (0x9000_0000, 0x1000),
                    (0x4800_0000, 0x1_0000),
                ],
            )
        })
        // Straddles the end of memory: only the part inside memory counts.
        .node("edge", |n| {
            n.cells("size", &[0, 0x1000])
                .reg64("alloc-ranges", &[(0xbfff_f000, 0x10_0000)])
        })
    });
    let plan = plan(dt);
    assert!(plan.errors().is_empty(), "{:?}", reasons(&plan));
    let placed = |path: &str| plan.regions_of(path).next().unwrap().clone();
    let aligned = placed("/reserved-memory/aligned");
    assert_eq!(aligned.range, r(0x5010_0000, 0x1800));
    assert_eq!(
        aligned.placement,
        Placement::Dynamic {
            alignment: 0x10_0000
        }
    );
    let small = placed("/reserved-memory/small-align");
    assert_eq!(small.range, r(0x6000_f000, 0x10));
    assert_eq!(small.placement, Placement::Dynamic { alignment: 0x1000 });
    assert_eq!(
        placed("/reserved-memory/ordered").range,
        r(0x4800_e000, 0x2000)
    );
    assert_eq!(
        placed("/reserved-memory/edge").range,
        r(0xbfff_f000, 0x1000)
    );
}

#[test]
fn dynamic_errors_bad_alignment_and_no_room() {
    let dt = two_gib().reserved(|n| {
        n.node("odd", |n| {
            n.cells("size", &[0, 0x1000])
                .cells("alignment", &[0, 0x3000])
        })
        .node("huge", |n| n.cells("size", &[1, 0]))
        .node("nowhere", |n| {
            n.cells("size", &[0, 0x1000])
                .reg64("alloc-ranges", &[(0x1000, 0x1000)])
        })
        .node("bad-ranges", |n| {
            n.cells("size", &[0, 0x1000])
                .cells("alloc-ranges", &[0, 0x4000_0000])
        })
    });
    let plan = plan(dt);
    assert!(plan.reserved().is_empty());
    assert!(has_error(
        &plan,
        "/reserved-memory/odd",
        &NodeErrorKind::BadAlignment(0x3000)
    ));
    assert!(has_error(
        &plan,
        "/reserved-memory/huge",
        &NodeErrorKind::NoRoom {
            size: 0x1_0000_0000,
            alignment: 0x1000
        }
    ));
    assert!(has_error(
        &plan,
        "/reserved-memory/nowhere",
        &NodeErrorKind::NoRoom {
            size: 0x1000,
            alignment: 0x1000
        }
    ));
    let truncated = NodeErrorKind::Truncated {
        property: "alloc-ranges",
        len: 8,
        unit: 16,
    };
    assert!(has_error(&plan, "/reserved-memory/bad-ranges", &truncated));
}

#[test]
fn placement_is_deterministic() {
    let build = || {
        two_gib().reserved(|n| {
            (0..8).fold(n, |n, i| {
                n.node(&alloc::format!("pool{i}"), |n| {
                    n.cells("size", &[0, 0x1000 * (i + 1)]).empty("no-map")
                })
            })
        })
    };
    assert_eq!(plan(build()), plan(build()));
    let plan = plan(build());
    let mut expected_top = 0xc000_0000u64;
    for i in 0..8u64 {
        let region = plan
            .regions_of(&alloc::format!("/reserved-memory/pool{i}"))
            .next()
            .unwrap()
            .range;
        expected_top -= 0x1000 * (i + 1);
        assert_eq!(region, r(expected_top, 0x1000 * (i + 1)));
    }
}

// ---- users ----

#[test]
fn users_from_every_phandle_with_names() {
    let dt = two_gib()
        .reserved(|n| {
            n.node("a@70000000", |n| {
                pool(n, 0x7000_0000, 0x1000).u32("phandle", 1)
            })
            .node("b", |n| {
                n.reg64("reg", &[(0x7100_0000, 0x1000), (0x7200_0000, 0x1000)])
                    .u32("phandle", 2)
            })
            .node("c", |n| n.cells("size", &[0, 0x1000]).u32("phandle", 3))
        })
        .node("soc", |n| {
            n.node("vpu@1000", |n| {
                n.cells("memory-region", &[1, 2, 3])
                    .strs("memory-region-names", &["fw", "rpc", "dyn"])
            })
            .node("gpu@2000", |n| n.cells("memory-region", &[2, 2]))
            .node("off@3000", |n| {
                n.cells("memory-region", &[1]).str("status", "disabled")
            })
        })
        .node("virtio_mmio@a003e00", |n| n.u32("memory-region", 1));
    let plan = plan(dt);
    assert!(plan.errors().is_empty(), "{:?}", reasons(&plan));
    let users = |path: &str| -> Vec<Vec<(String, Option<String>)>> {
        plan.regions_of(path)
            .map(|r| {
                r.users
                    .iter()
                    .map(|u| (u.path.clone(), u.name.clone()))
                    .collect()
            })
            .collect()
    };
    let named = |p: &str, n: &str| (p.to_string(), Some(n.to_string()));
    let plain = |p: &str| (p.to_string(), None);
    assert_eq!(
        users("/reserved-memory/a@70000000"),
        vec![vec![
            named("/soc/vpu@1000", "fw"),
            plain("/virtio_mmio@a003e00")
        ]]
    );
    let b_users = vec![named("/soc/vpu@1000", "rpc"), plain("/soc/gpu@2000")];
    assert_eq!(users("/reserved-memory/b"), vec![b_users.clone(), b_users]);
    assert_eq!(
        users("/reserved-memory/c"),
        vec![vec![named("/soc/vpu@1000", "dyn")]]
    );
}

#[test]
fn memory_region_errors() {
    let dt = two_gib()
        .reserved(|n| {
            n.node("a", |n| pool(n, 0x7000_0000, 0x1000).u32("phandle", 1))
                .node("off", |n| {
                    pool(n, 0x7100_0000, 0x1000)
                        .u32("phandle", 2)
                        .str("status", "disabled")
                })
                .node("dup1", |n| pool(n, 0x7200_0000, 0x1000).u32("phandle", 3))
        })
        .node("dup2", |n| n.u32("phandle", 3))
        .node("clock", |n| n.u32("phandle", 4))
        .node("dangling", |n| n.cells("memory-region", &[1, 9]))
        .node("ambiguous", |n| n.u32("memory-region", 3))
        .node("wrong", |n| n.u32("memory-region", 4))
        .node("disabled", |n| n.u32("memory-region", 2))
        .node("names", |n| {
            n.u32("memory-region", 1)
                .strs("memory-region-names", &["a", "b"])
        })
        .node("truncated", |n| n.bytes("memory-region", &[0, 0, 1]));
    let plan = plan(dt);
    let expect = [
        (
            "/dangling",
            NodeErrorKind::DanglingPhandle {
                property: "memory-region",
                entry: 1,
                phandle: 9,
            },
        ),
        (
            "/ambiguous",
            NodeErrorKind::DuplicatePhandle {
                phandle: 3,
                first: "/reserved-memory/dup1".into(),
                second: "/dup2".into(),
            },
        ),
        (
            "/wrong",
            NodeErrorKind::NotReservedMemory {
                entry: 0,
                target: "/clock".into(),
            },
        ),
        (
            "/disabled",
            NodeErrorKind::DisabledTarget {
                entry: 0,
                target: "/reserved-memory/off".into(),
            },
        ),
        (
            "/names",
            NodeErrorKind::NamesMismatch {
                names: 2,
                phandles: 1,
            },
        ),
        (
            "/truncated",
            NodeErrorKind::Truncated {
                property: "memory-region",
                len: 3,
                unit: 4,
            },
        ),
    ];
    for (path, kind) in &expect {
        assert!(
            has_error(&plan, path, kind),
            "missing {path}: {kind}; got {:?}",
            reasons(&plan)
        );
    }
    assert_eq!(plan.errors().len(), expect.len());
    let a_users: Vec<_> = plan.reserved()[0]
        .users
        .iter()
        .map(|u| u.path.as_str())
        .collect();
    assert_eq!(a_users, ["/dangling", "/names"]);
    assert!(plan.reserved()[1].users.is_empty());
}

// ---- linear map ----

#[test]
fn linear_map_is_exact_to_the_byte() {
    let dt = Dt::new().memory(&[(0x4000_0000, 0x10_0000)]).reserved(|n| {
        n.node("odd", |n| {
            n.reg64("reg", &[(0x4000_0123, 0x456)]).empty("no-map")
        })
        .node("cma", |n| {
            n.str("compatible", "shared-dma-pool")
                .reg64("reg", &[(0x4008_0000, 0x1000)])
                .empty("reusable")
        })
    });
    let plan = plan(dt);
    assert_eq!(
        plan.linear_map(),
        &[r(0x4000_0000, 0x123), r(0x4000_0579, 0xf_fa87)]
    );
}

#[test]
fn xen_4_17_dom0_shape_keeps_the_pool_out_of_the_linear_map() {
    // What Xen 4.17 gives dom0 (platform.md): its RAM, plus a memory node
    // covering exactly the host's no-map shared-dma-pool.
    let dt = Dt::new()
        .root(|n| {
            n.u32("#address-cells", 2)
                .u32("#size-cells", 2)
                .u32("interrupt-parent", 0x8001)
                .strs("compatible", &["linux,dummy-virt"])
        })
        .node("chosen", |n| {
            n.str("bootargs", "log=debug")
                .str("stdout-path", "/pl011@9000000")
        })
        .node("hypervisor", |n| {
            n.strs("compatible", &["xen,xen-4.17", "xen,xen"])
                .reg64(
                    "reg",
                    &[
                        (0x4020_0000, 0x4_0000),
                        (0x8000_0000, 0x1000_0000),
                        (0x1_0000_0000, 0x4000_0000),
                    ],
                )
                .cells("interrupts", &[1, 0, 0xf08])
        })
        .node("memory@60000000", |n| {
            n.str("device_type", "memory")
                .reg64("reg", &[(0x6000_0000, 0x1000_0000)])
        })
        .node("memory@78000000", |n| {
            n.str("device_type", "memory")
                .reg64("reg", &[(0x7800_0000, 0x40_0000)])
        })
        .reserved(|n| {
            n.node("dma-pool@78000000", |n| {
                pool(n, 0x7800_0000, 0x40_0000).u32("phandle", 0x10)
            })
        })
        .node("interrupt-controller@8000000", |n| {
            n.str("compatible", "arm,gic-v3")
                .u32("#interrupt-cells", 3)
                .empty("interrupt-controller")
                .reg64("reg", &[(0x800_0000, 0x1_0000), (0x80a_0000, 0xf6_0000)])
                .u32("phandle", 0x8001)
        })
        .node("virtio_mmio@a003e00", |n| {
            n.str("compatible", "virtio,mmio")
                .reg64("reg", &[(0xa00_3e00, 0x200)])
                .cells("interrupts", &[0, 0x2f, 1])
                .u32("memory-region", 0x10)
        })
        .node("pl011@9000000", |n| {
            n.strs("compatible", &["arm,pl011", "arm,primecell"])
                .reg64("reg", &[(0x900_0000, 0x1000)])
        });
    let dt = DeviceTree::from_dtb_with(
        &dt.build(),
        &[r(0x6008_0000, 0x2_2000), r(0x6800_0000, 0x2000)],
    )
    .unwrap();
    let plan = &dt.plan;
    assert!(plan.errors().is_empty(), "{:?}", reasons(plan));
    assert_eq!(
        plan.memory(),
        &[r(0x6000_0000, 0x1000_0000), r(0x7800_0000, 0x40_0000)]
    );
    assert_eq!(plan.linear_map(), &[r(0x6000_0000, 0x1000_0000)]);
    let pools: Vec<_> = plan.dma_pools().collect();
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].range, r(0x7800_0000, 0x40_0000));
    assert!(pools[0].no_map);
    assert!(!plan.linear_map().iter().any(|l| l.overlaps(pools[0].range)));
    assert_eq!(pools[0].users[0].path, "/virtio_mmio@a003e00");

    let hypervisor = dt.platform.hypervisor.as_ref().unwrap();
    assert_eq!(hypervisor.grant_table, r(0x4020_0000, 0x4_0000));
    assert_eq!(
        hypervisor.extended_regions,
        vec![r(0x8000_0000, 0x1000_0000), r(0x1_0000_0000, 0x4000_0000)]
    );
    assert_eq!(
        hypervisor.event_channel,
        GicInterrupt {
            kind: InterruptKind::Ppi,
            number: 0,
            flags: 0xf08
        }
    );
    assert_eq!(hypervisor.event_channel.intid(), 16);
    assert_eq!(
        dt.platform.virtio_mmio[0].memory_regions,
        vec!["/reserved-memory/dma-pool@78000000"]
    );
    assert_eq!(
        dt.platform.chosen.stdout.as_ref().unwrap().reg,
        Some(r(0x900_0000, 0x1000))
    );
}

// ---- hard errors and robustness ----

#[test]
fn unreadable_blobs_are_typed_errors() {
    assert_eq!(
        Plan::from_dtb(&[]).unwrap_err(),
        DtbError::Truncated { len: 0, needed: 40 }
    );
    assert_eq!(
        Plan::from_dtb(&[0u8; 64]).unwrap_err(),
        DtbError::BadMagic(0)
    );
    let blob = two_gib().build();
    let error = Platform::from_dtb(&blob[..blob.len() - 4]).unwrap_err();
    assert_eq!(
        error,
        DtbError::Truncated {
            len: blob.len() - 4,
            needed: blob.len()
        }
    );
    assert_eq!(
        error.to_string(),
        alloc::format!(
            "truncated blob: {} bytes, needs {}",
            blob.len() - 4,
            blob.len()
        )
    );
}

fn rich_tree() -> Dt {
    two_gib()
        .memreserve(0x4800_0000, 0x1000)
        .reserved(|n| {
            n.node("dma@78000000", |n| {
                pool(n, 0x7800_0000, 0x40_0000).u32("phandle", 1)
            })
            .node("dyn", |n| {
                n.cells("size", &[0, 0x1000])
                    .cells("alignment", &[0, 0x2000])
                    .reg64("alloc-ranges", &[(0x5000_0000, 0x10_0000)])
            })
            .node("bad", |n| n.empty("no-map"))
        })
        .node("virtio_mmio@a003e00", |n| {
            n.u32("memory-region", 1).cells("interrupts", &[0, 1, 1])
        })
}

#[test]
fn no_truncation_or_byte_corruption_panics() {
    let blob = rich_tree().build();
    for len in 0..blob.len() {
        let _ = DeviceTree::from_dtb_with(&blob[..len], &[]);
    }
    let mut corrupt = blob.clone();
    for at in 0..blob.len() {
        for value in [0x00, 0x01, 0x02, 0x03, 0x04, 0x09, 0x7f, 0xff] {
            corrupt[at] = value;
            if let Ok(dt) = DeviceTree::from_dtb_with(&corrupt, &[]) {
                let _ = dt.plan.to_json();
                let _ = alloc::format!("{}", dt.plan);
                dt.plan
                    .console_lines()
                    .for_each(|line| drop(alloc::format!("{line}")));
            }
        }
        corrupt[at] = blob[at];
    }
}

// ---- output formats ----

#[test]
fn console_lines_format() {
    let plan = plan(rich_tree());
    let lines: Vec<String> = plan.console_lines().map(|l| l.to_string()).collect();
    assert_eq!(
        lines,
        [
            "mem: bank 0x40000000 size=0x80000000",
            "mem: memreserve 0x48000000 size=0x1000",
            "mem: reserved /reserved-memory/dyn base=0x500fe000 size=0x1000 dynamic compatible=- users=-",
            "mem: reserved /reserved-memory/dma@78000000 base=0x78000000 size=0x400000 static no-map compatible=shared-dma-pool users=/virtio_mmio@a003e00",
            "mem: linear 0x40000000 size=0x38000000",
            "mem: linear 0x78400000 size=0x47c00000",
            "mem: error /reserved-memory/bad: has neither `reg` nor `size`",
            "mem: summary banks=1 memreserve=1 reserved=2 linear=2 errors=1",
        ]
    );
}

#[test]
fn console_fields_never_split() {
    let dt = two_gib().reserved(|n| {
        n.node("a", |n| {
            n.strs("compatible", &["x y", "z\nw"])
                .reg64("reg", &[(0x7000_0000, 0x1000)])
        })
    });
    let plan = plan(dt);
    let line = plan.console_lines().nth(1).unwrap().to_string();
    assert_eq!(
        line,
        "mem: reserved /reserved-memory/a base=0x70000000 size=0x1000 static compatible=x\\x20y,z\\x0aw users=-"
    );
    // A node name with a line break (vm-fdt refuses one: patch it in) shows
    // up in an error reason.
    let mut blob = two_gib()
        .node("dqx", |n| n.u32("phandle", 1))
        .node("user", |n| n.u32("memory-region", 1))
        .build();
    let at = blob.windows(4).position(|w| w == b"dqx\0").unwrap();
    blob[at + 1] = b'\n';
    let plan = Plan::from_dtb(&blob).unwrap();
    let error = plan
        .console_lines()
        .find(|l| matches!(l, ConsoleLine::Error(_)))
        .unwrap()
        .to_string();
    assert_eq!(
        error,
        "mem: error /user: `memory-region` entry 0 names /d\\x0ax, not a /reserved-memory child"
    );
}

#[test]
fn json_format() {
    let plan = plan(rich_tree());
    assert_eq!(
        plan.to_json(),
        concat!(
            r#"{"memory":[{"base":"0x40000000","size":"0x80000000"}],"#,
            r#""memreserve":[{"base":"0x48000000","size":"0x1000"}],"#,
            r#""reserved":[{"path":"/reserved-memory/dyn","base":"0x500fe000","size":"0x1000","compatible":[],"#,
            r#""no_map":false,"reusable":false,"dynamic":true,"in_memory":true,"users":[]},"#,
            r#"{"path":"/reserved-memory/dma@78000000","base":"0x78000000","size":"0x400000","#,
            r#""compatible":["shared-dma-pool"],"no_map":true,"reusable":false,"dynamic":false,"#,
            r#""in_memory":true,"users":["/virtio_mmio@a003e00"]}],"#,
            r#""linear_map":[{"base":"0x40000000","size":"0x38000000"},{"base":"0x78400000","size":"0x47c00000"}],"#,
            r#""errors":[{"path":"/reserved-memory/bad","reason":"has neither `reg` nor `size`"}]}"#
        )
    );
}

#[test]
fn json_escapes_strings() {
    let dt = two_gib().reserved(|n| {
        n.node("a", |n| {
            n.strs("compatible", &["q\"b\\s\u{1}"])
                .reg64("reg", &[(0x7000_0000, 0x1000)])
        })
    });
    assert!(
        plan(dt)
            .to_json()
            .contains(r#""compatible":["q\"b\\s\u0001"]"#)
    );
}

#[test]
fn table_lists_every_section() {
    let table = plan(rich_tree()).to_string();
    for expected in [
        "memory banks, merged (1)",
        "  0x40000000          0xc0000000          0x80000000    2 GiB",
        "/memreserve/ entries (1)",
        "reserved regions (2)",
        "static,no-map",
        "      path        /reserved-memory/dma@78000000",
        "      compatible  shared-dma-pool",
        "      user        /virtio_mmio@a003e00",
        "linear map (2)",
        "  0x40000000          0x78000000          0x38000000    896 MiB",
        "errors (1)",
        "  /reserved-memory/bad: has neither `reg` nor `size`",
    ] {
        assert!(table.contains(expected), "missing {expected:?} in\n{table}");
    }
}

// ---- platform ----

fn gic_v3(n: N) -> N {
    n.str("compatible", "arm,gic-v3")
        .u32("#interrupt-cells", 3)
        .empty("interrupt-controller")
        .reg64("reg", &[(0x800_0000, 0x1_0000), (0x80a_0000, 0xf6_0000)])
        .u32("phandle", 0x8002)
}

fn qemu_virt() -> Dt {
    two_gib()
        .root(|n| {
            n.u32("#address-cells", 2)
                .u32("#size-cells", 2)
                .u32("interrupt-parent", 0x8002)
        })
        .node("aliases", |n| n.str("serial0", "/pl011@9000000"))
        .node("chosen", |n| {
            n.str("stdout-path", "serial0:115200n8")
                .str("bootargs", "console=hvc0")
        })
        .node("psci", |n| {
            n.strs("compatible", &["arm,psci-1.0", "arm,psci-0.2", "arm,psci"])
                .str("method", "hvc")
        })
        .node("intc@8000000", gic_v3)
        .node("timer", |n| {
            n.strs("compatible", &["arm,armv8-timer", "arm,armv7-timer"])
                .cells(
                    "interrupts",
                    &[1, 13, 0x104, 1, 14, 0x104, 1, 11, 0x104, 1, 10, 0x104],
                )
                .empty("always-on")
        })
        .node("pl011@9000000", |n| {
            n.strs("compatible", &["arm,pl011", "arm,primecell"])
                .reg64("reg", &[(0x900_0000, 0x1000)])
                .cells("interrupts", &[0, 1, 4])
                .u32("clock-frequency", 24_000_000)
        })
        .node("virtio_mmio@a000000", |n| {
            n.str("compatible", "virtio,mmio")
                .reg64("reg", &[(0xa00_0000, 0x200)])
                .cells("interrupts", &[0, 0x10, 1])
                .empty("dma-coherent")
        })
        .node("virtio_mmio@a000200", |n| {
            n.str("compatible", "virtio,mmio")
                .reg64("reg", &[(0xa00_0200, 0x200)])
                .cells("interrupts", &[0, 0x11, 4])
        })
}

#[test]
fn platform_of_qemu_virt() {
    let platform = Platform::from_dtb(&qemu_virt().build()).unwrap();
    assert!(platform.errors.is_empty(), "{:?}", platform.errors);
    assert_eq!(platform.chosen.bootargs.as_deref(), Some("console=hvc0"));
    let stdout = platform.chosen.stdout.as_ref().unwrap();
    assert_eq!(stdout.path, "/pl011@9000000");
    assert_eq!(stdout.options.as_deref(), Some("115200n8"));
    assert_eq!(stdout.compatible, vec!["arm,pl011", "arm,primecell"]);
    assert_eq!(stdout.reg, Some(r(0x900_0000, 0x1000)));
    assert!(platform.hypervisor.is_none());
    let gic = platform.gic.as_ref().unwrap();
    assert_eq!(
        (gic.version, gic.distributor),
        (GicVersion::V3, r(0x800_0000, 0x1_0000))
    );
    assert_eq!(gic.redistributors, vec![r(0x80a_0000, 0xf6_0000)]);
    assert_eq!(gic.cpu_interface, None);
    let timer = platform.timer.as_ref().unwrap();
    assert_eq!(timer.path, "/timer");
    assert_eq!(
        timer.virtual_timer,
        GicInterrupt {
            kind: InterruptKind::Ppi,
            number: 11,
            flags: 0x104
        }
    );
    assert_eq!(timer.virtual_timer.intid(), 27);
    assert_eq!(
        platform.psci.as_ref().map(|p| p.method),
        Some(PsciMethod::Hvc)
    );
    assert_eq!(
        platform.uarts,
        vec![Uart {
            path: "/pl011@9000000".into(),
            kind: UartKind::Pl011,
            reg: r(0x900_0000, 0x1000),
            interrupt: Some(GicInterrupt {
                kind: InterruptKind::Spi,
                number: 1,
                flags: 4
            })
        }]
    );
    let virtio = &platform.virtio_mmio;
    assert_eq!(virtio.len(), 2);
    assert_eq!(virtio[0].reg, r(0xa00_0000, 0x200));
    assert_eq!(
        virtio[0].interrupt,
        GicInterrupt {
            kind: InterruptKind::Spi,
            number: 0x10,
            flags: 1
        }
    );
    assert_eq!(virtio[0].interrupt.intid(), 48);
    assert!(virtio[0].dma_coherent && !virtio[1].dma_coherent);
    assert!(virtio[1].memory_regions.is_empty());
}

#[test]
fn imx_uart_on_a_soc_bus_is_the_console() {
    // The i.MX 8M Plus EVK's layout: the UART under /soc@0/bus@30800000,
    // stdout-path by full path, 32-bit cells below the root.
    let dt = two_gib()
        .root(|n| {
            n.u32("#address-cells", 2)
                .u32("#size-cells", 2)
                .u32("interrupt-parent", 0x8002)
        })
        .node("intc@8000000", gic_v3)
        .node("chosen", |n| {
            n.str("stdout-path", "/soc@0/bus@30800000/serial@30890000")
        })
        .node("soc@0", |n| {
            n.u32("#address-cells", 1)
                .u32("#size-cells", 1)
                .cells("ranges", &[0, 0, 0, 0x3e00_0000])
                .node("bus@30800000", |n| {
                    n.u32("#address-cells", 1)
                        .u32("#size-cells", 1)
                        .cells("ranges", &[0x3080_0000, 0x3080_0000, 0x40_0000])
                        .node("serial@30890000", |n| {
                            n.strs("compatible", &["fsl,imx8mp-uart", "fsl,imx6q-uart"])
                                .cells("reg", &[0x3089_0000, 0x1_0000])
                                .cells("interrupts", &[0, 0x1b, 4])
                        })
                        .node("serial@30880000", |n| {
                            n.strs("compatible", &["fsl,imx8mp-uart", "fsl,imx6q-uart"])
                                .cells("reg", &[0x3088_0000, 0x1_0000])
                                .str("status", "disabled")
                        })
                })
        });
    let platform = Platform::from_dtb(&dt.build()).unwrap();
    assert!(platform.errors.is_empty(), "{:?}", platform.errors);
    let stdout = platform.chosen.stdout.as_ref().unwrap();
    assert_eq!(stdout.reg, Some(r(0x3089_0000, 0x1_0000)));
    assert_eq!(
        platform.uarts,
        vec![Uart {
            path: "/soc@0/bus@30800000/serial@30890000".into(),
            kind: UartKind::Imx,
            reg: r(0x3089_0000, 0x1_0000),
            interrupt: Some(GicInterrupt {
                kind: InterruptKind::Spi,
                number: 0x1b,
                flags: 4
            })
        }]
    );
    assert_eq!(
        UartKind::from_compatible(["arm,pl011", "arm,primecell"]),
        Some(UartKind::Pl011)
    );
    assert_eq!(UartKind::from_compatible(["fsl,imx21-uart"]), None);
}

#[test]
fn a_uart_is_named_by_path_alias_or_path_without_unit_addresses() {
    let dt = two_gib()
        .root(|n| {
            n.u32("#address-cells", 2)
                .u32("#size-cells", 2)
                .u32("interrupt-parent", 0x8002)
        })
        .node("intc@8000000", gic_v3)
        .node("hypervisor", |n| {
            n.strs("compatible", &["xen,xen-4.17", "xen,xen"])
        })
        .node("aliases", |n| {
            n.str("serial1", "/soc@0/serial@30890000")
                .str("serial9", "/soc@0/nothing@1")
                .u32("phandle", 7)
                .str("name", "aliases")
        })
        .node("chosen", |n| n.str("stdout-path", "serial1:115200n8"))
        .node("soc@0", |n| {
            n.u32("#address-cells", 1)
                .u32("#size-cells", 1)
                .cells("ranges", &[0, 0, 0, 0x3e00_0000])
                .node("serial@30880000", |n| {
                    n.str("compatible", "fsl,imx6q-uart")
                        .cells("reg", &[0x3088_0000, 0x1_0000])
                })
                .node("serial@30890000", |n| {
                    n.str("compatible", "fsl,imx6q-uart")
                        .cells("reg", &[0x3089_0000, 0x1_0000])
                })
                .node("timer@1000", |n| n.cells("reg", &[0x1000, 0x100]))
        });
    let platform = Platform::from_dtb(&dt.build()).unwrap();
    // Only paths are aliases.
    let names: Vec<&str> = platform
        .aliases
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(names, ["serial1", "serial9"]);
    let path = |spec: &str| platform.uart(spec).map(|u| u.path.as_str());
    assert_eq!(path("serial1"), Some("/soc@0/serial@30890000"));
    assert_eq!(path("serial1:115200n8"), Some("/soc@0/serial@30890000"));
    assert_eq!(
        path("/soc@0/serial@30880000"),
        Some("/soc@0/serial@30880000")
    );
    // Without unit addresses: the first UART that matches; a component
    // with one must match exactly.
    assert_eq!(path("/soc/serial"), Some("/soc@0/serial@30880000"));
    assert_eq!(path("/soc@0/serial"), Some("/soc@0/serial@30880000"));
    assert_eq!(path("/soc@1/serial"), None);
    assert_eq!(path("/soc/timer"), None);
    assert_eq!(path("/soc/serial/port"), None);
    assert_eq!(
        path("/soc@0/serial@30890000:9600"),
        Some("/soc@0/serial@30890000")
    );
    // No such alias, an alias to no UART, a node that is no UART, a prefix.
    assert_eq!(path("serial2"), None);
    assert_eq!(path("serial9"), None);
    assert_eq!(path("/soc@0/timer@1000"), None);
    assert_eq!(path("/soc@0"), None);
    assert_eq!(
        platform.stdout_uart().map(|u| u.reg),
        Some(r(0x3089_0000, 0x1_0000))
    );
    // Xen is recognised even though its node is unusable (no `reg`).
    assert!(platform.xen);
    assert!(platform.hypervisor.is_none());
    assert!(
        platform.errors.iter().any(|e| e.path == "/hypervisor"),
        "{:?}",
        platform.errors
    );
    let bare = Platform::from_dtb(&qemu_virt().build()).unwrap();
    assert!(!bare.xen);
    assert_eq!(
        bare.stdout_uart().map(|u| (u.kind, u.reg)),
        Some((UartKind::Pl011, r(0x900_0000, 0x1000)))
    );
    assert_eq!(
        bare.aliases,
        vec![("serial0".to_string(), "/pl011@9000000".to_string())]
    );
}

#[test]
fn nearest_dma_coherence_property_decides() {
    // QEMU 10's virt: `dma-coherent` on the root; a device opts out with
    // `dma-noncoherent`, and its own `dma-coherent` beats both.
    let dt = qemu_virt()
        .root(|n| n.empty("dma-coherent"))
        .node("virtio_mmio@a000400", |n| {
            n.str("compatible", "virtio,mmio")
                .reg64("reg", &[(0xa00_0400, 0x200)])
                .cells("interrupts", &[0, 0x12, 1])
                .empty("dma-noncoherent")
        })
        .node("virtio_mmio@a000600", |n| {
            n.str("compatible", "virtio,mmio")
                .reg64("reg", &[(0xa00_0600, 0x200)])
                .cells("interrupts", &[0, 0x13, 1])
                .empty("dma-noncoherent")
                .empty("dma-coherent")
        });
    let platform = Platform::from_dtb(&dt.build()).unwrap();
    let coherent: Vec<bool> = platform
        .virtio_mmio
        .iter()
        .map(|v| v.dma_coherent)
        .collect();
    assert_eq!(coherent, [true, true, false, true]);
}

#[test]
fn arch_timer_needs_the_virtual_timer_interrupt() {
    let timer_with = |interrupts: &'static [u32]| {
        two_gib()
            .root(|n| {
                n.u32("#address-cells", 2)
                    .u32("#size-cells", 2)
                    .u32("interrupt-parent", 0x8002)
            })
            .node("intc@8000000", gic_v3)
            .node("timer", move |n| {
                n.str("compatible", "arm,armv7-timer")
                    .cells("interrupts", interrupts)
            })
            .build()
    };
    let platform = Platform::from_dtb(&timer_with(&[1, 13, 0xf08, 1, 14, 0xf08])).unwrap();
    assert!(platform.timer.is_none());
    let errors: Vec<String> = platform.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(errors, ["/timer: `interrupts` has 2 specifiers, needs 3"]);

    let platform =
        Platform::from_dtb(&timer_with(&[1, 13, 0xf08, 1, 14, 0xf08, 1, 16, 0xf08])).unwrap();
    assert!(platform.timer.is_none());
    assert_eq!(
        platform.errors[0].to_string(),
        "/timer: PPI 16 is beyond PPI 15"
    );

    let platform = Platform::from_dtb(&timer_with(&[1, 13, 8, 1, 14, 8, 1, 11, 8])).unwrap();
    assert!(platform.errors.is_empty(), "{:?}", platform.errors);
    assert_eq!(platform.timer.unwrap().virtual_timer.intid(), 27);
}

#[test]
fn platform_gic_v2_smc_sbsa_uart_and_bus_translation() {
    let dt = Dt::new()
        .root(|n| n.u32("#address-cells", 2).u32("#size-cells", 2))
        .node("psci", |n| {
            n.str("compatible", "arm,psci-0.2").str("method", "smc")
        })
        .node("soc", |n| {
            n.u32("#address-cells", 1)
                .u32("#size-cells", 1)
                .cells("ranges", &[0x0, 0x0, 0x2000_0000, 0x1000_0000])
                .empty("dma-coherent")
                .u32("interrupt-parent", 7)
                .node("gic@1000", |n| {
                    n.str("compatible", "arm,gic-400")
                        .u32("#interrupt-cells", 3)
                        .cells("reg", &[0x1000, 0x1000, 0x2000, 0x2000])
                        .u32("phandle", 7)
                })
                .node("uart@9000", |n| {
                    n.str("compatible", "arm,sbsa-uart")
                        .cells("reg", &[0x9000, 0x1000])
                })
                .node("virtio@a000", |n| {
                    n.str("compatible", "virtio,mmio")
                        .cells("reg", &[0xa000, 0x200])
                        .cells("interrupts", &[1, 15, 4])
                })
        });
    let platform = Platform::from_dtb(&dt.build()).unwrap();
    assert!(platform.errors.is_empty(), "{:?}", platform.errors);
    let gic = platform.gic.unwrap();
    assert_eq!(gic.version, GicVersion::V2);
    assert_eq!(
        (gic.distributor, gic.cpu_interface),
        (r(0x2000_1000, 0x1000), Some(r(0x2000_2000, 0x2000)))
    );
    assert_eq!(platform.psci.unwrap().method, PsciMethod::Smc);
    assert_eq!(platform.uarts[0].kind, UartKind::SbsaUart);
    assert_eq!(platform.uarts[0].reg, r(0x2000_9000, 0x1000));
    let virtio = &platform.virtio_mmio[0];
    assert_eq!(virtio.reg, r(0x2000_a000, 0x200));
    assert_eq!(virtio.interrupt.intid(), 31);
    assert!(
        virtio.dma_coherent,
        "dma-coherent is inherited from the bus"
    );
}

#[test]
fn platform_errors_leave_the_item_out() {
    let dt = two_gib()
        .root(|n| {
            n.u32("#address-cells", 2)
                .u32("#size-cells", 2)
                .u32("interrupt-parent", 0x8002)
        })
        .node("chosen", |n| n.str("stdout-path", "serial9"))
        .node("psci", |n| {
            n.str("compatible", "arm,psci").str("method", "svc")
        })
        .node("intc@8000000", gic_v3)
        .node("irqsteer", |n| {
            n.u32("#interrupt-cells", 1).u32("phandle", 5)
        })
        .node("virtio_mmio@1", |n| {
            n.str("compatible", "virtio,mmio")
                .reg64("reg", &[(0xa00_0000, 0x200)])
                .cells("interrupts", &[1, 16, 4])
        })
        .node("virtio_mmio@2", |n| {
            n.str("compatible", "virtio,mmio")
                .reg64("reg", &[(0xa00_0200, 0x200)])
                .cells("interrupts", &[2, 1, 4])
        })
        .node("virtio_mmio@3", |n| {
            n.str("compatible", "virtio,mmio")
                .reg64("reg", &[(0xa00_0400, 0x200)])
                .cells("interrupts", &[1])
                .u32("interrupt-parent", 5)
        })
        .node("virtio_mmio@4", |n| {
            n.str("compatible", "virtio,mmio")
                .reg64("reg", &[(0xa00_0600, 0x200)])
                .cells("interrupts", &[0, 1, 4])
                .u32("memory-region", 99)
        })
        .node("virtio_mmio@5", |n| {
            n.str("compatible", "virtio,mmio")
                .cells("interrupts", &[0, 1, 4])
        })
        .node("nexus", |n| {
            n.u32("#interrupt-cells", 1)
                .u32("#address-cells", 2)
                .u32("#size-cells", 2)
                .empty("ranges")
                .node("virtio_mmio@6", |n| {
                    n.str("compatible", "virtio,mmio")
                        .reg64("reg", &[(0xa00_0a00, 0x200)])
                        .cells("interrupts", &[42])
                })
        })
        .node("loop-a", |n| {
            n.u32("phandle", 0x20).u32("interrupt-parent", 0x21)
        })
        .node("loop-b", |n| {
            n.u32("phandle", 0x21).u32("interrupt-parent", 0x20)
        })
        .node("virtio_mmio@7", |n| {
            n.str("compatible", "virtio,mmio")
                .reg64("reg", &[(0xa00_0c00, 0x200)])
                .cells("interrupts", &[0, 1, 4])
                .u32("interrupt-parent", 0x20)
        })
        .node("pl011@9000000", |n| {
            n.str("compatible", "arm,pl011").cells("reg", &[0x900_0000])
        });
    let platform = Platform::from_dtb(&dt.build()).unwrap();
    assert!(platform.chosen.stdout.is_none() && platform.psci.is_none());
    assert!(platform.virtio_mmio.is_empty() && platform.uarts.is_empty());
    let found: Vec<(String, NodeErrorKind)> = platform
        .errors
        .iter()
        .map(|e| (e.path.clone(), e.kind.clone()))
        .collect();
    let expected = [
        ("/chosen", NodeErrorKind::UnknownAlias("serial9".into())),
        ("/psci", NodeErrorKind::BadPsciMethod("svc".into())),
        (
            "/virtio_mmio@1",
            NodeErrorKind::InterruptOutOfRange {
                kind: 1,
                number: 16,
            },
        ),
        ("/virtio_mmio@2", NodeErrorKind::UnsupportedInterruptType(2)),
        (
            "/virtio_mmio@3",
            NodeErrorKind::InterruptParentNotGic {
                parent: "/irqsteer".into(),
            },
        ),
        (
            "/virtio_mmio@4",
            NodeErrorKind::DanglingPhandle {
                property: "memory-region",
                entry: 0,
                phandle: 99,
            },
        ),
        ("/virtio_mmio@5", NodeErrorKind::Missing { property: "reg" }),
        (
            "/nexus/virtio_mmio@6",
            NodeErrorKind::InterruptParentNotGic {
                parent: "/nexus".into(),
            },
        ),
        ("/virtio_mmio@7", NodeErrorKind::NoInterruptParent),
        (
            "/pl011@9000000",
            NodeErrorKind::Truncated {
                property: "reg",
                len: 4,
                unit: 16,
            },
        ),
    ];
    let expected: Vec<(String, NodeErrorKind)> = expected
        .into_iter()
        .map(|(p, k)| (p.to_string(), k))
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn platform_gic_v3_with_several_redistributor_regions_and_gicc() {
    let dt = Dt::new().node("gic", |n| {
        n.str("compatible", "arm,gic-v3")
            .u32("#redistributor-regions", 2)
            .reg64(
                "reg",
                &[
                    (0x1000, 0x1000),
                    (0x10_0000, 0x2_0000),
                    (0x20_0000, 0x2_0000),
                    (0x3000, 0x2000),
                ],
            )
    });
    let gic = Platform::from_dtb(&dt.build()).unwrap().gic.unwrap();
    assert_eq!(
        gic.redistributors,
        vec![r(0x10_0000, 0x2_0000), r(0x20_0000, 0x2_0000)]
    );
    assert_eq!(gic.cpu_interface, Some(r(0x3000, 0x2000)));

    let too_few = Dt::new().node("gic", |n| {
        n.str("compatible", "arm,gic-v3")
            .u32("#redistributor-regions", 2)
            .reg64("reg", &[(0x1000, 0x1000), (0x10_0000, 0x2_0000)])
    });
    let platform = Platform::from_dtb(&too_few.build()).unwrap();
    assert!(platform.gic.is_none());
    assert_eq!(
        platform.errors[0].kind,
        NodeErrorKind::TooFewRegEntries {
            found: 2,
            required: 3
        }
    );
}

#[test]
fn a_uart_with_a_bad_interrupt_is_kept_without_it() {
    let dt = qemu_virt().node("pl011@9040000", |n| {
        n.str("compatible", "arm,sbsa-uart")
            .reg64("reg", &[(0x904_0000, 0x1000)])
            .cells("interrupts", &[0, 1])
    });
    let platform = Platform::from_dtb(&dt.build()).unwrap();
    let uart = &platform.uarts[1];
    assert_eq!((uart.kind, uart.interrupt), (UartKind::SbsaUart, None));
    assert!(
        platform.errors.iter().any(|e| e.path == "/pl011@9040000"),
        "{:?}",
        platform.errors
    );
}

#[test]
fn describe_decodes_known_shapes() {
    let blob = qemu_virt()
        .node("odd", |n| {
            n.bytes("blob", &[1, 2, 3])
                .cells("ranges", &[0, 0x4000_0000])
        })
        .build();
    let node = describe_node(&blob, "/pl011@9000000").unwrap();
    assert_eq!(node.path, "/pl011@9000000");
    let text: Vec<String> = node
        .properties
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    assert_eq!(
        text,
        [
            "compatible=\"arm,pl011\",\"arm,primecell\"",
            "reg=0x9000000+0x1000",
            "interrupts=0x0,0x1,0x4",
            "clock-frequency=24000000",
        ]
    );
    let root = describe_node(&blob, "/").unwrap();
    assert_eq!(root.path, "/");
    assert!(root.children.iter().any(|c| c == "chosen"));
    assert!(
        root.properties
            .contains(&("#size-cells".into(), PropertyValue::Decimal(vec![2])))
    );
    let timer = describe_node(&blob, "/timer").unwrap();
    assert_eq!(
        timer.properties.last().unwrap(),
        &("always-on".into(), PropertyValue::Flag)
    );
    // A unit-less component finds the node with a unit address.
    let odd = describe_node(&blob, "/odd").unwrap();
    assert_eq!(odd.properties[0].1.to_string(), "0x010203");
    assert_eq!(
        odd.properties[1].1,
        PropertyValue::Cells(vec![0, 0x4000_0000])
    );
    assert_eq!(
        describe_node(&blob, "/memory").unwrap().path,
        "/memory@40000000"
    );
}

#[test]
fn describe_tree_is_every_node_in_blob_order() {
    let blob = qemu_virt().node("odd", |n| n.bytes("blob", &[1])).build();
    let all = describe_tree(&blob).unwrap();
    assert_eq!(all[0].path, "/");
    for node in &all {
        assert_eq!(&describe_node(&blob, &node.path).unwrap(), node);
    }
    assert_eq!(all.last().unwrap().path, "/odd");
    let children: usize = all.iter().map(|n| n.children.len()).sum();
    assert_eq!(children + 1, all.len(), "each node once");
    assert!(matches!(
        describe_tree(&blob[..40]),
        Err(DescribeError::Dtb(_))
    ));
}

#[test]
fn describe_refuses_missing_nodes_and_bad_blobs() {
    let blob = qemu_virt().build();
    assert_eq!(
        describe_node(&blob, "/nothing").unwrap_err().to_string(),
        "no node at /nothing"
    );
    assert!(matches!(
        describe_node(&blob[..40], "/"),
        Err(DescribeError::Dtb(_))
    ));
}

#[test]
fn interrupt_owners() {
    let platform = Platform::from_dtb(&qemu_virt().build()).unwrap();
    assert_eq!(platform.interrupt_owner(27), Some("/timer"));
    assert_eq!(platform.interrupt_owner(33), Some("/pl011@9000000"));
    assert_eq!(platform.interrupt_owner(48), Some("/virtio_mmio@a000000"));
    assert_eq!(platform.interrupt_owner(49), Some("/virtio_mmio@a000200"));
    assert_eq!(platform.interrupt_owner(26), None);
}
