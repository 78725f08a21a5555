//! Init: PID 1 of the worker's PID namespace. Builds the worker's view of
//! the system, gives up root and every right the worker will not need, then
//! starts the worker and stays as its init: forwards the signals stage one
//! sends, reaps orphans, and exits with the worker's status (which ends
//! every process left in the namespace).

use std::{
    io::BufReader,
    os::unix::process::CommandExt,
    os::{fd::AsFd, unix::net::UnixStream},
    process::Stdio,
};

use nix::{
    errno::Errno,
    sched::{CloneFlags, unshare},
    sys::{
        resource::{Resource, setrlimit},
        signal::{Signal, kill},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{Gid, Pid, Uid, setgroups, sethostname, setresgid, setresuid},
};
use signal_hook::{
    consts::{SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2},
    iterator::Signals,
};

use super::{Report, SETUP_FAILED, fs_rules, mounts, read_line, seccomp, write_line};
use crate::spec::SandboxSpec;

pub fn run() -> i32 {
    let Ok(socket) = std::io::stdin().as_fd().try_clone_to_owned().map(UnixStream::from) else {
        return i32::from(SETUP_FAILED);
    };
    let Ok(mut reports) = socket.try_clone() else { return i32::from(SETUP_FAILED) };
    let spec = match read_line::<SandboxSpec>(&mut BufReader::new(socket)) {
        Ok(Some(spec)) => spec,
        Ok(None) => return i32::from(SETUP_FAILED),
        Err(error) => {
            let _ = write_line(&mut reports, &Report::Failed { error });
            return i32::from(SETUP_FAILED);
        }
    };
    let seccomp = spec.layers.seccomp;
    let started = confine(&spec).and_then(|landlock| start(&spec).map(|worker| (worker, landlock)));
    drop(spec);
    match started {
        Ok(((worker, signals), landlock)) => {
            let pid = u32::try_from(worker.as_raw()).unwrap_or_default();
            let _ = write_line(&mut reports, &Report::Started { pid, landlock, seccomp });
            drop(reports);
            supervise(worker, signals)
        }
        Err(error) => {
            let _ = write_line(&mut reports, &Report::Failed { error });
            i32::from(SETUP_FAILED)
        }
    }
}

/// Everything before the worker starts; returns how Landlock was enforced.
fn confine(spec: &SandboxSpec) -> Result<String, String> {
    if spec.layers.namespaces {
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| format!("cannot create the worker's mount namespace: {e}"))?;
        sethostname(&spec.hostname).map_err(|e| format!("cannot set the hostname: {e}"))?;
        mounts::build(spec)?;
    } else {
        mounts::private_dirs_on_host(spec)?;
    }
    if spec.layers.user {
        let (uid, gid) = (Uid::from_raw(spec.uid), Gid::from_raw(spec.gid));
        setgroups(&[]).map_err(|e| format!("cannot drop supplementary groups: {e}"))?;
        setresgid(gid, gid, gid).map_err(|e| format!("cannot become group {gid}: {e}"))?;
        setresuid(uid, uid, uid).map_err(|e| format!("cannot become user {uid}: {e}"))?;
    }
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    // If stage one dies (even by SIGKILL), init dies, and the namespace with
    // it. Set after the change of user, which clears it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("cannot tie init to its parent: {e}"))?;
    let limit = |resource, value: u64, what: &str| {
        setrlimit(resource, value, value).map_err(|e| format!("cannot limit {what}: {e}"))
    };
    limit(Resource::RLIMIT_CORE, 0, "core dumps")?;
    limit(Resource::RLIMIT_NOFILE, spec.limits.open_files, "open files")?;
    if let Some(processes) = spec.limits.processes {
        limit(Resource::RLIMIT_NPROC, processes, "processes")?;
    }
    let landlock = if spec.layers.landlock { fs_rules::restrict(spec)? } else { "off".to_owned() };
    if spec.layers.seccomp {
        seccomp::install()?;
    }
    Ok(landlock)
}

fn start(spec: &SandboxSpec) -> Result<(Pid, Signals), String> {
    // Registered before the worker exists, so no exit or signal is missed;
    // the worker starts with default handlers and an empty mask.
    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCHLD])
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    let child = std::process::Command::new(&spec.command)
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        // Its own process group, which stage one can kill whole when there
        // is no PID namespace to end with init.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", spec.command.display()))?;
    let pid = i32::try_from(child.id()).map_err(|_| "pid out of range".to_owned())?;
    Ok((Pid::from_raw(pid), signals))
}

fn supervise(worker: Pid, mut signals: Signals) -> i32 {
    loop {
        for signal in signals.wait() {
            if signal != SIGCHLD {
                if let Ok(signal) = Signal::try_from(signal) {
                    let _ = kill(worker, signal);
                }
                continue;
            }
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == worker => return code,
                    Ok(WaitStatus::Signaled(pid, signal, _)) if pid == worker => {
                        return 128 + signal as i32;
                    }
                    Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
        }
    }
}
