//! What `blk read` prints: a sector as hex-dump records and a checksum.

use core::fmt;

/// Bytes per dump record.
pub const BYTES_PER_LINE: usize = 16;

/// One dump record's fields: `offset=0x010 hex=... ascii=...`, the hex as
/// one word of 32 digits and the text with every byte that is not graphic
/// ASCII (space included) shown as `.`, so both stay one `key=value` word.
/// A run of identical rows is one record ending in `rows=N`.
pub struct HexLine<'a> {
    offset: usize,
    bytes: &'a [u8],
    rows: usize,
}

impl fmt::Display for HexLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "offset={:#05x} hex=", self.offset)?;
        for byte in self.bytes {
            write!(f, "{byte:02x}")?;
        }
        f.write_str(" ascii=")?;
        for &byte in self.bytes {
            let shown = if byte.is_ascii_graphic() { byte } else { b'.' };
            write!(f, "{}", shown as char)?;
        }
        if self.rows > 1 {
            write!(f, " rows={}", self.rows)?;
        }
        Ok(())
    }
}

/// `data` as dump records of [`BYTES_PER_LINE`] bytes (the last may be
/// shorter), consecutive identical rows folded into one record.
pub fn lines(data: &[u8]) -> impl Iterator<Item = HexLine<'_>> {
    let mut rows = data.chunks(BYTES_PER_LINE).enumerate().peekable();
    core::iter::from_fn(move || {
        let (index, bytes) = rows.next()?;
        let mut count = 1;
        while rows.next_if(|&(_, next)| next == bytes).is_some() {
            count += 1;
        }
        Some(HexLine {
            offset: index * BYTES_PER_LINE,
            bytes,
            rows: count,
        })
    })
}

/// The 64-bit FNV-1a hash of a byte stream: a checksum a host can
/// recompute with a few lines of any language. Fed in pieces (a read's
/// requests as they complete), it is the hash of their concatenation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Fnv1a64(u64);

impl Fnv1a64 {
    /// The hash of nothing.
    pub const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    /// Adds `data` to the stream.
    pub fn update(&mut self, data: &[u8]) {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        self.0 = data.iter().fold(self.0, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(PRIME)
        });
    }

    /// The hash of everything added.
    pub const fn value(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_cover_the_data_in_order() {
        let data: Vec<u8> = (0..=40).map(|i| if i == 33 { b'A' } else { i }).collect();
        let text: Vec<String> = lines(&data).map(|l| l.to_string()).collect();
        assert_eq!(text.len(), 3);
        assert_eq!(
            text[0],
            "offset=0x000 hex=000102030405060708090a0b0c0d0e0f ascii=................"
        );
        assert_eq!(
            text[2],
            "offset=0x020 hex=204122232425262728 ascii=.A\"#$%&'("
        );
    }

    #[test]
    fn identical_rows_fold_into_one_record() {
        let mut data = vec![0u8; 512];
        data[..8].copy_from_slice(b"tidepool");
        data[0x1f0] = 0xff;
        let text: Vec<String> = lines(&data).map(|l| l.to_string()).collect();
        assert_eq!(
            text,
            [
                "offset=0x000 hex=74696465706f6f6c0000000000000000 ascii=tidepool........",
                "offset=0x010 hex=00000000000000000000000000000000 ascii=................ rows=30",
                "offset=0x1f0 hex=ff000000000000000000000000000000 ascii=................",
            ]
        );
    }

    fn fnv1a64(data: &[u8]) -> u64 {
        let mut hash = Fnv1a64::new();
        hash.update(data);
        hash.value()
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn fnv1a64_in_pieces_is_the_hash_of_the_whole() {
        let mut pieces = Fnv1a64::new();
        pieces.update(b"foo");
        pieces.update(b"");
        pieces.update(b"bar");
        assert_eq!(pieces.value(), fnv1a64(b"foobar"));
    }
}
