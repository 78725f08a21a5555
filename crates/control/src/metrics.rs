//! Prometheus metrics of the control plane and its gateway, served at
//! `/metrics`.
//!
//! Labels are bounded: routes are templates (`/v1/tenants/{name}`), and
//! tenant names appear only on the gateway's per-tenant series, for at most
//! `[gateway] metrics_tenant_labels` tenants (the rest summed as
//! `tenant="_other"`), so the series count does not grow with the tenant
//! count.

use std::{
    sync::{Arc, OnceLock, atomic::Ordering},
    time::Duration,
};

use bulkhead_gateway::Gateway;
use bulkhead_model::TenantState;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: String,
    action: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VaultLabels {
    action: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: HistogramFamily<RouteLabels>,
    provisioning_seconds: Histogram,
    step_failures: Family<StepLabels, Counter>,
    tenants: Family<StateLabels, Gauge>,
    vault_operations: Family<VaultLabels, Counter>,
    job_runs: Family<JobLabels, Counter>,
    lease_revocation_failures: Counter,
    leases_stuck: Gauge,
    backup_last_success: Family<TenantLabels, Gauge>,
    backups_failing: Gauge,
    gateway: Arc<GatewayCollector>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    kind: String,
    action: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    phase: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    by: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

/// The gateway's counters, read at each scrape: they live in the gateway
/// as atomics, so the request path never touches a label.
#[derive(Debug, Default)]
struct GatewayCollector {
    gateway: OnceLock<Arc<Gateway>>,
}

fn encode_counters<L>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error>
where
    L: EncodeLabelSet + Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).inc_by(value);
    }
    family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)
}

fn encode_gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let gauge = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    gauge.set(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

impl Collector for GatewayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(gateway) = self.gateway.get() else { return Ok(()) };
        let snapshot = gateway.snapshot();
        let stats = gateway.stats();
        let tenant = |name: &str| TenantLabels { tenant: name.to_owned() };
        let labelled: Vec<_> = snapshot.tenants().filter(|t| t.runtime.labelled.own()).collect();
        let other = ("_other", &stats.other);
        let tenants = labelled
            .iter()
            .map(|t| (&*t.name, &t.runtime.labelled.counters))
            .chain(std::iter::once(other));
        let (requests, refused): (Vec<_>, Vec<_>) = tenants
            .map(|(name, c)| {
                let requests = c.requests.load(Ordering::Relaxed);
                ((tenant(name), requests), (tenant(name), c.refused.load(Ordering::Relaxed)))
            })
            .unzip();
        encode_counters(
            &mut encoder,
            "gateway_requests",
            "Requests the gateway answered for a tenant (tenants past [gateway] metrics_tenant_labels are summed as _other)",
            requests,
        )?;
        encode_counters(
            &mut encoder,
            "gateway_tenant_refusals",
            "Of those, the refused ones",
            refused,
        )?;
        let refusals = stats.refusals().into_iter().map(|(phase, code, n)| {
            (RefusalLabels { phase: phase.to_owned(), code: code.to_owned() }, n)
        });
        encode_counters(
            &mut encoder,
            "gateway_refusals",
            "Requests the gateway refused, by phase and code (hosts naming no tenant included)",
            refusals,
        )?;
        let findings = stats.guard_findings().into_iter().map(|(kind, action, n)| {
            (FindingLabels { kind: kind.to_owned(), action: action.to_owned() }, n)
        });
        encode_counters(
            &mut encoder,
            "gateway_guardrail_findings",
            "Personal data the guardrails found in bodies, by kind and what was done (redact, reject, log)",
            findings,
        )?;
        let (buckets, sum, count) = stats.upstream_latency();
        let mut histogram = encoder.encode_descriptor(
            "gateway_upstream_duration_seconds",
            "Time from sending a request upstream to its response headers",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        histogram.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        let limiter = gateway.limiter_stats();
        let decisions = [
            ("local", limiter.local_decisions),
            ("redis", limiter.redis_decisions),
            ("fallback", limiter.fallback_decisions),
        ]
        .map(|(by, n)| (DecisionLabels { by: by.to_owned() }, n));
        encode_counters(
            &mut encoder,
            "gateway_limiter_decisions",
            "Rate limit decisions: in this process, by Redis, or by the plan's fallback while Redis did not answer",
            decisions,
        )?;
        {
            let errors = Counter::<u64>::default();
            errors.inc_by(limiter.redis_errors);
            errors.encode(encoder.encode_descriptor(
                "gateway_limiter_redis_errors",
                "Redis errors and timeouts of the rate limiter",
                None,
                errors.metric_type(),
            )?)?;
        }
        let (usage, audit) = gateway.dropped();
        let drops = [("usage", usage), ("audit", audit)]
            .map(|(queue, n)| (QueueLabels { queue: queue.to_owned() }, n));
        encode_counters(
            &mut encoder,
            "gateway_record_drops",
            "Usage events and audit records dropped because their queue was full",
            drops,
        )?;
        encode_gauge(
            &mut encoder,
            "gateway_snapshot_age_seconds",
            "Time since the gateway's snapshot was last rebuilt",
            snapshot.built_at.elapsed().as_secs_f64(),
        )?;
        encode_gauge(
            &mut encoder,
            "gateway_snapshot_tenants",
            "Tenants the gateway's snapshot serves",
            snapshot.len() as f64,
        )?;
        Ok(())
    }
}

/// 1 ms to about 33 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bulkhead");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register("http_requests", "Control API requests answered", http_requests.clone());
        let http_seconds: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Control API request latency",
            http_seconds.clone(),
        );
        let provisioning_seconds = latency_histogram();
        registry.register(
            "provisioning_duration_seconds",
            "Time from a tenant's creation to it being active",
            provisioning_seconds.clone(),
        );
        let step_failures = Family::<StepLabels, Counter>::default();
        registry.register(
            "provisioning_step_failures",
            "Failed attempts at a provisioning step (action: apply or undo)",
            step_failures.clone(),
        );
        let tenants = Family::<StateLabels, Gauge>::default();
        registry.register("tenants", "Tenants by lifecycle state", tenants.clone());
        let vault_operations = Family::<VaultLabels, Counter>::default();
        registry.register(
            "vault_operations",
            "Vault operations by action (secret.read, credential.issue, vault.anomaly, ...) and \
             outcome (ok, failed, not_found, denied, alert)",
            vault_operations.clone(),
        );
        let job_runs = Family::<JobLabels, Counter>::default();
        registry.register(
            "background_job_runs",
            "Runs of the scheduled jobs (lease_sweep, data_key_rotation, realm_key_rotation, \
             audit_retention) by outcome (ok, failed)",
            job_runs.clone(),
        );
        let lease_revocation_failures = Counter::default();
        registry.register(
            "lease_revocation_failures",
            "Attempts at dropping a database credential's role that failed (the role was \
             disabled and is retried with backoff)",
            lease_revocation_failures.clone(),
        );
        let leases_stuck = Gauge::default();
        registry.register(
            "leases_stuck",
            "Database credentials whose role could not be dropped yet (see `bulkhead creds list \
             --all` for the reason)",
            leases_stuck.clone(),
        );
        let backup_last_success = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When each tenant's last backup that succeeded was taken (0: never), for the tenants \
             whose last success is oldest; the rest as tenant=\"_other\" (the oldest of them)",
            backup_last_success.clone(),
        );
        let backups_failing = Gauge::default();
        registry.register(
            "backups_failing_tenants",
            "Tenants whose last backup attempt failed (see `bulkhead backups list --tenant T`)",
            backups_failing.clone(),
        );
        let gateway = Arc::new(GatewayCollector::default());
        registry.register_collector(Box::new(Arc::clone(&gateway)));
        Self {
            backup_last_success,
            backups_failing,
            gateway,
            job_runs,
            lease_revocation_failures,
            leases_stuck,
            registry,
            http_requests,
            http_seconds,
            provisioning_seconds,
            step_failures,
            tenants,
            vault_operations,
        }
    }

    pub fn observe_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status: status.to_string(),
            })
            .inc();
        self.http_seconds
            .get_or_create(&RouteLabels { method: method.to_owned(), route: route.to_owned() })
            .observe(elapsed.as_secs_f64());
    }

    /// Reports `gateway`'s counters from now on.
    pub fn watch_gateway(&self, gateway: Arc<Gateway>) {
        let _ = self.gateway.gateway.set(gateway);
    }

    pub fn observe_provisioned(&self, elapsed: Duration) {
        self.provisioning_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn vault_operation(&self, action: &str, outcome: &str) {
        self.vault_operations
            .get_or_create(&VaultLabels { action: action.to_owned(), outcome: outcome.to_owned() })
            .inc();
    }

    /// Counts a run of a scheduled job.
    pub fn job_ran(&self, job: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.job_runs
            .get_or_create(&JobLabels { job: job.to_owned(), outcome: outcome.to_owned() })
            .inc();
    }

    pub fn lease_revocation_failed(&self) {
        self.lease_revocation_failures.inc();
    }

    pub fn set_leases_stuck(&self, count: u64) {
        self.leases_stuck.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn step_failed(&self, step: &str, action: &str) {
        self.step_failures
            .get_or_create(&StepLabels { step: step.to_owned(), action: action.to_owned() })
            .inc();
    }

    /// Sets the per-state tenant gauges, zeroing states with no tenants.
    pub fn set_tenant_counts(&self, counts: &[(TenantState, u64)]) {
        for state in TenantState::ALL {
            let count = counts.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
            self.tenants
                .get_or_create(&StateLabels { state: state.to_string() })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Sets the backup gauges from `(tenant, last success, failures)`,
    /// oldest success first: the first `labels` tenants by name, the rest
    /// as `_other`.
    pub fn set_backups(&self, tenants: &[(String, i64, i64)], labels: usize) {
        self.backup_last_success.clear();
        for (name, at, _) in tenants.iter().take(labels) {
            self.backup_last_success.get_or_create(&TenantLabels { tenant: name.clone() }).set(*at);
        }
        if let Some((_, oldest, _)) = tenants.get(labels) {
            let other = TenantLabels { tenant: "_other".to_owned() };
            self.backup_last_success.get_or_create(&other).set(*oldest);
        }
        let failing = tenants.iter().filter(|(_, _, failures)| *failures > 0).count();
        self.backups_failing.set(i64::try_from(failing).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The Prometheus text exposition (format 0.0.4), for scrapers that
    /// do not ask for OpenMetrics and for `promtool check metrics`.
    pub fn encode_classic(&self) -> Result<String, std::fmt::Error> {
        Ok(classic(&self.encode()?))
    }
}

/// `openmetrics` in the Prometheus text format: a counter's family is named
/// after its samples (`x_total`), `# UNIT` and `# EOF` go, and `unknown`
/// is `untyped`. The registry holds no info, state-set or gauge-histogram
/// metrics, which that format cannot say.
fn classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "].into_iter().find_map(|kind| {
            let (name, rest) = line.strip_prefix(kind)?.split_once(' ')?;
            Some((kind, name, rest))
        });
        match descriptor {
            Some((kind, name, rest)) if counters.contains(name) => {
                out.push_str(&format!("{kind}{name}_total {rest}\n"));
            }
            Some(("# TYPE ", name, "unknown")) => out.push_str(&format!("# TYPE {name} untyped\n")),
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_format_names_counter_families_after_their_samples() {
        let openmetrics = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 2\n# HELP a_age Age.\n# TYPE a_age gauge\n# UNIT a_age seconds\na_age 3\n# TYPE a_odd unknown\na_odd 1\n# EOF\n";
        assert_eq!(
            classic(openmetrics),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 2\n# HELP a_age Age.\n# TYPE a_age gauge\na_age 3\n# TYPE a_odd untyped\na_odd 1\n"
        );
    }
}
