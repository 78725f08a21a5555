//! Reads: the permitted request's tenant and API. Adds: the request's
//! in-flight slot, held until its response body ends, within the tenant's
//! cap (the bulkhead: past it only this tenant is refused, with 503
//! `tenant_overloaded`), and the rate limit's verdict.
//!
//! The tenant's runtime outlives snapshot rebuilds, so a configuration
//! change neither resets a tenant's counters nor frees its slots.

use std::sync::{
    Arc,
    atomic::{AtomicU32, AtomicU64, Ordering},
};

use bulkhead_model::GatewayLimits;

use crate::error::{Code, Phase, Refusal};

/// What one tenant occupies in this gateway, across snapshots.
#[derive(Debug, Default)]
pub struct TenantRuntime {
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
