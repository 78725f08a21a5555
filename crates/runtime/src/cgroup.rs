//! Resource limits per worker with cgroups: memory, CPU weight and quota,
//! and process count. cgroup v2 where its controllers are available, else
//! the v1 `memory`, `cpu` and `pids` hierarchies. Each supervisor keeps its
//! workers under a directory of its own (`bulkhead-<instance>`) below its
//! own cgroup, so two servers on one machine never touch each other's.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

/// A worker's limits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_bytes: u64,
    /// Thousandths of a CPU the worker may use at most; `None`: no ceiling.
    pub cpu_millis: Option<u32>,
    /// Relative share under contention, 1–10000 (100 is the default).
    pub cpu_weight: u32,
    pub pids: u64,
}

const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Where this supervisor's workers' cgroups are made.
#[derive(Debug, Clone)]
pub enum Cgroups {
    V2 { base: PathBuf },
    V1 { memory: PathBuf, cpu: PathBuf, pids: PathBuf },
}

impl Cgroups {
    /// Finds the hierarchies and makes this supervisor's directory in each.
    /// `Err` says which controller is missing.
    pub fn detect(instance: &str) -> Result<Self, String> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let own = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let mounts = parse_mounts(&mountinfo);
        let dir_name = format!("bulkhead-{instance}");
        if let Some(v2) = mounts.iter().find(|m| m.v2) {
            let own_path = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/");
            let own_dir = join(&v2.at, own_path);
            let available =
                fs::read_to_string(own_dir.join("cgroup.controllers")).unwrap_or_default();
            if CONTROLLERS.iter().all(|c| available.split_whitespace().any(|a| a == *c)) {
                return v2_base(&own_dir, &dir_name).map(|base| Self::V2 { base });
            }
        }
        let v1 = |controller: &str| -> Result<PathBuf, String> {
            let mount = mounts
                .iter()
                .find(|m| !m.v2 && m.options.split(',').any(|o| o == controller))
                .ok_or_else(|| {
                    format!("no cgroup {controller} controller is mounted (v2 nor v1)")
                })?;
            let path = own
                .lines()
                .filter_map(|l| l.split_once(':').and_then(|(_, rest)| rest.split_once(':')))
                .find(|(names, _)| names.split(',').any(|n| n == controller))
                .map(|(_, path)| path)
                .unwrap_or("/");
            // Made with the first worker: a server that runs none leaves
            // nothing behind, however it ends.
            Ok(join(&join(&mount.at, path), &dir_name))
        };
        Ok(Self::V1 { memory: v1("memory")?, cpu: v1("cpu")?, pids: v1("pids")? })
    }

    pub fn version(&self) -> &'static str {
        match self {
            Self::V2 { .. } => "v2",
            Self::V1 { .. } => "v1",
        }
    }

    /// Makes (or empties and reuses) the cgroup of worker `key` and sets its limits.
    pub fn create(&self, key: &str, limits: &CgroupLimits) -> Result<Cgroup, String> {
        let cgroup = Cgroup {
            version: self.clone(),
            dirs: self.dirs().iter().map(|d| d.join(key)).collect(),
        };
        cgroup.kill_all();
        for (base, dir) in self.dirs().iter().zip(&cgroup.dirs) {
            make_dir(base)?;
            make_dir(dir)?;
        }
        let cpu_quota = |period: u64| limits.cpu_millis.map(|m| u64::from(m) * period / 1000);
        match self {
            Self::V2 { .. } => {
                let dir = &cgroup.dirs[0];
                write(dir, "memory.max", &limits.memory_bytes.to_string())?;
                write_if_present(dir, "memory.swap.max", "0")?;
                // One process out of memory ends the whole worker.
                write_if_present(dir, "memory.oom.group", "1")?;
                write(dir, "cpu.weight", &limits.cpu_weight.clamp(1, 10_000).to_string())?;
                let max = cpu_quota(100_000).map_or("max".to_owned(), |q| q.to_string());
                write(dir, "cpu.max", &format!("{max} 100000"))?;
                write(dir, "pids.max", &limits.pids.to_string())?;
            }
            Self::V1 { .. } => {
                let [memory, cpu, pids] = [&cgroup.dirs[0], &cgroup.dirs[1], &cgroup.dirs[2]];
                write(memory, "memory.limit_in_bytes", &limits.memory_bytes.to_string())?;
                write_if_present(
                    memory,
                    "memory.memsw.limit_in_bytes",
                    &limits.memory_bytes.to_string(),
                )?;
                let shares = u64::from(limits.cpu_weight.clamp(1, 10_000)) * 1024 / 100;
                write(cpu, "cpu.shares", &shares.max(2).to_string())?;
                write(cpu, "cpu.cfs_period_us", "100000")?;
                let quota = cpu_quota(100_000).map_or("-1".to_owned(), |q| q.max(1000).to_string());
                write(cpu, "cpu.cfs_quota_us", &quota)?;
                write(pids, "pids.max", &limits.pids.to_string())?;
            }
        }
        Ok(cgroup)
    }

    /// Kills and removes every worker cgroup left by an earlier run of this
    /// supervisor: workers are restarted, never duplicated. Returns how many.
    pub fn sweep(&self) -> usize {
        let mut keys: Vec<String> = Vec::new();
        for dir in self.dirs() {
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.path().is_dir() {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if !keys.contains(&name) {
                            keys.push(name);
                        }
                    }
                }
            }
        }
        for key in &keys {
            let cgroup = Cgroup {
                version: self.clone(),
                dirs: self.dirs().iter().map(|d| d.join(key)).collect(),
            };
            cgroup.kill_all();
            cgroup.remove();
        }
        keys.len()
    }

    /// Removes this supervisor's own directories, once they hold no worker.
    pub fn remove_base(&self) {
        for dir in self.dirs() {
            let _ = fs::remove_dir(dir);
        }
    }

    fn dirs(&self) -> Vec<PathBuf> {
        match self {
            Self::V2 { base } => vec![base.clone()],
            Self::V1 { memory, cpu, pids } => vec![memory.clone(), cpu.clone(), pids.clone()],
        }
    }
}

/// One worker's cgroup (one directory per hierarchy on v1).
#[derive(Debug)]
pub struct Cgroup {
    version: Cgroups,
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Moves process `pid` (and so everything it starts later) in.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        for dir in &self.dirs {
            write(dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    pub fn pids(&self) -> Vec<u32> {
        let dir = self.dirs.last().map(PathBuf::as_path).unwrap_or(Path::new("/nonexistent"));
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// SIGKILLs every process in the cgroup, until none is left.
    pub fn kill_all(&self) {
        if let Cgroups::V2 { .. } = self.version
            && write(&self.dirs[0], "cgroup.kill", "1").is_ok()
        {
            self.wait_empty();
            return;
        }
        // v1 has no cgroup.kill: kill what is listed until the list stays
        // empty (a fork bomb is bounded by pids.max, so this ends).
        for _ in 0..100 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait_empty(&self) {
        for _ in 0..200 {
            if self.pids().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Removes the (empty) cgroup.
    pub fn remove(&self) {
        for dir in &self.dirs {
            for _ in 0..50 {
                match fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => break,
                }
            }
        }
    }

    /// Times the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let (dir, file) = match self.version {
            Cgroups::V2 { .. } => (&self.dirs[0], "memory.events"),
            Cgroups::V1 { .. } => (&self.dirs[0], "memory.oom_control"),
        };
        fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0)
    }
}

#[derive(Debug)]
struct CgroupMount {
    at: PathBuf,
    v2: bool,
    options: String,
}

fn parse_mounts(mountinfo: &str) -> Vec<CgroupMount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let at = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let options = right.nth(1).unwrap_or_default();
            matches!(fstype, "cgroup" | "cgroup2").then(|| CgroupMount {
                at: PathBuf::from(at),
                v2: fstype == "cgroup2",
                options: options.to_owned(),
            })
        })
        .collect()
}

/// On v2 a cgroup with processes cannot hand controllers to its children:
/// the supervisor moves itself into a leaf first, as systemd's delegation
/// expects.
fn v2_base(own: &Path, dir_name: &str) -> Result<PathBuf, String> {
    let enable = |dir: &Path| write(dir, "cgroup.subtree_control", "+memory +cpu +pids");
    if enable(own).is_err() {
        let leaf = own.join("bulkhead-supervisor");
        make_dir(&leaf)?;
        write(&leaf, "cgroup.procs", &std::process::id().to_string())?;
        enable(own)?;
    }
    let base = own.join(dir_name);
    make_dir(&base)?;
    enable(&base)?;
    Ok(base)
}

fn join(base: &Path, path: &str) -> PathBuf {
    base.join(path.trim_start_matches('/'))
}

fn make_dir(dir: &Path) -> Result<(), String> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            Err(format!("cannot create {}: {e}", dir.display()))
        }
        _ => Ok(()),
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    fs::write(dir.join(file), value)
        .map_err(|e| format!("cannot write {value:?} to {}: {e}", dir.join(file).display()))
}

/// For files a kernel may lack (swap accounting off).
fn write_if_present(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    if dir.join(file).exists() { write(dir, file, value) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_v1_and_v2_mounts() {
        let info = "35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory\n\
                    36 25 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n\
                    37 25 0:32 / /proc rw - proc proc rw\n";
        let mounts = parse_mounts(info);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].at, Path::new("/sys/fs/cgroup/memory"));
        assert!(!mounts[0].v2 && mounts[0].options.split(',').any(|o| o == "memory"));
        assert!(mounts[1].v2);
    }
}
