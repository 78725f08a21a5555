//! The vault against real stores: SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use std::{path::PathBuf, sync::Arc, time::Duration};

use bulkhead_model::TenantId;
use bulkhead_store::SecretVersion;
use bulkhead_testkit::StoreFixture as Fixture;
use bulkhead_vault::{
    KeyEncryptionKey, KeyRole, LocalKey, MasterKeySource, SecretPath, TenantKeyChange, Vault,
    VaultError, envelope, master_key,
};
use time::OffsetDateTime;

/// The store fixture, with the vault's master key in its directory.
trait VaultFixture {
    fn key_path(&self) -> PathBuf;
    fn source(&self) -> MasterKeySource;
    async fn vault(&self) -> Vault;
    async fn tenant(&self, name: &str) -> TenantId;
}

impl VaultFixture for Fixture {
    fn key_path(&self) -> PathBuf {
        self.dir.path().join("master.key")
    }

    fn source(&self) -> MasterKeySource {
        MasterKeySource::File { path: self.key_path(), create: true }
    }

    async fn vault(&self) -> Vault {
        Vault::open(self.store.clone(), &self.source(), now()).await.unwrap()
    }

    async fn tenant(&self, name: &str) -> TenantId {
        let tenant = bulkhead_testkit::starter_tenant(name, now());
        self.store.insert_tenant(&tenant).await.unwrap();
        tenant.id
    }
}

fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_millisecond(now.millisecond()).unwrap()
}

fn path(p: &str) -> SecretPath {
    SecretPath::parse(p).unwrap()
}

bulkhead_testkit::on_both_stores!(
    round_trips_and_keeps_versions,
    ciphertexts_do_not_work_for_another_tenant,
    data_key_rotation_and_rewrap_keep_every_secret,
    master_rotation_rewraps_data_keys_only,
    a_departed_tenants_snapshot_key_outlives_its_data_keys_and_rotations,
    an_interrupted_master_rotation_resumes,
    a_wrong_or_missing_master_key_refuses_and_changes_nothing,
    bring_your_own_key_locks_out_the_master_key,
    purging_keys_shreds_every_copy,
    damaged_ciphertexts_and_keys_are_clear_errors,
    concurrent_writes_of_one_secret_get_distinct_versions,
    leases_and_lockouts_are_recorded,
    sealed_blobs_follow_rotation_adoption_and_shredding,
);

async fn round_trips_and_keeps_versions(f: Fixture) {
    let vault = f.vault().await;
    let acme = f.tenant("acme").await;
    assert_eq!(vault.create_data_key(acme, now()).await.unwrap(), 1);
    assert_eq!(vault.create_data_key(acme, now()).await.unwrap(), 1, "idempotent");
    let p = path("db/password");
    for (i, value) in ["one", "two", "three", "four"].iter().enumerate() {
        let stored =
            vault.put(acme, &p, value.as_bytes(), 3, "operator:test", now()).await.unwrap();
        assert_eq!(stored.version, i as i64 + 1);
        assert_eq!(stored.size, value.len() as i64);
    }
    assert_eq!(&**vault.get(acme, &p, None).await.unwrap().value, b"four");
    assert_eq!(&**vault.get(acme, &p, Some(2)).await.unwrap().value, b"two");
    let gone = vault.get(acme, &p, Some(1)).await.unwrap_err();
    assert!(gone.to_string().contains("has no version 1"), "{gone}");
    vault.put(acme, &path("api/key"), b"k", 3, "operator:test", now()).await.unwrap();
    let list = vault.list(acme).await.unwrap();
    let summary: Vec<_> =
        list.iter().map(|s| (s.path.as_str(), s.latest_version, s.versions)).collect();
    assert_eq!(summary, [("api/key", 1, 1), ("db/password", 4, 3)]);
    assert_eq!(vault.delete(acme, &p).await.unwrap(), 3);
    assert!(matches!(vault.get(acme, &p, None).await, Err(VaultError::SecretNotFound(_))));
    assert!(matches!(vault.delete(acme, &p).await, Err(VaultError::SecretNotFound(_))));
}

async fn ciphertexts_do_not_work_for_another_tenant(f: Fixture) {
    let vault = f.vault().await;
    let (acme, globex) = (f.tenant("acme").await, f.tenant("globex").await);
    vault.create_data_key(acme, now()).await.unwrap();
    vault.create_data_key(globex, now()).await.unwrap();
    let p = path("db/password");
    vault.put(acme, &p, b"acme-secret", 3, "t", now()).await.unwrap();
    assert!(matches!(vault.get(globex, &p, None).await, Err(VaultError::SecretNotFound(_))));
    let acme_secret = f.store.secret(acme, "db/password", None).await.unwrap().unwrap();

    // Someone with write access to the store moves a ciphertext within
    // acme, to another path: the data key is right, and only the path bound
    // in the associated data refuses it.
    let moved = SecretVersion { path: "db/other".into(), ..acme_secret.clone() };
    f.store.insert_secret(&moved).await.unwrap();
    let err = vault.get(acme, &path("db/other"), None).await.unwrap_err();
    assert!(
        matches!(&err, VaultError::Corrupt(m) if m.contains("ciphertext is damaged or was moved")),
        "{err}"
    );

    // Or moves acme's ciphertext to globex together with the data key that
    // seals it: the wrapped data key is bound to acme and does not unwrap
    // for globex, so nothing decrypts.
    f.store.insert_secret(&SecretVersion { tenant_id: globex, ..acme_secret }).await.unwrap();
    let mut key = f.store.data_keys(acme).await.unwrap().remove(0);
    let globex_key = f.store.data_keys(globex).await.unwrap().remove(0);
    key.tenant_id = globex;
    assert!(f.store.rewrap_data_key(&key, &globex_key.kek_id).await.unwrap());
    // A vault opened afresh, with no data key cached.
    let err = f.vault().await.get(globex, &p, None).await.unwrap_err();
    assert!(
        matches!(&err, VaultError::Corrupt(m) if m.contains("data key version 1 cannot be unwrapped")),
        "{err}"
    );
    f.vault().await.put(globex, &path("x"), b"y", 3, "t", now()).await.unwrap_err();
}

async fn data_key_rotation_and_rewrap_keep_every_secret(f: Fixture) {
    let vault = f.vault().await;
    let acme = f.tenant("acme").await;
    vault.create_data_key(acme, now()).await.unwrap();
    vault.put(acme, &path("old"), b"written under v1", 5, "t", now()).await.unwrap();
    vault.put(acme, &path("old"), b"again under v1", 5, "t", now()).await.unwrap();
    assert_eq!(vault.rotate_data_key(acme, now()).await.unwrap(), 2);
    vault.put(acme, &path("new"), b"written under v2", 5, "t", now()).await.unwrap();
    assert_eq!(f.store.secret(acme, "new", None).await.unwrap().unwrap().key_version, 2);
    assert_eq!(&**vault.get(acme, &path("old"), Some(1)).await.unwrap().value, b"written under v1");
    assert_eq!(vault.rewrap(acme).await.unwrap(), 2);
    assert_eq!(vault.rewrap(acme).await.unwrap(), 0);
    assert!(f.store.secrets_below_key_version(acme, 2, 10).await.unwrap().is_empty());
    assert_eq!(&**vault.get(acme, &path("old"), Some(1)).await.unwrap().value, b"written under v1");
    assert_eq!(&**vault.get(acme, &path("old"), None).await.unwrap().value, b"again under v1");
    assert_eq!(&**vault.get(acme, &path("new"), None).await.unwrap().value, b"written under v2");
}

async fn master_rotation_rewraps_data_keys_only(f: Fixture) {
    let vault = f.vault().await;
    let before = std::fs::read(f.key_path()).unwrap();
    let mut tenants = Vec::new();
    for name in ["acme", "globex", "initech"] {
        let id = f.tenant(name).await;
        vault.create_data_key(id, now()).await.unwrap();
        vault.rotate_data_key(id, now()).await.unwrap();
        vault.put(id, &path("s"), name.as_bytes(), 3, "t", now()).await.unwrap();
        tenants.push((id, name));
    }
    let ciphertexts_before: Vec<_> = {
        let mut all = Vec::new();
        for (id, _) in &tenants {
            all.push(f.store.secret(*id, "s", None).await.unwrap().unwrap().ciphertext);
        }
        all
    };
    let old_id = vault.master_key_id().unwrap();
    let rotation = vault.rotate_master(now()).await.unwrap();
    assert_eq!(rotation.from, old_id);
    assert_eq!(rotation.rewrapped, 6);
    assert_ne!(std::fs::read(f.key_path()).unwrap(), before);
    assert!(!master_key::next_path(&f.key_path()).exists());
    for ((id, name), ciphertext) in tenants.iter().zip(ciphertexts_before) {
        assert_eq!(&**vault.get(*id, &path("s"), None).await.unwrap().value, name.as_bytes());
        let now_stored = f.store.secret(*id, "s", None).await.unwrap().unwrap().ciphertext;
        assert_eq!(now_stored, ciphertext, "secret ciphertexts are untouched");
        for key in f.store.data_keys(*id).await.unwrap() {
            assert_eq!(key.kek_id, rotation.to);
        }
    }
    // A restart reads the new key.
    drop(vault);
    let restarted = f.vault().await;
    assert_eq!(restarted.master_key_id().unwrap(), rotation.to);
    assert_eq!(&**restarted.get(tenants[0].0, &path("s"), None).await.unwrap().value, b"acme");
}

async fn an_interrupted_master_rotation_resumes(f: Fixture) {
    let vault = f.vault().await;
    let acme = f.tenant("acme").await;
    vault.create_data_key(acme, now()).await.unwrap();
    vault.put(acme, &path("s"), b"value", 3, "t", now()).await.unwrap();
    drop(vault);
    // The crash came right after the new key was written.
    let next = LocalKey::generate(KeyRole::Master).unwrap();
    master_key::write_key_file(&master_key::next_path(&f.key_path()), &next).unwrap();
    let vault = f.vault().await;
    assert!(vault.rotation_pending().unwrap());
    // New data keys already go to the new key.
    let globex = f.tenant("globex").await;
    vault.create_data_key(globex, now()).await.unwrap();
    assert_eq!(f.store.data_keys(globex).await.unwrap()[0].kek_id, next.id());
    let done = vault.resume(now()).await.unwrap().unwrap();
    assert_eq!(done.to, next.id());
    assert!(!vault.rotation_pending().unwrap());
    assert_eq!(&**vault.get(acme, &path("s"), None).await.unwrap().value, b"value");
    assert_eq!(f.store.master_key_id().await.unwrap().as_deref(), Some(next.id()));
}

/// The overlap is forced, not hoped for: a row lock on PostgreSQL holds
/// the rotation after it has listed and rewrapped every key it found, just
/// before it records the new master key; only then are new keys made.
/// (SQLite has no row locks to hold it there by, and the race is in the
/// vault, not the store.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_during_a_master_rotation_are_not_left_behind() {
    use sqlx::{Connection, PgConnection};
    let f = Fixture::postgres().await;
    let vault = Arc::new(f.vault().await);
    let mut tenants = Vec::new();
    for i in 0..40 {
        tenants.push(f.tenant(&format!("tenant-{i:02}")).await);
    }
    for id in &tenants[..20] {
        vault.create_data_key(*id, now()).await.unwrap();
    }
    let db = f.db.as_ref().unwrap();
    let mut holder = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("SELECT * FROM vault_master_key FOR UPDATE").execute(&mut holder).await.unwrap();
    let rotation = tokio::spawn({
        let vault = Arc::clone(&vault);
        async move { vault.rotate_master(now()).await.unwrap() }
    });
    let mut watcher = PgConnection::connect(&db.url).await.unwrap();
    let blocked = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                   AND wait_event_type = 'Lock' AND query LIKE 'UPDATE vault_master_key%'";
    for _ in 0..500 {
        let (waiting,): (i64,) = sqlx::query_as(blocked).fetch_one(&mut watcher).await.unwrap();
        if waiting == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (waiting,): (i64,) = sqlx::query_as(blocked).fetch_one(&mut watcher).await.unwrap();
    assert_eq!(waiting, 1, "the rotation is held before it records the new master key");
    let by_kek = f.store.data_keys_by_kek().await.unwrap();
    assert_eq!(by_kek.len(), 1, "every key made before was rewrapped: {by_kek:?}");

    let makers: Vec<_> = tenants[20..]
        .iter()
        .map(|id| {
            let (vault, id) = (Arc::clone(&vault), *id);
            tokio::spawn(async move {
                vault.create_data_key(id, now()).await.unwrap();
                vault.put(id, &path("s"), b"during", 3, "t", now()).await.unwrap();
            })
        })
        .collect();
    for maker in makers {
        maker.await.unwrap();
    }
    assert!(!rotation.is_finished(), "the keys were made while the rotation was held");
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();
    let rotation = rotation.await.unwrap();
    let by_kek = f.store.data_keys_by_kek().await.unwrap();
    assert_eq!(by_kek, [(rotation.to.clone(), 40)], "every data key is under the new key");
    drop(vault);
    let restarted = f.vault().await;
    for id in &tenants[20..] {
        assert_eq!(&**restarted.get(*id, &path("s"), None).await.unwrap().value, b"during");
    }
}

async fn a_wrong_or_missing_master_key_refuses_and_changes_nothing(f: Fixture) {
    let vault = f.vault().await;
    let acme = f.tenant("acme").await;
    vault.create_data_key(acme, now()).await.unwrap();
    let recorded = vault.master_key_id().unwrap();
    drop(vault);

    let wrong_path = f.dir.path().join("wrong.key");
    master_key::write_key_file(&wrong_path, &LocalKey::generate(KeyRole::Master).unwrap()).unwrap();
    let wrong_before = std::fs::read(&wrong_path).unwrap();
    let source = MasterKeySource::File { path: wrong_path.clone(), create: false };
    let err = Vault::open(f.store.clone(), &source, now()).await.unwrap_err();
    assert!(matches!(err, VaultError::WrongMasterKey { .. }), "{err}");
    assert!(err.to_string().contains("Nothing was changed"), "{err}");
    assert!(err.to_string().contains(&recorded), "{err}");
    assert_eq!(std::fs::read(&wrong_path).unwrap(), wrong_before);
    assert_eq!(f.store.master_key_id().await.unwrap(), Some(recorded.clone()));

    let inline = MasterKeySource::Inline(LocalKey::generate(KeyRole::Master).unwrap().to_text());
    assert!(matches!(
        Vault::open(f.store.clone(), &inline, now()).await,
        Err(VaultError::WrongMasterKey { .. })
    ));

    // The default key file lost: never silently replaced by a new key.
    std::fs::rename(f.key_path(), f.dir.path().join("moved.key")).unwrap();
    let err = Vault::open(f.store.clone(), &f.source(), now()).await.unwrap_err();
    assert!(matches!(err, VaultError::MasterKeyMissing { .. }), "{err}");
    assert!(!f.key_path().exists());
    assert_eq!(f.store.master_key_id().await.unwrap(), Some(recorded));
}

async fn bring_your_own_key_locks_out_the_master_key(f: Fixture) {
    let vault = f.vault().await;
    let acme = f.tenant("acme").await;
    vault.create_data_key(acme, now()).await.unwrap();
    vault.put(acme, &path("s"), b"v1 value", 3, "t", now()).await.unwrap();
    vault.rotate_data_key(acme, now()).await.unwrap();
    vault.put(acme, &path("s"), b"v2 value", 3, "t", now()).await.unwrap();

    let tenant_key_text = LocalKey::generate(KeyRole::Tenant).unwrap().to_text();
    let tenant_key = || LocalKey::parse(KeyRole::Tenant, &tenant_key_text).unwrap();
    // A copy of the store from before: its wrapped keys must not open
    // anything written after the adoption.
    let old_keys = f.store.data_keys(acme).await.unwrap();
    let change = vault.set_tenant_key(acme, tenant_key(), now()).await.unwrap();
    assert_eq!(change, TenantKeyChange::Adopted { reencrypted: 2 });
    assert_eq!(&**vault.get(acme, &path("s"), Some(1)).await.unwrap().value, b"v1 value");
    let keys = f.store.data_keys(acme).await.unwrap();
    assert_eq!(keys.iter().map(|k| k.version).collect::<Vec<_>>(), [3], "a fresh key only");
    vault.put(acme, &path("later"), b"after adoption", 3, "t", now()).await.unwrap();
    let later = f.store.secret(acme, "later", None).await.unwrap().unwrap();
    let master = master_key::read_key_file(&f.key_path(), KeyRole::Master).unwrap();
    for old in &old_keys {
        let data_key = master
            .unwrap(&old.wrapped, &envelope::data_key_aad(acme.0, old.version))
            .await
            .unwrap();
        let aad = envelope::secret_aad(acme.0, later.key_version, "later");
        assert!(envelope::open(&data_key, &later.ciphertext, &aad).is_err());
    }
    // New data keys of the tenant are wrapped by its key too.
    assert_eq!(vault.rotate_data_key(acme, now()).await.unwrap(), 4);
    let status = vault.key_status(acme).await.unwrap();
    assert!(status.tenant_key && status.unsealed);
    assert!(status.versions.iter().all(|(_, kek, _)| kek == tenant_key().id()));

    // The operator's view: the store and the master key, not the tenant's
    // key. Nothing opens the tenant's data keys.
    drop(vault);
    let operator = f.vault().await;
    let err = operator.get(acme, &path("s"), None).await.unwrap_err();
    assert!(matches!(err, VaultError::Sealed { .. }), "{err}");
    for key in f.store.data_keys(acme).await.unwrap() {
        let aad = envelope::data_key_aad(acme.0, key.version);
        assert!(master.unwrap(&key.wrapped, &aad).await.is_err());
    }
    let wrong = LocalKey::generate(KeyRole::Tenant).unwrap();
    assert!(matches!(
        operator.set_tenant_key(acme, wrong, now()).await,
        Err(VaultError::WrongTenantKey { .. })
    ));
    // The tenant supplies its key again after the restart.
    assert_eq!(
        operator.set_tenant_key(acme, tenant_key(), now()).await.unwrap(),
        TenantKeyChange::Loaded
    );
    assert_eq!(&**operator.get(acme, &path("s"), None).await.unwrap().value, b"v2 value");
    assert!(operator.forget_tenant_key(acme).unwrap());
    assert!(matches!(operator.get(acme, &path("s"), None).await, Err(VaultError::Sealed { .. })));
}

async fn purging_keys_shreds_every_copy(f: Fixture) {
    let vault = f.vault().await;
    let (acme, globex) = (f.tenant("acme").await, f.tenant("globex").await);
    for id in [acme, globex] {
        vault.create_data_key(id, now()).await.unwrap();
    }
    vault.put(acme, &path("db/password"), b"acme's secret", 3, "t", now()).await.unwrap();
    // A copy taken before offboarding (a backup, a stolen dump).
    let copy = f.store.secret(acme, "db/password", None).await.unwrap().unwrap();
    let wrapped_copy = f.store.data_keys(acme).await.unwrap().remove(0);
    let master = master_key::read_key_file(&f.key_path(), KeyRole::Master).unwrap();
    let aad = envelope::secret_aad(acme.0, copy.key_version, &copy.path);
    // With the wrapped key, the master key opens the copy...
    let data_key = master
        .unwrap(&wrapped_copy.wrapped, &envelope::data_key_aad(acme.0, wrapped_copy.version))
        .await
        .unwrap();
    assert_eq!(&**envelope::open(&data_key, &copy.ciphertext, &aad).unwrap(), b"acme's secret");
    drop(data_key);
    drop(wrapped_copy);

    assert_eq!(vault.shred(acme).await.unwrap(), 1);
    assert!(f.store.data_keys(acme).await.unwrap().is_empty());
    assert!(matches!(
        vault.get(acme, &path("db/password"), None).await,
        Err(VaultError::NoDataKey)
    ));
    // ...and without it nothing does: not the master key, not any data key
    // left in the store.
    assert!(master.unwrap(&copy.ciphertext, &aad).await.is_err());
    for key in f.store.data_keys(globex).await.unwrap() {
        let other = master
            .unwrap(&key.wrapped, &envelope::data_key_aad(globex.0, key.version))
            .await
            .unwrap();
        assert!(envelope::open(&other, &copy.ciphertext, &aad).is_err());
    }
    assert!(f.store.data_keys_by_kek().await.unwrap().iter().all(|(_, n)| *n == 1));
}

async fn damaged_ciphertexts_and_keys_are_clear_errors(f: Fixture) {
    let vault = f.vault().await;
    let acme = f.tenant("acme").await;
    vault.create_data_key(acme, now()).await.unwrap();
    vault.put(acme, &path("s"), b"value", 3, "t", now()).await.unwrap();
    // A flipped bit in a stored ciphertext.
    vault.put(acme, &path("flipped"), b"value", 3, "t", now()).await.unwrap();
    let mut damaged = f.store.secret(acme, "flipped", None).await.unwrap().unwrap();
    let last = damaged.ciphertext.len() - 1;
    damaged.ciphertext[last] ^= 0x01;
    assert!(f.store.reencrypt_secret(&damaged, damaged.key_version).await.unwrap());
    let err = vault.get(acme, &path("flipped"), None).await.unwrap_err();
    assert!(err.to_string().contains("version 1 of secret flipped cannot be decrypted"), "{err}");
    let mut key = f.store.data_keys(acme).await.unwrap().remove(0);
    let kek = key.kek_id.clone();
    key.wrapped[10] ^= 1;
    assert!(f.store.rewrap_data_key(&key, &kek).await.unwrap());
    let err = vault.get(acme, &path("s"), None).await.unwrap_err();
    assert!(err.to_string().contains("wrapped key is damaged"), "{err}");
    key.wrapped.truncate(3);
    assert!(f.store.rewrap_data_key(&key, &kek).await.unwrap());
    assert!(matches!(vault.get(acme, &path("s"), None).await, Err(VaultError::Corrupt(_))));
}

async fn concurrent_writes_of_one_secret_get_distinct_versions(f: Fixture) {
    let vault = Arc::new(f.vault().await);
    let acme = f.tenant("acme").await;
    vault.create_data_key(acme, now()).await.unwrap();
    let writers: Vec<_> = (0..12)
        .map(|i| {
            let vault = Arc::clone(&vault);
            tokio::spawn(async move {
                let value = format!("value {i}");
                vault
                    .put(acme, &path("shared"), value.as_bytes(), 50, "t", now())
                    .await
                    .unwrap()
                    .version
            })
        })
        .collect();
    let mut versions = Vec::new();
    for writer in writers {
        versions.push(writer.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=12).collect::<Vec<_>>());
    for version in 1..=12 {
        vault.get(acme, &path("shared"), Some(version)).await.unwrap();
    }
}

async fn leases_and_lockouts_are_recorded(f: Fixture) {
    use bulkhead_store::{Lease, Lockout};
    let acme = f.tenant("acme").await;
    let at = now();
    let lease = |tenant: TenantId, minutes: i64, role: &str| {
        Lease::new(
            uuid::Uuid::new_v4(),
            tenant,
            "local".into(),
            "bh_acme_1".into(),
            role.into(),
            "read".into(),
            "operator:test".into(),
            at,
            at + time::Duration::minutes(minutes),
        )
    };
    let (expired, live) = (lease(acme, -1, "bh_l_a"), lease(acme, 60, "bh_l_b"));
    f.store.insert_lease(&expired).await.unwrap();
    f.store.insert_lease(&live).await.unwrap();
    assert_eq!(f.store.lease(live.id).await.unwrap().as_ref(), Some(&live));
    assert_eq!(f.store.expired_leases(at, 10, 10).await.unwrap(), std::slice::from_ref(&expired));
    assert_eq!(f.store.leases(acme, false).await.unwrap().len(), 2);
    assert!(f.store.mark_lease_revoked(expired.id, at).await.unwrap());
    assert!(!f.store.mark_lease_revoked(expired.id, at).await.unwrap(), "once only");
    assert!(f.store.expired_leases(at, 10, 10).await.unwrap().is_empty());
    assert_eq!(f.store.leases(acme, false).await.unwrap(), std::slice::from_ref(&live));
    assert_eq!(f.store.leases(acme, true).await.unwrap().len(), 2);
    assert_eq!(f.store.lease(expired.id).await.unwrap().unwrap().revoked_at, Some(at));

    // The runtime's leases, found by who issued them and renewed in place;
    // `_` in the prefix is a character, not a wildcard.
    let mut held = lease(acme, 5, "bh_l_held");
    held.issued_by = "runtime:t1-web-0.ab".into();
    f.store.insert_lease(&held).await.unwrap();
    let found = f.store.leases_issued_by("runtime:").await.unwrap();
    assert_eq!(found.iter().map(|l| l.id).collect::<Vec<_>>(), [held.id]);
    assert!(f.store.leases_issued_by("runtime_").await.unwrap().is_empty());
    let later = at + time::Duration::minutes(90);
    assert!(f.store.extend_lease(held.id, later).await.unwrap());
    assert_eq!(f.store.lease(held.id).await.unwrap().unwrap().expires_at, later);
    assert!(!f.store.extend_lease(expired.id, later).await.unwrap(), "a revoked lease stays so");
    assert!(f.store.mark_lease_revoked(held.id, at).await.unwrap());
    assert!(f.store.leases_issued_by("runtime:").await.unwrap().is_empty());

    // One tenant's many expired leases never fill the sweeper's batch: at
    // most `per_tenant` of each, and one that failed waits its backoff.
    let stuck = f.tenant("stuck").await;
    let victim = f.tenant("victim").await;
    let mut stuck_leases = Vec::new();
    for i in 0..5 {
        let lease = lease(stuck, -10 - i, &format!("bh_l_s{i}"));
        f.store.insert_lease(&lease).await.unwrap();
        stuck_leases.push(lease);
    }
    let victims = lease(victim, -1, "bh_l_v");
    f.store.insert_lease(&victims).await.unwrap();
    let due = f.store.expired_leases(at, 3, 2).await.unwrap();
    let tenants: Vec<_> = due.iter().map(|l| l.tenant_id).collect();
    assert_eq!(tenants, [stuck, stuck, victim], "{due:?}");
    for lease in &stuck_leases {
        f.store
            .record_lease_failure(lease.id, 1, at + time::Duration::minutes(1), "held")
            .await
            .unwrap();
    }
    let due = f.store.expired_leases(at, 100, 100).await.unwrap();
    assert_eq!(due.iter().map(|l| l.id).collect::<Vec<_>>(), [victims.id], "backing off");
    let later = at + time::Duration::minutes(2);
    assert_eq!(f.store.expired_leases(later, 100, 100).await.unwrap().len(), 6);
    assert_eq!(f.store.stuck_leases().await.unwrap(), 5);
    let failed = f.store.lease(stuck_leases[0].id).await.unwrap().unwrap();
    assert_eq!((failed.attempts, failed.last_error.as_deref()), (1, Some("held")));
    // A live lease whose revocation failed is retried before its expiry.
    f.store.record_lease_failure(live.id, 1, at, "held").await.unwrap();
    assert!(f.store.expired_leases(at, 100, 100).await.unwrap().iter().any(|l| l.id == live.id));

    // Suspension: leases of suspended tenants to disable, and back.
    let set_state = async |state: bulkhead_model::TenantState| {
        let mut tenant = f.store.tenant_by_id(acme).await.unwrap().unwrap();
        tenant.transition(state).unwrap();
        f.store.update_tenant(&tenant).await.unwrap();
    };
    assert!(f.store.mark_lease_revoked(live.id, at).await.unwrap());
    let resumable = lease(acme, 60, "bh_l_r");
    f.store.insert_lease(&resumable).await.unwrap();
    set_state(bulkhead_model::TenantState::Active).await;
    assert!(f.store.leases_to_disable(10).await.unwrap().is_empty(), "acme is active");
    set_state(bulkhead_model::TenantState::Suspended).await;
    let disable = f.store.leases_to_disable(10).await.unwrap();
    assert_eq!(disable.iter().map(|l| l.id).collect::<Vec<_>>(), [resumable.id]);
    f.store.set_lease_disabled(resumable.id, Some(at)).await.unwrap();
    assert!(f.store.leases_to_disable(10).await.unwrap().is_empty());
    assert!(f.store.leases_to_enable(at, 10).await.unwrap().is_empty(), "still suspended");
    set_state(bulkhead_model::TenantState::Active).await;
    let enable = f.store.leases_to_enable(at, 10).await.unwrap();
    assert_eq!(enable.iter().map(|l| l.id).collect::<Vec<_>>(), [resumable.id]);
    assert!(
        f.store.leases_to_enable(later + time::Duration::hours(1), 10).await.unwrap().is_empty()
    );
    // One whose revocation is under way is never let in again.
    f.store.record_lease_failure(resumable.id, 1, later, "held").await.unwrap();
    assert!(f.store.leases_to_enable(at, 10).await.unwrap().is_empty());

    let lockout = Lockout { principal: "operator:x".into(), reason: "many".into(), locked_at: at };
    f.store.insert_lockout(&lockout).await.unwrap();
    let again = Lockout { reason: "other".into(), ..lockout.clone() };
    f.store.insert_lockout(&again).await.unwrap();
    assert_eq!(f.store.lockouts().await.unwrap(), [lockout], "the first reason stays");
    assert!(f.store.is_locked_out("operator:x").await.unwrap());
    assert!(!f.store.is_locked_out("operator:y").await.unwrap());
    assert!(f.store.delete_lockout("operator:x").await.unwrap());
    assert!(!f.store.delete_lockout("operator:x").await.unwrap());
    assert!(!f.store.is_locked_out("operator:x").await.unwrap());
}

async fn sealed_blobs_follow_rotation_adoption_and_shredding(f: Fixture) {
    let vault = f.vault().await;
    let acme = f.tenant("acme").await;
    vault.create_data_key(acme, now()).await.unwrap();
    let label = "identity/realm-key/k1";
    vault.seal_blob(acme, label, b"private key bytes", now()).await.unwrap();
    assert!(matches!(
        vault.seal_blob(acme, label, b"again", now()).await,
        Err(VaultError::Store(bulkhead_store::StoreError::Duplicate(_)))
    ));
    assert_eq!(&**vault.open_blob(acme, label).await.unwrap().unwrap(), b"private key bytes");
    assert!(vault.open_blob(acme, "identity/none").await.unwrap().is_none());
    let stored = f.store.blob(acme, label).await.unwrap().unwrap();
    assert!(!stored.ciphertext.windows(7).any(|w| w == b"private"));

    vault.rotate_data_key(acme, now()).await.unwrap();
    vault.rewrap(acme).await.unwrap();
    assert_eq!(f.store.blob(acme, label).await.unwrap().unwrap().key_version, 2);
    assert_eq!(&**vault.open_blob(acme, label).await.unwrap().unwrap(), b"private key bytes");

    let tenant_key = LocalKey::generate(KeyRole::Tenant).unwrap();
    vault.set_tenant_key(acme, tenant_key, now()).await.unwrap();
    assert_eq!(f.store.blob(acme, label).await.unwrap().unwrap().key_version, 3);
    assert_eq!(&**vault.open_blob(acme, label).await.unwrap().unwrap(), b"private key bytes");

    vault.shred(acme).await.unwrap();
    assert!(matches!(vault.open_blob(acme, label).await, Err(VaultError::NoDataKey)));
    assert!(vault.delete_blob(acme, label).await.unwrap());
}

async fn a_departed_tenants_snapshot_key_outlives_its_data_keys_and_rotations(f: Fixture) {
    let vault = f.vault().await;
    let acme = f.tenant("acme").await;
    vault.create_data_key(acme, now()).await.unwrap();
    let departed = bulkhead_store::Departed {
        tenant_id: acme,
        name: "acme".into(),
        record: "{}".into(),
        backup_id: Some("b".into()),
        recipient: Some("age1x".into()),
        kek_id: None,
        wrapped_key: None,
        sealed_identity: None,
        manifest: None,
        departed_at: now(),
        expires_at: now(),
    };
    assert!(vault.record_departure(departed.clone(), Some(b"AGE-SECRET-KEY-1X")).await.unwrap());
    // Recorded once: a retried offboarding keeps the first key.
    assert!(!vault.record_departure(departed, Some(b"another")).await.unwrap());
    vault.shred(acme).await.unwrap();
    f.store.delete_tenant(acme).await.unwrap();
    let stored = f.store.departed(acme).await.unwrap().unwrap();
    assert_eq!(&**vault.open_departure(&stored).await.unwrap().unwrap(), b"AGE-SECRET-KEY-1X");

    let rotation = vault.rotate_master(now()).await.unwrap();
    assert_eq!(rotation.rewrapped, 1);
    drop(vault);
    let restarted = f.vault().await;
    let stored = f.store.departed(acme).await.unwrap().unwrap();
    assert_eq!(stored.kek_id.as_deref(), Some(rotation.to.as_str()));
    assert_eq!(&**restarted.open_departure(&stored).await.unwrap().unwrap(), b"AGE-SECRET-KEY-1X");
    // Moved to another tenant's row, the sealed identity does not open.
    let mut moved = stored.clone();
    moved.tenant_id = TenantId::random();
    assert!(restarted.open_departure(&moved).await.is_err());
}
