//! Dynamic database credentials (the token vending machine): a login role
//! per lease on the tenant's PostgreSQL server, acting as the tenant's own
//! role, expiring by itself, and revoked (sessions ended, role dropped) by
//! an operator, by offboarding or by the sweeper once it expires.
//!
//! Which role a lease acts as depends on the tenant's isolation, so that
//! pool tenants get credentials the same way once they have roles of
//! their own.

use std::{str::FromStr, sync::Arc, time::Duration};

use bulkhead_model::{DatabaseLocation, DatabaseUrl, Isolation, Region, Regions, Tenant};
use bulkhead_store::{ControlStore, Lease, StoreError};
use bulkhead_vault::leases::{LoginRole, create_login_role, drop_login_role, random_password};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;
use thiserror::Error;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::provision::{RegionServers, StepError, silo_identifiers};

/// What a credential may do in the tenant's database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Everything the tenant's owner role can: read, write, create.
    Write,
    /// `SELECT` on the tenant's tables.
    Read,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Write => "write",
            Access::Read => "read",
        }
    }
}

#[derive(Debug, Error)]
pub enum CredentialError {
    /// The tenant's database cannot have login roles (yet); says why.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Database(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<StepError> for CredentialError {
    fn from(error: StepError) -> Self {
        CredentialError::Database(error.to_string())
    }
}

impl From<bulkhead_vault::VaultError> for CredentialError {
    fn from(error: bulkhead_vault::VaultError) -> Self {
        CredentialError::Database(error.to_string())
    }
}

/// A credential as issued: the only time its password is seen.
pub struct IssuedCredential {
    pub lease: Lease,
    /// `postgres://<role>:<password>@<host>:<port>/<database>`.
    pub url: Zeroizing<String>,
}

impl std::fmt::Debug for IssuedCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCredential").field("lease", &self.lease).finish_non_exhaustive()
    }
}

/// Where a tenant's credentials live, and as whom they act.
struct Target<'a> {
    region: &'a Region,
    url: &'a DatabaseUrl,
    database: String,
    acts_as: String,
    owner: String,
}

#[derive(Debug)]
pub struct Credentials {
    store: Arc<dyn ControlStore>,
    servers: RegionServers,
    regions: Regions,
}

impl Credentials {
    pub fn new(store: Arc<dyn ControlStore>, servers: RegionServers, regions: Regions) -> Self {
        Self { store, servers, regions }
    }

    fn target(&self, tenant: &Tenant, access: Access) -> Result<Target<'_>, CredentialError> {
        let region = self.regions.get(tenant.region.as_str()).map_err(|e| {
            CredentialError::Unavailable(format!("{e}; the tenant's region is not configured"))
        })?;
        let url = match &region.databases {
            DatabaseLocation::Postgres(url) => url,
            DatabaseLocation::Embedded => {
                return Err(CredentialError::Unavailable(format!(
                    "tenant {:?} keeps its data in an embedded SQLite file, which has no login \
                     roles; database credentials need a region on PostgreSQL",
                    tenant.name.as_str()
                )));
            }
        };
        match tenant.isolation {
            Isolation::Silo => {
                let names = silo_identifiers(region, tenant);
                let acts_as = match access {
                    Access::Write => names.owner.clone(),
                    Access::Read => names.reader,
                };
                Ok(Target { region, url, database: names.database, acts_as, owner: names.owner })
            }
            Isolation::Pool => Err(CredentialError::Unavailable(format!(
                "tenant {:?} is pooled; pool tenants get database credentials once the shared \
                 database has a role per tenant (row-level security), which is not built yet",
                tenant.name.as_str()
            ))),
        }
    }

    /// Creates a login role valid for `ttl` and records its lease.
    pub async fn issue(
        &self,
        tenant: &Tenant,
        access: Access,
        ttl: Duration,
        issued_by: &str,
        now: OffsetDateTime,
    ) -> Result<IssuedCredential, CredentialError> {
        let target = self.target(tenant, access)?;
        let id = Uuid::new_v4();
        let random = id.simple().to_string();
        let role = format!(
            "{}l_{}_{}",
            target.region.database_prefix.as_str(),
            tenant.id.short(),
            &random[..12]
        );
        let lease = Lease {
            id,
            tenant_id: tenant.id,
            region: target.region.name.to_string(),
            database: target.database.clone(),
            role: role.clone(),
            access: access.as_str().to_owned(),
            issued_by: issued_by.to_owned(),
            issued_at: now,
            expires_at: now + ttl,
            revoked_at: None,
        };
        // Recorded first: a crash after the role exists still leaves a
        // lease for the sweeper to revoke.
        self.store.insert_lease(&lease).await?;
        let pool = self.servers.pool(&target.region.name, target.url)?;
        let password = random_password()?;
        let spec =
            LoginRole { role: &role, acts_as: &target.acts_as, valid_until: lease.expires_at };
        if let Err(error) = create_login_role(&pool, &spec, &password).await {
            // Nothing usable was handed out; the lease ends here.
            let _ = self.store.mark_lease_revoked(id, now).await;
            return Err(error.into());
        }
        // Revoked while the role was being made (an offboarding, say): the
        // revoke found no role to drop, so drop it now.
        if self.store.lease(id).await?.is_some_and(|l| l.revoked_at.is_some()) {
            self.revoke(&lease, now).await?;
            return Err(CredentialError::Unavailable(format!(
                "lease {id} was revoked while it was being issued; the tenant is going away"
            )));
        }
        let url = connection_url(target.url, &role, &password, &target.database)?;
        Ok(IssuedCredential { lease, url })
    }

    /// Ends the lease's sessions, drops its role and marks it revoked.
    /// Returns whether this call revoked it (false: it already was).
    pub async fn revoke(
        &self,
        lease: &Lease,
        now: OffsetDateTime,
    ) -> Result<bool, CredentialError> {
        let region = self.regions.get(&lease.region).map_err(|e| {
            CredentialError::Unavailable(format!(
                "{e}; configure it again to revoke lease {}",
                lease.id
            ))
        })?;
        if let DatabaseLocation::Postgres(url) = &region.databases {
            let pool = self.servers.pool(&region.name, url)?;
            // The owner the lease's objects go to, from the database's own
            // naming: `<database>_owner`.
            let owner = format!("{}_owner", lease.database);
            let servers = &self.servers;
            let database = lease.database.as_str();
            let tenant_db = async || {
                servers
                    .database_pool(&region.name, url, database)
                    .await
                    .map_err(|e| bulkhead_vault::VaultError::Database(e.to_string()))
            };
            drop_login_role(&pool, tenant_db, &lease.role, &owner).await?;
        }
        Ok(self.store.mark_lease_revoked(lease.id, now).await?)
    }

    /// Revokes every live lease of the tenant (offboarding).
    pub async fn revoke_all(
        &self,
        tenant: &Tenant,
        now: OffsetDateTime,
    ) -> Result<usize, CredentialError> {
        let mut revoked = 0;
        for lease in self.store.leases(tenant.id, false).await? {
            if self.revoke(&lease, now).await? {
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    /// Revokes up to `limit` expired leases; returns those it revoked.
    pub async fn expire(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<Lease>, CredentialError> {
        let mut revoked = Vec::new();
        for lease in self.store.expired_leases(now, limit).await? {
            match self.revoke(&lease, now).await {
                Ok(true) => revoked.push(lease),
                Ok(false) => {}
                // One unreachable region must not hold up the others.
                Err(error) => {
                    tracing::warn!(lease = %lease.id, role = %lease.role, %error, "cannot revoke an expired lease; retrying on the next sweep");
                }
            }
        }
        Ok(revoked)
    }

    pub fn owner_role(&self, tenant: &Tenant) -> Option<String> {
        self.target(tenant, Access::Write).ok().map(|t| t.owner)
    }
}

/// The region's server address with the lease's role, password and
/// database. Query parameters of the region's URL (`sslmode`, …) carry
/// over; its user, password and database do not.
fn connection_url(
    region_url: &DatabaseUrl,
    role: &str,
    password: &str,
    database: &str,
) -> Result<Zeroizing<String>, CredentialError> {
    let options = PgConnectOptions::from_str(region_url.expose())
        .map_err(|e| CredentialError::Database(format!("region url {region_url}: {e}")))?;
    let host = options.get_host();
    let port = options.get_port();
    // Only how to reach and trust the server: never the region's user,
    // password, database or session options.
    let mut query: Vec<&str> = region_url
        .expose()
        .split_once('?')
        .map(|(_, q)| q.split('&').filter(|p| carries_over(p)).collect())
        .unwrap_or_default();
    let authority = if host.starts_with('/') {
        // A Unix socket directory travels in the query.
        if !query.iter().any(|p| p.starts_with("host=")) {
            query.insert(0, "");
        }
        "localhost".to_owned()
    } else if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let mut url =
        Zeroizing::new(format!("postgres://{role}:{password}@{authority}:{port}/{database}"));
    for (i, param) in query.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        if param.is_empty() {
            url.push_str("host=");
            url.push_str(host);
        } else {
            url.push_str(param);
        }
    }
    Ok(url)
}

/// Connection parameters of the region's URL a lease's URL keeps.
fn carries_over(param: &str) -> bool {
    const KEPT: &[&str] =
        &["sslmode", "sslrootcert", "host", "hostaddr", "connect_timeout", "target_session_attrs"];
    let name = param.split_once('=').map_or(param, |(name, _)| name);
    KEPT.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_urls_keep_the_server_and_its_options_only() {
        let region =
            DatabaseUrl::parse("postgres://admin:hunter2@db.example:6432/postgres?sslmode=require")
                .unwrap();
        let url = connection_url(&region, "bh_l_1", "pw", "bh_acme_1").unwrap();
        assert_eq!(*url, "postgres://bh_l_1:pw@db.example:6432/bh_acme_1?sslmode=require");
        let socket =
            DatabaseUrl::parse("postgres://admin@localhost/postgres?host=/run/postgresql").unwrap();
        let url = connection_url(&socket, "r", "pw", "d").unwrap();
        assert!(
            url.starts_with("postgres://r:pw@localhost:5432/d?host=/run/postgresql"),
            "{}",
            *url
        );
    }
}
