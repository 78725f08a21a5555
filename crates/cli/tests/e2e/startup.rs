//! Start-up: clear errors and non-zero exits for everything that stops the
//! server, a private operator token, logs that carry the tenant.

use std::{os::unix::fs::PermissionsExt, process::Output, time::Duration};

use crate::kit::{Server, Store, command, exit_code, stderr};

fn serve(args: &[&str]) -> Output {
    let mut child = command()
        .arg("serve")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A server that starts would run forever: give it a bounded time.
    for _ in 0..300 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("serve {args:?} did not exit: {}", stderr(&child.wait_with_output().unwrap()));
}

#[test]
fn an_unreachable_store_stops_start_up_without_leaking_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = serve(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--api-listen",
        "127.0.0.1:0",
        "--store",
        "postgres://postgres:s3cret@127.0.0.1:1/bulkhead",
    ]);
    assert_eq!(exit_code(&output), 1);
    let err = stderr(&output);
    assert!(
        err.contains(
            "cannot reach the control store at postgres://postgres:***@127.0.0.1:1/bulkhead"
        ),
        "{err}"
    );
    assert!(err.contains("check --store"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
}

#[test]
fn a_store_url_of_the_wrong_kind_is_a_usage_error() {
    let output = serve(&["--store", "mysql://root:s3cret@localhost/db"]);
    assert_eq!(exit_code(&output), 2);
    assert!(stderr(&output).contains("not a store url"), "{}", stderr(&output));
    assert!(!stderr(&output).contains("s3cret"));
}

#[test]
fn a_data_directory_that_cannot_be_created_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let data = file.join("data");
    let output = serve(&["--data-dir", data.to_str().unwrap(), "--api-listen", "127.0.0.1:0"]);
    assert_eq!(exit_code(&output), 1);
    let err = stderr(&output);
    assert!(err.contains(&format!("data directory {} cannot be used", data.display())), "{err}");
    assert!(err.contains("--data-dir"), "{err}");
}

#[test]
fn a_data_directory_that_is_not_writable_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let readonly = dir.path().join("readonly");
    std::fs::create_dir(&readonly).unwrap();
    std::fs::set_permissions(&readonly, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = readonly.join("data");
    let args = ["serve", "--data-dir", data.to_str().unwrap(), "--api-listen", "127.0.0.1:0"];
    // Root writes anywhere, so as root run the server as `nobody`.
    let output = if is_root() {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(crate::kit::BIN)
            .args(args)
            .env("HOME", dir.path())
            .output()
            .unwrap()
    } else {
        command().args(args).output().unwrap()
    };
    assert_eq!(exit_code(&output), 1, "{}", stderr(&output));
    let err = stderr(&output);
    assert!(err.contains("cannot be used: Permission denied"), "{err}");
    assert!(!data.exists());
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn a_bad_configuration_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bulkhead.toml");
    std::fs::write(&config, "api_listen = \"127.0.0.1:0\"\nstroe = \"sqlite://x\"\n").unwrap();
    let output = serve(&["--config", config.to_str().unwrap()]);
    assert_eq!(exit_code(&output), 2);
    assert!(stderr(&output).contains("unknown field `stroe`"), "{}", stderr(&output));
    let tool = "name = \"search\"\nupstream = { mcp = \"http://127.0.0.1:9/mcp\" }";
    let cases = [
        ("[runtime]\ndatabase_lease = \"10s\"".to_owned(), "shorter than 30s; give 1h"),
        ("[runtime]\ndatabase_lease = \"soon\"".to_owned(), "runtime.database_lease"),
        (format!("[[plans.gold.tools]]\n{tool}"), "plans.gold: no such plan; valid plans: starter"),
        (
            format!("[[plans.starter.tools]]\n{tool}\n[[plans.starter.tools]]\n{tool}"),
            "granted twice",
        ),
        (
            "[budget]\nwebhook_secret = \"s\"".to_owned(),
            "budget.webhook_secret is set without budget.webhook",
        ),
        (
            "[budget]\nwebhook = \"ftp://x\"".to_owned(),
            "budget.webhook ftp://x is not an http(s) URL",
        ),
        ("[backup]\nstore = \"gs://bucket\"".to_owned(), "use a directory or s3://bucket/prefix"),
        (
            "[backup]\nendpoint = \"http://x\"".to_owned(),
            "backup.endpoint and backup.region are for",
        ),
        ("[backup]\nconcurrency = 0".to_owned(), "backup.concurrency must be 1 to 64"),
        ("[backup]\ncheck_every = \"soon\"".to_owned(), "backup.check_every"),
        ("[backup]\nstore = \"s3:///x\"".to_owned(), "names no bucket"),
    ];
    for (section, says) in cases {
        let text = format!("api_listen = \"127.0.0.1:0\"\n{section}\n");
        std::fs::write(&config, text).unwrap();
        let output = serve(&["--config", config.to_str().unwrap()]);
        assert_eq!(exit_code(&output), 2, "{}", stderr(&output));
        assert!(stderr(&output).contains(says), "{}", stderr(&output));
    }
}

#[tokio::test]
async fn one_server_per_data_directory_and_per_store() {
    let server = Server::embedded().await;
    let output =
        serve(&["--data-dir", server.data_dir().to_str().unwrap(), "--api-listen", "127.0.0.1:0"]);
    assert_eq!(exit_code(&output), 1);
    assert!(
        stderr(&output).contains("is in use by another bulkhead server"),
        "{}",
        stderr(&output)
    );

    let pg = Server::postgres().await;
    let other = tempfile::tempdir().unwrap();
    let output = serve(&[
        "--data-dir",
        other.path().to_str().unwrap(),
        "--api-listen",
        "127.0.0.1:0",
        "--store",
        &pg.postgres_db().url,
    ]);
    assert_eq!(exit_code(&output), 1);
    assert!(stderr(&output).contains("another bulkhead server is using it"), "{}", stderr(&output));
}

#[tokio::test]
async fn a_region_that_still_has_tenants_must_stay_configured() {
    let config = "[[regions]]\nname = \"local\"\ndatabases = \"embedded\"\n\n[[regions]]\nname = \"eu\"\ndatabases = \"embedded\"\n";
    let mut server = Server::start(Store::Embedded, config, &[]).await;
    server
        .cli_json(&["tenants", "create", "acme", "--plan", "starter", "--region", "eu", "--wait"]);
    server.stop();
    let data = server.data_dir();
    let output = serve(&["--data-dir", data.to_str().unwrap(), "--api-listen", "127.0.0.1:0"]);
    assert_eq!(exit_code(&output), 1);
    let err = stderr(&output);
    assert!(
        err.contains("1 tenant(s) (e.g. \"acme\") are in region `eu`, which is not configured"),
        "{err}"
    );
}

#[tokio::test]
async fn losing_the_postgres_store_lock_stops_the_server() {
    use sqlx::Connection;
    let mut server = Server::postgres().await;
    let mut admin =
        sqlx::PgConnection::connect(&bulkhead_testkit::postgres_admin_url()).await.unwrap();
    let (ended,): (i64,) = sqlx::query_as(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name = 'bulkhead-store-lock'",
    )
    .bind(&server.postgres_db().name)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(ended, 1, "the lock's session was found");
    let status = server.exited(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(1));
    assert!(server.log().contains("lost the control store's lock"), "{}", server.log());
}

#[tokio::test]
async fn a_port_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let output = serve(&["--data-dir", dir.path().to_str().unwrap(), "--api-listen", &addr]);
    assert_eq!(exit_code(&output), 1);
    assert!(stderr(&output).contains(&format!("cannot listen on {addr}")), "{}", stderr(&output));
}

#[tokio::test]
async fn the_operator_token_is_private_and_survives_restarts() {
    let mut server = Server::embedded().await;
    let path = server.data_dir().join("operator.token");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let first = server.token.clone();
    assert!(first.starts_with("bho_"));
    assert!(server.stop().success(), "SIGTERM ends the server cleanly");
    server.restart().await;
    assert_eq!(server.token, first);
    assert_eq!(server.http().get("/v1/plans").await.0, 200);
}

#[tokio::test]
async fn json_logs_carry_the_tenant() {
    let server = Server::start(Store::Embedded, "", &["--log-format", "json"]).await;
    server.cli_json(&["tenants", "create", "acme", "--plan", "starter", "--wait"]);
    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let active = lines
        .iter()
        .find(|l| l["fields"]["message"] == "tenant is active")
        .unwrap_or_else(|| panic!("no 'tenant is active' line in {log}"));
    assert_eq!(active["span"]["tenant"], "acme");
    let request = lines
        .iter()
        .find(|l| {
            l["fields"]["message"] == "request finished" && l["span"]["route"] == "/v1/tenants"
        })
        .unwrap();
    assert_eq!(request["span"]["tenant"], "acme");
    assert_eq!(request["span"]["status"], 202);
}

#[tokio::test]
async fn a_data_directory_is_never_used_with_another_store() {
    let mut server = Server::embedded().await;
    server.cli_json(&["tenants", "create", "acme", "--plan", "enterprise", "--wait"]);
    server.stop();
    let db = bulkhead_testkit::TestDatabase::create().await;
    let data = server.data_dir();
    let data = data.to_str().unwrap();
    let switched = serve(&["--data-dir", data, "--api-listen", "127.0.0.1:0", "--store", &db.url]);
    assert_eq!(exit_code(&switched), 1, "{}", stderr(&switched));
    let err = stderr(&switched);
    assert!(err.contains("belongs to another control store (sqlite://"), "{err}");
    assert!(err.contains("without --store, for the embedded one"), "{err}");
    // Its own store still starts, with its tenant.
    server.restart().await;
    assert_eq!(server.cli_json(&["tenants", "get", "acme"])["state"], "active");
    server.stop();

    // And the other way round: a directory of a PostgreSQL store.
    let pg_dir = tempfile::tempdir().unwrap();
    let pg_data = pg_dir.path().join("data");
    let mut pg = command()
        .args(["serve", "--api-listen", "127.0.0.1:0", "--store", &db.url, "--data-dir"])
        .arg(&pg_data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !pg_data.join("store.json").exists() {
        assert!(std::time::Instant::now() < deadline, "the PostgreSQL server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    pg.kill().unwrap();
    pg.wait().unwrap();
    let embedded = serve(&["--data-dir", pg_data.to_str().unwrap(), "--api-listen", "127.0.0.1:0"]);
    assert_eq!(exit_code(&embedded), 1, "{}", stderr(&embedded));
    assert!(stderr(&embedded).contains("--store postgres://"), "{}", stderr(&embedded));
}
