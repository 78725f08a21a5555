//! The data directory: checked before anything else starts, and locked for
//! as long as the server runs.

use std::{
    fs::{self, DirBuilder, File},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use bulkhead_store::{FileLock, FileLockError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DataDirError {
    #[error(
        "data directory {path} cannot be used: {source}; choose another with --data-dir \
         (or BULKHEAD_DATA_DIR) or fix its permissions"
    )]
    Unusable {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("data directory {path} is in use by another bulkhead server")]
    InUse { path: String },
    #[error(
        "data directory {path} belongs to another control store ({recorded}), not to {given}: \
         its tenants' files and keys are that store's. Start with the store it belongs to \
         ({hint}), or give this store a data directory of its own with --data-dir"
    )]
    OtherStore { path: String, recorded: String, given: String, hint: String },
}

/// `<data-dir>/`, owned by this server while it runs.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: FileLock,
}

impl DataDir {
    /// Creates the directory (mode 0700) if needed, proves it is writable by
    /// writing to it, and takes its lock.
    pub fn open(path: &Path) -> Result<Self, DataDirError> {
        let unusable =
            |source: io::Error| DataDirError::Unusable { path: path.display().to_string(), source };
        DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(unusable)?;
        // It holds credentials and every tenant's files: like PostgreSQL's
        // data directory, nobody else may look in.
        let mode = fs::metadata(path).map_err(unusable)?.permissions().mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(unusable)?;
            tracing::warn!(path = %path.display(), "data directory was open to others; narrowed it to mode 0700");
        }
        let probe = path.join(".write-probe");
        write_private(&probe, b"bulkhead").map_err(unusable)?;
        fs::remove_file(&probe).map_err(unusable)?;

        let lock = match FileLock::acquire(&path.join("bulkhead.lock")) {
            Ok(lock) => lock,
            Err(FileLockError::Held) => {
                return Err(DataDirError::InUse { path: path.display().to_string() });
            }
            Err(FileLockError::Io(e)) => return Err(unusable(e)),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path.join("tenants"))
            .map_err(unusable)?;
        Ok(Self { path: path.to_owned(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<data-dir>/tenants`, where each tenant gets a directory of its own.
    pub fn tenants(&self) -> PathBuf {
        self.path.join("tenants")
    }

    pub fn operator_token(&self) -> PathBuf {
        self.path.join("operator.token")
    }

    /// Where the server writes the URL its API actually listens on, so that
    /// client commands on this machine find it without flags.
    pub fn api_url(&self) -> PathBuf {
        self.path.join("api.url")
    }

    /// Binds the directory to the control store `store` (its installation
    /// id, and where it is, in `<data-dir>/store.json`), or refuses a
    /// directory bound to another one. A directory from before the binding
    /// existed is bound now, unless it holds an embedded store's file and
    /// `store` is not that file.
    pub fn bind_store(
        &self,
        id: uuid::Uuid,
        location: &bulkhead_store::StoreLocation,
    ) -> Result<(), DataDirError> {
        let file = self.path.join("store.json");
        let given = location.to_string();
        let unusable = |source: io::Error| DataDirError::Unusable {
            path: self.path.display().to_string(),
            source,
        };
        let other = |recorded: String| DataDirError::OtherStore {
            path: self.path.display().to_string(),
            hint: if recorded.starts_with("sqlite://") {
                "without --store, for the embedded one".to_owned()
            } else {
                format!("--store {recorded}")
            },
            recorded,
            given: given.clone(),
        };
        match fs::read_to_string(&file) {
            Ok(text) => {
                let recorded: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                if recorded["id"].as_str() == Some(id.to_string().as_str()) {
                    return Ok(());
                }
                let place = recorded["store"].as_str().unwrap_or("an unknown store");
                return Err(other(place.to_owned()));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(unusable(e)),
        }
        let embedded = self.path.join("bulkhead.db");
        // The same file however it is spelt (relative, through a link).
        let canonical = |path: &Path| fs::canonicalize(path).ok();
        let this_file = matches!(location, bulkhead_store::StoreLocation::Sqlite(path)
            if canonical(path).is_some() && canonical(path) == canonical(&embedded));
        if embedded.exists() && !this_file {
            return Err(other(format!("sqlite://{}", embedded.display())));
        }
        let binding = serde_json::json!({ "id": id, "store": given });
        write_private(&file, binding.to_string().as_bytes()).map_err(unusable)
    }
}

/// Writes `contents` to `path` with mode 0600, atomically: a crash leaves
/// either the old file or the new one, never half of either.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let written = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, path));
    // Only a crash leaves the temporary file: readers may take it as a
    // sign that a write was under way.
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Narrows a file that should be private back to mode 0600, and says
/// whether it had to.
pub fn make_private(path: &Path) -> io::Result<bool> {
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o077 == 0 {
        return Ok(false);
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(true)
}
