//! Audit as the control plane runs it: the keys that sign each stream's
//! checkpoints, a tenant's audit key as a provisioning step, exports and
//! tails under the callers' permissions, and retention by plan. The format,
//! the chain and the writer are `bulkhead-audit`'s.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bulkhead_audit::{
    AuditKey, KeyRing, PublicKeyInfo, StreamId, StreamKeys, Witness,
    export::{Exporter, event_from_row, key_from_row},
};
use bulkhead_identity::Permission;
use bulkhead_model::{PlanCatalog, Tenant, TenantState};
use bulkhead_store::{AuditKeyRow, ControlStore, StoreError};
use bulkhead_vault::{Vault, VaultError};
use thiserror::Error;
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::{
    clock::Clock,
    data_dir::{make_private, write_private},
    events::{Actor, EventLog},
};

/// Where a tenant's audit key is sealed in the vault.
pub const KEY_LABEL: &str = "audit/signing-key";

#[derive(Debug, Error)]
pub enum AuditServiceError {
    #[error("tenant {0:?} does not exist")]
    TenantNotFound(String),
    #[error("your roles in tenant {0:?} do not allow this")]
    Forbidden(String),
    #[error("only operators can read the platform's audit stream")]
    PlatformOnly,
    #[error(
        "stream {0} has no audit key available: it is made when the tenant is provisioned, and a \
         tenant that brought its own key must have loaded it (`bulkhead vault tenant-key`)"
    )]
    NoKey(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Refused(#[from] crate::admission::Refused),
    #[error(transparent)]
    Unrecorded(#[from] crate::events::Unrecorded),
    /// The export could not be made: the message says why.
    #[error(transparent)]
    Export(#[from] bulkhead_audit::export::ExportError),
    #[error("{0}")]
    Internal(String),
}

type Result<T, E = AuditServiceError> = std::result::Result<T, E>;

fn internal(e: impl std::fmt::Display) -> AuditServiceError {
    AuditServiceError::Internal(e.to_string())
}

/// The streams' signing keys: each tenant's sealed under its data key, the
/// platform's in a file of the data directory (mode 0600), like the
/// master key.
#[derive(Debug)]
pub struct AuditKeys {
    store: Arc<dyn ControlStore>,
    vault: Arc<Vault>,
    clock: Arc<dyn Clock>,
    platform: Arc<AuditKey>,
    /// Opened tenant keys, by tenant id.
    opened: Mutex<HashMap<Uuid, Arc<AuditKey>>>,
}

impl AuditKeys {
    /// Loads the platform's key from `platform_key_file`, making it on
    /// first start, and publishes its public half.
    pub async fn open(
        store: Arc<dyn ControlStore>,
        vault: Arc<Vault>,
        clock: Arc<dyn Clock>,
        platform_key_file: &Path,
    ) -> Result<Self> {
        let platform = Arc::new(platform_key(platform_key_file)?);
        let keys = Self { store, vault, clock, platform, opened: Mutex::default() };
        keys.publish(&keys.platform).await?;
        Ok(keys)
    }

    async fn publish(&self, key: &AuditKey) -> Result<()> {
        let info = key.public_info(self.clock.now());
        self.store
            .insert_audit_key(&AuditKeyRow {
                stream: info.stream.to_string(),
                key_id: info.key_id,
                public_key: info.public_key,
                created_at: info.created_at,
            })
            .await?;
        Ok(())
    }

    /// The `create_audit_key` provisioning step: the tenant's key, made and
    /// sealed unless it exists, and its public half published. A crash
    /// between the two leaves a sealed key whose public half the next run
    /// publishes.
    pub async fn ensure_tenant_key(&self, tenant: &Tenant) -> Result<String> {
        let stream = StreamId::tenant(tenant.id.0);
        let key = match self.vault.open_blob(tenant.id, KEY_LABEL).await? {
            Some(secret) => AuditKey::from_secret(stream, &secret)
                .ok_or_else(|| internal("the sealed audit key is not 32 bytes"))?,
            None => {
                let key = AuditKey::generate(stream).map_err(internal)?;
                self.vault
                    .seal_blob(tenant.id, KEY_LABEL, key.secret_bytes(), self.clock.now())
                    .await?;
                key
            }
        };
        self.publish(&key).await?;
        Ok(self.remember(tenant.id.0, key).key_id().to_owned())
    }

    fn remember(&self, tenant: Uuid, key: AuditKey) -> Arc<AuditKey> {
        let key = Arc::new(key);
        if let Ok(mut opened) = self.opened.lock() {
            opened.insert(tenant, Arc::clone(&key));
        }
        key
    }

    /// Drops the tenant's opened key (its data key is being destroyed).
    pub fn forget(&self, tenant: Uuid) {
        if let Ok(mut opened) = self.opened.lock() {
            opened.remove(&tenant);
        }
    }

    /// Every public key that has signed `stream`.
    pub async fn public_keys(&self, stream: &StreamId) -> Result<Vec<PublicKeyInfo>> {
        self.store
            .audit_keys(stream.as_str())
            .await?
            .iter()
            .map(|row| key_from_row(row).map_err(internal))
            .collect()
    }
}

#[async_trait]
impl KeyRing for AuditKeys {
    async fn signing_key(&self, stream: &StreamId) -> Option<Arc<AuditKey>> {
        let Some(tenant) = stream.tenant_id() else {
            return Some(Arc::clone(&self.platform));
        };
        if let Some(key) = self.opened.lock().ok().and_then(|o| o.get(&tenant).cloned()) {
            return Some(key);
        }
        let id = bulkhead_model::TenantId(tenant);
        let secret = match self.vault.open_blob(id, KEY_LABEL).await {
            Ok(Some(secret)) => secret,
            // A purged tenant's key is destroyed: the platform keeps its
            // stream as custodian (its last events signed, retention).
            Ok(None) | Err(VaultError::NoDataKey)
                if matches!(self.store.tenant_by_id(id).await, Ok(None)) =>
            {
                return Some(self.custodian(stream));
            }
            // Not provisioned yet, or the tenant's own key is not loaded:
            // checkpoints wait.
            Ok(None) | Err(_) => return None,
        };
        Some(self.remember(tenant, AuditKey::from_secret(stream.clone(), &secret)?))
    }

    fn cached(&self, stream: &StreamId) -> Option<Arc<AuditKey>> {
        match stream.tenant_id() {
            Some(tenant) => self.opened.lock().ok()?.get(&tenant).cloned(),
            None => Some(Arc::clone(&self.platform)),
        }
    }

    fn custodian(&self, stream: &StreamId) -> Arc<AuditKey> {
        Arc::new(self.platform.custodian(stream))
    }
}

/// The platform's audit key, from an existing key file only: for a
/// command that writes to the platform's stream while the server may not
/// run (`bulkhead vault unlock --offline`).
pub fn existing_platform_key(data_dir: &Path) -> Result<AuditKey> {
    let path = platform_key_path(data_dir);
    if !path.exists() {
        return Err(AuditServiceError::InvalidRequest(format!(
            "{} is missing; run this where the server's data directory is (--data-dir), so the \
             event it records is MACed with the platform's audit key",
            path.display()
        )));
    }
    platform_key(&path)
}

/// The platform key file: base64url of the 32-byte seed, mode 0600.
fn platform_key(path: &Path) -> Result<AuditKey> {
    let unreadable =
        |e: std::io::Error| internal(format!("cannot read or write {}: {e}", path.display()));
    match std::fs::read_to_string(path).map(Zeroizing::new) {
        Ok(text) => {
            if make_private(path).map_err(unreadable)? {
                tracing::warn!(path = %path.display(), "platform audit key was readable by others; narrowed it to mode 0600");
            }
            let seed = Zeroizing::new(URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| {
                internal(format!(
                    "{} is not a platform audit key (base64url of 32 bytes); restore it from a \
                     backup, or remove it to start a new key",
                    path.display()
                ))
            })?);
            AuditKey::from_secret(StreamId::platform(), &seed)
                .ok_or_else(|| internal(format!("{} does not hold 32 bytes", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = AuditKey::generate(StreamId::platform()).map_err(internal)?;
            let text = Zeroizing::new(URL_SAFE_NO_PAD.encode(key.secret_bytes()));
            write_private(path, text.as_bytes()).map_err(unreadable)?;
            Ok(key)
        }
        Err(e) => Err(unreadable(e)),
    }
}

/// An event as a tail shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct EventView {
    pub seq: u64,
    pub time: String,
    pub actor_kind: String,
    pub actor_id: String,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub request_id: Option<String>,
    pub details: serde_json::Value,
    pub hash: String,
}

/// Reading the streams, as callers may.
#[derive(Debug)]
pub struct AuditService {
    store: Arc<dyn ControlStore>,
    keys: Arc<AuditKeys>,
    events: EventLog,
    clock: Arc<dyn Clock>,
    plans: PlanCatalog,
    admission: Arc<crate::admission::Admission>,
    witnesses: Vec<Arc<dyn Witness>>,
}

/// The stream a caller asked for: a tenant's (by name) or the platform's.
#[derive(Debug, Clone)]
pub enum StreamRequest {
    Tenant(String),
    Platform,
}

impl AuditService {
    pub fn new(
        store: Arc<dyn ControlStore>,
        keys: Arc<AuditKeys>,
        events: EventLog,
        clock: Arc<dyn Clock>,
        plans: PlanCatalog,
        admission: Arc<crate::admission::Admission>,
        witnesses: Vec<Arc<dyn Witness>>,
    ) -> Self {
        Self { store, keys, events, clock, plans, admission, witnesses }
    }

    /// The stream, if `actor` may read it: operators any; a tenant's admins
    /// and owners their own tenant's (it names their users and actions);
    /// nobody else learns whether a tenant exists.
    async fn stream(
        &self,
        actor: &Actor,
        request: &StreamRequest,
    ) -> Result<(StreamId, Option<Tenant>)> {
        match request {
            StreamRequest::Platform if actor.is_operator() => Ok((StreamId::platform(), None)),
            StreamRequest::Platform => Err(AuditServiceError::PlatformOnly),
            StreamRequest::Tenant(name) => {
                let missing = || AuditServiceError::TenantNotFound(name.clone());
                let tenant = match self.store.tenant_named(name).await? {
                    Some(tenant) => Some(tenant),
                    // A deleted tenant's stream outlives it: its departure
                    // says whose it was while it is kept.
                    None => self
                        .store
                        .departed_named(name)
                        .await?
                        .and_then(|d| serde_json::from_str::<Tenant>(&d.record).ok()),
                };
                let tenant = tenant.filter(|t| actor.may_access(t)).ok_or_else(missing)?;
                if !actor.allows(&tenant, Permission::Manage) {
                    return Err(AuditServiceError::Forbidden(name.clone()));
                }
                Ok((StreamId::tenant(tenant.id.0), Some(tenant)))
            }
        }
    }

    /// Events after `after`, oldest first; with no `after`, the last
    /// `limit`.
    pub async fn tail(
        &self,
        actor: &Actor,
        request: &StreamRequest,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<EventView>> {
        // Not admitted: reading the trail is what an operator needs most
        // while a principal is locked out; exports, which are signed and
        // leave, are.
        let (stream, _) = self.stream(actor, request).await?;
        let limit = limit.clamp(1, 10_000);
        let after = match after {
            Some(after) => i64::try_from(after).map_err(|_| {
                AuditServiceError::InvalidRequest(format!("after {after} is beyond any seq"))
            })?,
            None => {
                let head = self.store.audit_head(stream.as_str()).await?.map_or(0, |(seq, _)| seq);
                (head - i64::from(limit)).max(0)
            }
        };
        let rows = self.store.audit_events(stream.as_str(), after, limit).await?;
        rows.iter()
            .map(|row| {
                let event = event_from_row(row).map_err(internal)?;
                Ok(EventView {
                    seq: event.seq,
                    time: event.time,
                    actor_kind: event.actor.kind,
                    actor_id: event.actor.id,
                    action: event.action,
                    resource: event.resource,
                    outcome: event.outcome,
                    request_id: event.request_id,
                    details: serde_json::from_str(event.details.as_str()).map_err(internal)?,
                    hash: bulkhead_audit::record::hex(&event.hash),
                })
            })
            .collect()
    }

    /// An export of the stream, recorded on the stream itself first (so the
    /// export shows who took it).
    pub async fn export(
        &self,
        actor: &Actor,
        request: &StreamRequest,
        since: Option<OffsetDateTime>,
    ) -> Result<Exporter> {
        let (stream, tenant) = self.stream(actor, request).await?;
        if let Some(tenant) = &tenant {
            self.admission.admit(actor, tenant, "audit.export").await?;
        }
        // An export discloses the stream: it is recorded first, and refused
        // if that fails, which is also how a stream changed outside
        // Bulkhead is caught before anything of it is signed.
        let details =
            serde_json::json!({ "since": since.map(bulkhead_audit::record::format_time) });
        self.events.record_disclosure(actor, tenant.as_ref(), "audit.export", details).await?;
        let own = self
            .keys
            .signing_key(&stream)
            .await
            .ok_or_else(|| AuditServiceError::NoKey(stream.to_string()))?;
        let keys = StreamKeys { own: Some(own), custodian: self.keys.custodian(&stream) };
        let name = tenant.map(|t| t.name.to_string());
        let witnesses = self.witnesses.clone();
        let now = self.clock.now();
        Ok(Exporter::new(self.store.clone(), stream, name, keys, witnesses, since, now).await?)
    }

    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The public keys of a live tenant's stream, for its realm's
    /// documents: public, so any other name answers as missing.
    pub async fn published_keys(&self, name: &str) -> Result<Vec<PublicKeyInfo>> {
        let live = |t: &Tenant| matches!(t.state, TenantState::Active | TenantState::Suspended);
        let tenant = self.store.tenant_named(name).await?.filter(live);
        let tenant = tenant.ok_or_else(|| AuditServiceError::TenantNotFound(name.to_owned()))?;
        // From the sealed key itself, not from the table of public keys:
        // the server's database role may insert into that table, and a key
        // slipped in there must never be what tenants pin.
        let stream = StreamId::tenant(tenant.id.0);
        let key = self
            .keys
            .signing_key(&stream)
            .await
            .ok_or_else(|| AuditServiceError::NoKey(stream.to_string()))?;
        let recorded = self.keys.public_keys(&stream).await?;
        let created =
            recorded.iter().find(|k| k.key_id == key.key_id()).map(|k| k.created_at.clone());
        let mut info = key.public_info(self.clock.now());
        if let Some(created) = created {
            info.created_at = created;
        }
        Ok(vec![info])
    }

    /// Deletes, stream by stream, the events older than the tenant's plan
    /// keeps them, after a signed truncation checkpoint; returns how many.
    /// Deleted tenants' streams age out by their plan as well, and purged
    /// tenants' by what their last event (`tenant.purge`) says, or the
    /// longest any plan keeps events when it says nothing; their checkpoints
    /// are signed by the platform as the stream's custodian, the tenant's
    /// own key being destroyed. The platform's stream is kept.
    pub async fn apply_retention(&self) -> Result<u64> {
        let mut deleted = 0;
        for stream in self.store.audit_streams().await? {
            let Ok(stream) = StreamId::parse(&stream) else { continue };
            let Some(tenant_id) = stream.tenant_id() else { continue };
            let days = match self.store.tenant_by_id(bulkhead_model::TenantId(tenant_id)).await? {
                Some(tenant) => match self.plans.get(tenant.plan.as_str()) {
                    Ok(plan) => plan.audit_retention_days,
                    Err(_) => continue,
                },
                None => self.purged_retention_days(&stream).await?,
            };
            let before = self.clock.now() - time::Duration::days(i64::from(days));
            match self.events.audit().truncate_before(stream.clone(), before).await {
                Ok(n) => deleted += n,
                Err(error) => {
                    tracing::warn!(%stream, %error, "audit retention skipped");
                }
            }
        }
        Ok(deleted)
    }

    /// How long a purged tenant's stream is kept, as its purge recorded.
    async fn purged_retention_days(&self, stream: &StreamId) -> Result<u32> {
        let longest = self.plans.longest_audit_retention_days();
        let Some((seq, _)) = self.store.audit_head(stream.as_str()).await? else {
            return Ok(longest);
        };
        let last = self.store.audit_events(stream.as_str(), seq - 1, 1).await?;
        let recorded = last
            .first()
            .filter(|event| event.action == "tenant.purge")
            .and_then(|event| serde_json::from_str::<serde_json::Value>(&event.details).ok())
            .and_then(|details| details.get("audit_retention_days")?.as_u64())
            .and_then(|days| u32::try_from(days).ok());
        Ok(recorded.unwrap_or(longest))
    }
}

/// `<data-dir>/audit-platform.key`.
pub fn platform_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit-platform.key")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::Mutex as StdMutex;

    use bulkhead_audit::{StoreWitness, WriterSettings};
    use bulkhead_store::StoreLocation;
    use bulkhead_vault::{AnomalyDetector, AnomalyPolicy, MasterKeySource};

    use super::*;
    use crate::{admission::Admission, metrics::Metrics};

    /// A clock a test moves by hand.
    #[derive(Debug)]
    struct HandClock(StdMutex<OffsetDateTime>);

    impl Clock for HandClock {
        fn now(&self) -> OffsetDateTime {
            *self.0.lock().unwrap()
        }
    }

    /// Deleted and purged tenants' streams age out like live tenants'.
    #[tokio::test]
    async fn retention_reaches_deleted_and_purged_tenants_streams() {
        let dir = tempfile::tempdir().unwrap();
        let location = StoreLocation::Sqlite(dir.path().join("bulkhead.db"));
        let store = bulkhead_store::open(&location).await.unwrap();
        let now = crate::clock::SystemClock.now();
        let long_ago = now - time::Duration::days(400);
        let hand = Arc::new(HandClock(StdMutex::new(long_ago)));
        let clock: Arc<dyn Clock> = hand.clone();
        let source = MasterKeySource::File { path: dir.path().join("master.key"), create: true };
        let vault = Arc::new(Vault::open(store.clone(), &source, long_ago).await.unwrap());
        let keys = Arc::new(
            AuditKeys::open(
                store.clone(),
                Arc::clone(&vault),
                Arc::clone(&clock),
                &dir.path().join("audit-platform.key"),
            )
            .await
            .unwrap(),
        );
        let witnesses: Vec<Arc<dyn Witness>> = vec![Arc::new(StoreWitness(store.clone()))];
        let keyring: Arc<dyn KeyRing> = keys.clone();
        let (events, _writer) = EventLog::start(
            store.clone(),
            keyring,
            witnesses.clone(),
            Arc::clone(&clock),
            WriterSettings::default(),
        );
        let mut tenants = Vec::new();
        for (name, state) in [
            ("live", TenantState::Active),
            ("gone", TenantState::Deleted),
            ("purged", TenantState::Active),
        ] {
            let mut tenant = bulkhead_testkit::starter_tenant(name, long_ago);
            tenant.transition(TenantState::Active).unwrap();
            if state == TenantState::Deleted {
                tenant.transition(TenantState::Offboarding).unwrap();
                tenant.transition(TenantState::Deleted).unwrap();
            }
            store.insert_tenant(&tenant).await.unwrap();
            vault.create_data_key(tenant.id, long_ago).await.unwrap();
            keys.ensure_tenant_key(&tenant).await.unwrap();
            for n in 0..3 {
                let details = serde_json::json!({ "n": n });
                events.record(&Actor::Reconciler, &tenant, "tenant.test", "ok", details).await;
            }
            tenants.push(tenant);
        }
        // The purged tenant: its keys destroyed, its record gone, its last
        // event saying how long its stream is kept.
        let purged = &tenants[2];
        let keep = serde_json::json!({ "audit_retention_days": 30 });
        events.record(&Actor::Reconciler, purged, "tenant.purge", "ok", keep).await;
        vault.shred(purged.id).await.unwrap();
        keys.forget(purged.id.0);
        store.delete_tenant(purged.id).await.unwrap();
        events.audit().checkpoint_all().await.unwrap();

        *hand.0.lock().unwrap() = now;
        let admission = Arc::new(Admission::new(
            store.clone(),
            AnomalyDetector::new(AnomalyPolicy::default()),
            Arc::clone(&clock),
            events.clone(),
            Arc::new(Metrics::new()),
            PlanCatalog::builtin(),
        ));
        let service = AuditService::new(
            store.clone(),
            keys,
            events.clone(),
            clock,
            PlanCatalog::builtin(),
            admission,
            witnesses,
        );
        let deleted = service.apply_retention().await.unwrap();
        assert!(deleted >= 10, "every stream's old events went: {deleted}");
        for tenant in &tenants {
            let stream = StreamId::tenant(tenant.id.0);
            let left = store.audit_events(stream.as_str(), 0, 100).await.unwrap();
            assert!(left.is_empty(), "{} kept its old events: {left:?}", tenant.name);
        }
        events.audit().stop().await;
    }
}
