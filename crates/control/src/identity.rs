//! Identity as the control plane offers it: each tenant's realm (keys,
//! published documents, tokens), its API keys, and the verification of
//! tenant-scoped credentials presented to the control API. The JWT work is
//! `bulkhead-identity`'s; private keys are sealed by the vault under the
//! tenant's data key.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bulkhead_identity::{
    Algorithm, ClaimMapping, Jwk, Permission, RealmClaims, Rejected, Role, SigningKey, Trust,
    Verified, VerifiedCache, VerifyingKey, jws, verify::LEEWAY_SECS,
};
use bulkhead_model::{Tenant, TenantName, TenantState};
use bulkhead_store::{
    ApiKeyRecord, ControlStore, RealmKeyRecord, RealmRecord, StoreError, TrustRecord,
};
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

/// How long an external provider's JWKS is used before it is fetched again.
const JWKS_MAX_AGE: Duration = Duration::from_secs(600);
/// The least time between two fetches of one provider's JWKS when tokens
/// name a kid it does not have: a stream of tokens with made-up kids must
/// not turn Bulkhead into a client hammering the provider.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(5);

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
    http: reqwest::Client,
    /// External providers' keys, by tenant.
    external_keys: Mutex<HashMap<Uuid, FetchedKeys>>,
}

#[derive(Debug, Clone)]
struct FetchedKeys {
    url: String,
    keys: HashMap<String, VerifyingKey>,
    fetched_at: Instant,
}

/// A tenant's trust in an external identity provider, as an operator or
/// the tenant's owner sets it.
#[derive(Debug, Clone)]
pub struct TrustConfig {
    pub issuer: String,
    pub jwks_url: String,
    pub audience: Option<String>,
    pub subject_claim: String,
    pub roles_claim: String,
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
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            external_keys: Mutex::default(),
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

    /// Rotates the signing key of every live realm whose newest key is
    /// older than `every`, and destroys keys that have left the JWKS;
    /// returns how many realms rotated.
    pub async fn rotate_due_keys(&self, every: Duration) -> Result<usize> {
        let mut rotated = 0;
        let mut page = bulkhead_store::TenantPage { after: None, state: None, limit: 500 };
        loop {
            let tenants = self.store.list_tenants(&page).await?;
            let Some(last) = tenants.last() else { return Ok(rotated) };
            page.after = Some(last.name.to_string());
            for tenant in tenants.iter().filter(|t| LIVE.contains(&t.state)) {
                let now = self.clock.now();
                for old in self.store.remove_expired_realm_keys(tenant.id, now).await? {
                    let _ = self.vault.delete_blob(tenant.id, &label(&old)).await;
                }
                let keys = self.store.realm_keys(tenant.id).await?;
                let Some(newest) = keys.iter().rfind(|k| k.retired_at.is_none()) else { continue };
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
        }
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
            match self.store.trust(tenant.id).await {
                // The unverified `iss` only chooses which keys to check the
                // token against; those keys then decide.
                Ok(Some(trust))
                    if unverified_issuer(credential).as_deref() == Some(&trust.issuer) =>
                {
                    self.external_actor(&tenant, credential, &trust).await
                }
                Ok(_) => self.token_actor(&tenant, credential).await,
                Err(e) => Err(e.to_string()),
            }
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

    async fn external_actor(
        &self,
        tenant: &Tenant,
        token: &str,
        record: &TrustRecord,
    ) -> Result<Actor, String> {
        let now = self.clock.now().unix_timestamp();
        let mut keys = self.external_keys(tenant, record, false).await?;
        let trust = |keys: HashMap<String, VerifyingKey>| Trust {
            tenant_id: tenant.id.0,
            issuer: record.issuer.clone(),
            keys,
            algorithms: vec![Algorithm::EdDSA, Algorithm::ES256],
            audience: record.audience.clone(),
            claims: ClaimMapping::External {
                subject: record.subject_claim.clone(),
                roles: record.roles_claim.clone(),
            },
        };
        let mut result = self.cache.verify(token, &trust(keys.clone()), now);
        if let Err(Rejected { reason: bulkhead_identity::Reason::UnknownKid(_) }) = &result {
            // The provider may have rotated: fetch again, at most so often.
            keys = self.external_keys(tenant, record, true).await?;
            result = self.cache.verify(token, &trust(keys), now);
        }
        let verified = result.map_err(|Rejected { reason }| format!("external token: {reason}"))?;
        Ok(Actor::Tenant {
            tenant_id: tenant.id,
            subject: format!("{}#{}", record.issuer, verified.subject),
            roles: verified.roles,
        })
    }

    /// The provider's keys, fetched when missing or old, or (`refetch`)
    /// when a token names an unknown kid and the last fetch is not too
    /// recent.
    async fn external_keys(
        &self,
        tenant: &Tenant,
        record: &TrustRecord,
        refetch: bool,
    ) -> Result<HashMap<String, VerifyingKey>, String> {
        let cached = self
            .external_keys
            .lock()
            .ok()
            .and_then(|all| all.get(&tenant.id.0).cloned())
            .filter(|c| c.url == record.jwks_url);
        if let Some(cached) = &cached {
            let age = cached.fetched_at.elapsed();
            let fresh = age < JWKS_MAX_AGE && !(refetch && age >= JWKS_REFETCH_INTERVAL);
            if fresh {
                return Ok(cached.keys.clone());
            }
        }
        let keys = fetch_jwks(&self.http, &record.jwks_url).await?;
        if let Ok(mut all) = self.external_keys.lock() {
            all.insert(
                tenant.id.0,
                FetchedKeys {
                    url: record.jwks_url.clone(),
                    keys: keys.clone(),
                    fetched_at: Instant::now(),
                },
            );
        }
        Ok(keys)
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
        for (field, url) in [("issuer", &config.issuer), ("jwks_url", &config.jwks_url)] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(IdentityError::InvalidRequest(format!(
                    "{field} {url:?} is not an http(s) URL"
                )));
            }
        }
        if config.issuer.trim_end_matches('/') == self.issuer(&tenant.name) {
            return Err(IdentityError::InvalidRequest(
                "the issuer is the tenant's own realm; trust an external provider".into(),
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
        let keys = fetch_jwks(&self.http, &config.jwks_url).await.map_err(|e| {
            IdentityError::InvalidRequest(format!("cannot use {}: {e}", config.jwks_url))
        })?;
        let record = TrustRecord {
            tenant_id: tenant.id,
            issuer: config.issuer,
            jwks_url: config.jwks_url,
            audience: config.audience,
            subject_claim: config.subject_claim,
            roles_claim: config.roles_claim,
            updated_at: self.clock.now(),
        };
        self.store.set_trust(&record).await?;
        if let Ok(mut all) = self.external_keys.lock() {
            all.insert(
                tenant.id.0,
                FetchedKeys { url: record.jwks_url.clone(), keys, fetched_at: Instant::now() },
            );
        }
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
        if let Ok(mut all) = self.external_keys.lock() {
            all.remove(&tenant.id.0);
        }
        self.cache.forget_tenant(tenant.id.0);
        self.events.record(actor, &tenant, "realm.untrust", "ok", json!({})).await;
        Ok(removed)
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

/// Fetches a JWKS and keeps the keys Bulkhead can verify with (EdDSA and
/// ES256 keys that carry a kid); others are skipped.
async fn fetch_jwks(
    http: &reqwest::Client,
    url: &str,
) -> Result<HashMap<String, VerifyingKey>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let response = http.get(url).send().await.map_err(|e| format!("fetching the JWKS: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("the JWKS answered {}", response.status()));
    }
    let bytes = response.bytes().await.map_err(|e| format!("reading the JWKS: {e}"))?;
    if bytes.len() > 256 * 1024 {
        return Err("the JWKS is larger than 256 KiB".into());
    }
    let set: Set = serde_json::from_slice(&bytes).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else { continue };
        let Some(kid) = jwk.kid.clone() else { continue };
        if let Ok(key) = VerifyingKey::from_jwk(&jwk) {
            keys.insert(kid, key);
        }
    }
    if keys.is_empty() {
        return Err("the JWKS holds no EdDSA or ES256 key with a kid".into());
    }
    Ok(keys)
}

/// The `iss` of a token, read without verifying it.
fn unverified_issuer(token: &str) -> Option<String> {
    let parts = jws::decode(token).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&parts.payload).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}
