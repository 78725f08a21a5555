//! One rate-limit check on the gateway's hot path: Bulkhead's GCRA cell
//! (`benches/governor.rs` measures the `governor` crate the same way).
//!
//! - `fake_time/allowed`: time advances one emission interval per check, so
//!   every check passes and writes the cell (the compare-exchange path).
//! - `fake_time/refused`: time stands still on an empty bucket, so every
//!   check is refused after one load.
//! - `clock`: the monotonic clock read on every check, the gateway's real
//!   cost; a rate of 4 billion a minute keeps nearly every check allowed.
//! - `contended_2_threads`: the same with two threads on one cell.
//! - `limiter_local`: the same through `Limiter::check` on a local-only
//!   limiter (its future polled once: it never waits), which adds a decision
//!   counter.

#![allow(clippy::unwrap_used)]

use std::{
    hint::black_box,
    pin::pin,
    sync::atomic::{AtomicU64, Ordering},
    task::{Context, Poll, Waker},
};

use bulkhead_meter::{Cell, Clock, Fallback, Limit, LimitKey, Limiter, Nanos};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

#[path = "support/contended.rs"]
mod contended;

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("bulkhead_gcra");
    group.throughput(Throughput::Elements(1));

    let hot = Limit::per_minute(4_000_000_000, 1_000).unwrap();
    let interval = u64::try_from(hot.emission_interval().as_nanos()).unwrap();
    let cell = Cell::new();
    let now = AtomicU64::new(0);
    group.bench_function("fake_time/allowed", |b| {
        b.iter(|| {
            let at = now.fetch_add(interval, Ordering::Relaxed);
            assert!(cell.check(black_box(&hot), Nanos(at)).allowed());
        })
    });

    let slow = Limit::per_minute(1, 1).unwrap();
    let cell = Cell::new();
    cell.check(&slow, Nanos(1));
    group.bench_function("fake_time/refused", |b| {
        b.iter(|| assert!(!cell.check(black_box(&slow), Nanos(2)).allowed()))
    });

    let clock = Clock::new();
    let cell = Cell::new();
    group.bench_function("clock", |b| b.iter(|| cell.check(black_box(&hot), clock.now())));

    let cell = Cell::new();
    group.bench_function("clock/contended_2_threads", |b| {
        b.iter_custom(|iters| {
            contended::contended(iters, 2, &|| {
                black_box(cell.check(black_box(&hot), clock.now()));
            })
        })
    });

    let limiter = Limiter::local();
    let key = LimitKey::api(uuid::Uuid::nil(), "orders");
    let cell = Cell::new();
    let mut context = Context::from_waker(Waker::noop());
    group.bench_function("limiter_local", |b| {
        b.iter(|| {
            let check = pin!(limiter.check(&key, &cell, black_box(&hot), Fallback::Local));
            let Poll::Ready(decision) = check.poll(&mut context) else { unreachable!() };
            decision
        })
    });
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
