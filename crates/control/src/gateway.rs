//! Feeding the gateway: its snapshot built from the store, and rebuilt for
//! one tenant whenever that tenant changes.
//!
//! Every change that matters to the gateway (a tenant's state, its realm
//! keys and trust, its API keys, its APIs) is recorded as an event on the
//! tenant's audit stream, so the event log is where changes are noticed:
//! [`ConfigChanges`] collects the tenants whose events say so, and
//! [`follow`] rebuilds their entries, in batches, within milliseconds. A
//! What no event announces changes by time (a realm key leaving the JWKS,
//! an external provider's rotated keys): each entry says when it is due to
//! be built again, and a full rebuild now and then is the safety net.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bulkhead_gateway::{ApiKeyConfig, Domain, Gateway, Snapshot, TenantConfig};
use bulkhead_identity::Role;
use bulkhead_model::{
    ApiSpec, GuardrailSpec, PlanCatalog, Tenant, TenantId, TenantState, ToolSpec, Upstream,
};
use bulkhead_store::{
    ApiKeyRecord, ApiRecord, AppRecord, ControlStore, GatewayChanges, RealmKeyRecord, RealmRecord,
    ResourceRecord, StoreError, TrustRecord,
};
use tokio::sync::{Notify, watch};

use crate::{
    apis,
    realms::Realms,
    resources::{self, Resource},
};

/// Whether an event's action changes what the gateway serves for its
/// tenant.
pub fn affects_gateway(action: &str) -> bool {
    action.starts_with("tenant.")
        || action.starts_with("realm.")
        || action.starts_with("api.")
        || action.starts_with("guardrail.")
        || action.starts_with("tool.") && action != "tool.call"
        || action == "apikey.create"
        || action == "apikey.revoke"
        // `app:` upstreams name the app's workers and the tenant's user,
        // which its first start allocates.
        || matches!(
            action,
            "app.deploy" | "app.switch" | "app.start" | "app.stop" | "app.delete" | "app.worker.start"
        )
}

/// Tenants whose gateway entry is out of date, collected until the feed
/// takes them.
#[derive(Debug, Clone, Default)]
pub struct ConfigChanges {
    pending: Arc<Mutex<HashSet<TenantId>>>,
    wake: Arc<Notify>,
}

impl ConfigChanges {
    pub fn tenant(&self, tenant: TenantId) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(tenant);
        }
        self.wake.notify_one();
    }

    /// Waits for changed tenants and takes them all.
    async fn next(&self) -> HashSet<TenantId> {
        loop {
            if let Ok(mut pending) = self.pending.lock()
                && !pending.is_empty()
            {
                return std::mem::take(&mut *pending);
            }
            self.wake.notified().await;
        }
    }
}

/// Builds the gateway's view of tenants from the store.
#[derive(Debug)]
pub struct GatewayFeed {
    store: Arc<dyn ControlStore>,
    realms: Arc<Realms>,
    plans: PlanCatalog,
    domain: Domain,
    /// Where tenants' workers' sockets are, for `app:` upstreams.
    tenants_dir: std::path::PathBuf,
}

/// What one tenant's entry is built from.
#[derive(Debug, Default)]
struct Parts<'a> {
    keys: Vec<&'a RealmKeyRecord>,
    realm: Option<&'a RealmRecord>,
    trust: Option<&'a TrustRecord>,
    api_keys: Vec<&'a ApiKeyRecord>,
    apis: Vec<&'a ApiRecord>,
    apps: Vec<&'a AppRecord>,
    guardrails: Vec<&'a ResourceRecord>,
    tools: Vec<&'a ResourceRecord>,
    /// The tenant's Unix user, which its workers' sockets must belong to.
    uid: Option<u32>,
}

impl GatewayFeed {
    pub fn new(
        store: Arc<dyn ControlStore>,
        realms: Arc<Realms>,
        plans: PlanCatalog,
        base_domain: &bulkhead_model::BaseDomain,
        tenants_dir: std::path::PathBuf,
        prices: Arc<bulkhead_model::PriceTable>,
    ) -> Self {
        let domain = Domain {
            base_domain: base_domain.as_str().to_owned(),
            control_audience: realms.control_audience(),
            prices,
        };
        Self { store, realms, plans, domain, tenants_dir }
    }

    pub fn domain(&self) -> Domain {
        self.domain.clone()
    }

    /// Every served tenant's configuration, in six reads of the store
    /// however many tenants there are.
    pub async fn all(&self) -> Result<Vec<TenantConfig>, StoreError> {
        let tenants = self.store.all_tenants().await?;
        let keys = self.store.all_realm_keys().await?;
        let realms = self.store.all_realms().await?;
        let trusts = self.store.all_trusts().await?;
        let api_keys = self.store.all_unrevoked_api_keys().await?;
        let apis = self.store.all_apis().await?;
        let apps = self.store.all_apps().await?;
        let guardrails = self.store.all_resources(GuardrailSpec::KIND).await?;
        let tools = self.store.all_resources(ToolSpec::KIND).await?;
        let users = self.store.runtime_users().await?;
        let mut parts: HashMap<TenantId, Parts<'_>> = HashMap::new();
        for guardrail in &guardrails {
            parts.entry(guardrail.tenant_id).or_default().guardrails.push(guardrail);
        }
        for tool in &tools {
            parts.entry(tool.tenant_id).or_default().tools.push(tool);
        }
        for app in &apps {
            parts.entry(app.tenant_id).or_default().apps.push(app);
        }
        for (tenant, uid) in &users {
            parts.entry(*tenant).or_default().uid = Some(*uid);
        }
        for key in &keys {
            parts.entry(key.tenant_id).or_default().keys.push(key);
        }
        for realm in &realms {
            parts.entry(realm.tenant_id).or_default().realm = Some(realm);
        }
        for trust in &trusts {
            parts.entry(trust.tenant_id).or_default().trust = Some(trust);
        }
        for key in &api_keys {
            parts.entry(key.tenant_id).or_default().api_keys.push(key);
        }
        for api in &apis {
            parts.entry(api.tenant_id).or_default().apis.push(api);
        }
        let mut configs = Vec::with_capacity(tenants.len());
        let empty = Parts::default();
        for tenant in &tenants {
            let parts = parts.get(&tenant.id).unwrap_or(&empty);
            if let Some(config) = self.config(tenant, parts).await {
                configs.push(config);
            }
        }
        Ok(configs)
    }

    /// The configurations of `ids`, for [`Snapshot::with_tenants`]; a
    /// tenant that cannot be read keeps its entry until the next full
    /// rebuild.
    async fn tenants(&self, ids: &HashSet<TenantId>) -> Vec<(uuid::Uuid, Option<TenantConfig>)> {
        let mut updates = Vec::with_capacity(ids.len());
        for &id in ids {
            match self.tenant(id).await {
                Ok(config) => updates.push((id.0, config)),
                Err(error) => {
                    tracing::warn!(tenant = %id, %error, "cannot read a changed tenant; serving its last entry")
                }
            }
        }
        updates
    }

    /// One tenant's configuration; `None` when the gateway does not serve
    /// it (gone, or in a state other than active and suspended).
    pub async fn tenant(&self, id: TenantId) -> Result<Option<TenantConfig>, StoreError> {
        let Some(tenant) = self.store.tenant_by_id(id).await? else { return Ok(None) };
        let keys = self.store.realm_keys(id).await?;
        let realm = self.store.realm(id).await?;
        let trust = self.store.trust(id).await?;
        let api_keys = self.store.api_keys(id).await?;
        let apis = self.store.apis(id).await?;
        let apps = self.store.apps(id).await?;
        let guardrails = self.store.resources(id, GuardrailSpec::KIND).await?;
        let tools = self.store.resources(id, ToolSpec::KIND).await?;
        let uid = self
            .store
            .runtime_users()
            .await?
            .into_iter()
            .find(|(t, _)| *t == id)
            .map(|(_, uid)| uid);
        let parts = Parts {
            keys: keys.iter().collect(),
            realm: realm.as_ref(),
            trust: trust.as_ref(),
            api_keys: api_keys.iter().filter(|k| k.revoked_at.is_none()).collect(),
            apis: apis.iter().collect(),
            apps: apps.iter().collect(),
            guardrails: guardrails.iter().collect(),
            tools: tools.iter().collect(),
            uid,
        };
        Ok(self.config(&tenant, &parts).await)
    }

    /// Replaces each `app:NAME` upstream with the app's workers' sockets,
    /// each to be answered by the tenant's own Unix user only. An app that
    /// is missing or stopped names a socket nothing answers: the request
    /// gets 502 rather than another route.
    fn resolve_apps(&self, tenant: &Tenant, parts: &Parts<'_>, mut spec: ApiSpec) -> ApiSpec {
        if !spec.upstreams.iter().any(|u| matches!(u, Upstream::App(_))) {
            return spec;
        }
        let run = self.tenants_dir.join(tenant.name.as_str()).join("run");
        let upstreams: Vec<Upstream> = spec
            .upstreams
            .iter()
            .flat_map(|upstream| match upstream {
                Upstream::App(name) => {
                    // The live spec's workers: a new spec's take over only
                    // once they pass their health check (the switch).
                    let live = parts
                        .apps
                        .iter()
                        .find(|a| a.name == name.as_str() && a.running)
                        .and_then(|a| crate::apps::spec_and_live(a).ok())
                        .map(|(_, live)| live);
                    // No user yet: uid 0 is never a worker's, so nothing passes.
                    let uid = parts.uid.unwrap_or(0);
                    let sockets: Vec<String> = match &live {
                        Some(spec) => {
                            (0..spec.workers).map(|i| crate::apps::socket_name(spec, i)).collect()
                        }
                        None => vec![format!("{name}-none.sock")],
                    };
                    sockets
                        .into_iter()
                        .map(|socket| Upstream::Worker {
                            path: run.join(socket).display().to_string(),
                            uid,
                        })
                        .collect::<Vec<_>>()
                }
                other => vec![other.clone()],
            })
            .collect();
        spec.upstreams = upstreams.into();
        spec
    }

    async fn config(&self, tenant: &Tenant, parts: &Parts<'_>) -> Option<TenantConfig> {
        let suspended = match tenant.state {
            TenantState::Active => false,
            TenantState::Suspended => true,
            _ => return None,
        };
        let realm = match parts.realm {
            None => None,
            // Each API checks the audience it requires.
            Some(realm) => match self.realms.realm_trust_from(
                tenant,
                parts.keys.iter().copied(),
                Some(realm),
                None,
            ) {
                Ok(trust) => Some(Box::new(trust)),
                Err(error) => {
                    tracing::warn!(tenant = %tenant.name, %error, "cannot read the tenant's realm keys; its tokens are refused at the gateway");
                    None
                }
            },
        };
        let external = match parts.trust {
            None => None,
            Some(record) => match self.realms.external_trust(tenant, record, false).await {
                Ok(trust) => Some(Box::new(trust)),
                Err(error) => {
                    tracing::warn!(tenant = %tenant.name, %error, "cannot load the trusted provider's keys; its tokens are refused at the gateway until they load");
                    None
                }
            },
        };
        let api_keys = parts
            .api_keys
            .iter()
            .filter_map(|k| {
                Some(ApiKeyConfig {
                    hash: k.key_hash.as_slice().try_into().ok()?,
                    id: k.id,
                    name: k.name.clone(),
                    roles: k.roles.split(',').filter_map(Role::parse).collect(),
                    expires_at: k.expires_at.map(time::OffsetDateTime::unix_timestamp),
                })
            })
            .collect();
        let apis = parts
            .apis
            .iter()
            .filter_map(|record| match apis::decode(record) {
                Ok(spec) => Some(self.resolve_apps(tenant, parts, spec)),
                Err(error) => {
                    tracing::error!(tenant = %tenant.name, api = %record.name, %error, "a stored API is unreadable; it is not served");
                    None
                }
            })
            .collect();
        // A guardrail is a promise about what reaches upstreams: one that
        // cannot be read stops the tenant being served, not the guardrail
        // being applied.
        let mut guardrails = Vec::with_capacity(parts.guardrails.len());
        for record in &parts.guardrails {
            match resources::decode::<GuardrailSpec>(record) {
                Ok(spec) => guardrails.push(spec),
                Err(error) => {
                    tracing::error!(tenant = %tenant.name, guardrail = %record.name, %error, "a stored guardrail is unreadable; the tenant is not served");
                    return None;
                }
            }
        }
        let plan = match self.plans.get(tenant.plan.as_str()) {
            Ok(plan) => plan,
            Err(error) => {
                tracing::error!(tenant = %tenant.name, %error, "the tenant's plan is unknown; it is not served");
                return None;
            }
        };
        let (limits, cost_caps) =
            (tenant.limits.apply(&plan.gateway), tenant.limits.cost_caps(&plan.cost_caps));
        // A tool that cannot be read is not offered; the others are.
        let mut tools: Vec<ToolSpec> = parts
            .tools
            .iter()
            .filter_map(|record| match resources::decode::<ToolSpec>(record) {
                Ok(spec) => Some(spec),
                Err(error) => {
                    tracing::error!(tenant = %tenant.name, tool = %record.name, %error, "a stored tool is unreadable; it is not offered");
                    None
                }
            })
            .collect();
        // The plan's tools, but where the tenant has one of that name.
        let granted: Vec<ToolSpec> = plan
            .tools
            .iter()
            .filter(|t| !tools.iter().any(|own| own.name == t.name))
            .map(|t| ToolSpec { granted_by: Some(plan.name.to_string()), ..t.clone() })
            .collect();
        tools.extend(granted);
        let now = self.realms.now().unix_timestamp();
        let key_leaves = parts
            .keys
            .iter()
            .filter_map(|k| k.remove_after.map(time::OffsetDateTime::unix_timestamp))
            .filter(|&at| at > now)
            .min();
        let provider_looked_at = parts.trust.map(|_| now + EXTERNAL_KEYS_EVERY.as_secs() as i64);
        let refresh_at = key_leaves.into_iter().chain(provider_looked_at).min();
        Some(TenantConfig {
            refresh_at,
            id: tenant.id.0,
            name: tenant.name.clone(),
            suspended,
            realm,
            external,
            app_audience: self.realms.app_audience(&tenant.name),
            api_keys,
            apis,
            guardrails,
            tools,
            limits,
            cost_caps,
        })
    }
}

/// Builds the whole snapshot anew, keeping the runtimes of `gateway`'s
/// current one.
pub async fn rebuild(gateway: &Gateway, feed: &GatewayFeed) -> Result<usize, StoreError> {
    let started = Instant::now();
    let configs = feed.all().await?;
    let snapshot = Snapshot::build(feed.domain(), configs, &gateway.snapshot());
    let tenants = snapshot.len();
    gateway.replace(snapshot);
    tracing::debug!(
        tenants,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "gateway snapshot rebuilt"
    );
    Ok(tenants)
}

/// How often a tenant that trusts an external provider has its entry built
/// again, taking the provider's keys as the cache has them then (the cache
/// fetches them again when they are old).
const EXTERNAL_KEYS_EVERY: Duration = Duration::from_secs(30);
/// How often the snapshot is checked for entries due to be built again.
const DUE_EVERY: Duration = Duration::from_secs(5);

/// Where a feed hears of changed tenants.
#[derive(Debug)]
pub enum Source {
    /// This process's event log: the gateway runs beside the control
    /// plane, which also tells gateways following the store elsewhere.
    InProcess(ConfigChanges),
    /// The store's notifications: a gateway on its own.
    Store,
}

/// What the source said.
enum Heard {
    Changed(HashSet<TenantId>),
    /// Entries due to be built again by time; no other gateway is told.
    Due(HashSet<TenantId>),
    /// Notifications may have been missed: rebuild everything.
    Lost,
    /// The store cannot be reached; the gateway keeps its snapshot.
    Unreachable,
}

/// Changes that come within this of each other are applied together.
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// How long a gateway on its own waits before reaching the store again.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

async fn hear(
    source: &Source,
    store: &dyn ControlStore,
    listener: &mut Option<Box<dyn GatewayChanges>>,
) -> Heard {
    if let Source::InProcess(changes) = source {
        return Heard::Changed(changes.next().await);
    }
    let follower = match listener {
        Some(follower) => follower,
        None => match store.gateway_changes().await {
            Ok(Some(follower)) => {
                // Whatever changed while nobody listened.
                *listener = Some(follower);
                return Heard::Lost;
            }
            // A store with no notifications: the periodic rebuild alone.
            Ok(None) => return std::future::pending().await,
            Err(error) => {
                tracing::warn!(%error, "cannot follow the store's changes; serving the last snapshot");
                tokio::time::sleep(RECONNECT_AFTER).await;
                return Heard::Unreachable;
            }
        },
    };
    let mut changed = HashSet::new();
    match follower.next().await {
        Ok(Some(tenant)) => changed.insert(tenant),
        Ok(None) => return Heard::Lost,
        Err(error) => {
            tracing::warn!(%error, "lost the store's changes; serving the last snapshot");
            *listener = None;
            tokio::time::sleep(RECONNECT_AFTER).await;
            return Heard::Unreachable;
        }
    };
    while let Ok(Ok(Some(tenant))) = tokio::time::timeout(BATCH_WINDOW, follower.next()).await {
        changed.insert(tenant);
    }
    Heard::Changed(changed)
}

/// Keeps `gateway`'s snapshot current until `stopping`: changed tenants'
/// entries at once, entries due by time within [`DUE_EVERY`], the whole
/// snapshot every `full_every` and whenever
/// changes may have been missed. When the store cannot be read, the
/// gateway keeps serving what it has.
pub async fn follow(
    gateway: Arc<Gateway>,
    feed: Arc<GatewayFeed>,
    source: Source,
    mut stopping: watch::Receiver<bool>,
    full_every: Duration,
) {
    let mut full = tokio::time::interval(full_every);
    full.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due = tokio::time::interval(DUE_EVERY);
    due.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The caller built the first snapshot.
    full.tick().await;
    let mut listener = None;
    loop {
        let heard = tokio::select! {
            _ = async { let _ = stopping.wait_for(|stop| *stop).await; } => return,
            _ = full.tick() => Heard::Lost,
            _ = due.tick() => {
                let now = feed.realms.now().unix_timestamp();
                let due: HashSet<TenantId> =
                    gateway.snapshot().due(now).into_iter().map(TenantId).collect();
                if due.is_empty() { continue }
                Heard::Due(due)
            }
            heard = hear(&source, feed.store.as_ref(), &mut listener) => heard,
        };
        match heard {
            Heard::Unreachable => {}
            Heard::Lost => {
                if let Err(error) = rebuild(&gateway, &feed).await {
                    tracing::warn!(%error, "cannot rebuild the gateway snapshot; serving the last one");
                }
            }
            Heard::Due(due) => {
                let updates = feed.tenants(&due).await;
                gateway.replace(gateway.snapshot().with_tenants(updates));
            }
            Heard::Changed(changed) => {
                let updates = feed.tenants(&changed).await;
                for &id in &changed {
                    gateway.forget_tenant(id.0);
                }
                gateway.replace(gateway.snapshot().with_tenants(updates));
                if let Source::InProcess(_) = source {
                    let changed: Vec<TenantId> = changed.into_iter().collect();
                    if let Err(error) = feed.store.notify_gateways(&changed).await {
                        tracing::warn!(%error, "cannot tell other gateways of changed tenants; they catch up at their next full rebuild");
                    }
                }
            }
        }
    }
}

/// Tools' credentials for the gateway beside the control plane: a
/// tenant's secret, decrypted for one call and zeroed after it, and
/// recorded on the tenant's stream (`secret.deliver`, by the gateway)
/// before it is handed over, as the runtime records what it gives workers.
#[derive(Debug)]
pub struct VaultToolSecrets {
    pub vault: Arc<bulkhead_vault::Vault>,
    pub store: Arc<dyn ControlStore>,
    pub events: crate::events::EventLog,
}

#[async_trait::async_trait]
impl bulkhead_gateway::mcp::ToolSecrets for VaultToolSecrets {
    async fn read(
        &self,
        tenant: uuid::Uuid,
        path: &str,
    ) -> Result<zeroize::Zeroizing<String>, String> {
        // The details go to the log; the caller hears only which secret.
        let unreadable = |error: &dyn std::fmt::Display| {
            tracing::warn!(%tenant, path, %error, "a tool's credential cannot be read");
            format!("secret {path} cannot be read")
        };
        let stored = self.store.tenant_by_id(TenantId(tenant)).await.map_err(|e| unreadable(&e))?;
        let tenant = stored.ok_or_else(|| unreadable(&"no such tenant"))?;
        let path = bulkhead_vault::SecretPath::parse(path).map_err(|e| unreadable(&e))?;
        let secret = self.vault.get(tenant.id, &path, None).await.map_err(|e| unreadable(&e))?;
        let text = std::str::from_utf8(&secret.value).map_err(|_| unreadable(&"not text"))?;
        let text = zeroize::Zeroizing::new(text.to_owned());
        let details =
            serde_json::json!({ "path": path.as_str(), "version": secret.version, "to": "tool" });
        self.events
            .record_disclosure(
                &crate::events::Actor::Gateway,
                Some(&tenant),
                "secret.deliver",
                details,
            )
            .await
            .map_err(|e| unreadable(&e))?;
        Ok(text)
    }
}
