//! Why Bulkhead signs only what its own writer wrote.
//!
//! Whoever can write the database can insert rows, and with the triggers
//! switched off rewrite or delete them, and recompute the hash chain. Three
//! things keep the server from signing such a chain:
//!
//! - every event row carries the writer's MAC, under a key derived from the
//!   stream's sealed signing key (or its custodian's, see
//!   [`AuditKey::custodian`]), which never leaves the vault and the server's
//!   memory; a row without a valid MAC was not written by Bulkhead;
//! - checkpoints are checked only against keys Bulkhead holds, never
//!   against keys read from an insertable table;
//! - the last head the writer signed is kept by [`Witness`]es outside the
//!   audit tables (a table their owner does not own, a file outside the
//!   database), so checkpoints and events deleted after it are noticed.
//!
//! [`verify_stored`] applies all three before the writer signs a stream it
//! did not itself write since it started.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use async_trait::async_trait;
use bulkhead_store::{AuditEventRow, AuditStore};

use crate::{
    checkpoint::{AuditKey, Checkpoint, CheckpointKind, CheckpointLine},
    export::{checkpoint_from_row, event_from_row},
    record::{Event, GENESIS, StreamId, hex},
    writer::checkpoint_row,
};

/// The keys Bulkhead checks a stream with: the stream's own, when it can be
/// opened, and its custodian, which always can.
#[derive(Debug, Clone)]
pub struct StreamKeys {
    pub own: Option<Arc<AuditKey>>,
    pub custodian: Arc<AuditKey>,
}

/// A check that needs the stream's own key while it is not loaded (or, for
/// a purged tenant, destroyed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedsOwnKey;

impl StreamKeys {
    /// Whether the platform keeps this stream as custodian: its tenant is
    /// purged, and the custodian signs in place of its destroyed key.
    fn in_custody(&self) -> bool {
        self.own.as_ref().is_some_and(|own| own.key_id() == self.custodian.key_id())
    }

    /// Whether the stream's own key signed `checkpoint` (the custodian, for
    /// a stream in custody: never for a live tenant's, so that whoever holds
    /// the platform's key cannot sign a live tenant's history); `Err` when
    /// that key cannot be had (not loaded, or destroyed with its tenant).
    pub fn signed(&self, checkpoint: &Checkpoint) -> Result<bool, NeedsOwnKey> {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        match &self.own {
            Some(own) if checkpoint.key_id == own.key_id() => {
                Ok(checkpoint.verify(&own.public_info(now)))
            }
            Some(_) if !self.in_custody() => Ok(false),
            _ => Err(NeedsOwnKey),
        }
    }

    /// Whether the custodian's key signed `checkpoint`: evidence only
    /// alongside the own key's signature of the same head (a handover), or
    /// for a stream in custody.
    fn custodian_vouches(&self, checkpoint: &Checkpoint) -> bool {
        let now = time::OffsetDateTime::UNIX_EPOCH;
        checkpoint.key_id == self.custodian.key_id()
            && checkpoint.verify(&self.custodian.public_info(now))
    }

    /// Whether the row carries a valid writer MAC; `Ok(false)` also when it
    /// carries none.
    pub fn mac_valid(&self, event: &Event, row: &AuditEventRow) -> Result<bool, NeedsOwnKey> {
        let (Some(tag), Some(key_id)) = (&row.mac, &row.mac_key_id) else { return Ok(false) };
        let key = if key_id == self.custodian.key_id() {
            &self.custodian
        } else {
            match &self.own {
                Some(own) if own.key_id() == key_id => own,
                Some(_) => return Ok(false),
                None => return Err(NeedsOwnKey),
            }
        };
        Ok(key.verify_event_mac(event.seq, &event.hash, tag))
    }
}

/// Keeps each stream's last signed head where the audit tables' owner
/// cannot roll it back.
#[async_trait]
pub trait Witness: Send + Sync + fmt::Debug {
    /// Records `checkpoint`, just stored, as the stream's newest signed
    /// head (an older one than recorded is ignored).
    async fn record(&self, checkpoint: &Checkpoint) -> Result<(), String>;

    /// The newest signed head recorded for `stream`.
    async fn recall(&self, stream: &StreamId) -> Result<Option<Checkpoint>, String>;
}

/// The control store's `audit_heads` table: outside the audit schema, so
/// the audit tables' owner cannot touch it.
#[derive(Debug)]
pub struct StoreWitness(pub Arc<dyn AuditStore>);

#[async_trait]
impl Witness for StoreWitness {
    async fn record(&self, checkpoint: &Checkpoint) -> Result<(), String> {
        self.0.set_audit_signed_head(&checkpoint_row(checkpoint)).await.map_err(|e| e.to_string())
    }

    async fn recall(&self, stream: &StreamId) -> Result<Option<Checkpoint>, String> {
        let row = self.0.audit_signed_head(stream.as_str()).await.map_err(|e| e.to_string())?;
        row.as_ref().map(checkpoint_from_row).transpose()
    }
}

/// A file per stream in a directory outside the database, holding the
/// last signed head as a checkpoint line: whoever rolls the database back
/// cannot roll this back with it.
#[derive(Debug)]
pub struct FileWitness {
    dir: PathBuf,
}

impl FileWitness {
    /// Creates `dir` (mode 0700) if it is missing.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self { dir: dir.to_owned() })
    }

    fn path(&self, stream: &StreamId) -> PathBuf {
        // `tenant:<uuid>` or `platform`: a colon is the only character
        // some file systems refuse.
        self.dir.join(format!("{}.json", stream.as_str().replace(':', "-")))
    }

    fn read(path: &Path) -> Result<Option<Checkpoint>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let bad = || format!("{} is not a signed head", path.display());
        let line: CheckpointLine = serde_json::from_str(text.trim_end()).map_err(|_| bad())?;
        line.checkpoint().map(Some).map_err(|_| bad())
    }
}

#[async_trait]
impl Witness for FileWitness {
    async fn record(&self, checkpoint: &Checkpoint) -> Result<(), String> {
        let path = self.path(&checkpoint.stream);
        let seq = checkpoint.seq;
        let line = checkpoint.export_line();
        let temp = path.with_extension("json.new");
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            match Self::read(&path) {
                Ok(Some(known)) if known.seq > seq => return Ok(()),
                Ok(_) => {}
                // Written over, loudly: a witness that cannot be read (a
                // file cut short by a power loss) must not stay silent.
                Err(error) => tracing::error!(%error, "an audit witness file was unreadable; writing it again"),
            }
            // Durable before it is relied on: the file, then its name.
            let written = (|| {
                let mut file = std::fs::File::create(&temp)?;
                std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes())?;
                file.sync_all()?;
                std::fs::rename(&temp, &path)?;
                std::fs::File::open(&dir)?.sync_all()
            })();
            written.map_err(|e| format!("cannot write {}: {e}", path.display()))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    async fn recall(&self, stream: &StreamId) -> Result<Option<Checkpoint>, String> {
        let path = self.path(stream);
        tokio::task::spawn_blocking(move || Self::read(&path)).await.map_err(|e| e.to_string())?
    }
}

/// The newest signed head of `stream` that a key Bulkhead holds signed,
/// among what the witnesses recall and the stream's last stored
/// checkpoint: where checking the stored chain starts. `Err` names a head
/// that does not verify (someone wrote it who does not hold the key).
pub async fn trusted_head(
    store: &dyn AuditStore,
    witnesses: &[Arc<dyn Witness>],
    keys: &StreamKeys,
    stream: &StreamId,
) -> Result<Trusted, Refusal> {
    let mut candidates = Vec::new();
    for witness in witnesses {
        match witness.recall(stream).await {
            Ok(Some(head)) => {
                candidates.push(("a signed head kept outside the audit tables", head))
            }
            Ok(None) => {}
            // A witness that cannot be read is not evidence either way, and
            // someone must hear of it.
            Err(error) => tracing::error!(%stream, %error, "cannot read an audit witness"),
        }
    }
    let last =
        store.audit_checkpoint_before(stream.as_str(), i64::MAX).await.map_err(unreadable)?;
    if let Some(row) = last {
        let checkpoint = checkpoint_from_row(&row).map_err(Refusal::Tampered)?;
        candidates.push(("the stream's last stored checkpoint", checkpoint));
    }
    let mut trusted = Trusted::Genesis;
    // The newest head that only the stream's own key, not loaded, could
    // vouch for: unless a newer one can be checked, the answer waits.
    let mut unchecked = None;
    // Heads the stream's own key signed: a handover to the custodian signs
    // the same head with both keys, own in the store and custodian for the
    // witnesses, and a retried handover (a crash between the two) reads it.
    let own_signed: Vec<(u64, [u8; 32])> = candidates
        .iter()
        .filter(|(_, head)| head.stream == *stream && keys.signed(head) == Ok(true))
        .map(|(_, head)| (head.seq, head.head))
        .collect();
    for (what, head) in candidates {
        if head.stream != *stream {
            return Err(Refusal::Tampered(format!(
                "{what} is of another stream ({})",
                head.stream
            )));
        }
        if keys.custodian_vouches(&head) && own_signed.contains(&(head.seq, head.head)) {
            if trusted.seq() <= head.seq {
                trusted = Trusted::Head(head.seq, head.head);
            }
            continue;
        }
        match keys.signed(&head) {
            Ok(true) if trusted.seq() <= head.seq => trusted = Trusted::Head(head.seq, head.head),
            Ok(true) => {}
            Ok(false) => {
                return Err(Refusal::Tampered(format!(
                    "{what} (seq {}) is not signed by a key Bulkhead holds for the stream",
                    head.seq
                )));
            }
            Err(NeedsOwnKey) => unchecked = unchecked.max(Some(head.seq)),
        }
    }
    match unchecked {
        Some(seq) if seq > trusted.seq() => Ok(Trusted::NeedsOwnKey),
        _ => Ok(trusted),
    }
}

/// Where a stream's chain is known to be Bulkhead's own up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trusted {
    /// Nothing signed yet: from its first event.
    Genesis,
    /// The event at this seq, with this hash, was signed by Bulkhead.
    Head(u64, [u8; 32]),
    /// Cannot tell until the stream's own key is loaded.
    NeedsOwnKey,
}

impl Trusted {
    pub fn seq(&self) -> u64 {
        match self {
            Trusted::Head(seq, _) => *seq,
            _ => 0,
        }
    }
}

/// What checking a stored stream found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every event after the trusted head is Bulkhead's own, chained.
    Sound,
    /// Sound, and the stream was written before writers kept MACs: its
    /// events after the last signed head carry none, and are taken as they
    /// are, once, at the first start of a version that keeps them. (From
    /// then on every event of the stream has one.)
    Adopted,
    /// Some events carry a MAC of the stream's own key, not loaded now.
    NeedsOwnKey,
}

/// Why a stored stream could not be vouched for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The store could not be read; nothing is known either way.
    Unreadable(String),
    /// The stored stream is not what Bulkhead wrote and signed.
    Tampered(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Unreadable(why) | Refusal::Tampered(why) => f.write_str(why),
        }
    }
}

fn unreadable(error: impl fmt::Display) -> Refusal {
    Refusal::Unreadable(error.to_string())
}

/// Events read per page while checking.
const PAGE: u32 = 5_000;

/// Checks the stored stream from its trusted head to `stored_head`: the
/// head is still there (nothing after it deleted, nothing at it changed),
/// and every later event hashes to its hash, follows the one before, and
/// carries the writer's MAC. `Err` says what is wrong, for the operator.
pub async fn verify_stored(
    store: &dyn AuditStore,
    witnesses: &[Arc<dyn Witness>],
    keys: &StreamKeys,
    stream: &StreamId,
    stored_head: u64,
) -> Result<Verdict, Refusal> {
    let trusted = match trusted_head(store, witnesses, keys, stream).await? {
        Trusted::NeedsOwnKey => return Ok(Verdict::NeedsOwnKey),
        trusted => trusted,
    };
    let name = stream.as_str();
    let mut head = match trusted {
        Trusted::Head(seq, hash) => {
            if stored_head < seq {
                return Err(Refusal::Tampered(format!(
                    "the stored stream ends at seq {stored_head}, but Bulkhead signed it up to \
                     seq {seq}: events were deleted"
                )));
            }
            let at = store.audit_events(name, seq as i64 - 1, 1).await.map_err(unreadable)?;
            match at.first() {
                Some(row) if row.seq as u64 == seq => {
                    if row.hash != hash {
                        return Err(Refusal::Tampered(format!(
                            "event {seq} is not the one Bulkhead signed (its hash was {}): \
                             history was rewritten",
                            hex(&hash)
                        )));
                    }
                    (seq, hash)
                }
                // Retention deleted it: the chain resumes from the
                // truncation checkpoint it left, which must be signed.
                _ => resume_after_truncation(store, keys, stream, seq).await?,
            }
        }
        _ => (0, GENESIS),
    };
    let mut verdict = Verdict::Sound;
    let mut legacy = None;
    loop {
        let rows = store.audit_events(name, head.0 as i64, PAGE).await.map_err(unreadable)?;
        for row in &rows {
            let event = event_from_row(row).map_err(Refusal::Tampered)?;
            let tampered = |what: String| Err(Refusal::Tampered(what));
            if event.compute_hash() != event.hash {
                return tampered(format!(
                    "event {} does not match its hash: it was changed",
                    event.seq
                ));
            }
            if event.seq != head.0 + 1 || event.prev_hash != head.1 {
                return tampered(format!(
                    "event {} does not follow event {}: events were removed, reordered or inserted",
                    event.seq, head.0
                ));
            }
            match keys.mac_valid(&event, row) {
                Ok(true) => {}
                Ok(false) if row.mac.is_none() && verdict != Verdict::NeedsOwnKey => {
                    if legacy.is_none() {
                        legacy = Some(!store.audit_has_macs(name).await.map_err(unreadable)?);
                    }
                    if legacy != Some(true) {
                        return tampered(format!(
                            "event {} does not carry the writer's MAC: Bulkhead did not write it",
                            event.seq
                        ));
                    }
                    verdict = Verdict::Adopted;
                }
                Ok(false) => {
                    return tampered(format!(
                        "event {} does not carry the writer's MAC: Bulkhead did not write it",
                        event.seq
                    ));
                }
                Err(NeedsOwnKey) => verdict = Verdict::NeedsOwnKey,
            }
            head = (event.seq, event.hash);
        }
        if rows.len() < PAGE as usize {
            return Ok(verdict);
        }
    }
}

/// The head a stream resumes from after retention deleted its events up
/// to and beyond `seq`: the signed truncation checkpoint before its first
/// remaining event.
async fn resume_after_truncation(
    store: &dyn AuditStore,
    keys: &StreamKeys,
    stream: &StreamId,
    seq: u64,
) -> Result<(u64, [u8; 32]), Refusal> {
    let name = stream.as_str();
    let first = store.audit_events(name, 0, 1).await.map_err(unreadable)?;
    let before = first.first().map_or(i64::MAX, |row| row.seq - 1);
    let anchor = store.audit_checkpoint_before(name, before).await.map_err(unreadable)?;
    let anchor = anchor.as_ref().map(checkpoint_from_row).transpose().map_err(Refusal::Tampered)?;
    match anchor {
        Some(anchor)
            if anchor.kind == CheckpointKind::Truncation
                && anchor.seq >= seq
                && keys.signed(&anchor) == Ok(true) =>
        {
            Ok((anchor.seq, anchor.head))
        }
        _ => Err(Refusal::Tampered(format!(
            "event {seq}, which Bulkhead signed, is gone without a signed truncation \
             checkpoint: events were deleted"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_witness_keeps_the_newest_head_only() {
        let dir = std::env::temp_dir().join(format!("bh-witness-{}", uuid::Uuid::new_v4()));
        let witness = FileWitness::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        let key = AuditKey::from_secret(StreamId::tenant(uuid::Uuid::new_v4()), &[3; 32])
            .unwrap_or_else(|| panic!("a 32-byte seed"));
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let newer = Checkpoint::sign(&key, 9, [9; 32], at, CheckpointKind::Periodic);
        let older = Checkpoint::sign(&key, 4, [4; 32], at, CheckpointKind::Periodic);
        witness.record(&newer).await.unwrap_or_else(|e| panic!("{e}"));
        witness.record(&older).await.unwrap_or_else(|e| panic!("{e}"));
        let recalled = witness.recall(key.stream()).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(recalled, Some(newer));
        assert_eq!(witness.recall(&StreamId::platform()).await, Ok(None));
        let _ = std::fs::remove_dir_all(dir);
    }
}
