//! Anomaly detection: one principal reaching for many tenants' secrets or
//! credentials in a short time is what a stolen credential or a
//! confused-deputy bug looks like, and never what a healthy service does.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use bulkhead_model::TenantId;
use time::OffsetDateTime;

/// When to raise an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnomalyPolicy {
    /// Distinct tenants one principal may touch within `window` without an
    /// alert; touching one more raises it.
    pub max_tenants: usize,
    pub window: Duration,
    /// Refuse the principal's further reads until an operator clears it.
    pub lockout: bool,
}

impl Default for AnomalyPolicy {
    fn default() -> Self {
        Self { max_tenants: 20, window: Duration::from_secs(300), lockout: false }
    }
}

/// Counts distinct tenants per principal over a sliding window.
#[derive(Debug)]
pub struct AnomalyDetector {
    policy: AnomalyPolicy,
    seen: Mutex<HashMap<String, VecDeque<(OffsetDateTime, TenantId)>>>,
}

/// What one access did to its principal's count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Normal,
    /// The principal has touched `tenants` distinct tenants within the
    /// window, more than the policy allows.
    Alert {
        tenants: usize,
    },
}

impl AnomalyDetector {
    pub fn new(policy: AnomalyPolicy) -> Self {
        Self { policy, seen: Mutex::default() }
    }

    pub fn policy(&self) -> &AnomalyPolicy {
        &self.policy
    }

    /// Records that `principal` touched `tenant` at `now`.
    pub fn observe(&self, principal: &str, tenant: TenantId, now: OffsetDateTime) -> Verdict {
        let Ok(mut seen) = self.seen.lock() else {
            // A poisoned map only loses counts; never fail an access on it.
            return Verdict::Normal;
        };
        let window_start = time::Duration::try_from(self.policy.window)
            .ok()
            .and_then(|window| now.checked_sub(window))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let entries = seen.entry(principal.to_owned()).or_default();
        while entries.front().is_some_and(|(at, _)| *at < window_start) {
            entries.pop_front();
        }
        // Keep one entry per tenant: the latest touch.
        entries.retain(|(_, t)| *t != tenant);
        entries.push_back((now, tenant));
        if entries.len() > self.policy.max_tenants {
            Verdict::Alert { tenants: entries.len() }
        } else {
            Verdict::Normal
        }
    }

    /// Forgets a principal's history, after an operator cleared it.
    pub fn forget(&self, principal: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(principal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_on_the_first_tenant_over_the_limit_within_the_window() {
        let detector = AnomalyDetector::new(AnomalyPolicy {
            max_tenants: 3,
            window: Duration::from_secs(60),
            lockout: false,
        });
        let t0 = OffsetDateTime::UNIX_EPOCH;
        let tenants: Vec<_> = (0..5).map(|_| TenantId::random()).collect();
        for (i, tenant) in tenants.iter().take(3).enumerate() {
            assert_eq!(
                detector.observe("svc", *tenant, t0 + Duration::from_secs(i as u64)),
                Verdict::Normal
            );
        }
        // The same tenants again are not new.
        assert_eq!(
            detector.observe("svc", tenants[0], t0 + Duration::from_secs(5)),
            Verdict::Normal
        );
        // Another principal has its own count.
        assert_eq!(detector.observe("other", tenants[3], t0), Verdict::Normal);
        assert_eq!(
            detector.observe("svc", tenants[3], t0 + Duration::from_secs(10)),
            Verdict::Alert { tenants: 4 }
        );
        // Outside the window, old touches no longer count.
        let later = t0 + Duration::from_secs(200);
        assert_eq!(detector.observe("svc", tenants[4], later), Verdict::Normal);
    }
}
