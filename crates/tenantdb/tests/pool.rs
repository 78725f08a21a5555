//! The pool's isolation, attacked with tenant A's lease against a real
//! PostgreSQL server (issue 12): whatever A's session runs, it sees and
//! changes A's rows only, or gets an error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::{str::FromStr, time::Duration};

use bulkhead_model::{DatabaseUrl, Isolation, Region, Tenant};
use bulkhead_tenantdb::{PoolNames, PoolTenantRoles, RegionServers, pool, verify};
use bulkhead_testkit::TestDatabase;
use bulkhead_vault::leases::{LoginRole, create_login_role, random_password};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row, postgres::PgConnectOptions};
use time::OffsetDateTime;
use uuid::Uuid;

struct Pool {
    _db: TestDatabase,
    servers: RegionServers,
    region: Region,
    url: DatabaseUrl,
    names: PoolNames,
    a: Tenant,
    b: Tenant,
}

/// A region whose role is no superuser (as a real installation's should
/// be), two pool tenants, and a tenant table the owner made, secured.
async fn pool_with_two_tenants() -> Pool {
    let db = TestDatabase::create().await;
    let (region, url) = db.region("pg").await;
    let servers = RegionServers::default();
    let tenant = |name: &str| {
        let mut t = bulkhead_testkit::starter_tenant(name, OffsetDateTime::now_utc());
        t.isolation = Isolation::Pool;
        t
    };
    let (a, b) = (tenant("acme"), tenant("globex"));
    for t in [&a, &b] {
        pool::create(&servers, &region, &url, t).await.unwrap();
    }
    let names = PoolNames::of(&region);
    let p = Pool { _db: db, servers, region, url, names, a, b };
    p.as_owner(
        "CREATE TABLE public.notes (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL, body text); \
         CREATE TABLE public.settings (key text PRIMARY KEY, value text)",
    )
    .await;
    let secured = pool::secure_tables(&p.servers, &p.region, &p.url).await.unwrap();
    assert_eq!(secured.len(), 1, "only the table with a tenant column: {secured:?}");
    for (t, body) in [(&p.a, "a1"), (&p.a, "a2"), (&p.b, "b1"), (&p.b, "b2")] {
        p.as_owner(&format!(
            "SET {setting} = '{id}'; INSERT INTO notes (body) VALUES ('{body}')",
            setting = pool::ADMIN_TENANT_SETTING,
            id = t.id.0
        ))
        .await;
    }
    p
}

impl Pool {
    /// An administrator's session in the pool database.
    async fn admin(&self) -> PgConnection {
        let url = self.url.expose().replace("/postgres", &format!("/{}", self.names.database));
        PgConnection::connect(&url).await.unwrap()
    }

    async fn as_owner(&self, sql: &str) {
        let mut conn = self.admin().await;
        let sql = format!("SET ROLE \"{}\"; {sql}", self.names.owner);
        sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();
    }

    /// A lease of `tenant`'s, made as the vault makes them.
    async fn lease(&self, tenant: &Tenant, write: bool) -> PgConnection {
        let roles = PoolTenantRoles::of(&self.region, tenant);
        let role = format!(
            "{}l_{}",
            self.region.database_prefix.as_str(),
            &Uuid::new_v4().simple().to_string()[..12]
        );
        let password = random_password().unwrap();
        let spec = LoginRole {
            role: &role,
            acts_as: if write { &roles.writer } else { &roles.reader },
            valid_until: OffsetDateTime::now_utc() + Duration::from_secs(600),
            sessions: None,
        };
        let admin = self.servers.pool(&self.region.name, &self.url).unwrap();
        create_login_role(&admin, &spec, &password).await.unwrap();
        let options = PgConnectOptions::from_str(self.url.expose())
            .unwrap()
            .username(&role)
            .password(&password)
            .database(&self.names.database);
        PgConnection::connect_with(&options).await.unwrap()
    }

    /// Every note, as the administrator sees them: (tenant, body).
    async fn all_notes(&self) -> Vec<(Uuid, String)> {
        let mut conn = self.admin().await;
        let sql = format!(
            "SELECT tenant_id, body FROM notes WHERE tenant_id IN ('{}', '{}') ORDER BY body",
            self.a.id.0, self.b.id.0
        );
        let mut all = Vec::new();
        for id in [self.a.id.0, self.b.id.0] {
            sqlx::query(AssertSqlSafe(format!("SET {} = '{id}'", pool::ADMIN_TENANT_SETTING)))
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query(AssertSqlSafe(format!("SET ROLE \"{}\"", self.names.owner)))
                .execute(&mut conn)
                .await
                .unwrap();
            all.extend(
                sqlx::query_as::<_, (Uuid, String)>(AssertSqlSafe(sql.clone()))
                    .fetch_all(&mut conn)
                    .await
                    .unwrap(),
            );
        }
        all.sort_by(|x, y| x.1.cmp(&y.1));
        all
    }
}

async fn bodies(conn: &mut PgConnection) -> Vec<String> {
    sqlx::query_scalar("SELECT body FROM notes ORDER BY body").fetch_all(conn).await.unwrap()
}

async fn fails(conn: &mut PgConnection, sql: &str) -> String {
    match sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(&mut *conn).await {
        Ok(_) => panic!("A's session could run {sql:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_lease_sees_and_changes_its_own_tenants_rows_only() {
    let p = pool_with_two_tenants().await;
    let mut a = p.lease(&p.a, true).await;
    // A forgotten WHERE: A's rows, never B's.
    assert_eq!(bodies(&mut a).await, ["a1", "a2"]);
    let current: Uuid =
        sqlx::query_scalar("SELECT bulkhead.current_tenant()").fetch_one(&mut a).await.unwrap();
    assert_eq!(current, p.a.id.0);
    // The tenant column may be left out; it fills itself.
    sqlx::query("INSERT INTO notes (body) VALUES ('a3')").execute(&mut a).await.unwrap();
    let b_id = p.b.id.0;
    let error =
        fails(&mut a, &format!("INSERT INTO notes (tenant_id, body) VALUES ('{b_id}', 'x')")).await;
    assert!(error.contains("row-level security"), "{error}");
    let error =
        fails(&mut a, &format!("UPDATE notes SET tenant_id = '{b_id}' WHERE body = 'a1'")).await;
    assert!(error.contains("row-level security"), "{error}");
    // B's rows are not there to change.
    let changed = sqlx::query("UPDATE notes SET body = 'mine' WHERE body LIKE 'b%'")
        .execute(&mut a)
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 0);
    let deleted = sqlx::query("DELETE FROM notes").execute(&mut a).await.unwrap();
    assert_eq!(deleted.rows_affected(), 3);
    let left: Vec<String> = p.all_notes().await.into_iter().map(|(_, body)| body).collect();
    assert_eq!(left, ["b1", "b2"], "A's unfiltered DELETE left B's rows");
    // A table without a tenant column is nobody's until a migration
    // shares it.
    let error = fails(&mut a, "SELECT * FROM settings").await;
    assert!(error.contains("permission denied"), "{error}");
}

#[tokio::test]
async fn no_role_or_setting_change_reaches_another_tenant() {
    let p = pool_with_two_tenants().await;
    let mut a = p.lease(&p.a, true).await;
    let b_roles = PoolTenantRoles::of(&p.region, &p.b);
    let b_id = p.b.id.0;
    for attack in [
        format!("SET ROLE \"{}\"", b_roles.writer),
        format!("SET ROLE \"{}\"", p.names.owner),
        format!("SET SESSION AUTHORIZATION \"{}\"", b_roles.writer),
        format!("SET SESSION AUTHORIZATION \"{}\"", p.names.owner),
        format!("GRANT \"{}\" TO CURRENT_USER", b_roles.writer),
    ] {
        let error = fails(&mut a, &attack).await;
        assert!(
            error.contains("permission denied") || error.contains("must have"),
            "{attack}: {error}"
        );
    }
    for change in [
        "RESET ROLE".to_owned(),
        format!("SET {} = '{b_id}'", pool::ADMIN_TENANT_SETTING),
        format!("SELECT set_config('{}', '{b_id}', false)", pool::ADMIN_TENANT_SETTING),
        "SET search_path = pg_temp, public".to_owned(),
        "SET row_security = off".to_owned(),
    ] {
        // Each may run or fail; none shows B's rows. (`row_security = off`
        // turns the policy into an error instead.)
        let _ = sqlx::raw_sql(AssertSqlSafe(change.clone())).execute(&mut a).await;
        match sqlx::query_scalar::<_, String>("SELECT body FROM notes ORDER BY body")
            .fetch_all(&mut a)
            .await
        {
            Ok(seen) => assert_eq!(seen, ["a1", "a2"], "after {change}"),
            Err(e) => assert!(e.to_string().contains("row-level security"), "after {change}: {e}"),
        }
    }
    // A read lease reads its tenant's rows and writes nothing.
    let mut reader = p.lease(&p.a, false).await;
    assert_eq!(bodies(&mut reader).await, ["a1", "a2"]);
    let error = fails(&mut reader, "INSERT INTO notes (body) VALUES ('r')").await;
    assert!(error.contains("permission denied"), "{error}");
}

#[tokio::test]
async fn a_tenant_can_create_no_code_and_copy_nothing_of_another() {
    let p = pool_with_two_tenants().await;
    let mut a = p.lease(&p.a, true).await;
    for attack in [
        "CREATE TABLE public.mine (x int)",
        "CREATE TEMP TABLE mine (x int)",
        "CREATE VIEW public.everything AS SELECT * FROM notes",
        "CREATE TEMP VIEW everything AS SELECT * FROM notes",
        "CREATE FUNCTION public.peek() RETURNS SETOF notes LANGUAGE sql SECURITY DEFINER AS 'SELECT * FROM notes'",
        "CREATE FUNCTION pg_temp.peek() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM notes'",
        "CREATE TRIGGER t BEFORE INSERT ON notes FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()",
        "CREATE POLICY everything ON notes USING (true)",
        "ALTER TABLE notes DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE notes NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY bulkhead_tenant ON notes",
        "ALTER TABLE notes ALTER COLUMN tenant_id DROP DEFAULT",
        "CREATE OR REPLACE FUNCTION bulkhead.current_tenant() RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid'",
        "SELECT * FROM bulkhead.tenant_roles",
        "INSERT INTO bulkhead.tenant_roles VALUES (current_user, gen_random_uuid())",
        "COPY notes FROM STDIN",
        "COPY notes TO '/tmp/notes.csv'",
        "COPY (SELECT 1) TO PROGRAM 'true'",
    ] {
        fails(&mut a, attack).await;
    }
    // COPY out obeys the policy: A's rows only.
    let mut copy = a.copy_out_raw("COPY notes (body) TO STDOUT").await.unwrap();
    let mut out = Vec::new();
    use futures_util::StreamExt;
    while let Some(chunk) = copy.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    drop(copy);
    let mut lines: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["a1", "a2"]);
    // A generic plan, prepared once, still asks who is asking each time.
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan").execute(&mut a).await.unwrap();
    for _ in 0..3 {
        let rows = sqlx::query("SELECT body FROM notes").fetch_all(&mut a).await.unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.get::<String, _>(0).starts_with('a')));
    }
}

#[tokio::test]
async fn a_tenant_cannot_read_another_tenants_queries() {
    let p = pool_with_two_tenants().await;
    let mut a = p.lease(&p.a, true).await;
    let mut b = p.lease(&p.b, true).await;
    let marker = format!("secret_{}", Uuid::new_v4().simple());
    let sleeping = tokio::spawn(async move {
        let sql = format!("SELECT pg_sleep(2), '{marker}'");
        let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut b).await;
        b
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queries: Vec<Option<String>> =
        sqlx::query_scalar("SELECT query FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(&mut a)
            .await
            .unwrap();
    assert!(!queries.iter().flatten().any(|q| q.contains("secret_")), "{queries:?}");
    sleeping.await.unwrap();
}

#[tokio::test]
async fn offboarding_removes_the_tenants_rows_and_roles_only() {
    let p = pool_with_two_tenants().await;
    pool::drop(&p.servers, &p.region, &p.url, &p.a).await.unwrap();
    let left: Vec<String> = p.all_notes().await.into_iter().map(|(_, body)| body).collect();
    assert_eq!(left, ["b1", "b2"]);
    let admin = p.servers.pool(&p.region.name, &p.url).unwrap();
    let roles = PoolTenantRoles::of(&p.region, &p.a);
    for role in [&roles.writer, &roles.reader] {
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1")
            .bind(role)
            .fetch_optional(&admin)
            .await
            .unwrap();
        assert!(found.is_none(), "{role} is left");
    }
    // Again: nothing left to do is no error.
    pool::drop(&p.servers, &p.region, &p.url, &p.a).await.unwrap();
    let mut b = p.lease(&p.b, true).await;
    assert_eq!(bodies(&mut b).await, ["b1", "b2"]);
}

#[tokio::test]
async fn a_tenant_table_the_owner_does_not_own_or_without_a_uuid_is_refused_by_name() {
    let p = pool_with_two_tenants().await;
    let mut admin = p.admin().await;
    sqlx::raw_sql("CREATE TABLE public.stray (tenant_id uuid, x int)")
        .execute(&mut admin)
        .await
        .unwrap();
    let error = pool::secure_tables(&p.servers, &p.region, &p.url).await.unwrap_err();
    assert!(error.is_permanent());
    assert!(error.to_string().contains("public.stray belongs to"), "{error}");
    assert!(error.to_string().contains("OWNER TO"), "{error}");
    sqlx::raw_sql("DROP TABLE public.stray").execute(&mut admin).await.unwrap();
    p.as_owner("CREATE TABLE public.wrong (tenant_id text)").await;
    let error = pool::secure_tables(&p.servers, &p.region, &p.url).await.unwrap_err();
    assert!(error.to_string().contains("must be uuid"), "{error}");
    // Neither was half secured: the tables before them still are.
    let mut a = p.lease(&p.a, true).await;
    assert_eq!(bodies(&mut a).await, ["a1", "a2"]);
}

#[tokio::test]
async fn a_weakened_policy_is_found_and_bound_again() {
    let p = pool_with_two_tenants().await;
    // A migration that "fixes" a query by widening the policy: the text
    // still names current_tenant(), and lets everything through.
    p.as_owner(
        "ALTER POLICY bulkhead_tenant ON notes \
         USING (tenant_id = (SELECT bulkhead.current_tenant()) OR true)",
    )
    .await;
    let mut a = p.lease(&p.a, true).await;
    assert_eq!(bodies(&mut a).await, ["a1", "a2", "b1", "b2"], "the weakened policy leaks");
    let found = verify::pool(&p.servers, &p.region, &p.url).await.unwrap();
    assert!(
        found.iter().any(|f| f.check == "pool.policy" && f.subject == "public.notes"),
        "{found:?}"
    );
    pool::secure_tables(&p.servers, &p.region, &p.url).await.unwrap();
    assert_eq!(bodies(&mut a).await, ["a1", "a2"]);
    assert_eq!(verify::pool(&p.servers, &p.region, &p.url).await.unwrap(), []);
}

#[tokio::test]
async fn a_partition_named_directly_is_bound_as_its_parent() {
    let p = pool_with_two_tenants().await;
    p.as_owner(
        "CREATE TABLE events (tenant_id uuid NOT NULL, at date NOT NULL, body text) \
           PARTITION BY RANGE (at); \
         CREATE TABLE events_2026 PARTITION OF events \
           FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
    )
    .await;
    let secured = pool::secure_tables(&p.servers, &p.region, &p.url).await.unwrap();
    assert!(secured.contains(&"public.events_2026".to_owned()), "{secured:?}");
    for t in [&p.a, &p.b] {
        p.as_owner(&format!(
            "SET {} = '{}'; INSERT INTO events (at, body) VALUES ('2026-06-01', 'x')",
            pool::ADMIN_TENANT_SETTING,
            t.id.0
        ))
        .await;
    }
    let mut a = p.lease(&p.a, true).await;
    for table in ["events", "events_2026"] {
        let seen: Vec<Uuid> =
            sqlx::query_scalar(AssertSqlSafe(format!("SELECT tenant_id FROM {table}")))
                .fetch_all(&mut a)
                .await
                .unwrap();
        assert_eq!(seen, [p.a.id.0], "{table}");
    }
    let b_id = p.b.id.0;
    let error = fails(
        &mut a,
        &format!("INSERT INTO events_2026 (tenant_id, at) VALUES ('{b_id}', '2026-02-01')"),
    )
    .await;
    assert!(error.contains("row-level security"), "{error}");
    assert_eq!(verify::pool(&p.servers, &p.region, &p.url).await.unwrap(), []);
}

#[tokio::test]
async fn an_application_role_made_a_member_of_the_owner_is_found() {
    let p = pool_with_two_tenants().await;
    let roles = PoolTenantRoles::of(&p.region, &p.a);
    let mut root = PgConnection::connect(&bulkhead_testkit::postgres_admin_url()).await.unwrap();
    let grant = format!("GRANT \"{}\" TO \"{}\"", p.names.owner, roles.writer);
    sqlx::query(AssertSqlSafe(grant)).execute(&mut root).await.unwrap();
    // Why it matters: A's lease now names its tenant itself.
    let mut a = p.lease(&p.a, true).await;
    let b_id = p.b.id.0;
    sqlx::query(AssertSqlSafe(format!("SET {} = '{b_id}'", pool::ADMIN_TENANT_SETTING)))
        .execute(&mut a)
        .await
        .unwrap();
    assert_eq!(bodies(&mut a).await, ["b1", "b2"]);
    let found = verify::pool(&p.servers, &p.region, &p.url).await.unwrap();
    let owners: Vec<&str> =
        found.iter().filter(|f| f.check == "role.owner").map(|f| f.subject.as_str()).collect();
    assert!(owners.contains(&roles.writer.as_str()), "{found:?}");
}

#[tokio::test]
async fn an_expired_temporary_login_left_behind_is_found() {
    let p = pool_with_two_tenants().await;
    let prefix = p.region.database_prefix.as_str();
    let mut root = PgConnection::connect(&bulkhead_testkit::postgres_admin_url()).await.unwrap();
    for (role, until) in [("v_left", "2020-01-01"), ("m_inuse", "2999-01-01")] {
        let sql = format!("CREATE ROLE \"{prefix}{role}\" LOGIN VALID UNTIL '{until}'");
        sqlx::query(AssertSqlSafe(sql)).execute(&mut root).await.unwrap();
    }
    let now = OffsetDateTime::now_utc();
    let grace = Duration::from_secs(300);
    let found = verify::stale_logins(&p.servers, &p.region, &p.url, now, grace).await.unwrap();
    let subjects: Vec<&str> = found.iter().map(|f| f.subject.as_str()).collect();
    assert_eq!(subjects, [format!("{prefix}v_left")], "{found:?}");
}

#[tokio::test]
async fn provisioning_another_pool_tenant_locks_no_bound_table() {
    let p = pool_with_two_tenants().await;
    // A's transaction holds notes (as a busy application's would): any
    // change to notes would wait for it, and give up after lock_timeout.
    let mut a = p.lease(&p.a, true).await;
    sqlx::raw_sql("BEGIN; SELECT count(*) FROM notes").execute(&mut a).await.unwrap();
    let mut c = bulkhead_testkit::starter_tenant("initech", OffsetDateTime::now_utc());
    c.isolation = Isolation::Pool;
    // Had it altered notes, it would have failed at the lock timeout.
    pool::create(&p.servers, &p.region, &p.url, &c).await.unwrap();
    sqlx::raw_sql("COMMIT").execute(&mut a).await.unwrap();
}

#[tokio::test]
async fn a_login_of_no_tenant_sees_no_row_whatever_its_name() {
    let p = pool_with_two_tenants().await;
    // A login that is in the pool's readers' group but no tenant's role
    // (a hand-made mistake), with a name that needs quoting.
    let role = format!("{}Odd Name", p.region.database_prefix.as_str());
    let admin = p.servers.pool(&p.region.name, &p.url).unwrap();
    let sql = format!("CREATE ROLE \"{role}\" LOGIN PASSWORD 'pw' IN ROLE \"{}\"", p.names.readers);
    sqlx::query(AssertSqlSafe(sql)).execute(&admin).await.unwrap();
    let options = PgConnectOptions::from_str(p.url.expose())
        .unwrap()
        .username(&role)
        .password("pw")
        .database(&p.names.database);
    let mut odd = PgConnection::connect_with(&options).await.unwrap();
    let current: Option<Uuid> =
        sqlx::query_scalar("SELECT bulkhead.current_tenant()").fetch_one(&mut odd).await.unwrap();
    assert_eq!(current, None);
    assert_eq!(bodies(&mut odd).await, Vec::<String>::new());
    odd.close().await.unwrap();
    let sql = format!("DROP ROLE \"{role}\"");
    sqlx::query(AssertSqlSafe(sql)).execute(&admin).await.unwrap();
}

/// A backup's rows part is the tenant's word: one that names anything but
/// the pool's tenant tables, names one twice, or is cut short, is refused
/// before anything of the tenant's changes.
#[tokio::test]
async fn a_restore_writes_the_pools_tenant_tables_only() {
    let p = pool_with_two_tenants().await;
    let tables = pool::tables::names(&mut p.admin().await, &p.names).await.unwrap();
    assert_eq!(tables, ["public.notes"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("database.rows");
    let mut lease = p.lease(&p.a, true).await;
    for (rows, refused) in [
        ("COPY public.settings FROM stdin;\nk\tv\n\\.\n\n", "not a tenant table"),
        ("COPY public.notes FROM stdin;\n\\.\n\nCOPY public.notes FROM stdin;\n\\.\n\n", "twice"),
        ("COPY public.notes FROM stdin;\n9\tx\tcut", "cut short"),
    ] {
        std::fs::write(&file, rows).unwrap();
        let error = bulkhead_tenantdb::restore::pool_rows(&mut lease, &p.a, &tables, &file)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(refused), "{error}");
    }
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notes").fetch_one(&mut lease).await.unwrap();
    assert_eq!(kept, 2, "acme's rows are untouched");
}
