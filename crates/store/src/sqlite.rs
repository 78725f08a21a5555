//! The embedded default: one SQLite file in WAL mode.

use std::{path::Path, time::Duration};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::{
    FileLock, FileLockError, StoreError, StoreLock,
    sql::{impl_control_store, impl_identity_store, impl_vault_store},
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
