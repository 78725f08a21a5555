//! What the gateway counts for `/metrics`: atomics bumped on the request
//! path, read and labelled only when scraped. Per-tenant series are capped:
//! the first `tenant_labels` tenants that send traffic get their own, the
//! rest are summed as one, so 100,000 tenants cannot explode the series
//! count (and every counter stays monotonic).

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bulkhead_model::{PiiAction, PiiKind};

use crate::error::{Code, Phase, Refusal};

/// Upper bounds of the upstream latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

const CODES: [Code; 23] = [
    Code::BadRequest,
    Code::NotFound,
    Code::TenantSuspended,
    Code::Unauthenticated,
    Code::Forbidden,
    Code::RouteNotFound,
    Code::MethodNotAllowed,
    Code::PayloadTooLarge,
    Code::RateLimited,
    Code::TenantOverloaded,
    Code::LimiterUnavailable,
    Code::UpstreamUnavailable,
    Code::UpstreamTimeout,
    Code::GuardrailPii,
    Code::GuardrailBlockedTopic,
    Code::GuardrailPromptTooLarge,
    Code::UnsupportedEncoding,
    Code::UnsupportedMediaType,
    Code::BodyTimeout,
    Code::GuardUnavailable,
    Code::ModelNotAllowed,
    Code::BudgetExhausted,
    Code::BudgetUnavailable,
];

/// One tenant's requests and refusals.
#[derive(Debug, Default)]
pub struct TenantCounters {
    pub requests: AtomicU64,
    pub refused: AtomicU64,
}

/// Whether a tenant has a series of its own, decided at its first request.
#[derive(Debug, Default)]
pub struct Labelled {
    own: OnceLock<bool>,
    pub counters: TenantCounters,
}

impl Labelled {
    pub fn own(&self) -> bool {
        self.own.get().copied().unwrap_or(false)
    }
}

#[derive(Debug)]
pub struct Stats {
    refusals: Vec<AtomicU64>,
    /// By PII kind and action, in [`PiiKind::ALL`] and [`ACTIONS`] order.
    findings: Vec<AtomicU64>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
    labelled: AtomicUsize,
    tenant_labels: usize,
    /// The tenants beyond the cap, together.
    pub other: TenantCounters,
}

const ACTIONS: [PiiAction; 3] = [PiiAction::Redact, PiiAction::Reject, PiiAction::Log];

fn action_name(action: PiiAction) -> &'static str {
    match action {
        PiiAction::Redact => "redact",
        PiiAction::Reject => "reject",
        PiiAction::Log => "log",
    }
}

fn finding_index(kind: PiiKind, action: PiiAction) -> usize {
    let k = PiiKind::ALL.iter().position(|x| *x == kind).unwrap_or(0);
    let a = ACTIONS.iter().position(|x| *x == action).unwrap_or(0);
    k * ACTIONS.len() + a
}

fn index(phase: Phase, code: Code) -> usize {
    let p = Phase::ALL.iter().position(|x| *x == phase).unwrap_or(0);
    let c = CODES.iter().position(|x| *x == code).unwrap_or(0);
    p * CODES.len() + c
}

impl Stats {
    pub fn new(tenant_labels: usize) -> Self {
        Self {
            refusals: (0..Phase::ALL.len() * CODES.len()).map(|_| AtomicU64::new(0)).collect(),
            findings: (0..PiiKind::ALL.len() * ACTIONS.len()).map(|_| AtomicU64::new(0)).collect(),
            latency_buckets: Default::default(),
            latency_sum_us: AtomicU64::new(0),
            labelled: AtomicUsize::new(0),
            tenant_labels,
            other: TenantCounters::default(),
        }
    }

    /// Counts one answered request of `tenant` (if one was resolved).
    pub fn count(&self, tenant: Option<&Labelled>, refusal: Option<&Refusal>) {
        if let Some(refusal) = refusal {
            self.refusals[index(refusal.phase, refusal.code)].fetch_add(1, Ordering::Relaxed);
        }
        let Some(tenant) = tenant else { return };
        let own = *tenant
            .own
            .get_or_init(|| self.labelled.fetch_add(1, Ordering::Relaxed) < self.tenant_labels);
        let counters = if own { &tenant.counters } else { &self.other };
        counters.requests.fetch_add(1, Ordering::Relaxed);
        if refusal.is_some() {
            counters.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts what a guardrail found in a body.
    pub fn found(&self, kind: PiiKind, action: PiiAction, count: u32) {
        if let Some(counter) = self.findings.get(finding_index(kind, action)) {
            counter.fetch_add(u64::from(count), Ordering::Relaxed);
        }
    }

    /// Findings so far, by kind and action (those that happened).
    pub fn guard_findings(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for kind in PiiKind::ALL {
            for action in ACTIONS {
                let count = self.findings[finding_index(kind, action)].load(Ordering::Relaxed);
                if count > 0 {
                    out.push((kind.as_str(), action_name(action), count));
                }
            }
        }
        out
    }

    pub fn observe_upstream(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let bucket =
            LATENCY_BUCKETS.iter().position(|le| seconds <= *le).unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// Refusals so far, by phase and code (those that happened).
    pub fn refusals(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for phase in Phase::ALL {
            for code in CODES {
                let count = self.refusals[index(phase, code)].load(Ordering::Relaxed);
                if count > 0 {
                    out.push((phase.as_str(), code.as_str(), count));
                }
            }
        }
        out
    }

    /// The upstream latency histogram: (upper bound, count) per bucket (not
    /// cumulative), the sum in seconds and the count.
    pub fn upstream_latency(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let buckets: Vec<(f64, u64)> = self
            .latency_buckets
            .iter()
            .enumerate()
            .map(|(i, count)| {
                let le = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
                (le, count.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, sum, count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_past_the_cap_share_one_series() {
        let stats = Stats::new(2);
        let tenants: Vec<Labelled> = (0..4).map(|_| Labelled::default()).collect();
        for tenant in &tenants {
            stats.count(Some(tenant), None);
            stats.count(Some(tenant), None);
        }
        assert_eq!(tenants.iter().filter(|t| t.own()).count(), 2);
        assert_eq!(stats.other.requests.load(Ordering::Relaxed), 4);
        let refusal = Refusal::new(Phase::Authn, Code::Unauthenticated, "x");
        stats.count(Some(&tenants[0]), Some(&refusal));
        stats.count(None, Some(&refusal));
        assert_eq!(stats.refusals(), [("authn", "unauthenticated", 2)]);
        assert_eq!(tenants[0].counters.refused.load(Ordering::Relaxed), 1);
        stats.observe_upstream(Duration::from_micros(700));
        let (buckets, _, count) = stats.upstream_latency();
        assert_eq!((buckets[0].1, buckets[1].1, count), (0, 1, 1));
    }
}
