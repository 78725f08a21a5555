//! The offline verifier: reads an export and either accounts for every
//! line or names the first one that breaks the chain, a signature or the
//! format. It needs nothing but the file (and, to trust no one, the
//! tenant's public key obtained beforehand; to prove that nothing was
//! rewritten since, an earlier export's end).

use std::{collections::HashMap, fmt, io::BufRead, ops::Range};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    canonical::MAX_SAFE_INTEGER,
    checkpoint::{Checkpoint, CheckpointKind, CheckpointLine, PublicKeyInfo},
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
    /// The earlier export's end this one was proven to extend, when one
    /// was given.
    pub extends: Option<Earlier>,
}

/// Where an earlier export of the stream ended: the `seq` and `head` its
/// export checkpoint signed. An export extends it when its own chain has
/// the same hash at that seq: the hash of an event covers every event
/// before it, so nothing up to there was changed, removed or inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earlier {
    /// The earlier export's stream, when known. A bare `seq` and `head`
    /// need none: an event's hash covers its stream.
    pub stream: Option<StreamId>,
    pub seq: u64,
    pub head: [u8; 32],
}

impl Earlier {
    /// The end of an export already verified.
    pub fn of(report: &Report) -> Self {
        Self { stream: Some(report.stream.clone()), seq: report.last_seq, head: report.head }
    }

    /// `SEQ:HEAD`: an export checkpoint's `seq` and its 64-hex `head`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!("{text:?} is not SEQ:HEAD (a seq, a colon, 64 hex digits)");
        let (seq, head) = text.trim().split_once(':').ok_or_else(invalid)?;
        let seq: u64 = seq.parse().map_err(|_| invalid())?;
        let head = parse_hash(&head.to_ascii_lowercase()).ok_or_else(invalid)?;
        if seq > MAX_SAFE_INTEGER || (seq == 0 && head != GENESIS) {
            return Err(invalid());
        }
        Ok(Self { stream: None, seq, head })
    }
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

/// An event line's members, in canonical order.
const EVENT_MEMBERS: [&str; 12] = [
    "action",
    "actor",
    "details",
    "hash",
    "outcome",
    "prev_hash",
    "request_id",
    "resource",
    "seq",
    "stream",
    "time",
    "type",
];

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
    if text.is_empty() {
        return Err((None, "an empty line".into()));
    }
    match line_type(text) {
        Some("event") => check_event(text, cx),
        Some("checkpoint") => check_checkpoint(text, cx),
        Some("header") => Ok(Facts::Header),
        Some("error") => Err((None, why_stopped(text))),
        Some(other) => Err((None, format!("unknown line type {other:?}"))),
        None => Err((None, why_untyped(text))),
    }
}

/// An event line is authentic when it is canonical JSON (so no member is
/// repeated or out of order, `hash` included, and nothing is spelt two
/// ways, `details` included), has an event's members, each of its type,
/// and no other, and the SHA-256 of its bytes less its `hash` and `type`
/// members is its hash: those bytes are then exactly the canonical JSON
/// Bulkhead hashed, and the line exactly what
/// [`crate::Event::export_line`] writes for the event it describes (a test
/// holds the two to that). One pass over the bytes, nothing copied.
fn check_event(text: &str, cx: &Context<'_>) -> Result<Facts, LineError> {
    let refuse = |why: String| (None, not_canonical("event", &why));
    // Where each member's value is, in canonical order.
    let mut spans: [Range<usize>; 12] = Default::default();
    let mut count = 0;
    let mut expected = true;
    strict::members(text, &mut |name, value| {
        match spans.get_mut(count) {
            Some(span) if text.get(name) == EVENT_MEMBERS.get(count).copied() => *span = value,
            _ => expected = false,
        }
        count += 1;
    })
    .map_err(|e| refuse(e.describe(text)))?;
    if !expected || count != EVENT_MEMBERS.len() {
        return Err(refuse(which_members(text)));
    }
    let [
        action,
        actor,
        details,
        hash,
        outcome,
        prev_hash,
        request_id,
        resource,
        seq,
        stream,
        time,
        kind,
    ] = spans.clone().map(|span| text.get(span).unwrap_or_default());
    let wrong = |name: &str, expected: &str| refuse(format!("`{name}` is not {expected}"));
    let strings = [
        ("action", action),
        ("hash", hash),
        ("outcome", outcome),
        ("prev_hash", prev_hash),
        ("resource", resource),
        ("stream", stream),
        ("time", time),
    ];
    if let Some((name, _)) = strings.iter().find(|(_, value)| !value.starts_with('"')) {
        return Err(wrong(name, "a string"));
    }
    if !actor_is_canonical(actor) {
        return Err(wrong("actor", "an object of two strings, `id` and `kind`"));
    }
    if !details.starts_with('{') {
        return Err(wrong("details", "an object"));
    }
    if request_id != "null" && !request_id.starts_with('"') {
        return Err(wrong("request_id", "a string or null"));
    }
    if kind != "\"event\"" {
        return Err(wrong("type", "\"event\""));
    }
    let seq: u64 = seq.parse().map_err(|_| wrong("seq", "an integer ≥ 0"))?;
    let fail = |problem: String| (Some(seq), problem);
    let (stream, time) = (unquote(stream), unquote(time));
    if stream != cx.stream.as_str() {
        return Err(fail(format!(
            "an event of stream {stream} in the export of {}: exports were spliced",
            cx.stream
        )));
    }
    let prev = hash_from_hex(unquote(prev_hash))
        .ok_or_else(|| fail("prev_hash is not 64 hex digits".into()))?;
    let stated =
        hash_from_hex(unquote(hash)).ok_or_else(|| fail("hash is not 64 hex digits".into()))?;
    if !is_time(time) {
        return Err(fail(format!("time {time:?} is not in the export's format")));
    }
    // The bytes hashed: the line less `,"hash":"…"` and `,"type":"event"`.
    const MEMBER: usize = ",\"hash\":".len();
    let (hash_span, kind_span) = (&spans[3], &spans[11]);
    let hashed = (|| {
        let before = text.get(..hash_span.start.checked_sub(MEMBER)?)?;
        let after = text.get(hash_span.end..kind_span.start.checked_sub(MEMBER)?)?;
        Some((before, after))
    })();
    let Some((before, after)) = hashed else {
        return Err(fail(not_canonical("event", "its hash is not where canonical order puts it")));
    };
    let digest: [u8; 32] = Sha256::new()
        .chain_update(before.as_bytes())
        .chain_update(after.as_bytes())
        .chain_update(b"}")
        .finalize()
        .into();
    if digest != stated {
        return Err(fail("the event's content does not match its hash: it was changed".into()));
    }
    Ok(Facts::Event { seq, prev, hash: stated })
}

/// A JSON string's text between its quotes (as it is written).
fn unquote(value: &str) -> &str {
    value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value)
}

/// `{"id":"…","kind":"…"}`, canonical.
fn actor_is_canonical(actor: &str) -> bool {
    let mut count = 0;
    let mut expected = true;
    let canonical = strict::members(actor, &mut |name, value| {
        expected &= actor.get(name) == ["id", "kind"].get(count).copied()
            && actor.get(value).is_some_and(|v| v.starts_with('"'));
        count += 1;
    });
    canonical.is_ok() && expected && count == 2
}

/// What an event line has instead of an event's members.
fn which_members(text: &str) -> String {
    let mut names = Vec::new();
    // The line was already found canonical.
    let _ = strict::members(text, &mut |name, _| names.push(text.get(name).unwrap_or_default()));
    if let Some(extra) = names.iter().find(|name| !EVENT_MEMBERS.contains(name)) {
        return format!("it has a member `{extra}`, which events do not have");
    }
    match EVENT_MEMBERS.iter().find(|member| !names.contains(member)) {
        Some(missing) => format!("it has no `{missing}`"),
        None => "not an event's members".into(),
    }
}

/// 64 lowercase hexadecimal digits as 32 bytes.
fn hash_from_hex(text: &str) -> Option<[u8; 32]> {
    const fn nibbles() -> [u8; 256] {
        let mut table = [0xff; 256];
        let mut c = 0;
        while c < 10 {
            table[b'0' as usize + c] = c as u8;
            c += 1;
        }
        let mut c = 0;
        while c < 6 {
            table[b'a' as usize + c] = 10 + c as u8;
            c += 1;
        }
        table
    }
    static NIBBLE: [u8; 256] = nibbles();
    let digits: &[u8; 64] = text.as_bytes().try_into().ok()?;
    let mut out = [0u8; 32];
    let mut invalid = 0;
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (high, low) = (NIBBLE[usize::from(pair[0])], NIBBLE[usize::from(pair[1])]);
        invalid |= high | low;
        *byte = high << 4 | low;
    }
    (invalid < 16).then_some(out)
}

fn check_checkpoint(text: &str, cx: &Context<'_>) -> Result<Facts, LineError> {
    strict::check(text).map_err(|e| (None, not_canonical("checkpoint", &e.describe(text))))?;
    let line: CheckpointLine = serde_json::from_str(text)
        .map_err(|e| (None, not_canonical("checkpoint", &e.to_string())))?;
    let seq = line.seq;
    let fail = |problem: String| (Some(seq), problem);
    if line.stream != *cx.stream {
        return Err(fail(format!(
            "a checkpoint of stream {} in the export of {}: exports were spliced",
            line.stream, cx.stream
        )));
    }
    if (line.kind == CheckpointKind::Export) != line.from.is_some() {
        return Err(fail(
            "only an export checkpoint, and every export checkpoint, names the seq its export \
             starts at (from)"
                .into(),
        ));
    }
    let checkpoint = line.checkpoint().map_err(|problem| fail(problem.into()))?;
    let canonical = checkpoint.export_line();
    if canonical != text {
        return Err(fail(not_canonical("checkpoint", &first_difference(text, &canonical))));
    }
    if !is_time(&checkpoint.time) {
        return Err(fail(format!("time {:?} is not in the export's format", checkpoint.time)));
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

fn not_canonical(kind: &str, why: &str) -> String {
    format!("the {kind} line is not canonical: {why}")
}

/// Where a line first departs from its canonical form, shown.
fn first_difference(line: &str, canonical: &str) -> String {
    let mut at = line
        .bytes()
        .zip(canonical.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(line.len().min(canonical.len()));
    // The bytes before `at` are the same in both, and so are their char
    // boundaries.
    while at > 0 && !(line.is_char_boundary(at) && canonical.is_char_boundary(at)) {
        at -= 1;
    }
    let shown = |text: &str| -> String {
        let rest = text.get(at..).unwrap_or_default();
        let mut shown: String = rest.chars().take(24).collect();
        if shown.len() < rest.len() {
            shown.push('…');
        }
        shown
    };
    format!(
        "at column {} it has `{}` where canonical JSON has `{}` (members in their order, each \
         once, none extra; no whitespace; strings and integers spelt one way)",
        line.get(..at).unwrap_or_default().chars().count() + 1,
        shown(line),
        shown(canonical)
    )
}

/// What the error line that ends an export the server could not finish
/// says.
fn why_stopped(text: &str) -> String {
    let value: Value = serde_json::from_str(text).unwrap_or_default();
    let said = |name: &str| value["error"][name].as_str().unwrap_or("?").to_owned();
    format!(
        "the server stopped this export midway ({}: {}): it is incomplete, export again",
        said("code"),
        said("message")
    )
}

/// Why a line has no `type` where canonical lines have it (last).
fn why_untyped(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => match value.get("type").and_then(Value::as_str) {
            Some(kind @ ("event" | "checkpoint" | "header")) => match strict::check(text) {
                Err(departure) => not_canonical(kind, &departure.describe(text)),
                Ok(()) => not_canonical(kind, "`type` is not its last member"),
            },
            _ => "not an export line (no `type`)".into(),
        },
        Err(e) => format!("not an export line: not JSON: {e}"),
    }
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
    verify_export_extending(input, pinned, None)
}

/// Verifies an export as [`verify_export`] does and, given an earlier
/// export's end, that this one extends it: it reaches at least that seq
/// and its chain has the same hash there, so the history the earlier
/// export covered was not rewritten or cut since, whoever ran the server.
/// The export is read once, line by line; only that one hash is kept.
pub fn verify_export_extending(
    input: impl BufRead,
    pinned: &[[u8; 32]],
    extends: Option<&Earlier>,
) -> Result<Report, Broken> {
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
    if let Some(stream) = extends.and_then(|earlier| earlier.stream.as_ref())
        && *stream != header.stream
    {
        return Err(broken(
            1,
            None,
            format!(
                "this is an export of stream {}, the earlier one of {stream}: not the same stream",
                header.stream
            ),
        ));
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
        extends: None,
    };
    // The chain so far: the last event's seq and hash, once known.
    let mut chain: Option<(u64, [u8; 32])> = None;
    // The line of the anchor checkpoint, and of the export checkpoint.
    let mut anchor_line = None;
    let mut closed_at = None;
    // Whether the earlier export's head was found at its seq.
    let mut extension_found = false;
    // Whether the last line read had no `\n` to end it.
    let mut unterminated = false;
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
            } else {
                unterminated = true;
            }
            ends.push(buffer.len());
        }
        if ends.is_empty() {
            break;
        }
        let text = std::str::from_utf8(&buffer).map_err(|e| {
            let bad = ends.iter().position(|end| *end > e.valid_up_to()).unwrap_or_default();
            broken(line_no + 1 + bad, None, format!("not UTF-8 text: {e}"))
        })?;
        let batch: Vec<&str> = ends
            .iter()
            .scan(0, |start, &end| {
                let line = text.get(*start..end);
                *start = end;
                line
            })
            .collect();
        for facts in check_batch(&batch, &cx) {
            line_no += 1;
            if let Some(closed) = closed_at {
                let what = match &facts {
                    Ok(Facts::Header) => "a second header: exports were concatenated".to_owned(),
                    Ok(Facts::Checkpoint(c, _)) if c.kind == CheckpointKind::Export => {
                        "a second export checkpoint".to_owned()
                    }
                    Ok(Facts::Checkpoint(..)) => "a checkpoint".to_owned(),
                    Ok(Facts::Event { .. }) => "an event".to_owned(),
                    Err((_, problem)) => problem.clone(),
                };
                return Err(broken(
                    line_no,
                    None,
                    format!(
                        "lines after the export checkpoint (line {closed}), which ends an export: \
                         {what}"
                    ),
                ));
            }
            let facts = facts.map_err(|(seq, problem)| broken(line_no, seq, problem))?;
            // The earlier export's head, where this export has that seq.
            let mut reached = |seq: u64, hash: [u8; 32]| match extends {
                Some(earlier) if earlier.seq == seq && earlier.head != hash => Err(broken(
                    line_no,
                    Some(seq),
                    format!(
                        "history was rewritten: at seq {seq} the earlier export has head {}, this \
                         one {}",
                        hex(&earlier.head),
                        hex(&hash)
                    ),
                )),
                Some(earlier) if earlier.seq == seq => {
                    extension_found = true;
                    Ok(())
                }
                _ => Ok(()),
            };
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
                    reached(seq, hash)?;
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
                            reached(seq, head)?;
                            chain = Some((seq, head));
                            anchor_line = Some(line_no);
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
                    if checkpoint.kind == CheckpointKind::Export {
                        if checkpoint.from != Some(report.start) {
                            return Err(fail(format!(
                                "the export checkpoint signs an export starting at seq {}, but \
                                 this one starts at seq {}: lines were cut from its start",
                                checkpoint.from.unwrap_or_default(),
                                report.start
                            )));
                        }
                        closed_at = Some(line_no);
                    }
                    report.checkpoints += 1;
                    if !report.signers.iter().any(|(id, _)| *id == checkpoint.key_id) {
                        report.signers.push((checkpoint.key_id.clone(), trusted));
                    }
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
    let (last_seq, head) = chain.unwrap_or((0, GENESIS));
    if closed_at.is_none() {
        return Err(broken(
            line_no,
            Some(last_seq),
            format!(
                "the export does not end with its signed export checkpoint: events after seq \
                 {last_seq} may have been cut off"
            ),
        ));
    }
    if unterminated {
        return Err(broken(
            line_no,
            None,
            "the last line does not end with a newline (\\n), as every line of an export does: \
             the file was cut short or edited"
                .into(),
        ));
    }
    report.last_seq = last_seq;
    report.head = head;
    if let Some(earlier) = extends {
        if earlier.seq > last_seq {
            return Err(broken(
                line_no,
                Some(last_seq),
                format!(
                    "the new export ends at seq {last_seq}, before the earlier export's seq {}: \
                     history was cut",
                    earlier.seq
                ),
            ));
        }
        // Seq 0 is no event: every stream starts from the zero head.
        if !extension_found && earlier.seq == 0 && earlier.head != GENESIS {
            return Err(broken(
                line_no,
                Some(0),
                format!(
                    "history was rewritten: at seq 0 the earlier export has head {}, this one {}",
                    hex(&earlier.head),
                    hex(&GENESIS)
                ),
            ));
        }
        if !extension_found && earlier.seq > 0 {
            return Err(broken(
                anchor_line.unwrap_or(line_no),
                Some(report.start),
                format!(
                    "cannot prove that this export extends the earlier one: it starts at seq {}, \
                     after the earlier export's seq {} (an export --since, or retention deleted \
                     the events in between); export again without --since",
                    report.start, earlier.seq
                ),
            ));
        }
        report.extends = Some(earlier.clone());
    }
    Ok(report)
}

/// The `type` member of a line, found without parsing the rest.
fn line_type(text: &str) -> Option<&str> {
    if text.ends_with(",\"type\":\"event\"}") {
        return Some("event");
    }
    // Canonical lines put `type` last: `..."type":"checkpoint"}`.
    let body = text.strip_suffix("\"}")?;
    let at = body.rfind(",\"type\":\"").or_else(|| body.rfind("{\"type\":\""))?;
    let kind = &body[at..];
    kind.split_once(":\"").map(|(_, kind)| kind).filter(|k| !k.contains('"'))
}

/// Canonical JSON as Bulkhead writes it (docs/audit.md), checked in one
/// pass over the bytes, without building anything: no whitespace; object
/// members sorted by name (UTF-16 code units), each name once; strings
/// escaping `"`, `\` and control characters only, in their one spelling;
/// integers only, without leading zeros or `-0`, within ±(2^53 − 1).
/// What [`crate::canonical::CanonicalJson::from_value`] writes passes, and
/// nothing else does (a test holds the two to that).
mod strict {
    use std::{cmp::Ordering, ops::Range};

    use crate::canonical::MAX_SAFE_INTEGER;

    /// Where a text departs from canonical JSON, and how.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct Departure {
        /// Byte offset.
        pub at: usize,
        pub what: String,
    }

    impl Departure {
        /// "at column C: what", the column counted in characters.
        pub fn describe(&self, text: &str) -> String {
            let mut at = self.at.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let column = text.get(..at).map_or(0, |before| before.chars().count()) + 1;
            format!("at column {column}: {}", self.what)
        }
    }

    /// Deeper than this, a value is refused (as serde_json does).
    const MAX_DEPTH: usize = 128;

    pub(super) fn check(text: &str) -> Result<(), Departure> {
        let mut parser = Parser { text, bytes: text.as_bytes(), at: 0, members: None };
        parser.value(0)?;
        parser.end()
    }

    /// Checks that `text` is a canonical JSON object, calling `member`
    /// with where each of its members' name (between the quotes) and
    /// value are, in order.
    pub(super) fn members(
        text: &str,
        member: &mut dyn FnMut(Range<usize>, Range<usize>),
    ) -> Result<(), Departure> {
        let mut parser = Parser { text, bytes: text.as_bytes(), at: 0, members: Some(member) };
        if parser.bytes.first() != Some(&b'{') {
            return Err(parser.unexpected("an object"));
        }
        parser.value(0)?;
        parser.end()
    }

    struct Parser<'a, 'f> {
        text: &'a str,
        bytes: &'a [u8],
        at: usize,
        /// Called for each member of the outermost object.
        members: Option<&'f mut dyn FnMut(Range<usize>, Range<usize>)>,
    }

    impl Parser<'_, '_> {
        fn end(&self) -> Result<(), Departure> {
            if self.at < self.bytes.len() {
                return Err(self.departure("more after the value (whitespace, or a second value)"));
            }
            Ok(())
        }

        fn departure(&self, what: impl Into<String>) -> Departure {
            Departure { at: self.at, what: what.into() }
        }

        fn unexpected(&self, expected: &str) -> Departure {
            match self.bytes.get(self.at) {
                None => self.departure(format!("the line ends where {expected} should be")),
                Some(b' ' | b'\t' | b'\n' | b'\r') => {
                    self.departure("whitespace, which canonical JSON has none of outside strings")
                }
                Some(_) => self.departure(format!("not JSON: {expected} should be here")),
            }
        }

        fn value(&mut self, depth: usize) -> Result<(), Departure> {
            if depth > MAX_DEPTH {
                return Err(self.departure("values nested too deeply"));
            }
            match self.bytes.get(self.at) {
                Some(b'{') => self.object(depth),
                Some(b'[') => self.array(depth),
                Some(b'"') => self.string().map(|_| ()),
                Some(b'-' | b'0'..=b'9') => self.number(),
                Some(b't') => self.literal("true"),
                Some(b'f') => self.literal("false"),
                Some(b'n') => self.literal("null"),
                _ => Err(self.unexpected("a value")),
            }
        }

        fn literal(&mut self, word: &str) -> Result<(), Departure> {
            if self.text.get(self.at..self.at + word.len()) != Some(word) {
                return Err(self.unexpected("a value"));
            }
            self.at += word.len();
            Ok(())
        }

        fn object(&mut self, depth: usize) -> Result<(), Departure> {
            self.at += 1;
            if self.bytes.get(self.at) == Some(&b'}') {
                self.at += 1;
                return Ok(());
            }
            let mut previous: Option<(usize, usize)> = None;
            loop {
                if self.bytes.get(self.at) != Some(&b'"') {
                    return Err(self.unexpected("a member's name"));
                }
                let start = self.at;
                let name = self.string()?;
                if let Some(before) = previous {
                    match self.order(before, name) {
                        Ordering::Less => {}
                        Ordering::Equal => {
                            return Err(Departure {
                                at: start,
                                what: format!("member `{}` repeated", self.raw(name)),
                            });
                        }
                        Ordering::Greater => {
                            return Err(Departure {
                                at: start,
                                what: format!(
                                    "member `{}` out of order, after `{}` (members are sorted \
                                     by name)",
                                    self.raw(name),
                                    self.raw(before)
                                ),
                            });
                        }
                    }
                }
                previous = Some(name);
                if self.bytes.get(self.at) != Some(&b':') {
                    return Err(self.unexpected("`:`"));
                }
                self.at += 1;
                let value = self.at;
                self.value(depth + 1)?;
                if let Some(member) = self.members.as_mut().filter(|_| depth == 0) {
                    member(name.0..name.1, value..self.at);
                }
                match self.bytes.get(self.at) {
                    Some(b',') => self.at += 1,
                    Some(b'}') => {
                        self.at += 1;
                        return Ok(());
                    }
                    _ => return Err(self.unexpected("`,` or `}`")),
                }
            }
        }

        fn array(&mut self, depth: usize) -> Result<(), Departure> {
            self.at += 1;
            if self.bytes.get(self.at) == Some(&b']') {
                self.at += 1;
                return Ok(());
            }
            loop {
                self.value(depth + 1)?;
                match self.bytes.get(self.at) {
                    Some(b',') => self.at += 1,
                    Some(b']') => {
                        self.at += 1;
                        return Ok(());
                    }
                    _ => return Err(self.unexpected("`,` or `]`")),
                }
            }
        }

        /// A string at `at`, which is `"`: the span between its quotes.
        fn string(&mut self) -> Result<(usize, usize), Departure> {
            self.at += 1;
            let start = self.at;
            loop {
                let rest = self.bytes.get(self.at..).unwrap_or_default();
                let Some(skip) = rest.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                else {
                    self.at = self.bytes.len();
                    return Err(self.departure("a string that does not end"));
                };
                self.at += skip;
                match self.bytes.get(self.at) {
                    Some(b'"') => {
                        self.at += 1;
                        return Ok((start, self.at - 1));
                    }
                    Some(b'\\') => self.escape()?,
                    _ => {
                        return Err(self.departure(
                            "a control character in a string, which canonical JSON escapes",
                        ));
                    }
                }
            }
        }

        /// An escape at `at`: canonical JSON has `\"`, `\\`, `\b`, `\t`,
        /// `\n`, `\f`, `\r`, and `\u00xx` (lowercase) for the other
        /// control characters, and no other.
        fn escape(&mut self) -> Result<(), Departure> {
            match self.bytes.get(self.at + 1) {
                Some(b'"' | b'\\' | b'b' | b't' | b'n' | b'f' | b'r') => {
                    self.at += 2;
                    Ok(())
                }
                Some(b'u') => {
                    let digits = self.text.get(self.at + 2..self.at + 6).unwrap_or_default();
                    let lowercase = digits.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
                    let code = u32::from_str_radix(digits, 16).ok().filter(|_| lowercase);
                    match code {
                        Some(code) if code < 0x20 && ![8, 9, 10, 12, 13].contains(&code) => {
                            self.at += 6;
                            Ok(())
                        }
                        _ => Err(self.departure(format!(
                            "the escape `\\u{digits}`, which canonical JSON does not use (only \
                             control characters are escaped, in lowercase hex, and those with a \
                             short form in it)"
                        ))),
                    }
                }
                _ => Err(self.departure(
                    "an escape canonical JSON does not use (only `\\\"`, `\\\\`, `\\b`, `\\t`, \
                     `\\n`, `\\f`, `\\r` and `\\u00xx`; not `\\/`)",
                )),
            }
        }

        fn number(&mut self) -> Result<(), Departure> {
            let start = self.at;
            if self.bytes.get(self.at) == Some(&b'-') {
                self.at += 1;
            }
            let digits = self.at;
            while self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
                self.at += 1;
            }
            let number = self.text.get(start..self.at).unwrap_or_default();
            let fail = |what: &str| Err(Departure { at: start, what: format!("{what}: {number}") });
            match self.bytes.get(digits..self.at) {
                None | Some([]) => return Err(self.unexpected("a digit")),
                Some([b'0', _, ..]) => return fail("a number with a leading zero"),
                Some([b'0']) if digits > start => return fail("a negative zero"),
                Some(_) => {}
            }
            if matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E')) {
                return Err(Departure {
                    at: start,
                    what: "a number with a fraction or an exponent: canonical JSON has integers \
                           only"
                        .into(),
                });
            }
            let magnitude = self.text.get(digits..self.at).and_then(|d| d.parse::<u64>().ok());
            if magnitude.is_none_or(|m| m > MAX_SAFE_INTEGER) {
                return fail("an integer beyond ±(2^53 − 1)");
            }
            Ok(())
        }

        fn raw(&self, (start, end): (usize, usize)) -> &str {
            self.text.get(start..end).unwrap_or_default()
        }

        /// How two member names (spans between quotes) compare: by UTF-16
        /// code units, once unescaped. Without escapes, and with either
        /// name ASCII, that is the order of their UTF-8 bytes.
        fn order(&self, a: (usize, usize), b: (usize, usize)) -> Ordering {
            let (a, b) = (self.raw(a), self.raw(b));
            if !a.contains('\\') && !b.contains('\\') && (a.is_ascii() || b.is_ascii()) {
                return a.cmp(b);
            }
            let unescape = |raw: &str| -> String {
                serde_json::from_str::<String>(&format!("\"{raw}\"")).unwrap_or_default()
            };
            unescape(a).encode_utf16().cmp(unescape(b).encode_utf16())
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::canonical::CanonicalJson;

    /// What canonical JSON is, by definition: what `CanonicalJson` writes
    /// for the value the text means.
    fn canonical_by_definition(text: &str) -> bool {
        let value: Option<Value> = serde_json::from_str(text).ok();
        let canonical = value.and_then(|v| CanonicalJson::from_value(&v).ok());
        canonical.is_some_and(|c| c.as_str() == text)
    }

    #[test]
    fn canonical_json_is_checked_as_it_is_defined() {
        for text in [
            r#"{"a":1,"b":[true,false,null],"c":{"":"","x":-9007199254740991}}"#,
            "\"\\u0000\\u001f\\b\\t\\n\\f\\r\\\"\\\\/\u{e9}\u{7f}\"",
            "{\"\u{1f600}\":1,\"\u{e000}\":2}",
            "0",
            "[]",
            "{}",
        ] {
            assert_eq!(strict::check(text), Ok(()), "{text}");
            assert!(canonical_by_definition(text), "{text}");
        }
        for text in [
            "{\"\u{e000}\":2,\"\u{1f600}\":1}",
            r#"{"a":1,"a":1}"#,
            r#"{"b":1,"a":1}"#,
            "1.0",
            "-0",
            "01",
            "9007199254740992",
            "\"\\u00E9\"",
            "\"\\/\"",
            "\"\\u000a\"",
            " {}",
            "{} ",
            "{}{}",
            "[1,]",
            "{\"a\"}",
            "\"\u{1}\"",
            "tru",
            "",
        ] {
            assert!(strict::check(text).is_err(), "{text}");
            assert!(!canonical_by_definition(text), "{text}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(strict::check(&deep).is_err());
    }

    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just(json!(null)),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(|n| Value::from(n % (1 << 54))),
            "[a-b/é\"\\\\\u{0}-\u{1f}\u{e000}\u{1f600}]{0,3}".prop_map(Value::from),
        ];
        let value = leaf.prop_recursive(3, 12, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[ab\u{e000}\u{1f600}\"]{0,2}", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        });
        value
            .prop_map(|v| CanonicalJson::from_value(&v).map(CanonicalJson::into_string))
            .prop_filter_map("beyond 2^53", Result::ok)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Canonical texts, and texts a few characters away from them:
        /// the check agrees with the definition on every one.
        #[test]
        fn the_check_agrees_with_the_definition(
            text in json_text(),
            edits in prop::collection::vec(
                (any::<prop::sample::Index>(), 0..3u8, prop::sample::select(vec![
                    '{', '}', '[', ']', ',', ':', '"', '\\', '/', 'u', '0', '1', '9', '-', '.',
                    'e', ' ', '\n', 'a', 'b', 'n', 't', 'f', '\u{e9}', '\u{e000}', '\u{1f600}',
                ])),
                0..3,
            ),
        ) {
            prop_assert_eq!(strict::check(&text), Ok(()));
            let mut chars: Vec<char> = text.chars().collect();
            for (at, how, c) in edits {
                let at = at.index(chars.len() + 1);
                match how {
                    0 => chars.insert(at, c),
                    1 if at < chars.len() => chars[at] = c,
                    _ if at < chars.len() => {
                        chars.remove(at);
                    }
                    _ => {}
                }
            }
            let edited: String = chars.into_iter().collect();
            prop_assert_eq!(strict::check(&edited).is_ok(), canonical_by_definition(&edited), "{}", edited);
        }
    }
}
