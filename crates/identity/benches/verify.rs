//! Token verifications per second on one core: EdDSA and ES256 realm
//! tokens and an external provider's RS256 token, straight and through the
//! verified-token cache (the gateway's hot path for a token it has seen
//! before).

#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use bulkhead_identity::{
    Algorithm, ClaimMapping, KeySet, RealmClaims, Role, SigningKey, Trust, VerifiedCache, jws,
    verify,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use uuid::Uuid;

#[path = "../tests/data/rs256_provider.rs"]
mod rs256;

const NOW: i64 = 1_800_000_000;

fn setup(alg: Algorithm) -> (String, Trust) {
    let key = SigningKey::generate(alg).unwrap();
    let tenant = Uuid::new_v4();
    let issuer = "https://bulkhead.example/realms/acme".to_owned();
    let claims = RealmClaims {
        iss: issuer.clone(),
        sub: "alice".into(),
        aud: vec!["api".into()],
        exp: NOW + 3_600,
        iat: NOW,
        nbf: NOW,
        jti: Uuid::new_v4().to_string(),
        tenant_id: tenant,
        roles: vec![Role::Admin],
        plan: "enterprise".into(),
        region: "eu".into(),
    };
    let token = jws::encode(&key, &claims).unwrap();
    let trust = Trust {
        tenant_id: tenant,
        issuer,
        keys: KeySet::from([(key.kid().to_owned(), key.verifying_key().unwrap())]),
        algorithms: &Algorithm::REALM,
        audience: Some("api".into()),
        not_before: None,
        claims: ClaimMapping::Realm,
    };
    (token, trust)
}

fn verification(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Elements(1));
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let (token, trust) =
            if alg == Algorithm::RS256 { rs256::rs256_provider() } else { setup(alg) };
        group.bench_function(format!("{alg}/uncached"), |b| {
            b.iter(|| verify(black_box(&token), &trust, NOW).unwrap())
        });
        let cache = VerifiedCache::new(10_000);
        cache.verify(&token, &trust, NOW).unwrap();
        group.bench_function(format!("{alg}/cached"), |b| {
            b.iter(|| cache.verify(black_box(&token), &trust, NOW).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, verification);
criterion_main!(benches);
