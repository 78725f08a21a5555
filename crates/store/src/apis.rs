//! What the gateway persists: each tenant's APIs, as their validated spec
//! in JSON, and its usage, per tenant, API and minute.

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

/// A tenant's usage of one API in one minute, as the gateway's meter summed
/// it (`row` is its JSON). Rows are deltas: a minute may have several,
/// which are added up when read.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageRecord {
    #[sqlx(try_from = "uuid::Uuid")]
    pub tenant_id: TenantId,
    /// Empty for requests refused before an API was chosen.
    pub api: String,
    pub minute: OffsetDateTime,
    pub row: String,
}

/// One line of the billing ledger: a tenant's use of one API, and of one
/// model or tool through it, on one UTC day. Adding a line adds to the
/// stored one with the same key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LedgerLine {
    #[sqlx(try_from = "uuid::Uuid")]
    pub tenant_id: TenantId,
    /// `YYYY-MM-DD`.
    pub day: String,
    /// Empty for requests refused before an API was chosen.
    pub api: String,
    /// `requests` (every request to the API; `item` empty), `model` or
    /// `tool` (calls of `item`).
    pub kind: String,
    pub item: String,
    pub requests: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    /// Micro-units of the prices' currency.
    pub cost_micros: i64,
}

#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Stores every record and adds every ledger line, or nothing.
    async fn insert_usage(
        &self,
        records: &[UsageRecord],
        ledger: &[LedgerLine],
    ) -> Result<(), StoreError>;

    /// The ledger's lines of days `from` (included) to `until` (excluded),
    /// `YYYY-MM-DD`, of one tenant or all, by tenant, day, API, kind and
    /// item.
    async fn ledger(
        &self,
        tenant: Option<TenantId>,
        from: &str,
        until: &str,
    ) -> Result<Vec<LedgerLine>, StoreError>;

    /// What the tenant's ledger says it spent on days `from` to `until`,
    /// in micro-units.
    async fn spent(&self, tenant: TenantId, from: &str, until: &str) -> Result<u64, StoreError>;

    /// Records that the tenant was given notice `kind` for `period`;
    /// `true` the first time only.
    async fn note_budget(
        &self,
        tenant: TenantId,
        period: &str,
        kind: &str,
        at: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// The tenant's records from `since` on (of one API when `api` is
    /// given), by minute.
    async fn usage(
        &self,
        tenant: TenantId,
        api: Option<&str>,
        since: OffsetDateTime,
    ) -> Result<Vec<UsageRecord>, StoreError>;

    /// Deletes the records of minutes before `before`; returns how many.
    async fn delete_usage_before(&self, before: OffsetDateTime) -> Result<u64, StoreError>;

    /// Queues gateway decisions (JSON, by tenant) for the control plane to
    /// record: every one, or none.
    async fn queue_decisions(&self, decisions: &[(TenantId, String)]) -> Result<(), StoreError>;

    /// The oldest `limit` queued decisions, with their queue ids.
    async fn queued_decisions(&self, limit: u32) -> Result<Vec<(i64, String)>, StoreError>;

    /// Removes the queued decisions up to and including id `up_to`.
    async fn dequeue_decisions(&self, up_to: i64) -> Result<(), StoreError>;
}
