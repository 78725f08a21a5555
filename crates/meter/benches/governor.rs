//! The `governor` crate's direct rate limiter, measured exactly as
//! `benches/gcra.rs` measures Bulkhead's cell (same limit, same shapes), for
//! the comparison the rate-limit issue asked for. Built only with
//! `--features compare-governor`: governor is no part of the normal build.
//!
//! governor reads its own clock, so `fake_time` uses its
//! `FakeRelativeClock` (advanced by a compare-exchange, where Bulkhead's
//! bench uses one fetch-add), and the real-clock shapes are measured with its
//! `MonotonicClock` (`Instant`, the clock Bulkhead uses) and with its
//! default `QuantaClock`.

#![allow(clippy::unwrap_used)]

use std::{hint::black_box, num::NonZeroU32, time::Duration};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use governor::{
    Quota, RateLimiter,
    clock::{FakeRelativeClock, MonotonicClock, QuantaClock},
};

#[path = "support/contended.rs"]
mod contended;

fn quota(per_minute: u32, burst: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(per_minute).unwrap())
        .allow_burst(NonZeroU32::new(burst).unwrap())
}

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("governor");
    group.throughput(Throughput::Elements(1));

    let hot = quota(4_000_000_000, 1_000);
    let interval = hot.replenish_interval();
    let clock = FakeRelativeClock::default();
    let limiter = RateLimiter::direct_with_clock(hot, clock.clone());
    group.bench_function("fake_time/allowed", |b| {
        b.iter(|| {
            clock.advance(interval);
            assert!(black_box(&limiter).check().is_ok());
        })
    });

    let clock = FakeRelativeClock::default();
    clock.advance(Duration::from_nanos(1));
    let limiter = RateLimiter::direct_with_clock(quota(1, 1), clock.clone());
    assert!(limiter.check().is_ok());
    clock.advance(Duration::from_nanos(1));
    group.bench_function("fake_time/refused", |b| {
        b.iter(|| assert!(black_box(&limiter).check().is_err()))
    });

    let limiter = RateLimiter::direct_with_clock(hot, MonotonicClock);
    group.bench_function("monotonic_clock", |b| b.iter(|| black_box(&limiter).check()));
    group.bench_function("monotonic_clock/contended_2_threads", |b| {
        b.iter_custom(|iters| {
            contended::contended(iters, 2, &|| {
                let _ = black_box(black_box(&limiter).check());
            })
        })
    });

    let limiter = RateLimiter::direct_with_clock(hot, QuantaClock::default());
    group.bench_function("quanta_clock", |b| b.iter(|| black_box(&limiter).check()));
    group.bench_function("quanta_clock/contended_2_threads", |b| {
        b.iter_custom(|iters| {
            contended::contended(iters, 2, &|| {
                let _ = black_box(black_box(&limiter).check());
            })
        })
    });
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
