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

pub fn tenant_id(server: &Server, name: &str) -> String {
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
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["schedule"]["last_backup"], backup["id"], "{listed}");
    assert_eq!(listed["schedule"]["policy"]["every_hours"], 24, "starter: daily");
    let globex_listed = server.cli_json(&["backups", "list", "--tenant", "globex"]);
    assert_eq!(globex_listed["backups"], Value::Array(vec![]));
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
    let listed = server.cli_json(&["backups", "list", "--tenant", "acme"]);
    assert_eq!(listed["backups"], Value::Array(vec![]));
    let gone = server.cli(&["backups", "delete", "--tenant", "acme", id]);
    assert_eq!(exit_code(&gone), 3, "{}", stderr(&gone));

    // A purge takes the tenant's backups with it; the other's stay.
    create(&server, "globex");
    create(&server, "acme");
    let tenants = server.data_dir().join("backups/tenants");
    let purged = server.cli(&["tenants", "delete", "globex", "--purge", "--yes", "--wait"]);
    assert!(purged.status.success(), "{}", stderr(&purged));
    assert!(
        !tenants.join(&globex).exists() || crate::kit::entries(&tenants.join(&globex)).is_empty()
    );
    assert_eq!(crate::kit::entries(&tenants.join(&acme)).len(), 2, "acme's archive and listing");
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

/// The notes a tenant's own lease sees, each with its comment.
async fn notes(server: &Server, tenant: &str) -> Vec<String> {
    let issued =
        server.cli_json(&["creds", "issue", "--tenant", tenant, "--access", "read", "--ttl", "5m"]);
    let mut conn = crate::kit::connect(issued["url"].as_str().unwrap()).await.unwrap();
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT n.body FROM notes n JOIN comments c ON c.note_id = n.id AND c.body = 'on ' || n.body \
         ORDER BY n.body",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    rows.into_iter().map(|(body,)| body).collect()
}

async fn add_note(server: &Server, tenant: &str, body: &str) {
    let issued = server.cli_json(&["creds", "issue", "--tenant", tenant, "--ttl", "5m"]);
    let mut conn = crate::kit::connect(issued["url"].as_str().unwrap()).await.unwrap();
    let insert = format!(
        "WITH note AS (INSERT INTO notes (body) VALUES ('{body}') RETURNING id) \
         INSERT INTO comments (note_id, body) SELECT id, 'on {body}' FROM note"
    );
    sqlx::query(AssertSqlSafe(insert)).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
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
        // comments references notes, and comes first by name: restores
        // must order the tables by their references, not their names.
        "CREATE TABLE notes (id bigserial PRIMARY KEY, tenant_id uuid, body text NOT NULL);\n\
         CREATE TABLE comments (id bigserial PRIMARY KEY, tenant_id uuid, \
           note_id bigint NOT NULL REFERENCES notes (id), body text NOT NULL);",
    )
    .unwrap();
    let migrated = server.cli(&["migrate", "--dir", dir.path().to_str().unwrap(), "--wait"]);
    assert!(migrated.status.success(), "{}{}", stdout(&migrated), stderr(&migrated));
    for tenant in ["silo-a", "pool-a", "pool-b"] {
        add_note(&server, tenant, &format!("{tenant}-note")).await;
    }

    // The application's login, issued before the backup: its writes after
    // it are in no audited change.
    let app = server.cli_json(&["creds", "issue", "--tenant", "silo-a", "--ttl", "10m"]);
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
    // A silo backup restores into a new tenant, owned by its own roles.
    let listed = server.cli_json(&["backups", "list", "--tenant", "silo-a"]);
    let silo_backup = listed["backups"][0]["id"].as_str().unwrap().to_owned();
    let restored = server.cli_json(&[
        "backups",
        "restore",
        "--tenant",
        "silo-a",
        &silo_backup,
        "--to",
        "silo-copy",
    ]);
    assert_eq!(restored["created"], true, "{restored}");
    assert_eq!(notes(&server, "silo-copy").await, ["silo-a-note"]);
    add_note(&server, "silo-copy", "copy-only").await;
    assert_eq!(
        notes(&server, "silo-a").await,
        ["silo-a-note"],
        "the copy is a database of its own"
    );

    // The silo tenant's application writes to its database after the
    // backup: restoring over it asks for --force, and then restores.
    let mut conn = crate::kit::connect(app["url"].as_str().unwrap()).await.unwrap();
    sqlx::query("INSERT INTO notes (body) VALUES ('silo-a-later')")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let refused = server.cli(&["backups", "restore", "--tenant", "silo-a", &silo_backup, "--yes"]);
    assert_eq!(exit_code(&refused), 4, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("rows of its database were written"), "{}", stderr(&refused));
    let forced =
        server.cli(&["backups", "restore", "--tenant", "silo-a", &silo_backup, "--yes", "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_eq!(notes(&server, "silo-a").await, ["silo-a-note"]);

    // A pool tenant's rows come back in place, the other tenant's untouched.
    add_note(&server, "pool-a", "pool-a-later").await;
    let listed = server.cli_json(&["backups", "list", "--tenant", "pool-a"]);
    let pool_backup = listed["backups"][0]["id"].as_str().unwrap().to_owned();
    let refused = server.cli(&["backups", "restore", "--tenant", "pool-a", &pool_backup, "--yes"]);
    assert_eq!(exit_code(&refused), 4, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("rows in the pool differ"), "{}", stderr(&refused));
    let forced =
        server.cli(&["backups", "restore", "--tenant", "pool-a", &pool_backup, "--yes", "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_eq!(notes(&server, "pool-a").await, ["pool-a-note"]);
    assert_eq!(notes(&server, "pool-b").await, ["pool-b-note"]);
    // Its rows are the backup's again: nothing to lose, no --force.
    let again = server.cli(&["backups", "restore", "--tenant", "pool-a", &pool_backup, "--yes"]);
    assert!(again.status.success(), "{}", stderr(&again));

    // The backup's lease is gone once it is done.
    let leases = server.cli_json(&["creds", "list", "--tenant", "pool-a"]);
    assert!(leases.as_array().unwrap().iter().all(|l| l["issued_by"] != "backup"), "{leases}");

    // Deleted, each leaves its database (or its rows) in its final
    // snapshot only, and comes back from it.
    let db = server.postgres_db();
    for tenant in ["silo-a", "pool-a"] {
        let deleted = server.cli(&["tenants", "delete", tenant, "--yes", "--wait"]);
        assert!(deleted.status.success(), "{}", stderr(&deleted));
    }
    let (databases, _) = db.owned_objects().await;
    assert!(!databases.iter().any(|d| d.contains("silo_a")), "{databases:?}");
    for tenant in ["silo-a", "pool-a"] {
        let back = server.cli(&["tenants", "restore", tenant, "--from-final"]);
        assert!(back.status.success(), "{}", stderr(&back));
    }
    assert_eq!(notes(&server, "silo-a").await, ["silo-a-note"]);
    assert_eq!(notes(&server, "pool-a").await, ["pool-a-note"]);
    assert_eq!(notes(&server, "pool-b").await, ["pool-b-note"]);
}

/// acme with something in every part: a row, a secret of two versions,
/// an API, a guardrail, a tool and a file.
pub async fn fill(server: &Server, tenant: &str) {
    let db = server.tenant_dir(tenant).join("data.db");
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    sqlx::query("CREATE TABLE notes (body TEXT)").execute(&mut conn).await.unwrap();
    sqlx::query("INSERT INTO notes VALUES ('row-1'), ('row-2')").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    for value in ["first", "second"] {
        let put = server
            .cli_with_input(&["secrets", "put", "--tenant", tenant, "db/pass"], value.as_bytes());
        assert!(put.status.success(), "{}", stderr(&put));
    }
    let manifest = format!(
        "apiVersion: bulkhead.dev/v1\nkind: Api\nmetadata: {{name: orders, tenant: {tenant}}}\n\
         spec: {{prefix: /orders, upstreams: ['http://127.0.0.1:9']}}\n---\n\
         apiVersion: bulkhead.dev/v1\nkind: Guardrail\nmetadata: {{name: default, tenant: {tenant}}}\n\
         spec: {{pii: {{card: redact}}}}\n---\n\
         apiVersion: bulkhead.dev/v1\nkind: Tool\nmetadata: {{name: crm, tenant: {tenant}}}\n\
         spec: {{upstream: {{http: 'http://127.0.0.1:9/crm'}}}}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.yaml");
    std::fs::write(&file, manifest).unwrap();
    let applied = server.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert!(applied.status.success(), "{}", stderr(&applied));
    std::fs::create_dir_all(server.tenant_dir(tenant).join("uploads")).unwrap();
    std::fs::write(server.tenant_dir(tenant).join("uploads/logo.txt"), b"logo").unwrap();
}

/// What a tenant holds, to compare a restored one with its original.
pub async fn contents(server: &Server, tenant: &str) -> Value {
    let db = server.tenant_dir(tenant).join("data.db");
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let rows: Vec<(String,)> = sqlx::query_as("SELECT body FROM notes ORDER BY body")
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
    conn.close().await.unwrap();
    let secret = server.cli(&["secrets", "get", "--tenant", tenant, "db/pass"]);
    let names = |command: &[&str]| -> Vec<String> {
        let listed = server.cli_json(&[command, &["--tenant", tenant]].concat());
        // One item is printed as itself, more as a list.
        let items = match listed {
            Value::Array(items) => items,
            one => vec![one],
        };
        let mut names: Vec<String> = items
            .iter()
            .map(|item| {
                let name = item.pointer("/metadata/name").or_else(|| item.get("name"));
                name.and_then(Value::as_str).unwrap().to_owned()
            })
            .collect();
        names.sort();
        names
    };
    serde_json::json!({
        "rows": rows.into_iter().map(|(r,)| r).collect::<Vec<_>>(),
        "secret": stdout(&secret),
        "apis": names(&["apis", "list"]),
        "guardrails": names(&["get", "guardrails"]),
        "tools": names(&["get", "tools"]),
        "file": std::fs::read_to_string(server.tenant_dir(tenant).join("uploads/logo.txt")).ok(),
    })
}

#[tokio::test]
async fn a_restored_tenant_equals_its_original_here_in_place_and_on_another_installation() {
    let server = Server::embedded().await;
    server.cli_json(&["tenants", "create", "acme", "--plan", "starter", "--wait"]);
    fill(&server, "acme").await;
    let original = contents(&server, "acme").await;
    assert_eq!(original["rows"], serde_json::json!(["row-1", "row-2"]), "{original}");
    assert_eq!(original["apis"], serde_json::json!(["orders"]), "{original}");
    let backup = create(&server, "acme");
    let id = backup["id"].as_str().unwrap();

    // Into a new tenant: everything, and its stream says where it came from.
    let restored =
        server.cli_json(&["backups", "restore", "--tenant", "acme", id, "--to", "acme-copy"]);
    assert_eq!(restored["created"], true, "{restored}");
    assert_eq!(contents(&server, "acme-copy").await, original);
    let events = server.audit_events(&["acme-copy"]);
    let restore = events.iter().find(|e| e["action"] == "backup.restore").unwrap();
    let source = server.audit_events(&["acme"]);
    let exported = source.iter().find(|e| e["action"] == "audit.export").unwrap();
    assert_eq!(restore["details"]["audit_seq"], exported["seq"], "{restore}");
    assert_eq!(restore["details"]["audit_head"], exported["hash"], "{restore}");
    // A name that is taken restores nothing.
    let taken = server.cli(&["backups", "restore", "--tenant", "acme", id, "--to", "acme-copy"]);
    assert_eq!(exit_code(&taken), 4, "{}", stderr(&taken));

    // In place: newer data is not overwritten unless forced.
    let db = server.tenant_dir("acme").join("data.db");
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    sqlx::query("INSERT INTO notes VALUES ('row-3')").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let unasked = server.cli(&["backups", "restore", "--tenant", "acme", id]);
    assert_eq!(exit_code(&unasked), 2, "{}", stderr(&unasked));
    assert!(stderr(&unasked).contains("--yes"), "{}", stderr(&unasked));
    let newer = server.cli(&["backups", "restore", "--tenant", "acme", id, "--yes"]);
    assert_eq!(exit_code(&newer), 4, "{}", stderr(&newer));
    assert!(stderr(&newer).contains("changed since"), "{}", stderr(&newer));
    assert_eq!(
        contents(&server, "acme").await["rows"],
        serde_json::json!(["row-1", "row-2", "row-3"])
    );
    let forced = server.cli(&["backups", "restore", "--tenant", "acme", id, "--yes", "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_eq!(contents(&server, "acme").await, original);
    assert_eq!(server.cli_json(&["tenants", "get", "acme"])["state"], "active");

    // On another installation, from the archive and the exported key.
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("acme.key");
    let exported =
        server.cli(&["backups", "key", "export", "--tenant", "acme", "-f", key.to_str().unwrap()]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let file = archive(&server, &tenant_id(&server, "acme"), &backup);
    let elsewhere = Server::embedded().await;
    let (k, f) = (key.to_str().unwrap(), file.to_str().unwrap());
    // A changed byte, a cut archive and the wrong key restore nothing.
    let sealed = std::fs::read(&file).unwrap();
    let mut damaged = sealed.clone();
    let last = damaged.len() - 10;
    damaged[last] ^= 1;
    std::fs::write(work.path().join("damaged.age"), &damaged).unwrap();
    std::fs::write(work.path().join("cut.age"), &sealed[..sealed.len() / 2]).unwrap();
    let other_key = work.path().join("other.key");
    std::process::Command::new("age-keygen").arg("-o").arg(&other_key).output().unwrap();
    for (archive, key, says) in [
        (work.path().join("damaged.age"), key.clone(), "damaged"),
        (work.path().join("cut.age"), key.clone(), "cut short"),
        (file.clone(), other_key, "does not open"),
    ] {
        let refused = elsewhere.cli(&[
            "backups",
            "restore",
            "--from",
            archive.to_str().unwrap(),
            "--identity-file",
            key.to_str().unwrap(),
        ]);
        assert_eq!(exit_code(&refused), 2, "{}", stderr(&refused));
        assert!(stderr(&refused).contains(says), "{says}: {}", stderr(&refused));
    }
    assert_eq!(
        elsewhere.cli_json(&["tenants", "list"]),
        Value::Array(vec![]),
        "nothing half-restored"
    );
    let refusals = elsewhere.audit_events(&[]);
    let refusals = refusals.iter().filter(|e| e["action"] == "backup.restore_archive").count();
    assert_eq!(refusals, 3, "each refused archive is in the platform's stream");
    let restored = elsewhere.cli_json(&["backups", "restore", "--from", f, "--identity-file", k]);
    assert_eq!(restored["tenant"], "acme", "{restored}");
    assert_eq!(contents(&elsewhere, "acme").await, original);

    // An archive from elsewhere is the tenant's word: it may not bring an
    // API only an operator may make (a unix: socket of the host).
    let api = ["apis", "create", "--tenant", "acme", "sock", "--prefix", "/sock"];
    let made = server.cli(&[&api[..], &["--upstream", "unix:/run/other.sock"]].concat());
    assert!(made.status.success(), "{}", stderr(&made));
    let with_socket = create(&server, "acme");
    let file = archive(&server, &tenant_id(&server, "acme"), &with_socket);
    let refused = elsewhere.cli(&[
        "backups",
        "restore",
        "--from",
        file.to_str().unwrap(),
        "--identity-file",
        k,
        "--to",
        "sock",
    ]);
    assert_eq!(exit_code(&refused), 2, "{}", stderr(&refused));
    assert!(stderr(&refused).contains("only an operator may set"), "{}", stderr(&refused));
    let absent = elsewhere.cli(&["tenants", "get", "sock"]);
    assert_eq!(exit_code(&absent), 3, "nothing made");
}

/// Waits until `done` holds of the tenant's backup list, or fails with it.
async fn until(server: &Server, tenant: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let listed = server.cli_json(&["backups", "list", "--tenant", tenant]);
        if done(&listed) {
            return listed;
        }
        assert!(std::time::Instant::now() < deadline, "{listed}\n{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn scheduled_backups_go_to_s3_back_off_while_it_is_down_and_show_in_metrics() {
    use bulkhead_testkit::s3::{ACCESS_KEY, S3Server};
    let mut s3 = S3Server::start("tenants");
    let config = format!(
        "[backup]\nstore = \"s3://tenants/bulkhead\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
         check_every = \"1s\"\n",
        s3.endpoint()
    );
    let env = [("AWS_ACCESS_KEY_ID", ACCESS_KEY.0), ("AWS_SECRET_ACCESS_KEY", ACCESS_KEY.1)];
    let server = Server::start_with_env(crate::kit::Store::Embedded, &config, &env).await;
    server.cli_json(&["tenants", "create", "acme", "--plan", "starter", "--wait"]);
    // A tenant never backed up is due at once; the next is a day later.
    let listed =
        until(&server, "acme", |l| l["backups"].as_array().is_some_and(|b| !b.is_empty())).await;
    assert_eq!(listed["backups"][0]["kind"], "scheduled", "{listed}");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let listed = server.cli_json(&["backups", "list", "--tenant", "acme"]);
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1, "not again before a day: {listed}");
    let id = listed["backups"][0]["id"].as_str().unwrap().to_owned();
    let verified = server.cli(&["backups", "verify", "--tenant", "acme", &id]);
    assert!(verified.status.success(), "{}", stderr(&verified));

    // The tenant's own schedule, within its plan's.
    let faster = server.cli(&["tenants", "update", "acme", "--backups", "1/5/7"]);
    assert_eq!(exit_code(&faster), 2, "more often than the plan: {}", stderr(&faster));
    assert!(stderr(&faster).contains("more often than the plan"), "{}", stderr(&faster));
    let longer = server.cli(&["tenants", "update", "acme", "--backups", "48/5/400"]);
    assert_eq!(exit_code(&longer), 2, "{}", stderr(&longer));
    let fine = server.cli(&["tenants", "update", "acme", "--backups", "48/5/20"]);
    assert!(fine.status.success(), "{}", stderr(&fine));
    let listed = server.cli_json(&["backups", "list", "--tenant", "acme"]);
    assert_eq!(listed["schedule"]["policy"]["every_hours"], 48, "{listed}");

    // The store goes away: a new tenant's backups fail, are retried with
    // backoff, and show as failing in the list and in /metrics.
    server.cli_json(&["tenants", "create", "globex", "--plan", "starter", "--wait"]);
    s3.stop();
    let listed = until(&server, "globex", |l| l["schedule"]["failures"].as_i64() > Some(0)).await;
    assert!(
        listed["schedule"]["last_error"].as_str().unwrap().contains("backup store"),
        "{listed}"
    );
    assert!(listed["schedule"]["retry_at"].is_string(), "{listed}");
    assert!(listed["store_error"].as_str().unwrap().contains("backup store"), "{listed}");
    // Published at the end of the round that recorded the failure.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let metrics = loop {
        let url = format!("{}/metrics", server.api);
        let metrics = reqwest::get(url).await.unwrap().text().await.unwrap();
        if metrics.contains("bulkhead_backups_failing_tenants 1") {
            break metrics;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        metrics.contains("bulkhead_backup_last_success_timestamp_seconds{tenant=\"globex\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bulkhead_backup_last_success_timestamp_seconds{tenant=\"acme\"}"),
        "{metrics}"
    );
    crate::kit::promtool_accepts(&metrics).await;
    let events = server.audit_events(&["globex"]);
    assert!(
        events.iter().any(|e| e["action"] == "backup.create" && e["outcome"] == "failed"),
        "the failure is in the tenant's stream"
    );
}

/// Polls until `dir` holds an entry, or `child` ends first; true if one
/// appeared while `child` still ran.
async fn appears(dir: &Path, child: &mut std::process::Child) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    false
}

#[tokio::test]
async fn a_server_killed_mid_backup_restore_or_offboarding_leaves_nothing_half_done() {
    let mut server = Server::embedded().await;
    server.cli_json(&["tenants", "create", "acme", "--plan", "starter", "--wait"]);
    // No scheduled backup of its own to race the ones this test cuts.
    let unscheduled = server.cli(&["tenants", "update", "acme", "--backups", "0/1/1"]);
    assert!(unscheduled.status.success(), "{}", stderr(&unscheduled));
    let db = server.tenant_dir("acme").join("data.db");
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    sqlx::query("CREATE TABLE blobs (body BLOB)").execute(&mut conn).await.unwrap();
    // Enough that a backup and a restore take long enough to be cut.
    let fill = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 32) \
                INSERT INTO blobs SELECT randomblob(1048576) FROM n";
    sqlx::query(fill).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let data_dir = server.data_dir();
    let cli = |args: &[&str]| {
        crate::kit::command()
            .env("BULKHEAD_DATA_DIR", &data_dir)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };

    // Mid-backup: nothing listed, nothing staged after the restart.
    let mut backing_up = cli(&["backups", "create", "--tenant", "acme"]);
    let staging = server.data_dir().join("backup-staging");
    assert!(appears(&staging, &mut backing_up).await, "the backup ended before it could be cut");
    server.kill();
    let _ = backing_up.wait();
    server.restart().await;
    assert_eq!(crate::kit::entries(&staging), Vec::<String>::new());
    let listed = server.cli_json(&["backups", "list", "--tenant", "acme"]);
    assert_eq!(listed["backups"], Value::Array(vec![]), "{listed}");
    let mut left = Vec::new();
    let mut dirs = vec![server.data_dir().join("backups")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() { dirs.push(entry.path()) } else { left.push(entry.path()) }
        }
    }
    assert_eq!(left, Vec::<PathBuf>::new(), "a cut upload is removed at the start");
    let backup = create(&server, "acme");
    let id = backup["id"].as_str().unwrap();

    // Mid-restore into a new tenant: the next start purges it; run again,
    // the restore completes.
    let mut restoring = cli(&["backups", "restore", "--tenant", "acme", id, "--to", "acme-copy"]);
    let markers = server.data_dir().join("backup-restores");
    assert!(appears(&markers, &mut restoring).await, "the restore ended before it could be cut");
    server.kill();
    let _ = restoring.wait();
    server.restart().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while exit_code(&server.cli(&["tenants", "get", "acme-copy"])) != 3 {
        assert!(std::time::Instant::now() < deadline, "acme-copy was not purged\n{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(crate::kit::entries(&markers), Vec::<String>::new());
    let restored =
        server.cli_json(&["backups", "restore", "--tenant", "acme", id, "--to", "acme-copy"]);
    assert_eq!(restored["created"], true, "{restored}");

    // Mid-offboarding, while the final snapshot is being taken: the next
    // start finishes the delete, with one whole snapshot to come back from.
    let acme = tenant_id(&server, "acme");
    let deleting = server.cli(&["tenants", "delete", "acme", "--yes"]);
    assert!(deleting.status.success(), "{}", stderr(&deleting));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !std::fs::read_dir(&staging).is_ok_and(|mut d| d.next().is_some()) {
        assert!(std::time::Instant::now() < deadline, "no final snapshot began\n{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    server.kill();
    server.restart().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while server.cli_json(&["tenants", "get", "acme"])["state"] != "deleted" {
        assert!(std::time::Instant::now() < deadline, "not deleted\n{}", server.log());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let prefix = server.data_dir().join("backups/tenants").join(&acme);
    assert_eq!(crate::kit::entries(&prefix).len(), 2, "one snapshot and its listing");
    let back =
        server.cli_json(&["tenants", "restore", "acme", "--from-final", "--to", "acme-back"]);
    assert_eq!(back["tenant"], "acme-back", "{back}");
    let db = server.tenant_dir("acme-back").join("data.db");
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let (rows,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM blobs").fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    assert_eq!(rows, 32);
}
