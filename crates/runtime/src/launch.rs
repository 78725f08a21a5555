//! The supervisor's side of one sandbox helper: start it, hand it the spec,
//! set up the outside of its namespaces (cgroup, network), let it start the
//! worker, then relay signals and learn how it ended.

use std::{
    net::TcpListener,
    os::{fd::OwnedFd, unix::net::UnixStream as StdUnixStream},
    path::Path,
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines},
    net::{
        UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
    process::Child,
};

use crate::{
    cgroup::Cgroup,
    netns,
    sandbox::{Command, HELPER_ARG, Report},
    spec::SandboxSpec,
};

/// How long the helper may take to build the sandbox.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A started worker.
#[derive(Debug)]
pub struct Launched {
    child: Child,
    control: OwnedWriteHalf,
    reports: Lines<BufReader<OwnedReadHalf>>,
    /// The worker's pid as its init sees it (2, inside a PID namespace).
    pub pid: u32,
    /// The host pid of stage one (its cgroup holds the worker).
    pub helper_pid: u32,
    pub landlock: String,
    pub seccomp: bool,
    /// One per forwarded port, listening inside the worker's network.
    pub listeners: Vec<TcpListener>,
}

/// Output pipes for the worker's standard output and error.
#[derive(Debug)]
pub struct Output {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

pub async fn launch(
    helper: &Path,
    spec: &SandboxSpec,
    cgroup: Option<&Cgroup>,
    ports: &[u16],
    output: Output,
) -> Result<Launched, String> {
    let (ours, theirs) =
        StdUnixStream::pair().map_err(|e| format!("cannot make a control socket: {e}"))?;
    let child = tokio::process::Command::new(helper)
        .arg(HELPER_ARG)
        .env_clear()
        .envs(crate::sandbox::HELPER_ENV)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(output.stdout))
        .stderr(Stdio::from(output.stderr))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the sandbox helper {}: {e}", helper.display()))?;
    let helper_pid = child.id().ok_or("the sandbox helper exited at once")?;
    ours.set_nonblocking(true).map_err(|e| format!("cannot set up the control socket: {e}"))?;
    let (read, control) = UnixStream::from_std(ours)
        .map_err(|e| format!("cannot set up the control socket: {e}"))?
        .into_split();
    let mut launched = Launched {
        child,
        control,
        reports: BufReader::new(read).lines(),
        pid: 0,
        helper_pid,
        landlock: String::new(),
        seccomp: false,
        listeners: Vec::new(),
    };
    let setup = async {
        launched
            .send_line(
                &serde_json::to_string(spec).map_err(|e| format!("cannot encode the spec: {e}"))?,
            )
            .await?;
        match launched.next_report().await? {
            Report::Unshared => {}
            other => return Err(unexpected(&other)),
        }
        if let Some(cgroup) = cgroup {
            cgroup.add(helper_pid)?;
        }
        if spec.layers.network {
            let ports = ports.to_vec();
            launched.listeners =
                tokio::task::spawn_blocking(move || netns::prepare(helper_pid, &ports))
                    .await
                    .map_err(|e| format!("network set-up failed: {e}"))??;
        }
        launched.command(Command::Go).await?;
        match launched.next_report().await? {
            Report::Started { pid, landlock, seccomp } => {
                launched.pid = pid;
                launched.landlock = landlock;
                launched.seccomp = seccomp;
                Ok(())
            }
            Report::Failed { error } => Err(error),
            other => Err(unexpected(&other)),
        }
    };
    match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
        Ok(Ok(())) => Ok(launched),
        Ok(Err(error)) => {
            launched.kill().await;
            Err(error)
        }
        Err(_) => {
            launched.kill().await;
            Err(format!("the sandbox was not ready within {} s", SETUP_TIMEOUT.as_secs()))
        }
    }
}

fn unexpected(report: &Report) -> String {
    match report {
        Report::Failed { error } => error.clone(),
        Report::Exited { code } => format!("the sandbox helper ended early (code {code})"),
        other => format!("the sandbox helper said {other:?} out of turn"),
    }
}

impl Launched {
    async fn send_line(&mut self, line: &str) -> Result<(), String> {
        let mut line = zeroize::Zeroizing::new(line.to_owned());
        line.push('\n');
        self.control
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("the sandbox helper went away: {e}"))
    }

    async fn command(&mut self, command: Command) -> Result<(), String> {
        let line = serde_json::to_string(&command).map_err(|e| format!("cannot encode: {e}"))?;
        self.send_line(&line).await
    }

    async fn next_report(&mut self) -> Result<Report, String> {
        match self.reports.next_line().await {
            Ok(Some(line)) => serde_json::from_str(&line)
                .map_err(|e| format!("bad report from the sandbox helper: {e}")),
            Ok(None) => {
                let status = self.child.wait().await.map_err(|e| e.to_string())?;
                Err(format!("the sandbox helper ended ({status}) before the worker started"))
            }
            Err(e) => Err(format!("cannot read the sandbox helper: {e}")),
        }
    }

    /// Sends `signal` to the worker (through its init).
    pub async fn signal(&mut self, signal: i32) -> Result<(), String> {
        self.command(Command::Signal { signal }).await
    }

    /// Waits for the worker to end; its exit code, or 128 + the signal that
    /// ended it.
    pub async fn wait(&mut self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        match self.child.wait().await {
            Ok(status) => status.code().or(status.signal().map(|s| 128 + s)).unwrap_or(-1),
            Err(_) => -1,
        }
    }

    /// Ends the helper and with it the worker (its init is killed when the
    /// control socket closes; SIGKILL on the helper in case it hangs).
    pub async fn kill(&mut self) {
        let _ = self.control.shutdown().await;
        // Stage one ends the worker itself on seeing the socket close (its
        // init, and without a PID namespace its process group): give it a
        // moment before the SIGKILL that would stop it doing so.
        if tokio::time::timeout(std::time::Duration::from_secs(1), self.child.wait()).await.is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}
