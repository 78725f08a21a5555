//! Exports: JSON lines, each canonical JSON. A header (the stream and its
//! public keys), then the stream's events in order with each stored
//! checkpoint right after the event it covers, then one export checkpoint
//! signed now over the last event and naming the first. A partial export
//! (`since`) starts with the stored checkpoint its first event follows, so
//! it verifies from there.

use std::sync::Arc;

use bulkhead_store::{AuditCheckpointRow, AuditEventRow, AuditKeyRow, AuditStore, StoreError};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    canonical::CanonicalJson,
    checkpoint::{AuditKey, Checkpoint, CheckpointKind, PublicKeyInfo},
    record::{Actor, Event, GENESIS, StreamId, format_time},
};

/// What the header's `format` says; a verifier refuses any other.
pub const FORMAT: &str = "bulkhead-audit/2";

/// Events read from the store per page.
const PAGE: u32 = 5_000;

/// An export's first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always `header`.
    #[serde(rename = "type")]
    pub kind: String,
    pub format: String,
    pub stream: StreamId,
    /// The tenant's name when exported, for people; the stream names the
    /// tenant by id.
    pub tenant: Option<String>,
    pub exported_at: String,
    /// Every key that has signed the stream's checkpoints.
    pub keys: Vec<PublicKeyInfo>,
}

impl Header {
    pub fn line(&self) -> Result<String, String> {
        let value = serde_json::to_value(self).map_err(|e| e.to_string())?;
        CanonicalJson::from_value(&value).map(CanonicalJson::into_string).map_err(|e| e.to_string())
    }
}

pub fn event_from_row(row: &AuditEventRow) -> Result<Event, String> {
    let hash = |bytes: &[u8]| -> Result<[u8; 32], String> {
        bytes
            .try_into()
            .map_err(|_| format!("event {} of {}: a hash is not 32 bytes", row.seq, row.stream))
    };
    Ok(Event {
        stream: StreamId::parse(&row.stream)?,
        seq: u64::try_from(row.seq).map_err(|_| format!("negative seq in {}", row.stream))?,
        time: row.time.clone(),
        actor: Actor { kind: row.actor_kind.clone(), id: row.actor_id.clone() },
        action: row.action.clone(),
        resource: row.resource.clone(),
        outcome: row.outcome.clone(),
        request_id: row.request_id.clone(),
        details: CanonicalJson::assume_canonical(row.details.clone()),
        prev_hash: hash(&row.prev_hash)?,
        hash: hash(&row.hash)?,
    })
}

pub fn checkpoint_from_row(row: &AuditCheckpointRow) -> Result<Checkpoint, String> {
    Ok(Checkpoint {
        stream: StreamId::parse(&row.stream)?,
        from: None,
        seq: u64::try_from(row.seq).map_err(|_| format!("negative seq in {}", row.stream))?,
        head: row.head.as_slice().try_into().map_err(|_| "a checkpoint head is not 32 bytes")?,
        time: row.time.clone(),
        kind: CheckpointKind::parse(&row.kind)
            .ok_or_else(|| format!("checkpoint kind {:?}", row.kind))?,
        key_id: row.key_id.clone(),
        signature: row
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| "a signature is not 64 bytes")?,
    })
}

pub fn key_from_row(row: &AuditKeyRow) -> Result<PublicKeyInfo, String> {
    Ok(PublicKeyInfo {
        key_id: row.key_id.clone(),
        stream: StreamId::parse(&row.stream)?,
        alg: "EdDSA".into(),
        public_key: row.public_key.clone(),
        created_at: row.created_at.clone(),
    })
}

/// Produces an export page by page, so a long stream is never held in
/// memory whole.
#[derive(Debug)]
pub struct Exporter {
    store: Arc<dyn AuditStore>,
    stream: StreamId,
    key: Arc<AuditKey>,
    now: OffsetDateTime,
    /// Events after this seq come next.
    after: i64,
    /// The seq of the export's first event: one past its anchor, or 1.
    from: u64,
    /// The last event written: what the export checkpoint covers.
    head: (u64, [u8; 32]),
    /// The stream's public keys, to check stored checkpoints with.
    keys: Vec<PublicKeyInfo>,
    header: Option<Header>,
    done: bool,
}

impl Exporter {
    /// An export of `stream` from its first retained event, or from the
    /// first event at or after `since`. `key` signs the closing checkpoint.
    pub async fn new(
        store: Arc<dyn AuditStore>,
        stream: StreamId,
        tenant: Option<String>,
        key: Arc<AuditKey>,
        since: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<Self, StoreError> {
        let keys: Vec<PublicKeyInfo> = store
            .audit_keys(stream.as_str())
            .await?
            .iter()
            .filter_map(|row| key_from_row(row).ok())
            .filter(PublicKeyInfo::is_bound)
            .collect();
        let header = Header {
            kind: "header".into(),
            format: FORMAT.into(),
            stream: stream.clone(),
            tenant,
            exported_at: format_time(now),
            keys: keys.clone(),
        };
        let after = match since {
            Some(since) => {
                let from =
                    store.audit_first_seq_since(stream.as_str(), &format_time(since)).await?;
                match from {
                    Some(seq) => seq - 1,
                    None => store.audit_head(stream.as_str()).await?.map_or(0, |(seq, _)| seq),
                }
            }
            None => 0,
        };
        Ok(Self {
            store,
            stream,
            key,
            now,
            after,
            from: 1,
            head: (0, GENESIS),
            keys,
            header: Some(header),
            done: false,
        })
    }

    /// Where the chain resumes when the export does not start at seq 1:
    /// the stored checkpoint at or before the event before its first one
    /// (for a stream whose start retention deleted, the truncation one,
    /// even when retention deleted every event). When a `since` finds
    /// none, the export starts at the beginning.
    async fn anchor(&mut self) -> Result<Option<Checkpoint>, String> {
        let stream = self.stream.as_str();
        let checkpoint_before = async |seq: i64| {
            let row =
                self.store.audit_checkpoint_before(stream, seq).await.map_err(|e| e.to_string())?;
            row.as_ref().map(checkpoint_from_row).transpose()
        };
        if self.after > 0 {
            if let Some(anchor) = checkpoint_before(self.after).await? {
                return Ok(Some(anchor));
            }
            self.after = 0;
        }
        let first = self.store.audit_events(stream, 0, 1).await.map_err(|e| e.to_string())?;
        let before = match first.first() {
            Some(event) if event.seq > 1 => event.seq - 1,
            Some(_) => return Ok(None),
            // No event left (or none ever): the last checkpoint, if any,
            // says how far the stream went.
            None => i64::MAX,
        };
        match checkpoint_before(before).await? {
            Some(anchor) => Ok(Some(anchor)),
            None if first.is_empty() => Ok(None),
            None => Err(format!(
                "stream {stream} has lost its start: no checkpoint anchors its first event"
            )),
        }
    }

    /// Bulkhead signs an export only of a chain it can check: every stored
    /// event's hash, and its link to the one before.
    fn check_link(&self, event: &Event) -> Result<(), String> {
        let broken = |what: &str| {
            tracing::error!(stream = %self.stream, seq = event.seq, "{what}");
            format!(
                "the stored audit stream {} is broken at seq {} ({what}); refusing to sign an \
                 export of it",
                self.stream, event.seq
            )
        };
        if event.compute_hash() != event.hash {
            return Err(broken("an event does not match its hash"));
        }
        let (seq, head) = self.head;
        let starts = seq == 0 && event.seq == 1;
        let follows = event.seq == seq + 1 && event.prev_hash == head;
        if !(follows || (starts && event.prev_hash == GENESIS)) {
            return Err(broken("an event does not follow the one before it"));
        }
        Ok(())
    }

    /// A stored checkpoint must be signed by one of the stream's keys and
    /// sign the event it follows.
    fn check_checkpoint(&self, checkpoint: &Checkpoint, event: &Event) -> Result<(), String> {
        let signed =
            self.keys.iter().any(|key| key.key_id == checkpoint.key_id && checkpoint.verify(key));
        if signed && checkpoint.head == event.hash {
            return Ok(());
        }
        tracing::error!(stream = %self.stream, seq = event.seq, "a stored checkpoint does not sign the stored chain");
        Err(format!(
            "the stored audit stream {} does not match its checkpoint at seq {}; refusing to sign \
             an export of it",
            self.stream, event.seq
        ))
    }

    /// The next lines, newline-terminated; `None` once the export is
    /// complete.
    pub async fn next_page(&mut self) -> Result<Option<String>, String> {
        if self.done {
            return Ok(None);
        }
        let mut out = String::new();
        let stream = self.stream.as_str().to_owned();
        if let Some(header) = self.header.take() {
            out.push_str(&header.line()?);
            out.push('\n');
            if let Some(anchor) = self.anchor().await? {
                self.after = i64::try_from(anchor.seq).map_err(|e| e.to_string())?;
                self.head = (anchor.seq, anchor.head);
                self.from = anchor.seq + 1;
                out.push_str(&anchor.export_line());
                out.push('\n');
            }
        }
        let rows =
            self.store.audit_events(&stream, self.after, PAGE).await.map_err(|e| e.to_string())?;
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            let checkpoints = self
                .store
                .audit_checkpoints(&stream, first.seq, last.seq)
                .await
                .map_err(|e| e.to_string())?;
            let mut checkpoints = checkpoints.iter().filter(|c| c.kind == "periodic").peekable();
            for row in &rows {
                let event = event_from_row(row)?;
                self.check_link(&event)?;
                out.push_str(&event.export_line());
                out.push('\n');
                while let Some(checkpoint) = checkpoints.next_if(|c| c.seq <= row.seq) {
                    if checkpoint.seq == row.seq {
                        let checkpoint = checkpoint_from_row(checkpoint)?;
                        self.check_checkpoint(&checkpoint, &event)?;
                        out.push_str(&checkpoint.export_line());
                        out.push('\n');
                    }
                }
                self.head = (event.seq, event.hash);
                self.after = row.seq;
            }
        }
        if rows.len() < PAGE as usize {
            let (seq, head) = self.head;
            let closing = Checkpoint::sign_export(&self.key, self.from, seq, head, self.now);
            out.push_str(&closing.export_line());
            out.push('\n');
            self.done = true;
        }
        Ok(Some(out))
    }
}
