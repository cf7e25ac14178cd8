//! Arbitrary bytes as a device tree: reading must never panic, and whatever
//! plan comes out must keep its invariants.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidepool_dt::{AddrRange, DeviceTree};

fuzz_target!(|data: &[u8]| {
    // A kernel image, as the kernel passes it, so placement avoids it.
    let busy = [AddrRange::new(0x4008_0000, 0x20_0000).unwrap()];
    let Ok(dt) = DeviceTree::from_dtb_with(data, &busy) else { return };
    let plan = &dt.plan;
    let _ = plan.to_json();
    let _ = format!("{plan}");
    for line in plan.console_lines() {
        assert!(!format!("{line}").contains('\n'), "a console line must be one line");
    }

    let sorted_disjoint = |ranges: &[AddrRange]| ranges.windows(2).all(|w| w[0].end() < w[1].base());
    assert!(sorted_disjoint(plan.memory()));
    assert!(sorted_disjoint(plan.linear_map()));
    for linear in plan.linear_map() {
        assert!(plan.memory().iter().any(|bank| bank.contains(*linear)));
    }
    for pair in plan.reserved().windows(2) {
        assert!(pair[0].range.base() <= pair[1].range.base());
        assert!(!pair[0].range.overlaps(pair[1].range));
    }
    for region in plan.reserved() {
        assert!(plan.memory().iter().any(|bank| bank.contains(region.range)));
        if region.no_map {
            assert!(!plan.linear_map().iter().any(|l| l.overlaps(region.range)));
        }
        if region.placement != tidepool_dt::Placement::Static {
            assert!(!region.range.overlaps(busy[0]));
            assert!(!plan.memreserve().iter().any(|m| m.overlaps(region.range)));
        }
    }
});
