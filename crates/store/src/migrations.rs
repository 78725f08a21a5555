//! Rolling migrations of tenant databases, as jobs: each with its files
//! and options (`spec`, JSON the control plane writes and reads), and a
//! target per database with its outcome.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::StoreError;

/// One run of `bulkhead migrate`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MigrationJobRecord {
    pub id: Uuid,
    pub created_at: OffsetDateTime,
    /// The actor that started it, as audit records name actors.
    pub created_by: String,
    /// `running`, or how it ended: `succeeded`, `failed`, `halted`.
    pub state: String,
    pub spec: String,
    pub finished_at: Option<OffsetDateTime>,
}

/// One database of a job: a tenant's, or a region's pool.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MigrationTargetRecord {
    pub job_id: Uuid,
    /// The order the job takes targets in; canaries first.
    pub position: i64,
    /// `None` for a region's pool database.
    pub tenant_id: Option<Uuid>,
    pub region: String,
    /// The tenant's name, or `pool` (the pool's tenants are in `detail`
    /// until it is migrated).
    pub label: String,
    pub canary: bool,
    /// `pending`, `running`, `migrated`, `current`, `planned`, `failed`,
    /// `skipped`.
    pub state: String,
    pub from_version: Option<i64>,
    pub to_version: Option<i64>,
    /// The error of a failed target, why a skipped one was skipped, the
    /// files a planned one would take.
    pub detail: Option<String>,
    pub finished_at: Option<OffsetDateTime>,
}

#[async_trait]
pub trait MigrationStore: Send + Sync {
    /// Records a new running job with its targets, all or nothing;
    /// [`StoreError::Conflict`] while another job runs.
    async fn insert_migration_job(
        &self,
        job: &MigrationJobRecord,
        targets: &[MigrationTargetRecord],
    ) -> Result<(), StoreError>;

    async fn migration_job(&self, id: Uuid) -> Result<Option<MigrationJobRecord>, StoreError>;

    /// The latest `limit` jobs, newest first.
    async fn migration_jobs(&self, limit: u32) -> Result<Vec<MigrationJobRecord>, StoreError>;

    /// The job's targets, by position.
    async fn migration_targets(&self, job: Uuid) -> Result<Vec<MigrationTargetRecord>, StoreError>;

    /// Replaces one target's state, versions, detail and finish time.
    async fn update_migration_target(
        &self,
        target: &MigrationTargetRecord,
    ) -> Result<(), StoreError>;

    /// Ends a running job in `state`.
    async fn finish_migration_job(
        &self,
        id: Uuid,
        state: &str,
        at: OffsetDateTime,
    ) -> Result<(), StoreError>;
}
