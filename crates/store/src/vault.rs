//! What the vault persists: wrapped data keys, encrypted secret versions,
//! credential leases and principals locked out by anomaly detection.
//! Plaintext keys and secret values never reach this module.

use std::fmt;

use async_trait::async_trait;
use bulkhead_model::TenantId;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StoreError;

/// A tenant's data key, as wrapped by a key-encryption key.
#[derive(Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WrappedDataKey {
    #[sqlx(try_from = "Uuid")]
    pub tenant_id: TenantId,
    pub version: i64,
    /// Which key-encryption key wrapped it (the master key or the tenant's
    /// own key), e.g. `local:3f9c…`.
    pub kek_id: String,
    pub wrapped: Vec<u8>,
    pub created_at: OffsetDateTime,
}

impl fmt::Debug for WrappedDataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WrappedDataKey")
            .field("tenant_id", &self.tenant_id)
            .field("version", &self.version)
            .field("kek_id", &self.kek_id)
            .finish_non_exhaustive()
    }
}

/// One version of one secret, encrypted under the tenant's data key
/// `key_version`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SecretVersion {
    #[sqlx(try_from = "Uuid")]
    pub tenant_id: TenantId,
    pub path: String,
    pub version: i64,
    pub key_version: i64,
    pub ciphertext: Vec<u8>,
    /// Length of the plaintext, in bytes.
    pub size: i64,
    pub created_at: OffsetDateTime,
    pub created_by: String,
}

/// What `list` shows of a secret: never its value.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SecretSummary {
    pub path: String,
    pub latest_version: i64,
    /// Versions still kept.
    pub versions: i64,
    /// Size of the latest version, in bytes.
    pub size: i64,
    pub updated_at: OffsetDateTime,
}

/// A dynamic database credential: a login role that exists until it is
/// revoked or expires. Its password is never stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Lease {
    pub id: Uuid,
    #[sqlx(try_from = "Uuid")]
    pub tenant_id: TenantId,
    pub region: String,
    pub database: String,
    pub role: String,
    /// `read` or `write`.
    pub access: String,
    pub issued_by: String,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    /// Failed attempts at revoking it once it expired or was revoked.
    pub attempts: i32,
    /// When the sweeper tries again after a failed attempt.
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Set while its role cannot log in because its tenant is suspended.
    pub disabled_at: Option<OffsetDateTime>,
}

impl Lease {
    /// A lease as issued: nothing attempted, not disabled.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: Uuid,
        tenant_id: TenantId,
        region: String,
        database: String,
        role: String,
        access: String,
        issued_by: String,
        issued_at: OffsetDateTime,
        expires_at: OffsetDateTime,
    ) -> Self {
        Self {
            id,
            tenant_id,
            region,
            database,
            role,
            access,
            issued_by,
            issued_at,
            expires_at,
            revoked_at: None,
            attempts: 0,
            next_attempt_at: None,
            last_error: None,
            disabled_at: None,
        }
    }
}

/// A key another capability keeps under the tenant's data key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SealedBlob {
    #[sqlx(try_from = "Uuid")]
    pub tenant_id: TenantId,
    /// What it is, e.g. `identity/realm-key/<kid>`.
    pub label: String,
    pub key_version: i64,
    pub ciphertext: Vec<u8>,
    pub created_at: OffsetDateTime,
}

/// A principal refused vault reads until an operator clears it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Lockout {
    pub principal: String,
    pub reason: String,
    pub locked_at: OffsetDateTime,
}

/// The vault's persistence. As with [`crate::ControlStore`], every method is
/// one statement; methods that replace a value compare it with the value
/// the caller read, so concurrent rotations never lose a write.
#[async_trait]
pub trait VaultStore: crate::DepartedStore + Send + Sync + fmt::Debug {
    /// The id of the master key data keys are wrapped with, once one is
    /// recorded.
    async fn master_key_id(&self) -> Result<Option<String>, StoreError>;

    /// Records `kek_id` as the master key if the recorded one is still
    /// `expected`; returns whether it was.
    async fn set_master_key_id(
        &self,
        expected: Option<&str>,
        kek_id: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// The tenant's data keys, oldest version first.
    async fn data_keys(&self, tenant: TenantId) -> Result<Vec<WrappedDataKey>, StoreError>;

    /// [`StoreError::Duplicate`] if the version exists.
    async fn insert_data_key(&self, key: &WrappedDataKey) -> Result<(), StoreError>;

    /// Replaces the wrapping of one data key if it is still wrapped by
    /// `old_kek_id`; returns whether it was.
    async fn rewrap_data_key(
        &self,
        key: &WrappedDataKey,
        old_kek_id: &str,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` data keys, of any tenant, wrapped by `kek_id`.
    async fn data_keys_wrapped_by(
        &self,
        kek_id: &str,
        limit: u32,
    ) -> Result<Vec<WrappedDataKey>, StoreError>;

    /// How many data keys (and departed tenants' snapshot keys) each
    /// key-encryption key wraps.
    async fn data_keys_by_kek(&self) -> Result<Vec<(String, i64)>, StoreError>;

    /// Destroys every data key of the tenant; returns how many.
    async fn delete_data_keys(&self, tenant: TenantId) -> Result<u64, StoreError>;

    /// Destroys the tenant's data key versions older than `version`;
    /// returns how many.
    async fn delete_data_keys_below(
        &self,
        tenant: TenantId,
        version: i64,
    ) -> Result<u64, StoreError>;

    /// Stores the next version of `secret.path` (its `version` is ignored)
    /// and returns that version. [`StoreError::Duplicate`] if a concurrent
    /// write took the same version; the caller retries.
    async fn insert_secret(&self, secret: &SecretVersion) -> Result<i64, StoreError>;

    /// Deletes the versions of a secret older than its `keep` newest.
    async fn prune_secret(&self, tenant: TenantId, path: &str, keep: u32)
    -> Result<(), StoreError>;

    /// One version of a secret, or its latest when `version` is `None`.
    async fn secret(
        &self,
        tenant: TenantId,
        path: &str,
        version: Option<i64>,
    ) -> Result<Option<SecretVersion>, StoreError>;

    async fn list_secrets(&self, tenant: TenantId) -> Result<Vec<SecretSummary>, StoreError>;

    /// Deletes every version of a secret; returns how many.
    async fn delete_secret(&self, tenant: TenantId, path: &str) -> Result<u64, StoreError>;

    /// Up to `limit` secret versions of the tenant encrypted under a data
    /// key older than `key_version`.
    async fn secrets_below_key_version(
        &self,
        tenant: TenantId,
        key_version: i64,
        limit: u32,
    ) -> Result<Vec<SecretVersion>, StoreError>;

    /// Replaces the ciphertext of one version if it is still encrypted
    /// under `old_key_version`; returns whether it was.
    async fn reencrypt_secret(
        &self,
        secret: &SecretVersion,
        old_key_version: i64,
    ) -> Result<bool, StoreError>;

    /// Stores a sealed blob; [`StoreError::Duplicate`] if the label exists.
    async fn insert_blob(&self, blob: &SealedBlob) -> Result<(), StoreError>;

    async fn blob(&self, tenant: TenantId, label: &str) -> Result<Option<SealedBlob>, StoreError>;

    async fn delete_blob(&self, tenant: TenantId, label: &str) -> Result<bool, StoreError>;

    /// Up to `limit` blobs of the tenant sealed under a data key older than
    /// `key_version`.
    async fn blobs_below_key_version(
        &self,
        tenant: TenantId,
        key_version: i64,
        limit: u32,
    ) -> Result<Vec<SealedBlob>, StoreError>;

    /// Replaces a blob's ciphertext if it is still sealed under
    /// `old_key_version`; returns whether it was.
    async fn reseal_blob(
        &self,
        blob: &SealedBlob,
        old_key_version: i64,
    ) -> Result<bool, StoreError>;

    async fn insert_lease(&self, lease: &Lease) -> Result<(), StoreError>;

    async fn lease(&self, id: Uuid) -> Result<Option<Lease>, StoreError>;

    /// The tenant's leases, newest first; revoked ones only if asked for.
    async fn leases(&self, tenant: TenantId, revoked: bool) -> Result<Vec<Lease>, StoreError>;

    /// Up to `limit` unrevoked leases due for revocation: expired at or
    /// before `now` and never attempted, or a failed attempt's
    /// `next_attempt_at` has come (an explicit revoke that failed included),
    /// the longest-waiting first, and at most `per_tenant` of any one tenant:
    /// one tenant's leases that keep failing never crowd out another's.
    async fn expired_leases(
        &self,
        now: OffsetDateTime,
        limit: u32,
        per_tenant: u32,
    ) -> Result<Vec<Lease>, StoreError>;

    /// Records a failed attempt at revoking a lease: its count, when to try
    /// again and why it failed.
    async fn record_lease_failure(
        &self,
        id: Uuid,
        attempts: i32,
        next_attempt_at: OffsetDateTime,
        error: &str,
    ) -> Result<(), StoreError>;

    /// Live leases whose role should not log in (their tenant is
    /// suspended) and still can; up to `limit`.
    async fn leases_to_disable(&self, limit: u32) -> Result<Vec<Lease>, StoreError>;

    /// Disabled, unexpired leases whose tenant is active again; up to
    /// `limit`.
    async fn leases_to_enable(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Lease>, StoreError>;

    /// Sets or clears `disabled_at`.
    async fn set_lease_disabled(
        &self,
        id: Uuid,
        at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError>;

    /// How many unrevoked leases have failed to be revoked at least once:
    /// the ones stuck.
    async fn stuck_leases(&self) -> Result<u64, StoreError>;

    /// Moves an unrevoked lease's expiry (a renewal); returns whether it
    /// was live.
    async fn extend_lease(&self, id: Uuid, expires_at: OffsetDateTime) -> Result<bool, StoreError>;

    /// Unrevoked leases whose `issued_by` starts with `prefix` (the
    /// runtime's, say), oldest first.
    async fn leases_issued_by(&self, prefix: &str) -> Result<Vec<Lease>, StoreError>;

    /// Marks a lease revoked unless it already is; returns whether this call
    /// did.
    async fn mark_lease_revoked(&self, id: Uuid, at: OffsetDateTime) -> Result<bool, StoreError>;

    async fn lockouts(&self) -> Result<Vec<Lockout>, StoreError>;

    /// Whether `principal` is locked out (by its primary key: cheap enough
    /// for every admission check).
    async fn is_locked_out(&self, principal: &str) -> Result<bool, StoreError>;

    /// Locks a principal out; a principal already locked out stays so with
    /// its first reason.
    async fn insert_lockout(&self, lockout: &Lockout) -> Result<(), StoreError>;

    /// Clears a lockout; returns whether there was one.
    async fn delete_lockout(&self, principal: &str) -> Result<bool, StoreError>;
}

/// The columns of `vault_leases`, for `concat!`.
macro_rules! lease_columns {
    () => {
        "id, tenant_id, region, database, role, access, issued_by, issued_at, expires_at, \
         revoked_at, attempts, next_attempt_at, last_error, disabled_at"
    };
}
pub(crate) use lease_columns;
