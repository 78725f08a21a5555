//! Exclusive locks that keep two control planes off the same state.

use std::{fmt, fs::File, io, path::Path};

use async_trait::async_trait;

/// A lock held for as long as a server runs.
#[async_trait]
pub trait HeldLock: Send + Sync {
    /// Whether the lock is still held. A lost lock is not taken again: the
    /// server that lost it must stop, since another may now hold it.
    async fn still_held(&mut self) -> bool;
}

/// The store's lock, from [`crate::ControlStore::lock_exclusive`]. Dropping
/// it releases the lock.
pub struct StoreLock {
    pub(crate) held: Box<dyn HeldLock>,
}

impl StoreLock {
    pub async fn still_held(&mut self) -> bool {
        self.held.still_held().await
    }
}

impl fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreLock")
    }
}

/// An advisory lock on a file (`flock`), released by the kernel when the
/// process exits, however it exits.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

#[derive(Debug)]
pub enum FileLockError {
    /// Another process holds it.
    Held,
    Io(io::Error),
}

impl FileLock {
    pub fn acquire(path: &Path) -> Result<Self, FileLockError> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(FileLockError::Io)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(FileLockError::Held),
            Err(std::fs::TryLockError::Error(e)) => Err(FileLockError::Io(e)),
        }
    }
}

#[async_trait]
impl HeldLock for FileLock {
    async fn still_held(&mut self) -> bool {
        true
    }
}
