//! Events and how they are chained: each event's hash is the SHA-256 of
//! its canonical JSON, which includes the previous event's hash.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{OffsetDateTime, UtcOffset};
use uuid::Uuid;

use crate::canonical::{CanonicalJson, write_string};

/// The `prev_hash` of a stream's first event.
pub const GENESIS: [u8; 32] = [0; 32];

/// Which stream an event belongs to: `tenant:<uuid>` for a tenant (by id,
/// which is never reused, unlike a name) or `platform` for operators'
/// actions on the platform itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    pub const PLATFORM: &'static str = "platform";

    pub fn tenant(id: Uuid) -> Self {
        Self(format!("tenant:{id}"))
    }

    pub fn platform() -> Self {
        Self(Self::PLATFORM.to_owned())
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        if text == Self::PLATFORM {
            return Ok(Self::platform());
        }
        match text.strip_prefix("tenant:").map(Uuid::parse_str) {
            Some(Ok(id)) if text == format!("tenant:{id}") => Ok(Self::tenant(id)),
            _ => Err(format!("{text:?} is not an audit stream (tenant:<uuid> or platform)")),
        }
    }

    pub fn tenant_id(&self) -> Option<Uuid> {
        self.0.strip_prefix("tenant:").and_then(|id| Uuid::parse_str(id).ok())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for StreamId {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<StreamId> for String {
    fn from(stream: StreamId) -> String {
        stream.0
    }
}

/// Who acted: `kind` is `operator`, `tenant`, `system` or `anonymous`;
/// `id` names them within that kind (an operator token's name, a token's
/// subject, `reconciler`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: String,
    pub id: String,
}

/// An event as recorded, before the writer places it in its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub stream: StreamId,
    pub time: OffsetDateTime,
    pub actor: Actor,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub request_id: Option<String>,
    /// Never secret values: names, ids, counts.
    pub details: CanonicalJson,
}

/// An event in its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub stream: StreamId,
    /// 1 for the stream's first event, then each one more, without gaps.
    pub seq: u64,
    /// [`format_time`]'s text: what the hash covers.
    pub time: String,
    pub actor: Actor,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub request_id: Option<String>,
    pub details: CanonicalJson,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

impl Event {
    /// Places `new` after the event whose hash is `prev_hash`, at `seq`.
    pub fn chain(new: NewEvent, seq: u64, prev_hash: [u8; 32]) -> Self {
        let mut event = Self {
            stream: new.stream,
            seq,
            time: format_time(new.time),
            actor: new.actor,
            action: new.action,
            resource: new.resource,
            outcome: new.outcome,
            request_id: new.request_id,
            details: new.details,
            prev_hash,
            hash: [0; 32],
        };
        event.hash = event.compute_hash();
        event
    }

    /// Reads an export's event line back, as it stands: nothing is
    /// checked but the shape (`verify_export` is what checks). For tools
    /// that take an export apart, tests that forge one among them.
    pub fn from_export_line(line: &str) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let text = |name: &str| {
            value[name].as_str().map(str::to_owned).ok_or_else(|| format!("no string {name}"))
        };
        let hash = |name: &str| {
            text(name).and_then(|h| parse_hash(&h).ok_or_else(|| format!("{name} is not a hash")))
        };
        Ok(Self {
            stream: StreamId::parse(&text("stream")?)?,
            seq: value["seq"].as_u64().ok_or("no seq")?,
            time: text("time")?,
            actor: serde_json::from_value(value["actor"].clone())
                .map_err(|e| format!("actor: {e}"))?,
            action: text("action")?,
            resource: text("resource")?,
            outcome: text("outcome")?,
            request_id: value["request_id"].as_str().map(str::to_owned),
            details: CanonicalJson::from_value(&value["details"])
                .map_err(|e| format!("details: {e}"))?,
            prev_hash: hash("prev_hash")?,
            hash: hash("hash")?,
        })
    }

    /// SHA-256 of the canonical JSON of every field but `hash`.
    pub fn compute_hash(&self) -> [u8; 32] {
        let mut text = String::with_capacity(320 + self.details.as_str().len());
        self.write(&mut text, false);
        Sha256::digest(text.as_bytes()).into()
    }

    /// The event as one line of an export: its canonical JSON with `hash`
    /// and `"type": "event"` (still canonical, so the line is what a
    /// verifier hashes once it drops those two members).
    pub fn export_line(&self) -> String {
        let mut text = String::with_capacity(400 + self.details.as_str().len());
        self.write(&mut text, true);
        text
    }

    /// Members in canonical (sorted) order.
    fn write(&self, out: &mut String, for_export: bool) {
        out.push_str("{\"action\":");
        write_string(&self.action, out);
        out.push_str(",\"actor\":{\"id\":");
        write_string(&self.actor.id, out);
        out.push_str(",\"kind\":");
        write_string(&self.actor.kind, out);
        out.push_str("},\"details\":");
        out.push_str(self.details.as_str());
        if for_export {
            out.push_str(",\"hash\":\"");
            out.push_str(&hex(&self.hash));
            out.push('"');
        }
        out.push_str(",\"outcome\":");
        write_string(&self.outcome, out);
        out.push_str(",\"prev_hash\":\"");
        out.push_str(&hex(&self.prev_hash));
        out.push_str("\",\"request_id\":");
        match &self.request_id {
            Some(id) => write_string(id, out),
            None => out.push_str("null"),
        }
        out.push_str(",\"resource\":");
        write_string(&self.resource, out);
        out.push_str(",\"seq\":");
        out.push_str(&self.seq.to_string());
        out.push_str(",\"stream\":");
        write_string(self.stream.as_str(), out);
        out.push_str(",\"time\":");
        write_string(&self.time, out);
        if for_export {
            out.push_str(",\"type\":\"event\"");
        }
        out.push('}');
    }
}

/// RFC 3339 in UTC with exactly six fractional digits:
/// `2026-12-01T10:00:00.000000Z`. One spelling per instant, so the hash
/// of a time never depends on who printed it.
pub fn format_time(at: OffsetDateTime) -> String {
    let at = at.to_offset(UtcOffset::UTC);
    let (y, mo, d) = (at.year(), at.month() as u8, at.day());
    let (h, mi, s, micro) = (at.hour(), at.minute(), at.second(), at.microsecond());
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{micro:06}Z")
}

/// Whether `text` is spelt as [`format_time`] spells times. By shape
/// alone: wherever a time is checked, a hash already covers its bytes.
pub fn is_time(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 27
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            26 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// 64 lowercase hex digits as 32 bytes.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn an_event_hashes_its_canonical_json_with_the_previous_hash() {
        let new = NewEvent {
            stream: StreamId::tenant(Uuid::nil()),
            time: OffsetDateTime::UNIX_EPOCH,
            actor: Actor { kind: "operator".into(), id: "admin".into() },
            action: "secret.put".into(),
            resource: "secrets/db/password".into(),
            outcome: "ok".into(),
            request_id: None,
            details: CanonicalJson::from_value(&json!({"version": 2, "path": "db/password"}))
                .unwrap_or_else(|_| CanonicalJson::assume_canonical("{}".into())),
        };
        let event = Event::chain(new, 1, GENESIS);
        let line = event.export_line();
        let mut value: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        // The export line is canonical: re-encoding it changes nothing.
        let again = CanonicalJson::from_value(&value).map(CanonicalJson::into_string);
        assert_eq!(again.as_deref(), Ok(line.as_str()));
        if let Some(members) = value.as_object_mut() {
            members.remove("hash");
            members.remove("type");
        }
        let hashed = CanonicalJson::from_value(&value).map(CanonicalJson::into_string);
        let expected: [u8; 32] = Sha256::digest(hashed.unwrap_or_default().as_bytes()).into();
        assert_eq!(event.hash, expected);
        assert_eq!(event.time, "1970-01-01T00:00:00.000000Z");
        assert_eq!(parse_hash(&hex(&event.hash)), Some(event.hash));
    }

    #[test]
    fn streams_and_times_have_one_spelling() {
        assert!(StreamId::parse("platform").is_ok());
        assert!(StreamId::parse("tenant:00000000-0000-0000-0000-000000000000").is_ok());
        assert!(StreamId::parse("tenant:00000000000000000000000000000000").is_err());
        assert!(StreamId::parse("acme").is_err());
        assert!(is_time("2026-12-01T10:00:00.000000Z"));
        assert!(!is_time("2026-12-01T10:00:00Z"));
        assert!(!is_time("2026-12-01T11:00:00.000000+01:00"));
    }
}
