//! The offline verifier: reads an export and either accounts for every
//! line or names the first one that breaks the chain or a signature.
//! It needs nothing but the file (and, to trust no one, the tenant's
//! public key obtained beforehand).

use std::{collections::HashMap, fmt, io::BufRead};

use serde::{Deserialize, de::IgnoredAny};
use sha2::{Digest, Sha256};

use crate::{
    checkpoint::{Checkpoint, CheckpointKind, PublicKeyInfo},
    export::{FORMAT, Header},
    record::{GENESIS, StreamId, hex, is_time, parse_hash},
};

/// What a verified export holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub stream: StreamId,
    pub tenant: Option<String>,
    pub events: u64,
    /// The seq the export starts at, as its export checkpoint signs: 1 for
    /// a whole stream, one past the anchor checkpoint for a partial export.
    pub start: u64,
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

/// An event line's members: the ones the chain needs, borrowed; the rest
/// only checked to be JSON (the hash covers their bytes).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine<'a> {
    #[serde(rename = "type")]
    _kind: IgnoredAny,
    #[serde(rename = "action")]
    _action: IgnoredAny,
    #[serde(rename = "actor")]
    _actor: IgnoredAny,
    #[serde(rename = "details")]
    _details: IgnoredAny,
    hash: &'a str,
    #[serde(rename = "outcome")]
    _outcome: IgnoredAny,
    prev_hash: &'a str,
    #[serde(rename = "request_id")]
    _request_id: IgnoredAny,
    #[serde(rename = "resource")]
    _resource: IgnoredAny,
    seq: u64,
    stream: &'a str,
    time: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointLine {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(default)]
    from: Option<u64>,
    head: String,
    key_id: String,
    kind: CheckpointKind,
    seq: u64,
    signature: String,
    stream: StreamId,
    time: String,
}

/// What one line says, checked on its own, without the lines around it:
/// the part of verification that runs on every core.
enum Facts {
    Event {
        seq: u64,
        prev: [u8; 32],
        hash: [u8; 32],
    },
    /// With whether its key is among the pinned ones.
    Checkpoint(Checkpoint, bool),
    Header,
}

/// A line's problem, with the seq it names when it names one.
type LineError = (Option<u64>, String);

/// Lines checked per batch, spread over the available cores.
const BATCH: usize = 16_384;

struct Context<'a> {
    stream: &'a StreamId,
    keys: &'a HashMap<&'a str, &'a PublicKeyInfo>,
    pinned: &'a [[u8; 32]],
}

fn check_line(text: &str, cx: &Context<'_>) -> Result<Facts, LineError> {
    match line_type(text) {
        Some("event") => check_event(text, cx),
        Some("checkpoint") => check_checkpoint(text, cx),
        Some("header") => Ok(Facts::Header),
        Some(other) => Err((None, format!("unknown line type {other:?}"))),
        None => Err((None, "not an export line".into())),
    }
}

/// An event line is authentic when the SHA-256 of its bytes, less its
/// `hash` and `type` members, is its hash: those bytes are then exactly the
/// canonical JSON Bulkhead hashed, so no re-encoding is needed, and any
/// change to them, however harmless, fails. (Where `hash` sits among the
/// members is not checked; the bytes around it are.)
fn check_event(text: &str, cx: &Context<'_>) -> Result<Facts, LineError> {
    let line: EventLine =
        serde_json::from_str(text).map_err(|e| (None, format!("malformed event: {e}")))?;
    let seq = line.seq;
    let fail = |problem: String| (Some(seq), problem);
    if line.stream != cx.stream.as_str() {
        return Err(fail(format!(
            "an event of stream {} in the export of {}: exports were spliced",
            line.stream, cx.stream
        )));
    }
    let prev =
        parse_hash(line.prev_hash).ok_or_else(|| fail("prev_hash is not 64 hex digits".into()))?;
    let stated = parse_hash(line.hash).ok_or_else(|| fail("hash is not 64 hex digits".into()))?;
    if !is_time(line.time) {
        return Err(fail(format!("time {:?} is not in the export's format", line.time)));
    }
    // `"hash":"…"` cannot appear inside a JSON string (its quotes would be
    // escaped), and the only objects before it are `actor` and `details`,
    // which Bulkhead never gives such a member: the last one is the line's.
    const MEMBER: &str = ",\"hash\":\"";
    let rewritten = || fail("the line is not in canonical form: it was rewritten".into());
    let at = text.rfind(MEMBER).ok_or_else(rewritten)?;
    let end = at + MEMBER.len() + 64 + 1;
    let body = text.strip_suffix(",\"type\":\"event\"}").ok_or_else(rewritten)?;
    if body.get(at + MEMBER.len()..end - 1) != Some(line.hash)
        || body.as_bytes().get(end - 1) != Some(&b'"')
    {
        return Err(rewritten());
    }
    let digest: [u8; 32] = Sha256::new()
        .chain_update(&body.as_bytes()[..at])
        .chain_update(&body.as_bytes()[end..])
        .chain_update(b"}")
        .finalize()
        .into();
    if digest != stated {
        return Err(fail("the event's content does not match its hash: it was changed".into()));
    }
    Ok(Facts::Event { seq, prev, hash: stated })
}

fn check_checkpoint(text: &str, cx: &Context<'_>) -> Result<Facts, LineError> {
    let line: CheckpointLine =
        serde_json::from_str(text).map_err(|e| (None, format!("malformed checkpoint: {e}")))?;
    let seq = line.seq;
    let fail = |problem: String| (Some(seq), problem);
    if line.stream != *cx.stream {
        return Err(fail(format!(
            "a checkpoint of stream {} in the export of {}: exports were spliced",
            line.stream, cx.stream
        )));
    }
    let head = parse_hash(&line.head).ok_or_else(|| fail("head is not 64 hex digits".into()))?;
    let signature = base64_signature(&line.signature)
        .ok_or_else(|| fail("signature is not 64 bytes of base64url".into()))?;
    if (line.kind == CheckpointKind::Export) != line.from.is_some() {
        return Err(fail(
            "only an export checkpoint, and every export checkpoint, names the seq its export \
             starts at (from)"
                .into(),
        ));
    }
    let checkpoint = Checkpoint {
        stream: line.stream,
        from: line.from,
        seq,
        head,
        time: line.time,
        kind: line.kind,
        key_id: line.key_id,
        signature,
    };
    if checkpoint.export_line() != text {
        return Err(fail("the checkpoint line is not in canonical form: it was rewritten".into()));
    }
    let key = cx.keys.get(checkpoint.key_id.as_str()).ok_or_else(|| {
        fail(format!(
            "checkpoint signed by key {}, which is not one of the stream's",
            checkpoint.key_id
        ))
    })?;
    if !checkpoint.verify(key) {
        return Err(fail(format!("bad signature by key {} on this checkpoint", checkpoint.key_id)));
    }
    let trusted = key.public_bytes().is_some_and(|public| cx.pinned.contains(&public));
    if !cx.pinned.is_empty() && !trusted {
        return Err(fail(format!(
            "checkpoint signed by key {}, which is not a pinned key",
            checkpoint.key_id
        )));
    }
    Ok(Facts::Checkpoint(checkpoint, trusted))
}

/// Checks a batch of lines on every core, in order.
fn check_batch(lines: &[&str], cx: &Context<'_>) -> Vec<Result<Facts, LineError>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if threads == 1 || lines.len() < 1_024 {
        return lines.iter().map(|line| check_line(line, cx)).collect();
    }
    let per = lines.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = lines
            .chunks(per)
            .map(|chunk| {
                scope.spawn(move || chunk.iter().map(|l| check_line(l, cx)).collect::<Vec<_>>())
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join().unwrap_or_else(|_| vec![Err((None, "verifier thread failed".into()))])
            })
            .collect()
    })
}

/// Verifies an export read from `input`. With `pinned` public keys, every
/// checkpoint must be signed by one of them: the keys listed in the file
/// itself only prove that whoever wrote the file had them.
pub fn verify_export(input: impl BufRead, pinned: &[[u8; 32]]) -> Result<Report, Broken> {
    let mut input = input;
    let broken = |line: usize, seq: Option<u64>, problem: String| Broken { line, seq, problem };
    let mut first = String::new();
    match input.read_line(&mut first) {
        Ok(0) => return Err(broken(1, None, "empty file: not an export".into())),
        Ok(_) => {}
        Err(e) => return Err(broken(1, None, format!("cannot read: {e}"))),
    }
    let header: Header = serde_json::from_str(first.trim_end_matches('\n'))
        .map_err(|e| broken(1, None, format!("not an export header: {e}")))?;
    if header.kind != "header" || header.format != FORMAT {
        let hint = if header.format == "bulkhead-audit/1" {
            " (an older Bulkhead's export, which did not sign where it starts: export again)"
        } else {
            ""
        };
        return Err(broken(1, None, format!("format {:?} is not {FORMAT}{hint}", header.format)));
    }
    // Nothing in the header is signed: its keys are bound to the stream by
    // their ids, and the rest is for people. Holding it to the form
    // Bulkhead writes leaves only those values to change unnoticed.
    if header.line().ok().as_deref() != Some(first.trim_end_matches('\n')) {
        return Err(broken(
            1,
            None,
            "the header is not in canonical form: it was rewritten".into(),
        ));
    }
    let times =
        std::iter::once(&header.exported_at).chain(header.keys.iter().map(|k| &k.created_at));
    if let Some(time) = times.into_iter().find(|time| !is_time(time)) {
        return Err(broken(1, None, format!("time {time:?} is not in the export's format")));
    }
    let mut keys: HashMap<&str, &PublicKeyInfo> = HashMap::new();
    for key in &header.keys {
        if key.stream != header.stream || !key.is_bound() {
            return Err(broken(
                1,
                None,
                format!("key {} is not a key of stream {}", key.key_id, header.stream),
            ));
        }
        keys.insert(key.key_id.as_str(), key);
    }
    let cx = Context { stream: &header.stream, keys: &keys, pinned };

    let mut report = Report {
        stream: header.stream.clone(),
        tenant: header.tenant.clone(),
        events: 0,
        start: 1,
        first_seq: None,
        last_seq: 0,
        head: GENESIS,
        checkpoints: 0,
        signers: Vec::new(),
    };
    // The chain so far: the last event's seq and hash, once known.
    let mut chain: Option<(u64, [u8; 32])> = None;
    let mut last_line_closed = false;
    let mut line_no = 1;
    let mut buffer: Vec<u8> = Vec::new();
    let mut ends: Vec<usize> = Vec::with_capacity(BATCH);
    loop {
        buffer.clear();
        ends.clear();
        while ends.len() < BATCH {
            let read = input
                .read_until(b'\n', &mut buffer)
                .map_err(|e| broken(line_no + ends.len() + 1, None, format!("cannot read: {e}")))?;
            if read == 0 {
                break;
            }
            if buffer.last() == Some(&b'\n') {
                buffer.pop();
            }
            ends.push(buffer.len());
        }
        if ends.is_empty() {
            break;
        }
        let text = std::str::from_utf8(&buffer)
            .map_err(|e| broken(line_no + 1, None, format!("not UTF-8 text: {e}")))?;
        let batch: Vec<&str> = ends
            .iter()
            .scan(0, |start, &end| {
                let line = &text[*start..end];
                *start = end;
                Some(line)
            })
            .collect();
        for facts in check_batch(&batch, &cx) {
            line_no += 1;
            let facts = facts.map_err(|(seq, problem)| broken(line_no, seq, problem))?;
            last_line_closed = false;
            match facts {
                Facts::Event { seq, prev, hash } => {
                    let fail = |problem: String| broken(line_no, Some(seq), problem);
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
                        Some((last, last_hash)) if prev != last_hash => {
                            return Err(fail(format!(
                                "prev_hash is not the hash of event {last}: an event before this one \
                                 was changed, removed or inserted"
                            )));
                        }
                        Some(_) => {}
                    }
                    report.events += 1;
                    report.first_seq.get_or_insert(seq);
                    chain = Some((seq, hash));
                }
                Facts::Checkpoint(checkpoint, trusted) => {
                    let (seq, head) = (checkpoint.seq, checkpoint.head);
                    let fail = |problem: String| broken(line_no, Some(seq), problem);
                    match chain {
                        // The anchor of an export that does not start at seq 1.
                        None if report.events == 0 && checkpoint.kind != CheckpointKind::Export => {
                            chain = Some((seq, head));
                            report.start = seq
                                .checked_add(1)
                                .ok_or_else(|| fail("seq is out of range".into()))?;
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
                                "the checkpoint signs seq {seq} with head {}, but the chain there is \
                                 seq {last} with head {}: events were changed, removed or inserted",
                                hex(&head),
                                hex(&hash)
                            )));
                        }
                        Some(_) => {}
                    }
                    if checkpoint.kind == CheckpointKind::Export
                        && checkpoint.from != Some(report.start)
                    {
                        return Err(fail(format!(
                            "the export checkpoint signs an export starting at seq {}, but this \
                             one starts at seq {}: lines were cut from its start",
                            checkpoint.from.unwrap_or_default(),
                            report.start
                        )));
                    }
                    report.checkpoints += 1;
                    if !report.signers.iter().any(|(id, _)| *id == checkpoint.key_id) {
                        report.signers.push((checkpoint.key_id.clone(), trusted));
                    }
                    last_line_closed = checkpoint.kind == CheckpointKind::Export;
                }
                Facts::Header => {
                    return Err(broken(
                        line_no,
                        None,
                        "a second header: exports were concatenated".into(),
                    ));
                }
            }
        }
    }
    if !last_line_closed {
        let (seq, _) = chain.unwrap_or((0, GENESIS));
        return Err(Broken {
            line: line_no,
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
