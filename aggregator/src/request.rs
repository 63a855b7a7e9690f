//! Reading a request's credentials, below both the routes (`http`) and the access rules (`web`,
//! `devices`) that use them: query values and a comparison of secrets that does not tell how
//! much of a guess was right.

/// Decodes `%XX` escapes and `+` of a query value.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of `name` in the request's query string.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was right
/// (the length may show; tokens should be long and random).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(query_param(Some("a=1&device=ph%20one+x"), "device").as_deref(), Some("ph one x"));
        assert_eq!(query_param(Some("device=%zz%4"), "device").as_deref(), Some("%zz%4"));
        assert_eq!(query_param(Some("x=1"), "device"), None);
        assert_eq!(query_param(None, "device"), None);
    }
}
