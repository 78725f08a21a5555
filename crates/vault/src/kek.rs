//! Key-encryption keys: what wraps a tenant's data keys.
//!
//! The master key and a tenant's own key (bring-your-own-key) are both
//! [`KeyEncryptionKey`]s. Only [`LocalKey`] exists today; an external KMS
//! (AWS KMS, HashiCorp Vault's transit engine) plugs in behind the same
//! trait, which is why wrapping is async and the key material never leaves
//! the implementation.

use std::fmt;

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::STANDARD};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{VaultError, envelope};

/// The bytes of a 256-bit key, wiped when dropped.
pub type KeyBytes = Zeroizing<[u8; 32]>;

/// Which key wraps which data key: the master key or a tenant's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRole {
    Master,
    Tenant,
}

impl KeyRole {
    fn prefix(self) -> &'static str {
        match self {
            KeyRole::Master => "master",
            KeyRole::Tenant => "tenant",
        }
    }
}

/// Wraps and unwraps data keys. `aad` binds a wrapped key to the tenant
/// and version it belongs to, so a wrapped key moved to another tenant's
/// row fails to unwrap.
#[async_trait]
pub trait KeyEncryptionKey: Send + Sync + fmt::Debug {
    /// Names the key in every data key it wraps, e.g. `master:3f9c0a…`.
    /// Safe to show and store: it reveals nothing about the key.
    fn id(&self) -> &str;

    async fn wrap(&self, data_key: &KeyBytes, aad: &[u8]) -> Result<Vec<u8>, VaultError>;

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<KeyBytes, VaultError>;
}

/// A key held in this process's memory, read from a key file or the
/// environment: XChaCha20-Poly1305 with a random nonce per wrap.
pub struct LocalKey {
    key: KeyBytes,
    id: String,
}

impl fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl LocalKey {
    pub fn new(role: KeyRole, key: KeyBytes) -> Self {
        // Domain-separated so the id of a key is never the hash of anything
        // else Bulkhead computes from it.
        let digest = Sha256::new_with_prefix(b"bulkhead key id v1\0").chain_update(key.as_slice());
        let digest = digest.finalize();
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Self { key, id: format!("{}:{hex}", role.prefix()) }
    }

    /// A fresh random key.
    pub fn generate(role: KeyRole) -> Result<Self, VaultError> {
        Ok(Self::new(role, random_key()?))
    }

    /// Parses the text form: the key's 32 bytes in standard base64, as
    /// `openssl rand -base64 32` prints them. Surrounding whitespace is
    /// ignored.
    pub fn parse(role: KeyRole, text: &str) -> Result<Self, VaultError> {
        let bad = || {
            VaultError::InvalidKey(
                "a key is 32 random bytes in base64 (44 characters); generate one with \
                 `openssl rand -base64 32`"
                    .into(),
            )
        };
        let decoded = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| bad())?);
        let mut key = Zeroizing::new([0u8; 32]);
        if decoded.len() != key.len() {
            return Err(bad());
        }
        key.copy_from_slice(&decoded);
        Ok(Self::new(role, key))
    }

    /// The text form [`LocalKey::parse`] reads, with a newline.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(STANDARD.encode(self.key.as_slice()));
        text.push('\n');
        text
    }
}

#[async_trait]
impl KeyEncryptionKey for LocalKey {
    fn id(&self) -> &str {
        &self.id
    }

    async fn wrap(&self, data_key: &KeyBytes, aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        envelope::seal(&self.key, data_key.as_slice(), aad)
    }

    async fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<KeyBytes, VaultError> {
        let plain = envelope::open(&self.key, wrapped, aad).map_err(|_| VaultError::Unwrap)?;
        let mut key = Zeroizing::new([0u8; 32]);
        if plain.len() != key.len() {
            return Err(VaultError::Unwrap);
        }
        key.copy_from_slice(&plain);
        Ok(key)
    }
}

/// 32 bytes from the operating system's random source.
pub fn random_key() -> Result<KeyBytes, VaultError> {
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::fill(key.as_mut_slice()).map_err(|e| VaultError::Random(e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wraps_and_unwraps_with_the_same_aad_only() {
        let kek = LocalKey::generate(KeyRole::Master).unwrap();
        let data_key = random_key().unwrap();
        let wrapped = kek.wrap(&data_key, b"tenant a v1").await.unwrap();
        assert_eq!(*kek.unwrap(&wrapped, b"tenant a v1").await.unwrap(), *data_key);
        assert!(matches!(kek.unwrap(&wrapped, b"tenant b v1").await, Err(VaultError::Unwrap)));
        let other = LocalKey::generate(KeyRole::Master).unwrap();
        assert!(matches!(other.unwrap(&wrapped, b"tenant a v1").await, Err(VaultError::Unwrap)));
    }

    #[test]
    fn text_form_round_trips_and_ids_differ_by_role() {
        let key = LocalKey::generate(KeyRole::Master).unwrap();
        let text = key.to_text();
        let back = LocalKey::parse(KeyRole::Master, &text).unwrap();
        assert_eq!(back.id(), key.id());
        assert!(key.id().starts_with("master:"));
        let tenant = LocalKey::parse(KeyRole::Tenant, &text).unwrap();
        assert!(tenant.id().starts_with("tenant:"));
        assert!(!format!("{key:?}").contains(text.trim()));
    }

    #[test]
    fn rejects_keys_of_the_wrong_size_or_alphabet() {
        for bad in ["", "c2hvcnQ=", "not base64 at all!", &"A".repeat(64)] {
            let err = LocalKey::parse(KeyRole::Tenant, bad).unwrap_err();
            assert!(err.to_string().contains("openssl rand -base64 32"), "{err}");
        }
    }
}
