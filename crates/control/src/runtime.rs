//! The runtime in the control plane: turns each tenant's stored apps into
//! the supervisor's workers and keeps the two in step. What should run is
//! the store (apps marked running, of active tenants); a loop converges the
//! workers to it every few seconds and at once after a change, so a tenant
//! suspended, offboarded or deleted loses its workers without any other
//! code having to remember to stop them. Worker events go to the tenant's
//! audit stream.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use bulkhead_model::{AppSpec, PlanCatalog, Tenant, TenantId, TenantState};
use bulkhead_runtime::{
    cgroup::CgroupLimits,
    forward::{EgressPolicy, Target},
    health::HealthProbe,
    logs::Rotation,
    spec::{Bind, LayerSwitches, SandboxLimits, SandboxSpec, SecretFile},
    supervisor::{
        EventKind, Layers, RestartPolicy, Supervisor, SupervisorConfig, WorkerSpec, WorkerState,
    },
};
use bulkhead_store::{AppRecord, ControlStore, Lease};
use bulkhead_tenantdb::verify::{Finding, Severity};
use bulkhead_vault::{SecretPath, Vault};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};
use zeroize::Zeroizing;

use crate::{
    clock::Clock,
    config::RuntimeSettings,
    credentials::{Access, Credentials, DatabaseServer},
    events::{Actor, EventLog},
};

/// How often the workers are compared with the store when nothing changed.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
/// How often while an app switches to a new spec: the switch waits for the
/// new workers' first passed health check.
const SWITCH_CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long the old workers keep running after the switch, for the gateway
/// to route to the new ones (it hears of the switch within milliseconds)
/// and for requests under way to finish.
const DRAIN: Duration = Duration::from_secs(2);
/// A new spec's worker without a health check passes once it has run this
/// long without ending.
const MIN_UPTIME: Duration = Duration::from_secs(2);
/// How long a new spec has to pass, beyond its health check's own window.
const SWITCH_DEADLINE: Duration = Duration::from_secs(30);
/// How long after a start that failed before the worker ran (a secret
/// unreadable, a directory unwritable) it is tried again.
const RETRY_FAILED_START: Duration = Duration::from_secs(60);
/// The port of the egress proxy inside each worker's network.
pub const EGRESS_PORT: u16 = 3128;
/// The tenant's apps' SQLite database, in its data directory.
const APP_DATABASE: &str = "tenant.db";
/// The port of the relay to the tenant's PostgreSQL server inside each
/// worker's network.
pub const DATABASE_PORT: u16 = 5432;
/// The secret file that holds a worker's database URL (its lease).
pub const DATABASE_URL_FILE: &str = "bulkhead-database-url";
/// `issued_by` of a worker's lease: this, then the worker's key.
pub const LEASE_HOLDER: &str = "runtime:";
/// How often the workers' leases are renewed or, for workers gone, revoked.
const KEEP_LEASES_EVERY: Duration = Duration::from_secs(5);
/// A lease is renewed once half its life has passed, or when this little
/// is left, whichever comes first: passes may be late behind a slow
/// `reconcile`.
const RENEW_BEFORE: Duration = Duration::from_secs(20);
/// The size of each worker's private `/tmp`.
const TMP_BYTES: u64 = 64 << 20;
const OPEN_FILES: u64 = 4096;

/// What a worker is given as its database.
enum AppDatabase {
    /// `$BULKHEAD_DATABASE_URL`: the tenant's SQLite file.
    File(String),
    /// A lease's URL, as a secret file, and the relay it goes through.
    Lease { id: uuid::Uuid, url: Zeroizing<String>, forward: Option<(u16, Target)> },
}

/// One worker the runtime runs, and the spec it runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Running {
    tenant: TenantId,
    app: String,
    index: u32,
    /// Its spec's generation: changes when anything it was started with
    /// changes.
    generation: String,
    /// Its start failed before the worker ran: when to try again.
    retry_at: Option<std::time::Instant>,
    /// The database lease it was given (tenants on PostgreSQL).
    lease: Option<uuid::Uuid>,
}

#[derive(Debug)]
pub struct Runtime {
    supervisor: Supervisor,
    store: Arc<dyn ControlStore>,
    vault: Arc<Vault>,
    credentials: Arc<Credentials>,
    clock: Arc<dyn Clock>,
    events: EventLog,
    plans: PlanCatalog,
    tenants_dir: PathBuf,
    settings: RuntimeSettings,
    /// `runtime:<instance>:`, the start of `issued_by` of this server's
    /// workers' leases: another server's (on the same store) are never
    /// this one's to renew or revoke.
    lease_holder: String,
    running: Mutex<HashMap<String, Running>>,
    /// Apps switching to a new spec: (tenant, app, generation) → since when.
    switching: Mutex<HashMap<(TenantId, String, String), std::time::Instant>>,
    /// Workers of the spec an app switched away from → when they stop.
    retiring: Mutex<HashMap<String, std::time::Instant>>,
    /// Why each app's last switch was reverted (and the generation it
    /// left), for the rollout that asked.
    reverts: Mutex<HashMap<(TenantId, String), (String, String)>>,
    changed: Notify,
    /// Told of every switch and revert, so a rollout looks at once.
    settled: Notify,
}

/// An app whose stored spec is not yet live.
struct Switch {
    tenant: Tenant,
    record: AppRecord,
    spec: AppSpec,
    live: AppSpec,
    /// The spec's.
    generation: String,
}

enum Verdict {
    Pass,
    Wait,
    Fail(String),
}

/// A worker as `apps get` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerView {
    pub index: u32,
    #[serde(flatten)]
    pub state: WorkerState,
}

impl Runtime {
    pub async fn start(
        settings: RuntimeSettings,
        data_dir: &Path,
        store: Arc<dyn ControlStore>,
        vault: Arc<Vault>,
        credentials: Arc<Credentials>,
        clock: Arc<dyn Clock>,
        events: EventLog,
    ) -> Result<Arc<Self>, String> {
        let instance = hex(&Sha256::digest(data_dir.display().to_string().as_bytes())[..4]);
        let now_clock = Arc::clone(&clock);
        let lease_holder = format!("{LEASE_HOLDER}{instance}:");
        let supervisor = Supervisor::start(SupervisorConfig {
            helper: settings.helper.clone(),
            instance,
            sandbox_root: data_dir.join("runtime").join("root"),
            now: Arc::new(move || now_clock.now()),
        })
        .await?;
        Ok(Arc::new(Self {
            supervisor,
            store,
            vault,
            credentials,
            clock,
            events,
            plans: PlanCatalog::builtin(),
            tenants_dir: data_dir.join("tenants"),
            settings,
            lease_holder,
            running: Mutex::default(),
            switching: Mutex::default(),
            retiring: Mutex::default(),
            reverts: Mutex::default(),
            changed: Notify::new(),
            settled: Notify::new(),
        }))
    }

    pub fn layers(&self) -> &Layers {
        self.supervisor.layers()
    }

    /// The app's artifact directory, which must be under the configured
    /// `[runtime] artifacts` (after resolving links): an app names no other
    /// place on the server, and learns nothing about one.
    pub fn artifact(&self, artifact: &str) -> Result<PathBuf, String> {
        let root = &self.settings.artifacts;
        let refused = || {
            format!(
                "{artifact} is not a directory under {} (the server's [runtime] artifacts, where the operator puts apps' files)",
                root.display()
            )
        };
        let path = Path::new(artifact);
        if !path.starts_with(root) {
            return Err(refused());
        }
        let real = std::fs::canonicalize(path).map_err(|_| refused())?;
        let real_root = std::fs::canonicalize(root).map_err(|_| refused())?;
        if !real.starts_with(&real_root) || !real.is_dir() {
            return Err(refused());
        }
        Ok(real)
    }

    fn remember(&self, key: &str, running: Running) {
        if let Ok(mut map) = self.running.lock() {
            map.insert(key.to_owned(), running);
        }
    }

    /// Forgets the app's workers that were given up (a crash loop, a start
    /// that failed), so the next convergence starts them afresh: what
    /// `apps start` and a deploy do. Workers that run are left alone.
    pub fn retry_failed(&self, tenant: &Tenant, app: &str) {
        if let Ok(mut running) = self.running.lock() {
            running.retain(|key, w| {
                let given_up = w.retry_at.is_some()
                    || matches!(self.supervisor.state(key), Some(WorkerState::Failed { .. }));
                !(w.tenant == tenant.id && w.app == app && given_up)
            });
        }
        self.changed();
    }

    /// Why the app's switch to the spec of `generation` was reverted, if it
    /// was the last one reverted.
    pub fn revert_reason(&self, tenant: TenantId, app: &str, generation: &str) -> Option<String> {
        let reverts = self.reverts.lock().ok()?;
        let (reverted, reason) = reverts.get(&(tenant, app.to_owned()))?;
        (reverted == generation).then(|| reason.clone())
    }

    /// Stops every worker of a tenant that is leaving (no longer active,
    /// so the next convergence would stop them too) and waits until they
    /// have: what they wrote is then whole for its final snapshot. Returns
    /// how many it stopped.
    pub async fn stop_tenant(&self, tenant: TenantId) -> usize {
        let keys: Vec<String> = self
            .running
            .lock()
            .map(|r| r.iter().filter(|(_, w)| w.tenant == tenant).map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        let keys: Vec<&String> = keys.iter().collect();
        self.stop_workers(&keys).await.into_iter().filter(|stopped| *stopped).count()
    }

    /// Stops these workers together (each may take its grace period) and
    /// forgets them; says of each whether it was running.
    async fn stop_workers(&self, keys: &[&String]) -> Vec<bool> {
        let grace = RestartPolicy::default().grace;
        let stopped =
            futures_util::future::join_all(keys.iter().map(|key| self.supervisor.stop(key, grace)))
                .await;
        if let Ok(mut running) = self.running.lock() {
            keys.iter().for_each(|key| {
                running.remove(*key);
            });
        }
        stopped
    }

    /// Resolves at the next switch or revert of any app.
    pub async fn settled(&self) {
        self.settled.notified().await;
    }

    /// Converges now rather than at the next tick.
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    /// Runs until `stopping`: converges, keeps the workers' leases,
    /// relays events, then stops every worker on the way out and revokes
    /// their leases.
    pub async fn run(self: Arc<Self>, mut stopping: watch::Receiver<bool>) {
        let relay = tokio::spawn(Arc::clone(&self).relay_events());
        let mut leases_kept: Option<std::time::Instant> = None;
        loop {
            let next = match self.reconcile().await {
                Ok(true) => SWITCH_CHECK_EVERY,
                Ok(false) => RECONCILE_EVERY,
                Err(error) => {
                    tracing::warn!(%error, "the runtime could not compare its workers with the store");
                    RECONCILE_EVERY
                }
            };
            // After `reconcile`, never during it: a lease it just issued
            // belongs to a worker it has already recorded.
            if leases_kept.is_none_or(|at| at.elapsed() >= KEEP_LEASES_EVERY) {
                self.keep_leases(false).await;
                leases_kept = Some(std::time::Instant::now());
            }
            tokio::select! {
                _ = stopping.wait_for(|stop| *stop) => break,
                () = self.changed.notified() => {}
                () = tokio::time::sleep(next) => {}
            }
        }
        self.supervisor.shutdown(RestartPolicy::default().grace).await;
        self.keep_leases(true).await;
        relay.abort();
    }

    /// Starts what should run and is not (or runs an older spec), stops
    /// what runs and should not, and judges each app switching to a new
    /// spec: its new workers run beside the live ones until they pass (the
    /// switch) or fail (the revert). `true` while a switch is under way.
    pub async fn reconcile(&self) -> Result<bool, String> {
        let records = self.store.all_apps().await.map_err(|e| e.to_string())?;
        let mut tenants: HashMap<TenantId, Option<Tenant>> = HashMap::new();
        let mut desired: BTreeMap<String, (Tenant, AppSpec, u32)> = BTreeMap::new();
        let mut switches = Vec::new();
        for record in records.into_iter().filter(|r| r.running) {
            let tenant = match tenants.get(&record.tenant_id) {
                Some(t) => t.clone(),
                None => {
                    let t = self
                        .store
                        .tenant_by_id(record.tenant_id)
                        .await
                        .map_err(|e| e.to_string())?;
                    tenants.insert(record.tenant_id, t.clone());
                    t
                }
            };
            let Some(tenant) = tenant.filter(|t| t.state == TenantState::Active) else { continue };
            let (spec, live) = match crate::apps::spec_and_live(&record) {
                Ok(specs) => specs,
                Err(error) => {
                    // Not run rather than run wrongly; said, never silent
                    // (a stored spec a newer server's validation refuses).
                    tracing::warn!(tenant = %tenant.name, app = %record.name, %error, "an app's stored spec does not validate; it is not run until it is deployed again");
                    continue;
                }
            };
            for serving in [&spec, &live] {
                let generation = crate::apps::generation(serving);
                for index in 0..serving.workers {
                    desired.insert(
                        worker_key(&tenant, serving.name.as_str(), index, &generation),
                        (tenant.clone(), serving.clone(), index),
                    );
                }
            }
            if crate::apps::switching(&spec, &live) {
                let generation = crate::apps::generation(&spec);
                switches.push(Switch { tenant, record, spec, live, generation });
            }
        }
        let now = std::time::Instant::now();
        let retiring: Vec<String> = self
            .retiring
            .lock()
            .map(|mut r| {
                r.retain(|_, until| *until > now);
                r.keys().cloned().collect()
            })
            .unwrap_or_default();
        let current: HashMap<String, Running> =
            self.running.lock().map(|r| r.clone()).unwrap_or_default();
        // Stopped together: each may take its grace period.
        let leaving: Vec<(&String, &Running)> = current
            .iter()
            .filter(|(k, _)| !desired.contains_key(*k) && !retiring.contains(k))
            .collect();
        let keys: Vec<&String> = leaving.iter().map(|(key, _)| *key).collect();
        let stopped = self.stop_workers(&keys).await;
        for ((_, worker), stopped) in leaving.into_iter().zip(stopped) {
            // Recorded here rather than from the supervisor's event: the
            // worker leaves the table as it stops.
            if stopped && let Ok(Some(tenant)) = self.store.tenant_by_id(worker.tenant).await {
                let details = json!({ "app": worker.app, "worker": worker.index });
                self.note(&tenant, "app.worker.stop", "ok", details).await;
            }
        }
        // Started together too: a start stops the worker's old spec first,
        // which may take its grace period.
        let starting: Vec<(String, (Tenant, AppSpec, u32))> = desired
            .into_iter()
            .filter(|(key, (_, spec, _))| match current.get(key) {
                None => true,
                Some(running) => {
                    running.generation != crate::apps::generation(spec)
                        || running.retry_at.is_some_and(|at| at <= now)
                }
            })
            .collect();
        let starts = starting.iter().map(|(key, (tenant, spec, index))| async move {
            let mut running = Running {
                tenant: tenant.id,
                app: spec.name.to_string(),
                index: *index,
                generation: crate::apps::generation(spec),
                retry_at: None,
                lease: None,
            };
            match self.worker(tenant, spec, *index, key).await {
                Ok((worker, lease)) => {
                    running.lease = lease;
                    // In the table before it starts: its first event
                    // (`app.worker.start`) is looked up there.
                    self.remember(key, running.clone());
                    self.supervisor.run(worker).await;
                }
                Err(reason) => {
                    // Tried again a minute later (a vault or disk hiccup
                    // passes), recorded each time.
                    running.retry_at = Some(std::time::Instant::now() + RETRY_FAILED_START);
                    self.remember(key, running);
                    let details = json!({ "app": spec.name, "worker": index, "reason": reason });
                    self.note(tenant, "app.worker.fail", "failed", details).await;
                }
            }
        });
        futures_util::future::join_all(starts).await;
        let under_way = !switches.is_empty() || !retiring.is_empty();
        // A switch given up (the app redeployed, stopped or deleted, its
        // tenant suspended) starts its clock again if it comes back.
        let judged: std::collections::HashSet<(TenantId, String, String)> = switches
            .iter()
            .map(|s| (s.tenant.id, s.spec.name.to_string(), s.generation.clone()))
            .collect();
        if let Ok(mut switching) = self.switching.lock() {
            switching.retain(|key, _| judged.contains(key));
        }
        for switch in switches {
            self.judge(switch).await?;
        }
        Ok(under_way)
    }

    /// Switches the app to its new spec once every new worker passes, or
    /// reverts it to the live one when one fails or time runs out.
    async fn judge(&self, switch: Switch) -> Result<(), String> {
        let Switch { tenant, record, spec, live, generation } = switch;
        let app = spec.name.to_string();
        let now = std::time::Instant::now();
        let since = self
            .switching
            .lock()
            .map(|mut s| *s.entry((tenant.id, app.clone(), generation.clone())).or_insert(now))
            .unwrap_or(now);
        let window = spec.health.as_ref().map_or(Duration::ZERO, |h| {
            Duration::from_millis(h.interval_ms.saturating_mul(u64::from(h.failures)))
        });
        let states: Vec<Option<WorkerState>> = (0..spec.workers)
            .map(|i| self.supervisor.state(&worker_key(&tenant, &app, i, &generation)))
            .collect();
        let verdict = match judge_workers(&states, spec.health.is_some(), self.clock.now()) {
            Verdict::Wait if now.duration_since(since) > window + SWITCH_DEADLINE => {
                Verdict::Fail(format!(
                    "its workers did not pass their health check within {}s",
                    (window + SWITCH_DEADLINE).as_secs()
                ))
            }
            verdict => verdict,
        };
        let at = self.clock.now();
        let details = json!({ "app": app, "version": spec.version, "from_version": live.version });
        match verdict {
            Verdict::Wait => return Ok(()),
            Verdict::Pass => {
                if self
                    .store
                    .promote_app(tenant.id, &app, &record.spec, at)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    let until = std::time::Instant::now() + DRAIN;
                    let old = crate::apps::generation(&live);
                    if let Ok(mut retiring) = self.retiring.lock() {
                        for i in 0..live.workers {
                            retiring.insert(worker_key(&tenant, &app, i, &old), until);
                        }
                    }
                    if let Ok(mut reverts) = self.reverts.lock() {
                        reverts.remove(&(tenant.id, app.clone()));
                    }
                    self.note(&tenant, "app.switch", "ok", details).await;
                    self.settled.notify_waiters();
                }
            }
            Verdict::Fail(reason) => {
                if self
                    .store
                    .revert_app(tenant.id, &app, &record.spec, at)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    if let Ok(mut reverts) = self.reverts.lock() {
                        reverts
                            .insert((tenant.id, app.clone()), (generation.clone(), reason.clone()));
                    }
                    self.note(
                        &tenant,
                        "app.revert",
                        "failed",
                        with(details, "reason", json!(reason)),
                    )
                    .await;
                    self.settled.notify_waiters();
                    self.changed();
                }
            }
        }
        // Its clock goes with it at the next convergence (`reconcile`).
        Ok(())
    }

    /// The app's workers and their states; one not started yet is
    /// `starting` if the app should run.
    pub fn workers(&self, tenant: &Tenant, spec: &AppSpec, running: bool) -> Vec<WorkerView> {
        let generation = crate::apps::generation(spec);
        (0..spec.workers)
            .map(|index| WorkerView {
                index,
                state: self
                    .supervisor
                    .state(&worker_key(tenant, spec.name.as_str(), index, &generation))
                    .unwrap_or(if running { WorkerState::Starting } else { WorkerState::Stopped }),
            })
            .collect()
    }

    /// Writes the tenant's flags file anew and tells its running workers
    /// (SIGHUP) to read it again.
    pub async fn flags_changed(&self, tenant: &Tenant) {
        if let Err(error) = self.write_flags(tenant).await {
            tracing::warn!(tenant = %tenant.name, %error, "cannot write the tenant's flags file");
            return;
        }
        let keys: Vec<String> = self
            .running
            .lock()
            .map(|r| {
                r.iter().filter(|(_, w)| w.tenant == tenant.id).map(|(k, _)| k.clone()).collect()
            })
            .unwrap_or_default();
        for key in keys {
            self.supervisor.signal(&key, libc::SIGHUP).await;
        }
    }

    /// `<tenant>/config/flags.json`, replaced whole (a reader sees the old
    /// file or the new one, never half of one); returns its directory.
    async fn write_flags(&self, tenant: &Tenant) -> Result<PathBuf, String> {
        let flags: BTreeMap<String, String> =
            self.store.flags(tenant.id).await.map_err(|e| e.to_string())?.into_iter().collect();
        let dir = owned_dir(
            &self.tenants_dir.join(tenant.name.as_str()),
            "config",
            nix::unistd::geteuid().as_raw(),
            0o755,
        )?;
        let json = serde_json::to_vec_pretty(&flags).map_err(|e| e.to_string())?;
        // Its own temporary name: two writers never rename each other's
        // half-written file into place.
        let temporary = dir.join(format!(".flags.json.{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&temporary, json)
            .and_then(|()| {
                std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o644))
            })
            .and_then(|()| std::fs::rename(&temporary, dir.join("flags.json")))
            .map_err(|e| format!("cannot write {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// What `bulkhead verify isolation` finds wrong with the tenant's app
    /// directories: `data` and `run` must be real directories of the
    /// tenant's user alone (0700), `logs` the server's, written by no one
    /// else.
    pub async fn directory_findings(&self, tenant: &Tenant) -> Vec<Finding> {
        let Ok(Some((_, uid))) = self
            .store
            .runtime_users()
            .await
            .map(|users| users.into_iter().find(|(t, _)| *t == tenant.id))
        else {
            return Vec::new();
        };
        let dir = self.tenants_dir.join(tenant.name.as_str());
        let mut findings = Vec::new();
        for (name, owner, mode) in [("data", uid, 0o700), ("run", uid, 0o700), ("logs", 0, 0o750)] {
            let path = dir.join(name);
            let problem = match std::fs::symlink_metadata(&path) {
                Err(_) => continue,
                Ok(meta) if !meta.file_type().is_dir() => Some("is not a directory".to_owned()),
                Ok(meta) if meta.uid() != owner => {
                    Some(format!("is owned by user {}, not {owner}", meta.uid()))
                }
                Ok(meta) if meta.mode() & 0o7777 & !mode != 0 => {
                    Some(format!("has mode {:o}, more open than {mode:o}", meta.mode() & 0o7777))
                }
                Ok(_) => None,
            };
            if let Some(problem) = problem {
                findings.push(Finding::new(
                    Severity::Critical,
                    "runtime.dir",
                    path.display().to_string(),
                    format!("tenant {}'s {name} directory {problem}", tenant.name),
                    format!("chown {owner} and chmod {mode:o} it (the runtime does at each start)"),
                ));
            }
        }
        findings
    }

    /// The log file of one of the app's workers.
    pub fn log_path(&self, tenant: &Tenant, app: &str, index: u32) -> PathBuf {
        self.tenants_dir
            .join(tenant.name.as_str())
            .join("logs")
            .join(format!("{}.log", worker_name(tenant, app, index)))
    }

    async fn worker(
        &self,
        tenant: &Tenant,
        spec: &AppSpec,
        index: u32,
        key: &str,
    ) -> Result<(WorkerSpec, Option<uuid::Uuid>), String> {
        // Without root every worker is the server's own user (the missing
        // layer is said at start-up and by `verify isolation`).
        let uid = if self.layers().switches().user {
            let (first, last) = self.settings.uids;
            self.store
                .runtime_user(tenant.id, first, last, self.clock.now())
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!("every Unix user of the runtime's range {first}-{last} is taken; widen [runtime] uids")
                })?
        } else {
            nix::unistd::geteuid().as_raw()
        };
        let plan = self.plans.get(tenant.plan.as_str()).map_err(|e| e.to_string())?;
        let limits = spec.limits.within(&plan.runtime).map_err(|e| e.to_string())?;
        let tenant_dir = self.tenants_dir.join(tenant.name.as_str());
        let data = owned_dir(&tenant_dir, "data", uid, 0o700)?;
        let run = owned_dir(&tenant_dir, "run", uid, 0o700)?;
        let socket_name = crate::apps::socket_name(spec, index);
        let socket_on_host = run.join(&socket_name);
        let server = nix::unistd::geteuid().as_raw();
        let logs = owned_dir(&tenant_dir, "logs", server, 0o750)?;
        let config = self.write_flags(tenant).await?;
        let mut binds = vec![
            Bind { host: data.clone(), at: "/data".into(), writable: true },
            Bind { host: run, at: "/run/app".into(), writable: true },
            Bind { host: config, at: "/run/config".into(), writable: false },
        ];
        if let Some(artifact) = &spec.artifact {
            binds.push(Bind { host: self.artifact(artifact)?, at: "/app".into(), writable: false });
        }
        let mut env: Vec<(String, String)> =
            spec.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let socket = format!("/run/app/{socket_name}");
        env.extend([
            ("BULKHEAD_TENANT".to_owned(), tenant.name.to_string()),
            ("BULKHEAD_APP".to_owned(), spec.name.to_string()),
            ("BULKHEAD_VERSION".to_owned(), spec.version.clone()),
            ("BULKHEAD_WORKER".to_owned(), index.to_string()),
            ("BULKHEAD_SOCKET".to_owned(), socket),
            ("BULKHEAD_DATA_DIR".to_owned(), "/data".to_owned()),
            ("BULKHEAD_SECRETS_DIR".to_owned(), bulkhead_runtime::spec::paths::SECRETS.to_owned()),
            ("BULKHEAD_FLAGS".to_owned(), "/run/config/flags.json".to_owned()),
            ("HOME".to_owned(), "/data".to_owned()),
            ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ]);
        let mut forwards = Vec::new();
        if !spec.egress.is_empty() {
            let policy = EgressPolicy::parse(&spec.egress)?;
            forwards.push((EGRESS_PORT, Target::Egress(policy)));
            let proxy = format!("http://127.0.0.1:{EGRESS_PORT}");
            env.extend([
                ("HTTPS_PROXY".to_owned(), proxy.clone()),
                ("https_proxy".to_owned(), proxy),
            ]);
        }
        let mut secrets = self.secrets(tenant, spec).await?;
        let (program, args) = spec.command.split_first().ok_or("the app has no command")?;
        // Last: nothing after it fails and leaves a lease without a worker.
        // Either is read by `bulkhead_access::Source::from_env`.
        let mut lease = None;
        match self.database(tenant, &data, uid, key).await? {
            AppDatabase::File(url) => env.push(("BULKHEAD_DATABASE_URL".to_owned(), url)),
            AppDatabase::Lease { id, url, forward } => {
                lease = Some(id);
                secrets.push(SecretFile { name: DATABASE_URL_FILE.to_owned(), value: url });
                let file =
                    format!("{}/{DATABASE_URL_FILE}", bulkhead_runtime::spec::paths::SECRETS);
                env.push(("BULKHEAD_DATABASE_URL_FILE".to_owned(), file));
                forwards.extend(forward);
            }
        }
        let worker = WorkerSpec {
            key: key.to_owned(),
            log_name: worker_name(tenant, spec.name.as_str(), index),
            sandbox: SandboxSpec {
                name: key.to_owned(),
                hostname: worker_name(tenant, spec.name.as_str(), index),
                uid,
                gid: uid,
                command: program.into(),
                args: args.to_vec(),
                env,
                cwd: "/data".into(),
                root: PathBuf::new(),
                binds,
                secrets,
                limits: SandboxLimits {
                    open_files: OPEN_FILES,
                    tmp_bytes: TMP_BYTES,
                    processes: None,
                },
                layers: LayerSwitches::ALL,
                connect_ports: forwards.iter().map(|(port, _)| *port).collect(),
            },
            limits: CgroupLimits {
                memory_bytes: u64::from(limits.memory_mib) << 20,
                cpu_millis: Some(limits.cpu_millicores),
                cpu_weight: 100,
                pids: u64::from(limits.max_processes),
            },
            forwards,
            log_dir: logs,
            log_rotation: Rotation {
                max_bytes: self.settings.log_max_bytes,
                keep: self.settings.log_keep,
            },
            restart: RestartPolicy::default(),
            health: spec.health.as_ref().map(|h| HealthProbe {
                socket: socket_on_host.clone(),
                uid,
                path: h.path.clone(),
                interval: Duration::from_millis(h.interval_ms),
                timeout: Duration::from_millis(h.timeout_ms),
                failures: h.failures,
            }),
            stale: vec![socket_on_host],
        };
        Ok((worker, lease))
    }

    /// Where the tenant's apps keep their data. In a region of embedded
    /// databases: the SQLite file `/data/tenant.db`, in the tenant's own
    /// data directory, shared by its apps and made here (empty, the
    /// tenant's user's, 0600) if it is missing. Made without following a
    /// link the tenant's workers may have planted there, and never opened
    /// by the server, so nothing a worker puts in that directory reaches
    /// beyond it. On PostgreSQL: a write lease of the worker's own
    /// ([`Runtime::lease`]).
    async fn database(
        &self,
        tenant: &Tenant,
        data: &Path,
        uid: u32,
        key: &str,
    ) -> Result<AppDatabase, String> {
        if let Some(server) = self.credentials.server(tenant).map_err(|e| e.to_string())? {
            return self.lease(tenant, key, server).await;
        }
        let file = data.join(APP_DATABASE);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&file)
        {
            Ok(made) => std::os::unix::fs::fchown(&made, Some(uid), Some(uid))
                .map_err(|e| format!("cannot give {} to the tenant's user: {e}", file.display()))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot make {}: {e}", file.display())),
        }
        Ok(AppDatabase::File(format!("sqlite:/data/{APP_DATABASE}")))
    }

    /// A write lease for the worker `key`, recorded as a disclosure on the
    /// tenant's stream, held by that worker alone: renewed while it runs,
    /// revoked when it stops ([`Runtime::keep_leases`]). Leases an earlier
    /// worker of the same key held (a start that failed, the server's last
    /// run) are revoked first: that worker runs no more. With its own
    /// network, the worker reaches the server through the relay on
    /// `127.0.0.1:5432`, which lets only this lease's role log in, and
    /// only to the tenant's database; without one, at the server's own
    /// address.
    async fn lease(
        &self,
        tenant: &Tenant,
        key: &str,
        server: DatabaseServer,
    ) -> Result<AppDatabase, String> {
        let holder = format!("{}{key}", self.lease_holder);
        for old in self.store.leases_issued_by(&holder).await.map_err(|e| e.to_string())? {
            if old.issued_by == holder {
                self.revoke_lease(tenant, &old, "its worker was started again").await;
            }
        }
        let issued = self
            .credentials
            .issue(
                tenant,
                Access::Write,
                self.lease_ttl(tenant),
                crate::credentials::sessions(&self.plans, tenant),
                &holder,
                self.clock.now(),
            )
            .await
            .map_err(|e| format!("cannot issue the worker's database lease: {e}"))?;
        let lease = &issued.lease;
        let details = json!({
            "lease": lease.id, "role": lease.role, "access": lease.access,
            "expires_at": lease.expires_at.unix_timestamp(), "worker": key,
        });
        if let Err(error) = self
            .events
            .record_disclosure(&Actor::Runtime, Some(tenant), "credential.issue", details)
            .await
        {
            // Never handed out unrecorded.
            if let Err(revoke) = self.credentials.revoke(lease, self.clock.now()).await {
                tracing::warn!(lease = %lease.id, error = %revoke, "cannot revoke an unrecorded lease; the sweeper retries");
            }
            return Err(error.to_string());
        }
        if !self.layers().switches().network {
            return Ok(AppDatabase::Lease { id: lease.id, url: issued.url, forward: None });
        }
        let url = issued.url_at(&format!("127.0.0.1:{DATABASE_PORT}"));
        let target = Target::Postgres {
            to: server.0,
            roles: vec![lease.role.clone()],
            databases: vec![lease.database.clone()],
        };
        Ok(AppDatabase::Lease { id: lease.id, url, forward: Some((DATABASE_PORT, target)) })
    }

    /// The configured lease life, within the tenant's plan's.
    fn lease_ttl(&self, tenant: &Tenant) -> Duration {
        let most = self.plans.get(tenant.plan.as_str()).map_or(self.settings.database_lease, |p| {
            Duration::from_secs(p.vault.max_credential_ttl_secs)
        });
        self.settings.database_lease.min(most)
    }

    /// Renews the leases of workers that run, once half their life has
    /// passed; revokes this server's leases that no running worker holds
    /// (stopped, given up, or every one with `all`, at shutdown); and has
    /// a worker whose lease is gone (revoked by an operator, expired while
    /// the server was busy) started again, with a new one. Each renewal
    /// and revocation is recorded; one that fails is retried at the next
    /// pass.
    async fn keep_leases(&self, all: bool) {
        let leases = match self.store.leases_issued_by(&self.lease_holder).await {
            Ok(leases) => leases,
            Err(error) => {
                tracing::warn!(%error, "cannot read the workers' database leases");
                return;
            }
        };
        let held: HashMap<uuid::Uuid, String> = if all {
            HashMap::new()
        } else {
            let running = self.running.lock().map(|r| r.clone()).unwrap_or_default();
            running
                .into_iter()
                .filter(|(key, w)| {
                    w.retry_at.is_none()
                        && self
                            .supervisor
                            .state(key)
                            .is_some_and(|s| !matches!(s, WorkerState::Failed { .. }))
                })
                .filter_map(|(key, w)| w.lease.map(|id| (id, key)))
                .collect()
        };
        let mut lost: Vec<&String> = held
            .iter()
            .filter(|(id, _)| !leases.iter().any(|l| l.id == **id))
            .map(|(_, k)| k)
            .collect();
        for lease in &leases {
            let Ok(Some(tenant)) = self.store.tenant_by_id(lease.tenant_id).await else { continue };
            let Some(key) = held.get(&lease.id) else {
                self.revoke_lease(&tenant, lease, "its worker stopped").await;
                continue;
            };
            let ttl = self.lease_ttl(&tenant);
            let now = self.clock.now();
            if lease.expires_at - now > (ttl / 2).max(RENEW_BEFORE) {
                continue;
            }
            let details = json!({ "lease": lease.id, "role": lease.role, "worker": key });
            match self.credentials.renew(lease, ttl, now).await {
                Ok(until) => {
                    let details = with(details, "expires_at", json!(until.unix_timestamp()));
                    self.note(&tenant, "credential.renew", "ok", details).await;
                }
                Err(error) => {
                    // The reason may name the region's server: the log's,
                    // not the tenant's stream's.
                    tracing::warn!(lease = %lease.id, %error, "cannot renew a worker's database lease");
                    self.note(&tenant, "credential.renew", "failed", details).await;
                    if lease.expires_at <= now + KEEP_LEASES_EVERY {
                        lost.push(key);
                    }
                }
            }
        }
        for key in lost {
            // Forgotten, the worker is started again at the next
            // convergence (its old process stopped first), with a new lease.
            let Some(worker) = self.running.lock().ok().and_then(|mut r| r.remove(key)) else {
                continue;
            };
            tracing::warn!(worker = %key, "a worker's database lease is gone; starting it again with a new one");
            if let Ok(Some(tenant)) = self.store.tenant_by_id(worker.tenant).await {
                let details = json!({
                    "app": worker.app, "worker": worker.index,
                    "reason": "its database lease was revoked or expired; started again with a new one",
                });
                self.note(&tenant, "app.worker.exit", "restarting", details).await;
            }
            self.changed();
        }
    }

    async fn revoke_lease(&self, tenant: &Tenant, lease: &Lease, why: &str) {
        let details = json!({ "lease": lease.id, "role": lease.role, "reason": why });
        match self.credentials.revoke(lease, self.clock.now()).await {
            Ok(true) => self.note(tenant, "credential.revoke", "ok", details).await,
            Ok(false) => {}
            Err(error) => {
                // Its role can no longer log in; the sweeper drops it later.
                tracing::warn!(lease = %lease.id, %error, "cannot revoke a worker's database lease");
            }
        }
    }

    /// The app's secrets from the tenant's vault, each recorded on the
    /// tenant's stream before it is handed to the worker.
    async fn secrets(&self, tenant: &Tenant, spec: &AppSpec) -> Result<Vec<SecretFile>, String> {
        let mut files = Vec::new();
        for secret in &spec.secrets {
            let path = SecretPath::parse(&secret.path).map_err(|e| e.to_string())?;
            let stored = self
                .vault
                .get(tenant.id, &path, None)
                .await
                .map_err(|e| format!("secret {}: {e}", secret.path))?;
            let value = String::from_utf8(stored.value.to_vec()).map_err(|_| {
                format!("secret {} is not UTF-8 text; a secret file holds text", secret.path)
            })?;
            let details = json!({ "path": secret.path, "version": stored.version, "app": spec.name, "file": secret.file_name() });
            self.events
                .record_disclosure(&Actor::Runtime, Some(tenant), "secret.deliver", details)
                .await
                .map_err(|e| e.to_string())?;
            files.push(SecretFile { name: secret.file_name().to_owned(), value: value.into() });
        }
        Ok(files)
    }

    async fn relay_events(self: Arc<Self>) {
        let mut events = self.supervisor.subscribe();
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let Some(running) = self.running.lock().ok().and_then(|r| r.get(&event.key).cloned())
            else {
                continue;
            };
            let Ok(Some(tenant)) = self.store.tenant_by_id(running.tenant).await else { continue };
            let base = json!({ "app": running.app, "worker": running.index });
            let (action, outcome, details) = match event.kind {
                EventKind::Started { pid } => {
                    ("app.worker.start", "ok", with(base, "pid", json!(pid)))
                }
                EventKind::Exited { reason } => {
                    ("app.worker.exit", "restarting", with(base, "reason", json!(reason)))
                }
                EventKind::Failed { reason } => {
                    ("app.worker.fail", "failed", with(base, "reason", json!(reason)))
                }
                // Recorded by `reconcile`, which stopped it.
                EventKind::Stopped => continue,
            };
            self.note(&tenant, action, outcome, details).await;
        }
    }

    async fn note(&self, tenant: &Tenant, action: &str, outcome: &str, details: serde_json::Value) {
        self.events.record(&Actor::Runtime, tenant, action, outcome, details).await;
    }
}

fn with(mut value: serde_json::Value, key: &str, extra: serde_json::Value) -> serde_json::Value {
    if let Some(map) = value.as_object_mut() {
        map.insert(key.to_owned(), extra);
    }
    value
}

/// `t<tenant id's first 16 hex>-<app>-<index>`: unique per server (64
/// bits of a random id), short enough for a hostname (at most 61 bytes).
/// Names the worker's sandbox (its hostname) and its log, which outlive
/// the app's versions.
fn worker_name(tenant: &Tenant, app: &str, index: u32) -> String {
    format!("t{}-{app}-{index}", &tenant.id.0.simple().to_string()[..16])
}

/// The worker's name and its spec's generation: while an app switches, the
/// workers of both specs run side by side under their own keys.
fn worker_key(tenant: &Tenant, app: &str, index: u32, generation: &str) -> String {
    format!("{}.{generation}", worker_name(tenant, app, index))
}

/// Whether the new workers all pass: each running, never restarted, and
/// past its first health check (or, without one, up for a while).
fn judge_workers(
    states: &[Option<WorkerState>],
    checked: bool,
    now: time::OffsetDateTime,
) -> Verdict {
    let mut pass = true;
    for (index, state) in states.iter().enumerate() {
        match state {
            Some(WorkerState::Running { restarts, since, healthy, .. }) => {
                if *restarts > 0 {
                    return Verdict::Fail(format!("worker {index} ended after it started"));
                }
                let up = now - *since >= MIN_UPTIME;
                pass &= if checked { *healthy == Some(true) } else { up };
            }
            Some(WorkerState::Backoff { last_exit, .. }) => {
                return Verdict::Fail(format!("worker {index} {last_exit}"));
            }
            Some(WorkerState::Failed { reason }) => {
                return Verdict::Fail(format!("worker {index}: {reason}"));
            }
            Some(WorkerState::Starting | WorkerState::Stopped) | None => pass = false,
        }
    }
    if pass { Verdict::Pass } else { Verdict::Wait }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `parent/name`, a real directory (never a link a worker planted) owned by
/// `uid` with `mode`.
fn owned_dir(parent: &Path, name: &str, uid: u32, mode: u32) -> Result<PathBuf, String> {
    let path = parent.join(name);
    let fail = |e: io::Error| format!("cannot prepare {}: {e}", path.display());
    match std::fs::symlink_metadata(&path) {
        Ok(meta) if meta.file_type().is_dir() => {
            if meta.uid() != uid {
                nix::unistd::chown(&path, Some(uid.into()), Some(uid.into()))
                    .map_err(|e| fail(e.into()))?;
            }
            if meta.mode() & 0o7777 != mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(fail)?;
            }
        }
        Ok(_) => return Err(format!("{} is not a directory; move it away", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().mode(mode).create(&path).map_err(fail)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
            nix::unistd::chown(&path, Some(uid.into()), Some(uid.into()))
                .map_err(|e| fail(e.into()))?;
        }
        Err(e) => return Err(fail(e)),
    }
    Ok(path)
}

/// Whether `record` is one the runtime would run (used by the service to
/// tell the caller what will happen).
pub fn runs(record: &AppRecord, tenant: &Tenant) -> bool {
    record.running && tenant.state == TenantState::Active
}
