//! Realm signing keys: Ed25519 (EdDSA) by default, P-256 (ES256) for
//! clients that lack EdDSA, and their public halves as JSON Web Keys
//! (RFC 7517, RFC 8037 for OKP keys). RSA public keys (RS256) are read
//! too, for external identity providers, but a realm never signs with RSA.

use std::fmt;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

/// The JWS algorithms Bulkhead accepts. Realms sign with EdDSA or ES256.
/// RS256 is only ever verified, for external identity providers: Auth0,
/// Entra ID, Okta and Keycloak sign with it unless told otherwise.
/// Nothing else is ever accepted: no `none`, no HMAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    EdDSA,
    ES256,
    RS256,
}

impl Algorithm {
    /// What a realm signs with, and so what its tokens may carry.
    pub const REALM: [Algorithm; 2] = [Algorithm::EdDSA, Algorithm::ES256];
    /// What an external identity provider's tokens may carry.
    pub const EXTERNAL: [Algorithm; 3] = [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
        }
    }

    pub fn parse(name: &str) -> Result<Self, KeyError> {
        match name {
            "EdDSA" => Ok(Algorithm::EdDSA),
            "ES256" => Ok(Algorithm::ES256),
            "RS256" => Ok(Algorithm::RS256),
            other => Err(KeyError::Unsupported(format!(
                "algorithm {other:?} is not supported; use EdDSA, ES256 or RS256"
            ))),
        }
    }

    /// An algorithm a realm can sign with.
    pub fn parse_realm(name: &str) -> Result<Self, KeyError> {
        Self::parse(name)
            .map_err(|_| {
                KeyError::Unsupported(format!(
                    "algorithm {name:?} is not supported for a realm; use EdDSA or ES256"
                ))
            })?
            .for_realm()
    }

    /// `self`, when a realm can sign with it.
    fn for_realm(self) -> Result<Self, KeyError> {
        if Self::REALM.contains(&self) { Ok(self) } else { Err(self.not_for_realm()) }
    }

    fn not_for_realm(self) -> KeyError {
        KeyError::Unsupported(format!(
            "a realm signs with EdDSA or ES256; {self} is accepted only from an external \
             identity provider (auth trust)"
        ))
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

/// A public key as published in a realm's `jwks.json`, or in an external
/// provider's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `OKP` (Ed25519), `EC` (P-256) or `RSA`.
    pub kty: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub crv: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub x: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// The RSA modulus, big-endian.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// The RSA public exponent, big-endian.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

/// A realm's private signing key. Its secret half is 32 bytes for both
/// realm algorithms (the Ed25519 seed, the P-256 scalar), wiped when
/// dropped.
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
        alg.for_realm()?;
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
        alg.for_realm()?;
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
            Algorithm::RS256 => Err(self.alg.not_for_realm()),
        }
    }

    pub fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        Ok(match self.alg {
            Algorithm::EdDSA => VerifyingKey::Ed25519(
                ed25519_dalek::SigningKey::from_bytes(&self.secret).verifying_key(),
            ),
            Algorithm::ES256 => {
                let key = p256::ecdsa::SigningKey::from_slice(self.secret.as_slice())
                    .map_err(|_| KeyError::Invalid("not a P-256 scalar".into()))?;
                VerifyingKey::P256(EcKey::new(key.verifying_key().to_sec1_point(false).as_bytes())?)
            }
            Algorithm::RS256 => return Err(self.alg.not_for_realm()),
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
    P256(EcKey),
    Rsa(RsaKey),
}

/// A P-256 public key, parsed once. Signatures are checked by aws-lc-rs,
/// four to five times faster here than the pure-Rust `p256` (see
/// BENCHMARKS.md), which only signs.
#[derive(Clone)]
pub struct EcKey {
    /// The uncompressed SEC 1 point: `04 ‖ x ‖ y`.
    point: Vec<u8>,
    parsed: ParsedPublicKey,
    fingerprint: [u8; 32],
}

impl EcKey {
    /// From an uncompressed SEC 1 point; a point not on the curve is
    /// refused.
    pub fn new(point: &[u8]) -> Result<Self, KeyError> {
        let not_a_point = || KeyError::Invalid("not a P-256 point".into());
        if point.len() != 65 || point[0] != 0x04 {
            return Err(not_a_point());
        }
        let parsed =
            ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).map_err(|_| not_a_point())?;
        let fingerprint = Sha256::digest(point).into();
        Ok(Self { point: point.to_vec(), parsed, fingerprint })
    }
}

impl PartialEq for EcKey {
    fn eq(&self, other: &Self) -> bool {
        self.point == other.point
    }
}

impl Eq for EcKey {}

impl fmt::Debug for EcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EcKey").field(&URL_SAFE_NO_PAD.encode(&self.point)).finish()
    }
}

/// An RSA public key of 2048 to 8192 bits, parsed once so that each
/// verification only checks the signature.
#[derive(Clone)]
pub struct RsaKey {
    n: Vec<u8>,
    e: Vec<u8>,
    parsed: ParsedPublicKey,
    fingerprint: [u8; 32],
}

impl RsaKey {
    /// Big-endian modulus and exponent; leading zero bytes, which some
    /// providers emit despite RFC 7518 §6.3.1, are ignored.
    pub fn new(n: &[u8], e: &[u8]) -> Result<Self, KeyError> {
        let strip = |bytes: &[u8]| {
            let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
            bytes[start..].to_vec()
        };
        let (n, e) = (strip(n), strip(e));
        let bits = modulus_bits(&n);
        if !(2048..=8192).contains(&bits) {
            return Err(KeyError::Invalid(format!(
                "an RSA key of {bits} bits is refused; RS256 needs 2048 to 8192 bits"
            )));
        }
        // What a real key has (RFC 8017 §3.1, and the bounds OpenSSL and
        // aws-lc enforce when verifying): an odd modulus, an odd exponent
        // from 3 to 2^33. Refused here, a bad key is named when the JWKS is
        // read rather than failing every token later.
        let exponent = if e.len() <= 5 {
            e.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b))
        } else {
            u64::MAX
        };
        if n.last().is_none_or(|low| low % 2 == 0)
            || exponent % 2 == 0
            || !(3..1 << 33).contains(&exponent)
        {
            return Err(KeyError::Invalid(
                "not an RSA public key: the modulus and the exponent must be odd, the exponent \
                 from 3 to 2^33"
                    .into(),
            ));
        }
        let parsed = RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }
            .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
            .map_err(|_| KeyError::Invalid("not an RSA public key".into()))?;
        let fingerprint = Sha256::new()
            .chain_update((n.len() as u64).to_be_bytes())
            .chain_update(&n)
            .chain_update(&e)
            .finalize()
            .into();
        Ok(Self { n, e, parsed, fingerprint })
    }

    pub fn bits(&self) -> usize {
        modulus_bits(&self.n)
    }
}

fn modulus_bits(n: &[u8]) -> usize {
    n.first().map_or(0, |top| n.len() * 8 - top.leading_zeros() as usize)
}

impl PartialEq for RsaKey {
    fn eq(&self, other: &Self) -> bool {
        self.n == other.n && self.e == other.e
    }
}

impl Eq for RsaKey {}

impl fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaKey").field("bits", &self.bits()).finish_non_exhaustive()
    }
}

impl VerifyingKey {
    /// 32 bytes that differ between any two keys: what the verified-token
    /// cache remembers, so a kid reused for another key finds nothing.
    pub fn fingerprint(&self) -> [u8; 32] {
        match self {
            VerifyingKey::Ed25519(key) => key.to_bytes(),
            VerifyingKey::P256(key) => key.fingerprint,
            VerifyingKey::Rsa(key) => key.fingerprint,
        }
    }

    pub fn alg(&self) -> Algorithm {
        match self {
            VerifyingKey::Ed25519(_) => Algorithm::EdDSA,
            VerifyingKey::P256(_) => Algorithm::ES256,
            VerifyingKey::Rsa(_) => Algorithm::RS256,
        }
    }

    /// Reads an `OKP`/`Ed25519`, `EC`/`P-256` or `RSA` JWK. A JWK whose
    /// `alg` names another algorithm than its key type is refused.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, KeyError> {
        let decode = |field: &str, value: &str| {
            URL_SAFE_NO_PAD
                .decode(value)
                .map_err(|_| KeyError::Invalid(format!("JWK field {field} is not base64url")))
        };
        let key = match (jwk.kty.as_str(), jwk.crv.as_str()) {
            ("RSA", _) => VerifyingKey::Rsa(RsaKey::new(
                &decode("n", jwk.n.as_deref().unwrap_or_default())?,
                &decode("e", jwk.e.as_deref().unwrap_or_default())?,
            )?),
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
                VerifyingKey::P256(EcKey::new(&[&[0x04][..], &x, &y].concat())?)
            }
            (kty, crv) => {
                return Err(KeyError::Unsupported(format!(
                    "key type {kty}/{crv} is not supported; use OKP/Ed25519, EC/P-256 or RSA"
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
                n: None,
                e: None,
                kid: None,
                alg: None,
                use_: None,
            },
            VerifyingKey::P256(key) => Jwk {
                kty: "EC".into(),
                crv: "P-256".into(),
                x: URL_SAFE_NO_PAD.encode(&key.point[1..33]),
                y: Some(URL_SAFE_NO_PAD.encode(&key.point[33..])),
                n: None,
                e: None,
                kid: None,
                alg: None,
                use_: None,
            },
            VerifyingKey::Rsa(key) => Jwk {
                kty: "RSA".into(),
                crv: String::new(),
                x: String::new(),
                y: None,
                n: Some(URL_SAFE_NO_PAD.encode(&key.n)),
                e: Some(URL_SAFE_NO_PAD.encode(&key.e)),
                kid: None,
                alg: None,
                use_: None,
            },
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
                key.parsed.verify_sig(message, signature).is_ok()
            }
            (VerifyingKey::Rsa(key), Algorithm::RS256) => {
                key.parsed.verify_sig(message, signature).is_ok()
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
        assert!(VerifyingKey::from_jwk(&rsa).is_err(), "an RSA key without n and e");
        assert!(SigningKey::from_secret("k".into(), Algorithm::ES256, &[0; 32]).is_err());
        assert!(SigningKey::from_secret("k".into(), Algorithm::EdDSA, &[1; 31]).is_err());
    }

    #[test]
    fn es256_accepts_both_s_forms_and_refuses_points_off_the_curve() {
        let key = SigningKey::generate(Algorithm::ES256).unwrap();
        let public = key.verifying_key().unwrap();
        let signature = key.sign(b"payload").unwrap();
        // The same signature with s replaced by n - s, as OpenSSL, Go and
        // Java may produce: accepted (docs/identity.md says why).
        const ORDER: [u8; 32] = [
            0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2,
            0xfc, 0x63, 0x25, 0x51,
        ];
        let mut high = signature.clone();
        let mut borrow = 0i16;
        for i in (0..32).rev() {
            let digit = i16::from(ORDER[i]) - i16::from(signature[32 + i]) - borrow;
            borrow = i16::from(digit < 0);
            high[32 + i] = digit.rem_euclid(256) as u8;
        }
        assert_ne!(high, signature);
        assert!(public.verify(Algorithm::ES256, b"payload", &signature));
        assert!(public.verify(Algorithm::ES256, b"payload", &high));
        assert!(!public.verify(Algorithm::ES256, b"payload", &signature[..63]));

        let mut jwk = key.public_jwk().unwrap();
        let mut y = URL_SAFE_NO_PAD.decode(jwk.y.as_deref().unwrap()).unwrap();
        y[31] ^= 1;
        jwk.y = Some(URL_SAFE_NO_PAD.encode(&y));
        let refused = VerifyingKey::from_jwk(&jwk).unwrap_err();
        assert!(refused.to_string().contains("not a P-256 point"), "{refused}");
    }

    /// Made by PyJWT and `cryptography` (`tests/data/make_rs256.py`).
    fn fixture() -> serde_json::Value {
        serde_json::from_str(include_str!("../tests/data/rs256.json")).unwrap()
    }

    fn jwk(value: &serde_json::Value) -> Jwk {
        serde_json::from_value(value.clone()).unwrap()
    }

    #[test]
    fn verifies_rs256_signatures_made_by_pyjwt() {
        let fixture = fixture();
        let key = VerifyingKey::from_jwk(&jwk(&fixture["jwk"])).unwrap();
        assert_eq!(key.alg(), Algorithm::RS256);
        let token = fixture["token"].as_str().unwrap();
        let (input, signature) = token.rsplit_once('.').unwrap();
        let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        assert_eq!(signature.len(), 256);
        assert!(key.verify(Algorithm::RS256, input.as_bytes(), &signature));
        assert!(!key.verify(Algorithm::ES256, input.as_bytes(), &signature));
        assert!(!key.verify(Algorithm::RS256, &input.as_bytes()[1..], &signature));
        signature[100] ^= 1;
        assert!(!key.verify(Algorithm::RS256, input.as_bytes(), &signature));
        assert!(!key.verify(Algorithm::RS256, input.as_bytes(), &[]));

        // Published back the same, and a modulus with a leading zero byte
        // (which some providers send) is the same key.
        let published = key.to_jwk();
        assert_eq!(published.n, jwk(&fixture["jwk"]).n);
        assert_eq!(VerifyingKey::from_jwk(&published).unwrap(), key);
        let n = URL_SAFE_NO_PAD.decode(published.n.as_deref().unwrap()).unwrap();
        let padded =
            Jwk { n: Some(URL_SAFE_NO_PAD.encode([&[0u8][..], &n].concat())), ..published };
        assert_eq!(VerifyingKey::from_jwk(&padded).unwrap(), key);
        assert_eq!(format!("{key:?}"), "Rsa(RsaKey { bits: 2048, .. })");
    }

    #[test]
    fn refuses_rsa_keys_that_are_short_or_mislabelled_and_never_signs_with_rsa() {
        let fixture = fixture();
        let short = VerifyingKey::from_jwk(&jwk(&fixture["short_jwk"])).unwrap_err();
        assert!(short.to_string().contains("1024 bits"), "{short}");
        let mut labelled = jwk(&fixture["jwk"]);
        labelled.alg = Some("ES256".into());
        assert!(VerifyingKey::from_jwk(&labelled).is_err());
        labelled.alg = Some("PS256".into());
        assert!(VerifyingKey::from_jwk(&labelled).is_err());
        labelled.alg = None;
        labelled.e = Some(String::new());
        assert!(VerifyingKey::from_jwk(&labelled).is_err(), "no exponent");
        let n = URL_SAFE_NO_PAD.decode(jwk(&fixture["jwk"]).n.unwrap()).unwrap();
        for e in [&[1u8][..], &[2], &[1, 0, 0, 0, 0, 1], &[1, 0, 0]] {
            let refused = RsaKey::new(&n, e).unwrap_err().to_string();
            assert!(refused.contains("must be odd"), "e = {e:?}: {refused}");
        }
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        assert!(RsaKey::new(&even, &[1, 0, 1]).is_err(), "an even modulus");
        assert!(RsaKey::new(&n, &[3]).is_ok());
        assert!(RsaKey::new(&n, &[0, 1, 0, 1]).is_ok(), "a leading zero in e");

        assert!(SigningKey::generate(Algorithm::RS256).is_err());
        assert!(SigningKey::from_secret("k".into(), Algorithm::RS256, &[1; 32]).is_err());
        assert_eq!(Algorithm::parse("RS256").unwrap(), Algorithm::RS256);
        let realm = Algorithm::parse_realm("RS256").unwrap_err().to_string();
        assert!(realm.contains("external identity provider"), "{realm}");
        assert!(Algorithm::parse_realm("HS256").is_err());
        assert_eq!(Algorithm::parse_realm("ES256").unwrap(), Algorithm::ES256);
    }
}
