//! `bulkhead verify isolation`: checks the live installation, layer by
//! layer, and reports what would let one tenant reach another.
//!
//! Each layer is a module of checks (the tenant databases' now; the
//! runtime's and the backups' as they come) that adds [`Finding`]s to one
//! report. The database checks read the catalogs and also act as a tenant:
//! a fresh login of each tenant in scope tries to read and write other
//! tenants' rows and to enter other tenants' databases.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use bulkhead_model::{
    ApiAuth, BaseDomain, DatabaseLocation, Isolation, Regions, Tenant, TenantId, TenantState,
};
use bulkhead_store::{ControlStore, StoreError};
pub use bulkhead_tenantdb::verify::{Finding, Severity};
use bulkhead_tenantdb::{RegionServers, verify};
use futures_util::{StreamExt, TryStreamExt, stream};
use thiserror::Error;

use crate::{apis::decode, clock::Clock};

/// Tenants probed at once: each probe makes a login, uses it and drops
/// it, which keeps the region's server busy rather than waiting.
const PROBES_AT_ONCE: usize = 4;

/// A lease's role may outlive its expiry by this much (the sweeper's
/// pace, retries included) before it counts as left behind.
const LEASE_GRACE: Duration = Duration::from_secs(300);

#[derive(Debug, Error)]
pub enum VerifyError {
    #[error("{0}")]
    Database(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<bulkhead_tenantdb::Error> for VerifyError {
    fn from(error: bulkhead_tenantdb::Error) -> Self {
        VerifyError::Database(error.to_string())
    }
}

/// What was checked, and what was found.
#[derive(Debug, Default)]
pub struct IsolationReport {
    /// One line per check run, with what it covered.
    pub checked: Vec<String>,
    pub findings: Vec<Finding>,
}

#[derive(Debug)]
pub struct Verifier {
    store: Arc<dyn ControlStore>,
    servers: RegionServers,
    regions: Regions,
    clock: Arc<dyn Clock>,
    /// `<data-dir>/tenants`, where embedded tenants' databases are.
    tenants_dir: PathBuf,
    /// The gateway to probe, and the domain tenants' hosts are under.
    gateway: Option<(String, BaseDomain)>,
    /// The runtime whose layers and tenants' directories are checked.
    runtime: Option<Arc<crate::runtime::Runtime>>,
}

impl Verifier {
    pub fn new(
        store: Arc<dyn ControlStore>,
        servers: RegionServers,
        regions: Regions,
        clock: Arc<dyn Clock>,
        tenants_dir: PathBuf,
    ) -> Self {
        Self { store, servers, regions, clock, tenants_dir, gateway: None, runtime: None }
    }

    /// Also probes the gateway at `url` (the server's own), where tenant
    /// `t` is reached as `t.<base_domain>`.
    pub fn with_gateway(self, url: String, base_domain: BaseDomain) -> Self {
        Self { gateway: Some((url, base_domain)), ..self }
    }

    pub fn with_runtime(self, runtime: Option<Arc<crate::runtime::Runtime>>) -> Self {
        Self { runtime, ..self }
    }

    /// Checks `only` that tenant, or every tenant with a database (active
    /// or suspended) and the regions' pools.
    pub async fn isolation(&self, only: Option<&Tenant>) -> Result<IsolationReport, VerifyError> {
        let tenants: Vec<Tenant> = match only {
            Some(tenant) => vec![tenant.clone()],
            None => self.store.all_tenants().await?,
        };
        let served: Vec<&Tenant> = tenants
            .iter()
            .filter(|t| matches!(t.state, TenantState::Active | TenantState::Suspended))
            .collect();
        let mut report = IsolationReport::default();
        for region in self.regions.all() {
            let here: Vec<&Tenant> =
                served.iter().copied().filter(|t| t.region == region.name).collect();
            let DatabaseLocation::Postgres(url) = &region.databases else {
                for tenant in &here {
                    let dir = self.tenants_dir.join(tenant.name.as_str());
                    report.findings.extend(verify::sqlite(&dir, tenant));
                }
                report.checked.push(format!(
                    "region {}: {} SQLite tenant databases, each readable by the server's user only",
                    region.name,
                    here.len()
                ));
                continue;
            };
            let pooled: Vec<&Tenant> =
                here.iter().copied().filter(|t| t.isolation == Isolation::Pool).collect();
            let siloed: Vec<&Tenant> =
                here.iter().copied().filter(|t| t.isolation == Isolation::Silo).collect();
            let now = self.clock.now();
            if only.is_none() || !pooled.is_empty() {
                report.findings.extend(verify::pool(&self.servers, region, url).await?);
                report.checked.push(format!("region {}: the pool database", region.name));
            }
            // Owned tenants: a stream over borrowed ones is not `Send` for
            // every lifetime the handler's future needs.
            let owned: Vec<Tenant> = pooled.iter().map(|t| (*t).clone()).collect();
            let servers = &self.servers;
            let found: Vec<Vec<Finding>> = stream::iter(owned)
                .map(|tenant| async move {
                    verify::probe_pool(servers, region, url, &tenant, now).await
                })
                .buffered(PROBES_AT_ONCE)
                .try_collect()
                .await?;
            report.findings.extend(found.into_iter().flatten());
            if !pooled.is_empty() {
                report.checked.push(format!(
                    "region {}: {} pool tenants, each with a fresh login reading and writing every tenant table",
                    region.name,
                    pooled.len()
                ));
            }
            // Each silo tenant tries the next one's database: every database
            // is tried once, by someone else.
            let mut pairs = Vec::new();
            for (i, tenant) in siloed.iter().enumerate() {
                let other = match only {
                    Some(_) => self.other_silo(tenant).await?,
                    None => siloed
                        .get((i + 1) % siloed.len())
                        .filter(|o| o.id != tenant.id)
                        .map(|o| (*o).clone()),
                };
                pairs.push(((*tenant).clone(), other));
            }
            let found: Vec<Vec<Finding>> = stream::iter(pairs)
                .map(|(tenant, other)| async move {
                    let mut found = verify::silo(servers, region, url, &tenant).await?;
                    if let Some(other) = other {
                        found.extend(
                            verify::probe_silo(servers, region, url, &tenant, &other, now).await?,
                        );
                    }
                    Ok::<_, VerifyError>(found)
                })
                .buffered(PROBES_AT_ONCE)
                .try_collect()
                .await?;
            report.findings.extend(found.into_iter().flatten());
            if !siloed.is_empty() {
                report.checked.push(format!(
                    "region {}: {} silo databases, each closed to another tenant's fresh login",
                    region.name,
                    siloed.len()
                ));
            }
            let stale = verify::stale_logins(&self.servers, region, url, now, LEASE_GRACE).await?;
            report.findings.extend(stale);
            let roles = verify::lease_roles(&self.servers, region, url).await?;
            let leases = self.lease_findings(&here, &roles, now).await?;
            report.checked.push(format!(
                "region {}: {} lease roles against the leases of {} tenants",
                region.name,
                roles.len(),
                here.len()
            ));
            report.findings.extend(leases);
        }
        self.gateway_checks(&served, only.is_some(), &mut report).await?;
        self.runtime_checks(&served, &mut report).await?;
        report.findings.sort_by(|a, b| (a.severity, &a.subject).cmp(&(b.severity, &b.subject)));
        Ok(report)
    }

    /// The runtime's layers: each confinement layer the machine lacks, and
    /// each tenant with apps whose directories a worker of another tenant,
    /// or the tenant itself where it should not, could write.
    async fn runtime_checks(
        &self,
        served: &[&Tenant],
        report: &mut IsolationReport,
    ) -> Result<(), VerifyError> {
        let Some(runtime) = &self.runtime else { return Ok(()) };
        for (layer, reason) in runtime.layers().missing() {
            report.findings.push(Finding::new(
                Severity::High,
                "runtime.layer",
                layer,
                format!("tenants' workers run without this layer: {reason}"),
                "run `bulkhead serve` as root on a kernel with the layer (docs/runtime.md lists what each needs)",
            ));
        }
        let mut with_apps = 0;
        for tenant in served {
            if self.store.apps(tenant.id).await?.is_empty() {
                continue;
            }
            with_apps += 1;
            report.findings.extend(runtime.directory_findings(tenant).await);
        }
        report.checked.push(format!(
            "the runtime: {} confinement layers missing; {with_apps} tenants' app directories",
            runtime.layers().missing().len()
        ));
        Ok(())
    }

    /// The gateway's layer: no two tenants' APIs share an upstream unless
    /// each says so (`shared_upstream`), and, through the gateway itself,
    /// every API not marked public refuses a request without a credential.
    async fn gateway_checks(
        &self,
        served: &[&Tenant],
        only_some: bool,
        report: &mut IsolationReport,
    ) -> Result<(), VerifyError> {
        let apis_of = |tenant: TenantId| async move {
            let records = self.store.apis(tenant).await?;
            Ok::<_, VerifyError>(records.iter().filter_map(|r| decode(r).ok()).collect::<Vec<_>>())
        };
        // Every tenant's APIs are compared, even when checking one.
        let everyone: Vec<Tenant> = if only_some {
            self.store.all_tenants().await?
        } else {
            served.iter().map(|t| (*t).clone()).collect()
        };
        let mut users: BTreeMap<String, Vec<(&Tenant, String, bool)>> = BTreeMap::new();
        let mut all_apis = Vec::new();
        for tenant in &everyone {
            all_apis.push((tenant, apis_of(tenant.id).await?));
        }
        for (tenant, apis) in &all_apis {
            for api in apis {
                // An app is the tenant's own by construction.
                for upstream in
                    api.upstreams.iter().filter(|u| !matches!(u, bulkhead_model::Upstream::App(_)))
                {
                    let used = (*tenant, api.name.to_string(), api.shared_upstream);
                    users.entry(upstream.to_string()).or_default().push(used);
                }
            }
        }
        let in_scope: HashSet<TenantId> = served.iter().map(|t| t.id).collect();
        for (upstream, used) in &users {
            let tenants: BTreeSet<&str> = used.iter().map(|(t, ..)| t.name.as_str()).collect();
            let concerns_scope = used.iter().any(|(t, ..)| in_scope.contains(&t.id));
            if tenants.len() < 2 || !concerns_scope || used.iter().all(|(.., shared)| *shared) {
                continue;
            }
            let undeclared: Vec<String> = used
                .iter()
                .filter(|(.., shared)| !shared)
                .map(|(t, api, _)| format!("{}/{api}", t.name))
                .collect();
            report.findings.push(Finding::new(
                Severity::High,
                "api.upstream",
                upstream,
                format!(
                    "tenants {} send their traffic to the same upstream, which could mix their \
                     data; not declared shared by {}",
                    tenants.into_iter().collect::<Vec<_>>().join(", "),
                    undeclared.join(", ")
                ),
                "give each tenant an upstream of its own, or, for a service that tells tenants \
                 apart by the gateway's headers, set shared_upstream: true on each of these APIs",
            ));
        }
        let apis: usize = all_apis.iter().map(|(_, apis)| apis.len()).sum();
        report.checked.push(format!(
            "gateway: the upstreams of {apis} APIs of {} tenants, shared only where declared",
            all_apis.len()
        ));
        let Some((gateway, base_domain)) = &self.gateway else { return Ok(()) };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| VerifyError::Database(format!("cannot make an HTTP client: {e}")))?;
        let mut probed = 0;
        for (tenant, apis) in &all_apis {
            if tenant.state != TenantState::Active || !in_scope.contains(&tenant.id) {
                continue;
            }
            for api in apis.iter().filter(|api| api.auth != ApiAuth::Public) {
                probed += 1;
                let method = api.methods.first().map_or("GET", String::as_str);
                let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or_default();
                let url = format!("{gateway}{}", api.prefix.as_str());
                let host = base_domain.tenant_host(&tenant.name);
                let answer = client.request(method, &url).header("host", host).send().await;
                let problem = match answer {
                    Ok(response) if response.status() == reqwest::StatusCode::UNAUTHORIZED => None,
                    Ok(response) => Some(format!(
                        "the gateway answered {} to a request without a credential",
                        response.status()
                    )),
                    Err(error) => Some(format!("the gateway could not be asked: {error}")),
                };
                if let Some(problem) = problem {
                    report.findings.push(Finding::new(
                        Severity::Critical,
                        "api.credential",
                        format!("{}/{}", tenant.name, api.name),
                        problem,
                        "the API is not marked public, so the gateway must refuse it without \
                         a credential: check the gateway's log, and `bulkhead apis get`",
                    ));
                }
            }
        }
        report.checked.push(format!(
            "gateway: {probed} APIs not marked public, each refused without a credential"
        ));
        Ok(())
    }

    /// Another served silo tenant of `tenant`'s region, whose database
    /// the tenant's fresh login tries.
    async fn other_silo(&self, tenant: &Tenant) -> Result<Option<Tenant>, VerifyError> {
        Ok(self.store.all_tenants().await?.into_iter().find(|t| {
            t.id != tenant.id
                && t.region == tenant.region
                && t.isolation == Isolation::Silo
                && matches!(t.state, TenantState::Active | TenantState::Suspended)
        }))
    }

    /// Lease roles still on the server after their lease ended, and lease
    /// roles of these tenants that no lease accounts for.
    async fn lease_findings(
        &self,
        tenants: &[&Tenant],
        roles: &[String],
        now: time::OffsetDateTime,
    ) -> Result<Vec<Finding>, VerifyError> {
        let on_server: HashSet<&str> = roles.iter().map(String::as_str).collect();
        let mut known = HashSet::new();
        let mut findings = Vec::new();
        for tenant in tenants {
            for lease in self.store.leases(tenant.id, true).await? {
                known.insert(lease.role.clone());
                let ended = lease.revoked_at.unwrap_or(lease.expires_at);
                if ended + LEASE_GRACE < now && on_server.contains(lease.role.as_str()) {
                    findings.push(Finding {
                        severity: Severity::High,
                        check: "lease.left",
                        subject: lease.role.clone(),
                        problem: format!(
                            "lease {} of tenant {} ended at {ended} and its role is still there{}",
                            lease.id,
                            tenant.name,
                            lease
                                .last_error
                                .as_deref()
                                .map(|e| format!(" ({e})"))
                                .unwrap_or_default()
                        ),
                        fix: format!("bulkhead creds revoke {}", lease.id),
                    });
                }
            }
        }
        for tenant in tenants {
            let theirs = format!("l_{}_", tenant.id.short());
            for role in roles.iter().filter(|r| r.contains(&theirs) && !known.contains(*r)) {
                findings.push(Finding {
                    severity: Severity::High,
                    check: "lease.orphan",
                    subject: role.clone(),
                    problem: format!(
                        "a login role of tenant {}'s that no lease accounts for",
                        tenant.name
                    ),
                    fix: format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\" (in each database it holds something in)"),
                });
            }
        }
        Ok(findings)
    }
}
