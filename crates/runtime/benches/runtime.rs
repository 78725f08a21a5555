//! The runtime's costs, measured against the same process started bare:
//! how long a confined worker takes to start (from `Supervisor::run` to its
//! first line of output), and what each worker's sandbox costs in memory
//! (its stage-one helper and init, beside the worker itself). Needs root.
//!
//! `cargo bench -p bulkhead-runtime --bench runtime -- [STARTS] [WORKERS]`
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    ffi::OsString,
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{ExitCode, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bulkhead_runtime::{
    cgroup::CgroupLimits,
    logs::Rotation,
    sandbox::{HELPER_ARG, helper_main},
    spec::{Bind, LayerSwitches, SandboxLimits, SandboxSpec},
    supervisor::{RestartPolicy, Supervisor, SupervisorConfig, WorkerSpec},
};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match args.first().and_then(|a| a.to_str()) {
        Some(HELPER_ARG) => return helper_main(&args[1..]),
        Some("__ready") => {
            println!("ready");
            std::thread::sleep(Duration::from_secs(3600));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: the runtime bench needs root");
        return ExitCode::SUCCESS;
    }
    let numbers: Vec<usize> = args.iter().filter_map(|a| a.to_str()?.parse().ok()).collect();
    let starts = numbers.first().copied().unwrap_or(50);
    let workers = numbers.get(1).copied().unwrap_or(100);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(starts, workers));
    ExitCode::SUCCESS
}

struct Bench {
    supervisor: Supervisor,
    app: tempfile::TempDir,
    data: tempfile::TempDir,
    logs: tempfile::TempDir,
    _root: tempfile::TempDir,
}

fn spec(bench: &Bench, key: &str) -> WorkerSpec {
    WorkerSpec {
        key: key.to_owned(),
        log_name: key.to_owned(),
        sandbox: SandboxSpec {
            name: key.to_owned(),
            hostname: key.to_owned(),
            uid: 65_000,
            gid: 65_000,
            command: "/app/bench".into(),
            args: vec!["__ready".into()],
            env: Vec::new(),
            cwd: "/data".into(),
            root: PathBuf::new(),
            binds: vec![
                Bind { host: bench.app.path().to_owned(), at: "/app".into(), writable: false },
                Bind { host: bench.data.path().to_owned(), at: "/data".into(), writable: true },
            ],
            secrets: Vec::new(),
            limits: SandboxLimits { open_files: 1024, tmp_bytes: 16 << 20, processes: None },
            layers: LayerSwitches::ALL,
            connect_ports: Vec::new(),
        },
        limits: CgroupLimits {
            memory_bytes: 64 << 20,
            cpu_millis: None,
            cpu_weight: 100,
            pids: 32,
        },
        forwards: Vec::new(),
        log_dir: bench.logs.path().to_owned(),
        log_rotation: Rotation { max_bytes: 1 << 20, keep: 1 },
        restart: RestartPolicy::default(),
        stale: Vec::new(),
        health: None,
    }
}

async fn run(starts: usize, workers: usize) {
    let exe = std::env::current_exe().unwrap();
    let (app, data, logs, root) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    std::fs::set_permissions(app.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::copy(&exe, app.path().join("bench")).unwrap();
    nix::unistd::chown(data.path(), Some(65_000.into()), Some(65_000.into())).unwrap();
    #[allow(clippy::disallowed_methods)]
    let now = Arc::new(time::OffsetDateTime::now_utc);
    let supervisor = Supervisor::start(SupervisorConfig {
        helper: exe.clone(),
        instance: format!("bench{}", std::process::id()),
        sandbox_root: root.path().join("root"),
        now,
    })
    .await
    .unwrap();
    let bench = Bench { supervisor, app, data, logs, _root: root };

    // Bare: spawn until its first line arrives.
    let mut bare = Vec::with_capacity(starts);
    for _ in 0..starts {
        let started = Instant::now();
        let mut child = std::process::Command::new(bench.app.path().join("bench"))
            .arg("__ready")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        bare.push(started.elapsed());
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // Confined: `run` until the line is in its log.
    let mut confined = Vec::with_capacity(starts);
    for i in 0..starts {
        let key = format!("cold{i}");
        let log = bench.logs.path().join(format!("{key}.log"));
        let started = Instant::now();
        bench.supervisor.run(spec(&bench, &key)).await;
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("ready") {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        confined.push(started.elapsed());
        bench.supervisor.stop(&key, Duration::from_secs(1)).await;
    }
    println!("cold start, {starts} starts each (spawn to first line of output):");
    for (name, mut times) in [("bare process", bare), ("confined worker", confined)] {
        times.sort();
        let at = |q: f64| {
            times[((times.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1000.0
        };
        println!(
            "  {name:16} p50 {:7.2} ms   p95 {:7.2} ms   max {:7.2} ms",
            at(0.5),
            at(0.95),
            at(1.0)
        );
    }

    // Memory: `workers` sleeping workers; what their processes hold.
    let started = Instant::now();
    for i in 0..workers {
        bench.supervisor.run(spec(&bench, &format!("mem{i}"))).await;
    }
    for i in 0..workers {
        let log = bench.logs.path().join(format!("mem{i}.log"));
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("ready") {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let all_up = started.elapsed();
    // This bench's workers' processes: those in its own cgroups.
    let mine = format!("bulkhead-bench{}/", std::process::id());
    let (mut helpers, mut apps, mut count) = (0u64, 0u64, 0usize);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if !std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default().contains(&mine)
        {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        // Proportional set size: shared pages (the binary's text) divided
        // among the processes that share them.
        let rollup = std::fs::read_to_string(entry.path().join("smaps_rollup")).unwrap_or_default();
        let rss: u64 = rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0);
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.get(1).is_some_and(|a| *a == HELPER_ARG.as_bytes()) {
            helpers += rss;
            count += 1;
        } else if args.first().is_some_and(|a| *a == b"/app/bench") {
            apps += rss;
        }
    }
    println!(
        "{workers} workers started in {:.2} s; sandbox processes: {count} (stage one + init each), {:.0} KiB (PSS) per worker; the workers themselves {:.0} KiB each",
        all_up.as_secs_f64(),
        helpers as f64 / workers as f64,
        apps as f64 / workers as f64
    );
    bench.supervisor.shutdown(Duration::from_secs(1)).await;
}
