//! What identity persists: each tenant's realm policy, its signing keys'
//! public halves (private halves are sealed blobs in the vault), the
//! external identity provider it trusts, and its API keys' hashes.

use std::fmt;

use async_trait::async_trait;
use bulkhead_model::TenantId;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RealmRecord {
    #[sqlx(try_from = "Uuid")]
    pub tenant_id: TenantId,
    /// `EdDSA` or `ES256`: what new keys use.
    pub algorithm: String,
    pub default_ttl_secs: i64,
    pub max_ttl_secs: i64,
    /// Tokens issued at or before this time are refused.
    pub tokens_not_before: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RealmKeyRecord {
    #[sqlx(try_from = "Uuid")]
    pub tenant_id: TenantId,
    pub kid: String,
    pub algorithm: String,
    /// The public JWK, as JSON text.
    pub public_jwk: String,
    pub created_at: OffsetDateTime,
    pub retired_at: Option<OffsetDateTime>,
    pub remove_after: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TrustRecord {
    #[sqlx(try_from = "Uuid")]
    pub tenant_id: TenantId,
    pub issuer: String,
    pub jwks_url: String,
    pub audience: String,
    pub subject_claim: String,
    pub roles_claim: String,
    /// JSON object: provider role value → Bulkhead role name.
    pub role_map: String,
    pub updated_at: OffsetDateTime,
}

/// An API key as stored: its SHA-256, never the key.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub id: Uuid,
    #[sqlx(try_from = "Uuid")]
    pub tenant_id: TenantId,
    pub name: String,
    pub prefix: String,
    pub key_hash: Vec<u8>,
    /// Comma-separated role names.
    pub roles: String,
    pub created_by: String,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    /// After this the key is refused; `None`: it lasts until revoked.
    pub expires_at: Option<OffsetDateTime>,
    /// Made with a token (or with a key itself made with one): revoked
    /// with the realm's tokens.
    pub from_token: bool,
}

impl fmt::Debug for ApiKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("name", &self.name)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Identity's persistence; one statement per method, as everywhere.
#[async_trait]
pub trait IdentityStore: Send + Sync + fmt::Debug {
    /// Records the realm unless it exists; returns the stored one.
    async fn ensure_realm(&self, realm: &RealmRecord) -> Result<(), StoreError>;

    async fn realm(&self, tenant: TenantId) -> Result<Option<RealmRecord>, StoreError>;

    async fn delete_realm(&self, tenant: TenantId) -> Result<(), StoreError>;

    /// Refuses, from now on, every token the realm issued at or before `at`.
    async fn set_realm_tokens_not_before(
        &self,
        tenant: TenantId,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// Sets the algorithm the realm's new keys use.
    async fn set_realm_algorithm(
        &self,
        tenant: TenantId,
        algorithm: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// [`StoreError::Duplicate`] if the kid exists.
    async fn insert_realm_key(&self, key: &RealmKeyRecord) -> Result<(), StoreError>;

    /// The tenant's published keys (removed ones excluded), oldest first.
    async fn realm_keys(&self, tenant: TenantId) -> Result<Vec<RealmKeyRecord>, StoreError>;

    /// Every realm's keys, every realm and every trust: what a gateway
    /// snapshot of all tenants is built from in three reads.
    async fn all_realm_keys(&self) -> Result<Vec<RealmKeyRecord>, StoreError>;
    async fn all_realms(&self) -> Result<Vec<RealmRecord>, StoreError>;
    async fn all_trusts(&self) -> Result<Vec<TrustRecord>, StoreError>;
    /// Every tenant's API keys that are not revoked.
    async fn all_unrevoked_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Marks every signing key of the tenant but `except` retired at `at`,
    /// to be removed after `remove_after`. Callers serialize rotations.
    async fn retire_realm_keys(
        &self,
        tenant: TenantId,
        except: &str,
        at: OffsetDateTime,
        remove_after: OffsetDateTime,
    ) -> Result<u64, StoreError>;

    /// The kids of the tenant's keys whose `remove_after` has passed.
    async fn expired_realm_keys(
        &self,
        tenant: TenantId,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError>;

    async fn delete_realm_key(&self, tenant: TenantId, kid: &str) -> Result<(), StoreError>;

    async fn delete_realm_keys(&self, tenant: TenantId) -> Result<Vec<String>, StoreError>;

    async fn set_trust(&self, trust: &TrustRecord) -> Result<(), StoreError>;

    async fn trust(&self, tenant: TenantId) -> Result<Option<TrustRecord>, StoreError>;

    async fn delete_trust(&self, tenant: TenantId) -> Result<bool, StoreError>;

    /// [`StoreError::Duplicate`] if the tenant has a key of that name.
    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    async fn api_key_by_hash(&self, hash: &[u8]) -> Result<Option<ApiKeyRecord>, StoreError>;

    async fn api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Revokes a key of the tenant unless it already is; returns whether
    /// this call did.
    async fn revoke_api_key(
        &self,
        tenant: TenantId,
        id: Uuid,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    async fn touch_api_key(&self, id: Uuid, at: OffsetDateTime) -> Result<(), StoreError>;

    /// Removes one key of the tenant outright, name and all: for a key
    /// whose creation could not be recorded and so was never handed out.
    async fn delete_api_key(&self, tenant: TenantId, id: Uuid) -> Result<bool, StoreError>;

    async fn delete_api_keys(&self, tenant: TenantId) -> Result<u64, StoreError>;

    /// Revokes, as of `at`, the tenant's unrevoked keys made with a token
    /// at or before then; returns how many.
    async fn revoke_token_made_api_keys(
        &self,
        tenant: TenantId,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError>;
}

/// The columns of `identity_api_keys`, for `concat!`.
macro_rules! api_key_columns {
    () => {
        "id, tenant_id, name, prefix, key_hash, roles, created_by, created_at, last_used_at, \
         revoked_at, expires_at, from_token"
    };
}
pub(crate) use api_key_columns;
