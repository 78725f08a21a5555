//! The identity service against a real store and vault: rotation under
//! concurrency and after a crash, and the cap on refusal records.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bulkhead_audit::WriterSettings;
use bulkhead_control::{
    admission::Admission,
    audit::AuditKeys,
    clock::{Clock, SystemClock},
    events::{Actor, EventLog},
    identity::IdentityService,
    metrics::Metrics,
};
use bulkhead_model::{
    Isolation, NewTenant, PlanCatalog, PlanName, RegionName, Tenant, TenantId, TenantName,
    TenantState,
};
use bulkhead_store::{ControlStore, StoreLocation};
use bulkhead_vault::{AnomalyDetector, AnomalyPolicy, MasterKeySource, Vault};

struct Fixture {
    store: Arc<dyn ControlStore>,
    identity: Arc<IdentityService>,
    tenant: Tenant,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = bulkhead_store::open(&StoreLocation::Sqlite(dir.path().join("bulkhead.db")))
            .await
            .unwrap();
        let source = MasterKeySource::File { path: dir.path().join("master.key"), create: true };
        let vault = Arc::new(Vault::open(store.clone(), &source, SystemClock.now()).await.unwrap());
        let keys = AuditKeys::open(
            store.clone(),
            Arc::clone(&vault),
            Arc::new(SystemClock),
            &dir.path().join("audit-platform.key"),
        )
        .await
        .unwrap();
        let (events, _) = EventLog::start(
            store.clone(),
            Arc::new(keys),
            vec![Arc::new(bulkhead_audit::StoreWitness(store.clone()))],
            Arc::new(SystemClock),
            WriterSettings::default(),
        );
        let identity = Arc::new(
            IdentityService::new(
                store.clone(),
                Arc::clone(&vault),
                Arc::new(SystemClock),
                "http://bulkhead.test",
                &[],
                events.clone(),
                Arc::new(Admission::new(
                    store.clone(),
                    AnomalyDetector::new(AnomalyPolicy::default()),
                    Arc::new(SystemClock),
                    events.clone(),
                    Arc::new(Metrics::new()),
                    PlanCatalog::builtin(),
                )),
            )
            .unwrap(),
        );
        let mut tenant = Tenant::new(
            NewTenant {
                id: TenantId::random(),
                name: TenantName::parse("acme").unwrap(),
                plan: PlanName::parse("enterprise").unwrap(),
                isolation: Isolation::Silo,
                region: RegionName::parse("local").unwrap(),
                admin_email: None,
                limits: bulkhead_model::TenantLimits::default(),
            },
            SystemClock.now(),
        );
        tenant.transition(TenantState::Active).unwrap();
        store.insert_tenant(&tenant).await.unwrap();
        vault.create_data_key(tenant.id, SystemClock.now()).await.unwrap();
        identity.ensure_realm(&tenant).await.unwrap();
        Self { store, identity, tenant, _dir: dir }
    }

    async fn signing_keys(&self) -> Vec<String> {
        let keys = self.store.realm_keys(self.tenant.id).await.unwrap();
        keys.into_iter().filter(|k| k.retired_at.is_none()).map(|k| k.kid).collect()
    }
}

#[tokio::test]
async fn concurrent_rotations_leave_exactly_one_signing_key() {
    let fx = Fixture::new().await;
    let rotations = (0..8).map(|_| {
        let identity = Arc::clone(&fx.identity);
        tokio::spawn(async move { identity.rotate_key(&Actor::Scheduler, "acme", None).await })
    });
    let mut newest = Vec::new();
    for rotation in rotations {
        newest.push(rotation.await.unwrap().unwrap().0);
    }
    let signing = fx.signing_keys().await;
    assert_eq!(signing.len(), 1, "{signing:?}");
    assert!(newest.contains(&signing[0]));
    assert_eq!(fx.store.realm_keys(fx.tenant.id).await.unwrap().len(), 9);
}

#[tokio::test]
async fn a_realm_left_without_a_signing_key_gets_one_back() {
    let fx = Fixture::new().await;
    let kid = fx.signing_keys().await.remove(0);
    // What a restore or a hand-edited store can leave: a realm with no key.
    fx.store.delete_realm_key(fx.tenant.id, &kid).await.unwrap();
    assert!(fx.signing_keys().await.is_empty());
    let issued = fx
        .identity
        .issue_token(
            &Actor::Scheduler,
            "acme",
            bulkhead_control::identity::TokenRequest {
                subject: "alice".into(),
                ..Default::default()
            },
        )
        .await;
    let refused = issued.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("realm has no signing key; `bulkhead auth rotate-key"), "{refused}");

    let rotated = fx.identity.rotate_due_keys(std::time::Duration::from_secs(86_400)).await;
    assert_eq!(rotated.unwrap(), 1);
    let signing = fx.signing_keys().await;
    assert_eq!(signing.len(), 1);
    assert_ne!(signing[0], kid);
}

#[tokio::test]
async fn refused_credentials_are_recorded_within_a_cap() {
    let fx = Fixture::new().await;
    for i in 0..50 {
        let refused = fx.identity.authenticate("acme", &format!("garbage-{i}")).await;
        let refused = refused.err().map(|r| r.reason).unwrap_or_default();
        assert_eq!(refused, "malformed: not three dot-separated parts");
    }
    let stream = format!("tenant:{}", fx.tenant.id);
    let events = fx.store.audit_events(&stream, 0, 1_000).await.unwrap();
    let refusals = events.iter().filter(|e| e.action == "auth.refused").count();
    assert_eq!(refusals, 20, "at most 20 per tenant per minute");
}
