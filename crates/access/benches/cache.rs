//! The per-tenant pool cache's overhead with many tenants: taking a
//! tenant's pool from a full cache (a hit) against cloning a pool held
//! directly, and opening a tenant's pool into a full cache (a miss, which
//! evicts the least recently used). Pools are lazy (no connection is
//! made), so this measures the cache alone. Prints the memory each open
//! tenant's pool costs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::{hint::black_box, num::NonZeroUsize};

use bulkhead_access::{Options, Pool, Source, TenantPools};
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use zeroize::Zeroizing;

const TENANTS: usize = 10_000;

fn source(tenant: &str) -> Result<Source, bulkhead_access::Error> {
    Ok(Source::Url(Zeroizing::new(format!("postgres://{tenant}@127.0.0.1:1/{tenant}"))))
}

fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let names: Vec<String> = (0..TENANTS).map(|i| format!("tenant{i:05}")).collect();
    let capacity = NonZeroUsize::new(TENANTS).unwrap();
    let before = resident_kib();
    let pools = TenantPools::new(capacity, Options::default(), source);
    runtime.block_on(async {
        for name in &names {
            pools.get(name).await.unwrap();
        }
    });
    let cached = (resident_kib().saturating_sub(before)) as f64 / TENANTS as f64;
    // The same number of bare lazy pools, while the cache's stay alive (so
    // neither reuses the other's freed memory): what sqlx's pool costs.
    let bare_before = resident_kib();
    let bare: Vec<Pool> = {
        let _inside = runtime.enter();
        names
            .iter()
            .map(|n| match source(n) {
                Ok(Source::Url(url)) => Pool::Postgres(
                    sqlx::postgres::PgPoolOptions::new()
                        .max_connections(Options::default().max_connections)
                        .connect_lazy(&url)
                        .unwrap(),
                ),
                _ => unreachable!(),
            })
            .collect()
    };
    let pool_alone = (resident_kib().saturating_sub(bare_before)) as f64 / TENANTS as f64;
    println!(
        "{TENANTS} open tenant pools: {cached:.1} KiB resident each in the cache; \
         a bare lazy PgPool {pool_alone:.1} KiB; the cache's own share {:.1} KiB",
        cached - pool_alone
    );
    drop(bare);

    // Every call below completes on its first poll (the pools are lazy),
    // so it is polled once, without a scheduler's cost in the figure; the
    // runtime is entered for the background close of evicted pools.
    let _inside = runtime.enter();
    let direct = runtime.block_on(async { pools.get(&names[0]).await.unwrap() });
    c.bench_function("pool held directly (clone)", |b| b.iter(|| black_box(direct.clone())));
    let mut i = 0;
    c.bench_function("cache hit, 10k tenants open", |b| {
        b.iter(|| {
            i = (i + 7919) % TENANTS;
            black_box::<Pool>(pools.get(&names[i]).now_or_never().unwrap().unwrap())
        })
    });
    let mut n = 0;
    c.bench_function("cache miss into a full cache (open + evict)", |b| {
        b.iter(|| {
            n += 1;
            let name = format!("new{n}");
            black_box::<Pool>(pools.get(&name).now_or_never().unwrap().unwrap())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
