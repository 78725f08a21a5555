//! Encrypting and decrypting a 256-byte secret under a tenant's data key:
//! the work of every `secrets put` and `secrets get` after the data key is
//! unwrapped (itself one more open of 32 bytes, measured as `unwrap`).

#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use bulkhead_vault::{
    KeyEncryptionKey, KeyRole, LocalKey,
    envelope::{data_key_aad, open, seal, secret_aad},
    kek::random_key,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use uuid::Uuid;

fn envelope(c: &mut Criterion) {
    let key = random_key().unwrap();
    let tenant = Uuid::new_v4();
    let aad = secret_aad(tenant, 1, "db/primary/password");
    let value = [0x5a_u8; 256];
    let sealed = seal(&key, &value, &aad).unwrap();

    let mut group = c.benchmark_group("secret_256B");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encrypt", |b| b.iter(|| seal(&key, black_box(&value), &aad).unwrap()));
    group.bench_function("decrypt", |b| b.iter(|| open(&key, black_box(&sealed), &aad).unwrap()));
    group.finish();

    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let master = LocalKey::generate(KeyRole::Master).unwrap();
    let data_aad = data_key_aad(tenant, 1);
    let wrapped = runtime.block_on(master.wrap(&key, &data_aad)).unwrap();
    c.bench_function("data_key/unwrap", |b| {
        b.iter(|| runtime.block_on(master.unwrap(black_box(&wrapped), &data_aad)).unwrap())
    });
}

criterion_group!(benches, envelope);
criterion_main!(benches);
