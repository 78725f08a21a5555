//! What the gateway reports back: usage per tenant, API and minute, stored
//! as the meter sums it and read back for `bulkhead usage`; and its
//! decisions, written to each tenant's audit stream as the API's audit
//! level asks, within a budget per tenant so a flood of refused requests
//! cannot fill a tenant's trail.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bulkhead_gateway::record::{AuditRecord, ToolOutcome};
use bulkhead_identity::Permission;
use bulkhead_meter::{UsageRow, UsageSink, take_batch};
use bulkhead_model::{Tenant, TenantId, TenantState};
use bulkhead_store::{ControlStore, LedgerLine, StoreError, UsageRecord};
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::events::{Actor, Budget, EventLog};

/// Refused gateway requests recorded per tenant and minute; the rest are
/// counted and the count goes with the next one recorded.
const REFUSED_PER_MINUTE: u32 = 60;
/// How long a tenant looked up for its audit records is remembered.
const TENANT_CACHE_FOR: Duration = Duration::from_secs(30);

/// The control store as the meter's sink.
#[derive(Debug, Clone)]
pub struct StoreSink(pub Arc<dyn ControlStore>);

#[async_trait]
impl UsageSink for StoreSink {
    type Error = StoreError;

    async fn write(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        let records = rows
            .iter()
            .map(|row| {
                Ok(UsageRecord {
                    tenant_id: TenantId(row.tenant),
                    api: row.api.clone().unwrap_or_default(),
                    minute: row.minute,
                    row: serde_json::to_string(row)
                        .map_err(|e| StoreError::Corrupt(format!("usage row: {e}")))?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let ledger: Vec<LedgerLine> = rows.iter().flat_map(ledger_lines).collect();
        self.0.insert_usage(&records, &ledger).await
    }
}

/// A row's lines in the billing ledger: its requests, each model's calls
/// and each tool's calls, on the row's day.
fn ledger_lines(row: &UsageRow) -> Vec<LedgerLine> {
    let day = row.minute.date().to_string();
    let line = |kind: &str, item: &str, requests: u64| LedgerLine {
        tenant_id: TenantId(row.tenant),
        day: day.clone(),
        api: row.api.clone().unwrap_or_default(),
        kind: kind.to_owned(),
        item: item.to_owned(),
        requests: signed(requests),
        tokens_in: 0,
        tokens_out: 0,
        cost_micros: 0,
    };
    let mut lines = vec![line(LEDGER_REQUESTS, "", row.requests)];
    for (model, totals) in &row.models {
        lines.push(LedgerLine {
            tokens_in: signed(totals.tokens_in),
            tokens_out: signed(totals.tokens_out),
            cost_micros: signed(totals.cost_micros),
            ..line(LEDGER_MODEL, model, totals.calls)
        });
    }
    for (tool, calls) in &row.tools {
        lines.push(line(LEDGER_TOOL, tool, *calls));
    }
    lines
}

/// A count as the ledger stores it (a signed 64-bit column).
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A count the ledger stored.
fn unsigned(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The ledger's kinds of line.
const LEDGER_REQUESTS: &str = "requests";
const LEDGER_MODEL: &str = "model";
const LEDGER_TOOL: &str = "tool";

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("tenant {0:?} does not exist")]
    TenantNotFound(String),
    #[error("your roles in tenant {0:?} do not allow this")]
    Forbidden(String),
    #[error("period {0:?} is not a month; give it as YYYY-MM, such as 2026-11")]
    BadPeriod(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

crate::tenants::from_unreachable!(UsageError);

/// The tenant's usage from `since` on (of one API when `api` is given),
/// one row per API and minute.
pub async fn usage(
    store: &dyn ControlStore,
    actor: &Actor,
    tenant: &str,
    api: Option<&str>,
    since: OffsetDateTime,
) -> Result<Vec<UsageRow>, UsageError> {
    let found = crate::tenants::reachable(store, actor, tenant, Permission::Read).await?;
    let mut rows: BTreeMap<(OffsetDateTime, String), UsageRow> = BTreeMap::new();
    for record in store.usage(found.id, api, since).await? {
        let row: UsageRow = serde_json::from_str(&record.row)
            .map_err(|e| StoreError::Corrupt(format!("usage row: {e}")))?;
        rows.entry((record.minute, record.api)).and_modify(|total| total.add(&row)).or_insert(row);
    }
    Ok(rows.into_values().collect())
}

/// One line of a billing export: a tenant's use of one API, and of one
/// model or tool through it, on one UTC day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportLine {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// The tenant's name; empty for a tenant since purged.
    pub tenant: String,
    pub tenant_id: uuid::Uuid,
    /// Empty for requests refused before an API was chosen.
    pub api: String,
    /// `requests` (every request to the API), `model` or `tool` (calls of
    /// `item`).
    pub kind: String,
    pub item: String,
    /// Requests, or calls of the model or tool.
    pub requests: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Micro-units of the prices' currency.
    pub cost_micros: u64,
}

/// A billing period's export and its totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageExport {
    /// `YYYY-MM`.
    pub period: String,
    pub lines: Vec<ExportLine>,
    /// The lines' model calls and tool calls summed (requests lines are
    /// counted in `requests` only).
    pub totals: ExportTotals,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExportTotals {
    pub requests: u64,
    pub model_calls: u64,
    pub tool_calls: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub cost_micros: u64,
}

/// The ledger of `period` (`YYYY-MM`), of one tenant or of every tenant
/// the actor may read (an operator: all, purged ones included).
pub async fn export(
    store: &dyn ControlStore,
    actor: &Actor,
    period: &str,
    tenant: Option<&str>,
) -> Result<UsageExport, UsageError> {
    let Some(parsed) = bulkhead_meter::Period::parse(period) else {
        return Err(UsageError::BadPeriod(period.to_owned()));
    };
    let one = match tenant {
        None if !actor.is_operator() => {
            return Err(UsageError::Forbidden("every tenant".to_owned()));
        }
        None => None,
        Some(name) => Some(crate::tenants::reachable(store, actor, name, Permission::Read).await?),
    };
    let (from, until) = parsed.days();
    let mut names: HashMap<TenantId, String> = HashMap::new();
    if let Some(tenant) = &one {
        names.insert(tenant.id, tenant.name.to_string());
    }
    let mut lines = Vec::new();
    let mut totals = ExportTotals::default();
    for line in store.ledger(one.as_ref().map(|t| t.id), &from, &until).await? {
        let name = match names.get(&line.tenant_id) {
            Some(name) => name.clone(),
            None => {
                let name = store
                    .tenant_by_id(line.tenant_id)
                    .await?
                    .map(|t| t.name.to_string())
                    .unwrap_or_default();
                names.insert(line.tenant_id, name.clone());
                name
            }
        };
        let line = ExportLine {
            day: line.day,
            tenant: name,
            tenant_id: line.tenant_id.0,
            api: line.api,
            requests: unsigned(line.requests),
            tokens_in: unsigned(line.tokens_in),
            tokens_out: unsigned(line.tokens_out),
            cost_micros: unsigned(line.cost_micros),
            kind: line.kind,
            item: line.item,
        };
        let add = |total: &mut u64, n: u64| *total = total.saturating_add(n);
        match line.kind.as_str() {
            LEDGER_REQUESTS => add(&mut totals.requests, line.requests),
            LEDGER_MODEL => add(&mut totals.model_calls, line.requests),
            _ => add(&mut totals.tool_calls, line.requests),
        }
        add(&mut totals.tokens_in, line.tokens_in);
        add(&mut totals.tokens_out, line.tokens_out);
        add(&mut totals.cost_micros, line.cost_micros);
        lines.push(line);
    }
    Ok(UsageExport { period: parsed.to_string(), lines, totals })
}

/// Writes gateway decisions to the tenants' audit streams, within a budget
/// of refusals per tenant.
#[derive(Debug)]
pub struct DecisionRecorder {
    store: Arc<dyn ControlStore>,
    events: EventLog,
    notices: crate::budget::BudgetNotices,
    budget: Budget,
    /// Tenants looked up lately, by id.
    tenants: Mutex<HashMap<TenantId, (Instant, Tenant)>>,
}

impl DecisionRecorder {
    pub fn new(
        store: Arc<dyn ControlStore>,
        events: EventLog,
        notices: crate::budget::BudgetNotices,
    ) -> Self {
        Self {
            store,
            events,
            notices,
            budget: Budget::new(REFUSED_PER_MINUTE, Duration::from_secs(60)),
            tenants: Mutex::default(),
        }
    }

    async fn tenant(&self, id: TenantId) -> Option<Tenant> {
        let cached = self.tenants.lock().ok().and_then(|tenants| {
            tenants
                .get(&id)
                .filter(|(at, _)| at.elapsed() < TENANT_CACHE_FOR)
                .map(|(_, t)| t.clone())
        });
        if cached.is_some() {
            return cached;
        }
        match self.store.tenant_by_id(id).await {
            Ok(Some(tenant)) if tenant.state != TenantState::Deleted => {
                if let Ok(mut tenants) = self.tenants.lock() {
                    tenants.retain(|_, (at, _)| at.elapsed() < TENANT_CACHE_FOR);
                    tenants.insert(id, (Instant::now(), tenant.clone()));
                }
                Some(tenant)
            }
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%error, "cannot record a gateway decision");
                None
            }
        }
    }

    pub async fn record(&self, decision: AuditRecord) {
        let id = TenantId(decision.tenant);
        // Refused requests and refused tool calls share one budget, so a
        // flood of them cannot fill the tenant's trail.
        let refused = decision.refused.is_some()
            || decision.tool.as_ref().is_some_and(|t| t.outcome == ToolOutcome::Refused);
        let suppressed = match refused {
            true => match self.budget.take(id) {
                Some(suppressed) => suppressed,
                None => return,
            },
            false => 0,
        };
        let Some(tenant) = self.tenant(id).await else { return };
        if let Some(notice) = decision.budget {
            let at = OffsetDateTime::from_unix_timestamp(decision.at)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            self.notices.soft_cap(&tenant, notice, at).await;
            return;
        }
        let actor = match decision.subject {
            Some(subject) => Actor::Tenant {
                tenant_id: id,
                subject,
                roles: Vec::new(),
                expires_at: None,
                from_token: false,
            },
            None => Actor::Anonymous,
        };
        if let Some(used) = decision.tool {
            // A tool call, whatever its outcome: the tool, the caller (the
            // event's actor), and the arguments' size and hash only.
            let outcome = match used.outcome {
                ToolOutcome::Ok => "ok",
                ToolOutcome::Refused => "denied",
                ToolOutcome::Error => "failed",
            };
            let details = json!({
                "unrecorded_before": suppressed,
                "api": decision.api,
                "tool": used.tool,
                "server": used.server,
                "argument_bytes": used.argument_bytes,
                "argument_sha256": used.argument_sha256,
            });
            let record = self.events.record(&actor, &tenant, "tool.call", outcome, details);
            crate::events::REQUEST_ID.scope(decision.request_id, record).await;
            return;
        }
        let mut details = json!({
            "api": decision.api,
            "method": decision.method,
            "path": decision.path,
            "status": decision.status,
        });
        let outcome = match &decision.refused {
            Some(refused) => {
                details["phase"] = json!(refused.phase);
                details["code"] = json!(refused.code);
                details["reason"] = json!(refused.reason.chars().take(200).collect::<String>());
                details["unrecorded_before"] = json!(suppressed);
                "denied"
            }
            None => "ok",
        };
        // The event carries the gateway's request id, as the client saw it.
        let record = self.events.record(&actor, &tenant, "gateway.request", outcome, details);
        crate::events::REQUEST_ID.scope(decision.request_id, record).await;
    }

    /// Records what gateways on their own queued in the store; returns how
    /// many decisions it took.
    pub async fn drain_queue(&self) -> Result<u64, StoreError> {
        let queued = self.store.queued_decisions(DRAIN_BATCH).await?;
        let Some(&(last, _)) = queued.last() else { return Ok(0) };
        for (_, record) in &queued {
            match serde_json::from_str::<AuditRecord>(record) {
                Ok(decision) => self.record(decision).await,
                Err(error) => tracing::error!(%error, "a queued gateway decision is unreadable"),
            }
        }
        self.store.dequeue_decisions(last).await?;
        Ok(queued.len() as u64)
    }
}

/// Queued decisions taken per pass.
const DRAIN_BATCH: u32 = 1_000;

/// Records the decisions of the gateway beside the control plane until it
/// is gone.
pub async fn record_decisions(
    mut decisions: mpsc::Receiver<AuditRecord>,
    recorder: Arc<DecisionRecorder>,
) {
    let mut batch = Vec::new();
    loop {
        let open = take_batch(&mut decisions, &mut batch, DRAIN_BATCH as usize).await;
        for decision in batch.drain(..) {
            recorder.record(decision).await;
        }
        if !open {
            return;
        }
    }
}

/// Queues the decisions of a gateway on its own in the store, in batches,
/// until it is gone.
pub async fn queue_decisions(
    mut decisions: mpsc::Receiver<AuditRecord>,
    store: Arc<dyn ControlStore>,
) {
    let mut batch = Vec::with_capacity(DRAIN_BATCH as usize);
    let mut open = true;
    while open {
        open = take_batch(&mut decisions, &mut batch, DRAIN_BATCH as usize).await;
        let queued: Vec<(TenantId, String)> = batch
            .drain(..)
            .filter_map(|d| Some((TenantId(d.tenant), serde_json::to_string(&d).ok()?)))
            .collect();
        if queued.is_empty() {
            continue;
        }
        if let Err(error) = store.queue_decisions(&queued).await {
            tracing::warn!(%error, count = queued.len(), "cannot queue gateway decisions for the audit streams; they are lost");
        }
    }
}
