//! Bulkhead's vault: every tenant's secrets and keys encrypted under that
//! tenant's own data key, database credentials handed out briefly and
//! narrowly, keys rotated without downtime and destroyed at offboarding.
//!
//! The key hierarchy (see `docs/security.md`):
//!
//! ```text
//! master key (KeyEncryptionKey: <data-dir>/master.key, or a KMS later)
//!   └─ tenant data key v1, v2, … (random, wrapped; or wrapped by the tenant's own key)
//!        └─ secret values, realm signing keys, audit keys, backup keys
//! ```
//!
//! Plaintext keys and values exist only in [`zeroize::Zeroizing`] buffers
//! for the length of one call; nothing here logs or serialises them.

pub mod anomaly;
pub mod envelope;
pub mod kek;
pub mod leases;
pub mod master_key;
pub mod path;
pub mod ttl;
mod vault;

use bulkhead_store::StoreError;
use thiserror::Error;

pub use anomaly::{AnomalyDetector, AnomalyPolicy, Verdict};
pub use kek::{KeyEncryptionKey, KeyRole, LocalKey};
pub use master_key::MasterKeySource;
pub use path::{MAX_VALUE_BYTES, SecretPath};
pub use vault::{KeyStatus, MasterRotation, StoredSecret, TenantKeyChange, Vault};

#[derive(Debug, Error)]
pub enum VaultError {
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("{0}")]
    InvalidPath(String),
    #[error("{0}")]
    InvalidValue(String),
    #[error(
        "the secret value is {size} bytes; the largest a secret may be is {max} bytes (64 KiB)"
    )]
    ValueTooLarge { size: usize, max: usize },
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("encryption failed")]
    Encrypt,
    /// A ciphertext that is damaged, or sealed under another key or place.
    #[error("cannot decrypt: the ciphertext is damaged or does not belong here")]
    Decrypt,
    /// A wrapped data key that its key-encryption key does not open.
    #[error("cannot unwrap the data key: it is damaged or was wrapped by another key")]
    Unwrap,
    #[error(
        "the tenant has no data key: it was destroyed when the tenant was purged \
         (crypto-shredding), or the tenant was never provisioned"
    )]
    NoDataKey,
    #[error(
        "the tenant's data keys are wrapped by its own key ({kek_id}), which this server does \
         not hold; load it with `bulkhead vault tenant-key --tenant <name> --key-file <file>`"
    )]
    Sealed { kek_id: String },
    #[error(
        "this key ({given}) is not the one the tenant's data keys are wrapped with ({expected})"
    )]
    WrongTenantKey { given: String, expected: String },
    #[error("data key {kek_id} is wrapped by a key this server does not have")]
    UnknownKek { kek_id: String },
    #[error("{0}")]
    SecretNotFound(String),
    #[error("{0}")]
    Corrupt(String),
    #[error(
        "the master key ({loaded}) is not the one this store's data keys are wrapped with \
         ({recorded}); start with the right key (--master-key-file or BULKHEAD_MASTER_KEY). \
         Nothing was changed"
    )]
    WrongMasterKey { loaded: String, recorded: String },
    #[error(
        "the master key file {path} is missing, but this store's data keys are wrapped by master \
         key {recorded}; restore that file from your backup (or give it with --master-key-file). \
         Nothing was changed"
    )]
    MasterKeyMissing { path: String, recorded: String },
    #[error("master key file {path}: {reason}")]
    MasterKeyFile { path: String, reason: String },
    #[error("{0}")]
    RotationUnavailable(String),
    #[error("{0}")]
    Database(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
