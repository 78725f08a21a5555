//! Audit streams on both stores: the writer, exports, the offline verifier
//! against every kind of tampering, retention, and the database refusing
//! changes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bulkhead_audit::{
    Actor, AuditKey, AuditLog, KeyRing, NewEvent, StreamId, WriterSettings,
    canonical::CanonicalJson, export::Exporter, verify_export,
};
use bulkhead_store::{AuditKeyRow, AuditStore, ControlStore};
use bulkhead_testkit::{StoreFixture, on_both_stores};
use serde_json::json;
use time::OffsetDateTime;
use uuid::Uuid;

/// Keys made on first use and registered in the store, as the control
/// plane's provisioning step does.
#[derive(Debug)]
struct TestKeys {
    store: Arc<dyn ControlStore>,
    keys: Mutex<HashMap<StreamId, Arc<AuditKey>>>,
}

impl TestKeys {
    fn new(store: Arc<dyn ControlStore>) -> Arc<Self> {
        Arc::new(Self { store, keys: Mutex::default() })
    }

    async fn key(&self, stream: &StreamId) -> Arc<AuditKey> {
        if let Some(key) = self.keys.lock().unwrap().get(stream) {
            return Arc::clone(key);
        }
        let key = Arc::new(AuditKey::generate(stream.clone()).unwrap());
        let info = key.public_info(OffsetDateTime::now_utc());
        self.store
            .insert_audit_key(&AuditKeyRow {
                stream: stream.to_string(),
                key_id: info.key_id,
                public_key: info.public_key,
                created_at: info.created_at,
            })
            .await
            .unwrap();
        self.keys.lock().unwrap().insert(stream.clone(), Arc::clone(&key));
        key
    }
}

#[async_trait]
impl KeyRing for TestKeys {
    async fn signing_key(&self, stream: &StreamId) -> Option<Arc<AuditKey>> {
        Some(self.key(stream).await)
    }
}

fn event(stream: &StreamId, n: u32, at: OffsetDateTime) -> NewEvent {
    NewEvent {
        stream: stream.clone(),
        time: at,
        actor: Actor { kind: "operator".into(), id: "admin".into() },
        action: "secret.put".into(),
        resource: format!("secrets/app/key{n}"),
        outcome: "ok".into(),
        request_id: Some(format!("req-{n}")),
        details: CanonicalJson::from_value(&json!({ "n": n, "note": "é \"quoted\"\n" })).unwrap(),
    }
}

fn writer(store: &Arc<dyn ControlStore>, keys: Arc<TestKeys>) -> AuditLog {
    let settings = WriterSettings { checkpoint_every: 10, ..WriterSettings::default() };
    let store: Arc<dyn AuditStore> = store.clone();
    AuditLog::start(store, keys, Arc::new(OffsetDateTime::now_utc), settings).0
}

async fn export(fx: &StoreFixture, keys: &TestKeys, stream: &StreamId) -> String {
    export_from(&fx.store, keys, stream, None).await
}

/// A whole export of `stream` (from `since`), signed with its test key.
async fn export_from(
    store: &Arc<dyn ControlStore>,
    keys: &TestKeys,
    stream: &StreamId,
    since: Option<OffsetDateTime>,
) -> String {
    let audit: Arc<dyn AuditStore> = store.clone();
    let key = keys.key(stream).await;
    let now = OffsetDateTime::now_utc();
    let mut exporter = Exporter::new(audit, stream.clone(), None, key, since, now).await.unwrap();
    let mut out = String::new();
    while let Some(page) = exporter.next_page().await.unwrap() {
        out.push_str(&page);
    }
    out
}

fn verify(text: &str) -> Result<bulkhead_audit::Report, bulkhead_audit::Broken> {
    verify_export(text.as_bytes(), &[])
}

fn problem(text: &str) -> String {
    verify(text).unwrap_err().to_string()
}

/// The export's lines, and the index of the line holding event `seq`.
fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

fn event_line(lines: &[String], seq: u64) -> usize {
    let needle = format!(",\"seq\":{seq},");
    lines.iter().position(|l| l.contains("\"type\":\"event\"") && l.contains(&needle)).unwrap()
}

fn join(lines: &[String]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

async fn every_tamper_is_caught(fx: StoreFixture) {
    let keys = TestKeys::new(fx.store.clone());
    let log = writer(&fx.store, Arc::clone(&keys));
    let acme = StreamId::tenant(Uuid::new_v4());
    let globex = StreamId::tenant(Uuid::new_v4());
    // Both streams at once, from many tasks: each stream keeps its order.
    let mut tasks = Vec::new();
    for n in 0..35 {
        for stream in [&acme, &globex] {
            let log = log.clone();
            let event = event(stream, n, OffsetDateTime::now_utc());
            tasks.push(tokio::spawn(async move { log.append(event).await }));
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let text = export(&fx, &keys, &acme).await;
    let report = verify(&text).unwrap();
    assert_eq!((report.events, report.first_seq, report.last_seq), (35, Some(1), 35));
    assert_eq!(report.checkpoints, 4, "every 10 events, and the export's own");
    let pinned =
        [keys.key(&acme).await.public_info(OffsetDateTime::now_utc()).public_bytes().unwrap()];
    assert!(verify_export(text.as_bytes(), &pinned).is_ok());
    let globex_text = export(&fx, &keys, &globex).await;
    assert!(verify(&globex_text).is_ok());

    let original = lines(&text);

    // A changed field.
    let mut changed = original.clone();
    let i = event_line(&changed, 5);
    changed[i] = changed[i].replace("\"outcome\":\"ok\"", "\"outcome\":\"denied\"");
    assert!(
        problem(&join(&changed)).contains("(seq 5): the event's content does not match its hash")
    );

    // A deleted event.
    let mut deleted = original.clone();
    deleted.remove(event_line(&deleted, 7));
    assert!(
        problem(&join(&deleted)).contains("seq 8 follows seq 6"),
        "{}",
        problem(&join(&deleted))
    );

    // Two events swapped.
    let mut swapped = original.clone();
    let (a, b) = (event_line(&swapped, 12), event_line(&swapped, 13));
    swapped.swap(a, b);
    assert!(problem(&join(&swapped)).contains("seq 13 follows seq 11"));

    // An event inserted: a copy of another, renumbered and re-hashed by
    // someone without the key, shows as a broken link or checkpoint.
    let mut inserted = original.clone();
    let i = event_line(&inserted, 14);
    inserted.insert(i + 1, inserted[i].clone());
    assert!(problem(&join(&inserted)).contains("seq 14 follows seq 14"));

    // The tail cut off after the last stored checkpoint (seq 30), the
    // export checkpoint with it.
    let cut = &original[..event_line(&original, 33)];
    assert!(problem(&join(cut)).contains("does not end with its signed export checkpoint"));

    // The start cut off down to a stored checkpoint (seq 10), which would
    // otherwise pass for the anchor of a partial export: the export
    // checkpoint signs where the export starts.
    let mut headless = vec![original[0].clone()];
    headless.extend(original[event_line(&original, 10) + 1..].iter().cloned());
    assert!(
        problem(&join(&headless)).contains("starting at seq 1, but this one starts at seq 11"),
        "{}",
        problem(&join(&headless))
    );
    // An export of the format before `from` existed is refused, saying so.
    let mut older = original.clone();
    older[0] = older[0].replace("bulkhead-audit/2", "bulkhead-audit/1");
    assert!(problem(&join(&older)).contains("export again"));
    // Only the export checkpoint names a start, and it always does.
    let mut unstarted = original.clone();
    let last = unstarted.len() - 1;
    unstarted[last] = unstarted[last].replacen("{\"from\":1,", "{", 1);
    assert!(problem(&join(&unstarted)).contains("names the seq its export starts at"));

    // A checkpoint's signature replaced by another checkpoint's.
    let checkpoints: Vec<usize> =
        (0..original.len()).filter(|i| original[*i].contains("\"type\":\"checkpoint\"")).collect();
    let signature = |line: &str| {
        let start = line.find("\"signature\":\"").unwrap() + 13;
        line[start..start + 86].to_owned()
    };
    let mut resigned = original.clone();
    let other = signature(&original[checkpoints[1]]);
    resigned[checkpoints[0]] =
        original[checkpoints[0]].replace(&signature(&original[checkpoints[0]]), &other);
    assert!(problem(&join(&resigned)).contains("bad signature"), "{}", problem(&join(&resigned)));

    // A checkpoint signed by another tenant's key, under its own key id
    // and under ours; and that key smuggled into the header.
    let globex_key = keys.key(&globex).await;
    let acme_key = keys.key(&acme).await;
    let forged = bulkhead_audit::Checkpoint::sign(
        &globex_key,
        10,
        [0; 32],
        OffsetDateTime::now_utc(),
        bulkhead_audit::CheckpointKind::Periodic,
    );
    let forged = bulkhead_audit::Checkpoint { stream: acme.clone(), ..forged };
    let mut foreign = original.clone();
    foreign[checkpoints[0]] = forged.export_line();
    assert!(
        problem(&join(&foreign)).contains("not one of the stream's"),
        "{}",
        problem(&join(&foreign))
    );
    let relabelled =
        bulkhead_audit::Checkpoint { key_id: acme_key.key_id().to_owned(), ..forged.clone() };
    foreign[checkpoints[0]] = relabelled.export_line();
    assert!(problem(&join(&foreign)).contains("bad signature"));
    let mut smuggled = original.clone();
    let mut header: serde_json::Value = serde_json::from_str(&smuggled[0]).unwrap();
    header["keys"].as_array_mut().unwrap().push(
        serde_json::to_value(bulkhead_audit::PublicKeyInfo {
            stream: acme.clone(),
            ..globex_key.public_info(OffsetDateTime::now_utc())
        })
        .unwrap(),
    );
    smuggled[0] = CanonicalJson::from_value(&header).unwrap().into_string();
    assert!(problem(&join(&smuggled)).contains("is not a key of stream"));
    // With the tenant's pinned key, another key never passes.
    let other_pin = [globex_key.public_info(OffsetDateTime::now_utc()).public_bytes().unwrap()];
    assert!(
        verify_export(text.as_bytes(), &other_pin)
            .unwrap_err()
            .to_string()
            .contains("not a pinned key")
    );

    // Two tenants' exports spliced together.
    let theirs = lines(&globex_text);
    let mut spliced = original[..event_line(&original, 20)].to_vec();
    spliced.extend(theirs[event_line(&theirs, 20)..].iter().cloned());
    assert!(problem(&join(&spliced)).contains("exports were spliced"));
    let concatenated = format!("{text}{globex_text}");
    assert!(problem(&concatenated).contains("a second header"));

    // A line rewritten without changing its meaning (reordered members):
    // not what Bulkhead wrote.
    let mut rewritten = original.clone();
    let i = event_line(&rewritten, 3);
    let value: serde_json::Value = serde_json::from_str(&rewritten[i]).unwrap();
    rewritten[i] = serde_json::to_string_pretty(&value).unwrap().replace('\n', "");
    assert!(verify(&join(&rewritten)).is_err());
    log.stop().await;
}

async fn retention_keeps_what_remains_verifiable(fx: StoreFixture) {
    let keys = TestKeys::new(fx.store.clone());
    let log = writer(&fx.store, Arc::clone(&keys));
    let stream = StreamId::tenant(Uuid::new_v4());
    let start = OffsetDateTime::now_utc() - time::Duration::days(100);
    for n in 0..30 {
        log.append(event(&stream, n, start + time::Duration::days(i64::from(n)))).await.unwrap();
    }
    let deleted =
        log.truncate_before(stream.clone(), start + time::Duration::days(15)).await.unwrap();
    assert_eq!(deleted, 15);
    log.append(event(&stream, 99, OffsetDateTime::now_utc())).await.unwrap();
    let text = export(&fx, &keys, &stream).await;
    let report = verify(&text).unwrap();
    assert_eq!((report.first_seq, report.last_seq, report.events), (Some(16), 31, 16));
    assert!(lines(&text)[1].contains("\"kind\":\"truncation\""), "{text}");

    // A partial export verifies from the checkpoint before it.
    let since = start + time::Duration::days(25);
    let partial = export_from(&fx.store, &keys, &stream, Some(since)).await;
    let report = verify(&partial).unwrap();
    assert_eq!(report.last_seq, 31);
    assert!(report.first_seq.unwrap() <= 26, "{report:?}");
    assert_eq!(report.start, report.first_seq.unwrap());
    // Without its anchor it proves nothing.
    let mut unanchored = lines(&partial);
    unanchored.remove(1);
    assert!(problem(&join(&unanchored)).contains("without a signed checkpoint before it"));
    // Cut down to a later checkpoint, it is noticed: the export checkpoint
    // signed where it started.
    let partial_lines = lines(&partial);
    let later = (2..partial_lines.len() - 1)
        .find(|i| partial_lines[*i].contains("\"kind\":\"periodic\""))
        .expect("a periodic checkpoint inside the partial export");
    let mut shortened = vec![partial_lines[0].clone()];
    shortened.extend(partial_lines[later..].iter().cloned());
    assert!(problem(&join(&shortened)).contains("lines were cut from its start"));

    // Retention may delete every event: the export still starts where the
    // stream had got to, not at seq 1.
    let emptied = StreamId::tenant(Uuid::new_v4());
    for n in 0..20 {
        log.append(event(&emptied, n, start + time::Duration::days(i64::from(n)))).await.unwrap();
    }
    let deleted = log.truncate_before(emptied.clone(), OffsetDateTime::now_utc()).await.unwrap();
    assert_eq!(deleted, 20);
    let text = export(&fx, &keys, &emptied).await;
    let report = verify(&text).unwrap();
    assert_eq!((report.events, report.start, report.last_seq), (0, 21, 20), "{text}");
    assert!(lines(&text)[1].contains("\"kind\":\"truncation\""), "{text}");
    log.stop().await;
}

async fn the_database_refuses_changes(fx: StoreFixture) {
    let keys = TestKeys::new(fx.store.clone());
    let log = writer(&fx.store, keys);
    let stream = StreamId::tenant(Uuid::new_v4());
    for n in 0..3 {
        log.append(event(&stream, n, OffsetDateTime::now_utc())).await.unwrap();
    }
    log.stop().await;
    let statements = [
        "UPDATE audit_events SET outcome = 'denied'",
        "DELETE FROM audit_events",
        "UPDATE audit_checkpoints SET seq = 1",
        "DELETE FROM audit_keys",
    ];
    match &fx.db {
        None => {
            let url = format!("sqlite://{}", fx.dir.path().join("bulkhead.db").display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            for sql in statements {
                let error = sqlx::query(sql).execute(&pool).await.unwrap_err().to_string();
                assert!(error.contains("append-only"), "{sql}: {error}");
            }
        }
        Some(db) => {
            // Even a superuser's statements meet the triggers.
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            for sql in statements.into_iter().chain(["TRUNCATE audit_events"]) {
                let sql = sql.replace(" audit_", " audit.audit_");
                let query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                let error = query.execute(&pool).await.unwrap_err().to_string();
                assert!(error.contains("append-only"), "{sql}: {error}");
            }
        }
    }
    let rows = fx.store.audit_events(stream.as_str(), 0, 10).await.unwrap();
    assert_eq!(rows.len(), 3);
}

/// Someone who gets around the database's protection (the file's owner,
/// a superuser) and edits an event: Bulkhead refuses to sign an export of
/// the broken chain rather than vouch for it.
async fn an_export_of_a_tampered_store_is_refused(fx: StoreFixture) {
    let keys = TestKeys::new(fx.store.clone());
    let log = writer(&fx.store, Arc::clone(&keys));
    let stream = StreamId::tenant(Uuid::new_v4());
    for n in 0..25 {
        log.append(event(&stream, n, OffsetDateTime::now_utc())).await.unwrap();
    }
    log.stop().await;
    let tamper = |table: &str| {
        [
            format!("ALTER TABLE {table} DISABLE TRIGGER append_only"),
            format!("UPDATE {table} SET outcome = 'denied' WHERE seq = 5"),
            format!("ALTER TABLE {table} ENABLE TRIGGER append_only"),
        ]
    };
    match &fx.db {
        None => {
            let url = format!("sqlite://{}", fx.dir.path().join("bulkhead.db").display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            for sql in [
                "DROP TRIGGER audit_events_no_update".to_owned(),
                "UPDATE audit_events SET outcome = 'denied' WHERE seq = 5".to_owned(),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
            }
        }
        Some(db) => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            for sql in tamper("audit.audit_events") {
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
            }
        }
    }
    let store: Arc<dyn AuditStore> = fx.store.clone();
    let key = keys.key(&stream).await;
    let now = OffsetDateTime::now_utc();
    let mut exporter = Exporter::new(store, stream.clone(), None, key, None, now).await.unwrap();
    let mut refused = None;
    loop {
        match exporter.next_page().await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let refused = refused.expect("the export was refused");
    assert!(refused.contains("broken at seq 5"), "{refused}");
}

on_both_stores!(
    every_tamper_is_caught,
    retention_keeps_what_remains_verifiable,
    the_database_refuses_changes,
    an_export_of_a_tampered_store_is_refused,
);

/// On PostgreSQL, as the application role the server really runs as (not
/// a superuser): it may read and append, and nothing else, and cannot
/// make itself the tables' owner.
#[tokio::test]
async fn the_application_role_may_only_read_and_append() {
    use sqlx::{AssertSqlSafe, Connection, PgConnection};
    let db = bulkhead_testkit::TestDatabase::create().await;
    let app = format!("{}app", db.object_prefix);
    let mut admin = PgConnection::connect(&bulkhead_testkit::postgres_admin_url()).await.unwrap();
    for sql in [
        format!("CREATE ROLE \"{app}\" LOGIN CREATEROLE"),
        format!("ALTER DATABASE \"{}\" OWNER TO \"{app}\"", db.name),
    ] {
        sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await.unwrap();
    }
    let url = db.url.replacen("postgres@", &format!("{app}@"), 1);
    let location =
        bulkhead_store::StoreLocation::Postgres(bulkhead_model::DatabaseUrl::parse(&url).unwrap());
    let store = bulkhead_store::open(&location).await.unwrap();
    // It could grant itself the owner: the server says so at start.
    let risk = store.audit_tamper_risk().await.unwrap().unwrap_or_default();
    assert!(risk.contains("CREATEROLE"), "{risk}");
    let keys = TestKeys::new(store.clone());
    let log = writer(&store, Arc::clone(&keys));
    let stream = StreamId::tenant(Uuid::new_v4());
    let start = OffsetDateTime::now_utc() - time::Duration::days(10);
    for n in 0..5 {
        log.append(event(&stream, n, start + time::Duration::days(i64::from(n)))).await.unwrap();
    }
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let owner = format!("{}_audit_owner", db.name.chars().take(40).collect::<String>());
    for sql in [
        "UPDATE audit.audit_events SET outcome = 'denied'".to_owned(),
        "DELETE FROM audit.audit_events".to_owned(),
        "TRUNCATE audit.audit_events".to_owned(),
        "ALTER TABLE audit.audit_events DISABLE TRIGGER ALL".to_owned(),
        "DROP TABLE audit.audit_events".to_owned(),
        "DROP SCHEMA audit CASCADE".to_owned(),
        "CREATE TABLE audit.decoy (x int)".to_owned(),
        format!("SET ROLE \"{owner}\""),
    ] {
        let result = sqlx::query(AssertSqlSafe(sql.clone())).execute(&mut conn).await;
        let Err(error) = result else { panic!("{sql} was allowed: {result:?}") };
        let error = error.to_string();
        assert!(
            error.contains("permission denied") || error.contains("must be owner"),
            "{sql}: {error}"
        );
    }
    // Retention's one path still works, and only for what it checkpoints.
    let deleted =
        log.truncate_before(stream.clone(), start + time::Duration::days(3)).await.unwrap();
    assert_eq!(deleted, 3);
    let text = export_from(&store, &keys, &stream, None).await;
    assert_eq!(verify(&text).unwrap().first_seq, Some(4));
    log.stop().await;
    drop(store);
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE \"{}\" WITH (FORCE)", db.name)))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!("DROP ROLE \"{app}\""))).execute(&mut admin).await.unwrap();
    let _ = Duration::ZERO;
}

/// An event PostgreSQL cannot store (U+0000 in a text column) sinks its
/// own stream's events in that batch, never another tenant's.
#[tokio::test]
async fn one_streams_bad_event_costs_no_other_stream_its_events() {
    let fx = StoreFixture::postgres().await;
    let keys = TestKeys::new(fx.store.clone());
    let log = writer(&fx.store, Arc::clone(&keys));
    let (acme, globex) = (StreamId::tenant(Uuid::new_v4()), StreamId::tenant(Uuid::new_v4()));
    let mut bad = event(&acme, 0, OffsetDateTime::now_utc());
    bad.resource = "secrets/\u{0}".into();
    // Queued before the writer runs (this test's runtime has one thread):
    // one batch.
    for n in 0..5 {
        log.append_nowait(event(&globex, n, OffsetDateTime::now_utc())).unwrap();
    }
    let refused = log.append(bad).await;
    assert!(refused.is_err(), "{refused:?}");
    let last = log.append(event(&globex, 5, OffsetDateTime::now_utc())).await.unwrap();
    assert_eq!(last, 6, "globex's events before it were all written");
    assert_eq!(fx.store.audit_events(acme.as_str(), 0, 10).await.unwrap().len(), 0);
    assert!(verify(&export(&fx, &keys, &globex).await).is_ok());
    // acme's stream goes on with its next good event.
    assert_eq!(log.append(event(&acme, 1, OffsetDateTime::now_utc())).await.unwrap(), 1);
    log.stop().await;
}
