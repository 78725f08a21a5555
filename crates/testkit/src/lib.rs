//! Test support: every test gets its own PostgreSQL database and its own
//! prefix for the databases and roles it makes, so test runs can overlap and
//! repeat, and everything is dropped when the test ends.
#![allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]

mod proxy;
pub mod s3;

use std::time::Duration;

pub use proxy::{Stopped, TcpProxy};

use bulkhead_model::{
    DatabaseLocation, DatabasePrefix, DatabaseUrl, Isolation, NewTenant, PlanName, Region,
    RegionName, Tenant, TenantId, TenantName,
};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// A tenant record as most tests need one: plan `starter`, silo, the default
/// region, no admin email, in state `requested` as of `at`.
pub fn starter_tenant(name: &str, at: time::OffsetDateTime) -> Tenant {
    Tenant::new(
        NewTenant {
            id: TenantId::random(),
            name: TenantName::parse(name).expect("a valid tenant name"),
            plan: PlanName::parse("starter").expect("the starter plan"),
            isolation: Isolation::Silo,
            region: RegionName::default(),
            admin_email: None,
            limits: bulkhead_model::TenantLimits::default(),
        },
        at,
    )
}

/// The PostgreSQL server tests use, as a superuser: `BULKHEAD_TEST_POSTGRES`
/// or the local server on 127.0.0.1:5432.
pub fn postgres_admin_url() -> String {
    std::env::var("BULKHEAD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `prefix` followed by random lowercase letters and digits.
pub fn unique_name(prefix: &str, random_len: usize) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &random[..random_len.min(random.len())])
}

/// The URL of database `name` on the admin server.
pub fn database_url(name: &str) -> String {
    let admin = postgres_admin_url();
    match admin.rfind('/') {
        Some(slash) if slash > "postgres://".len() => format!("{}/{name}", &admin[..slash]),
        _ => format!("{admin}/{name}"),
    }
}

async fn admin_connection() -> PgConnection {
    PgConnection::connect(&postgres_admin_url())
        .await
        .expect("tests need PostgreSQL: run scripts/test.sh or set BULKHEAD_TEST_POSTGRES")
}

/// A database that exists for one test, dropped with it.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    /// Databases and roles whose names start with this are the test's own
    /// (use it as a region's `database_prefix`); they are dropped too.
    pub object_prefix: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let name = unique_name("bh_test_", 16);
        let mut conn = admin_connection().await;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        Self { url: database_url(&name), name, object_prefix: unique_name("t", 6) + "_" }
    }

    /// A PostgreSQL region on the test server whose role is no superuser,
    /// as a real installation's should be (`LOGIN CREATEDB CREATEROLE`),
    /// with the test's object prefix; and the region role's URL.
    pub async fn region(&self, name: &str) -> (Region, DatabaseUrl) {
        let admin = format!("{}admin", self.object_prefix);
        let mut conn = admin_connection().await;
        let sql = format!("CREATE ROLE \"{admin}\" LOGIN CREATEDB CREATEROLE");
        sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await.expect("create region role");
        let url = database_url("postgres").replacen("postgres@", &format!("{admin}@"), 1);
        let url = DatabaseUrl::parse(&url).expect("a region url");
        let region = Region::new(
            RegionName::parse(name).expect("a region name"),
            DatabaseLocation::Postgres(url.clone()),
            Some(DatabasePrefix::parse(&self.object_prefix).expect("a database prefix")),
        );
        (region, url)
    }

    /// The databases and roles the test created under its object prefix.
    pub async fn owned_objects(&self) -> (Vec<String>, Vec<String>) {
        let mut conn = admin_connection().await;
        let pattern = format!("{}%", self.object_prefix.replace('_', "\\_"));
        let databases: Vec<(String,)> =
            sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1")
                .bind(&pattern)
                .fetch_all(&mut conn)
                .await
                .expect("list databases");
        let roles: Vec<(String,)> =
            sqlx::query_as("SELECT rolname FROM pg_roles WHERE rolname LIKE $1 ORDER BY 1")
                .bind(&pattern)
                .fetch_all(&mut conn)
                .await
                .expect("list roles");
        (databases.into_iter().map(|(d,)| d).collect(), roles.into_iter().map(|(r,)| r).collect())
    }

    async fn drop_everything(name: String, object_prefix: String) {
        let Ok(mut conn) = PgConnection::connect(&postgres_admin_url()).await else {
            return;
        };
        let pattern = format!("{}%", object_prefix.replace('_', "\\_"));
        let databases: Vec<(String,)> =
            sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE $1")
                .bind(&pattern)
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
        for db in databases.into_iter().map(|(d,)| d).chain([name.clone()]) {
            // A test may have made one a template, as a tenant could.
            let sql =
                format!("ALTER DATABASE \"{db}\" WITH IS_TEMPLATE false ALLOW_CONNECTIONS true");
            let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await;
            let sql = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
            let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await;
        }
        // The role a control store's migrations make to own its audit tables.
        let audit_owner: String = name.chars().take(40).collect::<String>() + "_audit_owner";
        let sql = format!("DROP ROLE IF EXISTS \"{audit_owner}\"");
        let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await;
        let roles: Vec<(String,)> =
            sqlx::query_as("SELECT rolname FROM pg_roles WHERE rolname LIKE $1")
                .bind(&pattern)
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
        for (role,) in roles {
            let sql = format!("DROP ROLE IF EXISTS \"{role}\"");
            let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await;
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which cannot block on async
        // work, so the cleanup gets a thread and a runtime of its own.
        let name = self.name.clone();
        let prefix = self.object_prefix.clone();
        let cleanup = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(async {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(30),
                        Self::drop_everything(name, prefix),
                    )
                    .await;
                });
            }
        });
        let _ = cleanup.join();
    }
}

/// A control store for one test, and whatever keeps it alive (its
/// directory, or its database), dropped with it.
#[derive(Debug)]
pub struct StoreFixture {
    pub store: std::sync::Arc<dyn bulkhead_store::ControlStore>,
    pub location: bulkhead_store::StoreLocation,
    /// Scratch space for the test (the SQLite file lives here too).
    pub dir: tempfile::TempDir,
    pub db: Option<TestDatabase>,
}

impl StoreFixture {
    /// A SQLite store in a temporary directory.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let location = bulkhead_store::StoreLocation::Sqlite(dir.path().join("bulkhead.db"));
        let store = bulkhead_store::open(&location).await.expect("open the SQLite store");
        Self { store, location, dir, db: None }
    }

    /// A PostgreSQL store in a database of its own.
    pub async fn postgres() -> Self {
        let db = TestDatabase::create().await;
        let url = bulkhead_model::DatabaseUrl::parse(&db.url).expect("test database url");
        let location = bulkhead_store::StoreLocation::Postgres(url);
        let store = bulkhead_store::open(&location).await.expect("open the PostgreSQL store");
        let dir = tempfile::tempdir().expect("temporary directory");
        Self { store, location, dir, db: Some(db) }
    }
}

/// Runs each named `async fn(StoreFixture)` as two tests, one on SQLite
/// (module `sqlite_store`) and one on PostgreSQL (`postgres_store`).
#[macro_export]
macro_rules! on_both_stores {
    ($($test:ident),* $(,)?) => {
        mod sqlite_store {
            $(#[tokio::test] async fn $test() {
                super::$test($crate::StoreFixture::sqlite().await).await
            })*
        }
        mod postgres_store {
            $(#[tokio::test] async fn $test() {
                super::$test($crate::StoreFixture::postgres().await).await
            })*
        }
    };
}
