//! The SD card behind one uSDHC: initialisation (polled, at setup) and
//! block requests (ADMA2, completed by interrupt or polling).

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::Poll;

use tidepool_block::{
    Barrier, BlkStats, BlockDriver, Completion, Completions, Deadline, DiskLimits, Notice, Op,
    Request, SECTOR_SIZE, SharedMemory, Token,
};
use tidepool_dma::{
    CoherentBuffer, CpuBuffer, DmaDevice, DmaDirection, DmaEnv, DmaError, DmaMapping, PoolError,
};
use tidepool_mm::PAGE_SIZE;
use tock_registers::LocalRegisterCopy;

use crate::adma::{self, DESCRIPTOR_BYTES};
use crate::card::{ClockSetting, Csd, r2_bits};
use crate::command::{self, CardStatus, Command, Response};
use crate::error::{InitError, Registers, SdError, WriteProtect};
use crate::regs::{Controller, INT, MIX_CTRL, PRES_STATE, PROT_CTRL, Reg, SYS_CTRL, VEND_SPEC};

/// The status bits the driver enables: command and transfer complete, the
/// DMA interrupt, and every error it decodes.
const STATUS_ENABLES: u32 = 0x137f_000b;
/// The status bits that raise the interrupt: command and transfer
/// complete, and the errors.
const SIGNAL_ENABLES: u32 = 0x137f_0003;
/// Any of these in `INT_STATUS` is an error (bit 15 is standard SDHCI's
/// error summary, which QEMU's model sets; reserved on the uSDHC).
const ERROR_BITS: u32 = 0xffff_8000;
/// The watermarks Linux's i.MX driver programs for DMA: 64 words and
/// bursts of 16, both ways.
const WATERMARKS: u32 = 0x1040_1040;
/// The identification-mode clock (SD spec: at most 400 kHz).
const IDENTIFICATION_HZ: u32 = 400_000;
/// How long ACMD41 may take to report the card ready (SD spec: 1 s).
const READY_TIMEOUT_MS: u64 = 1000;
/// How long one command of the setup sequence, a reset or a clock change
/// may take.
const COMMAND_TIMEOUT_MS: u64 = 100;

/// How the controller and the card are set up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Options {
    /// The uSDHC's input clock in Hz (the device tree's
    /// `assigned-clock-rates` for its `usdhc` clock).
    pub base_clock_hz: u32,
    /// The card clock for data transfer (25 MHz: default speed, which
    /// every card supports).
    pub bus_hz: u32,
    /// The largest request in bytes: the staging buffer's size, a multiple
    /// of 512.
    pub max_request_bytes: u32,
    /// Ignore the write-protect pin (the device tree's `disable-wp`: the
    /// slot has no switch, and the pin's level means nothing).
    pub ignore_write_protect_pin: bool,
    /// Ticks of the setup clock per millisecond.
    pub ticks_per_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            base_clock_hz: 400_000_000,
            bus_hz: 25_000_000,
            max_request_bytes: 256 * 1024,
            ignore_write_protect_pin: false,
            ticks_per_ms: 1,
        }
    }
}

/// What the card told the driver at setup.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CardInfo {
    /// High (or extended) capacity: block addressing.
    pub high_capacity: bool,
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    /// `CSD_STRUCTURE`.
    pub csd_version: u8,
    /// The relative card address.
    pub rca: u16,
    /// The product name from the CID (5 ASCII bytes).
    pub product: [u8; 5],
    /// The card clock in Hz.
    pub clock_hz: u32,
    /// The CSD's write protection.
    pub csd_write_protected: bool,
}

/// The one request slot (the card takes one command at a time).
enum Slot<'a> {
    Free,
    InFlight {
        mapping: DmaMapping<'a>,
        request: Completion,
        cmd: Command,
        arg: u32,
        deadline: Deadline,
        /// Status bits seen so far.
        seen: u32,
    },
    /// Finished; its outcome waits for `finish`.
    Done {
        request: Completion,
        outcome: Result<(), SdError<'a>>,
    },
    /// Timed out: the controller's CMD and DAT lines were reset, which
    /// stopped its DMA; `finish` reports it, the next `poll` or `submit`
    /// unmaps the region.
    TimedOut {
        mapping: DmaMapping<'a>,
        error: SdError<'a>,
        reported: bool,
    },
}

/// An SD card on a uSDHC, all of whose DMA goes through its [`DmaDevice`].
pub struct SdCard<'a, C: Controller> {
    ctl: C,
    dma: DmaDevice<'a>,
    card: CardInfo,
    options: Options,
    /// The ADMA2 descriptor table: coherent memory of the device.
    table: CoherentBuffer<'a>,
    table_memory: SharedMemory,
    /// Every request's data, mapped for the device per request.
    staging: SharedMemory,
    slot: Slot<'a>,
    generation: u32,
    stats: BlkStats,
    /// Set by the kernel's interrupt handler ([`SdCard::use_interrupt_flag`]).
    noted: Option<&'a AtomicBool>,
}

/// Setup's clock: ticks and a deadline.
struct Clock<'c> {
    now: &'c mut dyn FnMut() -> u64,
    ticks_per_ms: u64,
}

impl Clock<'_> {
    fn deadline(&mut self, ms: u64) -> u64 {
        (self.now)().saturating_add(ms.saturating_mul(self.ticks_per_ms))
    }

    fn passed(&mut self, deadline: u64) -> bool {
        (self.now)() > deadline
    }
}

fn registers<C: Controller>(ctl: &C, int_status: u32) -> Registers {
    Registers {
        int_status,
        pres_state: ctl.read(Reg::PresState),
        autocmd12: ctl.read(Reg::Autocmd12ErrStatus),
        adma: ctl.read(Reg::AdmaErrStatus),
    }
}

/// Resets the CMD and DAT lines (one write each: the reset bits are
/// requests, and standard SDHCI takes one at a time), which also stops a
/// DMA transfer; then, after a multi-block command, tells the card to
/// stop (CMD12, not waited for: the next command waits for the CMD line).
fn recover<C: Controller>(ctl: &mut C, multi_block: bool) {
    let sys_ctrl = ctl.read(Reg::SysCtrl) & !0xff00_0000;
    ctl.write(Reg::SysCtrl, sys_ctrl | SYS_CTRL::RSTC::SET.value);
    ctl.write(Reg::SysCtrl, sys_ctrl | SYS_CTRL::RSTD::SET.value);
    ctl.write(Reg::IntStatus, u32::MAX);
    if multi_block {
        ctl.write(Reg::MixCtrl, ctl.read(Reg::MixCtrl) & !0xff);
        ctl.write(Reg::CmdArg, 0);
        ctl.write(Reg::CmdXfrTyp, command::STOP_TRANSMISSION.encode());
    }
}

/// Waits until the lines `cmd` needs are free, or fails with `PRES_STATE`.
/// The wait is counted in reads ([`tidepool_poll::POLL_LIMIT`]): the I/O
/// path has no clock, and a card holds DAT0 busy after a write for at most
/// 250 ms, which the controller already waited out for transfer complete.
fn wait_lines<C: Controller>(ctl: &C, cmd: Command) -> Result<(), u32> {
    let mut busy = PRES_STATE::CIHB::SET.value;
    if cmd.data || cmd.response == Response::R1b {
        busy |= PRES_STATE::CDIHB::SET.value;
    }
    tidepool_poll::poll_until(|| ctl.read(Reg::PresState) & busy == 0, ())
        .map_err(|()| ctl.read(Reg::PresState))
}

impl<'a, C: Controller> SdCard<'a, C> {
    /// Resets the controller, initialises the card (CMD0, CMD8, ACMD41
    /// with HCS, CMD2, CMD3, CMD9, CMD7, ACMD6, CMD16 for standard
    /// capacity), sets the 4-bit bus and the data clock, and allocates the
    /// descriptor table (coherent, from `dma`'s pool) and the staging
    /// buffer (heap). Polls, with `now` as the clock ([`Options::ticks_per_ms`]).
    ///
    /// # Safety
    ///
    /// The virtual address the DMA layer gives for `dma`'s coherent memory
    /// (its pool's window in `env`, or the linear map for a linear pool) is
    /// mapped, readable and writable normal memory for as long as the
    /// returned card lives, as [`PoolSet::add`](tidepool_dma::PoolSet::add)'s
    /// contract already requires of every pool.
    #[allow(unsafe_code)]
    pub unsafe fn new(
        mut ctl: C,
        mut dma: DmaDevice<'a>,
        env: &mut DmaEnv<'_, 'a>,
        options: Options,
        now: &mut dyn FnMut() -> u64,
    ) -> Result<Self, InitError<'a>> {
        let device = dma.name();
        let mut clock = Clock {
            now,
            ticks_per_ms: options.ticks_per_ms,
        };
        let card = initialise(&mut ctl, device, &options, &mut clock)?;
        let bytes = options.max_request_bytes as usize;
        let staging = SharedMemory::allocate(bytes, PAGE_SIZE as usize)
            .ok_or(InitError::OutOfMemory { device, bytes })?;
        let table = dma
            .alloc_coherent(env, PAGE_SIZE, PAGE_SIZE)
            .map_err(|error| InitError::Dma { error })?;
        // SAFETY: `table.virt()` is where the CPU reaches the coherent page
        // just allocated for this device; it is mapped read-write normal
        // memory (this function's contract), so not 0, and the pool gave it
        // to this allocation only, which the card owns for its lifetime.
        let table_memory = unsafe { SharedMemory::window(table.virt(), PAGE_SIZE as usize) };
        Ok(Self {
            ctl,
            dma,
            card,
            options,
            table,
            table_memory,
            staging,
            slot: Slot::Free,
            generation: 0,
            stats: BlkStats::default(),
            noted: None,
        })
    }

    /// The device's name (its device-tree path).
    pub fn name(&self) -> &'a str {
        self.dma.name()
    }

    /// The flag the kernel's interrupt handler sets (after masking the
    /// controller's signals with [`Usdhc::mask_interrupts`](crate::Usdhc::mask_interrupts)):
    /// what [`BlockDriver::interrupt_noted`] reads and
    /// [`BlockDriver::handle_interrupt`] clears.
    pub fn use_interrupt_flag(&mut self, noted: &'a AtomicBool) {
        self.noted = Some(noted);
    }

    /// What the card said at setup.
    pub fn card(&self) -> &CardInfo {
        &self.card
    }

    /// The DMA address of the descriptor table.
    pub fn table_dma_addr(&self) -> u64 {
        self.table.dma_addr().0
    }

    /// Its counters.
    pub fn stats(&self) -> &BlkStats {
        &self.stats
    }

    /// Its DMA context.
    pub fn dma(&self) -> &DmaDevice<'a> {
        &self.dma
    }

    /// Why writes are refused now, if they are.
    pub fn write_protect(&self) -> Option<WriteProtect> {
        if self.card.csd_write_protected {
            return Some(WriteProtect::Csd);
        }
        let pres =
            LocalRegisterCopy::<u32, PRES_STATE::Register>::new(self.ctl.read(Reg::PresState));
        (!self.options.ignore_write_protect_pin && !pres.is_set(PRES_STATE::WPSPL))
            .then_some(WriteProtect::Switch)
    }

    /// The setup line:
    /// `blk: /soc@0/.../mmc@30b50000 sd capacity=131072 block_size=512 max_request=262144 slots=1 read_only=no card=sdsc csd=1 rca=0x4567 product=QEMU! bus_width=4 clock_hz=25000000 dma=adma2 table=0x...`
    pub fn info_line(&self) -> InfoLine<'_, 'a, C> {
        InfoLine(self)
    }

    /// Unmaps the region of a request that timed out and was reported.
    fn reclaim(&mut self, env: &mut DmaEnv<'_, 'a>) {
        if matches!(self.slot, Slot::TimedOut { reported: true, .. })
            && let Slot::TimedOut { mapping, .. } = core::mem::replace(&mut self.slot, Slot::Free)
            && self.dma.unmap(env, mapping).is_err()
        {
            // The mapping is this device's own and live: only a DMA-layer
            // bug refuses it, and the counter shows it.
            self.stats.errors += 1;
        }
    }

    /// What `request` is (its command, argument and DMA direction), or why
    /// it is refused before the controller sees it.
    fn check(&self, request: &Request<'_>) -> Result<(Completion, Option<Command>), SdError<'a>> {
        let device = self.name();
        let (op, lba, bytes) = match *request {
            Request::Flush => {
                return Ok((
                    Completion {
                        op: Op::Flush,
                        lba: 0,
                        bytes: 0,
                    },
                    None,
                ));
            }
            Request::Read { lba, sectors } => {
                (Op::Read, lba, u64::from(sectors) * u64::from(SECTOR_SIZE))
            }
            Request::Write { lba, data } => {
                if let Some(reason) = self.write_protect() {
                    return Err(SdError::ReadOnly {
                        device,
                        lba,
                        reason,
                    });
                }
                (Op::Write, lba, data.len() as u64)
            }
        };
        let limits = DiskLimits {
            block_sectors: 1,
            max_bytes: self.options.max_request_bytes.into(),
            capacity: self.card.sectors,
        };
        let sectors =
            limits
                .check(lba, bytes)
                .map_err(|error| SdError::Extent { device, op, error })?;
        let cmd = match (op, sectors > 1) {
            (Op::Read, false) => command::READ_SINGLE_BLOCK,
            (Op::Read, true) => command::READ_MULTIPLE_BLOCK,
            (_, false) => command::WRITE_BLOCK,
            (_, true) => command::WRITE_MULTIPLE_BLOCK,
        };
        Ok((
            Completion {
                op,
                lba,
                // At most `max_request_bytes`, a `u32`.
                bytes: bytes as u32,
            },
            Some(cmd),
        ))
    }

    /// Submits a request due by `deadline` and issues its command.
    ///
    /// Refused without touching the card: a write to a write-protected
    /// card, sectors beyond the capacity, empty or partial-sector
    /// transfers, requests larger than the staging buffer, a request while
    /// another is in flight. A flush completes at once: this driver enables
    /// no card cache, so a completed write is already on the card.
    /// Otherwise the data is mapped once (the one `ForDevice` sync), the
    /// descriptor table written, and the command issued.
    pub fn submit(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        request: Request<'_>,
        deadline: Deadline,
    ) -> Result<Token, SdError<'a>> {
        self.reclaim(env);
        let device = self.name();
        if !matches!(self.slot, Slot::Free) {
            return Err(SdError::Busy { device });
        }
        let (completion, cmd) = self.check(&request)?;
        let Some(cmd) = cmd else {
            self.stats.flushes += 1;
            return Ok(self.occupy(Slot::Done {
                request: completion,
                outcome: Ok(()),
            }));
        };
        let Completion { op, lba, bytes } = completion;
        if let Request::Write { data, .. } = request {
            self.staging.write_bytes(0, data);
        }
        let arg = if self.card.high_capacity {
            lba as u32
        } else {
            (lba * u64::from(SECTOR_SIZE)) as u32
        };
        // SAFETY: the bytes are the start of the staging allocation, linear
        // RAM of at least `max_request_bytes` (checked above) that only this
        // card touches: the CPU side while the slot is free, the DMA layer
        // and the controller while it holds the one mapping. The slot stays
        // taken until that mapping is unmapped, after the controller's DMA
        // completed or was stopped by a line reset; the allocation is freed
        // only with the card, after `shutdown` resets the controller.
        #[allow(unsafe_code)]
        let cpu = unsafe { CpuBuffer::new(self.staging.virt(), u64::from(bytes)) };
        let direction = if op == Op::Read {
            DmaDirection::FromDevice
        } else {
            DmaDirection::ToDevice
        };
        let mapping = self
            .dma
            .map(env, cpu, direction)
            .map_err(|error| SdError::Dma { op, lba, error })?;
        let table = &mut self.table_memory;
        let described = adma::describe(
            mapping.dma_addr().0,
            bytes,
            PAGE_SIZE as usize / DESCRIPTOR_BYTES,
            |index, descriptor| table.write_bytes(index * DESCRIPTOR_BYTES, &descriptor),
        );
        let refused = match described {
            Err(error) => Some(SdError::Adma {
                device,
                op,
                lba,
                error,
            }),
            Ok(_) => wait_lines(&self.ctl, cmd)
                .err()
                .map(|pres_state| SdError::LineBusy {
                    device,
                    cmd: cmd.index,
                    pres_state,
                }),
        };
        if let Some(error) = refused {
            if let Err(error) = self.dma.unmap(env, mapping) {
                return Err(SdError::Dma { op, lba, error });
            }
            return Err(error);
        }
        let ctl = &mut self.ctl;
        ctl.write(Reg::IntStatus, u32::MAX);
        ctl.write(Reg::AdmaSysAddr, self.table.dma_addr().0 as u32);
        let blocks = bytes / SECTOR_SIZE;
        ctl.write(Reg::BlkAtt, SECTOR_SIZE | blocks << 16);
        let multi = blocks > 1;
        let mut mix =
            LocalRegisterCopy::<u32, MIX_CTRL::Register>::new(ctl.read(Reg::MixCtrl) & !0xff);
        mix.modify(
            MIX_CTRL::DMAEN::SET
                + MIX_CTRL::BCEN::SET
                + MIX_CTRL::AC12EN.val(u32::from(multi))
                + MIX_CTRL::MSBSEL.val(u32::from(multi))
                + MIX_CTRL::DTDSEL.val(u32::from(op == Op::Read)),
        );
        ctl.write(Reg::MixCtrl, mix.get());
        ctl.write(Reg::CmdArg, arg);
        ctl.write(Reg::IntSignalEn, SIGNAL_ENABLES);
        // The descriptor table (non-cacheable or coherent memory) and the
        // mapped data must be visible to the controller, which is not a
        // CPU, before the command starts its DMA.
        ctl.barrier(Barrier::DmaWrite);
        ctl.write(Reg::CmdXfrTyp, cmd.encode());
        Ok(self.occupy(Slot::InFlight {
            mapping,
            request: completion,
            cmd,
            arg,
            deadline,
            seen: 0,
        }))
    }

    fn occupy(&mut self, slot: Slot<'a>) -> Token {
        self.generation = self.generation.wrapping_add(1);
        self.slot = slot;
        Token::new(0, self.generation)
    }

    fn token(&self) -> Token {
        Token::new(0, self.generation)
    }

    /// Takes what the controller reported: reads and clears `INT_STATUS`;
    /// on an error, resets the lines (stopping the DMA) and stops a
    /// multi-block transfer; once the command and its data are complete
    /// (or failed), unmaps the data (the `ForCpu` sync). With the request
    /// still in flight, enables the interrupt signals again (the kernel's
    /// handler masks them). Returns the token if the request finished.
    pub fn poll(&mut self, env: &mut DmaEnv<'_, 'a>) -> Completions {
        self.reclaim(env);
        let mut completions = Completions::new();
        let device = self.name();
        let Slot::InFlight {
            request,
            cmd,
            arg,
            seen,
            ..
        } = &mut self.slot
        else {
            return completions;
        };
        let (request, cmd, arg) = (*request, *cmd, *arg);
        let status = self.ctl.read(Reg::IntStatus);
        if status != 0 {
            self.ctl.write(Reg::IntStatus, status);
        }
        *seen |= status;
        let seen = *seen;
        let outcome = if seen & ERROR_BITS != 0 {
            let registers = registers(&self.ctl, seen);
            recover(
                &mut self.ctl,
                cmd == command::READ_MULTIPLE_BLOCK || cmd == command::WRITE_MULTIPLE_BLOCK,
            );
            Some(Err(SdError::Controller {
                device,
                cmd: cmd.index,
                arg,
                registers,
            }))
        } else if seen & INT::CC::SET.value != 0 && seen & INT::TC::SET.value != 0 {
            let status = CardStatus(self.ctl.read(Reg::CmdRsp(0)));
            if status.has_error() {
                Some(Err(SdError::Card {
                    device,
                    cmd: cmd.index,
                    arg,
                    status,
                }))
            } else {
                Some(Ok(()))
            }
        } else {
            None
        };
        let Some(outcome) = outcome else {
            self.ctl.write(Reg::IntSignalEn, SIGNAL_ENABLES);
            return completions;
        };
        let Slot::InFlight { mapping, .. } = core::mem::replace(&mut self.slot, Slot::Free) else {
            unreachable!("the slot was in flight just above");
        };
        // The data the controller wrote is read (unmapped, copied) only
        // after the status that says it is complete.
        self.ctl.barrier(Barrier::DmaRead);
        let outcome = match self.dma.unmap(env, mapping) {
            Err(error) => Err(SdError::Dma {
                op: request.op,
                lba: request.lba,
                error,
            }),
            Ok(()) => outcome,
        };
        match outcome {
            Ok(()) => self.stats.count_success(request),
            Err(_) => self.stats.errors += 1,
        }
        self.slot = Slot::Done { request, outcome };
        completions.push(self.token());
        completions
    }

    /// Times out the request in flight if its deadline is at or before
    /// `now`: resets the CMD and DAT lines (which stops the controller's
    /// DMA, so the region can be unmapped) and stops a multi-block
    /// transfer. Returns its token ([`Self::finish`] gives
    /// [`SdError::Timeout`]).
    pub fn expire(&mut self, now: u64) -> Completions {
        let mut completions = Completions::new();
        let Slot::InFlight {
            deadline,
            cmd,
            arg,
            seen,
            ..
        } = &self.slot
        else {
            return completions;
        };
        if deadline.0 > now {
            return completions;
        }
        let (cmd, arg) = (*cmd, *arg);
        let registers = registers(&self.ctl, *seen | self.ctl.read(Reg::IntStatus));
        recover(
            &mut self.ctl,
            cmd == command::READ_MULTIPLE_BLOCK || cmd == command::WRITE_MULTIPLE_BLOCK,
        );
        let Slot::InFlight { mapping, .. } = core::mem::replace(&mut self.slot, Slot::Free) else {
            unreachable!("the slot was in flight just above");
        };
        self.stats.timeouts += 1;
        self.slot = Slot::TimedOut {
            mapping,
            error: SdError::Timeout {
                device: self.name(),
                cmd: cmd.index,
                arg,
                registers,
            },
            reported: false,
        };
        completions.push(self.token());
        completions
    }

    /// The outcome of a request, once: `Pending` while the card holds it.
    /// A successful read's data is lent to `data`, in place in the staging
    /// buffer, which the controller's DMA filled and the completion
    /// unmapped (the `ForCpu` sync) before the token became ready; the slot
    /// is free again only after the borrow.
    pub fn finish(
        &mut self,
        token: Token,
        data: &mut dyn FnMut(&[u8]),
    ) -> Poll<Result<Completion, SdError<'a>>> {
        let unknown = Poll::Ready(Err(SdError::UnknownToken {
            device: self.name(),
            token,
        }));
        if token != self.token() {
            return unknown;
        }
        match &mut self.slot {
            Slot::Free | Slot::TimedOut { reported: true, .. } => unknown,
            Slot::InFlight { .. } => Poll::Pending,
            Slot::TimedOut {
                error, reported, ..
            } => {
                *reported = true;
                Poll::Ready(Err(*error))
            }
            Slot::Done { request, outcome } => {
                let (request, outcome) = (*request, *outcome);
                if outcome.is_ok() && request.op == Op::Read {
                    // SAFETY: the slot is done: the staging buffer's one
                    // mapping was unmapped when the request completed, and
                    // it is mapped again only by a submission, which needs
                    // the slot free (below, after the slice is gone) and
                    // `&mut self`, held for this whole call.
                    #[allow(unsafe_code)]
                    data(unsafe { self.staging.bytes(0, request.bytes as usize) });
                }
                self.slot = Slot::Free;
                Poll::Ready(outcome.map(|()| request))
            }
        }
    }

    /// Resets the controller (which stops any DMA), unmaps a region it
    /// still held, frees the descriptor table, and gives back the DMA
    /// context.
    pub fn shutdown(mut self, env: &mut DmaEnv<'_, 'a>) -> Result<DmaDevice<'a>, SdError<'a>> {
        let mut reset = LocalRegisterCopy::<u32, SYS_CTRL::Register>::new(0);
        reset.modify(SYS_CTRL::RSTA::SET);
        self.ctl.write(Reg::SysCtrl, reset.get());
        match core::mem::replace(&mut self.slot, Slot::Free) {
            Slot::InFlight {
                mapping, request, ..
            } => {
                self.dma.unmap(env, mapping).map_err(|error| SdError::Dma {
                    op: request.op,
                    lba: request.lba,
                    error,
                })?;
            }
            Slot::TimedOut { mapping, .. } => {
                self.dma.unmap(env, mapping).map_err(|error| SdError::Dma {
                    op: Op::Read,
                    lba: 0,
                    error,
                })?;
            }
            Slot::Free | Slot::Done { .. } => {}
        }
        let Self { mut dma, table, .. } = self;
        dma.free_coherent(env, table)
            .map_err(|error| SdError::Dma {
                op: Op::Read,
                lba: 0,
                error,
            })?;
        Ok(dma)
    }
}

/// Sends one command during setup and waits for it (polled): its response
/// words.
fn send<'a, C: Controller>(
    ctl: &mut C,
    device: &'a str,
    clock: &mut Clock<'_>,
    cmd: Command,
    arg: u32,
) -> Result<[u32; 4], SdError<'a>> {
    wait_lines(ctl, cmd).map_err(|pres_state| SdError::LineBusy {
        device,
        cmd: cmd.index,
        pres_state,
    })?;
    ctl.write(Reg::IntStatus, u32::MAX);
    ctl.write(Reg::MixCtrl, ctl.read(Reg::MixCtrl) & !0xff);
    ctl.write(Reg::CmdArg, arg);
    ctl.write(Reg::CmdXfrTyp, cmd.encode());
    let deadline = clock.deadline(COMMAND_TIMEOUT_MS);
    loop {
        let status = ctl.read(Reg::IntStatus);
        if status & ERROR_BITS != 0 {
            let registers = registers(ctl, status);
            recover(ctl, false);
            return Err(SdError::Controller {
                device,
                cmd: cmd.index,
                arg,
                registers,
            });
        }
        if status & INT::CC::SET.value != 0 {
            ctl.write(Reg::IntStatus, status);
            break;
        }
        if clock.passed(deadline) {
            let registers = registers(ctl, status);
            recover(ctl, false);
            return Err(SdError::Timeout {
                device,
                cmd: cmd.index,
                arg,
                registers,
            });
        }
    }
    if cmd.response == Response::R1b {
        // The card signals busy on DAT0 until it is done.
        while ctl.read(Reg::PresState) & (PRES_STATE::CDIHB::SET.value | PRES_STATE::DLA::SET.value)
            != 0
        {
            if clock.passed(deadline) {
                let registers = registers(ctl, 0);
                return Err(SdError::Timeout {
                    device,
                    cmd: cmd.index,
                    arg,
                    registers,
                });
            }
        }
    }
    let words = [0, 1, 2, 3].map(|n| ctl.read(Reg::CmdRsp(n)));
    if matches!(cmd.response, Response::R1 | Response::R1b) {
        let status = CardStatus(words[0]);
        if status.has_error() {
            return Err(SdError::Card {
                device,
                cmd: cmd.index,
                arg,
                status,
            });
        }
    }
    Ok(words)
}

/// Sends an application command: CMD55 with the card's address, then it.
fn send_app<'a, C: Controller>(
    ctl: &mut C,
    device: &'a str,
    clock: &mut Clock<'_>,
    rca: u16,
    cmd: Command,
    arg: u32,
) -> Result<[u32; 4], SdError<'a>> {
    let app = send(ctl, device, clock, command::APP_CMD, u32::from(rca) << 16)?;
    if app[0] & CardStatus::APP_CMD == 0 {
        return Err(SdError::Card {
            device,
            cmd: command::APP_CMD.index,
            arg: u32::from(rca) << 16,
            status: CardStatus(app[0]),
        });
    }
    send(ctl, device, clock, cmd, arg)
}

/// Sets the card clock and waits for it to be stable.
fn set_clock<'a, C: Controller>(
    ctl: &mut C,
    device: &'a str,
    clock: &mut Clock<'_>,
    setting: ClockSetting,
) -> Result<(), InitError<'a>> {
    let sys_ctrl = setting.apply(ctl.read(Reg::SysCtrl));
    ctl.write(Reg::SysCtrl, sys_ctrl);
    let deadline = clock.deadline(COMMAND_TIMEOUT_MS);
    while ctl.read(Reg::PresState) & PRES_STATE::SDSTB::SET.value == 0 {
        if clock.passed(deadline) {
            return Err(InitError::ClockUnstable {
                device,
                pres_state: ctl.read(Reg::PresState),
            });
        }
    }
    Ok(())
}

/// The controller reset and the card's identification sequence.
fn initialise<'a, C: Controller>(
    ctl: &mut C,
    device: &'a str,
    options: &Options,
    clock: &mut Clock<'_>,
) -> Result<CardInfo, InitError<'a>> {
    let mut reset = LocalRegisterCopy::<u32, SYS_CTRL::Register>::new(0);
    reset.modify(SYS_CTRL::RSTA::SET);
    ctl.write(Reg::SysCtrl, reset.get());
    let deadline = clock.deadline(COMMAND_TIMEOUT_MS);
    while ctl.read(Reg::SysCtrl) & SYS_CTRL::RSTA::SET.value != 0 {
        if clock.passed(deadline) {
            return Err(InitError::ResetTimeout {
                device,
                sys_ctrl: ctl.read(Reg::SysCtrl),
            });
        }
    }
    ctl.write(Reg::WtmkLvl, WATERMARKS);
    let mut prot = LocalRegisterCopy::<u32, PROT_CTRL::Register>::new(0);
    prot.modify(PROT_CTRL::DTW::OneBit + PROT_CTRL::EMODE::LittleEndian + PROT_CTRL::DMASEL::Adma2);
    ctl.write(Reg::ProtCtrl, prot.get());
    ctl.write(
        Reg::VendSpec,
        ctl.read(Reg::VendSpec) | VEND_SPEC::FRC_SDCLK_ON::SET.value,
    );
    ctl.write(Reg::IntStatusEn, STATUS_ENABLES);
    ctl.write(Reg::IntSignalEn, 0);
    ctl.write(Reg::IntStatus, u32::MAX);
    set_clock(
        ctl,
        device,
        clock,
        ClockSetting::for_target(options.base_clock_hz, IDENTIFICATION_HZ),
    )?;
    let mut inita = LocalRegisterCopy::<u32, SYS_CTRL::Register>::new(ctl.read(Reg::SysCtrl));
    inita.modify(SYS_CTRL::INITA::SET);
    ctl.write(Reg::SysCtrl, inita.get());

    send(ctl, device, clock, command::GO_IDLE_STATE, 0)?;
    // CMD8: a card of version 2.00 or later echoes the pattern; an older
    // one does not answer (command timeout), and then cannot be high
    // capacity.
    let version2 = match send(
        ctl,
        device,
        clock,
        command::SEND_IF_COND,
        command::IF_COND_ARG,
    ) {
        Ok(r7) => {
            if r7[0] & 0xfff != command::IF_COND_ARG {
                return Err(InitError::IfCondRejected {
                    device,
                    response: r7[0],
                });
            }
            true
        }
        Err(SdError::Controller { registers, .. })
            if registers.int_status & INT::CTOE::SET.value != 0 =>
        {
            false
        }
        Err(error) => return Err(error.into()),
    };
    let arg = command::OCR_VOLTAGE_WINDOW | if version2 { command::OCR_HCS } else { 0 };
    let deadline = clock.deadline(READY_TIMEOUT_MS);
    let ocr = loop {
        let ocr = send_app(ctl, device, clock, 0, command::SD_SEND_OP_COND, arg)?[0];
        if ocr & command::OCR_READY != 0 {
            break ocr;
        }
        if clock.passed(deadline) {
            return Err(InitError::NeverReady { device, ocr });
        }
    };
    let high_capacity = version2 && ocr & command::OCR_HCS != 0;
    let cid = r2_bits(send(ctl, device, clock, command::ALL_SEND_CID, 0)?);
    let pnm = (cid >> 64) as u64;
    let product = [4, 3, 2, 1, 0].map(|n| (pnm >> (8 * n)) as u8);
    let rca = (send(ctl, device, clock, command::SEND_RELATIVE_ADDR, 0)?[0] >> 16) as u16;
    let rca_arg = u32::from(rca) << 16;
    let csd = Csd::decode(r2_bits(send(
        ctl,
        device,
        clock,
        command::SEND_CSD,
        rca_arg,
    )?))
    .map_err(|error| InitError::Csd { device, error })?;
    send(ctl, device, clock, command::SELECT_CARD, rca_arg)?;
    send_app(ctl, device, clock, rca, command::SET_BUS_WIDTH, 2)?;
    prot.modify(PROT_CTRL::DTW::FourBit);
    ctl.write(Reg::ProtCtrl, prot.get());
    if !high_capacity {
        send(ctl, device, clock, command::SET_BLOCKLEN, SECTOR_SIZE)?;
    }
    let data_clock = ClockSetting::for_target(options.base_clock_hz, options.bus_hz);
    set_clock(ctl, device, clock, data_clock)?;
    Ok(CardInfo {
        high_capacity,
        sectors: csd.sectors,
        csd_version: csd.version,
        rca,
        product,
        clock_hz: data_clock.hz,
        csd_write_protected: csd.write_protected,
    })
}

/// See [`SdCard::info_line`].
pub struct InfoLine<'d, 'a, C: Controller>(&'d SdCard<'a, C>);

impl<C: Controller> fmt::Display for InfoLine<'_, '_, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sd = self.0;
        let card = &sd.card;
        write!(
            f,
            "blk: {} sd capacity={} block_size={SECTOR_SIZE} max_request={} slots=1 read_only=",
            sd.name(),
            card.sectors,
            sd.options.max_request_bytes,
        )?;
        match sd.write_protect() {
            None => f.write_str("no")?,
            Some(WriteProtect::Switch) => f.write_str("switch")?,
            Some(WriteProtect::Csd) => f.write_str("csd")?,
        }
        write!(
            f,
            " card={} csd={} rca={:#06x} product=",
            if card.high_capacity { "sdhc" } else { "sdsc" },
            card.csd_version + 1,
            card.rca
        )?;
        for byte in card.product {
            let c = if byte.is_ascii_graphic() {
                byte as char
            } else {
                '?'
            };
            write!(f, "{c}")?;
        }
        write!(
            f,
            " bus_width=4 clock_hz={} dma=adma2 table={:#x}",
            card.clock_hz,
            sd.table.dma_addr().0
        )
    }
}

impl<'a, C: Controller> BlockDriver<'a> for SdCard<'a, C> {
    type Error = SdError<'a>;

    fn name(&self) -> &'a str {
        SdCard::name(self)
    }

    fn capacity(&self) -> u64 {
        self.card.sectors
    }

    fn max_request_bytes(&self) -> u32 {
        self.options.max_request_bytes
    }

    fn slots(&self) -> usize {
        1
    }

    fn in_flight(&self) -> usize {
        usize::from(matches!(self.slot, Slot::InFlight { .. }))
    }

    fn submit(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        request: Request<'_>,
        deadline: Deadline,
    ) -> Result<Token, SdError<'a>> {
        SdCard::submit(self, env, request, deadline)
    }

    /// Nothing to do: the controller takes one request at a time, and
    /// `submit` issues its command at once (there is no batch to end).
    fn kick(&mut self, _env: &mut DmaEnv<'_, 'a>) {}

    fn is_busy(&self, error: &SdError<'a>) -> bool {
        match error {
            // Waiting helps only while the request holding the slot is in
            // flight; a finished one waits for its owner's `finish`.
            SdError::Busy { .. } => matches!(self.slot, Slot::InFlight { .. }),
            SdError::Dma {
                error:
                    DmaError::Pool {
                        error: PoolError::Exhausted { .. },
                        ..
                    },
                ..
            } => !matches!(self.slot, Slot::Free),
            _ => false,
        }
    }

    fn is_full(&self, error: &SdError<'a>) -> bool {
        matches!(
            error,
            SdError::Busy { .. }
                | SdError::Dma {
                    error: DmaError::Pool {
                        error: PoolError::Exhausted { .. },
                        ..
                    },
                    ..
                }
        )
    }

    fn no_free_slot(&self) -> SdError<'a> {
        SdError::NoFreeSlot {
            device: self.name(),
        }
    }

    fn interrupt_noted(&self) -> bool {
        self.noted
            .is_some_and(|noted| noted.load(Ordering::Acquire))
    }

    /// The controller reports nothing but completions and errors, which
    /// [`SdCard::poll`] takes: no notices.
    fn handle_interrupt(
        &mut self,
        env: &mut DmaEnv<'_, 'a>,
        _notice: &mut dyn FnMut(Notice<'_>),
    ) -> Completions {
        if let Some(noted) = self.noted {
            noted.store(false, Ordering::Release);
        }
        SdCard::poll(self, env)
    }

    fn has_completions(&self) -> bool {
        matches!(self.slot, Slot::InFlight { .. })
            && self.ctl.read(Reg::IntStatus) & (INT::TC::SET.value | ERROR_BITS) != 0
    }

    fn poll(&mut self, env: &mut DmaEnv<'_, 'a>) -> Completions {
        SdCard::poll(self, env)
    }

    fn expire(&mut self, now: u64) -> Completions {
        SdCard::expire(self, now)
    }

    /// Nothing to change: the card has one request in flight, whose one
    /// interrupt the kernel's handler masks and notes; a polling waiter
    /// finds the completion in the status register either way.
    fn set_interrupts(&mut self, _enabled: bool) {}

    /// The card's data buffers are the DMA layer's mappings, unmapped at
    /// completion: nothing to give back here.
    fn finish(
        &mut self,
        _env: &mut DmaEnv<'_, 'a>,
        token: Token,
        data: &mut dyn FnMut(&[u8]),
    ) -> Poll<Result<Completion, SdError<'a>>> {
        SdCard::finish(self, token, data)
    }

    fn stats(&self) -> &BlkStats {
        &self.stats
    }

    fn dma(&self) -> &DmaDevice<'a> {
        &self.dma
    }
}
