//! A simulated uSDHC with an SD card on its bus. It implements the
//! driver's [`Controller`] register by register, with the i.MX layout
//! (transfer mode in `MIX_CTRL`, bus width and DMA select in `PROT_CTRL`),
//! runs each command against a card model (idle, ready, identification,
//! stand-by, transfer), walks the ADMA2 table where the driver put it and
//! moves data through the address map, as the controller's DMA would.
//! Every command is checked against the SD protocol and the controller's
//! contract (response checks, block size and count, direction, auto-CMD12).

use std::cell::{RefCell, RefMut};
use std::rc::Rc;
use std::vec::Vec;

use tidepool_block::Barrier;
use tidepool_mm::{AddressClass, AddressMap, PhysAddr};
use tidepool_usdhc::{Controller, Reg};

pub const CC: u32 = 1 << 0;
pub const TC: u32 = 1 << 1;
pub const CTOE: u32 = 1 << 16;
pub const DCE: u32 = 1 << 21;
pub const CIHB: u32 = 1 << 0;
pub const CDIHB: u32 = 1 << 1;
const DLA: u32 = 1 << 2;
const SDSTB: u32 = 1 << 3;
const CINST: u32 = 1 << 16;
const WPSPL: u32 = 1 << 19;

/// What the card is and how the simulation behaves.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Capacity in sectors.
    pub sectors: u64,
    /// An SDHC card (block addressing); else SDSC.
    pub high_capacity: bool,
    /// The card answers CMD8 (physical layer 2.00 or later).
    pub version2: bool,
    /// A card is on the bus.
    pub present: bool,
    /// The write-protect switch is on.
    pub wp_switch: bool,
    /// The CSD's TMP_WRITE_PROTECT.
    pub csd_wp: bool,
    /// ACMD41s answered busy before the card is ready (`u32::MAX`: never).
    pub busy_polls: u32,
    /// Complete data commands as soon as they are issued.
    pub auto_complete: bool,
    /// `PRES_STATE` inhibit bits that stay set whatever the controller
    /// does (`CIHB`: the command line never frees; `CDIHB`: the data line).
    pub stuck_lines: u32,
}

impl SimConfig {
    pub fn sdhc() -> Self {
        Self {
            sectors: 16384,
            high_capacity: true,
            version2: true,
            present: true,
            wp_switch: false,
            csd_wp: false,
            busy_polls: 3,
            auto_complete: true,
            stuck_lines: 0,
        }
    }

    pub fn sdsc() -> Self {
        Self {
            sectors: 8192,
            high_capacity: false,
            ..Self::sdhc()
        }
    }
}

/// A data command taken but not yet completed.
#[derive(Clone, Copy, Debug)]
pub struct Pending {
    pub sector: u64,
    pub blocks: u32,
    pub read: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CardState {
    Idle,
    Ready,
    Ident,
    Stby,
    Tran,
}

pub struct SimState {
    pub config: SimConfig,
    map: &'static AddressMap,
    pub disk: Vec<u8>,
    /// Every command: index, argument.
    pub commands: Vec<(u8, u32)>,
    /// Line resets seen: (CMD, DAT).
    pub resets: (u32, u32),
    /// Data errors to report instead of completing the next data commands.
    pub inject: Vec<u32>,
    /// R1 status bits to add to the next data command's response.
    pub card_error: u32,
    pub pending: Option<Pending>,
    blk_att: u32,
    arg: u32,
    rsp: [u32; 4],
    prot_ctrl: u32,
    sys_ctrl: u32,
    int_status: u32,
    int_status_en: u32,
    pub int_signal_en: u32,
    mix_ctrl: u32,
    adma_addr: u32,
    vend_spec: u32,
    wtmk: u32,
    state: CardState,
    app: bool,
    acmd41_polls: u32,
    pub hcs_requested: bool,
    rca: u16,
    pub bus_width_4: bool,
    blocklen_set: bool,
    /// A `DmaWrite` barrier since the last command write.
    write_barrier: bool,
    /// `DmaRead` barriers executed.
    pub read_barriers: u32,
}

/// The simulation, shared between the test and the driver.
#[derive(Clone)]
pub struct Sim(Rc<RefCell<SimState>>);

impl Sim {
    pub fn new(config: SimConfig, map: &'static AddressMap) -> Self {
        let disk = vec![0; (config.sectors * 512) as usize];
        Self(Rc::new(RefCell::new(SimState {
            config,
            map,
            disk,
            commands: Vec::new(),
            resets: (0, 0),
            inject: Vec::new(),
            card_error: 0,
            pending: None,
            blk_att: 0,
            arg: 0,
            rsp: [0; 4],
            prot_ctrl: 0,
            sys_ctrl: 0,
            int_status: 0,
            int_status_en: 0,
            int_signal_en: 0,
            mix_ctrl: 0,
            adma_addr: 0,
            vend_spec: 0,
            wtmk: 0,
            state: CardState::Idle,
            app: false,
            acmd41_polls: 0,
            hcs_requested: false,
            rca: 0,
            bus_width_4: false,
            blocklen_set: false,
            write_barrier: false,
            read_barriers: 0,
        })))
    }

    pub fn state(&self) -> RefMut<'_, SimState> {
        self.0.borrow_mut()
    }

    /// Completes the pending data command.
    pub fn complete(&self) {
        let mut s = self.0.borrow_mut();
        let pending = s.pending.take().expect("no data command pending");
        s.transfer(pending);
    }

    /// Whether the controller signals an interrupt now.
    pub fn irq(&self) -> bool {
        let s = self.0.borrow();
        s.int_status & s.int_signal_en != 0
    }
}

impl SimState {
    fn host(&self, pa: u64, len: usize) -> *mut u8 {
        let region = self.map.region_of(PhysAddr(pa)).map(|r| r.phys);
        assert!(
            region.is_some_and(|r| pa + len as u64 <= r.end()),
            "controller DMA of {len} bytes at {pa:#x} leaves its region"
        );
        let va = match self.map.classify(PhysAddr(pa)) {
            AddressClass::LinearRam { virt } | AddressClass::MappedPool { virt, .. } => virt,
            AddressClass::NoMapPool {
                window: Some(window),
                ..
            } => window,
            other => panic!("controller DMA to {pa:#x}, which is {other}"),
        };
        std::ptr::with_exposed_provenance_mut(va.0 as usize)
    }

    fn dma_read(&self, pa: u64, bytes: &mut [u8]) {
        let source = self.host(pa, bytes.len());
        // SAFETY: `host` returned the host address of memory the test owns:
        // a leaked pool window, or the driver's live staging buffer.
        unsafe { std::ptr::copy_nonoverlapping(source, bytes.as_mut_ptr(), bytes.len()) }
    }

    fn dma_write(&self, pa: u64, bytes: &[u8]) {
        let destination = self.host(pa, bytes.len());
        // SAFETY: as for `dma_read`.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), destination, bytes.len()) }
    }

    fn raise(&mut self, bits: u32) {
        self.int_status |= bits & self.int_status_en;
    }

    fn clock_on(&self) -> bool {
        self.sys_ctrl & 0b101 == 0b101
    }

    /// The CSD this card reports, as 128 bits.
    fn csd(&self) -> u128 {
        let mut csd: u128 = 0;
        if self.config.high_capacity {
            csd |= 1 << 126;
            csd |= u128::from(self.config.sectors / 1024 - 1) << 48;
        } else {
            // READ_BL_LEN = 9, C_SIZE_MULT = 7: (C_SIZE + 1) * 512 sectors.
            csd |= 9 << 80;
            csd |= 7 << 47;
            csd |= u128::from(self.config.sectors / 512 - 1) << 62;
        }
        if self.config.csd_wp {
            csd |= 1 << 12;
        }
        csd
    }

    fn r2(&mut self, value: u128) {
        let shifted = value >> 8;
        self.rsp = [0, 1, 2, 3].map(|i| (shifted >> (32 * i)) as u32);
    }

    fn r1(&mut self, extra: u32) {
        let state = match self.state {
            CardState::Idle => 0,
            CardState::Ready => 1,
            CardState::Ident => 2,
            CardState::Stby => 3,
            CardState::Tran => 4,
        };
        self.rsp = [state << 9 | u32::from(self.app) << 5 | extra, 0, 0, 0];
    }

    /// Checks the response flags the driver set for a command.
    fn check_flags(&self, index: u8, value: u32) {
        let rsptyp = (value >> 16) & 3;
        let crc = value & (1 << 19) != 0;
        let idx = value & (1 << 20) != 0;
        let (want_type, want_crc, want_idx) = match index {
            0 => (0, false, false),
            2 | 9 => (1, true, false),
            41 => (2, false, false),
            7 | 12 => (3, true, true),
            _ => (2, true, true),
        };
        assert_eq!(
            (rsptyp, crc, idx),
            (want_type, want_crc, want_idx),
            "CMD{index} issued with response flags {value:#x}"
        );
        if index == 12 {
            assert_eq!((value >> 22) & 3, 3, "CMD12 must be an abort command");
        }
    }

    fn command(&mut self, value: u32) {
        let index = ((value >> 24) & 0x3f) as u8;
        let arg = self.arg;
        assert!(self.clock_on(), "CMD{index} issued with the SD clock off");
        assert_eq!(
            self.prot_ctrl & (3 << 4),
            2 << 4,
            "PROT_CTRL endian mode is not little-endian"
        );
        self.commands.push((index, arg));
        self.check_flags(index, value);
        self.raise_for(index, arg, value);
    }

    fn raise_for(&mut self, index: u8, arg: u32, value: u32) {
        if !self.config.present {
            if index != 0 {
                self.raise(CTOE);
            } else {
                self.raise(CC);
            }
            return;
        }
        let app = std::mem::take(&mut self.app);
        let data = value & (1 << 21) != 0;
        match (app, index) {
            (_, 0) => {
                self.state = CardState::Idle;
                self.rca = 0;
                self.raise(CC);
            }
            (false, 8) => {
                if !self.config.version2 {
                    self.raise(CTOE);
                    return;
                }
                self.rsp = [arg & 0xfff, 0, 0, 0];
                self.raise(CC);
            }
            (_, 55) => {
                assert_eq!(arg >> 16, u32::from(self.rca), "CMD55 with another RCA");
                self.app = true;
                self.r1(0);
                self.raise(CC);
            }
            (true, 41) => {
                assert_eq!(self.state, CardState::Idle, "ACMD41 outside idle");
                assert_eq!(arg & 0x00ff_8000, 0x00ff_8000, "ACMD41 voltage window");
                self.hcs_requested = arg & (1 << 30) != 0;
                assert!(
                    self.config.version2 || !self.hcs_requested,
                    "HCS sent to a card that did not answer CMD8"
                );
                let ready = self.acmd41_polls >= self.config.busy_polls;
                self.acmd41_polls = self.acmd41_polls.saturating_add(1);
                let ccs = self.config.high_capacity && self.hcs_requested;
                self.rsp = [
                    0x00ff_8000 | u32::from(ready) << 31 | u32::from(ccs && ready) << 30,
                    0,
                    0,
                    0,
                ];
                if ready {
                    self.state = CardState::Ready;
                }
                self.raise(CC);
            }
            (false, 2) => {
                assert_eq!(
                    self.state,
                    CardState::Ready,
                    "CMD2 before the card is ready"
                );
                self.state = CardState::Ident;
                // MID 0xaa, OID "XY", PNM "SIMSD".
                let mut cid: u128 = 0xaa << 120 | u128::from(u16::from_be_bytes(*b"XY")) << 104;
                for (i, b) in b"SIMSD".iter().enumerate() {
                    cid |= u128::from(*b) << (96 - 8 * i);
                }
                self.r2(cid);
                self.raise(CC);
            }
            (false, 3) => {
                assert_eq!(self.state, CardState::Ident, "CMD3 outside identification");
                self.state = CardState::Stby;
                self.rca = 0x4567;
                self.rsp = [0x4567 << 16 | 0x0500, 0, 0, 0];
                self.raise(CC);
            }
            (false, 9) => {
                assert_eq!(arg >> 16, u32::from(self.rca));
                let csd = self.csd();
                self.r2(csd);
                self.raise(CC);
            }
            (false, 7) => {
                assert_eq!(arg >> 16, u32::from(self.rca));
                self.state = CardState::Tran;
                self.r1(0);
                self.raise(CC);
            }
            (true, 6) => {
                assert_eq!(arg, 2, "ACMD6 must select the 4-bit bus");
                self.bus_width_4 = true;
                self.r1(0);
                self.raise(CC);
            }
            (false, 16) => {
                assert_eq!(arg, 512);
                self.blocklen_set = true;
                self.r1(0);
                self.raise(CC);
            }
            (false, 12) => {
                self.r1(0);
                self.raise(CC);
            }
            (false, 17 | 18 | 24 | 25) => {
                assert!(data, "CMD{index} without data present");
                self.data_command(index, arg);
            }
            (app, index) => panic!("unexpected {}CMD{index}", if app { "A" } else { "" }),
        }
    }

    fn data_command(&mut self, index: u8, arg: u32) {
        assert!(
            self.write_barrier,
            "CMD{index} issued without a DmaWrite barrier after its descriptor table"
        );
        assert_eq!(
            self.state,
            CardState::Tran,
            "CMD{index} outside transfer state"
        );
        assert!(self.bus_width_4, "data before ACMD6");
        assert_eq!(
            (self.prot_ctrl >> 1) & 3,
            1,
            "PROT_CTRL not set to the 4-bit bus"
        );
        assert_eq!(
            (self.prot_ctrl >> 8) & 3,
            2,
            "PROT_CTRL DMA select is not ADMA2"
        );
        assert!(
            self.config.high_capacity || self.blocklen_set,
            "SDSC data before CMD16"
        );
        let read = matches!(index, 17 | 18);
        let multi = matches!(index, 18 | 25);
        let mix = self.mix_ctrl;
        assert_eq!(
            mix & 0b11,
            0b11,
            "MIX_CTRL without DMA and block count enable"
        );
        assert_eq!(mix & (1 << 4) != 0, read, "MIX_CTRL direction");
        assert_eq!(mix & (1 << 5) != 0, multi, "MIX_CTRL multi-block");
        assert_eq!(mix & (1 << 2) != 0, multi, "MIX_CTRL auto-CMD12");
        assert_eq!(self.blk_att & 0x1fff, 512, "block size");
        let blocks = self.blk_att >> 16;
        assert!(multi || blocks == 1, "CMD{index} with {blocks} blocks");
        let sector = if self.config.high_capacity {
            u64::from(arg)
        } else {
            assert_eq!(arg % 512, 0, "SDSC byte address {arg:#x} not on a sector");
            u64::from(arg / 512)
        };
        let pending = Pending {
            sector,
            blocks,
            read,
        };
        let card_error = std::mem::take(&mut self.card_error);
        self.r1(card_error);
        self.raise(CC);
        if self.config.auto_complete {
            self.transfer(pending);
        } else {
            self.pending = Some(pending);
        }
    }

    /// Runs the ADMA2 table for `pending` and completes it (or reports
    /// the injected error).
    fn transfer(&mut self, pending: Pending) {
        if !self.inject.is_empty() {
            let error = self.inject.remove(0);
            self.raise(error);
            return;
        }
        let total = u64::from(pending.blocks) * 512;
        assert!(
            pending.sector * 512 + total <= self.disk.len() as u64,
            "transfer past the card's end"
        );
        let mut at = u64::from(self.adma_addr);
        let mut moved = 0u64;
        loop {
            let mut d = [0u8; 8];
            self.dma_read(at, &mut d);
            let attr = d[0];
            assert_eq!(attr & 1, 1, "invalid ADMA2 descriptor at {at:#x}");
            assert_eq!(attr & 0x30, 0x20, "ADMA2 descriptor not a transfer");
            let len = u64::from(u16::from_le_bytes([d[2], d[3]]));
            let addr = u64::from(u32::from_le_bytes([d[4], d[5], d[6], d[7]]));
            assert!(len > 0 && moved + len <= total, "ADMA2 length mismatch");
            let offset = (pending.sector * 512 + moved) as usize;
            if pending.read {
                let bytes = self.disk[offset..offset + len as usize].to_vec();
                self.dma_write(addr, &bytes);
            } else {
                let mut bytes = vec![0; len as usize];
                self.dma_read(addr, &mut bytes);
                self.disk[offset..offset + len as usize].copy_from_slice(&bytes);
            }
            moved += len;
            if attr & 2 != 0 {
                break;
            }
            at += 8;
        }
        assert_eq!(moved, total, "ADMA2 table moved {moved} of {total} bytes");
        if pending.blocks > 1 {
            // Auto-CMD12.
            self.commands.push((12, 0));
        }
        self.raise(TC);
    }
}

impl Controller for Sim {
    fn read(&self, reg: Reg) -> u32 {
        let s = self.0.borrow();
        match reg {
            Reg::BlkAtt => s.blk_att,
            Reg::CmdArg => s.arg,
            Reg::CmdXfrTyp => 0,
            Reg::CmdRsp(n) => s.rsp[usize::from(n)],
            Reg::PresState => {
                let mut state = CINST;
                if !s.config.wp_switch {
                    state |= WPSPL;
                }
                if s.clock_on() {
                    state |= SDSTB;
                }
                if s.pending.is_some() {
                    state |= CIHB | CDIHB | DLA;
                }
                state |= s.config.stuck_lines;
                state
            }
            Reg::ProtCtrl => s.prot_ctrl,
            Reg::SysCtrl => s.sys_ctrl,
            Reg::IntStatus => s.int_status,
            Reg::IntStatusEn => s.int_status_en,
            Reg::IntSignalEn => s.int_signal_en,
            Reg::Autocmd12ErrStatus => 0,
            Reg::HostCtrlCap => 0x07f3_b407,
            Reg::WtmkLvl => s.wtmk,
            Reg::MixCtrl => s.mix_ctrl,
            Reg::AdmaErrStatus => 0,
            Reg::AdmaSysAddr => s.adma_addr,
            Reg::VendSpec => s.vend_spec,
        }
    }

    fn write(&mut self, reg: Reg, value: u32) {
        let mut s = self.0.borrow_mut();
        match reg {
            Reg::BlkAtt => s.blk_att = value,
            Reg::CmdArg => s.arg = value,
            Reg::CmdXfrTyp => {
                assert!(s.pending.is_none(), "command issued while a transfer runs");
                s.command(value);
                s.write_barrier = false;
            }
            Reg::ProtCtrl => s.prot_ctrl = value,
            Reg::SysCtrl => {
                match value >> 24 {
                    0 | 8 => {}
                    1 => {
                        // Reset all: the controller's registers, not the card.
                        s.blk_att = 0;
                        s.arg = 0;
                        s.rsp = [0; 4];
                        s.prot_ctrl = 0;
                        s.sys_ctrl = 0;
                        s.int_status = 0;
                        s.int_status_en = 0;
                        s.int_signal_en = 0;
                        s.mix_ctrl = 0;
                        s.adma_addr = 0;
                        s.pending = None;
                        return;
                    }
                    2 => s.resets.0 += 1,
                    4 => {
                        s.resets.1 += 1;
                        s.pending = None;
                    }
                    other => panic!("SYS_CTRL reset byte {other:#x}: one request at a time"),
                }
                s.sys_ctrl = value & 0x00ff_ffff;
            }
            Reg::IntStatus => s.int_status &= !value,
            Reg::IntStatusEn => s.int_status_en = value,
            Reg::IntSignalEn => s.int_signal_en = value,
            Reg::Autocmd12ErrStatus => {}
            Reg::WtmkLvl => s.wtmk = value,
            Reg::MixCtrl => s.mix_ctrl = value,
            Reg::AdmaSysAddr => s.adma_addr = value,
            Reg::VendSpec => s.vend_spec = value,
            Reg::CmdRsp(_) | Reg::PresState | Reg::HostCtrlCap | Reg::AdmaErrStatus => {
                panic!("write to read-only {reg:?}")
            }
        }
    }

    fn barrier(&self, barrier: Barrier) {
        let mut s = self.0.borrow_mut();
        match barrier {
            Barrier::DmaWrite => s.write_barrier = true,
            Barrier::DmaRead => s.read_barriers += 1,
            Barrier::DmaFull => panic!("the uSDHC driver needs no full barrier"),
        }
    }
}
