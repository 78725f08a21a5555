//! Catalog checks and idempotent DDL, shared by the silo and pool modules.

use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};

use crate::Error;

pub const ROLE_EXISTS: &str = "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1";
pub const DATABASE_EXISTS: &str = "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1";
/// A database an interrupted `DROP DATABASE` left invalid (connection limit
/// -2) can be neither connected to nor altered, only dropped.
pub const DATABASE_CONNECTABLE: &str =
    "SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1 AND datconnlimit <> -2";
pub const DUPLICATE_OBJECT: &str = "42710";
pub const DUPLICATE_DATABASE: &str = "42P04";

pub fn transient(what: &str) -> impl Fn(sqlx::Error) -> Error + '_ {
    move |e| Error::Transient(format!("{what}: {}", bulkhead_store::describe_error(&e)))
}

/// The server's version as a number (`150004` for 15.4).
pub async fn server_version<'e>(executor: impl sqlx::PgExecutor<'e>) -> Result<i32, Error> {
    let (version,): (i32,) = sqlx::query_as("SELECT current_setting('server_version_num')::int")
        .fetch_one(executor)
        .await
        .map_err(transient("cannot reach the region's PostgreSQL server"))?;
    Ok(version)
}

pub async fn exists(pool: &PgPool, catalog_query: &'static str, name: &str) -> Result<bool, Error> {
    let found: Option<(i32,)> = sqlx::query_as(catalog_query)
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(transient("cannot reach the region's PostgreSQL server"))?;
    Ok(found.is_some())
}

/// Runs DDL built from names this crate made (see [`crate::names`]),
/// tolerating "already exists" from a concurrent or earlier run.
pub async fn ddl(
    pool: &PgPool,
    sql: String,
    already_exists_code: Option<&str>,
) -> Result<(), Error> {
    match sqlx::query(AssertSqlSafe(sql.clone())).execute(pool).await {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == already_exists_code => Ok(()),
        Err(e) => Err(failed(&sql, &e)),
    }
}

/// Runs DDL inside a transaction.
pub async fn ddl_in(tx: &mut Transaction<'_, Postgres>, sql: String) -> Result<(), Error> {
    sqlx::query(AssertSqlSafe(sql.clone()))
        .execute(&mut **tx)
        .await
        .map(drop)
        .map_err(|e| failed(&sql, &e))
}

fn failed(sql: &str, e: &sqlx::Error) -> Error {
    Error::Transient(format!("`{sql}` failed: {}", bulkhead_store::describe_error(e)))
}

/// Creates `role` (`NOLOGIN`) unless it exists.
pub async fn ensure_role(pool: &PgPool, role: &str) -> Result<(), Error> {
    if !exists(pool, ROLE_EXISTS, role).await? {
        ddl(pool, format!("CREATE ROLE \"{role}\" NOLOGIN"), Some(DUPLICATE_OBJECT)).await?;
    }
    Ok(())
}

/// Makes the region's role a member of `role`: creating a database for
/// another owner, and later commenting on, revoking on and dropping it,
/// needs that unless the region's role is a superuser; so does dropping
/// a role that others granted to. Granting it again is a harmless notice.
pub async fn join_role(pool: &PgPool, role: &str) -> Result<(), Error> {
    ddl(pool, format!("GRANT \"{role}\" TO CURRENT_USER"), None).await
}
