//! The sandbox helper: the `bulkhead` binary run again as `bulkhead
//! __sandbox`, because a process cannot move its own threads into new PID
//! namespaces or drop to another user without affecting the supervisor's
//! other tenants.
//!
//! ```text
//! supervisor ──control socket (stdin)──▶ stage one (root, host view)
//!                                          unshare PID, IPC, UTS, network
//!                                          ── socket ──▶ init (PID 1 inside)
//!                                                         own mount namespace, new root,
//!                                                         user, no_new_privs, rlimits,
//!                                                         Landlock, seccomp
//!                                                         └─▶ the worker (PID 2)
//! ```
//!
//! Stage one stays outside the new PID namespace so it can report the
//! worker's exit and signal its init; init forwards signals to the worker
//! and reaps orphans. When the supervisor goes away (its end of the control
//! socket closes), stage one kills init, and with it every process of the
//! worker: nothing is left running unsupervised.

mod fs_rules;
mod init;
mod mounts;
pub mod seccomp;
mod stage_one;

use std::{
    ffi::OsString,
    io::{BufRead, Write},
    process::ExitCode,
};

use serde::{Deserialize, Serialize};

pub use stage_one::{Command, Report};

/// The first argument that turns the `bulkhead` binary into the helper.
pub const HELPER_ARG: &str = "__sandbox";

/// The environment of the helper's own processes (stage one and init; the
/// worker gets only its app's). The helper is the `bulkhead` binary, whose
/// allocator (mimalloc) asks the kernel for transparent huge pages: each of
/// a tenant's two helper processes would hold a 2 MiB page per arena it
/// barely touches, 10 MiB a tenant in all where 2 suffice (measured with
/// 100 tenants, `scripts/bench_runtime.py`).
pub(crate) const HELPER_ENV: [(&str, &str); 1] = [("MIMALLOC_ALLOW_THP", "0")];

/// Exit code of a worker whose sandbox could not be built (as `env` and
/// container runtimes use 125 for their own failures).
pub const SETUP_FAILED: u8 = 125;

/// Runs the helper. `args` are the arguments after [`HELPER_ARG`].
pub fn helper_main(args: &[OsString]) -> ExitCode {
    let code = match args.first().and_then(|a| a.to_str()) {
        None => stage_one::run(),
        Some("init") => init::run(),
        Some("probe") => probe::run(),
        Some(other) => {
            eprintln!("bulkhead sandbox: unknown stage {other:?}");
            i32::from(SETUP_FAILED)
        }
    };
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(SETUP_FAILED))
}

/// What the kernel offered when the probe ran: each layer, tried for real in
/// a throw-away process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Probe {
    pub root: bool,
    /// `None` when the namespaces could be made, else why not.
    pub namespaces: Option<String>,
    pub network: Option<String>,
    pub landlock: Option<String>,
    pub seccomp: Option<String>,
}

mod probe {
    use nix::sched::{CloneFlags, unshare};

    use std::io::Write;

    use super::{Probe, fs_rules, seccomp};

    pub fn run() -> i32 {
        let root = nix::unistd::geteuid().is_root();
        let probe = Probe {
            root,
            namespaces: unshare(
                CloneFlags::CLONE_NEWNS
                    | CloneFlags::CLONE_NEWPID
                    | CloneFlags::CLONE_NEWIPC
                    | CloneFlags::CLONE_NEWUTS
                    | CloneFlags::CLONE_NEWCGROUP,
            )
            .err()
            .map(|e| format!("cannot create mount, PID, IPC, UTS and cgroup namespaces: {e}")),
            network: unshare(CloneFlags::CLONE_NEWNET)
                .err()
                .map(|e| format!("cannot create a network namespace: {e}")),
            landlock: fs_rules::probe().err(),
            seccomp: seccomp::install().err(),
        };
        match serde_json::to_string(&probe) {
            Ok(line) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                0
            }
            Err(_) => i32::from(super::SETUP_FAILED),
        }
    }
}

/// Reads one JSON line.
fn read_line<T: for<'de> Deserialize<'de>>(reader: &mut impl BufRead) -> Result<Option<T>, String> {
    let mut line = zeroize::Zeroizing::new(String::new());
    match reader.read_line(&mut line) {
        Ok(0) => Ok(None),
        Ok(_) => serde_json::from_str(&line).map(Some).map_err(|e| format!("bad message: {e}")),
        Err(e) => Err(format!("cannot read: {e}")),
    }
}

/// Writes one JSON line.
fn write_line<T: Serialize>(writer: &mut impl Write, message: &T) -> Result<(), String> {
    let mut line = zeroize::Zeroizing::new(
        serde_json::to_string(message).map_err(|e| format!("cannot encode: {e}"))?,
    );
    line.push('\n');
    writer
        .write_all(line.as_bytes())
        .and_then(|()| writer.flush())
        .map_err(|e| format!("cannot write: {e}"))
}
