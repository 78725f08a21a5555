//! Authenticated encryption of data keys and secret values:
//! XChaCha20-Poly1305 with a random 192-bit nonce per message, which is
//! safe to draw at random for any number of messages under one key.
//!
//! A sealed message is `0x01 ‖ nonce (24) ‖ ciphertext ‖ tag (16)`; the
//! first byte names this format so another can follow. The associated data
//! is authenticated, not stored: callers rebuild it from where the message
//! lives (tenant, key version, path), so a message copied elsewhere fails.

use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, Payload},
};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::VaultError;

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// Bytes added to a plaintext by [`seal`].
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

pub fn seal(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| VaultError::Random(e.to_string()))?;
    let sealed = cipher
        .encrypt(&XNonce::from(nonce), Payload { msg: plaintext, aad })
        .map_err(|_| VaultError::Encrypt)?;
    let mut out = Vec::with_capacity(OVERHEAD + plaintext.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// The plaintext, or [`VaultError::Decrypt`] for a message that is
/// truncated, of an unknown format, altered, sealed under another key or
/// with other associated data.
pub fn open(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    let (format, rest) = sealed.split_first().ok_or(VaultError::Decrypt)?;
    if *format != FORMAT_V1 || rest.len() < NONCE_LEN + TAG_LEN {
        return Err(VaultError::Decrypt);
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| VaultError::Decrypt)?;
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(&nonce, Payload { msg: ciphertext, aad })
        .map(Zeroizing::new)
        .map_err(|_| VaultError::Decrypt)
}

/// Binds a wrapped data key to its tenant and version.
pub fn data_key_aad(tenant: Uuid, version: i64) -> Vec<u8> {
    let mut aad = b"bulkhead data key v1\0".to_vec();
    aad.extend_from_slice(tenant.as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// Binds a secret's ciphertext to its tenant, data key version and path.
pub fn secret_aad(tenant: Uuid, key_version: i64, path: &str) -> Vec<u8> {
    let mut aad = b"bulkhead secret v1\0".to_vec();
    aad.extend_from_slice(tenant.as_bytes());
    aad.extend_from_slice(&key_version.to_be_bytes());
    aad.extend_from_slice(path.as_bytes());
    aad
}

/// Binds what a departed tenant's snapshot key seals (the identity that
/// opens its final snapshot) to that tenant.
pub fn departure_aad(tenant: Uuid) -> Vec<u8> {
    let mut aad = b"bulkhead departure v1\0".to_vec();
    aad.extend_from_slice(tenant.as_bytes());
    aad
}

/// Binds a sealed blob to its tenant, data key version and label.
pub fn blob_aad(tenant: Uuid, key_version: i64, label: &str) -> Vec<u8> {
    let mut aad = b"bulkhead blob v1\0".to_vec();
    aad.extend_from_slice(tenant.as_bytes());
    aad.extend_from_slice(&key_version.to_be_bytes());
    aad.extend_from_slice(label.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn round_trip() {
        let sealed = seal(&KEY, b"hunter2", b"ad").unwrap();
        assert_eq!(sealed.len(), 7 + OVERHEAD);
        assert_eq!(&**open(&KEY, &sealed, b"ad").unwrap(), b"hunter2");
        // A fresh nonce each time.
        assert_ne!(seal(&KEY, b"hunter2", b"ad").unwrap(), sealed);
    }

    #[test]
    fn every_corruption_is_refused_without_panicking() {
        let sealed = seal(&KEY, b"a secret value", b"ad").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(matches!(open(&KEY, &bad, b"ad"), Err(VaultError::Decrypt)), "byte {i}");
        }
        for len in 0..sealed.len() {
            assert!(open(&KEY, &sealed[..len], b"ad").is_err(), "truncated to {len}");
        }
        assert!(open(&KEY, &sealed, b"other").is_err());
        assert!(open(&[8; 32], &sealed, b"ad").is_err());
    }

    #[test]
    fn aad_distinguishes_tenants_versions_and_paths() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_ne!(secret_aad(a, 1, "db/password"), secret_aad(b, 1, "db/password"));
        assert_ne!(secret_aad(a, 1, "db/password"), secret_aad(a, 2, "db/password"));
        assert_ne!(secret_aad(a, 1, "db/password"), secret_aad(a, 1, "db/passwore"));
        assert_ne!(data_key_aad(a, 1), data_key_aad(a, 2));
    }
}
