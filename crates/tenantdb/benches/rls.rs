//! What the pool's row-level security costs against a silo (issue 12): a
//! point read and a 1,000-row scan by one tenant's lease, with 1,000
//! tenants' rows (1,000 each) in the pool's table and the tenant's own
//! 1,000 rows in its silo database. Needs PostgreSQL, as the tests do
//! (`BULKHEAD_TEST_POSTGRES`, or the local server).
//!
//!     cargo bench -p bulkhead-tenantdb --bench rls
//!
//! Each query runs as a lease would: a login role that is a member of the
//! tenant's role, over one connection, the statement prepared once.

#![allow(clippy::expect_used, clippy::print_stdout, clippy::disallowed_methods)]

use std::{str::FromStr, time::Instant};

use bulkhead_model::{
    DatabaseLocation, DatabasePrefix, DatabaseUrl, Isolation, Region, RegionName, Tenant,
};
use bulkhead_tenantdb::{PoolNames, PoolTenantRoles, RegionServers, SiloNames, pool, silo};
use bulkhead_testkit::TestDatabase;
use bulkhead_vault::leases::{LoginRole, create_login_role, random_password};
use sqlx::{AssertSqlSafe, Connection, PgConnection, postgres::PgConnectOptions};
use time::OffsetDateTime;

const TENANTS: i64 = 1_000;
const ROWS: i64 = 1_000;
const POINT_READS: usize = 5_000;
const SCANS: usize = 500;

struct Setup {
    _db: TestDatabase,
    servers: RegionServers,
    region: Region,
    url: DatabaseUrl,
}

async fn run(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(conn).await.expect(sql);
}

/// A lease of `tenant`'s acting as `acts_as`, connected to `database`.
async fn lease(s: &Setup, tenant: &Tenant, acts_as: &str, database: &str) -> PgConnection {
    let role = format!(
        "{}l_{}_{}",
        s.region.database_prefix.as_str(),
        tenant.id.short(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let password = random_password().expect("a password");
    let spec = LoginRole {
        role: &role,
        acts_as,
        valid_until: OffsetDateTime::now_utc() + time::Duration::hours(1),
        sessions: None,
    };
    let admin = s.servers.pool(&s.region.name, &s.url).expect("the admin pool");
    create_login_role(&admin, &spec, &password).await.expect("a lease");
    let options = PgConnectOptions::from_str(s.url.expose())
        .expect("the region's url")
        .username(&role)
        .password(&password)
        .database(database);
    PgConnection::connect_with(&options).await.expect("the lease connects")
}

/// The ids of the rows a session sees, in random order.
async fn visible_ids(conn: &mut PgConnection) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM notes ORDER BY random()")
        .fetch_all(conn)
        .await
        .expect("the tenant's ids")
}

/// p50, p95 and mean of `n` runs of `query` with an id from `ids`, in µs.
async fn time(conn: &mut PgConnection, query: &str, ids: &[i64], n: usize) -> (f64, f64, f64) {
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let id = ids[i % ids.len()];
        let started = Instant::now();
        let row: (i64,) = sqlx::query_as(AssertSqlSafe(query.to_owned()))
            .bind(id)
            .fetch_one(&mut *conn)
            .await
            .expect(query);
        took.push(started.elapsed().as_secs_f64() * 1e6);
        assert!(row.0 >= 0);
    }
    took.sort_by(f64::total_cmp);
    let mean = took.iter().sum::<f64>() / n as f64;
    (took[n / 2], took[n * 95 / 100], mean)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let db = TestDatabase::create().await;
    let admin = format!("{}admin", db.object_prefix);
    let mut root =
        PgConnection::connect(&bulkhead_testkit::postgres_admin_url()).await.expect("PostgreSQL");
    run(&mut root, &format!("CREATE ROLE \"{admin}\" LOGIN CREATEDB CREATEROLE")).await;
    let url = DatabaseUrl::parse(&bulkhead_testkit::database_url("postgres").replacen(
        "postgres@",
        &format!("{admin}@"),
        1,
    ))
    .expect("a url");
    let region = Region::new(
        RegionName::parse("pg").expect("a region name"),
        DatabaseLocation::Postgres(url.clone()),
        Some(DatabasePrefix::parse(&db.object_prefix).expect("a prefix")),
    );
    let s = Setup { _db: db, servers: RegionServers::default(), region, url };
    let mut tenant = bulkhead_testkit::starter_tenant("acme", OffsetDateTime::now_utc());
    tenant.isolation = Isolation::Pool;

    // The pool: 1,000 tenants' rows, acme's among them, loaded before the
    // table is bound (as a migration would add a tenant column to a table
    // with data), then bound by acme's provisioning.
    pool::ensure(&s.servers, &s.region, &s.url).await.expect("the pool");
    let names = PoolNames::of(&s.region);
    let pool_url = bulkhead_testkit::database_url(&names.database);
    let mut owner = PgConnection::connect(&pool_url).await.expect("the pool database");
    run(&mut owner, &format!("SET ROLE \"{}\"", names.owner)).await;
    run(
        &mut owner,
        "CREATE TABLE notes (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL, body text)",
    )
    .await;
    let acme = tenant.id.0;
    run(
        &mut owner,
        &format!(
            "WITH tenants AS MATERIALIZED ( \
               SELECT t, CASE WHEN t = 1 THEN '{acme}'::uuid ELSE gen_random_uuid() END AS id \
               FROM generate_series(1, {TENANTS}) t) \
             INSERT INTO notes (tenant_id, body) \
             SELECT tenants.id, repeat('x', 100) \
             FROM tenants, generate_series(1, {ROWS}) r ORDER BY r, tenants.t"
        ),
    )
    .await;
    run(&mut owner, "ANALYZE notes").await;
    pool::create(&s.servers, &s.region, &s.url, &tenant).await.expect("acme in the pool");
    run(&mut owner, "ANALYZE notes").await;

    // The silo: acme's 1,000 rows alone, in its own database.
    let mut silo_tenant = tenant.clone();
    silo_tenant.isolation = Isolation::Silo;
    silo::create(&s.servers, &s.region, &s.url, &silo_tenant).await.expect("acme's silo");
    let silo_names = SiloNames::of(&s.region, &silo_tenant);
    let mut silo_owner = lease(&s, &silo_tenant, &silo_names.owner, &silo_names.database).await;
    run(
        &mut silo_owner,
        "CREATE TABLE notes (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL, body text)",
    )
    .await;
    run(
        &mut silo_owner,
        &format!(
            "INSERT INTO notes (tenant_id, body) SELECT '{acme}', repeat('x', 100) \
             FROM generate_series(1, {ROWS}); ANALYZE notes"
        ),
    )
    .await;

    let roles = PoolTenantRoles::of(&s.region, &tenant);
    let mut in_pool = lease(&s, &tenant, &roles.writer, &names.database).await;
    let mut in_silo = silo_owner;
    let pool_ids = visible_ids(&mut in_pool).await;
    let silo_ids = visible_ids(&mut in_silo).await;
    assert_eq!(pool_ids.len(), ROWS as usize, "the lease sees acme's rows only");

    let point = "SELECT length(body)::bigint FROM notes WHERE id = $1";
    let scan = "SELECT count(*) + sum(length(body)) * 0 + $1 * 0 FROM notes";
    println!(
        "| query | silo (acme's {ROWS} rows) p50 / p95 / mean | pool ({TENANTS} tenants × {ROWS} rows, row-level security) p50 / p95 / mean |"
    );
    println!("|---|---|---|");
    for (label, query, n) in
        [("point read by id", point, POINT_READS), ("scan of the tenant's 1,000 rows", scan, SCANS)]
    {
        // Warm both first.
        time(&mut in_silo, query, &silo_ids, n / 10).await;
        time(&mut in_pool, query, &pool_ids, n / 10).await;
        let (s50, s95, smean) = time(&mut in_silo, query, &silo_ids, n).await;
        let (p50, p95, pmean) = time(&mut in_pool, query, &pool_ids, n).await;
        println!(
            "| {label} ({n} runs) | {s50:.0} / {s95:.0} / {smean:.0} µs | {p50:.0} / {p95:.0} / {pmean:.0} µs |"
        );
    }
    let lookup = "SELECT $1 * 0 + length(bulkhead.current_tenant()::text)::bigint";
    time(&mut in_pool, lookup, &pool_ids, POINT_READS / 10).await;
    let (l50, l95, lmean) = time(&mut in_pool, lookup, &pool_ids, POINT_READS).await;
    println!(
        "| the tenant lookup alone, `SELECT bulkhead.current_tenant()` ({POINT_READS} runs) | | {l50:.0} / {l95:.0} / {lmean:.0} µs |"
    );
    let _ = in_pool.close().await;
    let _ = in_silo.close().await;
    let _ = owner.close().await;
    let _ = root.close().await;
}
