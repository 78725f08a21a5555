//! The embedded default: a SQLite file per tenant, `<tenant-dir>/data.db`,
//! readable by the server's user only (SQLite gives its `-wal` and `-shm`
//! files the database file's mode).

use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use serde_json::json;
use sqlx::{
    ConnectOptions, Connection,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};

use crate::{Error, sql::transient};

/// The tenant database's files: the database and its write-ahead log.
pub const FILES: [&str; 3] = ["data.db", "data.db-wal", "data.db-shm"];

/// The tenant's database file in its directory.
pub fn path(tenant_dir: &Path) -> PathBuf {
    tenant_dir.join(FILES[0])
}

/// Creates the tenant's database file, or leaves the one there.
pub async fn create(tenant_dir: &Path) -> Result<serde_json::Value, Error> {
    let path = path(tenant_dir);
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .connect()
        .await
        .map_err(transient("cannot create the tenant's SQLite database"))?;
    // Creating the file is lazy in SQLite: write the header now.
    sqlx::query("PRAGMA user_version = 1")
        .execute(&mut conn)
        .await
        .map_err(transient("cannot initialise the tenant's SQLite database"))?;
    conn.close().await.map_err(transient("cannot close the tenant's SQLite database"))?;
    for file in FILES {
        let file = tenant_dir.join(file);
        match tokio::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(Error::Transient(format!("cannot restrict {}: {e}", file.display())));
            }
            _ => {}
        }
    }
    Ok(json!({ "engine": "sqlite", "path": path }))
}

/// Removes the tenant's database files. The caller checks that the
/// directory is the tenant's own.
pub async fn remove(tenant_dir: &Path) -> Result<(), Error> {
    for file in FILES {
        let path = tenant_dir.join(file);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(Error::Transient(format!("cannot remove {}: {e}", path.display())));
            }
            _ => {}
        }
    }
    Ok(())
}
