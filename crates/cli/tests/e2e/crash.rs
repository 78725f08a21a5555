//! `kill -9` of the server while tenants provision, then restart: every
//! tenant ends `active`, or `failed` with its completed steps undone, and
//! nothing is left behind: no orphan directory, database or role.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use bulkhead_model::{Isolation, Tenant, TenantState};
use bulkhead_store::{ControlStore, TenantPage};
use serde_json::json;

use crate::kit::{Server, Store, entries};

/// Every tenant record, read straight from the store of a stopped server.
async fn recorded(server: &Server) -> Vec<Tenant> {
    let store = server.open_store().await;
    store.list_tenants(&TenantPage { limit: 1_000, ..TenantPage::default() }).await.unwrap()
}

/// The tenants the reconciler has begun and not finished (a step recorded,
/// not settled), by name, with what their steps record: a change in it is
/// the reconciler at work.
async fn unfinished(store: &dyn ControlStore) -> BTreeMap<String, Vec<String>> {
    let mut found = BTreeMap::new();
    let page = TenantPage { limit: 1_000, ..TenantPage::default() };
    for tenant in store.list_tenants(&page).await.unwrap() {
        if !tenant.needs_work() {
            continue;
        }
        let steps = store.steps(tenant.id).await.unwrap();
        if !steps.is_empty() {
            let record =
                steps.iter().map(|s| format!("{} {}", s.step, s.status.as_str())).collect();
            found.insert(tenant.name.to_string(), record);
        }
    }
    found
}

/// What a kill found of one round's tenants.
struct Caught {
    /// Begun and unfinished, with their recorded steps.
    left: BTreeMap<String, Vec<String>>,
    /// Already settled (active or failed).
    settled: usize,
}

/// Fires `names` at the server concurrently, kills it after `delay`, and
/// returns what the crash left of them.
async fn create_and_kill(
    server: &mut Server,
    names: &[(String, Option<&str>)],
    delay: Duration,
) -> Caught {
    let creates: Vec<_> = names
        .iter()
        .map(|(name, region)| {
            let http = server.http();
            let body = match region {
                Some(region) => json!({"name": name, "plan": "enterprise", "region": region}),
                None => json!({"name": name, "plan": "enterprise"}),
            };
            let request = http
                .client
                .post(format!("{}/v1/tenants", http.api))
                .bearer_auth(http.token.unwrap_or_default())
                .json(&body);
            // Requests still in flight at the kill simply fail.
            tokio::spawn(async move { request.send().await.is_ok() })
        })
        .collect();
    tokio::time::sleep(delay).await;
    server.kill();
    for create in creates {
        let _ = create.await;
    }
    let store = server.open_store().await;
    let ours: BTreeSet<&str> = names.iter().map(|(name, _)| name.as_str()).collect();
    let settled = store
        .list_tenants(&TenantPage { limit: 1_000, ..TenantPage::default() })
        .await
        .unwrap()
        .iter()
        .filter(|t| ours.contains(t.name.as_str()) && !t.needs_work())
        .count();
    Caught { left: unfinished(store.as_ref()).await, settled }
}

/// Restarts and, once recovery has visibly moved one of the `left` tenants
/// on, kills again; restarts and waits for every tenant to settle. Returns
/// the settled tenants, and whether the second kill landed mid-recovery:
/// after it, some tenant had moved on since the first kill and some tenant
/// was still unfinished.
async fn recover(
    server: &mut Server,
    left: &BTreeMap<String, Vec<String>>,
) -> (Vec<serde_json::Value>, bool) {
    server.restart().await;
    let store = server.open_store().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = unfinished(store.as_ref()).await;
        let moved = left.iter().any(|(name, steps)| now.get(name) != Some(steps));
        if moved || now.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.kill();
    let after = unfinished(store.as_ref()).await;
    let moved = left.iter().any(|(name, steps)| after.get(name) != Some(steps));
    let mid_recovery = moved && !after.is_empty();
    drop(store);
    server.restart().await;
    let mut settled = Vec::new();
    for tenant in recorded_names(server).await {
        let view = server.settle(&tenant).await.expect("nothing was deleted");
        settled.push(view);
    }
    (settled, mid_recovery)
}

async fn recorded_names(server: &Server) -> Vec<String> {
    let (_, list) = server.http().get("/v1/tenants?limit=1000").await;
    list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Kill-restart rounds until at least `wanted` tenants were caught begun
/// and unfinished by a crash, and at least one second kill landed
/// mid-recovery (so the test proves something), at most 12 rounds.
async fn crash_rounds(
    server: &mut Server,
    per_round: usize,
    regions: &[Option<&str>],
    wanted: usize,
) -> usize {
    let (mut interrupted, mut mid_recovery) = (0, 0);
    // How long provisioning takes depends on the machine's load, so the
    // kill's moment is searched for: a kill before any tenant had finished
    // came too early, one after the last had too late, and the next round
    // tries between the latest of each.
    let mut delay = Duration::from_millis(40);
    let (mut early, mut late) = (Duration::ZERO, None::<Duration>);
    for round in 0..12 {
        let names: Vec<_> = (0..per_round)
            .map(|i| (format!("r{round}-t{i}"), regions[i % regions.len()]))
            .collect();
        let Caught { left, settled: finished } = create_and_kill(server, &names, delay).await;
        let (settled, landed) = recover(server, &left).await;
        eprintln!(
            "round {round}: kill -9 after {delay:?} left {} tenants unfinished; the kill \
             during recovery {}",
            left.len(),
            if landed { "landed mid-recovery" } else { "found nothing to interrupt" }
        );
        if left.is_empty() {
            if finished == 0 {
                early = delay;
            } else {
                late = Some(delay);
            }
            delay = match late {
                Some(late) if late > early => (early + late) / 2,
                _ => delay * 2,
            };
        }
        interrupted += left.len();
        mid_recovery += usize::from(landed);
        assert!(
            settled.iter().all(|t| t["state"] == "active" || t["state"] == "failed"),
            "{settled:?}"
        );
        if interrupted >= wanted && mid_recovery >= 1 && round >= 1 {
            break;
        }
    }
    assert!(interrupted >= wanted, "only {interrupted} tenants were caught mid-provisioning");
    assert!(mid_recovery >= 1, "no kill landed mid-recovery");
    interrupted
}

/// What every tenant should have left on disk, and nothing else.
fn check_directories(server: &Server, tenants: &[Tenant]) {
    let active: BTreeSet<String> = tenants
        .iter()
        .filter(|t| t.state == TenantState::Active)
        .map(|t| t.name.to_string())
        .collect();
    let on_disk: BTreeSet<String> =
        entries(&server.data_dir().join("tenants")).into_iter().collect();
    assert_eq!(on_disk, active, "tenant directories must be exactly the active tenants'");
}

#[tokio::test]
async fn kill_9_during_provisioning_on_the_embedded_store() {
    // Two workers keep a queue of tenants provisioning for the crash to hit.
    let config = "[reconciler]\nworkers = 2\n";
    let mut server = Server::start(Store::Embedded, config, &[]).await;
    crash_rounds(&mut server, 30, &[None], 5).await;

    let tenants = recorded(&server).await;
    assert!(!tenants.is_empty());
    for tenant in &tenants {
        assert_eq!(tenant.state, TenantState::Active, "{tenant:?}");
        assert!(
            server.tenant_dir(tenant.name.as_str()).join("data.db").exists(),
            "{}",
            tenant.name
        );
    }
    check_directories(&server, &tenants);
}

#[tokio::test]
async fn kill_9_during_provisioning_on_postgres() {
    let db = bulkhead_testkit::TestDatabase::create().await;
    let prefix = db.object_prefix.clone();
    // A region whose login may create roles but not databases: its tenants
    // get an owner role, fail at CREATE DATABASE, and must have the role
    // dropped again.
    let limited = format!("{prefix}limited");
    let admin = bulkhead_testkit::postgres_admin_url();
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        let sql = format!("CREATE ROLE \"{limited}\" LOGIN CREATEROLE NOCREATEDB");
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();
    }
    let limited_url =
        bulkhead_testkit::database_url("postgres").replacen("postgres@", &format!("{limited}@"), 1);
    let config = format!(
        "[reconciler]\nworkers = 4\n\n[[regions]]\nname = \"local\"\ndatabases = \"{admin}\"\ndatabase_prefix = \"{prefix}\"\n\n\
         [[regions]]\nname = \"limited\"\ndatabases = \"{limited_url}\"\ndatabase_prefix = \"{prefix}\"\n"
    );
    let mut server = Server::start(Store::Postgres(db), &config, &[]).await;
    crash_rounds(&mut server, 12, &[None, None, Some("limited")], 3).await;

    let tenants = recorded(&server).await;
    let mut expected_databases = BTreeSet::new();
    let mut expected_roles = BTreeSet::from([limited.clone()]);
    for tenant in &tenants {
        let (_, view) = server.http().get(&format!("/v1/tenants/{}", tenant.name)).await;
        if tenant.region.as_str() == "limited" {
            assert_eq!(tenant.state, TenantState::Failed, "{tenant:?}");
            let failure = tenant.failure.as_ref().unwrap();
            assert_eq!(failure.step, "create_database");
            assert!(
                failure.reason.contains("permission denied to create database"),
                "{}",
                failure.reason
            );
            assert!(failure.undone);
            continue;
        }
        assert_eq!(tenant.state, TenantState::Active, "{tenant:?}");
        assert_eq!(tenant.isolation, Isolation::Silo);
        let steps = view["steps"].as_array().unwrap();
        let step = steps.iter().find(|s| s["name"] == "create_database").unwrap();
        let output = &step["output"];
        let database = output["database"].as_str().unwrap().to_owned();
        expected_roles.insert(output["owner_role"].as_str().unwrap().to_owned());
        expected_roles.insert(output["read_role"].as_str().unwrap().to_owned());
        expected_databases.insert(database);
    }
    assert!(tenants.iter().any(|t| t.state == TenantState::Failed));
    let (databases, roles) = server.postgres_db().owned_objects().await;
    assert_eq!(
        databases.into_iter().collect::<BTreeSet<_>>(),
        expected_databases,
        "orphan databases"
    );
    assert_eq!(roles.into_iter().collect::<BTreeSet<_>>(), expected_roles, "orphan roles");
    check_directories(&server, &tenants);

    // Offboarding after all that leaves nothing either.
    for tenant in &tenants {
        let (status, _) =
            server.http().delete(&format!("/v1/tenants/{}?purge=true", tenant.name)).await;
        assert_eq!(status, 202);
    }
    for tenant in &tenants {
        assert!(server.settle(tenant.name.as_str()).await.is_none(), "{} was purged", tenant.name);
    }
    let (databases, roles) = server.postgres_db().owned_objects().await;
    assert!(databases.is_empty(), "{databases:?}");
    assert_eq!(roles, [limited]);
    assert_eq!(entries(&server.data_dir().join("tenants")), Vec::<String>::new());
}
