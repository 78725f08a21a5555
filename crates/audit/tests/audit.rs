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
    Actor, AuditKey, AuditLog, Event, KeyRing, NewEvent, StoreWitness, StreamId, StreamKeys,
    Witness, WriterSettings, canonical::CanonicalJson, export::Exporter, record::GENESIS,
    verify_export,
};
use bulkhead_store::{AuditEventRow, AuditKeyRow, AuditStore, ControlStore};
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
    platform: AuditKey,
    /// Streams whose tenant was purged: their own key is gone, and the
    /// custodian signs for them, as the control plane's key ring does.
    purged: Mutex<Vec<StreamId>>,
}

impl TestKeys {
    fn new(store: Arc<dyn ControlStore>) -> Arc<Self> {
        let platform = AuditKey::generate(StreamId::platform()).unwrap();
        Arc::new(Self { store, keys: Mutex::default(), platform, purged: Mutex::default() })
    }

    fn stream_keys(&self, stream: &StreamId, own: Arc<AuditKey>) -> StreamKeys {
        StreamKeys { own: Some(own), custodian: self.custodian(stream) }
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
        if self.purged.lock().unwrap().contains(stream) {
            return Some(self.custodian(stream));
        }
        Some(self.key(stream).await)
    }

    fn custodian(&self, stream: &StreamId) -> Arc<AuditKey> {
        Arc::new(self.platform.custodian(stream))
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
    writer_task(store, keys).0
}

/// The writer and its task, which a test can abort as a crash would.
fn writer_task(
    store: &Arc<dyn ControlStore>,
    keys: Arc<TestKeys>,
) -> (AuditLog, tokio::task::JoinHandle<()>) {
    let settings = WriterSettings { checkpoint_every: 10, ..WriterSettings::default() };
    let store: Arc<dyn AuditStore> = store.clone();
    let witnesses = witnesses(&store);
    AuditLog::start(store, keys, witnesses, Arc::new(OffsetDateTime::now_utc), settings)
}

fn witnesses(store: &Arc<dyn AuditStore>) -> Vec<Arc<dyn Witness>> {
    vec![Arc::new(StoreWitness(Arc::clone(store)))]
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
    let stream_keys = keys.stream_keys(stream, keys.key(stream).await);
    let now = OffsetDateTime::now_utc();
    let witnesses = witnesses(&audit);
    let mut exporter =
        Exporter::new(audit, stream.clone(), None, stream_keys, witnesses, since, now)
            .await
            .unwrap();
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

/// `lines` with `edit` applied to event `from`, and every event line from
/// there on renumbered in order and re-hashed onto the one before: a chain
/// whose links are all right, forged without a key.
fn rechain(lines: &[String], from: u64, edit: impl Fn(&mut Event)) -> Vec<String> {
    let start = event_line(lines, from);
    let mut prev = lines[..start]
        .iter()
        .rev()
        .find_map(|l| Event::from_export_line(l).ok())
        .map(|e| (e.seq, e.hash));
    let mut out = lines[..start].to_vec();
    for line in &lines[start..] {
        let Ok(mut event) = Event::from_export_line(line) else {
            out.push(line.clone());
            continue;
        };
        if out.len() == start {
            edit(&mut event);
        }
        let (seq, hash) = prev.unwrap_or((0, GENESIS));
        event.seq = seq + 1;
        event.prev_hash = hash;
        event.hash = event.compute_hash();
        prev = Some((event.seq, event.hash));
        out.push(event.export_line());
    }
    out
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

    // An event inserted: an exact copy of another, caught by its seq.
    let mut inserted = original.clone();
    let i = event_line(&inserted, 14);
    inserted.insert(i + 1, inserted[i].clone());
    assert!(problem(&join(&inserted)).contains("seq 14 follows seq 14"));

    // An event changed, then every hash and link from it on recomputed, as
    // anyone can without the key: the chain is whole again, and only the
    // signed checkpoints (seq 10, 20, 30 and the export's) tell.
    let rechained = rechain(&original, 5, |event| event.outcome = "denied".into());
    let caught = problem(&join(&rechained));
    assert!(
        caught.contains("the checkpoint signs seq 10 with head")
            && caught.contains("events were changed, removed or inserted"),
        "{caught}"
    );
    // And one inserted, renumbering every later event.
    let mut renumbered = original.clone();
    let i = event_line(&renumbered, 14);
    renumbered.insert(i + 1, renumbered[i].clone());
    let renumbered = rechain(&renumbered, 14, |_| {});
    let caught = problem(&join(&renumbered));
    assert!(caught.contains("the checkpoint signs seq 20 with head"), "{caught}");

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

    // A line rewritten without changing its meaning, `actor` moved before
    // `action`: the same JSON object, but not the bytes Bulkhead hashed.
    let mut rewritten = original.clone();
    let i = event_line(&rewritten, 3);
    let line = &rewritten[i];
    let (action, rest) = line["{".len()..].split_once(",\"actor\":").unwrap();
    let (actor, rest) = rest.split_once("},\"details\":").unwrap();
    let moved = format!("{{\"actor\":{actor}}},{action},\"details\":{rest}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&moved).unwrap(),
        serde_json::from_str::<serde_json::Value>(line).unwrap()
    );
    rewritten[i] = moved;
    let caught = problem(&join(&rewritten));
    assert!(caught.contains("member `action` out of order, after `actor`"), "{caught}");
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
    let stream_keys = keys.stream_keys(&stream, keys.key(&stream).await);
    let now = OffsetDateTime::now_utc();
    let witnesses = witnesses(&store);
    let mut exporter =
        Exporter::new(store, stream.clone(), None, stream_keys, witnesses, None, now)
            .await
            .unwrap();
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
    let refused = refused.expect("the export was refused").to_string();
    assert!(refused.contains("at seq 5, an event does not match its hash"), "{refused}");
}

/// Runs SQL against the fixture's database as whoever owns it (the SQLite
/// file's owner, a PostgreSQL superuser), with the append-only triggers
/// out of the way: the attacker who holds the database.
async fn as_database_owner(fx: &StoreFixture, statements: &[String]) {
    match &fx.db {
        None => {
            let url = format!("sqlite://{}", fx.dir.path().join("bulkhead.db").display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            for trigger in [
                "audit_events_no_update",
                "audit_events_no_delete",
                "audit_checkpoints_no_update",
                "audit_checkpoints_no_delete",
            ] {
                let sql = format!("DROP TRIGGER IF EXISTS {trigger}");
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
            }
            for sql in statements {
                let sql = sql.replace("audit.", "");
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
            }
        }
        Some(db) => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let mut all = vec![
                "ALTER TABLE audit.audit_events DISABLE TRIGGER USER".to_owned(),
                "ALTER TABLE audit.audit_checkpoints DISABLE TRIGGER USER".to_owned(),
            ];
            all.extend(statements.iter().cloned());
            for sql in all {
                sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
            }
        }
    }
}

/// Rewrites the stored events from `from` on as an attacker with the
/// database but no key would: `outcome` of event `from` changed, then the
/// chain recomputed so every hash and link is right again.
async fn rewrite_from(fx: &StoreFixture, stream: &StreamId, from: u64) {
    let rows = fx.store.audit_events(stream.as_str(), 0, 10_000).await.unwrap();
    let mut prev = None;
    let mut statements = Vec::new();
    for row in rows {
        let mut event = bulkhead_audit::export::event_from_row(&row).unwrap();
        if event.seq < from {
            prev = Some(event.hash);
            continue;
        }
        if event.seq == from {
            event.outcome = "denied".into();
        }
        event.prev_hash = prev.unwrap_or([0; 32]);
        event.hash = event.compute_hash();
        prev = Some(event.hash);
        statements.push(format!(
            "UPDATE audit.audit_events SET outcome = '{}', prev_hash = {}, hash = {} \
             WHERE stream = '{stream}' AND seq = {}",
            event.outcome,
            blob(fx, &event.prev_hash),
            blob(fx, &event.hash),
            event.seq
        ));
    }
    as_database_owner(fx, &statements).await;
}

fn blob(fx: &StoreFixture, bytes: &[u8]) -> String {
    let hex = bulkhead_audit::record::hex(bytes);
    if fx.db.is_some() { format!("'\\x{hex}'::bytea") } else { format!("X'{hex}'") }
}

/// The export Bulkhead refuses to sign, and why.
async fn export_refusal(fx: &StoreFixture, keys: &TestKeys, stream: &StreamId) -> String {
    let store: Arc<dyn AuditStore> = fx.store.clone();
    let stream_keys = keys.stream_keys(stream, keys.key(stream).await);
    let now = OffsetDateTime::now_utc();
    let witnesses = witnesses(&store);
    let mut exporter =
        match Exporter::new(store, stream.clone(), None, stream_keys, witnesses, None, now).await {
            Ok(exporter) => exporter,
            Err(error) => return error.to_string(),
        };
    loop {
        match exporter.next_page().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("an export of a forged stream was signed"),
            Err(error) => return error.to_string(),
        }
    }
}

/// Why the writer refuses one more event of `stream`.
async fn append_refused(log: &AuditLog, stream: &StreamId) -> String {
    match log.append(event(stream, 99, OffsetDateTime::now_utc())).await {
        Ok(seq) => panic!("appended at seq {seq} to a stream changed outside Bulkhead"),
        Err(error) => error.to_string(),
    }
}

/// 25 events, checkpointed at 10 and 20 and, when the writer stops, 25.
async fn written_stream(fx: &StoreFixture, keys: &Arc<TestKeys>) -> StreamId {
    let log = writer(&fx.store, Arc::clone(keys));
    let stream = StreamId::tenant(Uuid::new_v4());
    for n in 0..25 {
        log.append(event(&stream, n, OffsetDateTime::now_utc())).await.unwrap();
    }
    log.stop().await;
    stream
}

async fn checkpoints_of(fx: &StoreFixture, stream: &StreamId) -> Vec<i64> {
    let rows = fx.store.audit_checkpoints(stream.as_str(), 0, i64::MAX).await.unwrap();
    rows.iter().map(|c| c.seq).collect()
}

/// With the triggers off, the checkpoints deleted and an old event edited
/// with the chain recomputed: the next server neither writes to the stream
/// nor signs it, and no export of it is signed.
async fn forged_history_is_never_signed(fx: StoreFixture) {
    let keys = TestKeys::new(fx.store.clone());
    let stream = written_stream(&fx, &keys).await;
    let deleting = format!("DELETE FROM audit.audit_checkpoints WHERE stream = '{stream}'");
    as_database_owner(
        &fx,
        &[deleting, format!("DELETE FROM audit_heads WHERE stream = '{stream}'")],
    )
    .await;
    rewrite_from(&fx, &stream, 5).await;
    let restarted = writer(&fx.store, Arc::clone(&keys));
    let refused = append_refused(&restarted, &stream).await;
    assert!(refused.contains("event 5 does not carry the writer's MAC"), "{refused}");
    restarted.checkpoint_all().await.unwrap();
    assert!(checkpoints_of(&fx, &stream).await.is_empty(), "nothing of it was signed");
    let export = export_refusal(&fx, &keys, &stream).await;
    assert!(export.contains("at seq 5, an event does not carry the writer's MAC"), "{export}");
    // Other streams carry on.
    let other = StreamId::tenant(Uuid::new_v4());
    assert_eq!(restarted.append(event(&other, 1, OffsetDateTime::now_utc())).await, Ok(1));
    restarted.stop().await;
}

/// Rows inserted at the unsigned tail, with the triggers in place: the
/// writer stops at them and no export signs them.
async fn events_inserted_behind_the_writer_are_refused(fx: StoreFixture) {
    let keys = TestKeys::new(fx.store.clone());
    let log = writer(&fx.store, Arc::clone(&keys));
    let stream = StreamId::tenant(Uuid::new_v4());
    for n in 0..3 {
        log.append(event(&stream, n, OffsetDateTime::now_utc())).await.unwrap();
    }
    let head = fx.store.audit_head(stream.as_str()).await.unwrap().unwrap();
    let mut forged = bulkhead_audit::record::Event::chain(
        event(&stream, 7, OffsetDateTime::now_utc()),
        4,
        head.1.try_into().unwrap(),
    );
    forged.action = "secret.delete".into();
    forged.hash = forged.compute_hash();
    let row = bulkhead_store::AuditEventRow {
        stream: stream.to_string(),
        seq: 4,
        time: forged.time.clone(),
        actor_kind: forged.actor.kind.clone(),
        actor_id: forged.actor.id.clone(),
        action: forged.action.clone(),
        resource: forged.resource.clone(),
        outcome: forged.outcome.clone(),
        request_id: forged.request_id.clone(),
        details: forged.details.as_str().to_owned(),
        prev_hash: forged.prev_hash.to_vec(),
        hash: forged.hash.to_vec(),
        mac: Some(vec![0; 32]),
        mac_key_id: Some(keys.key(&stream).await.key_id().to_owned()),
    };
    fx.store.append_audit(&[row], &[]).await.unwrap();
    // The running writer's next event collides with it, reads the head
    // again and finds the row it did not write.
    let refused = log.append(event(&stream, 4, OffsetDateTime::now_utc())).await;
    assert!(
        refused
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("event 4 does not carry the writer's MAC"),
        "{refused:?}"
    );
    log.stop().await;
    assert_eq!(checkpoints_of(&fx, &stream).await, Vec::<i64>::new(), "never signed");
    let export = export_refusal(&fx, &keys, &stream).await;
    assert!(export.contains("at seq 4, an event does not carry the writer's MAC"), "{export}");
}

/// A key planted in the keys table and a truncation checkpoint it signed
/// let the database delete early events; the export is refused, since
/// only the key Bulkhead holds counts.
async fn a_planted_key_cannot_truncate_history(fx: StoreFixture) {
    let keys = TestKeys::new(fx.store.clone());
    let stream = written_stream(&fx, &keys).await;
    let attacker = AuditKey::generate(stream.clone()).unwrap();
    let info = attacker.public_info(OffsetDateTime::now_utc());
    fx.store
        .insert_audit_key(&AuditKeyRow {
            stream: stream.to_string(),
            key_id: info.key_id.clone(),
            public_key: info.public_key.clone(),
            created_at: info.created_at.clone(),
        })
        .await
        .unwrap();
    let rows = fx.store.audit_events(stream.as_str(), 11, 1).await.unwrap();
    let head: [u8; 32] = rows[0].hash.clone().try_into().unwrap();
    let truncation = bulkhead_audit::Checkpoint::sign(
        &attacker,
        12,
        head,
        OffsetDateTime::now_utc(),
        bulkhead_audit::CheckpointKind::Truncation,
    );
    fx.store
        .append_audit(&[], &[bulkhead_audit::writer::checkpoint_row(&truncation)])
        .await
        .unwrap();
    as_database_owner(
        &fx,
        &[format!("DELETE FROM audit.audit_events WHERE stream = '{stream}' AND seq <= 12")],
    )
    .await;
    let export = export_refusal(&fx, &keys, &stream).await;
    assert!(
        export.contains(
            "at seq 12, the checkpoint the export would start from is not signed by \
                         the stream's key"
        ),
        "{export}"
    );
}

/// The unsigned tail rewritten while the server was down: refused.
async fn an_offline_rewrite_of_the_unsigned_tail_is_refused(fx: StoreFixture) {
    let keys = TestKeys::new(fx.store.clone());
    let (log, task) = writer_task(&fx.store, Arc::clone(&keys));
    let stream = StreamId::tenant(Uuid::new_v4());
    for n in 0..25 {
        log.append(event(&stream, n, OffsetDateTime::now_utc())).await.unwrap();
    }
    // Killed: 21..25 were never signed.
    task.abort();
    let _ = task.await;
    assert_eq!(checkpoints_of(&fx, &stream).await.last(), Some(&20));
    rewrite_from(&fx, &stream, 23).await;
    let restarted = writer(&fx.store, Arc::clone(&keys));
    let refused = append_refused(&restarted, &stream).await;
    assert!(refused.contains("event 23 does not carry the writer's MAC"), "{refused}");
    restarted.stop().await;
    assert_eq!(checkpoints_of(&fx, &stream).await.last(), Some(&20), "not signed");
    let export = export_refusal(&fx, &keys, &stream).await;
    assert!(export.contains("at seq 23"), "{export}");
}

/// Signed events deleted with their checkpoints: the head kept outside the
/// audit tables says how far Bulkhead had signed.
async fn deleting_the_signed_tail_is_noticed(fx: StoreFixture) {
    let keys = TestKeys::new(fx.store.clone());
    let stream = written_stream(&fx, &keys).await;
    assert_eq!(checkpoints_of(&fx, &stream).await, [10, 20, 25]);
    as_database_owner(
        &fx,
        &[
            format!("DELETE FROM audit.audit_events WHERE stream = '{stream}' AND seq > 20"),
            format!("DELETE FROM audit.audit_checkpoints WHERE stream = '{stream}' AND seq > 20"),
        ],
    )
    .await;
    let restarted = writer(&fx.store, Arc::clone(&keys));
    let refused = append_refused(&restarted, &stream).await;
    assert!(refused.contains("ends at seq 20, but Bulkhead signed it up to seq 25"), "{refused}");
    restarted.stop().await;
    let export = export_refusal(&fx, &keys, &stream).await;
    assert!(export.contains("Bulkhead signed it up to seq 25"), "{export}");
}

/// A purged tenant's stream: handed to its custodian before its key is
/// destroyed, it is still checked, appended to and signed after a restart.
async fn a_purged_stream_stays_in_the_custodians_hands(fx: StoreFixture) {
    let keys = TestKeys::new(fx.store.clone());
    let log = writer(&fx.store, Arc::clone(&keys));
    let (handed, dropped) = (StreamId::tenant(Uuid::new_v4()), StreamId::tenant(Uuid::new_v4()));
    for stream in [&handed, &dropped] {
        for n in 0..12 {
            log.append(event(stream, n, OffsetDateTime::now_utc())).await.unwrap();
        }
    }
    log.hand_to_custodian(handed.clone()).await.unwrap();
    log.stop().await;
    keys.purged.lock().unwrap().extend([handed.clone(), dropped.clone()]);

    let restarted = writer(&fx.store, Arc::clone(&keys));
    for stream in [&handed, &dropped] {
        assert_eq!(restarted.append(event(stream, 99, OffsetDateTime::now_utc())).await, Ok(13));
    }
    restarted.checkpoint_all().await.unwrap();
    let last = |stream: &StreamId| {
        let store = fx.store.clone();
        let stream = stream.clone();
        async move { store.audit_checkpoint_before(stream.as_str(), i64::MAX).await.unwrap() }
    };
    let custodian = keys.custodian(&handed);
    let signed = last(&handed).await.unwrap();
    assert_eq!(
        (signed.seq, signed.key_id.as_str()),
        (13, custodian.key_id()),
        "the custodian signs"
    );
    // Without the hand-over nothing vouches for the old key's checkpoints
    // any more: its events are kept, and not signed again.
    assert_eq!(last(&dropped).await.unwrap().seq, 12);
    restarted.stop().await;
}

/// A handover retried (a crash after it, before its step was recorded):
/// the witnesses hold the custodian's signature of a head the stream's own
/// key signed too, and the stream, own key still there, goes on.
async fn a_handover_can_be_retried_while_the_own_key_remains(fx: StoreFixture) {
    let keys = TestKeys::new(fx.store.clone());
    let log = writer(&fx.store, Arc::clone(&keys));
    let stream = StreamId::tenant(Uuid::new_v4());
    for n in 0..3 {
        log.append(event(&stream, n, OffsetDateTime::now_utc())).await.unwrap();
    }
    log.hand_to_custodian(stream.clone()).await.unwrap();
    log.stop().await;

    let restarted = writer(&fx.store, Arc::clone(&keys));
    restarted.hand_to_custodian(stream.clone()).await.unwrap();
    assert_eq!(restarted.append(event(&stream, 9, OffsetDateTime::now_utc())).await, Ok(4));
    restarted.checkpoint_all().await.unwrap();
    restarted.stop().await;
    assert!(verify(&export(&fx, &keys, &stream).await).is_ok());

    // A custodian's signature alone vouches for nothing of a live stream.
    let other = StreamId::tenant(Uuid::new_v4());
    let log = writer(&fx.store, Arc::clone(&keys));
    log.append(event(&other, 0, OffsetDateTime::now_utc())).await.unwrap();
    log.checkpoint_all().await.unwrap();
    log.stop().await;
    let forged = bulkhead_audit::checkpoint::Checkpoint::sign(
        &keys.custodian(&other),
        1,
        [7; 32],
        OffsetDateTime::now_utc(),
        bulkhead_audit::checkpoint::CheckpointKind::Periodic,
    );
    let witness = StoreWitness(fx.store.clone() as Arc<dyn AuditStore>);
    bulkhead_audit::Witness::record(&witness, &forged).await.unwrap();
    let restarted = writer(&fx.store, Arc::clone(&keys));
    let refused = append_refused(&restarted, &other).await;
    assert!(refused.contains("is not signed by a key Bulkhead holds"), "{refused}");
    restarted.stop().await;
}

/// Rows as a version before MACs wrote them: chained, without a MAC.
fn legacy_rows(stream: &StreamId, from: u64, count: u64, prev: [u8; 32]) -> Vec<AuditEventRow> {
    let mut prev = prev;
    (from..from + count)
        .map(|seq| {
            let event = bulkhead_audit::record::Event::chain(
                event(stream, seq as u32, OffsetDateTime::now_utc()),
                seq,
                prev,
            );
            prev = event.hash;
            AuditEventRow {
                stream: stream.to_string(),
                seq: seq as i64,
                time: event.time.clone(),
                actor_kind: event.actor.kind.clone(),
                actor_id: event.actor.id.clone(),
                action: event.action.clone(),
                resource: event.resource.clone(),
                outcome: event.outcome.clone(),
                request_id: event.request_id.clone(),
                details: event.details.as_str().to_owned(),
                prev_hash: event.prev_hash.to_vec(),
                hash: event.hash.to_vec(),
                mac: None,
                mac_key_id: None,
            }
        })
        .collect()
}

/// A stream written before writers kept MACs is taken as it is, once, and
/// signed at once; rows without a MAC in a stream that has MACs are not.
async fn a_stream_from_before_macs_is_adopted_once(fx: StoreFixture) {
    let keys = TestKeys::new(fx.store.clone());
    let old = StreamId::tenant(Uuid::new_v4());
    fx.store.append_audit(&legacy_rows(&old, 1, 5, [0; 32]), &[]).await.unwrap();
    let log = writer(&fx.store, Arc::clone(&keys));
    assert_eq!(log.append(event(&old, 6, OffsetDateTime::now_utc())).await, Ok(6));
    assert_eq!(checkpoints_of(&fx, &old).await, [5], "the adopted events were signed at once");
    assert!(verify(&export(&fx, &keys, &old).await).is_ok());
    // Once it has MACs, a row without one is not Bulkhead's.
    let head = fx.store.audit_head(old.as_str()).await.unwrap().unwrap();
    let forged = legacy_rows(&old, 7, 1, head.1.try_into().unwrap());
    fx.store.append_audit(&forged, &[]).await.unwrap();
    let refused = append_refused(&log, &old).await;
    assert!(refused.contains("event 7 does not carry the writer's MAC"), "{refused}");
    log.stop().await;
}

on_both_stores!(
    a_stream_from_before_macs_is_adopted_once,
    a_purged_stream_stays_in_the_custodians_hands,
    a_handover_can_be_retried_while_the_own_key_remains,
    every_tamper_is_caught,
    retention_keeps_what_remains_verifiable,
    the_database_refuses_changes,
    an_export_of_a_tampered_store_is_refused,
    forged_history_is_never_signed,
    events_inserted_behind_the_writer_are_refused,
    a_planted_key_cannot_truncate_history,
    an_offline_rewrite_of_the_unsigned_tail_is_refused,
    deleting_the_signed_tail_is_noticed,
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
    let refused = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        refused.contains("cannot write audit events")
            && refused.contains("invalid byte sequence for encoding \"UTF8\": 0x00"),
        "{refused}"
    );
    let last = log.append(event(&globex, 5, OffsetDateTime::now_utc())).await.unwrap();
    assert_eq!(last, 6, "globex's events before it were all written");
    assert_eq!(fx.store.audit_events(acme.as_str(), 0, 10).await.unwrap().len(), 0);
    assert!(verify(&export(&fx, &keys, &globex).await).is_ok());
    // acme's stream goes on with its next good event.
    assert_eq!(log.append(event(&acme, 1, OffsetDateTime::now_utc())).await.unwrap(), 1);
    log.stop().await;
}
