//! The supervisor: starts each worker in its sandbox, watches it, restarts
//! it with exponential backoff when it ends, marks it `failed` after a crash
//! loop, and stops it gracefully (SIGTERM, then SIGKILL after a grace
//! period). One task per worker: a worker that crashes, hangs or is killed
//! for memory affects no other worker's task.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;
use time::OffsetDateTime;
use tokio::{
    sync::{broadcast, mpsc, watch},
    task::JoinHandle,
};

use crate::{
    cgroup::{Cgroup, CgroupLimits, Cgroups},
    forward::{self, Target},
    health::{self, HealthProbe},
    launch::{Launched, Output, launch},
    logs::{self, LogFile, Now, Rotation},
    sandbox::{HELPER_ARG, Probe},
    spec::{LayerSwitches, SandboxSpec},
};

#[derive(Clone)]
pub struct SupervisorConfig {
    /// The `bulkhead` binary (it is also the sandbox helper).
    pub helper: PathBuf,
    /// Names this supervisor's cgroups, so servers sharing a machine keep
    /// apart (derived from the data directory).
    pub instance: String,
    /// An empty directory on which sandboxes build their root.
    pub sandbox_root: PathBuf,
    pub now: Now,
}

impl std::fmt::Debug for SupervisorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorConfig")
            .field("helper", &self.helper)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// Which confinement layers this machine gives, and why not the others.
#[derive(Debug, Clone, Serialize)]
pub struct Layers {
    pub probe: Probe,
    /// `Ok(version)` or why cgroups cannot be used.
    pub cgroups: Result<&'static str, String>,
}

impl Layers {
    pub fn switches(&self) -> LayerSwitches {
        LayerSwitches {
            user: self.probe.root,
            namespaces: self.probe.namespaces.is_none(),
            network: self.probe.network.is_none(),
            landlock: self.probe.landlock.is_none(),
            seccomp: self.probe.seccomp.is_none(),
        }
    }

    /// Every missing layer, with the reason: said at start-up and reported
    /// by `bulkhead verify isolation`.
    pub fn missing(&self) -> Vec<(&'static str, String)> {
        let mut missing = Vec::new();
        if !self.probe.root {
            missing.push((
                "user",
                "the server does not run as root: workers run as the server's own user".to_owned(),
            ));
        }
        for (layer, reason) in [
            ("namespaces", &self.probe.namespaces),
            ("network", &self.probe.network),
            ("landlock", &self.probe.landlock),
            ("seccomp", &self.probe.seccomp),
        ] {
            if let Some(reason) = reason {
                missing.push((layer, reason.clone()));
            }
        }
        if let Err(reason) = &self.cgroups {
            missing.push(("cgroups", reason.clone()));
        }
        missing
    }
}

/// When a worker that keeps ending is restarted, and when it is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// Ends in a row (each within `stable_after` of its start) that make a
    /// crash loop: the worker is marked failed and not restarted.
    pub crash_loop: u32,
    pub stable_after: Duration,
    /// How long a stop waits after SIGTERM before SIGKILL.
    pub grace: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
            crash_loop: 5,
            stable_after: Duration::from_secs(60),
            grace: Duration::from_secs(10),
        }
    }
}

/// How often a worker is checked before its first passed health check.
const STARTUP_CHECKS: Duration = Duration::from_millis(250);
/// How often the worker's cgroup is asked whether the kernel killed one of
/// its processes for memory: the worker is then stopped whole.
const OOM_CHECKS: Duration = Duration::from_millis(100);

/// Everything about one worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Unique among this supervisor's workers: names its cgroup.
    pub key: String,
    /// Its log, `<log_dir>/<log_name>.log`: one per worker index of an app,
    /// whichever version runs.
    pub log_name: String,
    pub sandbox: SandboxSpec,
    pub limits: CgroupLimits,
    /// Port inside the worker's network → where it leads.
    pub forwards: Vec<(u16, Target)>,
    pub log_dir: PathBuf,
    pub log_rotation: Rotation,
    pub restart: RestartPolicy,
    /// Host paths removed before each start (unless a directory): the
    /// socket a worker left, which its next start could not bind.
    pub stale: Vec<PathBuf>,
    pub health: Option<HealthProbe>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum WorkerState {
    Starting,
    Running {
        pid: u32,
        #[serde(with = "time::serde::rfc3339")]
        since: OffsetDateTime,
        restarts: u32,
        /// How the kernel enforced the worker's Landlock rules.
        landlock: String,
        /// The last health check's verdict; `None` before the first, or
        /// without a check.
        healthy: Option<bool>,
    },
    Backoff {
        failures: u32,
        retry_in_ms: u64,
        last_exit: String,
    },
    Failed {
        reason: String,
    },
    Stopped,
}

/// What happened to a worker, for the audit stream and the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub key: String,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Started {
        pid: u32,
    },
    /// Ended without being asked to; it will be restarted.
    Exited {
        reason: String,
    },
    /// Gave up: crash loop, or the sandbox cannot be built.
    Failed {
        reason: String,
    },
    Stopped,
}

#[derive(Debug)]
enum Control {
    Stop { grace: Duration },
    Signal(i32),
}

#[derive(Debug)]
struct Handle {
    control: mpsc::Sender<Control>,
    state: watch::Receiver<WorkerState>,
    task: JoinHandle<()>,
}

#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: SupervisorConfig,
    layers: Layers,
    cgroups: Option<Cgroups>,
    workers: Mutex<HashMap<String, Handle>>,
    events: broadcast::Sender<Event>,
}

impl Supervisor {
    /// Probes the machine's layers, finds the cgroups, and kills whatever
    /// an earlier run of this supervisor left (workers are restarted by
    /// their owner, never duplicated).
    pub async fn start(config: SupervisorConfig) -> Result<Self, String> {
        std::fs::create_dir_all(&config.sandbox_root)
            .map_err(|e| format!("cannot create {}: {e}", config.sandbox_root.display()))?;
        let probe = probe(&config.helper).await?;
        let cgroups = if probe.root {
            Cgroups::detect(&config.instance)
        } else {
            Err("the server does not run as root".to_owned())
        };
        if let Ok(cgroups) = &cgroups {
            let left = cgroups.sweep();
            if left > 0 {
                tracing::info!(workers = left, "stopped the workers an earlier run left behind");
            }
        }
        let layers =
            Layers { probe, cgroups: cgroups.as_ref().map(Cgroups::version).map_err(Clone::clone) };
        for (layer, reason) in layers.missing() {
            tracing::warn!(
                layer,
                "runtime confinement layer unavailable, workers run without it: {reason}"
            );
        }
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                layers,
                cgroups: cgroups.ok(),
                workers: Mutex::default(),
                events,
            }),
        })
    }

    pub fn layers(&self) -> &Layers {
        &self.inner.layers
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Starts a worker; a worker already running under the same key is
    /// stopped first.
    pub async fn run(&self, mut spec: WorkerSpec) {
        self.stop(&spec.key, spec.restart.grace).await;
        let switches = self.inner.layers.switches();
        let wanted = spec.sandbox.layers;
        spec.sandbox.layers = LayerSwitches {
            user: wanted.user && switches.user,
            namespaces: wanted.namespaces && switches.namespaces,
            network: wanted.network && switches.network,
            landlock: wanted.landlock && switches.landlock,
            seccomp: wanted.seccomp && switches.seccomp,
        };
        spec.sandbox.root = self.inner.config.sandbox_root.clone();
        if !spec.sandbox.layers.user {
            // Without root the worker is the server's own user.
            spec.sandbox.uid = nix::unistd::geteuid().as_raw();
            spec.sandbox.gid = nix::unistd::getegid().as_raw();
        }
        if !spec.sandbox.layers.namespaces {
            spec.sandbox.use_host_paths();
        }
        let (control, commands) = mpsc::channel(8);
        let (state_tx, state) = watch::channel(WorkerState::Starting);
        let key = spec.key.clone();
        let task = tokio::spawn(Arc::clone(&self.inner).watch(spec, commands, state_tx));
        if let Ok(mut workers) = self.inner.workers.lock() {
            workers.insert(key, Handle { control, state, task });
        }
    }

    pub fn state(&self, key: &str) -> Option<WorkerState> {
        self.inner.workers.lock().ok()?.get(key).map(|h| h.state.borrow().clone())
    }

    /// Waits until the worker's state satisfies `done` (or it is gone).
    pub async fn wait_for(
        &self,
        key: &str,
        done: impl Fn(&WorkerState) -> bool,
    ) -> Option<WorkerState> {
        let mut state = self.inner.workers.lock().ok()?.get(key)?.state.clone();
        state.wait_for(|s| done(s)).await.ok().map(|s| s.clone())
    }

    /// Sends a signal (SIGHUP to reload, say) to the worker.
    pub async fn signal(&self, key: &str, signal: i32) -> bool {
        let control =
            self.inner.workers.lock().ok().and_then(|w| w.get(key).map(|h| h.control.clone()));
        // Never waits: a worker being started does not read its commands,
        // and a caller (a flags change) must not hang on it.
        match control {
            Some(control) => control.try_send(Control::Signal(signal)).is_ok(),
            None => false,
        }
    }

    /// Stops the worker (SIGTERM, SIGKILL after `grace`) and forgets it.
    /// `false` if there was none.
    pub async fn stop(&self, key: &str, grace: Duration) -> bool {
        let handle = self.inner.workers.lock().ok().and_then(|mut w| w.remove(key));
        let Some(handle) = handle else { return false };
        let _ = handle.control.send(Control::Stop { grace }).await;
        let _ = handle.task.await;
        true
    }

    /// Stops every worker, all at once.
    pub async fn shutdown(&self, grace: Duration) {
        let keys: Vec<String> =
            self.inner.workers.lock().map(|w| w.keys().cloned().collect()).unwrap_or_default();
        futures_util::future::join_all(keys.iter().map(|k| self.stop(k, grace))).await;
        if let Some(cgroups) = &self.inner.cgroups {
            cgroups.remove_base();
        }
    }
}

impl Inner {
    fn emit(&self, key: &str, kind: EventKind) {
        let _ = self.events.send(Event { key: key.to_owned(), kind });
    }

    async fn watch(
        self: Arc<Self>,
        spec: WorkerSpec,
        mut commands: mpsc::Receiver<Control>,
        state: watch::Sender<WorkerState>,
    ) {
        let mut failures = 0u32;
        let mut restarts = 0u32;
        let log = match LogFile::open(&spec.log_dir, &spec.log_name, spec.log_rotation) {
            Ok(log) => Arc::new(Mutex::new(log)),
            Err(e) => {
                let reason =
                    format!("cannot open the worker's log in {}: {e}", spec.log_dir.display());
                self.emit(&spec.key, EventKind::Failed { reason: reason.clone() });
                let _ = state.send(WorkerState::Failed { reason });
                return;
            }
        };
        loop {
            let _ = state.send(WorkerState::Starting);
            let started_at = Instant::now();
            let outcome = self.run_once(&spec, &mut commands, &state, &log, restarts).await;
            let reason = match outcome {
                Outcome::Stopped => {
                    self.emit(&spec.key, EventKind::Stopped);
                    let _ = state.send(WorkerState::Stopped);
                    return;
                }
                Outcome::Ended(reason) => reason,
            };
            if started_at.elapsed() >= spec.restart.stable_after {
                failures = 0;
            }
            failures += 1;
            if failures >= spec.restart.crash_loop {
                let reason = format!("crash loop: ended {failures} times in a row, last: {reason}");
                self.emit(&spec.key, EventKind::Failed { reason: reason.clone() });
                let _ = state.send(WorkerState::Failed { reason });
                return wait_for_stop(commands).await;
            }
            self.emit(&spec.key, EventKind::Exited { reason: reason.clone() });
            let delay = spec
                .restart
                .initial
                .saturating_mul(1 << (failures - 1).min(16))
                .min(spec.restart.max);
            let _ = state.send(WorkerState::Backoff {
                failures,
                retry_in_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                last_exit: reason,
            });
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                command = commands.recv() => match command {
                    Some(Control::Signal(_)) => {}
                    Some(Control::Stop { .. }) | None => {
                        self.emit(&spec.key, EventKind::Stopped);
                        let _ = state.send(WorkerState::Stopped);
                        return;
                    }
                },
            }
            restarts += 1;
        }
    }

    async fn run_once(
        &self,
        spec: &WorkerSpec,
        commands: &mut mpsc::Receiver<Control>,
        state: &watch::Sender<WorkerState>,
        log: &Arc<Mutex<LogFile>>,
        restarts: u32,
    ) -> Outcome {
        let cgroup = match &self.cgroups {
            Some(cgroups) => match cgroups.create(&spec.key, &spec.limits) {
                Ok(cgroup) => Some(cgroup),
                Err(e) => return Outcome::Ended(format!("cannot set the worker's limits: {e}")),
            },
            None => None,
        };
        for path in &spec.stale {
            // Never followed: the worker may have left a link here.
            if std::fs::symlink_metadata(path).is_ok_and(|m| !m.is_dir()) {
                let _ = std::fs::remove_file(path);
            }
        }
        let (Ok((out_r, out_w)), Ok((err_r, err_w))) = (std::io::pipe(), std::io::pipe()) else {
            return Outcome::Ended("cannot make the worker's output pipes".to_owned());
        };
        let collectors = [(out_r, "stdout"), (err_r, "stderr")].map(|(reader, stream)| {
            let pipe =
                tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(reader));
            let (log, now) = (Arc::clone(log), Arc::clone(&self.config.now));
            tokio::spawn(async move {
                if let Ok(pipe) = pipe {
                    logs::collect(pipe, stream, log, now).await;
                }
            })
        });
        let ports: Vec<u16> = spec.forwards.iter().map(|(port, _)| *port).collect();
        let output = Output { stdout: out_w.into(), stderr: err_w.into() };
        // Before the launch: a kill while the sandbox is built counts too.
        let oom_before = cgroup.as_ref().map_or(0, |c| c.oom_kills());
        let launched =
            launch(&self.config.helper, &spec.sandbox, cgroup.as_ref(), &ports, output).await;
        let outcome = match launched {
            Err(error) => Outcome::Ended(format!("the sandbox could not be built: {error}")),
            Ok(mut worker) => {
                let forwards = self.start_forwards(spec, &mut worker);
                self.emit(&spec.key, EventKind::Started { pid: worker.helper_pid });
                let since = (self.config.now)();
                let landlock = worker.landlock.clone();
                let _ = state.send(WorkerState::Running {
                    pid: worker.helper_pid,
                    since,
                    restarts,
                    landlock,
                    healthy: None,
                });
                let watch = cgroup.as_ref().map(|c| (c, oom_before));
                let outcome =
                    serve(&mut worker, commands, spec.health.as_ref(), watch, state).await;
                for forward in forwards {
                    forward.abort();
                }
                match outcome {
                    Served::Stopped => Outcome::Stopped,
                    Served::Unhealthy(reason) => Outcome::Ended(reason),
                    Served::OutOfMemory => Outcome::Ended(out_of_memory(&spec.limits)),
                    Served::Exited(code) => {
                        let oom = cgroup.as_ref().is_some_and(|c| c.oom_kills() > oom_before);
                        Outcome::Ended(describe_exit(code, oom, &spec.limits))
                    }
                }
            }
        };
        if let Some(cgroup) = cgroup {
            let _ = tokio::task::spawn_blocking(move || {
                cgroup.kill_all();
                cgroup.remove();
            })
            .await;
        }
        if !spec.sandbox.layers.namespaces {
            // Secrets on disk for no longer than the worker runs.
            let _ = std::fs::remove_dir_all(spec.sandbox.secrets_dir());
            let _ = std::fs::remove_dir_all(spec.sandbox.tmp_dir());
        }
        for collector in collectors {
            let _ = collector.await;
        }
        outcome
    }

    fn start_forwards(&self, spec: &WorkerSpec, worker: &mut Launched) -> Vec<JoinHandle<()>> {
        let key: Arc<str> = Arc::from(spec.key.as_str());
        std::mem::take(&mut worker.listeners)
            .into_iter()
            .zip(&spec.forwards)
            .filter_map(|(listener, (_, target))| {
                let listener = tokio::net::TcpListener::from_std(listener).ok()?;
                Some(tokio::spawn(forward::serve(
                    listener,
                    Arc::new(target.clone()),
                    Arc::clone(&key),
                )))
            })
            .collect()
    }
}

enum Outcome {
    Stopped,
    Ended(String),
}

enum Served {
    Stopped,
    Exited(i32),
    /// Killed after failing its health check too many times in a row.
    Unhealthy(String),
    /// Killed whole after the kernel killed one of its processes for
    /// memory.
    OutOfMemory,
}

async fn serve(
    worker: &mut Launched,
    commands: &mut mpsc::Receiver<Control>,
    health: Option<&HealthProbe>,
    oom: Option<(&Cgroup, u64)>,
    state: &watch::Sender<WorkerState>,
) -> Served {
    // Until its first pass the worker is checked often (a switch to a new
    // version waits for that pass), and its failures count only once it
    // has had `failures` intervals to come up.
    let started = tokio::time::Instant::now();
    let mut passed = false;
    let mut failed = 0u32;
    let mut check_at = started;
    // Its own clock: commands (a SIGHUP per flags change) do not delay it.
    let mut oom_checks = tokio::time::interval(OOM_CHECKS);
    oom_checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if check_at <= tokio::time::Instant::now() {
            check_at = tokio::time::Instant::now()
                + match health {
                    Some(h) if passed => h.interval,
                    Some(h) => h.interval.min(STARTUP_CHECKS),
                    None => Duration::from_secs(86_400),
                };
        }
        tokio::select! {
            code = worker.wait() => return Served::Exited(code),
            // A worker at its memory limit is stopped whole (as a cgroup
            // v2 `memory.oom.group` does) and restarted with backoff,
            // rather than left to fork new hogs for the kernel to kill ten
            // times a second: that churn is what its neighbours feel.
            _ = oom_checks.tick(), if oom.is_some() => {
                if oom.is_some_and(|(cgroup, before)| cgroup.oom_kills() > before) {
                    worker.kill().await;
                    return Served::OutOfMemory;
                }
            }
            () = tokio::time::sleep_until(check_at), if health.is_some() => {
                let Some(probe) = health else { continue };
                let verdict = health::check(probe).await;
                state.send_modify(|s| {
                    if let WorkerState::Running { healthy, .. } = s {
                        *healthy = Some(verdict.is_ok());
                    }
                });
                let coming_up = !passed && started.elapsed() < probe.interval * probe.failures;
                match verdict {
                    Ok(()) => {
                        passed = true;
                        failed = 0;
                    }
                    Err(_) if coming_up => {}
                    Err(why) => {
                        failed += 1;
                        if failed >= probe.failures {
                            worker.kill().await;
                            return Served::Unhealthy(format!(
                                "failed its health check {failed} times in a row (GET {}: {why})",
                                probe.path
                            ));
                        }
                    }
                }
            }
            command = commands.recv() => match command {
                Some(Control::Signal(signal)) => {
                    let _ = worker.signal(signal).await;
                }
                Some(Control::Stop { .. }) | None => {
                    // The handle dropped (the supervisor going away): no grace.
                    let grace = match command { Some(Control::Stop { grace }) => grace, _ => Duration::ZERO };
                    let _ = worker.signal(libc::SIGTERM).await;
                    if tokio::time::timeout(grace, worker.wait()).await.is_err() {
                        worker.kill().await;
                    }
                    return Served::Stopped;
                }
            },
        }
    }
}

/// Waits, failed, until told to stop (the handle stays for `state`).
async fn wait_for_stop(mut commands: mpsc::Receiver<Control>) {
    while let Some(command) = commands.recv().await {
        if let Control::Stop { .. } = command {
            return;
        }
    }
}

fn out_of_memory(limits: &CgroupLimits) -> String {
    format!("killed for using more than its memory limit ({} MiB)", limits.memory_bytes >> 20)
}

fn describe_exit(code: i32, oom: bool, limits: &CgroupLimits) -> String {
    if oom {
        return out_of_memory(limits);
    }
    match code {
        125 => "the sandbox could not be built (see the worker's log)".to_owned(),
        127 => "its command was not found in the sandbox".to_owned(),
        126 => "its command could not be executed".to_owned(),
        c if c > 128 => format!("killed by signal {}", c - 128),
        c => format!("exited with code {c}"),
    }
}

/// Runs the helper's probe: each layer tried for real in a throw-away process.
async fn probe(helper: &std::path::Path) -> Result<Probe, String> {
    let output = tokio::process::Command::new(helper)
        .args([HELPER_ARG, "probe"])
        .env_clear()
        .output()
        .await
        .map_err(|e| format!("cannot run the sandbox probe {}: {e}", helper.display()))?;
    serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "the sandbox probe failed ({e}): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
    })
}
