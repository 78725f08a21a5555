//! Exports made in memory with real keys, as the exporter writes them
//! (and, for the tests, as it must never write them): for the property
//! tests, the verifier's tests and the verify bench.
#![allow(dead_code)]

use bulkhead_audit::{
    Actor, AuditKey, Checkpoint, CheckpointKind, Event, NewEvent, StreamId,
    canonical::{CanonicalJson, write_string},
    export::Header,
    record::{GENESIS, hex},
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

/// `events` events made by `event(stream, n)`, a periodic checkpoint
/// every `every` of them, and the export checkpoint.
pub fn signed_export(
    events: u64,
    every: u64,
    event: impl Fn(&StreamId, u64) -> NewEvent,
) -> Vec<u8> {
    let mut stream = Stream::new();
    stream.append(events, event);
    stream.export(1, every).into_bytes()
}

/// An event with escapes and a non-ASCII character in its details.
pub fn sample_event(stream: &StreamId, n: u64) -> NewEvent {
    NewEvent {
        stream: stream.clone(),
        time: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(n as i64),
        actor: Actor { kind: "operator".into(), id: "initial".into() },
        action: "secret.write".into(),
        resource: format!("secrets/db/{n}"),
        outcome: "ok".into(),
        request_id: n.is_multiple_of(2).then(|| format!("{n:032x}")),
        details: CanonicalJson::from_value(
            &serde_json::json!({ "path": format!("db/caf\u{e9}/{n}"), "note": "a \"quoted\"\ttab", "n": n }),
        )
        .unwrap(),
    }
}

/// A stream held in memory: its key and every event line, to export whole
/// or from any seq.
pub struct Stream {
    pub id: StreamId,
    key: AuditKey,
    pub now: OffsetDateTime,
    /// Each event's line and hash, by seq - 1.
    events: Vec<(String, [u8; 32])>,
}

impl Stream {
    pub fn new() -> Self {
        let id = StreamId::tenant(Uuid::new_v4());
        let key = AuditKey::generate(id.clone()).unwrap();
        Self { id, key, now: OffsetDateTime::now_utc(), events: Vec::new() }
    }

    /// The stream's public key, as audit-keys.json publishes it.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public_info(self.now).public_bytes().unwrap()
    }

    pub fn public_key_text(&self) -> String {
        self.key.public_info(self.now).public_key
    }

    /// The last event's seq and hash (0 and zeros for none).
    pub fn head(&self) -> (u64, [u8; 32]) {
        (self.events.len() as u64, self.events.last().map_or(GENESIS, |(_, hash)| *hash))
    }

    pub fn hash_at(&self, seq: u64) -> [u8; 32] {
        if seq == 0 { GENESIS } else { self.events[seq as usize - 1].1 }
    }

    pub fn line(&self, seq: u64) -> &str {
        &self.events[seq as usize - 1].0
    }

    /// Appends `count` events made by `event`, as Bulkhead writes them.
    pub fn append(&mut self, count: u64, event: impl Fn(&StreamId, u64) -> NewEvent) {
        self.append_edited(count, event, |_, _, line| line);
    }

    /// Appends `count` events, each line as `edit(seq, event, canonical
    /// line)` leaves it, its hash then made to match the edited bytes (the
    /// line less its `hash` and `type` members, wherever they are) and
    /// chained on: what a writer that wrote such lines would have written,
    /// signatures and all.
    pub fn append_edited(
        &mut self,
        count: u64,
        event: impl Fn(&StreamId, u64) -> NewEvent,
        edit: impl Fn(u64, &Event, String) -> String,
    ) {
        for _ in 0..count {
            let (seq, prev) = self.head();
            let chained = Event::chain(event(&self.id, seq), seq + 1, prev);
            let canonical = chained.export_line();
            let edited = edit(seq + 1, &chained, canonical.clone());
            if edited == canonical {
                self.events.push((canonical, chained.hash));
            } else {
                self.events.push(reseal(&edited, &hex(&chained.hash)));
            }
        }
    }

    /// The same stream (same key) with its history rewritten from `seq`
    /// on: as many events, made by `event` instead.
    pub fn rewritten_from(&self, seq: u64, event: impl Fn(&StreamId, u64) -> NewEvent) -> Self {
        let mut other = Self {
            id: self.id.clone(),
            key: AuditKey::from_secret(self.id.clone(), self.key.secret_bytes()).unwrap(),
            now: self.now,
            events: self.events[..seq as usize - 1].to_vec(),
        };
        other.append(self.events.len() as u64 - (seq - 1), event);
        other
    }

    /// The stream as it was when it had `events` events.
    pub fn truncated(&self, events: u64) -> Self {
        Self {
            id: self.id.clone(),
            key: AuditKey::from_secret(self.id.clone(), self.key.secret_bytes()).unwrap(),
            now: self.now,
            events: self.events[..events as usize].to_vec(),
        }
    }

    pub fn header(&self) -> String {
        let header = Header {
            kind: "header".into(),
            format: bulkhead_audit::export::FORMAT.into(),
            stream: self.id.clone(),
            tenant: Some("acme".into()),
            exported_at: bulkhead_audit::record::format_time(self.now),
            keys: vec![self.key.public_info(self.now)],
        };
        header.line().unwrap()
    }

    /// A checkpoint of this stream's key over `seq` and `head`.
    pub fn checkpoint(&self, seq: u64, head: [u8; 32], kind: CheckpointKind) -> String {
        Checkpoint::sign(&self.key, seq, head, self.now, kind).export_line()
    }

    pub fn export_checkpoint(&self, from: u64, seq: u64, head: [u8; 32]) -> String {
        Checkpoint::sign_export(&self.key, from, seq, head, self.now).export_line()
    }

    /// An export from event `from` on (at most one past the last event;
    /// anchored on a periodic checkpoint at `from` - 1 when `from` > 1), a
    /// periodic checkpoint every `every` events, and the export
    /// checkpoint: every line ended by `\n`.
    pub fn export(&self, from: u64, every: u64) -> String {
        let mut lines = vec![self.header()];
        let (last, head) = self.head();
        if from > 1 {
            lines.push(self.checkpoint(from - 1, self.hash_at(from - 1), CheckpointKind::Periodic));
        }
        for seq in from..=last {
            lines.push(self.line(seq).to_owned());
            if seq.is_multiple_of(every) {
                lines.push(self.checkpoint(seq, self.hash_at(seq), CheckpointKind::Periodic));
            }
        }
        lines.push(self.export_checkpoint(from, last, head));
        lines.iter().map(|line| format!("{line}\n")).collect()
    }
}

/// The line with its hash replaced by the SHA-256 of its bytes less its
/// `hash` and `type` members (wherever they are), and that hash.
fn reseal(line: &str, old_hash: &str) -> (String, [u8; 32]) {
    let remove = |text: &str, member: &str| -> String {
        let with_comma = format!(",{member}");
        if text.contains(&with_comma) {
            text.replacen(&with_comma, "", 1)
        } else {
            text.replacen(&format!("{member},"), "", 1)
        }
    };
    let hashed = remove(&remove(line, &format!("\"hash\":\"{old_hash}\"")), "\"type\":\"event\"");
    let hash: [u8; 32] = Sha256::digest(hashed.as_bytes()).into();
    (line.replacen(old_hash, &hex(&hash), 1), hash)
}

/// An event's members as canonical JSON `"name":value` texts, in canonical
/// order, `hash` and `type` included: to write them in another order.
pub fn event_members(event: &Event) -> Vec<String> {
    let string = |s: &str| {
        let mut out = String::new();
        write_string(s, &mut out);
        out
    };
    vec![
        format!("\"action\":{}", string(&event.action)),
        format!(
            "\"actor\":{{\"id\":{},\"kind\":{}}}",
            string(&event.actor.id),
            string(&event.actor.kind)
        ),
        format!("\"details\":{}", event.details.as_str()),
        format!("\"hash\":\"{}\"", hex(&event.hash)),
        format!("\"outcome\":{}", string(&event.outcome)),
        format!("\"prev_hash\":\"{}\"", hex(&event.prev_hash)),
        format!("\"request_id\":{}", event.request_id.as_deref().map_or("null".to_owned(), string)),
        format!("\"resource\":{}", string(&event.resource)),
        format!("\"seq\":{}", event.seq),
        format!("\"stream\":{}", string(event.stream.as_str())),
        format!("\"time\":{}", string(&event.time)),
        "\"type\":\"event\"".to_owned(),
    ]
}

/// An object of these members, in this order.
pub fn object(members: &[String]) -> String {
    format!("{{{}}}", members.join(","))
}
