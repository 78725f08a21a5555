//! `allocate_directory`: the tenant's own directory under the data
//! directory, mode 0700, where its embedded database, worker socket and logs
//! live.

use std::{io, os::unix::fs::DirBuilderExt};

use async_trait::async_trait;
use serde_json::json;

use super::{ProvisioningStep, StepError, StepTarget};

#[derive(Debug, Clone, Copy)]
pub struct AllocateDirectory;

#[async_trait]
impl ProvisioningStep for AllocateDirectory {
    fn name(&self) -> &'static str {
        "allocate_directory"
    }

    async fn apply(&self, target: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
        let path = target.tenant_dir.clone();
        let result = tokio::task::spawn_blocking(move || {
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
                other => other,
            }
        })
        .await
        .map_err(|e| StepError::Transient(format!("directory task failed: {e}")))?;
        result.map_err(|e| {
            StepError::Transient(format!("cannot create {}: {e}", target.tenant_dir.display()))
        })?;
        Ok(Some(json!({ "path": target.tenant_dir })))
    }

    async fn undo(&self, target: &StepTarget) -> Result<(), StepError> {
        match tokio::fs::remove_dir_all(&target.tenant_dir).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StepError::Transient(format!(
                "cannot remove {}: {e}",
                target.tenant_dir.display()
            ))),
            _ => Ok(()),
        }
    }
}
