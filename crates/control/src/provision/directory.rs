//! `allocate_directory`: the tenant's own directory under the data
//! directory, mode 0700, where its embedded database, worker socket and logs
//! live.
//!
//! The directory is named after the tenant, so a leftover one (an older
//! tenant of the same name restored from a backup, files put there by hand)
//! could otherwise be adopted by a new tenant together with someone else's
//! data. A marker file holding the tenant's id settles whose it is: apply
//! claims only a directory that is empty or already marked with this id,
//! and undo removes only a directory marked with this id (or an empty one).

use std::{
    io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use async_trait::async_trait;
use bulkhead_model::TenantId;
use serde_json::json;

use super::{ProvisioningStep, StepError, StepTarget};
use crate::data_dir::write_private;

/// The file that says which tenant a directory is (`<id>`), and so that
/// it may be removed with the tenant.
pub const MARKER: &str = ".bulkhead-tenant";

#[derive(Debug, Clone, Copy)]
pub struct AllocateDirectory;

/// Whose a tenant directory is.
#[derive(Debug, PartialEq, Eq)]
pub enum Owner {
    Missing,
    /// Exists and holds nothing: claimable.
    Empty,
    Tenant(TenantId),
    Other(String),
    /// Has files but no marker: made by something else.
    Unknown,
}

/// Reads the directory's marker.
pub fn owner(dir: &Path, id: TenantId) -> io::Result<Owner> {
    match std::fs::read_to_string(dir.join(MARKER)) {
        Ok(marker) if marker.trim() == id.to_string() => Ok(Owner::Tenant(id)),
        Ok(marker) => Ok(Owner::Other(marker.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::read_dir(dir) {
            Ok(entries) => {
                // A crash while the marker was being written leaves its
                // temporary file: the directory is still unclaimed.
                let unclaimed = format!("{MARKER}.tmp");
                for entry in entries {
                    if entry?.file_name() != unclaimed.as_str() {
                        return Ok(Owner::Unknown);
                    }
                }
                Ok(Owner::Empty)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Owner::Missing),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

fn claim(dir: &Path, id: TenantId) -> Result<(), StepError> {
    let io_error = |e: io::Error| StepError::Transient(format!("{}: {e}", dir.display()));
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_error(e)),
        _ => {}
    }
    match owner(dir, id).map_err(io_error)? {
        Owner::Tenant(_) => Ok(()),
        Owner::Empty | Owner::Missing => {
            write_private(&dir.join(MARKER), format!("{id}\n").as_bytes()).map_err(io_error)
        }
        Owner::Other(other) => Err(StepError::Permanent(format!(
            "{} belongs to another tenant (id {other}); move it away, then delete this tenant \
             and create it again",
            dir.display()
        ))),
        Owner::Unknown => Err(StepError::Permanent(format!(
            "{} already exists and holds files that were not made for this tenant; move them \
             away, then delete this tenant and create it again",
            dir.display()
        ))),
    }
}

fn release(dir: &Path, id: TenantId) -> Result<(), StepError> {
    let io_error =
        |e: io::Error| StepError::Transient(format!("cannot remove {}: {e}", dir.display()));
    match owner(dir, id).map_err(io_error)? {
        Owner::Tenant(_) | Owner::Empty => std::fs::remove_dir_all(dir).map_err(io_error),
        // Not ours: leave it for whoever made it.
        Owner::Missing | Owner::Other(_) | Owner::Unknown => Ok(()),
    }
}

async fn blocking<T: Send + 'static>(
    dir: PathBuf,
    work: impl FnOnce(&Path) -> Result<T, StepError> + Send + 'static,
) -> Result<T, StepError> {
    tokio::task::spawn_blocking(move || work(&dir))
        .await
        .map_err(|e| StepError::Transient(format!("directory task failed: {e}")))?
}

#[async_trait]
impl ProvisioningStep for AllocateDirectory {
    fn name(&self) -> &'static str {
        "allocate_directory"
    }

    async fn apply(&self, target: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
        let id = target.tenant.id;
        blocking(target.tenant_dir.clone(), move |dir| claim(dir, id)).await?;
        Ok(Some(json!({ "path": target.tenant_dir })))
    }

    async fn undo(&self, target: &StepTarget) -> Result<(), StepError> {
        let id = target.tenant.id;
        blocking(target.tenant_dir.clone(), move |dir| release(dir, id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_only_what_is_free_or_its_own() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("acme");
        let (mine, theirs) = (TenantId::random(), TenantId::random());

        claim(&dir, mine).unwrap();
        claim(&dir, mine).unwrap();
        assert_eq!(owner(&dir, mine).unwrap(), Owner::Tenant(mine));
        let err = claim(&dir, theirs).unwrap_err();
        assert!(err.is_permanent() && err.to_string().contains("belongs to another tenant"));
        release(&dir, theirs).unwrap();
        assert!(dir.exists(), "undo leaves another tenant's directory alone");
        release(&dir, mine).unwrap();
        assert!(!dir.exists());
        release(&dir, mine).unwrap();

        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("data.db"), b"someone else's").unwrap();
        let err = claim(&dir, mine).unwrap_err();
        assert!(err.to_string().contains("holds files that were not made for this tenant"));
        release(&dir, mine).unwrap();
        assert!(dir.join("data.db").exists(), "undo leaves unknown files alone");

        // A crash between mkdir and the marker leaves an empty directory, or
        // one with the marker's temporary file: claimable, and removable by
        // undo.
        let empty = root.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        std::fs::write(empty.join(".bulkhead-tenant.tmp"), b"").unwrap();
        assert_eq!(owner(&empty, mine).unwrap(), Owner::Empty);
        release(&empty, mine).unwrap();
        assert!(!empty.exists());
        std::fs::create_dir(&empty).unwrap();
        std::fs::write(empty.join(".bulkhead-tenant.tmp"), b"").unwrap();
        claim(&empty, mine).unwrap();
        assert_eq!(owner(&empty, mine).unwrap(), Owner::Tenant(mine));
    }
}
