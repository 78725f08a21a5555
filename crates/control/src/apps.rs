//! A tenant's apps: deployed, started, stopped, deleted and read here, each
//! change on the tenant's audit stream; the runtime ([`crate::runtime`])
//! runs what the store says. No HTTP here.

use std::{collections::BTreeMap, io::BufRead, path::Path, sync::Arc};

use bulkhead_identity::Permission;
use bulkhead_model::{AppSpec, InvalidApp, PlanCatalog, Tenant, TenantState};
use bulkhead_store::{AppRecord, ControlStore, StoreError};
use bulkhead_vault::SecretPath;
use serde::Serialize;
use serde_json::json;
use thiserror::Error;
use time::OffsetDateTime;

use crate::{
    clock::Clock,
    events::{Actor, EventLog},
    runtime::{Runtime, WorkerView},
};

/// How often a read-modify-write of an app is tried again after another
/// writer changed it in between.
const RETRIES: u32 = 5;

/// What a rollout's move did to one tenant's app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Move {
    /// Its new spec (of this generation) is stored; the runtime switches
    /// to it once it passes.
    Started(String),
    Skipped(String),
    /// Not now (the store did not answer, or the app kept changing): the
    /// step is tried again at the rollout's next look.
    Later(String),
}

/// Apps one tenant may have.
pub const MAX_APPS_PER_TENANT: usize = 20;

#[derive(Debug, Error)]
pub enum AppsError {
    #[error("tenant {0:?} does not exist")]
    TenantNotFound(String),
    #[error("your roles in tenant {0:?} do not allow this")]
    Forbidden(String),
    #[error("app {name:?}: {error}")]
    Invalid { name: String, error: InvalidApp },
    #[error(
        "tenant {tenant:?} has no app named {name:?}; `bulkhead apps list --tenant {tenant}` shows its apps"
    )]
    NotFound { tenant: String, name: String },
    #[error(
        "tenant {tenant:?} has {MAX_APPS_PER_TENANT} apps, as many as a tenant may; delete one it no longer needs"
    )]
    TooMany { tenant: String },
    #[error("tenant {tenant:?} is {state}; apps run only for active tenants")]
    NotActive { tenant: String, state: String },
    #[error(
        "this server runs no apps: it was started without the runtime (it needs the `bulkhead` \
         binary as its sandbox helper)"
    )]
    NoRuntime,
    #[error("the stored app {name:?} of tenant {tenant:?} is unreadable: {error}")]
    Corrupt { tenant: String, name: String, error: String },
    #[error("flags: {0}")]
    InvalidFlags(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Flags one tenant may have.
pub const MAX_FLAGS_PER_TENANT: usize = 256;

crate::tenants::from_unreachable!(AppsError);

type Result<T, E = AppsError> = std::result::Result<T, E>;

/// An app as `apps get` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AppView {
    pub spec: AppSpec,
    /// Whether it should run (`apps stop` clears it).
    pub running: bool,
    /// Kept out of rollouts.
    pub pinned: bool,
    /// The version it replaced, if any.
    pub previous_version: Option<String>,
    /// The version the gateway routes to. While the app switches to `spec`
    /// it is the old one, until `spec`'s workers pass their health check.
    pub live_version: String,
    /// Each live worker's state, as the runtime sees it now.
    #[schema(value_type = Vec<Object>)]
    pub workers: Vec<WorkerView>,
    /// While the app switches: the new spec's workers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub new_workers: Vec<WorkerView>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// The generation of an app's spec: 8 hex digits of its hash. It names
/// the spec's workers and sockets, so that a new spec's workers run beside
/// the live ones until the switch.
pub fn generation(spec: &AppSpec) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(serde_json::to_vec(spec).unwrap_or_default());
    hash[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// The file name of a worker's socket in the tenant's `run` directory.
pub fn socket_name(spec: &AppSpec, index: u32) -> String {
    format!("{}-{}-{index}.sock", spec.name, generation(spec))
}

/// The app's stored spec and its live one (the spec itself when none is
/// recorded), read back through the model's validation.
pub fn spec_and_live(record: &AppRecord) -> Result<(AppSpec, AppSpec), String> {
    let spec = decode_spec(&record.spec)?;
    let live = match &record.live {
        Some(live) => decode_spec(live)?,
        None => spec.clone(),
    };
    Ok((spec, live))
}

/// Whether the app runs `live` while its workers of `spec` come up.
pub fn switching(spec: &AppSpec, live: &AppSpec) -> bool {
    generation(spec) != generation(live)
}

/// Reads a stored spec back through the model's validation.
pub fn decode_spec(spec: &str) -> Result<AppSpec, String> {
    serde_json::from_str::<AppSpec>(spec)
        .map_err(|e| e.to_string())
        .and_then(|s| s.validate().map_err(|e| e.to_string()))
}

#[derive(Debug)]
pub struct AppService {
    store: Arc<dyn ControlStore>,
    clock: Arc<dyn Clock>,
    events: EventLog,
    plans: PlanCatalog,
    vault: Arc<bulkhead_vault::Vault>,
    runtime: Option<Arc<Runtime>>,
}

impl AppService {
    pub fn new(
        store: Arc<dyn ControlStore>,
        clock: Arc<dyn Clock>,
        events: EventLog,
        vault: Arc<bulkhead_vault::Vault>,
        runtime: Option<Arc<Runtime>>,
    ) -> Self {
        Self { store, clock, events, plans: PlanCatalog::builtin(), vault, runtime }
    }

    async fn tenant(&self, actor: &Actor, name: &str, permission: Permission) -> Result<Tenant> {
        Ok(crate::tenants::reachable(&*self.store, actor, name, permission).await?)
    }

    async fn record(&self, tenant: &Tenant, name: &str) -> Result<AppRecord> {
        self.store.app(tenant.id, name).await?.ok_or_else(|| AppsError::NotFound {
            tenant: tenant.name.to_string(),
            name: name.to_owned(),
        })
    }

    fn view(&self, tenant: &Tenant, record: &AppRecord) -> Result<AppView> {
        let corrupt = |error: String| AppsError::Corrupt {
            tenant: tenant.name.to_string(),
            name: record.name.clone(),
            error,
        };
        let (spec, live) = spec_and_live(record).map_err(corrupt)?;
        let previous_version = match &record.previous {
            Some(previous) => Some(decode_spec(previous).map_err(corrupt)?.version),
            None => None,
        };
        let runs = crate::runtime::runs(record, tenant);
        let (workers, new_workers) = match &self.runtime {
            Some(r) if switching(&spec, &live) => {
                (r.workers(tenant, &live, runs), r.workers(tenant, &spec, runs))
            }
            Some(r) => (r.workers(tenant, &spec, runs), Vec::new()),
            None => (Vec::new(), Vec::new()),
        };
        Ok(AppView {
            spec,
            running: record.running,
            pinned: record.pinned,
            previous_version,
            live_version: live.version,
            workers,
            new_workers,
            updated_at: record.updated_at,
        })
    }

    /// Deploys `spec`: creates the app, or replaces its spec (keeping the
    /// one it replaces as `previous`). The app is marked running. An app
    /// that runs keeps its live spec until the new one's workers pass their
    /// health check (the runtime's switch), so its requests never stop.
    pub async fn deploy(
        &self,
        actor: &Actor,
        tenant_name: &str,
        spec: AppSpec,
    ) -> Result<(AppView, bool)> {
        if self.runtime.is_none() {
            return Err(AppsError::NoRuntime);
        }
        let tenant = self.tenant(actor, tenant_name, Permission::Manage).await?;
        if tenant.state != TenantState::Active {
            return Err(AppsError::NotActive {
                tenant: tenant_name.to_owned(),
                state: tenant.state.to_string(),
            });
        }
        let name = spec.name.to_string();
        let invalid = |error: InvalidApp| AppsError::Invalid { name: name.clone(), error };
        let spec = spec.validate().map_err(invalid)?;
        self.check_deployable(&tenant, &spec).await.map_err(invalid)?;
        let json = serde_json::to_string(&spec).map_err(|e| AppsError::Corrupt {
            tenant: tenant_name.to_owned(),
            name: name.clone(),
            error: e.to_string(),
        })?;
        let mut attempts = 0;
        let (record, created) = loop {
            let existing = self.store.apps(tenant.id).await?;
            let current = existing.iter().find(|a| a.name == name);
            if current.is_none() && existing.len() >= MAX_APPS_PER_TENANT {
                return Err(AppsError::TooMany { tenant: tenant_name.to_owned() });
            }
            match self.put_spec(&tenant, current, &spec, json.clone()).await {
                Err(AppsError::Store(StoreError::VersionConflict)) if attempts < RETRIES => {
                    attempts += 1;
                }
                written => break (written?, current.is_none()),
            }
        };
        let details = json!({
            "name": name,
            "version": spec.version,
            "workers": spec.workers,
            "previous_version": record.previous.as_deref().and_then(|p| decode_spec(p).ok()).map(|p| p.version),
        });
        self.events.record(actor, &tenant, "app.deploy", "ok", details).await;
        if let Some(runtime) = &self.runtime {
            runtime.retry_failed(&tenant, &name);
        }
        Ok((self.view(&tenant, &record)?, created))
    }

    /// Stores `json` as the app's spec, running. Its live spec stays while
    /// the app has workers serving it (the runtime switches once the new
    /// ones pass); otherwise nothing serves and the new spec is live at once.
    async fn put_spec(
        &self,
        tenant: &Tenant,
        current: Option<&AppRecord>,
        spec: &AppSpec,
        json: String,
    ) -> Result<AppRecord> {
        let now = self.clock.now();
        let serving = current.filter(|c| crate::runtime::runs(c, tenant));
        let record = AppRecord {
            tenant_id: tenant.id,
            name: spec.name.to_string(),
            previous: match current {
                Some(c) if c.spec != json => Some(c.spec.clone()),
                Some(c) => c.previous.clone(),
                None => None,
            },
            live: Some(match serving {
                Some(c) => c.live.clone().unwrap_or_else(|| c.spec.clone()),
                None => json.clone(),
            }),
            spec: json,
            revision: current.map_or(0, |c| c.revision),
            running: true,
            pinned: current.is_some_and(|c| c.pinned),
            created_at: current.map_or(now, |c| c.created_at),
            updated_at: now,
        };
        self.store.put_app(&record).await?;
        Ok(AppRecord { revision: record.revision + 1, ..record })
    }

    /// Reads the app, lets `change` change it (`false`: nothing to change)
    /// and stores it; again when another writer (the runtime's switch, a
    /// rollout, a deploy) changed it in between, so no write is lost.
    async fn update(
        &self,
        tenant: &Tenant,
        name: &str,
        change: impl Fn(&mut AppRecord) -> bool,
    ) -> Result<(AppRecord, bool)> {
        let mut attempts = 0;
        loop {
            let mut record = self.record(tenant, name).await?;
            if !change(&mut record) {
                return Ok((record, false));
            }
            record.updated_at = self.clock.now();
            match self.store.put_app(&record).await {
                Err(StoreError::VersionConflict) if attempts < RETRIES => attempts += 1,
                Err(e) => return Err(e.into()),
                Ok(_) => return Ok((AppRecord { revision: record.revision + 1, ..record }, true)),
            }
        }
    }

    /// What can only be checked against the server: the artifact is a
    /// directory here, the secrets exist, the limits fit the plan.
    async fn check_deployable(&self, tenant: &Tenant, spec: &AppSpec) -> Result<(), InvalidApp> {
        let invalid = |field: &'static str, message: String| InvalidApp { field, message };
        if let (Some(artifact), Some(runtime)) = (&spec.artifact, &self.runtime) {
            runtime.artifact(artifact).map_err(|e| invalid("artifact", e))?;
        }
        bulkhead_runtime::forward::EgressPolicy::parse(&spec.egress)
            .map_err(|e| invalid("egress", e))?;
        let plan =
            self.plans.get(tenant.plan.as_str()).map_err(|e| invalid("limits", e.to_string()))?;
        spec.limits.within(&plan.runtime)?;
        let stored = if spec.secrets.is_empty() {
            Vec::new()
        } else {
            self.vault.list(tenant.id).await.map_err(|e| invalid("secrets", e.to_string()))?
        };
        for secret in &spec.secrets {
            let path =
                SecretPath::parse(&secret.path).map_err(|e| invalid("secrets", e.to_string()))?;
            if !stored.iter().any(|s| s.path == path.as_str()) {
                return Err(invalid(
                    "secrets",
                    format!(
                        "the tenant has no secret {}; `bulkhead secrets put --tenant {} {}` stores it",
                        secret.path, tenant.name, secret.path
                    ),
                ));
            }
        }
        Ok(())
    }

    pub async fn list(&self, actor: &Actor, tenant_name: &str) -> Result<Vec<AppView>> {
        let tenant = self.tenant(actor, tenant_name, Permission::Read).await?;
        self.store.apps(tenant.id).await?.iter().map(|r| self.view(&tenant, r)).collect()
    }

    pub async fn get(&self, actor: &Actor, tenant_name: &str, name: &str) -> Result<AppView> {
        let tenant = self.tenant(actor, tenant_name, Permission::Read).await?;
        let record = self.record(&tenant, name).await?;
        self.view(&tenant, &record)
    }

    /// `apps start` / `apps stop`: what the operator wants, recorded.
    pub async fn set_running(
        &self,
        actor: &Actor,
        tenant_name: &str,
        name: &str,
        running: bool,
    ) -> Result<AppView> {
        let tenant = self.tenant(actor, tenant_name, Permission::Manage).await?;
        if running && let Some(runtime) = &self.runtime {
            // A worker given up after a crash loop starts again.
            runtime.retry_failed(&tenant, name);
        }
        let (record, changed) = self
            .update(&tenant, name, |record| {
                if record.running == running {
                    return false;
                }
                record.running = running;
                // Stopped, nothing serves: what starts again is the spec.
                record.live = Some(record.spec.clone());
                true
            })
            .await?;
        if changed {
            let action = if running { "app.start" } else { "app.stop" };
            self.events.record(actor, &tenant, action, "ok", json!({ "name": name })).await;
            self.changed();
        }
        self.view(&tenant, &record)
    }

    /// `apps pin` / `apps unpin`: a pinned app is left out of rollouts (a
    /// deploy still changes it).
    pub async fn set_pinned(
        &self,
        actor: &Actor,
        tenant_name: &str,
        name: &str,
        pinned: bool,
    ) -> Result<AppView> {
        let tenant = self.tenant(actor, tenant_name, Permission::Manage).await?;
        let (record, changed) = self
            .update(&tenant, name, |record| {
                let changed = record.pinned != pinned;
                record.pinned = pinned;
                changed
            })
            .await?;
        if changed {
            let action = if pinned { "app.pin" } else { "app.unpin" };
            self.events.record(actor, &tenant, action, "ok", json!({ "name": name })).await;
        }
        self.view(&tenant, &record)
    }

    /// One tenant's step of a rollout: its app's spec with `version` (and
    /// `artifact`, when given), checked as a deploy is and stored the same
    /// way, so that the runtime switches to it once it passes. An app that
    /// is gone, stopped, pinned or switching to a spec of its own is left
    /// alone (`Skipped`); a spec the new version makes invalid is an error.
    pub(crate) async fn move_to(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        name: &str,
        version: &str,
        artifact: Option<&str>,
        rollout: uuid::Uuid,
    ) -> std::result::Result<Move, String> {
        let mut attempts = 0;
        let (spec, from) = loop {
            let record = match self.store.app(tenant.id, name).await {
                Ok(Some(record)) => record,
                Ok(None) => return Ok(Move::Skipped("the app was deleted".to_owned())),
                Err(e) => return Ok(Move::Later(e.to_string())),
            };
            let (mut spec, live) = spec_and_live(&record)?;
            let ours = spec.version == version
                && artifact.is_none_or(|a| spec.artifact.as_deref() == Some(a));
            if ours && record.running {
                // Stored by this rollout before a restart cut its record
                // short (or deployed by hand): followed like any move.
                return Ok(Move::Started(generation(&spec)));
            }
            let skipped = if !record.running {
                Some("the app is stopped".to_owned())
            } else if record.pinned {
                Some("pinned".to_owned())
            } else if switching(&spec, &live) {
                Some(format!("it is switching to its own new spec ({})", spec.version))
            } else if spec.version == version {
                Some(format!("already at {version}"))
            } else {
                None
            };
            if let Some(why) = skipped {
                return Ok(Move::Skipped(why));
            }
            let from = std::mem::replace(&mut spec.version, version.to_owned());
            if let Some(artifact) = artifact {
                spec.artifact = Some(artifact.to_owned());
            }
            let spec = spec.validate().map_err(|e| e.to_string())?;
            self.check_deployable(tenant, &spec).await.map_err(|e| e.to_string())?;
            let json = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
            match self.put_spec(tenant, Some(&record), &spec, json).await {
                Err(AppsError::Store(StoreError::VersionConflict)) if attempts < RETRIES => {
                    attempts += 1;
                }
                Err(AppsError::Store(e)) => return Ok(Move::Later(e.to_string())),
                Err(e) => return Err(e.to_string()),
                Ok(_) => break (spec, from),
            }
        };
        let details = json!({
            "name": spec.name,
            "version": spec.version,
            "workers": spec.workers,
            "previous_version": from,
            "rollout": rollout,
        });
        self.events.record(actor, tenant, "app.deploy", "ok", details).await;
        self.changed();
        Ok(Move::Started(generation(&spec)))
    }

    pub async fn delete(&self, actor: &Actor, tenant_name: &str, name: &str) -> Result<()> {
        let tenant = self.tenant(actor, tenant_name, Permission::Manage).await?;
        if !self.store.delete_app(tenant.id, name).await? {
            return Err(AppsError::NotFound {
                tenant: tenant_name.to_owned(),
                name: name.to_owned(),
            });
        }
        self.events.record(actor, &tenant, "app.delete", "ok", json!({ "name": name })).await;
        self.changed();
        Ok(())
    }

    /// The last `tail` lines of a worker's log written at or after `since`.
    pub async fn logs(
        &self,
        actor: &Actor,
        tenant_name: &str,
        name: &str,
        worker: u32,
        since: Option<OffsetDateTime>,
        tail: usize,
    ) -> Result<Vec<String>> {
        let tenant = self.tenant(actor, tenant_name, Permission::Read).await?;
        self.record(&tenant, name).await?;
        let Some(runtime) = &self.runtime else { return Err(AppsError::NoRuntime) };
        let path = runtime.log_path(&tenant, name, worker);
        let lines = tokio::task::spawn_blocking(move || read_log(&path, since, tail))
            .await
            .unwrap_or_default();
        Ok(lines)
    }

    /// The tenant's flags.
    pub async fn flags(
        &self,
        actor: &Actor,
        tenant_name: &str,
    ) -> Result<BTreeMap<String, String>> {
        let tenant = self.tenant(actor, tenant_name, Permission::Read).await?;
        Ok(self.store.flags(tenant.id).await?.into_iter().collect())
    }

    /// Sets and removes flags, all or none; the tenant's workers get the new
    /// file and a SIGHUP.
    pub async fn set_flags(
        &self,
        actor: &Actor,
        tenant_name: &str,
        set: BTreeMap<String, String>,
        unset: Vec<String>,
    ) -> Result<BTreeMap<String, String>> {
        let tenant = self.tenant(actor, tenant_name, Permission::Manage).await?;
        for key in set.keys().chain(&unset) {
            let valid = (1..=64).contains(&key.len())
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
            if !valid {
                return Err(AppsError::InvalidFlags(format!(
                    "{key:?}: a flag's name is 1 to 64 characters of a-z, 0-9, '.', '_' and '-'"
                )));
            }
        }
        if let Some((key, _)) = set.iter().find(|(_, v)| v.len() > 4096 || v.contains('\0')) {
            return Err(AppsError::InvalidFlags(format!(
                "{key}: a value is at most 4096 bytes, without NUL"
            )));
        }
        if let Some(key) = unset.iter().find(|k| set.contains_key(*k)) {
            return Err(AppsError::InvalidFlags(format!("{key} is both set and unset")));
        }
        let mut after: BTreeMap<String, String> =
            self.store.flags(tenant.id).await?.into_iter().collect();
        for key in &unset {
            after.remove(key);
        }
        after.extend(set.clone());
        if after.len() > MAX_FLAGS_PER_TENANT {
            return Err(AppsError::InvalidFlags(format!(
                "a tenant has at most {MAX_FLAGS_PER_TENANT} flags"
            )));
        }
        let changes: Vec<(String, Option<String>)> = set
            .into_iter()
            .map(|(k, v)| (k, Some(v)))
            .chain(unset.into_iter().map(|k| (k, None)))
            .collect();
        self.store.set_flags(tenant.id, &changes, self.clock.now()).await?;
        let keys: Vec<&String> = changes.iter().map(|(k, _)| k).collect();
        self.events.record(actor, &tenant, "flags.set", "ok", json!({ "keys": keys })).await;
        if let Some(runtime) = &self.runtime {
            runtime.flags_changed(&tenant).await;
        }
        Ok(after)
    }

    fn changed(&self) {
        if let Some(runtime) = &self.runtime {
            runtime.changed();
        }
    }
}

/// The log's lines (rotated files first) from `since` on, the last `tail`.
/// Each line starts with its RFC 3339 time.
fn read_log(path: &Path, since: Option<OffsetDateTime>, tail: usize) -> Vec<String> {
    let rfc3339 = time::format_description::well_known::Rfc3339;
    let before = |line: &str| {
        since.is_some_and(|since| {
            let stamp = line.split(' ').next().unwrap_or_default();
            OffsetDateTime::parse(stamp, &rfc3339).is_ok_and(|at| at < since)
        })
    };
    let mut files: Vec<std::path::PathBuf> = (1..=20)
        .rev()
        .map(|n| std::path::PathBuf::from(format!("{}.{n}", path.display())))
        .collect();
    files.push(path.to_owned());
    let mut lines = std::collections::VecDeque::with_capacity(tail.min(10_000));
    for file in files {
        let Ok(file) = std::fs::File::open(&file) else { continue };
        for line in std::io::BufReader::new(file).lines().map_while(std::result::Result::ok) {
            if before(&line) {
                continue;
            }
            if lines.len() == tail {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    }
    lines.into()
}
