//! Checkpoints: a stream's head (seq and hash) signed with the stream's
//! audit key. A periodic one is made every so many events or seconds; a
//! truncation one before retention deletes events up to it, so what remains
//! still verifies from there; an export one closes every export.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::{
    canonical::write_string,
    record::{StreamId, format_time, hex},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// Every N events or T seconds of a stream.
    Periodic,
    /// Events up to `seq` were deleted by retention; the chain resumes
    /// from `head`.
    Truncation,
    /// Made when the stream was exported, over its last event.
    Export,
}

impl CheckpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointKind::Periodic => "periodic",
            CheckpointKind::Truncation => "truncation",
            CheckpointKind::Export => "export",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "periodic" => Some(CheckpointKind::Periodic),
            "truncation" => Some(CheckpointKind::Truncation),
            "export" => Some(CheckpointKind::Export),
            _ => None,
        }
    }
}

/// A checkpoint line's members, parsed but not yet checked: what an export
/// holds, and what a witness file keeps.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointLine {
    #[serde(rename = "type")]
    _kind: String,
    #[serde(default)]
    pub from: Option<u64>,
    head: String,
    key_id: String,
    pub kind: CheckpointKind,
    pub seq: u64,
    signature: String,
    pub stream: StreamId,
    time: String,
}

impl CheckpointLine {
    /// The checkpoint the line states, or which member is malformed.
    pub(crate) fn checkpoint(self) -> Result<Checkpoint, &'static str> {
        let head = crate::record::parse_hash(&self.head).ok_or("head is not 64 hex digits")?;
        let signature: [u8; 64] = URL_SAFE_NO_PAD
            .decode(&self.signature)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or("signature is not 64 bytes of base64url")?;
        Ok(Checkpoint {
            stream: self.stream,
            from: self.from,
            seq: self.seq,
            head,
            time: self.time,
            kind: self.kind,
            key_id: self.key_id,
            signature,
        })
    }
}

/// A stream's head, signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub stream: StreamId,
    /// Export checkpoints only: the seq of the export's first event (one
    /// past its anchor, or 1), so that lines cut from an export's start
    /// are noticed like lines cut from its end.
    pub from: Option<u64>,
    pub seq: u64,
    pub head: [u8; 32],
    pub time: String,
    pub kind: CheckpointKind,
    pub key_id: String,
    pub signature: [u8; 64],
}

impl Checkpoint {
    /// A periodic or truncation checkpoint, to be stored.
    pub fn sign(
        key: &AuditKey,
        seq: u64,
        head: [u8; 32],
        at: OffsetDateTime,
        kind: CheckpointKind,
    ) -> Self {
        debug_assert_ne!(kind, CheckpointKind::Export, "an export checkpoint needs sign_export");
        Self::sign_with(key, None, seq, head, at, kind)
    }

    /// The checkpoint that closes an export starting at seq `from`.
    pub fn sign_export(
        key: &AuditKey,
        from: u64,
        seq: u64,
        head: [u8; 32],
        at: OffsetDateTime,
    ) -> Self {
        Self::sign_with(key, Some(from), seq, head, at, CheckpointKind::Export)
    }

    fn sign_with(
        key: &AuditKey,
        from: Option<u64>,
        seq: u64,
        head: [u8; 32],
        at: OffsetDateTime,
        kind: CheckpointKind,
    ) -> Self {
        let mut checkpoint = Self {
            stream: key.stream.clone(),
            from,
            seq,
            head,
            time: format_time(at),
            kind,
            key_id: key.key_id.clone(),
            signature: [0; 64],
        };
        let signing_key = ed25519_dalek::SigningKey::from_bytes(&key.secret);
        checkpoint.signature = signing_key.sign(checkpoint.signed_text().as_bytes()).to_bytes();
        checkpoint
    }

    /// Whether `key` (which must be the one `key_id` names, for this
    /// stream) signed exactly this checkpoint.
    pub fn verify(&self, key: &PublicKeyInfo) -> bool {
        if key.key_id != self.key_id || key.stream != self.stream {
            return false;
        }
        let Some(public) = key.public_bytes() else { return false };
        let Ok(verifying) = ed25519_dalek::VerifyingKey::from_bytes(&public) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        verifying.verify_strict(self.signed_text().as_bytes(), &signature).is_ok()
    }

    /// The canonical JSON the signature covers: every member but
    /// `signature`.
    pub fn signed_text(&self) -> String {
        let mut out = String::with_capacity(256);
        self.write(&mut out, false);
        out
    }

    /// The checkpoint as one line of an export.
    pub fn export_line(&self) -> String {
        let mut out = String::with_capacity(384);
        self.write(&mut out, true);
        out
    }

    fn write(&self, out: &mut String, for_export: bool) {
        out.push('{');
        if let Some(from) = self.from {
            out.push_str("\"from\":");
            out.push_str(&from.to_string());
            out.push(',');
        }
        out.push_str("\"head\":\"");
        out.push_str(&hex(&self.head));
        out.push_str("\",\"key_id\":");
        write_string(&self.key_id, out);
        out.push_str(",\"kind\":\"");
        out.push_str(self.kind.as_str());
        out.push_str("\",\"seq\":");
        out.push_str(&self.seq.to_string());
        if for_export {
            out.push_str(",\"signature\":\"");
            out.push_str(&URL_SAFE_NO_PAD.encode(self.signature));
            out.push('"');
        }
        out.push_str(",\"stream\":");
        write_string(self.stream.as_str(), out);
        out.push_str(",\"time\":");
        write_string(&self.time, out);
        if for_export {
            out.push_str(",\"type\":\"checkpoint\"");
        }
        out.push('}');
    }
}

/// A stream's Ed25519 signing key. Its secret half is sealed by the vault
/// under the tenant's data key and held here only to sign, and to derive
/// the key with which the writer MACs every event it writes.
pub struct AuditKey {
    stream: StreamId,
    key_id: String,
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    /// HMAC-SHA256 key for events: derived from `secret` and the stream.
    mac_key: Zeroizing<[u8; 32]>,
}

type HmacSha256 = hmac::Hmac<Sha256>;

/// HMAC-SHA256 of `parts` under `key`.
fn hmac_of(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    // Any key length is valid for HMAC; the fallback is never taken.
    let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(key) else { return [0; 32] };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey")
            .field("stream", &self.stream)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl AuditKey {
    pub fn generate(stream: StreamId) -> Result<Self, getrandom::Error> {
        let mut secret = Zeroizing::new([0u8; 32]);
        getrandom::fill(secret.as_mut_slice())?;
        Ok(Self::from_seed(stream, secret))
    }

    /// A key from its 32-byte seed; `None` if it is not 32 bytes.
    pub fn from_secret(stream: StreamId, secret: &[u8]) -> Option<Self> {
        let seed: [u8; 32] = secret.try_into().ok()?;
        Some(Self::from_seed(stream, Zeroizing::new(seed)))
    }

    fn from_seed(stream: StreamId, secret: Zeroizing<[u8; 32]>) -> Self {
        let public = ed25519_dalek::SigningKey::from_bytes(&secret).verifying_key().to_bytes();
        let mac_key = Zeroizing::new(hmac_of(
            secret.as_slice(),
            &[b"bulkhead-audit-event-mac\0", stream.as_str().as_bytes()],
        ));
        Self { key_id: key_id(&stream, &public), stream, secret, public, mac_key }
    }

    /// The key that stands in for `stream`'s own where that cannot be used
    /// (a tenant's key not made yet or not loaded, a purged tenant's
    /// destroyed): derived from this key, the platform's, and bound to the
    /// stream like any other of its keys.
    pub fn custodian(&self, stream: &StreamId) -> Self {
        let seed = hmac_of(
            self.secret.as_slice(),
            &[b"bulkhead-audit-custodian\0", stream.as_str().as_bytes()],
        );
        Self::from_seed(stream.clone(), Zeroizing::new(seed))
    }

    /// The writer's MAC of the event at `seq` whose hash is `hash`.
    pub fn event_mac(&self, seq: u64, hash: &[u8; 32]) -> [u8; 32] {
        hmac_of(self.mac_key.as_slice(), &[&seq.to_be_bytes(), hash])
    }

    /// Whether `tag` is this key's MAC of the event, compared in constant
    /// time.
    pub fn verify_event_mac(&self, seq: u64, hash: &[u8; 32], tag: &[u8]) -> bool {
        use hmac::{KeyInit, Mac};
        let Ok(mut mac) = <HmacSha256 as KeyInit>::new_from_slice(self.mac_key.as_slice()) else {
            return false;
        };
        mac.update(&seq.to_be_bytes());
        mac.update(hash);
        mac.verify_slice(tag).is_ok()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    pub fn secret_bytes(&self) -> &[u8] {
        self.secret.as_slice()
    }

    pub fn public_info(&self, created_at: OffsetDateTime) -> PublicKeyInfo {
        PublicKeyInfo {
            key_id: self.key_id.clone(),
            stream: self.stream.clone(),
            alg: "EdDSA".into(),
            public_key: URL_SAFE_NO_PAD.encode(self.public),
            created_at: format_time(created_at),
        }
    }
}

/// A key's id: the first 16 hex digits of SHA-256 over
/// `"bulkhead-audit-key" 0x00 stream 0x00 public-key`. It binds the key to
/// its stream, so a key of one tenant cannot be listed as another's
/// without the id giving it away.
pub fn key_id(stream: &StreamId, public: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(b"bulkhead-audit-key\0")
        .chain_update(stream.as_str().as_bytes())
        .chain_update([0])
        .chain_update(public)
        .finalize();
    hex(&digest[..8])
}

/// A stream's public key, as published in the realm's documents and in
/// every export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKeyInfo {
    pub key_id: String,
    pub stream: StreamId,
    /// Always `EdDSA` (Ed25519).
    pub alg: String,
    /// The 32-byte public key, base64url without padding.
    pub public_key: String,
    pub created_at: String,
}

impl PublicKeyInfo {
    pub fn public_bytes(&self) -> Option<[u8; 32]> {
        URL_SAFE_NO_PAD.decode(&self.public_key).ok()?.try_into().ok()
    }

    /// Whether the key id is the one its stream and public key give.
    pub fn is_bound(&self) -> bool {
        self.alg == "EdDSA"
            && self.public_bytes().is_some_and(|pk| key_id(&self.stream, &pk) == self.key_id)
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn a_checkpoint_verifies_with_its_own_streams_key_only() {
        let acme = AuditKey::generate(StreamId::tenant(Uuid::new_v4()))
            .unwrap_or_else(|_| AuditKey::from_seed(StreamId::platform(), Zeroizing::new([7; 32])));
        let globex = AuditKey::from_seed(StreamId::tenant(Uuid::new_v4()), Zeroizing::new([9; 32]));
        let now = OffsetDateTime::UNIX_EPOCH;
        let checkpoint = Checkpoint::sign(&acme, 10, [1; 32], now, CheckpointKind::Periodic);
        assert!(checkpoint.verify(&acme.public_info(now)));
        assert!(!checkpoint.verify(&globex.public_info(now)));
        let moved = Checkpoint { seq: 11, ..checkpoint.clone() };
        assert!(!moved.verify(&acme.public_info(now)));
        assert!(acme.public_info(now).is_bound());
        // MACs: one key's only, for one event only; a custodian is a key
        // of the stream it stands in for, and not the same key.
        let tag = acme.event_mac(3, &[5; 32]);
        assert!(acme.verify_event_mac(3, &[5; 32], &tag));
        assert!(!acme.verify_event_mac(4, &[5; 32], &tag));
        assert!(!globex.verify_event_mac(3, &[5; 32], &tag));
        let custodian = globex.custodian(acme.stream());
        assert_eq!(custodian.stream(), acme.stream());
        assert_ne!(custodian.key_id(), acme.key_id());
        assert!(custodian.public_info(now).is_bound());
        assert_eq!(globex.custodian(acme.stream()).key_id(), custodian.key_id(), "deterministic");
        let relabelled = PublicKeyInfo { stream: globex.stream.clone(), ..acme.public_info(now) };
        assert!(!relabelled.is_bound());
    }
}
