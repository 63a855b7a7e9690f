//! What a phone sees, the same at a gateway and at the aggregator: how its device id is read from
//! the upgrade request's query string, and the text that tells it its durable total.
//!
//! Both ends share this so that a phone moving between a gateway and a direct connection is
//! counted under the same device id and reads the same messages.

use crate::frame::MAX_DEVICE_ID_LEN;

/// The `Content-Security-Policy` of the phone page wherever it is served (the aggregator and the
/// gateways): scripts and styles only from the page's origin, no framing; `connect-src` allows
/// any ws:/wss: because the page may be pointed at another server.
pub const PAGE_CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The query parameter that names the device: `/ws?device=ID`.
pub const DEVICE_PARAM: &[u8] = b"device";

/// Why a device id was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceIdError {
    /// Longer than [`MAX_DEVICE_ID_LEN`] bytes once decoded.
    TooLong,
}

impl core::fmt::Display for DeviceIdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLong => write!(f, "device id longer than {MAX_DEVICE_ID_LEN} bytes"),
        }
    }
}

impl core::error::Error for DeviceIdError {}

/// A decoded device id: at most [`MAX_DEVICE_ID_LEN`] bytes.
pub type DeviceId = crate::ShortBytes<MAX_DEVICE_ID_LEN>;

/// The `device` parameter of a query string (the part after `?`), percent-decoded (`+` is a
/// space; a `%` not followed by two hex digits stands for itself). `Ok(None)` when absent or empty.
pub fn device_id(query: &[u8]) -> Result<Option<DeviceId>, DeviceIdError> {
    let Some(value) = query.split(|&b| b == b'&').find_map(|pair| {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &pair[pair.len()..]),
        };
        (key == DEVICE_PARAM).then_some(value)
    }) else {
        return Ok(None);
    };
    let mut out = [0u8; MAX_DEVICE_ID_LEN];
    let mut len = 0;
    let mut i = 0;
    while i < value.len() {
        let (byte, used) = match value[i] {
            b'%' => match (value.get(i + 1).and_then(hex), value.get(i + 2).and_then(hex)) {
                (Some(hi), Some(lo)) => (hi << 4 | lo, 3),
                _ => (b'%', 1),
            },
            b'+' => (b' ', 1),
            b => (b, 1),
        };
        *out.get_mut(len).ok_or(DeviceIdError::TooLong)? = byte;
        len += 1;
        i += used;
    }
    Ok(DeviceId::new(&out[..len]).filter(|d| !d.is_empty()))
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Longest durable message: `{"durable":` + 20 digits + `}`.
pub const MAX_DURABLE_MESSAGE_LEN: usize = 32;

/// Writes the text message `{"durable":N}` into `out` and returns its length: the phone's bytes on
/// this connection that a database commit holds.
pub fn durable_message(total: u64, out: &mut [u8; MAX_DURABLE_MESSAGE_LEN]) -> usize {
    const PREFIX: &[u8] = b"{\"durable\":";
    out[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 20];
    let mut n = total;
    let mut d = digits.len();
    loop {
        d -= 1;
        digits[d] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let end = PREFIX.len() + digits.len() - d;
    out[PREFIX.len()..end].copy_from_slice(&digits[d..]);
    out[end] = b'}';
    end + 1
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::format;

    fn id(q: &str) -> Result<Option<DeviceId>, DeviceIdError> {
        device_id(q.as_bytes())
    }

    #[test]
    fn device_ids_decode_like_a_browser_encodes_them() {
        assert_eq!(id("a=1&device=ph%20one+x").unwrap().unwrap().as_slice(), b"ph one x");
        assert_eq!(id("device=%zz%4").unwrap().unwrap().as_slice(), b"%zz%4");
        assert_eq!(id("x=1").unwrap(), None);
        assert_eq!(id("device=").unwrap(), None);
        assert_eq!(id("device").unwrap(), None);
        assert_eq!(id("").unwrap(), None);
        assert_eq!(id(&format!("device={}", "a".repeat(32))).unwrap().unwrap().as_slice().len(), 32);
        assert_eq!(id(&format!("device={}", "a".repeat(33))), Err(DeviceIdError::TooLong));
        // Percent-encoded bytes count once decoded.
        assert!(id(&format!("device={}", "%41".repeat(32))).unwrap().is_some());
    }

    #[test]
    fn durable_messages() {
        let mut out = [0; MAX_DURABLE_MESSAGE_LEN];
        let n = durable_message(0, &mut out);
        assert_eq!(&out[..n], b"{\"durable\":0}");
        let n = durable_message(u64::MAX, &mut out);
        assert_eq!(&out[..n], b"{\"durable\":18446744073709551615}");
    }
}
