//! Offboarding through the real CLI: a plain delete keeps one final
//! encrypted snapshot and destroys the rest (databases, files, keys, other
//! backups), frees the name, and records each step in the platform's
//! stream; the tenant comes back from the snapshot; a purge or the
//! snapshot's expiry destroys it.

use std::path::Path;

use serde_json::{Value, json};
use sqlx::Connection;

use crate::{
    backups::{contents, fill, tenant_id},
    kit::{Server, Store, entries, exit_code, stderr, stdout},
};

fn delete(server: &Server, name: &str, purge: bool) -> std::process::Output {
    let mut args = vec!["tenants", "delete", name, "--yes", "--wait"];
    if purge {
        args.push("--purge");
    }
    let deleted = server.cli(&args);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    deleted
}

/// The files under the tenant's prefix of the default backup store.
fn stored(server: &Server, id: &str) -> Vec<String> {
    let dir = server.data_dir().join("backups/tenants").join(id);
    if dir.exists() { entries(&dir) } else { Vec::new() }
}

async fn sqlite(server: &Server) -> sqlx::SqliteConnection {
    let db = server.data_dir().join("bulkhead.db");
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap()
}

/// How many rows of `table` belong to tenant `id` in the control store.
async fn rows_of(server: &Server, table: &str, id: &str) -> i64 {
    let query =
        format!("SELECT COUNT(*) FROM {table} WHERE hex(tenant_id) = upper(replace($1, '-', ''))");
    let mut conn = sqlite(server).await;
    let (count,): (i64,) =
        sqlx::query_as(sqlx::AssertSqlSafe(query)).bind(id).fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    count
}

fn platform_actions(server: &Server, tenant: &str) -> Vec<String> {
    server
        .audit_events(&[])
        .iter()
        .filter(|e| e["details"]["tenant"] == tenant)
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_deleted_tenant_leaves_one_final_snapshot_and_comes_back_from_it() {
    let server = Server::start(Store::Embedded, "[backup]\ncheck_every = \"1s\"\n", &[]).await;
    server.cli_json(&["tenants", "create", "acme", "--plan", "starter", "--wait"]);
    // Not backed up on its own schedule during the test.
    let quiet = server.cli(&["tenants", "update", "acme", "--backups", "0/1/1"]);
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    fill(&server, "acme").await;
    let original = contents(&server, "acme").await;
    let id = tenant_id(&server, "acme");
    let older = server.cli_json(&["backups", "create", "--tenant", "acme"]);
    // Its policy keeps one backup: one manual backup is all it may keep.
    let more = server.cli(&["backups", "create", "--tenant", "acme"]);
    assert_eq!(exit_code(&more), 4, "{}", stderr(&more));
    assert!(stderr(&more).contains("delete one first"), "{}", stderr(&more));
    assert!(rows_of(&server, "vault_data_keys", &id).await > 0);
    // What someone who can write to the backup store could try later: an
    // older backup of the tenant passed off as its final snapshot.
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("acme.key");
    let exported =
        server.cli(&["backups", "key", "export", "--tenant", "acme", "-f", key.to_str().unwrap()]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let prefix = server.data_dir().join("backups/tenants").join(&id);
    let older_tar = work.path().join("older.tar");
    let older_archive = prefix.join(format!("{}.age", older["id"].as_str().unwrap()));
    age(&["--decrypt", "--identity", key.to_str().unwrap(), "-o"], &older_tar, &older_archive);

    let deleted = delete(&server, "acme", false);
    assert!(stderr(&deleted).contains("--from-final"), "{}", stderr(&deleted));
    assert!(!server.tenant_dir("acme").exists(), "its files are gone");
    for table in ["vault_data_keys", "vault_secrets", "vault_blobs", "tenant_steps"] {
        assert_eq!(rows_of(&server, table, &id).await, 0, "{table} keeps nothing of it");
    }
    let gone = server.cli_json(&["tenants", "get", "acme"]);
    assert_eq!(gone["state"], "deleted", "{gone}");
    let departure = &gone["departure"];
    let snapshot = departure["final_snapshot"].as_str().unwrap().to_owned();
    assert_eq!(departure["own_key"], false);
    // The final snapshot alone is kept: the manual backup went.
    let mut kept = stored(&server, &id);
    kept.sort();
    assert_eq!(kept, [format!("{snapshot}.age"), format!("{snapshot}.json")]);
    let listed = server.cli_json(&["tenants", "list", "--state", "deleted"]);
    assert_eq!(listed[0]["name"], "acme", "{listed}");

    // The older backup, encrypted to the snapshot's (public) recipient in
    // its place, is refused: the departure recorded the real manifest.
    let listing: Value =
        serde_json::from_slice(&std::fs::read(prefix.join(format!("{snapshot}.json"))).unwrap())
            .unwrap();
    let snapshot_archive = prefix.join(format!("{snapshot}.age"));
    let real = work.path().join("real.age");
    std::fs::copy(&snapshot_archive, &real).unwrap();
    let recipient = listing["recipient"].as_str().unwrap();
    age(&["--encrypt", "--recipient", recipient, "-o"], &snapshot_archive, &older_tar);
    let checked = server.cli(&["tenants", "verify-final", "acme"]);
    assert_eq!(exit_code(&checked), 2, "{}", stderr(&checked));
    assert!(stderr(&checked).contains("recorded when it was taken"), "{}", stderr(&checked));
    let forged = server.cli(&["tenants", "restore", "acme", "--from-final", "--to", "acme-forged"]);
    assert_ne!(exit_code(&forged), 0);
    assert!(stderr(&forged).contains("recorded when it was taken"), "{}", stderr(&forged));
    assert_eq!(exit_code(&server.cli(&["tenants", "get", "acme-forged"])), 3, "nothing made");
    std::fs::copy(&real, &snapshot_archive).unwrap();
    let checked = server.cli_json(&["tenants", "verify-final", "acme", "--id", &id]);
    assert_eq!((&checked["id"], &checked["verified"]), (&snapshot.as_str().into(), &true.into()));
    assert!(checked["parts"].as_array().unwrap().len() > 3, "{checked}");
    let actions = platform_actions(&server, "acme");
    let offboarded = ["tenant.stop_apps", "tenant.final_snapshot"]
        .into_iter()
        .chain(std::iter::repeat_n("tenant.offboard_step", 8))
        // And the forged snapshot's check and return, refused; the real
        // one's check.
        .chain(["tenant.delete", "tenant.verify_final", "tenant.return", "tenant.verify_final"])
        .collect::<Vec<_>>();
    assert_eq!(actions, offboarded);

    // The name is free: another tenant takes it, and the departed one
    // comes back under another name.
    let squatter = server.cli_json(&["tenants", "create", "acme", "--plan", "starter", "--wait"]);
    assert_ne!(squatter["id"], id.as_str());
    // The new acme's admin holds the name, not the departed tenant: it can
    // neither read, bring back nor destroy the final snapshot.
    let minted = server.cli(&[
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
    assert!(minted.status.success(), "{}", stderr(&minted));
    let admin = stdout(&minted).trim().to_owned();
    let purge = format!("--departed={id}");
    for args in [
        &["tenants", "verify-final", "acme"][..],
        &["tenants", "restore", "acme", "--from-final", "--to", "stolen"],
        &["tenants", "delete", "acme", "--purge", "--yes", &purge],
    ] {
        let refused = server.cli_with_token(&admin, args);
        assert_eq!(exit_code(&refused), 6, "{args:?}: {}", stderr(&refused));
        assert!(stderr(&refused).contains("operator"), "{args:?}: {}", stderr(&refused));
    }
    assert_eq!(server.cli_json(&["tenants", "list", "--state", "deleted"])[0]["name"], "acme");
    let taken = server.cli(&["tenants", "restore", "acme", "--from-final"]);
    assert_eq!(exit_code(&taken), 4, "{}", stderr(&taken));
    assert!(stderr(&taken).contains("--to NAME"), "{}", stderr(&taken));
    let back =
        server.cli_json(&["tenants", "restore", "acme", "--from-final", "--to", "acme-back"]);
    assert_eq!(
        (&back["tenant"], &back["backup"]),
        (&"acme-back".into(), &snapshot.as_str().into())
    );
    assert_eq!(contents(&server, "acme-back").await, original);
    // Back, it leaves nothing departed behind.
    assert!(stored(&server, &id).is_empty());
    assert_eq!(server.cli_json(&["tenants", "list", "--state", "deleted"]), Value::Array(vec![]));
    let again = server.cli(&["tenants", "restore", "acme", "--from-final", "--to", "acme-2"]);
    assert_eq!(exit_code(&again), 3, "{}", stderr(&again));
    assert!(stderr(&again).contains("tenants list --state deleted"), "{}", stderr(&again));
    let unknown = server.cli(&["tenants", "verify-final", "acme"]);
    assert_eq!(exit_code(&unknown), 3, "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains("tenants list --state deleted"), "{}", stderr(&unknown));
    // The API says what a request lacks.
    let http = server.http();
    let (status, body) =
        http.post("/v1/tenants/acme/restore", json!({ "from_final": false })).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("from_final"), "{body}");
    let (status, body) = http.delete(&format!("/v1/tenants/acme?departed={id}")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("purge=true"), "{body}");
    assert!(platform_actions(&server, "acme").contains(&"tenant.return".to_owned()));
}

#[tokio::test]
async fn a_final_snapshot_goes_with_a_purge_or_when_it_expires_and_an_own_key_stays_the_tenants() {
    let server = Server::start(Store::Embedded, "[backup]\ncheck_every = \"1s\"\n", &[]).await;
    let mut ids = Vec::new();
    for name in ["globex", "initech", "hooli"] {
        server.cli_json(&["tenants", "create", name, "--plan", "starter", "--wait"]);
        let put = server.cli_with_input(&["secrets", "put", "--tenant", name, "k"], b"v");
        assert!(put.status.success(), "{}", stderr(&put));
        ids.push(tenant_id(&server, name));
    }

    // A tenant with its own key: its snapshot is encrypted to it, and only
    // its identity brings the tenant back.
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("own.key");
    let recipient = own_key(&key);
    let set =
        server.cli(&["backups", "key", "set", "--tenant", "globex", "--recipient", &recipient]);
    assert!(set.status.success(), "{}", stderr(&set));
    delete(&server, "globex", false);
    let gone = server.cli_json(&["tenants", "get", "globex"]);
    assert_eq!(gone["departure"]["own_key"], true, "{gone}");
    let refused = server.cli(&["tenants", "restore", "globex", "--from-final"]);
    assert_eq!(exit_code(&refused), 4, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("--identity-file"), "{}", stderr(&refused));
    let back = server.cli(&[
        "tenants",
        "restore",
        "globex",
        "--from-final",
        "--identity-file",
        key.to_str().unwrap(),
    ]);
    assert!(back.status.success(), "{}", stderr(&back));
    let secret = server.cli(&["secrets", "get", "--tenant", "globex", "k"]);
    assert_eq!(stdout(&secret), "v");
    let shown = server.cli_json(&["backups", "key", "show", "--tenant", "globex"]);
    assert_eq!((&shown["recipient"], &shown["own"]), (&recipient.as_str().into(), &true.into()));

    // A purge destroys the snapshot and forgets the tenant at once, by its
    // id while a new tenant has its name.
    delete(&server, "initech", false);
    assert_eq!(stored(&server, &ids[1]).len(), 2);
    let squatter =
        server.cli_json(&["tenants", "create", "initech", "--plan", "starter", "--wait"]);
    let purged = server.cli(&[
        "tenants",
        "delete",
        "initech",
        "--purge",
        "--departed",
        &ids[1],
        "--yes",
        "--wait",
    ]);
    assert!(purged.status.success(), "{}", stderr(&purged));
    assert!(stored(&server, &ids[1]).is_empty());
    assert!(platform_actions(&server, "initech").contains(&"tenant.purge".to_owned()));
    assert_eq!(server.cli_json(&["tenants", "get", "initech"])["id"], squatter["id"]);
    let purged = delete(&server, "initech", true);
    assert!(stderr(&purged).contains("is purged"), "{}", stderr(&purged));
    let missing = server.cli(&["tenants", "get", "initech"]);
    assert_eq!(exit_code(&missing), 3, "{}", stderr(&missing));

    // Past its time, the scheduler destroys it with its key.
    delete(&server, "hooli", false);
    assert_eq!(rows_of(&server, "departed_tenants", &ids[2]).await, 1);
    let mut conn = sqlite(&server).await;
    sqlx::query("UPDATE departed_tenants SET expires_at = departed_at WHERE name = 'hooli'")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while rows_of(&server, "departed_tenants", &ids[2]).await > 0 {
        assert!(std::time::Instant::now() < deadline, "not expired\n{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(stored(&server, &ids[2]).is_empty());
    let missing = server.cli(&["tenants", "get", "hooli"]);
    assert_eq!(exit_code(&missing), 3, "{}", stderr(&missing));
    assert!(
        platform_actions(&server, "hooli").contains(&"tenant.final_snapshot_expire".to_owned())
    );
}

/// Makes an age key in `file` and returns its recipient.
fn own_key(file: &Path) -> String {
    let made = std::process::Command::new("age-keygen").arg("-o").arg(file).output().unwrap();
    assert!(made.status.success());
    let shown = std::process::Command::new("age-keygen").arg("-y").arg(file).output().unwrap();
    String::from_utf8(shown.stdout).unwrap().trim().to_owned()
}

/// Runs the `age` tool: `args`, then `output`, then `input`.
fn age(args: &[&str], output: &Path, input: &Path) {
    let ran = std::process::Command::new("age").args(args).arg(output).arg(input).output().unwrap();
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));
}
