//! `bulkhead serve`'s configuration: flags, then environment (both through
//! clap), then `bulkhead.toml`, then defaults; validated into the control
//! plane's [`Config`] before anything starts.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use bulkhead_control::{
    Config, ReconcilerSettings,
    config::{RuntimeSettings, VaultSettings},
};
use bulkhead_model::{
    BaseDomain, DatabaseLocation, DatabasePrefix, DatabaseUrl, Region, RegionName, Regions,
};
use bulkhead_store::StoreLocation;
use bulkhead_vault::{MasterKeySource, ttl::parse_duration};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{
    args::{LogFormat, Sensitive, ServeArgs},
    env,
    exit::CliError,
};

/// `bulkhead.toml`. Unknown keys are errors, so a typo is never silently
/// ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    store: Option<String>,
    api_listen: Option<String>,
    gateway_listen: Option<String>,
    base_domain: Option<String>,
    public_url: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    regions: Vec<FileRegion>,
    #[serde(default)]
    reconciler: FileReconciler,
    #[serde(default)]
    vault: FileVault,
    #[serde(default)]
    identity: FileIdentity,
    #[serde(default)]
    audit: FileAudit,
    #[serde(default)]
    gateway: FileGateway,
    #[serde(default)]
    runtime: FileRuntime,
    /// Each model's price: `[prices."gpt-4o-mini"] input = 150000`,
    /// `output = 600000` (micro-units per million tokens).
    #[serde(default)]
    prices: bulkhead_model::PriceTable,
    #[serde(default)]
    budget: FileBudget,
    #[serde(default)]
    backup: FileBackup,
    /// Tools each plan grants: `[[plans.professional.tools]]`, each a
    /// tool as `kind: Tool` spells it.
    #[serde(default)]
    plans: std::collections::BTreeMap<String, FilePlan>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePlan {
    #[serde(default)]
    tools: Vec<bulkhead_model::ToolSpec>,
}

/// `[budget]`: what happens when a tenant's model spend passes its soft
/// cap, besides the warning header and the audit event.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBudget {
    /// Posted a JSON notice once per tenant and month.
    webhook: Option<String>,
    /// Signs each notice: `Bulkhead-Signature: sha256=<hex HMAC>`.
    webhook_secret: Option<String>,
}

/// `[backup]`: where tenants' backups are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackup {
    /// A directory, or `s3://bucket/prefix` (credentials from the standard
    /// `AWS_*` environment variables); `<data-dir>/backups` unless given.
    store: Option<String>,
    /// An S3-compatible server other than AWS: `https://host:port`.
    endpoint: Option<String>,
    region: Option<String>,
    /// How often due backups are looked for.
    check_every: Option<String>,
    /// Backups taken at once, across tenants.
    concurrency: Option<usize>,
    /// How long a deleted tenant's final snapshot is kept, in days.
    final_snapshot_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRuntime {
    /// `false` runs no apps on this server.
    enabled: Option<bool>,
    /// The Unix users given to tenants, one each: `FIRST-LAST`.
    uids: Option<String>,
    /// A worker's log rotates past this many bytes.
    log_max_bytes: Option<u64>,
    /// Rotated log files kept per worker.
    log_keep: Option<usize>,
    /// Apps' artifacts must be directories under this one.
    artifacts: Option<PathBuf>,
    /// The life of a worker's database lease, renewed half way while the
    /// worker runs.
    database_lease: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGateway {
    /// A client that has not sent a whole request head within this is cut.
    header_read_timeout: Option<String>,
    /// The largest request head, in bytes.
    max_header_bytes: Option<usize>,
    /// Redis shared by every gateway replica for rate limits.
    redis: Option<String>,
    /// Prefix of every key written to that Redis.
    redis_prefix: Option<String>,
    /// The longest a decision waits for Redis, in milliseconds.
    redis_timeout_ms: Option<u64>,
    /// How often usage is written to the store.
    usage_flush_every: Option<String>,
    /// Tenants with series of their own in /metrics.
    metrics_tenant_labels: Option<usize>,
    /// Threads serving gateway clients.
    workers: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAudit {
    /// Events between two checkpoints of a stream.
    checkpoint_every: Option<u64>,
    /// The longest an event waits for its checkpoint, as a duration.
    checkpoint_interval: Option<String>,
    /// Where the streams' last signed heads are kept outside the database.
    witness_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIdentity {
    /// A duration, or "off".
    rotate_keys_every: Option<String>,
    #[serde(default)]
    insecure_jwks_hosts: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileVault {
    master_key_file: Option<PathBuf>,
    /// Distinct tenants one principal may touch within `anomaly_window`.
    anomaly_threshold: Option<usize>,
    anomaly_window: Option<String>,
    anomaly_lockout: Option<bool>,
    credential_sweep_every: Option<String>,
    /// A duration, or "off".
    rotate_data_keys_every: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRegion {
    name: String,
    /// `embedded`, or the URL of a PostgreSQL server.
    databases: String,
    database_prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReconciler {
    workers: Option<usize>,
    attempts: Option<u32>,
}

#[derive(Debug)]
pub struct ServeSettings {
    pub config: Config,
    pub log_format: LogFormat,
}

const DEFAULT_API_LISTEN: &str = "127.0.0.1:7070";
const DEFAULT_GATEWAY_LISTEN: &str = "127.0.0.1:8080";

impl ServeSettings {
    pub fn load(args: &ServeArgs, data_dir_flag: Option<&Path>) -> Result<Self, CliError> {
        let file = read_file(args.config.as_deref())?;
        let data_dir = data_dir_flag
            .map(Path::to_path_buf)
            .or(file.data_dir)
            .unwrap_or_else(env::default_data_dir);
        let store = match args.store.as_ref().map(Sensitive::expose).or(file.store.as_deref()) {
            Some(url) => parse_store(url)?,
            None => StoreLocation::Sqlite(data_dir.join("bulkhead.db")),
        };
        let api_listen = parse_addr(
            "api-listen",
            args.api_listen.as_deref().or(file.api_listen.as_deref()).unwrap_or(DEFAULT_API_LISTEN),
        )?;
        let gateway_listen = parse_addr(
            "gateway-listen",
            args.gateway_listen
                .as_deref()
                .or(file.gateway_listen.as_deref())
                .unwrap_or(DEFAULT_GATEWAY_LISTEN),
        )?;
        let base_domain = match args.base_domain.as_deref().or(file.base_domain.as_deref()) {
            Some(domain) => BaseDomain::parse(domain).map_err(CliError::usage)?,
            None => BaseDomain::default(),
        };
        let public_url = match args.public_url.as_deref().or(file.public_url.as_deref()) {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Some(url.trim_end_matches('/').to_owned())
            }
            Some(url) => {
                return Err(CliError::usage(format!(
                    "public url {url:?} is not an http(s) URL such as https://bulkhead.example.com"
                )));
            }
            None => None,
        };
        let regions = if file.regions.is_empty() {
            // Tenant databases live where the control state lives, unless
            // regions say otherwise.
            Regions::single(match &store {
                StoreLocation::Postgres(url) => DatabaseLocation::Postgres(url.clone()),
                StoreLocation::Sqlite(_) => DatabaseLocation::Embedded,
            })
        } else {
            let regions = file.regions.iter().map(parse_region).collect::<Result<_, _>>()?;
            Regions::new(regions).map_err(|e| CliError::usage(e.to_string()))?
        };
        let defaults = ReconcilerSettings::default();
        let reconciler = ReconcilerSettings {
            workers: file.reconciler.workers.unwrap_or(defaults.workers),
            attempts: file.reconciler.attempts.unwrap_or(defaults.attempts),
            ..defaults
        };
        if reconciler.workers == 0 || reconciler.attempts == 0 {
            return Err(CliError::usage(
                "reconciler.workers and reconciler.attempts must be at least 1",
            ));
        }
        let log_format = args.log_format.or(file.log_format).unwrap_or(LogFormat::Text);
        let inline_key = std::env::var(env::MASTER_KEY).ok().filter(|k| !k.is_empty());
        let vault = vault_settings(&file.vault, args, inline_key.map(Zeroizing::new), &data_dir)?;
        let rotate_realm_keys_every = match file.identity.rotate_keys_every.as_deref() {
            Some("off") => None,
            Some(every) => Some(
                parse_duration(every)
                    .map_err(|e| CliError::usage(format!("identity.rotate_keys_every: {e}")))?,
            ),
            None => Some(bulkhead_control::config::DEFAULT_REALM_KEY_ROTATION),
        };
        let mut audit = bulkhead_audit::WriterSettings::default();
        if let Some(every) = file.audit.checkpoint_every {
            if every == 0 {
                return Err(CliError::usage("audit.checkpoint_every must be at least 1"));
            }
            audit.checkpoint_every = every;
        }
        let mut gateway = bulkhead_gateway::Settings::default();
        if let Some(timeout) = file.gateway.header_read_timeout.as_deref() {
            gateway.header_read_timeout = parse_duration(timeout)
                .map_err(|e| CliError::usage(format!("gateway.header_read_timeout: {e}")))?;
        }
        if let Some(labels) = file.gateway.metrics_tenant_labels {
            gateway.metrics_tenant_labels = labels;
        }
        if let Some(workers) = file.gateway.workers {
            if !(1..=256).contains(&workers) {
                return Err(CliError::usage(format!(
                    "gateway.workers is {workers}; give 1 to 256 (default: one per core)"
                )));
            }
            gateway.workers = workers;
        }
        if let Some(bytes) = file.gateway.max_header_bytes {
            if !(8_192..=1_048_576).contains(&bytes) {
                return Err(CliError::usage(format!(
                    "gateway.max_header_bytes is {bytes}; give 8192 to 1048576"
                )));
            }
            gateway.max_header_bytes = bytes;
        }
        let usage_flush_every = match file.gateway.usage_flush_every.as_deref() {
            None => bulkhead_control::config::DEFAULT_USAGE_FLUSH,
            Some(every) => parse_duration(every)
                .map_err(|e| CliError::usage(format!("gateway.usage_flush_every: {e}")))?,
        };
        let redis_url =
            args.redis.as_ref().map(|r| r.expose().to_owned()).or(file.gateway.redis.clone());
        let gateway_redis = match redis_url {
            None => None,
            Some(url) if url.starts_with("redis://") => {
                Some(bulkhead_control::config::RedisSettings {
                    url: Zeroizing::new(url),
                    prefix: file.gateway.redis_prefix.clone().unwrap_or_else(|| {
                        bulkhead_control::config::DEFAULT_REDIS_PREFIX.to_owned()
                    }),
                    timeout: std::time::Duration::from_millis(
                        file.gateway.redis_timeout_ms.unwrap_or(25).clamp(1, 10_000),
                    ),
                })
            }
            Some(url) => {
                return Err(CliError::usage(format!(
                    "--redis {} is not a Redis URL; give redis://[:password@]host:port[/db]",
                    bulkhead_model::redact_url(&url)
                )));
            }
        };
        if let Some(interval) = file.audit.checkpoint_interval.as_deref() {
            audit.checkpoint_interval = parse_duration(interval)
                .map_err(|e| CliError::usage(format!("audit.checkpoint_interval: {e}")))?;
        }
        let audit_witness_dir = file
            .audit
            .witness_dir
            .clone()
            .unwrap_or_else(|| bulkhead_control::config::default_audit_witness_dir(&data_dir));
        let runtime = runtime_settings(&file.runtime, &data_dir)?;
        let backup_schedule = backup_schedule(&file.backup, gateway.metrics_tenant_labels)?;
        Ok(Self {
            config: Config {
                runtime,
                data_dir,
                store,
                api_listen,
                gateway_listen,
                gateway,
                gateway_redis,
                usage_flush_every,
                prices: std::sync::Arc::new(file.prices.clone()),
                budget_webhook: budget_webhook(&file.budget)?,
                backup_schedule,
                backup_store: match &file.backup.store {
                    Some(store) => Some(
                        bulkhead_backup::Location::parse(
                            store,
                            file.backup.endpoint.clone(),
                            file.backup.region.clone(),
                        )
                        .map_err(|e| CliError::usage(format!("backup.store: {e}")))?,
                    ),
                    None if file.backup.endpoint.is_some() || file.backup.region.is_some() => {
                        return Err(CliError::usage(
                            "backup.endpoint and backup.region are for backup.store = \"s3://...\"",
                        ));
                    }
                    None => None,
                },
                plans: {
                    let tools =
                        file.plans.iter().map(|(p, f)| (p.clone(), f.tools.clone())).collect();
                    bulkhead_model::PlanCatalog::builtin()
                        .with_tools(&tools)
                        .map_err(CliError::usage)?
                },
                base_domain,
                public_url,
                insecure_jwks_hosts: if args.insecure_jwks_hosts.is_empty() {
                    file.identity.insecure_jwks_hosts.clone()
                } else {
                    args.insecure_jwks_hosts.clone()
                },
                regions,
                reconciler,
                vault,
                rotate_realm_keys_every,
                audit,
                audit_retention_every: bulkhead_control::config::DEFAULT_AUDIT_RETENTION_CHECK,
                audit_witness_dir,
            },
            log_format,
        })
    }
}

impl std::fmt::Debug for FileBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBudget")
            .field("webhook", &self.webhook.as_deref().map(bulkhead_model::redact_url))
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn budget_webhook(
    file: &FileBudget,
) -> Result<Option<bulkhead_control::budget::WebhookSettings>, CliError> {
    let Some(url) = &file.webhook else {
        if file.webhook_secret.is_some() {
            return Err(CliError::usage("budget.webhook_secret is set without budget.webhook"));
        }
        return Ok(None);
    };
    let parsed = reqwest::Url::parse(url).ok().filter(|u| matches!(u.scheme(), "http" | "https"));
    if parsed.is_none() {
        return Err(CliError::usage(format!(
            "budget.webhook {} is not an http(s) URL; give https://host/path",
            bulkhead_model::redact_url(url)
        )));
    }
    Ok(Some(bulkhead_control::budget::WebhookSettings {
        url: url.clone(),
        secret: file.webhook_secret.clone().map(zeroize::Zeroizing::new),
    }))
}

fn runtime_settings(
    file: &FileRuntime,
    data_dir: &Path,
) -> Result<Option<RuntimeSettings>, CliError> {
    if file.enabled == Some(false) {
        return Ok(None);
    }
    let helper = std::env::current_exe().map_err(|e| {
        CliError::usage(format!("cannot find the bulkhead binary to run workers with: {e}"))
    })?;
    let mut settings = RuntimeSettings::new(helper, data_dir);
    if let Some(artifacts) = &file.artifacts {
        if !artifacts.is_absolute() {
            return Err(CliError::usage(format!(
                "runtime.artifacts {} is not an absolute path",
                artifacts.display()
            )));
        }
        settings.artifacts = artifacts.clone();
    }
    if let Some(uids) = &file.uids {
        let bad = || {
            CliError::usage(format!(
                "runtime.uids {uids:?}: give FIRST-LAST, such as 400000-499999 (above 1000, at most 4294967294)"
            ))
        };
        let (first, last) = uids.split_once('-').ok_or_else(bad)?;
        let (first, last): (u32, u32) =
            (first.trim().parse().map_err(|_| bad())?, last.trim().parse().map_err(|_| bad())?);
        if first <= 1000 || last < first || last == u32::MAX {
            return Err(bad());
        }
        settings.uids = (first, last);
    }
    if let Some(bytes) = file.log_max_bytes {
        if !(4096..=1 << 40).contains(&bytes) {
            return Err(CliError::usage(format!(
                "runtime.log_max_bytes is {bytes}; give 4096 or more"
            )));
        }
        settings.log_max_bytes = bytes;
    }
    if let Some(keep) = file.log_keep {
        if keep > 100 {
            return Err(CliError::usage(format!("runtime.log_keep is {keep}; give 0 to 100")));
        }
        settings.log_keep = keep;
    }
    if let Some(lease) = &file.database_lease {
        let lease = parse_duration(lease)
            .map_err(|e| CliError::usage(format!("runtime.database_lease: {e}")))?;
        if lease < std::time::Duration::from_secs(30) {
            return Err(CliError::usage(
                "runtime.database_lease is shorter than 30s; give 1h, say (renewed half way, \
                 or 20s before it ends)",
            ));
        }
        settings.database_lease = lease;
    }
    Ok(Some(settings))
}

fn vault_settings(
    file: &FileVault,
    args: &ServeArgs,
    inline_key: Option<Zeroizing<String>>,
    data_dir: &Path,
) -> Result<VaultSettings, CliError> {
    let mut vault = VaultSettings::in_data_dir(data_dir);
    vault.master_key = match (&args.master_key_file, inline_key, &file.master_key_file) {
        (Some(_), Some(_), _) => {
            return Err(CliError::usage(format!(
                "both --master-key-file (or {}) and {} are set; give the master key one way",
                env::MASTER_KEY_FILE,
                env::MASTER_KEY
            )));
        }
        (Some(path), None, _) => MasterKeySource::File { path: path.clone(), create: false },
        (None, Some(key), _) => MasterKeySource::Inline(key),
        (None, None, Some(path)) => MasterKeySource::File { path: path.clone(), create: false },
        (None, None, None) => vault.master_key,
    };
    let duration = |key: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| CliError::usage(format!("vault.{key}: {e}")))
    };
    if let Some(threshold) = file.anomaly_threshold {
        if threshold == 0 {
            return Err(CliError::usage("vault.anomaly_threshold must be at least 1"));
        }
        vault.anomaly.max_tenants = threshold;
    }
    if let Some(window) = duration("anomaly_window", &file.anomaly_window)? {
        vault.anomaly.window = window;
    }
    if let Some(lockout) = file.anomaly_lockout {
        vault.anomaly.lockout = lockout;
    }
    if let Some(every) = duration("credential_sweep_every", &file.credential_sweep_every)? {
        vault.sweep_every = every;
    }
    match file.rotate_data_keys_every.as_deref() {
        Some("off") => vault.rotate_data_keys_every = None,
        other => {
            let value = other.map(str::to_owned);
            if let Some(every) = duration("rotate_data_keys_every", &value)? {
                vault.rotate_data_keys_every = Some(every);
                // Checked often enough for the policy to hold.
                vault.rotation_check_every = vault.rotation_check_every.min(every);
            }
        }
    }
    Ok(vault)
}

fn read_file(explicit: Option<&Path>) -> Result<FileConfig, CliError> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => {
            let implicit = PathBuf::from("bulkhead.toml");
            if !implicit.exists() {
                return Ok(FileConfig::default());
            }
            implicit
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CliError::usage(format!("cannot read configuration file {}: {e}", path.display()))
    })?;
    toml::from_str(&text)
        .map_err(|e| CliError::usage(format!("configuration file {}: {e}", path.display())))
}

pub fn parse_store(url: &str) -> Result<StoreLocation, CliError> {
    if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
        if path.is_empty() {
            return Err(CliError::usage(
                "store url sqlite:// needs a file path, e.g. sqlite:///var/lib/bulkhead/bulkhead.db",
            ));
        }
        return Ok(StoreLocation::Sqlite(PathBuf::from(path)));
    }
    DatabaseUrl::parse(url).map(StoreLocation::Postgres).map_err(|_| {
        CliError::usage(format!(
            "store {} is not a store url; use postgres://user@host:port/database or sqlite://path",
            bulkhead_model::redact_url(url)
        ))
    })
}

fn parse_addr(flag: &str, value: &str) -> Result<SocketAddr, CliError> {
    value.parse().map_err(|_| {
        CliError::usage(format!(
            "--{flag} {value:?} is not an address; expected IP:PORT such as 127.0.0.1:7070"
        ))
    })
}

fn parse_region(region: &FileRegion) -> Result<Region, CliError> {
    let name = RegionName::parse(&region.name).map_err(CliError::usage)?;
    let databases =
        if region.databases == "embedded" {
            DatabaseLocation::Embedded
        } else {
            DatabaseLocation::Postgres(DatabaseUrl::parse(&region.databases).map_err(|e| {
                CliError::usage(format!("region `{name}`: {e}; or use \"embedded\""))
            })?)
        };
    let prefix = region
        .database_prefix
        .as_deref()
        .map(DatabasePrefix::parse)
        .transpose()
        .map_err(|e| CliError::usage(format!("region `{name}`: {e}")))?;
    Ok(Region::new(name, databases, prefix))
}

fn backup_schedule(
    file: &FileBackup,
    tenant_labels: usize,
) -> Result<bulkhead_control::backups::ScheduleSettings, CliError> {
    let mut settings =
        bulkhead_control::backups::ScheduleSettings { tenant_labels, ..Default::default() };
    if let Some(every) = file.check_every.as_deref() {
        settings.check_every = parse_duration(every)
            .map_err(|e| CliError::usage(format!("backup.check_every: {e}")))?;
    }
    if let Some(concurrency) = file.concurrency {
        if !(1..=64).contains(&concurrency) {
            return Err(CliError::usage("backup.concurrency must be 1 to 64"));
        }
        settings.concurrency = concurrency;
    }
    if let Some(days) = file.final_snapshot_days {
        if !(1..=3650).contains(&days) {
            return Err(CliError::usage(
                "backup.final_snapshot_days must be 1 to 3650 (to keep nothing of a tenant, \
                 delete it with --purge)",
            ));
        }
        settings.final_snapshot_days = days;
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            config: None,
            store: None,
            api_listen: None,
            gateway_listen: None,
            redis: None,
            role: crate::args::Role::All,
            base_domain: None,
            log_format: None,
            master_key_file: None,
            public_url: None,
            insecure_jwks_hosts: Vec::new(),
        }
    }

    fn with_file(toml: &str, args: ServeArgs) -> Result<ServeSettings, CliError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bulkhead.toml");
        std::fs::write(&path, toml).unwrap();
        ServeSettings::load(&ServeArgs { config: Some(path), ..args }, None)
    }

    #[test]
    fn defaults_are_embedded() {
        let dir = tempfile::tempdir().unwrap();
        let settings = ServeSettings::load(&args(), Some(dir.path())).unwrap();
        let config = settings.config;
        assert_eq!(config.store, StoreLocation::Sqlite(dir.path().join("bulkhead.db")));
        assert_eq!(config.api_listen.to_string(), "127.0.0.1:7070");
        assert_eq!(config.regions.default_region().databases, DatabaseLocation::Embedded);
        assert_eq!(settings.log_format, LogFormat::Text);
    }

    #[test]
    fn a_postgres_store_puts_tenant_databases_on_the_same_server() {
        let settings = ServeSettings::load(
            &ServeArgs { store: Some("postgres://u:pw@db/bulkhead".into()), ..args() },
            Some(Path::new("/tmp/x")),
        )
        .unwrap();
        assert!(matches!(
            settings.config.regions.default_region().databases,
            DatabaseLocation::Postgres(_)
        ));
    }

    #[test]
    fn final_snapshot_days_are_read_and_bounded() {
        let settings = with_file("[backup]\nfinal_snapshot_days = 30\n", args()).unwrap();
        assert_eq!(settings.config.backup_schedule.final_snapshot_days, 30);
        for bad in ["0", "3651"] {
            let toml = format!("[backup]\nfinal_snapshot_days = {bad}\n");
            let error = with_file(&toml, args()).err().unwrap().to_string();
            assert!(error.contains("1 to 3650") && error.contains("--purge"), "{error}");
        }
    }

    #[test]
    fn flags_beat_the_file() {
        let toml = "api_listen = \"127.0.0.1:9000\"\nbase_domain = \"file.example\"\nlog_format = \"json\"";
        let settings =
            with_file(toml, ServeArgs { api_listen: Some("127.0.0.1:9001".into()), ..args() })
                .unwrap();
        assert_eq!(settings.config.api_listen.to_string(), "127.0.0.1:9001");
        assert_eq!(settings.config.base_domain.as_str(), "file.example");
        assert_eq!(settings.log_format, LogFormat::Json);
    }

    #[test]
    fn regions_from_the_file() {
        let toml = r#"
            [[regions]]
            name = "eu"
            databases = "postgres://postgres@eu-db/postgres"
            database_prefix = "eu_"

            [[regions]]
            name = "edge"
            databases = "embedded"
        "#;
        let settings = with_file(toml, args()).unwrap();
        let names: Vec<_> =
            settings.config.regions.all().iter().map(|r| r.name.to_string()).collect();
        assert_eq!(names, ["eu", "edge"]);
        assert_eq!(settings.config.regions.default_region().database_prefix.as_str(), "eu_");
    }

    #[test]
    fn bad_configuration_is_named() {
        let cases = [
            ("api_lsiten = \"x\"", "unknown field `api_lsiten`"),
            ("api_listen = \"localhost\"", "is not an address"),
            ("store = \"mysql://u:secret@h/db\"", "not a store url"),
            ("base_domain = \"a b\"", "not a DNS name"),
            ("[[regions]]\nname = \"EU\"\ndatabases = \"embedded\"", "region name"),
            ("[[regions]]\nname = \"eu\"\ndatabases = \"mysql://h\"", "region `eu`"),
            ("[reconciler]\nworkers = 0", "at least 1"),
            ("[vault]\nanomaly_window = \"soon\"", "vault.anomaly_window"),
            ("[vault]\nanomaly_threshold = 0", "at least 1"),
            ("[vault]\nrotate_data_keys_every = \"1y\"", "vault.rotate_data_keys_every"),
            ("[vault]\nmaster_kye_file = \"x\"", "unknown field `master_kye_file`"),
            ("[identity]\nrotate_keys_every = \"weekly\"", "identity.rotate_keys_every"),
            ("public_url = \"bulkhead.example.com\"", "not an http(s) URL"),
            ("[gateway]\nworkers = 0", "gateway.workers is 0; give 1 to 256"),
            ("[gateway]\nworkers = 1000", "gateway.workers is 1000; give 1 to 256"),
            ("[gateway]\nmax_header_bytes = 100", "gateway.max_header_bytes is 100; give 8192"),
            ("[gateway]\nheader_read_timeout = \"soon\"", "gateway.header_read_timeout"),
            ("[gateway]\nusage_flush_every = \"often\"", "gateway.usage_flush_every"),
            ("[gateway]\nworkres = 2", "unknown field `workres`"),
        ];
        for (toml, expected) in cases {
            let err = with_file(toml, args()).unwrap_err();
            assert!(err.message.contains(expected), "{toml}: {}", err.message);
            assert!(!err.message.contains("secret"), "{}", err.message);
        }
    }

    #[test]
    fn vault_settings_from_the_file_and_flags() {
        let toml = "[vault]\nanomaly_threshold = 3\nanomaly_window = \"2m\"\nanomaly_lockout = true\n\
                    rotate_data_keys_every = \"off\"\nmaster_key_file = \"/keys/file.key\"";
        let settings = with_file(toml, args()).unwrap();
        let vault = settings.config.vault;
        assert_eq!(vault.anomaly.max_tenants, 3);
        assert_eq!(vault.anomaly.window, std::time::Duration::from_secs(120));
        assert!(vault.anomaly.lockout);
        assert_eq!(vault.rotate_data_keys_every, None);
        assert!(
            matches!(vault.master_key, MasterKeySource::File { ref path, create: false } if path == Path::new("/keys/file.key"))
        );
        let flagged =
            with_file(toml, ServeArgs { master_key_file: Some("/keys/flag.key".into()), ..args() })
                .unwrap();
        assert!(
            matches!(flagged.config.vault.master_key, MasterKeySource::File { ref path, .. } if path == Path::new("/keys/flag.key"))
        );
        let default = ServeSettings::load(&args(), Some(Path::new("/data"))).unwrap();
        assert!(
            matches!(default.config.vault.master_key, MasterKeySource::File { ref path, create: true } if path == Path::new("/data/master.key"))
        );
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let err = ServeSettings::load(
            &ServeArgs { config: Some("/nonexistent/bulkhead.toml".into()), ..args() },
            None,
        )
        .unwrap_err();
        assert!(err.message.contains("cannot read configuration file"));
    }
}
