//! The verifier's gateway layer against a stand-in gateway that lets every
//! request through: an API not marked public that answers without a
//! credential is a critical finding. (Against the real gateway, the
//! end-to-end tests find none.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::sync::Arc;

use bulkhead_control::{clock::SystemClock, verify::Verifier};
use bulkhead_model::{BaseDomain, DatabaseLocation, Regions, TenantState};
use bulkhead_store::ApiRecord;
use bulkhead_tenantdb::RegionServers;
use bulkhead_testkit::StoreFixture;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers `200 OK` to anything, as a gateway that checks nothing would.
async fn open_gateway() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn an_api_answering_without_a_credential_is_found() {
    let f = StoreFixture::sqlite().await;
    let now = OffsetDateTime::now_utc();
    let mut tenant = bulkhead_testkit::starter_tenant("acme", now);
    tenant.state = TenantState::Active;
    f.store.insert_tenant(&tenant).await.unwrap();
    for (name, auth) in [("orders", "required"), ("status", "public")] {
        let spec = format!(
            r#"{{"name":"{name}","prefix":"/{name}","upstreams":["http://127.0.0.1:9"],"auth":"{auth}"}}"#
        );
        let record = ApiRecord {
            tenant_id: tenant.id,
            name: name.into(),
            spec,
            created_at: now,
            updated_at: now,
        };
        f.store.put_api(&record).await.unwrap();
    }
    let verifier = Verifier::new(
        Arc::clone(&f.store),
        RegionServers::default(),
        Regions::single(DatabaseLocation::Embedded),
        Arc::new(SystemClock),
        f.dir.path().join("tenants"),
    )
    .with_gateway(open_gateway().await, BaseDomain::parse("localhost").unwrap());
    let report = verifier.isolation(None).await.unwrap();
    let found: Vec<_> = report.findings.iter().filter(|f| f.check == "api.credential").collect();
    assert_eq!(found.len(), 1, "{:#?}", report.findings);
    assert_eq!(found[0].subject, "acme/orders");
    assert!(found[0].problem.contains("200 OK"), "{}", found[0].problem);
    assert!(
        report.checked.iter().any(|c| c.contains("1 APIs not marked public")),
        "{:?}",
        report.checked
    );
}
