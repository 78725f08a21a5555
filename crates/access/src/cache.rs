//! A bounded cache of per-tenant pools, for an application serving many
//! tenants: each tenant's pool is opened on first use, capped at
//! [`Options::max_connections`], and the least recently used is closed
//! when a new tenant would exceed the capacity.

use std::{fmt, num::NonZeroUsize, sync::Arc};

use lru::LruCache;
use tokio::sync::OnceCell;

use crate::{Error, Options, Pool, Source, TenantDb};

type Resolve = dyn Fn(&str) -> Result<Source, Error> + Send + Sync;

/// Per-tenant pools, at most `capacity` open at once.
pub struct TenantPools {
    resolve: Box<Resolve>,
    options: Options,
    /// Each tenant's pool, once opened. The cell lets concurrent first
    /// uses of one tenant open it once; the lock is never held across an
    /// await.
    open: std::sync::Mutex<LruCache<String, Arc<OnceCell<TenantDb>>>>,
}

impl fmt::Debug for TenantPools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantPools")
            .field("options", &self.options)
            .field("open", &self.len())
            .finish_non_exhaustive()
    }
}

impl TenantPools {
    /// `resolve` says where each tenant's database is (see [`Source`]).
    pub fn new(
        capacity: NonZeroUsize,
        options: Options,
        resolve: impl Fn(&str) -> Result<Source, Error> + Send + Sync + 'static,
    ) -> Self {
        Self {
            resolve: Box::new(resolve),
            options,
            open: std::sync::Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The tenant's pool, opened now if it is not open.
    pub async fn get(&self, tenant: &str) -> Result<Pool, Error> {
        let (cell, evicted) = {
            let mut open = self.open.lock().map_err(|_| poisoned())?;
            match open.get(tenant) {
                Some(cell) => (Arc::clone(cell), None),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    let evicted = open.push(tenant.to_owned(), Arc::clone(&cell));
                    (cell, evicted)
                }
            }
        };
        if let Some((_, evicted)) = evicted {
            close(evicted);
        }
        let db = cell
            .get_or_try_init(|| async {
                TenantDb::open((self.resolve)(tenant)?, &self.options).await
            })
            .await;
        match db {
            Ok(db) => Ok(db.pool()),
            Err(error) => {
                // Not kept: the next use tries again.
                if let Ok(mut open) = self.open.lock()
                    && open.peek(tenant).is_some_and(|c| Arc::ptr_eq(c, &cell))
                {
                    open.pop(tenant);
                }
                Err(error)
            }
        }
    }

    /// Closes the tenant's pool, if open (revoking its lease).
    pub async fn remove(&self, tenant: &str) {
        let removed = self.open.lock().ok().and_then(|mut open| open.pop(tenant));
        if let Some(db) = removed.and_then(Arc::into_inner).and_then(OnceCell::into_inner) {
            db.close().await;
        }
    }

    /// How many tenants' pools are open.
    pub fn len(&self) -> usize {
        self.open.lock().map_or(0, |open| open.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Closes an evicted tenant's pool in the background (its connections in
/// use finish first); a pool still opening is dropped by its opener.
fn close(evicted: Arc<OnceCell<TenantDb>>) {
    if let Some(db) = Arc::into_inner(evicted).and_then(OnceCell::into_inner)
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        runtime.spawn(db.close());
    }
}

fn poisoned() -> Error {
    Error::Invalid("the tenant pool cache was poisoned by a panic".into())
}
