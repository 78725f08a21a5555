//! Rollouts: one app moved to a new version across every tenant that runs
//! it, canary tenants first, then in batches with a pause between them.
//! Each tenant's move is a deploy, so the runtime switches the tenant only
//! once its new workers pass their health check and sends it back to its
//! live version when they fail; the rollout halts after `max_unhealthy`
//! failed tenants. Progress is stored after every step, so a restarted
//! server carries on where it stopped.

use std::{sync::Arc, time::Duration};

use bulkhead_model::{AppName, TenantId, TenantState};
use bulkhead_store::{ControlStore, RolloutRecord, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use thiserror::Error;
use time::OffsetDateTime;
use tokio::sync::{Mutex, Notify, watch};
use uuid::Uuid;

use crate::{
    apps::{AppService, Move, decode_spec, generation, spec_and_live, switching},
    clock::Clock,
    events::{Actor, EventLog},
    runtime::Runtime,
};

/// How often rollouts under way look at their tenants.
const TICK: Duration = Duration::from_millis(500);
/// Rollouts that `rollout status` lists, newest first.
const LISTED: u32 = 50;

#[derive(Debug, Error)]
pub enum RolloutError {
    #[error("rollouts span tenants: only an operator starts and steers them")]
    Forbidden,
    #[error("{0}")]
    Invalid(String),
    #[error("no rollout {0}; `bulkhead rollout status` lists them")]
    NotFound(String),
    #[error("app {0:?} has a rollout under way; pause, resume or abort that one")]
    UnderWay(String),
    #[error("the rollout is {state}: {action} needs one that is {needs}")]
    WrongState { state: String, action: &'static str, needs: &'static str },
    #[error(
        "this server runs no apps: it was started without the runtime (it needs the `bulkhead` \
         binary as its sandbox helper)"
    )]
    NoRuntime,
    #[error("the stored rollout {0} is unreadable: {1}")]
    Corrupt(Uuid, String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T, E = RolloutError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    /// No new batch starts; tenants already switching finish.
    Paused,
    /// Stopped after too many failed tenants; `resume` allows as many again.
    Halted,
    Aborted,
    Completed,
}

impl RolloutState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Halted => "halted",
            Self::Aborted => "aborted",
            Self::Completed => "completed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStepState {
    Pending,
    /// Deployed; the runtime is bringing up the new workers.
    Moving,
    Moved,
    /// Its new version failed; the tenant is back on its live version.
    Failed,
    Skipped,
}

/// One tenant's part in a rollout.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RolloutStep {
    pub tenant: String,
    pub tenant_id: TenantId,
    /// 0 for the canary tenants, then 1, 2, …
    pub batch: u32,
    pub state: RolloutStepState,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The version it had when the rollout started.
    pub from_version: String,
    /// The generation of the spec its move stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
    /// When its move was stored.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub moving_since: Option<OffsetDateTime>,
}

/// What `rollout start` asks for.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// The app, by the name each tenant gave it.
    pub app: String,
    pub version: String,
    /// The new version's artifact directory (under `[runtime] artifacts`);
    /// each tenant's stays as it is when omitted.
    pub artifact: Option<String>,
    /// Tenants moved first, on their own (1 by default).
    #[serde(default = "one")]
    pub canary: u32,
    /// Tenants per batch after the canary: a count (`10`) or a share of
    /// the tenants to move (`25%`, the default).
    #[serde(default = "quarter")]
    pub batch: String,
    /// Waited between batches, such as `30s` or `5m` (none by default).
    pub pause: Option<String>,
    /// Failed tenants at which the rollout halts (1 by default).
    #[serde(default = "one")]
    pub max_unhealthy: u32,
}

fn one() -> u32 {
    1
}

fn quarter() -> String {
    "25%".to_owned()
}

/// A rollout, as stored and as `rollout status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Rollout {
    pub id: Uuid,
    pub app: String,
    pub version: String,
    pub artifact: Option<String>,
    pub canary: u32,
    pub batch: String,
    pub pause_seconds: u64,
    pub max_unhealthy: u32,
    /// The failures allowed when it started: `resume` after a halt allows
    /// as many again.
    #[serde(default)]
    pub tolerance: u32,
    pub state: RolloutState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The operator who started it: each tenant's move is recorded as theirs.
    pub started_by: String,
    pub steps: Vec<RolloutStep>,
    /// When the next batch may start (after a pause).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub next_batch_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl Rollout {
    fn count(&self, state: RolloutStepState) -> usize {
        self.steps.iter().filter(|s| s.state == state).count()
    }

    fn under_way(&self) -> bool {
        matches!(self.state, RolloutState::Running | RolloutState::Paused)
            || self.count(RolloutStepState::Moving) > 0
    }
}

/// Tenants per batch: `N` or `N%` of `total` (at least one).
fn batch_size(batch: &str, total: usize) -> Result<usize> {
    let bad = || {
        RolloutError::Invalid(format!(
            "batch {batch:?}: give a count of tenants (10) or a share of them (25%)"
        ))
    };
    match batch.strip_suffix('%') {
        Some(percent) => {
            let p: usize = percent.parse().map_err(|_| bad())?;
            if !(1..=100).contains(&p) {
                return Err(bad());
            }
            Ok((total * p).div_ceil(100).max(1))
        }
        None => match batch.parse::<usize>() {
            Ok(n) if (1..=100_000).contains(&n) => Ok(n),
            _ => Err(bad()),
        },
    }
}

#[derive(Debug)]
pub struct RolloutService {
    store: Arc<dyn ControlStore>,
    clock: Arc<dyn Clock>,
    events: EventLog,
    apps: Arc<AppService>,
    runtime: Option<Arc<Runtime>>,
    /// One writer of rollouts at a time in this server: the steering
    /// calls and the loop never overwrite each other's changes.
    writing: Mutex<()>,
    wake: Notify,
}

impl RolloutService {
    pub fn new(
        store: Arc<dyn ControlStore>,
        clock: Arc<dyn Clock>,
        events: EventLog,
        apps: Arc<AppService>,
        runtime: Option<Arc<Runtime>>,
    ) -> Self {
        Self { store, clock, events, apps, runtime, writing: Mutex::new(()), wake: Notify::new() }
    }

    /// Plans and stores a rollout: every tenant with the app, in name
    /// order, canary tenants first; pinned ones, those already at the
    /// version and those not active are skipped, with the reason.
    pub async fn start(&self, actor: &Actor, request: RolloutRequest) -> Result<Rollout> {
        let Actor::Operator(operator) = actor else { return Err(RolloutError::Forbidden) };
        let Some(runtime) = &self.runtime else { return Err(RolloutError::NoRuntime) };
        let invalid = |e: String| RolloutError::Invalid(e);
        let app = AppName::parse(&request.app).map_err(|e| invalid(e.to_string()))?;
        bulkhead_model::check_version(&request.version).map_err(|e| invalid(e.to_string()))?;
        if let Some(artifact) = &request.artifact {
            runtime.artifact(artifact).map_err(|e| invalid(format!("artifact: {e}")))?;
        }
        let pause = match request.pause.as_deref() {
            None | Some("0" | "0s") => Duration::ZERO,
            Some(text) => bulkhead_vault::ttl::parse_duration(text)
                .map_err(|e| invalid(format!("pause: {e}")))?,
        };
        if request.max_unhealthy == 0 {
            return Err(invalid("max_unhealthy is at least 1".to_owned()));
        }
        let mut steps = Vec::new();
        for record in self.store.all_apps().await?.into_iter().filter(|a| a.name == app.as_str()) {
            let Some(tenant) = self.store.tenant_by_id(record.tenant_id).await? else { continue };
            if tenant.state == TenantState::Deleted {
                continue;
            }
            let specs = spec_and_live(&record).ok();
            let from_version = specs.as_ref().map(|(s, _)| s.version.clone()).unwrap_or_default();
            let switching = specs.as_ref().is_some_and(|(s, l)| switching(s, l));
            let skipped = if !record.running {
                Some("the app is stopped".to_owned())
            } else if record.pinned {
                Some("pinned (`bulkhead apps unpin` lets rollouts move it)".to_owned())
            } else if switching {
                Some("it is switching to its own new spec".to_owned())
            } else if from_version == request.version {
                Some(format!("already at {}", request.version))
            } else if tenant.state != TenantState::Active {
                Some(format!("the tenant is {}", tenant.state))
            } else {
                None
            };
            steps.push(RolloutStep {
                tenant: tenant.name.to_string(),
                tenant_id: tenant.id,
                batch: 0,
                state: if skipped.is_some() {
                    RolloutStepState::Skipped
                } else {
                    RolloutStepState::Pending
                },
                reason: skipped,
                from_version,
                generation: None,
                moving_since: None,
            });
        }
        steps.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        let moving = steps.iter().filter(|s| s.state == RolloutStepState::Pending).count();
        if moving == 0 {
            return Err(invalid(format!(
                "no tenant's app {app} can move to {} ({} found, each stopped, pinned, switching, already at it or of a tenant not active)",
                request.version,
                steps.len()
            )));
        }
        let canary = usize::try_from(request.canary).unwrap_or(usize::MAX);
        let size = batch_size(&request.batch, moving.saturating_sub(canary))?;
        for (n, step) in
            steps.iter_mut().filter(|s| s.state == RolloutStepState::Pending).enumerate()
        {
            step.batch = match n.checked_sub(canary) {
                None => 0,
                Some(after) => u32::try_from(after / size + 1).unwrap_or(u32::MAX),
            };
        }
        let now = self.clock.now();
        let rollout = Rollout {
            id: Uuid::new_v4(),
            app: app.to_string(),
            version: request.version,
            artifact: request.artifact,
            canary: request.canary,
            batch: request.batch,
            pause_seconds: pause.as_secs(),
            max_unhealthy: request.max_unhealthy,
            tolerance: request.max_unhealthy,
            state: RolloutState::Running,
            reason: None,
            started_by: operator.clone(),
            steps,
            next_batch_at: None,
            created_at: now,
            updated_at: now,
        };
        {
            let _writing = self.writing.lock().await;
            self.save(&rollout).await.map_err(|e| match e {
                RolloutError::Store(StoreError::Duplicate(_)) => {
                    RolloutError::UnderWay(rollout.app.clone())
                }
                other => other,
            })?;
        }
        self.note(actor, &rollout, "rollout.start").await;
        self.wake.notify_one();
        Ok(rollout)
    }

    pub async fn get(&self, actor: &Actor, id: &str) -> Result<Rollout> {
        if !actor.is_operator() {
            return Err(RolloutError::Forbidden);
        }
        let id = Uuid::parse_str(id).map_err(|_| RolloutError::NotFound(id.to_owned()))?;
        self.load(id).await?.ok_or_else(|| RolloutError::NotFound(id.to_string()))
    }

    /// The latest rollouts, newest first.
    pub async fn list(&self, actor: &Actor) -> Result<Vec<Rollout>> {
        if !actor.is_operator() {
            return Err(RolloutError::Forbidden);
        }
        // One unreadable rollout does not hide the others (it is logged).
        Ok(self
            .store
            .rollouts(LISTED)
            .await?
            .iter()
            .filter_map(|r| {
                decode(r)
                    .map_err(|e| tracing::error!(error = %e, "a stored rollout is unreadable"))
                    .ok()
            })
            .collect())
    }

    /// `pause`, `resume` or `abort`.
    pub async fn steer(&self, actor: &Actor, id: &str, action: Steer) -> Result<Rollout> {
        let mut rollout = self.get(actor, id).await?;
        let _writing = self.writing.lock().await;
        rollout =
            self.load(rollout.id).await?.ok_or_else(|| RolloutError::NotFound(id.to_owned()))?;
        let wrong = |needs| RolloutError::WrongState {
            state: rollout.state.as_str().to_owned(),
            action: action.as_str(),
            needs,
        };
        match (action, rollout.state) {
            (Steer::Pause, RolloutState::Running) => rollout.state = RolloutState::Paused,
            (Steer::Pause, _) => return Err(wrong("running")),
            (Steer::Resume, RolloutState::Paused) => rollout.state = RolloutState::Running,
            (Steer::Resume, RolloutState::Halted) => {
                // As many failures again as the rollout allowed at first.
                let failed =
                    u32::try_from(rollout.count(RolloutStepState::Failed)).unwrap_or(u32::MAX);
                rollout.max_unhealthy = failed.saturating_add(rollout.tolerance.max(1));
                rollout.state = RolloutState::Running;
                rollout.reason = None;
            }
            (Steer::Resume, _) => return Err(wrong("paused or halted")),
            (Steer::Abort, RolloutState::Running | RolloutState::Paused | RolloutState::Halted) => {
                rollout.state = RolloutState::Aborted;
                for step in
                    rollout.steps.iter_mut().filter(|s| s.state == RolloutStepState::Pending)
                {
                    step.state = RolloutStepState::Skipped;
                    step.reason = Some("the rollout was aborted".to_owned());
                }
            }
            (Steer::Abort, _) => return Err(wrong("running, paused or halted")),
        }
        rollout.updated_at = self.clock.now();
        self.save(&rollout).await.map_err(|e| match e {
            RolloutError::Store(StoreError::Duplicate(_)) => {
                RolloutError::UnderWay(rollout.app.clone())
            }
            other => other,
        })?;
        drop(_writing);
        self.note(actor, &rollout, &format!("rollout.{}", action.as_str())).await;
        self.wake.notify_one();
        Ok(rollout)
    }

    /// Moves every rollout under way along until `stopping`.
    pub async fn run(self: Arc<Self>, mut stopping: watch::Receiver<bool>) {
        loop {
            if let Err(error) = self.advance_all().await {
                tracing::warn!(%error, "cannot move the rollouts along");
            }
            tokio::select! {
                _ = stopping.wait_for(|stop| *stop) => return,
                () = self.wake.notified() => {}
                () = async {
                    match &self.runtime {
                        Some(runtime) => runtime.settled().await,
                        None => std::future::pending().await,
                    }
                } => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    async fn advance_all(&self) -> Result<()> {
        for record in self.store.unfinished_rollouts().await? {
            let Ok(rollout) = decode(&record) else { continue };
            if !rollout.under_way() {
                continue;
            }
            let _writing = self.writing.lock().await;
            // Read again under the lock: a steering call may have won.
            let Some(mut rollout) = self.load(rollout.id).await? else { continue };
            let before = rollout.state;
            if self.advance(&mut rollout).await? {
                rollout.updated_at = self.clock.now();
                self.save(&rollout).await?;
                if rollout.state != before {
                    let operator = Actor::Operator(rollout.started_by.clone());
                    self.note(&operator, &rollout, &format!("rollout.{}", rollout.state.as_str()))
                        .await;
                }
            }
        }
        Ok(())
    }

    /// One look at the rollout: settles the tenants switching, halts on too
    /// many failures, starts the next batch when the last one is done and
    /// the pause is over. `true` when it changed.
    async fn advance(&self, rollout: &mut Rollout) -> Result<bool> {
        let now = self.clock.now();
        let mut changed = false;
        let was_moving = rollout.count(RolloutStepState::Moving) > 0;
        for index in 0..rollout.steps.len() {
            if rollout.steps[index].state != RolloutStepState::Moving {
                continue;
            }
            if let Some((state, reason)) = self.settle(rollout, &rollout.steps[index]).await? {
                let step = &mut rollout.steps[index];
                step.state = state;
                step.reason = reason;
                changed = true;
            }
        }
        let moving = rollout.count(RolloutStepState::Moving) > 0;
        if was_moving && !moving {
            rollout.next_batch_at = Some(now + Duration::from_secs(rollout.pause_seconds))
                .filter(|_| rollout.pause_seconds > 0);
        }
        let failed = rollout.count(RolloutStepState::Failed);
        if matches!(rollout.state, RolloutState::Running | RolloutState::Paused)
            && failed >= usize::try_from(rollout.max_unhealthy).unwrap_or(usize::MAX)
        {
            rollout.state = RolloutState::Halted;
            rollout.reason = Some(format!(
                "{failed} tenant(s) failed to switch to {} (max_unhealthy {}); those moved stay, \
                 the rest wait: `rollout resume` goes on, `rollout abort` ends it",
                rollout.version, rollout.max_unhealthy
            ));
            return Ok(true);
        }
        if rollout.state != RolloutState::Running || moving {
            return Ok(changed);
        }
        if rollout.next_batch_at.is_some_and(|at| now < at) {
            return Ok(changed);
        }
        let next = rollout
            .steps
            .iter()
            .filter(|s| s.state == RolloutStepState::Pending)
            .map(|s| s.batch)
            .min();
        let Some(batch) = next else {
            rollout.state = RolloutState::Completed;
            return Ok(true);
        };
        rollout.next_batch_at = None;
        let operator = Actor::Operator(rollout.started_by.clone());
        for index in 0..rollout.steps.len() {
            let step = &rollout.steps[index];
            if step.state != RolloutStepState::Pending || step.batch != batch {
                continue;
            }
            let mut step = step.clone();
            self.begin(&operator, rollout, &mut step).await?;
            rollout.steps[index] = step;
        }
        Ok(true)
    }

    /// Deploys the new version to one tenant, and sets the step's state.
    async fn begin(
        &self,
        operator: &Actor,
        rollout: &Rollout,
        step: &mut RolloutStep,
    ) -> Result<()> {
        let tenant = match self.store.tenant_by_id(step.tenant_id).await {
            Ok(tenant) => tenant,
            Err(error) => {
                // The step stays pending for the next look.
                tracing::warn!(%error, "a rollout's move waits for its next look");
                return Ok(());
            }
        };
        let (state, reason) = match tenant {
            None => (RolloutStepState::Skipped, Some("the tenant was deleted".to_owned())),
            Some(tenant) if tenant.state != TenantState::Active => {
                (RolloutStepState::Skipped, Some(format!("the tenant is {}", tenant.state)))
            }
            Some(tenant) => {
                let artifact = rollout.artifact.as_deref();
                let moved = self
                    .apps
                    .move_to(
                        operator,
                        &tenant,
                        &rollout.app,
                        &rollout.version,
                        artifact,
                        rollout.id,
                    )
                    .await;
                match moved {
                    Ok(Move::Started(generation)) => {
                        step.generation = Some(generation);
                        step.moving_since = Some(self.clock.now());
                        (RolloutStepState::Moving, None)
                    }
                    Ok(Move::Skipped(why)) => (RolloutStepState::Skipped, Some(why)),
                    Ok(Move::Later(why)) => {
                        tracing::warn!(tenant = %tenant.name, reason = %why, "a rollout's move waits for its next look");
                        return Ok(());
                    }
                    Err(reason) => (RolloutStepState::Failed, Some(reason)),
                }
            }
        };
        step.state = state;
        step.reason = reason;
        Ok(())
    }

    /// Where a moving tenant stands: moved once its new spec is live,
    /// failed once the runtime sent it back (or no verdict came in time),
    /// skipped when the tenant or its app stopped running or someone
    /// deployed it again meanwhile.
    async fn settle(
        &self,
        rollout: &Rollout,
        step: &RolloutStep,
    ) -> Result<Option<(RolloutStepState, Option<String>)>> {
        let skipped = |why: String| Ok(Some((RolloutStepState::Skipped, Some(why))));
        match self.store.tenant_by_id(step.tenant_id).await?.map(|t| t.state) {
            Some(TenantState::Active) => {}
            Some(state) => {
                return skipped(format!(
                    "the tenant became {state} during its switch, which goes on when it is active"
                ));
            }
            None => return skipped("the tenant was deleted".to_owned()),
        }
        let Some(record) = self.store.app(step.tenant_id, &rollout.app).await? else {
            return skipped("the app was deleted during its switch".to_owned());
        };
        if !record.running {
            return skipped("the app was stopped during its switch".to_owned());
        }
        let Ok((spec, live)) = spec_and_live(&record) else {
            return Ok(Some((
                RolloutStepState::Failed,
                Some("its stored spec is unreadable".to_owned()),
            )));
        };
        let ours = step.generation.as_deref().unwrap_or_default();
        if generation(&spec) != ours {
            // A revert keeps the spec it sent back as `previous`: the store
            // says so even after a restart emptied the runtime's reasons.
            let sent_back = record
                .previous
                .as_deref()
                .and_then(|p| decode_spec(p).ok())
                .is_some_and(|p| generation(&p) == ours)
                && !switching(&spec, &live);
            if !sent_back {
                return skipped("its app was deployed again during the rollout".to_owned());
            }
            let reason = self
                .runtime
                .as_ref()
                .and_then(|r| r.revert_reason(step.tenant_id, &rollout.app, ours))
                .unwrap_or_else(|| "its new workers did not pass; it went back".to_owned());
            return Ok(Some((RolloutStepState::Failed, Some(reason))));
        }
        if generation(&live) == ours {
            return Ok(Some((RolloutStepState::Moved, None)));
        }
        // The runtime decides within the health check's window and 30 s;
        // past twice the window and two minutes, something keeps it from it.
        let window =
            spec.health.as_ref().map_or(0, |h| h.interval_ms.saturating_mul(u64::from(h.failures)));
        let patience = time::Duration::milliseconds(
            i64::try_from(window.saturating_mul(2).saturating_add(120_000)).unwrap_or(i64::MAX),
        );
        let late = step.moving_since.is_some_and(|since| self.clock.now() - since > patience);
        // Sent back here, unless the runtime decided meanwhile (read again
        // at the next look).
        if late
            && self
                .store
                .revert_app(step.tenant_id, &rollout.app, &record.spec, self.clock.now())
                .await?
        {
            return Ok(Some((
                RolloutStepState::Failed,
                Some(format!("no verdict on its new workers within {}s", patience.whole_seconds())),
            )));
        }
        Ok(None)
    }

    async fn load(&self, id: Uuid) -> Result<Option<Rollout>> {
        self.store.rollout(id).await?.as_ref().map(decode).transpose()
    }

    async fn save(&self, rollout: &Rollout) -> Result<()> {
        let body = serde_json::to_string(rollout)
            .map_err(|e| RolloutError::Corrupt(rollout.id, e.to_string()))?;
        self.store
            .put_rollout(&RolloutRecord {
                id: rollout.id,
                app: rollout.app.clone(),
                // Aborted with tenants still switching: followed until they
                // settle (`unfinished_rollouts`).
                state: if rollout.state == RolloutState::Aborted
                    && rollout.count(RolloutStepState::Moving) > 0
                {
                    "aborting".to_owned()
                } else {
                    rollout.state.as_str().to_owned()
                },
                body,
                created_at: rollout.created_at,
                updated_at: rollout.updated_at,
            })
            .await?;
        Ok(())
    }

    async fn note(&self, actor: &Actor, rollout: &Rollout, action: &str) {
        let details = json!({
            "rollout": rollout.id,
            "app": rollout.app,
            "version": rollout.version,
            "moved": rollout.count(RolloutStepState::Moved),
            "failed": rollout.count(RolloutStepState::Failed),
            "pending": rollout.count(RolloutStepState::Pending),
        });
        let failed =
            rollout.state == RolloutState::Halted || rollout.count(RolloutStepState::Failed) > 0;
        let outcome = if failed { "failed" } else { "ok" };
        self.events.record_platform(actor, action, outcome, details).await;
    }
}

/// How an operator steers a rollout under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    Pause,
    Resume,
    Abort,
}

impl Steer {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Abort => "abort",
        }
    }
}

fn decode(record: &RolloutRecord) -> Result<Rollout> {
    serde_json::from_str(&record.body).map_err(|e| RolloutError::Corrupt(record.id, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::batch_size;

    #[test]
    fn batches_are_counts_or_shares_of_at_least_one() {
        assert_eq!(batch_size("10", 3).unwrap(), 10);
        assert_eq!(batch_size("25%", 10).unwrap(), 3);
        assert_eq!(batch_size("1%", 3).unwrap(), 1);
        assert_eq!(batch_size("100%", 0).unwrap(), 1);
        for bad in ["0", "0%", "101%", "-1", "ten", "", "%"] {
            assert!(batch_size(bad, 10).is_err(), "{bad}");
        }
    }
}
