//! Audit streams through the real server and CLI: export and offline
//! verify for a tenant with lifecycle, vault and identity events; a tenant
//! admin exporting its own stream; `kill -9` under write load.

use std::time::Duration;

use serde_json::Value;

use crate::kit::{Server, Store, exit_code, stderr, stdout};

fn tenant(server: &Server, name: &str) {
    server.cli_json(&["tenants", "create", name, "--plan", "enterprise", "--wait"]);
}

/// `bulkhead audit export` into a file of the test's directory.
fn export(server: &Server, stream: &[&str], file: &str) -> std::path::PathBuf {
    let mut args = vec!["audit", "export"];
    args.extend(stream);
    let out = server.cli(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = server.data_dir().parent().unwrap().join(file);
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

/// `bulkhead audit verify`, run with no server to talk to.
fn verify(path: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    command.args(["audit", "verify"]).arg(path).args(extra);
    command.env("BULKHEAD_API", "http://127.0.0.1:1").env_remove("BULKHEAD_DATA_DIR");
    command.output().unwrap()
}

#[tokio::test]
async fn an_export_verifies_offline_and_every_edit_is_caught() {
    let server = Server::start(Store::Embedded, "[audit]\ncheckpoint_every = 5\n", &[]).await;
    tenant(&server, "acme");
    tenant(&server, "globex");
    // Vault, identity and lifecycle events.
    assert!(
        server
            .cli_with_input(&["secrets", "put", "--tenant", "acme", "db/password"], b"s3cr3t")
            .status
            .success()
    );
    assert!(server.cli(&["secrets", "get", "--tenant", "acme", "db/password"]).status.success());
    assert!(
        server
            .cli(&["auth", "token", "--tenant", "acme", "--subject", "alice", "--role", "viewer"])
            .status
            .success()
    );
    let key = server.cli_json(&[
        "apikeys", "create", "--tenant", "acme", "--name", "auditor", "--role", "admin",
    ]);
    let key = key["key"].as_str().unwrap().to_owned();
    server.cli_json(&["tenants", "suspend", "acme"]);
    server.cli_json(&["tenants", "resume", "acme"]);

    let path = export(&server, &["--tenant", "acme"], "acme.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    for action in [
        "tenant.create",
        "secret.write",
        "secret.read",
        "token.issue",
        "apikey.create",
        "tenant.suspend",
        "tenant.resume",
        "audit.export",
    ] {
        assert!(text.contains(&format!("\"action\":\"{action}\"")), "{action} missing:\n{text}");
    }
    assert!(!text.contains("s3cr3t"), "never a secret value");
    let ok = verify(&path, &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    // A verifier written from docs/audit.md alone agrees.
    let independent = python_verifier(&path, None);
    assert!(independent.starts_with("ok "), "{independent}");
    assert!(stdout(&ok).starts_with("verified: stream tenant:"), "{}", stdout(&ok));
    assert!(stderr(&ok).contains("taken from the file itself"));

    // Pinned to the realm's published audit key, fetched beforehand.
    let issuer = format!("{}/realms/acme", server.api);
    let discovery: Value = reqwest::get(format!("{issuer}/.well-known/openid-configuration"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys_uri = discovery["bulkhead_audit_keys_uri"].as_str().unwrap().to_owned();
    let keys = reqwest::get(&keys_uri).await.unwrap().text().await.unwrap();
    let keys_file = server.data_dir().parent().unwrap().join("acme-audit-keys.json");
    std::fs::write(&keys_file, &keys).unwrap();
    let acme_key: Value = serde_json::from_str(&keys).unwrap();
    let acme_key = acme_key["keys"][0]["public_key"].as_str().unwrap().to_owned();
    let pinned_by_python = python_verifier(&path, Some(&acme_key));
    assert!(pinned_by_python.starts_with("ok "), "{pinned_by_python}\n{text}\n{keys}");
    let pinned = verify(&path, &["--keys-file", keys_file.to_str().unwrap()]);
    assert!(pinned.status.success(), "{}", stderr(&pinned));
    assert!(stdout(&pinned).contains("(pinned)"), "{}", stdout(&pinned));
    // ... and another tenant's key is not it.
    let globex_keys: Value = reqwest::get(format!("{}/realms/globex/audit-keys.json", server.api))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other = globex_keys["keys"][0]["public_key"].as_str().unwrap();
    let refused = verify(&path, &["--key", other]);
    assert_eq!(exit_code(&refused), 1);
    assert!(stderr(&refused).contains("not a pinned key"), "{}", stderr(&refused));

    // An edit anywhere: named, line and seq.
    let edited = text.replacen("\"outcome\":\"ok\"", "\"outcome\":\"denied\"", 1);
    let edited_path = path.with_file_name("edited.jsonl");
    std::fs::write(&edited_path, edited).unwrap();
    assert!(python_verifier(&edited_path, None).contains("hash mismatch"));
    let broken = verify(&edited_path, &[]);
    assert_eq!(exit_code(&broken), 1);
    assert!(
        stderr(&broken)
            .contains("broken: line 2 (seq 1): the event's content does not match its hash"),
        "{}",
        stderr(&broken)
    );
    let truncated: String =
        text.lines().take(text.lines().count() - 2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&edited_path, truncated).unwrap();
    assert!(
        stderr(&verify(&edited_path, &[]))
            .contains("does not end with its signed export checkpoint")
    );
    // The start cut off down to the first stored checkpoint (seq 5): it
    // would pass for a partial export's anchor, but the export checkpoint
    // signed where the export starts.
    let lines: Vec<&str> = text.lines().collect();
    let first_checkpoint = lines.iter().position(|l| l.contains("\"kind\":\"periodic\"")).unwrap();
    let headless: String = std::iter::once(lines[0])
        .chain(lines[first_checkpoint..].iter().copied())
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&edited_path, headless).unwrap();
    let cut = stderr(&verify(&edited_path, &[]));
    assert!(cut.contains("lines were cut from its start"), "{cut}");
    assert!(python_verifier(&edited_path, None).contains("does not start where"));

    // A tenant admin exports its own stream with its own key, and no other.
    let as_admin = server.http().with_token(&key);
    let response = as_admin
        .client
        .get(format!("{}/v1/tenants/acme/audit/export", server.api))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let own = response.text().await.unwrap();
    let own_path = path.with_file_name("own.jsonl");
    std::fs::write(&own_path, &own).unwrap();
    assert!(verify(&own_path, &["--keys-file", keys_file.to_str().unwrap()]).status.success());
    let (_, garbage) = server.http().with_token("garbage").get("/v1/tenants/acme").await;
    for path in [
        "/v1/tenants/globex/audit/export",
        "/v1/audit/platform/export",
        "/v1/audit/platform/events",
    ] {
        let (status, body) = as_admin.get(path).await;
        assert_eq!(status, 401, "{path}");
        assert!(body.to_string().contains("reaches only /v1/tenants/acme/"), "{path}: {body}");
        assert!(!body.to_string().contains("globex"), "{path}: {body}");
    }
    let _ = garbage;
    let viewer = server.cli_json(&[
        "apikeys", "create", "--tenant", "acme", "--name", "viewer", "--role", "viewer",
    ]);
    let as_viewer = server.http().with_token(viewer["key"].as_str().unwrap());
    assert_eq!(as_viewer.get("/v1/tenants/acme/audit/events").await.0, 403);

    // The platform stream has the operators' actions, on every tenant.
    let platform = export(&server, &["--platform"], "platform.jsonl");
    let checked = verify(&platform, &[]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    let text = std::fs::read_to_string(&platform).unwrap();
    assert!(text.contains("\"resource\":\"tenants/acme/secrets/db/password\""), "{text}");
    // Tail reads the last events; a partial export verifies too.
    let tail = server.cli_json(&["audit", "tail", "--tenant", "acme", "--lines", "3"]);
    assert_eq!(tail.as_array().unwrap().len(), 3);
    let since = export(&server, &["--tenant", "acme", "--since", "1m"], "since.jsonl");
    assert!(verify(&since, &[]).status.success());
    // From the time of the event after the first stored checkpoint (seq 5):
    // a partial export, anchored on that checkpoint.
    let seventh: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["type"] == "event" && l["seq"] == 7)
        .unwrap();
    let time = seventh["time"].as_str().unwrap();
    let partial = export(&server, &["--tenant", "acme", "--since", time], "partial.jsonl");
    let checked = verify(&partial, &["-o", "json"]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    let report: Value = serde_json::from_str(&stdout(&checked)).unwrap();
    assert_eq!(report["start_seq"], 6, "{report}");
    assert!(stderr(&verify(&partial, &[])).contains("a partial export: events before seq 6"));
    let independent = python_verifier(&partial, None);
    assert!(independent.starts_with("ok "), "{independent}");
    let bad_since = server.cli(&["audit", "export", "--tenant", "acme", "--since", "yesterday"]);
    assert_eq!(exit_code(&bad_since), 2, "{}", stderr(&bad_since));
}

const INDEPENDENT_VERIFIER: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/verify_audit.py");

/// What the independent (Python) verifier says of an export.
fn python_verifier(path: &std::path::Path, pinned: Option<&str>) -> String {
    let out = std::process::Command::new("python3")
        .arg(INDEPENDENT_VERIFIER)
        // Positional from here: a base64url key may start with '-'.
        .arg("--")
        .arg(path)
        .args(pinned)
        .output()
        .unwrap();
    format!("{}{}", stdout(&out), stderr(&out))
}

/// Writers per tenant, each counting the writes the server acknowledged,
/// until the server stops answering.
fn write_load(server: &Server, tenants: &[&str]) -> Vec<tokio::task::JoinHandle<(String, usize)>> {
    let mut tasks = Vec::new();
    for tenant in tenants {
        for worker in 0..4 {
            let http = server.http();
            let tenant = tenant.to_string();
            tasks.push(tokio::spawn(async move {
                let mut acknowledged = 0;
                let token = http.token.clone().unwrap_or_default();
                loop {
                    let url = format!("{}/v1/tenants/{tenant}/secrets/load/w{worker}", http.api);
                    let sent = http.client.put(url).bearer_auth(&token).body("v").send().await;
                    match sent {
                        Ok(response) if response.status() == 201 => acknowledged += 1,
                        _ => return (tenant, acknowledged),
                    }
                }
            }));
        }
    }
    tasks
}

async fn kill_9_under_write_load(store: Store) {
    let mut server = Server::start(store, "[audit]\ncheckpoint_every = 50\n", &[]).await;
    let tenants = ["acme", "globex", "initech"];
    for name in tenants {
        tenant(&server, name);
    }
    let writers = write_load(&server, &tenants);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    server.kill();
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.push(writer.await.unwrap());
    }
    server.restart().await;
    for name in tenants {
        let acked: usize = acknowledged.iter().filter(|(t, _)| t == name).map(|(_, n)| n).sum();
        assert!(acked > 0, "the load reached {name}");
        let path = export(&server, &["--tenant", name], &format!("{name}-after-crash.jsonl"));
        let checked = verify(&path, &[]);
        assert!(checked.status.success(), "{name}: {}", stderr(&checked));
        // Every acknowledged write's event survived the crash.
        let text = std::fs::read_to_string(&path).unwrap();
        let writes = text.matches("\"action\":\"secret.write\"").count();
        assert!(writes >= acked, "{name}: {writes} events for {acked} acknowledged writes");
    }
    let platform = export(&server, &["--platform"], "platform-after-crash.jsonl");
    assert!(verify(&platform, &[]).status.success());
}

#[tokio::test]
async fn kill_9_under_write_load_leaves_every_chain_whole_on_sqlite() {
    kill_9_under_write_load(Store::Embedded).await;
}

#[tokio::test]
async fn kill_9_under_write_load_leaves_every_chain_whole_on_postgres() {
    let db = bulkhead_testkit::TestDatabase::create().await;
    kill_9_under_write_load(Store::Postgres(db)).await;
}

#[test]
fn verify_says_what_is_wrong_with_what_it_was_given() {
    let dir = tempfile::tempdir().unwrap();
    let missing = verify(&dir.path().join("missing.jsonl"), &[]);
    assert_eq!(exit_code(&missing), 2);
    assert!(stderr(&missing).contains("cannot read"), "{}", stderr(&missing));
    for (name, content, expected) in [
        ("empty.jsonl", &b""[..], "empty file: not an export"),
        ("other.jsonl", &b"{\"hello\":1}\n"[..], "not an export header"),
        ("binary.jsonl", &b"\xff\xfe\x00garbage"[..], "cannot read"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let out = verify(&path, &[]);
        assert_eq!(exit_code(&out), 1, "{name}");
        assert!(stderr(&out).contains(expected), "{name}: {}", stderr(&out));
    }
    let path = dir.path().join("other.jsonl");
    let bad_key = verify(&path, &["--key", "not-a-key"]);
    assert_eq!(exit_code(&bad_key), 2);
    assert!(stderr(&bad_key).contains("is not a public key (base64url of 32 bytes)"));
}

/// Runs SQL on the server's PostgreSQL store as the superuser.
async fn store_sql(server: &Server, sql: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&server.postgres_db().url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut conn).await.unwrap();
}

#[tokio::test]
async fn nothing_secret_is_handed_out_that_the_audit_stream_could_not_record() {
    let db = bulkhead_testkit::TestDatabase::create().await;
    let server = Server::start(Store::Postgres(db), "", &[]).await;
    server.cli_json(&["tenants", "create", "acme", "--plan", "enterprise", "--wait"]);
    let put =
        server.cli_with_input(&["secrets", "put", "--tenant", "acme", "db/password"], b"s3cr3t");
    assert!(put.status.success(), "{}", stderr(&put));

    // The audit store refuses every append, as a full disk or a broken
    // replica would make it.
    store_sql(
        &server,
        "CREATE FUNCTION audit.refuse_for_test() RETURNS trigger LANGUAGE plpgsql AS \
         $$BEGIN RAISE EXCEPTION 'audit store unavailable (test)'; END$$; \
         CREATE TRIGGER refuse_for_test BEFORE INSERT ON audit.audit_events \
         FOR EACH ROW EXECUTE FUNCTION audit.refuse_for_test();",
    )
    .await;
    let attempts: [&[&str]; 4] = [
        &["secrets", "get", "--tenant", "acme", "db/password"],
        &["auth", "token", "--tenant", "acme", "--subject", "alice", "--role", "viewer"],
        &["apikeys", "create", "--tenant", "acme", "--name", "ci", "--role", "viewer"],
        &["creds", "issue", "--tenant", "acme", "--ttl", "10m"],
    ];
    for args in attempts {
        let refused = server.cli(args);
        assert!(!refused.status.success(), "{args:?} succeeded: {}", stdout(&refused));
        assert!(stdout(&refused).is_empty(), "{args:?} printed {}", stdout(&refused));
        assert!(stderr(&refused).contains("could not record this"), "{}", stderr(&refused));
    }
    // What was made for nothing is gone: no key named `ci`, no live lease.
    assert_eq!(server.cli_json(&["apikeys", "list", "--tenant", "acme"]), serde_json::json!([]));
    let leases = server.cli_json(&["creds", "list", "--tenant", "acme"]);
    assert!(leases.as_array().unwrap().iter().all(|l| l["revoked_at"].is_string()), "{leases}");

    // Once the store takes appends again, so does everything else, the
    // key's name included, and the stream still verifies whole.
    store_sql(&server, "DROP TRIGGER refuse_for_test ON audit.audit_events").await;
    let got = server.cli(&["secrets", "get", "--tenant", "acme", "db/password"]);
    assert_eq!(stdout(&got), "s3cr3t", "{}", stderr(&got));
    let created = server.cli(attempts[2]);
    assert!(created.status.success(), "{}", stderr(&created));
    let path = export(&server, &["--tenant", "acme"], "acme.jsonl");
    let checked = verify(&path, &[]);
    assert!(checked.status.success(), "{}", stderr(&checked));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.matches("\"action\":\"secret.read\"").count(), 1, "only the read handed out");
}
