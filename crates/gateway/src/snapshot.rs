//! The configuration snapshot: everything the gateway knows, built by the
//! control plane and swapped atomically. A request loads it once and reads
//! nothing else, so no request awaits a lock or a store query.
//!
//! What changes while the gateway runs (limit cells, in-flight counts,
//! upstream pools and their health) lives in runtimes that a rebuilt entry
//! takes over from the entry it replaces, so a key rotation does not reset
//! a tenant's rate limit or drop its pooled connections.

use std::{collections::HashMap, sync::Arc, time::Instant};

use bulkhead_identity::{Role, Trust};
use bulkhead_meter::{Cell, Limit};
use bulkhead_model::{ApiSpec, GatewayLimits, GuardrailSpec, TenantName, ToolSpec};
use uuid::Uuid;

use http::HeaderValue;

use crate::{
    guard::Guard,
    headers::text_value,
    limit::TenantRuntime,
    mcp::ToolBox,
    proxy::{ApiRuntime, UpstreamKey},
};

/// What the control plane tells the gateway about one tenant.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub id: Uuid,
    pub name: TenantName,
    /// A suspended tenant is answered `tenant_suspended`; tenants in any
    /// state but active and suspended are left out of the snapshot.
    pub suspended: bool,
    /// How the tenant's realm tokens verify (audience unset: each API
    /// requires its own); `None` before the realm exists. Boxed: most
    /// tenants trust no external provider, and an empty option would take
    /// a whole trust's size (224 bytes) in every configuration and entry.
    pub realm: Option<Box<Trust>>,
    /// The external identity provider the tenant trusts, with the keys
    /// known when the entry was built.
    pub external: Option<Box<Trust>>,
    /// The audience of tokens minted for the tenant's applications.
    pub app_audience: String,
    pub api_keys: Vec<ApiKeyConfig>,
    pub apis: Vec<ApiSpec>,
    /// Each applies to every API, or to the one it names.
    pub guardrails: Vec<GuardrailSpec>,
    /// The tenant's tool registry, served by its APIs of type `mcp`.
    pub tools: Vec<ToolSpec>,
    pub limits: GatewayLimits,
    /// The tenant's monthly model spend caps.
    pub cost_caps: bulkhead_model::CostCaps,
    /// When the entry must be built again though no change is announced
    /// (unix seconds): a realm key leaves the trust then, or an external
    /// provider's keys are to be looked at again.
    pub refresh_at: Option<i64>,
}

/// An API key as the gateway checks it: by the SHA-256 of the key.
#[derive(Clone)]
pub struct ApiKeyConfig {
    pub hash: [u8; 32],
    pub id: Uuid,
    pub name: String,
    pub roles: Vec<Role>,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// One tenant as the request path reads it.
#[derive(Debug)]
pub struct TenantEntry {
    pub id: Uuid,
    pub name: Arc<str>,
    pub suspended: bool,
    /// Boxed, as in [`TenantConfig`].
    pub realm: Option<Box<Trust>>,
    pub external: Option<Box<Trust>>,
    pub app_audience: Box<str>,
    pub api_keys: ApiKeys,
    /// Longest prefix first, so the first match is the longest.
    pub apis: Vec<Arc<ApiEntry>>,
    /// The tenant's guardrails, compiled; a rebuilt entry keeps those
    /// whose spec did not change.
    pub guardrails: Vec<(GuardrailSpec, Arc<Guard>)>,
    pub tools: Vec<Arc<ToolSpec>>,
    /// The tools' sessions and lists; kept while the registry is unchanged.
    pub toolbox: Arc<ToolBox>,
    pub limits: GatewayLimits,
    /// The tenant's monthly model spend caps.
    pub budget: bulkhead_meter::Caps,
    /// The tenant's rate, from its limits.
    pub rate: Option<Limit>,
    pub runtime: Arc<TenantRuntime>,
    /// The tenant's headers for its upstreams, made once.
    pub vouched: TenantHeaders,
    /// See [`TenantConfig::refresh_at`].
    pub refresh_at: Option<i64>,
}

/// A tenant's API keys by hash: a sorted slice, searched in halves. Most
/// tenants have none, and an empty map would still take 48 bytes.
#[derive(Debug)]
pub struct ApiKeys(Box<[ApiKeyConfig]>);

impl ApiKeys {
    fn new(mut keys: Vec<ApiKeyConfig>) -> Self {
        keys.sort_unstable_by_key(|k| k.hash);
        Self(keys.into_boxed_slice())
    }

    pub fn get(&self, hash: &[u8; 32]) -> Option<&ApiKeyConfig> {
        self.0.binary_search_by(|k| k.hash.cmp(hash)).ok().and_then(|i| self.0.get(i))
    }
}

/// `x-bulkhead-tenant` and `x-bulkhead-tenant-id` of a tenant.
#[derive(Debug)]
pub struct TenantHeaders {
    pub name: HeaderValue,
    pub id: HeaderValue,
}

/// One API of a tenant.
#[derive(Debug)]
pub struct ApiEntry {
    pub spec: ApiSpec,
    pub name: Arc<str>,
    /// The API's own rate, within the tenant's, when it sets one.
    pub rate: Option<Limit>,
    /// Its rate's cell: kept by name across rebuilds, whatever else changes.
    pub cell: Arc<Cell>,
    pub runtime: Arc<ApiRuntime>,
    /// `x-bulkhead-api`.
    pub name_header: HeaderValue,
    /// The tenant's guardrails that apply to this API, by name: each
    /// scans the request body in turn.
    pub guards: Box<[Arc<Guard>]>,
    /// Those of them that scan responses too.
    pub response_guards: Box<[Arc<Guard>]>,
}

/// The limiter's form of a rate; `None` (no limit) only for a rate the
/// model's validation would have refused.
fn limit_of(rate: &bulkhead_model::Rate) -> Option<Limit> {
    Limit::per_minute(rate.requests_per_minute, rate.burst)
        .inspect_err(|error| tracing::error!(%error, "a rate limit is unusable; not enforced"))
        .ok()
}

/// Settings every snapshot shares.
#[derive(Debug, Clone)]
pub struct Domain {
    /// Tenants are served at `{tenant}.{base_domain}`; lower case, no
    /// trailing dot.
    pub base_domain: String,
    /// Tokens naming this audience are for the control API, never for an
    /// application: the gateway refuses them.
    pub control_audience: String,
    /// What model calls cost, by model.
    pub prices: Arc<bulkhead_model::PriceTable>,
}

/// Every tenant the gateway serves, at one moment.
#[derive(Debug)]
pub struct Snapshot {
    pub domain: Arc<Domain>,
    tenants: HashMap<Arc<str>, Arc<TenantEntry>>,
    /// Tenant id → name, to replace an entry by the tenant's id.
    names: HashMap<Uuid, Arc<str>>,
    /// When this snapshot was made, for the snapshot-age metric.
    pub built_at: Instant,
}

impl Snapshot {
    /// A snapshot with no tenants: every host is unknown.
    pub fn empty(domain: Domain) -> Self {
        Self {
            domain: Arc::new(domain),
            tenants: HashMap::new(),
            names: HashMap::new(),
            built_at: Instant::now(),
        }
    }

    /// A snapshot of `tenants`, taking over the runtimes of the entries
    /// `previous` has for them.
    pub fn build(domain: Domain, tenants: Vec<TenantConfig>, previous: &Snapshot) -> Self {
        let mut map = HashMap::with_capacity(tenants.len());
        let mut names = HashMap::with_capacity(tenants.len());
        for config in tenants {
            let entry = previous.entry(config);
            names.insert(entry.id, Arc::clone(&entry.name));
            map.insert(Arc::clone(&entry.name), entry);
        }
        Self { domain: Arc::new(domain), tenants: map, names, built_at: Instant::now() }
    }

    /// This snapshot with some tenants' entries replaced: by tenant id, the
    /// new configuration, or `None` to remove the entry (the tenant left or
    /// is not served).
    pub fn with_tenants(&self, changes: Vec<(Uuid, Option<TenantConfig>)>) -> Self {
        let (mut tenants, mut names) = (self.tenants.clone(), self.names.clone());
        for (id, config) in changes {
            if let Some(name) = names.remove(&id) {
                tenants.remove(&name);
            }
            if let Some(config) = config {
                let entry = self.entry(config);
                names.insert(entry.id, Arc::clone(&entry.name));
                // A name reused after a purge: the old tenant's entry goes.
                if let Some(old) = tenants.insert(Arc::clone(&entry.name), entry)
                    && old.id != id
                {
                    names.remove(&old.id);
                }
            }
        }
        Self { domain: Arc::clone(&self.domain), tenants, names, built_at: Instant::now() }
    }

    /// Tenants whose entries are due to be built again at unix time `now`.
    pub fn due(&self, now: i64) -> Vec<Uuid> {
        self.tenants
            .values()
            .filter(|t| t.refresh_at.is_some_and(|at| at <= now))
            .map(|t| t.id)
            .collect()
    }

    pub fn tenant(&self, name: &str) -> Option<&Arc<TenantEntry>> {
        self.tenants.get(name)
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    pub fn tenants(&self) -> impl Iterator<Item = &Arc<TenantEntry>> {
        self.tenants.values()
    }

    /// An entry for `config`, with the runtimes of this snapshot's entry
    /// for the same tenant (by id: a name reused after a purge starts
    /// afresh).
    fn entry(&self, config: TenantConfig) -> Arc<TenantEntry> {
        let old = self.tenants.get(config.name.as_str()).filter(|old| old.id == config.id);
        let runtime = match old {
            Some(old) => Arc::clone(&old.runtime),
            None => Arc::new(TenantRuntime::default()),
        };
        runtime.set_limits(&config.limits);
        let guardrails: Vec<(GuardrailSpec, Arc<Guard>)> = config
            .guardrails
            .into_iter()
            .filter_map(|spec| {
                let kept = old.and_then(|old| old.guardrails.iter().find(|(s, _)| *s == spec));
                if let Some((_, guard)) = kept {
                    return Some((spec, Arc::clone(guard)));
                }
                // Applied only once validated with the same compiler, so
                // this cannot fail on what the API accepted.
                match Guard::compile(&spec) {
                    Ok(guard) => Some((spec, Arc::new(guard))),
                    Err(error) => {
                        tracing::error!(tenant = %config.name, guardrail = %spec.name, %error, "a guardrail does not compile; it is not applied");
                        None
                    }
                }
            })
            .collect();
        let toolbox = match old {
            Some(old) if old.tools.iter().map(|t| &**t).eq(config.tools.iter()) => {
                Arc::clone(&old.toolbox)
            }
            _ => Arc::default(),
        };
        let tools = config.tools.into_iter().map(Arc::new).collect();
        let mut apis: Vec<Arc<ApiEntry>> = config
            .apis
            .into_iter()
            .map(|spec| {
                let key = UpstreamKey::of(&spec);
                let previous =
                    old.and_then(|old| old.apis.iter().find(|a| a.spec.name == spec.name));
                let api_runtime = previous
                    .filter(|a| a.runtime.key == key)
                    .map(|a| Arc::clone(&a.runtime))
                    .unwrap_or_else(|| Arc::new(ApiRuntime::new(key, Arc::clone(&runtime))));
                let cell = previous.map(|a| Arc::clone(&a.cell)).unwrap_or_default();
                let applying: Vec<&(GuardrailSpec, Arc<Guard>)> = guardrails
                    .iter()
                    .filter(|(g, _)| g.api.as_deref().is_none_or(|api| api == spec.name.as_str()))
                    .collect();
                Arc::new(ApiEntry {
                    guards: applying.iter().map(|(_, guard)| Arc::clone(guard)).collect(),
                    response_guards: applying
                        .iter()
                        .filter(|(g, _)| g.scan_responses)
                        .map(|(_, guard)| Arc::clone(guard))
                        .collect(),
                    name: spec.name.as_str().into(),
                    name_header: text_value(spec.name.as_str()),
                    rate: spec.rate_limit.as_ref().and_then(limit_of),
                    spec,
                    cell,
                    runtime: api_runtime,
                })
            })
            .collect();
        apis.sort_by_key(|a| std::cmp::Reverse(a.spec.prefix.as_str().len()));
        let vouched = TenantHeaders {
            name: text_value(config.name.as_str()),
            id: text_value(&config.id.to_string()),
        };
        Arc::new(TenantEntry {
            vouched,
            refresh_at: config.refresh_at,
            id: config.id,
            name: config.name.as_str().into(),
            suspended: config.suspended,
            realm: config.realm,
            external: config.external,
            app_audience: config.app_audience.into(),
            api_keys: ApiKeys::new(config.api_keys),
            apis,
            guardrails,
            tools,
            toolbox,
            rate: limit_of(&config.limits.rate_limit),
            limits: config.limits,
            budget: (&config.cost_caps).into(),
            runtime,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, refresh_at: Option<i64>) -> TenantConfig {
        TenantConfig {
            id: Uuid::new_v4(),
            name: TenantName::parse(name).unwrap(),
            suspended: false,
            realm: None,
            external: None,
            app_audience: format!("https://bulkhead.example/realms/{name}/apps"),
            api_keys: Vec::new(),
            apis: Vec::new(),
            guardrails: Vec::new(),
            tools: Vec::new(),
            limits: serde_json::from_value(serde_json::json!({
                "rate_limit": {"requests_per_minute": 60, "burst": 1},
                "max_in_flight": 1, "max_upstream_connections": 1, "limiter_fallback": "local"
            }))
            .unwrap(),
            cost_caps: bulkhead_model::CostCaps { soft_usd: 1, hard_usd: 2 },
            refresh_at,
        }
    }

    fn domain() -> Domain {
        Domain {
            base_domain: "localhost".into(),
            control_audience: "c".into(),
            prices: Arc::default(),
        }
    }

    #[test]
    fn entries_are_due_when_their_time_comes_and_not_before() {
        let (soon, later, never) =
            (config("soon", Some(100)), config("later", Some(200)), config("never", None));
        let ids = (soon.id, later.id);
        let snapshot =
            Snapshot::build(domain(), vec![soon, later, never], &Snapshot::empty(domain()));
        assert!(snapshot.due(99).is_empty());
        assert_eq!(snapshot.due(100), [ids.0]);
        let mut both = snapshot.due(250);
        both.sort();
        let mut expected = vec![ids.0, ids.1];
        expected.sort();
        assert_eq!(both, expected);
    }

    #[test]
    fn a_name_taken_over_by_a_new_tenant_leaves_no_trace_of_the_old_one() {
        let old = config("acme", None);
        let old_id = old.id;
        let snapshot = Snapshot::build(domain(), vec![old], &Snapshot::empty(domain()));
        let new = config("acme", None);
        let new_id = new.id;
        let snapshot = snapshot.with_tenants(vec![(new_id, Some(new))]);
        assert_eq!(snapshot.tenant("acme").unwrap().id, new_id);
        // The old tenant's removal, arriving late, does not take the new one.
        let snapshot = snapshot.with_tenants(vec![(old_id, None)]);
        assert_eq!(snapshot.tenant("acme").map(|t| t.id), Some(new_id));
    }
}
