//! The audit streams' persistence. Rows only: what an event means, how it
//! is chained and signed, is `bulkhead-audit`'s. The tables are
//! append-only in the database itself (see the migrations).

use std::fmt;

use async_trait::async_trait;

use crate::StoreError;

/// One event of a stream, as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditEventRow {
    pub stream: String,
    pub seq: i64,
    pub time: String,
    pub actor_kind: String,
    pub actor_id: String,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub request_id: Option<String>,
    /// Canonical JSON.
    pub details: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    /// The writer's HMAC of the event; `None` for events written before
    /// writers kept one.
    pub mac: Option<Vec<u8>>,
    /// The key id of the audit key the MAC key derives from.
    pub mac_key_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditCheckpointRow {
    pub stream: String,
    pub seq: i64,
    pub head: Vec<u8>,
    pub time: String,
    /// `periodic` or `truncation`.
    pub kind: String,
    pub key_id: String,
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditKeyRow {
    pub stream: String,
    pub key_id: String,
    /// base64url, 32 bytes.
    pub public_key: String,
    pub created_at: String,
}

#[async_trait]
pub trait AuditStore: Send + Sync + fmt::Debug {
    /// The seq and hash of the stream's last event, or of its last
    /// truncation checkpoint when retention deleted every event.
    async fn audit_head(&self, stream: &str) -> Result<Option<(i64, Vec<u8>)>, StoreError>;

    /// The seq of the stream's last checkpoint of any kind.
    async fn audit_last_checkpoint(&self, stream: &str) -> Result<Option<i64>, StoreError>;

    /// The last head the writer signed for the stream, kept outside the
    /// audit tables (its `kind` reads `periodic`).
    async fn audit_signed_head(
        &self,
        stream: &str,
    ) -> Result<Option<AuditCheckpointRow>, StoreError>;

    /// Whether any event of the stream carries a writer's MAC: one that has
    /// none at all was written before writers kept them.
    async fn audit_has_macs(&self, stream: &str) -> Result<bool, StoreError>;

    /// Records a signed head, unless a later one is recorded already.
    async fn set_audit_signed_head(&self, head: &AuditCheckpointRow) -> Result<(), StoreError>;

    /// Appends events and checkpoints in one transaction: all or nothing.
    async fn append_audit(
        &self,
        events: &[AuditEventRow],
        checkpoints: &[AuditCheckpointRow],
    ) -> Result<(), StoreError>;

    /// Events of the stream with `seq > after`, in order, at most `limit`.
    async fn audit_events(
        &self,
        stream: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditEventRow>, StoreError>;

    /// Checkpoints of the stream with `from <= seq <= to`, in order.
    async fn audit_checkpoints(
        &self,
        stream: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<AuditCheckpointRow>, StoreError>;

    /// The last checkpoint at or before `seq`: where a partial export
    /// starts from.
    async fn audit_checkpoint_before(
        &self,
        stream: &str,
        seq: i64,
    ) -> Result<Option<AuditCheckpointRow>, StoreError>;

    /// The seq of the stream's first event at or after `time`.
    async fn audit_first_seq_since(
        &self,
        stream: &str,
        time: &str,
    ) -> Result<Option<i64>, StoreError>;

    /// The last event of the stream recorded before `time`.
    async fn audit_last_event_before(
        &self,
        stream: &str,
        time: &str,
    ) -> Result<Option<AuditEventRow>, StoreError>;

    /// Every stream that has events.
    async fn audit_streams(&self) -> Result<Vec<String>, StoreError>;

    async fn insert_audit_key(&self, key: &AuditKeyRow) -> Result<(), StoreError>;

    async fn audit_keys(&self, stream: &str) -> Result<Vec<AuditKeyRow>, StoreError>;

    /// Why the store's own role could get around the append-only tables,
    /// if it could (a PostgreSQL superuser, or a role that may grant itself
    /// their owner), for the operator to hear at start.
    async fn audit_tamper_risk(&self) -> Result<Option<String>, StoreError>;

    /// Retention's one path: records the truncation checkpoint, then
    /// deletes the events it covers; returns how many.
    async fn truncate_audit(&self, checkpoint: &AuditCheckpointRow) -> Result<u64, StoreError>;
}

/// Rows per INSERT statement: well under SQLite's limit of 32,766 bound
/// parameters at 12 per event.
pub(crate) const AUDIT_ROWS_PER_STATEMENT: usize = 1_000;
