//! The offline verifier: reads an export and either accounts for every
//! line or names the first one that breaks the chain or a signature.
//! It needs nothing but the file (and, to trust no one, the tenant's
//! public key obtained beforehand).

use std::{collections::HashMap, fmt, io::BufRead};

use serde::Deserialize;
use serde_json::Value;

use crate::{
    canonical::CanonicalJson,
    checkpoint::{Checkpoint, CheckpointKind, PublicKeyInfo},
    export::{FORMAT, Header, hash_field},
    record::{Actor, Event, GENESIS, StreamId, hex, parse_time},
};

/// What a verified export holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub stream: StreamId,
    pub tenant: Option<String>,
    pub events: u64,
    /// The first and last seq, when there are events.
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    pub head: [u8; 32],
    pub checkpoints: u64,
    /// Key ids that signed, and whether each was among the pinned keys.
    pub signers: Vec<(String, bool)>,
}

/// The first thing wrong with an export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// 1-based.
    pub line: usize,
    pub seq: Option<u64>,
    pub problem: String,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(f, "line {} (seq {seq}): {}", self.line, self.problem),
            None => write!(f, "line {}: {}", self.line, self.problem),
        }
    }
}

impl std::error::Error for Broken {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    #[serde(rename = "type")]
    _kind: String,
    action: String,
    actor: Actor,
    details: Value,
    hash: String,
    outcome: String,
    prev_hash: String,
    request_id: Option<String>,
    resource: String,
    seq: u64,
    stream: StreamId,
    time: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLine {
    #[serde(rename = "type")]
    _kind: String,
    head: String,
    key_id: String,
    kind: CheckpointKind,
    seq: u64,
    signature: String,
    stream: StreamId,
    time: String,
}

/// Verifies an export read from `input`. With `pinned` public keys, every
/// checkpoint must be signed by one of them: the keys listed in the file
/// itself only prove that whoever wrote the file had them.
pub fn verify_export(input: impl BufRead, pinned: &[[u8; 32]]) -> Result<Report, Broken> {
    let mut lines = input.lines().enumerate();
    let broken =
        |line: usize, seq: Option<u64>, problem: String| Broken { line: line + 1, seq, problem };

    let header: Header = match lines.next() {
        Some((i, Ok(text))) => serde_json::from_str(&text)
            .map_err(|e| broken(i, None, format!("not an export header: {e}")))?,
        Some((i, Err(e))) => return Err(broken(i, None, format!("cannot read: {e}"))),
        None => return Err(broken(0, None, "empty file: not an export".into())),
    };
    if header.kind != "header" || header.format != FORMAT {
        return Err(broken(0, None, format!("format {:?} is not {FORMAT}", header.format)));
    }
    let mut keys: HashMap<&str, &PublicKeyInfo> = HashMap::new();
    for key in &header.keys {
        if key.stream != header.stream || !key.is_bound() {
            return Err(broken(
                0,
                None,
                format!("key {} is not a key of stream {}", key.key_id, header.stream),
            ));
        }
        keys.insert(key.key_id.as_str(), key);
    }

    let mut report = Report {
        stream: header.stream.clone(),
        tenant: header.tenant.clone(),
        events: 0,
        first_seq: None,
        last_seq: 0,
        head: GENESIS,
        checkpoints: 0,
        signers: Vec::new(),
    };
    // The chain so far: the last event's seq and hash, once known.
    let mut chain: Option<(u64, [u8; 32])> = None;
    let mut last_line_closed = false;
    let mut line_count = 1;

    for (i, text) in lines {
        line_count = i + 1;
        let text = text.map_err(|e| broken(i, None, format!("cannot read: {e}")))?;
        let kind = line_type(&text).ok_or_else(|| broken(i, None, "not an export line".into()))?;
        last_line_closed = false;
        match kind {
            "event" => {
                let line: EventLine = serde_json::from_str(&text)
                    .map_err(|e| broken(i, None, format!("malformed event: {e}")))?;
                let seq = line.seq;
                let fail = |problem: String| broken(i, Some(seq), problem);
                if line.stream != header.stream {
                    return Err(fail(format!(
                        "an event of stream {} in the export of {}: exports were spliced",
                        line.stream, header.stream
                    )));
                }
                let prev = hash_field(&line.prev_hash)
                    .ok_or_else(|| fail("prev_hash is not 64 hex digits".into()))?;
                let stated = hash_field(&line.hash)
                    .ok_or_else(|| fail("hash is not 64 hex digits".into()))?;
                if parse_time(&line.time).is_none() {
                    return Err(fail(format!(
                        "time {:?} is not in the export's format",
                        line.time
                    )));
                }
                match chain {
                    None if seq == 1 && prev == GENESIS => {}
                    None => {
                        return Err(fail(format!(
                            "the export starts at seq {seq} without a signed checkpoint before it"
                        )));
                    }
                    Some((last, _)) if seq != last + 1 => {
                        return Err(fail(format!(
                            "seq {seq} follows seq {last}: events were removed, reordered or inserted"
                        )));
                    }
                    Some((last, hash)) if prev != hash => {
                        return Err(fail(format!(
                            "prev_hash is not the hash of event {last}: an event before this one was \
                             changed, removed or inserted"
                        )));
                    }
                    Some(_) => {}
                }
                let details = CanonicalJson::from_value(&line.details)
                    .map_err(|e| fail(format!("details: {e}")))?;
                let event = Event {
                    stream: line.stream,
                    seq,
                    time: line.time,
                    actor: line.actor,
                    action: line.action,
                    resource: line.resource,
                    outcome: line.outcome,
                    request_id: line.request_id,
                    details,
                    prev_hash: prev,
                    hash: stated,
                };
                if event.compute_hash() != stated {
                    return Err(fail(
                        "the event's content does not match its hash: it was changed".into(),
                    ));
                }
                if event.export_line() != text {
                    return Err(fail("the line is not in canonical form: it was rewritten".into()));
                }
                report.events += 1;
                report.first_seq.get_or_insert(seq);
                chain = Some((seq, stated));
            }
            "checkpoint" => {
                let line: CheckpointLine = serde_json::from_str(&text)
                    .map_err(|e| broken(i, None, format!("malformed checkpoint: {e}")))?;
                let seq = line.seq;
                let fail = |problem: String| broken(i, Some(seq), problem);
                if line.stream != header.stream {
                    return Err(fail(format!(
                        "a checkpoint of stream {} in the export of {}: exports were spliced",
                        line.stream, header.stream
                    )));
                }
                let head = hash_field(&line.head)
                    .ok_or_else(|| fail("head is not 64 hex digits".into()))?;
                let signature = base64_signature(&line.signature)
                    .ok_or_else(|| fail("signature is not 64 bytes of base64url".into()))?;
                let checkpoint = Checkpoint {
                    stream: line.stream,
                    seq,
                    head,
                    time: line.time,
                    kind: line.kind,
                    key_id: line.key_id,
                    signature,
                };
                if checkpoint.export_line() != text {
                    return Err(fail(
                        "the checkpoint line is not in canonical form: it was rewritten".into(),
                    ));
                }
                let key = keys.get(checkpoint.key_id.as_str()).ok_or_else(|| {
                    fail(format!(
                        "checkpoint signed by key {}, which is not one of the stream's",
                        checkpoint.key_id
                    ))
                })?;
                if !checkpoint.verify(key) {
                    return Err(fail(format!(
                        "bad signature by key {} on this checkpoint",
                        checkpoint.key_id
                    )));
                }
                let trusted = key.public_bytes().is_some_and(|public| pinned.contains(&public));
                if !pinned.is_empty() && !trusted {
                    return Err(fail(format!(
                        "checkpoint signed by key {}, which is not a pinned key",
                        checkpoint.key_id
                    )));
                }
                match chain {
                    // The anchor of an export that does not start at seq 1.
                    None if report.events == 0 && checkpoint.kind != CheckpointKind::Export => {
                        chain = Some((seq, head));
                    }
                    None if checkpoint.kind == CheckpointKind::Export
                        && seq == 0
                        && head == GENESIS => {}
                    None => {
                        return Err(fail(
                            "a checkpoint over events that are not in the export".into(),
                        ));
                    }
                    Some((last, hash)) if last != seq || hash != head => {
                        return Err(fail(format!(
                            "the checkpoint signs seq {seq} with head {}, but the chain there is seq {last} with \
                             head {}: events were changed, removed or inserted",
                            hex(&head),
                            hex(&hash)
                        )));
                    }
                    Some(_) => {}
                }
                report.checkpoints += 1;
                if !report.signers.iter().any(|(id, _)| *id == checkpoint.key_id) {
                    report.signers.push((checkpoint.key_id.clone(), trusted));
                }
                last_line_closed = checkpoint.kind == CheckpointKind::Export;
            }
            "header" => {
                return Err(broken(i, None, "a second header: exports were concatenated".into()));
            }
            other => return Err(broken(i, None, format!("unknown line type {other:?}"))),
        }
    }
    if !last_line_closed {
        let (seq, _) = chain.unwrap_or((0, GENESIS));
        return Err(Broken {
            line: line_count,
            seq: Some(seq),
            problem: format!(
                "the export does not end with its signed export checkpoint: events after seq {seq} \
                 may have been cut off"
            ),
        });
    }
    let (last_seq, head) = chain.unwrap_or((0, GENESIS));
    report.last_seq = last_seq;
    report.head = head;
    Ok(report)
}

/// The `type` member of a line, found without parsing the rest.
fn line_type(text: &str) -> Option<&str> {
    // Canonical lines put `type` last: `..."type":"event"}`.
    let body = text.strip_suffix("\"}")?;
    let at = body.rfind(",\"type\":\"").or_else(|| body.rfind("{\"type\":\""))?;
    let kind = &body[at..];
    kind.split_once(":\"").map(|(_, kind)| kind).filter(|k| !k.contains('"'))
}

fn base64_signature(text: &str) -> Option<[u8; 64]> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}
