//! Bulkhead's backups: one tenant's data as one archive, encrypted to that
//! tenant's own age recipient, and verified without restoring.
//!
//! An archive (format [`FORMAT_VERSION`]) is an age file (X25519), so the
//! standard `age` tool decrypts it with the tenant's key. Its plaintext is
//! a tar stream:
//!
//! 1. `FORMAT`: the format version, first, so that a reader of an older
//!    version stops before reading anything else;
//! 2. `parts/<name>`: each part (a database dump, the sealed secrets, the
//!    audit export, ...), streamed as it is read;
//! 3. `manifest.json`: last, so that it can hold every part's size and
//!    SHA-256 while the parts stream through; [`verify`] computes them
//!    again.
//!
//! Nothing is held in memory but a part's copy buffer: writing and
//! verifying stay flat whatever the tenant's size. age authenticates the
//! stream in 64 KiB chunks, so a changed or missing byte is found in the
//! part that holds it.

mod archive;

pub use archive::{About, FORMAT_VERSION, Manifest, Part, PartEntry, verify, write};

use thiserror::Error;

/// Why an archive could not be written or verified; each names what and,
/// where it can, which part.
#[derive(Debug, Error)]
pub enum BackupError {
    #[error("not a Bulkhead backup: {0}")]
    NotABackup(String),
    #[error("this key does not open the backup (it was encrypted to another recipient)")]
    WrongKey,
    #[error(
        "the backup is format {found}, newer than this version reads ({supported}); restore it with a newer bulkhead"
    )]
    NewerFormat { found: u32, supported: u32 },
    #[error("part {part:?} is damaged or cut short: {reason}")]
    Corrupt { part: String, reason: String },
    #[error("the backup ends before its manifest: it was cut short")]
    Truncated,
    #[error("part {part:?} changed while it was read: {declared} bytes announced, {read} read")]
    PartChanged { part: String, declared: u64, read: u64 },
    #[error(
        "{0:?} is not a part name; use 1 to 64 characters of a-z, 0-9, '-', '_' and '.', not starting with '.'"
    )]
    InvalidName(String),
    #[error("backup I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A new backup key pair: the identity (`AGE-SECRET-KEY-1...`, to be sealed
/// by the vault) and its recipient (`age1...`, what archives are encrypted
/// to).
pub fn generate_key() -> (zeroize::Zeroizing<String>, String) {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    (zeroize::Zeroizing::new(identity.to_string().expose_secret().to_owned()), recipient)
}
