//! SD commands (SD Physical Layer Simplified Specification): what each
//! one expects back, how it is encoded into `CMD_XFR_TYP`, and the card
//! status of an R1 response.

use core::fmt;

use tidepool_block::write_names;
use tock_registers::LocalRegisterCopy;
use tock_registers::fields::FieldValue;

use crate::regs::CMD_XFR_TYP;

/// The response a command expects.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Response {
    /// None (CMD0).
    None,
    /// R1: 48 bits, card status, CRC and index checked.
    R1,
    /// R1b: R1, then the card holds DAT0 busy.
    R1b,
    /// R2: 136 bits (CID, CSD), CRC checked, no index.
    R2,
    /// R3: 48 bits, OCR, neither CRC nor index.
    R3,
    /// R6: 48 bits, published RCA and status bits.
    R6,
    /// R7: 48 bits, interface condition echo.
    R7,
}

/// A command as the controller sends it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Command {
    /// The index (`ACMD`s are sent after CMD55).
    pub index: u8,
    /// What comes back.
    pub response: Response,
    /// Whether a data transfer follows on the DAT lines.
    pub data: bool,
}

impl Command {
    const fn new(index: u8, response: Response) -> Self {
        Self {
            index,
            response,
            data: false,
        }
    }

    const fn with_data(index: u8) -> Self {
        Self {
            index,
            response: Response::R1,
            data: true,
        }
    }

    /// The `CMD_XFR_TYP` value that issues it.
    pub fn encode(self) -> u32 {
        let response = match self.response {
            Response::None => CMD_XFR_TYP::RSPTYP::None,
            Response::R2 => CMD_XFR_TYP::RSPTYP::Long136 + CMD_XFR_TYP::CCCEN::SET,
            Response::R3 => CMD_XFR_TYP::RSPTYP::Short48,
            Response::R1b => {
                CMD_XFR_TYP::RSPTYP::Short48Busy + CMD_XFR_TYP::CCCEN::SET + CMD_XFR_TYP::CICEN::SET
            }
            Response::R1 | Response::R6 | Response::R7 => {
                CMD_XFR_TYP::RSPTYP::Short48 + CMD_XFR_TYP::CCCEN::SET + CMD_XFR_TYP::CICEN::SET
            }
        };
        let kind = if self.index == STOP_TRANSMISSION.index {
            CMD_XFR_TYP::CMDTYP::Abort
        } else {
            CMD_XFR_TYP::CMDTYP::Normal
        };
        let data: FieldValue<u32, CMD_XFR_TYP::Register> = if self.data {
            CMD_XFR_TYP::DPSEL::SET
        } else {
            CMD_XFR_TYP::DPSEL::CLEAR
        };
        let mut value = LocalRegisterCopy::<u32, CMD_XFR_TYP::Register>::new(0);
        value.write(CMD_XFR_TYP::CMDINX.val(u32::from(self.index)) + response + kind + data);
        value.get()
    }
}

/// CMD0 GO_IDLE_STATE.
pub const GO_IDLE_STATE: Command = Command::new(0, Response::None);
/// CMD2 ALL_SEND_CID.
pub const ALL_SEND_CID: Command = Command::new(2, Response::R2);
/// CMD3 SEND_RELATIVE_ADDR.
pub const SEND_RELATIVE_ADDR: Command = Command::new(3, Response::R6);
/// ACMD6 SET_BUS_WIDTH.
pub const SET_BUS_WIDTH: Command = Command::new(6, Response::R1);
/// CMD7 SELECT_CARD.
pub const SELECT_CARD: Command = Command::new(7, Response::R1b);
/// CMD8 SEND_IF_COND.
pub const SEND_IF_COND: Command = Command::new(8, Response::R7);
/// CMD9 SEND_CSD.
pub const SEND_CSD: Command = Command::new(9, Response::R2);
/// CMD12 STOP_TRANSMISSION.
pub const STOP_TRANSMISSION: Command = Command::new(12, Response::R1b);
/// CMD16 SET_BLOCKLEN.
pub const SET_BLOCKLEN: Command = Command::new(16, Response::R1);
/// CMD17 READ_SINGLE_BLOCK.
pub const READ_SINGLE_BLOCK: Command = Command::with_data(17);
/// CMD18 READ_MULTIPLE_BLOCK.
pub const READ_MULTIPLE_BLOCK: Command = Command::with_data(18);
/// CMD24 WRITE_BLOCK.
pub const WRITE_BLOCK: Command = Command::with_data(24);
/// CMD25 WRITE_MULTIPLE_BLOCK.
pub const WRITE_MULTIPLE_BLOCK: Command = Command::with_data(25);
/// ACMD41 SD_SEND_OP_COND.
pub const SD_SEND_OP_COND: Command = Command::new(41, Response::R3);
/// CMD55 APP_CMD.
pub const APP_CMD: Command = Command::new(55, Response::R1);

/// CMD8's argument: 2.7-3.6 V and the check pattern 0xAA.
pub const IF_COND_ARG: u32 = 0x1aa;
/// ACMD41's voltage window: 2.7-3.6 V (OCR bits 23:15).
pub const OCR_VOLTAGE_WINDOW: u32 = 0x00ff_8000;
/// OCR bit 30: host supports / card is high capacity (CCS).
pub const OCR_HCS: u32 = 1 << 30;
/// OCR bit 31: the card finished powering up.
pub const OCR_READY: u32 = 1 << 31;

/// The card status of an R1 response (SD spec §4.10.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CardStatus(pub u32);

impl CardStatus {
    /// The bits that report an error.
    pub const ERRORS: u32 = 0xfdf9_8008;
    /// `APP_CMD`: the card will take the next command as an ACMD.
    pub const APP_CMD: u32 = 1 << 5;

    /// Whether any error bit is set.
    pub const fn has_error(self) -> bool {
        self.0 & Self::ERRORS != 0
    }

    /// `CURRENT_STATE` (bits 12:9).
    pub const fn state(self) -> u32 {
        (self.0 >> 9) & 0xf
    }
}

/// The error bits of a card status, by name.
const ERROR_NAMES: [(u32, &str); 15] = [
    (31, "OUT_OF_RANGE"),
    (30, "ADDRESS_ERROR"),
    (29, "BLOCK_LEN_ERROR"),
    (28, "ERASE_SEQ_ERROR"),
    (27, "ERASE_PARAM"),
    (26, "WP_VIOLATION"),
    (24, "LOCK_UNLOCK_FAILED"),
    (23, "COM_CRC_ERROR"),
    (22, "ILLEGAL_COMMAND"),
    (21, "CARD_ECC_FAILED"),
    (20, "CC_ERROR"),
    (19, "ERROR"),
    (16, "CSD_OVERWRITE"),
    (15, "WP_ERASE_SKIP"),
    (3, "AKE_SEQ_ERROR"),
];

impl fmt::Display for CardStatus {
    /// `0x80000900 (OUT_OF_RANGE) state=tran`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)?;
        let set = ERROR_NAMES
            .iter()
            .filter(|&&(bit, _)| self.0 & (1 << bit) != 0);
        write_names(f, set.map(|&(_, name)| name))?;
        const STATES: [&str; 9] = [
            "idle", "ready", "ident", "stby", "tran", "data", "rcv", "prg", "dis",
        ];
        match STATES.get(self.state() as usize) {
            Some(state) => write!(f, " state={state}"),
            None => write!(f, " state={}", self.state()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_status_names_its_error_bits_and_state() {
        assert_eq!(
            CardStatus(0x8000_0900).to_string(),
            "0x80000900 (OUT_OF_RANGE) state=tran"
        );
        assert_eq!(
            CardStatus(0x0088_0000 | 3 << 9).to_string(),
            "0x00880600 (COM_CRC_ERROR,ERROR) state=stby"
        );
        assert_eq!(CardStatus(0).to_string(), "0x00000000 state=idle");
    }

    #[test]
    fn commands_encode_index_response_and_data() {
        // CMD17: index 17, 48-bit response, CRC and index checked, data.
        assert_eq!(READ_SINGLE_BLOCK.encode(), 0x113a_0000);
        // CMD0: no response.
        assert_eq!(GO_IDLE_STATE.encode(), 0);
        // CMD2: 136-bit, CRC checked, no index check.
        assert_eq!(ALL_SEND_CID.encode(), 0x0209_0000);
        // ACMD41: 48-bit, no checks.
        assert_eq!(SD_SEND_OP_COND.encode(), 0x2902_0000);
        // CMD7: 48-bit with busy.
        assert_eq!(SELECT_CARD.encode(), 0x071b_0000);
        // CMD12: an abort command.
        assert_eq!(STOP_TRANSMISSION.encode(), 0x0cdb_0000);
    }

    #[test]
    fn card_status_names_its_errors_and_state() {
        let status = CardStatus(0x8040_0900);
        assert!(status.has_error());
        assert_eq!(
            status.to_string(),
            "0x80400900 (OUT_OF_RANGE,ILLEGAL_COMMAND) state=tran"
        );
        let fine = CardStatus(0x0000_0920);
        assert!(!fine.has_error());
        assert_eq!(fine.to_string(), "0x00000920 state=tran");
    }
}
