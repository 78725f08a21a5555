//! The reconciler against real stores, real directories and a real
//! PostgreSQL server, one pass at a time, including the states a crash
//! leaves behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use async_trait::async_trait;
use bulkhead_audit::{KeyRing, WriterSettings};
use bulkhead_control::{
    ReconcilerSettings,
    admission::Admission,
    audit::AuditKeys,
    clock::{Clock, SystemClock},
    credentials::Credentials,
    events::EventLog,
    identity::IdentityService,
    metrics::Metrics,
    provision::{
        ProvisioningStep, RegionServers, StepError, StepServices, StepTarget, TenantBackups,
        standard_steps,
    },
    reconciler::Reconciler,
};
use bulkhead_model::{
    DatabaseLocation, DatabasePrefix, DatabaseUrl, Failure, Isolation, NewTenant, PlanCatalog,
    PlanName, Region, RegionName, Regions, StepRecord, StepStatus, Tenant, TenantId, TenantName,
    TenantState,
};
use bulkhead_store::{ControlStore, StoreLocation};
use bulkhead_testkit::TestDatabase;
use bulkhead_vault::{AnomalyDetector, AnomalyPolicy, MasterKeySource, Vault};
use sqlx::{Connection, PgConnection};

struct Fixture {
    store: Arc<dyn ControlStore>,
    dir: tempfile::TempDir,
    regions: Regions,
    vault: Arc<Vault>,
    audit_keys: Arc<AuditKeys>,
    events: EventLog,
    backups: Arc<BackupCalls>,
}

/// What the reconciler asked of tenants' backups (the backup service, with
/// its snapshots, is the end-to-end tests' to exercise).
#[derive(Debug, Default)]
struct BackupCalls {
    kept_final: Mutex<Vec<TenantId>>,
    destroyed: Mutex<Vec<TenantId>>,
}

#[async_trait]
impl TenantBackups for BackupCalls {
    fn describe(&self) -> String {
        "calls".into()
    }

    async fn keep_final(&self, tenant: &Tenant) -> Result<(), StepError> {
        self.kept_final.lock().unwrap().push(tenant.id);
        Ok(())
    }

    async fn destroy_all(&self, tenant: &Tenant) -> Result<(), StepError> {
        self.destroyed.lock().unwrap().push(tenant.id);
        Ok(())
    }
}

impl Fixture {
    async fn embedded() -> Self {
        Self::with_regions(Regions::single(DatabaseLocation::Embedded)).await
    }

    async fn with_regions(regions: Regions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let location = StoreLocation::Sqlite(dir.path().join("bulkhead.db"));
        let store = bulkhead_store::open(&location).await.unwrap();
        std::fs::create_dir_all(dir.path().join("tenants")).unwrap();
        let source = MasterKeySource::File { path: dir.path().join("master.key"), create: true };
        let vault = Arc::new(Vault::open(store.clone(), &source, SystemClock.now()).await.unwrap());
        let audit_keys = Arc::new(
            AuditKeys::open(
                store.clone(),
                Arc::clone(&vault),
                Arc::new(SystemClock),
                &dir.path().join("audit-platform.key"),
            )
            .await
            .unwrap(),
        );
        let keyring: Arc<dyn KeyRing> = audit_keys.clone();
        let (events, _) = EventLog::start(
            store.clone(),
            keyring,
            vec![Arc::new(bulkhead_audit::StoreWitness(store.clone()))],
            Arc::new(SystemClock),
            WriterSettings::default(),
        );
        Self { store, dir, regions, vault, audit_keys, events, backups: Arc::default() }
    }

    fn tenant_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("tenants").join(name)
    }

    /// The standard steps, with a vault whose master key is in the
    /// fixture's directory.
    async fn standard_steps(&self, servers: RegionServers) -> Vec<Arc<dyn ProvisioningStep>> {
        let vault = Arc::clone(&self.vault);
        let identity = Arc::new(
            IdentityService::new(
                self.store.clone(),
                Arc::clone(&vault),
                Arc::new(SystemClock),
                "http://bulkhead.test",
                &[],
                self.events.clone(),
                Arc::new(Admission::new(
                    self.store.clone(),
                    AnomalyDetector::new(AnomalyPolicy::default()),
                    Arc::new(SystemClock),
                    self.events.clone(),
                    Arc::new(Metrics::new()),
                    PlanCatalog::builtin(),
                )),
            )
            .unwrap(),
        );
        standard_steps(&StepServices {
            store: self.store.clone(),
            servers: servers.clone(),
            vault,
            identity,
            audit_keys: Arc::clone(&self.audit_keys),
            audit: self.events.audit().clone(),
            credentials: Arc::new(Credentials::new(
                self.store.clone(),
                servers,
                self.regions.clone(),
            )),
            clock: Arc::new(SystemClock),
            backups: self.backups.clone(),
        })
    }

    fn reconciler(&self, steps: Vec<Arc<dyn ProvisioningStep>>) -> Reconciler {
        Reconciler::new(
            self.store.clone(),
            steps,
            self.regions.clone(),
            self.dir.path().join("tenants"),
            Arc::new(SystemClock),
            Arc::new(Metrics::new()),
            ReconcilerSettings {
                attempts: 3,
                first_backoff: std::time::Duration::from_millis(1),
                step_timeout: std::time::Duration::from_secs(1),
                ..ReconcilerSettings::default()
            },
            self.events.clone(),
        )
    }

    async fn create(&self, name: &str, isolation: Isolation) -> Tenant {
        let tenant = Tenant::new(
            NewTenant {
                id: TenantId::random(),
                name: TenantName::parse(name).unwrap(),
                plan: PlanName::parse("enterprise").unwrap(),
                isolation,
                region: self.regions.default_region().name.clone(),
                admin_email: None,
                limits: bulkhead_model::TenantLimits::default(),
            },
            SystemClock.now(),
        );
        self.store.insert_tenant(&tenant).await.unwrap();
        tenant
    }

    async fn reload(&self, tenant: &Tenant) -> Option<Tenant> {
        self.store.tenant_by_id(tenant.id).await.unwrap()
    }

    async fn step_states(&self, tenant: &Tenant) -> Vec<(String, StepStatus)> {
        let mut steps: Vec<_> = self
            .store
            .steps(tenant.id)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.step, r.status))
            .collect();
        steps.sort_by(|a, b| a.0.cmp(&b.0));
        steps
    }
}

/// A step that fails its first `failures` applies, then succeeds; its effect
/// is a marker file in the tenant's directory.
#[derive(Debug)]
struct Flaky {
    failures: u32,
    permanent: bool,
    calls: AtomicU32,
}

impl Flaky {
    fn new(failures: u32) -> Arc<Self> {
        Arc::new(Self { failures, permanent: false, calls: AtomicU32::new(0) })
    }
}

#[async_trait]
impl ProvisioningStep for Flaky {
    fn name(&self) -> &'static str {
        "flaky"
    }

    async fn apply(&self, target: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        // Partial effect before failing, like a real step interrupted midway.
        std::fs::write(target.tenant_dir.join("flaky.marker"), b"x").unwrap();
        if call < self.failures {
            let message = format!("flaky failure {}", call + 1);
            return Err(if self.permanent {
                StepError::Permanent(message)
            } else {
                StepError::Transient(message)
            });
        }
        Ok(None)
    }

    async fn undo(&self, target: &StepTarget) -> Result<(), StepError> {
        match std::fs::remove_file(target.tenant_dir.join("flaky.marker")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StepError::Transient(e.to_string()))
            }
            _ => Ok(()),
        }
    }
}

async fn with_flaky(f: &Fixture, step: Arc<Flaky>) -> Vec<Arc<dyn ProvisioningStep>> {
    let mut steps = f.standard_steps(RegionServers::default()).await;
    steps.push(step);
    steps
}

/// Another step, with the calls of its `apply` counted.
#[derive(Debug)]
struct Counted {
    step: Arc<dyn ProvisioningStep>,
    applies: AtomicU32,
}

#[async_trait]
impl ProvisioningStep for Counted {
    fn name(&self) -> &'static str {
        self.step.name()
    }

    async fn apply(&self, target: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
        self.applies.fetch_add(1, Ordering::SeqCst);
        self.step.apply(target).await
    }

    async fn undo(&self, target: &StepTarget) -> Result<(), StepError> {
        self.step.undo(target).await
    }
}

/// The `PRAGMA user_version` and journal mode of a tenant's SQLite database:
/// `1` and `wal` once `create_database` has initialised it.
async fn sqlite_header(path: &Path) -> (i64, String) {
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let (version,): (i64,) =
        sqlx::query_as("PRAGMA user_version").fetch_one(&mut conn).await.unwrap();
    let (mode,): (String,) =
        sqlx::query_as("PRAGMA journal_mode").fetch_one(&mut conn).await.unwrap();
    (version, mode)
}

fn exists(path: &Path) -> bool {
    path.exists()
}

#[tokio::test]
async fn provisions_an_embedded_silo() {
    let f = Fixture::embedded().await;
    let tenant = f.create("acme", Isolation::Silo).await;
    f.reconciler(f.standard_steps(RegionServers::default()).await).reconcile(tenant.id).await;

    let active = f.reload(&tenant).await.unwrap();
    assert_eq!(active.state, TenantState::Active);
    assert!(active.provisioned_at.is_some());
    assert_eq!(active.last_error, None);
    assert!(exists(&f.tenant_dir("acme").join("data.db")));
    let mode = |path: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&f.tenant_dir("acme")), 0o700);
    assert_eq!(mode(&f.tenant_dir("acme").join("data.db")), 0o600);
    assert_eq!(f.step_states(&tenant).await, all_steps(StepStatus::Applied));
    assert_eq!(f.store.data_keys(tenant.id).await.unwrap().len(), 1, "the tenant has a data key");
    // The tenant database is a real SQLite database.
    assert_eq!(sqlite_header(&f.tenant_dir("acme").join("data.db")).await, (1, "wal".into()));
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let f = Fixture::embedded().await;
    let tenant = f.create("acme", Isolation::Silo).await;
    let flaky = Flaky::new(2);
    f.reconciler(with_flaky(&f, flaky.clone()).await).reconcile(tenant.id).await;
    let active = f.reload(&tenant).await.unwrap();
    assert_eq!(active.state, TenantState::Active);
    assert_eq!(active.last_error, None, "success clears the last error");
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_failing_step_fails_the_tenant_and_undoes_everything() {
    let f = Fixture::embedded().await;
    let tenant = f.create("acme", Isolation::Silo).await;
    let flaky = Flaky::new(u32::MAX);
    f.reconciler(with_flaky(&f, flaky.clone()).await).reconcile(tenant.id).await;

    let failed = f.reload(&tenant).await.unwrap();
    assert_eq!(failed.state, TenantState::Failed);
    let failure = failed.failure.unwrap();
    assert_eq!(failure.step, "flaky");
    assert_eq!(failure.reason, "flaky failure 3");
    assert!(failure.undone);
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3, "three attempts, then give up");
    assert!(!exists(&f.tenant_dir("acme")), "the directory and its database are gone");
    assert_eq!(f.step_states(&tenant).await, all_steps(StepStatus::Undone));
    assert!(f.store.data_keys(tenant.id).await.unwrap().is_empty(), "a failed tenant keeps no key");
}

/// Every standard step, by name (sorted, as `step_states` lists them), in
/// `status`.
fn all_steps(status: StepStatus) -> Vec<(String, StepStatus)> {
    [
        "allocate_directory",
        "backup_chain",
        "create_audit_key",
        "create_data_key",
        "create_database",
        "create_realm",
        "database_credentials",
        "migrate_database",
    ]
    .into_iter()
    .map(|step| (step.to_owned(), status))
    .collect()
}

/// A step that never finishes, like DDL on a server that stopped answering.
#[derive(Debug)]
struct Hangs;

#[async_trait]
impl ProvisioningStep for Hangs {
    fn name(&self) -> &'static str {
        "hangs"
    }

    async fn apply(&self, _: &StepTarget) -> Result<Option<serde_json::Value>, StepError> {
        std::future::pending().await
    }

    async fn undo(&self, _: &StepTarget) -> Result<(), StepError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_hanging_step_times_out_and_the_tenant_settles() {
    let f = Fixture::embedded().await;
    let tenant = f.create("acme", Isolation::Silo).await;
    let mut steps = f.standard_steps(RegionServers::default()).await;
    steps.push(Arc::new(Hangs));
    f.reconciler(steps).reconcile(tenant.id).await;
    let failed = f.reload(&tenant).await.unwrap();
    assert_eq!(failed.state, TenantState::Failed);
    let failure = failed.failure.unwrap();
    assert_eq!((failure.step.as_str(), failure.reason.as_str()), ("hangs", "gave up after 1s"));
    assert!(failure.undone);
    assert!(!exists(&f.tenant_dir("acme")));
}

#[tokio::test]
async fn permanent_failures_are_not_retried() {
    let f = Fixture::embedded().await;
    let tenant = f.create("acme", Isolation::Silo).await;
    let flaky = Arc::new(Flaky { failures: u32::MAX, permanent: true, calls: AtomicU32::new(0) });
    f.reconciler(with_flaky(&f, flaky.clone()).await).reconcile(tenant.id).await;
    assert_eq!(f.reload(&tenant).await.unwrap().state, TenantState::Failed);
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn resumes_after_a_crash_between_an_effect_and_its_record() {
    let f = Fixture::embedded().await;
    let tenant = f.create("acme", Isolation::Silo).await;
    // The directory exists (with its owner marker) and the database file was
    // half made, but nothing was recorded: the state a kill -9 right after
    // the effects leaves.
    std::fs::create_dir_all(f.tenant_dir("acme")).unwrap();
    std::fs::write(f.tenant_dir("acme").join(".bulkhead-tenant"), tenant.id.to_string()).unwrap();
    std::fs::write(f.tenant_dir("acme").join("data.db"), b"").unwrap();
    f.reconciler(f.standard_steps(RegionServers::default()).await).reconcile(tenant.id).await;
    assert_eq!(f.reload(&tenant).await.unwrap().state, TenantState::Active);
    // The half-made file was initialised this time, not taken as done.
    assert_eq!(sqlite_header(&f.tenant_dir("acme").join("data.db")).await, (1, "wal".into()));
}

#[tokio::test]
async fn never_adopts_a_leftover_directory() {
    let f = Fixture::embedded().await;
    // Files of an earlier tenant of the same name, e.g. restored by hand.
    std::fs::create_dir_all(f.tenant_dir("acme")).unwrap();
    std::fs::write(f.tenant_dir("acme").join("data.db"), b"someone else's data").unwrap();
    let tenant = f.create("acme", Isolation::Silo).await;
    f.reconciler(f.standard_steps(RegionServers::default()).await).reconcile(tenant.id).await;

    let failed = f.reload(&tenant).await.unwrap();
    assert_eq!(failed.state, TenantState::Failed);
    let failure = failed.failure.unwrap();
    assert_eq!(failure.step, "allocate_directory");
    assert!(failure.reason.contains("not made for this tenant"), "{}", failure.reason);
    assert!(failure.undone);
    let left = std::fs::read(f.tenant_dir("acme").join("data.db")).unwrap();
    assert_eq!(left, b"someone else's data", "the rollback left the files alone");
}

#[tokio::test]
async fn skips_steps_recorded_before_a_crash() {
    let f = Fixture::embedded().await;
    let tenant = f.create("acme", Isolation::Silo).await;
    std::fs::create_dir_all(f.tenant_dir("acme")).unwrap();
    std::fs::write(f.tenant_dir("acme").join(".bulkhead-tenant"), tenant.id.to_string()).unwrap();
    let record = StepRecord {
        step: "allocate_directory".into(),
        status: StepStatus::Applied,
        output: None,
        updated_at: SystemClock.now(),
    };
    f.store.record_step(tenant.id, &record).await.unwrap();
    let mut steps = f.standard_steps(RegionServers::default()).await;
    let mut count = |name: &str| {
        let at = steps.iter().position(|s| s.name() == name).unwrap();
        let counted =
            Arc::new(Counted { step: Arc::clone(&steps[at]), applies: AtomicU32::new(0) });
        steps[at] = counted.clone();
        counted
    };
    let (allocate, database) = (count("allocate_directory"), count("create_database"));
    f.reconciler(steps).reconcile(tenant.id).await;
    assert_eq!(f.reload(&tenant).await.unwrap().state, TenantState::Active);
    assert_eq!(allocate.applies.load(Ordering::SeqCst), 0, "the recorded step is not run again");
    assert_eq!(database.applies.load(Ordering::SeqCst), 1, "the unrecorded ones run once");
}

#[tokio::test]
async fn finishes_a_rollback_interrupted_by_a_crash() {
    let f = Fixture::embedded().await;
    let tenant = f.create("acme", Isolation::Silo).await;
    let reconciler = f.reconciler(f.standard_steps(RegionServers::default()).await);
    reconciler.reconcile(tenant.id).await;
    // Failed at create_database with nothing undone yet.
    let mut failed = f.reload(&tenant).await.unwrap();
    failed.state = TenantState::Failed;
    failed.failure =
        Some(Failure { step: "create_database".into(), reason: "boom".into(), undone: false });
    f.store.update_tenant(&failed).await.unwrap();

    reconciler.reconcile(tenant.id).await;
    let settled = f.reload(&tenant).await.unwrap();
    assert!(settled.failure.unwrap().undone);
    assert!(!exists(&f.tenant_dir("acme")));
}

#[tokio::test]
async fn offboarding_keeps_a_final_snapshot_unless_purged_and_frees_the_name() {
    let f = Fixture::embedded().await;
    let reconciler = f.reconciler(f.standard_steps(RegionServers::default()).await);
    for (name, purge) in [("kept", false), ("purged", true)] {
        let tenant = f.create(name, Isolation::Silo).await;
        reconciler.reconcile(tenant.id).await;
        assert_eq!(f.store.data_keys(tenant.id).await.unwrap().len(), 1);
        let mut offboarding = f.reload(&tenant).await.unwrap();
        offboarding.state = TenantState::Offboarding;
        offboarding.purge_requested = purge;
        f.store.update_tenant(&offboarding).await.unwrap();
        reconciler.reconcile(tenant.id).await;

        assert!(!exists(&f.tenant_dir(name)));
        assert!(f.reload(&tenant).await.is_none(), "the record goes, freeing the name");
        assert!(f.store.data_keys(tenant.id).await.unwrap().is_empty(), "keys destroyed");
        let kept = f.backups.kept_final.lock().unwrap().contains(&tenant.id);
        let destroyed = f.backups.destroyed.lock().unwrap().contains(&tenant.id);
        assert_eq!((kept, destroyed), (!purge, purge));
        let again = f.create(name, Isolation::Silo).await;
        reconciler.reconcile(again.id).await;
        assert_eq!(f.reload(&again).await.unwrap().state, TenantState::Active);
    }
}

/// A region reached as a role that is not a superuser, only CREATEDB and
/// CREATEROLE, as the docs ask of operators.
async fn postgres_region(db: &TestDatabase) -> Regions {
    let admin = format!("{}admin", db.object_prefix);
    let mut conn = PgConnection::connect(&bulkhead_testkit::postgres_admin_url()).await.unwrap();
    let sql = format!("CREATE ROLE \"{admin}\" LOGIN CREATEDB CREATEROLE");
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();
    let url =
        bulkhead_testkit::database_url("postgres").replacen("postgres@", &format!("{admin}@"), 1);
    Regions::new(vec![Region::new(
        RegionName::parse("pg").unwrap(),
        DatabaseLocation::Postgres(DatabaseUrl::parse(&url).unwrap()),
        Some(DatabasePrefix::parse(&db.object_prefix).unwrap()),
    )])
    .unwrap()
}

#[tokio::test]
async fn postgres_silo_gets_a_private_database_and_owner_role() {
    let db = TestDatabase::create().await;
    let f = Fixture::with_regions(postgres_region(&db).await).await;
    let reconciler = f.reconciler(f.standard_steps(RegionServers::default()).await);
    let tenant = f.create("acme-corp", Isolation::Silo).await;
    reconciler.reconcile(tenant.id).await;
    assert_eq!(f.reload(&tenant).await.unwrap().state, TenantState::Active);

    let database = format!("{}acme_corp_{}", db.object_prefix, tenant.id.short());
    let owner = format!("{database}_owner");
    let reader = format!("{database}_read");
    let admin = format!("{}admin", db.object_prefix);
    assert_eq!(
        db.owned_objects().await,
        (vec![database.clone()], vec![owner.clone(), reader.clone(), admin.clone()])
    );

    let mut conn = PgConnection::connect(&bulkhead_testkit::postgres_admin_url()).await.unwrap();
    let (db_owner, public_can_connect, login): (String, bool, bool) = sqlx::query_as(
        "SELECT pg_get_userbyid(d.datdba), has_database_privilege('public', d.datname, 'CONNECT'), \
         r.rolcanlogin FROM pg_database d JOIN pg_roles r ON r.rolname = $2 WHERE d.datname = $1",
    )
    .bind(&database)
    .bind(&owner)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(db_owner, owner);
    assert!(!public_can_connect, "CONNECT is revoked from PUBLIC");
    assert!(!login, "the owner role cannot log in by itself");
    let (reader_can_connect,): (bool,) =
        sqlx::query_as("SELECT has_database_privilege($2, $1, 'CONNECT')")
            .bind(&database)
            .bind(&reader)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(reader_can_connect, "the read-only role may connect");

    let mut offboarding = f.reload(&tenant).await.unwrap();
    offboarding.state = TenantState::Offboarding;
    f.store.update_tenant(&offboarding).await.unwrap();
    reconciler.reconcile(tenant.id).await;
    assert_eq!(db.owned_objects().await, (vec![], vec![admin]));
}

/// PostgreSQL marks a database invalid (connection limit -2) when a DROP
/// DATABASE is interrupted; it can then be neither connected to nor altered.
/// The next offboarding attempt must still drop it, not fail forever.
#[tokio::test]
async fn a_database_an_interrupted_drop_left_invalid_is_still_dropped() {
    let db = TestDatabase::create().await;
    let f = Fixture::with_regions(postgres_region(&db).await).await;
    let reconciler = f.reconciler(f.standard_steps(RegionServers::default()).await);
    let tenant = f.create("acme-corp", Isolation::Silo).await;
    reconciler.reconcile(tenant.id).await;
    let database = format!("{}acme_corp_{}", db.object_prefix, tenant.id.short());
    let mut conn = PgConnection::connect(&bulkhead_testkit::postgres_admin_url()).await.unwrap();
    sqlx::query("UPDATE pg_database SET datconnlimit = -2 WHERE datname = $1")
        .bind(&database)
        .execute(&mut conn)
        .await
        .unwrap();

    let mut offboarding = f.reload(&tenant).await.unwrap();
    offboarding.state = TenantState::Offboarding;
    f.store.update_tenant(&offboarding).await.unwrap();
    reconciler.reconcile(tenant.id).await;
    let admin = format!("{}admin", db.object_prefix);
    assert_eq!(db.owned_objects().await, (vec![], vec![admin]));
    assert!(f.reload(&tenant).await.is_none());
}

#[tokio::test]
async fn postgres_pool_tenants_share_the_region_database() {
    let db = TestDatabase::create().await;
    let f = Fixture::with_regions(postgres_region(&db).await).await;
    let reconciler = f.reconciler(f.standard_steps(RegionServers::default()).await);
    let one = f.create("one", Isolation::Pool).await;
    let two = f.create("two", Isolation::Pool).await;
    reconciler.reconcile(one.id).await;
    reconciler.reconcile(two.id).await;
    let pool = format!("{}pool", db.object_prefix);
    assert_eq!(db.owned_objects().await.0, std::slice::from_ref(&pool));

    let mut offboarding = f.reload(&one).await.unwrap();
    offboarding.state = TenantState::Offboarding;
    f.store.update_tenant(&offboarding).await.unwrap();
    reconciler.reconcile(one.id).await;
    assert!(f.reload(&one).await.is_none());
    assert_eq!(db.owned_objects().await.0, [pool], "one tenant leaving keeps the shared database");
}

#[tokio::test]
async fn an_unreachable_region_fails_the_tenant_cleanly() {
    let regions = Regions::new(vec![Region::new(
        RegionName::parse("nowhere").unwrap(),
        DatabaseLocation::Postgres(
            DatabaseUrl::parse("postgres://postgres@127.0.0.1:1/postgres").unwrap(),
        ),
        None,
    )])
    .unwrap();
    let f = Fixture::with_regions(regions).await;
    let tenant = f.create("acme", Isolation::Silo).await;
    let servers = RegionServers::with_connect_timeout(std::time::Duration::from_millis(300));
    f.reconciler(f.standard_steps(servers).await).reconcile(tenant.id).await;

    let reloaded = f.reload(&tenant).await.unwrap();
    // Undoing create_database needs the server too, so the rollback stays
    // pending (and is retried by every scan) until the region answers.
    assert_eq!(reloaded.state, TenantState::Failed);
    let failure = reloaded.failure.unwrap();
    assert_eq!(failure.step, "create_database");
    assert!(failure.reason.contains("cannot reach"), "{}", failure.reason);
    assert!(!failure.undone);
    assert!(reloaded.last_error.unwrap().contains("undo"));
}

#[tokio::test]
async fn a_tenant_from_before_a_step_existed_gets_it_on_the_next_pass() {
    let f = Fixture::embedded().await;
    let tenant = f.create("acme", Isolation::Silo).await;
    // Provisioned by an older Bulkhead, which had fewer steps.
    let older: Vec<Arc<dyn ProvisioningStep>> = f
        .standard_steps(RegionServers::default())
        .await
        .into_iter()
        .filter(|s| matches!(s.name(), "allocate_directory" | "create_database"))
        .collect();
    f.reconciler(older).reconcile(tenant.id).await;
    assert_eq!(f.reload(&tenant).await.unwrap().state, TenantState::Active);
    assert!(f.store.data_keys(tenant.id).await.unwrap().is_empty());

    f.reconciler(f.standard_steps(RegionServers::default()).await).reconcile(tenant.id).await;
    let upgraded = f.reload(&tenant).await.unwrap();
    assert_eq!(upgraded.state, TenantState::Active);
    assert_eq!(f.step_states(&tenant).await, all_steps(StepStatus::Applied));
    assert_eq!(f.store.data_keys(tenant.id).await.unwrap().len(), 1);
}
