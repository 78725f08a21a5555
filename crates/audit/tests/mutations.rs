//! Any change to an export is caught: random byte edits and removed lines,
//! over a real export built the way the exporter builds one. The only
//! bytes that may change unnoticed are the header's `tenant`,
//! `exported_at` and keys' `created_at` values (for people, not signed),
//! and the only lines that may go are stored periodic checkpoints (the
//! export checkpoint still signs the whole chain after them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::sync::OnceLock;

use bulkhead_audit::{Actor, NewEvent, canonical::CanonicalJson, verify_export};
use proptest::prelude::*;
use serde_json::{Value, json};
use time::OffsetDateTime;

#[path = "support/signed_export.rs"]
mod support;
use support::signed_export;

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
