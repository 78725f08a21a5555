//! What the backup scheduler remembers of each tenant: when its last backup
//! succeeded, and the failures since. The backups themselves live in the
//! backup store.

use async_trait::async_trait;
use bulkhead_model::TenantId;
use time::OffsetDateTime;

use crate::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BackupRun {
    #[sqlx(try_from = "uuid::Uuid")]
    pub tenant_id: TenantId,
    /// When the last backup that succeeded was taken, and its id.
    pub last_success: Option<OffsetDateTime>,
    pub last_backup: Option<String>,
    pub last_attempt: OffsetDateTime,
    /// Failures since the last success.
    pub failures: i64,
    pub last_error: Option<String>,
    /// A failing tenant is not tried again before this.
    pub retry_at: Option<OffsetDateTime>,
}

#[async_trait]
pub trait BackupStore: Send + Sync {
    /// Every tenant's record, for the scheduler and /metrics.
    async fn backup_runs(&self) -> Result<Vec<BackupRun>, StoreError>;

    async fn backup_run(&self, tenant: TenantId) -> Result<Option<BackupRun>, StoreError>;

    /// Backup `id`, taken at `at`, succeeded: the failures are forgotten.
    async fn backup_succeeded(
        &self,
        tenant: TenantId,
        id: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// A backup failed at `at`: counted, and not tried again before
    /// `retry_at`.
    async fn backup_failed(
        &self,
        tenant: TenantId,
        error: &str,
        at: OffsetDateTime,
        retry_at: OffsetDateTime,
    ) -> Result<(), StoreError>;
}
