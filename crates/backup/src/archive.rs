//! Writing and verifying the archive format described in the crate's docs.

use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::BackupError;

/// The archive format this version writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

const FORMAT_ENTRY: &str = "FORMAT";
const MANIFEST_ENTRY: &str = "manifest.json";
const PARTS_DIR: &str = "parts/";
/// The largest manifest read: far above what any tenant's parts need.
const MAX_MANIFEST: u64 = 1 << 20;

/// What an archive says of itself; written last, checked by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    #[serde(flatten)]
    pub about: About,
    pub parts: Vec<PartEntry>,
}

/// Who and what the archive is of, as the caller says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct About {
    pub tenant: String,
    pub tenant_id: uuid::Uuid,
    pub plan: String,
    /// When the backup was taken, RFC 3339.
    pub created_at: String,
    /// The schema version of each thing backed up (the control store's,
    /// the tenant database's migrations).
    pub schemas: BTreeMap<String, String>,
}

impl About {
    /// When the backup was taken, as a time.
    pub fn taken_at(&self) -> Result<time::OffsetDateTime, time::error::Parse> {
        time::OffsetDateTime::parse(
            &self.created_at,
            &time::format_description::well_known::Rfc3339,
        )
    }
}

/// One part as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartEntry {
    pub name: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// One part to write: `size` bytes read from `reader`.
pub struct Part<'a> {
    pub name: String,
    pub size: u64,
    pub reader: Box<dyn Read + Send + 'a>,
}

impl std::fmt::Debug for Part<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Part").field("name", &self.name).field("size", &self.size).finish()
    }
}

/// A part name: 1 to 64 of `a-z`, `0-9`, `-`, `_`, `.`, not starting with
/// a dot (no path can be made of it).
fn check_name(name: &str) -> Result<(), BackupError> {
    let valid = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'));
    if valid { Ok(()) } else { Err(BackupError::InvalidName(name.to_owned())) }
}

/// Reads through, counting and hashing what passes.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    read: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Self { inner, hash: Sha256::new(), read: 0 }
    }

    fn hex(self) -> String {
        self.hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o600);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

/// Writes an archive of `parts` to `out`, encrypted to `recipient` (an
/// `age1...` public key), and returns its manifest. A part whose reader
/// gives other than its `size` fails the whole archive: the caller removes
/// what was written.
pub fn write<'a, W: Write>(
    out: W,
    recipient: &str,
    about: About,
    parts: impl IntoIterator<Item = Part<'a>>,
) -> Result<Manifest, BackupError> {
    let recipient: age::x25519::Recipient = recipient.parse().map_err(|e: &str| {
        BackupError::InvalidKey(format!("the recipient is not an age key (age1...): {e}"))
    })?;
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .map_err(|e| BackupError::NotABackup(e.to_string()))?;
    let encrypted = encryptor.wrap_output(out)?;
    let mut tar = tar::Builder::new(encrypted);
    let version = format!("{FORMAT_VERSION}\n");
    tar.append_data(&mut header(version.len() as u64), FORMAT_ENTRY, version.as_bytes())?;
    let mut entries = Vec::new();
    for part in parts {
        check_name(&part.name)?;
        let mut reader = Hashing::new(part.reader.take(part.size));
        let path = format!("{PARTS_DIR}{}", part.name);
        tar.append_data(&mut header(part.size), &path, &mut reader)?;
        if reader.read != part.size {
            return Err(BackupError::PartChanged {
                part: part.name,
                declared: part.size,
                read: reader.read,
            });
        }
        entries.push(PartEntry { name: part.name, size: part.size, sha256: reader.hex() });
    }
    let manifest = Manifest { format: FORMAT_VERSION, about, parts: entries };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::NotABackup(format!("manifest: {e}")))?;
    tar.append_data(&mut header(json.len() as u64), MANIFEST_ENTRY, json.as_slice())?;
    tar.into_inner()?.finish()?.flush()?;
    Ok(manifest)
}

/// Decrypts `input` with `identity` (an `AGE-SECRET-KEY-1...`) and checks
/// every part's size and hash against the manifest, restoring nothing.
/// Returns the manifest.
pub fn verify<R: Read>(input: R, identity: &str) -> Result<Manifest, BackupError> {
    read_parts(input, identity, |_| Ok(Box::new(io::sink())))
}

/// Reads the archive, handing each part's bytes to the writer `open_part`
/// gives for its name, and checks every part against the manifest: what
/// [`verify`] is made of, for a caller that keeps some parts only.
pub fn read_parts<R: Read>(
    input: R,
    identity: &str,
    mut open_part: impl FnMut(&str) -> io::Result<Box<dyn Write>>,
) -> Result<Manifest, BackupError> {
    let identity: age::x25519::Identity = identity.parse().map_err(|e: &str| {
        BackupError::InvalidKey(format!(
            "the key is not an age identity (AGE-SECRET-KEY-1...): {e}"
        ))
    })?;
    let decryptor = age::Decryptor::new(input)
        .map_err(|e| BackupError::NotABackup(format!("not an age file: {e}")))?;
    let decrypted = decryptor.decrypt(std::iter::once(&identity as &dyn age::Identity)).map_err(
        |e| match e {
            age::DecryptError::NoMatchingKeys => BackupError::WrongKey,
            other => BackupError::NotABackup(other.to_string()),
        },
    )?;
    let mut archive = tar::Archive::new(decrypted);
    let entries = archive.entries().map_err(|e| damaged(FORMAT_ENTRY, &e))?;
    let mut seen = Vec::new();
    let mut manifest = None;
    let mut first = true;
    for entry in entries {
        let mut entry = entry.map_err(|e| damaged(current(&seen, first), &e))?;
        let path = entry.path().map_err(|e| damaged(current(&seen, first), &e))?;
        let path = path.to_string_lossy().into_owned();
        if std::mem::take(&mut first) {
            if path != FORMAT_ENTRY {
                return Err(BackupError::NotABackup(format!("it starts with {path:?}")));
            }
            let mut text = String::new();
            (&mut entry)
                .take(32)
                .read_to_string(&mut text)
                .map_err(|e| damaged(FORMAT_ENTRY, &e))?;
            let found: u32 = text
                .trim()
                .parse()
                .map_err(|_| BackupError::NotABackup(format!("its format is {:?}", text.trim())))?;
            if found > FORMAT_VERSION {
                return Err(BackupError::NewerFormat { found, supported: FORMAT_VERSION });
            }
            continue;
        }
        if manifest.is_some() {
            return Err(BackupError::NotABackup(format!("{path:?} follows the manifest")));
        }
        if path == MANIFEST_ENTRY {
            let mut json = Vec::new();
            (&mut entry)
                .take(MAX_MANIFEST)
                .read_to_end(&mut json)
                .map_err(|e| damaged(MANIFEST_ENTRY, &e))?;
            let read: Manifest = serde_json::from_slice(&json)
                .map_err(|e| BackupError::NotABackup(format!("its manifest: {e}")))?;
            manifest = Some(read);
            continue;
        }
        // Checked before a part is written anywhere: no name is a path.
        let Some(name) = path.strip_prefix(PARTS_DIR).filter(|n| check_name(n).is_ok()) else {
            return Err(BackupError::NotABackup(format!("it holds {path:?}")));
        };
        let name = name.to_owned();
        let mut reader = Hashing::new(&mut entry);
        // A failure to read is the archive's; to write, the disk's.
        let mut out = open_part(&name)?;
        let mut buf = vec![0; 64 << 10];
        loop {
            let n = reader.read(&mut buf).map_err(|e| damaged(&name, &e))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
        }
        out.flush()?;
        let size = reader.read;
        seen.push(PartEntry { sha256: reader.hex(), name, size });
    }
    if first {
        return Err(BackupError::NotABackup("it is empty".to_owned()));
    }
    let Some(manifest) = manifest else { return Err(BackupError::Truncated) };
    if manifest.parts.len() != seen.len() {
        return Err(BackupError::NotABackup(format!(
            "its manifest lists {} parts and it holds {}",
            manifest.parts.len(),
            seen.len()
        )));
    }
    for (listed, found) in manifest.parts.iter().zip(&seen) {
        if listed != found {
            return Err(BackupError::Corrupt {
                part: found.name.clone(),
                reason: format!(
                    "{} bytes with SHA-256 {}, the manifest says {} bytes with {}",
                    found.size, found.sha256, listed.size, listed.sha256
                ),
            });
        }
    }
    Ok(manifest)
}

/// The part being read when the stream failed: the last one begun.
fn current(seen: &[PartEntry], first: bool) -> &str {
    match (first, seen.last()) {
        (true, _) | (false, None) => FORMAT_ENTRY,
        (false, Some(part)) => &part.name,
    }
}

fn damaged(part: &str, error: &io::Error) -> BackupError {
    BackupError::Corrupt { part: part.to_owned(), reason: error.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn about() -> About {
        About {
            tenant: "acme".into(),
            tenant_id: uuid::Uuid::from_u128(7),
            plan: "enterprise".into(),
            created_at: "2026-12-04T17:00:00Z".into(),
            schemas: BTreeMap::from([("control".into(), "18".into())]),
        }
    }

    fn part(name: &str, data: &'static [u8]) -> Part<'static> {
        Part { name: name.into(), size: data.len() as u64, reader: Box::new(data) }
    }

    fn archive(recipient: &str, parts: Vec<Part<'static>>) -> Vec<u8> {
        let mut out = Vec::new();
        write(&mut out, recipient, about(), parts).unwrap();
        out
    }

    /// 200 KiB of data that compresses badly, so that it spans age chunks.
    fn big() -> &'static [u8] {
        let data: Vec<u8> =
            (0..200 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        Box::leak(data.into_boxed_slice())
    }

    #[test]
    fn an_archive_verifies_with_its_key_and_lists_its_parts() {
        let (identity, recipient) = crate::generate_key();
        let out = archive(&recipient, vec![part("data.db", big()), part("secrets.json", b"{}")]);
        let manifest = verify(out.as_slice(), &identity).unwrap();
        assert_eq!(manifest.format, FORMAT_VERSION);
        assert_eq!(manifest.about, about());
        let names: Vec<_> = manifest.parts.iter().map(|p| (p.name.as_str(), p.size)).collect();
        assert_eq!(names, [("data.db", 200 * 1024), ("secrets.json", 2)]);
        assert_eq!(
            manifest.parts[1].sha256,
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        // The plaintext is nowhere in the archive.
        assert!(!out.windows(12).any(|w| w == b"secrets.json"));
    }

    #[test]
    fn another_key_a_foreign_file_and_an_empty_one_are_named() {
        let (_, recipient) = crate::generate_key();
        let (other, _) = crate::generate_key();
        let out = archive(&recipient, vec![part("a", b"x")]);
        assert!(matches!(verify(out.as_slice(), &other), Err(BackupError::WrongKey)));
        let foreign = verify(&b"PK\x03\x04 a zip file"[..], &other).unwrap_err();
        assert!(
            foreign.to_string().starts_with("not a Bulkhead backup: not an age file"),
            "{foreign}"
        );
        assert!(matches!(verify(&b""[..], &other), Err(BackupError::NotABackup(_))));
        let bad_key = verify(out.as_slice(), "AGE-SECRET-KEY-1NOPE").unwrap_err();
        assert!(bad_key.to_string().contains("not an age identity"), "{bad_key}");
    }

    #[test]
    fn a_changed_byte_or_a_cut_names_the_part_it_falls_in() {
        let (identity, recipient) = crate::generate_key();
        let out = archive(&recipient, vec![part("small", b"hello"), part("big", big())]);
        // Well inside `big` (the header and `small` take the first few KiB).
        let mut changed = out.clone();
        changed[100 * 1024] ^= 1;
        match verify(changed.as_slice(), &identity) {
            Err(BackupError::Corrupt { part, .. }) => assert_eq!(part, "big"),
            other => panic!("{other:?}"),
        }
        let cut = &out[..out.len() - 300];
        let error = verify(cut, &identity).unwrap_err();
        assert!(matches!(&error, BackupError::Corrupt { .. } | BackupError::Truncated), "{error}");
    }

    #[test]
    fn a_part_that_changes_while_read_fails_the_archive() {
        let (_, recipient) = crate::generate_key();
        let short = Part { name: "grew".into(), size: 10, reader: Box::new(&b"12345"[..]) };
        let error = write(Vec::new(), &recipient, about(), vec![short]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "part \"grew\" changed while it was read: 10 bytes announced, 5 read"
        );
        for bad in ["", ".hidden", "../etc", "a/b", "UPPER"] {
            let error = write(Vec::new(), &recipient, about(), vec![part(bad, b"x")]).unwrap_err();
            assert!(matches!(error, BackupError::InvalidName(_)), "{bad}: {error}");
        }
    }

    #[test]
    fn a_newer_format_is_refused_before_its_parts_are_read() {
        let (identity, recipient) = crate::generate_key();
        let recipient: age::x25519::Recipient = recipient.parse().unwrap();
        let mut out = Vec::new();
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .unwrap();
        let mut tar = tar::Builder::new(encryptor.wrap_output(&mut out).unwrap());
        tar.append_data(&mut header(2), FORMAT_ENTRY, &b"2\n"[..]).unwrap();
        tar.append_data(&mut header(3), "parts2/x", &b"new"[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        match verify(out.as_slice(), &identity) {
            Err(BackupError::NewerFormat { found: 2, supported: 1 }) => {}
            other => panic!("{other:?}"),
        }
    }
}
