//! Tenants' backups: taking one (its parts staged under
//! `<data-dir>/backup-staging/<id>`, then streamed through age into the
//! store), listing, verifying and deleting them, and the keys they are
//! encrypted to. The archive format and the store are `bulkhead_backup`'s.

mod departure;
mod keys;
mod parts;
mod restore;
mod schedule;

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use bulkhead_backup::{About, BackupError, Listing, Manifest, Part, Storage};
use bulkhead_identity::Permission;
use bulkhead_model::{DatabaseLocation, Isolation, Regions, Tenant, TenantId, TenantState};
use bulkhead_store::StoreError;
use bulkhead_tenantdb::dump::{self, Writes};
use bulkhead_vault::VaultError;
use serde_json::json;
use thiserror::Error;
use uuid::Uuid;
use zeroize::Zeroizing;

pub use departure::DepartureSettings;
pub use keys::{BackupKeys, Recipient};
pub use parts::{Sources, Staged};
pub use restore::{Restored, Target};
pub use schedule::{ScheduleSettings, policy};

use crate::{
    audit::AuditServiceError,
    credentials::CredentialError,
    events::{Actor, EventLog, Unrecorded},
};

/// Where backup and restore events record the database's [`Writes`].
const DATABASE_WRITES: &str = "database_writes";

#[derive(Debug, Error)]
pub enum BackupServiceError {
    #[error("tenant {0:?} does not exist")]
    TenantNotFound(String),
    #[error(
        "no deleted tenant named {0:?} is kept: it was never deleted, or its final snapshot \
         expired or was purged (`bulkhead tenants list --state deleted` lists those kept)"
    )]
    NotDeparted(String),
    #[error("tenant {0:?} has no backup {1:?}; `bulkhead backups list --tenant {0}` lists them")]
    BackupNotFound(String, String),
    #[error("your roles in tenant {0:?} do not allow this")]
    Forbidden(String),
    #[error("this endpoint needs an operator token")]
    OperatorOnly,
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("a backup or restore of tenant {0:?} is already running; wait for it to finish")]
    Running(String),
    #[error(
        "tenant {0:?} encrypts its backups to its own key: Bulkhead holds no key that opens \
         them; verify with `bulkhead backups verify --identity-file FILE`"
    )]
    OwnKey(String),
    #[error("{0}")]
    Backup(#[from] BackupError),
    #[error("{0}")]
    Database(String),
    #[error("the staging directory: {0}")]
    Staging(String),
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error(transparent)]
    Audit(#[from] AuditServiceError),
    #[error(transparent)]
    Tenant(crate::tenants::TenantError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unrecorded(#[from] Unrecorded),
}

impl From<bulkhead_tenantdb::Error> for BackupServiceError {
    fn from(error: bulkhead_tenantdb::Error) -> Self {
        BackupServiceError::Database(error.to_string())
    }
}

type Result<T, E = BackupServiceError> = std::result::Result<T, E>;

/// The kind of backup taken on request rather than on schedule.
pub const MANUAL: &str = "manual";
/// The kind the scheduler takes, and its retention expires.
const SCHEDULED: &str = "scheduled";

/// Backups are taken of tenants in these states: a tenant being
/// provisioned has nothing yet, one being offboarded is going.
const BACKED_UP: &[TenantState] = &[TenantState::Active, TenantState::Suspended];

/// A tenant's backups as listed, and its schedule.
#[derive(Debug)]
pub struct BackupsOf {
    pub backups: Vec<Listing>,
    /// Why the store could not be listed, if it could not.
    pub store_error: Option<String>,
    pub policy: Option<bulkhead_model::BackupPolicy>,
    pub run: Option<bulkhead_store::BackupRun>,
}

/// The services a restore puts a tenant's configuration back through, so
/// that it is checked as any other change is.
#[derive(Debug, Clone)]
pub struct ConfigTargets {
    pub tenants: Arc<crate::tenants::TenantService>,
    pub apis: Arc<crate::apis::ApiService>,
    pub resources: Arc<crate::resources::ResourceService>,
    pub apps: Arc<crate::apps::AppService>,
}

#[derive(Debug)]
pub struct BackupService {
    sources: Sources,
    targets: ConfigTargets,
    tenants: Arc<crate::tenants::TenantService>,
    plans: bulkhead_model::PlanCatalog,
    metrics: Arc<crate::metrics::Metrics>,
    keys: BackupKeys,
    storage: Storage,
    regions: Regions,
    events: EventLog,
    /// `<data-dir>/backup-staging`.
    staging: PathBuf,
    /// `<data-dir>/backup-restores`: one marker per restore into a new
    /// tenant under way.
    restores: PathBuf,
    /// Tenants with a backup under way: never two at once for one tenant.
    running: Mutex<HashSet<Uuid>>,
    /// When the scheduler last applied every tenant's retention.
    swept: Mutex<Option<time::OffsetDateTime>>,
    departures: DepartureSettings,
}

/// Runs `work` (archive and file work, which blocks) on a thread for it.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BackupServiceError::Internal(format!("a blocking task failed: {e}")))?
}

/// Makes a directory only the server's user can enter.
fn private_dir(path: &Path) -> std::io::Result<()> {
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(path)
}

/// Removes what a backup or restore staged, whatever became of it.
async fn remove_staging(dir: &Path) {
    if let Err(error) = tokio::fs::remove_dir_all(dir).await
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(%error, dir = %dir.display(), "cannot remove a staging directory");
    }
}

/// Removes the tenant from `running` when the backup ends, however.
struct Running<'a> {
    running: &'a Mutex<HashSet<Uuid>>,
    tenant: Uuid,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&self.tenant);
        }
    }
}

impl BackupService {
    /// Opens the service; a staging directory left by a backup that was
    /// killed is removed first (what it staged was never listed).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sources: Sources,
        targets: ConfigTargets,
        plans: bulkhead_model::PlanCatalog,
        metrics: Arc<crate::metrics::Metrics>,
        storage: Storage,
        regions: Regions,
        events: EventLog,
        data_dir: &Path,
    ) -> std::io::Result<Self> {
        let staging = data_dir.join("backup-staging");
        match std::fs::remove_dir_all(&staging) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        private_dir(&staging)?;
        let restores = data_dir.join("backup-restores");
        match private_dir(&restores) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let keys = BackupKeys::new(Arc::clone(&sources.vault), Arc::clone(&sources.clock));
        let tenants = Arc::clone(&targets.tenants);
        Ok(Self {
            sources,
            targets,
            tenants,
            plans,
            metrics,
            keys,
            storage,
            regions,
            events,
            staging,
            restores,
            running: Mutex::default(),
            swept: Mutex::default(),
            departures: DepartureSettings::default(),
        })
    }

    /// Marks a backup or restore of the tenant under way until the guard
    /// drops: never two at once for one tenant.
    fn claim(&self, tenant: &Tenant) -> Result<Running<'_>> {
        let mut running = self
            .running
            .lock()
            .map_err(|_| BackupServiceError::Internal("backup registry poisoned".into()))?;
        if !running.insert(tenant.id.0) {
            return Err(BackupServiceError::Running(tenant.name.to_string()));
        }
        Ok(Running { running: &self.running, tenant: tenant.id.0 })
    }

    async fn tenant(&self, actor: &Actor, name: &str, permission: Permission) -> Result<Tenant> {
        let missing = || BackupServiceError::TenantNotFound(name.to_owned());
        let tenant = self.sources.store.tenant_named(name).await?.filter(|t| actor.may_access(t));
        let tenant = tenant.ok_or_else(missing)?;
        if !actor.allows(&tenant, permission) {
            return Err(BackupServiceError::Forbidden(name.to_owned()));
        }
        Ok(tenant)
    }

    /// Takes a backup of the tenant now and returns its listing. The
    /// attempt, whatever its outcome, is recorded in the tenant's stream.
    pub async fn create(&self, actor: &Actor, name: &str, kind: &str) -> Result<Listing> {
        let tenant = self.tenant(actor, name, Permission::Manage).await?;
        if !BACKED_UP.contains(&tenant.state) {
            return Err(BackupServiceError::InvalidState(format!(
                "tenant {name:?} is {}; backups are taken of active and suspended tenants",
                tenant.state
            )));
        }
        let _running = self.claim(&tenant)?;
        if kind == MANUAL {
            self.room_for_manual(&tenant).await?;
        }
        let now = self.sources.clock.now();
        let id = bulkhead_backup::new_id(&now);
        let result = match self.keys.recipient(&tenant).await {
            Ok(recipient) => self.take(actor, &tenant, &id, kind, &recipient.recipient).await,
            Err(error) => Err(error.into()),
        };
        let details = match &result {
            Ok((listing, writes)) => {
                let mut details = json!({
                    "backup": listing.id,
                    "kind": kind,
                    "size": listing.size,
                    "parts": listing.manifest.parts.iter().map(|p| &p.name).collect::<Vec<_>>(),
                    "store": self.storage.describe(),
                });
                // What a later restore over the tenant compares with.
                if let Some(writes) = writes {
                    details[DATABASE_WRITES] = json!(writes);
                }
                details
            }
            Err(error) => json!({ "backup": id, "kind": kind, "error": error.to_string() }),
        };
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.events.record(actor, &tenant, "backup.create", outcome, details).await;
        if let Ok((listing, _)) = &result
            && let Err(error) =
                self.sources.store.backup_succeeded(tenant.id, &listing.id, now).await
        {
            tracing::warn!(%error, tenant = name, "cannot record a backup that succeeded");
        }
        result.map(|(listing, _)| listing)
    }

    /// Manual backups are never expired, so a tenant keeps at most as many
    /// as its policy keeps scheduled ones: its admins cannot fill the
    /// backup store that every tenant shares.
    async fn room_for_manual(&self, tenant: &Tenant) -> Result<()> {
        let keep = policy(&self.plans, tenant).map_or(1, |p| p.keep.max(1)) as usize;
        let manual =
            self.storage.list(tenant.id.0).await?.iter().filter(|l| l.kind == MANUAL).count();
        if manual >= keep {
            let name = tenant.name.as_str();
            return Err(BackupServiceError::InvalidState(format!(
                "tenant {name:?} has {manual} manual backups, the most its backup policy keeps \
                 ({keep}); delete one first (`bulkhead backups list --tenant {name}`, then \
                 `bulkhead backups delete --tenant {name} ID`)"
            )));
        }
        Ok(())
    }

    /// Takes backup `id` of the tenant, encrypted to `recipient`, staged
    /// in a directory of its own that goes when it ends; with the
    /// database's writes as they stood before it was read.
    async fn take(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        id: &str,
        kind: &str,
        recipient: &str,
    ) -> Result<(Listing, Option<Writes>)> {
        let dir = self.staging.join(id);
        let taken = self.take_in(actor, tenant, id, kind, recipient, &dir).await;
        remove_staging(&dir).await;
        taken
    }

    async fn take_in(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        id: &str,
        kind: &str,
        recipient: &str,
        dir: &Path,
    ) -> Result<(Listing, Option<Writes>)> {
        let region = self.region_of(tenant)?.clone();
        private_dir(dir)
            .map_err(|e| BackupServiceError::Staging(format!("{}: {e}", dir.display())))?;
        // The time the backup is of: before any part is read, so that a
        // change made while it is taken counts as newer than it.
        let created_at = bulkhead_audit::record::format_time(self.sources.clock.now());
        let writes = self.database_writes(tenant).await;
        let (staged, schemas) = self.sources.stage(actor, tenant, &region, dir).await?;
        let mut parts = Vec::with_capacity(staged.len());
        for staged in staged {
            parts.push(match staged {
                Staged::File(name, path) => {
                    let failed = |e: std::io::Error| {
                        BackupServiceError::Staging(format!("{}: {e}", path.display()))
                    };
                    let file = std::fs::File::open(&path).map_err(failed)?;
                    let size = file.metadata().map_err(failed)?.len();
                    Part { name, size, reader: Box::new(file) }
                }
                Staged::Memory(name, bytes) => {
                    let size = bytes.len() as u64;
                    Part { name, size, reader: Box::new(std::io::Cursor::new(bytes)) }
                }
            });
        }
        let about = About {
            tenant: tenant.name.to_string(),
            tenant_id: tenant.id.0,
            plan: tenant.plan.to_string(),
            created_at,
            schemas,
        };
        Ok((self.storage.put(id, kind, recipient, about, parts).await?, writes))
    }

    /// The region the tenant lives in.
    fn region_of(&self, tenant: &Tenant) -> Result<&bulkhead_model::Region> {
        self.regions
            .get(tenant.region.as_str())
            .map_err(|e| BackupServiceError::InvalidState(e.to_string()))
    }

    /// What [`Writes`] the tenant's database shows, for a PostgreSQL silo
    /// tenant; `None` for others, and when they cannot be read (the check
    /// they feed is then skipped, as for a backup that recorded none).
    async fn database_writes(&self, tenant: &Tenant) -> Option<Writes> {
        let region = self.region_of(tenant).ok()?;
        let DatabaseLocation::Postgres(url) = &region.databases else { return None };
        if tenant.isolation != Isolation::Silo {
            return None;
        }
        match dump::silo_writes(region, url, tenant).await {
            Ok(writes) => Some(writes),
            Err(error) => {
                tracing::warn!(%error, tenant = %tenant.name, "cannot read how much the tenant's database was written");
                None
            }
        }
    }

    /// The tenant's backups, oldest first, with its schedule's policy and
    /// record. A store that cannot be listed leaves the backups out and
    /// says why: the schedule's record is what is wanted then.
    pub async fn list(&self, actor: &Actor, name: &str) -> Result<BackupsOf> {
        let tenant = self.tenant(actor, name, Permission::Manage).await?;
        let (backups, store_error) = match self.storage.list(tenant.id.0).await {
            Ok(listed) => (listed, None),
            Err(error) => (Vec::new(), Some(error.to_string())),
        };
        let run = self.sources.store.backup_run(tenant.id).await?;
        Ok(BackupsOf { backups, store_error, policy: policy(&self.plans, &tenant), run })
    }

    pub async fn get(&self, actor: &Actor, name: &str, id: &str) -> Result<Listing> {
        let tenant = self.tenant(actor, name, Permission::Manage).await?;
        self.storage
            .get(tenant.id.0, id)
            .await?
            .ok_or_else(|| BackupServiceError::BackupNotFound(name.to_owned(), id.to_owned()))
    }

    /// Decrypts the backup with the tenant's key (or `identity`, for a
    /// tenant that holds its own) and checks every part against its
    /// manifest, restoring nothing.
    pub async fn verify(
        &self,
        actor: &Actor,
        name: &str,
        id: &str,
        identity: Option<Zeroizing<String>>,
    ) -> Result<Manifest> {
        let listing = self.get(actor, name, id).await?;
        let tenant = self.tenant(actor, name, Permission::Manage).await?;
        let identity = self.identity_for(&tenant, &listing.recipient, identity).await?;
        let reader = self.storage.read(tenant.id.0, id).await?;
        let pinned = self.pinned_keys(&tenant).await?;
        let manifest = self.check(reader, identity, pinned, listing.manifest, tenant.id).await;
        let details = match &manifest {
            Ok(_) => json!({ "backup": id }),
            Err(error) => json!({ "backup": id, "error": error.to_string() }),
        };
        let outcome = if manifest.is_ok() { "ok" } else { "failed" };
        self.events.record(actor, &tenant, "backup.verify", outcome, details).await;
        manifest
    }

    /// Decrypts an archive and checks every part against `expected` (the
    /// manifest recorded for it, of tenant `of`) and its audit export's
    /// chain against `pinned` keys, restoring nothing.
    async fn check(
        &self,
        reader: bulkhead_backup::ArchiveReader,
        identity: Zeroizing<String>,
        pinned: Vec<[u8; 32]>,
        expected: Manifest,
        of: TenantId,
    ) -> Result<Manifest> {
        // Every part is read and hashed; the audit export alone is kept, in
        // the staging directory, to verify its chain.
        let audit = self.staging.join(format!("verify-{}.jsonl", Uuid::new_v4().simple()));
        let kept = audit.clone();
        let manifest = blocking(move || {
            let manifest = bulkhead_backup::read_parts(reader, &identity, |part| {
                if part == "audit.jsonl" {
                    Ok(Box::new(std::io::BufWriter::new(std::fs::File::create_new(&kept)?)))
                } else {
                    Ok(Box::new(std::io::sink()))
                }
            })?;
            restore::check_audit(&kept, &pinned)?;
            Ok(manifest)
        })
        .await
        .and_then(|manifest| {
            if manifest != expected || manifest.about.tenant_id != of.0 {
                return Err(BackupError::NotABackup(
                    "its manifest is not the one recorded when it was taken".to_owned(),
                )
                .into());
            }
            Ok(manifest)
        });
        let _ = std::fs::remove_file(&audit);
        manifest
    }

    /// The identity that opens a backup encrypted to `recipient`: the one
    /// given, else the one the vault holds if it is that recipient's.
    async fn identity_for(
        &self,
        tenant: &Tenant,
        recipient: &str,
        given: Option<Zeroizing<String>>,
    ) -> Result<Zeroizing<String>> {
        if let Some(identity) = given {
            return Ok(identity);
        }
        self.keys
            .identity(tenant)
            .await?
            .filter(|i| bulkhead_backup::recipient_of(i).is_ok_and(|r| r == recipient))
            .ok_or_else(|| BackupServiceError::OwnKey(tenant.name.to_string()))
    }

    /// The tenant's audit keys, from its sealed key: what its backups'
    /// audit exports must be signed by.
    async fn pinned_keys(&self, tenant: &Tenant) -> Result<Vec<[u8; 32]>> {
        let keys = self.sources.audit.published_keys(tenant.name.as_str()).await?;
        Ok(keys.iter().filter_map(|k| k.public_bytes()).collect())
    }

    pub async fn delete(&self, actor: &Actor, name: &str, id: &str) -> Result<()> {
        let listing = self.get(actor, name, id).await?;
        let tenant = self.tenant(actor, name, Permission::Manage).await?;
        // What a departing tenant leaves goes with its departure only.
        if listing.kind == departure::FINAL || tenant.state == TenantState::Offboarding {
            return Err(BackupServiceError::InvalidState(format!(
                "tenant {name:?} is being deleted and backup {id} may be its final snapshot; \
                 `bulkhead tenants delete {name} --purge --yes` destroys it"
            )));
        }
        if !self.storage.delete(tenant.id.0, id).await? {
            return Err(BackupServiceError::BackupNotFound(name.to_owned(), id.to_owned()));
        }
        self.events.record(actor, &tenant, "backup.delete", "ok", json!({ "backup": id })).await;
        Ok(())
    }

    /// Where the tenant's backups are encrypted to (made now if it has no
    /// key yet).
    pub async fn recipient(&self, actor: &Actor, name: &str) -> Result<Recipient> {
        let tenant = self.tenant(actor, name, Permission::Manage).await?;
        Ok(self.keys.recipient(&tenant).await?)
    }

    /// Registers the tenant's own age recipient, or (`None`) goes back to
    /// the key the vault holds. Operators only: it decides who can read
    /// every later backup.
    pub async fn set_recipient(
        &self,
        actor: &Actor,
        name: &str,
        recipient: Option<&str>,
    ) -> Result<Recipient> {
        if !actor.is_operator() {
            return Err(BackupServiceError::OperatorOnly);
        }
        let tenant = self.tenant(actor, name, Permission::Manage).await?;
        if let Some(recipient) = recipient {
            bulkhead_backup::check_recipient(recipient)?;
        }
        self.keys.set_own(&tenant, recipient).await?;
        let now = self.keys.recipient(&tenant).await?;
        let details = json!({ "recipient": now.recipient, "own": now.own });
        self.events.record(actor, &tenant, "backup.recipient", "ok", details).await;
        Ok(now)
    }

    /// The identity that opens the tenant's backups, for the `age` tool or
    /// another installation. Operators only, recorded before it is handed
    /// out.
    pub async fn export_identity(&self, actor: &Actor, name: &str) -> Result<Zeroizing<String>> {
        if !actor.is_operator() {
            return Err(BackupServiceError::OperatorOnly);
        }
        let tenant = self.tenant(actor, name, Permission::Manage).await?;
        self.keys.recipient(&tenant).await?;
        let identity = self
            .keys
            .identity(&tenant)
            .await?
            .ok_or_else(|| BackupServiceError::OwnKey(name.to_owned()))?;
        self.events.record_disclosure(actor, Some(&tenant), "backup.key_export", json!({})).await?;
        Ok(identity)
    }
}
