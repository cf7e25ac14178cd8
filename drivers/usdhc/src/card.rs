//! What the card says about itself (CSD), and the clock divider.

use core::fmt;

use crate::regs::SYS_CTRL;
use tock_registers::LocalRegisterCopy;

/// The CSD register, decoded (SD spec §5.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Csd {
    /// `CSD_STRUCTURE`: 0 = version 1.0 (standard capacity), 1 = version
    /// 2.0 (high/extended capacity).
    pub version: u8,
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    /// `PERM_WRITE_PROTECT` or `TMP_WRITE_PROTECT`.
    pub write_protected: bool,
}

/// Why a CSD cannot be used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CsdError {
    /// A `CSD_STRUCTURE` this driver does not know (3.0 is SDUC, over
    /// 2 TiB).
    UnknownStructure(u8),
    /// The capacity is not a whole number of 512-byte sectors, or zero.
    BadCapacity(u64),
}

impl fmt::Display for CsdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownStructure(v) => write!(f, "CSD_STRUCTURE={v} is not supported"),
            Self::BadCapacity(bytes) => write!(f, "CSD capacity of {bytes} bytes"),
        }
    }
}

/// The 128-bit register from the four response words of an R2 response:
/// the controller strips the CRC byte, so word 0 holds bits 39:8.
pub fn r2_bits(words: [u32; 4]) -> u128 {
    let raw = u128::from(words[0])
        | u128::from(words[1]) << 32
        | u128::from(words[2]) << 64
        | u128::from(words[3]) << 96;
    raw << 8
}

fn bits(value: u128, high: u32, low: u32) -> u64 {
    ((value >> low) & ((1u128 << (high - low + 1)) - 1)) as u64
}

impl Csd {
    /// Decodes a CSD (all 128 bits, as [`r2_bits`] gives them).
    pub fn decode(csd: u128) -> Result<Self, CsdError> {
        let version = bits(csd, 127, 126) as u8;
        let bytes = match version {
            0 => {
                let c_size = bits(csd, 73, 62);
                let mult = bits(csd, 49, 47);
                let read_bl_len = bits(csd, 83, 80);
                (c_size + 1) << (mult + 2 + read_bl_len)
            }
            1 => (bits(csd, 69, 48) + 1) * 512 * 1024,
            other => return Err(CsdError::UnknownStructure(other)),
        };
        if bytes == 0 || !bytes.is_multiple_of(512) {
            return Err(CsdError::BadCapacity(bytes));
        }
        Ok(Self {
            version,
            sectors: bytes / 512,
            write_protected: bits(csd, 13, 12) != 0,
        })
    }
}

/// A `SYS_CTRL` clock setting: prescaler and divisor fields, and the SD
/// clock they give.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ClockSetting {
    /// `SDCLKFS` (the prescaler divides by twice it, or by 1 when 0).
    pub sdclkfs: u32,
    /// `DVS` (the divisor divides by it plus one).
    pub dvs: u32,
    /// The resulting card clock in Hz.
    pub hz: u32,
}

impl ClockSetting {
    /// The fastest setting from `base_hz` that does not exceed `target_hz`
    /// (the slowest the hardware can do if none is slow enough).
    pub fn for_target(base_hz: u32, target_hz: u32) -> Self {
        let mut best: Option<Self> = None;
        for prescaler_log in 0..=8u32 {
            let prescaler = 1u32 << prescaler_log;
            for divisor in 1..=16u32 {
                let hz = base_hz / (prescaler * divisor);
                let setting = Self {
                    sdclkfs: prescaler / 2,
                    dvs: divisor - 1,
                    hz,
                };
                if hz <= target_hz && best.is_none_or(|b| hz > b.hz) {
                    best = Some(setting);
                }
            }
        }
        best.unwrap_or(Self {
            sdclkfs: 0x80,
            dvs: 0xf,
            hz: base_hz / (256 * 16),
        })
    }

    /// `sys_ctrl` with this setting's prescaler and divisor, the clocks
    /// enabled and the longest data timeout; the top byte (reset and
    /// INITA requests) is never written by a clock change.
    pub fn apply(self, sys_ctrl: u32) -> u32 {
        let mut value = LocalRegisterCopy::<u32, SYS_CTRL::Register>::new(sys_ctrl & 0x00ff_ffff);
        value.modify(
            SYS_CTRL::SDCLKFS.val(self.sdclkfs)
                + SYS_CTRL::DVS.val(self.dvs)
                + SYS_CTRL::CLOCK_ENABLES.val(0xf)
                + SYS_CTRL::DTOCV.val(0xe),
        );
        value.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CSD with the given fields set (the rest zero).
    fn csd(fields: &[(u32, u32, u64)]) -> u128 {
        fields.iter().fold(0u128, |acc, &(high, low, value)| {
            assert!(value < 1 << (high - low + 1));
            acc | u128::from(value) << low
        })
    }

    #[test]
    fn a_version_1_csd_gives_its_capacity() {
        // 64 MiB: C_SIZE=1023... READ_BL_LEN=9, C_SIZE_MULT=5: (C_SIZE+1)*128*512.
        let raw = csd(&[(83, 80, 9), (73, 62, 1023), (49, 47, 5)]);
        let decoded = Csd::decode(raw).unwrap();
        assert_eq!(decoded.version, 0);
        assert_eq!(decoded.sectors, 1024 * 128);
        assert!(!decoded.write_protected);
    }

    #[test]
    fn a_version_2_csd_gives_its_capacity_and_write_protection() {
        // 2 GiB: C_SIZE=4095 -> 4096 * 512 KiB.
        let raw = csd(&[(127, 126, 1), (69, 48, 4095), (12, 12, 1)]);
        let decoded = Csd::decode(raw).unwrap();
        assert_eq!(decoded.version, 1);
        assert_eq!(decoded.sectors, 4096 * 1024);
        assert!(decoded.write_protected);
        let permanent = Csd::decode(csd(&[(127, 126, 1), (69, 48, 1), (13, 13, 1)])).unwrap();
        assert!(permanent.write_protected);
    }

    #[test]
    fn unknown_csd_structures_are_refused() {
        assert_eq!(
            Csd::decode(csd(&[(127, 126, 2)])),
            Err(CsdError::UnknownStructure(2))
        );
    }

    #[test]
    fn r2_words_hold_bits_127_to_8() {
        let words = [0x0403_0201, 0x0807_0605, 0x0c0b_0a09, 0x000f_0e0d];
        let value = r2_bits(words);
        assert_eq!(value & 0xff, 0);
        assert_eq!((value >> 8) as u32, 0x0403_0201);
        assert_eq!((value >> 104) as u32, 0x000f_0e0d);
    }

    #[test]
    fn the_clock_is_the_fastest_not_above_the_target() {
        let id = ClockSetting::for_target(400_000_000, 400_000);
        assert!(id.hz <= 400_000 && id.hz > 300_000, "{id:?}");
        let fast = ClockSetting::for_target(400_000_000, 25_000_000);
        assert_eq!(fast.hz, 25_000_000);
        let prescaler = if fast.sdclkfs == 0 {
            1
        } else {
            2 * fast.sdclkfs
        };
        assert_eq!(prescaler * (fast.dvs + 1), 16);
        let slow = ClockSetting::for_target(400_000_000, 1);
        assert_eq!((slow.sdclkfs, slow.dvs), (0x80, 0xf));
        let direct = ClockSetting::for_target(25_000_000, 50_000_000);
        assert_eq!((direct.sdclkfs, direct.dvs, direct.hz), (0, 0, 25_000_000));
        // Resets and INITA are never set by a clock change.
        assert_eq!(fast.apply(0xff00_0000) >> 24, 0);
    }
}
