//! Migrations of tenant databases against a real PostgreSQL server and
//! SQLite files: one transaction per database, history checked, the pool's
//! new tables bound to tenants, and a tenant's own code unable to borrow
//! the migration's rights.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use bulkhead_model::{DatabaseUrl, Isolation, Region, Tenant};
use bulkhead_tenantdb::{
    PoolNames, RegionServers, SiloNames,
    migrate::{self, Migration, Migrations, Mode, Outcome},
    pool, silo, verify,
};
use bulkhead_testkit::TestDatabase;
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use time::OffsetDateTime;
use uuid::Uuid;

fn files(files: &[(&str, &str)]) -> Migrations {
    Migrations::new(
        files
            .iter()
            .map(|(name, sql)| Migration::parse(name, (*sql).to_owned()).unwrap())
            .collect(),
    )
    .unwrap()
}

fn apply() -> Mode {
    Mode::Apply { job: Uuid::new_v4() }
}

const NOTES: (&str, &str) =
    ("0001_notes.sql", "CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL);");
const DUE: (&str, &str) = ("0002_due.sql", "ALTER TABLE notes ADD COLUMN due date;");
/// Its first statement works; its second fails, after it.
const BROKEN: (&str, &str) = (
    "0003_broken.sql",
    "CREATE TABLE tags (name text); INSERT INTO notes (body, nope) VALUES ('x', 1);",
);

struct Server {
    db: TestDatabase,
    servers: RegionServers,
    region: Region,
    url: DatabaseUrl,
}

async fn server() -> Server {
    let db = TestDatabase::create().await;
    let (region, url) = db.region("pg").await;
    Server { db, servers: RegionServers::default(), region, url }
}

impl Server {
    async fn silo_tenant(&self, name: &str) -> Tenant {
        let tenant = bulkhead_testkit::starter_tenant(name, OffsetDateTime::now_utc());
        silo::create(&self.servers, &self.region, &self.url, &tenant).await.unwrap();
        tenant
    }

    async fn connect(&self, database: &str) -> PgConnection {
        let url = bulkhead_testkit::database_url(database);
        PgConnection::connect(&url).await.unwrap()
    }

    async fn silo(&self, tenant: &Tenant, set: &Migrations, mode: Mode) -> Result<Outcome, String> {
        migrate::silo(
            &self.servers,
            &self.region,
            &self.url,
            tenant,
            set,
            mode,
            OffsetDateTime::now_utc(),
        )
        .await
        .map_err(|e| e.to_string())
    }
}

async fn one<
    T: Send + Unpin + for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
>(
    conn: &mut PgConnection,
    sql: &str,
) -> T {
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned())).fetch_one(conn).await.unwrap()
}

#[tokio::test]
async fn a_silo_database_takes_its_pending_files_in_one_transaction() {
    let s = server().await;
    let tenant = s.silo_tenant("acme").await;
    let names = SiloNames::of(&s.region, &tenant);

    let first = files(&[NOTES]);
    let plan = s.silo(&tenant, &first, Mode::Plan).await.unwrap();
    assert_eq!(plan, Outcome { from: 0, to: 1, files: vec![NOTES.0.into()] });
    let mut conn = s.connect(&names.database).await;
    let history: bool =
        one(&mut conn, "SELECT to_regclass('bulkhead.schema_migrations') IS NULL").await;
    assert!(history, "a plan changed the database");

    assert_eq!(s.silo(&tenant, &first, apply()).await.unwrap().to, 1);
    let two = files(&[NOTES, DUE]);
    let done = s.silo(&tenant, &two, apply()).await.unwrap();
    assert_eq!(done, Outcome { from: 1, to: 2, files: vec![DUE.0.into()] });
    assert_eq!(s.silo(&tenant, &two, apply()).await.unwrap().files, Vec::<String>::new());
    // The tenant's owner role owns what the files made; no login is left.
    let owner: String =
        one(&mut conn, "SELECT tableowner::text FROM pg_tables WHERE tablename = 'notes'").await;
    assert_eq!(owner, names.owner);
    let (_, roles) = s.db.owned_objects().await;
    assert!(roles.iter().all(|r| !r.contains("m_")), "a migration login was left: {roles:?}");

    // A failure rolls the whole file back: the database stays at 2.
    let three = files(&[NOTES, DUE, BROKEN]);
    let error = s.silo(&tenant, &three, apply()).await.unwrap_err();
    assert!(error.starts_with("0003_broken.sql: ") && error.contains("nope"), "{error}");
    let tags: bool = one(&mut conn, "SELECT to_regclass('public.tags') IS NULL").await;
    assert!(tags, "the failed file's first statement stayed");
    let version: i64 = one(&mut conn, "SELECT max(version) FROM bulkhead.schema_migrations").await;
    assert_eq!(version, 2);

    // A file changed after it was applied, or removed, is refused.
    let changed = files(&[(NOTES.0, "CREATE TABLE notes (id int);"), DUE]);
    let error = s.silo(&tenant, &changed, apply()).await.unwrap_err();
    assert!(error.contains("0001_notes.sql changed after it was applied"), "{error}");
    let error = s.silo(&tenant, &files(&[NOTES]), Mode::Plan).await.unwrap_err();
    assert!(error.contains("version 0002 (0002_due.sql) applied"), "{error}");
}

#[tokio::test]
async fn a_tenants_trigger_cannot_borrow_the_migrations_rights() {
    let s = server().await;
    let tenant = s.silo_tenant("acme").await;
    let names = SiloNames::of(&s.region, &tenant);
    let evil = format!("{}evil", s.db.object_prefix);
    // The tenant, as its owner role, plants a trigger that tries to take
    // the session's own role back and use it.
    let mut conn = s.connect(&names.database).await;
    let plant = format!(
        "SET ROLE \"{owner}\"; \
         CREATE TABLE bait (x int); \
         CREATE FUNCTION grab() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           RESET ROLE; \
           BEGIN EXECUTE 'CREATE ROLE \"{evil}\" SUPERUSER'; EXCEPTION WHEN others THEN NULL; END; \
           BEGIN EXECUTE 'CREATE ROLE \"{evil}\"'; EXCEPTION WHEN others THEN NULL; END; \
           RETURN NEW; END $$; \
         CREATE TRIGGER grab BEFORE INSERT ON bait FOR EACH ROW EXECUTE FUNCTION grab();",
        owner = names.owner
    );
    sqlx::raw_sql(AssertSqlSafe(plant)).execute(&mut conn).await.unwrap();
    let set = files(&[("0001_fill.sql", "INSERT INTO bait VALUES (1);")]);
    s.silo(&tenant, &set, apply()).await.unwrap();
    let (_, roles) = s.db.owned_objects().await;
    assert!(!roles.contains(&evil), "the tenant's trigger made a role: {roles:?}");
}

#[tokio::test]
async fn a_sqlite_file_takes_its_pending_files_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    bulkhead_tenantdb::sqlite::create(dir.path()).await.unwrap();
    let sqlite = |set: Migrations, mode| {
        let dir = dir.path().to_owned();
        async move { migrate::sqlite(&dir, &set, mode).await.map_err(|e| e.to_string()) }
    };
    assert_eq!(sqlite(files(&[NOTES]), Mode::Plan).await.unwrap().to, 1);
    assert_eq!(sqlite(files(&[NOTES, DUE]), apply()).await.unwrap().to, 2);
    let error = sqlite(files(&[NOTES, DUE, BROKEN]), apply()).await.unwrap_err();
    assert!(error.starts_with("0003_broken.sql: "), "{error}");
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}/data.db", dir.path().display()))
            .await
            .unwrap();
    let (tags,): (i64,) = sqlx::query_as("SELECT count(*) FROM sqlite_master WHERE name = 'tags'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(tags, 0, "the failed file's first statement stayed");
    let (version,): (i64,) = sqlx::query_as("SELECT max(version) FROM bulkhead_schema_migrations")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 2);
    let missing = tempfile::tempdir().unwrap();
    let error = migrate::sqlite(missing.path(), &files(&[NOTES]), apply()).await.unwrap_err();
    assert!(error.to_string().contains("no database file"), "{error}");
}

#[tokio::test]
async fn the_pool_binds_the_tables_a_migration_makes_and_refuses_undeclared_shared_ones() {
    let s = server().await;
    let mut tenant = bulkhead_testkit::starter_tenant("acme", OffsetDateTime::now_utc());
    tenant.isolation = Isolation::Pool;
    pool::create(&s.servers, &s.region, &s.url, &tenant).await.unwrap();
    let names = PoolNames::of(&s.region);
    let run = |set: Migrations| {
        let s = &s;
        async move {
            migrate::pool(&s.servers, &s.region, &s.url, &set, apply())
                .await
                .map_err(|e| e.to_string())
        }
    };
    let tasks = (
        "0001_tasks.sql",
        "CREATE TABLE tasks (id bigserial PRIMARY KEY, tenant_id uuid NOT NULL, title text); \
         CREATE VIEW open_tasks AS SELECT * FROM tasks;",
    );
    let countries = ("0002_countries.sql", "CREATE TABLE countries (code text PRIMARY KEY);");
    // Without the marker, the whole run is refused: tasks is not made either.
    let error = run(files(&[tasks, countries])).await.unwrap_err();
    assert!(error.contains("public.countries without a tenant_id column"), "{error}");
    let mut conn = s.connect(&names.database).await;
    let none: bool = one(&mut conn, "SELECT to_regclass('public.tasks') IS NULL").await;
    assert!(none, "a refused migration left its tables");

    let countries = (
        "0002_countries.sql",
        "-- bulkhead: shared countries\nCREATE TABLE countries (code text PRIMARY KEY);",
    );
    let done = run(files(&[tasks, countries])).await.unwrap();
    assert_eq!(done.to, 2);
    // Bound as provisioning binds: the verifier finds nothing.
    assert_eq!(verify::pool(&s.servers, &s.region, &s.url).await.unwrap(), []);
    let readable: bool = one(
        &mut conn,
        &format!(
            "SELECT has_table_privilege('{0}', 'countries', 'SELECT') \
               AND NOT has_table_privilege('{0}', 'countries', 'INSERT')",
            names.writers
        ),
    )
    .await;
    assert!(readable, "a shared table is readable, and only readable, by tenants");

    // A policy that would widen the binding is refused; one that narrows
    // it is not.
    let widen = ("0003_widen.sql", "CREATE POLICY everyone ON tasks USING (true);");
    let error = run(files(&[tasks, countries, widen])).await.unwrap_err();
    assert!(error.contains("permissive policy besides bulkhead_tenant"), "{error}");
    let narrow = (
        "0003_narrow.sql",
        "CREATE POLICY titled ON tasks AS RESTRICTIVE USING (title IS NOT NULL);",
    );
    assert_eq!(run(files(&[tasks, countries, narrow])).await.unwrap().to, 3);

    // A file that steps out of the owner's role makes a tenant table the
    // owner does not own, which could switch its row-level security off:
    // refused, the whole run with it.
    let escape = (
        "0004_escape.sql",
        "RESET ROLE; CREATE TABLE audit_trail (tenant_id uuid NOT NULL, what text);",
    );
    let error = run(files(&[tasks, countries, narrow, escape])).await.unwrap_err();
    assert!(error.contains("public.audit_trail belongs to"), "{error}");
    let none: bool = one(&mut conn, "SELECT to_regclass('public.audit_trail') IS NULL").await;
    assert!(none, "the refused run's table stayed");
}
