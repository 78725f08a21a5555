//! Tenants' resources that are a validated spec and nothing more
//! (guardrails, tools), in one table told apart by kind.

use async_trait::async_trait;
use bulkhead_model::TenantId;
use time::OffsetDateTime;

use crate::StoreError;

/// One resource of a tenant as stored: `spec` is the JSON of the model
/// type `kind` names (`guardrail`), validated on the way in and again on
/// the way out.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ResourceRecord {
    #[sqlx(try_from = "uuid::Uuid")]
    pub tenant_id: TenantId,
    pub kind: String,
    pub name: String,
    pub spec: String,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

#[async_trait]
pub trait ResourceStore: Send + Sync {
    /// Creates the resource or replaces its spec; `true` when it was
    /// created.
    async fn put_resource(&self, resource: &ResourceRecord) -> Result<bool, StoreError>;

    async fn resource(
        &self,
        tenant: TenantId,
        kind: &str,
        name: &str,
    ) -> Result<Option<ResourceRecord>, StoreError>;

    /// The tenant's resources of `kind`, by name.
    async fn resources(
        &self,
        tenant: TenantId,
        kind: &str,
    ) -> Result<Vec<ResourceRecord>, StoreError>;

    /// Every tenant's resources of `kind`: what a gateway snapshot reads.
    async fn all_resources(&self, kind: &str) -> Result<Vec<ResourceRecord>, StoreError>;

    /// `true` when there was such a resource.
    async fn delete_resource(
        &self,
        tenant: TenantId,
        kind: &str,
        name: &str,
    ) -> Result<bool, StoreError>;
}
