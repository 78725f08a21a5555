//! Realm signing keys: Ed25519 (EdDSA) by default, P-256 (ES256) for
//! clients that lack EdDSA, and their public halves as JSON Web Keys
//! (RFC 7517, RFC 8037 for OKP keys).

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::Signer as _;
use p256::ecdsa::signature::Verifier as _;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::Zeroizing;

/// The JWS algorithms a realm signs with. Nothing else is ever accepted:
/// no `none`, no HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    EdDSA,
    ES256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
        }
    }

    pub fn parse(name: &str) -> Result<Self, KeyError> {
        match name {
            "EdDSA" => Ok(Algorithm::EdDSA),
            "ES256" => Ok(Algorithm::ES256),
            other => Err(KeyError::Unsupported(format!(
                "algorithm {other:?} is not supported; use EdDSA or ES256"
            ))),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("{0}")]
    Unsupported(String),
    #[error("invalid key: {0}")]
    Invalid(String),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
}

/// A public key as published in a realm's `jwks.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `OKP` (Ed25519) or `EC` (P-256).
    pub kty: String,
    pub crv: String,
    pub x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

/// A realm's private signing key. Its secret half is 32 bytes for both
/// algorithms (the Ed25519 seed, the P-256 scalar), wiped when dropped.
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    secret: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, KeyError> {
    let mut bytes = Zeroizing::new([0u8; N]);
    getrandom::fill(bytes.as_mut_slice()).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(bytes)
}

impl SigningKey {
    /// A new key with a random `kid`.
    pub fn generate(alg: Algorithm) -> Result<Self, KeyError> {
        let kid = URL_SAFE_NO_PAD.encode(random::<12>()?.as_slice());
        // A random P-256 scalar is out of range with probability ~2^-32;
        // draw again then.
        for _ in 0..8 {
            if let Ok(key) = Self::from_secret(kid.clone(), alg, random::<32>()?.as_slice()) {
                return Ok(key);
            }
        }
        Err(KeyError::Random("no valid key after 8 draws".into()))
    }

    /// Rebuilds a key from its stored secret half.
    pub fn from_secret(kid: String, alg: Algorithm, secret: &[u8]) -> Result<Self, KeyError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        if secret.len() != bytes.len() {
            return Err(KeyError::Invalid(format!("a {alg} secret key is 32 bytes")));
        }
        bytes.copy_from_slice(secret);
        if alg == Algorithm::ES256 {
            p256::ecdsa::SigningKey::from_slice(bytes.as_slice())
                .map_err(|_| KeyError::Invalid("not a P-256 scalar".into()))?;
        }
        Ok(Self { kid, alg, secret: bytes })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The secret half, to be sealed under the tenant's data key.
    pub fn secret_bytes(&self) -> &[u8] {
        self.secret.as_slice()
    }

    /// The JWS signature of `message`: 64 bytes for both algorithms (for
    /// ES256, `r ‖ s` as RFC 7518 §3.4 requires, not DER).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match self.alg {
            Algorithm::EdDSA => {
                let key = ed25519_dalek::SigningKey::from_bytes(&self.secret);
                Ok(key.sign(message).to_bytes().to_vec())
            }
            Algorithm::ES256 => {
                let key = p256::ecdsa::SigningKey::from_slice(self.secret.as_slice())
                    .map_err(|_| KeyError::Invalid("not a P-256 scalar".into()))?;
                let signature: p256::ecdsa::Signature = key.sign(message);
                Ok(signature.to_bytes().to_vec())
            }
        }
    }

    pub fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        Ok(match self.alg {
            Algorithm::EdDSA => VerifyingKey::Ed25519(
                ed25519_dalek::SigningKey::from_bytes(&self.secret).verifying_key(),
            ),
            Algorithm::ES256 => VerifyingKey::P256(
                *p256::ecdsa::SigningKey::from_slice(self.secret.as_slice())
                    .map_err(|_| KeyError::Invalid("not a P-256 scalar".into()))?
                    .verifying_key(),
            ),
        })
    }

    /// The public half as a JWK with `kid`, `alg` and `use: sig`.
    pub fn public_jwk(&self) -> Result<Jwk, KeyError> {
        let mut jwk = self.verifying_key()?.to_jwk();
        jwk.kid = Some(self.kid.clone());
        jwk.alg = Some(self.alg.as_str().to_owned());
        jwk.use_ = Some("sig".to_owned());
        Ok(jwk)
    }
}

/// A public key that verifies signatures of one algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyingKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl VerifyingKey {
    pub fn alg(&self) -> Algorithm {
        match self {
            VerifyingKey::Ed25519(_) => Algorithm::EdDSA,
            VerifyingKey::P256(_) => Algorithm::ES256,
        }
    }

    /// Reads an `OKP`/`Ed25519` or `EC`/`P-256` JWK. A JWK whose `alg`
    /// names another algorithm than its key type is refused.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        let decode = |field: &str, value: &str| {
            URL_SAFE_NO_PAD
                .decode(value)
                .map_err(|_| KeyError::Invalid(format!("JWK field {field} is not base64url")))
        };
        let key = match (jwk.kty.as_str(), jwk.crv.as_str()) {
            ("OKP", "Ed25519") => {
                let x: [u8; 32] = decode("x", &jwk.x)?
                    .try_into()
                    .map_err(|_| KeyError::Invalid("an Ed25519 x is 32 bytes".into()))?;
                VerifyingKey::Ed25519(
                    ed25519_dalek::VerifyingKey::from_bytes(&x)
                        .map_err(|_| KeyError::Invalid("not an Ed25519 point".into()))?,
                )
            }
            ("EC", "P-256") => {
                let x = decode("x", &jwk.x)?;
                let y = decode("y", jwk.y.as_deref().unwrap_or_default())?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(KeyError::Invalid("P-256 x and y are 32 bytes each".into()));
                }
                let mut sec1 = Vec::with_capacity(65);
                sec1.push(0x04);
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                VerifyingKey::P256(
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                        .map_err(|_| KeyError::Invalid("not a P-256 point".into()))?,
                )
            }
            (kty, crv) => {
                return Err(KeyError::Unsupported(format!(
                    "key type {kty}/{crv} is not supported; use OKP/Ed25519 or EC/P-256"
                )));
            }
        };
        if let Some(alg) = &jwk.alg
            && Algorithm::parse(alg)? != key.alg()
        {
            return Err(KeyError::Invalid(format!(
                "a {} key cannot be used with {alg}",
                key.alg()
            )));
        }
        Ok(key)
    }

    pub fn to_jwk(&self) -> Jwk {
        match self {
            VerifyingKey::Ed25519(key) => Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: URL_SAFE_NO_PAD.encode(key.as_bytes()),
                y: None,
                kid: None,
                alg: None,
                use_: None,
            },
            VerifyingKey::P256(key) => {
                let point = key.to_sec1_point(false);
                let coordinate = |c: Option<&p256::FieldBytes>| {
                    c.map(|c| URL_SAFE_NO_PAD.encode(c)).unwrap_or_default()
                };
                Jwk {
                    kty: "EC".into(),
                    crv: "P-256".into(),
                    x: coordinate(point.x()),
                    y: Some(coordinate(point.y())),
                    kid: None,
                    alg: None,
                    use_: None,
                }
            }
        }
    }

    /// Whether `signature` is this key's signature of `message` under `alg`.
    /// A signature of another algorithm never verifies.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        match (self, alg) {
            (VerifyingKey::Ed25519(key), Algorithm::EdDSA) => {
                ed25519_dalek::Signature::from_slice(signature)
                    .is_ok_and(|s| key.verify_strict(message, &s).is_ok())
            }
            (VerifyingKey::P256(key), Algorithm::ES256) => {
                p256::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|s| key.verify(message, &s).is_ok())
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_jwk_round_trip_for_both_algorithms() {
        for alg in [Algorithm::EdDSA, Algorithm::ES256] {
            let key = SigningKey::generate(alg).unwrap();
            let signature = key.sign(b"payload").unwrap();
            assert_eq!(signature.len(), 64);
            let jwk = key.public_jwk().unwrap();
            assert_eq!(jwk.kid.as_deref(), Some(key.kid()));
            let public = VerifyingKey::from_jwk(&jwk).unwrap();
            assert!(public.verify(alg, b"payload", &signature));
            assert!(!public.verify(alg, b"payloae", &signature));
            let other = if alg == Algorithm::EdDSA { Algorithm::ES256 } else { Algorithm::EdDSA };
            assert!(!public.verify(other, b"payload", &signature));
            let again = SigningKey::from_secret(key.kid().into(), alg, key.secret_bytes()).unwrap();
            assert_eq!(again.public_jwk().unwrap(), jwk);
            assert!(!format!("{key:?}").contains(&format!("{:?}", key.secret_bytes())));
        }
    }

    #[test]
    fn refuses_keys_that_do_not_fit() {
        let mut jwk = SigningKey::generate(Algorithm::EdDSA).unwrap().public_jwk().unwrap();
        jwk.alg = Some("ES256".into());
        assert!(VerifyingKey::from_jwk(&jwk).is_err());
        jwk.alg = Some("HS256".into());
        assert!(VerifyingKey::from_jwk(&jwk).is_err());
        jwk.alg = None;
        jwk.x = "short".into();
        assert!(VerifyingKey::from_jwk(&jwk).is_err());
        let rsa = Jwk { kty: "RSA".into(), crv: String::new(), ..jwk };
        assert!(VerifyingKey::from_jwk(&rsa).is_err());
        assert!(SigningKey::from_secret("k".into(), Algorithm::ES256, &[0; 32]).is_err());
        assert!(SigningKey::from_secret("k".into(), Algorithm::EdDSA, &[1; 31]).is_err());
    }
}
