//! An application's schema migrations, applied to one tenant database at
//! a time: a SQLite file, a silo database, or a region's pool.
//!
//! Each database takes its pending files in one transaction, with the
//! version each file brings recorded in the same transaction, so a failure
//! (or a crash) leaves it at its previous version and a later run starts
//! again from there. A database whose history disagrees with the files (a
//! file changed or removed after it was applied) is refused.
//!
//! - SQLite: `bulkhead_schema_migrations` in the tenant's file.
//! - Silo: `bulkhead.schema_migrations`, made by a short-lived login that
//!   acts as the tenant's owner role, never as the region's role: code the
//!   tenant put in its database (a trigger the migration fires) runs with
//!   the tenant's rights only. What the files create belongs to the owner.
//! - Pool: as the pool's owner, once for every pool tenant of the region.
//!   In the same transaction, every table with a tenant column is bound to
//!   the session's tenant ([`crate::pool::secure_tables`]), every view made
//!   `security_invoker`, and a new table without a tenant column refused
//!   unless a file declares it shared ([`files::SHARED_MARKER`]); shared
//!   tables are readable, not writable, by every tenant.

pub mod files;

use std::{collections::BTreeSet, path::Path};

use bulkhead_model::{DatabaseUrl, Region, Tenant};
use bulkhead_vault::leases::Heir;
use serde::{Deserialize, Serialize};
use sqlx::{
    AssertSqlSafe, ConnectOptions, Connection, PgConnection, Postgres, Transaction,
    sqlite::SqliteConnectOptions,
};
use uuid::Uuid;

pub use files::{Applied, Migration, Migrations};

use crate::{
    Error, PoolNames, RegionServers, SiloNames,
    login::{Purpose, TemporaryLogin},
    pool::{self, SCHEMA, tables},
    sql::{ddl_in, server_version, transient},
};

/// Serialises migrations of one database (two runs at once would both
/// find the same files pending).
const LOCK: i64 = 0x6275_6c6b_6d69_6772; // "bulkmigr"

/// Whether to apply the pending files, or only to say which they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Apply them, recording `job` as the run that did.
    Apply { job: Uuid },
    /// Read the database's history and report what would be applied;
    /// nothing is changed (not even the history table made).
    Plan,
}

/// What a database had and has.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Its latest version before (0: none).
    pub from: u32,
    /// Its latest version after (with [`Mode::Plan`], what it would be).
    pub to: u32,
    /// The files applied (or that would be), in order.
    pub files: Vec<String>,
}

/// Migrates a tenant's SQLite file, `<tenant-dir>/data.db`.
pub async fn sqlite(
    tenant_dir: &Path,
    migrations: &Migrations,
    mode: Mode,
) -> Result<Outcome, Error> {
    let path = crate::sqlite::path(tenant_dir);
    if !path.exists() {
        return Err(Error::Permanent(format!(
            "the tenant has no database file ({}): reconcile the tenant",
            path.display()
        )));
    }
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .busy_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .map_err(transient("cannot open the tenant's SQLite database"))?;
    let result = async {
        // IMMEDIATE: the write lock first, so the history read is current.
        let mut tx = conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(transient("cannot lock the tenant's SQLite database"))?;
        let exists: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'bulkhead_schema_migrations'",
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(transient("cannot read the migration history"))?;
        if exists.is_none() {
            if mode == Mode::Plan {
                return plan(migrations, &[]);
            }
            sqlx::query(
                "CREATE TABLE bulkhead_schema_migrations (version INTEGER PRIMARY KEY, \
                 file TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL, job TEXT)",
            )
            .execute(&mut *tx)
            .await
            .map_err(transient("cannot make the migration history table"))?;
        }
        let applied: Vec<Applied> = sqlx::query_as(
            "SELECT version, file, checksum FROM bulkhead_schema_migrations ORDER BY version",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(transient("cannot read the migration history"))?;
        let Mode::Apply { job } = mode else { return plan(migrations, &applied) };
        let pending = migrations.pending(&applied).map_err(Error::Permanent)?;
        let outcome = outcome(&applied, &pending);
        for file in pending {
            sqlx::raw_sql(AssertSqlSafe(file.sql.clone()))
                .execute(&mut *tx)
                .await
                .map_err(|e| failed_file(file, &e))?;
            sqlx::query(
                "INSERT INTO bulkhead_schema_migrations (version, file, checksum, applied_at, job) \
                 VALUES ($1, $2, $3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), $4)",
            )
            .bind(i64::from(file.version))
            .bind(&file.file)
            .bind(&file.checksum)
            .bind(job.to_string())
            .execute(&mut *tx)
            .await
            .map_err(|e| failed_file(file, &e))?;
        }
        tx.commit().await.map_err(transient("cannot commit the migration"))?;
        Ok(outcome)
    }
    .await;
    let _ = conn.close().await;
    result
}

/// Migrates a silo tenant's PostgreSQL database, as a short-lived login
/// acting as the tenant's owner role.
pub async fn silo(
    servers: &RegionServers,
    region: &Region,
    url: &DatabaseUrl,
    tenant: &Tenant,
    migrations: &Migrations,
    mode: Mode,
    now: time::OffsetDateTime,
) -> Result<Outcome, Error> {
    let names = SiloNames::of(region, tenant);
    let job = match mode {
        Mode::Apply { job } => job,
        Mode::Plan => Uuid::new_v4(),
    };
    let purpose = Purpose::Migration { job, database: &names.database };
    let login =
        TemporaryLogin::make(servers, region, url, tenant, &names.owner, purpose, now).await?;
    let result = async {
        let mut conn = login
            .connect(&names.database)
            .await
            .map_err(transient("cannot connect to the tenant's database"))?;
        let result = async {
            let mut tx = begin(&mut conn).await?;
            let outcome = apply_postgres(&mut tx, migrations, mode).await?;
            tx.commit().await.map_err(transient("cannot commit the migration"))?;
            Ok(outcome)
        }
        .await;
        let _ = conn.close().await;
        result
    }
    .await;
    let heir = Heir { database: &names.database, owner: &names.owner };
    // What happened to the migration is what is reported (one that
    // committed is done) even if its login cannot be dropped now: the login
    // expires within minutes, and `verify isolation` reports it once it has
    // (`login.left`).
    let _ = login.drop(servers, region, url, heir).await;
    result
}

/// Migrates the region's pool database, once for all its pool tenants.
pub async fn pool(
    servers: &RegionServers,
    region: &Region,
    url: &DatabaseUrl,
    migrations: &Migrations,
    mode: Mode,
) -> Result<Outcome, Error> {
    // A plan changes nothing, not even the pool's own objects.
    let names = match mode {
        Mode::Apply { .. } => pool::ensure(servers, region, url).await?,
        Mode::Plan => PoolNames::of(region),
    };
    let inside = servers.database_pool(&region.name, url, &names.database).await?;
    let result = async {
        let mut tx = pool::as_owner(&inside, &names).await?;
        lock_and_set(&mut tx).await?;
        let before: BTreeSet<(String, String)> =
            tables::shared(&mut *tx).await?.into_iter().collect();
        let outcome = apply_postgres(&mut tx, migrations, mode).await?;
        if !outcome.files.is_empty() && mode != Mode::Plan {
            bind_to_tenants(&mut tx, &names, migrations, before).await?;
        }
        tx.commit().await.map_err(transient("cannot commit the migration"))?;
        Ok(outcome)
    }
    .await;
    inside.close().await;
    result
}

/// A migration's transaction, holding the database's migration lock, with
/// the application's `search_path` and no statement timeout (a migration
/// may rebuild a large table); a lock it waits on for 10 s fails it
/// rather than stall the tenant's traffic behind it.
async fn begin(conn: &mut PgConnection) -> Result<Transaction<'_, Postgres>, Error> {
    let mut tx = conn.begin().await.map_err(transient("cannot begin the migration"))?;
    lock_and_set(&mut tx).await?;
    Ok(tx)
}

async fn lock_and_set(tx: &mut Transaction<'_, Postgres>) -> Result<(), Error> {
    sqlx::query("SELECT pg_catalog.pg_advisory_xact_lock($1)")
        .bind(LOCK)
        .execute(&mut **tx)
        .await
        .map_err(transient("cannot lock the database's migrations"))?;
    for setting in [
        "SET LOCAL search_path = \"$user\", public",
        "SET LOCAL statement_timeout = 0",
        "SET LOCAL lock_timeout = '10s'",
    ] {
        ddl_in(tx, setting.to_owned()).await?;
    }
    Ok(())
}

/// Reads the history, and applies and records what is pending.
async fn apply_postgres(
    tx: &mut Transaction<'_, Postgres>,
    migrations: &Migrations,
    mode: Mode,
) -> Result<Outcome, Error> {
    let history = format!("{SCHEMA}.schema_migrations");
    let (exists,): (bool,) = sqlx::query_as("SELECT pg_catalog.to_regclass($1) IS NOT NULL")
        .bind(&history)
        .fetch_one(&mut **tx)
        .await
        .map_err(transient("cannot read the migration history"))?;
    if !exists {
        if mode == Mode::Plan {
            return plan(migrations, &[]);
        }
        for statement in [
            format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA}"),
            format!(
                "CREATE TABLE {history} (version bigint PRIMARY KEY, file text NOT NULL, \
                 checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), job uuid)"
            ),
            format!("REVOKE ALL ON {history} FROM PUBLIC"),
        ] {
            ddl_in(tx, statement).await?;
        }
    }
    let applied: Vec<Applied> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT version, file, checksum FROM {history} ORDER BY version"
    )))
    .fetch_all(&mut **tx)
    .await
    .map_err(transient("cannot read the migration history"))?;
    let Mode::Apply { job } = mode else { return plan(migrations, &applied) };
    let pending = migrations.pending(&applied).map_err(Error::Permanent)?;
    let outcome = outcome(&applied, &pending);
    if pending.is_empty() {
        return Ok(outcome);
    }
    let (xact,): (String,) = sqlx::query_as("SELECT pg_catalog.txid_current()::text")
        .fetch_one(&mut **tx)
        .await
        .map_err(transient("cannot begin the migration"))?;
    for file in &pending {
        sqlx::raw_sql(AssertSqlSafe(file.sql.clone()))
            .execute(&mut **tx)
            .await
            .map_err(|e| failed_file(file, &e))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {history} (version, file, checksum, job) VALUES ($1, $2, $3, $4)"
        )))
        .bind(i64::from(file.version))
        .bind(&file.file)
        .bind(&file.checksum)
        .bind(job)
        .execute(&mut **tx)
        .await
        .map_err(|e| failed_file(file, &e))?;
    }
    let (still,): (String,) = sqlx::query_as("SELECT pg_catalog.txid_current()::text")
        .fetch_one(&mut **tx)
        .await
        .map_err(transient("cannot finish the migration"))?;
    if still != xact {
        return Err(Error::Permanent(
            "a file ended the migration's transaction early, so part of it was committed on \
             its own: check this database by hand"
                .into(),
        ));
    }
    Ok(outcome)
}

/// After the pool's files ran: binds every tenant table, refuses another
/// permissive policy on one, makes every view `security_invoker`, and
/// refuses a new table without a tenant column unless a file declared it
/// shared (then every tenant may read it).
async fn bind_to_tenants(
    tx: &mut Transaction<'_, Postgres>,
    names: &PoolNames,
    migrations: &Migrations,
    before: BTreeSet<(String, String)>,
) -> Result<(), Error> {
    let declared: BTreeSet<String> =
        migrations.all().iter().flat_map(Migration::shared_tables).collect();
    let PoolNames { writers, readers, .. } = names;
    for (schema, table) in tables::shared(&mut **tx).await? {
        if before.contains(&(schema.clone(), table.clone())) {
            continue;
        }
        let qualified = format!("{schema}.{table}");
        let is_declared = declared.contains(&qualified.to_ascii_lowercase())
            || (schema == "public" && declared.contains(&table.to_ascii_lowercase()));
        if !is_declared {
            return Err(Error::Permanent(format!(
                "the migration creates table {qualified} without a tenant_id column: in the pool \
                 every tenant's rows share it; add `tenant_id uuid NOT NULL`, or, if every tenant \
                 may read all of it, declare it with a line `{} {table}`",
                files::SHARED_MARKER
            )));
        }
        let (schema_q, table_q) = (quote(&schema), quote(&table));
        ddl_in(tx, format!("GRANT USAGE ON SCHEMA {schema_q} TO \"{writers}\", \"{readers}\""))
            .await?;
        ddl_in(tx, format!("GRANT SELECT ON {schema_q}.{table_q} TO \"{writers}\", \"{readers}\""))
            .await?;
    }
    pool::secure_in(tx, names).await?;
    // Permissive policies are OR-ed: another one widens the binding.
    if let Some(state) =
        tables::states(&mut **tx, names).await?.iter().find(|s| s.other_policies > 0)
    {
        return Err(Error::Permanent(format!(
            "table {} would have a permissive policy besides {}, which lets rows of other \
             tenants through: make it AS RESTRICTIVE (restrictive policies only narrow)",
            state.table,
            pool::POLICY
        )));
    }
    if server_version(&mut **tx).await? >= 150_000 {
        for (view, materialized) in tables::definer_views(&mut **tx).await? {
            if !materialized {
                ddl_in(tx, format!("ALTER VIEW {view} SET (security_invoker = true)")).await?;
            }
        }
    }
    Ok(())
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

fn plan(migrations: &Migrations, applied: &[Applied]) -> Result<Outcome, Error> {
    let pending = migrations.pending(applied).map_err(Error::Permanent)?;
    Ok(outcome(applied, &pending))
}

fn outcome(applied: &[Applied], pending: &[&Migration]) -> Outcome {
    let from = applied.iter().map(|a| a.version).max().unwrap_or(0);
    Outcome {
        from,
        to: pending.last().map_or(from, |m| m.version),
        files: pending.iter().map(|m| m.file.clone()).collect(),
    }
}

fn failed_file(file: &Migration, error: &sqlx::Error) -> Error {
    Error::Permanent(format!("{}: {}", file.file, bulkhead_store::describe_error(error)))
}
