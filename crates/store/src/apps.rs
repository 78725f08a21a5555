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
    /// The spec the gateway routes to; differs from `spec` while the
    /// runtime switches the app to it. `None`: `spec` is live.
    pub live: Option<String>,
    /// What [`AppStore::put_app`] expects to find: 0 to create the app.
    pub revision: i64,
    pub running: bool,
    pub pinned: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// A rollout as stored: `body` is the control plane's rollout in JSON,
/// `state` copied out of it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RolloutRecord {
    pub id: uuid::Uuid,
    pub app: String,
    pub state: String,
    pub body: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// The states of a rollout not ended (at most one per app).
pub const ROLLOUT_UNDER_WAY: [&str; 3] = ["running", "paused", "halted"];

#[async_trait]
pub trait AppStore: Send + Sync {
    /// Creates the app (`revision` 0) or replaces it (spec, previous, live,
    /// running, pinned) if its revision is still `revision`; `true` when it
    /// was created. Another writer's change in between (or an app created
    /// twice) is [`StoreError::VersionConflict`].
    async fn put_app(&self, app: &AppRecord) -> Result<bool, StoreError>;

    async fn app(&self, tenant: TenantId, name: &str) -> Result<Option<AppRecord>, StoreError>;

    /// The tenant's apps by name.
    async fn apps(&self, tenant: TenantId) -> Result<Vec<AppRecord>, StoreError>;

    /// Every tenant's apps: what the runtime starts from.
    async fn all_apps(&self) -> Result<Vec<AppRecord>, StoreError>;

    /// The switch: the app's `spec` becomes live, if it is still `spec`
    /// (a deploy since wins) and not live already. `true` when it did.
    async fn promote_app(
        &self,
        tenant: TenantId,
        name: &str,
        spec: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// The revert: the app's `spec` goes back to the live one (the one
    /// that failed becomes `previous`), if it is still `spec` and not live.
    /// `true` when it did.
    async fn revert_app(
        &self,
        tenant: TenantId,
        name: &str,
        spec: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Creates or replaces the rollout. A second rollout under way for the
    /// same app is [`StoreError::Duplicate`].
    async fn put_rollout(&self, rollout: &RolloutRecord) -> Result<(), StoreError>;

    async fn rollout(&self, id: uuid::Uuid) -> Result<Option<RolloutRecord>, StoreError>;

    /// The last `limit` rollouts, newest first.
    async fn rollouts(&self, limit: u32) -> Result<Vec<RolloutRecord>, StoreError>;

    /// Rollouts not ended (`state` running, paused or halted) or aborted
    /// with tenants still switching (`aborting`), newest first, at most
    /// 1,000.
    async fn unfinished_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError>;

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
