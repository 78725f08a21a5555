//! `bulkhead-access`, the crate applications use to reach their tenants'
//! databases, against a real server: leases renewed before they expire
//! (the old one revoked), per-tenant pools capped and evicted, and a
//! tenant's SQLite file on the embedded default.

use std::{
    num::NonZeroUsize,
    time::{Duration, Instant},
};

use bulkhead_access::{Access, ControlApi, Options, Pool, Source, TenantDb, TenantPools};

use crate::kit::{Server, role_exists};

fn silo(server: &Server, name: &str) {
    server.cli_json(&["tenants", "create", name, "--plan", "enterprise", "--wait"]);
}

fn leases(server: &Server, tenant: &str, ttl: Duration) -> Source {
    Source::Leases {
        api: ControlApi::new(&server.api, server.token.clone()).unwrap(),
        tenant: tenant.to_owned(),
        access: Access::Write,
        ttl,
    }
}

fn postgres(pool: Pool) -> sqlx::PgPool {
    match pool {
        Pool::Postgres(pool) => pool,
        Pool::Sqlite(_) => panic!("a PostgreSQL tenant's pool"),
    }
}

/// The login the pool's sessions run as: the lease's role.
async fn login(db: &TenantDb) -> String {
    sqlx::query_scalar("SELECT session_user::text").fetch_one(&postgres(db.pool())).await.unwrap()
}

async fn gone(role: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while role_exists(role).await {
        assert!(Instant::now() < deadline, "{role} is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_lease_is_renewed_before_it_expires_and_the_old_one_revoked() {
    let server = Server::postgres().await;
    silo(&server, "renewed");
    let started = Instant::now();
    let db =
        TenantDb::open(leases(&server, "renewed", Duration::from_secs(4)), &Options::default())
            .await
            .unwrap();
    let first = login(&db).await;
    // Half way through its life, a new lease takes over.
    let second = loop {
        let now = login(&db).await;
        if now != first {
            break now;
        }
        assert!(started.elapsed() < Duration::from_secs(4), "not renewed before expiry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let second_seen = Instant::now();
    gone(&first).await;
    // The next renewal comes before the second lease expires (it was
    // received no later than seen), and every query on the way works.
    let last = loop {
        let now = login(&db).await;
        if now != second {
            break now;
        }
        assert!(second_seen.elapsed() < Duration::from_secs(4), "not renewed again before expiry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    db.close().await;
    gone(&last).await;
}

#[tokio::test]
async fn per_tenant_pools_are_capped_and_the_least_recently_used_closed() {
    let server = Server::postgres().await;
    for name in ["capped-a", "capped-b", "capped-c"] {
        silo(&server, name);
    }
    let options = Options {
        max_connections: 2,
        acquire_timeout: Duration::from_millis(300),
        ..Options::default()
    };
    let (api, token) = (server.api.clone(), server.token.clone());
    let pools = TenantPools::new(NonZeroUsize::new(2).unwrap(), options, move |tenant| {
        Ok(Source::Leases {
            api: ControlApi::new(&api, token.clone())?,
            tenant: tenant.to_owned(),
            access: Access::Write,
            ttl: Duration::from_secs(600),
        })
    });
    let a = postgres(pools.get("capped-a").await.unwrap());
    let b = postgres(pools.get("capped-b").await.unwrap());
    // A takes every connection it may; B is not starved by it.
    let mut held = [a.acquire().await.unwrap(), a.acquire().await.unwrap()];
    let a_login: String =
        sqlx::query_scalar("SELECT session_user::text").fetch_one(&mut *held[0]).await.unwrap();
    let error = a.acquire().await.unwrap_err();
    assert!(matches!(error, sqlx::Error::PoolTimedOut), "{error}");
    let (one,): (i32,) = sqlx::query_as("SELECT 1").fetch_one(&b).await.unwrap();
    assert_eq!(one, 1);
    drop(held);
    // B was used last: C's pool evicts A's, whose lease is revoked.
    pools.get("capped-b").await.unwrap();
    pools.get("capped-c").await.unwrap();
    assert_eq!(pools.len(), 2);
    gone(&a_login).await;
    // A again: opened anew, with a new lease.
    let again = postgres(pools.get("capped-a").await.unwrap());
    let (one,): (i32,) = sqlx::query_as("SELECT 1").fetch_one(&again).await.unwrap();
    assert_eq!(one, 1);
}

#[tokio::test]
async fn a_tenants_sqlite_file_opens_on_the_embedded_default() {
    let server = Server::embedded().await;
    silo(&server, "embedded");
    let file = server.tenant_dir("embedded").join("data.db");
    let db = TenantDb::open(Source::Sqlite(file), &Options::default()).await.unwrap();
    let Pool::Sqlite(pool) = db.pool() else { panic!("a SQLite tenant's pool") };
    sqlx::query("CREATE TABLE notes (body text)").execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO notes VALUES ('hello')").execute(&pool).await.unwrap();
    let (body,): (String,) =
        sqlx::query_as("SELECT body FROM notes").fetch_one(&pool).await.unwrap();
    assert_eq!(body, "hello");
    db.close().await;
    let missing = server.tenant_dir("nobody").join("data.db");
    let error = TenantDb::open(Source::Sqlite(missing), &Options::default()).await.unwrap_err();
    assert!(error.to_string().contains("not a tenant's database file"), "{error}");
}
