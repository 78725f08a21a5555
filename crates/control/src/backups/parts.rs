//! What goes into a tenant's backup, each part written to a file in the
//! backup's staging directory first (a tar entry's size comes before its
//! bytes, and a database dump is read while it is taken):
//!
//! | part              | what                                                         |
//! |-------------------|--------------------------------------------------------------|
//! | `database.sqlite` | the tenant's SQLite database (embedded)                      |
//! | `database.pgdump` | `pg_dump --format=custom` of its silo database               |
//! | `database.rows`   | a pool tenant's rows, read through a lease of its own role   |
//! | `secrets.json`    | every kept secret version and sealed key, as sealed          |
//! | `keys.json`       | the data keys they are sealed under (the archive wraps them) |
//! | `config.json`     | the tenant, its APIs, apps, tools and guardrails             |
//! | `audit.jsonl`     | its audit stream's export (`bulkhead audit verify` reads it) |
//! | `files.tar`       | its directory's other files (not the database, not `run/`)   |

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use bulkhead_model::{DatabaseLocation, Isolation, Region, Tenant};
use bulkhead_store::ControlStore;
use bulkhead_tenantdb::{PoolNames, dump, pool};
use bulkhead_vault::Vault;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::Connection;

use super::BackupServiceError;
use crate::{
    audit::{AuditService, StreamRequest},
    clock::Clock,
    credentials::{Access, Credentials},
    events::Actor,
};

/// What of a tenant's directory is not among its files: its database (a
/// part of its own), `run/` (its workers' sockets) and the marker that
/// says whose directory it is.
pub(super) fn kept_in_place() -> Vec<&'static str> {
    let mut kept = bulkhead_tenantdb::sqlite::FILES.to_vec();
    kept.extend(["run", crate::provision::MARKER]);
    kept
}
/// A lease for reading a pool tenant's rows lives this long at most.
const LEASE_TTL: Duration = Duration::from_secs(3_600);
/// The largest number of secret versions or sealed keys read at once.
const ALL: u32 = u32::MAX;

/// A part ready to be written: a file in the staging directory, or bytes
/// that must never touch the disk unencrypted (the data keys).
pub enum Staged {
    File(String, PathBuf),
    Memory(String, zeroize::Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Staged::File(name, path) => f.debug_tuple("File").field(name).field(path).finish(),
            Staged::Memory(name, bytes) => {
                f.debug_tuple("Memory").field(name).field(&bytes.len()).finish()
            }
        }
    }
}

/// What the parts are read from.
#[derive(Debug, Clone)]
pub struct Sources {
    pub store: Arc<dyn ControlStore>,
    pub vault: Arc<Vault>,
    pub credentials: Arc<Credentials>,
    pub audit: Arc<AuditService>,
    pub clock: Arc<dyn Clock>,
    pub tenants_dir: PathBuf,
}

#[derive(Serialize)]
struct SealedSecret<'a> {
    path: &'a str,
    version: i64,
    key_version: i64,
    size: i64,
    created_by: &'a str,
    #[serde(with = "time::serde::rfc3339")]
    created_at: time::OffsetDateTime,
    /// Base64 of the ciphertext, as stored.
    ciphertext: String,
}

impl Sources {
    /// Writes every part of `tenant` under `dir` (the data keys stay in
    /// memory); returns them in archive order with the schema versions the
    /// manifest records.
    pub async fn stage(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        region: &Region,
        dir: &Path,
    ) -> Result<(Vec<Staged>, BTreeMap<String, String>), BackupServiceError> {
        let mut parts = Vec::new();
        let mut schemas = BTreeMap::new();
        let tenant_dir = self.tenants_dir.join(tenant.name.as_str());
        let database = match (&region.databases, tenant.isolation) {
            (DatabaseLocation::Embedded, _) => {
                let file = dir.join("database.sqlite");
                dump::sqlite(&tenant_dir, &file).await?;
                ("database.sqlite", file)
            }
            (DatabaseLocation::Postgres(url), Isolation::Silo) => {
                let file = dir.join("database.pgdump");
                dump::silo(region, url, tenant, &file).await?;
                ("database.pgdump", file)
            }
            (DatabaseLocation::Postgres(_), Isolation::Pool) => {
                let file = dir.join("database.rows");
                self.pool_rows(tenant, region, &file).await?;
                ("database.rows", file)
            }
        };
        parts.push(Staged::File(database.0.to_owned(), database.1));
        // The tenant database's own migrations are inside its dump.
        schemas.insert("bulkhead".to_owned(), env!("CARGO_PKG_VERSION").to_owned());

        let file = dir.join("secrets.json");
        write_json(&file, &self.sealed(tenant).await?).await?;
        parts.push(Staged::File("secrets.json".to_owned(), file));

        let keys = self.data_keys(tenant).await?;
        parts.push(Staged::Memory(
            "keys.json".to_owned(),
            zeroize::Zeroizing::new(keys.as_bytes().to_vec()),
        ));

        let file = dir.join("config.json");
        write_json(&file, &self.config(tenant).await?).await?;
        parts.push(Staged::File("config.json".to_owned(), file));

        let file = dir.join("audit.jsonl");
        self.audit_export(actor, tenant, &file).await?;
        parts.push(Staged::File("audit.jsonl".to_owned(), file));

        let file = dir.join("files.tar");
        if tokio::fs::try_exists(&tenant_dir).await.unwrap_or(false) {
            let (from, to) = (tenant_dir.clone(), file.clone());
            super::blocking(move || Ok(bulkhead_backup::pack_dir(&from, &to, &kept_in_place())?))
                .await?;
            parts.push(Staged::File("files.tar".to_owned(), file));
        }
        Ok((parts, schemas))
    }

    pub(super) async fn pool_rows(
        &self,
        tenant: &Tenant,
        region: &Region,
        file: &Path,
    ) -> Result<(), BackupServiceError> {
        self.with_lease(tenant, Access::Read, 1, "backup", |url| async move {
            let mut conn = sqlx::PgConnection::connect(url.as_str()).await.map_err(|e| {
                BackupServiceError::Database(format!("cannot connect as the tenant's lease: {e}"))
            })?;
            let tables = pool::tables::names(&mut conn, &PoolNames::of(region)).await?;
            let written = dump::pool_rows(&mut conn, &tables, file).await;
            let _ = conn.close().await;
            written.map(|_| ()).map_err(BackupServiceError::from)
        })
        .await
    }

    /// Runs `work` with the URL of a lease of the tenant for `sessions`
    /// sessions, revoked after whatever happened (the sweeper retries a
    /// failed revocation).
    pub(super) async fn with_lease<T, F, Fut>(
        &self,
        tenant: &Tenant,
        access: Access,
        sessions: u32,
        issued_by: &str,
        work: F,
    ) -> Result<T, BackupServiceError>
    where
        F: FnOnce(zeroize::Zeroizing<String>) -> Fut,
        Fut: std::future::Future<Output = Result<T, BackupServiceError>>,
    {
        let now = self.clock.now();
        let issued =
            self.credentials.issue(tenant, access, LEASE_TTL, sessions, issued_by, now).await?;
        let done = work(issued.url.clone()).await;
        if let Err(error) = self.credentials.revoke(&issued.lease, self.clock.now()).await {
            tracing::warn!(%error, lease = %issued.lease.id, "cannot revoke a backup's lease yet");
        }
        done
    }

    /// `{"data_keys": [{"version", "key"}]}`, built where it is zeroized.
    async fn data_keys(
        &self,
        tenant: &Tenant,
    ) -> Result<zeroize::Zeroizing<String>, BackupServiceError> {
        let mut json = zeroize::Zeroizing::new(String::from("{\"data_keys\":["));
        for (i, (version, key)) in self.vault.export_data_keys(tenant.id).await?.iter().enumerate()
        {
            let key = zeroize::Zeroizing::new(STANDARD.encode(key.as_ref()));
            let comma = if i == 0 { "" } else { "," };
            json.push_str(&format!("{comma}{{\"version\":{version},\"key\":\""));
            json.push_str(&key);
            json.push_str("\"}");
        }
        json.push_str("]}");
        Ok(json)
    }

    async fn sealed(&self, tenant: &Tenant) -> Result<Value, BackupServiceError> {
        let versions = self.store.secrets_below_key_version(tenant.id, i64::MAX, ALL).await?;
        let secrets: Vec<SealedSecret<'_>> = versions
            .iter()
            .map(|v| SealedSecret {
                path: &v.path,
                version: v.version,
                key_version: v.key_version,
                size: v.size,
                created_by: &v.created_by,
                created_at: v.created_at,
                ciphertext: STANDARD.encode(&v.ciphertext),
            })
            .collect();
        let blobs: Vec<Value> = self
            .store
            .blobs_below_key_version(tenant.id, i64::MAX, ALL)
            .await?
            .iter()
            .map(|b| {
                json!({
                    "label": b.label,
                    "key_version": b.key_version,
                    "ciphertext": STANDARD.encode(&b.ciphertext),
                })
            })
            .collect();
        Ok(json!({ "secrets": secrets, "sealed_keys": blobs }))
    }

    async fn config(&self, tenant: &Tenant) -> Result<Value, BackupServiceError> {
        let spec = |text: &str| serde_json::from_str::<Value>(text).unwrap_or(Value::Null);
        let apis: Vec<Value> = self
            .store
            .apis(tenant.id)
            .await?
            .iter()
            .map(|a| json!({ "name": a.name, "spec": spec(&a.spec) }))
            .collect();
        let apps: Vec<Value> = self
            .store
            .apps(tenant.id)
            .await?
            .iter()
            .map(|a| json!({ "name": a.name, "spec": spec(&a.spec), "running": a.running }))
            .collect();
        let mut resources = serde_json::Map::new();
        for kind in ["guardrail", "tool"] {
            let specs: Vec<Value> = self
                .store
                .resources(tenant.id, kind)
                .await?
                .iter()
                .map(|r| json!({ "name": r.name, "spec": spec(&r.spec) }))
                .collect();
            resources.insert(format!("{kind}s"), Value::Array(specs));
        }
        Ok(json!({ "tenant": tenant, "apis": apis, "apps": apps, "resources": resources }))
    }

    async fn audit_export(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        file: &Path,
    ) -> Result<(), BackupServiceError> {
        use tokio::io::AsyncWriteExt;
        let request = StreamRequest::Tenant(tenant.name.to_string());
        let mut export = self.audit.export(actor, &request, None).await?;
        let out = tokio::fs::File::create_new(file).await.map_err(|e| io(file, e))?;
        let mut out = tokio::io::BufWriter::new(out);
        while let Some(page) =
            export.next_page().await.map_err(crate::audit::AuditServiceError::from)?
        {
            out.write_all(page.as_bytes()).await.map_err(|e| io(file, e))?;
        }
        out.flush().await.map_err(|e| io(file, e))?;
        out.into_inner().sync_all().await.map_err(|e| io(file, e))
    }
}

fn io(path: &Path, error: std::io::Error) -> BackupServiceError {
    BackupServiceError::Staging(format!("{}: {error}", path.display()))
}

async fn write_json(path: &Path, value: &impl Serialize) -> Result<(), BackupServiceError> {
    let bytes =
        serde_json::to_vec(value).map_err(|e| BackupServiceError::Internal(e.to_string()))?;
    let mut file = tokio::fs::File::create_new(path).await.map_err(|e| io(path, e))?;
    tokio::io::AsyncWriteExt::write_all(&mut file, &bytes).await.map_err(|e| io(path, e))?;
    file.sync_all().await.map_err(|e| io(path, e))
}
