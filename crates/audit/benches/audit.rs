//! Audit throughput: verifying an export (events per second, offline), and
//! appending through the batched writer to real stores with 1, 100 and
//! 10,000 streams (events per second, sustained, from 64 concurrent
//! writers, as request handlers would).
//!
//! The append groups need PostgreSQL (`BULKHEAD_TEST_POSTGRES`, or the
//! local server); set `BULKHEAD_BENCH_APPEND=0` to run only `verify`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use bulkhead_audit::{
    Actor, AuditKey, AuditLog, KeyRing, NewEvent, StreamId, WriterSettings,
    canonical::CanonicalJson, verify_export,
};
use bulkhead_store::AuditStore;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

#[path = "../tests/support/signed_export.rs"]
mod support;
use support::signed_export;

fn new_event(stream: &StreamId, n: u64) -> NewEvent {
    NewEvent {
        stream: stream.clone(),
        time: OffsetDateTime::now_utc(),
        actor: Actor { kind: "tenant".into(), id: "apikey:billing".into() },
        action: "secret.read".into(),
        resource: format!("secrets/app/db/password{}", n % 16),
        outcome: "ok".into(),
        request_id: Some(format!("{n:032x}")),
        details: CanonicalJson::from_value(&json!({ "path": "app/db/password", "version": n % 7 }))
            .unwrap(),
    }
}

fn verify(c: &mut Criterion) {
    const EVENTS: u64 = 100_000;
    // Checkpointed every 1,000 events, as the writer does by default.
    let file = signed_export(EVENTS, 1_000, new_event);
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);
    group.bench_function("100k_events", |b| {
        b.iter(|| assert_eq!(verify_export(file.as_slice(), &[]).unwrap().events, EVENTS))
    });
    group.finish();
}

#[derive(Debug, Default)]
struct Keys(Mutex<HashMap<StreamId, Arc<AuditKey>>>);

#[async_trait]
impl KeyRing for Keys {
    async fn signing_key(&self, stream: &StreamId) -> Option<Arc<AuditKey>> {
        let mut keys = self.0.lock().unwrap();
        let key = keys
            .entry(stream.clone())
            .or_insert_with(|| Arc::new(AuditKey::generate(stream.clone()).unwrap()));
        Some(Arc::clone(key))
    }

    fn custodian(&self, stream: &StreamId) -> Arc<AuditKey> {
        Arc::new(AuditKey::generate(stream.clone()).unwrap())
    }
}

/// `events` appends queued without waiting, as the gateway records them,
/// then one awaited: the writer takes commands in order, so when it is
/// written, all are.
async fn append_queued(log: &AuditLog, streams: &[StreamId], events: u64) -> Duration {
    let started = Instant::now();
    for n in 0..events.saturating_sub(1) {
        let event = new_event(&streams[(n as usize) % streams.len()], n);
        while log.append_nowait(event.clone()).is_err() {
            tokio::task::yield_now().await;
        }
    }
    log.append(new_event(&streams[0], events)).await.unwrap();
    started.elapsed()
}

/// `events` appends from 64 concurrent writers spread over `streams`.
async fn append(log: &AuditLog, streams: &[StreamId], events: u64) -> Duration {
    const WRITERS: u64 = 64;
    let started = Instant::now();
    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let log = log.clone();
            let streams = streams.to_vec();
            tokio::spawn(async move {
                let mut n = w;
                while n < events {
                    let stream = &streams[(n as usize) % streams.len()];
                    log.append(new_event(stream, n)).await.unwrap();
                    n += WRITERS;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

fn append_throughput(c: &mut Criterion) {
    if std::env::var("BULKHEAD_BENCH_APPEND").as_deref() == Ok("0") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    for backend in ["sqlite", "postgres"] {
        let fixture = runtime.block_on(async {
            match backend {
                "sqlite" => bulkhead_testkit::StoreFixture::sqlite().await,
                _ => bulkhead_testkit::StoreFixture::postgres().await,
            }
        });
        let store: Arc<dyn AuditStore> = fixture.store.clone();
        let mut group = c.benchmark_group(format!("append/{backend}"));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(10));
        for streams in [1usize, 100, 10_000] {
            let ids: Vec<StreamId> =
                (0..streams).map(|_| StreamId::tenant(Uuid::new_v4())).collect();
            let (log, _) = runtime.block_on(async {
                AuditLog::start(
                    store.clone(),
                    Arc::new(Keys::default()),
                    vec![Arc::new(bulkhead_audit::StoreWitness(store.clone()))],
                    Arc::new(OffsetDateTime::now_utc),
                    WriterSettings::default(),
                )
            });
            // Every stream's head loaded once, as a running server has it.
            runtime.block_on(append(&log, &ids, streams as u64));
            group.throughput(Throughput::Elements(1));
            group.bench_function(format!("{streams}_streams/awaited"), |b| {
                b.iter_custom(|iters| runtime.block_on(append(&log, &ids, iters.max(64))))
            });
            group.bench_function(format!("{streams}_streams/queued"), |b| {
                b.iter_custom(|iters| runtime.block_on(append_queued(&log, &ids, iters.max(2))))
            });
            runtime.block_on(log.stop());
        }
        group.finish();
        drop(fixture);
    }
}

criterion_group!(benches, verify, append_throughput);
criterion_main!(benches);
