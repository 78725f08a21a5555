//! The quickstart, as a user runs it: create, list, get, suspend, resume,
//! delete --purge, through the real CLI, on both stores.

use crate::kit::{Server, entries, exit_code, stderr, stdout, step_output};

/// Runs the README's quickstart and returns the tenant's `get` document
/// from while it was active.
async fn quickstart(server: &Server) -> serde_json::Value {
    let created = server.cli(&["tenants", "create", "acme", "--plan", "professional", "--wait"]);
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(stdout(&created).contains("active"), "{}", stdout(&created));
    assert!(stderr(&created).contains("applied allocate_directory"), "{}", stderr(&created));
    assert!(
        stderr(&created).contains("tenant acme is active (provisioned in"),
        "{}",
        stderr(&created)
    );

    let listed = server.cli(&["tenants", "list"]);
    assert!(listed.status.success());
    let table = stdout(&listed);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("acme") && l.contains("active")), "{table}");

    let got = server.cli_json(&["tenants", "get", "acme"]);
    assert_eq!(got["name"], "acme");
    assert_eq!(got["state"], "active");
    assert_eq!(got["plan"], "professional");
    assert_eq!(got["domain"], "acme.localhost");
    let steps: Vec<_> =
        got["steps"].as_array().unwrap().iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(steps, ["applied"; 8]);

    let suspended = server.cli_json(&["tenants", "suspend", "acme"]);
    assert_eq!(suspended["state"], "suspended");
    let listed = server.cli_json(&["tenants", "list"]);
    assert_eq!(listed[0]["state"], "suspended");
    let resumed = server.cli_json(&["tenants", "resume", "acme"]);
    assert_eq!(resumed["state"], "active");

    // The audit trail, for people: a header, the resource last.
    let tail = stdout(&server.cli(&["audit", "tail", "--tenant", "acme"]));
    let header: Vec<&str> = tail.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["SEQ", "TIME", "ACTOR", "ACTION", "OUTCOME", "RESOURCE"], "{tail}");

    let deleted = server.cli(&["tenants", "delete", "acme", "--purge", "--yes", "--wait"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(stderr(&deleted).contains("tenant acme is purged"), "{}", stderr(&deleted));
    // Every step undone is shown, in the order offboarding undid them,
    // though the tenant was gone before the last of them could be read.
    let said = stderr(&deleted);
    let undone: Vec<&str> = said.lines().filter_map(|l| l.trim().strip_prefix("undone ")).collect();
    let mut order: Vec<&str> = steps_of(&got);
    order.reverse();
    assert_eq!(undone, order, "{said}");
    let gone = server.cli(&["tenants", "get", "acme"]);
    assert_eq!(exit_code(&gone), 3, "{}", stderr(&gone));
    assert_eq!(server.cli_json(&["tenants", "list"]), serde_json::json!([]));
    assert!(!server.tenant_dir("acme").exists());
    got
}

/// The names of a tenant view's steps, in provisioning order.
fn steps_of(view: &serde_json::Value) -> Vec<&str> {
    view["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn quickstart_on_the_embedded_store() {
    let server = Server::embedded().await;
    let got = quickstart(&server).await;
    assert_eq!(got["isolation"], "silo", "professional's pool default falls back to silo");
    assert_eq!(step_output(&got, "create_database")["engine"], "sqlite");
    assert_eq!(entries(&server.data_dir().join("tenants")), Vec::<String>::new());
}

#[tokio::test]
async fn quickstart_on_postgres() {
    let server = Server::postgres().await;
    let db = server.postgres_db();
    let got = quickstart(&server).await;
    assert_eq!(got["isolation"], "pool", "professional pools on PostgreSQL");
    assert_eq!(
        step_output(&got, "create_database")["database"],
        format!("{}pool", db.object_prefix)
    );

    // An enterprise tenant is a silo: its own database and owner role,
    // which offboarding drops.
    let created =
        server.cli_json(&["tenants", "create", "globex", "--plan", "enterprise", "--wait"]);
    assert_eq!(created["isolation"], "silo");
    let database =
        step_output(&created, "create_database")["database"].as_str().unwrap().to_owned();
    let (owner, reader) = (format!("{database}_owner"), format!("{database}_read"));
    let (databases, roles) = db.owned_objects().await;
    assert!(databases.contains(&database), "{databases:?}");
    // The pool's own roles (its owner and groups) belong to the region.
    let pool_roles = format!("{}pool_", db.object_prefix);
    let roles: Vec<String> = roles.into_iter().filter(|r| !r.starts_with(&pool_roles)).collect();
    assert_eq!(roles, [owner, reader]);
    let deleted = server.cli(&["tenants", "delete", "globex", "--purge", "--yes", "--wait"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let (databases, roles) = db.owned_objects().await;
    assert!(!databases.contains(&database), "{databases:?}");
    assert!(roles.iter().all(|r| r.starts_with(&pool_roles)), "{roles:?}");
}

#[tokio::test]
async fn a_deleted_tenant_frees_its_name_and_is_listed_until_purged() {
    let server = Server::embedded().await;
    server.cli_json(&["tenants", "create", "acme", "--plan", "starter", "--wait"]);
    let deleted = server.cli(&["tenants", "delete", "acme", "--yes", "--wait"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert!(stderr(&deleted).contains("is deleted"), "{}", stderr(&deleted));
    assert!(!server.tenant_dir("acme").exists(), "offboarding removed the tenant's files");

    let got = server.cli_json(&["tenants", "get", "acme"]);
    assert_eq!(got["state"], "deleted");
    assert!(got["departure"]["final_snapshot"].is_string(), "{got}");
    assert_eq!(server.cli_json(&["tenants", "list"]), serde_json::json!([]));
    let tombstones = server.cli_json(&["tenants", "list", "--state", "deleted"]);
    assert_eq!(tombstones[0]["name"], "acme");

    let purged = server.cli(&["tenants", "delete", "acme", "--purge", "--yes", "--wait"]);
    assert!(purged.status.success(), "{}", stderr(&purged));
    assert_eq!(exit_code(&server.cli(&["tenants", "get", "acme"])), 3);
    let recreated = server.cli_json(&["tenants", "create", "acme", "--plan", "starter", "--wait"]);
    assert_eq!(recreated["state"], "active");
    assert_ne!(recreated["id"], got["id"], "a new tenant, not the old one");
}

#[tokio::test]
async fn explicit_isolation_and_region_on_postgres() {
    let server = Server::postgres().await;
    let created = server.cli_json(&[
        "tenants",
        "create",
        "initech",
        "--plan",
        "enterprise",
        "--isolation",
        "pool",
        "--region",
        "local",
        "--admin-email",
        "ops@initech.example",
        "--wait",
    ]);
    assert_eq!(created["isolation"], "pool");
    assert_eq!(created["region"], "local");
    assert_eq!(created["admin_email"], "ops@initech.example");
}

#[tokio::test]
async fn list_pages_through_many_tenants() {
    let server = Server::embedded().await;
    let http = server.http();
    for i in 0..7 {
        assert_eq!(http.create(&format!("tenant-{i}"), "starter").await.0, 202);
    }
    let (status, page) = http.get("/v1/tenants?limit=3").await;
    assert_eq!(status, 200);
    assert_eq!(page["tenants"].as_array().unwrap().len(), 3);
    assert_eq!(page["next_after"], "tenant-2");
    let (_, page) = http.get("/v1/tenants?limit=3&after=tenant-5").await;
    assert_eq!(page["tenants"][0]["name"], "tenant-6");
    assert!(page.get("next_after").is_none());

    let all = server.cli_json(&["tenants", "list"]);
    assert_eq!(all.as_array().unwrap().len(), 7);
    let two = server.cli_json(&["tenants", "list", "--limit", "2"]);
    assert_eq!(two.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn plans_list() {
    let server = Server::embedded().await;
    let table = stdout(&server.cli(&["plans", "list"]));
    for plan in ["starter", "professional", "enterprise"] {
        assert!(table.contains(plan), "{table}");
    }
    let plans = server.cli_json(&["plans", "list"]);
    assert_eq!(plans[2]["default_isolation"], "silo");
    assert_eq!(plans[0]["gateway"]["rate_limit"]["requests_per_minute"], 600);
}
