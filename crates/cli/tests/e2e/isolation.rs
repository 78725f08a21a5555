//! Tenant databases under attack by a tenant holding its own credentials:
//! whatever one tenant does inside its database (grants to other tenants'
//! roles, settings on its own database, a database made a template) never
//! keeps another tenant's, or its own, credentials from being revoked or
//! its data from being purged; one tenant's leases that cannot be dropped
//! never keep another's from expiring on time; suspension ends logins.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{AssertSqlSafe, PgConnection};

use crate::kit::{Server, Store, admin, connect, pool_tenant, role_exists, stderr};

/// A silo tenant's database and roles, from its `create_database` step.
struct Silo {
    database: String,
    owner: String,
    read: String,
}

fn silo(server: &Server, name: &str) -> Silo {
    let view = server.cli_json(&["tenants", "create", name, "--plan", "enterprise", "--wait"]);
    let output = crate::kit::step_output(&view, "create_database");
    let text = |key: &str| output[key].as_str().unwrap().to_owned();
    Silo { database: text("database"), owner: text("owner_role"), read: text("read_role") }
}

struct Issued {
    url: String,
    role: String,
    lease: String,
}

fn issue(server: &Server, tenant: &str, ttl: &str) -> Issued {
    let issued = server.cli_json(&["creds", "issue", "--tenant", tenant, "--ttl", ttl]);
    Issued {
        url: issued["url"].as_str().unwrap().to_owned(),
        role: issued["lease"]["role"].as_str().unwrap().to_owned(),
        lease: issued["lease"]["id"].as_str().unwrap().to_owned(),
    }
}

async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

fn purge(server: &Server, tenant: &str) -> std::process::Output {
    server.cli(&["tenants", "delete", tenant, "--purge", "--yes", "--wait", "--timeout", "90"])
}

async fn database_exists(name: &str) -> bool {
    let mut conn = admin("postgres").await;
    let found: Option<(i32,)> = sqlx::query_as("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
    found.is_some()
}

/// Revokes `lease` through the CLI and checks that its role is gone.
async fn revoke(server: &Server, lease: &Issued) {
    let revoked = server.cli(&["creds", "revoke", &lease.lease]);
    assert!(revoked.status.success(), "{}\n{}", stderr(&revoked), server.log());
    assert!(!role_exists(&lease.role).await, "{} is left behind", lease.role);
}

/// Purges `name` and checks that its database, its roles and every role in
/// `also` are gone.
async fn purge_leaves_nothing(server: &Server, name: &str, silo: &Silo, also: &[&str]) {
    let purged = purge(server, name);
    assert!(purged.status.success(), "{}\n{}", stderr(&purged), server.log());
    assert!(!database_exists(&silo.database).await);
    for role in [silo.owner.as_str(), silo.read.as_str()].iter().chain(also) {
        assert!(!role_exists(role).await, "{role} is left behind");
    }
}

#[tokio::test]
async fn one_tenants_grants_never_block_another_tenants_revocation_or_purge() {
    let server = Server::postgres().await;
    silo(&server, "acme");
    let globex = silo(&server, "globex");
    let a = issue(&server, "acme", "1h");
    let b = issue(&server, "globex", "1h");

    // acme names globex's roles (every role name is visible in pg_roles)
    // in grants on a table of its own.
    let mut attacker = connect(&a.url).await.unwrap();
    exec(&mut attacker, "CREATE TABLE h (x int)").await;
    let grant =
        format!("GRANT SELECT ON h TO \"{}\", \"{}\", \"{}\"", b.role, globex.owner, globex.read);
    exec(&mut attacker, &grant).await;

    // And keeps a transaction open on that table, holding its lock.
    let mut holder = connect(&a.url).await.unwrap();
    exec(&mut holder, "BEGIN").await;
    exec(&mut holder, "LOCK TABLE h IN ACCESS EXCLUSIVE MODE").await;

    revoke(&server, &b).await;
    assert!(
        sqlx::query("SELECT 1").execute(&mut holder).await.is_err(),
        "the session holding the lock was ended"
    );

    // And at offboarding, with a live lease acme granted to as well.
    let b2 = issue(&server, "globex", "1h");
    exec(&mut attacker, &format!("GRANT INSERT ON h TO \"{}\"", b2.role)).await;
    let store = server.open_store().await;
    let globex_id = store.tenant_named("globex").await.unwrap().unwrap().id;
    purge_leaves_nothing(&server, "globex", &globex, &[&b2.role]).await;
    assert!(store.data_keys(globex_id).await.unwrap().is_empty(), "globex's keys are destroyed");

    // acme's table is untouched, and no longer names globex's roles.
    let (acl,): (String,) = sqlx::query_as("SELECT relacl::text FROM pg_class WHERE relname = 'h'")
        .fetch_one(&mut attacker)
        .await
        .unwrap();
    assert!(!acl.contains(&globex.database), "{acl}");
    exec(&mut attacker, "INSERT INTO h VALUES (1)").await;

    // Nor can a tenant's credential reach the control store's database.
    let store_db = a.url.rsplit_once('/').unwrap().0.to_owned() + "/" + &server.postgres_db().name;
    let refused = connect(&store_db).await.unwrap_err().to_string();
    assert!(refused.contains("permission denied"), "{refused}");
    assert!(!server.log().contains("every role may connect"), "{}", server.log());
}

#[tokio::test]
async fn a_tenant_cannot_block_its_own_revocation_or_purge() {
    let server = Server::postgres().await;
    let acme = silo(&server, "acme");
    let a = issue(&server, "acme", "1h");
    let own = issue(&server, "acme", "1h");
    // Held only by a grant on the database itself (a shared object).
    let connect_only = issue(&server, "acme", "1h");
    let mut conn = connect(&a.url).await.unwrap();
    exec(&mut conn, "CREATE TABLE t (x int)").await;
    exec(&mut conn, &format!("GRANT SELECT ON t TO \"{}\"", own.role)).await;
    exec(
        &mut conn,
        &format!("GRANT CONNECT ON DATABASE \"{}\" TO \"{}\"", acme.database, connect_only.role),
    )
    .await;
    // Every session Bulkhead opens in this database would start read-only,
    // as acme's owner role, and the database could not be dropped.
    for setting in [
        "SET default_transaction_read_only = on",
        &format!("SET role = '{}'", acme.owner),
        "SET search_path = nowhere",
        "SET statement_timeout = '1ms'",
        "SET lock_timeout = '1ms'",
        "SET idle_session_timeout = '1ms'",
        "CONNECTION LIMIT 0",
        "IS_TEMPLATE true",
    ] {
        exec(&mut conn, &format!("ALTER DATABASE \"{}\" {setting}", acme.database)).await;
    }
    // From a database every role may connect to, connections are closed too.
    let elsewhere = a.url.rsplit_once('/').unwrap().0.to_owned() + "/postgres";
    let mut outside = connect(&elsewhere).await.unwrap();
    exec(&mut outside, &format!("ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false", acme.database))
        .await;
    drop(conn);

    for lease in [&own, &connect_only] {
        revoke(&server, lease).await;
    }
    purge_leaves_nothing(&server, "acme", &acme, &[&a.role]).await;
}

/// The server-wide facts about a role: whether it may log in, whether it
/// has a password, and how many sessions it has.
async fn login_state(role: &str) -> (bool, bool, i64) {
    let mut conn = admin("postgres").await;
    sqlx::query_as(
        "SELECT rolcanlogin, rolpassword IS NOT NULL, \
         (SELECT count(*) FROM pg_stat_activity WHERE usename = rolname) \
         FROM pg_authid WHERE rolname = $1",
    )
    .bind(role)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn one_tenants_stuck_leases_never_delay_another_tenants_expiry() {
    let config = "[vault]\ncredential_sweep_every = \"1s\"\n";
    let server =
        Server::start(Store::Postgres(bulkhead_testkit::TestDatabase::create().await), config, &[])
            .await;
    silo(&server, "stuck");
    silo(&server, "victim");
    // 120 leases of `stuck`, each named in a grant in a database Bulkhead
    // cannot enter or change (a superuser's template, as an administrator
    // might keep): none of their roles can be dropped.
    let http = server.http();
    let mut stuck = Vec::new();
    for _ in 0..120 {
        let (status, body) =
            http.post("/v1/tenants/stuck/credentials", serde_json::json!({ "ttl": "15s" })).await;
        assert_eq!(status, 201, "{body}");
        stuck.push(body["lease"]["role"].as_str().unwrap().to_owned());
    }
    let all_expired = Instant::now() + Duration::from_secs(16);
    let held = format!("{}held", server.postgres_db().object_prefix);
    let mut root = admin("postgres").await;
    exec(&mut root, &format!("CREATE DATABASE \"{held}\"")).await;
    let mut inside = admin(&held).await;
    exec(&mut inside, "CREATE TABLE t (x int)").await;
    let everyone = stuck.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ");
    exec(&mut inside, &format!("GRANT SELECT ON t TO {everyone}")).await;
    drop(inside);
    exec(&mut root, &format!("ALTER DATABASE \"{held}\" IS_TEMPLATE true ALLOW_CONNECTIONS false"))
        .await;
    tokio::time::sleep_until(all_expired.into()).await;

    // The victim's lease expires while all of that is in the sweeper's way.
    let victim = issue(&server, "victim", "2s");
    let mut session = connect(&victim.url).await.unwrap();
    let expired_at = Instant::now() + Duration::from_secs(2);
    while role_exists(&victim.role).await {
        assert!(
            Instant::now() < expired_at + Duration::from_secs(8),
            "the victim's lease outlived its expiry by 8 s\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sqlx::query("SELECT 1").execute(&mut session).await.is_err(), "its session ended");

    // The stuck leases are dead all the same: no login, no password, no
    // session; recorded, retried with backoff, and counted.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let leases = server.cli_json(&["creds", "list", "--tenant", "stuck"]);
        let attempted = leases
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["revoke_attempts"].as_i64().unwrap() >= 1)
            .count();
        if attempted == 120 {
            let first = &leases[leases.as_array().unwrap().len() - 1];
            let error = first["revoke_error"].as_str().unwrap_or_default();
            assert!(error.contains(&held), "the reason names what holds the role: {first}");
            break;
        }
        assert!(Instant::now() < deadline, "{attempted} of 120 attempted\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for role in &stuck {
        assert_eq!(login_state(role).await, (false, false, 0), "{role}");
    }
    let metrics = reqwest::get(format!("{}/metrics", server.api)).await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("bulkhead_leases_stuck 120"), "{metrics}");
    assert!(metrics.contains("bulkhead_lease_revocation_failures_total"), "{metrics}");
    assert!(
        metrics.contains(r#"bulkhead_background_job_runs_total{job="lease_sweep",outcome="ok"}"#),
        "{metrics}"
    );
    let platform = server.cli_json(&["audit", "tail", "--platform", "--lines", "1000"]);
    let alerts: Vec<&Value> =
        platform.as_array().unwrap().iter().filter(|e| e["action"] == "credential.stuck").collect();
    let leases: std::collections::HashSet<_> =
        alerts.iter().map(|e| e["details"]["lease"].as_str().unwrap()).collect();
    assert_eq!(leases.len(), 120, "an alert for every stuck lease");
    assert!(alerts[0]["details"]["reason"].as_str().unwrap().contains(&held));
    // The tenant's own stream says its lease failed, never why (the reason
    // could name another tenant's database).
    let own = server.cli_json(&["audit", "tail", "--tenant", "stuck", "--lines", "1000"]);
    let failed = own
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "credential.expire" && e["outcome"] == "failed")
        .expect("a failed expiry");
    assert!(failed["details"].get("reason").is_none(), "{failed}");
    assert!(failed["details"]["attempts"].as_i64().unwrap() >= 1, "{failed}");
}

#[tokio::test]
async fn suspension_ends_database_logins_and_resume_restores_the_unexpired() {
    let server = Server::postgres().await;
    silo(&server, "acme");
    let long = issue(&server, "acme", "1h");
    let short = issue(&server, "acme", "3s");
    let mut session = connect(&long.url).await.unwrap();
    exec(&mut session, "CREATE TABLE kept (x int)").await;

    let suspended = server.cli(&["tenants", "suspend", "acme"]);
    assert!(suspended.status.success(), "{}", stderr(&suspended));
    assert!(sqlx::query("SELECT 1").execute(&mut session).await.is_err(), "its session ended");
    let refused = connect(&long.url).await.unwrap_err().to_string();
    assert!(refused.contains("not permitted to log in"), "{refused}");
    assert_eq!(login_state(&long.role).await, (false, true, 0));
    let listed = server.cli_json(&["creds", "list", "--tenant", "acme"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|l| l["disabled_at"].is_string()), "{listed:?}");

    tokio::time::sleep(Duration::from_secs(3)).await;
    let resumed = server.cli(&["tenants", "resume", "acme"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let mut again = connect(&long.url).await.unwrap();
    exec(&mut again, "INSERT INTO kept VALUES (1)").await;
    assert!(connect(&short.url).await.is_err(), "an expired lease stays dead after resume");
}

#[tokio::test]
async fn a_credential_issued_with_a_token_does_not_outlive_it() {
    let server = Server::postgres().await;
    silo(&server, "acme");
    let minted = server.cli_json(&[
        "auth",
        "token",
        "--tenant",
        "acme",
        "--subject",
        "ana",
        "--role",
        "analyst",
        "--ttl",
        "2m",
        "--control-api",
    ]);
    let token_exp = minted["expires_at"].as_i64().unwrap();
    let analyst = server.http().with_token(minted["token"].as_str().unwrap());
    let body = serde_json::json!({ "access": "read", "ttl": "1d" });
    let (status, issued) = analyst.post("/v1/tenants/acme/credentials", body).await;
    assert_eq!(status, 201, "{issued}");
    let expires = time::OffsetDateTime::parse(
        issued["lease"]["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(expires.unix_timestamp() <= token_exp, "{issued} outlives the token ({token_exp})");
    connect(issued["url"].as_str().unwrap()).await.unwrap();
}

/// The roles the README recommends: a store role that loses CREATEROLE after
/// the first start, and a role of their own for tenant databases. Nothing
/// here is a superuser.
#[tokio::test]
async fn the_recommended_postgres_roles_run_bulkhead() {
    let mut db = bulkhead_testkit::TestDatabase::create().await;
    let (store_role, tenants_role) =
        (format!("{}store", db.object_prefix), format!("{}tenants", db.object_prefix));
    let mut root = admin("postgres").await;
    for sql in [
        format!("CREATE ROLE \"{store_role}\" LOGIN CREATEROLE PASSWORD 'pw'"),
        format!("ALTER DATABASE \"{}\" OWNER TO \"{store_role}\"", db.name),
        format!("CREATE ROLE \"{tenants_role}\" LOGIN CREATEDB CREATEROLE PASSWORD 'pw'"),
    ] {
        exec(&mut root, &sql).await;
    }
    let as_role = |role: &str, url: &str| url.replacen("postgres@", &format!("{role}:pw@"), 1);
    db.url = as_role(&store_role, &db.url);
    let regions = format!(
        "[[regions]]\nname = \"local\"\ndatabases = \"{}\"\ndatabase_prefix = \"{}\"\n",
        as_role(&tenants_role, &bulkhead_testkit::postgres_admin_url()),
        db.object_prefix
    );
    let mut server = Server::start(Store::Postgres(db), &regions, &[]).await;
    server.stop();
    let first = server.log();
    assert!(first.contains("could switch off the audit tables"), "warned while it can: {first}");
    exec(&mut root, &format!("ALTER ROLE \"{store_role}\" NOCREATEROLE")).await;
    server.restart().await;
    let since = server.log()[first.len()..].to_owned();
    assert!(!since.contains("could switch off the audit tables"), "{since}");
    assert!(!since.contains("every role may connect"), "{since}");

    let acme = silo(&server, "acme");
    let lease = issue(&server, "acme", "1h");
    let mut conn = connect(&lease.url).await.unwrap();
    exec(&mut conn, "CREATE TABLE t (x int)").await;
    revoke(&server, &lease).await;
    purge_leaves_nothing(&server, "acme", &acme, &[]).await;
}

/// The application's tenant table, made in the pool as its migration
/// would, as the pool's owner; the next pool tenant's provisioning binds it.
/// Returns an administrator's session in the pool.
async fn create_notes_table(server: &Server) -> PgConnection {
    let prefix = &server.postgres_db().object_prefix;
    let mut pool = admin(&format!("{prefix}pool")).await;
    exec(&mut pool, &format!("SET ROLE \"{prefix}pool_owner\"")).await;
    exec(
        &mut pool,
        "CREATE TABLE notes (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL, body text)",
    )
    .await;
    exec(&mut pool, "RESET ROLE").await;
    pool
}

#[tokio::test]
async fn a_pool_tenants_lease_is_bound_to_its_own_tenant() {
    let server = Server::postgres().await;
    let pool = |name: &str| {
        let view = pool_tenant(&server, name);
        let output = crate::kit::step_output(&view, "create_database");
        let text = |key: &str| output[key].as_str().unwrap().to_owned();
        (view["id"].as_str().unwrap().to_owned(), text("write_role"), text("read_role"))
    };
    let (acme_id, acme_write, acme_read) = pool("acme");
    let (_, globex_write, globex_read) = pool("globex");

    for access in ["write", "read"] {
        let issued = server
            .cli_json(&["creds", "issue", "--tenant", "acme", "--access", access, "--ttl", "10m"]);
        let url = issued["url"].as_str().unwrap();
        assert!(url.contains("pool"), "{url}");
        let mut conn = connect(url).await.unwrap();
        let (current,): (String,) = sqlx::query_as("SELECT bulkhead.current_tenant()::text")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(current, acme_id, "{access} lease");
        let (acting,): (String,) =
            sqlx::query_as("SELECT current_user::text").fetch_one(&mut conn).await.unwrap();
        assert_eq!(&acting, if access == "write" { &acme_write } else { &acme_read });
        let sql = format!("SET ROLE \"{globex_write}\"");
        let refused = sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await.unwrap_err();
        assert!(refused.to_string().contains("permission denied"), "{refused}");
    }
    let lease = issue(&server, "acme", "1h");
    revoke(&server, &lease).await;
    issue(&server, "acme", "1h");

    // Offboarding takes acme's roles and live leases, and leaves globex's.
    let purged = purge(&server, "acme");
    assert!(purged.status.success(), "{}\n{}", stderr(&purged), server.log());
    for role in [&acme_write, &acme_read] {
        assert!(!role_exists(role).await, "{role} is left behind");
    }
    for role in [&globex_write, &globex_read] {
        assert!(role_exists(role).await, "{role} went with acme");
    }
    let listed = server.cli_json(&["creds", "list", "--tenant", "globex"]);
    assert!(listed.as_array().is_some_and(|l| l.is_empty()), "{listed}");
}

/// Runs `verify isolation` and returns its exit code and its report.
fn verify_isolation(server: &Server, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["verify", "isolation", "-o", "json"];
    args.extend(extra);
    let out = server.cli(&args);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}\n{}", stderr(&out), server.log()));
    (out.status.code().unwrap_or(-1), report)
}

fn findings(report: &Value) -> Vec<(String, String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let text = |k: &str| f[k].as_str().unwrap().to_owned();
            (text("severity"), text("check"), text("subject"))
        })
        .collect()
}

#[tokio::test]
async fn verify_isolation_is_clean_on_a_fresh_setup_and_names_what_breaks_it() {
    let server = Server::postgres().await;
    let prefix = server.postgres_db().object_prefix.clone();
    pool_tenant(&server, "acme");
    let mut pool = create_notes_table(&server).await;
    pool_tenant(&server, "globex");
    let initech = silo(&server, "initech");
    silo(&server, "hooli");
    let lease = issue(&server, "acme", "1h");
    let mut acme = connect(&lease.url).await.unwrap();
    exec(&mut acme, "INSERT INTO notes (body) VALUES ('hello')").await;

    let (code, report) = verify_isolation(&server, &[]);
    assert_eq!(findings(&report), [], "{report:#}");
    assert_eq!(code, 0);
    let checked = report["checked"].to_string();
    assert!(
        checked.contains("2 pool tenants") && checked.contains("2 silo databases"),
        "{checked}"
    );
    let table = server.cli(&["verify", "isolation"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("no findings"));

    // A table the migration forgot to bind, an application role above
    // row-level security, a database opened to everyone.
    exec(&mut pool, &format!("SET ROLE \"{prefix}pool_owner\"")).await;
    exec(&mut pool, "CREATE TABLE leaky (tenant_id uuid, secret text)").await;
    exec(&mut pool, &format!("GRANT SELECT, INSERT ON leaky TO \"{prefix}pool_write\"")).await;
    exec(&mut pool, "RESET ROLE").await;
    let mut root = admin("postgres").await;
    let bypassing =
        sqlx::query_scalar::<_, String>("SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1")
            .bind(format!("{prefix}globex\\_%\\_write"))
            .fetch_one(&mut root)
            .await
            .unwrap();
    exec(&mut root, &format!("ALTER ROLE \"{bypassing}\" BYPASSRLS")).await;
    exec(&mut root, &format!("GRANT CONNECT ON DATABASE \"{}\" TO PUBLIC", initech.database)).await;

    let (code, report) = verify_isolation(&server, &[]);
    assert_eq!(code, 1, "{report:#}");
    let found = findings(&report);
    let has = |check: &str, subject: &str| {
        found
            .iter()
            .any(|(severity, c, s)| severity == "critical" && c == check && s.contains(subject))
    };
    assert!(has("pool.rls", "leaky"), "{found:?}");
    assert!(has("pool.policy", "leaky"), "{found:?}");
    assert!(has("pool.probe.read", "leaky") || has("pool.probe.write", "leaky"), "{found:?}");
    assert!(has("role.bypass", &bypassing), "{found:?}");
    assert!(has("database.connect", &initech.database), "{found:?}");
    assert!(has("silo.probe", &initech.database), "{found:?}");
    // notes is bound (globex's probe reads and writes it only because its
    // role now bypasses row-level security).
    assert!(!has("pool.rls", "notes") && !has("pool.policy", "notes"), "{found:?}");
    assert!(has("pool.probe.read", "notes"), "{found:?}");
    let table = String::from_utf8_lossy(&server.cli(&["verify", "isolation"]).stdout).into_owned();
    assert!(table.contains("CRITICAL") && table.contains("REVOKE CONNECT"), "{table}");

    // One tenant: its own checks and its region's pool.
    let (code, report) = verify_isolation(&server, &["--tenant", "hooli"]);
    assert_eq!(code, 1);
    assert!(findings(&report).iter().any(|(_, c, _)| c == "silo.probe"), "{report:#}");
    let unknown = server.cli(&["verify", "isolation", "--tenant", "nobody"]);
    assert!(stderr(&unknown).contains("nobody"), "{}", stderr(&unknown));
    assert!(!unknown.status.success());

    // Repaired, it is clean again; no probe login is left behind.
    exec(&mut root, &format!("REVOKE CONNECT ON DATABASE \"{}\" FROM PUBLIC", initech.database))
        .await;
    exec(&mut root, &format!("ALTER ROLE \"{bypassing}\" NOBYPASSRLS")).await;
    exec(&mut pool, "DROP TABLE leaky").await;
    let (code, report) = verify_isolation(&server, &[]);
    assert_eq!((code, findings(&report)), (0, vec![]), "{report:#}");
    let probes: Vec<String> =
        sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1")
            .bind(format!("{prefix}v\\_%"))
            .fetch_all(&mut root)
            .await
            .unwrap();
    assert_eq!(probes, Vec::<String>::new());
}

/// docs/examples/tenant_app.py, on `url`, adding `note`: the notes it sees.
fn python_app(url: &str, note: &str) -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/examples/tenant_app.py");
    let out = std::process::Command::new("python3").args([script, url, note]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn the_python_example_sees_its_own_tenants_rows_only() {
    let server = Server::postgres().await;
    pool_tenant(&server, "acme");
    create_notes_table(&server).await;
    pool_tenant(&server, "globex");
    let acme = issue(&server, "acme", "10m");
    let globex = issue(&server, "globex", "10m");
    assert_eq!(python_app(&acme.url, "a1"), ["a1"]);
    assert_eq!(python_app(&globex.url, "g1"), ["g1"]);
    assert_eq!(python_app(&acme.url, "a2"), ["a1", "a2"]);
}

#[tokio::test]
async fn verify_isolation_checks_embedded_tenants_files() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::embedded().await;
    server.cli_json(&["tenants", "create", "acme", "--plan", "starter", "--wait"]);
    let (code, report) = verify_isolation(&server, &[]);
    assert_eq!((code, findings(&report)), (0, vec![]), "{report:#}");
    assert!(report["checked"].to_string().contains("1 SQLite tenant databases"), "{report:#}");

    let file = server.data_dir().join("tenants").join("acme").join("data.db");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, report) = verify_isolation(&server, &[]);
    assert_eq!(code, 1);
    let found = &report["findings"][0];
    assert_eq!(found["check"], "sqlite.mode", "{report:#}");
    assert_eq!(found["fix"], format!("chmod 600 {}", file.display()));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(verify_isolation(&server, &[]).0, 0);
}

#[tokio::test]
async fn verify_isolation_checks_the_gateways_apis() {
    let server = Server::embedded().await;
    for tenant in ["shared-a", "shared-b"] {
        server.cli_json(&["tenants", "create", tenant, "--plan", "starter", "--wait"]);
        let created = server.cli(&[
            "apis",
            "create",
            "--tenant",
            tenant,
            "orders",
            "--prefix",
            "/orders",
            "--upstream",
            "http://127.0.0.1:9",
        ]);
        assert!(created.status.success(), "{}", stderr(&created));
    }
    // Two tenants' traffic to one upstream, undeclared.
    let (code, report) = verify_isolation(&server, &[]);
    assert_eq!(code, 1, "{report:#}");
    let upstream = ("high".into(), "api.upstream".into(), "http://127.0.0.1:9".into());
    assert_eq!(findings(&report), vec![upstream], "{report:#}");
    // Through the real gateway, each API refuses a request without a
    // credential: probed, nothing found.
    let checked = report["checked"].to_string();
    assert!(checked.contains("2 APIs not marked public, each refused"), "{report:#}");
    // With --tenant, the other tenant's APIs are still compared.
    assert_eq!(verify_isolation(&server, &["--tenant", "shared-a"]).0, 1);

    for tenant in ["shared-a", "shared-b"] {
        let spec = serde_json::json!({
            "name": "orders", "prefix": "/orders", "upstreams": ["http://127.0.0.1:9"],
            "shared_upstream": true,
        });
        let path = format!("/v1/tenants/{tenant}/apis/orders");
        let (status, body) = server.http().send(reqwest::Method::PUT, &path, Some(spec)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (code, report) = verify_isolation(&server, &[]);
    assert_eq!((code, findings(&report)), (0, vec![]), "{report:#}");
}

#[tokio::test]
async fn a_credential_holds_no_more_sessions_than_its_plan_allows() {
    // The database server's connection slots are every tenant's: a starter
    // tenant's lease opens 10 sessions, and the 11th is refused by the
    // server itself (its role's CONNECTION LIMIT), whoever connects.
    let server = Server::postgres().await;
    server.cli_json(&[
        "tenants",
        "create",
        "acme",
        "--plan",
        "starter",
        "--isolation",
        "silo",
        "--wait",
    ]);
    let lease = issue(&server, "acme", "10m");
    let mut sessions = Vec::new();
    for _ in 0..10 {
        sessions.push(connect(&lease.url).await.unwrap());
    }
    let refused = connect(&lease.url).await.unwrap_err().to_string();
    assert!(refused.contains("too many connections for role"), "{refused}");
    drop(sessions.pop());
    // Ended sessions give their slot back (the server counts it a moment
    // later).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while connect(&lease.url).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the freed slot never came back");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
