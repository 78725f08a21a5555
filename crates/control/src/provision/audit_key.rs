//! `create_audit_key`: the key that signs the checkpoints of the tenant's
//! audit stream (private half sealed under the tenant's data key, so this
//! step comes after `create_data_key`; public half published with the
//! tenant's realm documents and in every export). Undo checkpoints the
//! stream, so everything recorded until then stays signed after the data
//! key, and with it this key, is destroyed. The stream itself is never
//! removed: retention ages it out.

use std::sync::Arc;

use async_trait::async_trait;
use bulkhead_audit::{AuditError, AuditLog, StreamId};
use serde_json::json;

use super::{ProvisioningStep, StepError, StepTarget};
use crate::audit::AuditKeys;

#[derive(Debug)]
pub struct CreateAuditKey {
    keys: Arc<AuditKeys>,
    audit: AuditLog,
}

impl CreateAuditKey {
    pub fn new(keys: Arc<AuditKeys>, audit: AuditLog) -> Self {
        Self { keys, audit }
    }
}

#[async_trait]
impl ProvisioningStep for CreateAuditKey {
    fn name(&self) -> &'static str {
        "create_audit_key"
    }

    async fn apply(&self, target: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
        let key_id = self
            .keys
            .ensure_tenant_key(&target.tenant)
            .await
            .map_err(|e| StepError::Transient(format!("cannot create the audit key: {e}")))?;
        Ok(Some(json!({ "key_id": key_id })))
    }

    async fn undo(&self, target: &StepTarget) -> Result<(), StepError> {
        let failed = |e: AuditError| {
            StepError::Transient(format!("cannot checkpoint the audit stream: {e}"))
        };
        // The key goes with the data key: the platform keeps the stream.
        let stream = StreamId::tenant(target.tenant.id.0);
        self.audit.hand_to_custodian(stream).await.map_err(failed)?;
        self.keys.forget(target.tenant.id.0);
        Ok(())
    }
}
