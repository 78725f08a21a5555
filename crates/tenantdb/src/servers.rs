//! Administrative connections to each region's PostgreSQL server, as the
//! region's own role, with session settings a tenant cannot override.

use std::{
    collections::HashMap,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bulkhead_model::{DatabaseUrl, RegionName};
use bulkhead_vault::leases::Databases;
use sqlx::{
    ConnectOptions, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{
    Error,
    sql::{server_version, transient},
};

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
    pub fn pool(&self, region: &RegionName, url: &DatabaseUrl) -> Result<PgPool, Error> {
        let mut pools = self
            .pools
            .lock()
            .map_err(|_| Error::Transient("region connection table poisoned".into()))?;
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
    ) -> Result<PgPool, Error> {
        // Timeouts newer servers have, which a tenant's owner role could set
        // on its database to end Bulkhead's sessions there at once; an older
        // server refuses a setting it does not know, so only what it has.
        let version = server_version(&self.pool(region, url)?).await?;
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

fn admin_options(region: &RegionName, url: &DatabaseUrl) -> Result<PgConnectOptions, Error> {
    Ok(PgConnectOptions::from_str(url.expose())
        .map_err(|e| Error::Permanent(format!("region `{region}` url {url}: {e}")))?
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
