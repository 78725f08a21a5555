//! Dynamic database credentials (the token vending machine): a login role
//! per lease on the tenant's PostgreSQL server, acting as the tenant's own
//! role, expiring by itself, and revoked (sessions ended, role dropped) by
//! an operator, by offboarding or by the sweeper once it expires.
//!
//! Which role a lease acts as depends on the tenant's isolation (a silo's
//! owner or read role, or a pool tenant's write or read role: see
//! `bulkhead_tenantdb`); everything else about a lease is the same.

use std::{str::FromStr, sync::Arc, time::Duration};

use bulkhead_model::{
    DatabaseLocation, DatabaseUrl, Isolation, PlanCatalog, Region, Regions, Tenant,
};
use bulkhead_store::{ControlStore, Lease, StoreError};
use bulkhead_vault::leases::{
    Heir, LoginRole, create_login_role, disable_login, drop_login_role, enable_login, extend_login,
    random_password,
};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use thiserror::Error;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;
use zeroize::Zeroizing;

use bulkhead_tenantdb::{PoolNames, PoolTenantRoles, RegionServers, SiloNames};

/// Leases the sweeper revokes per pass ...
pub const SWEEP_BATCH: u32 = 100;
/// ... of which at most this many are one tenant's ...
pub const SWEEP_PER_TENANT: u32 = 10;
/// ... this many at a time.
const SWEEP_CONCURRENCY: usize = 4;

/// How long after its `attempts`-th failed revocation a lease is tried
/// again: 30 s, doubling, at most an hour.
fn retry_after(attempts: i32) -> time::Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1)).unwrap_or(0).min(7);
    time::Duration::seconds((30_i64 << doublings).min(3_600))
}

/// What a sweep over due leases did.
#[derive(Debug, Default)]
pub struct Expired {
    pub revoked: Vec<Lease>,
    /// Leases whose role could not be dropped (already unable to log in),
    /// with their new attempt count, and why.
    pub failed: Vec<(Lease, String)>,
}

/// What applying suspensions did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub disabled: usize,
    pub enabled: usize,
    /// Leases that could not be changed now; the next sweep tries again.
    pub failed: usize,
}

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

impl From<bulkhead_tenantdb::Error> for CredentialError {
    fn from(error: bulkhead_tenantdb::Error) -> Self {
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
    password: Zeroizing<String>,
}

impl IssuedCredential {
    /// The credential's URL with the server at `address` (`host:port`):
    /// the runtime's relay inside a worker's network, say.
    pub fn url_at(&self, address: &str) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "postgres://{}:{}@{address}/{}",
            self.lease.role,
            self.password.as_str(),
            self.lease.database
        ))
    }
}

/// Sessions one credential may hold when the tenant's plan is no longer
/// known: the starter plan's.
const DEFAULT_SESSIONS: u32 = 10;

/// Sessions one credential of the tenant may hold at once: its plan's.
pub fn sessions(plans: &PlanCatalog, tenant: &Tenant) -> u32 {
    plans
        .get(tenant.plan.as_str())
        .map_or(DEFAULT_SESSIONS, |p| p.vault.max_sessions_per_credential)
}

/// Where the runtime's relay takes a tenant's workers: `host:port`, or the
/// path of the server's Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseServer(pub String);

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
        // The same login role either way: a member of a role of the
        // tenant's, in the database that holds its data.
        match tenant.isolation {
            Isolation::Silo => {
                let names = SiloNames::of(region, tenant);
                let acts_as = match access {
                    Access::Write => names.owner.clone(),
                    Access::Read => names.reader,
                };
                Ok(Target { region, url, database: names.database, acts_as })
            }
            Isolation::Pool => {
                let roles = PoolTenantRoles::of(region, tenant);
                let acts_as = match access {
                    Access::Write => roles.writer,
                    Access::Read => roles.reader,
                };
                Ok(Target { region, url, database: PoolNames::of(region).database, acts_as })
            }
        }
    }

    /// Creates a login role valid for `ttl` and records its lease.
    pub async fn issue(
        &self,
        tenant: &Tenant,
        access: Access,
        ttl: Duration,
        sessions: u32,
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
        let lease = Lease::new(
            id,
            tenant.id,
            target.region.name.to_string(),
            target.database.clone(),
            role.clone(),
            access.as_str().to_owned(),
            issued_by.to_owned(),
            now,
            now + ttl,
        );
        // Recorded first: a crash after the role exists still leaves a
        // lease for the sweeper to revoke.
        self.store.insert_lease(&lease).await?;
        let pool = self.servers.pool(&target.region.name, target.url)?;
        let password = random_password()?;
        let spec = LoginRole {
            role: &role,
            acts_as: &target.acts_as,
            valid_until: lease.expires_at,
            sessions: Some(sessions),
        };
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
        Ok(IssuedCredential { lease, url, password })
    }

    /// Moves a live lease's expiry to `now + ttl`: its role may log in
    /// until then, with the same password (a lease renewed while its
    /// holder, a runtime worker, keeps running).
    pub async fn renew(
        &self,
        lease: &Lease,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<OffsetDateTime, CredentialError> {
        let until = now + ttl;
        if let Some(pool) = self.admin_pool(lease)?
            && !extend_login(&pool, &lease.role, until).await?
        {
            return Err(CredentialError::Unavailable(format!(
                "lease {}'s role {} is gone",
                lease.id, lease.role
            )));
        }
        if !self.store.extend_lease(lease.id, until).await? {
            return Err(CredentialError::Unavailable(format!("lease {} was revoked", lease.id)));
        }
        Ok(until)
    }

    /// The server the tenant's leases log in to, for the runtime's relay;
    /// `None` for a tenant on the embedded default.
    pub fn server(&self, tenant: &Tenant) -> Result<Option<DatabaseServer>, CredentialError> {
        let embedded = self
            .regions
            .get(tenant.region.as_str())
            .is_ok_and(|r| matches!(r.databases, DatabaseLocation::Embedded));
        if embedded {
            return Ok(None);
        }
        let target = self.target(tenant, Access::Write)?;
        relay_address(&target.region.name.to_string(), target.url).map(Some)
    }

    /// Ends the lease's sessions, drops its role and marks it revoked.
    /// Returns whether this call revoked it (false: it already was).
    ///
    /// The role is made `NOLOGIN`, its password removed and its sessions
    /// ended before anything else, so a lease whose role then cannot be
    /// dropped is dead all the same; the failure is recorded on the lease
    /// and the sweeper tries again with backoff.
    pub async fn revoke(
        &self,
        lease: &Lease,
        now: OffsetDateTime,
    ) -> Result<bool, CredentialError> {
        match self.drop_role(lease).await {
            Ok(()) => Ok(self.store.mark_lease_revoked(lease.id, now).await?),
            Err(error) => {
                let attempts = lease.attempts.saturating_add(1);
                let retry = now + retry_after(attempts);
                let reason = error.to_string();
                self.store.record_lease_failure(lease.id, attempts, retry, &reason).await?;
                Err(error)
            }
        }
    }

    async fn drop_role(&self, lease: &Lease) -> Result<(), CredentialError> {
        let region = self.regions.get(&lease.region).map_err(|e| {
            CredentialError::Unavailable(format!(
                "{e}; configure it again to revoke lease {}",
                lease.id
            ))
        })?;
        if let DatabaseLocation::Postgres(url) = &region.databases {
            let pool = self.servers.pool(&region.name, url)?;
            // The owner the lease's objects go to, from the database's own
            // naming: `<database>_owner`, a silo's owner or the pool's.
            let owner = format!("{}_owner", lease.database);
            let heir = Heir { database: &lease.database, owner: &owner };
            let databases = self.servers.databases(&region.name, url);
            drop_login_role(&pool, &databases, &lease.role, heir).await?;
        }
        Ok(())
    }

    /// Revokes every live lease of the tenant (offboarding). Every lease is
    /// tried, and the first failure returned after.
    pub async fn revoke_all(
        &self,
        tenant: &Tenant,
        now: OffsetDateTime,
    ) -> Result<usize, CredentialError> {
        let mut revoked = 0;
        let mut failed = None;
        for lease in self.store.leases(tenant.id, false).await? {
            match self.revoke(&lease, now).await {
                Ok(true) => revoked += 1,
                Ok(false) => {}
                Err(error) => {
                    failed.get_or_insert(CredentialError::Database(format!(
                        "lease {} ({}): {error}",
                        lease.id, lease.role
                    )));
                }
            }
        }
        failed.map_or(Ok(revoked), Err)
    }

    /// Revokes leases due for it (expired, or a failed attempt's retry
    /// time has come), a few at a time: up to [`SWEEP_BATCH`], at most
    /// [`SWEEP_PER_TENANT`] of one tenant, so one tenant's stuck leases
    /// never keep another's from ending on time.
    pub async fn expire(&self, now: OffsetDateTime) -> Result<Expired, CredentialError> {
        let due = self.store.expired_leases(now, SWEEP_BATCH, SWEEP_PER_TENANT).await?;
        let outcomes: Vec<(Lease, Result<bool, CredentialError>)> = futures_util::stream::iter(due)
            .map(|lease| async move {
                let result = self.revoke(&lease, now).await;
                (lease, result)
            })
            .buffer_unordered(SWEEP_CONCURRENCY)
            .collect()
            .await;
        let mut expired = Expired::default();
        for (mut lease, result) in outcomes {
            match result {
                Ok(true) => expired.revoked.push(lease),
                Ok(false) => {}
                Err(error) => {
                    lease.attempts = lease.attempts.saturating_add(1);
                    tracing::warn!(lease = %lease.id, role = %lease.role, attempts = lease.attempts, %error, "cannot revoke a lease; its role cannot log in, and it is retried with backoff");
                    expired.failed.push((lease, error.to_string()));
                }
            }
        }
        Ok(expired)
    }

    /// Makes the leases of suspended tenants unable to log in (their
    /// sessions ended), and lets those of resumed tenants log in again
    /// unless they expired meanwhile. Each lease on its own: one whose
    /// region is down is retried at the next sweep and holds up no other.
    pub async fn apply_suspensions(&self, now: OffsetDateTime) -> Result<Applied, CredentialError> {
        let mut applied = Applied::default();
        for lease in self.store.leases_to_disable(SWEEP_BATCH).await? {
            let disabled = async {
                if let Some(pool) = self.admin_pool(&lease)? {
                    disable_login(&pool, &lease.role, false).await?;
                }
                Ok::<_, CredentialError>(self.store.set_lease_disabled(lease.id, Some(now)).await?)
            };
            match disabled.await {
                Ok(()) => applied.disabled += 1,
                Err(error) => {
                    tracing::warn!(lease = %lease.id, role = %lease.role, %error, "cannot disable a suspended tenant's credential; retrying at the next sweep");
                    applied.failed += 1;
                }
            }
        }
        for lease in self.store.leases_to_enable(now, SWEEP_BATCH).await? {
            let enabled = async {
                if let Some(pool) = self.admin_pool(&lease)? {
                    enable_login(&pool, &lease.role).await?;
                }
                Ok::<_, CredentialError>(self.store.set_lease_disabled(lease.id, None).await?)
            };
            match enabled.await {
                Ok(()) => applied.enabled += 1,
                Err(error) => {
                    tracing::warn!(lease = %lease.id, role = %lease.role, %error, "cannot enable a resumed tenant's credential; retrying at the next sweep");
                    applied.failed += 1;
                }
            }
        }
        Ok(applied)
    }

    /// The admin pool of the server a lease's role lives on.
    fn admin_pool(&self, lease: &Lease) -> Result<Option<sqlx::PgPool>, CredentialError> {
        let region = self.regions.get(&lease.region).map_err(|e| {
            CredentialError::Unavailable(format!("{e}; lease {} needs it", lease.id))
        })?;
        match &region.databases {
            DatabaseLocation::Postgres(url) => Ok(Some(self.servers.pool(&region.name, url)?)),
            DatabaseLocation::Embedded => Ok(None),
        }
    }

    /// The role a write lease of the tenant acts as.
    pub fn write_role(&self, tenant: &Tenant) -> Option<String> {
        self.target(tenant, Access::Write).ok().map(|t| t.acts_as)
    }
}

/// Where the runtime's relay reaches the region's server: its TCP address
/// or its Unix socket. A region that requires TLS gets none: the relay
/// does not speak TLS to the server yet, and must not pass the tenant's
/// data in the clear where the operator asked for encryption.
fn relay_address(region: &str, url: &DatabaseUrl) -> Result<DatabaseServer, CredentialError> {
    let options = PgConnectOptions::from_str(url.expose())
        .map_err(|e| CredentialError::Database(format!("region url {url}: {e}")))?;
    if matches!(
        options.get_ssl_mode(),
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    ) {
        return Err(CredentialError::Unavailable(format!(
            "region {region} requires TLS to its server (sslmode in its URL), which the runtime's \
             database relay does not speak yet, so its tenants' apps get no database; on a \
             network you trust, sslmode=prefer lets them through"
        )));
    }
    // As sqlx finds the socket: `?host=/dir` (its `socket`), or a host that
    // is a directory.
    let (host, port) = (options.get_host(), options.get_port());
    Ok(DatabaseServer(match options.get_socket() {
        Some(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
        None if host.starts_with('/') => format!("{host}/.s.PGSQL.{port}"),
        None => address(host, port),
    }))
}

/// `host:port`, an IPv6 host in brackets (sqlx keeps those of a URL).
fn address(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
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
        address("localhost", port)
    } else {
        address(host, port)
    };
    let mut url = Zeroizing::new(format!("postgres://{role}:{password}@{authority}/{database}"));
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
        let v6 = DatabaseUrl::parse("postgres://admin@[::1]:5433/postgres").unwrap();
        assert_eq!(*connection_url(&v6, "r", "pw", "d").unwrap(), "postgres://r:pw@[::1]:5433/d");
        let url = connection_url(&socket, "r", "pw", "d").unwrap();
        assert!(
            url.starts_with("postgres://r:pw@localhost:5432/d?host=/run/postgresql"),
            "{}",
            *url
        );
    }

    #[test]
    fn the_relay_reaches_tcp_ipv6_and_socket_servers_and_never_drops_required_tls() {
        let relay = |url: &str| relay_address("eu", &DatabaseUrl::parse(url).unwrap());
        assert_eq!(relay("postgres://a@db.example:6432/x").unwrap().0, "db.example:6432");
        assert_eq!(relay("postgres://a@[::1]:5432/x").unwrap().0, "[::1]:5432");
        assert_eq!(
            relay("postgres://a@localhost/x?host=/run/postgresql").unwrap().0,
            "/run/postgresql/.s.PGSQL.5432"
        );
        assert!(relay("postgres://a@db/x?sslmode=prefer").is_ok());
        for mode in ["require", "verify-ca", "verify-full"] {
            let refused = relay(&format!("postgres://a@db/x?sslmode={mode}")).unwrap_err();
            assert!(refused.to_string().contains("region eu requires TLS"), "{refused}");
            assert!(refused.to_string().contains("sslmode=prefer"), "{refused}");
        }
    }
}
