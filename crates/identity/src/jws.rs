//! JWS compact serialization (RFC 7515) for JWTs (RFC 7519), signed with a
//! realm key and read back strictly: one size cap, exactly three parts,
//! unpadded base64url, no duplicate JSON members, no extensions (`crit`)
//! it does not understand, and never a key named by the token itself
//! (`jku`, `x5u`, `jwk` are ignored, not followed).

use std::{collections::HashSet, fmt};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{
    Deserialize, Serialize,
    de::{self, MapAccess, SeqAccess, Visitor},
};

use crate::keys::{KeyError, SigningKey};

/// Longest token accepted, in bytes. A realm token is well under 1 KiB;
/// this leaves room for an external IdP's claims without letting a client
/// make every request parse megabytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crit: Option<Vec<String>>,
}

/// Why a token could not be read. For logs only: callers answer every
/// failure the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    TooLarge,
    NotThreeParts,
    BadBase64,
    BadHeader,
    Critical,
    BadClaims,
    DuplicateMember,
    /// Nested deeper than the JSON parser follows (128 levels).
    TooDeep,
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Malformed::TooLarge => "token larger than the cap",
            Malformed::NotThreeParts => "not three dot-separated parts",
            Malformed::BadBase64 => "a part is not unpadded base64url",
            Malformed::BadHeader => "header is not a JWS header",
            Malformed::Critical => "header names critical extensions",
            Malformed::BadClaims => "payload is not a JSON object",
            Malformed::DuplicateMember => "a JSON member appears twice",
            Malformed::TooDeep => "JSON nested too deeply",
        })
    }
}

/// A token taken apart, not yet verified.
#[derive(Debug)]
pub struct Parts<'a> {
    pub header: Header,
    /// `base64url(header) . base64url(payload)`: what the signature covers.
    pub signing_input: &'a [u8],
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

pub fn encode(key: &SigningKey, claims: &impl Serialize) -> Result<String, KeyError> {
    let header = Header {
        alg: key.alg().as_str().to_owned(),
        kid: Some(key.kid().to_owned()),
        typ: Some("JWT".to_owned()),
        crit: None,
    };
    let json_error = |e: serde_json::Error| KeyError::Invalid(e.to_string());
    let mut token = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(json_error)?);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).map_err(json_error)?));
    let signature = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(token)
}

pub fn decode(token: &str) -> Result<Parts<'_>, Malformed> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Malformed::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed::NotThreeParts);
    };
    let b64 = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| Malformed::BadBase64);
    let header_json = b64(header)?;
    no_duplicate_members(&header_json).map_err(|e| match e {
        DuplicateCheck::Duplicate => Malformed::DuplicateMember,
        DuplicateCheck::TooDeep => Malformed::TooDeep,
        DuplicateCheck::NotAnObject => Malformed::BadHeader,
    })?;
    let header: Header = serde_json::from_slice(&header_json).map_err(|_| Malformed::BadHeader)?;
    if header.crit.is_some() {
        return Err(Malformed::Critical);
    }
    let payload = b64(payload)?;
    no_duplicate_members(&payload).map_err(|e| match e {
        DuplicateCheck::Duplicate => Malformed::DuplicateMember,
        DuplicateCheck::TooDeep => Malformed::TooDeep,
        DuplicateCheck::NotAnObject => Malformed::BadClaims,
    })?;
    // Exactly three parts: the last dot ends the signing input.
    let signing_input = token
        .rfind('.')
        .and_then(|dot| token.get(..dot))
        .ok_or(Malformed::NotThreeParts)?
        .as_bytes();
    Ok(Parts { header, signing_input, payload, signature: b64(signature)? })
}

#[derive(Debug)]
enum DuplicateCheck {
    Duplicate,
    TooDeep,
    NotAnObject,
}

/// Fails if `json` is not an object or names a member twice, at any
/// depth. serde_json keeps the last of two equal names, and a verifier and
/// an application that picked differently would disagree about who a token
/// is for or what it may do.
fn no_duplicate_members(json: &[u8]) -> Result<(), DuplicateCheck> {
    /// Any JSON value whose objects, however nested, have unique names.
    struct Unique;
    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_any(UniqueVisitor)
        }
    }
    struct UniqueVisitor;
    impl<'de> Visitor<'de> for UniqueVisitor {
        type Value = Unique;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
            let mut seen = HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key) {
                    return Err(de::Error::custom("duplicate member"));
                }
                map.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
    }
    if !json.trim_ascii_start().starts_with(b"{") {
        return Err(DuplicateCheck::NotAnObject);
    }
    match serde_json::from_slice::<Unique>(json) {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("duplicate member") => Err(DuplicateCheck::Duplicate),
        Err(e) if e.to_string().contains("recursion limit") => Err(DuplicateCheck::TooDeep),
        Err(_) => Err(DuplicateCheck::NotAnObject),
    }
}

/// The `iss` a token claims, unverified: it may only choose which keys to
/// check the token against, and those keys then decide.
pub fn unverified_issuer(token: &str) -> Option<String> {
    let parts = decode(token).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&parts.payload).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}
