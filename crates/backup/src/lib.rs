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
mod storage;

pub use archive::{About, FORMAT_VERSION, Manifest, Part, PartEntry, read_parts, verify, write};
pub use storage::{ArchiveReader, Listing, Location, S3Key, Storage, new_id};

use thiserror::Error;

/// Why an archive could not be written or verified; each names what and,
/// where it can, which part.
#[derive(Debug, Error)]
pub enum BackupError {
    #[error("not a Bulkhead backup: {0}")]
    NotABackup(String),
    /// A recipient or identity that is not an age X25519 key.
    #[error("{0}")]
    InvalidKey(String),
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
    /// The backup store is unreachable, refused, or holds something else.
    #[error("{0}")]
    Storage(String),
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

/// The recipient (`age1...`) of an identity (`AGE-SECRET-KEY-1...`).
pub fn recipient_of(identity: &str) -> Result<String, BackupError> {
    let identity: age::x25519::Identity = identity.trim().parse().map_err(|e: &str| {
        BackupError::InvalidKey(format!(
            "the key is not an age identity (AGE-SECRET-KEY-1...): {e}"
        ))
    })?;
    Ok(identity.to_public().to_string())
}

/// Checks that `text` is an age X25519 recipient (`age1...`).
pub fn check_recipient(text: &str) -> Result<(), BackupError> {
    text.parse::<age::x25519::Recipient>().map(|_| ()).map_err(|e: &str| {
        BackupError::InvalidKey(format!(
            "{text:?} is not an age X25519 recipient (age1...; `age-keygen -y KEYFILE` prints one): {e}"
        ))
    })
}

/// Opens `path` without following a link at its last component, and
/// checks where the opened file really is (by its descriptor, so a link
/// swapped in for a directory on the way is caught too): inside `root`.
fn open_inside(
    root: &std::path::Path,
    path: &std::path::Path,
    directory: bool,
) -> Result<Option<std::fs::File>, BackupError> {
    use std::os::unix::{fs::OpenOptionsExt, io::AsRawFd};
    let mut flags = libc::O_NOFOLLOW | libc::O_CLOEXEC;
    if directory {
        flags |= libc::O_DIRECTORY;
    }
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(file) => file,
        // A link, or something that went meanwhile: not the tenant's file.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR | libc::ENOENT)) => {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
    Ok(real.starts_with(root).then_some(file))
}

/// Packs the regular files and directories under `dir` into a tar file at
/// `dest`, leaving out the top-level entries named in `skip` and anything
/// that is neither (links, sockets, devices). The tenant's own processes
/// may change the directory while it is packed, swapping a file for a
/// link to another's: every file is opened without following links and
/// checked to be inside `dir` by its descriptor before a byte of it is
/// read. Returns the tar's size.
pub fn pack_dir(
    dir: &std::path::Path,
    dest: &std::path::Path,
    skip: &[&str],
) -> Result<u64, BackupError> {
    let root = std::fs::canonicalize(dir)?;
    let out = std::fs::File::create_new(dest)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(out));
    let mut stack = vec![std::path::PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let Some(opened) = open_inside(&root, &root.join(&relative), true)? else { continue };
        // Read through the descriptor: the directory opened and checked.
        use std::os::unix::io::AsRawFd;
        let listing = std::fs::read_dir(format!("/proc/self/fd/{}", opened.as_raw_fd()))?;
        for entry in listing {
            let entry = entry?;
            let name = relative.join(entry.file_name());
            if relative.as_os_str().is_empty()
                && skip.iter().any(|s| entry.file_name() == std::ffi::OsStr::new(s))
            {
                continue;
            }
            let path = root.join(&name);
            let kind = entry.file_type()?;
            if kind.is_dir() {
                if open_inside(&root, &path, true)?.is_some() {
                    let mut header = tar::Header::new_gnu();
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o700);
                    header.set_size(0);
                    tar.append_data(&mut header, &name, std::io::empty())?;
                    stack.push(name);
                }
            } else if kind.is_file()
                && let Some(mut file) = open_inside(&root, &path, false)?
            {
                let metadata = file.metadata()?;
                if !metadata.is_file() {
                    continue;
                }
                let mut header = tar::Header::new_gnu();
                header.set_metadata(&metadata);
                tar.append_data(&mut header, &name, &mut file)?;
            }
        }
    }
    let out = tar.into_inner()?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// Unpacks a tar made by [`pack_dir`] into `dir`: regular files and
/// directories only, each inside `dir` and none of the top-level names in
/// `skip` (an archive brought from elsewhere may hold anything, and a
/// link, a `..` or a file in place of the tenant's database must not be
/// written). Returns how many files it wrote.
pub fn unpack_dir(
    tar: &std::path::Path,
    dir: &std::path::Path,
    skip: &[&str],
) -> Result<u64, BackupError> {
    let mut archive = tar::Archive::new(std::io::BufReader::new(std::fs::File::open(tar)?));
    archive.set_preserve_permissions(false);
    let mut files = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir()) {
            continue;
        }
        let path = entry.path()?.into_owned();
        let top = path.components().next().map(|c| c.as_os_str().to_owned());
        if top.is_some_and(|top| skip.iter().any(|s| top == std::ffi::OsStr::new(s))) {
            continue;
        }
        // `unpack_in` refuses a path that would leave `dir`.
        if entry.unpack_in(dir)? && kind.is_file() {
            files += 1;
        }
    }
    Ok(files)
}
