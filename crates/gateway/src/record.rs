//! Reads: how a request ended. Adds: its usage event, always, and its
//! audit record, as its API's audit level says (refusals before an API was
//! chosen count as the default, `denied`). Both are queued with `try_send`:
//! a full queue drops the record and counts it, and never holds a request.
//!
//! An allowed request is recorded when its response body ends (or is
//! dropped), so that the bytes it sent are known: [`Pending`] does that.

use std::{
    borrow::Cow,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bulkhead_meter::{Outcome, UsageEvent, UsageRecorder};
use bulkhead_model::AuditLevel;
use http::{HeaderValue, Method, Uri};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{
    error::Refusal,
    snapshot::{ApiEntry, TenantEntry},
};

/// One decision, for the tenant's audit stream. A gateway beside the
/// control plane hands it over in memory; one on its own queues it in the
/// store as JSON, for the control plane to record and sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub tenant: Uuid,
    pub api: Option<String>,
    pub subject: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Why it was refused; `None` when allowed.
    pub refused: Option<Refused>,
    pub request_id: String,
    /// Unix seconds.
    pub at: i64,
    /// A tool called through the tenant's MCP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<ToolUse>,
    /// The tenant's model spend passed its soft cap with this request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetNotice>,
}

/// A tenant's spend past its soft cap: what the control plane records as
/// `budget.soft_cap` (once per period) and tells the budget webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetNotice {
    /// `YYYY-MM`.
    pub period: String,
    /// Settled and reserved, micro-units.
    pub spent_micros: u64,
    pub soft_micros: u64,
    pub hard_micros: u64,
}

/// One `tools/call`: what was called and how it ended, and the arguments'
/// size and SHA-256 (never the arguments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolUse {
    /// As the caller named it.
    pub tool: String,
    /// The registry entry it resolved to; `None` when refused unresolved.
    pub server: Option<String>,
    pub outcome: ToolOutcome,
    pub argument_bytes: u64,
    pub argument_sha256: String,
}

/// How a tool call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolOutcome {
    Ok,
    /// The tool or its server failed.
    Error,
    /// Refused before any upstream saw it.
    Refused,
}

/// The phase, code and reason of a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub phase: Cow<'static, str>,
    pub code: Cow<'static, str>,
    pub reason: Cow<'static, str>,
}

/// Where the gateway's records go.
#[derive(Debug)]
pub struct Recorder {
    usage: UsageRecorder,
    audit: mpsc::Sender<AuditRecord>,
    audit_dropped: AtomicU64,
}

impl Recorder {
    /// A recorder and the receiving end of its audit queue (of `capacity`).
    pub fn new(usage: UsageRecorder, capacity: usize) -> (Self, mpsc::Receiver<AuditRecord>) {
        let (audit, receiver) = mpsc::channel(capacity);
        (Self { usage, audit, audit_dropped: AtomicU64::new(0) }, receiver)
    }

    /// Usage events and audit records dropped because a queue was full.
    pub fn dropped(&self) -> (u64, u64) {
        (self.usage.dropped(), self.audit_dropped.load(Ordering::Relaxed))
    }

    /// Records a tool call on the tenant's stream, whatever the API's
    /// audit level.
    pub fn tool_used(&self, learned: &Learned, ended: &Ended, used: ToolUse) {
        let Some(tenant) = learned.tenant.as_ref().map(|t| t.id) else { return };
        let mut record = ended.audit_record(tenant, learned, None);
        record.status = 200;
        record.tool = Some(used);
        self.audit(record);
    }

    /// Tells the tenant's stream its spend passed the soft cap; `false`
    /// when the notice could not be queued.
    pub fn budget_passed(&self, learned: &Learned, ended: &Ended, notice: BudgetNotice) -> bool {
        let Some(tenant) = learned.tenant.as_ref().map(|t| t.id) else { return false };
        let mut record = ended.audit_record(tenant, learned, None);
        record.status = 200;
        record.budget = Some(notice);
        self.audit(record)
    }

    fn audit(&self, record: AuditRecord) -> bool {
        let queued = self.audit.try_send(record).is_ok();
        if !queued {
            self.audit_dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }
}

/// What the request path learned about a request, phase by phase, for its
/// record however it ends.
#[derive(Debug, Default, Clone)]
pub struct Learned {
    pub tenant: Option<Arc<TenantEntry>>,
    pub api: Option<Arc<ApiEntry>>,
    pub subject: Option<Arc<str>>,
}

impl Learned {
    fn api_name(&self) -> Option<Arc<str>> {
        self.api.as_ref().map(|api| Arc::clone(&api.name))
    }

    /// The API's audit level; refusals before an API was chosen count as
    /// the default.
    fn audit(&self) -> AuditLevel {
        self.api.as_ref().map(|api| api.spec.audit).unwrap_or_default()
    }
}

/// What a request did, besides what [`Learned`] holds. It keeps the
/// request's own values (cheap to clone) and turns them into text only
/// for an audit record, which most requests never make.
#[derive(Debug, Clone)]
pub struct Ended {
    pub method: Method,
    pub uri: Uri,
    pub status: u16,
    pub request_id: HeaderValue,
    pub at: i64,
}

impl Ended {
    fn audit_record(
        &self,
        tenant: Uuid,
        learned: &Learned,
        refused: Option<Refused>,
    ) -> AuditRecord {
        AuditRecord {
            tenant,
            api: learned.api.as_ref().map(|api| api.name.to_string()),
            subject: learned.subject.as_deref().map(str::to_owned),
            method: self.method.as_str().to_owned(),
            path: self.uri.path().to_owned(),
            status: self.status,
            refused,
            request_id: self.request_id.to_str().unwrap_or_default().to_owned(),
            at: self.at,
            tool: None,
            budget: None,
        }
    }
}

fn at(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Records a refused request at once. Nothing is recorded for a host
/// that named no tenant: there is no tenant to charge it to.
pub fn refused(recorder: &Recorder, learned: Learned, ended: Ended, refusal: &Refusal) {
    let Some(tenant) = learned.tenant.as_ref().map(|t| t.id) else { return };
    recorder.usage.record(UsageEvent {
        tenant,
        api: learned.api_name(),
        outcome: Outcome::Refused { phase: refusal.phase.as_str(), reason: refusal.code.as_str() },
        status: ended.status,
        bytes_in: 0,
        bytes_out: 0,
        upstream_latency: None,
        at: at(ended.at),
        model: None,
        tools: Vec::new(),
        subject: learned.subject.clone(),
    });
    if learned.audit() != AuditLevel::Off {
        let refused = Refused {
            phase: refusal.phase.as_str().into(),
            code: refusal.code.as_str().into(),
            reason: refusal.reason.clone(),
        };
        recorder.audit(ended.audit_record(tenant, &learned, Some(refused)));
    }
}

/// An allowed request's record: made before the request goes upstream,
/// completed when the upstream answers, and sent when dropped (its response
/// body ended), with the bytes counted by then. Never answered, it records
/// nothing: the refusal that ended the request is recorded instead.
#[derive(Debug)]
pub struct Pending {
    recorder: Arc<Recorder>,
    learned: Learned,
    ended: Ended,
    answered: bool,
    latency: Duration,
    pub bytes_in: Arc<AtomicU64>,
    pub bytes_out: Arc<AtomicU64>,
    /// A model call's meter, read when the record is sent.
    pub model: Option<Arc<crate::llm::Meter>>,
    /// What the model call reserved of the tenant's budget, settled with
    /// the meter's cost when the record is sent.
    pub reservation: Option<bulkhead_meter::Reservation>,
    /// The tools an MCP request called.
    pub tools: Vec<Arc<str>>,
    /// The request went to the upstream, which may have acted on it (and,
    /// for a model call, billed it) though no answer came back through the
    /// gateway.
    pub sent: bool,
}

impl Pending {
    pub fn new(recorder: Arc<Recorder>, learned: Learned, ended: Ended) -> Self {
        Self {
            recorder,
            learned,
            ended,
            answered: false,
            latency: Duration::ZERO,
            bytes_in: Arc::default(),
            bytes_out: Arc::default(),
            model: None,
            reservation: None,
            tools: Vec::new(),
            sent: false,
        }
    }

    /// The upstream answered: the request is allowed, and will be recorded.
    pub fn answered(&mut self, status: u16, latency: Duration) {
        self.ended.status = status;
        self.latency = latency;
        self.answered = true;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // A model call never sent used nothing: its reservation is
        // released. One sent but unanswered is charged all it reserved.
        let used = match (self.answered, self.sent, &self.model) {
            (true, _, Some(meter)) => Some(meter.used()),
            (false, true, Some(meter)) => Some(meter.unanswered()),
            _ => None,
        };
        if let Some(reservation) = self.reservation.take() {
            reservation.settle(used.as_ref().map_or(0, |used| used.cost_micros));
        }
        let Some(tenant) = self.learned.tenant.as_ref().map(|t| t.id) else { return };
        let ended = &self.ended;
        let event = UsageEvent {
            tenant,
            api: self.learned.api_name(),
            outcome: Outcome::Allowed,
            status: ended.status,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            upstream_latency: Some(self.latency),
            at: at(ended.at),
            model: used,
            tools: std::mem::take(&mut self.tools),
            subject: self.learned.subject.clone(),
        };
        if !self.answered {
            // Only a charged model call; the request itself is recorded by
            // the refusal that ended it.
            if event.model.is_some() {
                let charged =
                    UsageEvent { outcome: Outcome::Charged, upstream_latency: None, ..event };
                self.recorder.usage.record(charged);
            }
            return;
        }
        self.recorder.usage.record(event);
        if self.learned.audit() == AuditLevel::All {
            self.recorder.audit(ended.audit_record(tenant, &self.learned, None));
        }
    }
}
