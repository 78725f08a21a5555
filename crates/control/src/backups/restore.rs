//! Putting a backup back: into the tenant it was taken of (suspended for
//! the duration, refused over newer data unless forced), into a new
//! tenant (which either ends up whole or is purged again), or from an
//! archive made by another installation, given the tenant's key.
//!
//! Whatever the target, the archive is first decrypted into the staging
//! directory and every part checked against the manifest, and the audit
//! export's chain verified: nothing is changed before the whole backup is
//! known to be intact.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::OpenOptionsExt,
    path::Path,
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use bulkhead_backup::{ArchiveReader, Manifest};
use bulkhead_identity::Permission;
use bulkhead_model::{
    ApiSpec, AppSpec, DatabaseLocation, GuardrailSpec, Isolation, Tenant, TenantId, TenantState,
    ToolSpec,
};
use bulkhead_tenantdb::{PoolNames, dump::Writes, pool, restore};
use bulkhead_vault::{SecretPath, envelope};
use serde::Deserialize;
use serde_json::json;
use sqlx::Connection;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::{BackupService, BackupServiceError, Result};
use crate::{api::types::CreateTenantRequest, credentials::Access, events::Actor};

/// A new tenant must be provisioned within this to be restored into.
const PROVISIONED_WITHIN: Duration = Duration::from_secs(300);
/// Actions that change nothing a backup holds: a restore over them loses
/// nothing. (Database logins are not in a backup; what is written through
/// them is counted apart, see `newer_data`.)
const HARMLESS: [&str; 16] = [
    "backup.create",
    "backup.expire",
    "backup.verify",
    "backup.delete",
    "backup.key_export",
    "backup.recipient",
    "backup.restore",
    "audit.export",
    "tenant.suspend",
    "tenant.resume",
    "credential.issue",
    "credential.list",
    "credential.renew",
    "credential.revoke",
    "credential.expire",
    "credential.stuck",
];

/// Where a restore goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// The tenant the backup was taken of.
    Same,
    /// A new tenant of this name.
    New(String),
}

/// The tenant an archive is known to be of, and, when this installation
/// recorded it, the manifest it must carry.
#[derive(Debug, Clone)]
pub(super) struct Source {
    pub tenant: Tenant,
    pub manifest: Option<Manifest>,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub tenant: String,
    pub backup: String,
    /// A new tenant was made for it.
    pub created: bool,
    /// What could not be put back, each said.
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
struct Named<S> {
    spec: S,
}

#[derive(Deserialize)]
struct Resources {
    guardrails: Vec<Named<GuardrailSpec>>,
    tools: Vec<Named<ToolSpec>>,
}

/// `config.json` as [`super::parts`] writes it.
#[derive(Deserialize)]
struct Config {
    tenant: Tenant,
    apis: Vec<Named<ApiSpec>>,
    apps: Vec<Named<AppSpec>>,
    resources: Resources,
}

#[derive(Deserialize)]
struct SealedSecret {
    path: String,
    version: i64,
    key_version: i64,
    ciphertext: String,
}

#[derive(Deserialize)]
struct Secrets {
    secrets: Vec<SealedSecret>,
}

#[derive(Deserialize)]
struct DataKey {
    version: i64,
    key: Zeroizing<String>,
}

#[derive(Deserialize)]
struct DataKeys {
    data_keys: Vec<DataKey>,
}

fn invalid(part: &str, error: impl std::fmt::Display) -> BackupServiceError {
    BackupServiceError::Backup(bulkhead_backup::BackupError::NotABackup(format!(
        "its {part} cannot be read: {error}"
    )))
}

fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, part: &str) -> Result<T> {
    let bytes = Zeroizing::new(std::fs::read(dir.join(part)).map_err(|e| invalid(part, e))?);
    serde_json::from_slice(&bytes).map_err(|e| invalid(part, e))
}

impl BackupService {
    /// Restores the tenant's backup `id` into `target`.
    pub async fn restore(
        &self,
        actor: &Actor,
        name: &str,
        id: &str,
        target: Target,
        force: bool,
        identity: Option<Zeroizing<String>>,
    ) -> Result<Restored> {
        let listing = self.get(actor, name, id).await?;
        let tenant = self.tenant(actor, name, Permission::Manage).await?;
        if !actor.is_operator() {
            return Err(BackupServiceError::OperatorOnly);
        }
        let identity = self.identity_for(&tenant, &listing.recipient, identity).await?;
        let reader = self.storage.read(tenant.id.0, id).await?;
        let pinned = self.pinned_keys(&tenant).await?;
        let source = Some(Source { tenant: tenant.clone(), manifest: None });
        match self.restore_from(actor, reader, identity, pinned, source, target, force).await {
            Ok(mut restored) => {
                restored.backup = id.to_owned();
                Ok(restored)
            }
            Err(error) => {
                let details = json!({ "backup": id, "error": error.to_string() });
                self.events.record(actor, &tenant, "backup.restore", "failed", details).await;
                Err(error)
            }
        }
    }

    /// Restores an archive made by any installation (`bulkhead backups
    /// restore --from`) into a new tenant: `to`, or the name it was taken
    /// of. Operators only.
    pub async fn restore_archive(
        &self,
        actor: &Actor,
        reader: ArchiveReader,
        identity: Zeroizing<String>,
        to: Option<String>,
    ) -> Result<Restored> {
        if !actor.is_operator() {
            return Err(BackupServiceError::OperatorOnly);
        }
        let target = Target::New(to.clone().unwrap_or_default());
        let result =
            self.restore_from(actor, reader, identity, Vec::new(), None, target, false).await;
        // A failed one made no tenant to record it against: the platform's
        // stream says who tried what.
        if let Err(error) = &result {
            let details = json!({ "to": to, "error": error.to_string() });
            self.events.record_platform(actor, "backup.restore_archive", "failed", details).await;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn restore_from(
        &self,
        actor: &Actor,
        reader: ArchiveReader,
        identity: Zeroizing<String>,
        pinned: Vec<[u8; 32]>,
        source: Option<Source>,
        target: Target,
        force: bool,
    ) -> Result<Restored> {
        let work = self.staging.join(format!("restore-{}", Uuid::new_v4().simple()));
        let result = async {
            let (manifest, keys) = self.unpack(reader, identity, &work, pinned).await?;
            let backup = Unpacked { manifest, keys, dir: work.clone() };
            if let Some(source) = &source
                && backup.manifest.about.tenant_id != source.tenant.id.0
            {
                return Err(invalid("manifest", "it is another tenant's backup"));
            }
            if let Some(Source { manifest: Some(expected), .. }) = &source
                && backup.manifest != *expected
            {
                return Err(invalid("manifest", "it is not the one recorded when it was taken"));
            }
            if source.is_none() {
                refuse_what_only_operators_set(&work)?;
            }
            match (target, source) {
                (Target::Same, Some(source)) => {
                    self.restore_over(actor, &source.tenant, &backup, force).await
                }
                (Target::Same, None) => Err(BackupServiceError::InvalidRequest(
                    "an archive from elsewhere is restored into a new tenant".into(),
                )),
                (Target::New(name), _) => {
                    let name =
                        if name.is_empty() { backup.manifest.about.tenant.clone() } else { name };
                    self.restore_new(actor, &name, &backup).await
                }
            }
        }
        .await;
        super::remove_staging(&work).await;
        result
    }

    /// Decrypts the archive into `dir`, checking every part and the audit
    /// export's chain (signed by one of `pinned`, when given). The data
    /// keys (`keys.json`) are returned, never written to disk.
    async fn unpack(
        &self,
        reader: ArchiveReader,
        identity: Zeroizing<String>,
        dir: &Path,
        pinned: Vec<[u8; 32]>,
    ) -> Result<(Manifest, Zeroizing<Vec<u8>>)> {
        super::private_dir(dir)
            .map_err(|e| BackupServiceError::Staging(format!("{}: {e}", dir.display())))?;
        let into = dir.to_path_buf();
        super::blocking(move || {
            let keys = InMemory::default();
            let kept = keys.clone();
            let manifest = bulkhead_backup::read_parts(reader, &identity, |part| {
                if part == "keys.json" {
                    return Ok(Box::new(kept.clone()));
                }
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(into.join(part))?;
                Ok(Box::new(std::io::BufWriter::new(file)))
            })?;
            check_audit(&into.join("audit.jsonl"), &pinned)?;
            Ok((manifest, keys.take()))
        })
        .await
    }

    /// Restores over the tenant itself, suspended meanwhile; refused over
    /// data newer than the backup unless `force`.
    async fn restore_over(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        backup: &Unpacked,
        force: bool,
    ) -> Result<Restored> {
        let (manifest, dir) = (&backup.manifest, backup.dir.as_path());
        if !matches!(tenant.state, TenantState::Active | TenantState::Suspended) {
            return Err(BackupServiceError::InvalidState(format!(
                "tenant {:?} is {}; a backup is restored into an active or suspended tenant",
                tenant.name.as_str(),
                tenant.state
            )));
        }
        let _running = self.claim(tenant)?;
        // Suspended before the check, so that nothing changes between the
        // check and the restore through Bulkhead.
        let was_active = tenant.state == TenantState::Active;
        if was_active {
            self.tenants.suspend(tenant.name.as_str(), actor).await?;
        }
        if !force && let Some(newer) = self.newer_data(tenant, manifest, dir).await? {
            if was_active {
                self.tenants.resume(tenant.name.as_str(), actor).await?;
            }
            return Err(BackupServiceError::InvalidState(format!(
                "tenant {:?} has changed since backup {} was taken ({newer}); restoring would \
                 lose that: take a backup first, then restore with --force",
                tenant.name.as_str(),
                manifest.about.created_at
            )));
        }
        let mut warnings = Vec::new();
        self.put_back(actor, tenant, backup, true).await?;
        // Left suspended if anything failed above: its data may be half
        // put back, and a retry of the restore finishes it.
        if was_active {
            self.tenants.resume(tenant.name.as_str(), actor).await?;
        }
        self.put_apps(actor, tenant, dir, &mut warnings).await;
        self.record_restore(actor, tenant, manifest, dir, &warnings).await;
        Ok(Restored {
            tenant: tenant.name.to_string(),
            backup: backup_id(manifest),
            created: false,
            warnings,
        })
    }

    /// Makes a new tenant like the backup's and puts the backup into it;
    /// on any failure the new tenant is purged again.
    async fn restore_new(&self, actor: &Actor, name: &str, backup: &Unpacked) -> Result<Restored> {
        let (manifest, dir) = (&backup.manifest, backup.dir.as_path());
        let config: Config = read_json(dir, "config.json")?;
        let region = self
            .regions
            .get(config.tenant.region.as_str())
            .unwrap_or_else(|_| self.regions.default_region());
        let database = database_part(manifest);
        let isolation = match (&region.databases, database) {
            (DatabaseLocation::Embedded, "database.sqlite") => Isolation::Silo,
            (DatabaseLocation::Postgres(_), "database.pgdump") => Isolation::Silo,
            (DatabaseLocation::Postgres(_), "database.rows") => Isolation::Pool,
            (_, part) => {
                return Err(BackupServiceError::InvalidRequest(format!(
                    "the backup's database is {part}, which region {} cannot hold; restore it \
                     on an installation whose region keeps {}",
                    region.name,
                    if part == "database.sqlite" { "SQLite files" } else { "PostgreSQL databases" }
                )));
            }
        };
        let request = CreateTenantRequest {
            name: name.to_owned(),
            plan: config.tenant.plan.to_string(),
            isolation: Some(isolation),
            region: Some(region.name.to_string()),
            admin_email: config.tenant.admin_email.as_ref().map(|e| e.as_str().to_owned()),
            limits: config.tenant.limits.clone(),
        };
        let tenant = self.tenants.create(request, actor).await?;
        // Should the server die before the restore ends, its next start
        // purges the half-restored tenant this marks.
        let marker = self.restores.join(tenant.id.0.to_string());
        if let Err(error) = crate::data_dir::write_private(&marker, name.as_bytes()) {
            tracing::warn!(%error, marker = %marker.display(), "cannot mark a restore under way");
        }
        let result = async {
            let tenant = self.provisioned(&tenant).await?;
            let mut warnings = Vec::new();
            self.put_back(actor, &tenant, backup, false).await?;
            self.put_apps(actor, &tenant, dir, &mut warnings).await;
            self.record_restore(actor, &tenant, manifest, dir, &warnings).await;
            Ok(Restored {
                tenant: name.to_owned(),
                backup: backup_id(manifest),
                created: true,
                warnings,
            })
        }
        .await;
        let settled = match &result {
            Ok(_) => true,
            // Nothing is left half-restored: the new tenant goes again.
            Err(_) => match self.tenants.delete(name, true, actor).await {
                Ok(_) => true,
                Err(error) => {
                    tracing::error!(%error, tenant = name, "cannot purge a tenant whose restore failed; the next start will");
                    false
                }
            },
        };
        if settled {
            let _ = std::fs::remove_file(&marker);
            let _ = std::fs::remove_file(marker.with_extension("tmp"));
        }
        result
    }

    /// Purges the tenants that restores cut short by a crash were making,
    /// as their markers name them (by id: a tenant of the same name made
    /// since is not theirs). Run again, such a restore starts afresh.
    pub async fn resume(&self) -> Result<u64> {
        let mut purged = 0;
        let entries = std::fs::read_dir(&self.restores).map_err(|e| {
            BackupServiceError::Staging(format!("{}: {e}", self.restores.display()))
        })?;
        for entry in entries.flatten() {
            // A marker cut off while it was written (`<id>.tmp`, see
            // `write_private`) marks its restore as well.
            let id = entry
                .file_name()
                .to_str()
                .map(|n| n.strip_suffix(".tmp").unwrap_or(n))
                .and_then(|n| Uuid::parse_str(n).ok());
            if let Some(id) = id
                && let Some(tenant) = self.sources.store.tenant_by_id(TenantId(id)).await?
                && tenant.state != TenantState::Deleted
            {
                tracing::warn!(tenant = %tenant.name, "purging a tenant whose restore was cut short");
                // Cut short while it was being provisioned: it can go once
                // the reconciler has finished (active or failed).
                let _ = self.provisioned(&tenant).await;
                // One that cannot go yet (still provisioning) is tried at
                // the next start; the others go on.
                if let Err(error) =
                    self.tenants.delete(tenant.name.as_str(), true, &Actor::Reconciler).await
                {
                    tracing::warn!(%error, tenant = %tenant.name, "cannot purge it yet");
                    continue;
                }
                purged += 1;
            }
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(purged)
    }

    /// Waits for the reconciler to make `tenant` active.
    async fn provisioned(&self, tenant: &Tenant) -> Result<Tenant> {
        let deadline = tokio::time::Instant::now() + PROVISIONED_WITHIN;
        loop {
            let now = self.sources.store.tenant_by_id(tenant.id).await?;
            match now {
                Some(t) if t.state == TenantState::Active => return Ok(t),
                Some(t) if t.state == TenantState::Failed => {
                    return Err(BackupServiceError::InvalidState(format!(
                        "the new tenant {:?} failed to provision: {}",
                        t.name.as_str(),
                        t.last_error.unwrap_or_default()
                    )));
                }
                _ if tokio::time::Instant::now() > deadline => {
                    return Err(BackupServiceError::InvalidState(format!(
                        "the new tenant {:?} was not provisioned within {}s",
                        tenant.name.as_str(),
                        PROVISIONED_WITHIN.as_secs()
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// The database, secrets, APIs, guardrails, tools and files of the
    /// backup, into `tenant`; `over` replaces what the tenant has.
    async fn put_back(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        backup: &Unpacked,
        over: bool,
    ) -> Result<()> {
        let Unpacked { manifest, keys, dir } = backup;
        self.put_database(tenant, manifest, dir).await?;
        self.put_secrets(tenant, manifest, keys, dir, over).await?;
        self.put_config(actor, tenant, dir, over).await?;
        self.put_files(tenant, dir, over).await?;
        Ok(())
    }

    /// Records the restore in the tenant's stream, with where the stream
    /// of the tenant the backup was taken of stood then: the restored
    /// tenant's history goes on from there.
    async fn record_restore(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        manifest: &Manifest,
        dir: &Path,
        warnings: &[String],
    ) {
        let audit = last_head(&dir.join("audit.jsonl"));
        let mut details = json!({
            "backup": backup_id(manifest),
            "taken_of": manifest.about.tenant,
            "taken_of_id": manifest.about.tenant_id,
            "created_at": manifest.about.created_at,
            // The restored tenant's stream goes on from the backup's: this
            // is where that stream stood when the backup was taken.
            "audit_seq": audit.as_ref().map(|(seq, _)| seq),
            "audit_head": audit.map(|(_, head)| head),
            "warnings": warnings,
        });
        // The database as the restore left it: what a later restore over
        // the tenant compares with.
        if let Some(writes) = self.database_writes(tenant).await {
            details[super::DATABASE_WRITES] = json!(writes);
        }
        self.events.record(actor, tenant, "backup.restore", "ok", details).await;
    }

    async fn put_database(&self, tenant: &Tenant, manifest: &Manifest, dir: &Path) -> Result<()> {
        let region = self.region_of(tenant)?;
        let part = database_part(manifest);
        let file = dir.join(part);
        match (&region.databases, tenant.isolation, part) {
            (DatabaseLocation::Embedded, _, "database.sqlite") => {
                let tenant_dir = self.sources.tenants_dir.join(tenant.name.as_str());
                restore::sqlite(&tenant_dir, &file).await?;
            }
            (DatabaseLocation::Postgres(_), Isolation::Silo, "database.pgdump") => {
                self.sources
                    .with_lease(tenant, Access::Write, 2, "backup.restore", |url| async move {
                        restore::silo(region, tenant, &url, &file)
                            .await
                            .map_err(BackupServiceError::from)
                    })
                    .await?;
            }
            (DatabaseLocation::Postgres(_), Isolation::Pool, "database.rows") => {
                self.sources
                    .with_lease(tenant, Access::Write, 2, "backup.restore", |url| async move {
                        let mut conn = sqlx::PgConnection::connect(&url).await.map_err(|e| {
                            BackupServiceError::Database(format!(
                                "cannot connect as the tenant's lease: {e}"
                            ))
                        })?;
                        let pool = PoolNames::of(region);
                        let done = match pool::tables::names(&mut conn, &pool).await {
                            Ok(tables) => {
                                restore::pool_rows(&mut conn, tenant, &tables, &file).await
                            }
                            Err(error) => Err(error),
                        };
                        let _ = conn.close().await;
                        done.map_err(BackupServiceError::from)
                    })
                    .await?;
            }
            (_, _, part) => {
                return Err(BackupServiceError::InvalidRequest(format!(
                    "the backup's database is {part}; tenant {:?} keeps another kind \
                     ({} in region {})",
                    tenant.name.as_str(),
                    tenant.isolation,
                    region.name
                )));
            }
        }
        Ok(())
    }

    /// Every secret version of the backup, opened with the backup's data
    /// keys and sealed again under the tenant's own, oldest first.
    async fn put_secrets(
        &self,
        tenant: &Tenant,
        manifest: &Manifest,
        keys: &[u8],
        dir: &Path,
        over: bool,
    ) -> Result<()> {
        let Secrets { mut secrets } = read_json(dir, "secrets.json")?;
        let DataKeys { data_keys } =
            serde_json::from_slice(keys).map_err(|e| invalid("keys.json", e))?;
        let mut keys = BTreeMap::new();
        for key in data_keys {
            let bytes = Zeroizing::new(
                STANDARD.decode(key.key.as_bytes()).map_err(|e| invalid("keys.json", e))?,
            );
            let bytes: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| invalid("keys.json", "a key is not 32 bytes"))?;
            keys.insert(key.version, Zeroizing::new(bytes));
        }
        // Opened before anything is changed: a backup whose secrets do not
        // open restores nothing.
        secrets.sort_by(|a, b| (&a.path, a.version).cmp(&(&b.path, b.version)));
        let mut values = Vec::with_capacity(secrets.len());
        for secret in &secrets {
            let key = keys.get(&secret.key_version).ok_or_else(|| {
                invalid("keys.json", format!("data key {} is missing", secret.key_version))
            })?;
            let sealed =
                STANDARD.decode(&secret.ciphertext).map_err(|e| invalid("secrets.json", e))?;
            let aad =
                envelope::secret_aad(manifest.about.tenant_id, secret.key_version, &secret.path);
            let value = envelope::open(key, &sealed, &aad).map_err(|_| {
                invalid(
                    "secrets.json",
                    format!("secret {} does not open with its data key", secret.path),
                )
            })?;
            let path = SecretPath::parse(&secret.path).map_err(|e| invalid("secrets.json", e))?;
            values.push((path, value));
        }
        let vault = &self.sources.vault;
        if over {
            for current in vault.list(tenant.id).await? {
                let path = SecretPath::parse(&current.path)
                    .map_err(|e| BackupServiceError::Internal(e.to_string()))?;
                vault.delete(tenant.id, &path).await?;
            }
        }
        let keep = u32::try_from(secrets.len()).unwrap_or(u32::MAX).max(1);
        for (path, value) in values {
            vault
                .put(tenant.id, &path, &value, keep, "backup.restore", self.sources.clock.now())
                .await?;
        }
        Ok(())
    }

    /// The backup's APIs, guardrails and tools, through the services that
    /// check them (a prefix another tenant took since is refused);
    /// `over` also removes what the backup does not have.
    async fn put_config(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        dir: &Path,
        over: bool,
    ) -> Result<()> {
        let config: Config = read_json(dir, "config.json")?;
        let name = tenant.name.as_str();
        let refused = |what: String| {
            move |e: &dyn std::fmt::Display| {
                BackupServiceError::InvalidState(format!("{what} cannot be restored: {e}"))
            }
        };
        let targets = &self.targets;
        if over {
            let keep: BTreeSet<String> =
                config.apis.iter().map(|a| a.spec.name.to_string()).collect();
            for api in self.sources.store.apis(tenant.id).await? {
                if !keep.contains(&api.name) {
                    targets
                        .apis
                        .delete(actor, name, &api.name)
                        .await
                        .map_err(|e| refused(format!("API {}", api.name))(&e))?;
                }
            }
            for (kind, keep) in [
                (
                    "guardrail",
                    config
                        .resources
                        .guardrails
                        .iter()
                        .map(|g| g.spec.name.to_string())
                        .collect::<BTreeSet<_>>(),
                ),
                ("tool", config.resources.tools.iter().map(|t| t.spec.name.to_string()).collect()),
            ] {
                for resource in self.sources.store.resources(tenant.id, kind).await? {
                    if keep.contains(&resource.name) {
                        continue;
                    }
                    let deleted = if kind == "tool" {
                        targets.resources.delete::<ToolSpec>(actor, name, &resource.name).await
                    } else {
                        targets.resources.delete::<GuardrailSpec>(actor, name, &resource.name).await
                    };
                    deleted.map_err(|e| refused(format!("{kind} {}", resource.name))(&e))?;
                }
            }
        }
        for api in config.apis {
            let what = format!("API {}", api.spec.name);
            targets.apis.put(actor, name, api.spec, true).await.map_err(|e| refused(what)(&e))?;
        }
        for guardrail in config.resources.guardrails {
            let what = format!("guardrail {}", guardrail.spec.name);
            targets
                .resources
                .put(actor, name, guardrail.spec)
                .await
                .map_err(|e| refused(what)(&e))?;
        }
        for tool in config.resources.tools {
            let what = format!("tool {}", tool.spec.name);
            targets.resources.put(actor, name, tool.spec).await.map_err(|e| refused(what)(&e))?;
        }
        Ok(())
    }

    /// Apps come back once the tenant is active again, and only where a
    /// runtime runs them: what cannot be is a warning, not a failure.
    async fn put_apps(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        dir: &Path,
        warnings: &mut Vec<String>,
    ) {
        let config: Config = match read_json(dir, "config.json") {
            Ok(config) => config,
            Err(error) => return warnings.push(error.to_string()),
        };
        for app in config.apps {
            let name = app.spec.name.to_string();
            if let Err(error) =
                self.targets.apps.deploy(actor, tenant.name.as_str(), app.spec).await
            {
                warnings.push(format!("app {name} was not restored: {error}"));
            }
        }
    }

    /// The tenant's files: what the backup has, in place of what the
    /// directory has (its database and `run/` aside).
    async fn put_files(&self, tenant: &Tenant, dir: &Path, over: bool) -> Result<()> {
        let tar = dir.join("files.tar");
        if !tokio::fs::try_exists(&tar).await.unwrap_or(false) {
            return Ok(());
        }
        let tenant_dir = self.sources.tenants_dir.join(tenant.name.as_str());
        super::blocking(move || {
            use std::os::unix::fs::MetadataExt;
            let failed = |e: std::io::Error| {
                BackupServiceError::Staging(format!("{}: {e}", tenant_dir.display()))
            };
            let kept = super::parts::kept_in_place();
            // Whose each top-level entry is (a worker's `data/` is its
            // uid's): what is restored under it becomes that owner's again.
            let mut owners = std::collections::HashMap::new();
            for entry in std::fs::read_dir(&tenant_dir).map_err(failed)? {
                let entry = entry.map_err(failed)?;
                let name = entry.file_name();
                if kept.iter().any(|k| name == std::ffi::OsStr::new(k)) {
                    continue;
                }
                let metadata = std::fs::symlink_metadata(entry.path()).map_err(failed)?;
                owners.insert(name, (metadata.uid(), metadata.gid()));
                if !over {
                    continue;
                }
                let removed = if metadata.is_dir() {
                    // Emptied, not removed: it keeps its owner and mode.
                    std::fs::read_dir(entry.path()).and_then(|inner| {
                        inner.flatten().try_for_each(|e| {
                            if e.file_type()?.is_dir() {
                                std::fs::remove_dir_all(e.path())
                            } else {
                                std::fs::remove_file(e.path())
                            }
                        })
                    })
                } else {
                    std::fs::remove_file(entry.path())
                };
                removed.map_err(failed)?;
            }
            bulkhead_backup::unpack_dir(&tar, &tenant_dir, &kept)?;
            let top = std::fs::metadata(&tenant_dir).map_err(failed)?;
            for entry in std::fs::read_dir(&tenant_dir).map_err(failed)? {
                let entry = entry.map_err(failed)?;
                let name = entry.file_name();
                if kept.iter().any(|k| name == std::ffi::OsStr::new(k)) {
                    continue;
                }
                let (uid, gid) = owners.get(&name).copied().unwrap_or((top.uid(), top.gid()));
                let mut stack = vec![entry.path()];
                while let Some(path) = stack.pop() {
                    let metadata = std::fs::symlink_metadata(&path).map_err(failed)?;
                    if metadata.file_type().is_symlink() {
                        continue;
                    }
                    std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(failed)?;
                    if metadata.is_dir() {
                        for inner in std::fs::read_dir(&path).map_err(failed)? {
                            stack.push(inner.map_err(failed)?.path());
                        }
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// What changed in the tenant since the backup, if anything: an
    /// audited change (every change made through Bulkhead is), its SQLite
    /// file written since, rows written to its silo PostgreSQL database
    /// since the last backup or restore recorded how many had been
    /// (`pg_stat_user_tables`), or its rows in the pool unlike the
    /// backup's.
    async fn newer_data(
        &self,
        tenant: &Tenant,
        manifest: &Manifest,
        dir: &Path,
    ) -> Result<Option<String>> {
        let Some((seq, _)) = last_head(&dir.join("audit.jsonl")) else {
            return Ok(None);
        };
        let stream = bulkhead_audit::StreamId::tenant(tenant.id.0);
        let mut after = i64::try_from(seq).unwrap_or(i64::MAX);
        // The last count of the database's writes a backup or restore since
        // recorded.
        let mut recorded: Option<Writes> = None;
        loop {
            let rows = self.sources.store.audit_events(stream.as_str(), after, 1_000).await?;
            let Some(last) = rows.last() else { break };
            after = last.seq;
            if let Some(changed) = rows.iter().find(|r| !HARMLESS.contains(&r.action.as_str())) {
                return Ok(Some(format!("{} at {}", changed.action, changed.time)));
            }
            for row in &rows {
                let details: serde_json::Value =
                    serde_json::from_str(&row.details).unwrap_or_default();
                if let Some(writes) = details
                    .get(super::DATABASE_WRITES)
                    .and_then(|w| serde_json::from_value(w.clone()).ok())
                {
                    recorded = Some(writes);
                }
            }
        }
        if let Some(then) = recorded
            && let Some(now) = self.database_writes(tenant).await
            && now != then
        {
            return Ok(Some(if now.since != then.since {
                "its database's statistics were reset since, so whether it was written cannot \
                 be told"
                    .to_owned()
            } else if now.rows > then.rows {
                format!("{} rows of its database were written since", now.rows - then.rows)
            } else {
                "tables of its database were dropped since".to_owned()
            }));
        }
        // A pool tenant's writes cannot be counted apart from its
        // neighbours', but its rows can be read again, as the backup read
        // them, and compared.
        if let Some(part) = manifest.parts.iter().find(|p| p.name == "database.rows")
            && tenant.isolation == Isolation::Pool
            && self.pool_rows_digest(tenant).await? != part.sha256
        {
            return Ok(Some("its rows in the pool differ from the backup's".to_owned()));
        }
        let created = manifest.about.taken_at().map_err(|e| invalid("manifest", e))?;
        let tenant_dir = self.sources.tenants_dir.join(tenant.name.as_str());
        for file in &bulkhead_tenantdb::sqlite::FILES[..2] {
            let modified = std::fs::metadata(tenant_dir.join(file)).and_then(|m| m.modified());
            if let Ok(modified) = modified
                && time::OffsetDateTime::from(modified) > created
            {
                return Ok(Some(format!(
                    "its database was written at {}",
                    time::OffsetDateTime::from(modified)
                )));
            }
        }
        Ok(None)
    }

    /// The SHA-256 of the pool tenant's rows as a backup would write them
    /// now.
    async fn pool_rows_digest(&self, tenant: &Tenant) -> Result<String> {
        let region = self.region_of(tenant)?;
        let file = self.staging.join(format!("check-{}.rows", Uuid::new_v4().simple()));
        let read = self.sources.pool_rows(tenant, region, &file).await;
        let path = file.clone();
        let digest = match read {
            Ok(()) => {
                super::blocking(move || {
                    use sha2::Digest;
                    use std::io::Read;
                    let failed = |e: std::io::Error| {
                        BackupServiceError::Staging(format!("{}: {e}", path.display()))
                    };
                    let mut hash = sha2::Sha256::new();
                    let mut file = std::fs::File::open(&path).map_err(failed)?;
                    let mut chunk = vec![0u8; 64 * 1024];
                    loop {
                        let read = file.read(&mut chunk).map_err(failed)?;
                        if read == 0 {
                            break;
                        }
                        hash.update(&chunk[..read]);
                    }
                    Ok(bulkhead_audit::record::hex(&hash.finalize()))
                })
                .await
            }
            Err(error) => Err(error),
        };
        let _ = std::fs::remove_file(&file);
        digest
    }
}

/// An archive from elsewhere is the tenant's word, not an operator's: it may
/// be made by a tenant that holds its own key. What only an operator may
/// set (an API's `unix:` upstream, which reaches any socket of the host,
/// another tenant's worker included) is refused before anything is made.
fn refuse_what_only_operators_set(dir: &Path) -> Result<()> {
    let config: Config = read_json(dir, "config.json")?;
    for api in &config.apis {
        if api.spec.upstreams.iter().any(|u| matches!(u, bulkhead_model::Upstream::Unix(_))) {
            return Err(BackupServiceError::InvalidRequest(format!(
                "the archive's API {} has a unix: upstream, which only an operator may set; \
                 restore it without that API and add the API yourself",
                api.spec.name
            )));
        }
    }
    Ok(())
}

/// The backup's id as the restore names it.
fn backup_id(manifest: &Manifest) -> String {
    format!("{} of {}", manifest.about.created_at, manifest.about.tenant)
}

/// The database part: the first, whichever engine.
fn database_part(manifest: &Manifest) -> &str {
    manifest
        .parts
        .iter()
        .map(|p| p.name.as_str())
        .find(|n| n.starts_with("database."))
        .unwrap_or("none")
}

/// Verifies the audit export's chain and signatures (by one of `pinned`,
/// when given).
pub(super) fn check_audit(path: &Path, pinned: &[[u8; 32]]) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| invalid("audit.jsonl", e))?;
    bulkhead_audit::verify::verify_export(std::io::BufReader::new(file), pinned).map_err(
        |broken| {
            BackupServiceError::Backup(bulkhead_backup::BackupError::Corrupt {
                part: "audit.jsonl".to_owned(),
                reason: format!("its chain is broken: {broken}"),
            })
        },
    )?;
    Ok(())
}

/// The last seq and head of an audit export: its closing checkpoint's.
fn last_head(path: &Path) -> Option<(u64, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let last: serde_json::Value = serde_json::from_str(text.lines().last()?).ok()?;
    Some((last["seq"].as_u64()?, last["head"].as_str()?.to_owned()))
}

impl From<crate::tenants::TenantError> for BackupServiceError {
    fn from(error: crate::tenants::TenantError) -> Self {
        BackupServiceError::Tenant(error)
    }
}

/// A backup decrypted and checked into a staging directory, its data keys
/// in memory: what every step of a restore reads.
struct Unpacked {
    manifest: Manifest,
    keys: Zeroizing<Vec<u8>>,
    dir: std::path::PathBuf,
}

/// A part kept in memory as it is read (the data keys), zeroized when
/// dropped.
#[derive(Clone, Default)]
struct InMemory(std::sync::Arc<std::sync::Mutex<Zeroizing<Vec<u8>>>>);

impl InMemory {
    fn take(&self) -> Zeroizing<Vec<u8>> {
        self.0.lock().map(|mut kept| std::mem::take(&mut *kept)).unwrap_or_default()
    }
}

impl std::io::Write for InMemory {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut kept = self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?;
        // Grown in place only up to what was reserved: a copy left by a
        // reallocation would not be zeroized.
        if kept.capacity() - kept.len() < buf.len() {
            let mut larger =
                Zeroizing::new(Vec::with_capacity((kept.len() + buf.len()).max(64 << 10)));
            larger.extend_from_slice(&kept);
            *kept = larger;
        }
        kept.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
