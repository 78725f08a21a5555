//! The seccomp filter: every system call is allowed except those an
//! application never needs and an attacker wants. Denied calls fail with
//! `EPERM` (`clone3` with `ENOSYS`, so the C library falls back to `clone`,
//! whose flags the filter can read). The list, with why, is in
//! `docs/runtime.md`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// Refused outright, by name for the documentation and the tests.
pub const DENIED: &[(&str, i64)] = &[
    // Other processes' memory and execution.
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    // The filesystem tree and namespaces.
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    // The kernel itself.
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("syslog", libc::SYS_syslog),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("fanotify_init", libc::SYS_fanotify_init),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("vhangup", libc::SYS_vhangup),
    // The machine's clock, name and memory placement.
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("sethostname", libc::SYS_sethostname),
    ("setdomainname", libc::SYS_setdomainname),
    ("mbind", libc::SYS_mbind),
    ("set_mempolicy", libc::SYS_set_mempolicy),
    ("migrate_pages", libc::SYS_migrate_pages),
    ("move_pages", libc::SYS_move_pages),
];

/// Port I/O, on the architecture that has it.
#[cfg(target_arch = "x86_64")]
pub const DENIED_HERE: &[(&str, i64)] = &[("iopl", libc::SYS_iopl), ("ioperm", libc::SYS_ioperm)];
#[cfg(not(target_arch = "x86_64"))]
pub const DENIED_HERE: &[(&str, i64)] = &[];

/// `clone` flags that would make a namespace: refused.
const NAMESPACE_FLAGS: [i32; 7] = [
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

fn arch() -> Result<seccompiler::TargetArch, String> {
    std::env::consts::ARCH.try_into().map_err(|e| format!("seccomp: {e:?}"))
}

/// Compiles the two filters: the deny list (EPERM), and `clone3` (ENOSYS).
pub fn filters() -> Result<[BpfProgram; 2], String> {
    let compile_error =
        |e: seccompiler::BackendError| format!("cannot build the seccomp filter: {e}");
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&(_, nr)| (nr, Vec::new())).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|&flag| {
            let flag = u64::try_from(flag).unwrap_or_default();
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag)
                .and_then(|c| SeccompRule::new(vec![c]))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(compile_error)?;
    rules.insert(libc::SYS_clone, clone_rules);
    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(u32::try_from(libc::EPERM).unwrap_or(1)),
        arch()?,
    )
    .map_err(compile_error)?;
    let clone3 = SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(u32::try_from(libc::ENOSYS).unwrap_or(38)),
        arch()?,
    )
    .map_err(compile_error)?;
    let program = |f: SeccompFilter| BpfProgram::try_from(f).map_err(compile_error);
    Ok([program(deny)?, program(clone3)?])
}

/// On x86-64 the same architecture carries the x32 calls, numbered from
/// 0x40000000: the deny list's numbers would not match them, so every one
/// of them fails with `ENOSYS` first (a kernel without x32 refuses them
/// anyway).
#[cfg(target_arch = "x86_64")]
fn no_x32() -> Vec<seccompiler::sock_filter> {
    use seccompiler::sock_filter;
    const LOAD_WORD: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JUMP_EQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JUMP_GE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;
    let enosys = u32::try_from(libc::ENOSYS).unwrap_or(38);
    let op = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    vec![
        op(LOAD_WORD, 4, 0, 0),               // seccomp_data.arch
        op(JUMP_EQ, AUDIT_ARCH_X86_64, 0, 3), // another architecture: allow
        op(LOAD_WORD, 0, 0, 0),               // seccomp_data.nr
        op(JUMP_GE, X32_SYSCALL_BIT, 0, 1),
        op(RETURN, RET_ERRNO | enosys, 0, 0),
        op(RETURN, RET_ALLOW, 0, 0),
    ]
}

/// Installs the filters on this thread (the init is single-threaded, and
/// everything it starts inherits them).
pub fn install() -> Result<(), String> {
    let fail = |e: seccompiler::Error| format!("cannot install the seccomp filter: {e}");
    #[cfg(target_arch = "x86_64")]
    seccompiler::apply_filter(&no_x32()).map_err(fail)?;
    for filter in filters()? {
        seccompiler::apply_filter(&filter).map_err(fail)?;
    }
    Ok(())
}
