//! The canonical JSON that events and checkpoints are hashed and signed
//! in: RFC 8785 (JCS) for the subset of JSON Bulkhead writes. Members are
//! sorted by name, there is no whitespace, strings escape only `"`, `\` and
//! control characters (`\b \t \n \f \r` in short form, others as `\u00xx`),
//! and numbers are integers (a float is refused when an event is made, so
//! no two implementations can disagree on how to print it).
//!
//! Python's `json.dumps(v, sort_keys=True, separators=(",", ":"),
//! ensure_ascii=False)` produces exactly these bytes for such values.

use serde_json::Value;
use thiserror::Error;

/// Integers beyond this lose precision in verifiers that read JSON numbers
/// as doubles (JavaScript, many others), so they are refused.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CanonicalError {
    #[error("audit details hold a non-integer number ({0}); record it as a string")]
    Float(String),
    #[error("audit details hold an integer beyond ±2^53 ({0}); record it as a string")]
    LargeInteger(String),
}

/// A JSON value already in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalJson(String);

impl CanonicalJson {
    pub fn from_value(value: &Value) -> Result<Self, CanonicalError> {
        let mut out = String::with_capacity(64);
        write_value(value, &mut out)?;
        Ok(Self(out))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }

    /// Trusts `text` to be canonical already: for values read back from the
    /// store, which only ever holds what [`CanonicalJson::from_value`] made.
    pub fn assume_canonical(text: String) -> Self {
        Self(text)
    }
}

/// Appends the canonical form of `value` to `out`.
pub fn write_value(value: &Value, out: &mut String) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                if i.unsigned_abs() > MAX_SAFE_INTEGER {
                    return Err(CanonicalError::LargeInteger(n.to_string()));
                }
                out.push_str(&i.to_string());
            } else if let Some(u) = n.as_u64() {
                if u > MAX_SAFE_INTEGER {
                    return Err(CanonicalError::LargeInteger(n.to_string()));
                }
                out.push_str(&u.to_string());
            } else {
                return Err(CanonicalError::Float(n.to_string()));
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, out)?;
            }
            out.push(']');
        }
        Value::Object(members) => {
            // Sorted here, whatever order the map keeps: JCS sorts by UTF-16
            // code units, which for the names Bulkhead writes (ASCII) is
            // byte order.
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_unstable_by(|a, b| utf16_cmp(a.0, b.0));
            out.push('{');
            for (i, (name, member)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(name, out);
                out.push(':');
                write_value(member, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn utf16_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// Appends `s` as a JSON string with only the escapes JCS requires.
pub fn write_string(s: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\u{08}' => "\\b",
            '\t' => "\\t",
            '\n' => "\\n",
            '\u{0c}' => "\\f",
            '\r' => "\\r",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push_str(escape);
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn canonical(v: Value) -> String {
        CanonicalJson::from_value(&v).map(CanonicalJson::into_string).unwrap_or_default()
    }

    #[test]
    fn sorts_members_and_escapes_only_what_jcs_requires() {
        assert_eq!(
            canonical(json!({"b": [1, true, null], "a": {"z": "x", "y": -3}})),
            r#"{"a":{"y":-3,"z":"x"},"b":[1,true,null]}"#
        );
        assert_eq!(
            canonical(json!("quote\" back\\ nl\n tab\t bell\u{7} é € / \u{1F600}")),
            "\"quote\\\" back\\\\ nl\\n tab\\t bell\\u0007 é € / \u{1F600}\""
        );
        // JCS orders by UTF-16 code units: U+1F600 (D83D...) before U+FFFD.
        assert_eq!(
            canonical(json!({"\u{fffd}": 1, "\u{1F600}": 2})),
            "{\"\u{1F600}\":2,\"\u{fffd}\":1}"
        );
    }

    #[test]
    fn refuses_numbers_verifiers_could_print_or_read_differently() {
        assert!(matches!(
            CanonicalJson::from_value(&json!({"x": 1.5})),
            Err(CanonicalError::Float(_))
        ));
        assert!(CanonicalJson::from_value(&json!(9_007_199_254_740_991u64)).is_ok());
        assert!(matches!(
            CanonicalJson::from_value(&json!(9_007_199_254_740_992u64)),
            Err(CanonicalError::LargeInteger(_))
        ));
    }
}
