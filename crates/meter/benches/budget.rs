//! The cost-cap decision: one model call's reservation and its settlement,
//! kept in this process (atomics) and shared through Redis (two Lua
//! scripts), as p50 and p99 of single decisions, which a mean would hide.
//!
//!     cargo bench -p bulkhead-meter --bench budget
//!
//! Redis is `BULKHEAD_TEST_REDIS` (default `redis://127.0.0.1:6379`); its
//! part is skipped when it cannot be reached. Keys are under a prefix of
//! their own, deleted at the end. Prints a Markdown table.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::disallowed_methods
)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bulkhead_meter::{Budgets, Caps, Fallback, Limiter, RedisOptions, Spend};
use uuid::Uuid;

/// Decisions measured per row, after as many to warm up.
const DECISIONS: usize = 20_000;

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

/// Latencies of `DECISIONS` reservations, each settled at once; with
/// `tasks` > 1 that many run at a time, each timing its own.
async fn measure(budgets: Arc<Budgets>, tasks: usize) -> Vec<Duration> {
    let caps = Caps { soft_micros: u64::MAX / 4, hard_micros: u64::MAX / 2 };
    let tenant = Uuid::new_v4();
    let run = |count: usize| {
        let budgets = Arc::clone(&budgets);
        tokio::spawn(async move {
            let mut took = Vec::with_capacity(count);
            for _ in 0..count {
                let now = time::OffsetDateTime::now_utc();
                let started = Instant::now();
                let Spend::Reserved(reservation) =
                    budgets.reserve(tenant, caps, 1_000, now, Fallback::Deny).await
                else {
                    panic!("the budget is far from its cap")
                };
                took.push(started.elapsed());
                reservation.settle(900);
            }
            took
        })
    };
    for handle in (0..tasks).map(|_| run(DECISIONS / tasks)) {
        handle.await.unwrap();
    }
    let mut all = Vec::new();
    for handle in (0..tasks).map(|_| run(DECISIONS / tasks)) {
        all.extend(handle.await.unwrap());
    }
    all.sort();
    all
}

fn row(label: &str, sorted: &[Duration]) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "| {label} | {:.2} µs | {:.2} µs | {:.2} µs |",
        us(percentile(sorted, 50)),
        us(percentile(sorted, 99)),
        us(*sorted.last().unwrap())
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        println!("| cost-cap decision ({DECISIONS} reservations) | p50 | p99 | max |");
        println!("|---|---|---|---|");
        let local = Arc::new(Budgets::new(&Limiter::local(), None));
        row("in this process, one at a time", &measure(Arc::clone(&local), 1).await);
        row("in this process, 16 at a time", &measure(local, 16).await);

        let url = std::env::var("BULKHEAD_TEST_REDIS")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let prefix = format!("bh-bench-{}:", Uuid::new_v4().simple());
        let options = RedisOptions { timeout: Duration::from_secs(1), ..RedisOptions::default() };
        let limiter = Limiter::redis(&url, &prefix, options).await.unwrap();
        let budgets = Arc::new(Budgets::new(&limiter, None));
        let probe = budgets
            .reserve(
                Uuid::nil(),
                Caps { soft_micros: 1, hard_micros: 1 },
                1,
                time::OffsetDateTime::now_utc(),
                Fallback::Deny,
            )
            .await;
        if matches!(probe, Spend::Unavailable) {
            println!("(Redis at {url} cannot be reached: its rows are left out)");
            return;
        }
        drop(probe);
        row("Redis, one at a time", &measure(Arc::clone(&budgets), 1).await);
        row("Redis, 16 at a time", &measure(budgets, 16).await);
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut connection = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut connection)
            .await
            .unwrap();
        if !keys.is_empty() {
            let () = redis::cmd("DEL").arg(keys).query_async(&mut connection).await.unwrap();
        }
    });
}
