//! NXP i.MX UART (`fsl,imx6q-uart` and the SoCs that list it as
//! compatible, e.g. `fsl,imx8mp-uart`), transmit and receive, for the kernel
//! console.
//!
//! Register layout and bits from the i.MX 8M Plus reference manual (UART
//! chapter); QEMU models it as `imx.serial`. [`ImxUart::new`] is the only
//! `unsafe` item.
//!
//! [`ImxUart::enable`] leaves the frame format and baud rate of a UART the
//! firmware already set up (U-Boot on a real board, QEMU's model for
//! Linux's earlycon: UART enabled, transmitter on) as they are, since the
//! driver does not know the UART's reference clock, and only makes sure the
//! receiver is on. A UART nobody set up is enabled with 8 data bits, no
//! parity, one stop bit, RTS ignored, at whatever rate its divider
//! registers hold. Writing UCR2 with SRST clear resets the UART, so every
//! write keeps it set.
//!
//! Receive, in the shape of the PL011 driver's, for console input by
//! interrupt: [`ImxUart::enable_receive_interrupts`] raises the UART's
//! interrupt while a character waits; the handler calls
//! [`ImxUart::drain`], which delivers each character or why it is damaged.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

use core::fmt;

use tidepool_poll::poll_until;
pub use tidepool_serial::ReceiveError;
use tidepool_serial::for_each_terminal_byte;
use tock_registers::interfaces::{ReadWriteable, Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};
use tock_registers::{register_bitfields, register_structs};

register_bitfields! {u32,
    /// UART Receiver Register.
    URXD [
        /// The received character.
        RX_DATA OFFSET(0) NUMBITS(8) [],
        /// Parity error.
        PRERR OFFSET(10) NUMBITS(1) [],
        /// A break was received.
        BRK OFFSET(11) NUMBITS(1) [],
        /// Framing error (no stop bit).
        FRMERR OFFSET(12) NUMBITS(1) [],
        /// The receive FIFO overflowed before this character.
        OVRRUN OFFSET(13) NUMBITS(1) [],
        /// Any of the four errors above.
        ERR OFFSET(14) NUMBITS(1) [],
        /// The character is valid.
        CHARRDY OFFSET(15) NUMBITS(1) []
    ],
    /// UART Transmitter Register.
    UTXD [
        /// The character to transmit.
        TX_DATA OFFSET(0) NUMBITS(8) []
    ],
    /// UART Control Register 1.
    UCR1 [
        /// UART enable.
        UARTEN OFFSET(0) NUMBITS(1) [],
        /// Receiver ready interrupt enable (USR1.RRDY).
        RRDYEN OFFSET(9) NUMBITS(1) []
    ],
    /// UART Control Register 2.
    UCR2 [
        /// Software reset, active low: writing 0 resets the UART.
        SRST OFFSET(0) NUMBITS(1) [],
        /// Receiver enable.
        RXEN OFFSET(1) NUMBITS(1) [],
        /// Transmitter enable.
        TXEN OFFSET(2) NUMBITS(1) [],
        /// Word size: 8 data bits when set.
        WS OFFSET(5) NUMBITS(1) [],
        /// Two stop bits when set.
        STPB OFFSET(6) NUMBITS(1) [],
        /// Parity enable.
        PREN OFFSET(8) NUMBITS(1) [],
        /// Ignore the RTS pin.
        IRTS OFFSET(14) NUMBITS(1) []
    ],
    /// UART FIFO Control Register.
    UFCR [
        /// Receiver trigger level: USR1.RRDY is set at this many characters.
        RXTL OFFSET(0) NUMBITS(6) []
    ],
    /// UART Status Register 2.
    USR2 [
        /// Receive data ready: at least one character waits.
        RDR OFFSET(0) NUMBITS(1) [],
        /// Overrun (write 1 to clear).
        ORE OFFSET(1) NUMBITS(1) [],
        /// Transmission complete: FIFO and shift register empty.
        TXDC OFFSET(3) NUMBITS(1) []
    ],
    /// UART Test Register.
    UTS [
        /// The transmit FIFO is full.
        TXFULL OFFSET(4) NUMBITS(1) []
    ]
}

register_structs! {
    /// i.MX UART registers used by this driver.
    Registers {
        (0x00 => urxd: ReadOnly<u32, URXD::Register>),
        (0x04 => _reserved0),
        (0x40 => utxd: WriteOnly<u32, UTXD::Register>),
        (0x44 => _reserved1),
        (0x80 => ucr1: ReadWrite<u32, UCR1::Register>),
        (0x84 => ucr2: ReadWrite<u32, UCR2::Register>),
        (0x88 => _ucr3_ucr4),
        (0x90 => ufcr: ReadWrite<u32, UFCR::Register>),
        (0x94 => _usr1),
        (0x98 => usr2: ReadWrite<u32, USR2::Register>),
        (0x9c => _escape_timer_baud_onems),
        (0xb4 => uts: ReadOnly<u32, UTS::Register>),
        (0xb8 => @END),
    }
}

/// The UART's name in messages.
const NAME: &str = "i.MX UART";

/// Why the UART could not do what it was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImxUartError {
    /// The transmit FIFO stayed full (UTS.TXFULL).
    TransmitTimeout,
    /// The transmitter never completed (USR2.TXDC stayed clear).
    FlushTimeout,
}

impl fmt::Display for ImxUartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TransmitTimeout => f.write_str("i.MX UART: transmit FIFO stayed full"),
            Self::FlushTimeout => f.write_str("i.MX UART: transmission never completed"),
        }
    }
}

impl core::error::Error for ImxUartError {}

/// An i.MX UART.
pub struct ImxUart {
    registers: &'static Registers,
}

// SAFETY: the registers are `UnsafeCell`-based and so not `Sync` to the
// compiler, but each access is one volatile load or store of device memory,
// which the UART serialises. Writers on several CPUs may interleave their
// bytes; no memory is shared beyond the device's.
#[allow(unsafe_code)]
unsafe impl Send for ImxUart {}

// SAFETY: as for `Send` above.
#[allow(unsafe_code)]
unsafe impl Sync for ImxUart {}

impl ImxUart {
    /// The UART whose registers start at `base`.
    ///
    /// # Safety
    ///
    /// `base` is the virtual address of an i.MX UART's register block,
    /// 4-byte aligned and mapped as Device memory for the rest of the
    /// kernel's life, and no code other than `ImxUart`s programs that UART.
    #[allow(unsafe_code)]
    pub unsafe fn new(base: usize) -> Self {
        // SAFETY: the caller guarantees that `base` maps this register block
        // for the kernel's lifetime; every field is an `UnsafeCell`-based
        // register, so shared references to it permit the device's changes.
        let registers = unsafe { &*(base as *const Registers) };
        Self { registers }
    }

    /// Makes the UART transmit and receive. A UART whose transmitter is
    /// already on keeps its frame format and rate and only gets its
    /// receiver enabled (QEMU's model starts that way, for Linux's
    /// earlycon); otherwise it is enabled with 8 data bits, no parity, one
    /// stop bit and RTS ignored (see the crate docs).
    pub fn enable(&self) {
        let registers = self.registers;
        let configured = registers.ucr1.is_set(UCR1::UARTEN) && registers.ucr2.is_set(UCR2::TXEN);
        registers.ucr1.modify(UCR1::UARTEN::SET);
        if configured {
            registers.ucr2.modify(UCR2::SRST::SET + UCR2::RXEN::SET);
        } else {
            registers.ucr2.modify(
                UCR2::SRST::SET
                    + UCR2::RXEN::SET
                    + UCR2::TXEN::SET
                    + UCR2::WS::SET
                    + UCR2::STPB::CLEAR
                    + UCR2::PREN::CLEAR
                    + UCR2::IRTS::SET,
            );
        }
    }

    /// Transmits one byte as is, waiting while the transmit FIFO is full.
    pub fn write_byte(&self, byte: u8) -> Result<(), ImxUartError> {
        poll_until(
            || !self.registers.uts.is_set(UTS::TXFULL),
            ImxUartError::TransmitTimeout,
        )?;
        self.registers.utxd.write(UTXD::TX_DATA.val(byte.into()));
        Ok(())
    }

    /// Transmits `bytes`, sending `\r\n` for each `\n`.
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<(), ImxUartError> {
        for_each_terminal_byte(bytes, |byte| self.write_byte(byte))
    }

    /// Waits until everything written has left the UART (USR2.TXDC).
    pub fn flush(&self) -> Result<(), ImxUartError> {
        poll_until(
            || self.registers.usr2.is_set(USR2::TXDC),
            ImxUartError::FlushTimeout,
        )
    }

    /// Moves every character waiting, in order, to `deliver` (one the UART
    /// flagged as that error). The receive interrupt is a level, raised
    /// while a character waits: emptying the FIFO ends it, and a character
    /// arriving afterwards raises it again; nothing is acknowledged.
    pub fn drain(&self, mut deliver: impl FnMut(Result<u8, ReceiveError>)) {
        while let Some(received) = self.receive() {
            deliver(received);
        }
    }

    /// The next received character, `None` when none waits. A character
    /// the UART flagged (framing, parity, break, overrun) is returned as
    /// that error, and an overrun is acknowledged (USR2.ORE).
    fn receive(&self) -> Option<Result<u8, ReceiveError>> {
        if !self.registers.usr2.is_set(USR2::RDR) {
            return None;
        }
        let rx = self.registers.urxd.extract();
        if !rx.is_set(URXD::CHARRDY) {
            return None;
        }
        let byte = rx.read(URXD::RX_DATA) as u8;
        if !rx.is_set(URXD::ERR) {
            return Some(Ok(byte));
        }
        if rx.is_set(URXD::OVRRUN) {
            self.registers.usr2.write(USR2::ORE::SET);
        }
        Some(Err(ReceiveError {
            uart: NAME,
            byte,
            framing: rx.is_set(URXD::FRMERR),
            parity: rx.is_set(URXD::PRERR),
            break_condition: rx.is_set(URXD::BRK),
            overrun: rx.is_set(URXD::OVRRUN),
        }))
    }

    /// Raises the UART's interrupt while a character waits: receiver-ready
    /// with a receive FIFO trigger level of one character (the FIFO's
    /// divider bits are kept). The condition clears itself as
    /// [`Self::drain`] empties the FIFO.
    pub fn enable_receive_interrupts(&self) {
        self.registers.ufcr.modify(UFCR::RXTL.val(1));
        self.registers.ucr1.modify(UCR1::RRDYEN::SET);
    }
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<ImxUart>();
};

impl fmt::Write for ImxUart {
    /// Transmits `text`, sending `\r\n` for each `\n`; a stuck transmitter
    /// is reported as [`fmt::Error`].
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.write_bytes(text.as_bytes()).map_err(|_| fmt::Error)
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;
    use core::fmt::Write as _;
    use tidepool_serial::fake::FakeRegisters;

    const URXD_: usize = 0x00;
    const UTXD_: usize = 0x40;
    const UCR1_: usize = 0x80;
    const UCR2_: usize = 0x84;
    const UFCR_: usize = 0x90;
    const USR2_: usize = 0x98;
    const UTS_: usize = 0xb4;

    /// A zeroed register block for one UART.
    fn fake() -> FakeRegisters {
        FakeRegisters::new(0x100)
    }

    fn uart(fake: &FakeRegisters) -> ImxUart {
        // SAFETY: the fake's memory is leaked, 4-byte aligned and as large
        // as the register block.
        unsafe { ImxUart::new(fake.base()) }
    }

    #[test]
    fn enable_sets_up_an_unconfigured_uart_8n1_without_reset() {
        let fake = fake();
        // QEMU's reset state: SRST high (not in reset), everything off.
        fake.write(UCR2_, 1);
        uart(&fake).enable();
        assert_eq!(fake.read(UCR1_), 1, "UARTEN");
        // SRST | RXEN | TXEN | WS | IRTS.
        assert_eq!(fake.read(UCR2_), 0x4027);
    }

    #[test]
    fn enable_keeps_a_configured_uart_and_turns_its_receiver_on() {
        let fake = fake();
        // Firmware's choice: two stop bits, parity, 8 bits, transmitter on.
        fake.write(UCR1_, 1);
        fake.write(UCR2_, 0x4000 | 0x100 | 0x40 | 0x20 | 0x05);
        uart(&fake).enable();
        assert_eq!(fake.read(UCR2_), 0x4167);
        assert_eq!(fake.read(UCR1_), 1);
        // QEMU's model at boot: UARTEN and TXEN only (SRST reads 0).
        fake.write(UCR2_, 0x4);
        uart(&fake).enable();
        assert_eq!(fake.read(UCR2_), 0x7, "SRST and RXEN added, nothing else");
    }

    #[test]
    fn writes_reach_the_transmit_register() {
        let fake = fake();
        let mut uart = uart(&fake);
        uart.write_byte(b'x').unwrap();
        assert_eq!(fake.read(UTXD_), u32::from(b'x'));
        write!(uart, "ok {}", 7).unwrap();
        assert_eq!(fake.read(UTXD_), u32::from(b'7'));
        uart.write_bytes(b"line\n").unwrap();
        assert_eq!(fake.read(UTXD_), u32::from(b'\n'));
        assert_eq!(fake.read(URXD_), 0, "the receive register is not written");
    }

    #[test]
    fn full_fifo_and_unfinished_transmission_time_out() {
        let fake = fake();
        fake.write(UTS_, 1 << 4);
        let mut uart = uart(&fake);
        assert_eq!(uart.write_byte(b'x'), Err(ImxUartError::TransmitTimeout));
        assert_eq!(fake.read(UTXD_), 0);
        assert_eq!(uart.write_str("x"), Err(fmt::Error));
        assert_eq!(uart.flush(), Err(ImxUartError::FlushTimeout));
        fake.write(USR2_, 1 << 3);
        assert_eq!(uart.flush(), Ok(()));
    }

    #[test]
    fn reads_a_waiting_character() {
        let fake = fake();
        let uart = uart(&fake);
        assert_eq!(uart.receive(), None);
        fake.write(USR2_, 1);
        fake.write(URXD_, 0x8000 | u32::from(b'q'));
        assert_eq!(uart.receive(), Some(Ok(b'q')));
        // RDR set but no valid character: nothing.
        fake.write(URXD_, u32::from(b'q'));
        assert_eq!(uart.receive(), None);
    }

    #[test]
    fn damaged_characters_are_reported_and_overrun_cleared() {
        let fake = fake();
        let uart = uart(&fake);
        fake.write(USR2_, 1);
        fake.write(URXD_, 0x8000 | 0x4000 | 0x2000 | 0x1000 | 0x41);
        let err = uart.receive().unwrap().unwrap_err();
        assert_eq!(
            err,
            ReceiveError {
                uart: NAME,
                byte: 0x41,
                framing: true,
                parity: false,
                break_condition: false,
                overrun: true,
            }
        );
        assert_eq!(
            err.to_string(),
            "i.MX UART: received 0x41 with framing-error overrun"
        );
        // ORE is write-1-to-clear: the driver wrote exactly that bit.
        assert_eq!(fake.read(USR2_), 1 << 1);
    }

    #[test]
    fn receive_interrupt_sets_trigger_level_and_enable() {
        let fake = fake();
        // The divider bits (RFDIV, 9:7) must survive.
        fake.write(UFCR_, 0b101 << 7 | 0x20);
        fake.write(UCR1_, 1);
        uart(&fake).enable_receive_interrupts();
        assert_eq!(fake.read(UFCR_), 0b101 << 7 | 1);
        assert_eq!(fake.read(UCR1_), 1 | 1 << 9);
    }
}
