//! Identity as the control plane offers it: each tenant's realm (keys,
//! published documents, tokens), its API keys, and the verification of
//! tenant-scoped credentials presented to the control API. The JWT work is
//! `bulkhead-identity`'s; private keys are sealed by the vault under the
//! tenant's data key.

use std::{collections::HashMap, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bulkhead_identity::{
    Algorithm, Jwk, Permission, RealmClaims, Rejected, Role, SigningKey, Trust, Verified,
    VerifiedCache, jws, verify::LEEWAY_SECS,
};
use bulkhead_model::{Tenant, TenantName, TenantState};
use bulkhead_store::{
    ApiKeyRecord, ControlStore, RealmKeyRecord, RealmRecord, StoreError, TrustRecord,
};
use bulkhead_vault::{Vault, VaultError, ttl::format_duration};
use serde_json::json;
use sha2::{Digest, Sha256};
use thiserror::Error;
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::{
    admission::Admission,
    clock::Clock,
    events::{Actor, Budget, EventLog, Unrecorded},
    limits::Quota,
    realms::Realms,
};

/// A realm's token lifetimes: 1 h unless asked, never above 24 h.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3_600);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(86_400);

/// Tenants whose realm is published (JWKS, discovery) and managed. Only an
/// active tenant's credentials act on the control API.
const LIVE: &[TenantState] = &[TenantState::Active, TenantState::Suspended];

/// At most this many refused credentials per tenant and window are recorded
/// as events; the rest are counted and the count goes with the next record.
/// Refusals are attacker-driven, and must not flood a tenant's event trail.
pub const REFUSALS_PER_WINDOW: u32 = 20;
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Refusal reasons may quote the token (a kid, say); they are cut to this.
const MAX_REASON_CHARS: usize = 200;

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
    #[error(
        "tenant {0:?}'s realm has no signing key; `bulkhead auth rotate-key --tenant {0}` makes \
         one (the daily key rotation would too)"
    )]
    NoSigningKey(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Unrecorded(#[from] Unrecorded),
    #[error(transparent)]
    Refused(#[from] crate::admission::Refused),
    #[error(transparent)]
    Quota(#[from] crate::limits::QuotaExceeded),
    #[error("{0}")]
    Internal(String),
}

type Result<T, E = IdentityError> = std::result::Result<T, E>;

/// A token as issued.
#[derive(Clone)]
pub struct IssuedToken {
    pub token: Zeroizing<String>,
    pub claims: RealmClaims,
    pub kid: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("claims", &self.claims)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
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
    /// Adds the control API's audience, so the token can call it.
    pub control_api: bool,
}

#[derive(Debug)]
pub struct IdentityService {
    store: Arc<dyn ControlStore>,
    vault: Arc<Vault>,
    clock: Arc<dyn Clock>,
    events: EventLog,
    admission: Arc<Admission>,
    realms: Arc<Realms>,
    cache: VerifiedCache,
    /// Key rotations and removals, one at a time: two concurrent rotations
    /// of a realm could otherwise retire each other's new key.
    rotation: tokio::sync::Mutex<()>,
    /// Refused credentials recorded per tenant and window.
    refusals: Budget,
}

/// A tenant's trust in an external identity provider, as an operator or
/// the tenant's owner sets it.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    pub issuer: String,
    pub jwks_url: String,
    /// The provider's tokens must name this audience: a token it issued
    /// for another application is not one for this tenant.
    pub audience: String,
    pub subject_claim: String,
    pub roles_claim: String,
    /// Provider role value → the Bulkhead role it grants.
    pub role_map: HashMap<String, Role>,
}

fn label(kid: &str) -> String {
    format!("identity/realm-key/{kid}")
}

fn internal(e: impl std::fmt::Display) -> IdentityError {
    IdentityError::Internal(e.to_string())
}

impl IdentityService {
    /// `insecure_jwks_hosts`: external providers' hosts that may be
    /// reached over plain http and at private addresses.
    pub fn new(
        store: Arc<dyn ControlStore>,
        vault: Arc<Vault>,
        clock: Arc<dyn Clock>,
        public_url: &str,
        insecure_jwks_hosts: &[String],
        events: EventLog,
        admission: Arc<Admission>,
    ) -> Result<Self> {
        let realms = Realms::new(public_url, insecure_jwks_hosts, Arc::clone(&clock))
            .map_err(IdentityError::Internal)?;
        Ok(Self {
            store,
            vault,
            clock,
            events,
            admission,
            realms: Arc::new(realms),
            cache: VerifiedCache::new(100_000),
            rotation: tokio::sync::Mutex::default(),
            refusals: Budget::new(REFUSALS_PER_WINDOW, REFUSAL_WINDOW),
        })
    }

    /// The realms' names and trust, which the gateway's feed shares.
    pub fn realms(&self) -> &Arc<Realms> {
        &self.realms
    }

    pub fn issuer(&self, tenant: &TenantName) -> String {
        self.realms.issuer(tenant)
    }

    pub fn control_audience(&self) -> String {
        self.realms.control_audience()
    }

    pub fn app_audience(&self, tenant: &TenantName) -> String {
        self.realms.app_audience(tenant)
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
                tokens_not_before: None,
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
        let tenant = self.store.tenant_named(name).await?.ok_or_else(missing)?;
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
            // Not a JWKS: these keys sign audit checkpoints, never tokens.
            "bulkhead_audit_keys_uri": format!("{issuer}/audit-keys.json"),
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA", "ES256"],
            "response_types_supported": ["token"],
            "claims_supported": [
                "iss", "sub", "aud", "exp", "iat", "nbf", "jti", "tenant_id", "roles", "plan",
                "region",
            ],
        }))
    }

    /// How the tenant's own tokens are verified when they call the control
    /// API: they must name its audience.
    async fn realm_trust(&self, tenant: &Tenant) -> Result<Trust> {
        let keys = self.store.realm_keys(tenant.id).await?;
        let realm = self.store.realm(tenant.id).await?;
        self.realms
            .realm_trust_from(tenant, &keys, realm.as_ref(), Some(self.control_audience()))
            .map_err(IdentityError::Internal)
    }

    // ---- tokens --------------------------------------------------------------

    pub async fn issue_token(
        &self,
        actor: &Actor,
        name: &str,
        request: TokenRequest,
    ) -> Result<IssuedToken> {
        let tenant = self.authorized(actor, name, Permission::Manage).await?;
        self.admission.admit(actor, &tenant, "token.issue").await?;
        if request.subject.is_empty()
            || request.subject.len() > 255
            || request.subject.chars().any(char::is_control)
        {
            return Err(IdentityError::InvalidRequest(
                "subject must be 1 to 255 characters, none of them control characters".into(),
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
            .ok_or_else(|| IdentityError::NoSigningKey(name.to_owned()))?;
        let secret = self
            .vault
            .open_blob(tenant.id, &label(&active.kid))
            .await?
            .ok_or_else(|| internal(format!("realm key {} has no private half", active.kid)))?;
        let alg = Algorithm::parse(&active.algorithm).map_err(internal)?;
        let key = SigningKey::from_secret(active.kid.clone(), alg, &secret).map_err(internal)?;
        // A token minted in the very second of a revocation would be refused
        // with the ones revoked; it is dated just after instead.
        let now = self.clock.now().unix_timestamp();
        let iat =
            realm.tokens_not_before.map_or(now, |cutoff| now.max(cutoff.unix_timestamp() + 1));
        let mut exp = now.saturating_add(ttl.as_secs() as i64);
        // A token cannot outlive the token that minted it: otherwise a stolen
        // token could renew itself forever.
        if let Actor::Tenant { expires_at: Some(own), .. } = actor {
            exp = exp.min(*own);
        }
        let mut roles = request.roles;
        roles.sort();
        roles.dedup();
        let mut audience = request.audience;
        if request.control_api {
            audience.push(self.control_audience());
        } else if audience.is_empty() {
            audience.push(self.app_audience(&tenant.name));
        }
        audience.dedup();
        let claims = RealmClaims {
            iss: self.issuer(&tenant.name),
            sub: request.subject,
            aud: audience,
            exp,
            iat,
            nbf: iat,
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
        self.events.record_disclosure(actor, Some(&tenant), "token.issue", details).await?;
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
        let _rotating = self.rotation.lock().await;
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
        self.remove_expired_keys(&tenant).await?;
        let details = json!({ "kid": kid, "algorithm": alg.as_str(), "retired": retired });
        self.events.record(actor, &tenant, "realm.rotate_key", "ok", details).await;
        Ok((kid, retired as usize))
    }

    /// Rotates the signing key of every live realm whose newest key is
    /// older than `every`, and destroys keys that have left the JWKS;
    /// returns how many realms rotated.
    pub async fn rotate_due_keys(&self, every: Duration) -> Result<usize> {
        let mut rotated = 0;
        for tenant in self.store.all_tenants().await?.iter().filter(|t| LIVE.contains(&t.state)) {
            if self.store.realm(tenant.id).await?.is_none() {
                continue;
            }
            {
                let _rotating = self.rotation.lock().await;
                self.remove_expired_keys(tenant).await?;
            }
            let now = self.clock.now();
            let keys = self.store.realm_keys(tenant.id).await?;
            let Some(newest) = keys.iter().rfind(|k| k.retired_at.is_none()) else {
                // Every key retired (a crash mid-rotation, a restore):
                // the realm needs a key to sign with again.
                let _rotating = self.rotation.lock().await;
                self.add_key(tenant, Algorithm::EdDSA).await?;
                rotated += 1;
                continue;
            };
            let due = time::Duration::try_from(every)
                .ok()
                .and_then(|e| newest.created_at.checked_add(e))
                .is_some_and(|due| due <= now);
            if !due {
                continue;
            }
            match self.rotate_key(&Actor::Scheduler, tenant.name.as_str(), None).await {
                Ok(_) => rotated += 1,
                Err(error) => {
                    tracing::warn!(tenant = %tenant.name, %error, "scheduled realm key rotation failed");
                }
            }
        }
        Ok(rotated)
    }

    /// Destroys the keys past their `remove_after`: the sealed private half
    /// first, then the record, so a crash between the two leaves a record
    /// the next pass removes, never a private key nothing names. Callers
    /// hold `rotation`.
    async fn remove_expired_keys(&self, tenant: &Tenant) -> Result<()> {
        for kid in self.store.expired_realm_keys(tenant.id, self.clock.now()).await? {
            match self.vault.delete_blob(tenant.id, &label(&kid)).await {
                Ok(_) | Err(VaultError::NoDataKey) => {}
                Err(e) => return Err(e.into()),
            }
            self.store.delete_realm_key(tenant.id, &kid).await?;
        }
        Ok(())
    }

    /// Refuses every token the realm has issued so far, at once (a leak, a
    /// departing admin), and revokes every API key made with a token (or
    /// with such a key) until now: whoever held a token could have made
    /// one. Other API keys are revoked one by one. Returns the cut-off and
    /// how many keys were revoked.
    pub async fn revoke_tokens(&self, actor: &Actor, name: &str) -> Result<(OffsetDateTime, u64)> {
        let tenant = self.authorized(actor, name, Permission::Own).await?;
        if self.store.realm(tenant.id).await?.is_none() {
            return Err(IdentityError::NoRealm(name.to_owned()));
        }
        let now = self.clock.now();
        self.store.set_realm_tokens_not_before(tenant.id, now).await?;
        self.cache.forget_tenant(tenant.id.0);
        let keys = self.store.revoke_token_made_api_keys(tenant.id, now).await?;
        let details = json!({ "not_before": now.unix_timestamp(), "api_keys_revoked": keys });
        self.events.record(actor, &tenant, "realm.revoke_tokens", "ok", details).await;
        Ok((now, keys))
    }

    // ---- API keys ------------------------------------------------------------

    pub async fn create_api_key(
        &self,
        actor: &Actor,
        name: &str,
        key_name: &str,
        roles: Vec<Role>,
        ttl: Option<Duration>,
    ) -> Result<CreatedApiKey> {
        let tenant = self.authorized(actor, name, Permission::Manage).await?;
        self.admission.admit(actor, &tenant, "apikey.create").await?;
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
        // A key made with a token expires with it at the latest, and with
        // the realm's tokens it is revoked: a stolen token must not be able
        // to renew itself through a key.
        let now = self.clock.now();
        let requested = match ttl {
            Some(ttl) => Some(
                time::Duration::try_from(ttl)
                    .ok()
                    .and_then(|ttl| now.checked_add(ttl))
                    .ok_or_else(|| IdentityError::InvalidRequest("ttl is too long".into()))?,
            ),
            None => None,
        };
        let own = actor.expires_at().and_then(|at| OffsetDateTime::from_unix_timestamp(at).ok());
        let expires_at = match (requested, own) {
            (Some(requested), Some(own)) => Some(requested.min(own)),
            (requested, own) => requested.or(own),
        };
        if expires_at.is_some_and(|at| at <= now) {
            return Err(IdentityError::InvalidRequest(
                "the key would already be expired: give a ttl of 1s or more, with a credential \
                 that is still valid for it"
                    .into(),
            ));
        }
        let from_token = matches!(actor, Actor::Tenant { from_token: true, .. });
        let held = self
            .store
            .api_keys(tenant.id)
            .await?
            .iter()
            .filter(|k| k.revoked_at.is_none() && k.expires_at.is_none_or(|at| at > now))
            .count();
        self.admission.within_quota(&tenant, Quota::ApiKeys, held)?;
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(secret.as_mut_slice()).map_err(internal)?;
        let key = Zeroizing::new(format!(
            "bh_{}_{}",
            tenant.name.as_str().replace('-', "_"),
            URL_SAFE_NO_PAD.encode(secret.as_slice())
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
            created_at: now,
            last_used_at: None,
            revoked_at: None,
            expires_at,
            from_token,
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
        let details = json!({
            "id": record.id, "name": record.name, "roles": record.roles,
            "expires_at": record.expires_at.map(OffsetDateTime::unix_timestamp),
            "from_token": record.from_token,
        });
        if let Err(unrecorded) =
            self.events.record_disclosure(actor, Some(&tenant), "apikey.create", details).await
        {
            // Nobody will ever know this key: remove it, so that its name
            // is free for the retry.
            if let Err(error) = self.store.delete_api_key(tenant.id, record.id).await {
                tracing::warn!(key = %record.id, %error, "cannot remove an unrecorded API key");
            }
            return Err(unrecorded.into());
        }
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
    /// tenant `name`, with the tenant as loaded, or why not.
    pub async fn authenticate(
        &self,
        name: &str,
        credential: &str,
    ) -> Result<(Actor, Tenant), Refusal> {
        let tenant = match self.live_tenant(name).await {
            Ok(tenant) => tenant,
            Err(e) => {
                let holder = self.whose(credential).await.map(|owner| owner.reaches_only());
                return Err(Refusal { reason: e.to_string(), holder });
            }
        };
        let result = if credential.starts_with("bh_") {
            self.api_key_actor(&tenant, credential).await
        } else {
            match self.store.trust(tenant.id).await {
                // The unverified `iss` only chooses which keys to check the
                // token against; those keys then decide.
                Ok(Some(trust))
                    if jws::unverified_issuer(credential).as_deref() == Some(&trust.issuer) =>
                {
                    self.external_actor(&tenant, credential, &trust).await
                }
                Ok(_) => self.token_actor(&tenant, credential).await,
                Err(e) => Err(Refusal::silent(e.to_string())),
            }
        };
        // Said only once the credential has proved to be the tenant's: to
        // anyone else, a suspended tenant looks like any other.
        let result = match result {
            Ok(_) if tenant.state != TenantState::Active => Err(Refusal::told(format!(
                "tenant {:?} is {}; its credentials act again once it is resumed",
                tenant.name.as_str(),
                tenant.state
            ))),
            // Perhaps another tenant's genuine token. (An API key was looked
            // up already, and a token naming this realm verified against it.)
            Err(mut refusal)
                if refusal.holder.is_none()
                    && !credential.starts_with("bh_")
                    && jws::unverified_issuer(credential) != Some(self.issuer(&tenant.name)) =>
            {
                refusal.holder = self
                    .whose(credential)
                    .await
                    .filter(|owner| owner.tenant != tenant.name.as_str())
                    .map(|owner| owner.reaches_only());
                Err(refusal)
            }
            other => other,
        };
        match result {
            Ok(actor) => Ok((actor, tenant)),
            Err(refusal) => {
                self.record_refusal(&tenant, &refusal.reason).await;
                Err(refusal)
            }
        }
    }

    /// The tenant whose genuine credential `credential` is, whatever it was
    /// presented for: an API key found by its hash, or a token of one of this
    /// server's realms whose signature that realm's keys verify. `None` for
    /// anything else, so nothing is said about a credential nobody proved to
    /// hold.
    pub async fn whose(&self, credential: &str) -> Option<Owner> {
        if credential.starts_with("bh_") {
            let record =
                self.store.api_key_by_hash(&Sha256::digest(credential.as_bytes())).await.ok()??;
            let tenant = self.store.tenant_by_id(record.tenant_id).await.ok()??;
            return Some(Owner { tenant: tenant.name.to_string(), kind: "API key" });
        }
        let issuer = jws::unverified_issuer(credential)?;
        let name = issuer.strip_prefix(&self.realms.issuer_prefix())?;
        let tenant = self.live_tenant(name).await.ok()?;
        let trust = self.realm_trust(&tenant).await.ok()?;
        let now = self.clock.now().unix_timestamp();
        match self.cache.verify(credential, &trust, now) {
            Ok(_) => Some(Owner { tenant: tenant.name.to_string(), kind: "token" }),
            Err(Rejected { reason }) if signed(&reason) => {
                Some(Owner { tenant: tenant.name.to_string(), kind: "token" })
            }
            Err(_) => None,
        }
    }

    /// Records a refused credential, within [`REFUSALS_PER_WINDOW`].
    async fn record_refusal(&self, tenant: &Tenant, reason: &str) {
        let Some(suppressed) = self.refusals.take(tenant.id) else { return };
        let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
        let details = json!({ "reason": reason, "unrecorded_before": suppressed });
        self.events.record(&Actor::Anonymous, tenant, "auth.refused", "denied", details).await;
    }

    async fn token_actor(&self, tenant: &Tenant, token: &str) -> Result<Actor, Refusal> {
        let trust = self.realm_trust(tenant).await.map_err(|e| Refusal::silent(e.to_string()))?;
        let now = self.clock.now().unix_timestamp();
        let verified: Verified =
            self.cache.verify(token, &trust, now).map_err(|Rejected { reason }| {
                let mint = "mint it with `bulkhead auth token ... --control-api`";
                Refusal::of_token(&reason, &self.control_audience(), mint)
            })?;
        Ok(Actor::Tenant {
            tenant_id: tenant.id,
            subject: verified.subject,
            roles: verified.roles,
            expires_at: Some(verified.expires_at),
            from_token: true,
        })
    }

    async fn external_actor(
        &self,
        tenant: &Tenant,
        token: &str,
        record: &TrustRecord,
    ) -> Result<Actor, Refusal> {
        let now = self.clock.now().unix_timestamp();
        let trust =
            self.realms.external_trust(tenant, record, false).await.map_err(Refusal::silent)?;
        let mut result = self.cache.verify(token, &trust, now);
        if let Err(Rejected { reason: bulkhead_identity::Reason::UnknownKid(_) }) = &result {
            // The provider may have rotated: fetch again, at most so often.
            let trust =
                self.realms.external_trust(tenant, record, true).await.map_err(Refusal::silent)?;
            result = self.cache.verify(token, &trust, now);
        }
        let verified = result.map_err(|Rejected { reason }| {
            let mint = "the audience this tenant's trust of its identity provider names";
            let mut refusal = Refusal::of_token(&reason, &record.audience, mint);
            refusal.reason = format!("external token: {}", refusal.reason);
            refusal
        })?;
        Ok(Actor::Tenant {
            tenant_id: tenant.id,
            subject: format!("{}#{}", record.issuer, verified.subject),
            roles: verified.roles,
            expires_at: Some(verified.expires_at),
            from_token: true,
        })
    }

    /// Trusts an external identity provider for the tenant. Its JWKS is
    /// fetched now, so a wrong URL is refused before it is stored.
    pub async fn set_trust(
        &self,
        actor: &Actor,
        name: &str,
        config: TrustConfig,
    ) -> Result<TrustRecord> {
        let tenant = self.authorized(actor, name, Permission::Own).await?;
        // Trusting a provider is minting by other means: whoever runs it
        // issues the tenant's tokens from then on.
        self.admission.admit(actor, &tenant, "realm.trust").await?;
        let invalid = IdentityError::InvalidRequest;
        if !(config.issuer.starts_with("https://") || config.issuer.starts_with("http://")) {
            return Err(invalid(format!("issuer {:?} is not an http(s) URL", config.issuer)));
        }
        // No realm of this server is an external provider: trusting one
        // would let one tenant's realm speak for another tenant.
        if config.issuer.starts_with(&self.realms.issuer_prefix()) {
            return Err(invalid(format!(
                "issuer {:?} is a Bulkhead realm; trust an external provider",
                config.issuer
            )));
        }
        self.realms.providers().check_url(&config.jwks_url).map_err(invalid)?;
        if config.audience.trim().is_empty() {
            return Err(invalid(
                "an audience is required: the client id or API identifier the provider puts in                  `aud` for this tenant's application"
                    .into(),
            ));
        }
        if config.role_map.is_empty() {
            return Err(invalid(
                "a role map is required: which of the provider's role values grant which                  Bulkhead role (for example data-team=analyst)"
                    .into(),
            ));
        }
        for (field, claim) in
            [("subject_claim", &config.subject_claim), ("roles_claim", &config.roles_claim)]
        {
            if claim.is_empty() || claim.split('.').any(str::is_empty) {
                return Err(IdentityError::InvalidRequest(format!(
                    "{field} {claim:?} must name a claim, dot-separated for nested ones"
                )));
            }
        }
        let keys = self.realms.providers().fetch(&config.jwks_url).await.map_err(|e| {
            IdentityError::InvalidRequest(format!("cannot use {}: {e}", config.jwks_url))
        })?;
        let role_map: HashMap<&str, &str> =
            config.role_map.iter().map(|(value, role)| (value.as_str(), role.as_str())).collect();
        let record = TrustRecord {
            tenant_id: tenant.id,
            issuer: config.issuer,
            jwks_url: config.jwks_url,
            audience: config.audience,
            subject_claim: config.subject_claim,
            roles_claim: config.roles_claim,
            role_map: serde_json::to_string(&role_map).map_err(internal)?,
            updated_at: self.clock.now(),
        };
        self.store.set_trust(&record).await?;
        self.realms.providers().store(tenant.id.0, &record.jwks_url, keys).await;
        self.cache.forget_tenant(tenant.id.0);
        let details = json!({ "issuer": record.issuer, "jwks_url": record.jwks_url });
        self.events.record(actor, &tenant, "realm.trust", "ok", details).await;
        Ok(record)
    }

    pub async fn trust(&self, actor: &Actor, name: &str) -> Result<Option<TrustRecord>> {
        let tenant = self.authorized(actor, name, Permission::Read).await?;
        Ok(self.store.trust(tenant.id).await?)
    }

    pub async fn remove_trust(&self, actor: &Actor, name: &str) -> Result<bool> {
        let tenant = self.authorized(actor, name, Permission::Own).await?;
        let removed = self.store.delete_trust(tenant.id).await?;
        self.realms.providers().forget(tenant.id.0);
        self.cache.forget_tenant(tenant.id.0);
        self.events.record(actor, &tenant, "realm.untrust", "ok", json!({})).await;
        Ok(removed)
    }

    /// The key is looked up by its SHA-256; its `bh_<tenant>_` prefix is
    /// never trusted: the stored key's tenant must be the tenant asked for.
    async fn api_key_actor(&self, tenant: &Tenant, key: &str) -> Result<Actor, Refusal> {
        let hash = Sha256::digest(key.as_bytes());
        let record = self
            .store
            .api_key_by_hash(&hash)
            .await
            .map_err(|e| Refusal::silent(e.to_string()))?
            .ok_or_else(|| Refusal::silent("unknown API key"))?;
        if record.tenant_id != tenant.id {
            let owner = self.store.tenant_by_id(record.tenant_id).await.ok().flatten();
            return Err(Refusal {
                reason: "an API key of another tenant".into(),
                holder: owner.map(|owner| {
                    Owner { tenant: owner.name.to_string(), kind: "API key" }.reaches_only()
                }),
            });
        }
        if record.revoked_at.is_some() {
            return Err(Refusal::told(format!("API key {} was revoked", record.id)));
        }
        // A key made with a token in the very moment the realm's tokens were
        // revoked, written after the revocation swept the keys: revoked too.
        if record.from_token {
            let cutoff =
                self.store.realm(tenant.id).await.ok().flatten().and_then(|r| r.tokens_not_before);
            if cutoff.is_some_and(|cutoff| record.created_at <= cutoff) {
                return Err(Refusal::told(format!(
                    "API key {} was made with a token revoked since (auth revoke-tokens)",
                    record.id
                )));
            }
        }
        let now = self.clock.now();
        if record.expires_at.is_some_and(|at| at <= now) {
            return Err(Refusal::told(format!("API key {} has expired", record.id)));
        }
        // Written at most once a minute per key, not on every request.
        if record.last_used_at.is_none_or(|at| now - at > time::Duration::minutes(1)) {
            let _ = self.store.touch_api_key(record.id, now).await;
        }
        let roles = record.roles.split(',').filter_map(Role::parse).collect();
        Ok(Actor::Tenant {
            tenant_id: tenant.id,
            subject: format!("apikey:{}", record.name),
            roles,
            expires_at: record.expires_at.map(OffsetDateTime::unix_timestamp),
            from_token: record.from_token,
        })
    }

    /// The keys the realm signs and verifies with, for `bulkhead auth keys`.
    pub async fn realm_keys(&self, actor: &Actor, name: &str) -> Result<Vec<RealmKeyRecord>> {
        let tenant = self.authorized(actor, name, Permission::Read).await?;
        self.published_keys(&tenant).await
    }
}

/// A refused credential: why (for the log and the tenant's audit stream),
/// and, once the credential has proved genuine, what its holder may be told
/// (never anything about another tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub holder: Option<String>,
}

impl Refusal {
    /// Nothing for the holder: the credential proved nothing.
    fn silent(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), holder: None }
    }

    /// The same for the log and for the holder.
    fn told(reason: String) -> Self {
        Self { holder: Some(reason.clone()), reason }
    }

    /// A token refused for `reason`; `audience` is what it had to name, and
    /// `mint` how to get one that does.
    fn of_token(reason: &bulkhead_identity::Reason, audience: &str, mint: &str) -> Self {
        use bulkhead_identity::Reason;
        let holder = match reason {
            _ if !signed(reason) => None,
            Reason::Expired => Some("this token has expired; get a fresh one".to_owned()),
            Reason::NotYetValid => Some("this token is not valid yet (its nbf)".to_owned()),
            Reason::Revoked => Some(
                "this token was revoked with the realm's other tokens (auth revoke-tokens)"
                    .to_owned(),
            ),
            Reason::Audience => Some(format!(
                "this token was not issued for this API: its aud must name {audience} ({mint})"
            )),
            other => Some(format!("this token is refused: {other}")),
        };
        Self { reason: reason.to_string(), holder }
    }
}

/// Whose credential one is, as far as it proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub tenant: String,
    /// `token` or `API key`.
    pub kind: &'static str,
}

impl Owner {
    /// What a tenant's credential reaches, for its holder.
    pub fn reaches_only(&self) -> String {
        format!(
            "this {} is tenant {:?}'s: it reaches only /v1/tenants/{}/...",
            self.kind, self.tenant, self.tenant
        )
    }
}

/// Whether a token refused for `reason` had a valid signature first, so that
/// what else was wrong with it may be said to whoever holds it.
fn signed(reason: &bulkhead_identity::Reason) -> bool {
    use bulkhead_identity::Reason;
    matches!(
        reason,
        Reason::Issuer
            | Reason::Tenant
            | Reason::Expired
            | Reason::NotYetValid
            | Reason::Audience
            | Reason::Revoked
            | Reason::Claim(_)
    )
}
