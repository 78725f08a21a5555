//! What differs between two documents, field by field.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// One field that differs: its dotted path (`limits.rate_limit.burst`) and
/// its value before and after (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub field: String,
    pub from: Option<Value>,
    pub to: Option<Value>,
}

impl fmt::Display for Change {
    /// `field: before -> after`, values as compact JSON, `(none)` when
    /// absent.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |value: &Option<Value>| match value {
            Some(value) => value.to_string(),
            None => "(none)".to_owned(),
        };
        write!(f, "{}: {} -> {}", self.field, show(&self.from), show(&self.to))
    }
}

/// The fields whose values differ between `from` and `to`, in order of
/// their paths. Mappings are compared key by key; anything else (a list
/// included) is one value.
pub fn changes(from: &Value, to: &Value) -> Vec<Change> {
    let (mut from_fields, mut to_fields) = (Vec::new(), Vec::new());
    leaves("", from, &mut from_fields);
    leaves("", to, &mut to_fields);
    let mut fields: Vec<&String> =
        from_fields.iter().chain(&to_fields).map(|(field, _)| field).collect();
    fields.sort();
    fields.dedup();
    let value_of = |fields: &[(String, &Value)], field: &str| {
        fields.iter().find(|(f, _)| f == field).map(|(_, v)| (*v).clone())
    };
    fields
        .into_iter()
        .filter_map(|field| {
            let (before, after) = (value_of(&from_fields, field), value_of(&to_fields, field));
            (before != after).then(|| Change { field: field.clone(), from: before, to: after })
        })
        .collect()
}

fn leaves<'v>(path: &str, value: &'v Value, out: &mut Vec<(String, &'v Value)>) {
    match value {
        Value::Object(fields) => {
            for (key, value) in fields {
                let path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                leaves(&path, value, out);
            }
        }
        Value::Null if path.is_empty() => {}
        value => out.push((path.to_owned(), value)),
    }
}
