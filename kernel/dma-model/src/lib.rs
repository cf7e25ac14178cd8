//! A model of the memory system the DMA layer runs on, for the host: physical
//! memory, one cache of lines keyed by physical line address, the aliases
//! through which the kernel, the hypervisor and devices reach memory, and an
//! adversary that exercises the architecture's freedoms at every step.
//!
//! [`Machine`] implements the DMA layer's boundary traits
//! ([`CacheMaintenance`], [`PlatformFlush`], [`DmaMemory`]) through
//! [`Handle`], so the real [`tidepool_dma::DmaDevice`], pools and policy run
//! against it unchanged; the property tests in `tests/` drive them and check
//! that the device reads what the CPU last wrote and the CPU reads what the
//! device last wrote.
//!
//! # Aliases
//!
//! - The kernel's mappings ([`Alias`]): the linear map (write-back) and each
//!   pool window (Normal non-cacheable, or write-back). A CPU access through
//!   an address no alias covers is a [`Fault`], as it would be on the machine.
//! - The hypervisor's directmap ([`Machine::new`] with `hypervisor`): all
//!   RAM, write-back. It only ever allocates lines (speculatively); Xen does
//!   not write a guest's DMA memory.
//! - The device: physical addresses. A non-coherent device reads and writes
//!   memory and ignores the cache; a coherent one snoops: its reads return a
//!   cached line if there is one, its writes update the line and memory.
//!   Another domain (a grant device's back end) is a CPU with its own
//!   write-back mapping, in the same coherent cache: its accesses allocate
//!   lines and its writes leave them dirty, to be written back whenever.
//!
//! # Rules, taken pessimistically
//!
//! - A dirty line may be written back (and kept or dropped) at any moment.
//! - Any line reachable through a cacheable alias (the linear map, a
//!   write-back window, the hypervisor's directmap) may be allocated
//!   speculatively, from memory, at any moment.
//! - A write-back CPU access allocates the line and works on it (a write
//!   makes it dirty). A non-cacheable write goes to memory and leaves any
//!   line alone (stale if it was there); a non-cacheable read may return a
//!   line another alias allocated, or memory.
//! - Maintenance by VA (whatever the VA's attributes) or by the hypervisor
//!   acts on the physical line. An invalidate cleans and invalidates the
//!   partial lines at either end of its range (as `DC` users and Xen do).
//!
//! "At any moment" is decided by an adversary: a stream of choices
//! ([`Machine::new`]'s `chaos`) consumed at every step of every boundary call
//! (each cache line copied, before and after each maintenance operation and
//! hypercall) and whenever the test asks. Each choice writes back a dirty
//! line, evicts a line, allocates a reachable line, or does nothing; the
//! lines it picks from are those anyone has touched, so that it spends its
//! moves where the data is. Tests can also make the sweeping moves
//! themselves ([`Machine::fill_all`], [`Machine::write_back_all`]). Whether a
//! non-cacheable read of a cached line hits it is a setting
//! ([`Machine::set_non_cacheable_reads_hit`]): a stale clean line shows only
//! when it hits, a newer dirty one only when it misses.
#![deny(unsafe_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;

use tidepool_dma::{
    CacheMaintenance, CacheOp, DmaMemory, FlushDone, FlushErrno, FlushFailed, OwnedPhysRange,
    OwnedVirtRange, PlatformFlush,
};
use tidepool_mm::{PAGE_SIZE, PhysAddr, PhysRange, VirtAddr};

/// The cache line size the model uses (Cortex-A cores: 64 bytes).
pub const LINE: u64 = 64;

/// How an alias maps memory.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Attributes {
    /// Normal write-back: accesses allocate and use cache lines.
    WriteBack,
    /// Normal non-cacheable: accesses go to memory (a read may still hit a
    /// line another alias allocated).
    NonCacheable,
}

/// One of the kernel's mappings: `phys` at `virt` with `attributes`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Alias {
    /// Virtual address of `phys.base`.
    pub virt: VirtAddr,
    /// What it maps.
    pub phys: PhysRange,
    /// How.
    pub attributes: Attributes,
}

/// Something the machine would have faulted on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    /// A CPU access or maintenance by VA through an address no alias maps.
    Unmapped {
        /// The address.
        virt: VirtAddr,
    },
    /// A hypercall on a machine without a hypervisor.
    NoHypervisor,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unmapped { virt } => write!(f, "translation fault at {virt}"),
            Self::NoHypervisor => f.write_str("hypercall without a hypervisor"),
        }
    }
}

/// Who reads or writes memory by physical address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Device {
    /// Ignores the cache.
    NonCoherent,
    /// Snoops the cache (`dma-coherent`).
    Coherent,
    /// Another domain's CPU through its own write-back mapping (a grant
    /// device's back end): allocates lines, and its writes dirty them.
    Domain,
}

#[derive(Clone, Copy, Debug)]
struct Line {
    data: [u8; LINE as usize],
    dirty: bool,
}

/// The memory system: memory, the cache, the aliases and the adversary.
pub struct Machine {
    memory: BTreeMap<u64, [u8; LINE as usize]>,
    cache: BTreeMap<u64, Line>,
    aliases: Vec<Alias>,
    hypervisor: bool,
    non_cacheable_hits: bool,
    refused: Vec<(PhysRange, FlushErrno)>,
    chaos: Vec<u16>,
    next_choice: usize,
    touched: Vec<u64>,
    touched_set: BTreeSet<u64>,
    faults: Vec<Fault>,
    hypercalls: u64,
}

fn line_of(pa: u64) -> u64 {
    pa & !(LINE - 1)
}

impl Machine {
    /// A machine with the kernel's `aliases`, with or without a hypervisor
    /// (whose directmap maps all memory write-back and who answers
    /// `GNTTABOP_cache_flush`), and the adversary's `chaos` choices (used in
    /// turn, from the start again when they run out; none: no adversary).
    pub fn new(aliases: Vec<Alias>, hypervisor: bool, chaos: Vec<u16>) -> Self {
        Self {
            memory: BTreeMap::new(),
            cache: BTreeMap::new(),
            aliases,
            hypervisor,
            non_cacheable_hits: true,
            refused: Vec::new(),
            chaos,
            next_choice: 0,
            touched: Vec::new(),
            touched_set: BTreeSet::new(),
            faults: Vec::new(),
            hypercalls: 0,
        }
    }

    /// Makes the hypervisor refuse flushes of `range` with `errno` (as Xen
    /// 4.17 refuses a static host pool with `EPERM`).
    pub fn refuse_flushes(&mut self, range: PhysRange, errno: FlushErrno) {
        self.refused.push((range, errno));
    }

    /// Whether a non-cacheable read of a line that is cached returns the
    /// cached line (the default) or memory.
    pub fn set_non_cacheable_reads_hit(&mut self, hit: bool) {
        self.non_cacheable_hits = hit;
    }

    /// Allocates every line anyone touched that a cacheable alias reaches and
    /// that is not cached, from memory (a burst of speculative fills).
    pub fn fill_all(&mut self) {
        for i in 0..self.touched.len() {
            let line = self.touched[i];
            if self.cacheable(line) {
                self.fill(line);
            }
        }
    }

    /// Writes every dirty line back and drops every line (evictions).
    pub fn write_back_all(&mut self) {
        let lines: Vec<u64> = self.cache.keys().copied().collect();
        for line in lines {
            self.write_back(line);
        }
        self.cache.clear();
    }

    /// Fills every line of `range` with dirty garbage derived from `seed`: the
    /// state memory may be in when it was used as ordinary cacheable RAM
    /// before (a dynamic pool carved from guest RAM, a previous boot).
    pub fn dirty_garbage(&mut self, range: PhysRange, seed: u8) {
        let mut line = line_of(range.base.0);
        while line < range.end() {
            let mut data = [0; LINE as usize];
            for (i, byte) in data.iter_mut().enumerate() {
                *byte = seed ^ 0xa5 ^ (i as u8).wrapping_mul(7) ^ (line >> 6) as u8;
            }
            self.cache.insert(line, Line { data, dirty: true });
            self.touch(line);
            line += LINE;
        }
    }

    /// The faults so far.
    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }

    /// Flush hypercalls made so far (refused ones included).
    pub fn hypercalls(&self) -> u64 {
        self.hypercalls
    }

    /// Lets the adversary make `steps` moves.
    pub fn chaos(&mut self, steps: usize) {
        for _ in 0..steps {
            self.chaos_step();
        }
    }

    fn choice(&mut self) -> Option<u16> {
        let choice = *self.chaos.get(self.next_choice % self.chaos.len().max(1))?;
        self.next_choice += 1;
        Some(choice)
    }

    fn cacheable(&self, line: u64) -> bool {
        self.hypervisor
            || self.aliases.iter().any(|alias| {
                alias.attributes == Attributes::WriteBack && alias.phys.contains(PhysAddr(line))
            })
    }

    fn chaos_step(&mut self) {
        let Some(choice) = self.choice() else {
            return;
        };
        // The adversary picks among the lines anyone has touched.
        let Some(&line) = self
            .touched
            .get(usize::from(choice >> 2) % self.touched.len().max(1))
        else {
            return;
        };
        match choice & 3 {
            1 if self.cacheable(line) => {
                self.fill(line);
            }
            2 => self.write_back(line),
            3 => {
                self.write_back(line);
                self.cache.remove(&line);
            }
            _ => {}
        }
    }

    fn touch(&mut self, line: u64) {
        if self.touched_set.insert(line) {
            self.touched.push(line);
        }
    }

    fn memory_line(&self, line: u64) -> [u8; LINE as usize] {
        self.memory
            .get(&line)
            .copied()
            .unwrap_or([0; LINE as usize])
    }

    /// The cached copy of `line`, allocated clean from memory if the cache
    /// does not hold it.
    fn fill(&mut self, line: u64) -> &mut Line {
        let data = self.memory_line(line);
        self.cache
            .entry(line)
            .or_insert(Line { data, dirty: false })
    }

    /// Stores `byte` at `index` of `line` in the cache (allocating the
    /// line), which makes it dirty.
    fn store_cached(&mut self, line: u64, index: usize, byte: u8) {
        let cached = self.fill(line);
        cached.data[index] = byte;
        cached.dirty = true;
    }

    /// Stores `byte` at `index` of `line` in memory, past the cache.
    fn store_memory(&mut self, line: u64, index: usize, byte: u8) {
        self.memory.entry(line).or_insert([0; LINE as usize])[index] = byte;
    }

    fn write_back(&mut self, line: u64) {
        if let Some(cached) = self.cache.get_mut(&line)
            && cached.dirty
        {
            cached.dirty = false;
            self.memory.insert(line, cached.data);
        }
    }

    fn translate(&mut self, virt: VirtAddr) -> Option<(u64, Attributes)> {
        let found = self.aliases.iter().find_map(|alias| {
            let offset = virt.0.checked_sub(alias.virt.0)?;
            (offset < alias.phys.size).then_some((alias.phys.base.0 + offset, alias.attributes))
        });
        if found.is_none() {
            self.faults.push(Fault::Unmapped { virt });
        }
        found
    }

    fn cpu_read_byte(&mut self, virt: VirtAddr) -> u8 {
        let Some((pa, attributes)) = self.translate(virt) else {
            return 0;
        };
        let line = line_of(pa);
        let index = (pa - line) as usize;
        self.touch(line);
        match attributes {
            Attributes::WriteBack => self.fill(line).data[index],
            Attributes::NonCacheable => match self.cache.get(&line).map(|l| l.data[index]) {
                // Mismatched attributes: the read may hit a line another alias
                // allocated.
                Some(cached) if self.non_cacheable_hits => cached,
                _ => self.memory_line(line)[index],
            },
        }
    }

    fn cpu_write_byte(&mut self, virt: VirtAddr, value: u8) {
        let Some((pa, attributes)) = self.translate(virt) else {
            return;
        };
        let line = line_of(pa);
        let index = (pa - line) as usize;
        self.touch(line);
        match attributes {
            Attributes::WriteBack => self.store_cached(line, index, value),
            Attributes::NonCacheable => self.store_memory(line, index, value),
        }
    }

    /// The CPU reads `len` bytes at `virt`; the adversary moves at every line.
    pub fn cpu_read(&mut self, virt: VirtAddr, len: u64) -> Vec<u8> {
        (0..len)
            .map(|i| {
                let at = VirtAddr(virt.0 + i);
                if i == 0 || at.0.is_multiple_of(LINE) {
                    self.chaos_step();
                }
                self.cpu_read_byte(at)
            })
            .collect()
    }

    /// The CPU writes `bytes` at `virt`; the adversary moves at every line.
    pub fn cpu_write(&mut self, virt: VirtAddr, bytes: &[u8]) {
        for (i, &byte) in bytes.iter().enumerate() {
            let at = VirtAddr(virt.0 + i as u64);
            if i == 0 || at.0.is_multiple_of(LINE) {
                self.chaos_step();
            }
            self.cpu_write_byte(at, byte);
        }
    }

    /// A device reads `len` bytes at physical address `pa`.
    pub fn device_read(&mut self, device: Device, pa: PhysAddr, len: u64) -> Vec<u8> {
        (0..len)
            .map(|i| {
                let pa = pa.0 + i;
                let line = line_of(pa);
                if i == 0 || pa.is_multiple_of(LINE) {
                    self.chaos_step();
                    self.touch(line);
                }
                let index = (pa - line) as usize;
                match (device, self.cache.get(&line)) {
                    (Device::Coherent | Device::Domain, Some(cached)) => cached.data[index],
                    (Device::Domain, None) => self.fill(line).data[index],
                    _ => self.memory_line(line)[index],
                }
            })
            .collect()
    }

    /// A device writes `bytes` at physical address `pa`.
    pub fn device_write(&mut self, device: Device, pa: PhysAddr, bytes: &[u8]) {
        for (i, &byte) in bytes.iter().enumerate() {
            let pa = pa.0 + i as u64;
            let line = line_of(pa);
            if i == 0 || pa.is_multiple_of(LINE) {
                self.chaos_step();
                self.touch(line);
            }
            let index = (pa - line) as usize;
            if device == Device::Domain {
                self.store_cached(line, index, byte);
                continue;
            }
            self.store_memory(line, index, byte);
            if device == Device::Coherent
                && let Some(cached) = self.cache.get_mut(&line)
            {
                cached.data[index] = byte;
            }
        }
    }

    /// `op` on the physical lines of `[start, end)`: what `DC` by VA and
    /// Xen's flush both do once the address is resolved.
    fn maintain_lines(&mut self, op: CacheOp, start: u64, end: u64) {
        let mut line = line_of(start);
        while line < end {
            let whole = line >= start && line + LINE <= end;
            self.touch(line);
            match op {
                CacheOp::Clean => self.write_back(line),
                CacheOp::Invalidate if whole => {
                    self.cache.remove(&line);
                }
                CacheOp::Invalidate | CacheOp::CleanInvalidate => {
                    self.write_back(line);
                    self.cache.remove(&line);
                }
            }
            line += LINE;
        }
    }
}

/// A shared handle to a [`Machine`]: the DMA layer takes its boundaries as
/// three separate `&mut dyn` references, which all act on one machine.
#[derive(Clone)]
pub struct Handle(Rc<RefCell<Machine>>);

impl Handle {
    /// Wraps `machine`.
    pub fn new(machine: Machine) -> Self {
        Self(Rc::new(RefCell::new(machine)))
    }

    /// The machine, for the test's own accesses and checks.
    pub fn machine(&self) -> std::cell::RefMut<'_, Machine> {
        self.0.borrow_mut()
    }
}

// The boundary traits are `unsafe` to implement (the DMA layer relies on
// their "Implementation safety"), hence the one exception to this crate's
// `deny(unsafe_code)` per implementation; no unsafe operation follows.
#[allow(unsafe_code)]
// SAFETY: maintains exactly the modelled lines overlapping the range (partial
// lines of an invalidate are cleaned first), complete on return, keeps no
// address; it touches no real memory.
unsafe impl CacheMaintenance for Handle {
    fn maintain(&mut self, op: CacheOp, range: &OwnedVirtRange) {
        let (start, len) = (range.start(), range.len());
        let mut machine = self.0.borrow_mut();
        machine.chaos_step();
        // DC by VA: each line's VA is translated, then the physical line is
        // maintained, whatever the alias's attributes.
        let end = start.0 + len;
        let mut virt = start.0;
        while virt < end {
            let chunk_end = ((virt & !(LINE - 1)) + LINE).min(end);
            if let Some((pa, _)) = machine.translate(VirtAddr(virt)) {
                machine.maintain_lines(op, pa, pa + (chunk_end - virt));
            }
            virt = chunk_end;
        }
        machine.chaos_step();
    }
}

#[allow(unsafe_code)]
// SAFETY: maintains exactly the modelled lines of the range, or nothing and
// `Err` when the range is refused; keeps no address; no real memory.
unsafe impl PlatformFlush for Handle {
    fn flush(&mut self, op: CacheOp, range: &OwnedPhysRange) -> Result<FlushDone, FlushFailed> {
        let range = range.range();
        let mut machine = self.0.borrow_mut();
        machine.chaos_step();
        if !machine.hypervisor {
            machine.faults.push(Fault::NoHypervisor);
        }
        machine.hypercalls += 1;
        let refused = machine
            .refused
            .iter()
            .find(|(refused, _)| refused.overlaps(&range))
            .map(|&(_, errno)| errno);
        if let Some(errno) = refused {
            return Err(FlushFailed {
                errno,
                hypercalls: 1,
            });
        }
        machine.maintain_lines(op, range.base.0, range.end());
        machine.chaos_step();
        let first_page = range.base.0 / PAGE_SIZE;
        let last_page = (range.end() - 1) / PAGE_SIZE;
        Ok(FlushDone {
            hypercalls: 1,
            pages: (last_page - first_page + 1) as u32,
        })
    }
}

#[allow(unsafe_code)]
// SAFETY: writes exactly the modelled bytes of `dst`, complete on return,
// keeps no address; no real memory.
unsafe impl DmaMemory for Handle {
    fn copy(&mut self, src: &OwnedVirtRange, dst: &OwnedVirtRange) {
        let (src, dst, len) = (src.start(), dst.start(), src.len());
        let mut machine = self.0.borrow_mut();
        for i in 0..len {
            if i.is_multiple_of(LINE) {
                machine.chaos_step();
            }
            let byte = machine.cpu_read_byte(VirtAddr(src.0 + i));
            machine.cpu_write_byte(VirtAddr(dst.0 + i), byte);
        }
    }

    fn zero(&mut self, dst: &OwnedVirtRange) {
        let zeros = vec![0; dst.len() as usize];
        self.0.borrow_mut().cpu_write(dst.start(), &zeros);
    }
}
