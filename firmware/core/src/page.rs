//! The phone page, served by the gateway itself: a site whose uplink is down still hands its
//! phones the page, and the page connects to the gateway it came from (its default server is
//! `ws://` + the page's own host + `/ws`).
//!
//! The files are the aggregator's phone page (aggregator/web: `/`, `/app.js`, `/style.css`),
//! gzip-compressed at build time (`build.rs`) and kept in flash as constants: serving them costs
//! no RAM beyond the phone socket that asks. They are sent with `Content-Encoding: gzip`, which
//! every browser accepts; a client that says it does not (an `Accept-Encoding` without gzip) is
//! refused with 406.

/// One file of the page.
#[derive(Debug, PartialEq, Eq)]
pub struct File {
    /// Where the browser asks for it.
    pub path: &'static [u8],
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// The compressed length, as the `Content-Length` header's digits.
    pub length: &'static str,
    /// The length before compression.
    pub plain_len: usize,
    /// The file, gzip-compressed.
    pub gzip: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/page.rs"));

/// The file at `path`, if it is one of the page's.
pub fn find(path: &[u8]) -> Option<&'static File> {
    FILES.iter().find(|f| f.path == path)
}

/// The same headers the aggregator sends with its pages: scripts and styles from this origin
/// only, no framing, no sniffing, no referrer, always revalidated.
const HEADERS: &str = concat!(
    "\r\nContent-Encoding: gzip\r\nCache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n",
    "Referrer-Policy: no-referrer\r\nConnection: close\r\nContent-Security-Policy: ",
);

/// The `200 OK` answer's head for `file`, as pieces to write one after another (then the body,
/// [`File::gzip`]).
pub fn head(file: &'static File) -> [&'static [u8]; 7] {
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: ",
        file.content_type.as_bytes(),
        HEADERS.as_bytes(),
        trunk::phone::PAGE_CONTENT_SECURITY_POLICY.as_bytes(),
        b"\r\nContent-Length: ",
        file.length.as_bytes(),
        b"\r\n\r\n",
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_there_compressed_with_its_length() {
        assert_eq!(FILES.len(), 3);
        for f in FILES {
            assert_eq!(&f.gzip[..2], b"\x1f\x8b", "a gzip stream");
            assert_eq!(f.length.parse::<usize>().unwrap(), f.gzip.len());
            // The trailer's ISIZE is the original length: the whole file went in.
            let isize = u32::from_le_bytes(f.gzip[f.gzip.len() - 4..].try_into().unwrap());
            assert_eq!(isize as usize, f.plain_len);
            assert!(f.gzip.len() < f.plain_len / 2, "{}: compressed to {}", f.content_type, f.gzip.len());
        }
        assert!(find(b"/").is_some() && find(b"/app.js").is_some() && find(b"/ws").is_none());
    }
}
