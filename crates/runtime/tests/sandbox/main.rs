//! Confinement against the real kernel: each layer, and the attacks of a
//! hostile tenant on a neighbour. The test binary is also the sandbox helper
//! (`__sandbox`) and the hostile worker (`__hostile`), so it has its own
//! main instead of libtest's. The cases need root (CI runs as root); without
//! it they are listed as skipped, with the reason, not passed.

// A test binary with its own harness: the report goes to standard output as
// libtest's would, and a panic is a test failure (clippy cannot tell that
// without `#[test]`).
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod hostile;

use std::{
    ffi::OsString,
    future::Future,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    pin::Pin,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use bulkhead_runtime::{
    cgroup::CgroupLimits,
    forward::{EgressPolicy, Target},
    logs::Rotation,
    sandbox::{HELPER_ARG, helper_main},
    spec::{Bind, LayerSwitches, SandboxLimits, SandboxSpec, SecretFile},
    supervisor::{RestartPolicy, Supervisor, SupervisorConfig, WorkerSpec, WorkerState},
};
use serde_json::Value;
use tempfile::TempDir;

type Case = fn() -> Pin<Box<dyn Future<Output = ()> + Send>>;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args.first().and_then(|a| a.to_str()) {
        Some(HELPER_ARG) => return helper_main(&args[1..]),
        Some("__hostile") => return hostile::main(&args[1..]),
        Some("__supervise") => {
            return supervise(args.get(1).and_then(|a| a.to_str()).unwrap_or_default());
        }
        _ => {}
    }
    let filters: Vec<String> = args
        .iter()
        .filter_map(|a| a.to_str())
        .filter(|a| !a.starts_with('-'))
        .map(str::to_owned)
        .collect();
    let cases: &[(&str, Case)] = &[
        ("a_worker_sees_only_its_own_world", || Box::pin(a_worker_sees_only_its_own_world())),
        ("a_hostile_worker_cannot_reach_its_neighbour", || {
            Box::pin(a_hostile_worker_cannot_reach_its_neighbour())
        }),
        ("denied_system_calls_fail_with_eperm", || Box::pin(denied_system_calls_fail_with_eperm())),
        ("a_setuid_binary_gives_no_privilege", || Box::pin(a_setuid_binary_gives_no_privilege())),
        ("limits_stop_a_bomb_and_spare_the_neighbour", || {
            Box::pin(limits_stop_a_bomb_and_spare_the_neighbour())
        }),
        ("a_crashing_worker_backs_off_then_fails", || {
            Box::pin(a_crashing_worker_backs_off_then_fails())
        }),
        ("stop_is_graceful_then_forced", || Box::pin(stop_is_graceful_then_forced())),
        ("output_goes_to_rotated_logs", || Box::pin(output_goes_to_rotated_logs())),
        ("forwards_let_through_only_what_the_tenant_may_reach", || {
            Box::pin(forwards_let_through_only_what_the_tenant_may_reach())
        }),
        ("a_restarted_supervisor_leaves_no_worker_behind", || {
            Box::pin(a_restarted_supervisor_leaves_no_worker_behind())
        }),
        ("an_unhealthy_worker_is_restarted", || Box::pin(an_unhealthy_worker_is_restarted())),
        ("without_namespaces_landlock_still_confines", || {
            Box::pin(without_namespaces_landlock_still_confines())
        }),
    ];
    let selected: Vec<_> = cases
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    if !nix::unistd::geteuid().is_root() {
        for (name, _) in &selected {
            println!("test {name} ... skipped: confinement needs root (CI runs as root)");
        }
        return ExitCode::SUCCESS;
    }
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        return ExitCode::FAILURE;
    };
    let mut failed = Vec::new();
    for (name, case) in &selected {
        let started = Instant::now();
        let outcome = runtime.block_on(async { tokio::spawn(case()).await });
        let ok = outcome.is_ok();
        println!(
            "test {name} ... {} ({:.1} s)",
            if ok { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        if !ok {
            failed.push(*name);
        }
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

/// A supervisor of its own per test: own cgroups, own sandbox root.
struct Kit {
    supervisor: Supervisor,
    app: TempDir,
    _root: TempDir,
}

impl Kit {
    async fn new() -> Self {
        let instance = format!("test{:08x}", rand_u32());
        Self::with_instance(instance).await
    }

    async fn with_instance(instance: String) -> Self {
        let root = tempfile::tempdir().unwrap();
        let app = tempfile::tempdir().unwrap();
        std::fs::set_permissions(app.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::copy(std::env::current_exe().unwrap(), app.path().join("hostile")).unwrap();
        std::fs::set_permissions(
            app.path().join("hostile"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let supervisor = Supervisor::start(SupervisorConfig {
            helper: std::env::current_exe().unwrap(),
            instance,
            sandbox_root: root.path().join("root"),
            #[allow(clippy::disallowed_methods)]
            now: Arc::new(time::OffsetDateTime::now_utc),
        })
        .await
        .unwrap();
        assert!(
            supervisor.layers().missing().is_empty(),
            "as root every layer is expected: {:?}",
            supervisor.layers().missing()
        );
        Self { supervisor, app, _root: root }
    }

    fn tenant(&self, name: &str) -> Tenant {
        let uid = 60_000 + rand_u32() % 5_000;
        let data = tempfile::tempdir().unwrap();
        nix::unistd::chown(data.path(), Some(uid.into()), Some(uid.into())).unwrap();
        let logs = tempfile::tempdir().unwrap();
        Tenant {
            key: format!("{name}-{:06x}", rand_u32() % 0xffffff),
            uid,
            data,
            logs,
            app: self.app.path().to_owned(),
        }
    }

    async fn run(&self, spec: WorkerSpec) {
        self.supervisor.run(spec).await;
    }
}

struct Tenant {
    key: String,
    uid: u32,
    data: TempDir,
    logs: TempDir,
    app: PathBuf,
}

impl Tenant {
    fn spec(&self, action: &[&str]) -> WorkerSpec {
        let mut args = vec!["__hostile".to_owned()];
        args.extend(action.iter().map(|a| (*a).to_owned()));
        WorkerSpec {
            key: self.key.clone(),
            log_name: self.key.clone(),
            sandbox: SandboxSpec {
                name: self.key.clone(),
                hostname: self.key.clone(),
                uid: self.uid,
                gid: self.uid,
                command: "/app/hostile".into(),
                args,
                env: vec![("TENANT".into(), self.key.clone())],
                cwd: "/data".into(),
                root: PathBuf::new(),
                binds: vec![
                    Bind { host: self.app.clone(), at: "/app".into(), writable: false },
                    Bind { host: self.data.path().to_owned(), at: "/data".into(), writable: true },
                ],
                secrets: vec![SecretFile {
                    name: "token".into(),
                    value: format!("secret-of-{}", self.key).into(),
                }],
                limits: SandboxLimits { open_files: 256, tmp_bytes: 8 << 20, processes: None },
                layers: LayerSwitches::ALL,
                connect_ports: Vec::new(),
            },
            limits: CgroupLimits {
                memory_bytes: 96 << 20,
                cpu_millis: Some(500),
                cpu_weight: 100,
                pids: 32,
            },
            forwards: Vec::new(),
            log_dir: self.logs.path().to_owned(),
            log_rotation: Rotation { max_bytes: 1 << 20, keep: 2 },
            restart: RestartPolicy {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(1),
                crash_loop: 3,
                stable_after: Duration::from_secs(30),
                grace: Duration::from_secs(2),
            },
            stale: Vec::new(),
            health: None,
        }
    }

    /// The whole log, rotated files first.
    fn log(&self) -> String {
        let file = |suffix: &str| {
            std::fs::read_to_string(self.logs.path().join(format!("{}.log{suffix}", self.key)))
                .unwrap_or_default()
        };
        [file(".2"), file(".1"), file("")].concat()
    }

    /// The worker's `RESULT` line, waited for.
    async fn result(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = self.log();
            if let Some(line) =
                log.lines().find_map(|l| l.split_once(" stdout RESULT ").map(|(_, r)| r.to_owned()))
            {
                return serde_json::from_str(&line).unwrap();
            }
            assert!(Instant::now() < deadline, "no result from {}; log:\n{log}", self.key);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn rand_u32() -> u32 {
    let mut bytes = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .unwrap();
    u32::from_ne_bytes(bytes)
}

fn running_pid(kit: &Kit, key: &str) -> u32 {
    match kit.supervisor.state(key) {
        Some(WorkerState::Running { pid, .. }) => pid,
        other => panic!("{key} is not running: {other:?}"),
    }
}

async fn a_worker_sees_only_its_own_world() {
    let kit = Kit::new().await;
    let a = kit.tenant("a");
    kit.run(a.spec(&["report"])).await;
    let report = a.result().await;
    assert_eq!(report["uid"], a.uid, "{report}");
    assert_eq!(report["euid"], a.uid);
    assert_eq!(report["gid"], a.uid);
    assert_eq!(report["groups"], "", "no supplementary groups");
    assert_eq!(report["no_new_privs"], "1");
    assert_eq!(report["seccomp"], "2", "a seccomp filter is installed");
    assert_eq!(report["cap_eff"], "0000000000000000", "no capabilities");
    assert_eq!(report["pid"], 2, "the worker is PID 2 under its own init");
    let pids: Vec<&str> =
        report["pids"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    assert!(
        pids.len() <= 3 && pids.contains(&"1") && pids.contains(&"2"),
        "only its own processes: {pids:?}"
    );
    assert_eq!(report["hostname"], a.key.as_str());
    assert_eq!(report["interfaces"], serde_json::json!(["lo"]), "only loopback");
    let mut root: Vec<&str> =
        report["root"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    root.sort_unstable();
    assert!(root.contains(&"data") && root.contains(&"usr"), "its root lists: {root:?}");
    for hidden in ["home", "root", "var", "sys", "srv", "mnt", "work"] {
        assert!(!root.contains(&hidden), "/{hidden} is visible: {root:?}");
    }
    assert_eq!(report["secret"]["Ok"], format!("secret-of-{}", a.key));
    assert_eq!(report["secrets_mode"], 0o400);
    assert_eq!(report["env"], serde_json::json!(["TENANT"]), "only the spec's environment");
    assert_eq!(report["shadow"], false);
    assert_eq!(report["cwd"], "/data");
    // Landlock, in force: even on its own loopback a worker connects only to
    // the ports it is given.
    assert!(
        report["connect_unlisted_port"]["Err"].as_str().unwrap().contains("Permission denied"),
        "{report}"
    );
    assert!(
        matches!(kit.supervisor.state(&a.key), Some(WorkerState::Running { landlock, .. }) if landlock == "enforced")
    );
    // The secret never touched the host's disk.
    assert!(
        walk(a.data.path())
            .iter()
            .all(|f| !std::fs::read(f).unwrap_or_default().windows(9).any(|w| w == b"secret-of"))
    );
    kit.supervisor.shutdown(Duration::from_secs(1)).await;
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

async fn a_hostile_worker_cannot_reach_its_neighbour() {
    let kit = Kit::new().await;
    let b = kit.tenant("b");
    std::fs::write(b.data.path().join("private.txt"), "b's data").unwrap();
    kit.run(b.spec(&["sleep"])).await;
    assert_eq!(b.result().await, "sleeping");
    let b_pid = running_pid(&kit, &b.key);
    let b_file = b.data.path().join("private.txt");
    let b_socket = b.data.path().join("app.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&b_socket).unwrap();

    let a = kit.tenant("a");
    std::os::unix::fs::symlink(&b_file, a.data.path().join("link")).unwrap();
    let attempts: Vec<(Vec<String>, &str)> = vec![
        (vec!["read".into(), b_file.display().to_string()], "by path"),
        (
            vec!["read".into(), format!("/proc/{b_pid}/root{}", b_file.display())],
            "through /proc/<pid>/root",
        ),
        (vec!["read".into(), "/data/link".into()], "through a planted symlink"),
        (vec!["signal".into(), b_pid.to_string()], "signal"),
        (vec!["connect_unix".into(), b_socket.display().to_string()], "B's socket"),
        (vec!["connect_tcp".into(), "127.0.0.1:5432".into()], "the database server directly"),
        (vec!["connect_tcp".into(), "192.0.2.2:22".into()], "the host's address"),
        (vec!["connect_tcp".into(), "1.1.1.1:443".into()], "the internet"),
        (vec!["write".into(), "/usr/evil".into()], "system files"),
        (vec!["write".into(), "/evil".into()], "the root"),
        (vec!["write".into(), "/app/evil".into()], "its own app files"),
    ];
    for (i, (action, what)) in attempts.iter().enumerate() {
        let mut attacker = kit.tenant(&format!("a{i}"));
        attacker.data = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&b_file, attacker.data.path().join("link")).unwrap();
        nix::unistd::chown(
            attacker.data.path(),
            Some(attacker.uid.into()),
            Some(attacker.uid.into()),
        )
        .unwrap();
        let action: Vec<&str> = action.iter().map(String::as_str).collect();
        kit.run(attacker.spec(&action)).await;
        let result = attacker.result().await;
        assert!(result.get("Err").is_some(), "{what}: {action:?} was allowed: {result}");
        kit.supervisor.stop(&attacker.key, Duration::from_secs(1)).await;
    }
    // B still has everything.
    assert_eq!(std::fs::read_to_string(&b_file).unwrap(), "b's data");
    assert_eq!(running_pid(&kit, &b.key), b_pid, "B was never restarted");
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(b_pid as i32), None).is_ok(),
        "B is alive"
    );
    drop(a);
    kit.supervisor.shutdown(Duration::from_secs(1)).await;
}

async fn denied_system_calls_fail_with_eperm() {
    let kit = Kit::new().await;
    let a = kit.tenant("a");
    kit.run(a.spec(&["syscalls"])).await;
    let result = a.result().await;
    for call in
        ["unshare_user", "unshare_net", "mount", "chroot", "sethostname", "ptrace", "ptrace_init"]
    {
        assert_eq!(result[call], "EPERM", "{call}: {result}");
    }
    kit.supervisor.shutdown(Duration::from_secs(1)).await;
}

async fn a_setuid_binary_gives_no_privilege() {
    let kit = Kit::new().await;
    let a = kit.tenant("a");
    // A root-owned setuid copy of `id` where the worker can run it.
    let id = a.data.path().join("id");
    std::fs::copy("/usr/bin/id", &id).unwrap();
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).unwrap();
    kit.run(a.spec(&["exec", "/data/id", "-u"])).await;
    assert_eq!(a.result().await["Ok"], a.uid.to_string(), "setuid had no effect");
    kit.supervisor.shutdown(Duration::from_secs(1)).await;
}

async fn limits_stop_a_bomb_and_spare_the_neighbour() {
    let kit = Kit::new().await;
    let b = kit.tenant("b");
    kit.run(b.spec(&["sleep"])).await;
    b.result().await;
    let b_pid = running_pid(&kit, &b.key);

    let tmp = kit.tenant("tmp");
    kit.run(tmp.spec(&["fill_tmp"])).await;
    let filled = tmp.result().await;
    assert!(filled["error"].as_str().unwrap().contains("No space left"), "{filled}");
    assert!(filled["written"].as_u64().unwrap() <= 8 << 20, "{filled}");

    let fork = kit.tenant("fork");
    kit.run(fork.spec(&["fork_bomb"])).await;
    let forked = fork.result().await;
    assert!(forked["spawned"].as_u64().unwrap() < 32, "the pids limit held: {forked}");
    assert!(forked["errno_eagain"].as_bool().unwrap(), "{forked}");

    let memory = kit.tenant("memory");
    let mut spec = memory.spec(&["memory_bomb"]);
    spec.restart.crash_loop = 1;
    kit.run(spec).await;
    let state = kit
        .supervisor
        .wait_for(&memory.key, |s| matches!(s, WorkerState::Failed { .. }))
        .await
        .unwrap();
    let WorkerState::Failed { reason } = state else { unreachable!() };
    assert!(reason.contains("memory limit"), "{reason}");
    assert!(!memory.log().contains("without a limit"));

    // A process of the worker's that runs out of memory ends the whole
    // worker, which is restarted with backoff, rather than letting it fork
    // new hogs for the kernel to kill.
    let child = kit.tenant("child");
    let mut spec = child.spec(&["memory_bomb_child"]);
    spec.restart.crash_loop = 1;
    kit.run(spec).await;
    let state = tokio::time::timeout(
        Duration::from_secs(30),
        kit.supervisor.wait_for(&child.key, |s| matches!(s, WorkerState::Failed { .. })),
    )
    .await
    .unwrap_or_else(|_| panic!("the worker outlived its child's OOM: {}", child.log()))
    .unwrap();
    let WorkerState::Failed { reason } = state else { unreachable!() };
    assert!(reason.contains("memory limit"), "{reason}");
    assert!(!child.log().contains("outlived"), "{}", child.log());

    assert_eq!(running_pid(&kit, &b.key), b_pid, "B was untouched");
    kit.supervisor.shutdown(Duration::from_secs(1)).await;
}

async fn a_crashing_worker_backs_off_then_fails() {
    let kit = Kit::new().await;
    let a = kit.tenant("a");
    let mut events = kit.supervisor.subscribe();
    kit.run(a.spec(&["exit", "3"])).await;
    let state =
        kit.supervisor.wait_for(&a.key, |s| matches!(s, WorkerState::Failed { .. })).await.unwrap();
    assert_eq!(
        state,
        WorkerState::Failed {
            reason: "crash loop: ended 3 times in a row, last: exited with code 3".into()
        }
    );
    let mut kinds = Vec::new();
    while let Ok(event) = events.try_recv() {
        kinds.push(format!("{:?}", event.kind).split([' ', '{']).next().unwrap().to_owned());
    }
    assert_eq!(kinds, ["Started", "Exited", "Started", "Exited", "Started", "Failed"]);
    // A sandbox that cannot be built is a failure too, with the reason.
    let broken = kit.tenant("broken");
    let mut spec = broken.spec(&["report"]);
    spec.sandbox.command = "/app/missing".into();
    spec.restart.crash_loop = 1;
    kit.run(spec).await;
    let state = kit
        .supervisor
        .wait_for(&broken.key, |s| matches!(s, WorkerState::Failed { .. }))
        .await
        .unwrap();
    assert!(format!("{state:?}").contains("cannot start /app/missing"), "{state:?}");
    kit.supervisor.shutdown(Duration::from_secs(1)).await;
}

async fn stop_is_graceful_then_forced() {
    let kit = Kit::new().await;
    let polite = kit.tenant("polite");
    kit.run(polite.spec(&["sleep"])).await;
    polite.result().await;
    let started = Instant::now();
    assert!(kit.supervisor.stop(&polite.key, Duration::from_secs(5)).await);
    assert!(started.elapsed() < Duration::from_secs(2), "SIGTERM ended it at once");

    let stubborn = kit.tenant("stubborn");
    kit.run(stubborn.spec(&["ignore_term"])).await;
    stubborn.result().await;
    let pid = running_pid(&kit, &stubborn.key);
    let started = Instant::now();
    assert!(kit.supervisor.stop(&stubborn.key, Duration::from_millis(1500)).await);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "killed after the grace period: {took:?}"
    );
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err(),
        "nothing left"
    );
    assert_eq!(kit.supervisor.state(&stubborn.key), None);
    kit.supervisor.shutdown(Duration::from_secs(1)).await;
}

async fn output_goes_to_rotated_logs() {
    let kit = Kit::new().await;
    let a = kit.tenant("a");
    // 500 lines a stream (~23 KiB each) fill three files of 16 KiB, and the
    // result line, printed last to stdout, stays in them however far
    // stderr's copy lags behind stdout's.
    let mut spec = a.spec(&["print", "500"]);
    spec.log_rotation = Rotation { max_bytes: 16 << 10, keep: 2 };
    kit.run(spec).await;
    a.result().await;
    let current = a.log();
    assert!(
        current.lines().all(|l| l.len() > 25 && (l.contains(" stdout ") || l.contains(" stderr "))),
        "{current}"
    );
    assert!(
        current.contains(" stderr err 499") || current.contains(" stdout out 499"),
        "the newest lines are in the current file"
    );
    let rotated = a.logs.path().join(format!("{}.log.1", a.key));
    assert!(rotated.exists() && a.logs.path().join(format!("{}.log.2", a.key)).exists());
    assert!(!a.logs.path().join(format!("{}.log.3", a.key)).exists());
    assert!(
        std::fs::metadata(a.logs.path().join(format!("{}.log", a.key))).unwrap().len() <= 16 << 10
    );
    kit.supervisor.shutdown(Duration::from_secs(1)).await;
}

async fn forwards_let_through_only_what_the_tenant_may_reach() {
    // An echo server standing for an allowed HTTPS host.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let kit = Kit::new().await;
    let a = kit.tenant("a");
    let script = format!(
        "import socket, json\n\
         def pg(user, db):\n\
         \x20   s = socket.create_connection(('127.0.0.1', 5432), 3)\n\
         \x20   body = b'user\\0' + user.encode() + b'\\0database\\0' + db.encode() + b'\\0\\0'\n\
         \x20   s.sendall((len(body) + 8).to_bytes(4, 'big') + (196608).to_bytes(4, 'big') + body)\n\
         \x20   return s.recv(4096).decode('latin-1')\n\
         def proxy(target):\n\
         \x20   s = socket.create_connection(('127.0.0.1', 3128), 3)\n\
         \x20   s.sendall(('CONNECT %s HTTP/1.1\\r\\nHost: %s\\r\\n\\r\\n' % (target, target)).encode())\n\
         \x20   head = s.recv(4096).decode()\n\
         \x20   if head.startswith('HTTP/1.1 200'):\n\
         \x20       s.sendall(b'ping'); head += '|' + s.recv(16).decode()\n\
         \x20   return head\n\
         print('RESULT ' + json.dumps({{'superuser': pg('postgres', 'postgres'), 'other_db': pg('bhl_x_1', 'other'), 'other_role': pg('bhl_x_10', 'tenant_db'), 'own': pg('bhl_x_1', 'tenant_db'), 'allowed': proxy('127.0.0.1:{echo_port}'), 'denied': proxy('example.org:443'), 'no_port': proxy('127.0.0.1:{}')}}), flush=True)\n\
         import time; time.sleep(3600)\n",
        echo_port + 1
    );
    let mut spec = a.spec(&[]);
    spec.sandbox.command = "/usr/bin/python3".into();
    spec.sandbox.args = vec!["-c".into(), script];
    spec.sandbox.connect_ports = vec![5432, 3128];
    spec.forwards = vec![
        (
            5432,
            Target::Postgres {
                to: "127.0.0.1:5432".into(),
                roles: vec!["bhl_x_1".into()],
                databases: vec!["tenant_db".into()],
            },
        ),
        (
            3128,
            Target::Egress(
                EgressPolicy::parse_trusted(&[format!("127.0.0.1:{echo_port}")]).unwrap(),
            ),
        ),
    ];
    kit.run(spec).await;
    let result = a.result().await;
    let refused = "may log in only with its own lease";
    for refused_login in ["superuser", "other_db", "other_role"] {
        assert!(result[refused_login].as_str().unwrap().contains(refused), "{result}");
    }
    // Its own role reaches the real server (which then judges the login).
    let own = result["own"].as_str().unwrap();
    assert!(
        !own.contains(refused) && (own.starts_with('R') || own.contains("bhl_x_1")),
        "{result}"
    );
    assert_eq!(result["allowed"], "HTTP/1.1 200 Connection Established\r\n\r\n|ping", "{result}");
    assert!(
        result["denied"].as_str().unwrap().starts_with("HTTP/1.1 403")
            && result["denied"].as_str().unwrap().contains("allowlist"),
        "{result}"
    );
    assert!(result["no_port"].as_str().unwrap().starts_with("HTTP/1.1 403"), "{result}");
    kit.supervisor.shutdown(Duration::from_secs(1)).await;
}

async fn a_restarted_supervisor_leaves_no_worker_behind() {
    let scratch = tempfile::tempdir().unwrap();
    let instance = format!("test{:08x}", rand_u32());
    // A supervisor in a process of its own, killed with SIGKILL as `bulkhead
    // serve` could be: its control sockets close and its workers end.
    let mut serve = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["__supervise", &instance])
        .env("TMPDIR", scratch.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let pid: i32 = line.trim().strip_prefix("PID ").unwrap().parse().unwrap();
    assert!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok());
    serve.kill().unwrap();
    serve.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
        assert!(Instant::now() < deadline, "the worker outlived its supervisor");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Whatever is still in a worker cgroup of this instance when a new
    // supervisor starts is killed, and the cgroup removed.
    let cgroups = bulkhead_runtime::cgroup::Cgroups::detect(&instance).unwrap();
    let leftover = cgroups
        .create(
            "left",
            &CgroupLimits { memory_bytes: 64 << 20, cpu_millis: None, cpu_weight: 100, pids: 8 },
        )
        .unwrap();
    let mut stray = std::process::Command::new("/usr/bin/sleep").arg("600").spawn().unwrap();
    leftover.add(stray.id()).unwrap();
    let again = Kit::with_instance(instance.clone()).await;
    assert!(stray.wait().unwrap().code().is_none(), "the stray process was killed");
    assert_eq!(leftover.pids(), Vec::<u32>::new());
    again.supervisor.shutdown(Duration::from_secs(1)).await;
    let base = Path::new("/sys/fs/cgroup/pids").join(format!("bulkhead-{instance}"));
    assert!(!base.exists(), "the supervisor's cgroup directory is removed at shutdown");
}

/// `__supervise <instance>`: runs one sleeping worker and prints its pid.
fn supervise(instance: &str) -> ExitCode {
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread().enable_all().build() else {
        return ExitCode::FAILURE;
    };
    runtime.block_on(async {
        let kit = Kit::with_instance(instance.to_owned()).await;
        let a = kit.tenant("a");
        kit.run(a.spec(&["sleep"])).await;
        a.result().await;
        println!("PID {}", running_pid(&kit, &a.key));
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    ExitCode::SUCCESS
}

async fn an_unhealthy_worker_is_restarted() {
    let kit = Kit::new().await;
    let a = kit.tenant("a");
    // Healthy for its first two checks, then answers 503.
    let script = r#"
import os, socketserver, http.server
checks = [0]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        checks[0] += 1
        self.send_response(200 if checks[0] <= 2 else 503); self.send_header('content-length', '0'); self.end_headers()
    def log_message(self, *args):
        pass
class S(socketserver.UnixStreamServer):
    pass
print('RESULT "serving"', flush=True)
S('/data/app.sock', H).serve_forever()
"#;
    let mut spec = a.spec(&[]);
    spec.sandbox.command = "/usr/bin/python3".into();
    spec.sandbox.args = vec!["-c".into(), script.into()];
    spec.stale = vec![a.data.path().join("app.sock")];
    spec.health = Some(bulkhead_runtime::health::HealthProbe {
        socket: a.data.path().join("app.sock"),
        uid: a.uid,
        path: "/healthz".into(),
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(1),
        failures: 2,
    });
    let mut events = kit.supervisor.subscribe();
    kit.run(spec).await;
    a.result().await;
    let healthy = kit
        .supervisor
        .wait_for(&a.key, |s| matches!(s, WorkerState::Running { healthy: Some(true), .. }))
        .await;
    assert!(healthy.is_some());
    let deadline = Instant::now() + Duration::from_secs(20);
    let reason = loop {
        let event = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .expect("no restart")
            .unwrap();
        if let bulkhead_runtime::supervisor::EventKind::Exited { reason } = event.kind {
            break reason;
        }
    };
    assert!(
        reason.contains("failed its health check 2 times in a row") && reason.contains("503"),
        "{reason}"
    );
    // And it comes back (the stale socket is cleared before the new start).
    let back = kit
        .supervisor
        .wait_for(&a.key, |s| {
            matches!(s, WorkerState::Running { restarts: 1, healthy: Some(true), .. })
        })
        .await;
    assert!(back.is_some());
    kit.supervisor.shutdown(Duration::from_secs(1)).await;
}

/// With the mount namespace off (as on a machine that cannot make one),
/// the worker sees the host's paths; Landlock alone still keeps it to its
/// own directories, and its secrets still reach it, as a file of its own
/// removed when it ends.
async fn without_namespaces_landlock_still_confines() {
    let kit = Kit::new().await;
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::set_permissions(elsewhere.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let open_file = elsewhere.path().join("readable-by-all.txt");
    std::fs::write(&open_file, "not yours").unwrap();
    std::fs::set_permissions(&open_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (action, wanted) in [
        (vec!["read".to_owned(), open_file.display().to_string()], "Err"),
        (vec!["read".to_owned(), "/run/secrets/token".to_owned()], "Ok"),
        (vec!["write".to_owned(), "/data/mine".to_owned()], "Ok"),
        (vec!["write".to_owned(), elsewhere.path().join("x").display().to_string()], "Err"),
    ] {
        let a = kit.tenant("a");
        std::fs::set_permissions(elsewhere.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let action: Vec<&str> = action.iter().map(String::as_str).collect();
        let mut spec = a.spec(&action);
        spec.sandbox.layers.namespaces = false;
        spec.sandbox.layers.network = false;
        kit.run(spec).await;
        let result = a.result().await;
        assert!(result.get(wanted).is_some(), "{action:?}: {result}");
        if action[1] == "/run/secrets/token" {
            assert_eq!(result["Ok"], format!("secret-of-{}", a.key));
        }
        kit.supervisor.stop(&a.key, Duration::from_secs(1)).await;
        let left: Vec<_> = std::fs::read_dir(kit._root.path().join("root"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "secrets removed when the worker ends: {left:?}");
    }
    kit.supervisor.shutdown(Duration::from_secs(1)).await;
}
