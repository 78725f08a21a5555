//! The contract every `ControlStore` keeps, run against SQLite and against
//! a real PostgreSQL server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::collections::HashSet;

use bulkhead_model::{
    AdminEmail, Failure, Isolation, LimiterFallback, NewTenant, PlanName, Rate, RegionName,
    StepRecord, StepStatus, Tenant, TenantId, TenantLimits, TenantName, TenantState,
};
use bulkhead_store::{
    AppRecord, AuditCheckpointRow, AuditEventRow, BackupRun, Departed, LedgerLine,
    MigrationJobRecord, MigrationTargetRecord, OperatorToken, ResourceRecord, RolloutRecord,
    StoreError, TenantPage,
};
use bulkhead_testkit::StoreFixture as Fixture;
use sqlx::Connection;
use time::OffsetDateTime;

/// Both databases keep microseconds at most; the control plane's clock
/// hands out milliseconds.
fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_millisecond(now.millisecond()).unwrap()
}

fn tenant(name: &str) -> Tenant {
    Tenant::new(
        NewTenant {
            id: TenantId::random(),
            name: TenantName::parse(name).unwrap(),
            plan: PlanName::parse("starter").unwrap(),
            isolation: Isolation::Silo,
            region: RegionName::default(),
            admin_email: Some(AdminEmail::parse("ops@acme.example").unwrap()),
            limits: TenantLimits::default(),
        },
        now(),
    )
}

bulkhead_testkit::on_both_stores!(
    round_trips_tenants,
    names_are_unique,
    concurrent_creates_of_one_name_have_one_winner,
    updates_are_optimistic,
    keeps_tenant_limits,
    refuses_stored_limits_that_do_not_validate,
    lists_in_pages,
    finds_unsettled_tenants,
    records_steps,
    deleting_a_tenant_removes_its_steps,
    counts_by_state,
    lists_regions_in_use,
    appends_audit_batches_whole_or_not_at_all,
    stores_operator_token_hashes,
    api_key_names_are_unique_until_a_key_is_deleted,
    one_server_at_a_time,
    reopening_keeps_data,
    one_migration_job_runs_at_a_time,
    keeps_apps_and_allocates_unix_users,
    keeps_resources_by_tenant_and_kind,
    adds_ledger_lines_and_notes_budget_notices_once,
    remembers_backup_successes_and_failures_until_the_tenant_goes,
    keeps_departures_after_the_tenant_goes,
);

async fn round_trips_tenants(f: Fixture) {
    let acme = tenant("acme");
    f.store.insert_tenant(&acme).await.unwrap();
    let by_name = f.store.tenant(&acme.name).await.unwrap().unwrap();
    assert_eq!(by_name, acme);
    assert_eq!(f.store.tenant_by_id(acme.id).await.unwrap().unwrap(), acme);
    let missing = TenantName::parse("nobody").unwrap();
    assert!(f.store.tenant(&missing).await.unwrap().is_none());
    assert!(f.store.tenant_by_id(TenantId::random()).await.unwrap().is_none());
}

async fn names_are_unique(f: Fixture) {
    f.store.insert_tenant(&tenant("acme")).await.unwrap();
    let err = f.store.insert_tenant(&tenant("acme")).await.unwrap_err();
    assert!(matches!(err, StoreError::NameTaken(ref n) if n == "acme"), "{err:?}");
}

async fn concurrent_creates_of_one_name_have_one_winner(f: Fixture) {
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let store = f.store.clone();
            tokio::spawn(async move { store.insert_tenant(&tenant("race")).await })
        })
        .collect();
    let mut won = 0;
    for attempt in attempts {
        match attempt.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::NameTaken(_)) => {}
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    assert_eq!(won, 1);
}

async fn updates_are_optimistic(f: Fixture) {
    let acme = tenant("acme");
    f.store.insert_tenant(&acme).await.unwrap();
    let active = Tenant {
        state: TenantState::Active,
        provisioned_at: Some(now()),
        last_error: Some("transient".into()),
        ..acme.clone()
    };
    let stored = f.store.update_tenant(&active).await.unwrap();
    assert_eq!(stored.version, acme.version + 1);
    assert_eq!(f.store.tenant(&acme.name).await.unwrap().unwrap(), stored);

    // A writer holding the old version loses.
    let stale = Tenant { state: TenantState::Failed, ..acme.clone() };
    assert!(matches!(f.store.update_tenant(&stale).await, Err(StoreError::VersionConflict)));

    let failed = Tenant {
        state: TenantState::Failed,
        failure: Some(Failure {
            step: "create_database".into(),
            reason: "boom".into(),
            undone: true,
        }),
        purge_requested: true,
        ..stored
    };
    let stored = f.store.update_tenant(&failed).await.unwrap();
    assert_eq!(f.store.tenant_by_id(acme.id).await.unwrap().unwrap(), stored);
}

async fn keeps_tenant_limits(f: Fixture) {
    let mut acme = tenant("acme");
    assert!(acme.limits.is_empty());
    f.store.insert_tenant(&acme).await.unwrap();
    assert_eq!(f.store.tenant(&acme.name).await.unwrap().unwrap().limits, TenantLimits::default());

    // Created with overrides, changed, then cleared again.
    let mut globex = tenant("globex");
    globex.limits = TenantLimits {
        rate_limit: Some(Rate { requests_per_minute: 120, burst: 10 }),
        max_in_flight: Some(8),
        ..TenantLimits::default()
    };
    f.store.insert_tenant(&globex).await.unwrap();
    assert_eq!(f.store.tenant_by_id(globex.id).await.unwrap().unwrap(), globex);
    acme.limits = TenantLimits {
        max_upstream_connections: Some(2),
        limiter_fallback: Some(LimiterFallback::Deny),
        ..TenantLimits::default()
    };
    let stored = f.store.update_tenant(&acme).await.unwrap();
    assert_eq!(f.store.tenant(&acme.name).await.unwrap().unwrap(), stored);
    assert_eq!(stored.limits.max_upstream_connections, Some(2));
    let cleared = Tenant { limits: TenantLimits::default(), ..stored };
    let stored = f.store.update_tenant(&cleared).await.unwrap();
    assert!(f.store.tenant(&acme.name).await.unwrap().unwrap().limits.is_empty());
    let listed = f.store.list_tenants(&TenantPage { limit: 10, ..TenantPage::default() }).await;
    let listed = listed.unwrap();
    assert_eq!(
        listed.iter().map(|t| &t.limits).collect::<Vec<_>>(),
        [&stored.limits, &globex.limits]
    );
}

/// A row changed outside Bulkhead is reported, not trusted.
async fn refuses_stored_limits_that_do_not_validate(f: Fixture) {
    let acme = tenant("acme");
    f.store.insert_tenant(&acme).await.unwrap();
    for bad in [r#"{"max_in_flight": 0}"#, r#"{"max_in_flight": 1, "colour": "red"}"#, "nonsense"] {
        let update = "UPDATE tenants SET limits = $1";
        match &f.db {
            Some(db) => {
                let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
                sqlx::query(update).bind(bad).execute(&mut conn).await.unwrap();
            }
            None => {
                let path = f.dir.path().join("bulkhead.db");
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query(update).bind(bad).execute(&mut conn).await.unwrap();
            }
        }
        let err = f.store.tenant(&acme.name).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt(ref why) if why.starts_with("tenant limits: ")),
            "{bad}: {err:?}"
        );
    }
}

async fn lists_in_pages(f: Fixture) {
    for name in ["delta", "alpha", "charlie", "bravo", "echo"] {
        f.store.insert_tenant(&tenant(name)).await.unwrap();
    }
    let mut deleted = f.store.tenant(&TenantName::parse("echo").unwrap()).await.unwrap().unwrap();
    deleted.state = TenantState::Deleted;
    f.store.update_tenant(&deleted).await.unwrap();

    let page = |after: Option<&str>, state, limit| TenantPage {
        after: after.map(str::to_owned),
        state,
        limit,
    };
    let names = |tenants: Vec<Tenant>| -> Vec<String> {
        tenants.into_iter().map(|t| t.name.to_string()).collect()
    };
    let first = f.store.list_tenants(&page(None, None, 2)).await.unwrap();
    assert_eq!(names(first), ["alpha", "bravo"]);
    let second = f.store.list_tenants(&page(Some("bravo"), None, 2)).await.unwrap();
    assert_eq!(names(second), ["charlie", "delta"]);
    let last = f.store.list_tenants(&page(Some("delta"), None, 2)).await.unwrap();
    assert!(last.is_empty(), "deleted tenants are not listed by default");
    let gone = f.store.list_tenants(&page(None, Some(TenantState::Deleted), 10)).await.unwrap();
    assert_eq!(names(gone), ["echo"]);
}

async fn finds_unsettled_tenants(f: Fixture) {
    let settle = |t: &Tenant, state, failure| Tenant { state, failure, ..t.clone() };
    let provisioning = tenant("provisioning");
    let active = tenant("active");
    let failed_pending = tenant("failed-pending");
    let failed_done = tenant("failed-done");
    let offboarding = tenant("offboarding");
    for t in [&provisioning, &active, &failed_pending, &failed_done, &offboarding] {
        f.store.insert_tenant(t).await.unwrap();
    }
    let failure = |undone| Some(Failure { step: "s".into(), reason: "r".into(), undone });
    for t in [
        settle(&active, TenantState::Active, None),
        settle(&failed_pending, TenantState::Failed, failure(false)),
        settle(&failed_done, TenantState::Failed, failure(true)),
        settle(&offboarding, TenantState::Offboarding, None),
    ] {
        f.store.update_tenant(&t).await.unwrap();
    }
    let unsettled: HashSet<_> = f.store.unsettled_tenants().await.unwrap().into_iter().collect();
    let expected: HashSet<_> = [provisioning.id, failed_pending.id, offboarding.id].into();
    assert_eq!(unsettled, expected);
}

async fn records_steps(f: Fixture) {
    let acme = tenant("acme");
    f.store.insert_tenant(&acme).await.unwrap();
    assert!(f.store.steps(acme.id).await.unwrap().is_empty());
    let applied = StepRecord {
        step: "allocate_directory".into(),
        status: StepStatus::Applied,
        output: Some(serde_json::json!({"path": "tenants/acme"})),
        updated_at: now(),
    };
    f.store.record_step(acme.id, &applied).await.unwrap();
    assert_eq!(f.store.steps(acme.id).await.unwrap(), std::slice::from_ref(&applied));

    // Recording again replaces: steps are idempotent and so is their record.
    let undone = StepRecord { status: StepStatus::Undone, output: None, ..applied };
    f.store.record_step(acme.id, &undone).await.unwrap();
    assert_eq!(f.store.steps(acme.id).await.unwrap(), std::slice::from_ref(&undone));

    let err = f.store.record_step(TenantId::random(), &undone).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn deleting_a_tenant_removes_its_steps(f: Fixture) {
    let acme = tenant("acme");
    f.store.insert_tenant(&acme).await.unwrap();
    let record = StepRecord {
        step: "allocate_directory".into(),
        status: StepStatus::Applied,
        output: None,
        updated_at: now(),
    };
    f.store.record_step(acme.id, &record).await.unwrap();
    f.store.delete_tenant(acme.id).await.unwrap();
    assert!(f.store.tenant(&acme.name).await.unwrap().is_none());
    assert!(f.store.steps(acme.id).await.unwrap().is_empty());
    // The name is free again, and deleting twice is harmless.
    f.store.insert_tenant(&tenant("acme")).await.unwrap();
    f.store.delete_tenant(acme.id).await.unwrap();
}

async fn counts_by_state(f: Fixture) {
    for name in ["one", "two", "three"] {
        f.store.insert_tenant(&tenant(name)).await.unwrap();
    }
    let mut three = f.store.tenant(&TenantName::parse("three").unwrap()).await.unwrap().unwrap();
    three.state = TenantState::Active;
    f.store.update_tenant(&three).await.unwrap();
    let mut counts = f.store.count_by_state().await.unwrap();
    counts.sort_by_key(|(state, _)| state.as_str());
    assert_eq!(counts, [(TenantState::Active, 1), (TenantState::Provisioning, 2)]);
}

async fn lists_regions_in_use(f: Fixture) {
    assert!(f.store.regions_in_use().await.unwrap().is_empty());
    for (name, region) in [("bravo", "eu"), ("alpha", "eu"), ("charlie", "local")] {
        let mut t = tenant(name);
        t.region = RegionName::parse(region).unwrap();
        f.store.insert_tenant(&t).await.unwrap();
    }
    let used = f.store.regions_in_use().await.unwrap();
    let used: Vec<_> =
        used.iter().map(|u| (u.region.as_str(), u.tenants, u.first_tenant.as_str())).collect();
    assert_eq!(used, [("eu", 2, "alpha"), ("local", 1, "charlie")]);
}

async fn appends_audit_batches_whole_or_not_at_all(f: Fixture) {
    let row = |stream: &str, seq: i64| AuditEventRow {
        stream: stream.into(),
        seq,
        time: format!("2026-12-01T10:00:{seq:02}.000000Z"),
        actor_kind: "operator".into(),
        actor_id: "initial".into(),
        action: "tenant.create".into(),
        resource: "tenant".into(),
        outcome: "ok".into(),
        request_id: None,
        details: "{}".into(),
        prev_hash: vec![0; 32],
        hash: vec![seq as u8; 32],
        mac: (seq > 1).then(|| vec![9; 32]),
        mac_key_id: (seq > 1).then(|| "k".into()),
    };
    let checkpoint = |stream: &str, seq: i64| AuditCheckpointRow {
        stream: stream.into(),
        seq,
        head: vec![seq as u8; 32],
        time: "2026-12-01T10:01:00.000000Z".into(),
        kind: "periodic".into(),
        key_id: "k".into(),
        signature: vec![0; 64],
    };
    let batch = [row("a", 1), row("b", 1), row("a", 2)];
    f.store.append_audit(&batch, &[checkpoint("a", 2)]).await.unwrap();
    assert_eq!(f.store.audit_head("a").await.unwrap(), Some((2, vec![2; 32])));
    assert_eq!(f.store.audit_last_checkpoint("a").await.unwrap(), Some(2));
    assert_eq!(f.store.audit_streams().await.unwrap(), ["a", "b"]);
    // A batch with one bad row (a seq taken) leaves no trace at all.
    let bad = [row("b", 2), row("c", 1), row("a", 2)];
    assert!(f.store.append_audit(&bad, &[checkpoint("b", 2)]).await.is_err());
    assert_eq!(f.store.audit_head("b").await.unwrap(), Some((1, vec![1; 32])));
    assert_eq!(f.store.audit_head("c").await.unwrap(), None);
    assert_eq!(f.store.audit_last_checkpoint("b").await.unwrap(), None);
    let events = f.store.audit_events("a", 0, 10).await.unwrap();
    assert_eq!(events, [row("a", 1), row("a", 2)]);
    assert_eq!(f.store.audit_first_seq_since("a", "2026-12-01T10:00:02").await.unwrap(), Some(2));

    // The last signed head, kept apart: only ever moved forward.
    assert_eq!(f.store.audit_signed_head("a").await.unwrap(), None);
    f.store.set_audit_signed_head(&checkpoint("a", 2)).await.unwrap();
    f.store.set_audit_signed_head(&checkpoint("a", 1)).await.unwrap();
    assert_eq!(f.store.audit_signed_head("a").await.unwrap(), Some(checkpoint("a", 2)));
    f.store.set_audit_signed_head(&checkpoint("a", 3)).await.unwrap();
    assert_eq!(f.store.audit_signed_head("a").await.unwrap().map(|c| c.seq), Some(3));
}

async fn stores_operator_token_hashes(f: Fixture) {
    assert!(f.store.operator_tokens().await.unwrap().is_empty());
    let token = OperatorToken {
        id: uuid::Uuid::new_v4(),
        name: "initial".into(),
        token_hash: [7; 32],
        created_at: now(),
    };
    f.store.insert_operator_token(&token).await.unwrap();
    assert_eq!(f.store.operator_tokens().await.unwrap(), std::slice::from_ref(&token));
    let again = OperatorToken { id: uuid::Uuid::new_v4(), ..token };
    assert!(matches!(f.store.insert_operator_token(&again).await, Err(StoreError::Duplicate(_))));
    // In no Debug format: not the field, not its bytes in decimal or hex.
    let shown = OperatorToken { id: uuid::Uuid::nil(), token_hash: [0xab; 32], ..again };
    for debug in [format!("{shown:?}"), format!("{shown:#?}")] {
        let hidden = ["token_hash", "171", "abab", "ABAB"];
        assert!(hidden.iter().all(|h| !debug.contains(h)), "Debug prints the hash: {debug}");
    }
}

async fn api_key_names_are_unique_until_a_key_is_deleted(f: Fixture) {
    let acme = tenant("acme");
    f.store.insert_tenant(&acme).await.unwrap();
    let key = |hash: u8| bulkhead_store::ApiKeyRecord {
        id: uuid::Uuid::new_v4(),
        tenant_id: acme.id,
        name: "ci".into(),
        prefix: "bh_acme_abcd".into(),
        key_hash: vec![hash; 32],
        roles: "viewer".into(),
        created_by: "operator:initial".into(),
        created_at: now(),
        last_used_at: None,
        revoked_at: None,
        expires_at: None,
        from_token: false,
    };
    let first = key(1);
    f.store.insert_api_key(&first).await.unwrap();
    // A revoked key keeps its name; a deleted one frees it.
    assert!(f.store.revoke_api_key(acme.id, first.id, now()).await.unwrap());
    assert!(matches!(f.store.insert_api_key(&key(2)).await, Err(StoreError::Duplicate(_))));
    assert!(!f.store.delete_api_key(TenantId::random(), first.id).await.unwrap(), "not theirs");
    assert!(f.store.delete_api_key(acme.id, first.id).await.unwrap());
    assert!(!f.store.delete_api_key(acme.id, first.id).await.unwrap());
    f.store.insert_api_key(&key(3)).await.unwrap();
    assert_eq!(f.store.api_keys(acme.id).await.unwrap().len(), 1);

    // Keys made with a token go with the realm's tokens; others stay.
    let made = |name: &str, hash: u8, from_token: bool| bulkhead_store::ApiKeyRecord {
        name: name.into(),
        from_token,
        expires_at: Some(now() + time::Duration::hours(1)),
        ..key(hash)
    };
    let (by_token, by_operator) = (made("t", 4, true), made("o", 5, false));
    f.store.insert_api_key(&by_token).await.unwrap();
    f.store.insert_api_key(&by_operator).await.unwrap();
    let stored = f.store.api_key_by_hash(&by_token.key_hash).await.unwrap().unwrap();
    assert_eq!((stored.from_token, stored.expires_at), (true, by_token.expires_at));
    let later = now() + time::Duration::seconds(1);
    assert_eq!(f.store.revoke_token_made_api_keys(acme.id, later).await.unwrap(), 1);
    let keys = f.store.api_keys(acme.id).await.unwrap();
    let revoked = |name: &str| keys.iter().find(|k| k.name == name).unwrap().revoked_at.is_some();
    assert!(revoked("t") && !revoked("o"));
}

async fn one_server_at_a_time(f: Fixture) {
    let held = f.store.lock_exclusive().await.unwrap();
    let second = bulkhead_store::open(&f.location).await.unwrap();
    let err = second.lock_exclusive().await.unwrap_err();
    assert!(err.to_string().contains("another bulkhead server is using it"), "{err}");
    drop(held);
    second.lock_exclusive().await.unwrap();
}

async fn reopening_keeps_data(f: Fixture) {
    let acme = tenant("acme");
    f.store.insert_tenant(&acme).await.unwrap();
    f.store.ping().await.unwrap();
    // Opening again runs the migrations again: they must be a no-op.
    let reopened = bulkhead_store::open(&f.location).await.unwrap();
    assert_eq!(reopened.tenant(&acme.name).await.unwrap().unwrap(), acme);
    assert!(!reopened.location().is_empty());
}

async fn one_migration_job_runs_at_a_time(f: Fixture) {
    let job = |id| MigrationJobRecord {
        id,
        created_at: now(),
        created_by: "operator:initial".into(),
        state: "running".into(),
        spec: "{}".into(),
        finished_at: None,
    };
    let (first, second) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let tenant = uuid::Uuid::new_v4();
    let target = |position| MigrationTargetRecord {
        job_id: first,
        position,
        tenant_id: (position == 0).then_some(tenant),
        region: "default".into(),
        label: format!("t{position}"),
        canary: position == 0,
        state: "pending".into(),
        from_version: None,
        to_version: None,
        detail: None,
        finished_at: None,
    };
    f.store.insert_migration_job(&job(first), &[target(0), target(1)]).await.unwrap();
    let refused = f.store.insert_migration_job(&job(second), &[]).await;
    assert!(matches!(refused, Err(StoreError::Duplicate(_))), "{refused:?}");
    let done = MigrationTargetRecord {
        state: "migrated".into(),
        from_version: Some(1),
        to_version: Some(3),
        finished_at: Some(now()),
        ..target(1)
    };
    f.store.update_migration_target(&done).await.unwrap();
    assert_eq!(f.store.migration_targets(first).await.unwrap(), [target(0), done]);
    f.store.finish_migration_job(first, "succeeded", now()).await.unwrap();
    f.store.insert_migration_job(&job(second), &[]).await.unwrap();
    let jobs = f.store.migration_jobs(10).await.unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(f.store.migration_job(first).await.unwrap().unwrap().state, "succeeded");
}

async fn keeps_apps_and_allocates_unix_users(f: Fixture) {
    let (a, b, c) = (tenant("apps-a"), tenant("apps-b"), tenant("apps-c"));
    for t in [&a, &b, &c] {
        f.store.insert_tenant(t).await.unwrap();
    }
    let at = now();
    let mut app = AppRecord {
        tenant_id: a.id,
        name: "keyring".into(),
        spec: "{}".into(),
        previous: None,
        live: None,
        revision: 0,
        running: true,
        pinned: false,
        created_at: at,
        updated_at: at,
    };
    assert!(f.store.put_app(&app).await.unwrap(), "created");
    assert!(
        matches!(f.store.put_app(&app).await, Err(StoreError::VersionConflict)),
        "created once"
    );
    app.revision = 1;
    app.previous = Some("{}".into());
    app.spec = "{\"v\":2}".into();
    app.pinned = true;
    app.updated_at = at + time::Duration::seconds(1);
    assert!(!f.store.put_app(&app).await.unwrap(), "replaced");
    let stored = f.store.app(a.id, "keyring").await.unwrap().unwrap();
    assert_eq!(stored, AppRecord { created_at: at, revision: 2, ..app.clone() });
    assert!(
        matches!(f.store.put_app(&app).await, Err(StoreError::VersionConflict)),
        "a writer that read revision 1 loses"
    );
    assert_eq!(f.store.apps(b.id).await.unwrap(), vec![], "apps are per tenant");
    assert_eq!(f.store.all_apps().await.unwrap().len(), 1);

    // The switch and the revert apply only to the spec they were decided
    // on, and each is a new revision.
    app.revision = 2;
    app.live = Some("{}".into());
    f.store.put_app(&app).await.unwrap();
    assert!(!f.store.promote_app(a.id, "keyring", "{\"v\":1}", at).await.unwrap(), "stale");
    assert!(!f.store.revert_app(a.id, "keyring", "{\"v\":1}", at).await.unwrap(), "stale");
    assert!(f.store.revert_app(a.id, "keyring", "{\"v\":2}", at).await.unwrap());
    let reverted = f.store.app(a.id, "keyring").await.unwrap().unwrap();
    assert_eq!(
        (reverted.spec.as_str(), reverted.live.as_deref(), reverted.previous.as_deref()),
        ("{}", Some("{}"), Some("{\"v\":2}")),
        "the failed spec is kept as previous"
    );
    assert_eq!(reverted.revision, 4);
    assert!(matches!(f.store.put_app(&app).await, Err(StoreError::VersionConflict)));
    app.revision = 4;
    app.spec = "{\"v\":3}".into();
    f.store.put_app(&app).await.unwrap();
    assert!(f.store.promote_app(a.id, "keyring", "{\"v\":3}", at).await.unwrap());
    let promoted = f.store.app(a.id, "keyring").await.unwrap().unwrap();
    assert_eq!(promoted.live.as_deref(), Some("{\"v\":3}"));
    assert!(!f.store.revert_app(b.id, "keyring", "{\"v\":3}", at).await.unwrap(), "per tenant");
    assert!(
        !f.store.revert_app(a.id, "keyring", "{\"v\":3}", at).await.unwrap(),
        "nothing to revert once live"
    );
    assert!(!f.store.promote_app(a.id, "keyring", "{\"v\":3}", at).await.unwrap(), "live already");

    // Rollouts: one under way per app; a finished one frees the app.
    let rollout = |app: &str, state: &str| RolloutRecord {
        id: uuid::Uuid::new_v4(),
        app: app.into(),
        state: state.into(),
        body: "{}".into(),
        created_at: at,
        updated_at: at,
    };
    let mut first = rollout("keyring", "running");
    f.store.put_rollout(&first).await.unwrap();
    let second = rollout("keyring", "paused");
    assert!(matches!(f.store.put_rollout(&second).await, Err(StoreError::Duplicate(_))));
    let halted = rollout("keyring", "halted");
    assert!(matches!(f.store.put_rollout(&halted).await, Err(StoreError::Duplicate(_))));
    f.store.put_rollout(&rollout("other", "running")).await.unwrap();
    first.state = "completed".into();
    first.updated_at = at + time::Duration::seconds(2);
    f.store.put_rollout(&first).await.unwrap();
    f.store.put_rollout(&second).await.unwrap();
    assert_eq!(f.store.rollout(first.id).await.unwrap(), Some(first.clone()));
    let aborting = rollout("third", "aborting");
    f.store.put_rollout(&aborting).await.unwrap();
    f.store.put_rollout(&rollout("fourth", "aborted")).await.unwrap();
    assert_eq!(f.store.rollouts(10).await.unwrap().len(), 5);
    assert_eq!(f.store.rollouts(1).await.unwrap().len(), 1);
    let unfinished = f.store.unfinished_rollouts().await.unwrap();
    assert_eq!(unfinished.len(), 3, "running, paused and aborting: {unfinished:?}");
    assert!(unfinished.iter().any(|r| r.id == aborting.id));
    assert!(unfinished.iter().all(|r| r.id != first.id && r.state != "aborted"));

    assert!(f.store.delete_app(a.id, "keyring").await.unwrap());
    assert!(!f.store.delete_app(a.id, "keyring").await.unwrap());

    // Flags: set and unset together.
    let set = |k: &str, v: Option<&str>| (k.to_owned(), v.map(str::to_owned));
    f.store
        .set_flags(a.id, &[set("beta", Some("on")), set("plan.tier", Some("gold"))], at)
        .await
        .unwrap();
    f.store
        .set_flags(a.id, &[set("beta", None), set("plan.tier", Some("silver"))], at)
        .await
        .unwrap();
    assert_eq!(
        f.store.flags(a.id).await.unwrap(),
        vec![("plan.tier".to_owned(), "silver".to_owned())]
    );
    assert_eq!(f.store.flags(b.id).await.unwrap(), vec![], "flags are per tenant");

    // Users: the lowest free uid of the range, the same one again for the
    // same tenant, none when the range is used up.
    let first = 70_000 + (rand_below(1000) * 10);
    assert_eq!(f.store.runtime_user(a.id, first, first + 1, at).await.unwrap(), Some(first));
    assert_eq!(f.store.runtime_user(a.id, first, first + 1, at).await.unwrap(), Some(first));
    assert_eq!(f.store.runtime_user(b.id, first, first + 1, at).await.unwrap(), Some(first + 1));
    assert_eq!(f.store.runtime_user(c.id, first, first + 1, at).await.unwrap(), None);
    let users = f.store.runtime_users().await.unwrap();
    assert!(users.contains(&(a.id, first)) && users.contains(&(b.id, first + 1)), "{users:?}");
    // The user outlives its tenant: not given to another while files may remain.
    f.store.delete_tenant(a.id).await.unwrap();
    assert_eq!(f.store.runtime_user(c.id, first, first + 1, at).await.unwrap(), None);
}

fn rand_below(n: u32) -> u32 {
    u32::from_ne_bytes(TenantId::random().0.as_bytes()[..4].try_into().unwrap()) % n
}

async fn keeps_resources_by_tenant_and_kind(f: Fixture) {
    let (a, b) = (tenant("res-a"), tenant("res-b"));
    for t in [&a, &b] {
        f.store.insert_tenant(t).await.unwrap();
    }
    let at = now();
    let record = |tenant: &Tenant, kind: &str, name: &str, spec: &str| ResourceRecord {
        tenant_id: tenant.id,
        kind: kind.into(),
        name: name.into(),
        spec: spec.into(),
        created_at: at,
        updated_at: at,
    };
    assert!(f.store.put_resource(&record(&a, "guardrail", "pii", "{}")).await.unwrap());
    assert!(f.store.put_resource(&record(&a, "guardrail", "default", "{}")).await.unwrap());
    // Another kind and another tenant may use the same name.
    assert!(f.store.put_resource(&record(&a, "tool", "pii", "{}")).await.unwrap());
    assert!(f.store.put_resource(&record(&b, "guardrail", "pii", "{}")).await.unwrap());
    let later = at + time::Duration::seconds(5);
    let changed =
        ResourceRecord { updated_at: later, ..record(&a, "guardrail", "pii", "{\"x\":1}") };
    assert!(!f.store.put_resource(&changed).await.unwrap(), "replaced, not created");
    let stored = f.store.resource(a.id, "guardrail", "pii").await.unwrap().unwrap();
    assert_eq!(
        (stored.spec.as_str(), stored.created_at, stored.updated_at),
        ("{\"x\":1}", at, later)
    );
    let names = |records: Vec<ResourceRecord>| {
        records.into_iter().map(|r| (r.tenant_id, r.name)).collect::<Vec<_>>()
    };
    assert_eq!(
        names(f.store.resources(a.id, "guardrail").await.unwrap()),
        [(a.id, "default".to_owned()), (a.id, "pii".to_owned())]
    );
    let all = names(f.store.all_resources("guardrail").await.unwrap());
    assert_eq!(all.len(), 3);
    assert!(all.contains(&(b.id, "pii".to_owned())));
    assert!(f.store.delete_resource(a.id, "guardrail", "pii").await.unwrap());
    assert!(!f.store.delete_resource(a.id, "guardrail", "pii").await.unwrap());
    assert!(f.store.resource(a.id, "guardrail", "pii").await.unwrap().is_none());
    assert!(f.store.resource(a.id, "tool", "pii").await.unwrap().is_some(), "another kind stays");
    // A tenant's resources go with it.
    f.store.delete_tenant(b.id).await.unwrap();
    assert!(f.store.resources(b.id, "guardrail").await.unwrap().is_empty());
}

async fn adds_ledger_lines_and_notes_budget_notices_once(f: Fixture) {
    let (a, b) = (TenantId::random(), TenantId::random());
    let line = |tenant: TenantId, day: &str, kind: &str, item: &str, cost_micros: i64| LedgerLine {
        tenant_id: tenant,
        day: day.into(),
        api: "chat".into(),
        kind: kind.into(),
        item: item.into(),
        requests: 1,
        tokens_in: 10,
        tokens_out: 20,
        cost_micros,
    };
    let first = [
        line(a, "2026-11-30", "model", "gpt", 5),
        line(a, "2026-12-01", "model", "gpt", 7),
        line(a, "2026-12-01", "tool", "search", 0),
        line(b, "2026-12-01", "model", "gpt", 100),
    ];
    f.store.insert_usage(&[], &first).await.unwrap();
    // The same key again adds to the stored line.
    f.store.insert_usage(&[], &[line(a, "2026-12-01", "model", "gpt", 3)]).await.unwrap();
    let december = f.store.ledger(Some(a), "2026-12-01", "2027-01-01").await.unwrap();
    assert_eq!(
        december,
        [
            LedgerLine {
                requests: 2,
                tokens_in: 20,
                tokens_out: 40,
                ..line(a, "2026-12-01", "model", "gpt", 10)
            },
            line(a, "2026-12-01", "tool", "search", 0),
        ]
    );
    assert_eq!(f.store.spent(a, "2026-12-01", "2027-01-01").await.unwrap(), 10);
    assert_eq!(f.store.spent(a, "2026-11-01", "2026-12-01").await.unwrap(), 5);
    assert_eq!(f.store.spent(TenantId::random(), "2026-12-01", "2027-01-01").await.unwrap(), 0);
    let everyone = f.store.ledger(None, "2026-12-01", "2027-01-01").await.unwrap();
    assert!(everyone.contains(&line(b, "2026-12-01", "model", "gpt", 100)), "{everyone:?}");

    let at = now();
    assert!(f.store.note_budget(a, "2026-12", "soft_cap", at).await.unwrap());
    assert!(!f.store.note_budget(a, "2026-12", "soft_cap", at).await.unwrap(), "once a period");
    assert!(f.store.note_budget(a, "2027-01", "soft_cap", at).await.unwrap());
    assert!(f.store.note_budget(b, "2026-12", "soft_cap", at).await.unwrap());
}

async fn remembers_backup_successes_and_failures_until_the_tenant_goes(f: Fixture) {
    let acme = tenant("acme");
    f.store.insert_tenant(&acme).await.unwrap();
    assert_eq!(f.store.backup_run(acme.id).await.unwrap(), None);
    let (at, later) = (now(), now() + time::Duration::minutes(5));
    f.store.backup_failed(acme.id, "the store is down", at, later).await.unwrap();
    f.store.backup_failed(acme.id, "still down", at, later).await.unwrap();
    let failing = BackupRun {
        tenant_id: acme.id,
        last_success: None,
        last_backup: None,
        last_attempt: at,
        failures: 2,
        last_error: Some("still down".into()),
        retry_at: Some(later),
    };
    assert_eq!(f.store.backup_run(acme.id).await.unwrap(), Some(failing));
    f.store.backup_succeeded(acme.id, "20261204T180000Z-1a2b3c4d", later).await.unwrap();
    let fine = BackupRun {
        tenant_id: acme.id,
        last_success: Some(later),
        last_backup: Some("20261204T180000Z-1a2b3c4d".into()),
        last_attempt: later,
        failures: 0,
        last_error: None,
        retry_at: None,
    };
    assert_eq!(f.store.backup_runs().await.unwrap(), [fine]);
    f.store.delete_tenant(acme.id).await.unwrap();
    assert_eq!(f.store.backup_runs().await.unwrap(), []);
}

async fn keeps_departures_after_the_tenant_goes(f: Fixture) {
    let (first, second) = (tenant("acme"), tenant("acme"));
    f.store.insert_tenant(&first).await.unwrap();
    let departed = |t: &Tenant, at: OffsetDateTime, kek: &str| Departed {
        tenant_id: t.id,
        name: t.name.to_string(),
        record: serde_json::to_string(t).unwrap(),
        backup_id: Some(format!("final-{}", t.id)),
        recipient: Some("age1example".into()),
        kek_id: Some(kek.into()),
        wrapped_key: Some(vec![1, 2, 3]),
        sealed_identity: Some(vec![4, 5, 6]),
        manifest: None,
        departed_at: at,
        expires_at: at + time::Duration::days(90),
    };
    let left = departed(&first, now(), "master:old");
    assert!(f.store.insert_departed(&left).await.unwrap());
    assert!(!f.store.insert_departed(&departed(&first, now(), "master:x")).await.unwrap());
    // The name is free once the tenant's row goes; the departure stays.
    f.store.delete_tenant(first.id).await.unwrap();
    f.store.insert_tenant(&second).await.unwrap();
    let later = departed(&second, now() + time::Duration::seconds(1), "master:old");
    f.store.insert_departed(&later).await.unwrap();
    assert!(f.store.set_departure_manifest(first.id, "{}").await.unwrap());
    let left = Departed { manifest: Some("{}".into()), ..left };
    assert_eq!(f.store.departed(first.id).await.unwrap(), Some(left.clone()));
    assert_eq!(f.store.departed_named("acme").await.unwrap(), Some(later.clone()));
    assert_eq!(f.store.departed_tenants().await.unwrap(), [later.clone(), left.clone()]);

    // A master rotation moves the snapshot keys like data keys.
    let kek: std::collections::HashMap<String, i64> =
        f.store.data_keys_by_kek().await.unwrap().into_iter().collect();
    assert_eq!(kek.get("master:old"), Some(&2));
    let mut key = f.store.departure_keys_wrapped_by("master:old", 1).await.unwrap().remove(0);
    key.kek_id = "master:new".into();
    key.wrapped = vec![9];
    assert!(f.store.rewrap_departure_key(&key, "master:old").await.unwrap());
    assert!(!f.store.rewrap_departure_key(&key, "master:old").await.unwrap());
    assert_eq!(f.store.departure_keys_wrapped_by("master:old", 10).await.unwrap().len(), 1);
    let moved = f.store.departed(key.tenant_id).await.unwrap().unwrap();
    assert_eq!((moved.kek_id.as_deref(), moved.wrapped_key), (Some("master:new"), Some(vec![9])));

    assert!(f.store.delete_departed(first.id).await.unwrap());
    assert!(!f.store.delete_departed(first.id).await.unwrap());
    let left: Vec<_> =
        f.store.departed_tenants().await.unwrap().iter().map(|d| d.tenant_id).collect();
    assert_eq!(left, [second.id]);
}
