//! What the gateway reports back: usage per tenant, API and minute, stored
//! as the meter sums it and read back for `bulkhead usage`; and its
//! decisions, written to each tenant's audit stream as the API's audit
//! level asks, within a budget per tenant so a flood of refused requests
//! cannot fill a tenant's trail.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bulkhead_gateway::record::AuditRecord;
use bulkhead_identity::Permission;
use bulkhead_meter::{UsageRow, UsageSink};
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
        match rows.entry((record.minute, record.api)) {
            std::collections::btree_map::Entry::Occupied(mut total) => total.get_mut().add(&row),
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(row);
            }
        }
    }
    Ok(rows.into_values().collect())
}

/// Writes the gateway's decisions to the tenants' audit streams until the
/// gateway is gone.
pub async fn record_decisions(
    mut decisions: mpsc::Receiver<AuditRecord>,
    store: Arc<dyn ControlStore>,
    events: EventLog,
) {
    let budget = Budget::new(REFUSED_PER_MINUTE, Duration::from_secs(60));
    let mut tenants: HashMap<TenantId, (Instant, Tenant)> = HashMap::new();
    while let Some(decision) = decisions.recv().await {
        let id = TenantId(decision.tenant);
        let suppressed = match decision.refused {
            Some(_) => match budget.take(id) {
                Some(suppressed) => suppressed,
                None => continue,
            },
            None => 0,
        };
        let cached = tenants.get(&id).filter(|(at, _)| at.elapsed() < TENANT_CACHE_FOR);
        let tenant = match cached {
            Some((_, tenant)) => tenant.clone(),
            None => match store.tenant_by_id(id).await {
                Ok(Some(tenant)) if tenant.state != TenantState::Deleted => {
                    tenants.insert(id, (Instant::now(), tenant.clone()));
                    tenant
                }
                Ok(_) => continue,
                Err(error) => {
                    tracing::warn!(%error, "cannot record a gateway decision");
                    continue;
                }
            },
        };
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
        let mut details = json!({
            "api": decision.api.as_deref(),
            "method": decision.method,
            "path": decision.path,
            "status": decision.status,
        });
        let outcome = match &decision.refused {
            Some((phase, code, reason)) => {
                details["phase"] = json!(phase);
                details["code"] = json!(code);
                details["reason"] = json!(reason.chars().take(200).collect::<String>());
                details["unrecorded_before"] = json!(suppressed);
                "denied"
            }
            None => "ok",
        };
        // The event carries the gateway's request id, as the client saw it.
        let record = events.record(&actor, &tenant, "gateway.request", outcome, details);
        crate::events::REQUEST_ID.scope(decision.request_id, record).await;
    }
}
