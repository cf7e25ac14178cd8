//! The driver's errors: every one names the device, and those from the
//! card or the controller name the command, its argument and the status
//! registers.

use core::fmt;

use tidepool_block::{ExtentError, Op, Token, write_names};
use tidepool_dma::DmaError;

use crate::adma::AdmaError;
use crate::card::CsdError;
use crate::command::CardStatus;
use crate::regs::INT;

/// The controller's status registers at the time of an error.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Registers {
    /// `INT_STATUS` (what the controller reported).
    pub int_status: u32,
    /// `PRES_STATE`.
    pub pres_state: u32,
    /// `AUTOCMD12_ERR_STATUS`.
    pub autocmd12: u32,
    /// `ADMA_ERR_STATUS`.
    pub adma: u32,
}

impl Registers {
    /// Whether the controller reported a command timeout: no card answered.
    pub fn is_command_timeout(&self) -> bool {
        self.int_status & INT::CTOE::SET.value != 0
    }
}

impl fmt::Display for Registers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "int_status={:#010x} pres_state={:#010x} autocmd12_err={:#x} adma_err={:#x}",
            self.int_status, self.pres_state, self.autocmd12, self.adma
        )?;
        const NAMES: [(u32, &str); 12] = [
            (16, "command-timeout"),
            (17, "command-crc"),
            (18, "command-end-bit"),
            (19, "command-index"),
            (20, "data-timeout"),
            (21, "data-crc"),
            (22, "data-end-bit"),
            (24, "auto-cmd12"),
            (25, "adma"),
            (26, "tuning"),
            (28, "dma"),
            (7, "card-removed"),
        ];
        let set = NAMES
            .iter()
            .filter(|&&(bit, _)| self.int_status & (1 << bit) != 0);
        write_names(f, set.map(|&(_, name)| name))
    }
}

/// Why writes are refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WriteProtect {
    /// The card's write-protect switch (`PRES_STATE.WPSPL` low).
    Switch,
    /// The card's CSD (`PERM_WRITE_PROTECT` or `TMP_WRITE_PROTECT`).
    Csd,
}

impl fmt::Display for WriteProtect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Switch => "write-protect switch",
            Self::Csd => "CSD write protection",
        })
    }
}

/// Why a command or a request failed, or was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SdError<'a> {
    /// The controller reported an error for a command or its data.
    Controller {
        /// The device.
        device: &'a str,
        /// The command index.
        cmd: u8,
        /// Its argument.
        arg: u32,
        /// The status registers.
        registers: Registers,
    },
    /// The card's R1 status reported an error.
    Card {
        /// The device.
        device: &'a str,
        /// The command index.
        cmd: u8,
        /// Its argument.
        arg: u32,
        /// The card status.
        status: CardStatus,
    },
    /// A command (during setup) or a request did not complete in time.
    Timeout {
        /// The device.
        device: &'a str,
        /// The command index.
        cmd: u8,
        /// Its argument.
        arg: u32,
        /// The status registers when it was given up.
        registers: Registers,
    },
    /// The CMD or DAT lines stayed busy before a command could be issued.
    LineBusy {
        /// The device.
        device: &'a str,
        /// The command that waited.
        cmd: u8,
        /// `PRES_STATE`.
        pres_state: u32,
    },
    /// A write to a write-protected card, refused before the card saw it.
    ReadOnly {
        /// The device.
        device: &'a str,
        /// The first sector of the write.
        lba: u64,
        /// What protects it.
        reason: WriteProtect,
    },
    /// A read or write that does not fit the card: empty, not whole
    /// 512-byte sectors, larger than the driver's staging buffer, or beyond
    /// its capacity.
    Extent {
        /// The device.
        device: &'a str,
        /// The operation.
        op: Op,
        /// How it does not fit.
        error: ExtentError,
    },
    /// A request is already in flight (the card takes one at a time).
    Busy {
        /// The device.
        device: &'a str,
    },
    /// A request kept the card past a whole request timeout while another
    /// waited to be submitted.
    NoFreeSlot {
        /// The device.
        device: &'a str,
    },
    /// The request's DMA region cannot be described to the controller.
    Adma {
        /// The device.
        device: &'a str,
        /// The operation.
        op: Op,
        /// Its first sector.
        lba: u64,
        /// Why.
        error: AdmaError,
    },
    /// The DMA layer refused to map or unmap the request's region.
    Dma {
        /// The operation.
        op: Op,
        /// Its first sector.
        lba: u64,
        /// The DMA layer's error (names the device).
        error: DmaError<'a>,
    },
    /// A token that is not (or no longer) a request of this device.
    UnknownToken {
        /// The device.
        device: &'a str,
        /// The token.
        token: Token,
    },
}

impl fmt::Display for SdError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Controller {
                device,
                cmd,
                arg,
                registers,
            } => write!(
                f,
                "{device}: CMD{cmd} arg={arg:#x} failed in the controller: {registers}"
            ),
            Self::Card {
                device,
                cmd,
                arg,
                status,
            } => write!(
                f,
                "{device}: CMD{cmd} arg={arg:#x} failed in the card: status={status}"
            ),
            Self::Timeout {
                device,
                cmd,
                arg,
                registers,
            } => write!(f, "{device}: CMD{cmd} arg={arg:#x} timed out: {registers}"),
            Self::LineBusy {
                device,
                cmd,
                pres_state,
            } => write!(
                f,
                "{device}: CMD{cmd} not issued: CMD/DAT lines stay busy (pres_state={pres_state:#010x})"
            ),
            Self::ReadOnly {
                device,
                lba,
                reason,
            } => write!(
                f,
                "{device}: write at sector {lba} refused: the card is write-protected ({reason})"
            ),
            Self::Extent { device, op, error } => write!(f, "{device}: {op}: {error}"),
            Self::Busy { device } => write!(f, "{device}: a request is in flight"),
            Self::NoFreeSlot { device } => write!(
                f,
                "{device}: the request in flight kept the card past the wait for it"
            ),
            Self::Adma {
                device,
                op,
                lba,
                error,
            } => write!(f, "{device}: {op} at sector {lba}: {error}"),
            Self::Dma { op, lba, error } => write!(f, "{op} at sector {lba}: {error}"),
            Self::UnknownToken { device, token } => write!(f, "{device}: unknown {token}"),
        }
    }
}

/// Why the card could not be set up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InitError<'a> {
    /// The software reset did not finish.
    ResetTimeout {
        /// The device.
        device: &'a str,
        /// `SYS_CTRL`.
        sys_ctrl: u32,
    },
    /// The SD clock did not become stable.
    ClockUnstable {
        /// The device.
        device: &'a str,
        /// `PRES_STATE`.
        pres_state: u32,
    },
    /// A command of the initialisation sequence failed (no card answers
    /// CMD0..ACMD41 with a command timeout).
    Command(SdError<'a>),
    /// CMD8's echo did not match: the card does not accept the voltage.
    IfCondRejected {
        /// The device.
        device: &'a str,
        /// The R7 response.
        response: u32,
    },
    /// ACMD41 never reported the card ready.
    NeverReady {
        /// The device.
        device: &'a str,
        /// The last OCR.
        ocr: u32,
    },
    /// The CSD cannot be used.
    Csd {
        /// The device.
        device: &'a str,
        /// Why.
        error: CsdError,
    },
    /// The heap could not give the staging buffer.
    OutOfMemory {
        /// The device.
        device: &'a str,
        /// Bytes asked for.
        bytes: usize,
    },
    /// The DMA layer refused the descriptor table.
    Dma {
        /// The DMA layer's error (names the device).
        error: DmaError<'a>,
    },
}

impl<'a> From<SdError<'a>> for InitError<'a> {
    fn from(error: SdError<'a>) -> Self {
        Self::Command(error)
    }
}

impl fmt::Display for InitError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ResetTimeout { device, sys_ctrl } => write!(
                f,
                "{device}: controller reset did not finish (sys_ctrl={sys_ctrl:#010x})"
            ),
            Self::ClockUnstable { device, pres_state } => write!(
                f,
                "{device}: SD clock not stable (pres_state={pres_state:#010x})"
            ),
            Self::Command(error) => write!(f, "card initialisation: {error}"),
            Self::IfCondRejected { device, response } => write!(
                f,
                "{device}: CMD8 echo {response:#x} does not match 0x1aa: voltage not accepted"
            ),
            Self::NeverReady { device, ocr } => {
                write!(f, "{device}: ACMD41 never reported ready (ocr={ocr:#010x})")
            }
            Self::Csd { device, error } => write!(f, "{device}: {error}"),
            Self::OutOfMemory { device, bytes } => {
                write!(f, "{device}: no heap for a {bytes}-byte staging buffer")
            }
            Self::Dma { error } => write!(f, "ADMA2 table allocation refused: {error}"),
        }
    }
}
