//! The uSDHC registers the driver uses, by name ([`Reg`]), their fields
//! (`register_bitfields!`, from the i.MX 8M Plus reference manual's uSDHC
//! chapter), and [`Controller`], the register-level boundary between the
//! driver and the hardware (the MMIO block in the kernel, a simulated
//! controller and card in the tests).
//!
//! Where the i.MX layout differs from standard SDHCI: the transfer-mode
//! bits (DMA enable, block-count enable, auto-CMD12, direction,
//! multi-block) live in the mixer control register `MIX_CTRL` (0x48), not
//! in the low half of the command register; the protocol control register
//! at 0x28 has the bus width in bits 2:1, the endian mode in 5:4 and the
//! DMA select in 9:8; the clock is set in `SYS_CTRL` by a prescaler and a
//! divisor, and the card clock is forced on in `VEND_SPEC`.

use tidepool_block::Barrier;
use tock_registers::register_bitfields;

register_bitfields! [u32,
    /// Block attributes (0x04).
    pub(crate) BLK_ATT [
        /// Transfer block size in bytes.
        BLKSIZE OFFSET(0) NUMBITS(13) [],
        /// Blocks in the transfer.
        BLKCNT OFFSET(16) NUMBITS(16) []
    ],
    /// Command transfer type (0x0C): writing it issues the command.
    pub(crate) CMD_XFR_TYP [
        /// Response type.
        RSPTYP OFFSET(16) NUMBITS(2) [
            None = 0,
            Long136 = 1,
            Short48 = 2,
            Short48Busy = 3
        ],
        /// Check the response's CRC.
        CCCEN OFFSET(19) NUMBITS(1) [],
        /// Check the response's command index.
        CICEN OFFSET(20) NUMBITS(1) [],
        /// Data present (a transfer on the DAT lines follows).
        DPSEL OFFSET(21) NUMBITS(1) [],
        /// Command type (normal, suspend, resume, abort).
        CMDTYP OFFSET(22) NUMBITS(2) [
            Normal = 0,
            Abort = 3
        ],
        /// Command index.
        CMDINX OFFSET(24) NUMBITS(6) []
    ],
    /// Present state (0x24).
    pub(crate) PRES_STATE [
        /// Command inhibit (CMD line busy).
        CIHB OFFSET(0) NUMBITS(1) [],
        /// Command inhibit (DAT lines busy).
        CDIHB OFFSET(1) NUMBITS(1) [],
        /// Data line active.
        DLA OFFSET(2) NUMBITS(1) [],
        /// SD clock stable.
        SDSTB OFFSET(3) NUMBITS(1) [],
        /// Card inserted.
        CINST OFFSET(16) NUMBITS(1) [],
        /// Write-protect switch level: 1 = writes enabled, 0 = protected.
        WPSPL OFFSET(19) NUMBITS(1) []
    ],
    /// Protocol control (0x28).
    pub(crate) PROT_CTRL [
        /// Data transfer width.
        DTW OFFSET(1) NUMBITS(2) [
            OneBit = 0,
            FourBit = 1,
            EightBit = 2
        ],
        /// Endian mode of DMA data.
        EMODE OFFSET(4) NUMBITS(2) [
            LittleEndian = 2
        ],
        /// DMA select.
        DMASEL OFFSET(8) NUMBITS(2) [
            Simple = 0,
            Adma1 = 1,
            Adma2 = 2
        ]
    ],
    /// System control (0x2C).
    pub(crate) SYS_CTRL [
        /// The four clock enables of the eSDHC generation (IPG, HCLK,
        /// PER, SD); reserved on the uSDHC, where they read as set.
        /// Standard SDHCI (and QEMU's model) reads bit 0 as "internal
        /// clock enable" and bit 2 as "SD clock enable".
        CLOCK_ENABLES OFFSET(0) NUMBITS(4) [],
        /// Divisor: divide by DVS + 1.
        DVS OFFSET(4) NUMBITS(4) [],
        /// Prescaler: divide by 2 * SDCLKFS (0: by 1), a power of two.
        SDCLKFS OFFSET(8) NUMBITS(8) [],
        /// Data timeout counter value: SDCLK x 2^(DTOCV + 13).
        DTOCV OFFSET(16) NUMBITS(4) [],
        /// Software reset for all.
        RSTA OFFSET(24) NUMBITS(1) [],
        /// Software reset for the CMD line.
        RSTC OFFSET(25) NUMBITS(1) [],
        /// Software reset for the DAT lines.
        RSTD OFFSET(26) NUMBITS(1) [],
        /// Send 80 initialisation clocks to the card.
        INITA OFFSET(27) NUMBITS(1) []
    ],
    /// Interrupt status (0x30; write 1 to clear), and with the same
    /// layout its status enable (0x34) and signal enable (0x38).
    pub(crate) INT [
        /// Command complete.
        CC OFFSET(0) NUMBITS(1) [],
        /// Transfer complete.
        TC OFFSET(1) NUMBITS(1) [],
        /// DMA interrupt (a descriptor with its Int bit).
        DINT OFFSET(3) NUMBITS(1) [],
        /// Card insertion.
        CINS OFFSET(6) NUMBITS(1) [],
        /// Card removal.
        CRM OFFSET(7) NUMBITS(1) [],
        /// Error summary of standard SDHCI (QEMU's model sets it with
        /// any error bit; reserved on the uSDHC).
        ERR_SUMMARY OFFSET(15) NUMBITS(1) [],
        /// Command timeout.
        CTOE OFFSET(16) NUMBITS(1) [],
        /// Command CRC error.
        CCE OFFSET(17) NUMBITS(1) [],
        /// Command end-bit error.
        CEBE OFFSET(18) NUMBITS(1) [],
        /// Command index error.
        CIE OFFSET(19) NUMBITS(1) [],
        /// Data timeout.
        DTOE OFFSET(20) NUMBITS(1) [],
        /// Data CRC error.
        DCE OFFSET(21) NUMBITS(1) [],
        /// Data end-bit error.
        DEBE OFFSET(22) NUMBITS(1) [],
        /// Auto-CMD12 error.
        AC12E OFFSET(24) NUMBITS(1) [],
        /// ADMA error where standard SDHCI (and QEMU's model) reports it.
        ADMAE_SDHCI OFFSET(25) NUMBITS(1) [],
        /// Tuning error.
        TNE OFFSET(26) NUMBITS(1) [],
        /// DMA error where the uSDHC reports it.
        DMAE OFFSET(28) NUMBITS(1) []
    ],
    /// Watermark level (0x44), for DMA bursts.
    pub(crate) WTMK_LVL [
        /// Read watermark, in words.
        RD_WML OFFSET(0) NUMBITS(8) [],
        /// Read burst length.
        RD_BRST_LEN OFFSET(8) NUMBITS(5) [],
        /// Write watermark, in words.
        WR_WML OFFSET(16) NUMBITS(8) [],
        /// Write burst length.
        WR_BRST_LEN OFFSET(24) NUMBITS(5) []
    ],
    /// Mixer control (0x48): the transfer mode of the next command.
    pub(crate) MIX_CTRL [
        /// DMA enable.
        DMAEN OFFSET(0) NUMBITS(1) [],
        /// Block count enable.
        BCEN OFFSET(1) NUMBITS(1) [],
        /// Auto-CMD12 after the last block.
        AC12EN OFFSET(2) NUMBITS(1) [],
        /// Dual data rate.
        DDR_EN OFFSET(3) NUMBITS(1) [],
        /// Direction: 1 = card to host (read).
        DTDSEL OFFSET(4) NUMBITS(1) [],
        /// Multi-block.
        MSBSEL OFFSET(5) NUMBITS(1) [],
        /// Auto-CMD23.
        AC23EN OFFSET(7) NUMBITS(1) []
    ],
    /// Vendor specific (0xC0).
    pub(crate) VEND_SPEC [
        /// Force the card clock on (no automatic gating).
        FRC_SDCLK_ON OFFSET(8) NUMBITS(1) []
    ]
];

/// A uSDHC register the driver reads or writes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reg {
    /// Block attributes (0x04).
    BlkAtt,
    /// Command argument (0x08).
    CmdArg,
    /// Command transfer type (0x0C).
    CmdXfrTyp,
    /// Response word 0..=3 (0x10, 0x14, 0x18, 0x1C).
    CmdRsp(u8),
    /// Present state (0x24).
    PresState,
    /// Protocol control (0x28).
    ProtCtrl,
    /// System control (0x2C).
    SysCtrl,
    /// Interrupt status (0x30).
    IntStatus,
    /// Interrupt status enable (0x34).
    IntStatusEn,
    /// Interrupt signal enable (0x38).
    IntSignalEn,
    /// Auto-CMD12 error status (0x3C).
    Autocmd12ErrStatus,
    /// Host controller capabilities (0x40).
    HostCtrlCap,
    /// Watermark level (0x44).
    WtmkLvl,
    /// Mixer control (0x48).
    MixCtrl,
    /// ADMA error status (0x54).
    AdmaErrStatus,
    /// ADMA system address (0x58).
    AdmaSysAddr,
    /// Vendor specific (0xC0).
    VendSpec,
}

/// Register access to one uSDHC: the boundary between the driver and the
/// hardware. Each call is one 32-bit access; reads may have no side effect
/// the driver relies on, writes may (`CmdXfrTyp` issues a command,
/// `IntStatus` clears the bits written as 1, `SysCtrl` resets).
pub trait Controller {
    /// Reads a register.
    fn read(&self, reg: Reg) -> u32;
    /// Writes a register.
    fn write(&mut self, reg: Reg, value: u32);
    /// Orders the driver's accesses of memory the controller reads or
    /// writes by DMA (the descriptor table, the data) against its register
    /// accesses, for an observer that is not a CPU.
    fn barrier(&self, barrier: Barrier);
}
