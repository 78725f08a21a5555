//! A limit shared by every gateway replica through Redis: one atomic Lua
//! script per decision over one multiplexed connection, and a heartbeat that
//! counts the replicas so each knows its share when Redis is gone.
//!
//! Keys, under the caller's prefix:
//! - `{prefix}rl:{tenant}` and `{prefix}rl:{tenant}:{api}`: a limit's TAT in
//!   microseconds of the Redis server's clock, expiring when the bucket is
//!   full again;
//! - `{prefix}replicas`: a sorted set of replica ids scored by their last
//!   heartbeat;
//! - `{prefix}budget:{tenant}:{YYYY-MM}`: a tenant's model spend this month
//!   (see [`budget`](crate::budget)).
//!
//! Requires Redis 5 or later (scripts that call `TIME` before writing).

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{
    Client, RedisError, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use thiserror::Error;
use tokio::{task::AbortHandle, time::MissedTickBehavior};
use tracing::{info, warn};
use uuid::Uuid;

use crate::{Decision, Limit, LimitKey, MeterError, Nanos};

/// How a Redis-backed [`Limiter`](crate::Limiter) talks to Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// The longest a decision waits for Redis before the fallback decides.
    /// Default 25 ms: a round trip on a healthy network is well under one,
    /// and a loaded Redis that answers in 5 ms still shares one limit.
    pub timeout: Duration,
    /// After a Redis error or timeout, decisions go straight to the fallback
    /// for this long, so an outage costs one timeout per period instead of
    /// one per request. Default 250 ms.
    pub pause_after_error: Duration,
    /// The longest one connection attempt, and the first heartbeat, may take.
    /// Default 1 s.
    pub connect_timeout: Duration,
    /// How often this replica announces itself and reads the replica count.
    /// Default 1 s.
    pub heartbeat: Duration,
    /// How long a heartbeat counts: replicas silent for longer are not
    /// counted. Default 5 s.
    pub replica_ttl: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(25),
            pause_after_error: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            heartbeat: Duration::from_secs(1),
            replica_ttl: Duration::from_secs(5),
        }
    }
}

/// Why Redis did not decide.
#[derive(Debug, Error)]
pub(crate) enum RedisCheckError {
    #[error("no answer from redis within {0:?}")]
    Timeout(Duration),
    #[error("redis: {0}")]
    Redis(#[from] RedisError),
}

pub(crate) struct RedisBackend {
    connection: ConnectionManager,
    prefix: Box<str>,
    gcra: Script,
    timeout: Duration,
    pause_after_error: u64,
    /// Until when (limiter clock nanoseconds) decisions skip Redis.
    paused_until: AtomicU64,
    /// The live replicas last counted; 1 until a count was read.
    replicas: Arc<AtomicU32>,
    heartbeat: AbortHandle,
}

impl fmt::Debug for RedisBackend {
    // The connection's Debug shows the client's address and settings, which
    // may carry a password: left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("replicas", &self.replicas.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        // The replica's entry then ages out after `replica_ttl`.
        self.heartbeat.abort();
    }
}

impl RedisBackend {
    /// Sets up the connection without waiting for Redis to be reachable:
    /// a gateway starts, and limits by its fallback, while Redis is down.
    /// Waits at most `connect_timeout` for a first heartbeat.
    pub(crate) async fn connect(
        url: &str,
        prefix: &str,
        options: &RedisOptions,
    ) -> Result<Self, MeterError> {
        let client = Client::open(url).map_err(MeterError::Redis)?;
        // The connection reconnects on its own: a failed attempt is retried
        // twice within about 150 ms, then again at the next decision or
        // heartbeat, so a returning Redis is found within a heartbeat. The
        // connection's own response timeout only clears requests a hung Redis
        // never answers; decisions stop waiting long before.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.connect_timeout.max(options.timeout)))
            .set_min_delay(Duration::from_millis(50))
            .set_number_of_retries(2);
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(MeterError::Redis)?;
        let gcra = Script::new(include_str!("gcra.lua"));
        let heartbeat = Heartbeat {
            connection: connection.clone(),
            script: Script::new(include_str!("replicas.lua")),
            key: format!("{prefix}replicas"),
            id: Uuid::new_v4().to_string(),
            ttl_ms: u64::try_from(options.replica_ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            replicas: Arc::new(AtomicU32::new(1)),
        };
        let first = tokio::time::timeout(options.connect_timeout, async {
            // Loaded now so the first decision is one round trip; after a
            // Redis restart `invoke_async` loads it again on NOSCRIPT.
            gcra.prepare_invoke().load_async(&mut connection.clone()).await?;
            heartbeat.beat().await
        })
        .await;
        let reachable = match first {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                warn!(%error, "redis unreachable at start; rate limits use their fallback");
                false
            }
            Err(_) => {
                warn!("redis did not answer at start; rate limits use their fallback");
                false
            }
        };
        let replicas = heartbeat.replicas.clone();
        let heartbeat = tokio::spawn(
            heartbeat.run(options.heartbeat.max(Duration::from_millis(10)), reachable),
        )
        .abort_handle();
        Ok(Self {
            connection,
            prefix: prefix.into(),
            gcra,
            timeout: options.timeout,
            pause_after_error: Nanos::from(options.pause_after_error).0,
            paused_until: AtomicU64::new(0),
            replicas,
            heartbeat,
        })
    }

    /// The connection every decision shares (a clone is a reference count).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// What every key starts with.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The longest a decision waits for Redis.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The live replicas last counted, at least 1.
    pub(crate) fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed)
    }

    /// Whether decisions should skip Redis at `now`, after a recent error.
    pub(crate) fn paused(&self, now: Nanos) -> bool {
        now.0 < self.paused_until.load(Ordering::Relaxed)
    }

    /// Skips Redis for a while from `now`.
    pub(crate) fn pause(&self, now: Nanos) {
        self.paused_until.store(now.0.saturating_add(self.pause_after_error), Ordering::Relaxed);
    }

    /// One decision by the script, within the timeout.
    pub(crate) async fn check(
        &self,
        key: &LimitKey<'_>,
        limit: &Limit,
    ) -> Result<Decision, RedisCheckError> {
        let redis_key = match key.api {
            Some(api) => format!("{}rl:{}:{api}", self.prefix, key.tenant),
            None => format!("{}rl:{}", self.prefix, key.tenant),
        };
        let mut invocation = self.gcra.key(redis_key);
        invocation.arg(limit.interval_micros()).arg(limit.tolerance_micros());
        // A clone of the manager is a reference count: every decision shares
        // the one multiplexed connection, pipelined.
        let mut connection = self.connection.clone();
        let (allowed, remaining, reset, retry_after): (i64, i64, i64, i64) =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| RedisCheckError::Timeout(self.timeout))??;
        let count = |value: i64| u64::try_from(value).unwrap_or(0);
        Ok(Decision::from_micros(
            limit,
            allowed == 1,
            count(remaining),
            count(reset),
            count(retry_after),
        ))
    }
}

/// This replica's entry in the replica set.
struct Heartbeat {
    connection: ConnectionManager,
    script: Script,
    key: String,
    id: String,
    ttl_ms: u64,
    replicas: Arc<AtomicU32>,
}

impl Heartbeat {
    /// Announces this replica and stores the count of live ones.
    async fn beat(&self) -> Result<(), RedisError> {
        let count: u32 = self
            .script
            .key(&self.key)
            .arg(&self.id)
            .arg(self.ttl_ms)
            .invoke_async(&mut self.connection.clone())
            .await?;
        self.replicas.store(count.max(1), Ordering::Relaxed);
        Ok(())
    }

    /// Beats every `every` until aborted; logs only when Redis goes away or
    /// comes back. During an outage the last count stands.
    async fn run(self, every: Duration, mut reachable: bool) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick completes at once, and `connect` just beat.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            match tokio::time::timeout(every, self.beat()).await {
                Ok(Ok(())) => {
                    if !reachable {
                        info!(
                            replicas = self.replicas.load(Ordering::Relaxed),
                            "redis reachable again"
                        );
                    }
                    reachable = true;
                }
                Ok(Err(error)) if reachable => {
                    warn!(%error, "redis unreachable; rate limits use their fallback");
                    reachable = false;
                }
                Err(_) if reachable => {
                    warn!("redis heartbeat timed out; rate limits use their fallback");
                    reachable = false;
                }
                _ => {}
            }
        }
    }
}
