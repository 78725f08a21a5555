//! The offline verifier is as strict as the format: every line canonical,
//! one export checkpoint and only last, a final newline, the first event
//! chained to the anchor; and, given an earlier export, it proves that
//! this one extends it. Each case is a whole export with real signatures,
//! written the way a writer that wrote such lines would (hashes and
//! signatures over the bytes as they are), so only strictness refuses it.
//! The independent Python verifier (crates/cli/tests/e2e/verify_audit.py)
//! is held to the same verdicts where python3 with `cryptography` is
//! available.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::{path::PathBuf, process::Command, sync::OnceLock};

use bulkhead_audit::{
    CheckpointKind, Event, NewEvent, StreamId,
    canonical::CanonicalJson,
    record::hex,
    verify::{Earlier, Report, verify_export_extending},
    verify_export,
};
use uuid::Uuid;

#[path = "support/signed_export.rs"]
mod support;
use support::{Stream, event_members, object, sample_event};

const PYTHON_VERIFIER: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/tests/e2e/verify_audit.py");

fn python_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let probe = Command::new("python3").args(["-c", "import cryptography"]).output();
        let available = probe.is_ok_and(|out| out.status.success());
        if !available {
            eprintln!("python3 with cryptography not found: the Python verifier is not run");
        }
        available
    })
}

fn temp_file(text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("bulkhead-verify-{}.jsonl", Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    path
}

/// What the Python verifier says of `export` (given an earlier export),
/// as (accepted, output); `None` without python3 and `cryptography`.
fn python(export: &str, previous: Option<&str>) -> Option<(bool, String)> {
    if !python_available() {
        return None;
    }
    let file = temp_file(export);
    let earlier = previous.map(temp_file);
    let mut command = Command::new("python3");
    command.arg(PYTHON_VERIFIER).arg(&file);
    if let Some(earlier) = &earlier {
        command.arg("--previous").arg(earlier);
    }
    let out = command.output().unwrap();
    std::fs::remove_file(file).unwrap();
    if let Some(earlier) = earlier {
        std::fs::remove_file(earlier).unwrap();
    }
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some((out.status.success(), said))
}

/// Both verifiers accept `export`.
fn accepted(export: &str) -> Report {
    let report = verify_export(export.as_bytes(), &[]).unwrap_or_else(|e| panic!("{e}\n{export}"));
    if let Some((ok, said)) = python(export, None) {
        assert!(ok && said.starts_with("ok "), "python: {said}");
    }
    report
}

/// Both verifiers refuse `export`; Bulkhead's names `expected`.
fn refused(export: &str, expected: &str) -> String {
    let problem = verify_export(export.as_bytes(), &[])
        .err()
        .unwrap_or_else(|| panic!("accepted, expected {expected:?}:\n{export}"))
        .to_string();
    assert!(problem.contains(expected), "{problem:?} does not say {expected:?}");
    if let Some((ok, said)) = python(export, None) {
        assert!(!ok, "python accepted what Bulkhead refuses ({problem}): {said}");
    }
    problem
}

/// A stream of 6 events, the 3rd written by `edit` (members in canonical
/// order, as `"name":value` texts, in and out), its hash then made to match
/// its bytes; checkpointed at 4; exported whole.
fn export_with_third(edit: impl Fn(Vec<String>) -> String) -> String {
    let mut stream = Stream::new();
    stream.append(2, sample_event);
    stream.append_edited(1, sample_event, |_, event, _| edit(event_members(event)));
    stream.append(3, sample_event);
    stream.export(1, 4)
}

/// The 3rd event's members in this order (indices into canonical order).
fn in_order(order: &[usize]) -> String {
    export_with_third(|members| {
        object(&order.iter().map(|i| members[*i].clone()).collect::<Vec<_>>())
    })
}

/// The 3rd event with member `name`'s text replaced.
fn with_member(name: &str, member: &str) -> String {
    let prefix = format!("\"{name}\":");
    let member = member.to_owned();
    export_with_third(move |members| {
        let members: Vec<String> = members
            .into_iter()
            .map(|m| if m.starts_with(&prefix) { member.clone() } else { m })
            .collect();
        object(&members)
    })
}

#[test]
fn a_genuine_export_passes_and_rebuilds_line_for_line() {
    let canonical: Vec<usize> = (0..12).collect();
    let export = in_order(&canonical);
    let report = accepted(&export);
    assert_eq!((report.events, report.last_seq, report.checkpoints), (6, 6, 2));
    // The members as the tests write them are the line Bulkhead writes.
    let mut stream = Stream::new();
    stream.append_edited(3, sample_event, |_, event: &Event, line| {
        assert_eq!(object(&event_members(event)), line);
        line
    });
}

#[test]
fn a_moved_hash_member_is_refused() {
    // After `outcome`, first, last: its hash still matches the bytes
    // around it, as the verifier used to check.
    let after_outcome = [0, 1, 2, 4, 3, 5, 6, 7, 8, 9, 10, 11];
    let problem = refused(&in_order(&after_outcome), "the event line is not canonical");
    assert!(problem.contains("member `hash` out of order, after `outcome`"), "{problem}");
    assert!(problem.starts_with("line 4 (seq 3)") || problem.starts_with("line 4:"), "{problem}");
    refused(&in_order(&[3, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]), "member `action` out of order");
    refused(&in_order(&[0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 3, 11]), "member `hash` out of order");
    refused(&in_order(&[0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 3]), "member `hash` out of order");
}

#[test]
fn members_out_of_order_are_refused() {
    refused(
        &in_order(&[0, 1, 2, 3, 5, 4, 6, 7, 8, 9, 10, 11]),
        "member `outcome` out of order, after `prev_hash`",
    );
    refused(&in_order(&[1, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]), "member `action` out of order");
    // `type` first: the line does not even end as an event line does.
    refused(&in_order(&[11, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), "the event line is not canonical");
    // Inside `actor`.
    refused(
        &with_member("actor", "\"actor\":{\"kind\":\"operator\",\"id\":\"initial\"}"),
        "the event line is not canonical",
    );
    // A checkpoint's members reordered.
    let export = Stream::new().export(1, 1);
    let last = export.lines().last().unwrap();
    let value: serde_json::Value = serde_json::from_str(last).unwrap();
    let members = value.as_object().unwrap();
    let reordered = format!(
        "{{\"type\":\"checkpoint\",{}}}",
        members
            .iter()
            .filter(|(k, _)| *k != "type")
            .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str())))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut lines: Vec<&str> = export.lines().collect();
    *lines.last_mut().unwrap() = &reordered;
    refused(&(lines.join("\n") + "\n"), "the checkpoint line is not canonical");
}

#[test]
fn a_member_repeated_is_refused() {
    let problem = refused(
        &export_with_third(|mut members| {
            members.insert(5, members[4].clone());
            object(&members)
        }),
        "the event line is not canonical",
    );
    assert!(problem.contains("member `outcome` repeated"), "{problem}");
}

#[test]
fn a_non_string_request_id_is_refused() {
    for spelling in ["7", "true", "[\"a\"]", "{}"] {
        let problem = refused(
            &with_member("request_id", &format!("\"request_id\":{spelling}")),
            "the event line is not canonical",
        );
        assert!(problem.contains("`request_id` is not a string or null"), "{problem}");
    }
}

#[test]
fn an_extra_member_in_actor_is_refused() {
    for actor in [
        "{\"id\":\"initial\",\"kind\":\"operator\",\"via\":\"x\"}",
        "{\"id\":\"initial\"}",
        "{\"id\":\"initial\",\"kind\":7}",
        "\"operator:initial\"",
    ] {
        let problem =
            refused(&with_member("actor", &format!("\"actor\":{actor}")), "is not canonical");
        assert!(problem.contains("`actor` is not an object of two strings"), "{problem}");
    }
}

#[test]
fn details_that_are_not_an_object_are_refused() {
    for details in ["[1]", "\"x\"", "null", "7"] {
        let problem =
            refused(&with_member("details", &format!("\"details\":{details}")), "is not canonical");
        assert!(problem.contains("`details` is not an object"), "{problem}");
    }
}

#[test]
fn other_members_of_the_wrong_type_or_extra_are_refused() {
    refused(&with_member("seq", "\"seq\":\"3\""), "`seq` is not an integer");
    refused(&with_member("outcome", "\"outcome\":null"), "`outcome` is not a string");
    refused(
        &export_with_third(|mut members| {
            members.insert(11, "\"trace\":\"x\"".into());
            object(&members)
        }),
        "a member `trace`, which events do not have",
    );
    refused(
        &export_with_third(|mut members| {
            members.remove(7);
            object(&members)
        }),
        "it has no `resource`",
    );
}

#[test]
fn non_canonical_details_are_refused() {
    for (details, expected) in [
        ("{\"n\":1.5}", "a fraction or an exponent"),
        ("{\"n\":1.0}", "a fraction or an exponent"),
        ("{\"n\":1e2}", "a fraction or an exponent"),
        ("{\"n\":9007199254740992}", "beyond ±(2^53 − 1)"),
        ("{\"n\":-9007199254740992}", "beyond ±(2^53 − 1)"),
        ("{\"n\":18446744073709551616}", "beyond ±(2^53 − 1)"),
        ("{\"n\":-0}", "a negative zero: -0"),
        ("{\"n\":1,\"n\":1}", "member `n` repeated"),
        ("{\"b\":1,\"a\":2}", "member `a` out of order, after `b`"),
        ("{\"a\":{\"y\":1,\"x\":2}}", "member `x` out of order"),
        ("{\"a\": 1}", "whitespace"),
        ("{\"a\":[1, 2]}", "whitespace"),
        ("{\"p\":\"a\\/b\"}", "not `\\/`"),
        ("{\"p\":\"caf\\u00e9\"}", "the escape `\\u00e9`"),
        ("{\"p\":\"\\u001F\"}", "the escape `\\u001F`"),
        ("{\"p\":\"\\u0009\"}", "the escape `\\u0009`"),
        ("{\"p\":\"\\ud83d\\ude00\"}", "the escape `\\ud83d`"),
    ] {
        let problem = refused(
            &with_member("details", &format!("\"details\":{details}")),
            "the event line is not canonical",
        );
        assert!(problem.contains(expected), "{details}: {problem}");
    }
    // What Bulkhead would write for the same values passes.
    for details in ["{\"n\":9007199254740991}", "{\"n\":-3,\"p\":\"a/b\\u001f\\t\u{e9}\"}", "{}"] {
        let value: serde_json::Value = serde_json::from_str(details).unwrap();
        assert_eq!(CanonicalJson::from_value(&value).unwrap().as_str(), details);
        accepted(&with_member("details", &format!("\"details\":{details}")));
    }
}

#[test]
fn exactly_one_export_checkpoint_and_only_last() {
    let mut stream = Stream::new();
    stream.append(5, sample_event);
    let export = stream.export(1, 2);
    let last = export.lines().last().unwrap();
    let problem = refused(&format!("{export}{last}\n"), "lines after the export checkpoint");
    assert!(problem.contains("a second export checkpoint"), "{problem}");
    assert!(problem.starts_with(&format!("line {}:", export.lines().count() + 1)), "{problem}");
    // An export checkpoint in the middle, the export going on after it.
    let (_, head) = stream.head();
    let mut lines: Vec<String> = export.lines().map(str::to_owned).collect();
    let closing = lines.len() - 1;
    lines.insert(closing, stream.export_checkpoint(1, 5, head));
    lines.insert(closing, stream.checkpoint(5, head, CheckpointKind::Periodic));
    refused(&(lines.join("\n") + "\n"), "lines after the export checkpoint");
    // A blank line after it.
    let problem = refused(&format!("{export}\n"), "lines after the export checkpoint");
    assert!(problem.ends_with("an empty line"), "{problem}");
}

#[test]
fn concatenated_exports_are_refused() {
    let mut stream = Stream::new();
    stream.append(5, sample_event);
    let first = stream.export(1, 2);
    stream.append(3, sample_event);
    let second = stream.export(1, 2);
    let problem = refused(&format!("{first}{second}"), "lines after the export checkpoint");
    assert!(problem.contains("a second header"), "{problem}");
    // The second one's header taken out, and a partial export after it.
    let without_header: String = second.lines().skip(1).map(|l| format!("{l}\n")).collect();
    refused(&format!("{first}{without_header}"), "lines after the export checkpoint");
    let partial: String = stream.export(6, 2).lines().skip(1).map(|l| format!("{l}\n")).collect();
    refused(&format!("{first}{partial}"), "lines after the export checkpoint");
    // Another stream's export after it.
    let mut other = Stream::new();
    other.append(2, sample_event);
    refused(&format!("{first}{}", other.export(1, 2)), "a second header");
}

#[test]
fn an_export_the_server_stopped_midway_is_refused() {
    let mut stream = Stream::new();
    stream.append(3, sample_event);
    let export = stream.export(1, 2);
    let mut lines: Vec<&str> = export.lines().collect();
    let error = r#"{"error":{"code":"audit_stream_broken","message":"event 2 does not carry the writer's MAC"},"type":"error"}"#;
    *lines.last_mut().unwrap() = error;
    let problem = refused(&(lines.join("\n") + "\n"), "the server stopped this export midway");
    assert!(problem.contains("event 2 does not carry the writer's MAC"), "{problem}");
}

#[test]
fn the_final_newline_is_required() {
    let mut stream = Stream::new();
    stream.append(3, sample_event);
    let export = stream.export(1, 2);
    accepted(&export);
    let problem =
        refused(export.strip_suffix('\n').unwrap(), "the last line does not end with a newline");
    assert!(problem.starts_with(&format!("line {}:", export.lines().count())), "{problem}");
    refused(&format!("{}\r\n", export.strip_suffix('\n').unwrap()), "is not canonical");
    // An empty stream's export too.
    let empty = Stream::new().export(1, 2);
    assert_eq!(accepted(&empty).last_seq, 0);
    refused(empty.strip_suffix('\n').unwrap(), "does not end with a newline");
}

#[test]
fn the_first_event_chains_to_the_anchor() {
    let mut stream = Stream::new();
    stream.append(10, sample_event);
    let partial = stream.export(6, 3);
    let report = accepted(&partial);
    assert_eq!((report.start, report.first_seq, report.last_seq), (6, Some(6), 10));
    let mut lines: Vec<String> = partial.lines().map(str::to_owned).collect();
    // A signed anchor at seq 5 whose head is not event 5's hash.
    lines[1] = stream.checkpoint(5, stream.hash_at(4), CheckpointKind::Periodic);
    refused(&(lines.join("\n") + "\n"), "(seq 6): prev_hash is not the hash of event 5");
    // A signed anchor at seq 4: event 5 is missing.
    lines[1] = stream.checkpoint(4, stream.hash_at(4), CheckpointKind::Periodic);
    refused(&(lines.join("\n") + "\n"), "seq 6 follows seq 4");
    // No anchor at all.
    lines.remove(1);
    refused(&(lines.join("\n") + "\n"), "without a signed checkpoint before it");
}

/// Both verifiers' verdicts on `export` as an extension of `earlier`.
fn extends(export: &str, earlier: &str) -> Result<Report, String> {
    let previous = verify_export(earlier.as_bytes(), &[]).unwrap();
    let rust = verify_export_extending(export.as_bytes(), &[], Some(&Earlier::of(&previous)))
        .map_err(|e| e.to_string());
    if let Some((ok, said)) = python(export, Some(earlier)) {
        assert_eq!(ok, rust.is_ok(), "python: {said}; bulkhead: {rust:?}");
    }
    rust
}

#[test]
fn an_export_that_extends_the_earlier_one_passes() {
    let mut stream = Stream::new();
    stream.append(10, sample_event);
    let earlier = stream.export(1, 4);
    stream.append(7, sample_event);
    let later = stream.export(1, 4);
    let report = extends(&later, &earlier).unwrap();
    let expected = Earlier { stream: Some(stream.id.clone()), seq: 10, head: stream.hash_at(10) };
    assert_eq!(report.extends, Some(expected));
    // A partial export that still covers the earlier end: anchored on it,
    // or on a checkpoint before it.
    assert!(extends(&stream.export(11, 4), &earlier).is_ok());
    assert!(extends(&stream.export(5, 4), &earlier).is_ok());
    // The earlier export itself, and one of the empty stream.
    assert!(extends(&earlier, &earlier).is_ok());
    assert!(extends(&later, &stream.truncated(0).export(1, 4)).is_ok());
    // With only the earlier export checkpoint's seq and head.
    let checkpoint = Earlier::parse(&format!("10:{}", hex(&stream.hash_at(10)))).unwrap();
    let report = verify_export_extending(later.as_bytes(), &[], Some(&checkpoint)).unwrap();
    assert_eq!(report.extends.map(|e| e.seq), Some(10));
    // Pinned to the stream's key as well.
    let pinned = [stream.public_key()];
    assert!(verify_export_extending(later.as_bytes(), &pinned, Some(&checkpoint)).is_ok());
    // Without an earlier export, nothing is claimed.
    assert_eq!(accepted(&later).extends, None);
}

#[test]
fn a_rewritten_history_is_refused() {
    let mut stream = Stream::new();
    stream.append(10, sample_event);
    let earlier = stream.export(1, 4);
    stream.append(5, sample_event);
    // Every event from seq 4 on rewritten and everything signed again, as
    // whoever holds the server and its keys could.
    let rewritten = stream
        .rewritten_from(4, |s, n| NewEvent { outcome: "denied".into(), ..sample_event(s, n) });
    let export = rewritten.export(1, 4);
    accepted(&export);
    let problem = extends(&export, &earlier).unwrap_err();
    assert!(
        problem.contains(&format!(
            "(seq 10): history was rewritten: at seq 10 the earlier export has head {}, this one {}",
            hex(&stream.hash_at(10)),
            hex(&rewritten.hash_at(10))
        )),
        "{problem}"
    );
    // Found at the anchor of a partial export too.
    let problem = extends(&rewritten.export(11, 4), &earlier).unwrap_err();
    assert!(problem.starts_with("line 2 (seq 10): history was rewritten"), "{problem}");
    // Only the events after the earlier end rewritten: still an extension.
    let appended = stream
        .rewritten_from(11, |s, n| NewEvent { outcome: "denied".into(), ..sample_event(s, n) });
    assert!(extends(&appended.export(1, 4), &earlier).is_ok());
}

#[test]
fn a_cut_history_is_refused() {
    let mut stream = Stream::new();
    stream.append(10, sample_event);
    let earlier = stream.export(1, 4);
    // The stream as served later: cut back to seq 7 (and signed again).
    let cut = stream.truncated(7).export(1, 4);
    accepted(&cut);
    let problem = extends(&cut, &earlier).unwrap_err();
    assert!(
        problem.contains(
            "(seq 7): the new export ends at seq 7, before the earlier export's seq 10: history \
             was cut"
        ),
        "{problem}"
    );
    assert!(extends(&Stream::new().export(1, 4), &earlier).unwrap_err().contains("not the same"));
}

#[test]
fn a_partial_export_that_cannot_prove_it_extends_is_refused() {
    let mut stream = Stream::new();
    stream.append(10, sample_event);
    let earlier = stream.export(1, 4);
    stream.append(10, sample_event);
    let partial = stream.export(15, 4);
    accepted(&partial);
    let problem = extends(&partial, &earlier).unwrap_err();
    assert!(problem.starts_with("line 2 (seq 15): cannot prove"), "{problem}");
    assert!(problem.contains("export again without --since"), "{problem}");
}

#[test]
fn an_earlier_end_is_given_as_seq_and_head() {
    let head = "ab".repeat(32);
    let earlier = Earlier::parse(&format!("12:{head}")).unwrap();
    assert_eq!((earlier.seq, hex(&earlier.head)), (12, head.clone()));
    assert_eq!(earlier.stream, None);
    for bad in ["12", "x:00", &format!("12:{}", "ab".repeat(31)), &format!("0:{head}")] {
        assert!(Earlier::parse(bad).is_err(), "{bad}");
    }
    assert_eq!(Earlier::parse(&format!("0:{}", "0".repeat(64))).unwrap().seq, 0);
    // A stream given: another stream's export is refused at its header.
    let mut stream = Stream::new();
    stream.append(2, sample_event);
    let other = Earlier { stream: Some(StreamId::platform()), ..earlier };
    let problem =
        verify_export_extending(stream.export(1, 2).as_bytes(), &[], Some(&other)).unwrap_err();
    assert_eq!(problem.line, 1);
    assert!(problem.problem.contains("not the same stream"), "{problem}");
}
