//! The vault as the control plane offers it: who may touch which tenant's
//! secrets and credentials, with which limits, and the record of every
//! touch. The cryptography lives in `bulkhead-vault`; this module decides
//! and records.

use std::{sync::Arc, time::Duration};

use bulkhead_identity::Permission;
use bulkhead_model::{PlanCatalog, Tenant, TenantState};
use bulkhead_store::{ControlStore, Lease, Lockout, SecretSummary, SecretVersion, StoreError};
use bulkhead_vault::{
    KeyRole, KeyStatus, LocalKey, MasterRotation, SecretPath, StoredSecret, TenantKeyChange, Vault,
    VaultError, ttl::format_duration,
};
use serde_json::json;
use thiserror::Error;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::{
    admission::{Admission, Refused},
    clock::Clock,
    credentials::{Access, CredentialError, Credentials, IssuedCredential},
    events::{Actor, EventLog, Unrecorded},
    limits::{Quota, QuotaExceeded},
    metrics::Metrics,
};

#[derive(Debug, Error)]
pub enum VaultServiceError {
    #[error("tenant {0:?} does not exist")]
    TenantNotFound(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    #[error("this endpoint needs an operator token")]
    OperatorOnly,
    #[error("your roles in tenant {0:?} do not allow this")]
    Forbidden(String),
    #[error(
        "{0} cannot clear its own lockout; use another operator token, or run `bulkhead vault \
         unlock {0} --offline` where the control store can be opened"
    )]
    SelfUnlock(String),
    #[error("lease {0} does not exist")]
    LeaseNotFound(String),
    #[error("lease {0} was already revoked")]
    LeaseRevoked(String),
    #[error("no lockout for {0:?}")]
    LockoutNotFound(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unrecorded(#[from] Unrecorded),
}

type Result<T, E = VaultServiceError> = std::result::Result<T, E>;

/// The default lifetime of a database credential.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(3_600);

#[derive(Debug)]
pub struct VaultService {
    store: Arc<dyn ControlStore>,
    vault: Arc<Vault>,
    credentials: Arc<Credentials>,
    plans: PlanCatalog,
    clock: Arc<dyn Clock>,
    events: EventLog,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
}

impl VaultService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn ControlStore>,
        vault: Arc<Vault>,
        credentials: Arc<Credentials>,
        plans: PlanCatalog,
        clock: Arc<dyn Clock>,
        admission: Arc<Admission>,
        metrics: Arc<Metrics>,
        events: EventLog,
    ) -> Self {
        Self { store, vault, credentials, plans, clock, events, admission, metrics }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Records an event about a tenant's vault and counts it.
    async fn note(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        action: &str,
        outcome: &str,
        details: serde_json::Value,
    ) {
        self.metrics.vault_operation(action, outcome);
        self.events.record(actor, tenant, action, outcome, details).await;
    }

    /// The tenant, if `actor` may reach it and it is in one of `states`. A
    /// tenant the actor may not reach is reported as missing, so a
    /// tenant-scoped credential learns nothing about other tenants.
    async fn tenant(
        &self,
        actor: &Actor,
        name: &str,
        states: &[TenantState],
        permission: Permission,
    ) -> Result<Tenant> {
        let missing = || VaultServiceError::TenantNotFound(name.to_owned());
        let tenant = self.store.tenant_named(name).await?.filter(|t| actor.may_access(t));
        let tenant = tenant.ok_or_else(missing)?;
        if !actor.allows(&tenant, permission) {
            return Err(VaultServiceError::Forbidden(name.to_owned()));
        }
        if !states.contains(&tenant.state) {
            let allowed: Vec<_> = states.iter().map(|s| s.as_str()).collect();
            return Err(VaultServiceError::InvalidState(format!(
                "tenant {name:?} is {}; its vault is open only while it is {}",
                tenant.state,
                allowed.join(" or ")
            )));
        }
        Ok(tenant)
    }

    async fn admit(&self, actor: &Actor, tenant: &Tenant, action: &str) -> Result<()> {
        Ok(self.admission.admit(actor, tenant, action).await?)
    }

    /// Records the outcome of a vault operation on a tenant, then returns it.
    async fn recorded<T>(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        action: &str,
        mut details: serde_json::Value,
        result: Result<T>,
    ) -> Result<T> {
        let outcome = match &result {
            Ok(_) => "ok",
            Err(VaultServiceError::Vault(VaultError::SecretNotFound(_))) => "not_found",
            Err(_) => "failed",
        };
        if let (Err(error), Some(map)) = (&result, details.as_object_mut()) {
            // A database server's own words may name another tenant's
            // objects (what holds a role): the log has them, the tenant's
            // stream does not.
            let said = match error {
                VaultServiceError::Credential(CredentialError::Database(_))
                | VaultServiceError::Vault(VaultError::Database(_)) => {
                    "the tenant's database server refused it; the server's log says why".to_owned()
                }
                other => other.to_string(),
            };
            map.insert("error".into(), json!(said));
        }
        self.note(actor, tenant, action, outcome, details).await;
        result
    }

    /// Like [`Self::recorded`], for actions that hand out a secret: what
    /// succeeded is handed out only once its event is written.
    async fn disclosed<T>(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        action: &str,
        details: serde_json::Value,
        result: Result<T>,
    ) -> Result<T> {
        if result.is_err() {
            return self.recorded(actor, tenant, action, details, result).await;
        }
        let recorded = self.events.record_disclosure(actor, Some(tenant), action, details).await;
        self.metrics.vault_operation(action, if recorded.is_ok() { "ok" } else { "unrecorded" });
        recorded?;
        result
    }

    // ---- secrets ---------------------------------------------------------

    const OPEN: &[TenantState] = &[TenantState::Active, TenantState::Suspended];

    pub async fn put_secret(
        &self,
        actor: &Actor,
        tenant: &str,
        path: &str,
        value: &[u8],
    ) -> Result<SecretVersion> {
        let path = SecretPath::parse(path)?;
        bulkhead_vault::path::check_value(value)?;
        let tenant = self.tenant(actor, tenant, Self::OPEN, Permission::Manage).await?;
        self.admit(actor, &tenant, "secret.write").await?;
        let plan = self.plans.get(tenant.plan.as_str()).ok();
        let keep = plan.map_or(1, |p| p.vault.secret_versions);
        // A new path counts against the plan's quota; a new version of one
        // replaces the oldest beyond `keep`.
        let paths = self.vault.list(tenant.id).await?;
        if !paths.iter().any(|p| p.path == path.as_str()) {
            self.admission.within_quota(&tenant, Quota::Secrets, paths.len())?;
        }
        let result = self
            .vault
            .put(tenant.id, &path, value, keep, &actor.to_string(), self.clock.now())
            .await
            .map_err(Into::into);
        let details = json!({ "path": path.as_str(), "size": value.len() });
        let stored = self.recorded(actor, &tenant, "secret.write", details, result).await?;
        Ok(stored)
    }

    pub async fn get_secret(
        &self,
        actor: &Actor,
        tenant: &str,
        path: &str,
        version: Option<i64>,
    ) -> Result<StoredSecret> {
        let path = SecretPath::parse(path)?;
        let tenant = self.tenant(actor, tenant, Self::OPEN, Permission::ReadSecrets).await?;
        self.admit(actor, &tenant, "secret.read").await?;
        let result = self.vault.get(tenant.id, &path, version).await.map_err(Into::into);
        let details = match &result {
            Ok(secret) => json!({ "path": path.as_str(), "version": secret.version }),
            Err(_) => json!({ "path": path.as_str(), "version": version }),
        };
        self.disclosed(actor, &tenant, "secret.read", details, result).await
    }

    pub async fn list_secrets(&self, actor: &Actor, tenant: &str) -> Result<Vec<SecretSummary>> {
        let tenant = self.tenant(actor, tenant, Self::OPEN, Permission::Read).await?;
        self.admit(actor, &tenant, "secret.list").await?;
        let result = self.vault.list(tenant.id).await.map_err(Into::into);
        self.recorded(actor, &tenant, "secret.list", json!({}), result).await
    }

    pub async fn delete_secret(&self, actor: &Actor, tenant: &str, path: &str) -> Result<u64> {
        let path = SecretPath::parse(path)?;
        let tenant = self.tenant(actor, tenant, Self::OPEN, Permission::Manage).await?;
        self.admit(actor, &tenant, "secret.delete").await?;
        let result = self.vault.delete(tenant.id, &path).await.map_err(Into::into);
        let details = json!({ "path": path.as_str() });
        self.recorded(actor, &tenant, "secret.delete", details, result).await
    }

    // ---- keys ------------------------------------------------------------

    pub async fn key_status(&self, actor: &Actor, tenant: &str) -> Result<(Tenant, KeyStatus)> {
        let tenant = self.tenant(actor, tenant, Self::OPEN, Permission::Read).await?;
        self.admit(actor, &tenant, "data_key.status").await?;
        let status = self.vault.key_status(tenant.id).await?;
        Ok((tenant, status))
    }

    /// A new data key version for new writes.
    pub async fn rotate_data_key(&self, actor: &Actor, tenant: &str) -> Result<i64> {
        let tenant = self.tenant(actor, tenant, Self::OPEN, Permission::Manage).await?;
        self.admit(actor, &tenant, "data_key.rotate").await?;
        let result =
            self.vault.rotate_data_key(tenant.id, self.clock.now()).await.map_err(Into::into);
        let details = match &result {
            Ok(version) => json!({ "version": version }),
            Err(_) => json!({}),
        };
        self.recorded(actor, &tenant, "data_key.rotate", details, result).await
    }

    /// Re-encrypts the tenant's secrets under its latest data key.
    pub async fn rewrap(&self, actor: &Actor, tenant: &str) -> Result<usize> {
        let tenant = self.tenant(actor, tenant, Self::OPEN, Permission::Manage).await?;
        self.admit(actor, &tenant, "secret.rewrap").await?;
        let result = self.vault.rewrap(tenant.id).await.map_err(Into::into);
        let details = match &result {
            Ok(moved) => json!({ "reencrypted": moved }),
            Err(_) => json!({}),
        };
        self.recorded(actor, &tenant, "secret.rewrap", details, result).await
    }

    /// Supplies the tenant's own key (bring-your-own-key).
    pub async fn set_tenant_key(
        &self,
        actor: &Actor,
        tenant: &str,
        key_text: &Zeroizing<String>,
    ) -> Result<TenantKeyChange> {
        let tenant = self.tenant(actor, tenant, Self::OPEN, Permission::Own).await?;
        self.admit(actor, &tenant, "tenant_key.load").await?;
        let key = LocalKey::parse(KeyRole::Tenant, key_text)?;
        let kek_id = bulkhead_vault::KeyEncryptionKey::id(&key).to_owned();
        let result =
            self.vault.set_tenant_key(tenant.id, key, self.clock.now()).await.map_err(Into::into);
        let details = match &result {
            Ok(TenantKeyChange::Adopted { reencrypted }) => {
                json!({ "kek_id": kek_id, "adopted": true, "reencrypted": reencrypted })
            }
            _ => json!({ "kek_id": kek_id }),
        };
        self.recorded(actor, &tenant, "tenant_key.load", details, result).await
    }

    /// Forgets the tenant's own key until it is supplied again.
    pub async fn forget_tenant_key(&self, actor: &Actor, tenant: &str) -> Result<bool> {
        let tenant = self.tenant(actor, tenant, Self::OPEN, Permission::Own).await?;
        self.admit(actor, &tenant, "tenant_key.forget").await?;
        let result = self.vault.forget_tenant_key(tenant.id).map_err(Into::into);
        self.recorded(actor, &tenant, "tenant_key.forget", json!({}), result).await
    }

    pub async fn rotate_master(&self, actor: &Actor) -> Result<MasterRotation> {
        if !actor.is_operator() {
            return Err(VaultServiceError::OperatorOnly);
        }
        let result = self.vault.rotate_master(self.clock.now()).await;
        let (outcome, details) = match &result {
            Ok(r) => ("ok", json!({ "from": r.from, "to": r.to, "rewrapped": r.rewrapped })),
            Err(e) => ("failed", json!({ "error": e.to_string() })),
        };
        self.metrics.vault_operation("master_key.rotate", outcome);
        self.events.record_platform(actor, "master_key.rotate", outcome, details).await;
        Ok(result?)
    }

    // ---- credentials -----------------------------------------------------

    pub async fn issue_credential(
        &self,
        actor: &Actor,
        tenant: &str,
        access: Access,
        ttl: Option<Duration>,
    ) -> Result<IssuedCredential> {
        let permission = match access {
            Access::Read => Permission::ReadSecrets,
            Access::Write => Permission::Manage,
        };
        let tenant = self.tenant(actor, tenant, &[TenantState::Active], permission).await?;
        let max = self.plans.get(tenant.plan.as_str()).map_or(DEFAULT_CREDENTIAL_TTL, |p| {
            Duration::from_secs(p.vault.max_credential_ttl_secs)
        });
        let mut ttl = ttl.unwrap_or(DEFAULT_CREDENTIAL_TTL.min(max));
        if ttl > max || ttl.is_zero() {
            return Err(VaultServiceError::InvalidRequest(format!(
                "a ttl of {} is not allowed; on plan {} credentials live between 1s and {}",
                format_duration(ttl),
                tenant.plan,
                format_duration(max)
            )));
        }
        // A credential issued with a token (or an expiring API key) cannot
        // outlive it: a stolen token must not turn into a longer-lived login.
        if let Some(own) = actor.expires_at() {
            let left = own.saturating_sub(self.clock.now().unix_timestamp());
            let left = Duration::from_secs(u64::try_from(left).unwrap_or(0));
            if left.is_zero() {
                return Err(VaultServiceError::InvalidRequest(
                    "the credential you use expires now; get a fresh token".into(),
                ));
            }
            ttl = ttl.min(left);
        }
        self.admit(actor, &tenant, "credential.issue").await?;
        // Live ones only: an expired lease still being revoked (a stuck one)
        // costs the tenant nothing, nor do the leases of its apps' workers.
        let now = self.clock.now();
        let live = self
            .store
            .leases(tenant.id, false)
            .await?
            .iter()
            .filter(|l| {
                l.expires_at > now && !l.issued_by.starts_with(crate::runtime::LEASE_HOLDER)
            })
            .count();
        self.admission.within_quota(&tenant, Quota::LiveCredentials, live)?;
        let result = self
            .credentials
            .issue(
                &tenant,
                access,
                ttl,
                crate::credentials::sessions(&self.plans, &tenant),
                &actor.to_string(),
                self.clock.now(),
            )
            .await
            .map_err(Into::into);
        let details = match &result {
            Ok(issued) => json!({
                "lease": issued.lease.id, "role": issued.lease.role, "access": access.as_str(),
                "expires_at": issued.lease.expires_at.unix_timestamp(),
            }),
            Err(_) => json!({ "access": access.as_str() }),
        };
        let issued = result.as_ref().ok().map(|issued| issued.lease.clone());
        let disclosed = self.disclosed(actor, &tenant, "credential.issue", details, result).await;
        if let (Err(VaultServiceError::Unrecorded(_)), Some(lease)) = (&disclosed, issued) {
            // Nobody has its password; drop the role now rather than at
            // its expiry.
            if let Err(error) = self.credentials.revoke(&lease, self.clock.now()).await {
                tracing::warn!(lease = %lease.id, %error, "cannot revoke an unrecorded credential");
            }
        }
        disclosed
    }

    /// Revokes a lease. With `tenant` (the tenant-scoped path), a lease of
    /// any other tenant is answered as missing.
    pub async fn revoke_credential(
        &self,
        actor: &Actor,
        tenant: Option<&str>,
        lease: &str,
    ) -> Result<Lease> {
        let missing = || VaultServiceError::LeaseNotFound(lease.to_owned());
        let id = Uuid::parse_str(lease).map_err(|_| missing())?;
        let lease = self.store.lease(id).await?.ok_or_else(missing)?;
        let owner =
            self.store.tenant_by_id(lease.tenant_id).await?.filter(|t| {
                actor.may_access(t) && tenant.is_none_or(|name| t.name.as_str() == name)
            });
        let tenant = owner.ok_or_else(missing)?;
        if !actor.allows(&tenant, Permission::Manage) {
            return Err(VaultServiceError::Forbidden(tenant.name.to_string()));
        }
        if lease.revoked_at.is_some() {
            return Err(VaultServiceError::LeaseRevoked(lease.id.to_string()));
        }
        self.admit(actor, &tenant, "credential.revoke").await?;
        let result = match self.credentials.revoke(&lease, self.clock.now()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(VaultServiceError::LeaseRevoked(lease.id.to_string())),
            Err(e) => Err(e.into()),
        };
        let details = json!({ "lease": lease.id, "role": lease.role });
        self.recorded(actor, &tenant, "credential.revoke", details, result).await?;
        Ok(self.store.lease(id).await?.unwrap_or(lease))
    }

    pub async fn list_credentials(
        &self,
        actor: &Actor,
        tenant: &str,
        include_revoked: bool,
    ) -> Result<Vec<Lease>> {
        let states = [Self::OPEN, &[TenantState::Deleted, TenantState::Offboarding]].concat();
        let tenant = self.tenant(actor, tenant, &states, Permission::Read).await?;
        self.admit(actor, &tenant, "credential.list").await?;
        Ok(self.store.leases(tenant.id, include_revoked).await?)
    }

    // ---- lockouts ----------------------------------------------------------

    pub async fn lockouts(&self, actor: &Actor) -> Result<Vec<Lockout>> {
        if !actor.is_operator() {
            return Err(VaultServiceError::OperatorOnly);
        }
        Ok(self.store.lockouts().await?)
    }

    pub async fn unlock(&self, actor: &Actor, principal: &str) -> Result<()> {
        if !actor.is_operator() {
            return Err(VaultServiceError::OperatorOnly);
        }
        // A stolen credential must not be able to clear its own lockout.
        if actor.to_string() == principal {
            return Err(VaultServiceError::SelfUnlock(principal.to_owned()));
        }
        if !self.store.delete_lockout(principal).await? {
            return Err(VaultServiceError::LockoutNotFound(principal.to_owned()));
        }
        self.admission.forget(principal);
        self.events
            .record_platform(actor, "vault.unlock", "ok", json!({ "principal": principal }))
            .await;
        Ok(())
    }

    // ---- background work -----------------------------------------------

    /// Revokes the leases due for it and applies suspensions to leases;
    /// returns how many leases were revoked. A lease that cannot be
    /// revoked is recorded in its tenant's stream (without the reason,
    /// which may name another tenant's database) and, with the reason, in
    /// the platform's, at its 1st, 2nd, 4th, 8th ... attempt.
    pub async fn expire_leases(&self) -> Result<usize> {
        let now = self.clock.now();
        let expired = self.credentials.expire(now).await?;
        for lease in &expired.revoked {
            if let Some(tenant) = self.store.tenant_by_id(lease.tenant_id).await? {
                let details = json!({ "lease": lease.id, "role": lease.role });
                self.note(&Actor::Scheduler, &tenant, "credential.expire", "ok", details).await;
            }
        }
        for (lease, reason) in &expired.failed {
            self.metrics.lease_revocation_failed();
            let Some(tenant) = self.store.tenant_by_id(lease.tenant_id).await? else { continue };
            if lease.attempts.count_ones() != 1 {
                continue;
            }
            let details = json!({
                "lease": lease.id, "role": lease.role, "attempts": lease.attempts,
                "login": "disabled",
            });
            self.note(&Actor::Scheduler, &tenant, "credential.expire", "failed", details).await;
            let alert = json!({
                "tenant": tenant.name, "lease": lease.id, "role": lease.role,
                "attempts": lease.attempts, "reason": reason,
            });
            self.events
                .record_platform(&Actor::Scheduler, "credential.stuck", "alert", alert)
                .await;
        }
        let applied = self.credentials.apply_suspensions(now).await?;
        if applied.disabled + applied.enabled > 0 {
            tracing::info!(
                disabled = applied.disabled,
                enabled = applied.enabled,
                "applied tenant suspensions to database credentials"
            );
        }
        self.metrics.set_leases_stuck(self.store.stuck_leases().await?);
        if applied.failed > 0 {
            return Err(VaultServiceError::Credential(CredentialError::Database(format!(
                "{} credential(s) of suspended or resumed tenants could not be changed yet",
                applied.failed
            ))));
        }
        Ok(expired.revoked.len())
    }

    /// Makes the suspended tenant's database credentials unable to log in
    /// (ending their sessions), or lets a resumed tenant's log in again,
    /// now rather than at the next sweep.
    pub async fn apply_suspensions(&self) -> Result<()> {
        self.credentials.apply_suspensions(self.clock.now()).await?;
        Ok(())
    }

    /// Rotates (and re-encrypts under) the data key of every open tenant
    /// whose latest key is older than `every`; returns how many.
    pub async fn rotate_due_keys(&self, every: Duration) -> Result<usize> {
        let now = self.clock.now();
        let mut rotated = 0;
        for tenant in
            self.store.all_tenants().await?.iter().filter(|t| Self::OPEN.contains(&t.state))
        {
            let status = self.vault.key_status(tenant.id).await?;
            let Some((_, _, created)) = status.versions.last() else { continue };
            let due = time::Duration::try_from(every).ok().and_then(|e| created.checked_add(e));
            if due.is_none_or(|due| due > now) {
                continue;
            }
            if !status.unsealed {
                tracing::info!(tenant = %tenant.name, "data key due for rotation, but the tenant's own key is not loaded");
                continue;
            }
            let result = async {
                let version = self.vault.rotate_data_key(tenant.id, now).await?;
                let moved = self.vault.rewrap(tenant.id).await?;
                Ok::<_, VaultError>(json!({ "version": version, "reencrypted": moved, "policy": format_duration(every) }))
            }
            .await;
            match result {
                Ok(details) => {
                    rotated += 1;
                    self.note(&Actor::Scheduler, tenant, "data_key.rotate", "ok", details).await;
                }
                Err(error) => {
                    tracing::warn!(tenant = %tenant.name, %error, "scheduled data key rotation failed");
                }
            }
        }
        Ok(rotated)
    }
}
