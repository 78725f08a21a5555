//! The one path by which events are appended: a single task that takes
//! events from a bounded queue, places each in its stream (seq and hash),
//! and writes whatever has queued up, across every stream, in one
//! transaction. One task keeps each stream's order without locks; one
//! transaction per batch makes a crash leave a batch fully written or not
//! at all; batching is what makes it fast, since a busy queue turns into
//! large batches by itself, with no waiting added when it is quiet.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bulkhead_store::{AuditCheckpointRow, AuditEventRow, AuditStore, StoreError};
use thiserror::Error;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::{
    checkpoint::{AuditKey, Checkpoint, CheckpointKind},
    integrity::{self, Refusal, StreamKeys, Witness},
    record::{Event, GENESIS, NewEvent, StreamId},
};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuditError {
    #[error("the audit writer has stopped")]
    Closed,
    #[error("the audit queue is full")]
    Full,
    #[error("cannot write audit events: {0}")]
    Store(String),
    #[error("stream {0} has no audit key to sign with yet")]
    NoKey(String),
    /// The stored stream is not what Bulkhead wrote and signed; nothing more
    /// is appended to it or signed until an operator restores it.
    #[error(
        "the stored audit stream {stream} was changed outside Bulkhead ({reason}); Bulkhead \
         refuses to append to it or sign it: restore the audit tables from a backup (see \
         docs/audit.md)"
    )]
    Broken { stream: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl From<StoreError> for AuditError {
    fn from(e: StoreError) -> Self {
        AuditError::Store(e.to_string())
    }
}

/// The keys that sign each stream's checkpoints.
#[async_trait]
pub trait KeyRing: Send + Sync + fmt::Debug {
    /// The key that signs `stream`'s checkpoints now; `None` when there is
    /// none to be had (not made yet, or the tenant's own key is not
    /// loaded): the events are appended and chained anyway, and the
    /// checkpoint is made once the key is back.
    async fn signing_key(&self, stream: &StreamId) -> Option<Arc<AuditKey>>;

    /// The stream's key if it is at hand without any lookup: a key made
    /// moments ago (the tenant just provisioned) is used at once, even
    /// while the stream is backing off from asking.
    fn cached(&self, _stream: &StreamId) -> Option<Arc<AuditKey>> {
        None
    }

    /// The key that stands in for the stream's own where that is missing
    /// (see [`AuditKey::custodian`]): it MACs events written meanwhile.
    fn custodian(&self, stream: &StreamId) -> Arc<AuditKey>;
}

/// Where the writer takes the time of checkpoints from.
pub type Now = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// A stream is checkpointed after this many events ...
    pub checkpoint_every: u64,
    /// ... or when its oldest unsigned event is this old.
    pub checkpoint_interval: Duration,
    /// The most events written in one transaction.
    pub max_batch: usize,
    /// Events waiting to be written; appends wait when it is full.
    pub queue: usize,
}

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            checkpoint_every: 1_000,
            checkpoint_interval: Duration::from_secs(60),
            max_batch: 5_000,
            queue: 50_000,
        }
    }
}

enum Command {
    Append(NewEvent, Option<oneshot::Sender<Result<u64, AuditError>>>),
    /// Checkpoints every stream with unsigned events.
    Checkpoint(oneshot::Sender<()>),
    /// Checkpoints the stream, then signs a truncation checkpoint at
    /// event `seq` (whose hash is `head`) and deletes the events up to it.
    Truncate {
        stream: StreamId,
        upto: u64,
        reply: oneshot::Sender<Result<u64, AuditError>>,
    },
    /// Checkpoints the stream, then has its custodian sign the same head
    /// for the witnesses: its own key is about to be destroyed.
    Custody(StreamId, oneshot::Sender<Result<(), AuditError>>),
    Stop(oneshot::Sender<()>),
}

/// A handle on the writer; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Command>,
    store: Arc<dyn AuditStore>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Starts the writer. It runs until [`AuditLog::stop`] or until every
    /// handle is dropped, and checkpoints every stream before it ends.
    /// `witnesses` keep each stream's last signed head outside the audit
    /// tables (see [`crate::integrity`]).
    pub fn start(
        store: Arc<dyn AuditStore>,
        keys: Arc<dyn KeyRing>,
        witnesses: Vec<Arc<dyn Witness>>,
        now: Now,
        settings: WriterSettings,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let writer = Writer {
            store: Arc::clone(&store),
            keys,
            witnesses,
            now,
            settings,
            heads: HashMap::new(),
            keyless: HashMap::new(),
            custodians: HashMap::new(),
            broken: HashMap::new(),
        };
        (Self { tx, store }, tokio::spawn(writer.run(rx)))
    }

    /// Appends `event` and returns its seq once it is written.
    pub async fn append(&self, event: NewEvent) -> Result<u64, AuditError> {
        let (reply, written) = oneshot::channel();
        self.tx.send(Command::Append(event, Some(reply))).await.map_err(|_| AuditError::Closed)?;
        written.await.map_err(|_| AuditError::Closed)?
    }

    /// Queues `event` without waiting, for paths that must not block (the
    /// gateway's); refused when the queue is full.
    pub fn append_nowait(&self, event: NewEvent) -> Result<(), AuditError> {
        self.tx.try_send(Command::Append(event, None)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => AuditError::Full,
            mpsc::error::TrySendError::Closed(_) => AuditError::Closed,
        })
    }

    /// Checkpoints every stream with unsigned events, now.
    pub async fn checkpoint_all(&self) -> Result<(), AuditError> {
        let (reply, done) = oneshot::channel();
        self.tx.send(Command::Checkpoint(reply)).await.map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)
    }

    /// Retention: deletes the stream's events recorded before `before`,
    /// after a signed truncation checkpoint at the last of them (whose hash
    /// is checked against the next signed checkpoint first); returns
    /// how many were deleted.
    pub async fn truncate_before(
        &self,
        stream: StreamId,
        before: OffsetDateTime,
    ) -> Result<u64, AuditError> {
        // Found here, not in the writer: a scan of one stream must not hold
        // up every other stream's appends.
        let before = crate::record::format_time(before);
        let Some(last) = self.store.audit_last_event_before(stream.as_str(), &before).await? else {
            return Ok(0);
        };
        let upto =
            u64::try_from(last.seq).map_err(|_| AuditError::Invalid("negative seq".into()))?;
        let (reply, done) = oneshot::channel();
        let command = Command::Truncate { stream, upto, reply };
        self.tx.send(command).await.map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// Hands the stream to its custodian before its own key is destroyed (a
    /// tenant purged): its head is signed by its own key, and the same head
    /// by the custodian for the witnesses, so that the stream can still be
    /// checked and signed once the own key is gone.
    pub async fn hand_to_custodian(&self, stream: StreamId) -> Result<(), AuditError> {
        let (reply, done) = oneshot::channel();
        self.tx.send(Command::Custody(stream, reply)).await.map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// Writes what is queued, checkpoints every stream and stops.
    pub async fn stop(&self) {
        let (reply, done) = oneshot::channel();
        if self.tx.send(Command::Stop(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// A stream's head as the writer knows it.
struct Head {
    seq: u64,
    hash: [u8; 32],
    /// Events since the last checkpoint, and since when.
    unsigned: u64,
    unsigned_since: Option<Instant>,
    /// Whether the stored events up to here are known to be the writer's
    /// own (checked when the head was read, or written by this writer);
    /// false while checking needs the stream's own key, not loaded then.
    verified: bool,
}

struct Writer {
    store: Arc<dyn AuditStore>,
    keys: Arc<dyn KeyRing>,
    witnesses: Vec<Arc<dyn Witness>>,
    now: Now,
    settings: WriterSettings,
    heads: HashMap<StreamId, Head>,
    /// Streams whose key was missing, and when it was last asked for: a
    /// stream without a key must not cost a key lookup per event.
    keyless: HashMap<StreamId, Instant>,
    /// Custodian keys derived so far, for streams without their own.
    custodians: HashMap<StreamId, Arc<AuditKey>>,
    /// Streams found changed outside Bulkhead, and what was wrong.
    broken: HashMap<StreamId, String>,
}

/// How long a stream found without a key goes before it is asked again.
const KEYLESS_BACKOFF: Duration = Duration::from_secs(30);
/// Heads kept in memory before fully signed streams are dropped from it
/// (they are read again from the store when next used).
const MAX_HEADS: usize = 100_000;

type Reply = oneshot::Sender<Result<u64, AuditError>>;

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut tick =
            tokio::time::interval(Duration::from_secs(1).min(self.settings.checkpoint_interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let command = tokio::select! {
                command = rx.recv() => command,
                _ = tick.tick() => {
                    self.checkpoint_due(false).await;
                    continue;
                }
            };
            let Some(command) = command else { break };
            let mut batch: Vec<(NewEvent, Option<Reply>)> = Vec::new();
            let mut next = Some(command);
            // Everything already queued joins this batch, up to its cap;
            // other commands run after the batch is written, in order.
            while let Some(command) = next.take() {
                match command {
                    Command::Append(event, reply) => {
                        batch.push((event, reply));
                        if batch.len() < self.settings.max_batch {
                            next = rx.try_recv().ok();
                        }
                    }
                    other => {
                        self.write(std::mem::take(&mut batch)).await;
                        if self.control(other).await {
                            return;
                        }
                    }
                }
            }
            self.write(batch).await;
        }
        self.checkpoint_due(true).await;
    }

    /// Runs a command other than an append; true when the writer stops.
    async fn control(&mut self, command: Command) -> bool {
        match command {
            Command::Append(..) => false,
            Command::Checkpoint(reply) => {
                self.checkpoint_due(true).await;
                let _ = reply.send(());
                false
            }
            Command::Truncate { stream, upto, reply } => {
                let _ = reply.send(self.truncate(&stream, upto).await);
                false
            }
            Command::Custody(stream, reply) => {
                let _ = reply.send(self.custody(&stream).await);
                false
            }
            Command::Stop(reply) => {
                self.checkpoint_due(true).await;
                let _ = reply.send(());
                true
            }
        }
    }

    async fn head(&mut self, stream: &StreamId) -> Result<&mut Head, AuditError> {
        if !self.heads.contains_key(stream) {
            let (head, adopted) = self.load_head(stream).await?;
            self.heads.insert(stream.clone(), head);
            // Written before MACs: signed now, so that nothing without a
            // MAC is ever beyond a signed head again.
            if adopted && let Err(error) = self.checkpoint(std::slice::from_ref(stream)).await {
                tracing::warn!(%stream, %error, "cannot sign the events adopted from before MACs");
            }
        }
        self.heads.get_mut(stream).ok_or(AuditError::Closed)
    }

    /// Reads the stream's head from the store, after checking that the
    /// stored stream is Bulkhead's own (see [`integrity::verify_stored`]).
    /// The head, and whether events from before MACs were adopted.
    async fn load_head(&mut self, stream: &StreamId) -> Result<(Head, bool), AuditError> {
        self.refuse_broken(stream)?;
        let (seq, hash) = stored_head(self.store.as_ref(), stream).await?;
        let signed = self.store.audit_last_checkpoint(stream.as_str()).await?.unwrap_or(0);
        let unsigned = seq.saturating_sub(u64::try_from(signed).unwrap_or(0));
        let since = (unsigned > 0).then(Instant::now);
        let verdict = self.verify(stream, seq).await?;
        let verified = verdict != integrity::Verdict::NeedsOwnKey;
        let head = Head { seq, hash, unsigned, unsigned_since: since, verified };
        Ok((head, verdict == integrity::Verdict::Adopted))
    }

    /// What checking the stored stream up to `seq` found. A stream found
    /// changed is marked broken.
    async fn verify(
        &mut self,
        stream: &StreamId,
        seq: u64,
    ) -> Result<integrity::Verdict, AuditError> {
        let keys = self.stream_keys(stream).await;
        let verdict =
            integrity::verify_stored(self.store.as_ref(), &self.witnesses, &keys, stream, seq)
                .await;
        match verdict {
            Ok(verdict) => Ok(verdict),
            Err(Refusal::Unreadable(why)) => Err(AuditError::Store(why)),
            Err(Refusal::Tampered(reason)) => {
                tracing::error!(%stream, %reason, "the stored audit stream was changed outside Bulkhead; refusing to append to it or sign it");
                self.broken.insert(stream.clone(), reason);
                self.heads.remove(stream);
                self.refuse_broken(stream).map(|()| integrity::Verdict::NeedsOwnKey)
            }
        }
    }

    fn refuse_broken(&self, stream: &StreamId) -> Result<(), AuditError> {
        match self.broken.get(stream) {
            Some(reason) => {
                Err(AuditError::Broken { stream: stream.to_string(), reason: reason.clone() })
            }
            None => Ok(()),
        }
    }

    async fn stream_keys(&mut self, stream: &StreamId) -> StreamKeys {
        StreamKeys { own: self.key_for(stream).await, custodian: self.custodian(stream) }
    }

    fn custodian(&mut self, stream: &StreamId) -> Arc<AuditKey> {
        if self.custodians.len() > MAX_HEADS {
            self.custodians.clear();
        }
        let keys = &self.keys;
        Arc::clone(self.custodians.entry(stream.clone()).or_insert_with(|| keys.custodian(stream)))
    }

    /// The key whose MAC the writer puts on the stream's events: its own,
    /// else its custodian's.
    async fn mac_key(&mut self, stream: &StreamId) -> Arc<AuditKey> {
        match self.key_for(stream).await {
            Some(own) => own,
            None => self.custodian(stream),
        }
    }

    async fn write(&mut self, batch: Vec<(NewEvent, Option<Reply>)>) {
        if batch.is_empty() {
            return;
        }
        let (events, replies): (Vec<NewEvent>, Vec<Option<Reply>>) = batch.into_iter().unzip();
        // One more try from freshly read heads: another process (an
        // offline `bulkhead vault unlock`) may have appended meanwhile.
        let mut result = self.try_write(&events).await;
        if result.is_err() {
            result = self.try_write(&events).await;
        }
        match result {
            Ok(seqs) => answer(replies, Ok(seqs)),
            Err(error) => {
                tracing::error!(%error, events = events.len(), "audit batch not written; writing it stream by stream");
                self.write_per_stream(events, replies).await;
            }
        }
        if self.heads.len() > MAX_HEADS {
            self.heads.retain(|_, head| head.unsigned > 0);
        }
    }

    /// A batch the store refused, again with one transaction per stream:
    /// whatever one stream's events did wrong costs no other stream its
    /// events.
    async fn write_per_stream(&mut self, events: Vec<NewEvent>, replies: Vec<Option<Reply>>) {
        let mut order: HashMap<StreamId, usize> = HashMap::new();
        let mut groups: Vec<Vec<(NewEvent, Option<Reply>)>> = Vec::new();
        for (event, reply) in events.into_iter().zip(replies) {
            let next = groups.len();
            let at = *order.entry(event.stream.clone()).or_insert(next);
            if at == next {
                groups.push(Vec::new());
            }
            groups[at].push((event, reply));
        }
        for group in groups {
            let (events, replies): (Vec<NewEvent>, Vec<Option<Reply>>) = group.into_iter().unzip();
            let result = self.try_write(&events).await;
            if let (Err(error), Some(event)) = (&result, events.first()) {
                tracing::error!(stream = %event.stream, %error, events = events.len(), "audit events not written");
            }
            answer(replies, result);
        }
    }

    /// Chains `events` and writes them, all or none; their seqs, in order.
    /// On failure forgets the heads it touched, so that a retry reads them
    /// again.
    async fn try_write(&mut self, events: &[NewEvent]) -> Result<Vec<u64>, AuditError> {
        let mut rows = Vec::with_capacity(events.len());
        let mut seqs = Vec::with_capacity(events.len());
        let mut touched: HashSet<StreamId> = HashSet::new();
        let mut checkpoints = Vec::new();
        let mut witnessed = Vec::new();
        let every = self.settings.checkpoint_every.max(1);
        let mut failed = None;
        for event in events {
            let stream = event.stream.clone();
            let head = match self.head(&stream).await {
                Ok(head) => head,
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            };
            let event = Event::chain(event.clone(), head.seq + 1, head.hash);
            head.seq = event.seq;
            head.hash = event.hash;
            head.unsigned += 1;
            head.unsigned_since.get_or_insert_with(Instant::now);
            let due = head.unsigned >= every;
            seqs.push(event.seq);
            let key = self.mac_key(&stream).await;
            rows.push(event_row(event, &key));
            // Exactly every N events, even within one batch: the head is
            // this event.
            if due {
                let signed = self.sign(std::slice::from_ref(&stream)).await;
                checkpoints.extend(signed.rows);
                witnessed.extend(signed.checkpoints);
                self.signed(&signed.streams);
            }
            touched.insert(stream);
        }
        let result = match failed {
            Some(error) => Err(error),
            None => self.store.append_audit(&rows, &checkpoints).await.map_err(AuditError::from),
        };
        if result.is_err() {
            for stream in touched {
                self.heads.remove(&stream);
            }
        } else {
            self.witness(&witnessed).await;
        }
        result.map(|()| seqs)
    }

    /// The stream's signing key, unless it was found missing lately.
    async fn key_for(&mut self, stream: &StreamId) -> Option<Arc<AuditKey>> {
        if let Some(key) = self.keys.cached(stream) {
            self.keyless.remove(stream);
            return Some(key);
        }
        if self.keyless.get(stream).is_some_and(|at| at.elapsed() < KEYLESS_BACKOFF) {
            return None;
        }
        let key = self.keys.signing_key(stream).await;
        match &key {
            Some(_) => self.keyless.remove(stream),
            None => self.keyless.insert(stream.clone(), Instant::now()),
        };
        key
    }

    /// Checkpoints for `streams` at their current heads, for those whose
    /// key is available and whose stored events are the writer's own.
    async fn sign(&mut self, streams: &[StreamId]) -> Signed {
        let mut signed = Signed::default();
        let at = (self.now)();
        for stream in streams {
            let Some(head) = self.heads.get(stream) else { continue };
            if head.seq == 0 {
                continue;
            }
            let (seq, hash, verified) = (head.seq, head.hash, head.verified);
            let Some(key) = self.key_for(stream).await else { continue };
            // Read while the stream's own key was not loaded: checked now
            // that it is, before anything is signed.
            if !verified {
                match self.verify(stream, seq).await {
                    Ok(integrity::Verdict::Sound | integrity::Verdict::Adopted) => {
                        if let Some(head) = self.heads.get_mut(stream) {
                            head.verified = true;
                        }
                    }
                    Ok(integrity::Verdict::NeedsOwnKey) | Err(_) => continue,
                }
            }
            let checkpoint = Checkpoint::sign(&key, seq, hash, at, CheckpointKind::Periodic);
            signed.rows.push(checkpoint_row(&checkpoint));
            signed.checkpoints.push(checkpoint);
            signed.streams.push(stream.clone());
        }
        signed
    }

    /// Tells the witnesses about checkpoints just stored. A witness that
    /// cannot keep up is logged; the stored checkpoint is what counts.
    async fn witness(&self, checkpoints: &[Checkpoint]) {
        for checkpoint in checkpoints {
            for witness in &self.witnesses {
                if let Err(error) = witness.record(checkpoint).await {
                    tracing::warn!(stream = %checkpoint.stream, %error, "an audit witness did not record the signed head");
                }
            }
        }
    }

    fn signed(&mut self, streams: &[StreamId]) {
        for stream in streams {
            if let Some(head) = self.heads.get_mut(stream) {
                head.unsigned = 0;
                head.unsigned_since = None;
            }
        }
    }

    /// Checkpoints every stream with unsigned events older than the
    /// interval, or (`all`) every stream with unsigned events.
    async fn checkpoint_due(&mut self, all: bool) {
        let interval = self.settings.checkpoint_interval;
        let due: Vec<StreamId> = self
            .heads
            .iter()
            .filter(|(_, h)| h.unsigned > 0)
            .filter(|(_, h)| all || h.unsigned_since.is_some_and(|at| at.elapsed() >= interval))
            .map(|(stream, _)| stream.clone())
            .collect();
        if let Err(error) = self.checkpoint(&due).await {
            tracing::error!(%error, "audit checkpoints not written");
        }
    }

    /// Signs and writes checkpoints at the heads of `streams`.
    async fn checkpoint(&mut self, streams: &[StreamId]) -> Result<(), AuditError> {
        if streams.is_empty() {
            return Ok(());
        }
        let signed = self.sign(streams).await;
        if signed.rows.is_empty() {
            return Ok(());
        }
        self.store.append_audit(&[], &signed.rows).await?;
        self.witness(&signed.checkpoints).await;
        self.signed(&signed.streams);
        Ok(())
    }

    async fn custody(&mut self, stream: &StreamId) -> Result<(), AuditError> {
        // A retried handover finds its head signed already.
        if self.head(stream).await?.unsigned > 0 {
            self.checkpoint(std::slice::from_ref(stream)).await?;
        }
        let head = self.head(stream).await?;
        if head.seq == 0 {
            return Ok(());
        }
        let (seq, hash) = (head.seq, head.hash);
        let custodian = self.custodian(stream);
        let signed =
            Checkpoint::sign(&custodian, seq, hash, (self.now)(), CheckpointKind::Periodic);
        self.witness(std::slice::from_ref(&signed)).await;
        Ok(())
    }

    /// Deletes the stream's events up to `upto`, after a truncation
    /// checkpoint there. The hash it signs is checked first: every event
    /// from `upto` to the next periodic checkpoint must hash to its hash and
    /// link to the one before, and that checkpoint must be signed by a key
    /// Bulkhead holds, so the cut is at a head Bulkhead vouched for.
    async fn truncate(&mut self, stream: &StreamId, upto: u64) -> Result<u64, AuditError> {
        let key =
            self.key_for(stream).await.ok_or_else(|| AuditError::NoKey(stream.to_string()))?;
        // The store deletes only what a periodic checkpoint already signed.
        if self.head(stream).await?.unsigned > 0 {
            self.checkpoint(std::slice::from_ref(stream)).await?;
        }
        let name = stream.as_str();
        let refuse = |why: String| {
            AuditError::Invalid(format!("retention of {stream} up to seq {upto} refused: {why}"))
        };
        let checkpoints = self.store.audit_checkpoints(name, upto as i64, i64::MAX).await?;
        let signed = checkpoints
            .iter()
            .find(|c| c.kind == CheckpointKind::Periodic.as_str())
            .map(crate::export::checkpoint_from_row)
            .transpose()
            .map_err(refuse)?
            .ok_or_else(|| refuse("no periodic checkpoint covers it yet".into()))?;
        if self.stream_keys(stream).await.signed(&signed) != Ok(true) {
            return Err(refuse(format!("the checkpoint at seq {} does not verify", signed.seq)));
        }
        let span = signed.seq.saturating_sub(upto).saturating_add(1);
        let rows = self
            .store
            .audit_events(name, upto as i64 - 1, u32::try_from(span).unwrap_or(u32::MAX))
            .await?;
        let mut cut = None;
        let mut prev: Option<[u8; 32]> = None;
        for row in &rows {
            let event = crate::export::event_from_row(row).map_err(refuse)?;
            let linked = prev.is_none_or(|prev| event.prev_hash == prev);
            if event.compute_hash() != event.hash || !linked {
                return Err(refuse(format!("event {} does not follow the chain", event.seq)));
            }
            if event.seq == upto {
                cut = Some(event.hash);
            }
            prev = Some(event.hash);
        }
        let cut = cut.ok_or_else(|| refuse(format!("event {upto} is not stored")))?;
        if prev != Some(signed.head) || rows.last().map(|r| r.seq as u64) != Some(signed.seq) {
            return Err(refuse(format!(
                "the events do not lead to the checkpoint at seq {}",
                signed.seq
            )));
        }
        let truncation =
            Checkpoint::sign(&key, upto, cut, (self.now)(), CheckpointKind::Truncation);
        Ok(self.store.truncate_audit(&checkpoint_row(&truncation)).await?)
    }
}

/// Tells each caller its event's seq, or the error.
fn answer(replies: Vec<Option<Reply>>, result: Result<Vec<u64>, AuditError>) {
    match result {
        Ok(seqs) => {
            for (reply, seq) in replies.into_iter().zip(seqs) {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(seq));
                }
            }
        }
        Err(error) => {
            for reply in replies.into_iter().flatten() {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

#[derive(Default)]
struct Signed {
    rows: Vec<AuditCheckpointRow>,
    checkpoints: Vec<Checkpoint>,
    streams: Vec<StreamId>,
}

/// The event as stored, with `key`'s MAC.
fn event_row(event: Event, key: &AuditKey) -> AuditEventRow {
    let mac = key.event_mac(event.seq, &event.hash);
    AuditEventRow {
        mac: Some(mac.to_vec()),
        mac_key_id: Some(key.key_id().to_owned()),
        stream: event.stream.into(),
        seq: event.seq as i64,
        time: event.time,
        actor_kind: event.actor.kind,
        actor_id: event.actor.id,
        action: event.action,
        resource: event.resource,
        outcome: event.outcome,
        request_id: event.request_id,
        details: event.details.into_string(),
        prev_hash: event.prev_hash.to_vec(),
        hash: event.hash.to_vec(),
    }
}

pub fn checkpoint_row(checkpoint: &Checkpoint) -> AuditCheckpointRow {
    AuditCheckpointRow {
        stream: checkpoint.stream.to_string(),
        seq: checkpoint.seq as i64,
        head: checkpoint.head.to_vec(),
        time: checkpoint.time.clone(),
        kind: checkpoint.kind.as_str().to_owned(),
        key_id: checkpoint.key_id.clone(),
        signature: checkpoint.signature.to_vec(),
    }
}

/// Appends one event without a writer, for a command that runs while the
/// server may not (`bulkhead vault unlock --offline`), MACed with `key`
/// (the stream's own, or its custodian). Reads the head, chains, inserts; a seq taken meanwhile by the server's writer is tried
/// again from the new head. The server's writer checkpoints it later.
pub async fn append_offline(
    store: &dyn AuditStore,
    key: &AuditKey,
    event: NewEvent,
) -> Result<u64, AuditError> {
    let mut last_error = AuditError::Closed;
    for _ in 0..5 {
        let (seq, hash) = stored_head(store, &event.stream).await?;
        let chained = Event::chain(event.clone(), seq + 1, hash);
        let seq = chained.seq;
        match store.append_audit(&[event_row(chained, key)], &[]).await {
            Ok(()) => return Ok(seq),
            Err(error) => last_error = error.into(),
        }
    }
    Err(last_error)
}

/// The seq and hash of the stream's last stored event (or of its last
/// truncation checkpoint); seq 0 and [`GENESIS`] for a new stream.
async fn stored_head(
    store: &dyn AuditStore,
    stream: &StreamId,
) -> Result<(u64, [u8; 32]), AuditError> {
    match store.audit_head(stream.as_str()).await? {
        Some((seq, hash)) => Ok((
            u64::try_from(seq).map_err(|_| AuditError::Invalid("negative seq".into()))?,
            hash.try_into()
                .map_err(|_| AuditError::Invalid("stored hash is not 32 bytes".into()))?,
        )),
        None => Ok((0, GENESIS)),
    }
}
