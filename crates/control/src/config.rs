//! The control plane's validated configuration. The `bulkhead` binary builds
//! it from flags, environment and `bulkhead.toml`; this crate never reads
//! any of those itself.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use bulkhead_audit::WriterSettings;
use bulkhead_model::{BaseDomain, DatabaseLocation, Regions};
use bulkhead_store::StoreLocation;
use bulkhead_vault::{AnomalyPolicy, MasterKeySource};

#[derive(Debug, Clone)]
pub struct Config {
    /// Holds the SQLite store (by default), the operator token, the tenants'
    /// directories and embedded databases.
    pub data_dir: PathBuf,
    pub store: StoreLocation,
    /// Where the control API listens; port 0 picks a free port, which is
    /// then written to `<data-dir>/api.url`.
    pub api_listen: SocketAddr,
    /// Where the gateway takes tenants' traffic; port 0 picks a free port.
    pub gateway_listen: SocketAddr,
    /// How the gateway treats its clients.
    pub gateway: bulkhead_gateway::Settings,
    /// Redis that every gateway replica shares rate limits through; `None`
    /// keeps them in this process.
    pub gateway_redis: Option<RedisSettings>,
    /// How often the gateway's usage is written to the store: how old
    /// `bulkhead usage` may be.
    pub usage_flush_every: Duration,
    /// What each model's calls cost (`[prices]`); an API of `type: llm`
    /// may name only models priced here.
    pub prices: std::sync::Arc<bulkhead_model::PriceTable>,
    /// Told when a tenant's model spend passes its soft cap (`[budget]`).
    pub budget_webhook: Option<crate::budget::WebhookSettings>,
    /// Where tenants' backups are kept (`[backup] store`); `None`:
    /// `<data-dir>/backups`.
    pub backup_store: Option<bulkhead_backup::Location>,
    /// How the backup scheduler runs (`[backup]`).
    pub backup_schedule: crate::backups::ScheduleSettings,
    /// The plans tenants are on: the built-in ones, with the tools the
    /// configuration grants them (`[[plans.<plan>.tools]]`).
    pub plans: bulkhead_model::PlanCatalog,
    pub base_domain: BaseDomain,
    /// How clients reach this server (`https://bulkhead.example.com`):
    /// realms' issuers are `<public_url>/realms/<tenant>`. Defaults to the
    /// API's own address.
    pub public_url: Option<String>,
    /// External identity providers' hosts that may be reached over plain
    /// http and at private addresses; every other JWKS URL must be https
    /// to a public address.
    pub insecure_jwks_hosts: Vec<String>,
    pub regions: Regions,
    pub reconciler: ReconcilerSettings,
    pub vault: VaultSettings,
    /// Rotate each realm's signing key once its newest key is this old;
    /// `None` never does.
    pub rotate_realm_keys_every: Option<Duration>,
    /// How the audit writer batches and checkpoints.
    pub audit: WriterSettings,
    /// Where each audit stream's last signed head is kept outside the
    /// database (a file per stream), so that rolling the database back is
    /// noticed; `<data-dir>/audit-witness` unless configured.
    pub audit_witness_dir: PathBuf,
    /// How often retention looks for audit events past their plan's
    /// retention.
    pub audit_retention_every: Duration,
    /// Tenants' apps as confined workers; `None` runs none (a server
    /// without the `bulkhead` binary to run as the sandbox helper).
    pub runtime: Option<RuntimeSettings>,
}

/// How the runtime runs tenants' workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// The `bulkhead` binary, run again as each worker's sandbox helper.
    pub helper: PathBuf,
    /// The Unix users given to tenants, one each: `first..=last`.
    pub uids: (u32, u32),
    /// A worker's log rotates past this size; `log_keep` old files stay.
    pub log_max_bytes: u64,
    pub log_keep: usize,
    /// Apps' artifacts must be directories under this one (the operator's;
    /// `<data-dir>/artifacts` unless configured): an app cannot name any
    /// other place on the server.
    pub artifacts: PathBuf,
    /// The life of the database lease a worker of a tenant on PostgreSQL
    /// gets; renewed half way while the worker runs, revoked when it stops.
    pub database_lease: Duration,
}

impl RuntimeSettings {
    /// 100,000 users from 400000: clear of system users and of the
    /// subordinate ranges `useradd` hands out from 100000.
    pub const DEFAULT_UIDS: (u32, u32) = (400_000, 499_999);

    pub fn new(helper: PathBuf, data_dir: &std::path::Path) -> Self {
        Self {
            helper,
            uids: Self::DEFAULT_UIDS,
            log_max_bytes: 10 << 20,
            log_keep: 5,
            artifacts: data_dir.join("artifacts"),
            database_lease: Duration::from_secs(3600),
        }
    }
}

impl Config {
    /// The embedded default in `data_dir`, listening on a free port.
    pub fn for_test(data_dir: PathBuf) -> Self {
        Self {
            store: StoreLocation::Sqlite(data_dir.join("bulkhead.db")),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            gateway_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            gateway: bulkhead_gateway::Settings::default(),
            gateway_redis: None,
            usage_flush_every: DEFAULT_USAGE_FLUSH,
            prices: std::sync::Arc::default(),
            budget_webhook: None,
            backup_store: None,
            backup_schedule: crate::backups::ScheduleSettings::default(),
            plans: bulkhead_model::PlanCatalog::builtin(),
            base_domain: BaseDomain::default(),
            public_url: None,
            insecure_jwks_hosts: Vec::new(),
            regions: Regions::single(DatabaseLocation::Embedded),
            reconciler: ReconcilerSettings {
                first_backoff: Duration::from_millis(10),
                ..ReconcilerSettings::default()
            },
            vault: VaultSettings::in_data_dir(&data_dir),
            rotate_realm_keys_every: Some(DEFAULT_REALM_KEY_ROTATION),
            audit: WriterSettings::default(),
            audit_retention_every: DEFAULT_AUDIT_RETENTION_CHECK,
            audit_witness_dir: default_audit_witness_dir(&data_dir),
            runtime: None,
            data_dir,
        }
    }
}

/// Where shared rate limits live.
#[derive(Clone)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port/db`; may hold a password.
    pub url: zeroize::Zeroizing<String>,
    /// Every key Bulkhead writes starts with this, so one Redis can serve
    /// several installations.
    pub prefix: String,
    /// The longest a decision waits for Redis before the plan's fallback
    /// decides.
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &bulkhead_model::redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Usage is written every 10 seconds unless configured.
pub const DEFAULT_USAGE_FLUSH: Duration = Duration::from_secs(10);

/// The key prefix unless configured.
pub const DEFAULT_REDIS_PREFIX: &str = "bulkhead:";

/// Where the audit streams' witness files are unless configured:
/// `<data-dir>/audit-witness`.
pub fn default_audit_witness_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("audit-witness")
}

/// Retention checks the streams hourly.
pub const DEFAULT_AUDIT_RETENTION_CHECK: Duration = Duration::from_secs(3_600);

/// Realm signing keys are rotated every 90 days unless configured otherwise.
pub const DEFAULT_REALM_KEY_ROTATION: Duration = Duration::from_secs(90 * 86_400);

/// How hard the reconciler works and how patiently it retries.
#[derive(Debug, Clone)]
pub struct ReconcilerSettings {
    /// Tenants reconciled at the same time.
    pub workers: usize,
    /// Attempts at one step before provisioning gives up on it (undo is
    /// retried on every scan until it succeeds).
    pub attempts: u32,
    /// Wait after the first failed attempt; doubled after each further one.
    pub first_backoff: Duration,
    /// Longest one attempt at a step may take before it counts as failed.
    pub step_timeout: Duration,
    /// How often the store is scanned for unsettled tenants, which also
    /// resumes work after a crash or a store outage.
    pub scan_every: Duration,
}

impl Default for ReconcilerSettings {
    fn default() -> Self {
        Self {
            workers: 16,
            attempts: 4,
            first_backoff: Duration::from_millis(250),
            step_timeout: Duration::from_secs(90),
            scan_every: Duration::from_secs(5),
        }
    }
}

/// Where the master key is and how the vault's background work runs.
#[derive(Debug, Clone)]
pub struct VaultSettings {
    pub master_key: MasterKeySource,
    pub anomaly: AnomalyPolicy,
    /// How often expired credential leases are looked for and revoked.
    pub sweep_every: Duration,
    /// Rotate a tenant's data key (and re-encrypt its secrets) once its
    /// latest version is this old; `None` never does.
    pub rotate_data_keys_every: Option<Duration>,
    /// How often tenants are checked for a data key due for rotation.
    pub rotation_check_every: Duration,
}

impl VaultSettings {
    /// The master key in `<data-dir>/master.key`, generated on first start,
    /// and the default policies.
    pub fn in_data_dir(data_dir: &std::path::Path) -> Self {
        Self {
            master_key: MasterKeySource::File { path: data_dir.join("master.key"), create: true },
            anomaly: AnomalyPolicy::default(),
            sweep_every: Duration::from_secs(10),
            rotate_data_keys_every: Some(Duration::from_secs(90 * 86_400)),
            rotation_check_every: Duration::from_secs(600),
        }
    }
}
