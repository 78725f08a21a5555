//! `bulkhead migrate`: an application's schema migrations rolled across
//! every tenant database, as a job the control plane records and runs.
//!
//! A job is recorded with its files and one target per database (a
//! tenant's SQLite file or silo database, or a region's pool once for all
//! its pool tenants), canaries first. It runs in the server, not in the
//! CLI that asked for it, so a closed terminal does not stop it; a server
//! that stops (or is killed) resumes its running job when it starts again:
//! each database records the versions it took in the same transaction as
//! the files, so a target that was running is simply looked at again.
//!
//! Canaries run first; the rest only if every canary passed. Up to
//! `concurrency` databases migrate at once, and no new one starts once
//! `halt_after` have failed. Each tenant's audit stream records its
//! database's migration (a pool's, for each of its tenants).

use std::{path::PathBuf, sync::Arc};

use bulkhead_model::{DatabaseLocation, Isolation, Regions, Tenant, TenantId, TenantState};
use bulkhead_store::{ControlStore, MigrationJobRecord, MigrationTargetRecord, StoreError};
use bulkhead_tenantdb::{
    RegionServers,
    migrate::{self, Migration, Migrations, Mode, Outcome},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::{sync::watch, task::JoinSet};
use uuid::Uuid;

use crate::{
    clock::Clock,
    events::{Actor, EventLog},
};

/// Most databases migrated at once.
pub const MAX_CONCURRENCY: u32 = 64;

/// How many of the targets go first, as canaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canary {
    Count(u32),
    /// Rounded up, so that any share of a non-empty job is at least one.
    Percent(u32),
}

impl Canary {
    /// `N` or `N%`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("canary {text:?}: give a number of databases (2) or a share (10%)");
        match text.trim().strip_suffix('%') {
            Some(share) => match share.trim().parse() {
                Ok(p) if p <= 100 => Ok(Canary::Percent(p)),
                _ => Err(bad()),
            },
            None => text.trim().parse().map(Canary::Count).map_err(|_| bad()),
        }
    }

    fn of(self, targets: usize) -> usize {
        match self {
            Canary::Count(n) => (n as usize).min(targets),
            Canary::Percent(p) => (targets * p as usize).div_ceil(100),
        }
    }
}

/// What `bulkhead migrate` asks for.
#[derive(Debug, Clone)]
pub struct MigrationRequest {
    /// `(file name, text)`.
    pub files: Vec<(String, String)>,
    /// Only these tenants (a pool tenant brings its region's pool); every
    /// tenant with a database when empty.
    pub tenants: Vec<String>,
    pub canary: Canary,
    pub concurrency: u32,
    pub halt_after: u32,
    pub dry_run: bool,
}

/// A job's files and options, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobSpec {
    pub migrations: Migrations,
    pub concurrency: u32,
    pub halt_after: u32,
    pub dry_run: bool,
    /// It covered every tenant (no `--tenant`): once it succeeds, its files
    /// are every database's schema, and new tenants' databases take them.
    #[serde(default)]
    pub every_tenant: bool,
}

/// A job and its targets, as recorded.
#[derive(Debug, Clone)]
pub struct JobReport {
    pub job: MigrationJobRecord,
    pub spec: JobSpec,
    pub targets: Vec<MigrationTargetRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("{0}")]
    Invalid(String),
    #[error("no tenant named {0:?}")]
    UnknownTenant(String),
    #[error(
        "migration job {0} is running; follow it with `bulkhead migrate status {0}` and start \
         the next when it ends"
    )]
    Running(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Target states, as recorded.
mod state {
    pub const PENDING: &str = "pending";
    pub const RUNNING: &str = "running";
    pub const MIGRATED: &str = "migrated";
    pub const CURRENT: &str = "current";
    pub const PLANNED: &str = "planned";
    pub const FAILED: &str = "failed";
    pub const SKIPPED: &str = "skipped";
}

/// Job states, as recorded.
mod job_state {
    pub const RUNNING: &str = "running";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
    pub const HALTED: &str = "halted";
}

#[derive(Debug)]
pub struct MigrationService {
    store: Arc<dyn ControlStore>,
    servers: RegionServers,
    regions: Regions,
    tenants_dir: PathBuf,
    clock: Arc<dyn Clock>,
    events: EventLog,
    shutdown: watch::Receiver<bool>,
}

impl MigrationService {
    pub fn new(
        store: Arc<dyn ControlStore>,
        servers: RegionServers,
        regions: Regions,
        tenants_dir: PathBuf,
        clock: Arc<dyn Clock>,
        events: EventLog,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self { store, servers, regions, tenants_dir, clock, events, shutdown }
    }

    /// Records a job for `request` and starts it.
    pub async fn start(
        self: &Arc<Self>,
        actor: &Actor,
        request: MigrationRequest,
    ) -> Result<JobReport, MigrationError> {
        let migrations = request
            .files
            .into_iter()
            .map(|(file, sql)| Migration::parse(&file, sql))
            .collect::<Result<Vec<_>, _>>()
            .and_then(Migrations::new)
            .map_err(MigrationError::Invalid)?;
        if !(1..=MAX_CONCURRENCY).contains(&request.concurrency) {
            return Err(MigrationError::Invalid(format!(
                "concurrency {}: give 1 to {MAX_CONCURRENCY}",
                request.concurrency
            )));
        }
        if request.halt_after == 0 {
            return Err(MigrationError::Invalid(
                "halt-after 0 would start nothing: give 1 or more".into(),
            ));
        }
        if let Some(running) = self.running().await? {
            return Err(MigrationError::Running(running));
        }
        let tenants = self.tenants_in_scope(&request.tenants).await?;
        let id = Uuid::new_v4();
        let mut targets = self.targets(id, &tenants);
        if targets.is_empty() {
            return Err(MigrationError::Invalid(
                "no tenant database to migrate: no active or suspended tenant in scope".into(),
            ));
        }
        let canaries = if request.dry_run { 0 } else { request.canary.of(targets.len()) };
        for target in targets.iter_mut().take(canaries) {
            target.canary = true;
        }
        let spec = JobSpec {
            migrations,
            concurrency: request.concurrency,
            halt_after: request.halt_after,
            dry_run: request.dry_run,
            every_tenant: request.tenants.is_empty(),
        };
        let job = MigrationJobRecord {
            id,
            created_at: self.clock.now(),
            created_by: actor.to_string(),
            state: job_state::RUNNING.into(),
            spec: serde_json::to_string(&spec)
                .map_err(|e| MigrationError::Invalid(format!("cannot record the job: {e}")))?,
            finished_at: None,
        };
        match self.store.insert_migration_job(&job, &targets).await {
            Err(StoreError::Duplicate(_)) => {
                let running = self.running().await?.unwrap_or(id);
                return Err(MigrationError::Running(running));
            }
            other => other?,
        }
        let files: Vec<_> = spec
            .migrations
            .all()
            .iter()
            .map(|m| json!({ "file": m.file, "checksum": m.checksum }))
            .collect();
        self.events
            .record_platform(
                actor,
                "migration.start",
                "ok",
                json!({ "job": id, "files": files, "databases": targets.len(),
                        "canaries": canaries, "dry_run": spec.dry_run }),
            )
            .await;
        self.spawn(job.clone(), spec.clone());
        Ok(JobReport { job, spec, targets })
    }

    /// Resumes the job a stopped server left running, if any.
    pub async fn resume(self: &Arc<Self>) -> Result<(), StoreError> {
        for job in self.store.migration_jobs(20).await? {
            if job.state != job_state::RUNNING {
                continue;
            }
            match serde_json::from_str::<JobSpec>(&job.spec) {
                Ok(spec) => {
                    tracing::info!(job = %job.id, "resuming a migration job");
                    self.spawn(job, spec);
                }
                Err(error) => {
                    tracing::error!(job = %job.id, %error, "cannot read a migration job; it is marked failed");
                    self.store
                        .finish_migration_job(job.id, job_state::FAILED, self.clock.now())
                        .await?;
                }
            }
        }
        Ok(())
    }

    pub async fn job(&self, id: Uuid) -> Result<Option<JobReport>, MigrationError> {
        let Some(job) = self.store.migration_job(id).await? else { return Ok(None) };
        let spec = serde_json::from_str(&job.spec)
            .map_err(|e| StoreError::Corrupt(format!("migration job {id}: {e}")))?;
        let targets = self.store.migration_targets(id).await?;
        Ok(Some(JobReport { job, spec, targets }))
    }

    /// The latest jobs, newest first.
    pub async fn jobs(&self, limit: u32) -> Result<Vec<JobReport>, MigrationError> {
        let mut reports = Vec::new();
        for job in self.store.migration_jobs(limit).await? {
            if let Some(report) = self.job(job.id).await? {
                reports.push(report);
            }
        }
        Ok(reports)
    }

    async fn running(&self) -> Result<Option<Uuid>, StoreError> {
        Ok(self
            .store
            .migration_jobs(20)
            .await?
            .into_iter()
            .find(|job| job.state == job_state::RUNNING)
            .map(|job| job.id))
    }

    async fn tenants_in_scope(&self, names: &[String]) -> Result<Vec<Tenant>, MigrationError> {
        let served = |t: &Tenant| matches!(t.state, TenantState::Active | TenantState::Suspended);
        if names.is_empty() {
            let mut all: Vec<Tenant> =
                self.store.all_tenants().await?.into_iter().filter(served).collect();
            all.sort_by(|a, b| a.name.as_str().cmp(b.name.as_str()));
            return Ok(all);
        }
        let mut tenants = Vec::new();
        for name in names {
            let tenant = self
                .store
                .tenant_named(name)
                .await?
                .ok_or_else(|| MigrationError::UnknownTenant(name.clone()))?;
            if !served(&tenant) {
                return Err(MigrationError::Invalid(format!(
                    "tenant {name} is {}: only active and suspended tenants have a database to \
                     migrate",
                    tenant.state
                )));
            }
            if !tenants.iter().any(|t: &Tenant| t.id == tenant.id) {
                tenants.push(tenant);
            }
        }
        Ok(tenants)
    }

    /// One target per tenant database, in the tenants' order, then one per
    /// region pool its pool tenants share.
    fn targets(&self, job: Uuid, tenants: &[Tenant]) -> Vec<MigrationTargetRecord> {
        let target = |tenant: Option<&Tenant>, region: &str, label: String| MigrationTargetRecord {
            job_id: job,
            position: 0,
            tenant_id: tenant.map(|t| t.id.0),
            region: region.to_owned(),
            label,
            canary: false,
            state: state::PENDING.into(),
            from_version: None,
            to_version: None,
            detail: None,
            finished_at: None,
        };
        let mut targets: Vec<MigrationTargetRecord> = tenants
            .iter()
            .filter(|t| t.isolation == Isolation::Silo)
            .map(|t| target(Some(t), t.region.as_str(), t.name.to_string()))
            .collect();
        let mut pools: Vec<&str> = tenants
            .iter()
            .filter(|t| t.isolation == Isolation::Pool)
            .map(|t| t.region.as_str())
            .collect();
        pools.sort_unstable();
        pools.dedup();
        targets.extend(pools.into_iter().map(|region| target(None, region, "pool".into())));
        for (position, target) in targets.iter_mut().enumerate() {
            target.position = i64::try_from(position).unwrap_or(i64::MAX);
        }
        targets
    }

    fn spawn(self: &Arc<Self>, job: MigrationJobRecord, spec: JobSpec) {
        let service = Arc::clone(self);
        tokio::spawn(async move {
            let id = job.id;
            if let Err(error) = service.run(job, spec).await {
                // Left `running`: the next start of the server resumes it.
                tracing::error!(job = %id, %error, "migration job stopped");
            }
        });
    }

    /// Runs the job's unfinished targets, canaries first.
    async fn run(
        self: &Arc<Self>,
        job: MigrationJobRecord,
        spec: JobSpec,
    ) -> Result<(), StoreError> {
        let actor = actor_of(&job.created_by);
        let spec = Arc::new(spec);
        let targets = self.store.migration_targets(job.id).await?;
        let unfinished =
            |t: &&MigrationTargetRecord| t.state == state::PENDING || t.state == state::RUNNING;
        let mut failures = targets.iter().filter(|t| t.state == state::FAILED).count() as u32;
        let canaries: Vec<_> =
            targets.iter().filter(|t| t.canary).filter(unfinished).cloned().collect();
        let rest: Vec<_> =
            targets.iter().filter(|t| !t.canary).filter(unfinished).cloned().collect();
        let canaries_failed = targets.iter().any(|t| t.canary && t.state == state::FAILED);
        let mut halted = None;
        if canaries_failed {
            halted = Some("a canary failed".to_owned());
        } else {
            failures += self.run_targets(job.id, &spec, &actor, canaries, u32::MAX).await?;
            if failures > 0 {
                halted = Some("a canary failed".to_owned());
            }
        }
        if halted.is_none() {
            let before = failures;
            failures += self
                .run_targets(job.id, &spec, &actor, rest, spec.halt_after.saturating_sub(before))
                .await?;
            if !spec.dry_run && failures >= spec.halt_after {
                halted = Some(format!("halted after {failures} failed"));
            }
        }
        if *self.shutdown.borrow() {
            return Ok(());
        }
        // What never started is skipped, with why; what started and has
        // no outcome (its task panicked) failed.
        let mut skipped = 0;
        for mut target in self.store.migration_targets(job.id).await? {
            if target.state == state::PENDING {
                skipped += 1;
                target.state = state::SKIPPED.into();
                target.detail = Some(halted.clone().unwrap_or_else(|| "not started".into()));
            } else if target.state == state::RUNNING {
                failures += 1;
                target.state = state::FAILED.into();
                target.detail =
                    Some("stopped without an outcome: the server's log says why".into());
            } else {
                continue;
            }
            target.finished_at = Some(self.clock.now());
            self.store.update_migration_target(&target).await?;
        }
        // Halted only if it left something unstarted.
        let end = match (skipped, failures) {
            (0, 0) => job_state::SUCCEEDED,
            (0, _) => job_state::FAILED,
            _ => job_state::HALTED,
        };
        self.store.finish_migration_job(job.id, end, self.clock.now()).await?;
        self.events
            .record_platform(
                &actor,
                "migration.finish",
                if end == job_state::SUCCEEDED { "ok" } else { "failed" },
                json!({ "job": job.id, "state": end, "failed": failures }),
            )
            .await;
        Ok(())
    }

    /// Migrates `targets`, `spec.concurrency` at a time, starting no new
    /// one after `halt_after` failures (or on shutdown); returns how many
    /// failed.
    async fn run_targets(
        self: &Arc<Self>,
        job: Uuid,
        spec: &Arc<JobSpec>,
        actor: &Actor,
        targets: Vec<MigrationTargetRecord>,
        halt_after: u32,
    ) -> Result<u32, StoreError> {
        let mut queue = targets.into_iter();
        let mut running = JoinSet::new();
        let mut failures = 0;
        let mut shutdown = self.shutdown.clone();
        loop {
            let stopping = *shutdown.borrow() || (!spec.dry_run && failures >= halt_after);
            while !stopping && running.len() < spec.concurrency as usize {
                let Some(mut target) = queue.next() else { break };
                target.state = state::RUNNING.into();
                self.store.update_migration_target(&target).await?;
                // The task records its own outcome, so a slow store or
                // audit write holds up no other database.
                let (service, spec, actor) = (Arc::clone(self), Arc::clone(spec), actor.clone());
                running
                    .spawn(async move { service.migrate_target(job, &spec, &actor, target).await });
            }
            if running.is_empty() {
                return Ok(failures);
            }
            let finished = tokio::select! {
                finished = running.join_next() => finished,
                _ = shutdown.wait_for(|stop| *stop) => {
                    // In-flight transactions roll back when their
                    // connections drop; the next start looks again.
                    running.abort_all();
                    return Ok(failures);
                }
            };
            match finished {
                Some(Ok(Ok(failed))) => failures += u32::from(failed),
                Some(Ok(Err(error))) => return Err(error),
                Some(Err(error)) => {
                    tracing::error!(job = %job, %error, "a migration task ended without an outcome");
                }
                None => {}
            }
        }
    }

    /// Migrates one target and records how it went (its record, and the
    /// audit events); `true` when it failed.
    async fn migrate_target(
        &self,
        job: Uuid,
        spec: &JobSpec,
        actor: &Actor,
        mut target: MigrationTargetRecord,
    ) -> Result<bool, StoreError> {
        let result = self.work(job, spec, &target).await;
        target.finished_at = Some(self.clock.now());
        let failed = result.is_err();
        match result {
            Ok(Work::Done(outcome)) => {
                target.from_version = Some(i64::from(outcome.from));
                target.to_version = Some(i64::from(outcome.to));
                target.state = if outcome.files.is_empty() {
                    state::CURRENT
                } else if spec.dry_run {
                    state::PLANNED
                } else {
                    state::MIGRATED
                }
                .into();
                target.detail = (!outcome.files.is_empty()).then(|| outcome.files.join(", "));
            }
            Ok(Work::Gone(why)) => {
                target.state = state::SKIPPED.into();
                target.detail = Some(why);
            }
            Err(error) => {
                target.state = state::FAILED.into();
                target.detail = Some(error);
            }
        }
        self.store.update_migration_target(&target).await?;
        if !spec.dry_run {
            self.audit(actor, job, &target).await?;
        }
        Ok(failed)
    }

    /// The migration of one target's database.
    async fn work(
        &self,
        job: Uuid,
        spec: &JobSpec,
        target: &MigrationTargetRecord,
    ) -> Result<Work, String> {
        let mode = if spec.dry_run { Mode::Plan } else { Mode::Apply { job } };
        let region = self.regions.get(&target.region).map_err(|e| e.to_string())?;
        let (servers, migrations) = (&self.servers, &spec.migrations);
        let outcome: Result<Outcome, _> = match (target.tenant_id, &region.databases) {
            (None, DatabaseLocation::Postgres(url)) => {
                migrate::pool(servers, region, url, migrations, mode).await
            }
            (None, DatabaseLocation::Embedded) => {
                return Err(format!("region {} keeps no pool", region.name));
            }
            (Some(id), databases) => {
                let tenant =
                    self.store.tenant_by_id(TenantId(id)).await.map_err(|e| e.to_string())?;
                let Some(tenant) = tenant
                    .filter(|t| matches!(t.state, TenantState::Active | TenantState::Suspended))
                else {
                    return Ok(Work::Gone("the tenant has no database any more".into()));
                };
                match databases {
                    DatabaseLocation::Embedded => {
                        let dir = self.tenants_dir.join(tenant.name.as_str());
                        migrate::sqlite(&dir, migrations, mode).await
                    }
                    DatabaseLocation::Postgres(url) => {
                        let now = self.clock.now();
                        migrate::silo(servers, region, url, &tenant, migrations, mode, now).await
                    }
                }
            }
        };
        outcome.map(Work::Done).map_err(|e| e.to_string())
    }

    /// Records a finished target on the streams of the tenants whose data
    /// it holds.
    async fn audit(
        &self,
        actor: &Actor,
        job: Uuid,
        target: &MigrationTargetRecord,
    ) -> Result<(), StoreError> {
        let (action, outcome) = match target.state.as_str() {
            state::MIGRATED => ("database.migrate", "ok"),
            state::FAILED => ("database.migrate", "failed"),
            _ => return Ok(()),
        };
        let tenants: Vec<Tenant> = match target.tenant_id {
            Some(id) => self.store.tenant_by_id(TenantId(id)).await?.into_iter().collect(),
            None => self
                .store
                .all_tenants()
                .await?
                .into_iter()
                .filter(|t| t.isolation == Isolation::Pool && t.region.as_str() == target.region)
                .collect(),
        };
        let details = json!({
            "job": job,
            "database": if target.tenant_id.is_some() { "tenant" } else { "pool" },
            "from_version": target.from_version,
            "to_version": target.to_version,
            "files": target.detail.as_deref().filter(|_| outcome == "ok"),
            "error": target.detail.as_deref().filter(|_| outcome != "ok"),
        });
        for tenant in &tenants {
            self.events.record(actor, tenant, action, outcome, details.clone()).await;
        }
        Ok(())
    }
}

enum Work {
    Done(Outcome),
    /// The tenant went away (deleted) after the job was recorded.
    Gone(String),
}

/// The actor a job was started by, from its record (`operator:<name>`).
fn actor_of(created_by: &str) -> Actor {
    match created_by.strip_prefix("operator:") {
        Some(name) => Actor::Operator(name.to_owned()),
        None => Actor::Scheduler,
    }
}

/// The files every tenant database has: those of the latest job that
/// covered every tenant and succeeded (not a dry run), with its id.
pub async fn current_schema(
    store: &dyn ControlStore,
) -> Result<Option<(Uuid, Migrations)>, StoreError> {
    for job in store.migration_jobs(100).await? {
        if job.state != job_state::SUCCEEDED {
            continue;
        }
        let spec: JobSpec = serde_json::from_str(&job.spec)
            .map_err(|e| StoreError::Corrupt(format!("migration job {}: {e}", job.id)))?;
        if spec.every_tenant && !spec.dry_run {
            return Ok(Some((job.id, spec.migrations)));
        }
    }
    Ok(None)
}
