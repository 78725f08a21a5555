//! Reads: the request's path. Adds: its one canonical spelling, which is
//! both what routes match and what the upstream receives, so the gateway
//! and the upstream can never disagree on which route a path is under.
//!
//! Percent-encoded unreserved characters are decoded (`%65cho` is `echo`,
//! RFC 3986 §6.2.2.2), other escapes get upper-case hex. Paths with dot
//! segments (`..`, `%2e%2e`), empty segments (`//`), an encoded `/` or `\`,
//! a backslash or a NUL are refused, not rewritten: a client that sends
//! them is probing.

use crate::error::{Code, Phase, Refusal};

fn refuse(reason: &'static str) -> Refusal {
    Refusal::new(Phase::Route, Code::BadRequest, reason)
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The canonical form of `path` (no query), or why it is refused.
pub fn canonical(path: &str) -> Result<String, Refusal> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(refuse("path does not start with '/'"));
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(refuse("malformed percent-encoding"));
                };
                let decoded = hi << 4 | lo;
                match decoded {
                    b'/' | b'\\' | 0 => return Err(refuse("encoded '/', '\\' or NUL in path")),
                    d if unreserved(d) => out.push(char::from(d)),
                    d => {
                        out.push('%');
                        out.push(char::from(b"0123456789ABCDEF"[usize::from(d >> 4)]));
                        out.push(char::from(b"0123456789ABCDEF"[usize::from(d & 15)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(refuse("backslash in path")),
            _ => {
                out.push(char::from(b));
                i += 1;
            }
        }
    }
    // The interior segments: the last one may be empty (a trailing '/').
    let mut segments = out[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == "." || segment == ".." {
            return Err(refuse("dot segment in path"));
        }
        if segment.is_empty() && !last {
            return Err(refuse("empty segment in path"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_per_path_and_no_escape() {
        let ok = [
            ("/", "/"),
            ("/echo", "/echo"),
            ("/echo/", "/echo/"),
            ("/%65cho/x", "/echo/x"),
            ("/a%20b", "/a%20b"),
            ("/a%3bb", "/a%3Bb"),
            ("/a;b=c", "/a;b=c"),
            ("/a.b/..c", "/a.b/..c"),
        ];
        for (path, canonical_form) in ok {
            assert_eq!(canonical(path).unwrap(), canonical_form, "{path}");
        }
        let refused = [
            "",
            "echo",
            "/api/../other",
            "/api/./x",
            "/..",
            "/api/%2e%2e/other",
            "/api/%2E./x",
            "/a%2Fb",
            "/a%2fb",
            "/a%5cb",
            "/a\\b",
            "//x",
            "/a//b",
            "/a%00",
            "/a%",
            "/a%zz",
            "/a%2",
        ];
        for path in refused {
            assert!(canonical(path).is_err(), "{path:?} passed");
        }
    }
}
