//! Usage: every request the gateway answers becomes a [`UsageEvent`],
//! handed over without waiting ([`UsageRecorder::record`] is a `try_send`
//! into a bounded queue) and summed off the request path by an
//! [`Aggregator`] into one [`UsageRow`] per tenant, API and minute, which a
//! [`UsageSink`] (the control plane's store) persists.
//!
//! Rows are deltas: when an event arrives for a minute already written, the
//! next flush writes a second row for that minute, and the sink adds it to
//! the first.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::{
    sync::mpsc::{
        self,
        error::{TryRecvError, TrySendError},
    },
    time::MissedTickBehavior,
};
use tracing::{error, warn};
use utoipa::ToSchema;
use uuid::Uuid;

/// Upper bounds, in milliseconds, of the upstream latency histogram's
/// buckets; a last bucket counts everything slower.
pub const LATENCY_BUCKETS_MS: [u64; 6] = [1, 5, 25, 100, 500, 2_500];

/// How many rows the sink refused may wait for the next flush before the
/// oldest are dropped (and counted): a few tens of megabytes.
pub const DEFAULT_MAX_PENDING_ROWS: usize = 100_000;

/// How many events the aggregator takes from the queue at once.
/// How often [`take_batch`] takes what a queue holds; a queue must hold
/// what arrives in this time.
pub const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Waits until `queue` holds something, looking every [`DRAIN_EVERY`], and
/// moves up to `max` items into `batch`; `false` once the queue is closed
/// (what it still held is in `batch`).
///
/// A consumer that awaits each item is woken by every send: on a busy
/// gateway, a thread wake-up per request, on the cores the requests need.
/// Looking on a timer costs one wake-up per period instead.
pub async fn take_batch<T>(queue: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize) -> bool {
    loop {
        tokio::time::sleep(DRAIN_EVERY).await;
        while batch.len() < max {
            match queue.try_recv() {
                Ok(item) => batch.push(item),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
        if !batch.is_empty() {
            return true;
        }
    }
}

/// One request as the gateway answered it. Cheap to build on the request
/// path: the API name is an `Arc` clone of the snapshot's, the refusal's
/// words are static.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    pub tenant: Uuid,
    /// The API the request was routed to, if it got that far.
    pub api: Option<Arc<str>>,
    pub outcome: Outcome,
    /// The HTTP status sent to the client.
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// From sending the request upstream to the response's head, when the
    /// request reached an upstream.
    pub upstream_latency: Option<Duration>,
    /// When the request arrived; decides its minute.
    pub at: OffsetDateTime,
    /// A model call's tokens, on an API of `type: llm`.
    pub model: Option<ModelUse>,
    /// The tools called, as the registry names them, on an API of
    /// `type: mcp` (a batch may call several).
    pub tools: Vec<Arc<str>>,
    /// Who made the request, once authenticated (a token's subject, an API
    /// key's name).
    pub subject: Option<Arc<str>>,
}

/// The most subjects a row keeps apart; the rest are summed as
/// [`OTHER_SUBJECTS`].
pub const MAX_SUBJECTS_PER_ROW: usize = 100;
/// Where a row sums the subjects past [`MAX_SUBJECTS_PER_ROW`].
pub const OTHER_SUBJECTS: &str = "_other";

/// A row's requests of one subject, and what its model calls cost.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SubjectTotals {
    pub requests: u64,
    #[serde(default)]
    pub cost_micros: u64,
}

/// Adds `totals` to `subject`'s, or to [`OTHER_SUBJECTS`]' once `subjects`
/// keeps [`MAX_SUBJECTS_PER_ROW`] apart.
fn add_subject(
    subjects: &mut BTreeMap<String, SubjectTotals>,
    subject: &str,
    totals: &SubjectTotals,
) {
    // An external provider's subject may be long: the row keeps a prefix.
    let mut end = subject.len().min(MAX_SUBJECT_BYTES);
    while !subject.is_char_boundary(end) {
        end -= 1;
    }
    let subject = &subject[..end];
    let key = if subjects.contains_key(subject) || subjects.len() < MAX_SUBJECTS_PER_ROW {
        subject
    } else {
        OTHER_SUBJECTS
    };
    let sum = match subjects.get_mut(key) {
        Some(sum) => sum,
        None => subjects.entry(key.to_owned()).or_default(),
    };
    sum.requests = sum.requests.saturating_add(totals.requests);
    sum.cost_micros = sum.cost_micros.saturating_add(totals.cost_micros);
}

/// The longest subject a row keeps, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 256;

/// What one model call used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelUse {
    pub model: Arc<str>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// What the tokens cost at the model's price, in micro-units.
    pub cost_micros: u64,
    /// The upstream did not report its usage: the tokens were counted or
    /// estimated by the gateway.
    pub counted: bool,
}

/// A row's model calls of one model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModelTotals {
    pub calls: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// What they cost, in micro-units of the prices' currency.
    #[serde(default)]
    pub cost_micros: u64,
    /// Calls whose tokens the gateway counted, the upstream not saying.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub counted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ModelTotals {
    fn add(&mut self, other: &ModelTotals) {
        self.calls = self.calls.saturating_add(other.calls);
        self.tokens_in = self.tokens_in.saturating_add(other.tokens_in);
        self.tokens_out = self.tokens_out.saturating_add(other.tokens_out);
        self.cost_micros = self.cost_micros.saturating_add(other.cost_micros);
        self.counted = self.counted.saturating_add(other.counted);
    }
}

/// Whether a request went through or which phase ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Allowed,
    /// Not a request of its own: a model call its upstream received but did
    /// not answer through the gateway, charged what it reserved. Only its
    /// model use is summed; the request is recorded by its refusal.
    Charged,
    /// Ended by `phase` (`resolve`, `authn`, `route`, `authz`, `limit`,
    /// `guard`, `proxy`) for `reason` (the error code sent).
    Refused {
        phase: &'static str,
        reason: &'static str,
    },
}

/// The request path's handle on the usage queue. Clones share the queue
/// and the drop count.
#[derive(Debug, Clone)]
pub struct UsageRecorder {
    sender: mpsc::Sender<UsageEvent>,
    dropped: Arc<AtomicU64>,
}

impl UsageRecorder {
    /// A recorder and the receiving end for [`Aggregator::run`], with room
    /// for `capacity` events (at least 1) waiting to be summed.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<UsageEvent>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (Self { sender, dropped: Arc::default() }, receiver)
    }

    /// Queues `event` without blocking or awaiting. When the queue is full
    /// (the aggregator is behind) or gone, the event is dropped and counted:
    /// usage is worth less than the request's latency.
    pub fn record(&self, event: UsageEvent) {
        if let Err(TrySendError::Full(_) | TrySendError::Closed(_)) = self.sender.try_send(event) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped so far by this recorder and its clones.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One tenant's use of one API in one minute (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    pub tenant: Uuid,
    /// `None` for requests refused before an API was chosen.
    pub api: Option<String>,
    /// The minute's first second.
    #[serde(with = "time::serde::rfc3339")]
    pub minute: OffsetDateTime,
    /// Every request, allowed or refused.
    pub requests: u64,
    /// Refused requests by the phase that refused them; the rest were
    /// allowed.
    pub refused: BTreeMap<String, u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Requests that reached an upstream and got a response head back.
    pub upstream_responses: u64,
    /// Sum of their upstream latencies, in microseconds.
    pub upstream_latency_sum_us: u64,
    /// The slowest of them, in microseconds.
    pub upstream_latency_max_us: u64,
    /// Their count per latency bucket (not cumulative): at most 1, 5, 25,
    /// 100, 500 and 2500 ms, then slower.
    pub upstream_latency_buckets: [u64; 7],
    /// Model calls by model (APIs of `type: llm`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, ModelTotals>,
    /// Tool calls by tool (APIs of `type: mcp`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, u64>,
    /// Authenticated requests and model cost by subject (at most
    /// [`MAX_SUBJECTS_PER_ROW`] apart, the rest as `_other`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subjects: BTreeMap<String, SubjectTotals>,
}

impl UsageRow {
    /// Adds `other` (a delta of the same tenant, API and minute) to this
    /// row: how stored deltas are read back as one row.
    pub fn add(&mut self, other: &UsageRow) {
        self.requests = self.requests.saturating_add(other.requests);
        for (phase, count) in &other.refused {
            let total = self.refused.entry(phase.clone()).or_default();
            *total = total.saturating_add(*count);
        }
        self.bytes_in = self.bytes_in.saturating_add(other.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(other.bytes_out);
        self.upstream_responses = self.upstream_responses.saturating_add(other.upstream_responses);
        self.upstream_latency_sum_us =
            self.upstream_latency_sum_us.saturating_add(other.upstream_latency_sum_us);
        self.upstream_latency_max_us =
            self.upstream_latency_max_us.max(other.upstream_latency_max_us);
        for (total, count) in
            self.upstream_latency_buckets.iter_mut().zip(other.upstream_latency_buckets)
        {
            *total = total.saturating_add(count);
        }
        for (model, totals) in &other.models {
            self.models.entry(model.clone()).or_default().add(totals);
        }
        add_calls(&mut self.tools, &other.tools);
        for (subject, totals) in &other.subjects {
            add_subject(&mut self.subjects, subject, totals);
        }
    }
}

fn add_calls(total: &mut BTreeMap<String, u64>, calls: &BTreeMap<String, u64>) {
    for (name, count) in calls {
        let sum = total.entry(name.clone()).or_default();
        *sum = sum.saturating_add(*count);
    }
}

/// Persists usage rows: the control plane's store.
#[async_trait]
pub trait UsageSink: Send + Sync {
    type Error: std::fmt::Display + Send;

    /// Stores `rows`, each to be added to whatever is stored for its
    /// tenant, API and minute. All or nothing (one transaction): after an
    /// error the same rows are offered again.
    async fn write(&self, rows: &[UsageRow]) -> Result<(), Self::Error>;
}

/// Counters of an [`Aggregator`], for metrics.
#[derive(Debug, Default)]
pub struct AggregatorStats {
    events: AtomicU64,
    written_rows: AtomicU64,
    failed_writes: AtomicU64,
    dropped_rows: AtomicU64,
}

impl AggregatorStats {
    /// Events summed.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Rows the sink accepted.
    pub fn written_rows(&self) -> u64 {
        self.written_rows.load(Ordering::Relaxed)
    }

    /// Writes the sink refused (their rows were kept for the next flush).
    pub fn failed_writes(&self) -> u64 {
        self.failed_writes.load(Ordering::Relaxed)
    }

    /// Rows given up: over the pending bound, or refused at shutdown.
    pub fn dropped_rows(&self) -> u64 {
        self.dropped_rows.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RowKey {
    tenant: Uuid,
    api: Option<Arc<str>>,
    /// Minutes since the Unix epoch.
    minute: i64,
}

#[derive(Debug, Default)]
struct Totals {
    requests: u64,
    /// A handful of phases at most: a list beats a map.
    refused: Vec<(&'static str, u64)>,
    bytes_in: u64,
    bytes_out: u64,
    upstream_responses: u64,
    latency_sum_us: u64,
    latency_max_us: u64,
    latency_buckets: [u64; 7],
    models: BTreeMap<String, ModelTotals>,
    tools: BTreeMap<String, u64>,
    subjects: BTreeMap<String, SubjectTotals>,
}

/// Sums events into rows per (tenant, API, minute) and hands completed
/// minutes to a sink, keeping rows the sink refused for the next flush.
#[derive(Debug)]
pub struct Aggregator {
    open: HashMap<RowKey, Totals>,
    pending: Vec<UsageRow>,
    max_pending: usize,
    stats: Arc<AggregatorStats>,
}

impl Default for Aggregator {
    fn default() -> Self {
        Self::new()
    }
}

impl Aggregator {
    /// An empty aggregator keeping at most [`DEFAULT_MAX_PENDING_ROWS`]
    /// refused rows.
    pub fn new() -> Self {
        Self::with_max_pending(DEFAULT_MAX_PENDING_ROWS)
    }

    /// An empty aggregator keeping at most `max_pending` rows the sink
    /// refused; beyond that the oldest are dropped and counted.
    pub fn with_max_pending(max_pending: usize) -> Self {
        Self { open: HashMap::new(), pending: Vec::new(), max_pending, stats: Arc::default() }
    }

    /// The counters, shared with whoever exports them.
    pub fn stats(&self) -> Arc<AggregatorStats> {
        self.stats.clone()
    }

    /// Adds one event to its row.
    pub fn add(&mut self, event: UsageEvent) {
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let key = RowKey {
            tenant: event.tenant,
            api: event.api,
            minute: event.at.unix_timestamp().div_euclid(60),
        };
        let totals = self.open.entry(key).or_default();
        totals.requests += u64::from(event.outcome != Outcome::Charged);
        if let Outcome::Refused { phase, .. } = event.outcome {
            match totals.refused.iter_mut().find(|(known, _)| *known == phase) {
                Some((_, count)) => *count += 1,
                None => totals.refused.push((phase, 1)),
            }
        }
        totals.bytes_in = totals.bytes_in.saturating_add(event.bytes_in);
        totals.bytes_out = totals.bytes_out.saturating_add(event.bytes_out);
        if let Some(used) = &event.model {
            let call = ModelTotals {
                calls: 1,
                tokens_in: used.tokens_in,
                tokens_out: used.tokens_out,
                cost_micros: used.cost_micros,
                counted: u64::from(used.counted),
            };
            totals.models.entry(used.model.to_string()).or_default().add(&call);
        }
        for tool in &event.tools {
            *totals.tools.entry(tool.to_string()).or_default() += 1;
        }
        if let Some(subject) = &event.subject {
            let mine = SubjectTotals {
                requests: u64::from(event.outcome != Outcome::Charged),
                cost_micros: event.model.as_ref().map_or(0, |used| used.cost_micros),
            };
            add_subject(&mut totals.subjects, subject, &mine);
        }
        if let Some(latency) = event.upstream_latency {
            let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
            totals.upstream_responses += 1;
            totals.latency_sum_us = totals.latency_sum_us.saturating_add(micros);
            totals.latency_max_us = totals.latency_max_us.max(micros);
            let bucket = LATENCY_BUCKETS_MS
                .iter()
                .position(|&bound| micros <= bound * 1_000)
                .unwrap_or(LATENCY_BUCKETS_MS.len());
            totals.latency_buckets[bucket] += 1;
        }
    }

    /// Takes the rows of every minute that ended at or before `until`,
    /// ordered by minute, tenant and API.
    pub fn flush(&mut self, until: OffsetDateTime) -> Vec<UsageRow> {
        let current = until.unix_timestamp().div_euclid(60);
        self.take(|key| key.minute < current)
    }

    /// Takes every row, the current minute's too (at shutdown).
    pub fn flush_all(&mut self) -> Vec<UsageRow> {
        self.take(|_| true)
    }

    fn take(&mut self, done: impl Fn(&RowKey) -> bool) -> Vec<UsageRow> {
        let mut rows: Vec<UsageRow> = self
            .open
            .extract_if(|key, _| done(key))
            .map(|(key, totals)| row(key, totals))
            .collect();
        rows.sort_by(|a, b| (a.minute, a.tenant, &a.api).cmp(&(b.minute, b.tenant, &b.api)));
        rows
    }

    /// Sums events from `events` and writes what it has to `sink` every
    /// `flush_every`, the current minute's rows too (rows are deltas, so
    /// stored usage is never more than a flush old). Rows the sink refuses
    /// are offered again at the next flush. Returns once every
    /// [`UsageRecorder`] is gone and the queue is drained, after writing
    /// everything left; what the sink refuses then is counted in
    /// [`AggregatorStats::dropped_rows`].
    pub async fn run<S: UsageSink>(
        mut self,
        mut events: mpsc::Receiver<UsageEvent>,
        sink: S,
        flush_every: Duration,
    ) {
        let mut ticks = tokio::time::interval(flush_every.max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick completes at once; flushing starts one period in.
        ticks.tick().await;
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                open = take_batch(&mut events, &mut batch, usize::MAX) => {
                    for event in batch.drain(..) {
                        self.add(event);
                    }
                    if !open {
                        break;
                    }
                }
                _ = ticks.tick() => {
                    // The current minute's rows too: rows are deltas, so
                    // usage is never more than a tick old.
                    let rows = self.flush_all();
                    self.write(&sink, rows).await;
                }
            }
        }
        let rows = self.flush_all();
        self.write(&sink, rows).await;
        if !self.pending.is_empty() {
            let lost = self.pending.len();
            self.stats.dropped_rows.fetch_add(lost as u64, Ordering::Relaxed);
            error!(rows = lost, "usage rows lost at shutdown: the sink refused them");
        }
    }

    /// Writes the pending rows and `rows` in one call; keeps them all if the
    /// sink refuses, up to the bound.
    async fn write<S: UsageSink>(&mut self, sink: &S, rows: Vec<UsageRow>) {
        self.pending.extend(rows);
        if self.pending.is_empty() {
            return;
        }
        match sink.write(&self.pending).await {
            Ok(()) => {
                self.stats.written_rows.fetch_add(self.pending.len() as u64, Ordering::Relaxed);
                self.pending.clear();
            }
            Err(reason) => {
                self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
                warn!(rows = self.pending.len(), %reason, "usage rows not written; retrying at the next flush");
                let excess = self.pending.len().saturating_sub(self.max_pending);
                if excess > 0 {
                    self.pending.drain(..excess);
                    self.stats.dropped_rows.fetch_add(excess as u64, Ordering::Relaxed);
                    error!(rows = excess, "usage rows dropped: too many waiting for the sink");
                }
            }
        }
    }
}

fn row(key: RowKey, totals: Totals) -> UsageRow {
    UsageRow {
        tenant: key.tenant,
        api: key.api.map(|api| api.to_string()),
        // In range: the minute came from a valid `OffsetDateTime`.
        minute: OffsetDateTime::from_unix_timestamp(key.minute * 60)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        requests: totals.requests,
        refused: totals.refused.into_iter().map(|(phase, n)| (phase.to_owned(), n)).collect(),
        bytes_in: totals.bytes_in,
        bytes_out: totals.bytes_out,
        upstream_responses: totals.upstream_responses,
        upstream_latency_sum_us: totals.latency_sum_us,
        upstream_latency_max_us: totals.latency_max_us,
        upstream_latency_buckets: totals.latency_buckets,
        models: totals.models,
        tools: totals.tools,
        subjects: totals.subjects,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, atomic::AtomicBool};

    use time::macros::datetime;

    use super::*;

    const T1: Uuid = Uuid::from_u128(1);
    const T2: Uuid = Uuid::from_u128(2);

    fn event(tenant: Uuid, api: Option<&Arc<str>>, at: OffsetDateTime) -> UsageEvent {
        UsageEvent {
            tenant,
            api: api.cloned(),
            outcome: Outcome::Allowed,
            status: 200,
            bytes_in: 100,
            bytes_out: 1_000,
            upstream_latency: Some(Duration::from_millis(3)),
            at,
            model: None,
            tools: Vec::new(),
            subject: None,
        }
    }

    fn empty_row(tenant: Uuid, api: Option<&str>, minute: OffsetDateTime) -> UsageRow {
        UsageRow {
            tenant,
            api: api.map(str::to_owned),
            minute,
            requests: 0,
            refused: BTreeMap::new(),
            bytes_in: 0,
            bytes_out: 0,
            upstream_responses: 0,
            upstream_latency_sum_us: 0,
            upstream_latency_max_us: 0,
            upstream_latency_buckets: [0; 7],
            models: BTreeMap::new(),
            tools: BTreeMap::new(),
            subjects: BTreeMap::new(),
        }
    }

    #[test]
    fn events_sum_into_rows_per_tenant_api_and_minute() {
        let orders: Arc<str> = Arc::from("orders");
        let mut aggregator = Aggregator::new();
        let minute = datetime!(2026-12-02 10:15 UTC);

        aggregator.add(event(T1, Some(&orders), minute + Duration::from_secs(1)));
        aggregator.add(UsageEvent {
            upstream_latency: Some(Duration::from_millis(700)),
            bytes_out: 5,
            ..event(T1, Some(&orders), minute + Duration::from_millis(59_999))
        });
        aggregator.add(UsageEvent {
            outcome: Outcome::Refused { phase: "limit", reason: "rate_limited" },
            status: 429,
            bytes_in: 0,
            bytes_out: 80,
            upstream_latency: None,
            ..event(T1, Some(&orders), minute + Duration::from_secs(30))
        });
        aggregator.add(UsageEvent {
            outcome: Outcome::Refused { phase: "authn", reason: "unauthorized" },
            status: 401,
            bytes_in: 0,
            bytes_out: 70,
            upstream_latency: None,
            ..event(T1, None, minute)
        });
        // Another tenant, and the next minute.
        aggregator.add(event(T2, Some(&orders), minute));
        aggregator.add(event(T1, Some(&orders), minute + Duration::from_secs(60)));
        assert_eq!(aggregator.stats().events(), 6);

        // At 10:15:59 nothing is complete; at 10:16:00 only 10:15.
        assert!(aggregator.flush(minute + Duration::from_millis(59_999)).is_empty());
        let rows = aggregator.flush(minute + Duration::from_secs(60));
        let expected = vec![
            UsageRow {
                requests: 1,
                refused: BTreeMap::from([("authn".to_owned(), 1)]),
                bytes_out: 70,
                ..empty_row(T1, None, minute)
            },
            UsageRow {
                requests: 3,
                refused: BTreeMap::from([("limit".to_owned(), 1)]),
                bytes_in: 200,
                bytes_out: 1_085,
                upstream_responses: 2,
                upstream_latency_sum_us: 703_000,
                upstream_latency_max_us: 700_000,
                upstream_latency_buckets: [0, 1, 0, 0, 0, 1, 0],
                ..empty_row(T1, Some("orders"), minute)
            },
            UsageRow {
                requests: 1,
                bytes_in: 100,
                bytes_out: 1_000,
                upstream_responses: 1,
                upstream_latency_sum_us: 3_000,
                upstream_latency_max_us: 3_000,
                upstream_latency_buckets: [0, 1, 0, 0, 0, 0, 0],
                ..empty_row(T2, Some("orders"), minute)
            },
        ];
        assert_eq!(rows, expected);
        assert!(aggregator.flush(minute + Duration::from_secs(60)).is_empty());

        // A late event for a written minute comes out as a second delta.
        aggregator.add(event(T2, Some(&orders), minute + Duration::from_secs(5)));
        let rows = aggregator.flush(minute + Duration::from_secs(120));
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].tenant, rows[0].minute, rows[0].requests), (T2, minute, 1));
        assert_eq!(rows[1].minute, minute + Duration::from_secs(60));
        assert!(aggregator.flush_all().is_empty());
    }

    #[test]
    fn latency_buckets_include_their_bound() {
        let mut aggregator = Aggregator::new();
        let minute = datetime!(2026-12-02 10:15 UTC);
        for millis in [0, 1, 2, 5, 25, 26, 100, 500, 2_500, 2_501, 60_000] {
            aggregator.add(UsageEvent {
                upstream_latency: Some(Duration::from_millis(millis)),
                ..event(T1, None, minute)
            });
        }
        let rows = aggregator.flush_all();
        assert_eq!(rows[0].upstream_latency_buckets, [2, 2, 1, 2, 1, 1, 2]);
        assert_eq!(rows[0].upstream_latency_max_us, 60_000_000);
    }

    #[test]
    fn model_and_tool_calls_sum_by_name_and_add_across_rows() {
        let minute = datetime!(2026-12-02 10:15 UTC);
        let chat: Arc<str> = Arc::from("chat");
        let mut aggregator = Aggregator::new();
        let call = |model: &str, tokens_in, tokens_out, counted| UsageEvent {
            model: Some(ModelUse {
                model: Arc::from(model),
                tokens_in,
                tokens_out,
                cost_micros: tokens_in + tokens_out,
                counted,
            }),
            ..event(T1, Some(&chat), minute)
        };
        aggregator.add(call("gpt-4o-mini", 7, 5, false));
        aggregator.add(call("gpt-4o-mini", 11, 3, true));
        aggregator.add(call("text-embedding-3-small", 4, 0, false));
        aggregator.add(event(T1, Some(&chat), minute));
        let search: Arc<str> = Arc::from("search");
        let tools = vec![Arc::clone(&search), search, Arc::from("files")];
        aggregator.add(UsageEvent { tools, ..event(T1, Some(&chat), minute) });
        let mut rows = aggregator.flush_all();
        assert_eq!(rows.len(), 1);
        let mini =
            ModelTotals { calls: 2, tokens_in: 18, tokens_out: 8, cost_micros: 26, counted: 1 };
        assert_eq!(rows[0].models["gpt-4o-mini"], mini);
        assert_eq!(rows[0].models["text-embedding-3-small"].tokens_in, 4);
        let again = rows[0].clone();
        rows[0].add(&again);
        assert_eq!(rows[0].models["gpt-4o-mini"].tokens_in, 36);
        assert_eq!(rows[0].tools, BTreeMap::from([("files".into(), 2), ("search".into(), 4)]));
        let json = serde_json::to_value(&rows[0]).unwrap();
        assert_eq!(serde_json::from_value::<UsageRow>(json).unwrap(), rows[0]);
    }

    #[test]
    fn subjects_are_summed_apart_up_to_a_bound() {
        let chat: Arc<str> = Arc::from("chat");
        let minute = datetime!(2026-12-02 10:15 UTC);
        let mut aggregator = Aggregator::new();
        let by = |subject: String, cost: u64| UsageEvent {
            subject: Some(Arc::from(subject.as_str())),
            model: Some(ModelUse {
                model: Arc::from("m"),
                tokens_in: 1,
                tokens_out: 1,
                cost_micros: cost,
                counted: false,
            }),
            ..event(T1, Some(&chat), minute)
        };
        aggregator.add(by("alice".into(), 5));
        aggregator.add(by("alice".into(), 7));
        aggregator.add(UsageEvent { outcome: Outcome::Charged, ..by("alice".into(), 3) });
        for n in 0..MAX_SUBJECTS_PER_ROW + 5 {
            aggregator.add(by(format!("agent-{n:03}"), 1));
        }
        aggregator.add(event(T1, Some(&chat), minute));
        let rows = aggregator.flush_all();
        let subjects = &rows[0].subjects;
        assert_eq!(subjects["alice"], SubjectTotals { requests: 2, cost_micros: 15 });
        assert_eq!(
            subjects.len(),
            MAX_SUBJECTS_PER_ROW + 1,
            "{} apart, and _other",
            MAX_SUBJECTS_PER_ROW
        );
        assert_eq!(subjects[OTHER_SUBJECTS], SubjectTotals { requests: 6, cost_micros: 6 });
        assert_eq!(
            rows[0].requests,
            2 + MAX_SUBJECTS_PER_ROW as u64 + 5 + 1,
            "charged is no request"
        );
        let mut long = BTreeMap::new();
        let subject = format!("{}é", "x".repeat(MAX_SUBJECT_BYTES - 1));
        add_subject(&mut long, &subject, &SubjectTotals { requests: 1, cost_micros: 0 });
        assert_eq!(long.keys().next().unwrap(), &"x".repeat(MAX_SUBJECT_BYTES - 1));
    }

    #[test]
    fn a_row_reads_back_from_json() {
        let row = UsageRow {
            requests: 3,
            refused: BTreeMap::from([("limit".to_owned(), 1)]),
            ..empty_row(T1, Some("orders"), datetime!(2026-12-02 10:15 UTC))
        };
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["minute"], "2026-12-02T10:15:00Z");
        assert_eq!(json["refused"]["limit"], 1);
        assert_eq!(serde_json::from_value::<UsageRow>(json).unwrap(), row);
    }

    #[test]
    fn a_full_or_closed_queue_drops_and_counts() {
        let (recorder, mut receiver) = UsageRecorder::channel(2);
        let copy = recorder.clone();
        for _ in 0..5 {
            copy.record(event(T1, None, OffsetDateTime::UNIX_EPOCH));
        }
        assert_eq!(recorder.dropped(), 3);
        assert!(receiver.try_recv().is_ok());
        assert!(receiver.try_recv().is_ok());
        assert!(receiver.try_recv().is_err());
        drop(receiver);
        recorder.record(event(T1, None, OffsetDateTime::UNIX_EPOCH));
        assert_eq!(recorder.dropped(), 4);
    }

    /// A sink that keeps what it was given, refuses while `failing`, and
    /// says each attempt on a channel.
    #[derive(Debug)]
    struct TestSink {
        failing: AtomicBool,
        written: Mutex<Vec<UsageRow>>,
        attempts: mpsc::UnboundedSender<usize>,
    }

    #[async_trait]
    impl UsageSink for Arc<TestSink> {
        type Error = &'static str;

        async fn write(&self, rows: &[UsageRow]) -> Result<(), Self::Error> {
            let _ = self.attempts.send(rows.len());
            if self.failing.load(Ordering::SeqCst) {
                return Err("store unavailable");
            }
            self.written.lock().unwrap().extend_from_slice(rows);
            Ok(())
        }
    }

    fn test_sink(failing: bool) -> (Arc<TestSink>, mpsc::UnboundedReceiver<usize>) {
        let (attempts, receiver) = mpsc::unbounded_channel();
        let sink =
            TestSink { failing: AtomicBool::new(failing), written: Mutex::default(), attempts };
        (Arc::new(sink), receiver)
    }

    #[tokio::test(start_paused = true)]
    async fn run_flushes_periodically_retries_refused_rows_and_drains_at_shutdown() {
        let minute = datetime!(2026-12-02 10:15 UTC);
        let (sink, mut attempts) = test_sink(true);
        let (recorder, receiver) = UsageRecorder::channel(16);
        let aggregator = Aggregator::new();
        let stats = aggregator.stats();
        let run = tokio::spawn(aggregator.run(receiver, sink.clone(), Duration::from_secs(10)));

        // The current minute's rows are written at the next tick; the sink
        // refuses, and the rows wait.
        recorder.record(event(T1, None, minute));
        recorder.record(event(T2, None, minute));
        assert_eq!(attempts.recv().await, Some(2));
        assert_eq!(stats.events(), 2);
        assert_eq!(stats.failed_writes(), 1);
        // Refused again with a new row added.
        recorder.record(event(T1, None, minute + Duration::from_secs(61)));
        assert_eq!(attempts.recv().await, Some(3));

        // The sink comes back: all three rows at the next flush.
        sink.failing.store(false, Ordering::SeqCst);
        assert_eq!(attempts.recv().await, Some(3));
        assert_eq!(stats.written_rows(), 3);

        // Shutdown writes what came since.
        recorder.record(event(T2, None, minute + Duration::from_secs(125)));
        drop(recorder);
        run.await.unwrap();
        let written = sink.written.lock().unwrap().clone();
        assert_eq!(written.len(), 4);
        assert_eq!(written.iter().map(|row| row.requests).sum::<u64>(), 4);
        assert_eq!((stats.written_rows(), stats.dropped_rows()), (4, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_rows_are_bounded_and_counted_when_dropped() {
        let minute = datetime!(2026-12-02 10:15 UTC);
        let (sink, mut attempts) = test_sink(true);
        let (recorder, receiver) = UsageRecorder::channel(16);
        let aggregator = Aggregator::with_max_pending(2);
        let stats = aggregator.stats();
        let run = tokio::spawn(aggregator.run(receiver, sink.clone(), Duration::from_secs(10)));
        for tenant in [T1, T2, Uuid::from_u128(3)] {
            recorder.record(event(tenant, None, minute));
        }
        assert_eq!(attempts.recv().await, Some(3));
        // Three rows refused, two kept: the oldest is dropped.
        assert_eq!(stats.dropped_rows(), 1);
        drop(recorder);
        run.await.unwrap();
        // At shutdown the two kept rows are refused once more and lost.
        assert_eq!(attempts.recv().await, Some(2));
        assert_eq!((stats.written_rows(), stats.dropped_rows()), (0, 3));
    }
}
