//! JSON as the guard reads it: the strings of a document, decoded, and the
//! document with some of them replaced, every other byte as it came.

use std::ops::Range;

/// One string of a document: where it is (quotes included) and its text.
pub struct JsonString {
    pub span: Range<usize>,
    pub text: String,
}

/// Every string of `body` (keys too), in order; `None` when `body` is not
/// one JSON document.
pub fn strings(body: &[u8]) -> Option<Vec<JsonString>> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).ok()?;
    let mut strings = Vec::new();
    let mut at = 0;
    while at < body.len() {
        if body[at] != b'"' {
            at += 1;
            continue;
        }
        let start = at;
        at += 1;
        while at < body.len() && body[at] != b'"' {
            at += if body[at] == b'\\' { 2 } else { 1 };
        }
        let span = start..(at + 1).min(body.len());
        // A document that parsed has only strings that parse.
        let text = serde_json::from_slice::<String>(body.get(span.clone())?).ok()?;
        strings.push(JsonString { span, text });
        at += 1;
    }
    Some(strings)
}

/// `text` as a JSON string, quotes included.
pub fn encode(text: &[u8]) -> Vec<u8> {
    serde_json::to_vec(&String::from_utf8_lossy(text)).unwrap_or_default()
}

/// `body` with each span replaced; `None` when there is nothing to
/// replace. Spans are in order and do not overlap.
pub fn splice(body: &[u8], edits: Vec<(Range<usize>, Vec<u8>)>) -> Option<Vec<u8>> {
    if edits.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut at = 0;
    for (span, replacement) in edits {
        out.extend_from_slice(&body[at..span.start]);
        out.extend_from_slice(&replacement);
        at = span.end;
    }
    out.extend_from_slice(&body[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_found_decoded_and_replaced_in_place() {
        let body = br#"{"a\"b": ["x\n4111", 1, "\u0040y"], "k": {"z": true}}"#;
        let found = strings(body).unwrap();
        let texts: Vec<&str> = found.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(texts, ["a\"b", "x\n4111", "@y", "k", "z"]);
        let edits = vec![(found[1].span.clone(), encode(b"x\n[card]"))];
        let out = splice(body, edits).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"a\"b": ["x\n[card]", 1, "\u0040y"], "k": {"z": true}}"#
        );
        assert!(strings(b"{\"unclosed\": \"x").is_none());
        assert!(strings(b"not json").is_none());
        assert!(splice(body, Vec::new()).is_none());
    }
}
