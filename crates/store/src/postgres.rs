//! Control-plane state in PostgreSQL, for production and for several
//! machines.

use std::time::Duration;

use bulkhead_model::DatabaseUrl;
use sqlx::{
    Connection, PgConnection,
    postgres::{PgPool, PgPoolOptions},
};

use crate::{StoreError, StoreKind, StoreLock, sql::impl_control_store};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The advisory lock key that marks a database as in use by a control
/// plane: the ASCII of "bulkhead" read as a big-endian integer.
const LOCK_KEY: i64 = 0x6275_6c6b_6865_6164;
const LOCK_TRIES: u32 = 10;
const LOCK_RETRY: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct PostgresStore {
    read: PgPool,
    write: PgPool,
    location: String,
    url: DatabaseUrl,
}

impl PostgresStore {
    pub async fn open(url: &DatabaseUrl) -> Result<Self, StoreError> {
        let location = url.redacted();
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url.expose())
            .await
            .map_err(|source| StoreError::Unreachable { location: location.clone(), source })?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate { location: location.clone(), source })?;
        Ok(Self { read: pool.clone(), write: pool, location, url: url.clone() })
    }

    /// A session-level advisory lock on a connection of its own, outside the
    /// pool: it lasts exactly as long as that connection, so a crashed server
    /// releases it as soon as PostgreSQL notices its socket closed. That can
    /// take a moment, hence a few tries before giving up.
    async fn acquire_lock(&self) -> Result<StoreLock, StoreError> {
        let mut conn = PgConnection::connect(self.url.expose()).await.map_err(|source| {
            StoreError::Unreachable { location: self.location.clone(), source }
        })?;
        for _ in 0..LOCK_TRIES {
            let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                .bind(LOCK_KEY)
                .fetch_one(&mut conn)
                .await?;
            if locked {
                return Ok(StoreLock { _held: Box::new(conn) });
            }
            tokio::time::sleep(LOCK_RETRY).await;
        }
        Err(StoreError::Locked {
            what: self.location.clone(),
            reason: "another bulkhead server is using it".to_owned(),
        })
    }
}

impl_control_store!(PostgresStore, StoreKind::Postgres);
