//! What one confined worker is: the description the supervisor hands to the
//! sandbox helper over its control socket. Paths under `binds` are host
//! paths; `command`, `cwd` and every `at` are paths inside the sandbox.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// One worker's sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The worker's name, unique among the supervisor's: how errors name
    /// it, and its private directories without a mount namespace.
    pub name: String,
    /// Its hostname inside (the two versions of a worker that run side by
    /// side while an app switches share it): at most 64 bytes.
    pub hostname: String,
    /// The tenant's Unix user and group; the worker has no other group.
    pub uid: u32,
    pub gid: u32,
    /// The program, as seen inside the sandbox (for example `/app/server`).
    pub command: PathBuf,
    pub args: Vec<String>,
    /// The whole environment: nothing of the supervisor's is passed on.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// An empty host directory on which the new root is built; mounts are
    /// private to the worker's mount namespace, so every worker can share it.
    pub root: PathBuf,
    /// Host directories made visible inside, each read-only unless `writable`.
    pub binds: Vec<Bind>,
    /// Files written into a private in-memory directory, `/run/secrets`,
    /// readable by the worker's user only.
    pub secrets: Vec<SecretFile>,
    pub limits: SandboxLimits,
    /// Which confinement layers to apply; the supervisor turns off those the
    /// machine lacks, and says so.
    pub layers: LayerSwitches,
    /// TCP ports on loopback the worker may connect to (the forwards the
    /// supervisor listens on inside its network namespace).
    pub connect_ports: Vec<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bind {
    pub host: PathBuf,
    pub at: PathBuf,
    pub writable: bool,
}

/// A secret delivered as a file; the value is wiped from memory when dropped.
#[derive(Clone, Serialize, Deserialize)]
pub struct SecretFile {
    /// A file name: no `/`, not `.` or `..`.
    pub name: String,
    pub value: Zeroizing<String>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Limits enforced inside the sandbox itself (the cgroup's are set by the
/// supervisor).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxLimits {
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// Size of the private `/tmp` (and `/dev/shm`), in bytes.
    pub tmp_bytes: u64,
    /// `RLIMIT_NPROC` for the tenant's user, when no pids cgroup caps it.
    pub processes: Option<u64>,
}

/// Each confinement layer, on or off.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerSwitches {
    /// Own user, group, no supplementary groups.
    pub user: bool,
    /// Mount, PID, IPC, UTS and cgroup namespaces and the private root.
    pub namespaces: bool,
    /// Own network namespace (only loopback).
    pub network: bool,
    pub landlock: bool,
    pub seccomp: bool,
}

impl SandboxSpec {
    /// Where the worker finds its secrets: `/run/secrets` in its own mount
    /// namespace; without one, a directory of its own beside the sandbox
    /// root (0700, its user's), removed when the worker ends.
    pub fn secrets_dir(&self) -> PathBuf {
        if self.layers.namespaces {
            PathBuf::from(paths::SECRETS)
        } else {
            self.root.join(format!("secrets-{}", self.name))
        }
    }

    /// The worker's private temporary directory: its own `/tmp` in its mount
    /// namespace; without one, a directory of its own beside the sandbox
    /// root (never the host's shared `/tmp`), removed when it ends.
    pub fn tmp_dir(&self) -> PathBuf {
        if self.layers.namespaces {
            PathBuf::from("/tmp")
        } else {
            self.root.join(format!("tmp-{}", self.name))
        }
    }

    /// Without a mount namespace nothing is mounted: every path inside the
    /// sandbox (the command, its arguments, the working directory, the
    /// environment's values) becomes the host path it stood for.
    pub fn use_host_paths(&mut self) {
        let mut prefixes: Vec<(PathBuf, PathBuf)> =
            self.binds.iter().map(|b| (b.at.clone(), b.host.clone())).collect();
        prefixes.push((PathBuf::from(paths::SECRETS), self.secrets_dir()));
        prefixes.push((PathBuf::from("/tmp"), self.tmp_dir()));
        let translate = |value: &str| -> String {
            for (at, host) in &prefixes {
                if let Ok(rest) = std::path::Path::new(value).strip_prefix(at) {
                    return host.join(rest).display().to_string();
                }
            }
            value.to_owned()
        };
        self.command = translate(&self.command.display().to_string()).into();
        self.cwd = translate(&self.cwd.display().to_string()).into();
        self.args = self.args.iter().map(|a| translate(a)).collect();
        for (_, value) in &mut self.env {
            *value = translate(value);
        }
        for bind in &mut self.binds {
            bind.at = bind.host.clone();
        }
        self.env.retain(|(k, _)| k != "TMPDIR");
        self.env.push(("TMPDIR".to_owned(), self.tmp_dir().display().to_string()));
    }
}

impl LayerSwitches {
    pub const ALL: Self =
        Self { user: true, namespaces: true, network: true, landlock: true, seccomp: true };
}

/// Where a worker's program lives and what the sandbox shows of the system.
pub mod paths {
    /// Top-level system paths shown read-only (symbolic links are copied as
    /// links, so merged-`/usr` systems look the same inside).
    pub const SYSTEM: [&str; 7] = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"];
    /// What of `/etc` is shown: the dynamic loader's cache, certificates, the
    /// time zone, name-service switches. Not the rest: `/etc` can hold the
    /// server's own configuration.
    pub const ETC: [&str; 12] = [
        "ld.so.cache",
        "ld.so.conf",
        "ld.so.conf.d",
        "ssl",
        "ca-certificates",
        "ca-certificates.conf",
        "alternatives",
        "localtime",
        "nsswitch.conf",
        "protocols",
        "services",
        "mime.types",
    ];
    /// Device nodes bound from the host's `/dev`.
    pub const DEVICES: [&str; 5] = ["null", "zero", "full", "random", "urandom"];
    pub const SECRETS: &str = "/run/secrets";
}
