//! The vault service: data keys per tenant, secrets under them, and the
//! rotations of both key layers.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use bulkhead_model::TenantId;
use bulkhead_store::{
    Departed, SealedBlob, SecretSummary, SecretVersion, StoreError, VaultStore, WrappedDataKey,
};
use time::OffsetDateTime;
use tokio::sync::{Mutex, RwLock as AsyncRwLock};
use zeroize::Zeroizing;

use crate::{
    VaultError, envelope,
    kek::{KeyBytes, KeyEncryptionKey, KeyRole, LocalKey, random_key},
    master_key::{self, MasterKeySource},
    path::{SecretPath, check_value},
};

/// Rows handled per store round trip by rotations.
const BATCH: u32 = 100;
/// Attempts at a secret write that races other writes of the same path
/// (each loser retries with the next version, after a short random pause).
const WRITE_RACE_RETRIES: u32 = 32;

struct Keyring {
    /// The master key the store records.
    master: Arc<dyn KeyEncryptionKey>,
    /// The key a master rotation in progress moves data keys to; new data
    /// keys are wrapped with it as soon as it exists.
    next: Option<Arc<dyn KeyEncryptionKey>>,
    /// Tenants' own keys, held in memory only (bring-your-own-key).
    tenants: HashMap<TenantId, Arc<dyn KeyEncryptionKey>>,
}

impl Keyring {
    fn wrapping_master(&self) -> Arc<dyn KeyEncryptionKey> {
        Arc::clone(self.next.as_ref().unwrap_or(&self.master))
    }

    fn by_id(&self, tenant: TenantId, kek_id: &str) -> Option<Arc<dyn KeyEncryptionKey>> {
        if self.master.id() == kek_id {
            return Some(Arc::clone(&self.master));
        }
        if let Some(next) = self.next.as_ref().filter(|k| k.id() == kek_id) {
            return Some(Arc::clone(next));
        }
        self.tenants.get(&tenant).filter(|k| k.id() == kek_id).cloned()
    }
}

/// The keys a master rotation moves: tenants' data keys, and departed
/// tenants' snapshot keys.
#[derive(Debug, Clone, Copy)]
enum Wrapped {
    DataKeys,
    Departures,
}

/// A secret value, decrypted for one call.
pub struct StoredSecret {
    pub version: i64,
    pub created_at: OffsetDateTime,
    pub value: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredSecret").field("version", &self.version).finish_non_exhaustive()
    }
}

/// A tenant's key state, safe to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    pub versions: Vec<(i64, String, OffsetDateTime)>,
    /// Whether the tenant's data keys are wrapped by its own key.
    pub tenant_key: bool,
    /// Whether that key is loaded; always true for master-wrapped tenants.
    pub unsealed: bool,
}

/// What supplying a tenant's own key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantKeyChange {
    /// The tenant now has a data key wrapped by its own key, its secrets
    /// were re-encrypted under it, and the master-wrapped keys are gone.
    Adopted { reencrypted: usize },
    /// The key was already the tenant's; it is now loaded.
    Loaded,
}

/// What a master-key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterRotation {
    pub from: String,
    pub to: String,
    pub rewrapped: usize,
}

pub struct Vault {
    store: Arc<dyn VaultStore>,
    keys: RwLock<Keyring>,
    /// Where the master key lives, if Bulkhead may rotate it.
    master_file: Option<PathBuf>,
    /// Held for a whole master rotation or tenant-key adoption, so the two
    /// never interleave.
    rotation: Mutex<()>,
    /// Shared by every data key insert (from choosing its wrapping key to
    /// the row being stored); exclusive while the wrapping key changes, so
    /// no insert can still be using a key a rotation has moved away from.
    key_change: AsyncRwLock<()>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("master_file", &self.master_file).finish_non_exhaustive()
    }
}

fn poisoned() -> VaultError {
    VaultError::Corrupt("the vault's key table is poisoned by an earlier panic".into())
}

impl Vault {
    /// Loads the master key and checks it against the store before
    /// anything is written: a wrong or missing key refuses to start, and
    /// changes nothing. A master rotation interrupted by a crash is
    /// finished by [`Vault::rotate_master`] or [`Vault::resume`].
    pub async fn open(
        store: Arc<dyn VaultStore>,
        source: &MasterKeySource,
        now: OffsetDateTime,
    ) -> Result<Self, VaultError> {
        let recorded = store.master_key_id().await?;
        let by_kek = store.data_keys_by_kek().await?;
        let master_wrapped: Vec<&String> =
            by_kek.iter().map(|(id, _)| id).filter(|id| id.starts_with("master:")).collect();
        let (master, next, master_file): (LocalKey, Option<LocalKey>, Option<PathBuf>) =
            match source {
                MasterKeySource::Inline(text) => {
                    (LocalKey::parse(KeyRole::Master, text)?, None, None)
                }
                MasterKeySource::File { path, create } => {
                    let key = if path.exists() {
                        master_key::read_key_file(path, KeyRole::Master)?
                    } else if let Some(recorded) = &recorded {
                        return Err(VaultError::MasterKeyMissing {
                            path: path.display().to_string(),
                            recorded: recorded.clone(),
                        });
                    } else if let Some(stray) = master_wrapped.first() {
                        // Data keys exist but no record of their key: never
                        // wrap more with a fresh one.
                        return Err(VaultError::MasterKeyMissing {
                            path: path.display().to_string(),
                            recorded: (*stray).clone(),
                        });
                    } else if !*create {
                        return Err(VaultError::MasterKeyFile {
                            path: path.display().to_string(),
                            reason: "no such file; create one with `openssl rand -base64 32 > \
                                     FILE && chmod 600 FILE`"
                                .into(),
                        });
                    } else {
                        let key = LocalKey::generate(KeyRole::Master)?;
                        master_key::write_key_file(path, &key)?;
                        tracing::info!(path = %path.display(), kek_id = key.id(), "generated a new master key");
                        key
                    };
                    let next_path = master_key::next_path(path);
                    let next = if next_path.exists() {
                        Some(master_key::read_key_file(&next_path, KeyRole::Master)?)
                    } else {
                        None
                    };
                    (key, next, Some(path.clone()))
                }
            };
        let loaded = [Some(master.id()), next.as_ref().map(|k| k.id())];
        match &recorded {
            Some(recorded) if !loaded.contains(&Some(recorded.as_str())) => {
                return Err(VaultError::WrongMasterKey {
                    loaded: master.id().to_owned(),
                    recorded: recorded.clone(),
                });
            }
            _ => {}
        }
        if let Some(stray) = master_wrapped.iter().find(|id| !loaded.contains(&Some(id.as_str()))) {
            return Err(VaultError::WrongMasterKey {
                loaded: master.id().to_owned(),
                recorded: (*stray).clone(),
            });
        }
        // The store already moved to the next key: only the file rename of
        // the rotation is left.
        let (master, next) = match (recorded.as_deref(), next) {
            (Some(recorded), Some(next)) if recorded == next.id() => {
                if let Some(path) = &master_file {
                    master_key::replace_key_file(&master_key::next_path(path), path)?;
                }
                (next, None)
            }
            (_, next) => (master, next),
        };
        if recorded.is_none() {
            store.set_master_key_id(None, master.id(), now).await?;
        }
        Ok(Self {
            store,
            keys: RwLock::new(Keyring {
                master: Arc::new(master),
                next: next.map(|k| Arc::new(k) as Arc<dyn KeyEncryptionKey>),
                tenants: HashMap::new(),
            }),
            master_file,
            rotation: Mutex::new(()),
            key_change: AsyncRwLock::new(()),
        })
    }

    /// The id of the master key data keys are wrapped with.
    pub fn master_key_id(&self) -> Result<String, VaultError> {
        Ok(self.keys.read().map_err(|_| poisoned())?.master.id().to_owned())
    }

    /// Whether a master rotation was interrupted and is waiting to finish.
    pub fn rotation_pending(&self) -> Result<bool, VaultError> {
        Ok(self.keys.read().map_err(|_| poisoned())?.next.is_some())
    }

    /// Finishes an interrupted master rotation, if there is one.
    pub async fn resume(&self, now: OffsetDateTime) -> Result<Option<MasterRotation>, VaultError> {
        if self.rotation_pending()? { self.rotate_master(now).await.map(Some) } else { Ok(None) }
    }

    // ---- data keys -------------------------------------------------------

    /// Gives the tenant its first data key, unless it has one.
    pub async fn create_data_key(
        &self,
        tenant: TenantId,
        now: OffsetDateTime,
    ) -> Result<i64, VaultError> {
        let _inserting = self.key_change.read().await;
        if let Some(latest) = self.store.data_keys(tenant).await?.last() {
            return Ok(latest.version);
        }
        let kek = self.keys.read().map_err(|_| poisoned())?.wrapping_master();
        match self.insert_new_data_key(tenant, 1, kek.as_ref(), now).await {
            // A concurrent or earlier run made it.
            Err(VaultError::Store(StoreError::Duplicate(_))) => Ok(1),
            other => other,
        }
    }

    /// Makes a new data key version for new writes. Old versions stay to
    /// decrypt what they encrypted until [`Vault::rewrap`] moves it.
    pub async fn rotate_data_key(
        &self,
        tenant: TenantId,
        now: OffsetDateTime,
    ) -> Result<i64, VaultError> {
        let _inserting = self.key_change.read().await;
        let keys = self.store.data_keys(tenant).await?;
        let latest = keys.last().ok_or(VaultError::NoDataKey)?;
        // The new version is wrapped the way the tenant chose: by its own
        // key if it brought one.
        let kek = {
            let ring = self.keys.read().map_err(|_| poisoned())?;
            if latest.kek_id.starts_with("tenant:") {
                ring.by_id(tenant, &latest.kek_id)
                    .ok_or_else(|| VaultError::Sealed { kek_id: latest.kek_id.clone() })?
            } else {
                ring.wrapping_master()
            }
        };
        let version = latest.version + 1;
        self.insert_new_data_key(tenant, version, kek.as_ref(), now).await
    }

    async fn insert_new_data_key(
        &self,
        tenant: TenantId,
        version: i64,
        kek: &dyn KeyEncryptionKey,
        now: OffsetDateTime,
    ) -> Result<i64, VaultError> {
        let data_key = random_key()?;
        let wrapped = kek.wrap(&data_key, &envelope::data_key_aad(tenant.0, version)).await?;
        self.store
            .insert_data_key(&WrappedDataKey {
                tenant_id: tenant,
                version,
                kek_id: kek.id().to_owned(),
                wrapped,
                created_at: now,
            })
            .await?;
        Ok(version)
    }

    /// Destroys every data key of the tenant: whatever was encrypted under
    /// them, wherever copies of it are, can no longer be decrypted.
    pub async fn shred(&self, tenant: TenantId) -> Result<u64, VaultError> {
        let destroyed = self.store.delete_data_keys(tenant).await?;
        if let Ok(mut ring) = self.keys.write() {
            ring.tenants.remove(&tenant);
        }
        Ok(destroyed)
    }

    pub async fn key_status(&self, tenant: TenantId) -> Result<KeyStatus, VaultError> {
        let keys = self.store.data_keys(tenant).await?;
        let ring = self.keys.read().map_err(|_| poisoned())?;
        let tenant_key = keys.iter().any(|k| k.kek_id.starts_with("tenant:"));
        let unsealed = keys.iter().all(|k| ring.by_id(tenant, &k.kek_id).is_some());
        Ok(KeyStatus {
            versions: keys.into_iter().map(|k| (k.version, k.kek_id, k.created_at)).collect(),
            tenant_key,
            unsealed,
        })
    }

    async fn unwrap(&self, key: &WrappedDataKey) -> Result<KeyBytes, VaultError> {
        let kek = {
            let ring = self.keys.read().map_err(|_| poisoned())?;
            match ring.by_id(key.tenant_id, &key.kek_id) {
                Some(kek) => kek,
                None if key.kek_id.starts_with("tenant:") => {
                    return Err(VaultError::Sealed { kek_id: key.kek_id.clone() });
                }
                None => return Err(VaultError::UnknownKek { kek_id: key.kek_id.clone() }),
            }
        };
        kek.unwrap(&key.wrapped, &envelope::data_key_aad(key.tenant_id.0, key.version))
            .await
            .map_err(|_| {
                VaultError::Corrupt(format!(
                    "data key version {} cannot be unwrapped: the wrapped key is damaged",
                    key.version
                ))
            })
    }

    /// The data key `version` of the tenant, or its latest.
    async fn data_key(
        &self,
        tenant: TenantId,
        version: Option<i64>,
    ) -> Result<(i64, KeyBytes), VaultError> {
        let keys = self.store.data_keys(tenant).await?;
        let key = match version {
            Some(v) => keys.iter().find(|k| k.version == v),
            None => keys.last(),
        }
        .ok_or(VaultError::NoDataKey)?;
        Ok((key.version, self.unwrap(key).await?))
    }

    /// Every data key of the tenant, unwrapped, oldest first: for a backup
    /// only, whose archive wraps them to the tenant's backup key so that the
    /// sealed secrets in it open on any installation that is given that key.
    pub async fn export_data_keys(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<(i64, KeyBytes)>, VaultError> {
        let mut keys = Vec::new();
        for key in self.store.data_keys(tenant).await? {
            keys.push((key.version, self.unwrap(&key).await?));
        }
        Ok(keys)
    }

    // ---- secrets ---------------------------------------------------------

    /// Stores a new version of a secret, keeping the `keep` newest.
    pub async fn put(
        &self,
        tenant: TenantId,
        path: &SecretPath,
        value: &[u8],
        keep: u32,
        created_by: &str,
        now: OffsetDateTime,
    ) -> Result<SecretVersion, VaultError> {
        check_value(value)?;
        let (key_version, key) = self.data_key(tenant, None).await?;
        let aad = envelope::secret_aad(tenant.0, key_version, path.as_str());
        let mut secret = SecretVersion {
            tenant_id: tenant,
            path: path.to_string(),
            version: 0,
            key_version,
            ciphertext: envelope::seal(&key, value, &aad)?,
            size: value.len() as i64,
            created_at: now,
            created_by: created_by.to_owned(),
        };
        let mut tries = 0;
        secret.version = loop {
            match self.store.insert_secret(&secret).await {
                Ok(version) => break version,
                Err(StoreError::Duplicate(_)) if tries < WRITE_RACE_RETRIES => {
                    tries += 1;
                    let mut jitter = [0u8; 1];
                    let _ = getrandom::fill(&mut jitter);
                    let pause = u64::from(jitter[0] % 4 + 1) * u64::from(tries.min(8));
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.store.prune_secret(tenant, path.as_str(), keep.max(1)).await?;
        secret.ciphertext.clear();
        Ok(secret)
    }

    /// Decrypts one version of a secret, its latest by default.
    pub async fn get(
        &self,
        tenant: TenantId,
        path: &SecretPath,
        version: Option<i64>,
    ) -> Result<StoredSecret, VaultError> {
        let secret = self.store.secret(tenant, path.as_str(), version).await?.ok_or_else(|| {
            VaultError::SecretNotFound(match version {
                Some(v) => format!("secret {path} has no version {v}"),
                None => format!("there is no secret {path}"),
            })
        })?;
        let (_, key) = self.data_key(tenant, Some(secret.key_version)).await?;
        let aad = envelope::secret_aad(tenant.0, secret.key_version, path.as_str());
        let value = envelope::open(&key, &secret.ciphertext, &aad).map_err(|_| {
            VaultError::Corrupt(format!(
                "version {} of secret {path} cannot be decrypted: its ciphertext is damaged or \
                 was moved from elsewhere",
                secret.version
            ))
        })?;
        Ok(StoredSecret { version: secret.version, created_at: secret.created_at, value })
    }

    pub async fn list(&self, tenant: TenantId) -> Result<Vec<SecretSummary>, VaultError> {
        Ok(self.store.list_secrets(tenant).await?)
    }

    /// Deletes every version of a secret.
    pub async fn delete(&self, tenant: TenantId, path: &SecretPath) -> Result<u64, VaultError> {
        match self.store.delete_secret(tenant, path.as_str()).await? {
            0 => Err(VaultError::SecretNotFound(format!("there is no secret {path}"))),
            n => Ok(n),
        }
    }

    // ---- sealed blobs -------------------------------------------------------

    /// Seals a key of another capability (a realm's signing key, an audit
    /// key) under the tenant's latest data key, as `label`. Labels are
    /// written once: [`StoreError::Duplicate`] if it exists.
    pub async fn seal_blob(
        &self,
        tenant: TenantId,
        label: &str,
        plaintext: &[u8],
        now: OffsetDateTime,
    ) -> Result<(), VaultError> {
        let (key_version, key) = self.data_key(tenant, None).await?;
        let aad = envelope::blob_aad(tenant.0, key_version, label);
        let blob = SealedBlob {
            tenant_id: tenant,
            label: label.to_owned(),
            key_version,
            ciphertext: envelope::seal(&key, plaintext, &aad)?,
            created_at: now,
        };
        Ok(self.store.insert_blob(&blob).await?)
    }

    /// Opens the blob `label`, or `None` if there is none.
    pub async fn open_blob(
        &self,
        tenant: TenantId,
        label: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
        let Some(blob) = self.store.blob(tenant, label).await? else {
            return Ok(None);
        };
        let (_, key) = self.data_key(tenant, Some(blob.key_version)).await?;
        let aad = envelope::blob_aad(tenant.0, blob.key_version, label);
        envelope::open(&key, &blob.ciphertext, &aad).map(Some).map_err(|_| {
            VaultError::Corrupt(format!(
                "sealed key {label} is damaged or was moved from elsewhere"
            ))
        })
    }

    pub async fn delete_blob(&self, tenant: TenantId, label: &str) -> Result<bool, VaultError> {
        Ok(self.store.delete_blob(tenant, label).await?)
    }

    /// Re-encrypts every secret version and sealed blob under the tenant's
    /// latest data key; returns how many secret versions it moved.
    pub async fn rewrap(&self, tenant: TenantId) -> Result<usize, VaultError> {
        let (latest, new_key) = self.data_key(tenant, None).await?;
        loop {
            let batch = self.store.blobs_below_key_version(tenant, latest, BATCH).await?;
            if batch.is_empty() {
                break;
            }
            for mut blob in batch {
                let old_version = blob.key_version;
                let (_, old_key) = self.data_key(tenant, Some(old_version)).await?;
                let old_aad = envelope::blob_aad(tenant.0, old_version, &blob.label);
                let plain = envelope::open(&old_key, &blob.ciphertext, &old_aad).map_err(|_| {
                    VaultError::Corrupt(format!("sealed key {} is damaged", blob.label))
                })?;
                let new_aad = envelope::blob_aad(tenant.0, latest, &blob.label);
                blob.ciphertext = envelope::seal(&new_key, &plain, &new_aad)?;
                blob.key_version = latest;
                self.store.reseal_blob(&blob, old_version).await?;
            }
        }
        let mut moved = 0;
        loop {
            let batch = self.store.secrets_below_key_version(tenant, latest, BATCH).await?;
            if batch.is_empty() {
                return Ok(moved);
            }
            for mut secret in batch {
                let old_version = secret.key_version;
                let (_, old_key) = self.data_key(tenant, Some(old_version)).await?;
                let old_aad = envelope::secret_aad(tenant.0, old_version, &secret.path);
                let plain =
                    envelope::open(&old_key, &secret.ciphertext, &old_aad).map_err(|_| {
                        VaultError::Corrupt(format!(
                            "version {} of secret {} cannot be decrypted; it was left as it is",
                            secret.version, secret.path
                        ))
                    })?;
                let new_aad = envelope::secret_aad(tenant.0, latest, &secret.path);
                secret.ciphertext = envelope::seal(&new_key, &plain, &new_aad)?;
                secret.key_version = latest;
                // Lost to a concurrent delete or rewrap: nothing to do.
                if self.store.reencrypt_secret(&secret, old_version).await? {
                    moved += 1;
                }
            }
        }
    }

    // ---- master key ------------------------------------------------------

    /// Moves every master-wrapped data key to a new master key, without
    /// touching a single secret ciphertext. Safe to interrupt: the new key
    /// is written to `master.key.next` first, both keys are loaded on the
    /// next start, and the rotation resumes where it stopped.
    pub async fn rotate_master(&self, now: OffsetDateTime) -> Result<MasterRotation, VaultError> {
        let Some(path) = self.master_file.clone() else {
            return Err(VaultError::RotationUnavailable(
                "the master key was given in BULKHEAD_MASTER_KEY, where Bulkhead cannot write a \
                 new one; start with --master-key-file to rotate it"
                    .into(),
            ));
        };
        let _rotation = self.rotation.lock().await;
        let (old, next) = {
            // From here on every new data key is wrapped by the next key;
            // inserts still holding the old one finish first.
            let _no_inserts = self.key_change.write().await;
            let pending = self.keys.read().map_err(|_| poisoned())?.next.is_some();
            if !pending {
                let key = LocalKey::generate(KeyRole::Master)?;
                master_key::write_key_file(&master_key::next_path(&path), &key)?;
                self.keys.write().map_err(|_| poisoned())?.next = Some(Arc::new(key));
            }
            let ring = self.keys.read().map_err(|_| poisoned())?;
            (Arc::clone(&ring.master), ring.wrapping_master())
        };
        // Departed tenants' snapshot keys too: they outlive the data keys.
        let rewrapped = self.rewrap_all(Wrapped::DataKeys, old.as_ref(), next.as_ref()).await?
            + self.rewrap_all(Wrapped::Departures, old.as_ref(), next.as_ref()).await?;
        // Only the store's record says which key is current; the file
        // follows it, and a start between the two finds both.
        if !self.store.set_master_key_id(Some(old.id()), next.id(), now).await? {
            return Err(VaultError::Corrupt(format!(
                "the store no longer records master key {} as current; another server rotated \
                 it? Both key files are kept; restart to sort it out",
                old.id()
            )));
        }
        master_key::replace_key_file(&master_key::next_path(&path), &path)?;
        {
            let mut ring = self.keys.write().map_err(|_| poisoned())?;
            ring.master = Arc::clone(&next);
            ring.next = None;
        }
        Ok(MasterRotation { from: old.id().to_owned(), to: next.id().to_owned(), rewrapped })
    }

    /// Moves every key of `kind` wrapped by `old` to `next`; returns how
    /// many it moved.
    async fn rewrap_all(
        &self,
        kind: Wrapped,
        old: &dyn KeyEncryptionKey,
        next: &dyn KeyEncryptionKey,
    ) -> Result<usize, VaultError> {
        let mut rewrapped = 0;
        loop {
            let batch = match kind {
                Wrapped::DataKeys => self.store.data_keys_wrapped_by(old.id(), BATCH).await?,
                Wrapped::Departures => {
                    self.store.departure_keys_wrapped_by(old.id(), BATCH).await?
                }
            };
            if batch.is_empty() {
                return Ok(rewrapped);
            }
            for mut key in batch {
                let plain = self.unwrap(&key).await?;
                let aad = envelope::data_key_aad(key.tenant_id.0, key.version);
                key.wrapped = next.wrap(&plain, &aad).await?;
                key.kek_id = next.id().to_owned();
                let moved = match kind {
                    Wrapped::DataKeys => self.store.rewrap_data_key(&key, old.id()).await?,
                    Wrapped::Departures => self.store.rewrap_departure_key(&key, old.id()).await?,
                };
                rewrapped += usize::from(moved);
            }
        }
    }

    // ---- departed tenants ------------------------------------------------

    /// Records a tenant's departure. `identity` (what opens its final
    /// snapshot) is sealed under a fresh key wrapped by the master key, as
    /// a data key is (version 0, which no data key has): it outlives the
    /// tenant's data keys and moves with master rotations. Returns whether
    /// this departure was recorded (one recorded earlier is kept).
    pub async fn record_departure(
        &self,
        mut departed: Departed,
        identity: Option<&[u8]>,
    ) -> Result<bool, VaultError> {
        // Held until the row is stored, so a master rotation either sees
        // it or wraps it with the new key.
        let _inserting = self.key_change.read().await;
        if let Some(identity) = identity {
            let tenant = departed.tenant_id;
            let key = random_key()?;
            let kek = self.keys.read().map_err(|_| poisoned())?.wrapping_master();
            departed.wrapped_key =
                Some(kek.wrap(&key, &envelope::data_key_aad(tenant.0, 0)).await?);
            departed.kek_id = Some(kek.id().to_owned());
            departed.sealed_identity =
                Some(envelope::seal(&key, identity, &envelope::departure_aad(tenant.0))?);
        }
        Ok(self.store.insert_departed(&departed).await?)
    }

    /// What [`Vault::record_departure`] sealed for the tenant; `None` when
    /// it sealed nothing (the tenant holds its own key).
    pub async fn open_departure(
        &self,
        departed: &Departed,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, VaultError> {
        let (Some(key), Some(sealed)) = (departed.wrapped(), &departed.sealed_identity) else {
            return Ok(None);
        };
        let key = self.unwrap(&key).await?;
        let aad = envelope::departure_aad(departed.tenant_id.0);
        envelope::open(&key, sealed, &aad).map(Some).map_err(|_| {
            VaultError::Corrupt("the departed tenant's snapshot key is damaged".into())
        })
    }

    // ---- bring your own key ----------------------------------------------

    /// Supplies a tenant's own key. The first time, the tenant gets a
    /// fresh data key wrapped by it, every secret is re-encrypted under
    /// that key, and the master-wrapped versions are destroyed: after that,
    /// neither the master key nor an older copy of the store opens what the
    /// tenant writes. Afterwards (for instance after a restart) it loads the
    /// key again. The key is held in memory only.
    pub async fn set_tenant_key(
        &self,
        tenant: TenantId,
        key: LocalKey,
        now: OffsetDateTime,
    ) -> Result<TenantKeyChange, VaultError> {
        let _rotation = self.rotation.lock().await;
        let _no_inserts = self.key_change.write().await;
        let keys = self.store.data_keys(tenant).await?;
        let Some(latest) = keys.last() else {
            return Err(VaultError::NoDataKey);
        };
        if let Some(other) =
            keys.iter().find(|k| k.kek_id.starts_with("tenant:") && k.kek_id != key.id())
        {
            return Err(VaultError::WrongTenantKey {
                given: key.id().to_owned(),
                expected: other.kek_id.clone(),
            });
        }
        let adopted = keys.iter().all(|k| k.kek_id == key.id());
        let next_version = latest.version + 1;
        let key: Arc<dyn KeyEncryptionKey> = Arc::new(key);
        self.keys.write().map_err(|_| poisoned())?.tenants.insert(tenant, Arc::clone(&key));
        if adopted {
            return Ok(TenantKeyChange::Loaded);
        }
        // Also the path that finishes an adoption a crash interrupted.
        self.insert_new_data_key(tenant, next_version, key.as_ref(), now).await?;
        let reencrypted = self.rewrap(tenant).await?;
        self.store.delete_data_keys_below(tenant, next_version).await?;
        let left = self.store.data_keys(tenant).await?;
        if left.iter().any(|k| k.kek_id != key.id()) {
            return Err(VaultError::Corrupt(
                "the tenant's data keys changed during adoption; supply the key again".into(),
            ));
        }
        Ok(TenantKeyChange::Adopted { reencrypted })
    }

    /// Forgets a tenant's own key: its secrets are unreadable until it is
    /// supplied again. Returns whether a key was loaded.
    pub fn forget_tenant_key(&self, tenant: TenantId) -> Result<bool, VaultError> {
        Ok(self.keys.write().map_err(|_| poisoned())?.tenants.remove(&tenant).is_some())
    }
}
