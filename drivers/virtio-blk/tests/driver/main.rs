//! The whole driver against a simulated virtio-blk device, on host memory,
//! through the real DMA layer with recording fakes of the machine under it.

mod cost;
mod host;
mod init;
mod io;
mod no_alloc;
mod sim;
mod stop;

use tidepool_virtio_blk::{BlockDevice, InitError, Options};

use crate::host::{CountingAllocator, DeviceKind, Rig};
use crate::sim::{Sim, SimConfig};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// A driver set up on a simulated device.
struct Bench {
    rig: Rig,
    sim: Sim,
    disk: BlockDevice<'static, Sim>,
}

/// Sets up the driver for a `kind` device on `sim`.
fn init(
    rig: &mut Rig,
    sim: &Sim,
    kind: DeviceKind,
    options: Options,
) -> Result<BlockDevice<'static, Sim>, InitError<'static>> {
    let dma = rig.dma_device(kind);
    BlockDevice::new(sim.clone(), dma, &mut rig.env(), options)
}

/// A set-up driver on a fresh rig (under Xen when `xen`), what was recorded
/// during setup forgotten.
fn bench(config: SimConfig, kind: DeviceKind, xen: bool) -> Bench {
    bench_with(config, kind, xen, Options::default())
}

fn bench_with(config: SimConfig, kind: DeviceKind, xen: bool, options: Options) -> Bench {
    let mut rig = Rig::new(xen);
    let sim = Sim::new(config, rig.map);
    let disk = init(&mut rig, &sim, kind, options).unwrap();
    rig.forget();
    Bench { rig, sim, disk }
}

/// A clock that advances one tick per call.
fn ticking() -> impl FnMut() -> u64 {
    let mut now = 0;
    move || {
        now += 1;
        now
    }
}
