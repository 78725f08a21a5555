//! Control-plane persistence: tenants, their provisioning progress, audit streams,
//! operator credentials and the vault's records, behind one [`ControlStore`]
//! trait (with [`VaultStore`] as its vault half).
//!
//! Two implementations share every SQL statement: SQLite in the data
//! directory (the embedded default, WAL mode) and PostgreSQL. Both run their
//! embedded migrations when opened, and one contract suite
//! (`tests/contract.rs`) runs against both.
//!
//! The store holds desired and recorded state only. It never creates tenant
//! databases or directories; the reconciler in `bulkhead-control` does, and
//! records what it did here.

mod apis;
mod apps;
mod audit;
mod backups;
mod departed;
mod error;
mod identity;
mod lock;
mod migrations;
mod postgres;
mod resources;
mod rows;
mod sql;
mod sqlite;
mod vault;

use std::{fmt, path::PathBuf, sync::Arc};

use async_trait::async_trait;
use bulkhead_model::{DatabaseUrl, StepRecord, Tenant, TenantId, TenantName, TenantState};
use time::OffsetDateTime;
use uuid::Uuid;

pub use apis::{ApiRecord, ApiStore, LedgerLine, UsageRecord, UsageStore};
pub use apps::{AppRecord, AppStore, ROLLOUT_UNDER_WAY, RolloutRecord};
pub use audit::{AuditCheckpointRow, AuditEventRow, AuditKeyRow, AuditStore};
pub use backups::{BackupRun, BackupStore};
pub use departed::{Departed, DepartedStore};
pub use error::{StoreError, describe as describe_error};
pub use identity::{ApiKeyRecord, IdentityStore, RealmKeyRecord, RealmRecord, TrustRecord};
pub use lock::{FileLock, FileLockError, HeldLock, StoreLock};
pub use migrations::{MigrationJobRecord, MigrationStore, MigrationTargetRecord};
pub use postgres::PostgresStore;
pub use resources::{ResourceRecord, ResourceStore};
pub use sqlite::SqliteStore;
pub use vault::{
    Lease, Lockout, SealedBlob, SecretSummary, SecretVersion, VaultStore, WrappedDataKey,
};

/// Where the control-plane state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file, normally `<data-dir>/bulkhead.db`.
    Sqlite(PathBuf),
    Postgres(DatabaseUrl),
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            StoreLocation::Postgres(url) => url.fmt(f),
        }
    }
}

/// Opens the store at `location` and brings its schema up to date.
pub async fn open(location: &StoreLocation) -> Result<Arc<dyn ControlStore>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(path) => Arc::new(SqliteStore::open(path).await?),
        StoreLocation::Postgres(url) => Arc::new(PostgresStore::open(url).await?),
    })
}

/// Tenants changed, as a gateway following the store hears of them.
#[async_trait]
pub trait GatewayChanges: Send {
    /// The next changed tenant; `Ok(None)` when the connection was lost,
    /// so that notifications may have been missed (the next call connects
    /// again).
    async fn next(&mut self) -> Result<Option<TenantId>, StoreError>;
}

/// One page of the tenant list, ordered by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPage {
    /// Only tenants whose name sorts after this one.
    pub after: Option<String>,
    /// Only tenants in this state; `None` lists every state but `deleted`.
    pub state: Option<TenantState>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionUse {
    pub region: String,
    pub tenants: u64,
    pub first_tenant: String,
}

/// An operator credential. Only the SHA-256 of the token is ever stored.
#[derive(Clone, PartialEq, Eq)]
pub struct OperatorToken {
    pub id: Uuid,
    pub name: String,
    pub token_hash: [u8; 32],
    pub created_at: OffsetDateTime,
}

impl fmt::Debug for OperatorToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorToken")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The control plane's persistence. Every method is one statement, so a
/// crash leaves each write either fully done or not done at all.
#[async_trait]
pub trait ControlStore:
    VaultStore
    + IdentityStore
    + AuditStore
    + ApiStore
    + AppStore
    + ResourceStore
    + BackupStore
    + DepartedStore
    + UsageStore
    + MigrationStore
    + Send
    + Sync
    + fmt::Debug
{
    /// Where the store is, safe to print (no password).
    fn location(&self) -> String;

    /// Takes the store's exclusive lock or fails with [`StoreError::Locked`].
    async fn lock_exclusive(&self) -> Result<StoreLock, StoreError>;

    async fn ping(&self) -> Result<(), StoreError>;

    /// The store's installation id: `proposed` if it has none yet.
    async fn installation_id(&self, proposed: Uuid) -> Result<Uuid, StoreError>;

    /// Records how clients reach the control plane (realms' issuers start
    /// with it), for gateways that follow this store from elsewhere.
    async fn set_public_url(&self, url: &str) -> Result<(), StoreError>;

    /// What [`ControlStore::set_public_url`] recorded last.
    async fn public_url(&self) -> Result<Option<String>, StoreError>;

    /// Tells gateways that follow this store from other processes that
    /// these tenants changed (PostgreSQL `NOTIFY`; nothing on SQLite, which
    /// no other process follows).
    async fn notify_gateways(&self, tenants: &[TenantId]) -> Result<(), StoreError>;

    /// Follows those notifications; `None` on a store that has none.
    async fn gateway_changes(&self) -> Result<Option<Box<dyn GatewayChanges>>, StoreError>;

    /// Why roles other than the server's could connect to the store's own
    /// database, if they could, for the operator to hear at start.
    async fn public_connect_risk(&self) -> Result<Option<String>, StoreError>;

    /// Records a new tenant; [`StoreError::NameTaken`] if any tenant record,
    /// deleted or not, already has its name.
    async fn insert_tenant(&self, tenant: &Tenant) -> Result<(), StoreError>;

    async fn tenant(&self, name: &TenantName) -> Result<Option<Tenant>, StoreError>;

    async fn tenant_by_id(&self, id: TenantId) -> Result<Option<Tenant>, StoreError>;

    async fn list_tenants(&self, page: &TenantPage) -> Result<Vec<Tenant>, StoreError>;

    /// The tenant a caller names, or `None` when no tenant has that name or
    /// it is not a name at all: to a caller, both are "no such tenant".
    async fn tenant_named(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        match TenantName::parse_stored(name) {
            Ok(name) => self.tenant(&name).await,
            Err(_) => Ok(None),
        }
    }

    /// Every tenant but the deleted ones, read page by page: for
    /// the background jobs that visit them all.
    async fn all_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let mut all = Vec::new();
        let mut page = TenantPage { after: None, state: None, limit: 1_000 };
        loop {
            let tenants = self.list_tenants(&page).await?;
            let Some(last) = tenants.last() else { return Ok(all) };
            page.after = Some(last.name.to_string());
            all.extend(tenants);
        }
    }

    /// Tenants the reconciler has work for (see [`Tenant::needs_work`]).
    async fn unsettled_tenants(&self) -> Result<Vec<TenantId>, StoreError>;

    /// Writes `tenant` if its `version` is still the stored one, and returns
    /// it with the next version; [`StoreError::VersionConflict`] otherwise.
    async fn update_tenant(&self, tenant: &Tenant) -> Result<Tenant, StoreError>;

    /// Removes the tenant's record and its step records.
    async fn delete_tenant(&self, id: TenantId) -> Result<(), StoreError>;

    async fn steps(&self, id: TenantId) -> Result<Vec<StepRecord>, StoreError>;

    /// Inserts or replaces the record of one step.
    async fn record_step(&self, id: TenantId, record: &StepRecord) -> Result<(), StoreError>;

    async fn count_by_state(&self) -> Result<Vec<(TenantState, u64)>, StoreError>;

    /// Every region any tenant record (deleted ones included) names, with
    /// how many tenants and the first of them by name.
    async fn regions_in_use(&self) -> Result<Vec<RegionUse>, StoreError>;

    async fn operator_tokens(&self) -> Result<Vec<OperatorToken>, StoreError>;

    async fn insert_operator_token(&self, token: &OperatorToken) -> Result<(), StoreError>;
}
