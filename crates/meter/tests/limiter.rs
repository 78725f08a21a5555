//! The Redis-backed limiter and budgets against a real Redis
//! (`BULKHEAD_TEST_REDIS`, or `redis://127.0.0.1:6379`): two limiters (and
//! budgets) stand for two gateway replicas;
//! outages are real closed ports and a TCP proxy that is stopped and
//! started again. Every test has its own key prefix and deletes its keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::{
    net::{SocketAddr, TcpListener as StdListener, ToSocketAddrs},
    time::{Duration, Instant},
};

use bulkhead_meter::{
    Budgets, Caps, Cell, Fallback, Ledger, Limit, LimitKey, Limiter, Period, RedisOptions, Spend,
    Verdict,
};
use bulkhead_testkit::TcpProxy;
use uuid::Uuid;

fn redis_url() -> String {
    std::env::var("BULKHEAD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The Redis server's address, for the proxy.
fn redis_addr() -> SocketAddr {
    let url = redis_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, hp)| hp);
    let host_port = host_port.split('/').next().unwrap();
    let host_port =
        if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:6379") };
    host_port.to_socket_addrs().unwrap().next().unwrap()
}

fn unique_prefix() -> String {
    format!("bh-test-{}:", Uuid::new_v4().simple())
}

/// Generous timeouts (the test machine is small and busy) and a fast
/// heartbeat, so the tests wait little.
fn options() -> RedisOptions {
    RedisOptions {
        timeout: Duration::from_millis(500),
        pause_after_error: Duration::from_millis(50),
        connect_timeout: Duration::from_millis(500),
        heartbeat: Duration::from_millis(100),
        replica_ttl: Duration::from_secs(2),
    }
}

async fn admin() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis_url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

async fn keys(prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut admin().await).await.unwrap();
    keys.sort();
    keys
}

async fn delete_keys(prefix: &str) {
    let keys = keys(prefix).await;
    if !keys.is_empty() {
        let () = redis::cmd("DEL").arg(keys).query_async(&mut admin().await).await.unwrap();
    }
}

/// Polls `done` every 20 ms for up to 10 s.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port nothing listens on: bound by the system, then released.
fn closed_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn two_replicas_share_one_limit() {
    let prefix = unique_prefix();
    let a = Limiter::redis(&redis_url(), &prefix, options()).await.unwrap();
    let b = Limiter::redis(&redis_url(), &prefix, options()).await.unwrap();
    let (cell_a, cell_b) = (Cell::new(), Cell::new());
    let tenant = Uuid::new_v4();
    let key = LimitKey::api(tenant, "orders");
    // One a minute: nothing refills while the test runs.
    let limit = Limit::per_minute(1, 10).unwrap();

    let first = a.check(&key, &cell_a, &limit, Fallback::Deny).await;
    assert!(first.allowed());
    assert_eq!((first.limit(), first.remaining()), (10, 9));
    assert_eq!(first.reset(), Duration::from_secs(60));

    let mut allowed = 1;
    let mut last = first;
    for n in 0..19 {
        let (limiter, cell) = if n % 2 == 0 { (&b, &cell_b) } else { (&a, &cell_a) };
        last = limiter.check(&key, cell, &limit, Fallback::Deny).await;
        allowed += u32::from(last.allowed());
    }
    assert_eq!(allowed, 10, "one limit of 10 across both replicas");
    assert_eq!(last.verdict(), Verdict::Limited);
    assert_eq!(last.remaining(), 0);
    // The next token is a minute after the first, less the test's time.
    assert!((59..=60).contains(&last.retry_after_secs().unwrap()), "{last:?}");
    assert!((599..=600).contains(&last.reset_secs()), "{last:?}");
    // The local cells were never used.
    assert!(cell_a.check(&limit, a.clock().now()).allowed());

    // Another API and the tenant as a whole are limits of their own.
    let whole = LimitKey::tenant(tenant);
    assert!(a.check(&whole, &Cell::new(), &limit, Fallback::Deny).await.allowed());
    let (stats_a, stats_b) = (a.stats(), b.stats());
    assert_eq!(stats_a.redis_decisions + stats_b.redis_decisions, 21);
    assert_eq!(stats_a.redis_errors + stats_b.redis_errors, 0);
    assert_eq!(stats_a.fallback_decisions + stats_b.fallback_decisions, 0);

    // Both replicas count each other.
    eventually("two replicas", async || a.replicas() == 2 && b.replicas() == 2).await;

    // The keys are where the docs say, and expire when the bucket is full.
    assert_eq!(
        keys(&prefix).await,
        [
            format!("{prefix}replicas"),
            format!("{prefix}rl:{tenant}"),
            format!("{prefix}rl:{tenant}:orders")
        ]
    );
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("{prefix}rl:{tenant}:orders"))
        .query_async(&mut admin().await)
        .await
        .unwrap();
    assert!((590_000..=600_000).contains(&ttl), "{ttl} ms");
    delete_keys(&prefix).await;
}

#[tokio::test]
async fn unreachable_redis_denies_or_limits_locally() {
    let url = format!("redis://127.0.0.1:{}", closed_port());
    let start = Instant::now();
    // A long pause after an error: every check after the first skips Redis.
    let options = RedisOptions { pause_after_error: Duration::from_secs(60), ..options() };
    let limiter = Limiter::redis(&url, &unique_prefix(), options).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(1), "a refused connection is not waited on");
    let key = LimitKey::tenant(Uuid::new_v4());
    let limit = Limit::per_minute(1, 4).unwrap();

    let cell = Cell::new();
    let denied = limiter.check(&key, &cell, &limit, Fallback::Deny).await;
    assert_eq!(denied.verdict(), Verdict::Unavailable);
    assert_eq!((denied.limit(), denied.remaining()), (4, 0));
    assert_eq!(denied.retry_after_secs(), Some(1));
    assert!(!denied.allowed());

    // No replica count was ever read: the whole limit applies locally.
    assert_eq!(limiter.replicas(), 1);
    let allowed = {
        let mut allowed = 0;
        for _ in 0..8 {
            allowed +=
                u32::from(limiter.check(&key, &cell, &limit, Fallback::Local).await.allowed());
        }
        allowed
    };
    assert_eq!(allowed, 4);
    let stats = limiter.stats();
    assert_eq!((stats.redis_decisions, stats.local_decisions), (0, 0));
    assert_eq!((stats.fallback_decisions, stats.redis_errors), (9, 1));
}

#[tokio::test]
async fn an_outage_falls_back_to_a_replicas_share_and_the_shared_limit_resumes() {
    let prefix = unique_prefix();
    let proxy = TcpProxy::start("127.0.0.1:0".parse().unwrap(), redis_addr()).await;
    let through_proxy =
        Limiter::redis(&format!("redis://{}", proxy.addr), &prefix, options()).await.unwrap();
    let direct = Limiter::redis(&redis_url(), &prefix, options()).await.unwrap();
    eventually("two replicas", async || through_proxy.replicas() == 2).await;
    let limit = Limit::per_minute(1, 10).unwrap();
    let tenant = Uuid::new_v4();

    // Redis goes away for one replica.
    let stopped = proxy.stop().await;
    let key = LimitKey::api(tenant, "outage");
    let cell = Cell::new();
    let unavailable = through_proxy.check(&key, &cell, &limit, Fallback::Deny).await;
    assert_eq!(unavailable.verdict(), Verdict::Unavailable);
    // Its share of the limit: half the burst, at half the rate.
    let mut allowed = 0;
    for _ in 0..10 {
        let decision = through_proxy.check(&key, &cell, &limit, Fallback::Local).await;
        if decision.allowed() {
            allowed += 1;
            assert_eq!(decision.limit(), 5);
        }
    }
    assert_eq!(allowed, 5);
    assert_eq!(through_proxy.replicas(), 2, "the last count stands during the outage");
    assert!(through_proxy.stats().redis_errors >= 1);

    // Redis comes back: decisions are Redis's again.
    let proxy = stopped.restart().await;
    let probe = LimitKey::api(tenant, "probe");
    eventually("redis decisions", async || {
        through_proxy.check(&probe, &Cell::new(), &limit, Fallback::Deny).await.verdict()
            != Verdict::Unavailable
    })
    .await;
    // And the limit is shared again: what one replica used, the other sees.
    let shared = LimitKey::api(tenant, "shared");
    for _ in 0..10 {
        assert!(direct.check(&shared, &Cell::new(), &limit, Fallback::Deny).await.allowed());
    }
    let before = through_proxy.stats().redis_decisions;
    let refused = through_proxy.check(&shared, &Cell::new(), &limit, Fallback::Local).await;
    assert_eq!(refused.verdict(), Verdict::Limited);
    assert_eq!(refused.limit(), 10);
    assert_eq!(through_proxy.stats().redis_decisions, before + 1);

    proxy.stop().await;
    delete_keys(&prefix).await;
}

/// The durable spend a budget counter is seeded from.
#[derive(Debug)]
struct Spent(u64);

#[async_trait::async_trait]
impl Ledger for Spent {
    async fn spent(&self, _: Uuid, _: Period) -> Result<u64, String> {
        Ok(self.0)
    }
}

#[tokio::test]
async fn two_replicas_share_one_budget_seeded_from_the_ledger() {
    let prefix = unique_prefix();
    let ledger = || Some(std::sync::Arc::new(Spent(10)) as std::sync::Arc<dyn Ledger>);
    let a = Limiter::redis(&redis_url(), &prefix, options()).await.unwrap();
    let b = Limiter::redis(&redis_url(), &prefix, options()).await.unwrap();
    let budgets = std::sync::Arc::new([Budgets::new(&a, ledger()), Budgets::new(&b, ledger())]);
    let tenant = Uuid::new_v4();
    let caps = Caps { soft_micros: 50, hard_micros: 100 };
    let now = time::OffsetDateTime::now_utc();
    let period = Period::of(now);

    // 50 calls at once, half through each replica, on a budget with room
    // for 30 reservations of 3 after the ledger's 10.
    let calls = (0..50).map(|n| {
        let budgets = std::sync::Arc::clone(&budgets);
        tokio::spawn(
            async move { budgets[n % 2].reserve(tenant, caps, 3, now, Fallback::Deny).await },
        )
    });
    let mut reserved = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Spend::Reserved(r) => reserved.push(r),
            Spend::Exhausted { spent } => assert!(spent > 97, "{spent}"),
            Spend::Unavailable => panic!("redis answers"),
        }
    }
    assert_eq!(reserved.len(), 30);
    let key = format!("{prefix}budget:{tenant}:{period}");
    let counter = async || -> Option<i64> {
        redis::cmd("HGET").arg(&key).arg("spent").query_async(&mut admin().await).await.unwrap()
    };
    assert_eq!(counter().await, Some(100));
    // Settled for 2 each: 30 freed, which a settlement does after the call.
    for r in reserved {
        r.settle(2);
    }
    eventually("settled", async || counter().await == Some(70)).await;
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut admin().await).await.unwrap();
    assert!(ttl > 7 * 86_400 && ttl <= 39 * 86_400, "kept a week past the month: {ttl}");

    // Redis loses the counter: the next call seeds it from the ledger again.
    let Spend::Reserved(before) = budgets[0].reserve(tenant, caps, 20, now, Fallback::Deny).await
    else {
        panic!("room for 20")
    };
    let () = redis::cmd("DEL").arg(&key).query_async(&mut admin().await).await.unwrap();
    let Spend::Reserved(r) = budgets[1].reserve(tenant, caps, 5, now, Fallback::Deny).await else {
        panic!("room after the ledger's 10")
    };
    assert_eq!(r.spent, 15);
    // A reservation made in the lost counter settles its whole cost into
    // the new one (never its difference: that one never held it), which
    // the ledger it was seeded from could not hold yet.
    before.settle(4);
    r.settle(5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(counter().await, Some(19));
    let () = redis::cmd("DEL").arg(&key).query_async(&mut admin().await).await.unwrap();
    delete_keys(&prefix).await;
}

#[tokio::test]
async fn an_unreachable_redis_refuses_budgets_or_keeps_them_locally() {
    let url = format!("redis://127.0.0.1:{}", closed_port());
    let limiter = Limiter::redis(&url, &unique_prefix(), options()).await.unwrap();
    let budgets = Budgets::new(&limiter, None);
    let caps = Caps { soft_micros: 1, hard_micros: 2 };
    let (tenant, now) = (Uuid::new_v4(), time::OffsetDateTime::now_utc());
    let denied = budgets.reserve(tenant, caps, 1, now, Fallback::Deny).await;
    assert!(matches!(denied, Spend::Unavailable), "{denied:?}");
    let local = budgets.reserve(tenant, caps, 2, now, Fallback::Local).await;
    assert!(matches!(local, Spend::Reserved(_)), "{local:?}");
    let over = budgets.reserve(tenant, caps, 1, now, Fallback::Local).await;
    assert!(matches!(over, Spend::Exhausted { spent: 2 }), "{over:?}");
}
