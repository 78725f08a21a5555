//! Identity as the control plane offers it: each tenant's realm (keys,
//! published documents, tokens), its API keys, and the verification of
//! tenant-scoped credentials presented to the control API. The JWT work is
//! `bulkhead-identity`'s; private keys are sealed by the vault under the
//! tenant's data key.

use std::{collections::HashMap, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bulkhead_identity::{
    Algorithm, ClaimMapping, Jwk, Permission, RealmClaims, Rejected, Role, SigningKey, Trust,
    Verified, VerifiedCache, VerifyingKey, jws, verify::LEEWAY_SECS,
};
use bulkhead_model::{Tenant, TenantName, TenantState};
use bulkhead_store::{ApiKeyRecord, ControlStore, RealmKeyRecord, RealmRecord, StoreError};
use bulkhead_vault::{Vault, VaultError, ttl::format_duration};
use serde_json::json;
use sha2::{Digest, Sha256};
use thiserror::Error;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::{
    clock::Clock,
    events::{Actor, EventLog},
};

/// A realm's token lifetimes: 1 h unless asked, never above 24 h.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3_600);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(86_400);

/// Tenants whose realm answers: their tokens verify and their documents
/// are published.
const LIVE: &[TenantState] = &[TenantState::Active, TenantState::Suspended];

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("tenant {0:?} does not exist")]
    TenantNotFound(String),
    #[error("your roles in tenant {0:?} do not allow this")]
    Forbidden(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("API key {0} does not exist")]
    ApiKeyNotFound(String),
    #[error("tenant {0:?} has no realm yet; it is created when the tenant is provisioned")]
    NoRealm(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

type Result<T, E = IdentityError> = std::result::Result<T, E>;

/// A token as issued.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: Zeroizing<String>,
    pub claims: RealmClaims,
    pub kid: String,
}

/// An API key as created: the only time the key itself is seen.
pub struct CreatedApiKey {
    pub record: ApiKeyRecord,
    pub key: Zeroizing<String>,
}

impl std::fmt::Debug for CreatedApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedApiKey").field("record", &self.record).finish_non_exhaustive()
    }
}

/// What a caller asks a token to say.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    pub subject: String,
    pub roles: Vec<Role>,
    pub ttl: Option<Duration>,
    pub audience: Vec<String>,
}

#[derive(Debug)]
pub struct IdentityService {
    store: Arc<dyn ControlStore>,
    vault: Arc<Vault>,
    clock: Arc<dyn Clock>,
    events: EventLog,
    /// Where this server is reached from outside, without a trailing slash:
    /// issuers are `<public_url>/realms/<tenant>`.
    public_url: String,
    cache: VerifiedCache,
}

fn label(kid: &str) -> String {
    format!("identity/realm-key/{kid}")
}

fn internal(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Internal(e.to_string())
}

impl IdentityService {
    pub fn new(
        store: Arc<dyn ControlStore>,
        vault: Arc<Vault>,
        clock: Arc<dyn Clock>,
        public_url: &str,
    ) -> Self {
        let events = EventLog::new(Arc::clone(&store), Arc::clone(&clock));
        Self {
            store,
            vault,
            clock,
            events,
            public_url: public_url.trim_end_matches('/').to_owned(),
            cache: VerifiedCache::new(100_000),
        }
    }

    pub fn issuer(&self, tenant: &TenantName) -> String {
        format!("{}/realms/{tenant}", self.public_url)
    }

    // ---- realm lifecycle (provisioning steps) -------------------------------

    /// Creates the tenant's realm and its first signing key, unless they
    /// exist.
    pub async fn ensure_realm(&self, tenant: &Tenant) -> Result<String> {
        let now = self.clock.now();
        self.store
            .ensure_realm(&RealmRecord {
                tenant_id: tenant.id,
                algorithm: Algorithm::EdDSA.as_str().to_owned(),
                default_ttl_secs: DEFAULT_TOKEN_TTL.as_secs() as i64,
                max_ttl_secs: MAX_TOKEN_TTL.as_secs() as i64,
                created_at: now,
                updated_at: now,
            })
            .await?;
        if let Some(key) = self.store.realm_keys(tenant.id).await?.into_iter().last() {
            return Ok(key.kid);
        }
        self.add_key(tenant, Algorithm::EdDSA).await
    }

    /// Makes a key, seals its private half, then publishes it. A crash
    /// between the two leaves a sealed blob nothing names, never a
    /// published key without its private half.
    async fn add_key(&self, tenant: &Tenant, alg: Algorithm) -> Result<String> {
        let key = SigningKey::generate(alg).map_err(internal)?;
        let now = self.clock.now();
        self.vault.seal_blob(tenant.id, &label(key.kid()), key.secret_bytes(), now).await?;
        let jwk = serde_json::to_string(&key.public_jwk().map_err(internal)?).map_err(internal)?;
        self.store
            .insert_realm_key(&RealmKeyRecord {
                tenant_id: tenant.id,
                kid: key.kid().to_owned(),
                algorithm: alg.as_str().to_owned(),
                public_jwk: jwk,
                created_at: now,
                retired_at: None,
                remove_after: None,
            })
            .await?;
        Ok(key.kid().to_owned())
    }

    /// Removes the tenant's realm: keys, sealed private halves, trusted
    /// provider, API keys. Its tokens stop verifying at once.
    pub async fn remove_realm(&self, tenant: &Tenant) -> Result<()> {
        for kid in self.store.delete_realm_keys(tenant.id).await? {
            match self.vault.delete_blob(tenant.id, &label(&kid)).await {
                Ok(_) | Err(VaultError::NoDataKey) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.store.delete_trust(tenant.id).await?;
        self.store.delete_api_keys(tenant.id).await?;
        self.store.delete_realm(tenant.id).await?;
        self.cache.forget_tenant(tenant.id.0);
        Ok(())
    }

    // ---- lookups -----------------------------------------------------------

    async fn live_tenant(&self, name: &str) -> Result<Tenant> {
        let missing = || IdentityError::TenantNotFound(name.to_owned());
        let parsed = TenantName::parse_stored(name).map_err(|_| missing())?;
        let tenant = self.store.tenant(&parsed).await?.ok_or_else(missing)?;
        if !LIVE.contains(&tenant.state) {
            return Err(missing());
        }
        Ok(tenant)
    }

    async fn authorized(
        &self,
        actor: &Actor,
        name: &str,
        permission: Permission,
    ) -> Result<Tenant> {
        let tenant = self.live_tenant(name).await?;
        if !actor.may_access(&tenant) {
            return Err(IdentityError::TenantNotFound(name.to_owned()));
        }
        if !actor.allows(&tenant, permission) {
            return Err(IdentityError::Forbidden(name.to_owned()));
        }
        Ok(tenant)
    }

    /// The tenant's published keys: every key not yet past `remove_after`.
    async fn published_keys(&self, tenant: &Tenant) -> Result<Vec<RealmKeyRecord>> {
        let now = self.clock.now();
        Ok(self
            .store
            .realm_keys(tenant.id)
            .await?
            .into_iter()
            .filter(|k| k.remove_after.is_none_or(|at| at > now))
            .collect())
    }

    /// `jwks.json` of a live tenant's realm.
    pub async fn jwks(&self, name: &str) -> Result<Vec<Jwk>> {
        let tenant = self.live_tenant(name).await?;
        self.published_keys(&tenant)
            .await?
            .iter()
            .map(|k| serde_json::from_str(&k.public_jwk).map_err(internal))
            .collect()
    }

    /// The OpenID Provider metadata of a live tenant's realm.
    pub async fn discovery(&self, name: &str) -> Result<serde_json::Value> {
        let tenant = self.live_tenant(name).await?;
        let issuer = self.issuer(&tenant.name);
        Ok(json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/jwks.json"),
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA", "ES256"],
            "response_types_supported": ["token"],
            "claims_supported": [
                "iss", "sub", "aud", "exp", "iat", "nbf", "jti", "tenant_id", "roles", "plan",
                "region",
            ],
        }))
    }

    /// How the tenant's own tokens are verified.
    async fn realm_trust(&self, tenant: &Tenant) -> Result<Trust> {
        let mut keys = HashMap::new();
        for record in self.published_keys(tenant).await? {
            let jwk: Jwk = serde_json::from_str(&record.public_jwk).map_err(internal)?;
            keys.insert(record.kid, VerifyingKey::from_jwk(&jwk).map_err(internal)?);
        }
        Ok(Trust {
            tenant_id: tenant.id.0,
            issuer: self.issuer(&tenant.name),
            keys,
            algorithms: vec![Algorithm::EdDSA, Algorithm::ES256],
            audience: None,
            claims: ClaimMapping::Realm,
        })
    }

    // ---- tokens --------------------------------------------------------------

    pub async fn issue_token(
        &self,
        actor: &Actor,
        name: &str,
        request: TokenRequest,
    ) -> Result<IssuedToken> {
        let tenant = self.authorized(actor, name, Permission::Manage).await?;
        if request.subject.is_empty() || request.subject.len() > 255 {
            return Err(IdentityError::InvalidRequest(
                "subject must be 1 to 255 characters".into(),
            ));
        }
        // Nobody mints a token stronger than their own.
        if let Actor::Tenant { roles, .. } = actor {
            let own = roles.iter().min().copied();
            if let Some(too_high) = request.roles.iter().find(|r| own.is_none_or(|o| **r < o)) {
                return Err(IdentityError::Forbidden(format!(
                    "{name}: a token with role {too_high}"
                )));
            }
        }
        let realm = self
            .store
            .realm(tenant.id)
            .await?
            .ok_or_else(|| IdentityError::NoRealm(name.to_owned()))?;
        let max = Duration::from_secs(realm.max_ttl_secs.max(1) as u64);
        let default = Duration::from_secs(realm.default_ttl_secs.max(1) as u64);
        let ttl = request.ttl.unwrap_or(default);
        if ttl.is_zero() || ttl > max {
            return Err(IdentityError::InvalidRequest(format!(
                "a ttl of {} is not allowed; tokens of this realm live between 1s and {}",
                format_duration(ttl),
                format_duration(max)
            )));
        }
        let active = self
            .published_keys(&tenant)
            .await?
            .into_iter()
            .rfind(|k| k.retired_at.is_none())
            .ok_or_else(|| IdentityError::NoRealm(name.to_owned()))?;
        let secret = self
            .vault
            .open_blob(tenant.id, &label(&active.kid))
            .await?
            .ok_or_else(|| internal(format!("realm key {} has no private half", active.kid)))?;
        let alg = Algorithm::parse(&active.algorithm).map_err(internal)?;
        let key = SigningKey::from_secret(active.kid.clone(), alg, &secret).map_err(internal)?;
        let now = self.clock.now().unix_timestamp();
        let mut roles = request.roles;
        roles.sort();
        roles.dedup();
        let claims = RealmClaims {
            iss: self.issuer(&tenant.name),
            sub: request.subject,
            aud: request.audience,
            exp: now + ttl.as_secs() as i64,
            iat: now,
            nbf: now,
            jti: Uuid::new_v4().to_string(),
            tenant_id: tenant.id.0,
            roles,
            plan: tenant.plan.to_string(),
            region: tenant.region.to_string(),
        };
        let token = Zeroizing::new(jws::encode(&key, &claims).map_err(internal)?);
        let details = json!({
            "sub": claims.sub, "roles": claims.roles, "jti": claims.jti, "kid": key.kid(),
            "exp": claims.exp,
        });
        self.events.record(actor, &tenant, "token.issue", "ok", details).await;
        Ok(IssuedToken { token, kid: key.kid().to_owned(), claims })
    }

    /// A new signing key takes over; the old ones stay published until no
    /// token they signed can still be valid (the realm's longest TTL plus
    /// the leeway), then leave the JWKS.
    /// With `algorithm`, the realm switches to it for this and later keys.
    pub async fn rotate_key(
        &self,
        actor: &Actor,
        name: &str,
        algorithm: Option<Algorithm>,
    ) -> Result<(String, usize)> {
        let tenant = self.authorized(actor, name, Permission::Manage).await?;
        let realm = self
            .store
            .realm(tenant.id)
            .await?
            .ok_or_else(|| IdentityError::NoRealm(name.to_owned()))?;
        let alg = match algorithm {
            Some(alg) => {
                self.store.set_realm_algorithm(tenant.id, alg.as_str(), self.clock.now()).await?;
                alg
            }
            None => Algorithm::parse(&realm.algorithm).map_err(internal)?,
        };
        let kid = self.add_key(&tenant, alg).await?;
        let now = self.clock.now();
        let remove_after = now + time::Duration::seconds(realm.max_ttl_secs + LEEWAY_SECS);
        let retired = self.store.retire_realm_keys(tenant.id, &kid, now, remove_after).await?;
        for old in self.store.remove_expired_realm_keys(tenant.id, now).await? {
            let _ = self.vault.delete_blob(tenant.id, &label(&old)).await;
        }
        let details = json!({ "kid": kid, "algorithm": alg.as_str(), "retired": retired });
        self.events.record(actor, &tenant, "realm.rotate_key", "ok", details).await;
        Ok((kid, retired as usize))
    }

    // ---- API keys ------------------------------------------------------------

    pub async fn create_api_key(
        &self,
        actor: &Actor,
        name: &str,
        key_name: &str,
        roles: Vec<Role>,
    ) -> Result<CreatedApiKey> {
        let tenant = self.authorized(actor, name, Permission::Manage).await?;
        if key_name.is_empty()
            || key_name.len() > 64
            || !key_name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(IdentityError::InvalidRequest(format!(
                "API key name {key_name:?} is invalid; use 1 to 64 characters of A-Z, a-z, 0-9, \
                 '-', '_' and '.'"
            )));
        }
        if roles.is_empty() {
            return Err(IdentityError::InvalidRequest(
                "an API key needs at least one role (owner, admin, analyst, viewer)".into(),
            ));
        }
        if let Actor::Tenant { roles: own, .. } = actor {
            let best = own.iter().min().copied();
            if roles.iter().any(|r| best.is_none_or(|b| *r < b)) {
                return Err(IdentityError::Forbidden(format!("{name}: a stronger API key")));
            }
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(internal)?;
        let key = Zeroizing::new(format!(
            "bh_{}_{}",
            tenant.name.as_str().replace('-', "_"),
            URL_SAFE_NO_PAD.encode(secret)
        ));
        let prefix: String = key.chars().take(key.len() - 43 + 4).collect();
        let record = ApiKeyRecord {
            id: Uuid::new_v4(),
            tenant_id: tenant.id,
            name: key_name.to_owned(),
            prefix,
            key_hash: Sha256::digest(key.as_bytes()).to_vec(),
            roles: roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","),
            created_by: actor.to_string(),
            created_at: self.clock.now(),
            last_used_at: None,
            revoked_at: None,
        };
        match self.store.insert_api_key(&record).await {
            Ok(()) => {}
            Err(StoreError::Duplicate(_)) => {
                return Err(IdentityError::Conflict(format!(
                    "tenant {name:?} already has an API key named {key_name:?}"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let details = json!({ "id": record.id, "name": record.name, "roles": record.roles });
        self.events.record(actor, &tenant, "apikey.create", "ok", details).await;
        Ok(CreatedApiKey { record, key })
    }

    pub async fn api_keys(&self, actor: &Actor, name: &str) -> Result<Vec<ApiKeyRecord>> {
        let tenant = self.authorized(actor, name, Permission::Read).await?;
        Ok(self.store.api_keys(tenant.id).await?)
    }

    pub async fn revoke_api_key(&self, actor: &Actor, name: &str, id: &str) -> Result<()> {
        let tenant = self.authorized(actor, name, Permission::Manage).await?;
        let missing = || IdentityError::ApiKeyNotFound(id.to_owned());
        let id = Uuid::parse_str(id).map_err(|_| missing())?;
        let key = self.store.api_keys(tenant.id).await?.into_iter().find(|k| k.id == id);
        let key = key.ok_or_else(missing)?;
        if !self.store.revoke_api_key(tenant.id, id, self.clock.now()).await? {
            return Err(IdentityError::Conflict(format!("API key {id} was already revoked")));
        }
        let details = json!({ "id": id, "name": key.name });
        self.events.record(actor, &tenant, "apikey.revoke", "ok", details).await;
        Ok(())
    }

    // ---- authentication --------------------------------------------------------

    /// Who presents `credential` (a realm token or an API key) to act on
    /// tenant `name`, or why not (for the log and the event record only).
    pub async fn authenticate(&self, name: &str, credential: &str) -> Result<Actor, String> {
        let tenant = match self.live_tenant(name).await {
            Ok(tenant) => tenant,
            Err(e) => return Err(e.to_string()),
        };
        let result = if credential.starts_with("bh_") {
            self.api_key_actor(&tenant, credential).await
        } else {
            self.token_actor(&tenant, credential).await
        };
        if let Err(reason) = &result {
            let details = json!({ "reason": reason });
            self.events.record(&Actor::Anonymous, &tenant, "auth.refused", "denied", details).await;
        }
        result
    }

    async fn token_actor(&self, tenant: &Tenant, token: &str) -> Result<Actor, String> {
        let trust = self.realm_trust(tenant).await.map_err(|e| e.to_string())?;
        let now = self.clock.now().unix_timestamp();
        let verified: Verified = self
            .cache
            .verify(token, &trust, now)
            .map_err(|Rejected { reason }| reason.to_string())?;
        Ok(Actor::Tenant { tenant_id: tenant.id, subject: verified.subject, roles: verified.roles })
    }

    /// The key is looked up by its SHA-256; its `bh_<tenant>_` prefix is
    /// never trusted: the stored key's tenant must be the tenant asked for.
    async fn api_key_actor(&self, tenant: &Tenant, key: &str) -> Result<Actor, String> {
        let hash = Sha256::digest(key.as_bytes());
        let record = self
            .store
            .api_key_by_hash(&hash)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "unknown API key".to_owned())?;
        if record.tenant_id != tenant.id {
            return Err("an API key of another tenant".into());
        }
        if record.revoked_at.is_some() {
            return Err(format!("API key {} is revoked", record.id));
        }
        let now = self.clock.now();
        // Written at most once a minute per key, not on every request.
        if record.last_used_at.is_none_or(|at| now - at > time::Duration::minutes(1)) {
            let _ = self.store.touch_api_key(record.id, now).await;
        }
        let roles = record.roles.split(',').filter_map(Role::parse).collect();
        Ok(Actor::Tenant {
            tenant_id: tenant.id,
            subject: format!("apikey:{}", record.name),
            roles,
        })
    }

    /// The keys the realm signs and verifies with, for `bulkhead auth keys`.
    pub async fn realm_keys(&self, actor: &Actor, name: &str) -> Result<Vec<RealmKeyRecord>> {
        let tenant = self.authorized(actor, name, Permission::Read).await?;
        self.published_keys(&tenant).await
    }
}
