//! What the gateway holds per configured tenant, and how long a snapshot
//! of many tenants takes to build (issue 11's aim: under 2 KB a tenant).
//!
//!     cargo bench -p bulkhead-gateway --bench snapshot [-- TENANTS...]
//!
//! Each tenant is what `scripts/bench_gateway.sh` seeds: a realm with one
//! signing key (EdDSA, the realm default), the application audience, one
//! API with one upstream, and the plan's limits. Memory is the growth of
//! the process's resident set over the configurations and the build,
//! divided by the tenants (what a process would see: memory the allocator
//! keeps after freeing it counts too).

#![allow(clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use bulkhead_gateway::{Domain, Snapshot, TenantConfig};
use bulkhead_identity::{Algorithm, ClaimMapping, KeySet, SigningKey, Trust, VerifyingKey};
use bulkhead_model::{ApiSpec, GatewayLimits, TenantName};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The process's resident memory, in bytes (Linux).
fn resident() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn domain() -> Domain {
    Domain {
        base_domain: "localhost".into(),
        control_audience: "http://127.0.0.1:7070/control".into(),
        prices: Default::default(),
    }
}

fn tenants(n: usize) -> Vec<TenantConfig> {
    let signing = SigningKey::generate(Algorithm::EdDSA).expect("a realm key");
    let jwk = signing.public_jwk().expect("its public half");
    let limits: GatewayLimits = serde_json::from_value(serde_json::json!({
        "rate_limit": {"requests_per_minute": 6000, "burst": 100},
        "max_in_flight": 200, "max_upstream_connections": 100, "limiter_fallback": "local"
    }))
    .expect("limits");
    (0..n)
        .map(|i| {
            let name = TenantName::parse(&format!("syn-{i:06}")).expect("a tenant name");
            let issuer = format!("http://127.0.0.1:7070/realms/{name}");
            let api: ApiSpec = serde_json::from_value(serde_json::json!({
                "name": "echo", "prefix": "/echo", "upstreams": ["http://127.0.0.1:9000"]
            }))
            .expect("an API");
            let key = VerifyingKey::from_jwk(&jwk).expect("a verifying key");
            let id = uuid::Uuid::new_v4();
            TenantConfig {
                id,
                suspended: false,
                realm: Some(Box::new(Trust {
                    tenant_id: id,
                    keys: KeySet::from([(format!("{}-{i}", signing.kid()), key)]),
                    algorithms: &Algorithm::REALM,
                    audience: None,
                    not_before: None,
                    claims: ClaimMapping::Realm,
                    issuer: issuer.clone(),
                })),
                external: None,
                app_audience: format!("{issuer}/apps"),
                api_keys: Vec::new(),
                apis: vec![api],
                guardrails: Vec::new(),
                tools: Vec::new(),
                limits: limits.clone(),
                cost_caps: bulkhead_model::CostCaps { soft_usd: 50, hard_usd: 100 },
                refresh_at: None,
                name,
            }
        })
        .collect()
}

fn main() {
    let sizes: Vec<usize> =
        std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect::<Vec<_>>();
    let sizes = if sizes.is_empty() { vec![10_000, 100_000] } else { sizes };
    println!("| tenants | bytes per tenant | snapshot build | one tenant changed |");
    println!("|---|---|---|---|");
    let mut grew: Vec<(usize, i64)> = Vec::new();
    let mut kept = Vec::new();
    for n in sizes {
        let empty = Snapshot::empty(domain());
        let before = resident();
        let configs = tenants(n);
        let started = Instant::now();
        let snapshot = Snapshot::build(domain(), configs, &empty);
        let built = started.elapsed();
        let growth = resident() - before;
        grew.push((n, growth));
        let per_tenant = growth as f64 / n as f64;
        // A tenant's configuration changed (its id and name kept).
        let mut one = tenants(1).pop().expect("a tenant");
        one.id = snapshot.tenant("syn-000000").expect("the first tenant").id;
        let started = Instant::now();
        let changed = snapshot.with_tenants(vec![(one.id, Some(one))]);
        let change = started.elapsed();
        assert_eq!(changed.len(), n);
        println!(
            "| {n} | {per_tenant:.0} | {:.1} ms | {:.2} ms |",
            built.as_secs_f64() * 1e3,
            change.as_secs_f64() * 1e3
        );
        // Kept, so that the next size cannot reuse their memory.
        kept.push((snapshot, changed, empty));
    }
    // What each further tenant costs, without the process's fixed share
    // (the allocator's arenas, the first pages of each size class).
    if let [(small, at_small), .., (large, at_large)] = grew[..] {
        println!(
            "\nfrom {small} to {large} tenants: {:.0} bytes per further tenant",
            (at_large - at_small) as f64 / (large - small) as f64
        );
    }
}
