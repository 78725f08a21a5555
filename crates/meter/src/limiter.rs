//! The limiter the gateway calls on every request. It hides whether limits
//! are kept in this process only or shared through Redis, and what happens
//! when Redis cannot answer.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tracing::debug;
use uuid::Uuid;

use crate::{
    Cell, Clock, Decision, Limit, MeterError,
    redis_limit::{RedisBackend, RedisOptions},
};

/// What a Redis-backed limiter does when Redis errs or is too slow: the
/// plan's `limiter_fallback`. `Local` enforces the limit in this process,
/// each replica taking its share (the rate and the burst divided by the
/// live replicas last counted, 1 if none was ever counted); `Deny` refuses
/// with [`Verdict::Unavailable`](crate::Verdict::Unavailable).
pub use bulkhead_model::LimiterFallback as Fallback;

/// What a limit applies to: a tenant, or one API of a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LimitKey<'a> {
    pub tenant: Uuid,
    pub api: Option<&'a str>,
}

impl<'a> LimitKey<'a> {
    /// The whole tenant.
    pub fn tenant(tenant: Uuid) -> Self {
        Self { tenant, api: None }
    }

    /// One API of the tenant.
    pub fn api(tenant: Uuid, api: &'a str) -> Self {
        Self { tenant, api: Some(api) }
    }
}

/// Decisions counted by kind since the limiter was made, for metrics. Every
/// decision is exactly one of local, redis or fallback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// Made in memory by a local-only limiter.
    pub local_decisions: u64,
    /// Made by Redis.
    pub redis_decisions: u64,
    /// Redis errors and timeouts.
    pub redis_errors: u64,
    /// Made by the fallback: after a Redis error, or while decisions skip
    /// Redis after one.
    pub fallback_decisions: u64,
}

#[derive(Debug, Default)]
struct Counters {
    local: AtomicU64,
    redis: AtomicU64,
    redis_errors: AtomicU64,
    fallback: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Per-tenant rate limiting, in memory or shared through Redis.
///
/// The gateway holds one [`Cell`] per limited key (in its configuration
/// snapshot) and passes it to every check: a local-only limiter decides with
/// it, a Redis-backed one only when falling back to [`Fallback::Local`].
/// Cells must be checked by one limiter only: their times are its clock's.
#[derive(Debug)]
pub struct Limiter {
    clock: Clock,
    redis: Option<Arc<RedisBackend>>,
    counters: Counters,
}

impl Limiter {
    /// Limits kept in this process only.
    pub fn local() -> Self {
        Self { clock: Clock::new(), redis: None, counters: Counters::default() }
    }

    /// Limits shared through the Redis at `url`, under keys starting with
    /// `prefix`, by every limiter on the same Redis and prefix. Returns
    /// without Redis being reachable (after at most
    /// [`RedisOptions::connect_timeout`]): until it is, decisions fall back.
    /// Fails only on a malformed `url`. Must run inside a Tokio runtime,
    /// where it spawns the replica heartbeat, which ends with the limiter.
    pub async fn redis(url: &str, prefix: &str, options: RedisOptions) -> Result<Self, MeterError> {
        let redis = RedisBackend::connect(url, prefix, &options).await?;
        Ok(Self {
            clock: Clock::new(),
            redis: Some(Arc::new(redis)),
            counters: Counters::default(),
        })
    }

    /// The Redis this limiter shares, for budgets kept beside the limits.
    pub(crate) fn redis_backend(&self) -> Option<Arc<RedisBackend>> {
        self.redis.clone()
    }

    /// The clock this limiter reads.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The live gateway replicas last counted in Redis (1 for a local-only
    /// limiter, and until a count was read).
    pub fn replicas(&self) -> u32 {
        self.redis.as_deref().map_or(1, RedisBackend::replicas)
    }

    /// Decisions so far, by kind.
    pub fn stats(&self) -> LimiterStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        LimiterStats {
            local_decisions: load(&self.counters.local),
            redis_decisions: load(&self.counters.redis),
            redis_errors: load(&self.counters.redis_errors),
            fallback_decisions: load(&self.counters.fallback),
        }
    }

    /// Decides one request for `key` under `limit` and, if allowed, takes
    /// its token. A local-only limiter decides with `cell` at once, without
    /// allocating or awaiting. A Redis-backed one asks Redis, waiting at most
    /// [`RedisOptions::timeout`], and on error or timeout applies `fallback`.
    pub async fn check(
        &self,
        key: &LimitKey<'_>,
        cell: &Cell,
        limit: &Limit,
        fallback: Fallback,
    ) -> Decision {
        let Some(redis) = &self.redis else {
            bump(&self.counters.local);
            return cell.check(limit, self.clock.now());
        };
        let now = self.clock.now();
        if !redis.paused(now) {
            match redis.check(key, limit).await {
                Ok(decision) => {
                    bump(&self.counters.redis);
                    return decision;
                }
                Err(error) => {
                    bump(&self.counters.redis_errors);
                    // The heartbeat logs the outage once; this is per request.
                    debug!(%error, "rate limit falls back");
                    // From now, not from before the wait, which may have
                    // been longer than the pause.
                    redis.pause(self.clock.now());
                }
            }
        }
        bump(&self.counters.fallback);
        match fallback {
            Fallback::Deny => Decision::unavailable(limit),
            Fallback::Local => cell.check(&limit.divided(redis.replicas()), self.clock.now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_limiter_decides_with_the_cell() {
        let limiter = Limiter::local();
        let limit = Limit::per_minute(1, 2).unwrap();
        let cell = Cell::new();
        let key = LimitKey::api(Uuid::from_u128(7), "orders");
        for fallback in [Fallback::Deny, Fallback::Local] {
            assert!(limiter.check(&key, &cell, &limit, fallback).await.allowed());
        }
        let refused = limiter.check(&key, &cell, &limit, Fallback::Deny).await;
        assert_eq!(refused.verdict(), crate::Verdict::Limited);
        assert_eq!(limiter.replicas(), 1);
        assert_eq!(limiter.stats(), LimiterStats { local_decisions: 3, ..LimiterStats::default() });
    }

    #[test]
    fn fallback_reads_as_lowercase() {
        let fallbacks: Vec<Fallback> = serde_json::from_str(r#"["local", "deny"]"#).unwrap();
        assert_eq!(fallbacks, [Fallback::Local, Fallback::Deny]);
        assert_eq!(serde_json::to_string(&Fallback::Deny).unwrap(), r#""deny""#);
        assert!(serde_json::from_str::<Fallback>(r#""Deny""#).is_err());
    }

    #[test]
    fn checks_are_send() {
        // The gateway runs them in Send futures.
        fn send<T: Send>(_: &T) {}
        let limiter = Limiter::local();
        let (cell, limit) = (Cell::new(), Limit::per_minute(1, 1).unwrap());
        let key = LimitKey::tenant(Uuid::nil());
        send(&limiter.check(&key, &cell, &limit, Fallback::Local));
    }
}
