//! What offboarding does with a tenant's backups. A plain delete keeps one
//! final snapshot, taken while everything of the tenant still exists and
//! encrypted to a key of its own that the vault seals apart from the
//! tenant's data keys (which the delete destroys); the rest of the chain
//! goes. The departure (the tenant's record, the snapshot and its key) is
//! kept for `[backup] final_snapshot_days`, then the scheduler destroys
//! it. Within that window `tenants restore NAME --from-final` brings the
//! tenant back as a new tenant; `tenants delete NAME --purge` destroys it
//! at once. Each of these is recorded in the platform's stream, which
//! outlives every tenant.

use std::sync::Arc;

use async_trait::async_trait;
use bulkhead_backup::Manifest;
use bulkhead_model::{Tenant, TenantId, TenantState};
use bulkhead_store::Departed;
use serde_json::json;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::{BackupService, BackupServiceError, Restored, Result, Target, restore::Source};
use crate::{
    events::Actor,
    provision::{StepError, TenantBackups},
    runtime::Runtime,
};

/// The kind of backup a departure keeps.
pub(super) const FINAL: &str = "final";

/// How long departures are kept, and the runtime whose workers a
/// departing tenant's snapshot waits for.
#[derive(Debug, Clone)]
pub struct DepartureSettings {
    pub keep: time::Duration,
    pub runtime: Option<Arc<Runtime>>,
}

impl DepartureSettings {
    /// As `[backup]` says (`final_snapshot_days`), stopping a departing
    /// tenant's workers through `runtime`.
    pub fn new(backup: &super::ScheduleSettings, runtime: Option<Arc<Runtime>>) -> Self {
        Self { keep: time::Duration::days(i64::from(backup.final_snapshot_days)), runtime }
    }
}

impl Default for DepartureSettings {
    fn default() -> Self {
        Self::new(&super::ScheduleSettings::default(), None)
    }
}

impl BackupService {
    /// Keeps departures for `settings.keep`, stopping a departing tenant's
    /// workers through `settings.runtime` before its final snapshot.
    pub fn with_departures(mut self, settings: DepartureSettings) -> Self {
        self.departures = settings;
        self
    }

    /// The latest departed tenant of this name, if its departure is kept.
    pub async fn departed(&self, name: &str) -> Result<Option<Departed>> {
        Ok(self.sources.store.departed_named(name).await?)
    }

    /// Every departure kept of a tenant that has left (not one still
    /// being offboarded), by name.
    pub async fn departures(&self) -> Result<Vec<Departed>> {
        let mut left = Vec::new();
        for departed in self.sources.store.departed_tenants().await? {
            if self.sources.store.tenant_by_id(departed.tenant_id).await?.is_none() {
                left.push(departed);
            }
        }
        Ok(left)
    }

    /// Takes the departing tenant's final snapshot unless it was taken
    /// already (a retried offboarding), then deletes its other backups.
    async fn keep_final_snapshot(&self, tenant: &Tenant) -> Result<()> {
        let departed = match self.sources.store.departed(tenant.id).await? {
            Some(departed) => departed,
            None => self.record_departure(tenant).await?,
        };
        let Some(id) = departed.backup_id.clone() else {
            // No snapshot (never active, or it keeps its own vault key and
            // no recipient of its own): nothing of it is kept.
            self.storage.delete_all(tenant.id.0).await?;
            return Ok(());
        };
        // Taken until its manifest is recorded: a snapshot a crash cut off
        // before that is taken again, over it.
        if departed.manifest.is_none() {
            let recipient = departed.recipient.clone().ok_or_else(|| {
                BackupServiceError::Internal("the departure records no recipient".into())
            })?;
            let _running = self.claim(tenant)?;
            if let Some(runtime) = &self.departures.runtime {
                let stopped = runtime.stop_tenant(tenant.id).await;
                self.departure_event(
                    &Actor::Reconciler,
                    &departed,
                    "tenant.stop_apps",
                    "ok",
                    json!({ "stopped": stopped }),
                )
                .await;
            }
            let taken = self
                .take(&Actor::Reconciler, tenant, &id, FINAL, &recipient)
                .await
                .map(|(listing, _)| listing);
            let details = match &taken {
                Ok(listing) => json!({
                    "backup": id,
                    "size": listing.size,
                    "store": self.storage.describe(),
                    "expires_at": bulkhead_audit::record::format_time(departed.expires_at),
                    "own_key": departed.kek_id.is_none(),
                }),
                Err(error) => json!({ "backup": id, "error": error.to_string() }),
            };
            let outcome = if taken.is_ok() { "ok" } else { "failed" };
            self.departure_event(
                &Actor::Reconciler,
                &departed,
                "tenant.final_snapshot",
                outcome,
                details,
            )
            .await;
            let manifest = serde_json::to_string(&taken?.manifest)
                .map_err(|e| BackupServiceError::Internal(e.to_string()))?;
            self.sources.store.set_departure_manifest(tenant.id, &manifest).await?;
        }
        for listing in self.storage.list(tenant.id.0).await? {
            if listing.id != id {
                self.storage.delete(tenant.id.0, &listing.id).await?;
            }
        }
        Ok(())
    }

    /// Records the departure before its snapshot is taken, with the key
    /// the snapshot is encrypted to: the tenant's own recipient if it
    /// registered one (Bulkhead then cannot open it), else a new identity
    /// the vault seals under the master key. A tenant whose data keys are
    /// wrapped by its own key gets a snapshot only to its own recipient:
    /// one under the master key would open what its key protects.
    async fn record_departure(&self, tenant: &Tenant) -> Result<Departed> {
        let now = self.sources.clock.now();
        let mut record = tenant.clone();
        record.state = TenantState::Deleted;
        record.last_error = None;
        let record = serde_json::to_string(&record)
            .map_err(|e| BackupServiceError::Internal(e.to_string()))?;
        let keys = self.sources.vault.key_status(tenant.id).await?;
        let (recipient, identity) = if tenant.provisioned_at.is_none() {
            (None, None)
        } else if keys.tenant_key {
            // Its own key, if not loaded, seals its recipient too: then it
            // leaves no snapshot.
            let own = if keys.unsealed { self.keys.own(tenant).await? } else { None };
            (own, None)
        } else if let Some(own) = self.keys.own(tenant).await? {
            (Some(own), None)
        } else {
            let (identity, recipient) = bulkhead_backup::generate_key();
            (Some(recipient), Some(identity))
        };
        let departed = Departed {
            tenant_id: tenant.id,
            name: tenant.name.to_string(),
            record,
            backup_id: recipient.is_some().then(|| bulkhead_backup::new_id(&now)),
            recipient,
            kek_id: None,
            wrapped_key: None,
            sealed_identity: None,
            manifest: None,
            departed_at: now,
            expires_at: now + self.departures.keep,
        };
        let sealed = identity.as_ref().map(|i| i.as_bytes());
        self.sources.vault.record_departure(departed, sealed).await?;
        self.sources.store.departed(tenant.id).await?.ok_or_else(|| {
            BackupServiceError::Internal("the departure just recorded is gone".into())
        })
    }

    /// Destroys every backup of the tenant and its departure (the final
    /// snapshot's key with it).
    async fn destroy(&self, tenant: TenantId) -> Result<u64> {
        let deleted = self.storage.delete_all(tenant.0).await?;
        self.sources.store.delete_departed(tenant).await?;
        Ok(deleted)
    }

    /// Destroys the departures kept past their time; returns how many.
    pub(super) async fn expire_departures(&self, now: OffsetDateTime) -> Result<u64> {
        let mut expired = 0;
        for departed in self.sources.store.departed_tenants().await? {
            // One still offboarding is its reconciler's.
            if departed.expires_at > now
                || self.sources.store.tenant_by_id(departed.tenant_id).await?.is_some()
            {
                continue;
            }
            self.destroy(departed.tenant_id).await?;
            let details = json!({ "backup": departed.backup_id });
            self.departure_event(
                &Actor::Scheduler,
                &departed,
                "tenant.final_snapshot_expire",
                "ok",
                details,
            )
            .await;
            expired += 1;
        }
        Ok(expired)
    }

    /// Destroys a departed tenant's final snapshot and its key now
    /// (`tenants delete NAME --purge`). Operators only.
    pub async fn purge_departed(
        &self,
        actor: &Actor,
        name: &str,
        id: TenantId,
    ) -> Result<Departed> {
        if !actor.is_operator() {
            return Err(BackupServiceError::OperatorOnly);
        }
        let departed = self.departure(name, Some(id)).await?;
        self.destroy(departed.tenant_id).await?;
        let details = json!({ "backup": departed.backup_id });
        self.departure_event(actor, &departed, "tenant.purge", "ok", details).await;
        Ok(departed)
    }

    /// Brings a departed tenant back from its final snapshot, as a new
    /// tenant named `to` (its own name by default). The departure goes
    /// once the tenant is back. Operators only; a tenant that kept its
    /// own key gives its identity. `id` picks one of several departed
    /// tenants of the name; the latest by default.
    pub async fn restore_departed(
        &self,
        actor: &Actor,
        name: &str,
        id: Option<TenantId>,
        to: Option<String>,
        identity: Option<Zeroizing<String>>,
    ) -> Result<Restored> {
        if !actor.is_operator() {
            return Err(BackupServiceError::OperatorOnly);
        }
        let departed = self.departure(name, id).await?;
        if self.sources.store.tenant_by_id(departed.tenant_id).await?.is_some() {
            return Err(BackupServiceError::InvalidState(format!(
                "tenant {name:?} is still being offboarded; wait until `bulkhead tenants get \
                 {name}` says it is deleted"
            )));
        }
        let Some(id) = departed.backup_id.clone() else {
            return Err(BackupServiceError::InvalidState(format!(
                "tenant {name:?} never became active, so it left no final snapshot"
            )));
        };
        let identity = self.departure_identity(&departed, identity).await?;
        let record: Tenant = serde_json::from_str(&departed.record).map_err(|e| {
            BackupServiceError::Internal(format!("the departed tenant's record: {e}"))
        })?;
        let manifest = recorded_manifest(&departed)?;
        // Never two returns of one departure at once.
        let _running = self.claim(&record)?;
        let to = to.unwrap_or_else(|| name.to_owned());
        let reader = self.storage.read(departed.tenant_id.0, &id).await?;
        let source = Source { tenant: record, manifest: Some(manifest) };
        let result = self
            .restore_from(actor, reader, identity, Vec::new(), Some(source), Target::New(to.clone()), false)
            .await
            .map_err(|error| match error {
                BackupServiceError::Tenant(crate::tenants::TenantError::Exists(message)) => {
                    BackupServiceError::InvalidState(format!(
                        "{message}; bring the departed tenant back under another name with --to NAME"
                    ))
                }
                other => other,
            });
        let details = match &result {
            Ok(restored) => json!({ "backup": id, "to": restored.tenant }),
            Err(error) => json!({ "backup": id, "to": to, "error": error.to_string() }),
        };
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        self.departure_event(actor, &departed, "tenant.return", outcome, details).await;
        let mut restored = result?;
        restored.backup = id;
        // Back with the key it kept, if it kept its own.
        if departed.kek_id.is_none()
            && let Some(own) = &departed.recipient
            && let Some(tenant) = self.sources.store.tenant_named(&restored.tenant).await?
            && let Err(error) = self.keys.set_own(&tenant, Some(own)).await
        {
            restored.warnings.push(format!(
                "its own backup recipient could not be registered again ({error}): its backups \
                 go to a key Bulkhead holds until `bulkhead backups key set --tenant {} \
                 --recipient {own}`",
                restored.tenant
            ));
        }
        if let Err(error) = self.destroy(departed.tenant_id).await {
            tracing::warn!(%error, tenant = name, "cannot remove the departure of a tenant that came back; it expires as planned");
        }
        Ok(restored)
    }

    /// Decrypts a departed tenant's final snapshot and checks every part
    /// against the manifest recorded when it was taken, restoring nothing:
    /// whether `tenants restore NAME --from-final` would find it whole.
    /// Operators only.
    pub async fn verify_departed(
        &self,
        actor: &Actor,
        name: &str,
        id: Option<TenantId>,
        identity: Option<Zeroizing<String>>,
    ) -> Result<(String, Manifest)> {
        if !actor.is_operator() {
            return Err(BackupServiceError::OperatorOnly);
        }
        let departed = self.departure(name, id).await?;
        let Some(backup) = departed.backup_id.clone() else {
            return Err(BackupServiceError::InvalidState(format!(
                "tenant {name:?} left no final snapshot (it never became active, or kept its own \
                 key with no recipient of its own)"
            )));
        };
        let expected = recorded_manifest(&departed)?;
        let identity = self.departure_identity(&departed, identity).await?;
        let checked = match self.storage.read(departed.tenant_id.0, &backup).await {
            // The manifest pins the audit export's bytes; its signing keys
            // went with the tenant's stream, so the export's own are used.
            Ok(reader) => {
                self.check(reader, identity, Vec::new(), expected, departed.tenant_id).await
            }
            Err(error) => Err(error.into()),
        };
        let details = match &checked {
            Ok(_) => json!({ "backup": backup }),
            Err(error) => json!({ "backup": backup, "error": error.to_string() }),
        };
        let outcome = if checked.is_ok() { "ok" } else { "failed" };
        self.departure_event(actor, &departed, "tenant.verify_final", outcome, details).await;
        Ok((backup, checked?))
    }

    /// The identity that opens a departed tenant's final snapshot: the one
    /// given, else the key its departure sealed (none if it kept its own).
    async fn departure_identity(
        &self,
        departed: &Departed,
        given: Option<Zeroizing<String>>,
    ) -> Result<Zeroizing<String>> {
        if let Some(identity) = given {
            return Ok(identity);
        }
        match self.sources.vault.open_departure(departed).await? {
            Some(sealed) => {
                Ok(Zeroizing::new(String::from_utf8(sealed.to_vec()).map_err(|_| {
                    BackupServiceError::Internal("the final snapshot's key is not text".into())
                })?))
            }
            None => Err(BackupServiceError::InvalidState(format!(
                "tenant {:?} kept its own key: its final snapshot opens with that key's identity \
                 only; pass it with --identity-file FILE",
                departed.name
            ))),
        }
    }

    /// The departed tenant `id` of this name, or the latest of the name;
    /// one past its time is as good as gone.
    async fn departure(&self, name: &str, id: Option<TenantId>) -> Result<Departed> {
        let found = match id {
            Some(id) => self.sources.store.departed(id).await?.filter(|d| d.name == name),
            None => self.departed(name).await?,
        };
        found
            .filter(|d| d.expires_at > self.sources.clock.now())
            .ok_or_else(|| BackupServiceError::NotDeparted(name.to_owned()))
    }

    async fn departure_event(
        &self,
        actor: &Actor,
        departed: &Departed,
        action: &str,
        outcome: &str,
        details: serde_json::Value,
    ) {
        let about = (departed.name.as_str(), departed.tenant_id);
        self.events.record_platform_about(actor, about, action, outcome, details).await;
    }
}

/// The manifest recorded as the final snapshot was taken: only the snapshot
/// it describes is taken back, so whoever can write to the backup store
/// cannot pass off another.
fn recorded_manifest(departed: &Departed) -> Result<Manifest> {
    departed
        .manifest
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| BackupServiceError::Internal(format!("the recorded manifest: {e}")))?
        .ok_or_else(|| {
            BackupServiceError::InvalidState(format!(
                "tenant {:?} left before its final snapshot was complete",
                departed.name
            ))
        })
}

#[async_trait]
impl TenantBackups for BackupService {
    fn describe(&self) -> String {
        self.storage.describe().to_owned()
    }

    async fn keep_final(&self, tenant: &Tenant) -> std::result::Result<(), StepError> {
        self.keep_final_snapshot(tenant)
            .await
            .map_err(|e| StepError::Transient(format!("cannot keep the final snapshot: {e}")))
    }

    async fn destroy_all(&self, tenant: &Tenant) -> std::result::Result<(), StepError> {
        let deleted = self.destroy(tenant.id).await.map_err(|e| {
            StepError::Transient(format!("cannot delete the tenant's backups: {e}"))
        })?;
        if deleted > 0 {
            tracing::info!(tenant = %tenant.name, deleted, "deleted the tenant's backups");
        }
        Ok(())
    }
}
