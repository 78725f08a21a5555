//! The audit trail under attack by whoever holds the database (its
//! superuser, the SQLite file's owner) or the master key, through the real
//! server: nothing forged is ever signed, and a tenant that kept an export
//! proves a later one rewrote history.

use std::path::{Path, PathBuf};

use bulkhead_audit::{
    AuditKey, Checkpoint, CheckpointKind, StreamId,
    canonical::CanonicalJson,
    export::event_from_row,
    record::{Actor, Event, hex, parse_hash},
};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection};

use crate::kit::{Server, Store, exit_code, stderr, stdout};

fn tenant(server: &Server, name: &str) {
    server.cli_json(&["tenants", "create", name, "--plan", "enterprise", "--wait"]);
}

/// A few events of every kind in the tenant's stream.
fn activity(server: &Server, tenant: &str) {
    for n in 0..3 {
        let value = format!("v{n}");
        let put = server.cli_with_input(
            &["secrets", "put", "--tenant", tenant, &format!("app/k{n}")],
            value.as_bytes(),
        );
        assert!(put.status.success(), "{}", stderr(&put));
    }
    assert!(server.cli(&["secrets", "get", "--tenant", tenant, "app/k1"]).status.success());
}

fn export_to(server: &Server, tenant: &str, file: &str) -> PathBuf {
    let out = server.cli(&["audit", "export", "--tenant", tenant]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), server.log());
    let path = server.dir.path().join(file);
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

fn verify(path: &Path, extra: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bulkhead"));
    command.args(["audit", "verify"]).arg(path).args(extra);
    command.env("BULKHEAD_API", "http://127.0.0.1:1").env_remove("BULKHEAD_DATA_DIR");
    command.output().unwrap()
}

/// The export the server now refuses to make, and why.
fn refused_export(server: &Server, tenant: &str) -> String {
    let out = server.cli(&["audit", "export", "--tenant", tenant]);
    assert!(!out.status.success(), "an export of a forged stream was made");
    assert!(stdout(&out).is_empty(), "nothing of it was printed: {}", stdout(&out));
    stderr(&out)
}

async fn stream_of(server: &Server, tenant: &str) -> StreamId {
    let store = server.open_store().await;
    StreamId::tenant(store.tenant_named(tenant).await.unwrap().unwrap().id.0)
}

/// Runs statements as the database's owner: the PostgreSQL superuser, or
/// the SQLite file's owner, with the append-only triggers out of the way.
async fn as_database_owner(server: &Server, statements: &[String]) {
    match &server.store {
        Store::Postgres(db) => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            for sql in [
                "ALTER TABLE audit.audit_events DISABLE TRIGGER USER",
                "ALTER TABLE audit.audit_checkpoints DISABLE TRIGGER USER",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(statements.iter().cloned())
            {
                sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();
            }
        }
        Store::Embedded => {
            let url = format!("sqlite://{}", server.data_dir().join("bulkhead.db").display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            for sql in [
                "DROP TRIGGER IF EXISTS audit_events_no_update",
                "DROP TRIGGER IF EXISTS audit_events_no_delete",
                "DROP TRIGGER IF EXISTS audit_checkpoints_no_delete",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(statements.iter().map(|s| s.replace("audit.audit_", "audit_")))
            {
                sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();
            }
        }
    }
}

fn blob(server: &Server, bytes: &[u8]) -> String {
    match server.store {
        Store::Postgres(_) => format!("'\\x{}'::bytea", hex(bytes)),
        Store::Embedded => format!("X'{}'", hex(bytes)),
    }
}

/// The statements that change event `seq`'s outcome and recompute every
/// hash and link after it, as someone without the key would.
async fn rewrite_from(server: &Server, stream: &StreamId, seq: u64) -> Vec<String> {
    let store = server.open_store().await;
    let rows = store.audit_events(stream.as_str(), 0, 100_000).await.unwrap();
    let mut prev = [0u8; 32];
    let mut statements = Vec::new();
    for row in rows {
        let mut event = event_from_row(&row).unwrap();
        if event.seq >= seq {
            if event.seq == seq {
                event.outcome = "denied".into();
            }
            event.prev_hash = prev;
            event.hash = event.compute_hash();
            statements.push(format!(
                "UPDATE audit.audit_events SET outcome = '{}', prev_hash = {}, hash = {} \
                 WHERE stream = '{stream}' AND seq = {}",
                event.outcome,
                blob(server, &event.prev_hash),
                blob(server, &event.hash),
                event.seq
            ));
        }
        prev = event.hash;
    }
    statements
}

async fn checkpoint_count(server: &Server, stream: &StreamId) -> usize {
    let store = server.open_store().await;
    store.audit_checkpoints(stream.as_str(), 0, i64::MAX).await.unwrap().len()
}

#[tokio::test]
async fn a_database_superuser_cannot_get_a_rewritten_history_signed() {
    let db = bulkhead_testkit::TestDatabase::create().await;
    let mut server =
        Server::start(Store::Postgres(db), "[audit]\ncheckpoint_every = 5\n", &[]).await;
    tenant(&server, "acme");
    tenant(&server, "globex");
    activity(&server, "acme");
    let acme = stream_of(&server, "acme").await;
    server.stop();

    // Checkpoints and the head kept beside them deleted, an old event
    // edited, the chain recomputed: then the server restarts.
    let mut statements = vec![
        format!("DELETE FROM audit.audit_checkpoints WHERE stream = '{acme}'"),
        format!("DELETE FROM audit_heads WHERE stream = '{acme}'"),
    ];
    statements.extend(rewrite_from(&server, &acme, 3).await);
    as_database_owner(&server, &statements).await;
    server.restart().await;

    // The head kept in the data directory says what was signed.
    let refused = refused_export(&server, "acme");
    assert!(refused.contains("is not the one Bulkhead signed"), "{refused}");
    assert!(refused.contains("history was rewritten"), "{refused}");
    // Without it, the writer's MACs say who wrote the events.
    server.stop();
    let witness = server
        .data_dir()
        .join("audit-witness")
        .join(format!("{}.json", acme.as_str().replace(':', "-")));
    std::fs::remove_file(&witness).unwrap();
    server.restart().await;
    let refused = refused_export(&server, "acme");
    assert!(refused.contains("event 3 does not carry the writer's MAC"), "{refused}");
    // Nothing of it is signed again, and what needs its event recorded is
    // refused, saying why.
    assert_eq!(checkpoint_count(&server, &acme).await, 0, "nothing re-signed");
    let read = server.cli(&["secrets", "get", "--tenant", "acme", "app/k1"]);
    assert!(!read.status.success());
    assert!(stderr(&read).contains("changed outside Bulkhead"), "{}", stderr(&read));
    assert!(server.log().contains("the stored audit stream was changed outside Bulkhead"));
    // Other tenants carry on.
    let globex = export_to(&server, "globex", "globex.jsonl");
    assert!(verify(&globex, &[]).status.success());
}

#[tokio::test]
async fn rows_inserted_with_the_triggers_in_place_are_never_signed() {
    let db = bulkhead_testkit::TestDatabase::create().await;
    let server = Server::start(Store::Postgres(db), "", &[]).await;
    tenant(&server, "acme");
    let acme = stream_of(&server, "acme").await;
    let store = server.open_store().await;
    let (seq, head) = store.audit_head(acme.as_str()).await.unwrap().unwrap();
    // A plain INSERT at the unsigned tail, chained correctly.
    let forged = Event::chain(
        bulkhead_audit::NewEvent {
            stream: acme.clone(),
            time: time::OffsetDateTime::now_utc(),
            actor: Actor { kind: "operator".into(), id: "initial".into() },
            action: "secret.delete".into(),
            resource: "secrets/app/k0".into(),
            outcome: "ok".into(),
            request_id: None,
            details: CanonicalJson::from_value(&serde_json::json!({})).unwrap(),
        },
        seq as u64 + 1,
        head.try_into().unwrap(),
    );
    let insert = format!(
        "INSERT INTO audit.audit_events (stream, seq, time, actor_kind, actor_id, action, \
         resource, outcome, request_id, details, prev_hash, hash) VALUES ('{acme}', {}, '{}', \
         'operator', 'initial', 'secret.delete', 'secrets/app/k0', 'ok', NULL, '{{}}', {}, {})",
        forged.seq,
        forged.time,
        blob(&server, &forged.prev_hash),
        blob(&server, &forged.hash)
    );
    let mut conn = sqlx::PgConnection::connect(&server.postgres_db().url).await.unwrap();
    sqlx::query(AssertSqlSafe(insert)).execute(&mut conn).await.unwrap();

    // The writer runs into it with its next event, and stops there.
    let put = server.cli_with_input(&["secrets", "put", "--tenant", "acme", "app/x"], b"v");
    assert!(put.status.success(), "the write itself happened: {}", stderr(&put));
    let refused = refused_export(&server, "acme");
    assert!(refused.contains(&format!("event {} does not carry", forged.seq)), "{refused}");
    let signed = store.audit_checkpoints(acme.as_str(), forged.seq as i64, i64::MAX).await.unwrap();
    assert!(signed.is_empty(), "the forged event was never signed: {signed:?}");
}

#[tokio::test]
async fn a_planted_key_and_truncation_checkpoint_do_not_shorten_history() {
    let db = bulkhead_testkit::TestDatabase::create().await;
    let mut server =
        Server::start(Store::Postgres(db), "[audit]\ncheckpoint_every = 5\n", &[]).await;
    tenant(&server, "acme");
    activity(&server, "acme");
    let acme = stream_of(&server, "acme").await;
    server.stop();
    let store = server.open_store().await;
    let fifth = store.audit_events(acme.as_str(), 4, 1).await.unwrap().remove(0);
    let attacker = AuditKey::generate(acme.clone()).unwrap();
    let info = attacker.public_info(time::OffsetDateTime::now_utc());
    let truncation = Checkpoint::sign(
        &attacker,
        5,
        fifth.hash.clone().try_into().unwrap(),
        time::OffsetDateTime::now_utc(),
        CheckpointKind::Truncation,
    );
    // As the audit tables' owner, with the triggers on: the trigger lets a
    // delete through once a truncation checkpoint covers it.
    let owner =
        format!("{}_audit_owner", server.postgres_db().name.chars().take(40).collect::<String>());
    let mut conn = sqlx::PgConnection::connect(&server.postgres_db().url).await.unwrap();
    for sql in [
        format!("SET ROLE \"{owner}\""),
        format!(
            "INSERT INTO audit.audit_keys VALUES ('{acme}', '{}', '{}', '{}')",
            info.key_id, info.public_key, info.created_at
        ),
        format!(
            "INSERT INTO audit.audit_checkpoints VALUES ('{acme}', 5, {}, '{}', 'truncation', \
             '{}', {})",
            blob(&server, &truncation.head),
            truncation.time,
            truncation.key_id,
            blob(&server, &truncation.signature)
        ),
        format!("DELETE FROM audit.audit_events WHERE stream = '{acme}' AND seq <= 5"),
    ] {
        sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();
    }
    server.restart().await;
    let refused = refused_export(&server, "acme");
    assert!(refused.contains("not signed by the stream's key"), "{refused}");
    // The published key is still the tenant's own, never the planted one.
    let keys: Value = reqwest::get(format!("{}/realms/acme/audit-keys.json", server.api))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1);
    assert_ne!(keys["keys"][0]["key_id"], info.key_id.as_str());
}

#[tokio::test]
async fn the_unsigned_tail_rewritten_while_the_server_was_down_is_refused() {
    let mut server = Server::embedded().await;
    tenant(&server, "acme");
    activity(&server, "acme");
    let acme = stream_of(&server, "acme").await;
    // Killed before the writer signed its last events.
    server.kill();
    let store = server.open_store().await;
    let (last, _) = store.audit_head(acme.as_str()).await.unwrap().unwrap();
    let signed = store.audit_last_checkpoint(acme.as_str()).await.unwrap().unwrap_or(0);
    assert!(signed < last, "a tail was left unsigned ({signed} < {last})");
    let statements = rewrite_from(&server, &acme, last as u64).await;
    as_database_owner(&server, &statements).await;
    server.restart().await;
    let refused = refused_export(&server, "acme");
    assert!(refused.contains(&format!("event {last} does not carry")), "{refused}");
}

#[tokio::test]
async fn a_kept_export_proves_a_later_one_rewrote_history() {
    let mut server = Server::embedded().await;
    tenant(&server, "acme");
    activity(&server, "acme");
    let old = export_to(&server, "acme", "old.jsonl");
    activity(&server, "acme");
    let new = export_to(&server, "acme", "new.jsonl");
    let extends = verify(&new, &["--previous", old.to_str().unwrap()]);
    assert!(extends.status.success(), "{}", stderr(&extends));

    // Whoever holds the master key and the store opens the tenant's audit
    // key and signs a rewritten history: valid on its own ...
    server.stop();
    let store = server.open_store().await;
    let id = store.tenant_named("acme").await.unwrap().unwrap().id;
    let source = bulkhead_vault::MasterKeySource::File {
        path: server.data_dir().join("master.key"),
        create: false,
    };
    let vault =
        bulkhead_vault::Vault::open(store.clone(), &source, time::OffsetDateTime::now_utc())
            .await
            .unwrap();
    let seed = vault.open_blob(id, "audit/signing-key").await.unwrap().unwrap();
    let key = AuditKey::from_secret(StreamId::tenant(id.0), &seed).unwrap();
    let forged = server.dir.path().join("forged.jsonl");
    std::fs::write(&forged, rewrite_export(&std::fs::read_to_string(&new).unwrap(), &key, 2))
        .unwrap();
    let alone = verify(&forged, &[]);
    assert!(alone.status.success(), "a correctly signed forgery: {}", stderr(&alone));
    // ... but not as a continuation of what the tenant kept.
    let caught = verify(&forged, &["--previous", old.to_str().unwrap()]);
    assert_eq!(exit_code(&caught), 1, "{}", stdout(&caught));
    assert!(stderr(&caught).contains("rewritten"), "{}", stderr(&caught));
}

/// `export` with event `seq`'s outcome changed, every later hash, link and
/// checkpoint recomputed and signed with `key`.
fn rewrite_export(export: &str, key: &AuditKey, seq: u64) -> String {
    let now = time::OffsetDateTime::now_utc();
    let mut out = String::new();
    let mut head = (0u64, [0u8; 32]);
    let mut from = 1;
    for line in export.lines() {
        let value: Value = serde_json::from_str(line).unwrap();
        let rewritten = match value["type"].as_str().unwrap() {
            "event" => {
                let mut event = Event::from_export_line(line).unwrap();
                if event.seq == seq {
                    event.outcome = "denied".into();
                }
                if event.seq > 1 {
                    event.prev_hash = head.1;
                }
                event.hash = event.compute_hash();
                head = (event.seq, event.hash);
                event.export_line()
            }
            "checkpoint" if value["kind"] == "export" => {
                Checkpoint::sign_export(key, from, head.0, head.1, now).export_line()
            }
            "checkpoint" => {
                let kind = if value["kind"] == "truncation" {
                    CheckpointKind::Truncation
                } else {
                    CheckpointKind::Periodic
                };
                if head.0 == 0 {
                    // An anchor: the chain resumes from it.
                    head = (
                        value["seq"].as_u64().unwrap(),
                        parse_hash(value["head"].as_str().unwrap()).unwrap(),
                    );
                    from = head.0 + 1;
                }
                Checkpoint::sign(key, head.0, head.1, now, kind).export_line()
            }
            _ => line.to_owned(),
        };
        out.push_str(&rewritten);
        out.push('\n');
    }
    out
}
