//! Tenants' apps through the real CLI and server: deployed with a secret,
//! run confined as the tenant's own user, their output in `bulkhead logs`
//! (a tenant's token reads its own only), stopped with the tenant's
//! suspension, and the bad inputs refused. Needs root, as the runtime does
//! (CI runs as root); without it the test says so and checks nothing.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kit::{Server, exit_code, stderr, stdout};

const SCRIPT: &str = "import os, time\n\
print('ready uid=%d secret=%s greeting=%s' % (os.getuid(), open('/run/secrets/token').read(), os.environ['GREETING']), flush=True)\n\
print('root=' + ','.join(sorted(os.listdir('/'))), flush=True)\n\
time.sleep(3600)\n";

fn root() -> bool {
    // Effective uid 0: the runtime needs it for users, namespaces and cgroups.
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// A server on the embedded default, or `None` (said) without root, which
/// the runtime needs.
async fn server_as_root() -> Option<Server> {
    if !root() {
        eprintln!("skipped: the runtime needs root (CI runs as root)");
        return None;
    }
    Some(Server::embedded().await)
}

fn deploy(server: &Server, tenant: &str, extra: &[&str]) -> std::process::Output {
    deploy_script(server, tenant, "1.0.0", extra, SCRIPT, &[])
}

/// Deploys app `web` of `tenant`: `python3 -c script args...`.
fn deploy_script(
    server: &Server,
    tenant: &str,
    version: &str,
    flags: &[&str],
    script: &str,
    script_args: &[&str],
) -> std::process::Output {
    let mut args =
        vec!["apps", "deploy", "--tenant", tenant, "--name", "web", "--version", version];
    args.extend_from_slice(flags);
    args.extend(["--", "/usr/bin/python3", "-c", script]);
    args.extend_from_slice(script_args);
    server.cli(&args)
}

/// Waits for a worker log line containing `needle`.
async fn log_line(server: &Server, tenant: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = server.cli(&["logs", "--tenant", tenant, "--app", "web"]);
        if let Some(line) = stdout(&out).lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the logs: {}{}",
            stdout(&out),
            stderr(&out)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn worker_state(server: &Server, tenant: &str, wanted: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let app = server.cli_json(&["apps", "get", "--tenant", tenant, "web"]);
        if app[0]["workers"][0]["state"] == wanted {
            return app[0].clone();
        }
        assert!(Instant::now() < deadline, "the worker never became {wanted}: {app}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether any process's arguments or environment hold `needle`.
fn visible_in_proc(needle: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        ["cmdline", "environ"].iter().any(|file| {
            std::fs::read(entry.path().join(file))
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
    })
}

#[tokio::test]
async fn an_app_runs_confined_with_its_secret_and_its_own_logs() {
    let Some(mut server) = server_as_root().await else { return };
    for tenant in ["acme", "globex"] {
        server.cli_json(&["tenants", "create", tenant, "--plan", "starter", "--wait"]);
    }
    let secret = format!("s3cret-{}", std::process::id());
    let out = server
        .cli_with_input(&["secrets", "put", "--tenant", "acme", "app/token"], secret.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));

    // Bad input first: nothing is deployed by any of it.
    let missing = deploy(&server, "acme", &["--secret", "app/missing", "--env", "GREETING=hi"]);
    assert_eq!(exit_code(&missing), 2, "{}", stderr(&missing));
    assert!(
        stderr(&missing).contains("no secret app/missing")
            && stderr(&missing).contains("secrets put"),
        "{}",
        stderr(&missing)
    );
    let greedy = deploy(&server, "acme", &["--memory-mib", "100000", "--secret", "app/token"]);
    assert!(stderr(&greedy).contains("above the plan's 256"), "{}", stderr(&greedy));
    let reserved = deploy(&server, "acme", &["--env", "BULKHEAD_TENANT=globex"]);
    assert!(stderr(&reserved).contains("set by Bulkhead"), "{}", stderr(&reserved));
    let anywhere = deploy(&server, "acme", &["--artifact", "/"]);
    assert!(stderr(&anywhere).contains("is not a directory under"), "{}", stderr(&anywhere));
    let metadata = deploy(&server, "acme", &["--egress", "169.254.169.254:80"]);
    assert!(stderr(&metadata).contains("not a public address"), "{}", stderr(&metadata));
    let nobody = deploy(&server, "nobody", &[]);
    assert!(stderr(&nobody).contains("tenant \"nobody\" does not exist"), "{}", stderr(&nobody));
    let listed = server.cli_json(&["apps", "list", "--tenant", "acme"]);
    assert_eq!(listed, serde_json::json!([]), "nothing half-deployed");

    let out = deploy(&server, "acme", &["--secret", "app/token", "--env", "GREETING=hi"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ready = log_line(&server, "acme", "ready").await;
    let uid: u32 = ready.split("uid=").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(uid >= 400_000, "the tenant's own user from the runtime's range: {ready}");
    assert!(
        ready.contains(&format!("secret={secret}")) && ready.contains("greeting=hi"),
        "{ready}"
    );
    let view = root_listing(&log_line(&server, "acme", "root=").await);
    assert!(
        !view.contains(&"home".to_owned()) && !view.contains(&"var".to_owned()),
        "its own root: {view:?}"
    );
    assert!(!visible_in_proc(&secret), "the secret is in no process's arguments or environment");
    let app = worker_state(&server, "acme", "running").await;
    assert_eq!(app["spec"]["version"], "1.0.0");

    // The verifier checks the runtime's layers and the app's directories.
    let clean = server.cli(&["verify", "isolation"]);
    assert_eq!(exit_code(&clean), 0, "{}{}", stdout(&clean), stderr(&clean));
    assert!(
        stdout(&clean)
            .contains("the runtime: 0 confinement layers missing; 1 tenants' app directories"),
        "{}",
        stdout(&clean)
    );
    let data = server.tenant_dir("acme").join("data");
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let found = server.cli(&["verify", "isolation", "-o", "json"]);
    assert_eq!(exit_code(&found), 1, "{}", stderr(&found));
    let report: Value = serde_json::from_slice(&found.stdout).unwrap();
    let checks: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["runtime.dir"], "{report}");
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();

    // A tenant's token reads its own tenant's logs, never another's.
    let token = |tenant: &str| {
        let out = server.cli(&[
            "auth",
            "token",
            "--tenant",
            tenant,
            "--subject",
            "ops",
            "--control-api",
            "--role",
            "viewer",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_owned()
    };
    let own = server.cli_with_token(&token("acme"), &["logs", "--tenant", "acme", "--app", "web"]);
    assert!(stdout(&own).contains("ready"), "{}", stderr(&own));
    let other =
        server.cli_with_token(&token("globex"), &["logs", "--tenant", "acme", "--app", "web"]);
    assert!(!other.status.success() && !stdout(&other).contains("ready"));
    assert!(stderr(&other).contains("it reaches only /v1/tenants/globex/"), "{}", stderr(&other));

    // Suspending the tenant stops its workers; resuming starts them again.
    let out = server.cli(&["tenants", "suspend", "acme"]);
    assert!(out.status.success(), "{}", stderr(&out));
    worker_state(&server, "acme", "stopped").await;
    server.cli(&["tenants", "resume", "acme"]);
    worker_state(&server, "acme", "running").await;

    let out = server.cli(&["apps", "stop", "--tenant", "acme", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    worker_state(&server, "acme", "stopped").await;
    let out = server.cli(&["apps", "delete", "--tenant", "acme", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let gone = server.cli(&["apps", "get", "--tenant", "acme", "web"]);
    assert!(stderr(&gone).contains("has no app named \"web\""), "{}", stderr(&gone));

    let actions: Vec<String> = server
        .audit_events(&["acme"])
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
        .collect();
    for action in [
        "app.deploy",
        "secret.deliver",
        "app.worker.start",
        "app.stop",
        "app.worker.stop",
        "app.delete",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action} missing from {actions:?}");
    }
    // A clean stop: the runtime stops the workers and removes its cgroups.
    assert!(server.stop().success());
}

/// Routes `/web` of the tenant's host to its app `web`.
fn route_web(server: &Server, tenant: &str) {
    let out = server.cli(&[
        "apis",
        "create",
        "--tenant",
        tenant,
        "web",
        "--prefix",
        "/web",
        "--upstream",
        "app:web",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The socket of the tenant's app `web`'s first worker (named by its
/// spec's generation).
fn socket(server: &Server, tenant: &str) -> std::path::PathBuf {
    let run = server.tenant_dir(tenant).join("run");
    std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("web-") && name.ends_with("-0.sock")
        })
        .unwrap_or_else(|| panic!("no socket of web in {}", run.display()))
}

fn root_listing(line: &str) -> Vec<String> {
    line.split("root=").nth(1).unwrap_or_default().split(',').map(str::to_owned).collect()
}

/// An HTTP server on the worker's socket, answering with who it is.
const WEB: &str = r#"
import os, socketserver, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ('app of %s uid %d for %s' % (os.environ['BULKHEAD_TENANT'], os.getuid(), self.headers.get('x-bulkhead-tenant'))).encode()
        self.send_response(200); self.send_header('content-length', str(len(body))); self.end_headers(); self.wfile.write(body)
    def address_string(self):
        return 'gateway'
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    pass
server = S(os.environ['BULKHEAD_SOCKET'], H)
print('serving', flush=True)
server.serve_forever()
"#;

#[tokio::test]
async fn an_app_is_served_through_the_gateway_to_its_own_tenant_only() {
    let Some(mut server) = server_as_root().await else { return };
    let gateway: std::net::SocketAddr =
        server.gateway.trim_start_matches("http://").parse().unwrap();
    let client = reqwest::Client::builder()
        .resolve("acme.localhost", gateway)
        .resolve("globex.localhost", gateway)
        .build()
        .unwrap();
    let mut tokens = std::collections::HashMap::new();
    for tenant in ["acme", "globex"] {
        server.cli_json(&["tenants", "create", tenant, "--plan", "starter", "--wait"]);
        let out = deploy_script(&server, tenant, "1", &[], WEB, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        route_web(&server, tenant);
        log_line(&server, tenant, "serving").await;
        let out = server.cli(&[
            "auth",
            "token",
            "--tenant",
            tenant,
            "--subject",
            "alice",
            "--role",
            "analyst",
        ]);
        tokens.insert(tenant, stdout(&out).trim().to_owned());
    }
    let call = |tenant: &'static str| {
        let request = client
            .get(format!("http://{tenant}.localhost:{}/web/hello", gateway.port()))
            .bearer_auth(&tokens[tenant]);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // The gateway rebuilds a tenant's entry when its first worker starts.
    let deadline = Instant::now() + Duration::from_secs(20);
    for tenant in ["acme", "globex"] {
        loop {
            let (status, body) = call(tenant).await;
            if status == 200 {
                assert!(
                    body.starts_with(&format!("app of {tenant} uid "))
                        && body.ends_with(&format!("for {tenant}")),
                    "{body}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "{tenant}: {status} {body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // A tenant's own credential cannot point an API at a socket path (such
    // as another tenant's worker's): only `app:` names its workers.
    let out = server.cli(&[
        "auth",
        "token",
        "--tenant",
        "acme",
        "--subject",
        "admin",
        "--control-api",
        "--role",
        "admin",
    ]);
    let admin = stdout(&out).trim().to_owned();
    let globex_socket = format!("unix:{}", socket(&server, "globex").display());
    let out = server.cli_with_token(
        &admin,
        &[
            "apis",
            "create",
            "--tenant",
            "acme",
            "steal",
            "--prefix",
            "/steal",
            "--upstream",
            &globex_socket,
        ],
    );
    assert!(
        !out.status.success()
            && stderr(&out).contains("only an operator may route to a unix: socket"),
        "{}",
        stderr(&out)
    );

    // acme's worker owns its socket directory: it can put a link to
    // globex's socket where its own was. The gateway then finds globex's
    // user on the other end and refuses, rather than serving acme's
    // request from globex's app.
    let acme_socket = socket(&server, "acme");
    std::fs::remove_file(&acme_socket).unwrap();
    std::os::unix::fs::symlink(socket(&server, "globex"), &acme_socket).unwrap();
    let (status, body) = call("acme").await;
    assert_eq!(status, 502, "{body}");
    assert!(!body.contains("app of globex"), "{body}");
    let (status, body) = call("globex").await;
    assert!(
        status == 200 && body.contains("app of globex"),
        "globex is untouched: {status} {body}"
    );

    // A new start clears what was left at the socket's path (the link
    // here, a stale socket after a crash) and acme is served again.
    server.cli(&["apps", "stop", "--tenant", "acme", "web"]);
    worker_state(&server, "acme", "stopped").await;
    server.cli(&["apps", "start", "--tenant", "acme", "web"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = call("acme").await;
        if status == 200 {
            assert!(body.starts_with("app of acme"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "acme: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A stopped app answers 502 too, and only for its tenant.
    server.cli(&["apps", "stop", "--tenant", "globex", "web"]);
    worker_state(&server, "globex", "stopped").await;
    assert_eq!(call("globex").await.0, 502);
    // A clean stop: the runtime stops the workers and removes its cgroups.
    assert!(server.stop().success());
}

#[tokio::test]
async fn apps_are_declared_in_manifests() {
    let Some(mut server) = server_as_root().await else { return };
    let file = server.dir.path().join("acme.yaml");
    let manifest = "apiVersion: bulkhead.dev/v1\nkind: Tenant\nmetadata:\n  name: acme\nspec:\n  plan: starter\n---\napiVersion: bulkhead.dev/v1\nkind: App\nmetadata:\n  name: web\n  tenant: acme\nspec:\n  version: 1.0.0\n  command: [/usr/bin/python3, -c, \"print('up', flush=True); import time; time.sleep(3600)\"]\n";
    std::fs::write(&file, manifest).unwrap();
    let path = file.to_str().unwrap();
    let out = server.cli(&["apply", "-f", path]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("app/acme/web created"), "{}", stdout(&out));
    log_line(&server, "acme", "up").await;
    // What `get` prints applies back unchanged.
    let printed = server.cli(&["get", "app", "--tenant", "acme", "web"]);
    std::fs::write(&file, stdout(&printed)).unwrap();
    let out = server.cli(&["apply", "-f", path]);
    assert!(stdout(&out).contains("app/acme/web unchanged"), "{}{}", stdout(&out), stderr(&out));
    // A new version is a change, shown by diff and deployed by apply.
    std::fs::write(&file, stdout(&printed).replace("1.0.0", "1.1.0")).unwrap();
    let diff = server.cli(&["diff", "-f", path]);
    assert_eq!(exit_code(&diff), 1, "{}", stderr(&diff));
    assert!(
        stdout(&diff).contains("~ app/acme/web") && stdout(&diff).contains("1.1.0"),
        "{}",
        stdout(&diff)
    );
    let out = server.cli(&["apply", "-f", path]);
    assert!(stdout(&out).contains("app/acme/web changed"), "{}", stdout(&out));
    let app = server.cli_json(&["apps", "get", "--tenant", "acme", "web"]);
    assert_eq!(
        (app[0]["spec"]["version"].as_str(), app[0]["previous_version"].as_str()),
        (Some("1.1.0"), Some("1.0.0"))
    );
    let out = server.cli(&["delete", "-f", path, "--yes"]);
    assert!(stdout(&out).contains("app/acme/web deleted"), "{}{}", stdout(&out), stderr(&out));
    // A clean stop: the runtime stops the workers and removes its cgroups.
    assert!(server.stop().success());
}

const SHOW_FLAGS: &str = r#"
import json, os, signal, time
def show(*_):
    print('flags=' + json.dumps(json.load(open(os.environ['BULKHEAD_FLAGS'])), sort_keys=True), flush=True)
signal.signal(signal.SIGHUP, show)
show()
while True:
    time.sleep(3600)
"#;

#[tokio::test]
async fn flags_reach_the_workers_as_a_file_they_reread_on_sighup() {
    let Some(mut server) = server_as_root().await else { return };
    server.cli_json(&["tenants", "create", "acme", "--plan", "starter", "--wait"]);
    let out = server.cli(&["flags", "set", "--tenant", "acme", "beta=on"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = deploy_script(&server, "acme", "1", &[], SHOW_FLAGS, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    log_line(&server, "acme", r#"flags={"beta": "on"}"#).await;
    server.cli(&["flags", "set", "--tenant", "acme", "tier=gold", "beta=off"]);
    log_line(&server, "acme", r#"flags={"beta": "off", "tier": "gold"}"#).await;
    server.cli(&["flags", "unset", "--tenant", "acme", "beta"]);
    log_line(&server, "acme", r#"flags={"tier": "gold"}"#).await;
    assert_eq!(
        server.cli_json(&["flags", "list", "--tenant", "acme"]),
        serde_json::json!({ "tier": "gold" })
    );
    // Bad names are refused whole: nothing is set.
    let bad = server.cli(&["flags", "set", "--tenant", "acme", "ok=1", "Bad Key=2"]);
    assert_eq!(exit_code(&bad), 2, "{}", stderr(&bad));
    assert!(stderr(&bad).contains("a flag's name is 1 to 64 characters"), "{}", stderr(&bad));
    assert_eq!(
        server.cli_json(&["flags", "list", "--tenant", "acme"]),
        serde_json::json!({ "tier": "gold" })
    );
    // A viewer reads them, and cannot change them.
    let out = server.cli(&[
        "auth",
        "token",
        "--tenant",
        "acme",
        "--subject",
        "v",
        "--control-api",
        "--role",
        "viewer",
    ]);
    let viewer = stdout(&out).trim().to_owned();
    assert!(
        server.cli_with_token(&viewer, &["flags", "list", "--tenant", "acme"]).status.success()
    );
    let denied = server.cli_with_token(&viewer, &["flags", "set", "--tenant", "acme", "tier=free"]);
    assert!(
        !denied.status.success() && stderr(&denied).contains("do not allow"),
        "{}",
        stderr(&denied)
    );
    // A clean stop: the runtime stops the workers and removes its cgroups.
    assert!(server.stop().success());
}

/// A web app that fails its health check in versions named `bad-*`, and
/// says its version to each request.
const VERSIONED: &str = r#"
import os, socketserver, http.server
version = os.environ['BULKHEAD_VERSION']
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        bad = self.path == '/healthz' and version.startswith('bad')
        body = ('%s of %s' % (version, os.environ['BULKHEAD_TENANT'])).encode()
        self.send_response(500 if bad else 200); self.send_header('content-length', str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args):
        pass
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
S(os.environ['BULKHEAD_SOCKET'], H).serve_forever()
"#;

/// Waits until the rollout is in `state` and returns it.
async fn rollout_state(server: &Server, id: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rollout = server.cli_json(&["rollout", "status", id]);
        if rollout["state"] == state {
            return rollout;
        }
        assert!(Instant::now() < deadline, "the rollout never became {state}: {rollout}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_rollout_moves_tenants_without_downtime_and_halts_on_a_failing_version() {
    let Some(mut server) = server_as_root().await else { return };
    let tenants = ["alpha", "bravo", "charlie", "delta"];
    for tenant in tenants {
        // Above the starter plan's 10 requests a second, which the watch below makes.
        server.cli_json(&["tenants", "create", tenant, "--plan", "professional", "--wait"]);
        let manifest = format!(
            "apiVersion: bulkhead.dev/v1\nkind: App\nmetadata:\n  name: web\n  tenant: {tenant}\nspec:\n  version: '1'\n  command: [/usr/bin/python3, -c, {}]\n  health: {{path: /healthz, interval_ms: 500, failures: 2}}\n",
            serde_json::to_string(VERSIONED).unwrap()
        );
        let file = server.dir.path().join(format!("{tenant}.yaml"));
        std::fs::write(&file, manifest).unwrap();
        let out = server.cli(&["apply", "-f", file.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = server.cli(&["apps", "pin", "--tenant", "charlie", "web"]);
    assert!(out.status.success() && stdout(&out).contains("(pinned)"), "{}", stderr(&out));
    // A stopped app stays stopped: rollouts leave it alone.
    let out = server.cli(&["apps", "stop", "--tenant", "delta", "web"]);
    assert!(out.status.success(), "{}", stderr(&out));
    route_web(&server, "alpha");
    let out =
        server.cli(&["auth", "token", "--tenant", "alpha", "--subject", "a", "--role", "analyst"]);
    let token = stdout(&out).trim().to_owned();
    let gateway: std::net::SocketAddr =
        server.gateway.trim_start_matches("http://").parse().unwrap();
    let client = reqwest::Client::builder().resolve("alpha.localhost", gateway).build().unwrap();
    let url = format!("http://alpha.localhost:{}/web/", gateway.port());
    let call = || {
        let request = client.get(&url).bearer_auth(&token);
        async move {
            match request.send().await {
                Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                Err(e) => (0, e.to_string()),
            }
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while call().await != (200, "1 of alpha".to_owned()) {
        assert!(Instant::now() < deadline, "alpha's app never served: {:?}", call().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Bad options are refused before anything moves.
    for (flag, value, says) in [
        ("--batch", "0", "give a count of tenants"),
        ("--pause", "soon", "is not a duration"),
        ("--version", "1 0", "use 1 to 64 characters"),
    ] {
        let mut args = vec!["rollout", "start", "--app", "web", flag, value];
        if flag != "--version" {
            args.extend(["--version", "2"]);
        }
        let out = server.cli(&args);
        assert!(!out.status.success() && stderr(&out).contains(says), "{flag}: {}", stderr(&out));
    }

    // Version 2, canary first, then one tenant per batch; alpha's requests
    // through the gateway never fail while its workers change.
    let watching = tokio::spawn({
        let client = client.clone();
        let (url, token) = (url.clone(), token.clone());
        async move {
            let mut seen = Vec::new();
            while !seen.iter().any(|(_, body): &(u16, String)| body == "2 of alpha") {
                let response = client.get(&url).bearer_auth(&token).send().await;
                seen.push(match response {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // And a while after the switch, as the old workers stop.
            for _ in 0..150 {
                let response = client.get(&url).bearer_auth(&token).send().await;
                seen.push(match response {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        }
    });
    let started = server.cli_json(&[
        "rollout",
        "start",
        "--app",
        "web",
        "--version",
        "2",
        "--canary",
        "1",
        "--batch",
        "1",
    ]);
    let id = started["id"].as_str().unwrap().to_owned();
    let steps = |r: &Value| -> Vec<(String, String, u64)> {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["tenant"].as_str().unwrap().to_owned(),
                    s["state"].as_str().unwrap().to_owned(),
                    s["batch"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let charlie_skipped = ("charlie".to_owned(), "skipped".to_owned(), 0);
    assert!(steps(&started).contains(&charlie_skipped), "{started}");
    let done = rollout_state(&server, &id, "completed").await;
    assert_eq!(
        steps(&done),
        vec![
            ("alpha".to_owned(), "moved".to_owned(), 0),
            ("bravo".to_owned(), "moved".to_owned(), 1),
            charlie_skipped,
            ("delta".to_owned(), "skipped".to_owned(), 0),
        ]
    );
    assert_eq!(done["steps"][3]["reason"], "the app is stopped", "{done}");
    let seen = watching.await.unwrap();
    let failed: Vec<&(u16, String)> = seen.iter().filter(|(status, _)| *status != 200).collect();
    assert!(failed.is_empty(), "requests failed during the switch: {failed:?}");
    assert!(seen.iter().all(|(_, b)| b == "1 of alpha" || b == "2 of alpha"), "{seen:?}");
    for (tenant, version, running) in
        [("alpha", "2", true), ("bravo", "2", true), ("charlie", "1", true), ("delta", "1", false)]
    {
        let app = server.cli_json(&["apps", "get", "--tenant", tenant, "web"]);
        assert_eq!(app[0]["spec"]["version"], version, "{tenant}: {app}");
        assert_eq!(app[0]["live_version"], version, "{tenant}: {app}");
        assert_eq!(app[0]["running"], running, "{tenant}: {app}");
    }

    // A version that fails its health check: the canary goes back to its
    // version, serving all along, and the rollout halts before bravo.
    let started = server.cli_json(&["rollout", "start", "--app", "web", "--version", "bad-3"]);
    let id = started["id"].as_str().unwrap().to_owned();
    let halted = rollout_state(&server, &id, "halted").await;
    let alpha = &halted["steps"][0];
    assert_eq!(
        (alpha["tenant"].as_str(), alpha["state"].as_str()),
        (Some("alpha"), Some("failed"))
    );
    assert!(alpha["reason"].as_str().unwrap().contains("health check"), "{halted}");
    assert_eq!(halted["steps"][1]["state"], "pending", "{halted}");
    for tenant in ["alpha", "bravo"] {
        let app = server.cli_json(&["apps", "get", "--tenant", tenant, "web"]);
        assert_eq!(app[0]["spec"]["version"], "2", "{tenant}: {app}");
    }
    assert_eq!(call().await, (200, "2 of alpha".to_owned()));
    let out = server.cli(&["rollout", "pause", &id]);
    assert!(!out.status.success() && stderr(&out).contains("halted"), "{}", stderr(&out));
    // A halted rollout still holds the app: a second one waits for its end.
    let out = server.cli(&["rollout", "start", "--app", "web", "--version", "4"]);
    assert_eq!(exit_code(&out), 4, "{}", stderr(&out));
    assert!(stderr(&out).contains("has a rollout under way"), "{}", stderr(&out));
    // Rollouts span tenants: a tenant's own admin may not start or read one.
    let out = server.cli(&[
        "auth",
        "token",
        "--tenant",
        "alpha",
        "--subject",
        "boss",
        "--role",
        "admin",
        "--control-api",
    ]);
    let admin = stdout(&out).trim().to_owned();
    for args in
        [&["rollout", "status"][..], &["rollout", "start", "--app", "web", "--version", "5"]]
    {
        let out = server.cli_with_token(&admin, args);
        assert!(
            !out.status.success() && stderr(&out).contains("needs an operator token"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let aborted = server.cli_json(&["rollout", "abort", &id]);
    assert_eq!(aborted["state"], "aborted");
    assert_eq!(aborted["steps"][1]["state"], "skipped");
    let actions: Vec<String> = server
        .audit_events(&["alpha"])
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_owned))
        .collect();
    for action in ["app.switch", "app.revert"] {
        assert!(actions.iter().any(|a| a == action), "{action} missing from {actions:?}");
    }
    assert!(server.stop().success());
}

/// The sample app, built beside the binary under test if it is not there:
/// `bulkhead demo` runs it from there, as it does from `cargo build`'s.
fn keyring_beside_bulkhead() {
    let beside = std::path::Path::new(crate::kit::BIN).with_file_name("keyring");
    if beside.is_file() {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let built =
        std::process::Command::new(cargo).args(["build", "-p", "keyring"]).status().unwrap();
    assert!(built.success() && beside.is_file(), "cannot build {}", beside.display());
}

#[tokio::test]
async fn the_demo_shows_each_tenant_its_own_keyring_and_refuses_the_other_token() {
    let Some(mut server) = server_as_root().await else { return };
    keyring_beside_bulkhead();
    let out = server.cli(&["demo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    // What it prints, run as a user would: the exports, then the curl
    // lines (the last one continued on the next), each answer on a line of
    // its own ending with its status.
    let script: String = printed
        .lines()
        .filter(|l| {
            l.starts_with("export ") || l.starts_with("curl") || l.trim_start().starts_with("-d ")
        })
        .map(|l| {
            let command = l.split("  #").next().unwrap().trim_end().replace(" -i ", " ");
            format!("{}\n", command.replacen("curl", "curl -s -w ' %{http_code}\\n'", 1))
        })
        .collect();
    let port = server.gateway.rsplit(':').next().unwrap().to_owned();
    assert!(script.contains(&format!("http://demo-a.localhost:{port}/keyring/items")), "{printed}");
    let run = std::process::Command::new("bash").arg("-c").arg(&script).output().unwrap();
    let lines: Vec<String> = stdout(&run).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 4, "{script}\n{}{}", stdout(&run), stderr(&run));
    assert!(
        lines[0].contains("demo-a's payment provider key")
            && !lines[0].contains("demo-b")
            && lines[0].ends_with(" 200"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("demo-b's payment provider key")
            && !lines[1].contains("demo-a")
            && lines[1].ends_with(" 200"),
        "{}",
        lines[1]
    );
    assert!(lines[2].ends_with(" 401") && !lines[2].contains("payment"), "{}", lines[2]);
    assert!(lines[3].contains("TLS certificate") && lines[3].ends_with(" 201"), "{}", lines[3]);
    // The two copies are two Unix users, each with its own database file.
    let a = server.cli_json(&["apps", "get", "--tenant", "demo-a", "keyring"]);
    assert_eq!(a[0]["workers"][0]["state"], "running", "{a}");
    let owner = |tenant: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(server.tenant_dir(tenant).join("data/tenant.db")).unwrap().uid()
    };
    assert_ne!(owner("demo-a"), owner("demo-b"));
    assert!(owner("demo-a") != 0 && owner("demo-b") != 0);
    // Again: nothing new, the same items (the seeded one and the one the
    // printed POST added).
    let again = server.cli(&["demo"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let token = stdout(&again)
        .lines()
        .find_map(|l| l.strip_prefix("export A_TOKEN='"))
        .map(|t| t.trim_end_matches('\'').to_owned())
        .unwrap();
    let gateway: std::net::SocketAddr =
        server.gateway.trim_start_matches("http://").parse().unwrap();
    let client = reqwest::Client::builder().resolve("demo-a.localhost", gateway).build().unwrap();
    let items: Vec<Value> = client
        .get(format!("http://demo-a.localhost:{port}/keyring/items"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(items.len(), 2, "{items:?}");
    let out = server.cli(&["demo", "--clean"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = server.cli_json(&["tenants", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    assert!(!server.data_dir().join("artifacts/keyring").exists());
    assert!(server.stop().success());
}

/// Tenant A's hostile app: tries B's files and socket by the host's paths
/// (given as arguments) and through `/proc`, then forks until its pids
/// limit and allocates until its memory limit kills it.
const HOSTILE: &str = r#"
import json, os, socket, sys, time
tried = {}
def attempt(name, f):
    try:
        f(); tried[name] = 'allowed'
    except Exception as e:
        tried[name] = type(e).__name__
attempt('read_by_path', lambda: open(sys.argv[1]).read())
attempt('list_tenants', lambda: os.listdir(sys.argv[2]))
attempt('connect_socket', lambda: socket.socket(socket.AF_UNIX).connect(sys.argv[3]))
tried['pids_seen'] = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
children = 0
try:
    while children < 10000:
        if os.fork() == 0:
            time.sleep(600); os._exit(0)
        children += 1
except OSError as e:
    tried['fork_stopped'] = e.errno
tried['children'] = children
print('RESULT ' + json.dumps(tried), flush=True)
hoard = []
while True:
    hoard.append(bytearray(8 << 20))
"#;

#[tokio::test]
async fn a_hostile_tenant_bombs_itself_while_its_neighbour_keeps_serving() {
    let Some(mut server) = server_as_root().await else { return };
    keyring_beside_bulkhead();
    let out = server.cli(&["demo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let b_token = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("export B_TOKEN='"))
        .map(|t| t.trim_end_matches('\'').to_owned())
        .unwrap();
    let gateway: std::net::SocketAddr =
        server.gateway.trim_start_matches("http://").parse().unwrap();
    let client = reqwest::Client::builder().resolve("demo-b.localhost", gateway).build().unwrap();
    let items = format!("http://demo-b.localhost:{}/keyring/items", gateway.port());
    let before =
        client.get(&items).bearer_auth(&b_token).send().await.unwrap().text().await.unwrap();
    let b_before = server.cli_json(&["apps", "get", "--tenant", "demo-b", "keyring"]);

    server.cli_json(&["tenants", "create", "mallory", "--plan", "starter", "--wait"]);
    let b_db = server.tenant_dir("demo-b").join("data/tenant.db");
    let b_socket = std::fs::read_dir(server.tenant_dir("demo-b").join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.path().display().to_string())
        .find(|p| p.ends_with(".sock"))
        .unwrap();
    let tenants = server.data_dir().join("tenants");
    let out = deploy_script(
        &server,
        "mallory",
        "1",
        &["--memory-mib", "64", "--max-processes", "32"],
        HOSTILE,
        &[b_db.to_str().unwrap(), tenants.to_str().unwrap(), &b_socket],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // B answers every request while A bombs; A's worker is killed for its
    // memory, again and again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut served = 0;
    let mut killed = false;
    while !killed || served < 100 {
        let response = client.get(&items).bearer_auth(&b_token).send().await.unwrap();
        assert_eq!(response.status(), 200, "B failed while A bombed");
        served += 1;
        if served % 20 == 0 {
            let a = server.cli_json(&["apps", "get", "--tenant", "mallory", "web"]);
            let worker = &a[0]["workers"][0];
            killed |= worker["last_exit"].as_str().is_some_and(|e| e.contains("memory limit"))
                || worker["reason"].as_str().is_some_and(|e| e.contains("memory limit"));
        }
        assert!(Instant::now() < deadline, "A was never killed for its memory");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = log_line(&server, "mallory", "RESULT ").await;
    let tried: Value = serde_json::from_str(result.split("RESULT ").nth(1).unwrap()).unwrap();
    for attack in ["read_by_path", "list_tenants", "connect_socket"] {
        assert_ne!(tried[attack], "allowed", "{attack}: {tried}");
    }
    assert_eq!(tried["pids_seen"], serde_json::json!([1, 2]), "A sees only itself: {tried}");
    assert!(tried["children"].as_u64().unwrap() < 32, "the pids limit held: {tried}");

    // B has everything it had: the same worker, never restarted, its items.
    let b_after = server.cli_json(&["apps", "get", "--tenant", "demo-b", "keyring"]);
    assert_eq!(b_after[0]["workers"][0]["pid"], b_before[0]["workers"][0]["pid"]);
    assert_eq!(b_after[0]["workers"][0]["restarts"], 0);
    let after =
        client.get(&items).bearer_auth(&b_token).send().await.unwrap().text().await.unwrap();
    assert_eq!(after, before);
    assert!(server.stop().success());
}

/// Tenant A's app on PostgreSQL: reads its lease from its secret file,
/// then tries every login the relay in its network could give it, and
/// addresses outside it.
const DATABASE_PROBE: &str = r#"
import json, os, socket, sys, time
url = open(os.environ['BULKHEAD_DATABASE_URL_FILE']).read().strip()
credentials, place = url.split('://', 1)[1].split('@', 1)
role, database = credentials.split(':', 1)[0], place.split('/', 1)[1]
def login(user, db):
    try:
        s = socket.create_connection(('127.0.0.1', 5432), 3)
        body = b'user\0' + user.encode() + b'\0database\0' + db.encode() + b'\0\0'
        s.sendall((len(body) + 8).to_bytes(4, 'big') + (196608).to_bytes(4, 'big') + body)
        reply = s.recv(4096)
        if b'only with its own lease' in reply:
            return 'refused'
        return 'server:' + chr(reply[0]) if reply else 'closed'
    except Exception as e:
        return type(e).__name__
def read(s, n):
    data = b''
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError()
        data += chunk
    return data
def message(s):
    kind = read(s, 1)
    return kind, read(s, int.from_bytes(read(s, 4), 'big') - 4)
def session():
    s = socket.create_connection(('127.0.0.1', 5432), 3)
    s.settimeout(20)
    body = b'user\0' + role.encode() + b'\0database\0' + database.encode() + b'\0\0'
    s.sendall((len(body) + 8).to_bytes(4, 'big') + (196608).to_bytes(4, 'big') + body)
    key = None
    while True:
        kind, data = message(s)
        if kind == b'K':
            key = data
        if kind in (b'Z', b'E'):
            return s, key
def cancel(forge):
    # A query of its own session, cancelled with that session's key (or
    # one a digit off, as if guessing another session's).
    try:
        s, key = session()
        query = b'SELECT pg_sleep(3)\0'
        s.sendall(b'Q' + (len(query) + 4).to_bytes(4, 'big') + query)
        time.sleep(0.5)
        if forge:
            key = (int.from_bytes(key[:4], 'big') + 1).to_bytes(4, 'big') + key[4:]
        c = socket.create_connection(('127.0.0.1', 5432), 3)
        c.sendall((8 + len(key)).to_bytes(4, 'big') + (80877102).to_bytes(4, 'big') + key)
        c.close()
        while True:
            kind, data = message(s)
            if kind == b'E':
                return 'cancelled' if b'57014' in data else 'error'
            if kind == b'Z':
                return 'finished'
    except Exception as e:
        return type(e).__name__
def reach(host, port):
    try:
        socket.create_connection((host, port), 2)
        return 'connected'
    except Exception as e:
        return type(e).__name__
print('RESULT ' + json.dumps({
    'url_in_env': any('postgres://' in v for v in os.environ.values()),
    'own': login(role, database),
    'neighbour_role': login(sys.argv[1], sys.argv[2]),
    'neighbour_database': login(role, sys.argv[2]),
    'superuser': login('postgres', 'postgres'),
    'redis': reach('127.0.0.1', 6379),
    'host_database': reach(sys.argv[3], 5432),
    'cancel_own': cancel(False),
    'cancel_forged': cancel(True),
}), flush=True)
time.sleep(3600)
"#;

/// The leases the runtime holds for a tenant's workers.
fn runtime_leases(server: &Server, tenant: &str) -> Vec<Value> {
    let leases = server.cli_json(&["creds", "list", "--tenant", tenant]);
    leases
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["issued_by"].as_str().is_some_and(|by| by.starts_with("runtime:")))
        .cloned()
        .collect()
}

#[tokio::test]
async fn on_postgres_each_worker_reaches_only_its_tenants_database_with_a_lease_of_its_own() {
    if !root() {
        eprintln!("skipped: the runtime needs root (CI runs as root)");
        return;
    }
    let store = crate::kit::Store::Postgres(bulkhead_testkit::TestDatabase::create().await);
    let mut server = Server::start(store, "[runtime]\ndatabase_lease = \"30s\"\n", &[]).await;
    keyring_beside_bulkhead();
    let out = server.cli(&["demo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let token = |name: &str| {
        stdout(&out)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}='")))
            .map(|t| t.trim_end_matches('\'').to_owned())
            .unwrap()
    };
    let gateway: std::net::SocketAddr =
        server.gateway.trim_start_matches("http://").parse().unwrap();
    let client = reqwest::Client::builder()
        .resolve("demo-a.localhost", gateway)
        .resolve("demo-b.localhost", gateway)
        .build()
        .unwrap();
    let items =
        |tenant: &str| format!("http://{tenant}.localhost:{}/keyring/items", gateway.port());
    // The keyring keeps its items in each tenant's own PostgreSQL database.
    for (tenant, token) in [("demo-a", token("A_TOKEN")), ("demo-b", token("B_TOKEN"))] {
        let body = client.get(items(tenant)).bearer_auth(&token).send().await.unwrap();
        assert_eq!(body.status(), 200);
        let body = body.text().await.unwrap();
        assert!(body.contains(&format!("{tenant}'s payment provider key")), "{body}");
        assert!(!server.tenant_dir(tenant).join("data/tenant.db").exists());
    }
    let a_lease = runtime_leases(&server, "demo-a").pop().unwrap();
    let a_role = a_lease["role"].as_str().unwrap().to_owned();
    let mut db = crate::kit::admin(a_lease["database"].as_str().unwrap()).await;
    let (rows,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM keyring_items").fetch_one(&mut db).await.unwrap();
    assert_eq!(rows, 1);
    // The password is in no process's environment or arguments.
    let a = server.cli_json(&["apps", "get", "--tenant", "demo-a", "keyring"]);
    let pid = a[0]["workers"][0]["pid"].as_u64().unwrap();
    for file in ["environ", "cmdline"] {
        let bytes = std::fs::read(format!("/proc/{pid}/{file}")).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("postgres://"), "{file}");
    }

    // Another tenant's app tries A's login and database through its relay,
    // and the server's own address around it.
    server.cli_json(&["tenants", "create", "mallory", "--plan", "starter", "--wait"]);
    let host = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").and(s.local_addr()))
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "10.0.0.1".to_owned());
    let out = deploy_script(
        &server,
        "mallory",
        "1",
        &[],
        DATABASE_PROBE,
        &[&a_role, a_lease["database"].as_str().unwrap(), &host],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let result = log_line(&server, "mallory", "RESULT ").await;
    let tried: Value = serde_json::from_str(result.split("RESULT ").nth(1).unwrap()).unwrap();
    assert_eq!(tried["url_in_env"], false, "{tried}");
    assert_eq!(tried["own"], "server:R", "its own lease reaches the server: {tried}");
    for refused in ["neighbour_role", "neighbour_database", "superuser"] {
        assert_eq!(tried[refused], "refused", "{refused}: {tried}");
    }
    assert_ne!(tried["redis"], "connected", "{tried}");
    // Cancel requests reach the server for the worker's own sessions only.
    assert_eq!(tried["cancel_own"], "cancelled", "{tried}");
    assert_eq!(tried["cancel_forged"], "finished", "{tried}");
    assert_ne!(tried["host_database"], "connected", "{tried}");

    // Renewed while the worker runs (20 s before it ends): the same lease
    // lives on, later, and A's app still opens connections with it.
    let first = a_lease["expires_at"].clone();
    tokio::time::sleep(Duration::from_secs(16)).await;
    let renewed = runtime_leases(&server, "demo-a");
    assert_eq!(renewed.len(), 1, "{renewed:?}");
    assert_eq!(renewed[0]["role"], a_role.as_str());
    assert_ne!(renewed[0]["expires_at"], first, "{renewed:?}");
    let (valid_until,): (bool,) =
        sqlx::query_as("SELECT rolvaliduntil > now() FROM pg_roles WHERE rolname = $1")
            .bind(&a_role)
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(valid_until);
    let created = client
        .post(items("demo-a"))
        .bearer_auth(token("A_TOKEN"))
        .json(&serde_json::json!({"name": "after renewal", "kind": "api_key", "owner": "ops", "expires": "2027-01-01"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());

    // Revoked by an operator, the lease is replaced: the worker is started
    // again with a new one, and serves once its health check passes (until
    // then its socket may not be there yet).
    let out = server.cli(&["creds", "revoke", renewed[0]["id"].as_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(60);
    let a_role = loop {
        let now = runtime_leases(&server, "demo-a");
        let a = server.cli_json(&["apps", "get", "--tenant", "demo-a", "keyring"]);
        let worker = &a[0]["workers"][0];
        if let [lease] = now.as_slice()
            && lease["role"] != a_role.as_str()
            && worker["state"] == "running"
            && worker["healthy"] == true
            && worker["pid"].as_u64() != Some(pid)
        {
            break lease["role"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no new lease: {now:?} {a}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let listed = client.get(items("demo-a")).bearer_auth(token("A_TOKEN")).send().await.unwrap();
    assert_eq!(listed.status(), 200);
    assert!(listed.text().await.unwrap().contains("after renewal"));

    // Stopped, its lease is revoked and its role dropped.
    let out = server.cli(&["apps", "stop", "--tenant", "demo-a", "keyring"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    while crate::kit::role_exists(&a_role).await {
        assert!(Instant::now() < deadline, "the stopped worker's role {a_role} is still there");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(runtime_leases(&server, "demo-a").is_empty());
    let events = server.audit_events(&["demo-a"]);
    for action in ["credential.issue", "credential.renew", "credential.revoke"] {
        assert!(events.iter().any(|e| e["action"] == action), "no {action}");
    }
    let out = server.cli(&["demo", "--clean"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(server.stop().success());
}
