//! Each worker's standard output and error, as lines stamped with the time
//! and the stream, in one file per worker that rotates by size
//! (`<name>.log`, then `<name>.log.1` … `<name>.log.<keep>`). The files are
//! written by the supervisor, outside anything the worker can see, so a
//! worker can neither rewrite its history nor fill the disk past the cap.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::{io::AsyncReadExt, net::unix::pipe::Receiver};

/// The time source (the control plane's clock; tests pass their own).
pub type Now = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// The longest line kept whole; longer ones are cut into pieces this long.
pub const MAX_LINE: usize = 16 * 1024;

/// Rotation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: usize,
}

#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    rotation: Rotation,
    file: File,
    size: u64,
}

impl LogFile {
    /// Opens (appends to) `<dir>/<name>.log`, creating `dir` (0750).
    pub fn open(dir: &Path, name: &str, rotation: Rotation) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{name}.log"));
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(Self { path, rotation, file, size })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line: `<RFC 3339 time> <stream> <text>`.
    pub fn write_line(&mut self, at: OffsetDateTime, stream: &str, text: &[u8]) -> io::Result<()> {
        let stamp = at.format(&Rfc3339).unwrap_or_default();
        let text = String::from_utf8_lossy(text);
        let line = format!("{stamp} {stream} {}\n", text.trim_end_matches(['\r', '\n']));
        if self.size > 0 && self.size + line.len() as u64 > self.rotation.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line.as_bytes())?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: usize| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = fs::remove_file(numbered(self.rotation.keep));
        for n in (1..self.rotation.keep).rev() {
            let _ = fs::rename(numbered(n), numbered(n + 1));
        }
        if self.rotation.keep > 0 {
            fs::rename(&self.path, numbered(1))?;
        } else {
            fs::remove_file(&self.path)?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

/// Copies one stream into the log until the worker closes it.
pub async fn collect(mut pipe: Receiver, stream: &'static str, log: Arc<Mutex<LogFile>>, now: Now) {
    let mut pending: Vec<u8> = Vec::with_capacity(4096);
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n').map(|i| start + i) {
            emit(&log, &now, stream, &pending[start..end]);
            start = end + 1;
        }
        pending.drain(..start);
        while pending.len() >= MAX_LINE {
            emit(&log, &now, stream, &pending[..MAX_LINE]);
            pending.drain(..MAX_LINE);
        }
    }
    if !pending.is_empty() {
        emit(&log, &now, stream, &pending);
    }
}

fn emit(log: &Mutex<LogFile>, now: &Now, stream: &str, line: &[u8]) {
    if let Ok(mut log) = log.lock()
        && let Err(e) = log.write_line(now(), stream, line)
    {
        tracing::warn!(path = %log.path().display(), "cannot write a worker's log: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFile::open(dir.path(), "w", Rotation { max_bytes: 200, keep: 2 }).unwrap();
        let at = OffsetDateTime::UNIX_EPOCH;
        for i in 0..20 {
            log.write_line(at, "stdout", format!("line {i:02} {}", "x".repeat(40)).as_bytes())
                .unwrap();
        }
        let current = fs::read_to_string(dir.path().join("w.log")).unwrap();
        assert!(current.len() <= 200 && current.contains("line 19"), "{current}");
        assert!(current.starts_with("1970-01-01T00:00:00Z stdout line"));
        assert!(dir.path().join("w.log.1").exists() && dir.path().join("w.log.2").exists());
        assert!(!dir.path().join("w.log.3").exists(), "only `keep` old files stay");
    }
}
