//! `create_data_key` and `database_credentials`: the tenant's vault.
//!
//! The data key is made before anything is encrypted for the tenant. Its
//! undo destroys the tenant's wrapped data keys (crypto-shredding): every
//! secret and backup sealed under them becomes unreadable wherever copies
//! are. What survives a plain delete is the final snapshot, whose key the
//! vault seals apart from the data keys.
//!
//! `database_credentials` makes nothing; its undo revokes every live lease
//! before the database is dropped, so no login role outlives its tenant.

use std::sync::Arc;

use async_trait::async_trait;
use bulkhead_vault::Vault;
use serde_json::json;

use super::{ProvisioningStep, StepError, StepTarget};
use crate::{clock::Clock, credentials::Credentials};

#[derive(Debug)]
pub struct CreateDataKey {
    vault: Arc<Vault>,
    clock: Arc<dyn Clock>,
}

impl CreateDataKey {
    pub fn new(vault: Arc<Vault>, clock: Arc<dyn Clock>) -> Self {
        Self { vault, clock }
    }
}

#[async_trait]
impl ProvisioningStep for CreateDataKey {
    fn name(&self) -> &'static str {
        "create_data_key"
    }

    async fn apply(&self, target: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
        let version = self
            .vault
            .create_data_key(target.tenant.id, self.clock.now())
            .await
            .map_err(|e| StepError::Transient(format!("cannot create the data key: {e}")))?;
        let master = self.vault.master_key_id().map_err(|e| StepError::Transient(e.to_string()))?;
        Ok(Some(json!({ "data_key_version": version, "wrapped_by": master })))
    }

    async fn undo(&self, target: &StepTarget) -> Result<(), StepError> {
        let tenant = &target.tenant;
        let destroyed = self
            .vault
            .shred(tenant.id)
            .await
            .map_err(|e| StepError::Transient(format!("cannot destroy the data keys: {e}")))?;
        if destroyed > 0 {
            tracing::info!(tenant = %tenant.name, destroyed, "destroyed the tenant's data keys");
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct DatabaseCredentials {
    credentials: Arc<Credentials>,
    clock: Arc<dyn Clock>,
}

impl DatabaseCredentials {
    pub fn new(credentials: Arc<Credentials>, clock: Arc<dyn Clock>) -> Self {
        Self { credentials, clock }
    }
}

#[async_trait]
impl ProvisioningStep for DatabaseCredentials {
    fn name(&self) -> &'static str {
        "database_credentials"
    }

    async fn apply(&self, target: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
        Ok(self.credentials.write_role(&target.tenant).map(|role| json!({ "leases_act_as": role })))
    }

    async fn undo(&self, target: &StepTarget) -> Result<(), StepError> {
        let revoked =
            self.credentials.revoke_all(&target.tenant, self.clock.now()).await.map_err(|e| {
                StepError::Transient(format!("cannot revoke the tenant's leases: {e}"))
            })?;
        if revoked > 0 {
            tracing::info!(tenant = %target.tenant.name, revoked, "revoked the tenant's leases");
        }
        Ok(())
    }
}
