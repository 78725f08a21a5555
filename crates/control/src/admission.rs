//! The one admission check for everything that discloses or mints: secret
//! reads and writes, database credentials, realm tokens, API keys, audit
//! exports. Each touch counts towards the anomaly detector (one principal
//! reaching for many tenants), and a principal locked out by it is refused
//! all of them: otherwise a locked-out credential could mint a fresh one
//! for a tenant it had touched and carry on with that. Making something
//! new a tenant holds (a secret path, an API key, a live credential) is
//! also held to the tenant's plan's quota here.

use std::sync::Arc;

use bulkhead_model::{PlanCatalog, Tenant};
use bulkhead_store::{ControlStore, Lockout, StoreError};
use bulkhead_vault::{AnomalyDetector, Verdict, ttl::format_duration};
use serde_json::json;
use thiserror::Error;

use crate::{
    clock::Clock,
    events::{Actor, EventLog},
    limits::{Quota, QuotaExceeded},
    metrics::Metrics,
};

#[derive(Debug, Error)]
pub enum Refused {
    #[error(
        "{0} is locked out after touching too many tenants' secrets or credentials; an operator \
         can clear it with `bulkhead vault unlock`"
    )]
    LockedOut(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
pub struct Admission {
    store: Arc<dyn ControlStore>,
    anomaly: AnomalyDetector,
    clock: Arc<dyn Clock>,
    events: EventLog,
    metrics: Arc<Metrics>,
    plans: PlanCatalog,
}

impl Admission {
    pub fn new(
        store: Arc<dyn ControlStore>,
        anomaly: AnomalyDetector,
        clock: Arc<dyn Clock>,
        events: EventLog,
        metrics: Arc<Metrics>,
        plans: PlanCatalog,
    ) -> Self {
        Self { store, anomaly, clock, events, metrics, plans }
    }

    /// `Err` when `tenant`, holding `held` of `quota`, may not have one more
    /// on its plan.
    pub fn within_quota(
        &self,
        tenant: &Tenant,
        quota: Quota,
        held: usize,
    ) -> Result<(), QuotaExceeded> {
        match self.plans.get(tenant.plan.as_str()) {
            Ok(plan) => QuotaExceeded::check(tenant, plan, quota, held),
            Err(_) => Ok(()),
        }
    }

    /// Counts `actor`'s touch of `tenant` for `action` and refuses a
    /// locked-out principal. The touch that crosses the threshold raises
    /// the alert and, with lockout on, is itself refused.
    pub async fn admit(&self, actor: &Actor, tenant: &Tenant, action: &str) -> Result<(), Refused> {
        let principal = actor.to_string();
        if self.store.is_locked_out(&principal).await? {
            self.denied(actor, tenant, action).await;
            return Err(Refused::LockedOut(principal));
        }
        let Verdict::Alert { tenants } =
            self.anomaly.observe(&principal, tenant.id, self.clock.now())
        else {
            return Ok(());
        };
        let policy = self.anomaly.policy();
        let window = format_duration(policy.window);
        tracing::warn!(principal, tenants, window, "anomaly: one principal touched many tenants");
        self.metrics.vault_operation("vault.anomaly", "alert");
        let details = json!({
            "principal": principal, "tenants": tenants, "window": window,
            "threshold": policy.max_tenants, "lockout": policy.lockout, "action": action,
        });
        self.events.record(actor, tenant, "vault.anomaly", "alert", details).await;
        if !policy.lockout {
            return Ok(());
        }
        // Counting starts afresh once the lockout is cleared, however it is.
        self.anomaly.forget(&principal);
        let lockout = Lockout {
            principal: principal.clone(),
            reason: format!("touched {tenants} tenants within {window}"),
            locked_at: self.clock.now(),
        };
        self.store.insert_lockout(&lockout).await?;
        self.denied(actor, tenant, action).await;
        Err(Refused::LockedOut(principal))
    }

    async fn denied(&self, actor: &Actor, tenant: &Tenant, action: &str) {
        self.metrics.vault_operation(action, "denied");
        let details = json!({ "reason": "locked out" });
        self.events.record(actor, tenant, action, "denied", details).await;
    }

    /// Forgets a principal's history, after an operator cleared it.
    pub fn forget(&self, principal: &str) {
        self.anomaly.forget(principal);
    }
}
