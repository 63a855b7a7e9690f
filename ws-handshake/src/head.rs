//! HTTP/1.1 head lines as they stream in, kept in a small fixed buffer.
//!
//! The gateway reads a phone's upgrade request with this, and every client reads its upgrade
//! answer with it ([`crate::client`]). A gateway cannot afford a few KiB per phone for a request
//! it reads once, and it needs only a few short headers: so each line keeps its first [`MAX_LINE_LEN`] bytes, and the caller learns
//! whether the line was longer (a long `User-Agent` costs nothing; a long header the caller
//! needs is an error it can answer).

/// Bytes of one head line that are kept: a phone's request line with its device id (32 bytes,
/// up to 96 percent-encoded) and its device token (at most 107 bytes) fits.
pub const MAX_LINE_LEN: usize = 256;

/// A head line splitter with a total length bound.
#[derive(Clone)]
pub struct LineReader {
    line: [u8; MAX_LINE_LEN],
    len: u16,
    truncated: bool,
    total: usize,
    max_total: usize,
}

impl core::fmt::Debug for LineReader {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LineReader").field("total", &self.total).finish_non_exhaustive()
    }
}

/// What [`LineReader::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// All input consumed, no line ended.
    More,
    /// A line ended (its first bytes are in [`LineReader::line`]); `consumed` bytes were used.
    Line {
        /// Bytes of the input used, up to and including the line's `\n`.
        consumed: usize,
    },
    /// The head is longer than the bound.
    TooLong,
}

impl LineReader {
    /// A reader that accepts at most `max_total` bytes of head.
    pub const fn new(max_total: usize) -> Self {
        Self { line: [0; MAX_LINE_LEN], len: 0, truncated: false, total: 0, max_total }
    }

    /// Consumes bytes up to and including the next `\n`.
    pub fn feed(&mut self, data: &[u8]) -> Step {
        for (i, &b) in data.iter().enumerate() {
            self.total += 1;
            if self.total > self.max_total {
                return Step::TooLong;
            }
            if b == b'\n' {
                return Step::Line { consumed: i + 1 };
            }
            if usize::from(self.len) < MAX_LINE_LEN {
                self.line[usize::from(self.len)] = b;
                self.len += 1;
            } else {
                self.truncated = true;
            }
        }
        Step::More
    }

    /// The line that just ended, without its `\r\n`, and whether bytes beyond
    /// [`MAX_LINE_LEN`] were dropped.
    pub fn line(&self) -> (&[u8], bool) {
        let line = &self.line[..usize::from(self.len)];
        (line.strip_suffix(b"\r").unwrap_or(line), self.truncated)
    }

    /// Forget the line that ended; the next [`LineReader::feed`] starts a new one.
    pub fn next_line(&mut self) {
        self.len = 0;
        self.truncated = false;
    }
}

/// Splits a header line into its name and value (whitespace trimmed); `None` if it has no colon.
pub fn header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    Some((&line[..colon], line[colon + 1..].trim_ascii()))
}

/// Whether a comma-separated header value holds `token` (ASCII case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Unix seconds of an HTTP date in the IMF-fixdate form every server sends
/// (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 section 5.6.7); `None` for anything else.
pub fn http_date(value: &[u8]) -> Option<u64> {
    let [_, _, _, b',', b' ', d1, d2, b' ', m1, m2, m3, b' ', y1, y2, y3, y4, b' ', h1, h2, b':', n1, n2, b':', s1, s2, b' ', b'G', b'M', b'T'] =
        *value
    else {
        return None;
    };
    let num = |digits: &[u8]| {
        digits.iter().try_fold(0u64, |n, &d| d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0')))
    };
    const MONTHS: [&[u8; 3]; 12] =
        [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];
    let month = MONTHS.iter().position(|m| **m == [m1, m2, m3])? as u64 + 1;
    let (year, day) = (num(&[y1, y2, y3, y4])?, num(&[d1, d2])?);
    let (hour, minute, second) = (num(&[h1, h2])?, num(&[n1, n2])?, num(&[s1, s2])?);
    if year < 1970 || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from 1970-01-01 to the date (the proleptic Gregorian calendar, years from March, so
    // that the leap day is the last day of a year).
    let (y, m) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let (era, year_of_era) = (y / 400, y % 400);
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = (era * 146_097 + day_of_era).checked_sub(719_468)?;
    Some(days * 86_400 + hour * 3_600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_read_as_unix_seconds() {
        assert_eq!(http_date(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(http_date(b"Thu, 03 Dec 2026 10:53:13 GMT"), Some(1_796_295_193));
        assert_eq!(http_date(b"Tue, 29 Feb 2028 23:59:59 GMT"), Some(1_835_481_599));
        assert_eq!(http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), None, "only IMF-fixdate");
        assert_eq!(http_date(b"Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(http_date(b"Sun, 06 Xyz 1994 08:49:37 GMT"), None);
        assert_eq!(http_date(b"Sun, 06 Nov 19x4 08:49:37 GMT"), None);
        assert_eq!(http_date(b""), None);
    }

    #[test]
    fn lines_split_across_reads_and_long_lines_are_cut() {
        let mut r = LineReader::new(1000);
        assert_eq!(r.feed(b"GET / HT"), Step::More);
        assert_eq!(r.feed(b"TP/1.1\r\nHost"), Step::Line { consumed: 8 });
        assert_eq!(r.line(), (&b"GET / HTTP/1.1"[..], false));
        r.next_line();
        let long = [b'a'; 300];
        assert_eq!(r.feed(&long), Step::More);
        assert_eq!(r.feed(b"\n"), Step::Line { consumed: 1 });
        assert_eq!(r.line(), (&long[..MAX_LINE_LEN], true));
        let mut r = LineReader::new(10);
        assert_eq!(r.feed(b"0123456789abc"), Step::TooLong);
    }

    #[test]
    fn headers_and_tokens() {
        assert_eq!(
            header(b"Connection:  keep-alive, Upgrade "),
            Some((&b"Connection"[..], &b"keep-alive, Upgrade"[..]))
        );
        assert!(has_token(b"keep-alive, Upgrade", b"upgrade"));
        assert!(!has_token(b"keep-alive", b"upgrade"));
        assert_eq!(header(b"no colon"), None);
    }
}
