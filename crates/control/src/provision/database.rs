//! `create_database`: the tenant's database, where its region keeps them
//! (see `bulkhead_tenantdb`): a SQLite file in the tenant's directory, a
//! silo database on the region's PostgreSQL server, or the tenant's roles
//! in the region's pool database.

use async_trait::async_trait;
use bulkhead_model::{DatabaseLocation, Isolation};
use bulkhead_tenantdb::{RegionServers, pool, silo, sqlite};

use super::{ProvisioningStep, StepError, StepTarget, directory};

#[derive(Debug, Clone)]
pub struct CreateDatabase {
    servers: RegionServers,
}

impl CreateDatabase {
    pub fn new(servers: RegionServers) -> Self {
        Self { servers }
    }
}

#[async_trait]
impl ProvisioningStep for CreateDatabase {
    fn name(&self) -> &'static str {
        "create_database"
    }

    async fn apply(&self, target: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
        let StepTarget { tenant, region, tenant_dir } = target;
        let made = match (&region.databases, tenant.isolation) {
            (DatabaseLocation::Embedded, Isolation::Silo) => sqlite::create(tenant_dir).await?,
            (DatabaseLocation::Embedded, Isolation::Pool) => {
                return Err(StepError::Permanent(format!(
                    "region `{}` keeps embedded SQLite databases, which cannot pool tenants",
                    region.name
                )));
            }
            (DatabaseLocation::Postgres(url), Isolation::Silo) => {
                silo::create(&self.servers, region, url, tenant).await?
            }
            (DatabaseLocation::Postgres(url), Isolation::Pool) => {
                pool::create(&self.servers, region, url, tenant).await?
            }
        };
        Ok(Some(made))
    }

    async fn undo(&self, target: &StepTarget) -> Result<(), StepError> {
        let StepTarget { tenant, region, tenant_dir } = target;
        match (&region.databases, tenant.isolation) {
            (DatabaseLocation::Embedded, _) => {
                // Only from the tenant's own directory: see `directory`.
                let owner = directory::owner(tenant_dir, tenant.id)
                    .map_err(|e| StepError::Transient(format!("{}: {e}", tenant_dir.display())))?;
                if owner == directory::Owner::Tenant(tenant.id) {
                    sqlite::remove(tenant_dir).await?;
                }
            }
            (DatabaseLocation::Postgres(url), Isolation::Silo) => {
                silo::drop(&self.servers, region, url, tenant).await?;
            }
            (DatabaseLocation::Postgres(url), Isolation::Pool) => {
                pool::drop(&self.servers, region, url, tenant).await?;
            }
        }
        Ok(())
    }
}
