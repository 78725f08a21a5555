//! The hostile worker: this test binary run inside a sandbox as
//! `__hostile <action> [args]`. Each action tries something a malicious
//! tenant would, and prints `RESULT <json>` with what happened.

use std::{
    ffi::OsString,
    io::Write,
    os::unix::{fs::PermissionsExt, net::UnixStream},
    process::ExitCode,
    time::Duration,
};

use nix::{
    errno::Errno,
    sched::{CloneFlags, unshare},
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::{Value, json};

pub fn main(args: &[OsString]) -> ExitCode {
    let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let action = args.first().map(String::as_str).unwrap_or_default();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let result = match action {
        "report" => report(),
        "read" => json!(std::fs::read_to_string(arg(1)).map_err(|e| e.to_string())),
        "write" => json!(std::fs::write(arg(1), b"x").map_err(|e| e.to_string())),
        "signal" => json!(
            kill(Pid::from_raw(arg(1).parse().unwrap_or(1)), Signal::SIGKILL)
                .map_err(|e| e.to_string())
        ),
        "connect_unix" => json!(UnixStream::connect(arg(1)).map(|_| ()).map_err(|e| e.to_string())),
        "connect_tcp" => json!(
            std::net::TcpStream::connect_timeout(
                &arg(1).parse().unwrap_or(([127, 0, 0, 1], 1).into()),
                Duration::from_secs(2)
            )
            .map(|_| ())
            .map_err(|e| e.to_string())
        ),
        "syscalls" => syscalls(),
        "fill_tmp" => fill_tmp(),
        "fork_bomb" => fork_bomb(),
        "memory_bomb" => memory_bomb(),
        // A child hogs memory; the worker itself would carry on.
        "memory_bomb_child" => {
            let child = std::process::Command::new("/app/hostile")
                .args(["__hostile", "memory_bomb"])
                .status();
            // Long past the supervisor's look at the cgroup.
            std::thread::sleep(Duration::from_secs(2));
            println!("RESULT {}", json!(format!("the worker outlived its child: {child:?}")));
            std::thread::sleep(Duration::from_secs(3600));
            Value::Null
        }
        "exec" => {
            let out = std::process::Command::new(arg(1)).args(&args[2..]).output();
            json!(
                out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                    .map_err(|e| e.to_string())
            )
        }
        "ignore_term" => {
            let _signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM]);
            println!("RESULT {}", json!("ignoring SIGTERM"));
            std::thread::sleep(Duration::from_secs(3600));
            Value::Null
        }
        "sleep" => {
            println!("RESULT {}", json!("sleeping"));
            std::thread::sleep(Duration::from_secs(3600));
            Value::Null
        }
        "exit" => return ExitCode::from(arg(1).parse::<u8>().unwrap_or(1)),
        "print" => {
            for i in 0..arg(1).parse::<usize>().unwrap_or(1) {
                println!("out {i}");
                eprintln!("err {i}");
            }
            json!("printed")
        }
        other => json!(format!("unknown action {other}")),
    };
    println!("RESULT {result}");
    let _ = std::io::stdout().flush();
    // Stay up, so the supervisor does not restart the worker while the
    // test reads the result.
    std::thread::sleep(Duration::from_secs(3600));
    ExitCode::SUCCESS
}

fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_owned()))
        .unwrap_or_default()
}

fn report() -> Value {
    let pids: Vec<String> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<u32>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    let interfaces: Vec<String> = std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_owned()))
        .collect();
    let root: Vec<String> = std::fs::read_dir("/")
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    json!({
        "uid": nix::unistd::getuid().as_raw(),
        "euid": nix::unistd::geteuid().as_raw(),
        "gid": nix::unistd::getgid().as_raw(),
        "groups": status_field("Groups"),
        "no_new_privs": status_field("NoNewPrivs"),
        "seccomp": status_field("Seccomp"),
        "cap_eff": status_field("CapEff"),
        "pid": std::process::id(),
        "pids": pids,
        "hostname": nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        "interfaces": interfaces,
        "root": root,
        "secret": std::fs::read_to_string("/run/secrets/token").map_err(|e| e.to_string()),
        "secrets_mode": std::fs::metadata("/run/secrets/token").map(|m| m.permissions().mode() & 0o777).unwrap_or(0),
        "env": std::env::vars().map(|(k, _)| k).collect::<Vec<_>>(),
        "shadow": std::fs::read_to_string("/etc/shadow").is_ok(),
        "connect_unlisted_port": std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .and_then(std::net::TcpStream::connect)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        "cwd": std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
    })
}

fn errno(result: nix::Result<impl Sized>) -> String {
    match result {
        Ok(_) => "allowed".to_owned(),
        Err(e) => format!("{e:?}"),
    }
}

fn syscalls() -> Value {
    let child = std::process::Command::new("/app/hostile").arg("--version").spawn();
    let ptrace = match &child {
        Ok(child) => errno(nix::sys::ptrace::attach(Pid::from_raw(child.id() as i32))),
        Err(e) => e.to_string(),
    };
    json!({
        "unshare_user": errno(unshare(CloneFlags::CLONE_NEWUSER)),
        "unshare_net": errno(unshare(CloneFlags::CLONE_NEWNET)),
        "mount": errno(nix::mount::mount(Some("tmpfs"), "/tmp", Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>)),
        "chroot": errno(nix::unistd::chroot("/tmp")),
        "sethostname": errno(nix::unistd::sethostname("evil")),
        "ptrace": ptrace,
        "ptrace_init": errno(nix::sys::ptrace::attach(Pid::from_raw(1))),
    })
}

fn fill_tmp() -> Value {
    let chunk = vec![7u8; 1 << 20];
    let mut file = match std::fs::File::create("/tmp/fill") {
        Ok(f) => f,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    let mut written = 0usize;
    loop {
        match file.write_all(&chunk) {
            Ok(()) => written += chunk.len(),
            Err(e) => return json!({ "written": written, "error": e.to_string() }),
        }
    }
}

fn fork_bomb() -> Value {
    let mut children = Vec::new();
    let error = loop {
        match std::process::Command::new("/app/hostile")
            .args(["__hostile", "sleep"])
            .stdout(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => children.push(child),
            Err(e) => break (e.to_string(), e.raw_os_error()),
        }
        if children.len() > 10_000 {
            break ("no limit".to_owned(), None);
        }
    };
    json!({ "spawned": children.len(), "error": error.0, "errno_eagain": error.1 == Some(Errno::EAGAIN as i32) })
}

fn memory_bomb() -> Value {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(vec![1u8; 16 << 20]);
        if blocks.len() > 1024 {
            return json!("allocated 16 GiB without a limit");
        }
    }
}
