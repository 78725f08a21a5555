//! Provisioning steps: what it takes to turn a tenant record into a working
//! tenant, one idempotent step at a time.
//!
//! The reconciler runs [`standard_steps`] in order to provision a tenant and
//! in reverse to offboard it. Each step must tolerate being run again after
//! a crash at any point (apply creates what is missing, undo removes what is
//! there), because the record that a step finished is written after the
//! step's effect. Later capabilities (vault keys, identity realm, audit
//! stream, gateway routes, backups) add their steps to this list.

mod audit_key;
mod backups;
mod database;
mod directory;
mod keys;
mod realm;
mod schema;

use std::{fmt, path::PathBuf, sync::Arc};

use async_trait::async_trait;
use bulkhead_audit::AuditLog;
use bulkhead_model::{Region, Tenant};
use bulkhead_store::ControlStore;
use bulkhead_vault::Vault;
use thiserror::Error;

use crate::{audit::AuditKeys, clock::Clock, credentials::Credentials, identity::IdentityService};

pub use audit_key::CreateAuditKey;
pub use backups::{BackupChain, TenantBackups};
pub use bulkhead_tenantdb::RegionServers;
pub use database::CreateDatabase;
pub use directory::{AllocateDirectory, MARKER};
pub use keys::{CreateDataKey, DatabaseCredentials};
pub use realm::CreateRealm;
pub use schema::MigrateDatabase;

/// The tenant a step works on, and where its region keeps databases.
#[derive(Debug, Clone)]
pub struct StepTarget {
    pub tenant: Tenant,
    pub region: Region,
    /// `<data-dir>/tenants/<name>`.
    pub tenant_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StepError {
    /// Might work on another attempt: a server that is down, a timeout.
    #[error("{0}")]
    Transient(String),
    /// Will fail the same way every time until the configuration changes.
    #[error("{0}")]
    Permanent(String),
}

impl StepError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, StepError::Permanent(_))
    }
}

impl From<bulkhead_tenantdb::Error> for StepError {
    fn from(error: bulkhead_tenantdb::Error) -> Self {
        match error {
            bulkhead_tenantdb::Error::Transient(reason) => StepError::Transient(reason),
            bulkhead_tenantdb::Error::Permanent(reason) => StepError::Permanent(reason),
        }
    }
}

/// One idempotent piece of provisioning.
#[async_trait]
pub trait ProvisioningStep: Send + Sync + fmt::Debug {
    /// The name recorded in the store. It is part of every tenant's recorded
    /// progress, so it never changes once released.
    fn name(&self) -> &'static str;

    /// Makes the step's effect exist, whether or not it partly exists
    /// already, and describes what it made (shown in the tenant's steps).
    async fn apply(&self, target: &StepTarget) -> Result<Option<serde_json::Value>, StepError>;

    /// Removes the step's effect, whether it exists fully, partly or not at
    /// all.
    async fn undo(&self, target: &StepTarget) -> Result<(), StepError>;
}

/// What the standard steps work with.
#[derive(Debug, Clone)]
pub struct StepServices {
    pub store: Arc<dyn ControlStore>,
    pub servers: RegionServers,
    pub vault: Arc<Vault>,
    pub credentials: Arc<Credentials>,
    pub identity: Arc<IdentityService>,
    pub audit_keys: Arc<AuditKeys>,
    pub audit: AuditLog,
    pub clock: Arc<dyn Clock>,
    /// Tenants' backups, as offboarding leaves them.
    pub backups: Arc<dyn TenantBackups>,
}

/// The ordered list every tenant goes through. A tenant becomes `active`
/// when the last step is recorded; offboarding undoes them in reverse, so
/// the final snapshot is taken while everything still exists, leases are
/// revoked before the database goes, the realm (and with it every token)
/// goes next, and the data keys are destroyed after everything that could
/// still need them.
pub fn standard_steps(services: &StepServices) -> Vec<Arc<dyn ProvisioningStep>> {
    vec![
        Arc::new(AllocateDirectory),
        Arc::new(CreateDataKey::new(Arc::clone(&services.vault), Arc::clone(&services.clock))),
        Arc::new(CreateAuditKey::new(Arc::clone(&services.audit_keys), services.audit.clone())),
        Arc::new(CreateRealm::new(Arc::clone(&services.identity))),
        Arc::new(CreateDatabase::new(services.servers.clone())),
        Arc::new(MigrateDatabase::new(
            Arc::clone(&services.store),
            services.servers.clone(),
            Arc::clone(&services.clock),
        )),
        Arc::new(DatabaseCredentials::new(
            Arc::clone(&services.credentials),
            Arc::clone(&services.clock),
        )),
        // Last, so that its undo comes first: the final snapshot is of the
        // whole tenant.
        Arc::new(BackupChain::new(Arc::clone(&services.backups))),
    ]
}
