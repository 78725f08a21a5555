//! What the gateway's contracts persist: each tenant's APIs, as their
//! validated spec in JSON, and the bulk reads a gateway snapshot is built
//! from.

use async_trait::async_trait;
use bulkhead_model::TenantId;
use time::OffsetDateTime;

use crate::StoreError;

/// One API of a tenant as stored. `spec` is an `ApiSpec` in JSON: the
/// model validates it on the way in, and again on the way out.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiRecord {
    #[sqlx(try_from = "uuid::Uuid")]
    pub tenant_id: TenantId,
    pub name: String,
    pub spec: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[async_trait]
pub trait ApiStore: Send + Sync {
    /// Creates the API or replaces its spec; `true` when it was created.
    async fn put_api(&self, api: &ApiRecord) -> Result<bool, StoreError>;

    async fn api(&self, tenant: TenantId, name: &str) -> Result<Option<ApiRecord>, StoreError>;

    /// The tenant's APIs by name.
    async fn apis(&self, tenant: TenantId) -> Result<Vec<ApiRecord>, StoreError>;

    /// Every tenant's APIs: what a gateway snapshot is built from.
    async fn all_apis(&self) -> Result<Vec<ApiRecord>, StoreError>;

    /// `true` when there was such an API.
    async fn delete_api(&self, tenant: TenantId, name: &str) -> Result<bool, StoreError>;
}
