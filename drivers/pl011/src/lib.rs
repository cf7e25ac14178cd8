//! Arm PL011 UART (`arm,pl011`) for the kernel console: transmit, and
//! receive by interrupt ([`Pl011::enable_receive_interrupts`],
//! [`Pl011::drain`]).
//!
//! [`Pl011::new`] is the only `unsafe` item. [`Pl011::init`] with no clock
//! leaves the UART exactly as the firmware, QEMU or the hypervisor set it up
//! (QEMU's PL011 transmits without any set-up); with a clock it programs the
//! baud rate and 8N1. Writes wait a bounded time for FIFO space and report a
//! stuck transmitter as [`Pl011Error`], so a console on a dead UART cannot
//! hang the kernel.
//!
//! Xen's emulated PL011 for guests (`vpl011`, shown to the guest as
//! `arm,sbsa-uart`) implements only DR, RSR, FR, RIS, MIS, IMSC and ICR, and
//! injects an abort on any other register: use `init(None, _)` there.

#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]

use core::fmt;

use tidepool_poll::poll_until;
pub use tidepool_serial::ReceiveError;
use tidepool_serial::for_each_terminal_byte;
use tock_registers::interfaces::{Readable, Writeable};
use tock_registers::registers::{ReadOnly, ReadWrite, WriteOnly};
use tock_registers::{register_bitfields, register_structs};

register_bitfields! {u32,
    /// Data Register.
    DR [
        /// Byte to transmit, or the byte received.
        DATA OFFSET(0) NUMBITS(8) [],
        /// Framing error: the received byte had no valid stop bit.
        FE OFFSET(8) NUMBITS(1) [],
        /// Parity error.
        PE OFFSET(9) NUMBITS(1) [],
        /// Break: the line was held low longer than a character.
        BE OFFSET(10) NUMBITS(1) [],
        /// Overrun: a byte arrived while the receive FIFO was full.
        OE OFFSET(11) NUMBITS(1) []
    ],
    /// Flag Register.
    FR [
        /// The UART is transmitting (until the shift register is empty).
        BUSY OFFSET(3) NUMBITS(1) [],
        /// The receive FIFO (or holding register) is empty.
        RXFE OFFSET(4) NUMBITS(1) [],
        /// The transmit FIFO (or holding register) is full.
        TXFF OFFSET(5) NUMBITS(1) []
    ],
    /// Integer Baud Rate Register.
    IBRD [
        /// Integer part of the baud rate divisor.
        BAUD_DIVINT OFFSET(0) NUMBITS(16) []
    ],
    /// Fractional Baud Rate Register.
    FBRD [
        /// Fractional part of the baud rate divisor, in 64ths.
        BAUD_DIVFRAC OFFSET(0) NUMBITS(6) []
    ],
    /// Line Control Register (writing it also latches IBRD and FBRD).
    LCR_H [
        /// Enable the FIFOs (clearing it flushes them).
        FEN OFFSET(4) NUMBITS(1) [],
        /// Word length.
        WLEN OFFSET(5) NUMBITS(2) [
            /// Eight data bits.
            EightBits = 0b11
        ]
    ],
    /// Control Register.
    CR [
        /// Enable the UART.
        UARTEN OFFSET(0) NUMBITS(1) [],
        /// Enable transmission.
        TXE OFFSET(8) NUMBITS(1) [],
        /// Enable reception.
        RXE OFFSET(9) NUMBITS(1) []
    ],
    /// Interrupt Mask Set/Clear Register (1 enables a source).
    IMSC [
        /// Receive: the FIFO reached its trigger level.
        RXIM OFFSET(4) NUMBITS(1) [],
        /// Receive timeout: data waits in the FIFO and the line went quiet.
        RTIM OFFSET(6) NUMBITS(1) []
    ],
    /// Interrupt Clear Register.
    ICR [
        /// Receive.
        RXIC OFFSET(4) NUMBITS(1) [],
        /// Receive timeout.
        RTIC OFFSET(6) NUMBITS(1) [],
        /// One bit per interrupt source (write 1 to clear).
        ALL OFFSET(0) NUMBITS(11) []
    ]
}

register_structs! {
    /// PL011 registers used by this driver.
    Registers {
        (0x000 => dr: ReadWrite<u32, DR::Register>),
        (0x004 => _receive_status_and_reserved),
        (0x018 => fr: ReadOnly<u32, FR::Register>),
        (0x01c => _reserved_and_irda),
        (0x024 => ibrd: WriteOnly<u32, IBRD::Register>),
        (0x028 => fbrd: WriteOnly<u32, FBRD::Register>),
        (0x02c => lcr_h: WriteOnly<u32, LCR_H::Register>),
        (0x030 => cr: WriteOnly<u32, CR::Register>),
        (0x034 => _fifo_level),
        (0x038 => imsc: WriteOnly<u32, IMSC::Register>),
        (0x03c => _interrupt_status),
        (0x044 => icr: WriteOnly<u32, ICR::Register>),
        (0x048 => @END),
    }
}

/// The UART's name in messages.
const NAME: &str = "PL011";

/// Why the UART could not do what it was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pl011Error {
    /// No divisor the PL011 can hold (1 to 65535 in 64ths) gives this baud
    /// rate from this reference clock.
    UnreachableBaudRate {
        /// The UART reference clock.
        clock_hz: u32,
        /// The baud rate asked for.
        baud: u32,
    },
    /// The transmit FIFO stayed full (FR.TXFF).
    TransmitTimeout,
    /// The transmitter stayed busy (FR.BUSY).
    FlushTimeout,
}

impl fmt::Display for Pl011Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnreachableBaudRate { clock_hz, baud } => {
                write!(
                    f,
                    "PL011: {baud} baud cannot be derived from a {clock_hz} Hz clock"
                )
            }
            Self::TransmitTimeout => f.write_str("PL011: transmit FIFO stayed full"),
            Self::FlushTimeout => f.write_str("PL011: transmitter stayed busy"),
        }
    }
}

impl core::error::Error for Pl011Error {}

/// A baud rate divisor: the reference clock divided by 16 × baud, in 64ths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BaudDivisor {
    integer: u16,
    fractional: u8,
}

impl BaudDivisor {
    /// The divisor nearest to `clock_hz / (16 * baud)`.
    fn new(clock_hz: u32, baud: u32) -> Result<Self, Pl011Error> {
        let unreachable = Pl011Error::UnreachableBaudRate { clock_hz, baud };
        if baud == 0 {
            return Err(unreachable);
        }
        // clock / (16 * baud) * 64 = 4 * clock / baud, rounded to nearest.
        let sixty_fourths = (4 * u64::from(clock_hz) + u64::from(baud) / 2) / u64::from(baud);
        let integer = u16::try_from(sixty_fourths >> 6).map_err(|_| unreachable)?;
        let fractional = (sixty_fourths & 0x3f) as u8;
        if integer == 0 || (integer == u16::MAX && fractional != 0) {
            return Err(unreachable);
        }
        Ok(Self {
            integer,
            fractional,
        })
    }
}

/// A PL011 UART.
pub struct Pl011 {
    registers: &'static Registers,
}

// SAFETY: the registers are `UnsafeCell`-based and so not `Sync` to the
// compiler, but each access is one volatile load or store of device memory,
// which the UART serialises. Writers on several CPUs may interleave their
// bytes; no memory is shared beyond the device's.
#[allow(unsafe_code)]
unsafe impl Send for Pl011 {}

// SAFETY: as for `Send` above.
#[allow(unsafe_code)]
unsafe impl Sync for Pl011 {}

impl Pl011 {
    /// The UART whose registers start at `base`.
    ///
    /// # Safety
    ///
    /// `base` is the virtual address of a PL011's (or an SBSA UART's)
    /// register block, 4 KiB-aligned and mapped as Device memory for the rest
    /// of the kernel's life, and no other code programs that UART (other
    /// `Pl011`s at the same address, such as a panic-time console, may write
    /// to it).
    #[allow(unsafe_code)]
    pub unsafe fn new(base: usize) -> Self {
        // SAFETY: the caller guarantees that `base` maps this register block
        // for the kernel's lifetime; every field is an `UnsafeCell`-based
        // register, so shared references to it permit the device's changes.
        let registers = unsafe { &*(base as *const Registers) };
        Self { registers }
    }

    /// Prepares the UART for transmission.
    ///
    /// With `clock_hz` unknown (`None`) nothing is written: the UART keeps
    /// the configuration the firmware, QEMU or the hypervisor gave it. With
    /// the reference clock, waits for the transmitter to drain, then sets
    /// `baud` and 8 data bits, no parity, one stop bit, FIFOs on, interrupts
    /// masked, transmitter and receiver enabled.
    pub fn init(&self, clock_hz: Option<u32>, baud: u32) -> Result<(), Pl011Error> {
        let Some(clock_hz) = clock_hz else {
            return Ok(());
        };
        let divisor = BaudDivisor::new(clock_hz, baud)?;
        self.flush()?;
        let registers = self.registers;
        registers.cr.set(0);
        // Clearing FEN flushes the FIFOs.
        registers.lcr_h.set(0);
        registers.imsc.set(0);
        registers.icr.write(ICR::ALL.val(ICR::ALL.mask));
        registers
            .ibrd
            .write(IBRD::BAUD_DIVINT.val(divisor.integer.into()));
        registers
            .fbrd
            .write(FBRD::BAUD_DIVFRAC.val(divisor.fractional.into()));
        registers
            .lcr_h
            .write(LCR_H::WLEN::EightBits + LCR_H::FEN::SET);
        registers
            .cr
            .write(CR::UARTEN::SET + CR::TXE::SET + CR::RXE::SET);
        Ok(())
    }

    /// Transmits one byte as is, waiting while the transmit FIFO is full.
    pub fn write_byte(&self, byte: u8) -> Result<(), Pl011Error> {
        poll_until(
            || !self.registers.fr.is_set(FR::TXFF),
            Pl011Error::TransmitTimeout,
        )?;
        self.registers.dr.write(DR::DATA.val(byte.into()));
        Ok(())
    }

    /// Transmits `bytes`, sending `\r\n` for each `\n`.
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<(), Pl011Error> {
        for_each_terminal_byte(bytes, |byte| self.write_byte(byte))
    }

    /// Moves every byte in the receive FIFO, in order, to `deliver` (a
    /// byte flagged with a framing, parity, break or overrun error as that
    /// error), and ends the receive interrupts.
    ///
    /// The interrupts are cleared *before* the FIFO is read. The PL011
    /// raises its receive interrupt when the FIFO fills to its trigger
    /// level (one byte in QEMU's model), not while it stays there: cleared
    /// after the FIFO read empty, a byte that arrived in between would sit
    /// in the FIFO with no interrupt, and so would every byte after it.
    pub fn drain(&self, mut deliver: impl FnMut(Result<u8, ReceiveError>)) {
        self.clear_receive_interrupts();
        while let Some(received) = self.receive() {
            deliver(received);
        }
    }

    /// The next received byte, `None` when the receive FIFO is empty. A
    /// byte flagged with a framing, parity, break or overrun error is
    /// returned as that error.
    fn receive(&self) -> Option<Result<u8, ReceiveError>> {
        if self.registers.fr.is_set(FR::RXFE) {
            return None;
        }
        let data = self.registers.dr.extract();
        let byte = data.read(DR::DATA) as u8;
        let error = ReceiveError {
            uart: NAME,
            byte,
            framing: data.is_set(DR::FE),
            parity: data.is_set(DR::PE),
            break_condition: data.is_set(DR::BE),
            overrun: data.is_set(DR::OE),
        };
        Some(if error.any() { Err(error) } else { Ok(byte) })
    }

    /// Unmasks the receive and receive-timeout interrupts (and masks every
    /// other source, which this driver does not use). Registers the vpl011
    /// implements too.
    pub fn enable_receive_interrupts(&self) {
        self.clear_receive_interrupts();
        self.registers.imsc.write(IMSC::RXIM::SET + IMSC::RTIM::SET);
    }

    /// Clears the receive and receive-timeout interrupts.
    fn clear_receive_interrupts(&self) {
        self.registers.icr.write(ICR::RXIC::SET + ICR::RTIC::SET);
    }

    /// Waits until everything written has left the UART (FR.BUSY clear).
    pub fn flush(&self) -> Result<(), Pl011Error> {
        poll_until(
            || !self.registers.fr.is_set(FR::BUSY),
            Pl011Error::FlushTimeout,
        )
    }
}

const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Pl011>();
};

impl fmt::Write for Pl011 {
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

    const UARTDR: usize = 0x000;
    const UARTFR: usize = 0x018;
    const UARTIBRD: usize = 0x024;
    const UARTFBRD: usize = 0x028;
    const UARTLCR_H: usize = 0x02c;
    const UARTCR: usize = 0x030;
    const UARTIMSC: usize = 0x038;
    const UARTICR: usize = 0x044;
    const FR_BUSY: u32 = 1 << 3;
    const FR_TXFF: u32 = 1 << 5;
    const FR_RXFE: u32 = 1 << 4;

    /// A zeroed register block for one UART.
    fn fake() -> FakeRegisters {
        FakeRegisters::new(0x1000)
    }

    fn uart(fake: &FakeRegisters) -> Pl011 {
        // SAFETY: the fake's memory is leaked, 4-byte aligned and as large
        // as the register block.
        unsafe { Pl011::new(fake.base()) }
    }

    #[test]
    fn divisors_match_the_pl011_formula() {
        // 24 MHz, 115200: 13.0208 -> 13 + 1/64 (as Linux computes it).
        assert_eq!(
            BaudDivisor::new(24_000_000, 115_200),
            Ok(BaudDivisor {
                integer: 13,
                fractional: 1
            })
        );
        // 48 MHz, 115200: 26.0417 -> 26 + 3/64.
        assert_eq!(
            BaudDivisor::new(48_000_000, 115_200),
            Ok(BaudDivisor {
                integer: 26,
                fractional: 3
            })
        );
        // 3 MHz, 115200: 1.6276 -> 1 + 40/64.
        assert_eq!(
            BaudDivisor::new(3_000_000, 115_200),
            Ok(BaudDivisor {
                integer: 1,
                fractional: 40
            })
        );
        // Exact: 1.8432 MHz, 9600 -> 12.
        assert_eq!(
            BaudDivisor::new(1_843_200, 9600),
            Ok(BaudDivisor {
                integer: 12,
                fractional: 0
            })
        );
    }

    #[test]
    fn fraction_rounding_carries_into_the_integer() {
        // 16 * 1000 * 9.999 Hz: 9.999 rounds to 10 + 0/64, not 9 + 64/64.
        assert_eq!(
            BaudDivisor::new(159_984, 1000),
            Ok(BaudDivisor {
                integer: 10,
                fractional: 0
            })
        );
    }

    #[test]
    fn unreachable_rates_are_rejected() {
        let error = |clock_hz, baud| Err(Pl011Error::UnreachableBaudRate { clock_hz, baud });
        assert_eq!(BaudDivisor::new(24_000_000, 0), error(24_000_000, 0));
        // Faster than clock / 16.
        assert_eq!(
            BaudDivisor::new(1_000_000, 100_000),
            error(1_000_000, 100_000)
        );
        // Divisor above 65535.
        assert_eq!(BaudDivisor::new(u32::MAX, 1), error(u32::MAX, 1));
        // The largest divisor is 65535 exactly.
        assert_eq!(
            BaudDivisor::new(16 * 65_535, 1),
            Ok(BaudDivisor {
                integer: u16::MAX,
                fractional: 0
            })
        );
        assert_eq!(
            BaudDivisor::new(16 * 65_535 + 8, 1),
            error(16 * 65_535 + 8, 1)
        );
    }

    #[test]
    fn init_without_clock_writes_nothing() {
        let fake = fake();
        fake.write(UARTCR, 0x301);
        uart(&fake).init(None, 115_200).unwrap();
        assert_eq!(fake.read(UARTCR), 0x301);
        for offset in (0..0x1000).step_by(4).filter(|&offset| offset != UARTCR) {
            assert_eq!(fake.read(offset), 0, "register at {offset:#x}");
        }
    }

    #[test]
    fn init_with_clock_programs_8n1() {
        let fake = fake();
        fake.write(UARTIMSC, 0x7ff);
        uart(&fake).init(Some(24_000_000), 115_200).unwrap();
        assert_eq!(fake.read(UARTIBRD), 13);
        assert_eq!(fake.read(UARTFBRD), 1);
        assert_eq!(fake.read(UARTLCR_H), 0x70);
        assert_eq!(fake.read(UARTCR), 0x301);
        assert_eq!(fake.read(UARTIMSC), 0);
        assert_eq!(fake.read(UARTICR), 0x7ff);
    }

    #[test]
    fn init_rejects_bad_baud_before_touching_the_uart() {
        let fake = fake();
        fake.write(UARTCR, 0x301);
        assert_eq!(
            uart(&fake).init(Some(24_000_000), 0),
            Err(Pl011Error::UnreachableBaudRate {
                clock_hz: 24_000_000,
                baud: 0
            })
        );
        assert_eq!(fake.read(UARTCR), 0x301);
    }

    #[test]
    fn writes_reach_the_data_register() {
        let fake = fake();
        let mut uart = uart(&fake);
        uart.write_byte(b'x').unwrap();
        assert_eq!(fake.read(UARTDR), u32::from(b'x'));
        write!(uart, "ok {}", 7).unwrap();
        assert_eq!(fake.read(UARTDR), u32::from(b'7'));
        uart.write_bytes(b"line\n").unwrap();
        assert_eq!(fake.read(UARTDR), u32::from(b'\n'));
    }

    #[test]
    fn full_fifo_times_out() {
        let fake = fake();
        fake.write(UARTFR, FR_TXFF);
        let mut uart = uart(&fake);
        assert_eq!(uart.write_byte(b'x'), Err(Pl011Error::TransmitTimeout));
        assert_eq!(fake.read(UARTDR), 0);
        assert_eq!(uart.write_str("x"), Err(fmt::Error));
        // BUSY alone does not stop writes into the FIFO.
        fake.write(UARTFR, FR_BUSY);
        assert_eq!(uart.write_byte(b'y'), Ok(()));
        assert_eq!(uart.flush(), Err(Pl011Error::FlushTimeout));
        assert_eq!(
            uart.init(Some(24_000_000), 115_200),
            Err(Pl011Error::FlushTimeout)
        );
        fake.write(UARTFR, 0);
        assert_eq!(uart.flush(), Ok(()));
    }

    #[test]
    fn receive_reads_until_the_fifo_is_empty() {
        let fake = fake();
        let uart = uart(&fake);
        fake.write(UARTDR, u32::from(b'p'));
        assert_eq!(uart.receive(), Some(Ok(b'p')));
        fake.write(UARTDR, 0x800 | u32::from(b'q'));
        assert_eq!(
            uart.receive(),
            Some(Err(ReceiveError {
                uart: NAME,
                byte: b'q',
                framing: false,
                parity: false,
                break_condition: false,
                overrun: true
            }))
        );
        fake.write(UARTFR, FR_RXFE);
        assert_eq!(uart.receive(), None);
    }

    #[test]
    fn receive_interrupts_are_unmasked_and_cleared() {
        let fake = fake();
        let uart = uart(&fake);
        uart.enable_receive_interrupts();
        assert_eq!(fake.read(UARTIMSC), 0x50);
        assert_eq!(fake.read(UARTICR), 0x50);
    }

    /// A byte that arrives once the FIFO has read empty raises the receive
    /// interrupt again: the drain's clear comes before its reads, and no
    /// clear after the last read takes that new interrupt away.
    #[test]
    fn drain_clears_the_interrupts_before_it_reads() {
        let fake = fake();
        let uart = uart(&fake);
        fake.write(UARTDR, u32::from(b'a'));
        let mut delivered = Vec::new();
        uart.drain(|received| {
            // Already cleared when the first byte is read.
            assert_eq!(fake.read(UARTICR), 0x50);
            delivered.push(received);
            // The FIFO reads empty now, and a new byte's interrupt (the
            // test's marker, 0) must outlive the drain.
            fake.write(UARTFR, FR_RXFE);
            fake.write(UARTICR, 0);
        });
        assert_eq!(delivered, [Ok(b'a')]);
        assert_eq!(fake.read(UARTICR), 0, "a clear after the last read");
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            Pl011Error::UnreachableBaudRate {
                clock_hz: 1_000_000,
                baud: 100_000
            }
            .to_string(),
            "PL011: 100000 baud cannot be derived from a 1000000 Hz clock"
        );
    }
}
