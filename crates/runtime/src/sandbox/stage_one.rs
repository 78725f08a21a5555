//! Stage one: outside the worker's PID namespace, inside its network, IPC
//! and UTS namespaces; relays between the supervisor and init.

use std::{
    io::BufReader,
    os::{fd::AsFd, unix::net::UnixStream},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicI32, Ordering},
        mpsc,
    },
};

use nix::{
    sched::{CloneFlags, unshare},
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

use super::{HELPER_ARG, SETUP_FAILED, read_line, write_line};
use crate::spec::SandboxSpec;

/// From the supervisor, after the spec.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// The namespaces' outside is ready (forwards listening): start init.
    Go,
    Signal {
        signal: i32,
    },
}

/// To the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Report {
    /// Namespaces made; `/proc/<stage one>/ns/net` is the worker's network.
    Unshared,
    /// The worker runs, with these layers in force.
    Started { pid: u32, landlock: String, seccomp: bool },
    /// The sandbox could not be built: nothing of the worker ran.
    Failed { error: String },
    /// Init ended with this code (the worker's, or 128 + its signal).
    Exited { code: i32 },
}

pub fn run() -> i32 {
    let control = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => UnixStream::from(fd),
        Err(e) => {
            eprintln!("bulkhead sandbox: no control socket: {e}");
            return i32::from(SETUP_FAILED);
        }
    };
    let Ok(mut writer) = control.try_clone() else { return i32::from(SETUP_FAILED) };
    match relay(control, &mut writer) {
        Ok(code) => code,
        Err(error) => {
            let _ = write_line(&mut writer, &Report::Failed { error });
            i32::from(SETUP_FAILED)
        }
    }
}

fn relay(control: UnixStream, writer: &mut UnixStream) -> Result<i32, String> {
    let mut commands = BufReader::new(control);
    let Some(spec) = read_line::<SandboxSpec>(&mut commands)? else {
        return Ok(i32::from(SETUP_FAILED));
    };
    // Threads first: once this process is in a new PID namespace it can
    // start processes but no more threads (clone refuses CLONE_THREAD).
    let init = Arc::new(AtomicI32::new(0));
    // Without a PID namespace, killing init does not end the worker: its
    // process group (it leads one) is killed too. Never with a namespace,
    // where its pid is not a host pid.
    let group = Arc::new(AtomicI32::new(0));
    let own_namespace = spec.layers.namespaces;
    let (go_tx, go) = mpsc::channel::<bool>();
    let signaller = Arc::clone(&init);
    let group_to_kill = Arc::clone(&group);
    std::thread::spawn(move || {
        loop {
            let command = read_line::<Command>(&mut commands);
            let pid = signaller.load(Ordering::SeqCst);
            match command {
                Ok(Some(Command::Go)) => {
                    let _ = go_tx.send(true);
                }
                Ok(Some(Command::Signal { signal })) if pid > 0 => {
                    if let Ok(signal) = Signal::try_from(signal) {
                        let _ = kill(Pid::from_raw(pid), signal);
                    }
                }
                Ok(Some(Command::Signal { .. })) => {}
                // The supervisor went away: so does the worker.
                Ok(None) | Err(_) => {
                    if pid > 0 {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                    let group = group_to_kill.load(Ordering::SeqCst);
                    if group > 1 {
                        let _ = kill(Pid::from_raw(-group), Signal::SIGKILL);
                    }
                    let _ = go_tx.send(false);
                    return;
                }
            }
        }
    });
    let (ours, theirs) = UnixStream::pair().map_err(|e| format!("cannot make a socket: {e}"))?;
    let mut from_init =
        BufReader::new(ours.try_clone().map_err(|e| format!("cannot clone a socket: {e}"))?);
    let mut relay_writer = writer.try_clone().map_err(|e| format!("cannot clone a socket: {e}"))?;
    // Init's reports, passed on as they come, until init ends.
    let reports = std::thread::spawn(move || {
        while let Ok(Some(report)) = read_line::<Report>(&mut from_init) {
            if let Report::Started { pid, .. } = &report
                && !own_namespace
            {
                group.store(i32::try_from(*pid).unwrap_or(0), Ordering::SeqCst);
            }
            if write_line(&mut relay_writer, &report).is_err() {
                break;
            }
        }
    });

    let mut flags = CloneFlags::empty();
    if spec.layers.namespaces {
        flags |= CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS;
    }
    if spec.layers.network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if !flags.is_empty() {
        unshare(flags).map_err(|e| format!("cannot create the worker's namespaces: {e}"))?;
    }
    write_line(writer, &Report::Unshared)?;
    if go.recv() != Ok(true) {
        return Ok(i32::from(SETUP_FAILED));
    }
    let child = std::process::Command::new("/proc/self/exe")
        .args([HELPER_ARG, "init"])
        .env_clear()
        .envs(super::HELPER_ENV)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
        .spawn()
        .map_err(|e| format!("cannot start the worker's init: {e}"))?;
    init.store(i32::try_from(child.id()).map_err(|_| "pid out of range")?, Ordering::SeqCst);
    let mut to_init = ours;
    write_line(&mut to_init, &spec)?;
    drop(spec);
    let code = wait(child);
    drop(to_init);
    let _ = reports.join();
    let _ = write_line(writer, &Report::Exited { code });
    Ok(code)
}

fn wait(mut child: Child) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match child.wait() {
        Ok(status) => {
            status.code().or(status.signal().map(|s| 128 + s)).unwrap_or(i32::from(SETUP_FAILED))
        }
        Err(_) => i32::from(SETUP_FAILED),
    }
}
