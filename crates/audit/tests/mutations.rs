//! Any change to an export is caught: random byte edits and removed lines,
//! over a real export built the way the exporter builds one. The only
//! bytes that may change unnoticed are the header's `tenant`,
//! `exported_at` and keys' `created_at` values (for people, not signed),
//! and the only lines that may go are stored periodic checkpoints (the
//! export checkpoint still signs the whole chain after them).
//!
//! Nor does a line pass that is not canonical, even with its hash and
//! every signature made over its bytes as they are (as a writer that wrote
//! such lines would have made them): members in any other order, details
//! spelt any other way. And an export extends an earlier one exactly when
//! it keeps the earlier one's history.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::sync::OnceLock;

use bulkhead_audit::{
    Actor, NewEvent,
    canonical::{CanonicalJson, MAX_SAFE_INTEGER, write_string},
    verify::{Earlier, verify_export_extending},
    verify_export,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use time::OffsetDateTime;

#[path = "support/signed_export.rs"]
mod support;
use support::{Stream, event_members, object, sample_event, signed_export};

/// 12 events with `\u{e9}` and escapes in their details, checkpointed every
/// 5, closed by an export checkpoint; made once.
fn export() -> &'static [u8] {
    static EXPORT: OnceLock<Vec<u8>> = OnceLock::new();
    EXPORT.get_or_init(build)
}

fn build() -> Vec<u8> {
    signed_export(12, 5, |stream, n| NewEvent {
        stream: stream.clone(),
        time: OffsetDateTime::now_utc(),
        actor: Actor { kind: "operator".into(), id: "initial".into() },
        action: "secret.write".into(),
        resource: format!("secrets/db/{n}"),
        outcome: "ok".into(),
        request_id: (n % 2 == 0).then(|| format!("{n:032x}")),
        details: CanonicalJson::from_value(
            &json!({ "path": format!("db/caf\u{e9}/{n}"), "note": "a \"quoted\"\ttab" }),
        )
        .unwrap(),
    })
}

/// The header without the members that are not signed.
fn signed_header(line: &str) -> Option<Value> {
    let mut header: Value = serde_json::from_str(line).ok()?;
    let object = header.as_object_mut()?;
    object.remove("tenant");
    object.remove("exported_at");
    for key in object.get_mut("keys")?.as_array_mut()? {
        key.as_object_mut()?.remove("created_at");
    }
    Some(header)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn an_edited_byte_is_caught(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let original = export();
        let at = at.index(original.len());
        prop_assume!(original[at] != byte);
        let mut edited = original.to_vec();
        edited[at] = byte;
        if verify_export(edited.as_slice(), &[]).is_ok() {
            // Then only an unsigned header member changed.
            let text = String::from_utf8(edited).unwrap();
            let original = std::str::from_utf8(original).unwrap();
            let (head, rest) = text.split_once('\n').unwrap();
            let (original_head, original_rest) = original.split_once('\n').unwrap();
            prop_assert_eq!(rest, original_rest);
            prop_assert_eq!(signed_header(head), signed_header(original_head));
        }
    }

    #[test]
    fn a_removed_line_is_caught_unless_it_was_a_stored_checkpoint(at in any::<prop::sample::Index>()) {
        let original = std::str::from_utf8(export()).unwrap();
        let lines: Vec<&str> = original.lines().collect();
        let at = at.index(lines.len());
        let kept: String = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != at)
            .map(|(_, line)| format!("{line}\n"))
            .collect();
        let periodic = lines[at].contains("\"kind\":\"periodic\"");
        prop_assert_eq!(verify_export(kept.as_bytes(), &[]).is_ok(), periodic, "line {}", at);
    }
}

/// Details: an object of any JSON Bulkhead can write (integers only),
/// names and strings with escapes, non-ASCII and characters whose UTF-16
/// order is not their code point order.
fn details() -> impl Strategy<Value = Value> {
    let text = "[a-c/é\"\\\\\t\u{1}\u{1f}\u{7f} \u{e000}\u{1f600}]{0,4}";
    let max = MAX_SAFE_INTEGER as i64;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-max..=max).prop_map(Value::from),
        prop_oneof![Just(-max), Just(max), Just(0)].prop_map(Value::from),
        text.prop_map(Value::from),
    ];
    let value = leaf.prop_recursive(3, 16, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(text, inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map(text, value, 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
}

/// `value` as JSON of the same meaning, each spelling choice taken from
/// `choices` (0, or none left: the canonical one): whitespace, members in
/// reverse order or repeated, `\/` and `\u` escapes, `1.0` and `1e0`.
fn respell(value: &Value, choices: &mut dyn Iterator<Item = u8>, out: &mut String) {
    let mut choice = || choices.next().unwrap_or(0);
    match value {
        Value::Object(members) => {
            let mut members: Vec<(&String, &Value)> = members.iter().collect();
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            if choice() % 8 == 1 {
                members.reverse();
            }
            let repeat = choice() % 8 == 2;
            let space = choice() % 8 == 3;
            out.push('{');
            for (i, (name, member)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                respell(&Value::from(name.as_str()), choices, out);
                out.push(':');
                if space {
                    out.push(' ');
                }
                respell(member, choices, out);
            }
            if let Some((name, member)) = members.first().filter(|_| repeat) {
                out.push(',');
                respell(&Value::from(name.as_str()), choices, out);
                out.push(':');
                respell(member, choices, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            let space = choice() % 8 == 1;
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    if space {
                        out.push(' ');
                    }
                }
                respell(item, choices, out);
            }
            out.push(']');
        }
        Value::String(text) => {
            out.push('"');
            for c in text.chars() {
                match (choice() % 8, c) {
                    (1, '/') => out.push_str("\\/"),
                    (1, c) if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    (2, c) if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04X}", c as u32)),
                    (_, c) => {
                        let mut one = String::new();
                        write_string(&c.to_string(), &mut one);
                        out.push_str(&one[1..one.len() - 1]);
                    }
                }
            }
            out.push('"');
        }
        Value::Number(n) => match choice() % 8 {
            1 => out.push_str(&format!("{n}.0")),
            2 => out.push_str(&format!("{n}e0")),
            _ => out.push_str(&n.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

/// Whether two values mean the same, numbers compared as floats (`1` and
/// `1.0`, and the last digit a float parser may round).
fn same_meaning(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= x.abs().max(1.0) * 1e-12
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_meaning(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_meaning(v, w)))
        }
        (x, y) => x == y,
    }
}

/// Four events, the 3rd with `details` spelt `spelling`, hash and
/// signatures made over the bytes as they are.
fn export_with_details(details: &Value, spelling: String) -> String {
    let details = CanonicalJson::from_value(details).unwrap();
    let mut stream = Stream::new();
    stream.append(2, sample_event);
    stream.append_edited(
        1,
        |s, n| NewEvent { details: details.clone(), ..sample_event(s, n) },
        |_, event, _| {
            let mut members = event_members(event);
            members[2] = format!("\"details\":{spelling}");
            object(&members)
        },
    );
    stream.append(1, sample_event);
    stream.export(1, 2)
}

/// Eight events, event `at` with its members in `order`.
fn export_in_order(at: u64, order: &[usize]) -> String {
    let mut stream = Stream::new();
    stream.append_edited(8, sample_event, |seq, event, line| {
        if seq != at {
            return line;
        }
        let members = event_members(event);
        object(&order.iter().map(|i| members[*i].clone()).collect::<Vec<_>>())
    });
    stream.export(1, 3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn members_in_any_other_order_are_caught(
        order in Just((0..12).collect::<Vec<usize>>()).prop_shuffle(),
        at in 1..=8u64,
    ) {
        let export = export_in_order(at, &order);
        let canonical = order.iter().enumerate().all(|(i, m)| i == *m);
        match verify_export(export.as_bytes(), &[]) {
            Ok(_) => prop_assert!(canonical, "members in order {:?} passed", order),
            Err(broken) => {
                prop_assert!(!canonical, "{}", broken);
                prop_assert!(broken.problem.contains("the event line is not canonical"), "{}", broken);
                prop_assert_eq!(broken.seq, None);
            }
        }
    }

    #[test]
    fn details_spelt_any_other_way_are_caught(
        details in details(),
        choices in prop::collection::vec(prop_oneof![4 => Just(0u8), 1 => any::<u8>()], 0..64),
    ) {
        let canonical = CanonicalJson::from_value(&details).unwrap().into_string();
        let mut spelling = String::new();
        respell(&details, &mut choices.into_iter(), &mut spelling);
        // The same meaning, whatever the spelling.
        let read: Value = serde_json::from_str(&spelling).unwrap();
        prop_assert!(same_meaning(&read, &details), "{} means {:?}", spelling, read);
        let export = export_with_details(&details, spelling.clone());
        match verify_export(export.as_bytes(), &[]) {
            Ok(_) => prop_assert_eq!(&spelling, &canonical),
            Err(broken) => {
                prop_assert_ne!(&spelling, &canonical, "{}", broken);
                prop_assert!(broken.problem.contains("the event line is not canonical"), "{}", broken);
            }
        }
    }

    /// An export extends an earlier one (made when the stream had
    /// `earlier` events) exactly when it covers the earlier end and has the
    /// same hash there: served from `from`, rewritten from `rewrite`, or cut
    /// back to `cut` events.
    #[test]
    fn an_export_extends_exactly_the_history_it_keeps(
        total in 1..20u64,
        earlier in 0..20u64,
        from in 1..21u64,
        rewrite in 1..30u64,
        cut in 0..30u64,
    ) {
        let earlier = earlier.min(total);
        let mut stream = Stream::new();
        stream.append(total, sample_event);
        let old = stream.truncated(earlier).export(1, 4);
        let old = Earlier::of(&verify_export(old.as_bytes(), &[]).unwrap());
        let mut served = stream;
        if rewrite <= total {
            served = served.rewritten_from(rewrite, |s, n| NewEvent {
                outcome: "denied".into(),
                ..sample_event(s, n)
            });
        }
        let kept = cut.min(total);
        served = served.truncated(kept);
        let from = from.min(kept + 1);
        let export = served.export(from, 4);
        prop_assert!(verify_export(export.as_bytes(), &[]).is_ok());
        let verdict = verify_export_extending(export.as_bytes(), &[], Some(&old));
        let expected = if kept < earlier {
            Some("history was cut")
        } else if earlier == 0 {
            None
        } else if from - 1 > earlier {
            Some("cannot prove")
        } else if rewrite <= earlier {
            Some("history was rewritten")
        } else {
            None
        };
        match (verdict, expected) {
            (Ok(report), None) => prop_assert_eq!(report.extends, Some(old)),
            (Err(broken), Some(expected)) => {
                prop_assert!(broken.problem.contains(expected), "{} (expected {})", broken, expected)
            }
            (verdict, expected) => prop_assert!(false, "{:?}, expected {:?}", verdict, expected),
        }
    }
}
