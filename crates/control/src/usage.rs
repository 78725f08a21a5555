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
use bulkhead_store::{ControlStore, StoreError, UsageRecord};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::mpsc;

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
        self.0.insert_usage(&records).await
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("tenant {0:?} does not exist")]
    TenantNotFound(String),
    #[error("your roles in tenant {0:?} do not allow this")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The tenant's usage from `since` on (of one API when `api` is given),
/// one row per API and minute.
pub async fn usage(
    store: &dyn ControlStore,
    actor: &Actor,
    tenant: &str,
    api: Option<&str>,
    since: OffsetDateTime,
) -> Result<Vec<UsageRow>, UsageError> {
    let found = store
        .tenant_named(tenant)
        .await?
        .filter(|t| actor.may_access(t))
        .ok_or_else(|| UsageError::TenantNotFound(tenant.to_owned()))?;
    if !actor.allows(&found, Permission::Read) {
        return Err(UsageError::Forbidden(tenant.to_owned()));
    }
    let mut rows: BTreeMap<(OffsetDateTime, String), UsageRow> = BTreeMap::new();
    for record in store.usage(found.id, api, since).await? {
        let row: UsageRow = serde_json::from_str(&record.row)
            .map_err(|e| StoreError::Corrupt(format!("usage row: {e}")))?;
        rows.entry((record.minute, record.api)).and_modify(|total| total.add(&row)).or_insert(row);
    }
    Ok(rows.into_values().collect())
}

/// Writes gateway decisions to the tenants' audit streams, within a budget
/// of refusals per tenant.
#[derive(Debug)]
pub struct DecisionRecorder {
    store: Arc<dyn ControlStore>,
    events: EventLog,
    budget: Budget,
    /// Tenants looked up lately, by id.
    tenants: Mutex<HashMap<TenantId, (Instant, Tenant)>>,
}

impl DecisionRecorder {
    pub fn new(store: Arc<dyn ControlStore>, events: EventLog) -> Self {
        Self {
            store,
            events,
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
