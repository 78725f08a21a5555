//! Tenant-scoped database access for applications that run behind
//! Bulkhead.
//!
//! - [`TenantDb`]: one tenant's connection pool, opened from its SQLite
//!   file (the embedded default), a PostgreSQL URL, or leases that the
//!   control API issues for the tenant. Leases are renewed before they
//!   expire: a fresh lease is issued and checked, the pool switches to it,
//!   and the old one is revoked once its connections are returned.
//! - [`TenantPools`]: for an application serving many small tenants, one
//!   pool per tenant, opened on first use, at most `capacity` of them (the
//!   least recently used is closed first), each capped at
//!   [`Options::max_connections`], so that one busy tenant cannot take the
//!   connections every other tenant needs.
//!
//! ```no_run
//! # async fn example() -> Result<(), bulkhead_access::Error> {
//! use std::time::Duration;
//! use bulkhead_access::{Access, ControlApi, Options, Pool, Source, TenantDb};
//!
//! let api = ControlApi::new("http://127.0.0.1:7070", "<operator or tenant token>")?;
//! let source = Source::Leases { api, tenant: "acme".into(), access: Access::Write, ttl: Duration::from_secs(3600) };
//! let db = TenantDb::open(source, &Options::default()).await?;
//! if let Pool::Postgres(pool) = db.pool() {
//!     let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM notes").fetch_one(&pool).await?;
//! }
//! db.close().await;
//! # Ok(()) }
//! ```
//!
//! Applications in other languages use the lease's `postgres://` URL with
//! their own driver (`docs/tenant-databases.md`).

mod cache;
mod control;
mod tenant;

use std::{path::PathBuf, time::Duration};

pub use cache::TenantPools;
pub use control::{Access, ControlApi, Lease};
pub use tenant::{Pool, TenantDb};
use zeroize::Zeroizing;

/// Where a tenant's database is, and how to log in to it.
pub enum Source {
    /// A tenant's SQLite file: for an app under Bulkhead's runtime, the one
    /// `$BULKHEAD_DATABASE_URL` names (`/data/tenant.db`, made by the
    /// runtime). It must exist.
    Sqlite(PathBuf),
    /// A PostgreSQL URL used as it is: a lease that something else renews,
    /// or a fixed login.
    Url(Zeroizing<String>),
    /// Leases of the tenant's, issued by the control API and renewed
    /// before they expire.
    Leases { api: ControlApi, tenant: String, access: Access, ttl: Duration },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Source::Url(_) => f.write_str("Url(..)"),
            Source::Leases { tenant, access, ttl, .. } => f
                .debug_struct("Leases")
                .field("tenant", tenant)
                .field("access", access)
                .field("ttl", ttl)
                .finish_non_exhaustive(),
        }
    }
}

/// The variable in which Bulkhead's runtime tells a tenant's app where its
/// database is, on the embedded default: `sqlite:<path>`.
pub const DATABASE_URL_VAR: &str = "BULKHEAD_DATABASE_URL";

/// The variable naming the file that holds the app's database URL, on
/// PostgreSQL: a lease's `postgres://` URL, with its password, which is
/// why it is a file in the worker's private secrets directory and never
/// in its environment.
pub const DATABASE_URL_FILE_VAR: &str = "BULKHEAD_DATABASE_URL_FILE";

impl Source {
    /// The database the runtime gives the app it runs: the URL in the file
    /// [`DATABASE_URL_FILE_VAR`] names (a lease on the tenant's PostgreSQL
    /// server, renewed by the runtime while the worker runs), or
    /// [`DATABASE_URL_VAR`] (the embedded default: a file in the tenant's
    /// own data directory).
    pub fn from_env() -> Result<Self, Error> {
        if let Ok(file) = std::env::var(DATABASE_URL_FILE_VAR) {
            let text = Zeroizing::new(std::fs::read_to_string(&file).map_err(|e| {
                Error::Invalid(format!(
                    "{DATABASE_URL_FILE_VAR} names {file}, which cannot be read: {e}"
                ))
            })?);
            return Self::from_url(Zeroizing::new(text.trim().to_owned()));
        }
        let url = std::env::var(DATABASE_URL_VAR).map_err(|_| {
            Error::Invalid(format!(
                "neither {DATABASE_URL_FILE_VAR} nor {DATABASE_URL_VAR} is set: the app is not \
                 running under Bulkhead's runtime (set {DATABASE_URL_VAR} to sqlite:<path> or a \
                 postgres:// URL to run it elsewhere)"
            ))
        })?;
        Self::from_url(Zeroizing::new(url))
    }

    /// `sqlite:<path>` (also `sqlite://<path>`) or a `postgres://` URL.
    pub fn from_url(url: Zeroizing<String>) -> Result<Self, Error> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            return Ok(Source::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Source::Url(url));
        }
        Err(Error::Invalid("a tenant's database URL is sqlite:<path> or postgres://…".to_owned()))
    }
}

/// How each tenant's pool behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// The most connections one tenant's pool opens (its cap).
    pub max_connections: u32,
    /// How long taking a connection waits when the tenant's are all in use.
    pub acquire_timeout: Duration,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// A lease is renewed when this share of its lifetime has passed
    /// (0.5: half way); a renewal that fails is retried until the lease
    /// expires.
    pub renew_at: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            renew_at: 0.5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control API refused or could not be reached.
    #[error("control API: {0}")]
    Control(String),
    #[error("tenant database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn database_urls_name_sqlite_files_or_postgres() {
        let url = |u: &str| Source::from_url(Zeroizing::new(u.to_owned()));
        for (given, path) in
            [("sqlite:/data/tenant.db", "/data/tenant.db"), ("sqlite:///data/t.db", "/data/t.db")]
        {
            assert!(matches!(url(given), Ok(Source::Sqlite(p)) if p == Path::new(path)), "{given}");
        }
        assert!(matches!(url("postgres://u:p@127.0.0.1:5432/db"), Ok(Source::Url(_))));
        let refused = url("mysql://u:secret@h/db").unwrap_err().to_string();
        assert!(!refused.contains("secret"), "the URL is not echoed: {refused}");
    }
}
