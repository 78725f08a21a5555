//! Short-lived logins that act as one tenant role, made as a lease is made
//! and dropped after use: the verifier's probes, and the migrations that
//! run inside a silo database.
//!
//! Code a tenant put in its own database (a trigger, a function a
//! migration calls) runs with the session's rights, and may `RESET ROLE`:
//! in a session of the region's role that would hand the tenant the
//! region's role. In a session of a login that only acts as the tenant's
//! role, it hands the tenant nothing it did not have.

use std::str::FromStr;

use bulkhead_model::{DatabaseUrl, Region, Tenant};
use bulkhead_vault::leases::{
    Heir, LoginRole, create_login_role, drop_login_role, random_password,
};
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

use crate::{Error, RegionServers};

/// What a temporary login is for, which names it: `<prefix><kind>_…`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purpose<'a> {
    /// The verifier's probes: `v_<tenant>_<random>`.
    Probe,
    /// One migration of one tenant's database: `m_<tenant>_<job>`, so that
    /// a migration resumed after a crash finds and drops the login the
    /// interrupted one left (what it made in `database` goes to the role it
    /// acts as).
    Migration { job: uuid::Uuid, database: &'a str },
}

/// A login that acts as one role, valid for a few minutes.
pub(crate) struct TemporaryLogin {
    role: String,
    options: PgConnectOptions,
}

impl TemporaryLogin {
    pub(crate) async fn make(
        servers: &RegionServers,
        region: &Region,
        url: &DatabaseUrl,
        tenant: &Tenant,
        acts_as: &str,
        purpose: Purpose<'_>,
        now: time::OffsetDateTime,
    ) -> Result<Self, Error> {
        let prefix = region.database_prefix.as_str();
        let short = tenant.id.short();
        let (role, application) = match purpose {
            Purpose::Probe => {
                let random = uuid::Uuid::new_v4().simple().to_string();
                (format!("{prefix}v_{short}_{}", &random[..12]), "bulkhead verify")
            }
            Purpose::Migration { job, .. } => {
                let job = job.simple().to_string();
                (format!("{prefix}m_{short}_{}", &job[..12]), "bulkhead migrate")
            }
        };
        let admin = servers.pool(&region.name, url)?;
        if let Purpose::Migration { database, .. } = purpose {
            // Left by a run that stopped before dropping it.
            let databases = servers.databases(&region.name, url);
            let heir = Heir { database, owner: acts_as };
            drop_login_role(&admin, &databases, &role, heir).await?;
        }
        let password = random_password()?;
        let spec = LoginRole {
            role: &role,
            acts_as,
            valid_until: now + time::Duration::minutes(5),
            sessions: None,
        };
        create_login_role(&admin, &spec, &password).await?;
        let options = PgConnectOptions::from_str(url.expose())
            .map_err(|e| Error::Permanent(format!("region `{}` url {url}: {e}", region.name)))?
            .username(&role)
            .password(&password)
            .application_name(application);
        Ok(Self { role, options })
    }

    pub(crate) async fn connect(&self, database: &str) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.options.clone().database(database)).await
    }

    /// Drops the login; what it made in `heir`'s database goes to the heir.
    pub(crate) async fn drop(
        self,
        servers: &RegionServers,
        region: &Region,
        url: &DatabaseUrl,
        heir: Heir<'_>,
    ) -> Result<(), Error> {
        let admin = servers.pool(&region.name, url)?;
        drop_login_role(&admin, &servers.databases(&region.name, url), &self.role, heir).await?;
        Ok(())
    }
}
