//! Where archives are kept: a local directory or S3-compatible storage,
//! through `object_store`, under one prefix per tenant.
//!
//! ```text
//! <root>/tenants/<tenant-id>/<backup-id>.age    the archive
//! <root>/tenants/<tenant-id>/<backup-id>.json   its listing, written last
//! ```
//!
//! A backup is listed only once its listing exists, and the listing is
//! written only after the archive's upload completed: an upload cut short
//! (the store unreachable, the process killed) leaves at most an incomplete
//! multipart upload or a staged file, which S3 and the local store never
//! show as an object, and never a listed backup. The prefix is the tenant's
//! id, not its name: a name is released when a tenant leaves and may be
//! taken by another, an id never is, so a bucket policy on the prefix keeps
//! one tenant's backups from every other's.

use std::{
    fmt,
    io::{self, Read, Write},
    os::unix::fs::DirBuilderExt,
    path::PathBuf,
    sync::Arc,
};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart, aws::AmazonS3Builder,
    local::LocalFileSystem, path::Path,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{About, BackupError, Manifest, Part, archive};

/// Uploads go in parts of this size; at most [`UPLOADS_IN_FLIGHT`] at
/// once, so a backup holds about 16 MiB in memory whatever its size.
const CHUNK: usize = 8 << 20;
const UPLOADS_IN_FLIGHT: usize = 2;
/// Chunks queued between the archive writer and the upload.
const QUEUED: usize = 2;

/// Where backups are kept, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on this machine (the default: `<data-dir>/backups`).
    Directory(PathBuf),
    /// `s3://bucket[/prefix]`; credentials, region and endpoint come from
    /// the standard `AWS_*` environment variables unless given here.
    S3 { url: String, endpoint: Option<String>, region: Option<String>, key: Option<S3Key> },
}

/// An S3 access key given in place of the environment's.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Key {
    pub id: String,
    pub secret: zeroize::Zeroizing<String>,
}

impl fmt::Debug for S3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Key").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Location {
    /// `s3://bucket/prefix`, or a directory path.
    pub fn parse(
        text: &str,
        endpoint: Option<String>,
        region: Option<String>,
    ) -> Result<Self, BackupError> {
        if text.contains("://") {
            if !text.starts_with("s3://") {
                return Err(BackupError::Storage(format!(
                    "{text:?} is not a backup store: use a directory or s3://bucket/prefix"
                )));
            }
            let (bucket, _) = s3_bucket(text);
            if bucket.is_empty() {
                return Err(BackupError::Storage(format!(
                    "{text:?} names no bucket: use s3://bucket/prefix"
                )));
            }
            return Ok(Location::S3 { url: text.to_owned(), endpoint, region, key: None });
        }
        if endpoint.is_some() || region.is_some() {
            return Err(BackupError::Storage(
                "an endpoint or region is for an s3:// backup store, not a directory".to_owned(),
            ));
        }
        Ok(Location::Directory(PathBuf::from(text)))
    }
}

/// What a backup's listing says: its manifest (no secret in it), and what
/// the store needs to find and check the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub id: String,
    /// What made it: `manual`, `scheduled`, `final`.
    pub kind: String,
    /// The archive's size in bytes.
    pub size: u64,
    /// The age recipient the archive is encrypted to.
    pub recipient: String,
    pub manifest: Manifest,
}

/// The configured store, with the prefix everything is kept under.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    root: Path,
    describe: String,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage").field("at", &self.describe).finish_non_exhaustive()
    }
}

impl Storage {
    /// Opens the store; a directory is made (0700) if missing.
    pub fn open(location: &Location) -> Result<Self, BackupError> {
        match location {
            Location::Directory(dir) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| BackupError::Storage(format!("{}: {e}", dir.display())))?;
                let store = LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| BackupError::Storage(format!("{}: {e}", dir.display())))?;
                Ok(Self {
                    store: Arc::new(store),
                    root: Path::default(),
                    describe: dir.display().to_string(),
                })
            }
            Location::S3 { url, endpoint, region, key } => {
                let (bucket, prefix) = s3_bucket(url);
                if bucket.is_empty() {
                    return Err(BackupError::Storage(format!(
                        "{url:?} names no bucket: use s3://bucket/prefix"
                    )));
                }
                // A few retries of a failed request, not object_store's ten
                // over three minutes: an outage should fail a backup (which
                // the scheduler retries with backoff) and a listing soon.
                let retry = object_store::RetryConfig {
                    max_retries: 3,
                    retry_timeout: std::time::Duration::from_secs(30),
                    ..Default::default()
                };
                let mut builder =
                    AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry);
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(region) = region {
                    builder = builder.with_region(region);
                }
                if let Some(key) = key {
                    builder = builder
                        .with_access_key_id(&key.id)
                        .with_secret_access_key(key.secret.as_str());
                }
                let store = builder.build().map_err(|e| BackupError::Storage(e.to_string()))?;
                let root = Path::parse(prefix.trim_end_matches('/')).map_err(|e| {
                    BackupError::Storage(format!("{url:?} has an invalid prefix: {e}"))
                })?;
                Ok(Self { store: Arc::new(store), root, describe: url.clone() })
            }
        }
    }

    /// Removes what uploads cut short by a crash left in a directory store
    /// (object_store stages each as `<name>#<n>` beside its object, never
    /// listed); S3 keeps such parts as incomplete multipart uploads, which
    /// a bucket lifecycle rule expires. Returns how many it removed.
    pub fn remove_interrupted(location: &Location) -> std::io::Result<u64> {
        let Location::Directory(dir) = location else { return Ok(0) };
        let mut removed = 0;
        let mut stack = vec![dir.join("tenants")];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    stack.push(entry.path());
                    continue;
                }
                let name = entry.file_name();
                let staged = name
                    .to_str()
                    .and_then(|n| n.rsplit_once('#'))
                    .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if staged {
                    std::fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Where the store is, for messages and `/v1/status`.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn tenant_dir(&self, tenant: Uuid) -> Path {
        self.root.clone().join("tenants").join(tenant.to_string())
    }

    fn archive_path(&self, tenant: Uuid, id: &str) -> Path {
        self.tenant_dir(tenant).join(format!("{id}.age"))
    }

    fn listing_path(&self, tenant: Uuid, id: &str) -> Path {
        self.tenant_dir(tenant).join(format!("{id}.json"))
    }

    /// Writes the archive of `parts` for `about.tenant_id`, encrypted to
    /// `recipient`, as backup `id`, then its listing. On any failure the
    /// upload is aborted and nothing is listed.
    pub async fn put(
        &self,
        id: &str,
        kind: &str,
        recipient: &str,
        about: About,
        parts: Vec<Part<'static>>,
    ) -> Result<Listing, BackupError> {
        check_id(id)?;
        let tenant = about.tenant_id;
        let path = self.archive_path(tenant, id);
        let upload = self.store.put_multipart(&path).await.map_err(unreachable)?;
        let mut upload = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUED);
        let owned_recipient = recipient.to_owned();
        let writer = tokio::task::spawn_blocking(move || {
            let out = io::BufWriter::with_capacity(1 << 20, ChannelWriter(tx));
            archive::write(out, &owned_recipient, about, parts)
        });
        let mut size = 0u64;
        let mut sent = Ok(());
        while let Some(chunk) = rx.recv().await {
            if let Err(e) = upload.wait_for_capacity(UPLOADS_IN_FLIGHT).await {
                sent = Err(unreachable(e));
                break;
            }
            size += chunk.len() as u64;
            upload.put(chunk);
        }
        // Dropping the receiver makes a writer still running fail.
        drop(rx);
        let written = writer
            .await
            .map_err(|e| BackupError::Storage(format!("the archive writer stopped: {e}")))
            .and_then(|written| written);
        let manifest = match (sent, written) {
            (Ok(()), Ok(manifest)) => manifest,
            (Err(e), _) | (Ok(()), Err(e)) => {
                // The store may be what failed: the abort is best effort,
                // and an upload left behind is never listed.
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(error = %abort, "cannot abort a failed backup upload");
                }
                return Err(e);
            }
        };
        upload.finish().await.map_err(unreachable)?;
        let listing = Listing {
            id: id.to_owned(),
            kind: kind.to_owned(),
            size,
            recipient: recipient.to_owned(),
            manifest,
        };
        let json = serde_json::to_vec_pretty(&listing)
            .map_err(|e| BackupError::Storage(format!("listing: {e}")))?;
        let listing_path = self.listing_path(tenant, id);
        if let Err(e) = self.store.put(&listing_path, PutPayload::from(json)).await {
            // Unlisted, the archive would only take room.
            let _ = self.store.delete(&path).await;
            return Err(unreachable(e));
        }
        Ok(listing)
    }

    /// The tenant's backups, oldest first.
    pub async fn list(&self, tenant: Uuid) -> Result<Vec<Listing>, BackupError> {
        let prefix = self.tenant_dir(tenant);
        let mut objects = self.store.list(Some(&prefix));
        let mut listings = Vec::new();
        while let Some(object) = objects.next().await {
            let object = object.map_err(unreachable)?;
            let Some(name) = object.location.filename() else { continue };
            let Some(id) = name.strip_suffix(".json") else { continue };
            if let Some(listing) = self.get(tenant, id).await? {
                listings.push(listing);
            }
        }
        // Ids begin with their UTC time, so they sort by it.
        listings.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(listings)
    }

    /// The listing of backup `id`, or `None` if there is none.
    pub async fn get(&self, tenant: Uuid, id: &str) -> Result<Option<Listing>, BackupError> {
        if check_id(id).is_err() {
            return Ok(None);
        }
        let bytes = match self.store.get(&self.listing_path(tenant, id)).await {
            Ok(result) => result.bytes().await.map_err(unreachable)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(unreachable(e)),
        };
        let listing: Listing = serde_json::from_slice(&bytes).map_err(|e| {
            BackupError::Storage(format!("the listing of backup {id} is damaged: {e}"))
        })?;
        // A listing copied under another tenant's prefix is not that
        // tenant's backup.
        if listing.id != id || listing.manifest.about.tenant_id != tenant {
            return Err(BackupError::Storage(format!(
                "the listing of backup {id} belongs to another backup"
            )));
        }
        Ok(Some(listing))
    }

    /// Removes backup `id`: its listing first, so a failure halfway leaves
    /// an unlisted archive, never a listed backup without one.
    pub async fn delete(&self, tenant: Uuid, id: &str) -> Result<bool, BackupError> {
        if self.get(tenant, id).await?.is_none() {
            return Ok(false);
        }
        self.store.delete(&self.listing_path(tenant, id)).await.map_err(unreachable)?;
        match self.store.delete(&self.archive_path(tenant, id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(unreachable(e)),
        }
    }

    /// Deletes every object under the tenant's prefix (its backups, their
    /// listings, whatever a cut upload left); returns how many.
    pub async fn delete_all(&self, tenant: Uuid) -> Result<u64, BackupError> {
        let prefix = self.tenant_dir(tenant);
        let mut objects = self.store.list(Some(&prefix));
        let mut deleted = 0;
        while let Some(object) = objects.next().await {
            let object = object.map_err(unreachable)?;
            match self.store.delete(&object.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(unreachable(e)),
            }
        }
        Ok(deleted)
    }

    /// Reads archive `id` as a blocking reader (for [`crate::verify`] on a
    /// blocking thread), fetched as it is read.
    pub async fn read(&self, tenant: Uuid, id: &str) -> Result<ArchiveReader, BackupError> {
        check_id(id)?;
        let result = match self.store.get(&self.archive_path(tenant, id)).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(BackupError::Storage(format!("backup {id} has no archive")));
            }
            Err(e) => return Err(unreachable(e)),
        };
        let stream =
            result.into_stream().map(|chunk| chunk.map_err(|e| io::Error::other(e.to_string())));
        Ok(ArchiveReader::new(stream))
    }
}

/// The bucket and prefix of `s3://bucket/prefix`.
fn s3_bucket(url: &str) -> (&str, &str) {
    let rest = url.strip_prefix("s3://").unwrap_or(url);
    rest.split_once('/').unwrap_or((rest, ""))
}

/// A backup id: `YYYYMMDDTHHMMSSZ-` and eight hex digits, so that ids sort
/// by time and none can name a path.
pub fn new_id(now: &time::OffsetDateTime) -> String {
    let random = Uuid::new_v4().simple().to_string();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        &random[..8]
    )
}

fn check_id(id: &str) -> Result<(), BackupError> {
    let valid = (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !id.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err(BackupError::Storage(format!(
            "{id:?} is not a backup id (see `bulkhead backups list`)"
        )))
    }
}

fn unreachable(error: object_store::Error) -> BackupError {
    BackupError::Storage(format!("the backup store failed: {error}"))
}

/// The archive writer's end of the upload: each write becomes a chunk
/// handed to the async side, waiting while the queue is full.
struct ChannelWriter(mpsc::Sender<Bytes>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Bytes::copy_from_slice(buf))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An archive as it is downloaded, for a blocking reader.
#[derive(Debug)]
pub struct ArchiveReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
}

impl ArchiveReader {
    /// Reads `stream` (an archive being downloaded or uploaded) on a task
    /// of its own, a few chunks ahead of the reader.
    pub fn new(
        mut stream: impl futures_util::Stream<Item = io::Result<Bytes>> + Send + Unpin + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUED);
        tokio::spawn(async move {
            while let Some(chunk) = stream.next().await {
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        });
        Self { rx, chunk: Bytes::new() }
    }
}

impl Read for ArchiveReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
