//! `backup_chain`: where the tenant's backups go (its prefix of the
//! backup store). Nothing is made on provisioning: the first backup makes
//! the tenant's key and prefix.
//!
//! It is the last step, so its undo runs first, while everything of the
//! tenant still exists. On a plain delete it keeps the tenant's final
//! snapshot (taken then, encrypted to a key that outlives the tenant's
//! data keys) and deletes the rest of the chain; on a purge, or for a
//! tenant that never became active, it deletes every backup, the final
//! snapshot included.

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use bulkhead_model::{Tenant, TenantState};
use serde_json::json;

use super::{ProvisioningStep, StepError, StepTarget};

/// What offboarding does to a tenant's backups (the control plane's
/// backup service).
#[async_trait]
pub trait TenantBackups: Send + Sync + fmt::Debug {
    /// Where backups are kept, safe to show.
    fn describe(&self) -> String;

    /// Takes the tenant's final snapshot, unless it has one, and deletes
    /// its other backups.
    async fn keep_final(&self, tenant: &Tenant) -> Result<(), StepError>;

    /// Deletes every backup of the tenant, its final snapshot and that
    /// snapshot's key included.
    async fn destroy_all(&self, tenant: &Tenant) -> Result<(), StepError>;
}

#[derive(Debug, Clone)]
pub struct BackupChain {
    backups: Arc<dyn TenantBackups>,
}

impl BackupChain {
    pub fn new(backups: Arc<dyn TenantBackups>) -> Self {
        Self { backups }
    }
}

#[async_trait]
impl ProvisioningStep for BackupChain {
    fn name(&self) -> &'static str {
        "backup_chain"
    }

    async fn apply(&self, target: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
        Ok(Some(json!({
            "store": self.backups.describe(),
            "prefix": format!("tenants/{}/", target.tenant.id.0),
        })))
    }

    async fn undo(&self, target: &StepTarget) -> Result<(), StepError> {
        let tenant = &target.tenant;
        if tenant.state == TenantState::Offboarding && !tenant.purge_requested {
            self.backups.keep_final(tenant).await
        } else {
            self.backups.destroy_all(tenant).await
        }
    }
}
