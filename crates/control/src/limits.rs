//! Per-tenant limits on the control plane, by plan ([`ControlQuotas`]): a
//! request rate for the tenant's own credentials on the control API, and
//! quotas on what a tenant may hold, so that no tenant fills the shared
//! store or crowds out the others.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use bulkhead_model::{ControlQuotas, Plan, Tenant, TenantId};
use thiserror::Error;

/// Requests a minute per tenant, by GCRA: each request moves the tenant's
/// theoretical arrival time on by one interval; a request more than
/// `burst` intervals ahead of now is refused until that many have passed.
#[derive(Debug, Default)]
pub struct RequestRate {
    arrivals: Mutex<HashMap<TenantId, Instant>>,
}

/// Tenants tracked before those idle long enough to be back at zero are
/// forgotten.
const MAX_TRACKED: usize = 100_000;

impl RequestRate {
    /// `Err(wait)` when the tenant is over its rate: how long until the next
    /// request would pass.
    pub fn check(
        &self,
        tenant: TenantId,
        quotas: &ControlQuotas,
        now: Instant,
    ) -> Result<(), Duration> {
        let interval = Duration::from_secs(60) / quotas.requests_per_minute.max(1);
        let tolerance = interval * quotas.burst;
        let Ok(mut arrivals) = self.arrivals.lock() else { return Ok(()) };
        if arrivals.len() >= MAX_TRACKED {
            arrivals.retain(|_, at| *at > now);
        }
        let at = arrivals.entry(tenant).or_insert(now);
        let next = (*at).max(now);
        let ahead = next - now;
        if ahead > tolerance {
            return Err(ahead - tolerance);
        }
        *at = next + interval;
        Ok(())
    }
}

/// What a plan limits the number of, among what a tenant holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    Secrets,
    ApiKeys,
    LiveCredentials,
}

impl Quota {
    fn allowed(self, quotas: &ControlQuotas) -> u32 {
        match self {
            Quota::Secrets => quotas.secrets,
            Quota::ApiKeys => quotas.api_keys,
            Quota::LiveCredentials => quotas.live_credentials,
        }
    }

    fn what(self) -> &'static str {
        match self {
            Quota::Secrets => "secrets",
            Quota::ApiKeys => "API keys",
            Quota::LiveCredentials => "live database credentials",
        }
    }

    /// What frees one.
    fn remedy(self) -> &'static str {
        match self {
            Quota::Secrets => "delete secrets it no longer needs",
            Quota::ApiKeys => "revoke keys no longer used (`bulkhead apikeys revoke`)",
            Quota::LiveCredentials => "revoke those no longer used (`bulkhead creds revoke`)",
        }
    }
}

/// A tenant holds as many of something as its plan allows.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "tenant {tenant:?} has {held} {what}, as many as plan {plan} allows; {remedy}, or move the \
     tenant to a larger plan"
)]
pub struct QuotaExceeded {
    pub tenant: String,
    pub what: &'static str,
    pub held: usize,
    pub plan: String,
    /// What frees one.
    pub remedy: &'static str,
}

impl QuotaExceeded {
    /// `Err` when `tenant`, holding `held` of `quota`, may not have one more
    /// on `plan`.
    pub fn check(tenant: &Tenant, plan: &Plan, quota: Quota, held: usize) -> Result<(), Self> {
        if held < quota.allowed(&plan.quotas) as usize {
            return Ok(());
        }
        Err(Self {
            tenant: tenant.name.to_string(),
            what: quota.what(),
            held,
            plan: plan.name.to_string(),
            remedy: quota.remedy(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_pace_holds_per_tenant() {
        let rate = RequestRate::default();
        let quotas = ControlQuotas {
            requests_per_minute: 60,
            burst: 5,
            secrets: 1,
            api_keys: 1,
            live_credentials: 1,
        };
        let (acme, globex) = (TenantId::random(), TenantId::random());
        let start = Instant::now();
        for _ in 0..6 {
            assert_eq!(rate.check(acme, &quotas, start), Ok(()));
        }
        let wait = rate.check(acme, &quotas, start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        assert_eq!(rate.check(globex, &quotas, start), Ok(()), "another tenant is not held up");
        assert_eq!(rate.check(acme, &quotas, start + Duration::from_secs(1)), Ok(()));
    }
}
