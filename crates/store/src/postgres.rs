//! Control-plane state in PostgreSQL, for production and for several
//! machines.

use std::{str::FromStr, time::Duration};

use bulkhead_model::DatabaseUrl;
use sqlx::{
    Connection, PgConnection,
    postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions},
};

use crate::{
    HeldLock, StoreError, StoreLock,
    sql::{
        impl_api_store, impl_app_store, impl_audit_store, impl_backup_store, impl_control_store,
        impl_identity_store, impl_migration_store, impl_resource_store, impl_usage_store,
        impl_vault_store,
    },
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The advisory lock key that marks a database as in use by a control
/// plane: the ASCII of "bulkhead" read as a big-endian integer.
const LOCK_KEY: i64 = 0x6275_6c6b_6865_6164;
const LOCK_TRIES: u32 = 10;
/// How the lock's session shows in `pg_stat_activity`.
pub(crate) const LOCK_APPLICATION: &str = "bulkhead-store-lock";
const LOCK_RETRY: Duration = Duration::from_millis(300);

/// The channel a control plane notifies gateways on: the payload is a
/// changed tenant's id.
const GATEWAY_CHANNEL: &str = "bulkhead_gateway";

struct Listener(PgListener);

#[async_trait::async_trait]
impl crate::GatewayChanges for Listener {
    async fn next(&mut self) -> Result<Option<bulkhead_model::TenantId>, StoreError> {
        loop {
            let Some(notification) = self.0.try_recv().await? else { return Ok(None) };
            // Anything else on the channel is not ours to act on.
            if let Ok(id) = uuid::Uuid::parse_str(notification.payload()) {
                return Ok(Some(bulkhead_model::TenantId(id)));
            }
        }
    }
}

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

    async fn notify_gateways_of(
        &self,
        tenants: &[bulkhead_model::TenantId],
    ) -> Result<(), StoreError> {
        for tenant in tenants {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(GATEWAY_CHANNEL)
                .bind(tenant.0.to_string())
                .execute(&self.write)
                .await?;
        }
        Ok(())
    }

    async fn follow_gateway_changes(
        &self,
    ) -> Result<Option<Box<dyn crate::GatewayChanges>>, StoreError> {
        let unreachable =
            |source| StoreError::Unreachable { location: self.location.clone(), source };
        let mut listener = PgListener::connect(self.url.expose()).await.map_err(unreachable)?;
        listener.listen(GATEWAY_CHANNEL).await.map_err(unreachable)?;
        Ok(Some(Box::new(Listener(listener))))
    }

    /// A session-level advisory lock on a connection of its own, outside the
    /// pool: it lasts exactly as long as that connection, so a crashed server
    /// releases it as soon as PostgreSQL notices its socket closed. That can
    /// take a moment, hence a few tries before giving up.
    async fn acquire_lock(&self) -> Result<StoreLock, StoreError> {
        let unreachable =
            |source| StoreError::Unreachable { location: self.location.clone(), source };
        let options = PgConnectOptions::from_str(self.url.expose())
            .map_err(unreachable)?
            .application_name(LOCK_APPLICATION);
        let mut conn = PgConnection::connect_with(&options).await.map_err(unreachable)?;
        for _ in 0..LOCK_TRIES {
            let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                .bind(LOCK_KEY)
                .fetch_one(&mut conn)
                .await?;
            if locked {
                return Ok(StoreLock { held: Box::new(AdvisoryLock { conn }) });
            }
            tokio::time::sleep(LOCK_RETRY).await;
        }
        Err(StoreError::Locked {
            what: self.location.clone(),
            reason: "another bulkhead server is using it".to_owned(),
        })
    }
}

/// The session that holds the advisory lock. The lock lives exactly as long
/// as the session, so "still held" is "the session still answers".
struct AdvisoryLock {
    conn: PgConnection,
}

#[async_trait::async_trait]
impl HeldLock for AdvisoryLock {
    async fn still_held(&mut self) -> bool {
        let ping = sqlx::query("SELECT 1").execute(&mut self.conn);
        matches!(tokio::time::timeout(Duration::from_secs(10), ping).await, Ok(Ok(_)))
    }
}

impl_control_store!(PostgresStore);
impl_vault_store!(PostgresStore);
impl_identity_store!(PostgresStore);
impl_api_store!(PostgresStore);
impl_app_store!(PostgresStore);
impl_resource_store!(PostgresStore);
impl_backup_store!(PostgresStore);
crate::departed::impl_departed_store!(PostgresStore);
impl_usage_store!(PostgresStore);
impl_migration_store!(PostgresStore);
// Schema-qualified: an unqualified name could find a table of the same
// name that the server's own role created in a schema earlier on its path.
impl_audit_store!(PostgresStore, sqlx::Postgres, "audit.");

impl PostgresStore {
    async fn audit_tamper_risk_of_role(&self) -> Result<Option<String>, StoreError> {
        let (user, superuser, createrole, member): (String, bool, bool, bool) = sqlx::query_as(
            "SELECT current_user::text, rolsuper, rolcreaterole, \
             pg_has_role(current_user, left(current_database(), 40) || '_audit_owner', 'MEMBER') \
             FROM pg_roles WHERE rolname = current_user",
        )
        .fetch_one(&self.read)
        .await?;
        let why = if superuser {
            "is a superuser"
        } else if member {
            "is a member of the audit tables' owner"
        } else if createrole {
            "has CREATEROLE, so it could make itself a member of the audit tables' owner"
        } else {
            return Ok(None);
        };
        Ok(Some(format!(
            "the control store's role {user} {why}: it could switch off the audit tables' \
             append-only protection (Bulkhead would still refuse to sign what it did not write, \
             and tenants' exports would still show any change). Once the first start has made \
             the audit tables, run the server as a role without SUPERUSER and CREATEROLE \
             (`ALTER ROLE \"{user}\" NOSUPERUSER NOCREATEROLE`), with tenant databases under a \
             role of their own in [[regions]] (docs/operations.md)"
        )))
    }

    /// Whether every role may connect to the control store's database, so
    /// that a tenant's database credential could read its catalog.
    async fn public_connect_risk_of_database(&self) -> Result<Option<String>, StoreError> {
        let (database, open): (String, bool) = sqlx::query_as(
            "SELECT current_database()::text, \
             datacl IS NULL OR EXISTS (SELECT 1 FROM pg_catalog.aclexplode(datacl) a \
               WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT') \
             FROM pg_catalog.pg_database WHERE datname = current_database()",
        )
        .fetch_one(&self.read)
        .await?;
        Ok(open.then(|| {
            format!(
                "every role may connect to the control store's database {database}, tenants' \
                 database credentials included: run `REVOKE CONNECT, TEMPORARY ON DATABASE \
                 \"{database}\" FROM PUBLIC` as its owner (docs/operations.md)"
            )
        }))
    }

    /// One statement for the whole batch: each column bound as an array
    /// and unnested, so the statement is the same whatever the batch size
    /// (prepared once) and rows cost no per-parameter overhead.
    async fn insert_audit_events(
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        events: &[crate::AuditEventRow],
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let column =
            |f: fn(&crate::AuditEventRow) -> &str| -> Vec<&str> { events.iter().map(f).collect() };
        sqlx::query(
            "INSERT INTO audit.audit_events (stream, seq, time, actor_kind, actor_id, action, resource, \
             outcome, request_id, details, prev_hash, hash, mac, mac_key_id) \
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[], $12::bytea[], \
             $13::bytea[], $14::text[])",
        )
        .bind(column(|e| &e.stream))
        .bind(events.iter().map(|e| e.seq).collect::<Vec<i64>>())
        .bind(column(|e| &e.time))
        .bind(column(|e| &e.actor_kind))
        .bind(column(|e| &e.actor_id))
        .bind(column(|e| &e.action))
        .bind(column(|e| &e.resource))
        .bind(column(|e| &e.outcome))
        .bind(events.iter().map(|e| e.request_id.as_deref()).collect::<Vec<Option<&str>>>())
        .bind(column(|e| &e.details))
        .bind(events.iter().map(|e| e.prev_hash.as_slice()).collect::<Vec<&[u8]>>())
        .bind(events.iter().map(|e| e.hash.as_slice()).collect::<Vec<&[u8]>>())
        .bind(events.iter().map(|e| e.mac.as_deref()).collect::<Vec<Option<&[u8]>>>())
        .bind(events.iter().map(|e| e.mac_key_id.as_deref()).collect::<Vec<Option<&str>>>())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Through the `audit.truncate_stream` function: it runs as the tables' owner,
    /// the one role whose deletes the append-only trigger lets through.
    async fn truncate_audit_rows(
        &self,
        checkpoint: &crate::AuditCheckpointRow,
    ) -> Result<u64, StoreError> {
        let (deleted,): (i64,) =
            sqlx::query_as("SELECT audit.truncate_stream($1, $2, $3, $4, $5, $6)")
                .bind(checkpoint.stream.as_str())
                .bind(checkpoint.seq)
                .bind(checkpoint.head.as_slice())
                .bind(checkpoint.time.as_str())
                .bind(checkpoint.key_id.as_str())
                .bind(checkpoint.signature.as_slice())
                .fetch_one(&self.write)
                .await?;
        Ok(deleted.max(0) as u64)
    }
}
