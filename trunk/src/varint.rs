//! LEB128 variable-length unsigned integers, the only integer encoding inside frame payloads.
//!
//! Small numbers dominate the protocol (session ids, byte counts of phones that send one byte at a
//! time), so a varint keeps a count entry at a few bytes. Decoding is strict: an encoding that is
//! longer than necessary or does not fit in 64 bits is rejected, so every value has exactly one
//! encoding and a roundtrip is byte-exact.

/// The longest encoding of a `u64`.
pub const MAX_LEN: usize = 10;

/// Number of bytes `value` takes when encoded.
pub const fn len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Writes `value` at the start of `out`; returns the bytes written, or `None` if `out` is too short.
pub fn write(value: u64, out: &mut [u8]) -> Option<usize> {
    let n = len(value);
    let out = out.get_mut(..n)?;
    let mut v = value;
    for (i, byte) in out.iter_mut().enumerate() {
        let more = i + 1 < n;
        *byte = (v as u8 & 0x7f) | if more { 0x80 } else { 0 };
        v >>= 7;
    }
    Some(n)
}

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VarintError {
    /// The input ended inside the varint.
    Incomplete,
    /// Longer than necessary, or larger than `u64::MAX`.
    Invalid,
}

impl core::fmt::Display for VarintError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Incomplete => "the input ends inside a varint",
            Self::Invalid => "a varint longer than necessary or larger than u64::MAX",
        })
    }
}

impl core::error::Error for VarintError {}

/// Reads a varint from the start of `input`; returns the value and the bytes consumed.
pub fn read(input: &[u8]) -> Result<(u64, usize), VarintError> {
    let mut value: u64 = 0;
    for (i, &byte) in input.iter().enumerate().take(MAX_LEN) {
        let bits = u64::from(byte & 0x7f);
        if i == MAX_LEN - 1 && byte > 1 {
            return Err(VarintError::Invalid); // would overflow 64 bits
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(VarintError::Invalid); // overlong: a trailing zero group
            }
            return Ok((value, i + 1));
        }
    }
    if input.len() >= MAX_LEN {
        Err(VarintError::Invalid)
    } else {
        Err(VarintError::Incomplete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_at_the_boundaries() {
        assert_eq!(len(0), 1);
        assert_eq!(len(127), 1);
        assert_eq!(len(128), 2);
        assert_eq!(len(16_383), 2);
        assert_eq!(len(16_384), 3);
        assert_eq!(len(u64::MAX), 10);
    }

    #[test]
    fn roundtrip_edges() {
        for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX - 1, u64::MAX] {
            let mut buf = [0u8; MAX_LEN];
            let n = write(v, &mut buf).unwrap();
            assert_eq!(n, len(v));
            assert_eq!(read(&buf[..n]), Ok((v, n)));
            if n > 1 {
                assert_eq!(read(&buf[..n - 1]), Err(VarintError::Incomplete));
            }
        }
    }

    #[test]
    fn rejects_overlong_and_overflow() {
        assert_eq!(read(&[0x80, 0x00]), Err(VarintError::Invalid));
        assert_eq!(read(&[0xff; 10]), Err(VarintError::Invalid));
        assert_eq!(
            read(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            Err(VarintError::Invalid)
        );
        assert_eq!(read(&[]), Err(VarintError::Incomplete));
    }
}
