//! Starting and stopping a control plane.
//!
//! Start-up checks everything it can before it binds a port, in the order a
//! person would fix them: the data directory, the store, the operator token.
//! Each failure is a [`StartError`] whose message says what to change.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bulkhead_audit::{AuditLog, FileWitness, KeyRing, StoreWitness, Witness};
use bulkhead_store::{ControlStore, StoreError, StoreLock, VaultStore};
use bulkhead_vault::{AnomalyDetector, Vault, VaultError};
use thiserror::Error;
use tokio::{sync::watch, task::JoinHandle};

use bulkhead_gateway::{Gateway, Snapshot, record::Recorder};
use bulkhead_meter::{Aggregator, Limiter, RedisOptions, UsageRecorder};

use crate::{
    admission::Admission,
    api::{self, AppState},
    apis::ApiService,
    audit::{self, AuditKeys, AuditService, AuditServiceError},
    clock::{Clock, SystemClock},
    config::Config,
    credentials::Credentials,
    data_dir::{DataDir, DataDirError, write_private},
    events::EventLog,
    gateway::{self, ConfigChanges, GatewayFeed},
    identity::IdentityService,
    metrics::Metrics,
    operator_token::{OperatorTokenError, OperatorTokens},
    provision::{ProvisioningStep, RegionServers, StepServices, standard_steps},
    realms::Realms,
    reconciler::Reconciler,
    tenants::TenantService,
    usage::DecisionRecorder,
    vault::VaultService,
};

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    OperatorToken(#[from] OperatorTokenError),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(
        "{tenants} tenant(s) (e.g. {first_tenant:?}) are in region `{region}`, which is not \
         configured; configure the region again (it is needed to offboard them), or purge \
         those tenants from a server that has it"
    )]
    MissingRegion { region: String, tenants: u64, first_tenant: String },
    #[error(
        "cannot listen on {addr}: {source}; choose another address with --api-listen (or \
         BULKHEAD_API_LISTEN)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot listen for gateway traffic on {addr}: {source}; choose another address with \
         --gateway-listen (or BULKHEAD_GATEWAY_LISTEN)"
    )]
    GatewayBind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use Redis for the gateway's rate limits: {0}; check --redis (BULKHEAD_REDIS)")]
    Redis(String),
    #[error("cannot make the gateway's client for tools: {0}")]
    Tools(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(String),
    #[error("the backup store: {0}")]
    Backup(String),
    #[error(
        "a gateway on its own follows a PostgreSQL store: give --store postgres://... (the \
         control plane's); on the embedded store, run `bulkhead serve` without --role"
    )]
    GatewayAlone,
    #[error(
        "the store does not say where the control plane is reached: start `bulkhead serve` \
         (the control plane) against it once, or give --public-url"
    )]
    NoPublicUrl,
    #[error("{0}")]
    Realms(String),
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Audit(#[from] AuditServiceError),
    #[error(
        "cannot use {path} to keep the audit streams' signed heads: {source}; make it writable, \
         or choose another directory with [audit] witness_dir"
    )]
    Witness {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    ApiUrl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running control plane. Dropping it without [`RunningServer::shutdown`]
/// aborts its tasks.
#[derive(Debug)]
pub struct RunningServer {
    shutdown: Arc<watch::Sender<bool>>,
    fatal: watch::Receiver<Option<String>>,
    http: JoinHandle<std::io::Result<()>>,
    reconciler: JoinHandle<()>,
    lock_keeper: JoinHandle<()>,
    jobs: Vec<JoinHandle<()>>,
    /// The gateway's server, the task that keeps its snapshot current, and
    /// those that store its usage and audit its decisions (they end once
    /// the gateway is gone, after writing what it left).
    gateway: Vec<JoinHandle<()>>,
    audit: (AuditLog, JoinHandle<()>),
    _data_dir: DataDir,
}

/// How often the gateway's whole snapshot is rebuilt, besides each
/// changed tenant's entry at once and entries due by time: only a safety
/// net, since a rebuild reads every tenant (seconds of work at 100,000).
const GATEWAY_REBUILD_EVERY: Duration = Duration::from_secs(600);

/// How often decisions queued by gateways on their own are recorded.
const DRAIN_DECISIONS_EVERY: Duration = Duration::from_secs(1);

/// Usage events and audit records the gateway queues before it drops them.
const GATEWAY_QUEUE: usize = 65_536;

/// How often the store lock is checked.
const LOCK_CHECK_EVERY: Duration = Duration::from_secs(2);

impl RunningServer {
    /// Resolves, with the reason, if the server had to stop by itself: it
    /// lost the store's lock, so another server may be reconciling now.
    pub fn failed(&self) -> impl Future<Output = String> + Send + 'static {
        let mut fatal = self.fatal.clone();
        async move {
            let reason = fatal.wait_for(Option::is_some).await.ok().and_then(|r| r.clone());
            match reason {
                Some(reason) => reason,
                // The keeper ended without a reason (a clean shutdown).
                None => std::future::pending().await,
            }
        }
    }

    /// Stops taking requests, lets requests in flight finish, stops the
    /// reconciler between steps.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.reconciler.await;
        if let Ok(Err(error)) = self.http.await {
            tracing::warn!(%error, "API server ended with an error");
        }
        for job in self.jobs.into_iter().chain(self.gateway) {
            let _ = job.await;
        }
        // Last: whatever was recorded until now is written and signed.
        let (audit, writer) = self.audit;
        audit.stop().await;
        let _ = writer.await;
        let _ = self.lock_keeper.await;
    }
}

/// Holds the store's lock and checks that it is still held. If it is lost
/// (the PostgreSQL session holding it died), the server stops at once:
/// another server may have taken it, and two reconcilers must never run.
async fn keep_lock(
    mut lock: StoreLock,
    shutdown: Arc<watch::Sender<bool>>,
    fatal: watch::Sender<Option<String>>,
) {
    let mut stopping = shutdown.subscribe();
    let mut every = tokio::time::interval(LOCK_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = async { let _ = stopping.wait_for(|stop| *stop).await; } => return,
            _ = every.tick() => {
                if !lock.still_held().await {
                    let reason = "lost the control store's lock (its PostgreSQL session ended); \
                                  stopping so that two servers never reconcile at once";
                    tracing::error!("{reason}");
                    let _ = shutdown.send(true);
                    let _ = fatal.send(Some(reason.to_owned()));
                    return;
                }
            }
        }
    }
}

/// A background job: its name in `bulkhead_background_job_runs_total`, and
/// what its log lines say when it did something and when it failed.
struct Job {
    name: &'static str,
    done: &'static str,
    failed: &'static str,
}

/// Runs `work` every `every` until shutdown, counting each run in the
/// metrics and logging what it did (a run that did nothing is quiet). The
/// background jobs (revoking expired leases, rotating data and realm keys
/// due by policy, audit retention) each get their own, so a long rotation
/// never delays a revocation.
async fn every<F, Fut, E>(
    every: Duration,
    mut stopping: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    job: Job,
    mut work: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, E>>,
    E: std::fmt::Display,
{
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = async { let _ = stopping.wait_for(|stop| *stop).await; } => return,
            _ = ticks.tick() => {
                let result = work().await;
                metrics.job_ran(job.name, result.is_ok());
                match result {
                    Ok(0) => {}
                    Ok(count) => tracing::info!(count, "{}", job.done),
                    Err(error) => tracing::warn!(%error, "{}", job.failed),
                }
            }
        }
    }
}

fn spawn_jobs(
    vault: &Arc<VaultService>,
    identity: &Arc<IdentityService>,
    audit: &Arc<AuditService>,
    decisions: &Arc<DecisionRecorder>,
    config: &Config,
    stopping: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let settings = &config.vault;
    let metrics = vault.metrics();
    let sweeper = Arc::clone(vault);
    let mut jobs = vec![tokio::spawn(every(
        settings.sweep_every,
        stopping.clone(),
        Arc::clone(metrics),
        Job {
            name: "lease_sweep",
            done: "revoked expired database credentials",
            failed: "cannot sweep expired credentials",
        },
        move || {
            let vault = Arc::clone(&sweeper);
            async move { vault.expire_leases().await.map(|n| n as u64) }
        },
    ))];
    if let Some(policy) = settings.rotate_data_keys_every {
        let rotator = Arc::clone(vault);
        jobs.push(tokio::spawn(every(
            settings.rotation_check_every,
            stopping.clone(),
            Arc::clone(metrics),
            Job {
                name: "data_key_rotation",
                done: "rotated data keys due by policy",
                failed: "cannot run scheduled data key rotation",
            },
            move || {
                let vault = Arc::clone(&rotator);
                async move { vault.rotate_due_keys(policy).await.map(|n| n as u64) }
            },
        )));
    }
    if let Some(policy) = config.rotate_realm_keys_every {
        let identity = Arc::clone(identity);
        jobs.push(tokio::spawn(every(
            settings.rotation_check_every.min(policy),
            stopping.clone(),
            Arc::clone(metrics),
            Job {
                name: "realm_key_rotation",
                done: "rotated realm keys due by policy",
                failed: "cannot run scheduled realm key rotation",
            },
            move || {
                let identity = Arc::clone(&identity);
                async move { identity.rotate_due_keys(policy).await.map(|n| n as u64) }
            },
        )));
    }
    let recorder = Arc::clone(decisions);
    jobs.push(tokio::spawn(every(
        DRAIN_DECISIONS_EVERY,
        stopping.clone(),
        Arc::clone(metrics),
        Job {
            name: "gateway_decisions",
            done: "recorded decisions queued by gateways",
            failed: "cannot record the decisions gateways queued",
        },
        move || {
            let recorder = Arc::clone(&recorder);
            async move { recorder.drain_queue().await }
        },
    )));
    let retention = Arc::clone(audit);
    jobs.push(tokio::spawn(every(
        config.audit_retention_every,
        stopping.clone(),
        Arc::clone(metrics),
        Job {
            name: "audit_retention",
            done: "deleted audit events past their plan's retention",
            failed: "cannot apply audit retention",
        },
        move || {
            let audit = Arc::clone(&retention);
            async move { audit.apply_retention().await }
        },
    )));
    jobs
}

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Where the gateway's decisions go for the tenants' audit streams.
enum Decisions {
    /// Recorded by this process: the gateway runs beside the control plane.
    Record(Arc<DecisionRecorder>),
    /// Queued in the store for the control plane: a gateway on its own.
    Queue,
}

/// A gateway over `feed` with its snapshot built, and the tasks that store
/// its usage and pass on its decisions (they end once the gateway is gone).
async fn build_gateway(
    config: &Config,
    store: &Arc<dyn ControlStore>,
    clock: &Arc<dyn Clock>,
    feed: &GatewayFeed,
    decisions_to: Decisions,
    secrets: Option<Arc<dyn bulkhead_gateway::mcp::ToolSecrets>>,
) -> Result<(Arc<Gateway>, [JoinHandle<()>; 2]), StartError> {
    let limiter = match &config.gateway_redis {
        None => Limiter::local(),
        Some(redis) => {
            let options = RedisOptions { timeout: redis.timeout, ..RedisOptions::default() };
            Limiter::redis(&redis.url, &redis.prefix, options)
                .await
                .map_err(|e| StartError::Redis(e.to_string()))?
        }
    };
    let (usage, usage_events) = UsageRecorder::channel(GATEWAY_QUEUE);
    let (recorder, decisions) = Recorder::new(usage, GATEWAY_QUEUE);
    let sink = crate::usage::StoreSink(Arc::clone(store));
    let aggregate =
        tokio::spawn(Aggregator::new().run(usage_events, sink, config.usage_flush_every));
    let decide = match decisions_to {
        Decisions::Record(recorder) => {
            tokio::spawn(crate::usage::record_decisions(decisions, recorder))
        }
        Decisions::Queue => {
            tokio::spawn(crate::usage::queue_decisions(decisions, Arc::clone(store)))
        }
    };
    let now = {
        let clock = Arc::clone(clock);
        Arc::new(move || clock.now().unix_timestamp())
    };
    let snapshot = Snapshot::empty(feed.domain());
    // Tools' upstreams are the tenants' to name: no redirect is followed
    // to somewhere they did not name.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment would see every tool's credential.
        .no_proxy()
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| StartError::Tools(e.to_string()))?;
    let tools = bulkhead_gateway::mcp::ToolAccess { client, secrets };
    let ledger = crate::budget::StoreLedger(Arc::clone(store));
    let budgets = bulkhead_meter::Budgets::new(&limiter, Some(Arc::new(ledger)));
    let gateway =
        Gateway::new(snapshot, config.gateway.clone(), limiter, budgets, recorder, now, tools);
    gateway::rebuild(&gateway, feed).await?;
    Ok((gateway, [aggregate, decide]))
}

/// Serves `gateway` on `listener` and keeps its snapshot current from
/// `source`, until `stopping`.
fn run_gateway(
    gateway: Arc<Gateway>,
    feed: Arc<GatewayFeed>,
    source: gateway::Source,
    listener: tokio::net::TcpListener,
    stopping: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(Arc::clone(&gateway).serve(listener, stopping.clone())),
        tokio::spawn(gateway::follow(gateway, feed, source, stopping, GATEWAY_REBUILD_EVERY)),
    ]
}

/// A gateway running on its own (`bulkhead serve --role gateway`).
#[derive(Debug)]
pub struct RunningGateway {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningGateway {
    /// Stops taking requests and lets those in flight finish; what the
    /// gateway recorded is written.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Starts a gateway on its own. It follows the PostgreSQL store a control
/// plane uses (its snapshot rebuilt as the control plane announces
/// changes), keeps serving its last snapshot while the store is
/// unreachable, and queues its decisions in the store for the control
/// plane to record: it holds no keys.
pub async fn start_gateway(config: Config) -> Result<RunningGateway, StartError> {
    if !matches!(config.store, bulkhead_store::StoreLocation::Postgres(_)) {
        return Err(StartError::GatewayAlone);
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = bulkhead_store::open(&config.store).await?;
    let public_url = match &config.public_url {
        Some(url) => url.clone(),
        None => store.public_url().await?.ok_or(StartError::NoPublicUrl)?,
    };
    let realms = Realms::new(&public_url, &config.insecure_jwks_hosts, Arc::clone(&clock))
        .map_err(StartError::Realms)?;
    let feed = Arc::new(GatewayFeed::new(
        Arc::clone(&store),
        Arc::new(realms),
        config.plans.clone(),
        &config.base_domain,
        config.data_dir.join("tenants"),
        Arc::clone(&config.prices),
    ));
    let gateway_bind = |source| StartError::GatewayBind { addr: config.gateway_listen, source };
    let listener =
        tokio::net::TcpListener::bind(config.gateway_listen).await.map_err(gateway_bind)?;
    let addr = listener.local_addr().map_err(gateway_bind)?;
    let (gateway, records) =
        build_gateway(&config, &store, &clock, &feed, Decisions::Queue, None).await?;
    let (shutdown, stopping) = watch::channel(false);
    let mut tasks = run_gateway(gateway, feed, gateway::Source::Store, listener, stopping);
    tasks.extend(records);
    tracing::info!(gateway = %format!("http://{addr}"), store = %store.location(), "gateway ready");
    Ok(RunningGateway { shutdown, tasks })
}

/// Starts a control plane with the standard provisioning steps.
pub async fn start(config: Config) -> Result<RunningServer, StartError> {
    start_with_steps(config, standard_steps).await
}

/// Starts a control plane whose reconciler runs the steps `steps` builds.
pub async fn start_with_steps(
    config: Config,
    steps: impl FnOnce(&StepServices) -> Vec<Arc<dyn ProvisioningStep>>,
) -> Result<RunningServer, StartError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let data_dir = DataDir::open(&config.data_dir)?;
    let store = bulkhead_store::open(&config.store).await?;
    let store_lock = store.lock_exclusive().await?;
    data_dir.bind_store(store.installation_id(uuid::Uuid::new_v4()).await?, &config.store)?;
    for used in store.regions_in_use().await? {
        if config.regions.get(&used.region).is_err() {
            return Err(StartError::MissingRegion {
                region: used.region,
                tenants: used.tenants,
                first_tenant: used.first_tenant,
            });
        }
    }
    // Checked before anything else is written: a wrong master key stops
    // the start with the store untouched.
    let vault_store: Arc<dyn VaultStore> = store.clone();
    let vault = Arc::new(Vault::open(vault_store, &config.vault.master_key, clock.now()).await?);
    // Both keys stay loaded if this fails, so every secret stays readable;
    // `bulkhead vault rotate-master` tries again.
    match vault.resume(clock.now()).await {
        Ok(Some(done)) => {
            tracing::info!(from = %done.from, to = %done.to, rewrapped = done.rewrapped, "finished an interrupted master key rotation");
        }
        Ok(None) => {}
        Err(error) => {
            tracing::error!(%error, "cannot finish the interrupted master key rotation; run `bulkhead vault rotate-master` to retry");
        }
    }
    let operator_tokens =
        OperatorTokens::ensure(store.as_ref(), &data_dir.operator_token(), clock.as_ref()).await?;
    for risk in
        [store.audit_tamper_risk().await?, store.public_connect_risk().await?].into_iter().flatten()
    {
        tracing::warn!("{risk}");
    }
    let audit_keys = Arc::new(
        AuditKeys::open(
            Arc::clone(&store),
            Arc::clone(&vault),
            Arc::clone(&clock),
            &audit::platform_key_path(data_dir.path()),
        )
        .await?,
    );
    let witnesses: Vec<Arc<dyn Witness>> = vec![
        Arc::new(StoreWitness(store.clone())),
        Arc::new(FileWitness::open(&config.audit_witness_dir).map_err(|source| {
            StartError::Witness { path: config.audit_witness_dir.display().to_string(), source }
        })?),
    ];
    let changes = ConfigChanges::default();
    let (events, audit_writer) = {
        let keyring: Arc<dyn KeyRing> = audit_keys.clone();
        let settings = config.audit.clone();
        EventLog::start(store.clone(), keyring, witnesses.clone(), Arc::clone(&clock), settings)
    };
    let events = events.with_changes(changes.clone());
    let audit_log = events.audit().clone();
    let listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .map_err(|source| StartError::Bind { addr: config.api_listen, source })?;
    let api_addr = listener
        .local_addr()
        .map_err(|source| StartError::Bind { addr: config.api_listen, source })?;
    let gateway_bind = |source| StartError::GatewayBind { addr: config.gateway_listen, source };
    let gateway_listener =
        tokio::net::TcpListener::bind(config.gateway_listen).await.map_err(gateway_bind)?;
    let gateway_addr = gateway_listener.local_addr().map_err(gateway_bind)?;
    let public_url = config.public_url.clone().unwrap_or_else(|| format!("http://{api_addr}"));
    // Gateways on their own read it, to name realms' issuers as we do.
    store.set_public_url(&public_url).await?;
    let metrics = Arc::new(Metrics::new());
    let admission = Arc::new(Admission::new(
        Arc::clone(&store),
        AnomalyDetector::new(config.vault.anomaly.clone()),
        Arc::clone(&clock),
        events.clone(),
        Arc::clone(&metrics),
        config.plans.clone(),
    ));
    let identity = Arc::new(IdentityService::new(
        Arc::clone(&store),
        Arc::clone(&vault),
        Arc::clone(&clock),
        &public_url,
        &config.insecure_jwks_hosts,
        events.clone(),
        Arc::clone(&admission),
    )?);
    let servers = RegionServers::default();
    let credentials =
        Arc::new(Credentials::new(Arc::clone(&store), servers.clone(), config.regions.clone()));
    let runtime = match &config.runtime {
        Some(settings) => Some(
            crate::runtime::Runtime::start(
                settings.clone(),
                data_dir.path(),
                Arc::clone(&store),
                Arc::clone(&vault),
                Arc::clone(&credentials),
                Arc::clone(&clock),
                events.clone(),
            )
            .await
            .map_err(StartError::Runtime)?,
        ),
        None => None,
    };
    let verifier = Arc::new(
        crate::verify::Verifier::new(
            Arc::clone(&store),
            servers.clone(),
            config.regions.clone(),
            Arc::clone(&clock),
            data_dir.tenants(),
        )
        .with_gateway(format!("http://{gateway_addr}"), config.base_domain.clone())
        .with_runtime(runtime.clone()),
    );
    let (shutdown, shutdown_rx) = watch::channel(false);
    let migrations = Arc::new(crate::migrations::MigrationService::new(
        Arc::clone(&store),
        servers.clone(),
        config.regions.clone(),
        data_dir.tenants(),
        Arc::clone(&clock),
        events.clone(),
        shutdown_rx.clone(),
    ));
    let backup_store = config
        .backup_store
        .clone()
        .unwrap_or_else(|| bulkhead_backup::Location::Directory(data_dir.path().join("backups")));
    match bulkhead_backup::Storage::remove_interrupted(&backup_store) {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "removed what interrupted backup uploads left"),
        Err(error) => tracing::warn!(%error, "cannot remove what interrupted backup uploads left"),
    }
    let backup_storage = bulkhead_backup::Storage::open(&backup_store)
        .map_err(|e| StartError::Backup(e.to_string()))?;
    // The provisioning steps' own, before the audit service takes it.
    let step_audit_keys = Arc::clone(&audit_keys);
    let (handle, woken) = Reconciler::channel();
    let tenants = Arc::new(TenantService::new(
        Arc::clone(&store),
        config.plans.clone(),
        config.regions.clone(),
        handle,
        Arc::clone(&clock),
        events.clone(),
    ));
    let sealed = Arc::clone(&vault);
    let backup_credentials = Arc::clone(&credentials);
    let vault = Arc::new(VaultService::new(
        Arc::clone(&store),
        vault,
        credentials,
        config.plans.clone(),
        Arc::clone(&clock),
        Arc::clone(&admission),
        Arc::clone(&metrics),
        events.clone(),
    ));
    let apis = Arc::new(ApiService::new(
        Arc::clone(&store),
        Arc::clone(&clock),
        events.clone(),
        Arc::clone(&config.prices),
    ));
    let resources = Arc::new(crate::resources::ResourceService::new(
        Arc::clone(&store),
        Arc::clone(&clock),
        events.clone(),
    ));
    let apps = Arc::new(crate::apps::AppService::new(
        Arc::clone(&store),
        Arc::clone(&clock),
        events.clone(),
        Arc::clone(&sealed),
        runtime.clone(),
    ));
    let rollouts = Arc::new(crate::rollouts::RolloutService::new(
        Arc::clone(&store),
        Arc::clone(&clock),
        events.clone(),
        Arc::clone(&apps),
        runtime.clone(),
    ));
    let audit = Arc::new(AuditService::new(
        Arc::clone(&store),
        audit_keys,
        events.clone(),
        Arc::clone(&clock),
        config.plans.clone(),
        admission,
        witnesses,
    ));
    let backups = Arc::new(
        crate::backups::BackupService::new(
            crate::backups::Sources {
                store: Arc::clone(&store),
                vault: Arc::clone(&sealed),
                credentials: Arc::clone(&backup_credentials),
                audit: Arc::clone(&audit),
                clock: Arc::clone(&clock),
                tenants_dir: data_dir.tenants(),
            },
            crate::backups::ConfigTargets {
                tenants: Arc::clone(&tenants),
                apis: Arc::clone(&apis),
                resources: Arc::clone(&resources),
                apps: Arc::clone(&apps),
            },
            config.plans.clone(),
            Arc::clone(&metrics),
            backup_storage,
            config.regions.clone(),
            events.clone(),
            data_dir.path(),
        )
        .map_err(|e| StartError::Backup(format!("the staging directory: {e}")))?
        .with_departures(crate::backups::DepartureSettings::new(
            &config.backup_schedule,
            runtime.clone(),
        )),
    );
    let services = StepServices {
        store: Arc::clone(&store),
        servers,
        vault: Arc::clone(&sealed),
        credentials: backup_credentials,
        identity: Arc::clone(&identity),
        audit_keys: step_audit_keys,
        audit: audit_log.clone(),
        clock: Arc::clone(&clock),
        backups: backups.clone(),
    };
    let reconciler = Arc::new(Reconciler::new(
        Arc::clone(&store),
        steps(&services),
        config.regions.clone(),
        data_dir.tenants(),
        Arc::clone(&clock),
        Arc::clone(&metrics),
        config.reconciler.clone(),
        events.clone(),
    ));
    let step_names: Arc<[&'static str]> = reconciler.step_names().into();
    let feed = Arc::new(GatewayFeed::new(
        Arc::clone(&store),
        Arc::clone(identity.realms()),
        config.plans.clone(),
        &config.base_domain,
        data_dir.tenants(),
        Arc::clone(&config.prices),
    ));
    let tool_events = events.clone();
    let notices = crate::budget::BudgetNotices::new(
        Arc::clone(&store),
        events.clone(),
        config.budget_webhook.clone(),
    );
    let decision_recorder = Arc::new(DecisionRecorder::new(Arc::clone(&store), events, notices));
    let decisions_to = Decisions::Record(Arc::clone(&decision_recorder));
    let (gateway, gateway_records) = build_gateway(
        &config,
        &store,
        &clock,
        &feed,
        decisions_to,
        Some(Arc::new(gateway::VaultToolSecrets {
            vault: Arc::clone(&sealed),
            store: Arc::clone(&store),
            events: tool_events,
        })),
    )
    .await?;
    metrics.watch_gateway(Arc::clone(&gateway));
    let reconciler_done = Arc::new(AtomicBool::new(false));
    let state = AppState {
        tenants,
        apis,
        resources,
        apps,
        rollouts: Arc::clone(&rollouts),
        vault: Arc::clone(&vault),
        verifier,
        migrations: Arc::clone(&migrations),
        identity: Arc::clone(&identity),
        audit: Arc::clone(&audit),
        backups: Arc::clone(&backups),
        base_domain: config.base_domain.clone(),
        step_names,
        store: Arc::clone(&store),
        operator_tokens,
        metrics: Arc::clone(&metrics),
        reconciler_done: Arc::clone(&reconciler_done),
        rate: Arc::default(),
        about: Arc::new(crate::api::types::ServerStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            api_url: public_url.clone(),
            gateway_url: Some(format!("http://{gateway_addr}")),
            store: store.location(),
            data_dir: data_dir.path().display().to_string(),
            base_domain: config.base_domain.as_str().to_owned(),
            tenants: Default::default(),
        }),
        openapi: Arc::default(),
    };

    let api_url_path = data_dir.api_url();
    write_private(&api_url_path, format!("http://{api_addr}\n").as_bytes()).map_err(|source| {
        StartError::ApiUrl { path: api_url_path.display().to_string(), source }
    })?;

    let shutdown = Arc::new(shutdown);
    let (fatal_tx, fatal) = watch::channel(None);
    let lock_keeper = tokio::spawn(keep_lock(store_lock, Arc::clone(&shutdown), fatal_tx));
    let mut jobs = spawn_jobs(&vault, &identity, &audit, &decision_recorder, &config, &shutdown_rx);
    let scheduler = Arc::clone(&backups);
    let schedule = config.backup_schedule.clone();
    jobs.push(tokio::spawn(every(
        schedule.check_every,
        shutdown_rx.clone(),
        Arc::clone(&metrics),
        Job {
            name: "backup_schedule",
            done: "took and expired scheduled backups",
            failed: "cannot run the backup schedule",
        },
        move || {
            let (backups, schedule) = (Arc::clone(&scheduler), schedule.clone());
            async move { backups.schedule_round(&schedule).await }
        },
    )));
    if let Some(runtime) = runtime {
        jobs.push(tokio::spawn(runtime.run(shutdown_rx.clone())));
        jobs.push(tokio::spawn(rollouts.run(shutdown_rx.clone())));
    }
    migrations.resume().await?;
    let restores = Arc::clone(&backups);
    let source = gateway::Source::InProcess(changes);
    let mut gateway = run_gateway(gateway, feed, source, gateway_listener, shutdown_rx.clone());
    gateway.extend(gateway_records);
    let reconciler = {
        let shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            // Set however the task ends, a panic included, so `/readyz` tells.
            let _done = SetOnDrop(reconciler_done);
            reconciler.run(woken, shutdown).await;
        })
    };
    // In the background: a tenant cut short while being provisioned goes
    // once the reconciler has provisioned it.
    let mut stopping = shutdown_rx.clone();
    jobs.push(tokio::spawn(async move {
        tokio::select! {
            _ = stopping.wait_for(|stop| *stop) => {}
            done = restores.resume() => match done {
                Ok(0) => {}
                Ok(purged) => tracing::info!(purged, "purged tenants whose restore was cut short"),
                Err(error) => tracing::warn!(%error, "cannot clean up after restores cut short"),
            },
        }
    }));
    let http = {
        let mut shutdown = shutdown_rx;
        let app = api::router(state);
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                })
                .await
        })
    };
    tracing::info!(
        api = %format!("http://{api_addr}"),
        gateway = %format!("http://{gateway_addr}"),
        store = %store.location(),
        data_dir = %data_dir.path().display(),
        "control plane ready"
    );
    Ok(RunningServer {
        shutdown,
        fatal,
        http,
        reconciler,
        lock_keeper,
        jobs,
        gateway,
        audit: (audit_log, audit_writer),
        _data_dir: data_dir,
    })
}
