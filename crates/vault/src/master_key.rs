//! The master key's file: read with its permissions checked, written with
//! mode 0600 and fsync, replaced atomically when the key rotates.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use zeroize::Zeroizing;

use crate::{
    VaultError,
    kek::{KeyRole, LocalKey},
};

/// Where the master key comes from.
#[derive(Clone)]
pub enum MasterKeySource {
    /// A key file; with `create`, a missing file is generated (only when
    /// the store has no data keys yet, so that a lost key is never silently
    /// replaced).
    File { path: PathBuf, create: bool },
    /// The key's text itself, from the environment. Such a key cannot be
    /// rotated by Bulkhead, which has nowhere to write the new one.
    Inline(Zeroizing<String>),
}

impl std::fmt::Debug for MasterKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MasterKeySource::File { path, create } => {
                f.debug_struct("File").field("path", path).field("create", create).finish()
            }
            MasterKeySource::Inline(_) => f.write_str("Inline(..)"),
        }
    }
}

/// The file a rotation writes the new key to before it becomes the key.
pub fn next_path(path: &Path) -> PathBuf {
    let mut next = path.as_os_str().to_owned();
    next.push(".next");
    PathBuf::from(next)
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> VaultError {
    VaultError::MasterKeyFile { path: path.display().to_string(), reason: reason.to_string() }
}

/// Reads a key file, refusing one that others can read.
pub fn read_key_file(path: &Path, role: KeyRole) -> Result<LocalKey, VaultError> {
    let mut file = File::open(path).map_err(|e| file_error(path, e))?;
    let mode = file.metadata().map_err(|e| file_error(path, e))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(file_error(
            path,
            format!(
                "it is readable by other users (mode {:o}); run `chmod 600 {}`",
                mode & 0o777,
                path.display()
            ),
        ));
    }
    // From the handle whose mode was checked, not the path again.
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(|e| file_error(path, e))?;
    LocalKey::parse(role, &text).map_err(|e| file_error(path, e))
}

/// Writes a new key file with mode 0600; fails if the file exists. The key
/// is written to `<path>.tmp` and renamed into place, so a crash never
/// leaves a truncated key file behind.
pub fn write_key_file(path: &Path, key: &LocalKey) -> Result<(), VaultError> {
    if path.exists() {
        return Err(file_error(path, "it exists already; it is never overwritten"));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A leftover from a crash holds a key nothing was ever wrapped with.
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| file_error(&tmp, e))?;
    file.write_all(key.to_text().as_bytes()).map_err(|e| file_error(&tmp, e))?;
    file.sync_all().map_err(|e| file_error(&tmp, e))?;
    replace_key_file(&tmp, path)
}

/// Makes `from` the file at `to`, atomically, and makes the rename durable.
pub fn replace_key_file(from: &Path, to: &Path) -> Result<(), VaultError> {
    fs::rename(from, to).map_err(|e| file_error(to, e))?;
    sync_parent(to)
}

fn sync_parent(path: &Path) -> Result<(), VaultError> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent).and_then(|dir| dir.sync_all()).map_err(|e| file_error(parent, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kek::KeyEncryptionKey;

    #[test]
    fn writes_0600_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = LocalKey::generate(KeyRole::Master).unwrap();
        write_key_file(&path, &key).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_key_file(&path, KeyRole::Master).unwrap().id(), key.id());
        // Never overwrites.
        assert!(write_key_file(&path, &key).is_err());
    }

    #[test]
    fn refuses_a_key_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        write_key_file(&path, &LocalKey::generate(KeyRole::Master).unwrap()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_key_file(&path, KeyRole::Master).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
