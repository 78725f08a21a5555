//! `create_realm`: the tenant's identity realm and its first signing key
//! (private half sealed under the tenant's data key, so this step comes
//! after `create_data_key`). Undo removes the realm, its keys and API keys:
//! the tenant's tokens stop verifying before anything else goes.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;

use super::{ProvisioningStep, StepError, StepTarget};
use crate::identity::IdentityService;

#[derive(Debug)]
pub struct CreateRealm {
    identity: Arc<IdentityService>,
}

impl CreateRealm {
    pub fn new(identity: Arc<IdentityService>) -> Self {
        Self { identity }
    }
}

#[async_trait]
impl ProvisioningStep for CreateRealm {
    fn name(&self) -> &'static str {
        "create_realm"
    }

    async fn apply(&self, target: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
        let kid = self
            .identity
            .ensure_realm(&target.tenant)
            .await
            .map_err(|e| StepError::Transient(format!("cannot create the realm: {e}")))?;
        Ok(Some(json!({ "issuer": self.identity.issuer(&target.tenant.name), "kid": kid })))
    }

    async fn undo(&self, target: &StepTarget) -> Result<(), StepError> {
        self.identity
            .remove_realm(&target.tenant)
            .await
            .map_err(|e| StepError::Transient(format!("cannot remove the realm: {e}")))
    }
}
