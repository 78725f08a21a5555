//! `migrate_database`: a new tenant's database takes the schema the other
//! tenants' databases have, the files of the latest migration job that
//! covered every tenant and succeeded (see `crate::migrations`). Run after
//! an upgrade that added it, it brings existing tenants to that schema too.
//! Nothing to undo: `create_database` removes the database.

use std::sync::Arc;

use async_trait::async_trait;
use bulkhead_model::{DatabaseLocation, Isolation};
use bulkhead_store::ControlStore;
use bulkhead_tenantdb::{
    RegionServers,
    migrate::{self, Mode},
};
use serde_json::json;

use super::{ProvisioningStep, StepError, StepTarget};
use crate::{clock::Clock, migrations::current_schema};

#[derive(Debug)]
pub struct MigrateDatabase {
    store: Arc<dyn ControlStore>,
    servers: RegionServers,
    clock: Arc<dyn Clock>,
}

impl MigrateDatabase {
    pub fn new(
        store: Arc<dyn ControlStore>,
        servers: RegionServers,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { store, servers, clock }
    }
}

#[async_trait]
impl ProvisioningStep for MigrateDatabase {
    fn name(&self) -> &'static str {
        "migrate_database"
    }

    async fn apply(&self, target: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
        let StepTarget { tenant, region, tenant_dir } = target;
        let schema = current_schema(self.store.as_ref())
            .await
            .map_err(|e| StepError::Transient(format!("cannot read the migration jobs: {e}")))?;
        let Some((job, migrations)) = schema else {
            return Ok(Some(json!({ "version": 0 })));
        };
        let mode = Mode::Apply { job };
        let outcome = match (&region.databases, tenant.isolation) {
            (DatabaseLocation::Embedded, _) => migrate::sqlite(tenant_dir, &migrations, mode).await,
            (DatabaseLocation::Postgres(url), Isolation::Silo) => {
                let now = self.clock.now();
                migrate::silo(&self.servers, region, url, tenant, &migrations, mode, now).await
            }
            (DatabaseLocation::Postgres(url), Isolation::Pool) => {
                migrate::pool(&self.servers, region, url, &migrations, mode).await
            }
        }?;
        Ok(Some(json!({ "job": job, "version": outcome.to, "files": outcome.files })))
    }

    async fn undo(&self, _target: &StepTarget) -> Result<(), StepError> {
        Ok(())
    }
}
