//! `backup_chain`: where the tenant's backups go (its prefix of the
//! backup store). Nothing is made on provisioning: the first backup makes
//! the tenant's key and prefix. Its undo deletes every backup of the tenant
//! when nothing of it is meant to survive (a purge, or a tenant that never
//! became active): they are unreadable already once its data keys are
//! destroyed, and now they take no room either.

use async_trait::async_trait;
use bulkhead_backup::Storage;
use bulkhead_model::TenantState;
use serde_json::json;

use super::{ProvisioningStep, StepError, StepTarget};

#[derive(Debug, Clone)]
pub struct BackupChain {
    storage: Storage,
}

impl BackupChain {
    pub fn new(storage: Storage) -> Self {
        Self { storage }
    }
}

#[async_trait]
impl ProvisioningStep for BackupChain {
    fn name(&self) -> &'static str {
        "backup_chain"
    }

    async fn apply(&self, target: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
        Ok(Some(json!({
            "store": self.storage.describe(),
            "prefix": format!("tenants/{}/", target.tenant.id.0),
        })))
    }

    async fn undo(&self, target: &StepTarget) -> Result<(), StepError> {
        let tenant = &target.tenant;
        if !(tenant.purge_requested || tenant.state == TenantState::Failed) {
            return Ok(());
        }
        let deleted = self.storage.delete_all(tenant.id.0).await.map_err(|e| {
            StepError::Transient(format!("cannot delete the tenant's backups: {e}"))
        })?;
        if deleted > 0 {
            tracing::info!(tenant = %tenant.name, deleted, "deleted the tenant's backups");
        }
        Ok(())
    }
}
