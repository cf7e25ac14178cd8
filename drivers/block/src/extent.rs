//! Whether a read or write fits its disk: the one check every driver makes
//! before its device sees a request.

use core::fmt;

use crate::SECTOR_SIZE;

/// What one disk accepts in a read or write.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DiskLimits {
    /// The disk's logical block in 512-byte sectors: a transfer starts on
    /// one and is whole ones (1 for a disk of 512-byte blocks; 8 for a
    /// virtio disk with a `blk_size` of 4096). 0 refuses every transfer.
    pub block_sectors: u32,
    /// The most bytes one transfer may take (`u64::MAX` for a transfer
    /// the driver splits into requests itself).
    pub max_bytes: u64,
    /// The capacity in 512-byte sectors.
    pub capacity: u64,
}

impl DiskLimits {
    /// The number of 512-byte sectors of the `bytes` bytes from sector
    /// `lba`, or why the disk cannot take them, checked in this order:
    /// none at all, not whole blocks or not starting on one, more than one
    /// transfer may take, past the capacity (or past sector `u64::MAX`).
    pub fn check(&self, lba: u64, bytes: u64) -> Result<u64, ExtentError> {
        if bytes == 0 {
            return Err(ExtentError::Empty { lba });
        }
        let block_bytes = u64::from(self.block_sectors) * u64::from(SECTOR_SIZE);
        if !lba.is_multiple_of(self.block_sectors.into()) || !bytes.is_multiple_of(block_bytes) {
            return Err(ExtentError::Misaligned {
                lba,
                bytes,
                block_bytes,
            });
        }
        if bytes > self.max_bytes {
            return Err(ExtentError::TooLarge {
                bytes,
                max: self.max_bytes,
            });
        }
        let sectors = bytes / u64::from(SECTOR_SIZE);
        match lba.checked_add(sectors) {
            Some(end) if end <= self.capacity => Ok(sectors),
            _ => Err(ExtentError::BeyondDisk {
                lba,
                sectors,
                capacity: self.capacity,
            }),
        }
    }
}

/// Why a read or write does not fit its disk ([`DiskLimits::check`]).
/// Drivers wrap it with the device and the operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExtentError {
    /// No bytes at all.
    Empty {
        /// First sector.
        lba: u64,
    },
    /// Not whole logical blocks, or not starting on one.
    Misaligned {
        /// First sector.
        lba: u64,
        /// Bytes asked for.
        bytes: u64,
        /// The logical block size in bytes.
        block_bytes: u64,
    },
    /// More bytes than one transfer may take.
    TooLarge {
        /// Bytes asked for.
        bytes: u64,
        /// The most one transfer may take.
        max: u64,
    },
    /// Sectors past the capacity, or past sector `u64::MAX`.
    BeyondDisk {
        /// First sector.
        lba: u64,
        /// Sectors asked for.
        sectors: u64,
        /// The capacity in sectors.
        capacity: u64,
    },
}

impl fmt::Display for ExtentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty { lba } => write!(f, "no bytes at sector {lba}"),
            Self::Misaligned {
                lba,
                bytes,
                block_bytes,
            } => write!(
                f,
                "{bytes} bytes at sector {lba} are not whole {block_bytes}-byte blocks"
            ),
            Self::TooLarge { bytes, max } => {
                write!(f, "{bytes} bytes, more than the {max} of one request")
            }
            Self::BeyondDisk {
                lba,
                sectors,
                capacity,
            } => write!(
                f,
                "sectors {lba}+{sectors} are beyond the capacity of {capacity} sectors"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 4 KiB blocks, 256 KiB requests, 1 MiB.
    const FOUR_K: DiskLimits = DiskLimits {
        block_sectors: 8,
        max_bytes: 256 << 10,
        capacity: 2048,
    };

    /// 512-byte blocks, 64 KiB requests, 1 MiB.
    const SECTORS: DiskLimits = DiskLimits {
        block_sectors: 1,
        max_bytes: 64 << 10,
        capacity: 2048,
    };

    #[test]
    fn zero_bytes_are_empty_wherever_they_start() {
        assert_eq!(SECTORS.check(0, 0), Err(ExtentError::Empty { lba: 0 }));
        assert_eq!(
            FOUR_K.check(u64::MAX, 0),
            Err(ExtentError::Empty { lba: u64::MAX }),
            "empty before misaligned or beyond"
        );
    }

    #[test]
    fn a_length_one_byte_short_of_a_block_is_misaligned() {
        assert_eq!(
            SECTORS.check(0, 511),
            Err(ExtentError::Misaligned {
                lba: 0,
                bytes: 511,
                block_bytes: 512
            })
        );
        assert_eq!(SECTORS.check(0, 512), Ok(1));
        assert_eq!(
            FOUR_K.check(8, 4095),
            Err(ExtentError::Misaligned {
                lba: 8,
                bytes: 4095,
                block_bytes: 4096
            })
        );
        assert_eq!(
            FOUR_K.check(8, 512),
            Err(ExtentError::Misaligned {
                lba: 8,
                bytes: 512,
                block_bytes: 4096
            }),
            "a whole sector is not a whole 4 KiB block"
        );
        assert_eq!(FOUR_K.check(8, 4096), Ok(8));
    }

    #[test]
    fn a_start_inside_a_block_is_misaligned() {
        for lba in [1, 7, 9, u64::MAX - 3] {
            assert_eq!(
                FOUR_K.check(lba, 4096),
                Err(ExtentError::Misaligned {
                    lba,
                    bytes: 4096,
                    block_bytes: 4096
                }),
                "sector {lba}"
            );
        }
        assert_eq!(FOUR_K.check(16, 4096), Ok(8));
        assert_eq!(SECTORS.check(7, 512), Ok(1), "every sector starts a block");
    }

    #[test]
    fn exactly_the_largest_request_passes_and_one_block_more_is_too_large() {
        assert_eq!(SECTORS.check(0, 64 << 10), Ok(128));
        assert_eq!(
            SECTORS.check(0, (64 << 10) + 512),
            Err(ExtentError::TooLarge {
                bytes: (64 << 10) + 512,
                max: 64 << 10
            })
        );
        assert_eq!(FOUR_K.check(0, 256 << 10), Ok(512));
        assert_eq!(
            FOUR_K.check(0, (256 << 10) + 4096),
            Err(ExtentError::TooLarge {
                bytes: (256 << 10) + 4096,
                max: 256 << 10
            })
        );
    }

    #[test]
    fn a_request_may_end_at_the_capacity_but_not_one_sector_past() {
        assert_eq!(SECTORS.check(2047, 512), Ok(1));
        assert_eq!(
            SECTORS.check(2047, 1024),
            Err(ExtentError::BeyondDisk {
                lba: 2047,
                sectors: 2,
                capacity: 2048
            })
        );
        assert_eq!(
            SECTORS.check(2048, 512),
            Err(ExtentError::BeyondDisk {
                lba: 2048,
                sectors: 1,
                capacity: 2048
            })
        );
        assert_eq!(FOUR_K.check(2040, 4096), Ok(8));
        assert_eq!(
            FOUR_K.check(2040, 8192),
            Err(ExtentError::BeyondDisk {
                lba: 2040,
                sectors: 16,
                capacity: 2048
            })
        );
    }

    #[test]
    fn a_range_past_the_last_sector_number_is_beyond_even_the_largest_disk() {
        let huge = DiskLimits {
            capacity: u64::MAX,
            ..SECTORS
        };
        assert_eq!(huge.check(u64::MAX - 2, 1024), Ok(2), "ends at u64::MAX");
        assert_eq!(
            huge.check(u64::MAX - 1, 1024),
            Err(ExtentError::BeyondDisk {
                lba: u64::MAX - 1,
                sectors: 2,
                capacity: u64::MAX
            }),
            "the end overflows"
        );
    }

    #[test]
    fn a_transfer_without_a_request_limit_is_only_checked_against_the_disk() {
        let whole = DiskLimits {
            max_bytes: u64::MAX,
            ..FOUR_K
        };
        assert_eq!(whole.check(0, 2048 * 512), Ok(2048));
    }

    #[test]
    fn no_block_size_refuses_every_transfer() {
        let none = DiskLimits {
            block_sectors: 0,
            ..SECTORS
        };
        assert_eq!(
            none.check(0, 512),
            Err(ExtentError::Misaligned {
                lba: 0,
                bytes: 512,
                block_bytes: 0
            })
        );
    }

    #[test]
    fn messages_name_the_numbers() {
        let cases = [
            (ExtentError::Empty { lba: 7 }, "no bytes at sector 7"),
            (
                ExtentError::Misaligned {
                    lba: 1,
                    bytes: 4096,
                    block_bytes: 4096,
                },
                "4096 bytes at sector 1 are not whole 4096-byte blocks",
            ),
            (
                ExtentError::TooLarge {
                    bytes: 266240,
                    max: 262144,
                },
                "266240 bytes, more than the 262144 of one request",
            ),
            (
                ExtentError::BeyondDisk {
                    lba: 16384,
                    sectors: 1,
                    capacity: 16384,
                },
                "sectors 16384+1 are beyond the capacity of 16384 sectors",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }
}
