//! The embedded default: one SQLite file in WAL mode.

use std::{path::Path, time::Duration};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::{
    FileLock, FileLockError, StoreError, StoreLock,
    sql::{
        impl_api_store, impl_app_store, impl_audit_store, impl_backup_store, impl_control_store,
        impl_identity_store, impl_migration_store, impl_resource_store, impl_usage_store,
        impl_vault_store,
    },
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Debug, Clone)]
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
    location: String,
    lock_path: std::path::PathBuf,
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let location = format!("sqlite://{}", path.display());
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode survives any process crash (kill -9
            // included); only a power loss can drop the last commits, and it
            // never corrupts the file.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let unreachable = |source| StoreError::Unreachable { location: location.clone(), source };
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(unreachable)?;
        MIGRATOR
            .run(&write)
            .await
            .map_err(|source| StoreError::Migrate { location: location.clone(), source })?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(unreachable)?;
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        Ok(Self { read, write, location, lock_path: lock_path.into() })
    }

    /// An advisory lock on `<file>.lock`.
    async fn acquire_lock(&self) -> Result<StoreLock, StoreError> {
        let locked = |reason: String| StoreError::Locked { what: self.location.clone(), reason };
        match FileLock::acquire(&self.lock_path) {
            Ok(lock) => Ok(StoreLock { held: Box::new(lock) }),
            Err(FileLockError::Held) => Err(locked("another bulkhead server is using it".into())),
            Err(FileLockError::Io(e)) => {
                Err(locked(format!("cannot lock {}: {e}", self.lock_path.display())))
            }
        }
    }
}

impl_control_store!(SqliteStore);
impl_vault_store!(SqliteStore);
impl_identity_store!(SqliteStore);
impl_api_store!(SqliteStore);
impl_app_store!(SqliteStore);
impl_resource_store!(SqliteStore);
impl_backup_store!(SqliteStore);
crate::departed::impl_departed_store!(SqliteStore);
impl_usage_store!(SqliteStore);
impl_migration_store!(SqliteStore);
impl_audit_store!(SqliteStore, sqlx::Sqlite, "");

impl SqliteStore {
    /// Triggers are all SQLite has; whoever can write the file can drop
    /// them, which the embedded store assumes nobody but the server can.
    async fn audit_tamper_risk_of_role(&self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    /// No other process follows a SQLite store: the gateway beside it hears
    /// of changes in-process.
    async fn notify_gateways_of(&self, _: &[bulkhead_model::TenantId]) -> Result<(), StoreError> {
        Ok(())
    }

    async fn follow_gateway_changes(
        &self,
    ) -> Result<Option<Box<dyn crate::GatewayChanges>>, StoreError> {
        Ok(None)
    }

    /// A SQLite file has no connections to refuse.
    async fn public_connect_risk_of_database(&self) -> Result<Option<String>, StoreError> {
        Ok(None)
    }

    /// Multi-row INSERTs, within SQLite's limit on bound parameters.
    async fn insert_audit_events(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        events: &[crate::AuditEventRow],
    ) -> Result<(), StoreError> {
        for chunk in events.chunks(crate::audit::AUDIT_ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO audit_events (stream, seq, time, actor_kind, actor_id, action, \
                 resource, outcome, request_id, details, prev_hash, hash, mac, mac_key_id) ",
            );
            insert.push_values(chunk, |mut row, e| {
                row.push_bind(e.stream.as_str())
                    .push_bind(e.seq)
                    .push_bind(e.time.as_str())
                    .push_bind(e.actor_kind.as_str())
                    .push_bind(e.actor_id.as_str())
                    .push_bind(e.action.as_str())
                    .push_bind(e.resource.as_str())
                    .push_bind(e.outcome.as_str())
                    .push_bind(e.request_id.as_deref())
                    .push_bind(e.details.as_str())
                    .push_bind(e.prev_hash.as_slice())
                    .push_bind(e.hash.as_slice())
                    .push_bind(e.mac.as_deref())
                    .push_bind(e.mac_key_id.as_deref());
            });
            insert.build().persistent(false).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// The checkpoint first, in the same transaction: the delete trigger
    /// lets through only events a truncation checkpoint covers.
    async fn truncate_audit_rows(
        &self,
        checkpoint: &crate::AuditCheckpointRow,
    ) -> Result<u64, StoreError> {
        let mut tx = self.write.begin().await?;
        let anchored: Option<(i64,)> = sqlx::query_as(
            "SELECT seq FROM audit_events WHERE stream = $1 AND seq = $2 AND hash = $3",
        )
        .bind(checkpoint.stream.as_str())
        .bind(checkpoint.seq)
        .bind(checkpoint.head.as_slice())
        .fetch_optional(&mut *tx)
        .await?;
        if anchored.is_none() {
            return Err(StoreError::Corrupt(format!(
                "no event {} with that hash in stream {}",
                checkpoint.seq, checkpoint.stream
            )));
        }
        // As on PostgreSQL: only what a periodic checkpoint already signed.
        let signed: Option<(i64,)> = sqlx::query_as(
            "SELECT seq FROM audit_checkpoints WHERE stream = $1 AND kind = 'periodic' \
             AND seq >= $2 LIMIT 1",
        )
        .bind(checkpoint.stream.as_str())
        .bind(checkpoint.seq)
        .fetch_optional(&mut *tx)
        .await?;
        if signed.is_none() {
            return Err(StoreError::Corrupt(format!(
                "event {} of stream {} is not under a periodic checkpoint yet",
                checkpoint.seq, checkpoint.stream
            )));
        }
        sqlx::query(
            "INSERT INTO audit_checkpoints (stream, seq, head, time, kind, key_id, signature) \
             VALUES ($1, $2, $3, $4, 'truncation', $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(checkpoint.stream.as_str())
        .bind(checkpoint.seq)
        .bind(checkpoint.head.as_slice())
        .bind(checkpoint.time.as_str())
        .bind(checkpoint.key_id.as_str())
        .bind(checkpoint.signature.as_slice())
        .execute(&mut *tx)
        .await?;
        let deleted = sqlx::query("DELETE FROM audit_events WHERE stream = $1 AND seq <= $2")
            .bind(checkpoint.stream.as_str())
            .bind(checkpoint.seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(deleted)
    }
}
