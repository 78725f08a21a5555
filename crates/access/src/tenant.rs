//! One tenant's pool, and the renewal of its lease.

use std::{str::FromStr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use sqlx::{
    PgPool, SqlitePool,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
};
use tokio::{sync::Mutex, task::JoinHandle, time::Instant};

use crate::{Access, ControlApi, Error, Lease, Options, Source};

/// A tenant's connection pool. Cheap to clone; take it again from
/// [`TenantDb::pool`] for each unit of work, so that a renewed lease is
/// used from then on.
#[derive(Debug, Clone)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Pool {
    async fn close(&self) {
        match self {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

/// One tenant's database: its pool and, for leases, the task that renews
/// them. Closing it (or dropping it) stops the renewal and revokes the
/// lease it holds.
#[derive(Debug)]
pub struct TenantDb {
    current: Arc<ArcSwap<Pool>>,
    leases: Option<Leases>,
}

#[derive(Debug)]
struct Leases {
    api: ControlApi,
    tenant: String,
    /// The lease the pool uses now.
    held: Arc<Mutex<Option<Lease>>>,
    renewer: JoinHandle<()>,
}

impl TenantDb {
    /// Opens the tenant's pool. A lease is issued, and a connection made
    /// with it, before this returns; a SQLite file or a URL is connected
    /// to on first use.
    pub async fn open(source: Source, options: &Options) -> Result<Self, Error> {
        if !(options.renew_at > 0.0 && options.renew_at < 1.0) {
            return Err(Error::Invalid(format!(
                "renew_at {}: give the share of a lease's life after which it is renewed, \
                 between 0 and 1 (exclusive)",
                options.renew_at
            )));
        }
        match source {
            Source::Sqlite(path) => {
                if !path.is_file() {
                    return Err(Error::Invalid(format!(
                        "{} is not a tenant's database file (Bulkhead's runtime makes it \
                         before the app starts; elsewhere, create it first)",
                        path.display()
                    )));
                }
                let connect = SqliteConnectOptions::new()
                    .filename(&path)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(options.acquire_timeout)
                    .idle_timeout(options.idle_timeout)
                    .connect_lazy_with(connect);
                Ok(Self::fixed(Pool::Sqlite(pool)))
            }
            Source::Url(url) => Ok(Self::fixed(Pool::Postgres(postgres(&url, options)?))),
            Source::Leases { api, tenant, access, ttl } => {
                let lease = api.issue(&tenant, access, ttl).await?;
                let pool = match checked(&lease, options).await {
                    Ok(pool) => pool,
                    Err(error) => {
                        let _ = api.revoke(&tenant, lease.id).await;
                        return Err(error);
                    }
                };
                let current = Arc::new(ArcSwap::from_pointee(Pool::Postgres(pool)));
                let renewal = Renewal {
                    api: api.clone(),
                    tenant: tenant.clone(),
                    access,
                    ttl,
                    options: options.clone(),
                    current: Arc::clone(&current),
                };
                let next = renewal.due(&lease);
                let held = Arc::new(Mutex::new(Some(lease)));
                let renewer = tokio::spawn(renewal.run(Arc::clone(&held), next));
                Ok(Self { current, leases: Some(Leases { api, tenant, held, renewer }) })
            }
        }
    }

    fn fixed(pool: Pool) -> Self {
        Self { current: Arc::new(ArcSwap::from_pointee(pool)), leases: None }
    }

    /// The pool to use now.
    pub fn pool(&self) -> Pool {
        self.current.load().as_ref().clone()
    }

    /// Stops renewing, closes the pool (waiting for connections in use to
    /// be returned) and revokes the lease.
    pub async fn close(mut self) {
        if let Some(leases) = self.leases.take() {
            leases.renewer.abort();
            self.current.load().close().await;
            if let Some(lease) = leases.held.lock().await.take() {
                let _ = leases.api.revoke(&leases.tenant, lease.id).await;
            }
        } else {
            self.current.load().close().await;
        }
    }
}

impl Drop for TenantDb {
    fn drop(&mut self) {
        let Some(leases) = self.leases.take() else { return };
        leases.renewer.abort();
        // Best effort, without blocking the dropping thread: the lease
        // expires on its own otherwise.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let current = Arc::clone(&self.current);
            runtime.spawn(async move {
                current.load().close().await;
                if let Some(lease) = leases.held.lock().await.take() {
                    let _ = leases.api.revoke(&leases.tenant, lease.id).await;
                }
            });
        }
    }
}

fn postgres(url: &str, options: &Options) -> Result<PgPool, Error> {
    let connect = PgConnectOptions::from_str(url)
        .map_err(|e| Error::Invalid(format!("not a PostgreSQL URL: {e}")))?
        .application_name("bulkhead-access");
    Ok(PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .idle_timeout(options.idle_timeout)
        .connect_lazy_with(connect))
}

/// A pool on the lease, with one connection made to prove the lease works.
async fn checked(lease: &Lease, options: &Options) -> Result<PgPool, Error> {
    let pool = postgres(&lease.url, options)?;
    drop(pool.acquire().await?);
    Ok(pool)
}

/// Renews a tenant's lease, for as long as its [`TenantDb`] lives.
struct Renewal {
    api: ControlApi,
    tenant: String,
    access: Access,
    ttl: Duration,
    options: Options,
    current: Arc<ArcSwap<Pool>>,
}

impl Renewal {
    /// When `lease` is due for renewal: `renew_at` of its life after it
    /// was received, measured on this machine's monotonic clock (the
    /// server's clock gives only the life's length, so a skew between the
    /// two does not matter).
    fn due(&self, lease: &Lease) -> Instant {
        lease.received + lease.life().mul_f64(self.options.renew_at)
    }

    async fn run(self, held: Arc<Mutex<Option<Lease>>>, mut next: Instant) {
        loop {
            tokio::time::sleep_until(next).await;
            let expires = held.lock().await.as_ref().map(|l| l.received + l.life());
            match self.renew(&held).await {
                Ok(due) => next = due,
                Err(error) => {
                    // Again soon: a quarter of what is left, at least a
                    // second, while the current lease lasts.
                    let now = Instant::now();
                    let left = expires.map_or(Duration::ZERO, |e| e.saturating_duration_since(now));
                    tracing::warn!(tenant = %self.tenant, %error, "cannot renew the tenant's lease; retrying");
                    next = now + (left / 4).max(Duration::from_secs(1));
                }
            }
        }
    }

    /// Issues and checks a new lease, switches the pool to it, and retires
    /// the old one: its pool closes once its connections are returned,
    /// then the old lease is revoked.
    async fn renew(&self, held: &Mutex<Option<Lease>>) -> Result<Instant, Error> {
        let lease = self.api.issue(&self.tenant, self.access, self.ttl).await?;
        let pool = match checked(&lease, &self.options).await {
            Ok(pool) => pool,
            Err(error) => {
                let _ = self.api.revoke(&self.tenant, lease.id).await;
                return Err(error);
            }
        };
        let due = self.due(&lease);
        let old_pool = self.current.swap(Arc::new(Pool::Postgres(pool)));
        let old_lease = held.lock().await.replace(lease);
        let (api, tenant) = (self.api.clone(), self.tenant.clone());
        tokio::spawn(async move {
            old_pool.close().await;
            if let Some(old) = old_lease {
                let _ = api.revoke(&tenant, old.id).await;
            }
        });
        Ok(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_renewal_point_outside_a_leases_life_is_refused() {
        for renew_at in [0.0, 1.0, 1.5, f64::NAN] {
            let options = Options { renew_at, ..Options::default() };
            let url = zeroize::Zeroizing::new("postgres://x@127.0.0.1:1/x".to_owned());
            let error = TenantDb::open(Source::Url(url), &options).await.unwrap_err();
            assert!(error.to_string().contains("between 0 and 1"), "{renew_at}: {error}");
        }
    }
}
