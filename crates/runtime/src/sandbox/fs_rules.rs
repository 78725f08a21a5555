//! Landlock: a second, kernel-enforced rule over what the mounts already
//! show, so that a mistake in the mount table (or a missing mount
//! namespace) still leaves the worker unable to write outside its own
//! directories. On kernels that have them it also limits TCP connections to
//! the forwarded ports and keeps signals and abstract Unix sockets inside
//! the worker's own domain.

use landlock::{
    ABI, Access, AccessFs, AccessNet, NetPort, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, path_beneath_rules,
};

use crate::spec::{SandboxSpec, paths};

/// The newest ABI whose rights this code asks for; older kernels enforce
/// what they can (best effort), and the status says how much.
const ABI_WANTED: ABI = ABI::V6;

/// Read and execute, everywhere the system's programs are (and the
/// secrets, wherever they are).
const READ_ONLY: [&str; 3] = ["/etc", "/proc", "/dev"];
const DEVICES: [&str; 3] = ["/dev/null", "/dev/zero", "/dev/full"];

pub fn restrict(spec: &SandboxSpec) -> Result<String, String> {
    let read = AccessFs::from_read(ABI_WANTED);
    let all = AccessFs::from_all(ABI_WANTED);
    let mut ruleset = Ruleset::default()
        .handle_access(all)
        .and_then(|r| r.scope(Scope::from_all(ABI_WANTED)))
        .map_err(|e| format!("cannot build the Landlock rules: {e}"))?;
    if !spec.connect_ports.is_empty() || spec.layers.network {
        ruleset = ruleset
            .handle_access(AccessNet::ConnectTcp)
            .map_err(|e| format!("cannot build the Landlock rules: {e}"))?;
    }
    let read_only = paths::SYSTEM
        .iter()
        .chain(READ_ONLY.iter())
        .map(std::path::PathBuf::from)
        .chain([spec.secrets_dir()])
        .chain(spec.binds.iter().filter(|b| !b.writable).map(|b| b.at.clone()));
    // `/dev/shm` is the worker's own only in its mount namespace.
    let shm = spec.layers.namespaces.then(|| std::path::PathBuf::from("/dev/shm"));
    let writable = DEVICES
        .iter()
        .map(std::path::PathBuf::from)
        .chain([spec.tmp_dir()])
        .chain(shm)
        .chain(spec.binds.iter().filter(|b| b.writable).map(|b| b.at.clone()));
    // Listing directories anywhere in the new root is harmless (it holds
    // only what the mounts chose to show) and programs expect it; on the
    // host's own tree it is not.
    let listable: Vec<&str> = if spec.layers.namespaces { vec!["/"] } else { Vec::new() };
    let status = ruleset
        .create()
        .and_then(|r| r.add_rules(path_beneath_rules(read_only, read)))
        .and_then(|r| r.add_rules(path_beneath_rules(writable, all)))
        .and_then(|r| r.add_rules(path_beneath_rules(listable, AccessFs::ReadDir)))
        .and_then(|r| {
            r.add_rules(spec.connect_ports.iter().map(|&port| {
                Ok::<_, landlock::RulesetError>(NetPort::new(port, AccessNet::ConnectTcp))
            }))
        })
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("cannot apply the Landlock rules: {e}"))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "enforced",
        RulesetStatus::PartiallyEnforced => "partially enforced (older kernel)",
        RulesetStatus::NotEnforced => "not enforced (the kernel has no Landlock)",
    }
    .to_owned())
}

/// Whether Landlock can be enforced here: `Err` says why not.
pub fn probe() -> Result<(), String> {
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("Landlock failed: {e}"))?;
    match status.ruleset {
        RulesetStatus::NotEnforced => {
            Err("the kernel does not enforce Landlock (not built in, or not in the lsm= list)"
                .to_owned())
        }
        _ => Ok(()),
    }
}
