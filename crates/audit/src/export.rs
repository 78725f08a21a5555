//! Exports: JSON lines, each canonical JSON. A header (the stream and its
//! public keys), then the stream's events in order with each stored
//! checkpoint right after the event it covers, then one export checkpoint
//! signed now over the last event and naming the first. A partial export
//! (`since`) starts with the stored checkpoint its first event follows, so
//! it verifies from there.

use std::sync::Arc;

use bulkhead_store::{AuditCheckpointRow, AuditEventRow, AuditKeyRow, AuditStore};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    canonical::CanonicalJson,
    checkpoint::{AuditKey, Checkpoint, CheckpointKind, PublicKeyInfo},
    integrity::{self, Refusal, StreamKeys, Trusted, Witness},
    record::{Actor, Event, GENESIS, StreamId, format_time},
};

/// What the header's `format` says; a verifier refuses any other.
pub const FORMAT: &str = "bulkhead-audit/2";

/// Events read from the store per page.
const PAGE: u32 = 5_000;

/// Why an export was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// The stored stream is not what Bulkhead wrote and signed; the
    /// message says where and how.
    #[error("{0}")]
    Refused(String),
    /// The store could not be read; trying again may work.
    #[error("cannot read the audit stream: {0}")]
    Store(String),
}

impl From<String> for ExportError {
    fn from(problem: String) -> Self {
        ExportError::Refused(problem)
    }
}

fn store_error(error: impl std::fmt::Display) -> ExportError {
    ExportError::Store(error.to_string())
}

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
/// memory whole. Bulkhead signs an export only of a chain it can vouch
/// for: every event hashes to its hash, follows the one before and carries
/// the writer's MAC (or, written before writers kept one, lies under a
/// head Bulkhead signed); the anchor and every stored checkpoint are signed
/// by the stream's own key, as held by Bulkhead (never as listed in a
/// table); and the chain reaches the last head Bulkhead signed, unchanged.
#[derive(Debug)]
pub struct Exporter {
    store: Arc<dyn AuditStore>,
    stream: StreamId,
    key: Arc<AuditKey>,
    keys: StreamKeys,
    witnesses: Vec<Arc<dyn Witness>>,
    now: OffsetDateTime,
    /// Events after this seq come next.
    after: i64,
    /// The seq of the export's first event: one past its anchor, or 1.
    from: u64,
    /// The last event written: what the export checkpoint covers.
    head: (u64, [u8; 32]),
    /// The last head Bulkhead signed: the export must reach it, unchanged.
    trusted: (u64, [u8; 32]),
    header: Option<Header>,
    done: bool,
}

impl Exporter {
    /// An export of `stream` from its first retained event, or from the
    /// first event at or after `since`. `keys.own` signs the closing
    /// checkpoint; `witnesses` recall the last head Bulkhead signed.
    pub async fn new(
        store: Arc<dyn AuditStore>,
        stream: StreamId,
        tenant: Option<String>,
        keys: StreamKeys,
        witnesses: Vec<Arc<dyn Witness>>,
        since: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<Self, ExportError> {
        let key = keys.own.clone().ok_or_else(|| {
            ExportError::Refused(format!("stream {stream} has no key to sign with"))
        })?;
        // The one key Bulkhead holds, with the time it was published.
        let mut info = key.public_info(now);
        let published = store.audit_keys(stream.as_str()).await.map_err(store_error)?;
        if let Some(row) = published.iter().find(|row| row.key_id == key.key_id()) {
            info.created_at = row.created_at.clone();
        }
        let header = Header {
            kind: "header".into(),
            format: FORMAT.into(),
            stream: stream.clone(),
            tenant,
            exported_at: format_time(now),
            keys: vec![info],
        };
        let after = match since {
            Some(since) => {
                let from = store
                    .audit_first_seq_since(stream.as_str(), &format_time(since))
                    .await
                    .map_err(store_error)?;
                match from {
                    Some(seq) => seq - 1,
                    None => store
                        .audit_head(stream.as_str())
                        .await
                        .map_err(store_error)?
                        .map_or(0, |(seq, _)| seq),
                }
            }
            None => 0,
        };
        Ok(Self {
            store,
            stream,
            key,
            keys,
            witnesses,
            now,
            after,
            from: 1,
            head: (0, GENESIS),
            trusted: (0, GENESIS),
            header: Some(header),
            done: false,
        })
    }

    fn refuse(&self, seq: u64, what: &str) -> ExportError {
        tracing::error!(stream = %self.stream, seq, "{what}");
        self.refuse_stream(&format!("at seq {seq}, {what}"))
    }

    fn refuse_stream(&self, what: &str) -> ExportError {
        ExportError::Refused(format!(
            "the stored audit stream {} is not what Bulkhead wrote and signed: {what}; refusing \
             to sign an export of it",
            self.stream
        ))
    }

    /// Where the chain resumes when the export does not start at seq 1:
    /// the stored checkpoint at or before the event before its first one
    /// (for a stream whose start retention deleted, the truncation one,
    /// even when retention deleted every event). When a `since` finds
    /// none, the export starts at the beginning. The anchor must be signed
    /// by the stream's own key.
    async fn anchor(&mut self) -> Result<Option<Checkpoint>, ExportError> {
        let stream = self.stream.as_str();
        let checkpoint_before = async |seq: i64| {
            let row = self.store.audit_checkpoint_before(stream, seq).await.map_err(store_error)?;
            row.as_ref().map(checkpoint_from_row).transpose().map_err(ExportError::Refused)
        };
        let anchor = 'found: {
            if self.after > 0 {
                if let Some(anchor) = checkpoint_before(self.after).await? {
                    break 'found Some(anchor);
                }
                self.after = 0;
            }
            let first = self.store.audit_events(stream, 0, 1).await.map_err(store_error)?;
            let before = match first.first() {
                Some(event) if event.seq > 1 => event.seq - 1,
                Some(_) => return Ok(None),
                // No event left (or none ever): the last checkpoint, if any,
                // says how far the stream went.
                None => i64::MAX,
            };
            match checkpoint_before(before).await? {
                Some(anchor) => Some(anchor),
                None if first.is_empty() => None,
                None => {
                    return Err(ExportError::Refused(format!(
                        "stream {stream} has lost its start: no checkpoint anchors its first event"
                    )));
                }
            }
        };
        if let Some(anchor) = &anchor
            && !self.signed_by_own_key(anchor)
        {
            return Err(self.refuse(
                anchor.seq,
                "the checkpoint the export would start from is not signed by the stream's key",
            ));
        }
        Ok(anchor)
    }

    fn signed_by_own_key(&self, checkpoint: &Checkpoint) -> bool {
        checkpoint.key_id == self.key.key_id() && checkpoint.verify(&self.key.public_info(self.now))
    }

    /// The event's hash, its link to the one before, and the writer's MAC
    /// (an event written before writers kept one must lie under the last
    /// head Bulkhead signed).
    fn check_event(&self, event: &Event, row: &AuditEventRow) -> Result<(), ExportError> {
        if event.compute_hash() != event.hash {
            return Err(self.refuse(event.seq, "an event does not match its hash"));
        }
        let (seq, head) = self.head;
        let starts = seq == 0 && event.seq == 1;
        let follows = event.seq == seq + 1 && event.prev_hash == head;
        if !(follows || (starts && event.prev_hash == GENESIS)) {
            return Err(self.refuse(event.seq, "an event does not follow the one before it"));
        }
        let legacy = row.mac.is_none() && event.seq <= self.trusted.0;
        if !legacy && self.keys.mac_valid(event, row) != Ok(true) {
            return Err(self.refuse(event.seq, "an event does not carry the writer's MAC"));
        }
        if event.seq == self.trusted.0 && event.hash != self.trusted.1 {
            return Err(self.refuse(event.seq, "the event is not the one Bulkhead signed"));
        }
        Ok(())
    }

    /// A stored checkpoint must be signed by the stream's own key and sign
    /// the event it follows.
    fn check_checkpoint(&self, checkpoint: &Checkpoint, event: &Event) -> Result<(), ExportError> {
        if self.signed_by_own_key(checkpoint) && checkpoint.head == event.hash {
            return Ok(());
        }
        Err(self.refuse(event.seq, "a stored checkpoint does not sign the stored chain"))
    }

    /// The next lines, newline-terminated; `None` once the export is
    /// complete.
    pub async fn next_page(&mut self) -> Result<Option<String>, ExportError> {
        if self.done {
            return Ok(None);
        }
        let mut out = String::new();
        let stream = self.stream.as_str().to_owned();
        if let Some(header) = self.header.take() {
            let trusted = integrity::trusted_head(
                self.store.as_ref(),
                &self.witnesses,
                &self.keys,
                &self.stream,
            )
            .await
            .map_err(|refusal| match refusal {
                Refusal::Tampered(what) => self.refuse_stream(&what),
                Refusal::Unreadable(why) => ExportError::Store(why),
            })?;
            if let Trusted::Head(seq, hash) = trusted {
                self.trusted = (seq, hash);
            }
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
        let rows = self.store.audit_events(&stream, self.after, PAGE).await.map_err(store_error)?;
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            let checkpoints = self
                .store
                .audit_checkpoints(&stream, first.seq, last.seq)
                .await
                .map_err(store_error)?;
            let mut checkpoints = checkpoints.iter().filter(|c| c.kind == "periodic").peekable();
            for row in &rows {
                let event = event_from_row(row)?;
                self.check_event(&event, row)?;
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
            // An export that starts after the signed head cannot show it;
            // one that covers it must reach it.
            if seq < self.trusted.0 && self.from <= self.trusted.0 {
                return Err(self.refuse(
                    seq,
                    &format!(
                        "the stream ends here, but Bulkhead signed it up to seq {}: events were \
                         deleted",
                        self.trusted.0
                    ),
                ));
            }
            let closing = Checkpoint::sign_export(&self.key, self.from, seq, head, self.now);
            out.push_str(&closing.export_line());
            out.push('\n');
            self.done = true;
        }
        Ok(Some(out))
    }
}
