//! Path and query decoding (spec 1.1): split the raw path on `/` first, then
//! percent-decode each segment, so `%2F` stays inside its segment.

/// Percent-decodes one path segment. Invalid escapes are kept literally; invalid
/// UTF-8 is an error.
pub fn decode_segment(raw: &str) -> Result<String, String> {
    percent_decode(raw, false)
}

/// Form-decodes one query component (`+` is a space).
pub fn decode_form(raw: &str) -> Result<String, String> {
    percent_decode(raw, true)
}

fn percent_decode(raw: &str, plus_is_space: bool) -> Result<String, String> {
    if !raw.contains(['%', '+']) {
        return Ok(raw.to_string());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{raw}` does not decode to UTF-8"))
}

/// Splits a path into decoded segments; the leading `/` gives no empty segment.
pub fn split_path(path: &str) -> Result<Vec<String>, String> {
    path.strip_prefix('/')
        .unwrap_or(path)
        .split('/')
        .map(decode_segment)
        .collect()
}

/// Parses `a=1&b=x+y&b=z` into decoded pairs, in order (repeats kept).
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode_form(k)?, decode_form(v)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_keep_encoded_slashes() {
        assert_eq!(
            split_path("/api/kv/get/session%2Fabc").unwrap(),
            vec!["api", "kv", "get", "session/abc"]
        );
        assert_eq!(
            split_path("/api/find/my%20collection/a+b").unwrap(),
            vec!["api", "find", "my collection", "a+b"]
        );
        assert_eq!(split_path("/api/x/%E9%9B%AA").unwrap()[2], "雪");
        assert!(split_path("/api/%FF").is_err());
        assert_eq!(split_path("/api/100%").unwrap()[1], "100%");
    }

    #[test]
    fn query_strings_are_form_encoded() {
        assert_eq!(
            parse_query("transaction_id=t+x&f=a%2Cb&f=c&flag&").unwrap(),
            vec![
                ("transaction_id".into(), "t x".into()),
                ("f".into(), "a,b".into()),
                ("f".into(), "c".into()),
                ("flag".into(), "".into())
            ]
        );
        assert!(parse_query("").unwrap().is_empty());
    }
}
