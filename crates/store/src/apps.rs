//! What the runtime persists: each tenant's apps (their validated spec in
//! JSON, the one before it, whether they should run, whether they are
//! pinned), and the Unix user of each tenant's workers.

use async_trait::async_trait;
use bulkhead_model::TenantId;
use time::OffsetDateTime;

use crate::StoreError;

/// One app of a tenant as stored. `spec` and `previous` are `AppSpec`s in
/// JSON, validated by the model on the way in and out.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AppRecord {
    #[sqlx(try_from = "uuid::Uuid")]
    pub tenant_id: TenantId,
    pub name: String,
    pub spec: String,
    pub previous: Option<String>,
    pub running: bool,
    pub pinned: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[async_trait]
pub trait AppStore: Send + Sync {
    /// Creates the app or replaces it (spec, previous, running, pinned);
    /// `true` when it was created.
    async fn put_app(&self, app: &AppRecord) -> Result<bool, StoreError>;

    async fn app(&self, tenant: TenantId, name: &str) -> Result<Option<AppRecord>, StoreError>;

    /// The tenant's apps by name.
    async fn apps(&self, tenant: TenantId) -> Result<Vec<AppRecord>, StoreError>;

    /// Every tenant's apps: what the runtime starts from.
    async fn all_apps(&self) -> Result<Vec<AppRecord>, StoreError>;

    /// `true` when there was such an app.
    async fn delete_app(&self, tenant: TenantId, name: &str) -> Result<bool, StoreError>;

    /// Sets (`Some`) and removes (`None`) the tenant's flags, all or none.
    async fn set_flags(
        &self,
        tenant: TenantId,
        changes: &[(String, Option<String>)],
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// The tenant's flags by key.
    async fn flags(&self, tenant: TenantId) -> Result<Vec<(String, String)>, StoreError>;

    /// Every tenant's Unix user, as allocated.
    async fn runtime_users(&self) -> Result<Vec<(TenantId, u32)>, StoreError>;

    /// The tenant's Unix user: the one it has, or the lowest free uid in
    /// `first..=last`. `None` when the range is used up.
    async fn runtime_user(
        &self,
        tenant: TenantId,
        first: u32,
        last: u32,
        now: OffsetDateTime,
    ) -> Result<Option<u32>, StoreError>;
}
