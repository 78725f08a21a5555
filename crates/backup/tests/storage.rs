//! Backups kept in a local directory and in S3-compatible storage: a real
//! S3 server (moto's, see `bulkhead_testkit::s3`). Each test checks what a listed backup is, that an upload which
//! fails halfway is never listed, and that one tenant's prefix holds only
//! that tenant's backups.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    io::{self, Read},
    process::Child,
};

use bulkhead_backup::{About, BackupError, Location, Part, S3Key, Storage, generate_key, verify};
use bulkhead_testkit::s3::{ACCESS_KEY, S3Server};
use uuid::Uuid;

fn about(tenant: Uuid) -> About {
    About {
        tenant: "acme".into(),
        tenant_id: tenant,
        plan: "starter".into(),
        created_at: "2026-12-04T18:00:00Z".into(),
        schemas: BTreeMap::new(),
    }
}

/// `size` bytes of a pattern that does not compress, in several upload
/// chunks.
fn big_part(name: &str, size: u64) -> Part<'static> {
    let reader = Xorshift { left: size, state: 0x2545_f491_4f6c_dd1d };
    Part { name: name.into(), size, reader: Box::new(reader) }
}

struct Xorshift {
    left: u64,
    state: u64,
}

impl Read for Xorshift {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.left as usize);
        for byte in &mut buf[..n] {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *byte = self.state as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads `good` bytes, then fails: a part that cannot be read to its end.
struct FailsAfter {
    good: u64,
}

impl Read for FailsAfter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.good == 0 {
            return Err(io::Error::other("the disk went away"));
        }
        let n = buf.len().min(self.good as usize);
        buf[..n].fill(7);
        self.good -= n as u64;
        Ok(n)
    }
}

async fn round_trip(storage: &Storage) {
    let (identity, recipient) = generate_key();
    let acme = Uuid::new_v4();
    let globex = Uuid::new_v4();
    let small: &'static [u8] = b"acme's rows";
    let parts = vec![
        Part { name: "data.db".into(), size: small.len() as u64, reader: Box::new(small) },
        big_part("app.tar", 20 << 20),
    ];
    let listing = storage
        .put("20261204T180000Z-aaaaaaaa", "manual", &recipient, about(acme), parts)
        .await
        .unwrap();
    assert!(listing.size > 20 << 20, "{listing:?}");
    assert_eq!(listing.manifest.parts.len(), 2);
    let other = vec![Part { name: "data.db".into(), size: 3, reader: Box::new(&b"gx!"[..]) }];
    storage
        .put("20261204T170000Z-bbbbbbbb", "manual", &recipient, about(globex), other)
        .await
        .unwrap();

    let listed = storage.list(acme).await.unwrap();
    assert_eq!(listed, vec![listing.clone()], "only acme's backup is under acme's prefix");
    assert_eq!(storage.get(acme, "20261204T170000Z-bbbbbbbb").await.unwrap(), None);
    assert_eq!(storage.get(acme, "../x").await.unwrap(), None);

    let reader = storage.read(acme, &listing.id).await.unwrap();
    let manifest = tokio::task::spawn_blocking(move || verify(reader, &identity)).await.unwrap();
    assert_eq!(manifest.unwrap(), listing.manifest);

    // A part that fails halfway: nothing is listed, nothing is left.
    let failing = vec![
        big_part("data.db", 10 << 20),
        Part {
            name: "app.tar".into(),
            size: 30 << 20,
            reader: Box::new(FailsAfter { good: 9 << 20 }),
        },
    ];
    let failed = storage
        .put("20261204T190000Z-cccccccc", "manual", &recipient, about(acme), failing)
        .await
        .unwrap_err();
    assert!(failed.to_string().contains("the disk went away"), "{failed}");
    assert_eq!(storage.list(acme).await.unwrap(), vec![listing.clone()]);

    assert!(storage.delete(acme, &listing.id).await.unwrap());
    assert!(!storage.delete(acme, &listing.id).await.unwrap());
    assert_eq!(storage.list(acme).await.unwrap(), vec![]);
    assert_eq!(storage.list(globex).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_keeps_each_tenants_backups_and_never_lists_a_failed_one() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(&Location::Directory(dir.path().join("backups"))).unwrap();
    round_trip(&storage).await;
    // Nothing staged is left behind by the failed upload.
    let mut files = Vec::new();
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { stack.push(path) } else { files.push(path) }
        }
    }
    assert_eq!(files.len(), 2, "globex's archive and listing only: {files:?}");
}

fn location(server: &S3Server, url: &str) -> Location {
    Location::S3 {
        url: url.to_owned(),
        endpoint: Some(server.endpoint()),
        region: Some("us-east-1".to_owned()),
        key: Some(S3Key { id: ACCESS_KEY.0.into(), secret: ACCESS_KEY.1.to_owned().into() }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_compatible_storage_keeps_each_tenants_backups_and_never_lists_a_failed_one() {
    let server = S3Server::start("backups");
    let storage = Storage::open(&location(&server, "s3://backups/bulkhead/prod")).unwrap();
    round_trip(&storage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_goes_away_mid_upload_fails_the_backup_and_lists_nothing() {
    let mut server = S3Server::start("backups");
    let storage = Storage::open(&location(&server, "s3://backups")).unwrap();
    let (_, recipient) = generate_key();
    let acme = Uuid::new_v4();
    // The server is stopped once the first upload chunks are on their way.
    let child = server.take_process();
    let killer = KillsAfter { part: big_part("data.db", 64 << 20), after: 24 << 20, child };
    let parts = vec![Part { name: "data.db".into(), size: 64 << 20, reader: Box::new(killer) }];
    let failed = storage
        .put("20261204T180000Z-dddddddd", "manual", &recipient, about(acme), parts)
        .await
        .unwrap_err();
    assert!(matches!(failed, BackupError::Storage(_)), "{failed:?}");
    assert!(failed.to_string().contains("backup store"), "{failed}");
    // Unreachable, the store cannot even be listed: the error says so.
    let listed = storage.list(acme).await.unwrap_err();
    assert!(listed.to_string().contains("backup store"), "{listed}");
}

struct KillsAfter {
    part: Part<'static>,
    after: u64,
    child: Option<Child>,
}

impl Read for KillsAfter {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.part.reader.read(buf)?;
        self.after = self.after.saturating_sub(n as u64);
        if self.after == 0
            && let Some(mut child) = self.child.take()
        {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        Ok(n)
    }
}

#[test]
fn a_store_is_a_directory_or_an_s3_url() {
    assert_eq!(
        Location::parse("/var/backups", None, None).unwrap(),
        Location::Directory("/var/backups".into())
    );
    let err = Location::parse("gs://bucket", None, None).unwrap_err();
    assert!(err.to_string().contains("s3://bucket/prefix"), "{err}");
    let err = Location::parse("/var/backups", Some("http://x".into()), None).unwrap_err();
    assert!(err.to_string().contains("s3://"), "{err}");
    let err = Location::parse("s3:///prefix", None, None).unwrap_err();
    assert!(err.to_string().contains("names no bucket"), "{err}");
}
