//! The worker's view of the filesystem: a fresh in-memory root holding the
//! system's programs and libraries read-only, a small chosen part of `/etc`,
//! a few device nodes, its own `/proc`, a private `/tmp`, its secrets in
//! memory, and the host directories the spec binds. Nothing is `setuid`
//! or a device anywhere. The old root is detached, so no path leads out.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, symlink},
    path::{Path, PathBuf},
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    unistd::{Gid, Uid, chdir, chown, pivot_root},
};

use crate::spec::{SandboxSpec, paths};

const NONE: Option<&str> = None;

pub fn build(spec: &SandboxSpec) -> Result<(), String> {
    let root = spec.root.as_path();
    // Nothing mounted here may reach the host's mount table.
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .map_err(|e| format!("cannot make the mounts private: {e}"))?;
    tmpfs(root, "mode=0755,size=1m", MsFlags::empty())?;

    for path in paths::SYSTEM {
        mirror(Path::new(path), &inside(root, Path::new(path)), false)?;
    }
    make_dir(&root.join("etc"), 0o755)?;
    for name in paths::ETC {
        let path = Path::new("/etc").join(name);
        mirror(&path, &inside(root, &path), false)?;
    }
    let (uid, gid) = (spec.uid, spec.gid);
    write_file(
        &root.join("etc/passwd"),
        format!("root:x:0:0::/:/usr/sbin/nologin\napp:x:{uid}:{gid}::/data:/usr/sbin/nologin\n"),
    )?;
    write_file(&root.join("etc/group"), format!("root:x:0:\napp:x:{gid}:\n"))?;
    write_file(&root.join("etc/hostname"), format!("{}\n", spec.hostname))?;
    write_file(
        &root.join("etc/hosts"),
        format!("127.0.0.1 localhost {}\n::1 localhost\n", spec.hostname),
    )?;

    devices(root, spec.limits.tmp_bytes)?;
    let proc = root.join("proc");
    make_dir(&proc, 0o555)?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        NONE,
    )
    .map_err(|e| format!("cannot mount /proc: {e}"))?;
    let tmp = root.join("tmp");
    make_dir(&tmp, 0o1777)?;
    tmpfs(&tmp, &format!("mode=1777,size={}", spec.limits.tmp_bytes), MsFlags::MS_NODEV)?;

    for bind in &spec.binds {
        mirror(&bind.host, &inside(root, &bind.at), bind.writable)?;
    }
    secrets(root, spec)?;

    chdir(root).map_err(|e| format!("cannot enter the new root: {e}"))?;
    pivot_root(".", ".").map_err(|e| format!("cannot switch to the new root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| format!("cannot detach the host's root: {e}"))?;
    chdir("/").map_err(|e| format!("cannot enter the new root: {e}"))?;
    // The root itself becomes read-only now that it is populated.
    mount(
        NONE,
        "/",
        NONE,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        NONE,
    )
    .map_err(|e| format!("cannot make the root read-only: {e}"))
}

/// `root` + an absolute path inside.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn tmpfs(at: &Path, options: &str, extra: MsFlags) -> Result<(), String> {
    mount(Some("tmpfs"), at, Some("tmpfs"), MsFlags::MS_NOSUID | extra, Some(options))
        .map_err(|e| format!("cannot mount a tmpfs on {}: {e}", at.display()))
}

/// Shows `host` at `target`: a link as the same link, a directory or file
/// as a bind mount, read-only unless `writable`, never setuid or devices.
fn mirror(host: &Path, target: &Path, writable: bool) -> Result<(), String> {
    let meta = match fs::symlink_metadata(host) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", host.display())),
    };
    if let Some(parent) = target.parent() {
        make_dirs(parent)?;
    }
    if meta.file_type().is_symlink() {
        let to = fs::read_link(host).map_err(|e| format!("cannot read {}: {e}", host.display()))?;
        return symlink(&to, target).map_err(|e| format!("cannot link {}: {e}", target.display()));
    }
    if meta.is_dir() {
        make_dir(target, 0o755)?;
    } else {
        write_file(target, String::new())?;
    }
    bind(host, target, writable)
}

fn bind(host: &Path, target: &Path, writable: bool) -> Result<(), String> {
    // Not recursive: what is mounted below `host` stays out (a remount
    // would make only the top mount read-only).
    mount(Some(host), target, NONE, MsFlags::MS_BIND, NONE)
        .map_err(|e| format!("cannot show {} at {}: {e}", host.display(), target.display()))?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if !writable {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(NONE, target, NONE, flags, NONE)
        .map_err(|e| format!("cannot restrict {}: {e}", target.display()))
}

fn devices(root: &Path, shm_bytes: u64) -> Result<(), String> {
    let dev = root.join("dev");
    make_dir(&dev, 0o755)?;
    tmpfs(&dev, "mode=0755,size=64k", MsFlags::MS_NOEXEC)?;
    for name in paths::DEVICES {
        let target = dev.join(name);
        write_file(&target, String::new())?;
        // Devices work only on a mount without `nodev`.
        mount(Some(&Path::new("/dev").join(name)), &target, NONE, MsFlags::MS_BIND, NONE)
            .map_err(|e| format!("cannot show /dev/{name}: {e}"))?;
    }
    for (name, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, dev.join(name)).map_err(|e| format!("cannot link /dev/{name}: {e}"))?;
    }
    let shm = dev.join("shm");
    make_dir(&shm, 0o1777)?;
    tmpfs(&shm, &format!("mode=1777,size={shm_bytes}"), MsFlags::MS_NODEV)
}

/// Secrets live in memory only, readable by the worker's user alone, and
/// vanish with the worker's mount namespace.
fn secrets(root: &Path, spec: &SandboxSpec) -> Result<(), String> {
    let dir = inside(root, Path::new(paths::SECRETS));
    make_dirs(&dir)?;
    tmpfs(
        &dir,
        &format!("mode=0500,uid={},gid={},size=1m", spec.uid, spec.gid),
        MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )?;
    write_secrets(&dir, spec)
}

/// Without a mount namespace: the secrets and `/tmp` are fresh
/// directories of the worker's user alone, which the supervisor removes
/// when the worker ends.
pub fn private_dirs_on_host(spec: &SandboxSpec) -> Result<(), String> {
    for dir in [spec.secrets_dir(), spec.tmp_dir()] {
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(format!("cannot clear {}: {e}", dir.display()));
            }
            _ => {}
        }
        make_dir(&dir, 0o700)?;
        chown(&dir, Some(Uid::from_raw(spec.uid)), Some(Gid::from_raw(spec.gid)))
            .map_err(|e| format!("cannot give {} to the worker: {e}", dir.display()))?;
    }
    write_secrets(&spec.secrets_dir(), spec)
}

fn write_secrets(dir: &Path, spec: &SandboxSpec) -> Result<(), String> {
    for secret in &spec.secrets {
        let name = secret.name.as_str();
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(format!("secret file name {name:?} is not a plain file name"));
        }
        let path = dir.join(name);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .map_err(|e| format!("cannot write secret {name}: {e}"))?;
        file.write_all(secret.value.as_bytes())
            .map_err(|e| format!("cannot write secret {name}: {e}"))?;
        chown(&path, Some(Uid::from_raw(spec.uid)), Some(Gid::from_raw(spec.gid)))
            .map_err(|e| format!("cannot give secret {name} to the worker: {e}"))?;
    }
    Ok(())
}

fn make_dir(path: &Path, mode: u32) -> Result<(), String> {
    match fs::DirBuilder::new().mode(mode).create(path) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(format!("cannot create {}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}

fn make_dirs(path: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

fn write_file(path: &Path, contents: String) -> Result<(), String> {
    fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
