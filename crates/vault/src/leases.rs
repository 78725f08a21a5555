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
    move |e| VaultError::Database(format!("{what}: {e}"))
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
    if !is_identifier(spec.role) || !is_identifier(spec.acts_as) {
        return Err(VaultError::Database("refusing to build DDL from unexpected names".into()));
    }
    let verifier = scram_verifier(password)?;
    let valid_until = spec
        .valid_until
        .format(&Rfc3339)
        .map_err(|e| VaultError::Database(format!("cannot format the expiry: {e}")))?;
    // ADMIN CURRENT_USER lets a non-superuser region role end the lease's
    // sessions and reassign what it owns when revoking it.
    let create = format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD '{verifier}' VALID UNTIL '{valid_until}' \
         IN ROLE \"{acts_as}\" ADMIN CURRENT_USER",
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

/// Ends the role's sessions and drops it. Objects it owns in the tenant's
/// database (made after an explicit `SET ROLE` to itself) are first given
/// to `owner` there, through `tenant_db`. Dropping a role that is gone
/// succeeds.
pub async fn drop_login_role(
    admin: &PgPool,
    tenant_db: impl AsyncFnOnce() -> Result<PgPool, VaultError>,
    role: &str,
    owner: &str,
) -> Result<(), VaultError> {
    if !is_identifier(role) || !is_identifier(owner) {
        return Err(VaultError::Database("refusing to build DDL from unexpected names".into()));
    }
    let exists: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_optional(admin)
        .await
        .map_err(db_error("cannot reach the region's PostgreSQL server"))?;
    if exists.is_none() {
        return Ok(());
    }
    // No new logins while the sessions are ended. A concurrent revoke may
    // have dropped the role since it was looked up: that is success.
    match sqlx::query(AssertSqlSafe(format!("ALTER ROLE \"{role}\" NOLOGIN"))).execute(admin).await
    {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_OBJECT) => {
            return Ok(());
        }
        other => other.map_err(db_error("cannot disable the login role"))?,
    };
    // Waits up to 5 s for each session to end, so that the drop below
    // does not race them.
    sqlx::query("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = $1")
        .bind(role)
        .execute(admin)
        .await
        .map_err(db_error("cannot end the login role's sessions"))?;
    let drop = format!("DROP ROLE IF EXISTS \"{role}\"");
    match sqlx::query(AssertSqlSafe(drop.clone())).execute(admin).await {
        Ok(_) => return Ok(()),
        // It still owns objects.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(DEPENDENT_OBJECTS) => {}
        Err(e) => return Err(db_error("cannot drop the login role")(e)),
    }
    let tenant_db = tenant_db().await?;
    let reassign = format!("REASSIGN OWNED BY \"{role}\" TO \"{owner}\"");
    sqlx::query(AssertSqlSafe(reassign))
        .execute(&tenant_db)
        .await
        .map_err(db_error("cannot reassign the login role's objects"))?;
    sqlx::query(AssertSqlSafe(format!("DROP OWNED BY \"{role}\"")))
        .execute(&tenant_db)
        .await
        .map_err(db_error("cannot drop the login role's privileges"))?;
    tenant_db.close().await;
    sqlx::query(AssertSqlSafe(drop))
        .execute(admin)
        .await
        .map_err(db_error("cannot drop the login role"))?;
    Ok(())
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
