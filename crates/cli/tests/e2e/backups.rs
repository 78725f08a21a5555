//! Tenants' backups through the real CLI: what an archive holds on the
//! embedded default and on PostgreSQL (silo and pool), that the standard
//! `age` tool opens it with the tenant's exported key, that verification
//! finds a changed byte, and a tenant that brings its own key.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection};

use crate::kit::{Server, exit_code, pool_tenant, stderr, stdout};

fn create(server: &Server, tenant: &str) -> Value {
    server.cli_json(&["backups", "create", "--tenant", tenant])
}

fn part_names(backup: &Value) -> Vec<&str> {
    backup["parts"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect()
}

/// The archive of `backup` in the server's default store.
fn archive(server: &Server, tenant_id: &str, backup: &Value) -> PathBuf {
    let id = backup["id"].as_str().unwrap();
    server.data_dir().join("backups/tenants").join(tenant_id).join(format!("{id}.age"))
}

/// Decrypts `archive` with the standard `age` tool and untars it into
/// `into`.
fn open_with_age(archive: &Path, identity: &Path, into: &Path) {
    let tar = into.join("archive.tar");
    let age = std::process::Command::new("age")
        .arg("--decrypt")
        .arg("--identity")
        .arg(identity)
        .arg("--output")
        .arg(&tar)
        .arg(archive)
        .output()
        .expect("the age tool (Debian: age; scripts/test.sh installs it)");
    assert!(age.status.success(), "{}", String::from_utf8_lossy(&age.stderr));
    let untar = std::process::Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(into).output();
    assert!(untar.unwrap().status.success());
}

fn tenant_id(server: &Server, name: &str) -> String {
    server.cli_json(&["tenants", "get", name])["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_backup_holds_every_part_verifies_and_opens_with_the_age_tool() {
    let server = Server::embedded().await;
    for name in ["acme", "globex"] {
        server.cli_json(&["tenants", "create", name, "--plan", "starter", "--wait"]);
        let put = server
            .cli_with_input(&["secrets", "put", "--tenant", name, "db/pass"], name.as_bytes());
        assert!(put.status.success(), "{}", stderr(&put));
    }
    let acme = tenant_id(&server, "acme");
    let globex = tenant_id(&server, "globex");
    // A row in acme's database and a file in its directory.
    let db = server.tenant_dir("acme").join("data.db");
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    sqlx::query("CREATE TABLE notes (body TEXT)").execute(&mut conn).await.unwrap();
    sqlx::query("INSERT INTO notes VALUES ('acme-row-1')").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    std::fs::create_dir_all(server.tenant_dir("acme").join("uploads")).unwrap();
    std::fs::write(server.tenant_dir("acme").join("uploads/logo.txt"), b"acme-logo").unwrap();

    let backup = create(&server, "acme");
    assert_eq!(
        part_names(&backup),
        ["database.sqlite", "secrets.json", "keys.json", "config.json", "audit.jsonl", "files.tar"]
    );
    assert_eq!(backup["kind"], "manual");
    let id = backup["id"].as_str().unwrap();
    let listed = server.cli_json(&["backups", "list", "--tenant", "acme"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(server.cli_json(&["backups", "list", "--tenant", "globex"]), Value::Array(vec![]));
    // globex cannot name acme's backup.
    let foreign = server.cli(&["backups", "get", "--tenant", "globex", id]);
    assert_eq!(exit_code(&foreign), 3, "{}", stderr(&foreign));
    assert!(stderr(&foreign).contains("has no backup"), "{}", stderr(&foreign));

    let verified = server.cli(&["backups", "verify", "--tenant", "acme", id]);
    assert!(verified.status.success(), "{}", stderr(&verified));
    assert!(stderr(&verified).contains("6 parts decrypted"), "{}", stderr(&verified));

    // The archive is ciphertext: nothing of acme's is readable in it.
    let sealed = std::fs::read(archive(&server, &acme, &backup)).unwrap();
    for plain in [&b"acme-row-1"[..], b"acme-logo", b"config.json"] {
        assert!(!sealed.windows(plain.len()).any(|w| w == plain));
    }

    // The exported identity opens it with the standard age tool.
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("acme.key");
    let exported =
        server.cli(&["backups", "key", "export", "--tenant", "acme", "-f", key.to_str().unwrap()]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let again =
        server.cli(&["backups", "key", "export", "--tenant", "acme", "-f", key.to_str().unwrap()]);
    assert_eq!(exit_code(&again), 2, "an existing file is never overwritten");
    open_with_age(&archive(&server, &acme, &backup), &key, work.path());
    let parts = work.path().join("parts");
    let copy = parts.join("database.sqlite");
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", copy.display())).await.unwrap();
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT body FROM notes").fetch_all(&mut conn).await.unwrap();
    assert_eq!(rows, [("acme-row-1".to_owned(),)]);
    conn.close().await.unwrap();
    let secrets = std::fs::read_to_string(parts.join("secrets.json")).unwrap();
    assert!(secrets.contains("db/pass") && !secrets.contains("\"acme\""), "sealed, not decrypted");
    let config: Value =
        serde_json::from_slice(&std::fs::read(parts.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["tenant"]["name"], "acme");
    let files =
        std::process::Command::new("tar").arg("-tf").arg(parts.join("files.tar")).output().unwrap();
    let files = String::from_utf8_lossy(&files.stdout).into_owned();
    assert!(files.contains("uploads/logo.txt") && !files.contains("data.db"), "{files}");
    let audit = server.cli(&["audit", "verify", parts.join("audit.jsonl").to_str().unwrap()]);
    assert!(audit.status.success(), "{}{}", stdout(&audit), stderr(&audit));
    // Nothing of globex's is in acme's backup.
    for part in std::fs::read_dir(&parts).unwrap() {
        let text = std::fs::read(part.unwrap().path()).unwrap();
        assert!(!text.windows(globex.len()).any(|w| w == globex.as_bytes()));
    }

    // A changed byte is found and named.
    let mut damaged = sealed.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    std::fs::write(archive(&server, &acme, &backup), &damaged).unwrap();
    let refused = server.cli(&["backups", "verify", "--tenant", "acme", id]);
    assert_eq!(exit_code(&refused), 2, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("damaged"), "{}", stderr(&refused));
    std::fs::write(archive(&server, &acme, &backup), &sealed).unwrap();

    // Every attempt is in acme's stream.
    let events = server.audit_events(&["acme"]);
    let actions: Vec<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["backup.create", "backup.verify", "backup.key_export"] {
        assert!(actions.contains(&action), "{actions:?}");
    }

    let deleted = server.cli(&["backups", "delete", "--tenant", "acme", id]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert_eq!(server.cli_json(&["backups", "list", "--tenant", "acme"]), Value::Array(vec![]));
    let gone = server.cli(&["backups", "delete", "--tenant", "acme", id]);
    assert_eq!(exit_code(&gone), 3, "{}", stderr(&gone));
}

#[tokio::test]
async fn a_tenant_with_its_own_key_gets_backups_bulkhead_cannot_read() {
    let server = Server::embedded().await;
    server.cli_json(&["tenants", "create", "acme", "--plan", "starter", "--wait"]);
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("own.key");
    let made = std::process::Command::new("age-keygen").arg("-o").arg(&key).output().unwrap();
    assert!(made.status.success());
    let recipient = String::from_utf8(
        std::process::Command::new("age-keygen").arg("-y").arg(&key).output().unwrap().stdout,
    )
    .unwrap();
    let recipient = recipient.trim();

    for bad in ["age1nope", "AGE-SECRET-KEY-1QQQ", ""] {
        let refused =
            server.cli(&["backups", "key", "set", "--tenant", "acme", "--recipient", bad]);
        assert_eq!(exit_code(&refused), 2, "{bad}: {}", stderr(&refused));
        assert!(stderr(&refused).contains("age-keygen -y"), "{}", stderr(&refused));
    }
    let set =
        server.cli_json(&["backups", "key", "set", "--tenant", "acme", "--recipient", recipient]);
    assert_eq!(set["own"], true);
    assert_eq!(set["recipient"], recipient);

    let backup = create(&server, "acme");
    assert_eq!(backup["recipient"], recipient);
    let id = backup["id"].as_str().unwrap();
    let refused = server.cli(&["backups", "verify", "--tenant", "acme", id]);
    assert_eq!(exit_code(&refused), 4, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("its own key"), "{}", stderr(&refused));
    let verified = server.cli(&[
        "backups",
        "verify",
        "--tenant",
        "acme",
        id,
        "--identity-file",
        key.to_str().unwrap(),
    ]);
    assert!(verified.status.success(), "{}", stderr(&verified));
    open_with_age(&archive(&server, &tenant_id(&server, "acme"), &backup), &key, work.path());

    // Back to the vault's key: the next backup is Bulkhead's to read again.
    let back = server.cli_json(&["backups", "key", "set", "--tenant", "acme", "--vault"]);
    assert_eq!(back["own"], false);
    let next = create(&server, "acme");
    let id = next["id"].as_str().unwrap();
    let verified = server.cli(&["backups", "verify", "--tenant", "acme", id]);
    assert!(verified.status.success(), "{}", stderr(&verified));
}

#[tokio::test]
async fn postgres_tenants_back_up_their_own_database_and_a_pool_tenant_only_its_rows() {
    let server = Server::postgres().await;
    server.cli_json(&["tenants", "create", "silo-a", "--plan", "enterprise", "--wait"]);
    pool_tenant(&server, "pool-a");
    pool_tenant(&server, "pool-b");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0001_notes.sql"),
        "CREATE TABLE notes (id bigserial PRIMARY KEY, tenant_id uuid, body text NOT NULL);",
    )
    .unwrap();
    let migrated = server.cli(&["migrate", "--dir", dir.path().to_str().unwrap(), "--wait"]);
    assert!(migrated.status.success(), "{}{}", stdout(&migrated), stderr(&migrated));
    for tenant in ["silo-a", "pool-a", "pool-b"] {
        let issued = server.cli_json(&["creds", "issue", "--tenant", tenant, "--ttl", "10m"]);
        let mut conn = crate::kit::connect(issued["url"].as_str().unwrap()).await.unwrap();
        let insert = format!("INSERT INTO notes (body) VALUES ('{tenant}-note')");
        sqlx::query(AssertSqlSafe(insert)).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }

    let work = tempfile::tempdir().unwrap();
    for (tenant, part) in [("silo-a", "database.pgdump"), ("pool-a", "database.rows")] {
        let backup = create(&server, tenant);
        assert_eq!(part_names(&backup)[0], part, "{backup}");
        let key = work.path().join(format!("{tenant}.key"));
        let exported = server.cli(&[
            "backups",
            "key",
            "export",
            "--tenant",
            tenant,
            "-f",
            key.to_str().unwrap(),
        ]);
        assert!(exported.status.success(), "{}", stderr(&exported));
        let into = work.path().join(tenant);
        std::fs::create_dir(&into).unwrap();
        open_with_age(&archive(&server, &tenant_id(&server, tenant), &backup), &key, &into);
        let dumped = into.join("parts").join(part);
        let text = if part == "database.pgdump" {
            let listed = std::process::Command::new("pg_restore")
                .arg("--data-only")
                .arg("-f")
                .arg("-")
                .arg(&dumped)
                .output()
                .unwrap();
            assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
            String::from_utf8_lossy(&listed.stdout).into_owned()
        } else {
            std::fs::read_to_string(&dumped).unwrap()
        };
        assert!(text.contains(&format!("{tenant}-note")), "{text}");
        // Row-level security, through the tenant's own lease, decided.
        for other in ["silo-a", "pool-a", "pool-b"].iter().filter(|o| **o != tenant) {
            assert!(!text.contains(&format!("{other}-note")), "{other}'s row in {tenant}'s backup");
        }
    }
    // The backup's lease is gone once it is done.
    let leases = server.cli_json(&["creds", "list", "--tenant", "pool-a"]);
    assert!(leases.as_array().unwrap().iter().all(|l| l["issued_by"] != "backup"), "{leases}");
}
