//! `create_database`: the tenant's database, where its region keeps them.
//!
//! - Embedded region: a SQLite file, `<tenant-dir>/data.db`.
//! - PostgreSQL region, silo: a database and a `NOLOGIN` owner role of its
//!   own, with `CONNECT` revoked from `PUBLIC`, and a `NOLOGIN` read-only
//!   role (`SELECT` on what the owner creates in `public`). Dynamic login
//!   roles (the vault's leases) are members of one of the two.
//! - PostgreSQL region, pool: the region's shared database, created if
//!   missing and never dropped by one tenant's undo. Per-tenant roles and
//!   row-level security come with tenant databases.
//!
//! Names carry the region's prefix, the tenant's name and the first eight
//! hex digits of its id (`bh_acme_1f3c9a2e`), so that a tenant recreated
//! under an old name, or another installation sharing the server, never
//! adopts someone else's database.

use std::{
    collections::HashMap,
    io,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bulkhead_model::{DatabaseLocation, DatabaseUrl, Isolation, Region, RegionName, Tenant};
use bulkhead_vault::leases::{Databases, drop_role, reopen_database, roll_back_prepared};
use serde_json::json;
use sqlx::{
    AssertSqlSafe, ConnectOptions, Connection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous},
};

use super::{ProvisioningStep, StepError, StepTarget, directory};

/// Admin connection pools to each PostgreSQL region, made on first use and
/// shared by every step that needs them.
#[derive(Debug, Clone)]
pub struct RegionServers {
    pools: Arc<Mutex<HashMap<RegionName, PgPool>>>,
    connect_timeout: Duration,
}

impl Default for RegionServers {
    fn default() -> Self {
        Self::with_connect_timeout(Duration::from_secs(5))
    }
}

impl RegionServers {
    /// How long one attempt waits for a connection to a region's server.
    pub fn with_connect_timeout(connect_timeout: Duration) -> Self {
        Self { pools: Arc::default(), connect_timeout }
    }

    /// The admin pool of a region's server.
    pub fn pool(&self, region: &RegionName, url: &DatabaseUrl) -> Result<PgPool, StepError> {
        let mut pools = self
            .pools
            .lock()
            .map_err(|_| StepError::Transient("region connection table poisoned".into()))?;
        if let Some(pool) = pools.get(region) {
            return Ok(pool.clone());
        }
        // Lazy: an unreachable region fails the steps that need it, with
        // retries, rather than the server's start.
        let options = admin_options(region, url)?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(self.connect_timeout)
            .connect_lazy_with(options);
        pools.insert(region.clone(), pool.clone());
        Ok(pool)
    }

    /// A one-connection pool to a database of the region's server, as the
    /// region's role: for the grants and clean-ups that must run inside a
    /// tenant's database.
    pub async fn database_pool(
        &self,
        region: &RegionName,
        url: &DatabaseUrl,
        database: &str,
    ) -> Result<PgPool, StepError> {
        // Timeouts newer servers have, which a tenant's owner role could set
        // on its database to end Bulkhead's sessions there at once; an older
        // server refuses a setting it does not know, so only what it has.
        let (version,): (i32,) =
            sqlx::query_as("SELECT current_setting('server_version_num')::int")
                .fetch_one(&self.pool(region, url)?)
                .await
                .map_err(transient("cannot reach the region's PostgreSQL server"))?;
        let mut later = Vec::new();
        if version >= 140_000 {
            later.push(("idle_session_timeout", "0"));
        }
        if version >= 170_000 {
            later.push(("transaction_timeout", "0"));
        }
        let options = admin_options(region, url)?.options(later).database(database);
        PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(self.connect_timeout)
            .connect_with(options)
            .await
            .map_err(transient("cannot connect to the tenant's database"))
    }
}

/// The databases of one region's server, for [`bulkhead_vault::leases`].
#[derive(Debug)]
pub struct RegionDatabases<'a> {
    servers: &'a RegionServers,
    region: &'a RegionName,
    url: &'a DatabaseUrl,
}

impl RegionServers {
    pub fn databases<'a>(
        &'a self,
        region: &'a RegionName,
        url: &'a DatabaseUrl,
    ) -> RegionDatabases<'a> {
        RegionDatabases { servers: self, region, url }
    }
}

#[async_trait]
impl Databases for RegionDatabases<'_> {
    async fn connect(&self, database: &str) -> Result<PgPool, bulkhead_vault::VaultError> {
        self.servers
            .database_pool(self.region, self.url, database)
            .await
            .map_err(|e| bulkhead_vault::VaultError::Database(e.to_string()))
    }
}

fn admin_options(region: &RegionName, url: &DatabaseUrl) -> Result<PgConnectOptions, StepError> {
    Ok(PgConnectOptions::from_str(url.expose())
        .map_err(|e| StepError::Permanent(format!("region `{region}` url {url}: {e}")))?
        .application_name("bulkhead")
        // Session settings given at connection win over those a tenant's
        // owner role can attach to its database (`ALTER DATABASE ... SET`):
        // a tenant must not make Bulkhead's sessions read-only, run them as
        // its own role, or redirect their unqualified names. DDL that waits
        // on a lock or runs away fails, and is retried, instead of holding
        // the tenant in `provisioning`.
        .options([
            ("default_transaction_read_only", "off"),
            ("role", "none"),
            ("search_path", "pg_catalog"),
            ("lock_timeout", "10s"),
            ("statement_timeout", "60s"),
            ("idle_in_transaction_session_timeout", "0"),
        ])
        // Some statements carry a credential's password.
        .disable_statement_logging())
}

#[derive(Debug, Clone)]
pub struct CreateDatabase {
    servers: RegionServers,
}

impl CreateDatabase {
    pub fn new(servers: RegionServers) -> Self {
        Self { servers }
    }
}

/// The names of a silo tenant's database and roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiloNames {
    /// At most 8 + 40 + 1 + 8 = 57 bytes.
    pub database: String,
    /// `<database>_owner`: at most 63 bytes, PostgreSQL's identifier limit.
    pub owner: String,
    /// `<database>_read`.
    pub reader: String,
}

pub fn silo_identifiers(region: &Region, tenant: &Tenant) -> SiloNames {
    let database = format!(
        "{}{}_{}",
        region.database_prefix.as_str(),
        tenant.name.as_str().replace('-', "_"),
        tenant.id.short()
    );
    SiloNames { owner: format!("{database}_owner"), reader: format!("{database}_read"), database }
}

fn pool_database(region: &Region) -> String {
    format!("{}pool", region.database_prefix.as_str())
}

fn transient(what: &str) -> impl Fn(sqlx::Error) -> StepError + '_ {
    move |e| StepError::Transient(format!("{what}: {}", bulkhead_store::describe_error(&e)))
}

#[async_trait]
impl ProvisioningStep for CreateDatabase {
    fn name(&self) -> &'static str {
        "create_database"
    }

    async fn apply(&self, target: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
        match (&target.region.databases, target.tenant.isolation) {
            (DatabaseLocation::Embedded, Isolation::Silo) => create_sqlite(target).await,
            (DatabaseLocation::Embedded, Isolation::Pool) => Err(StepError::Permanent(format!(
                "region `{}` keeps embedded SQLite databases, which cannot pool tenants",
                target.region.name
            ))),
            (DatabaseLocation::Postgres(url), isolation) => {
                let pool = self.servers.pool(&target.region.name, url)?;
                match isolation {
                    Isolation::Silo => create_silo(&self.servers, url, &pool, target).await,
                    Isolation::Pool => ensure_pool_database(&pool, &target.region).await,
                }
            }
        }
    }

    async fn undo(&self, target: &StepTarget) -> Result<(), StepError> {
        match (&target.region.databases, target.tenant.isolation) {
            (DatabaseLocation::Embedded, _) => remove_sqlite(target).await,
            (DatabaseLocation::Postgres(url), Isolation::Silo) => {
                let pool = self.servers.pool(&target.region.name, url)?;
                drop_silo(&self.servers, url, &pool, target).await
            }
            // The shared database belongs to the region, not to the tenant.
            (DatabaseLocation::Postgres(_), Isolation::Pool) => Ok(()),
        }
    }
}

async fn create_sqlite(target: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
    let path = target.tenant_dir.join("data.db");
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
    Ok(Some(json!({ "engine": "sqlite", "path": path })))
}

async fn remove_sqlite(target: &StepTarget) -> Result<(), StepError> {
    // Only from the tenant's own directory: see `directory`.
    let owner = directory::owner(&target.tenant_dir, target.tenant.id)
        .map_err(|e| StepError::Transient(format!("{}: {e}", target.tenant_dir.display())))?;
    if owner != directory::Owner::Tenant(target.tenant.id) {
        return Ok(());
    }
    for file in ["data.db", "data.db-wal", "data.db-shm"] {
        let path = target.tenant_dir.join(file);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(StepError::Transient(format!("cannot remove {}: {e}", path.display())));
            }
            _ => {}
        }
    }
    Ok(())
}

async fn exists(pool: &PgPool, catalog_query: &'static str, name: &str) -> Result<bool, StepError> {
    let found: Option<(i32,)> = sqlx::query_as(catalog_query)
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(transient("cannot reach the region's PostgreSQL server"))?;
    Ok(found.is_some())
}

/// Runs DDL built from names this module made (prefix, tenant name and id,
/// all `[a-z0-9_]`), tolerating "already exists" from a concurrent or
/// earlier run.
async fn ddl(
    pool: &PgPool,
    sql: String,
    already_exists_code: Option<&str>,
) -> Result<(), StepError> {
    match sqlx::query(AssertSqlSafe(sql.clone())).execute(pool).await {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == already_exists_code => Ok(()),
        Err(e) => Err(StepError::Transient(format!(
            "`{sql}` failed: {}",
            bulkhead_store::describe_error(&e)
        ))),
    }
}

const ROLE_EXISTS: &str = "SELECT 1 FROM pg_roles WHERE rolname = $1";
const DATABASE_EXISTS: &str = "SELECT 1 FROM pg_database WHERE datname = $1";
/// A database an interrupted `DROP DATABASE` left invalid (connection limit
/// -2) can be neither connected to nor altered, only dropped.
const DATABASE_CONNECTABLE: &str =
    "SELECT 1 FROM pg_database WHERE datname = $1 AND datconnlimit <> -2";
const DUPLICATE_OBJECT: &str = "42710";
const DUPLICATE_DATABASE: &str = "42P04";

async fn create_silo(
    servers: &RegionServers,
    url: &DatabaseUrl,
    pool: &PgPool,
    target: &StepTarget,
) -> Result<Option<serde_json::Value>, StepError> {
    let SiloNames { database, owner, reader } = silo_identifiers(&target.region, &target.tenant);
    if !exists(pool, ROLE_EXISTS, &owner).await? {
        ddl(pool, format!("CREATE ROLE \"{owner}\" NOLOGIN"), Some(DUPLICATE_OBJECT)).await?;
    }
    // Creating a database for another owner, and later commenting on,
    // revoking on and dropping it, needs membership in that owner unless the
    // region's role is a superuser. Granting it again is a harmless notice.
    ddl(pool, format!("GRANT \"{owner}\" TO CURRENT_USER"), None).await?;
    if !exists(pool, DATABASE_EXISTS, &database).await? {
        let create = format!("CREATE DATABASE \"{database}\" OWNER \"{owner}\"");
        ddl(pool, create, Some(DUPLICATE_DATABASE)).await?;
    }
    // Repeated on every run: a crash may have come between CREATE and these.
    ddl(pool, format!("REVOKE ALL ON DATABASE \"{database}\" FROM PUBLIC"), None).await?;
    let comment = format!(
        "COMMENT ON DATABASE \"{database}\" IS 'bulkhead tenant {} ({})'",
        target.tenant.name, target.tenant.id
    );
    ddl(pool, comment, None).await?;
    if !exists(pool, ROLE_EXISTS, &reader).await? {
        ddl(pool, format!("CREATE ROLE \"{reader}\" NOLOGIN"), Some(DUPLICATE_OBJECT)).await?;
    }
    // Membership lets a region role that is not a superuser clean up what
    // others granted to the read-only role when it is dropped.
    ddl(pool, format!("GRANT \"{reader}\" TO CURRENT_USER"), None).await?;
    ddl(pool, format!("GRANT CONNECT ON DATABASE \"{database}\" TO \"{reader}\""), None).await?;
    let inside = servers.database_pool(&target.region.name, url, &database).await?;
    for grant in [
        // PostgreSQL 15's default, made explicit for older servers.
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_owned(),
        format!("GRANT USAGE ON SCHEMA public TO \"{reader}\""),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{reader}\""),
        format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"{owner}\" IN SCHEMA public \
             GRANT SELECT ON TABLES TO \"{reader}\""
        ),
    ] {
        ddl(&inside, grant, None).await?;
    }
    inside.close().await;
    Ok(Some(json!({
        "engine": "postgres",
        "isolation": "silo",
        "database": database,
        "owner_role": owner,
        "read_role": reader,
    })))
}

async fn drop_silo(
    servers: &RegionServers,
    url: &DatabaseUrl,
    pool: &PgPool,
    target: &StepTarget,
) -> Result<(), StepError> {
    let SiloNames { database, owner, reader } = silo_identifiers(&target.region, &target.tenant);
    // A prepared transaction outlives its session and would keep the
    // database from being dropped; nobody can commit it once the tenant is
    // going. It can only be finished from inside its database.
    if exists(pool, DATABASE_CONNECTABLE, &database).await? {
        reopen_database(pool, &database).await.map_err(|e| StepError::Transient(e.to_string()))?;
        let inside = servers.database_pool(&target.region.name, url, &database).await?;
        let rolled_back = roll_back_prepared(&inside).await;
        inside.close().await;
        rolled_back.map_err(|e| StepError::Transient(e.to_string()))?;
    }
    // A template cannot be dropped; the tenant's owner role can make its
    // database one.
    reopen_database(pool, &database).await.map_err(|e| StepError::Transient(e.to_string()))?;
    // FORCE ends the tenant's open sessions, which would otherwise keep the
    // database alive.
    ddl(pool, format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"), None).await?;
    // Other tenants may have granted to these roles in their own databases:
    // `drop_role` clears that wherever it is.
    let databases = servers.databases(&target.region.name, url);
    for role in [&reader, &owner] {
        drop_role(pool, &databases, role, None)
            .await
            .map_err(|e| StepError::Transient(e.to_string()))?;
    }
    Ok(())
}

async fn ensure_pool_database(
    pool: &PgPool,
    region: &Region,
) -> Result<Option<serde_json::Value>, StepError> {
    let database = pool_database(region);
    if !exists(pool, DATABASE_EXISTS, &database).await? {
        ddl(pool, format!("CREATE DATABASE \"{database}\""), Some(DUPLICATE_DATABASE)).await?;
    }
    // Tenants reach it through their own roles only, once pool roles exist.
    ddl(pool, format!("REVOKE ALL ON DATABASE \"{database}\" FROM PUBLIC"), None).await?;
    Ok(Some(json!({ "engine": "postgres", "isolation": "pool", "database": database })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_model::{DatabasePrefix, NewTenant, PlanName, TenantId, TenantName};
    use time::OffsetDateTime;

    #[test]
    fn silo_identifiers_fit_postgres_limits() {
        let region = Region::new(
            RegionName::default(),
            DatabaseLocation::Embedded,
            Some(DatabasePrefix::parse("staging_").unwrap()),
        );
        let tenant = Tenant::new(
            NewTenant {
                id: TenantId::random(),
                name: TenantName::parse(&format!("a-{}", "b".repeat(38))).unwrap(),
                plan: PlanName::parse("enterprise").unwrap(),
                isolation: Isolation::Silo,
                region: RegionName::default(),
                admin_email: None,
                limits: bulkhead_model::TenantLimits::default(),
            },
            OffsetDateTime::UNIX_EPOCH,
        );
        let names = silo_identifiers(&region, &tenant);
        assert!(names.database.starts_with("staging_a_bbb"));
        for name in [&names.owner, &names.reader] {
            assert!(name.len() <= 63, "{name} is {} bytes", name.len());
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
    }
}
