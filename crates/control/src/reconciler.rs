//! The reconciler: converges every tenant to its recorded desired state,
//! one idempotent step at a time, and survives being killed at any moment.
//!
//! - `provisioning`: run each step not yet recorded as applied, in order,
//!   recording each as it completes; then mark the tenant `active`. A step
//!   that keeps failing marks the tenant `failed` and undoes, in reverse,
//!   every step up to and including the one that failed.
//! - `failed` with its steps not yet undone: finish undoing them.
//! - `offboarding`: undo every step in reverse, then remove the tenant's
//!   record, which frees its name. A plain delete leaves a departure
//!   behind (its final snapshot, kept for a while, which the
//!   `backup_chain` step took); a purge leaves nothing but the audit
//!   stream. Each step undone is recorded in the platform's stream.
//!
//! A crash between a step's effect and its record only means the step runs
//! again on restart, which steps tolerate. The store is scanned at start and
//! every `scan_every`, so unsettled work always resumes.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use bulkhead_model::{
    Failure, IllegalTransition, PlanCatalog, Regions, StepRecord, StepStatus, Tenant, TenantId,
    TenantState,
};
use bulkhead_store::{ControlStore, StoreError};
use serde_json::json;
use thiserror::Error;
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    clock::Clock,
    config::ReconcilerSettings,
    events::{Actor, EventLog},
    metrics::Metrics,
    provision::{ProvisioningStep, StepError, StepTarget},
};

/// Why a pass over a tenant stopped early. The tenant stays unsettled and
/// the next scan tries again.
#[derive(Debug, Error)]
enum Interrupted {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Region(String),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    #[error("undoing {step} failed: {error}")]
    Undo { step: &'static str, error: StepError },
}

/// A tenant's place in `in_flight`, given up when its task ends however it
/// ends: a task that panicked must not keep the tenant from ever being
/// reconciled again.
struct InFlightEntry {
    reconciler: Arc<Reconciler>,
    id: TenantId,
    released: bool,
}

impl InFlightEntry {
    /// The task removed the entry itself.
    fn disarm(&mut self) {
        self.released = true;
    }
}

impl Drop for InFlightEntry {
    fn drop(&mut self) {
        if !self.released {
            let mut in_flight =
                self.reconciler.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            in_flight.remove(&self.id);
        }
    }
}

/// Asks the reconciler to look at a tenant now rather than at the next scan.
#[derive(Debug, Clone)]
pub struct ReconcilerHandle {
    wake: mpsc::UnboundedSender<TenantId>,
}

impl ReconcilerHandle {
    pub fn wake(&self, tenant: TenantId) {
        // Closed only during shutdown, when the next start's scan takes over.
        let _ = self.wake.send(tenant);
    }
}

#[derive(Debug)]
pub struct Reconciler {
    store: Arc<dyn ControlStore>,
    steps: Vec<Arc<dyn ProvisioningStep>>,
    regions: Regions,
    tenants_dir: PathBuf,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    settings: ReconcilerSettings,
    events: EventLog,
    /// Tenants being reconciled, and whether another pass was asked for
    /// while one ran.
    in_flight: Mutex<HashMap<TenantId, bool>>,
}

impl Reconciler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn ControlStore>,
        steps: Vec<Arc<dyn ProvisioningStep>>,
        regions: Regions,
        tenants_dir: PathBuf,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        settings: ReconcilerSettings,
        events: EventLog,
    ) -> Self {
        Self {
            events,
            store,
            steps,
            regions,
            tenants_dir,
            clock,
            metrics,
            settings,
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    pub fn step_names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.name()).collect()
    }

    /// A handle for waking the reconciler, and the receiving end that
    /// [`Reconciler::run`] consumes.
    pub fn channel() -> (ReconcilerHandle, mpsc::UnboundedReceiver<TenantId>) {
        let (wake, woken) = mpsc::unbounded_channel();
        (ReconcilerHandle { wake }, woken)
    }

    /// Runs until `shutdown` turns true. Work in progress is abandoned
    /// between or inside steps, which is safe for the same reason a crash is.
    pub async fn run(
        self: Arc<Self>,
        mut woken: mpsc::UnboundedReceiver<TenantId>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let permits = Arc::new(Semaphore::new(self.settings.workers.max(1)));
        let mut tasks = JoinSet::new();
        // Settled tenants get the steps added since they were provisioned
        // (an upgrade that brings a new capability).
        match self.settled_tenants().await {
            Ok(ids) => ids.into_iter().for_each(|id| self.start(id, &permits, &mut tasks)),
            Err(error) => warn!(%error, "cannot list tenants to bring them up to date"),
        }
        let mut scan = tokio::time::interval(self.settings.scan_every);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(id) = woken.recv() => self.start(id, &permits, &mut tasks),
                _ = scan.tick() => match self.store.unsettled_tenants().await {
                    Ok(ids) => ids.into_iter().for_each(|id| self.start(id, &permits, &mut tasks)),
                    Err(error) => warn!(%error, "cannot scan the store for unsettled tenants"),
                },
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Err(error) = done {
                        warn!(%error, "a reconcile task ended abnormally");
                    }
                }
            }
        }
        tasks.shutdown().await;
    }

    fn start(self: &Arc<Self>, id: TenantId, permits: &Arc<Semaphore>, tasks: &mut JoinSet<()>) {
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(again) = in_flight.get_mut(&id) {
                *again = true;
                return;
            }
            in_flight.insert(id, false);
        }
        let mut entry = InFlightEntry { reconciler: Arc::clone(self), id, released: false };
        let permits = Arc::clone(permits);
        tasks.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else { return };
            let reconciler = Arc::clone(&entry.reconciler);
            loop {
                reconciler.reconcile(id).await;
                let mut in_flight =
                    reconciler.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
                match in_flight.get_mut(&id) {
                    Some(again) if *again => *again = false,
                    _ => {
                        in_flight.remove(&id);
                        entry.disarm();
                        break;
                    }
                }
            }
        });
    }

    /// One pass over one tenant.
    pub async fn reconcile(&self, id: TenantId) {
        let tenant = match self.store.tenant_by_id(id).await {
            Ok(Some(tenant)) => tenant,
            Ok(None) => return,
            Err(error) => {
                warn!(tenant_id = %id, %error, "cannot load tenant");
                return;
            }
        };
        let span = info_span!("reconcile", tenant = %tenant.name, tenant_id = %tenant.id);
        let pass = async {
            match tenant.state {
                TenantState::Provisioning => self.provision(tenant).await,
                TenantState::Offboarding => self.offboard(tenant).await,
                TenantState::Failed if tenant.needs_work() => self.roll_back(tenant).await,
                TenantState::Active | TenantState::Suspended => self.upgrade(tenant).await,
                _ => Ok(()),
            }
        };
        if let Err(error) = pass.instrument(span.clone()).await {
            span.in_scope(|| warn!(%error, "reconcile interrupted; the next scan resumes it"));
        }
    }

    fn target(&self, tenant: &Tenant) -> Result<StepTarget, String> {
        let region = self.regions.get(tenant.region.as_str()).map_err(|e| {
            format!("{e}; the tenant's region must stay configured until it is deleted")
        })?;
        Ok(StepTarget {
            tenant: tenant.clone(),
            region: region.clone(),
            tenant_dir: self.tenants_dir.join(tenant.name.as_str()),
        })
    }

    async fn provision(&self, mut tenant: Tenant) -> Result<(), Interrupted> {
        let target = match self.target(&tenant) {
            Ok(target) => target,
            Err(reason) => {
                let first = self.steps.first().map_or("provision", |s| s.name());
                return self.fail(tenant, first, StepError::Permanent(reason)).await;
            }
        };
        let applied = self.applied_steps(&tenant).await?;
        for step in &self.steps {
            if applied.contains(step.name()) {
                continue;
            }
            let started = Instant::now();
            match self.attempt(&mut tenant, step.name(), "apply", || step.apply(&target)).await? {
                Ok(output) => {
                    self.record(&tenant, step.name(), StepStatus::Applied, output).await?;
                    let elapsed_us = started.elapsed().as_micros() as u64;
                    debug!(step = step.name(), elapsed_us, "step applied");
                }
                Err(error) => return self.fail(tenant, step.name(), error).await,
            }
        }

        let now = self.clock.now();
        tenant.transition(TenantState::Active)?;
        tenant.provisioned_at = Some(now);
        tenant.last_error = None;
        tenant.updated_at = now;
        let tenant = self.store.update_tenant(&tenant).await?;
        let elapsed = Duration::try_from(now - tenant.created_at).unwrap_or_default();
        self.metrics.observe_provisioned(elapsed);
        info!(elapsed_ms = elapsed.as_millis() as u64, "tenant is active");
        self.event(
            &tenant,
            "tenant.provision",
            "ok",
            json!({ "elapsed_ms": elapsed.as_millis() as u64 }),
        )
        .await;
        Ok(())
    }

    /// The names of the steps recorded as applied for the tenant.
    async fn applied_steps(&self, tenant: &Tenant) -> Result<HashSet<String>, StoreError> {
        Ok(self
            .store
            .steps(tenant.id)
            .await?
            .into_iter()
            .filter(|r| r.status == StepStatus::Applied)
            .map(|r| r.step)
            .collect())
    }

    async fn settled_tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let tenants = self.store.all_tenants().await?;
        let settled = |t: &&Tenant| matches!(t.state, TenantState::Active | TenantState::Suspended);
        Ok(tenants.iter().filter(settled).map(|t| t.id).collect())
    }

    /// Applies the steps a settled tenant has no record of: those added to
    /// Bulkhead after it was provisioned. A failure is logged and retried
    /// at the next start; the tenant stays as it is.
    async fn upgrade(&self, mut tenant: Tenant) -> Result<(), Interrupted> {
        let applied = self.applied_steps(&tenant).await?;
        let missing: Vec<_> = self.steps.iter().filter(|s| !applied.contains(s.name())).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let target = self.target(&tenant).map_err(Interrupted::Region)?;
        for step in missing {
            match self.attempt(&mut tenant, step.name(), "apply", || step.apply(&target)).await? {
                Ok(output) => {
                    self.record(&tenant, step.name(), StepStatus::Applied, output).await?;
                    info!(
                        step = step.name(),
                        "applied a step added since the tenant was provisioned"
                    );
                    self.event(&tenant, "tenant.upgrade", "ok", json!({ "step": step.name() }))
                        .await;
                }
                Err(error) => {
                    warn!(step = step.name(), %error, "cannot bring the tenant up to date");
                    let details = json!({ "step": step.name(), "reason": error.to_string() });
                    self.event(&tenant, "tenant.upgrade", "failed", details).await;
                    return Ok(());
                }
            }
        }
        tenant.last_error = None;
        tenant.updated_at = self.clock.now();
        self.store.update_tenant(&tenant).await?;
        Ok(())
    }

    /// Marks the tenant failed at `step`, then undoes what was done.
    async fn fail(
        &self,
        mut tenant: Tenant,
        step: &str,
        error: StepError,
    ) -> Result<(), Interrupted> {
        warn!(step, %error, "provisioning failed; undoing the steps that ran");
        tenant.transition(TenantState::Failed)?;
        tenant.failure =
            Some(Failure { step: step.to_owned(), reason: error.to_string(), undone: false });
        tenant.updated_at = self.clock.now();
        let tenant = self.store.update_tenant(&tenant).await?;
        self.event(
            &tenant,
            "tenant.provision",
            "failed",
            json!({ "step": step, "reason": error.to_string() }),
        )
        .await;
        self.roll_back(tenant).await
    }

    /// Undoes, in reverse, every step up to and including the failed one.
    async fn roll_back(&self, mut tenant: Tenant) -> Result<(), Interrupted> {
        let failed_step = tenant.failure.as_ref().map(|f| f.step.clone()).unwrap_or_default();
        let last = self
            .steps
            .iter()
            .position(|s| s.name() == failed_step)
            .unwrap_or(self.steps.len().saturating_sub(1));
        let upto = self.steps.get(..=last).unwrap_or(&[]);
        self.undo_all(&mut tenant, upto).await?;

        if let Some(failure) = tenant.failure.as_mut() {
            failure.undone = true;
        }
        tenant.last_error = None;
        tenant.updated_at = self.clock.now();
        let tenant = self.store.update_tenant(&tenant).await?;
        info!("undid the failed tenant's steps");
        self.event(&tenant, "tenant.rollback", "ok", json!({})).await;
        Ok(())
    }

    async fn offboard(&self, mut tenant: Tenant) -> Result<(), Interrupted> {
        let steps = self.steps.clone();
        self.undo_all(&mut tenant, &steps).await?;
        // Fails on a record changed since this pass read it (a purge asked
        // for meanwhile): the next pass undoes the steps again, purging.
        tenant.updated_at = self.clock.now();
        let tenant = self.store.update_tenant(&tenant).await?;
        self.store.delete_tenant(tenant.id).await?;
        // The stream outlives the tenant: it says how long it is kept.
        let keep = PlanCatalog::builtin()
            .get(tenant.plan.as_str())
            .map_or(PlanCatalog::builtin().longest_audit_retention_days(), |plan| {
                plan.audit_retention_days
            });
        let action = if tenant.purge_requested { "tenant.purge" } else { "tenant.delete" };
        info!(action, "tenant offboarded; its name is free");
        let details = json!({ "audit_retention_days": keep });
        self.event(&tenant, action, "ok", details.clone()).await;
        self.platform_event(&tenant, action, details).await;
        Ok(())
    }

    /// Records an offboarding's progress in the platform's stream, which
    /// outlives every tenant.
    async fn platform_event(&self, tenant: &Tenant, action: &str, mut details: serde_json::Value) {
        if let Some(details) = details.as_object_mut() {
            details.insert("purge".into(), json!(tenant.purge_requested));
        }
        let about = (tenant.name.as_str(), tenant.id);
        self.events.record_platform_about(&Actor::Reconciler, about, action, "ok", details).await;
    }

    /// Undoes `steps` in reverse order, recording each that had a record.
    async fn undo_all(
        &self,
        tenant: &mut Tenant,
        steps: &[Arc<dyn ProvisioningStep>],
    ) -> Result<(), Interrupted> {
        let target = self.target(tenant).map_err(Interrupted::Region)?;
        let recorded: HashSet<String> =
            self.store.steps(tenant.id).await?.into_iter().map(|r| r.step).collect();
        for step in steps.iter().rev() {
            if let Err(error) =
                self.attempt(tenant, step.name(), "undo", || step.undo(&target)).await?
            {
                return Err(Interrupted::Undo { step: step.name(), error });
            }
            if recorded.contains(step.name()) {
                self.record(tenant, step.name(), StepStatus::Undone, None).await?;
            }
            if tenant.state == TenantState::Offboarding {
                let details = json!({ "step": step.name() });
                self.platform_event(tenant, "tenant.offboard_step", details).await;
            }
        }
        Ok(())
    }

    /// Runs `op` until it succeeds, fails permanently or runs out of
    /// attempts, backing off between attempts and keeping the latest error
    /// on the tenant for operators to see. The outer `Result` is the store's;
    /// the inner one is the step's.
    async fn attempt<T, F, Fut>(
        &self,
        tenant: &mut Tenant,
        step: &str,
        action: &str,
        mut op: F,
    ) -> Result<Result<T, StepError>, Interrupted>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let mut backoff = self.settings.first_backoff;
        let mut attempt = 1;
        loop {
            // A step that hangs (a dead socket, a stuck server) counts as a
            // failed attempt, so the tenant always settles.
            let error = match tokio::time::timeout(self.settings.step_timeout, op()).await {
                Ok(Ok(value)) => return Ok(Ok(value)),
                Ok(Err(error)) => error,
                Err(_) => {
                    StepError::Transient(format!("gave up after {:?}", self.settings.step_timeout))
                }
            };
            self.metrics.step_failed(step, action);
            warn!(step, action, attempt, %error, "provisioning step failed");
            tenant.last_error = Some(format!("{step} ({action}) attempt {attempt}: {error}"));
            tenant.updated_at = self.clock.now();
            *tenant = self.store.update_tenant(tenant).await?;
            if error.is_permanent() || attempt >= self.settings.attempts {
                return Ok(Err(error));
            }
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
            attempt += 1;
        }
    }

    async fn record(
        &self,
        tenant: &Tenant,
        step: &str,
        status: StepStatus,
        output: Option<serde_json::Value>,
    ) -> Result<(), StoreError> {
        let record =
            StepRecord { step: step.to_owned(), status, output, updated_at: self.clock.now() };
        self.store.record_step(tenant.id, &record).await
    }

    async fn event(
        &self,
        tenant: &Tenant,
        action: &str,
        outcome: &str,
        details: serde_json::Value,
    ) {
        self.events.record(&Actor::Reconciler, tenant, action, outcome, details).await;
    }
}
