//! `bulkhead migrate` across real tenant databases: silo databases and a
//! region's pool on PostgreSQL, and SQLite files; canaries, halting after
//! a failure, a rerun that continues, and a server killed mid-job that
//! finishes it after a restart.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use sqlx::AssertSqlSafe;

use crate::kit::{Server, admin, exit_code, pool_tenant, stderr, stdout};

fn write(dir: &Path, files: &[(&str, &str)]) {
    for (name, sql) in files {
        std::fs::write(dir.join(name), sql).unwrap();
    }
}

/// The silo database of tenant `name`.
fn database(server: &Server, name: &str) -> String {
    let view = server.cli_json(&["tenants", "get", name]);
    crate::kit::step_output(&view, "create_database")["database"].as_str().unwrap().to_owned()
}

async fn one<T>(database: &str, sql: &str) -> T
where
    T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let mut conn = admin(database).await;
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned())).fetch_one(&mut conn).await.unwrap()
}

/// The version a database's history records (0 for none).
async fn version(database: &str) -> i64 {
    let made: bool =
        one(database, "SELECT to_regclass('bulkhead.schema_migrations') IS NOT NULL").await;
    if !made {
        return 0;
    }
    one(database, "SELECT coalesce(max(version), 0) FROM bulkhead.schema_migrations").await
}

/// Runs `migrate … --wait -o json`: its exit code and the job's report.
fn migrate(server: &Server, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["migrate"];
    all.extend(args);
    all.extend(["--wait", "-o", "json"]);
    let output = server.cli(&all);
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("{args:?}: {}\n{}", stderr(&output), server.log()));
    (exit_code(&output), report)
}

/// Each database's state in a job's report, by name.
fn states(report: &Value) -> Vec<(String, String)> {
    report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["database"].as_str().unwrap().into(), t["state"].as_str().unwrap().into()))
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(a, b)| ((*a).into(), (*b).into())).collect()
}

const NOTES: (&str, &str) = (
    "0001_notes.sql",
    "CREATE TABLE notes (id bigserial PRIMARY KEY, tenant_id uuid, body text NOT NULL);",
);
/// Fails in a database holding a note `poison`, after its first change.
const DUE: (&str, &str) = (
    "0002_due.sql",
    "ALTER TABLE notes ADD COLUMN due date;\n\
     SELECT 1 / (SELECT CASE WHEN EXISTS (SELECT FROM notes WHERE body = 'poison') THEN 0 ELSE 1 END);",
);

#[tokio::test]
async fn migrate_rolls_across_silo_and_pool_tenants_with_canary_halt_and_resume() {
    let server = Server::postgres().await;
    for name in ["silo-a", "silo-b", "silo-c"] {
        server.cli_json(&["tenants", "create", name, "--plan", "enterprise", "--wait"]);
    }
    for name in ["pool-a", "pool-b"] {
        pool_tenant(&server, name);
    }
    let (a1, a2, a3) =
        (database(&server, "silo-a"), database(&server, "silo-b"), database(&server, "silo-c"));
    let pool = format!("{}pool", server.postgres_db().object_prefix);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &[NOTES, ("README.md", "not a migration")]);
    let d = dir.path().to_str().unwrap();

    // A dry run plans every database and changes none.
    let (code, report) = migrate(&server, &["--dir", d, "--dry-run"]);
    assert_eq!(code, 0, "{report}");
    let planned = pairs(&[
        ("silo-a", "planned"),
        ("silo-b", "planned"),
        ("silo-c", "planned"),
        ("pool", "planned"),
    ]);
    assert_eq!(states(&report), planned);
    assert_eq!(version(&a1).await, 0);

    let (code, report) = migrate(&server, &["--dir", d, "--canary", "1"]);
    assert_eq!(code, 0, "{report}");
    let migrated = pairs(&[
        ("silo-a", "migrated"),
        ("silo-b", "migrated"),
        ("silo-c", "migrated"),
        ("pool", "migrated"),
    ]);
    assert_eq!(states(&report), migrated);
    assert_eq!(report["targets"][0]["canary"], true);
    for db in [&a1, &a2, &a3, &pool] {
        assert_eq!(version(db).await, 1, "{db}");
    }
    // The pool's new table is bound to tenants: the verifier finds nothing.
    let verified = server.cli(&["verify", "isolation"]);
    assert_eq!(exit_code(&verified), 0, "{}", stdout(&verified));
    // Each pool tenant's stream records its database's migration.
    let events = server.audit_events(&["pool-a", "pool-b", "silo-b"]);
    // (The platform's stream mirrors an operator's actions as
    // `tenants/<name>/tenant`.)
    let migrations = events
        .iter()
        .filter(|e| e["action"] == "database.migrate" && e["resource"] == "tenant")
        .count();
    assert_eq!(migrations, 3, "{events:#?}");

    // 0002 fails in a2: a1 (the canary) takes it, a2 stays at 1 with none
    // of the file's work, a3 and the pool are never started.
    let mut conn = admin(&a2).await;
    sqlx::query("INSERT INTO notes (body) VALUES ('poison')").execute(&mut conn).await.unwrap();
    write(dir.path(), &[DUE]);
    let (code, report) = migrate(&server, &["--dir", d, "--concurrency", "1"]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["state"], "halted");
    let halted = pairs(&[
        ("silo-a", "migrated"),
        ("silo-b", "failed"),
        ("silo-c", "skipped"),
        ("pool", "skipped"),
    ]);
    assert_eq!(states(&report), halted);
    let error = report["targets"][1]["detail"].as_str().unwrap();
    assert!(error.starts_with("0002_due.sql: division by zero"), "{error}");
    assert_eq!(version(&a2).await, 1);
    let due: bool = one(&a2, "SELECT to_regclass('notes') IS NOT NULL AND NOT EXISTS \
        (SELECT 1 FROM information_schema.columns WHERE table_name = 'notes' AND column_name = 'due')").await;
    assert!(due, "the failed file's first statement stayed");
    let status = server.cli(&["migrate", "status"]);
    assert_eq!(exit_code(&status), 1);
    assert!(stdout(&status).contains("halted"), "{}", stdout(&status));

    // Fixed, a rerun continues: a1 is already there.
    sqlx::query("DELETE FROM notes").execute(&mut conn).await.unwrap();
    let (code, report) = migrate(&server, &["--dir", d]);
    assert_eq!(code, 0, "{report}");
    let resumed = pairs(&[
        ("silo-a", "current"),
        ("silo-b", "migrated"),
        ("silo-c", "migrated"),
        ("pool", "migrated"),
    ]);
    assert_eq!(states(&report), resumed);

    // A failing canary stops the rest before they start.
    let mut conn = admin(&a1).await;
    sqlx::query("INSERT INTO notes (body) VALUES ('poison')").execute(&mut conn).await.unwrap();
    let poison = ("0003_poison.sql", &*DUE.1.replace("ADD COLUMN due", "ADD COLUMN done"));
    write(dir.path(), &[poison]);
    let (code, report) = migrate(&server, &["--dir", d, "--canary", "25%", "--halt-after", "3"]);
    assert_eq!(code, 1, "{report}");
    let stopped = pairs(&[
        ("silo-a", "failed"),
        ("silo-b", "skipped"),
        ("silo-c", "skipped"),
        ("pool", "skipped"),
    ]);
    assert_eq!(states(&report), stopped);
    assert_eq!(report["targets"][1]["detail"], "a canary failed");

    // A new tenant's database takes the schema of the latest job that
    // covered every tenant and succeeded: 0001 and 0002.
    server.cli_json(&["tenants", "create", "silo-d", "--plan", "enterprise", "--wait"]);
    assert_eq!(version(&database(&server, "silo-d")).await, 2);
    let view = server.cli_json(&["tenants", "get", "silo-d"]);
    assert_eq!(crate::kit::step_output(&view, "migrate_database")["version"], 2);

    // A file changed after it was applied is refused by every database.
    write(
        dir.path(),
        &[(NOTES.0, "CREATE TABLE notes (id int);"), ("0003_poison.sql", "SELECT 1;")],
    );
    let (code, report) = migrate(&server, &["--dir", d, "--canary", "0", "--halt-after", "9"]);
    assert_eq!(code, 1, "{report}");
    assert_eq!(report["targets"].as_array().unwrap().len(), 5, "{report}");
    // Every one was tried: failed, not halted.
    assert_eq!(report["state"], "failed");
    for target in report["targets"].as_array().unwrap() {
        let detail = target["detail"].as_str().unwrap();
        assert!(detail.contains("0001_notes.sql changed after it was applied"), "{detail}");
    }
}

/// Waits until the job's report satisfies `done`.
async fn until(server: &Server, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = server.cli_json(&["migrate", "status", id]);
        if done(&report) {
            return report;
        }
        assert!(Instant::now() < deadline, "{report:#}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_server_killed_mid_migration_finishes_the_job_after_a_restart() {
    let mut server = Server::postgres().await;
    let names = ["kill-a", "kill-b", "kill-c", "kill-d"];
    for name in names {
        server.cli_json(&["tenants", "create", name, "--plan", "enterprise", "--wait"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let slow = "CREATE TABLE notes (id bigserial PRIMARY KEY, body text);\nSELECT pg_sleep(0.7);";
    write(dir.path(), &[("0001_slow.sql", slow)]);
    let started = server.cli_json(&[
        "migrate",
        "--dir",
        dir.path().to_str().unwrap(),
        "--canary",
        "0",
        "--concurrency",
        "1",
    ]);
    let id = started["id"].as_str().unwrap().to_owned();
    // One job at a time.
    let second = server.cli(&["migrate", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(exit_code(&second), 4, "{}", stderr(&second));
    assert!(stderr(&second).contains(&id), "{}", stderr(&second));

    until(&server, &id, |r| r["counts"]["migrated"].as_u64() >= Some(1)).await;
    server.kill();
    server.restart().await;
    let report = until(&server, &id, |r| r["state"] != "running").await;
    assert_eq!(report["state"], "succeeded", "{report:#}");
    for name in names {
        let db = database(&server, name);
        let rows: i64 = one(&db, "SELECT count(*) FROM bulkhead.schema_migrations").await;
        assert_eq!(rows, 1, "{name}: applied once");
    }
    let (_, roles) = server.postgres_db().owned_objects().await;
    assert!(roles.iter().all(|r| !r.contains("m_")), "a migration login was left: {roles:?}");
}

#[tokio::test]
async fn migrate_on_the_embedded_default_and_its_bad_input() {
    let server = Server::embedded().await;
    for name in ["emb-a", "emb-b"] {
        server.cli_json(&["tenants", "create", name, "--plan", "enterprise", "--wait"]);
    }
    let no_dir = server.cli(&["migrate"]);
    assert_eq!(exit_code(&no_dir), 2);
    assert!(stderr(&no_dir).contains("bulkhead migrate --dir DIR"), "{}", stderr(&no_dir));
    let none_yet = server.cli(&["migrate", "status"]);
    assert_eq!(exit_code(&none_yet), 3);
    assert!(stderr(&none_yet).contains("start one with"), "{}", stderr(&none_yet));
    let unknown = server.cli(&["migrate", "status", "not-a-job"]);
    assert_eq!(exit_code(&unknown), 3, "{}", stderr(&unknown));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let empty = server.cli(&["migrate", "--dir", d]);
    assert_eq!(exit_code(&empty), 2);
    assert!(stderr(&empty).contains("no .sql files"), "{}", stderr(&empty));
    write(dir.path(), &[("1_notes.sql", "select 1;")]);
    let misnamed = server.cli(&["migrate", "--dir", d]);
    assert_eq!(exit_code(&misnamed), 2);
    assert!(stderr(&misnamed).contains("use NNNN_name.sql"), "{}", stderr(&misnamed));
    std::fs::remove_file(dir.path().join("1_notes.sql")).unwrap();
    write(dir.path(), &[("0001_notes.sql", "CREATE TABLE notes (body text);\nCOMMIT;")]);
    let commits = server.cli(&["migrate", "--dir", d]);
    assert!(stderr(&commits).contains("line 2: `COMMIT`"), "{}", stderr(&commits));
    write(dir.path(), &[NOTES]);
    for (args, code, says) in [
        (vec!["--tenant", "nobody"], 3, "no tenant named \"nobody\""),
        (vec!["--concurrency", "0"], 2, "concurrency 0"),
        (vec!["--canary", "many"], 2, "canary \"many\""),
        (vec!["--halt-after", "0"], 2, "halt-after 0"),
    ] {
        let mut all = vec!["migrate", "--dir", d];
        all.extend(args);
        let refused = server.cli(&all);
        assert_eq!(exit_code(&refused), code, "{all:?}: {}", stderr(&refused));
        assert!(stderr(&refused).contains(says), "{all:?}: {}", stderr(&refused));
    }
    let (code, report) = migrate(&server, &["--dir", d, "--tenant", "emb-b"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(states(&report), pairs(&[("emb-b", "migrated")]));
    let (code, report) = migrate(&server, &["--dir", d]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(states(&report), pairs(&[("emb-a", "migrated"), ("emb-b", "current")]));
    let file = server.tenant_dir("emb-a").join("data.db");
    let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
        "sqlite://{}",
        file.display()
    ))
    .await
    .unwrap();
    let (version,): (i64,) = sqlx::query_as("SELECT max(version) FROM bulkhead_schema_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 1);
}
