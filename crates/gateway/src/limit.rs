//! Reads: the permitted request's tenant and API. Adds: the rate limits'
//! verdict (the tenant's, then the API's own: 429 `rate_limited` with
//! `Retry-After`, or 503 `limiter_unavailable` when a shared limit cannot
//! be reached and the plan says `deny`), and the request's in-flight slot,
//! held until its response body ends, within the tenant's cap (the
//! bulkhead: past it only this tenant is refused, with 503
//! `tenant_overloaded`).
//!
//! The tenant's runtime outlives snapshot rebuilds, so a configuration
//! change neither resets a tenant's counters nor frees its slots.

use std::sync::{
    Arc,
    atomic::{AtomicU32, AtomicU64, Ordering},
};

use bulkhead_meter::{Cell, Decision, Limit, LimitKey, Limiter, Verdict};
use bulkhead_model::GatewayLimits;
use http::{HeaderName, HeaderValue};

use crate::{
    authz::Permitted,
    error::{Code, Phase, Refusal},
};

pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// What a request was admitted with: its slot, and the tightest rate
/// decision, for the `RateLimit-*` headers.
#[derive(Debug)]
pub struct Admitted {
    pub slot: Slot,
    pub rate: Option<Decision>,
}

/// The `RateLimit-Limit`, `-Remaining` and `-Reset` headers of `decision`.
pub fn rate_headers(decision: &Decision) -> [(HeaderName, HeaderValue); 3] {
    [
        (RATELIMIT_LIMIT, HeaderValue::from(decision.limit())),
        (RATELIMIT_REMAINING, HeaderValue::from(decision.remaining())),
        (RATELIMIT_RESET, HeaderValue::from(decision.reset_secs())),
    ]
}

async fn check(
    limiter: &Limiter,
    key: LimitKey<'_>,
    cell: &Cell,
    limit: &Limit,
    limits: &GatewayLimits,
) -> Result<Decision, Refusal> {
    let decision = limiter.check(&key, cell, limit, limits.limiter_fallback).await;
    let code = match decision.verdict() {
        Verdict::Allowed => return Ok(decision),
        Verdict::Limited => Code::RateLimited,
        Verdict::Unavailable => Code::LimiterUnavailable,
    };
    let mut refusal = Refusal::new(Phase::Limit, code, "over the rate limit");
    if let Some(wait) = decision.retry_after() {
        refusal = refusal.retry_after(wait);
    }
    for (name, value) in rate_headers(&decision) {
        refusal = refusal.with_header(name, value);
    }
    Err(refusal)
}

/// Admits `permitted` within its tenant's and API's rates and its tenant's
/// in-flight cap.
pub async fn admit(limiter: &Limiter, permitted: &Permitted) -> Result<Admitted, Refusal> {
    let tenant = &permitted.tenant.0;
    let api = &permitted.route.api;
    let mut tightest: Option<Decision> = None;
    if let Some(limit) = &tenant.rate {
        let key = LimitKey::tenant(tenant.id);
        tightest = Some(check(limiter, key, &tenant.runtime.cell, limit, &tenant.limits).await?);
    }
    if let Some(limit) = &api.rate {
        let key = LimitKey::api(tenant.id, &api.name);
        let decision = check(limiter, key, &api.cell, limit, &tenant.limits).await?;
        if tightest.is_none_or(|t| decision.remaining() < t.remaining()) {
            tightest = Some(decision);
        }
    }
    let slot = tenant.runtime.enter()?;
    Ok(Admitted { slot, rate: tightest })
}

/// What one tenant occupies in this gateway, across snapshots.
#[derive(Debug, Default)]
pub struct TenantRuntime {
    /// The tenant's rate limit in this process.
    pub cell: Cell,
    /// Its requests and refusals, for `/metrics`.
    pub labelled: crate::stats::Labelled,
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
    connections: AtomicU32,
    max_connections: AtomicU32,
    /// Requests admitted, and refused by this phase, since start.
    pub admitted: AtomicU64,
    pub overloaded: AtomicU64,
}

impl TenantRuntime {
    pub fn set_limits(&self, limits: &GatewayLimits) {
        self.max_in_flight.store(limits.max_in_flight, Ordering::Relaxed);
        self.max_connections.store(limits.max_upstream_connections, Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Takes one of the tenant's in-flight slots, if one is free.
    pub fn enter(self: &Arc<Self>) -> Result<Slot, Refusal> {
        take(&self.in_flight, self.max_in_flight.load(Ordering::Relaxed))
            .map(|()| {
                self.admitted.fetch_add(1, Ordering::Relaxed);
                Slot(Arc::clone(self))
            })
            .ok_or_else(|| {
                self.overloaded.fetch_add(1, Ordering::Relaxed);
                Refusal::new(Phase::Limit, Code::TenantOverloaded, "in-flight cap reached")
            })
    }

    /// Takes one of the tenant's upstream connections, if one is free.
    pub fn connect(self: &Arc<Self>) -> Option<ConnectionSlot> {
        take(&self.connections, self.max_connections.load(Ordering::Relaxed))
            .map(|()| ConnectionSlot(Arc::clone(self)))
    }
}

fn take(count: &AtomicU32, cap: u32) -> Option<()> {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1))
        .ok()
        .map(|_| ())
}

/// A request in flight; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot(Arc<TenantRuntime>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open upstream connection; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<TenantRuntime>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}
