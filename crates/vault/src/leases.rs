//! Dynamic database credentials on PostgreSQL: a login role per lease,
//! with a random password, an expiry (`VALID UNTIL`) and membership in the
//! tenant's role, so it can do what the tenant's role can and nothing else.
//!
//! `VALID UNTIL` only stops new logins; sessions opened before it outlive
//! it. Revoking therefore ends the role's sessions and drops the role.
//!
//! The password never reaches the server: the role is created with its
//! SCRAM-SHA-256 verifier, computed here, so neither the server's log nor
//! `pg_stat_activity` can show it.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use sqlx::{AssertSqlSafe, PgPool};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use zeroize::Zeroizing;

use crate::VaultError;

/// A login role to create. Every name is one Bulkhead made (`[a-z0-9_]`).
#[derive(Debug)]
pub struct LoginRole<'a> {
    pub role: &'a str,
    /// The tenant's role the login role acts as: its owner role, or its
    /// read-only role.
    pub acts_as: &'a str,
    pub valid_until: OffsetDateTime,
    /// Its sessions at once (`CONNECTION LIMIT`); `None`: the server's.
    pub sessions: Option<u32>,
}

/// A random password: 32 bytes in URL-safe base64, which needs no quoting
/// in SQL or in a connection URL.
pub fn random_password() -> Result<Zeroizing<String>, VaultError> {
    let bytes = crate::kek::random_key()?;
    Ok(Zeroizing::new(URL_SAFE_NO_PAD.encode(bytes.as_slice())))
}

const UNDEFINED_OBJECT: &str = "42704";
const DEPENDENT_OBJECTS: &str = "2BP01";

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn db_error(what: &str) -> impl Fn(sqlx::Error) -> VaultError + '_ {
    move |e| VaultError::Database(format!("{what}: {}", bulkhead_store::describe_error(&e)))
}

/// PostgreSQL's default SCRAM iteration count.
const SCRAM_ITERATIONS: u32 = 4096;

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802,
/// RFC 7677): `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
pub fn scram_verifier(password: &str) -> Result<String, VaultError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| VaultError::Random(e.to_string()))?;
    let mut salted = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(
        password.as_bytes(),
        &salt,
        SCRAM_ITERATIONS,
        salted.as_mut_slice(),
    );
    let hmac = |message: &[u8]| -> Result<Vec<u8>, VaultError> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(salted.as_slice())
            .map_err(|_| VaultError::Encrypt)?;
        mac.update(message);
        Ok(mac.finalize().into_bytes().to_vec())
    };
    let client_key = Zeroizing::new(hmac(b"Client Key")?);
    let stored_key = Sha256::digest(client_key.as_slice());
    let server_key = hmac(b"Server Key")?;
    Ok(format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    ))
}

/// Creates the login role, in one transaction with its default role so
/// that it never exists half made.
pub async fn create_login_role(
    pool: &PgPool,
    spec: &LoginRole<'_>,
    password: &str,
) -> Result<(), VaultError> {
    check_identifiers(&[spec.role, spec.acts_as])?;
    let verifier = scram_verifier(password)?;
    let valid_until = expiry(spec.valid_until)?;
    // ADMIN CURRENT_USER lets a non-superuser region role end the lease's
    // sessions and reassign what it owns when revoking it.
    let limit = spec.sessions.map_or(-1, i64::from);
    let create = format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD '{verifier}' VALID UNTIL '{valid_until}' \
         CONNECTION LIMIT {limit} IN ROLE \"{acts_as}\" ADMIN CURRENT_USER",
        role = spec.role,
        acts_as = spec.acts_as,
    );
    // Sessions start as the tenant's role, so what they create belongs to
    // it (and outlives the lease), not to the short-lived login role.
    let default_role = format!("ALTER ROLE \"{}\" SET role = '{}'", spec.role, spec.acts_as);
    let failed = |e: sqlx::Error| {
        VaultError::Database(format!("cannot create login role {}: {}", spec.role, redact(&e)))
    };
    let mut tx = pool.begin().await.map_err(failed)?;
    sqlx::query(AssertSqlSafe(create)).execute(&mut *tx).await.map_err(failed)?;
    sqlx::query(AssertSqlSafe(default_role)).execute(&mut *tx).await.map_err(failed)?;
    tx.commit().await.map_err(failed)
}

/// Only the server's error code and message: never the statement.
fn redact(error: &sqlx::Error) -> String {
    match error.as_database_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().unwrap_or_default()),
        None => "connection failed".into(),
    }
}

/// Opens admin sessions to the databases of one PostgreSQL server.
#[async_trait::async_trait]
pub trait Databases: Send + Sync {
    /// A pool of admin sessions in `database`, with settings that a tenant
    /// cannot override with `ALTER DATABASE ... SET`.
    async fn connect(&self, database: &str) -> Result<PgPool, VaultError>;
}

/// Where a dropped role's objects go: into its tenant's database, to the
/// role that owns the tenant's data there, so that what a lease made (after
/// an explicit `SET ROLE` to itself) outlives the lease.
#[derive(Debug, Clone, Copy)]
pub struct Heir<'a> {
    pub database: &'a str,
    pub owner: &'a str,
}

/// Stops `role` from logging in and ends its sessions; with `forget`, also
/// removes its password, for a role that is going away. Returns whether
/// the role exists. A role dropped meanwhile is not there: `false`.
pub async fn disable_login(admin: &PgPool, role: &str, forget: bool) -> Result<bool, VaultError> {
    check_identifiers(&[role])?;
    let alter = if forget {
        format!("ALTER ROLE \"{role}\" NOLOGIN PASSWORD NULL")
    } else {
        format!("ALTER ROLE \"{role}\" NOLOGIN")
    };
    match sqlx::query(AssertSqlSafe(alter)).execute(admin).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_OBJECT) => {
            return Ok(false);
        }
        other => other.map_err(db_error("cannot disable the login role"))?,
    };
    // Waits up to 5 s for each session to end, so that a drop after this
    // does not race them.
    sqlx::query("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = $1")
        .bind(role)
        .execute(admin)
        .await
        .map_err(db_error("cannot end the login role's sessions"))?;
    Ok(true)
}

/// Lets `role` log in again (a suspended tenant resumed). Its password and
/// expiry are as they were.
pub async fn enable_login(admin: &PgPool, role: &str) -> Result<bool, VaultError> {
    check_identifiers(&[role])?;
    match sqlx::query(AssertSqlSafe(format!("ALTER ROLE \"{role}\" LOGIN"))).execute(admin).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_OBJECT) => Ok(false),
        other => other.map(|_| true).map_err(db_error("cannot enable the login role")),
    }
}

/// `VALID UNTIL`'s value.
fn expiry(at: OffsetDateTime) -> Result<String, VaultError> {
    at.format(&Rfc3339).map_err(|e| VaultError::Database(format!("cannot format the expiry: {e}")))
}

/// Moves the login role's expiry to `valid_until` (a lease renewed while
/// its holder runs). Returns whether the role exists.
pub async fn extend_login(
    admin: &PgPool,
    role: &str,
    valid_until: OffsetDateTime,
) -> Result<bool, VaultError> {
    check_identifiers(&[role])?;
    let alter = format!("ALTER ROLE \"{role}\" VALID UNTIL '{}'", expiry(valid_until)?);
    match sqlx::query(AssertSqlSafe(alter)).execute(admin).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_OBJECT) => Ok(false),
        other => other.map(|_| true).map_err(db_error("cannot extend the login role")),
    }
}

/// Ends the login role's sessions and drops it, whatever anyone granted to
/// it: see [`drop_role`]. Dropping a role that is gone succeeds.
pub async fn drop_login_role(
    admin: &PgPool,
    databases: &dyn Databases,
    role: &str,
    heir: Heir<'_>,
) -> Result<(), VaultError> {
    if disable_login(admin, role, true).await? {
        drop_role(admin, databases, role, Some(heir)).await?;
    }
    Ok(())
}

/// Drops `role` after removing what ties it to any database of the server.
///
/// Anyone who can create an object can grant on it to any role they can
/// name, and role names are public (`pg_roles`): a tenant can grant on its
/// own table to another tenant's role, which then cannot be dropped
/// ("some objects depend on it") until that privilege is gone. So the
/// databases where the role has privileges or objects are found from
/// `pg_shdepend`, and in each one its privileges are revoked and its
/// objects dropped (`DROP OWNED`), except in the heir's database, where its
/// objects are first given to the heir (`REASSIGN OWNED`). Sessions run
/// with settings a tenant cannot change through `ALTER DATABASE` (see
/// [`Databases`]). An error names the database and the objects that still
/// hold the role.
pub async fn drop_role(
    admin: &PgPool,
    server: &dyn Databases,
    role: &str,
    heir: Option<Heir<'_>>,
) -> Result<(), VaultError> {
    check_identifiers(&[role])?;
    if let Some(heir) = heir {
        check_identifiers(&[heir.owner])?;
    }
    let drop = format!("DROP ROLE IF EXISTS \"{role}\"");
    match sqlx::query(AssertSqlSafe(drop.clone())).execute(admin).await {
        Ok(_) => return Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(DEPENDENT_OBJECTS) => {}
        Err(e) => return Err(role_error(role, "cannot drop the role", &e)),
    }
    // Databases holding objects that depend on the role, and whether any
    // shared object (a database's privileges) does; `DROP OWNED` in any
    // database clears the latter.
    let rows: Vec<(Option<String>,)> = sqlx::query_as(
        "SELECT DISTINCT d.datname::text FROM pg_catalog.pg_shdepend s \
         LEFT JOIN pg_catalog.pg_database d ON d.oid = s.dbid \
         WHERE s.refclassid = 'pg_catalog.pg_authid'::pg_catalog.regclass \
           AND s.refobjid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1)",
    )
    .bind(role)
    .fetch_all(admin)
    .await
    .map_err(db_error("cannot find where the role is used"))?;
    let mut databases: Vec<String> = rows.iter().filter_map(|(d,)| d.clone()).collect();
    // Where the role holds something, others' sessions and prepared
    // transactions may hold it up. Elsewhere (the heir's database, where
    // nothing of it may be, a shared pool) they are other tenants' own.
    let holding = databases.clone();
    let shared = rows.iter().any(|(d,)| d.is_none());
    if let Some(heir) = heir
        && !databases.iter().any(|d| d == heir.database)
    {
        // Reassigning there is what keeps a lease's tables: always done.
        databases.insert(0, heir.database.to_owned());
    } else if shared && databases.is_empty() {
        let (current,): (String,) = sqlx::query_as("SELECT current_database()::text")
            .fetch_one(admin)
            .await
            .map_err(db_error("cannot reach the region's PostgreSQL server"))?;
        databases.push(current);
    }
    let last = databases.len().saturating_sub(1);
    let mut dropped = false;
    for (n, database) in databases.iter().enumerate() {
        reopen_database(admin, database).await?;
        let mut statements = Vec::with_capacity(3);
        if let Some(heir) = heir.filter(|h| h.database == database) {
            statements.push(format!("REASSIGN OWNED BY \"{role}\" TO \"{}\"", heir.owner));
        }
        statements.push(format!("DROP OWNED BY \"{role}\""));
        // In the same transaction as the last clean-up: a grant made
        // meanwhile in a database already cleaned would keep it.
        if n == last {
            statements.push(drop.clone());
        }
        let pool = match server.connect(database).await {
            Ok(pool) => pool,
            // Dropped meanwhile (a tenant offboarded): nothing left there.
            Err(_) if !database_exists(admin, database).await? => continue,
            Err(e) => {
                return Err(VaultError::Database(format!(
                    "role {role}: cannot enter database {database}, where it has privileges or \
                     objects: {e}"
                )));
            }
        };
        let release = holding.contains(database);
        let result = clear_in(admin, &pool, database, role, &statements, release).await;
        pool.close().await;
        result?;
        dropped = n == last;
    }
    if !dropped {
        sqlx::query(AssertSqlSafe(drop))
            .execute(admin)
            .await
            .map_err(|e| role_error(role, "cannot drop the role", &e))?;
    }
    Ok(())
}

/// Runs `statements` in one transaction in `database`, after ending, with
/// `release`, what a tenant could use there to hold them up: its prepared
/// transactions, and the sessions that hold locks on objects the role has
/// privileges on (a tenant's own session keeping a transaction open on a
/// table it granted to another tenant's role). Only in tenants' databases,
/// which no superuser owns.
async fn clear_in(
    admin: &PgPool,
    pool: &PgPool,
    database: &str,
    role: &str,
    statements: &[String],
    release: bool,
) -> Result<(), VaultError> {
    if release && !superuser_owned(admin, database).await? {
        roll_back_prepared(pool).await?;
        end_lock_holders(pool, role).await?;
    }
    let result = async {
        let mut tx = pool.begin().await?;
        for statement in statements {
            sqlx::query(AssertSqlSafe(statement.clone())).execute(&mut *tx).await?;
        }
        tx.commit().await
    }
    .await;
    result.map_err(|e| role_error(role, &format!("cannot clear it in database {database}"), &e))
}

/// Rolls back the prepared transactions of the database `pool` is
/// connected to that no superuser prepared: a prepared transaction outlives
/// its session and holds its locks until someone finishes it, which only
/// its own role or a superuser may. One Bulkhead may not finish is named.
pub async fn roll_back_prepared(pool: &PgPool) -> Result<(), VaultError> {
    let prepared: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.gid, p.owner::text FROM pg_catalog.pg_prepared_xacts p \
         JOIN pg_catalog.pg_roles r ON r.rolname = p.owner \
         WHERE p.database = current_database() AND NOT r.rolsuper",
    )
    .fetch_all(pool)
    .await
    .map_err(db_error("cannot list the prepared transactions"))?;
    for (gid, owner) in prepared {
        let statement = format!("ROLLBACK PREPARED '{}'", gid.replace('\'', "''"));
        sqlx::query(AssertSqlSafe(statement)).execute(pool).await.map_err(|e| {
            VaultError::Database(format!(
                "prepared transaction {gid:?} of {owner} holds locks Bulkhead may not release: {} \
                 (only its role or a superuser may roll it back; keep max_prepared_transactions \
                 at 0 on tenants' servers)",
                redact(&e)
            ))
        })?;
    }
    Ok(())
}

/// Ends the sessions, other than superusers' and Bulkhead's own, that hold
/// locks on objects `role` has privileges on or owns in this database.
async fn end_lock_holders(pool: &PgPool, role: &str) -> Result<(), VaultError> {
    sqlx::query(
        "SELECT pg_catalog.pg_terminate_backend(a.pid, 5000) \
         FROM pg_catalog.pg_stat_activity a \
         JOIN pg_catalog.pg_roles r ON r.rolname = a.usename \
         WHERE a.pid <> pg_catalog.pg_backend_pid() AND NOT r.rolsuper \
           AND a.usename <> current_user \
           AND a.pid IN (SELECT l.pid FROM pg_catalog.pg_locks l \
             JOIN pg_catalog.pg_shdepend d ON d.objid = l.relation \
               AND d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
             WHERE l.database = (SELECT oid FROM pg_catalog.pg_database \
                                 WHERE datname = current_database()) \
               AND d.dbid = l.database \
               AND d.refobjid = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1))",
    )
    .bind(role)
    .execute(pool)
    .await
    .map_err(db_error("cannot end the sessions holding the role's objects"))?;
    Ok(())
}

async fn superuser_owned(admin: &PgPool, database: &str) -> Result<bool, VaultError> {
    let owned: Option<(bool,)> = sqlx::query_as(
        "SELECT r.rolsuper FROM pg_catalog.pg_database d \
         JOIN pg_catalog.pg_roles r ON r.oid = d.datdba WHERE d.datname = $1",
    )
    .bind(database)
    .fetch_optional(admin)
    .await
    .map_err(db_error("cannot reach the region's PostgreSQL server"))?;
    Ok(owned.is_none_or(|(superuser,)| superuser))
}

/// Undoes what a tenant's owner role can do to its own database to keep
/// Bulkhead out or to keep it from being dropped: refuse connections
/// (from another database), limit them to none, or mark it a template.
/// Only for databases no superuser owns, which are tenants' (the server's
/// own templates and administrators' databases are left alone).
pub async fn reopen_database(admin: &PgPool, database: &str) -> Result<(), VaultError> {
    let state: Option<(bool, bool, i32, bool)> = sqlx::query_as(
        "SELECT d.datallowconn, d.datistemplate, d.datconnlimit, r.rolsuper \
         FROM pg_catalog.pg_database d JOIN pg_catalog.pg_roles r ON r.oid = d.datdba \
         WHERE d.datname = $1",
    )
    .bind(database)
    .fetch_optional(admin)
    .await
    .map_err(db_error("cannot reach the region's PostgreSQL server"))?;
    let Some((allows, template, limit, superuser_owned)) = state else { return Ok(()) };
    // -2: an interrupted DROP DATABASE left it invalid. It cannot be
    // altered, connected to or used any more; only dropped, which works.
    if superuser_owned || limit == -2 || (allows && !template && limit == -1) {
        return Ok(());
    }
    if !is_identifier(database) {
        return Err(VaultError::Database("refusing to build DDL from unexpected names".into()));
    }
    let alter = format!(
        "ALTER DATABASE \"{database}\" WITH ALLOW_CONNECTIONS true CONNECTION LIMIT -1 \
         IS_TEMPLATE false"
    );
    sqlx::query(AssertSqlSafe(alter)).execute(admin).await.map_err(|e| {
        VaultError::Database(format!("cannot reopen database {database}: {}", redact(&e)))
    })?;
    tracing::warn!(
        database,
        "a tenant had closed its database to connections or made it a template; reopened it"
    );
    Ok(())
}

async fn database_exists(admin: &PgPool, database: &str) -> Result<bool, VaultError> {
    let found: Option<(i32,)> =
        sqlx::query_as("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1")
            .bind(database)
            .fetch_optional(admin)
            .await
            .map_err(db_error("cannot reach the region's PostgreSQL server"))?;
    Ok(found.is_some())
}

fn check_identifiers(names: &[&str]) -> Result<(), VaultError> {
    if names.iter().all(|name| is_identifier(name)) {
        Ok(())
    } else {
        Err(VaultError::Database("refusing to build DDL from unexpected names".into()))
    }
}

/// The server's message with its detail (which objects hold the role), never
/// the statement.
fn role_error(role: &str, what: &str, error: &sqlx::Error) -> VaultError {
    let detail = error
        .as_database_error()
        .and_then(|db| db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>())
        .and_then(|pg| pg.detail())
        .map(|detail| format!(": {}", detail.replace('\n', "; ")))
        .unwrap_or_default();
    VaultError::Database(format!("role {role}: {what}: {}{detail}", redact(error)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_verifiers_have_postgres_shape_and_fresh_salt() {
        // Spaces cannot occur in base64, so the password showing up in the
        // verifier can only mean it was copied in, never a random match.
        let password = "correct horse battery";
        let a = scram_verifier(password).unwrap();
        let b = scram_verifier(password).unwrap();
        assert_ne!(a, b, "a fresh salt each time");
        let (head, keys) = a.rsplit_once('$').unwrap();
        assert!(head.starts_with("SCRAM-SHA-256$4096:"), "{a}");
        let (stored, server) = keys.split_once(':').unwrap();
        assert_eq!(STANDARD.decode(stored).unwrap().len(), 32);
        assert_eq!(STANDARD.decode(server).unwrap().len(), 32);
        assert!(!a.contains(password));
    }

    #[test]
    fn passwords_are_long_random_and_url_safe() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_ne!(*a, *b);
        assert_eq!(a.len(), 43);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }
}
