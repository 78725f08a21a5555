//! Verifying a token for one tenant: the tenant comes from the caller (the
//! host the gateway resolved, the path of a control API call, a trust
//! configuration), never from the token. Every failure is the same
//! [`Rejected`] to the caller; the reason is for the log and the event
//! record.

use std::{collections::HashMap, fmt, sync::Mutex};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{
    jws::{self, Malformed},
    keys::{Algorithm, VerifyingKey},
    roles::Role,
};

/// Verifying keys by `kid`. A realm or provider has a handful of keys, so
/// they are kept in a vector: a hash map's table for one key is several
/// times the key's size, and a gateway holds one set per tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet(Vec<(String, VerifyingKey)>);

impl KeySet {
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.0.iter().find(|(k, _)| k == kid).map(|(_, key)| key)
    }

    /// Adds `key` under `kid`, replacing a key of the same kid.
    pub fn insert(&mut self, kid: String, key: VerifyingKey) {
        match self.0.iter_mut().find(|(k, _)| *k == kid) {
            Some((_, old)) => *old = key,
            None => self.0.push((kid, key)),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, VerifyingKey)> for KeySet {
    fn from_iter<I: IntoIterator<Item = (String, VerifyingKey)>>(keys: I) -> Self {
        let mut set = KeySet::default();
        for (kid, key) in keys {
            set.insert(kid, key);
        }
        set.0.shrink_to_fit();
        set
    }
}

impl<const N: usize> From<[(String, VerifyingKey); N]> for KeySet {
    fn from(keys: [(String, VerifyingKey); N]) -> Self {
        keys.into_iter().collect()
    }
}

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: i64 = 30;

/// Whose tokens a tenant accepts, and how to read them.
#[derive(Debug, Clone)]
pub struct Trust {
    pub tenant_id: Uuid,
    /// `iss` must equal this exactly.
    pub issuer: String,
    /// The keys that may have signed, by `kid`.
    pub keys: KeySet,
    /// Algorithms accepted; never `none`, never HMAC.
    pub algorithms: &'static [Algorithm],
    /// When set, `aud` must be or contain it.
    pub audience: Option<String>,
    /// When set, tokens issued at or before this unix time are refused:
    /// the realm revoked every token it had issued until then.
    pub not_before: Option<i64>,
    pub claims: ClaimMapping,
}

/// Where the subject and roles are in a token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimMapping {
    /// A Bulkhead realm token: `sub`, `roles`, and a `tenant_id` that must
    /// be the tenant's.
    Realm,
    /// An external identity provider's token: the tenant is the trust's
    /// own; `subject` and `roles` name claims, dot-separated for nested
    /// ones (`realm_access.roles`). The roles claim is a string or an array
    /// of strings, each value taken whole; only values that `role_map`
    /// names grant a role, so a provider's generic `admin` group means
    /// nothing until the tenant says what it means.
    /// Boxed, so that the many realm trusts do not carry its size.
    External(Box<ExternalClaims>),
}

/// Where an external provider's token names its subject and roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalClaims {
    pub subject: String,
    pub roles: String,
    pub role_map: HashMap<String, Role>,
}

/// A verified principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub tenant_id: Uuid,
    pub subject: String,
    pub roles: Vec<Role>,
    pub expires_at: i64,
    pub issued_at: Option<i64>,
    pub kid: String,
    /// The token's `aud`, as a list: a gateway route may require one of
    /// its own after the token verified for the tenant.
    pub audience: Vec<String>,
}

impl Verified {
    pub fn names_audience(&self, audience: &str) -> bool {
        self.audience.iter().any(|a| a == audience)
    }
}

/// Why a token was refused. Callers log it and answer with one uniform
/// 401 whatever it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Malformed(Malformed),
    Algorithm(String),
    NoKid,
    UnknownKid(String),
    KeyAlgorithm,
    Signature,
    Issuer,
    Tenant,
    Expired,
    NotYetValid,
    Audience,
    Type,
    Revoked,
    Claim(&'static str),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Malformed(m) => write!(f, "malformed: {m}"),
            Reason::Algorithm(alg) => write!(f, "algorithm {alg:?} not accepted"),
            Reason::NoKid => f.write_str("no kid"),
            Reason::UnknownKid(kid) => write!(f, "kid {kid:?} is not one of the tenant's keys"),
            Reason::KeyAlgorithm => f.write_str("the key's algorithm is not the header's"),
            Reason::Signature => f.write_str("bad signature"),
            Reason::Issuer => f.write_str("wrong issuer"),
            Reason::Tenant => f.write_str("tenant_id is another tenant's"),
            Reason::Expired => f.write_str("expired"),
            Reason::NotYetValid => f.write_str("not yet valid"),
            Reason::Audience => f.write_str("wrong audience"),
            Reason::Type => f.write_str("typ is neither JWT nor at+jwt"),
            Reason::Revoked => f.write_str("issued before the realm revoked its tokens"),
            Reason::Claim(claim) => write!(f, "claim {claim} missing or malformed"),
        }
    }
}

/// The one error a caller sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: Reason,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid token")
    }
}

impl std::error::Error for Rejected {}

fn reject<T>(reason: Reason) -> Result<T, Rejected> {
    Err(Rejected { reason })
}

/// Verifies `token` for the tenant `trust` describes, at unix time `now`.
pub fn verify(token: &str, trust: &Trust, now: i64) -> Result<Verified, Rejected> {
    let parts = jws::decode(token).map_err(|m| Rejected { reason: Reason::Malformed(m) })?;
    let alg = match Algorithm::parse(&parts.header.alg) {
        Ok(alg) if trust.algorithms.contains(&alg) => alg,
        _ => return reject(Reason::Algorithm(parts.header.alg.clone())),
    };
    let Some(kid) = parts.header.kid.as_deref() else { return reject(Reason::NoKid) };
    let Some(key) = trust.keys.get(kid) else {
        return reject(Reason::UnknownKid(kid.to_owned()));
    };
    if key.alg() != alg {
        return reject(Reason::KeyAlgorithm);
    }
    if let Some(typ) = &parts.header.typ {
        let typ = typ.to_ascii_lowercase();
        let typ = typ.strip_prefix("application/").unwrap_or(&typ);
        if typ != "jwt" && typ != "at+jwt" {
            return reject(Reason::Type);
        }
    }
    if !key.verify(alg, parts.signing_input, &parts.signature) {
        return reject(Reason::Signature);
    }
    let claims: Map<String, Value> = serde_json::from_slice(&parts.payload)
        .map_err(|_| Rejected { reason: Reason::Malformed(Malformed::BadClaims) })?;

    if claims.get("iss").and_then(Value::as_str) != Some(trust.issuer.as_str()) {
        return reject(Reason::Issuer);
    }
    let exp = number(&claims, "exp")?.ok_or(Rejected { reason: Reason::Claim("exp") })?;
    if exp.saturating_add(LEEWAY_SECS) <= now {
        return reject(Reason::Expired);
    }
    if let Some(nbf) = number(&claims, "nbf")?
        && nbf.saturating_sub(LEEWAY_SECS) > now
    {
        return reject(Reason::NotYetValid);
    }
    let issued_at = number(&claims, "iat")?;
    if !not_revoked(trust, issued_at) {
        return reject(Reason::Revoked);
    }
    let audiences: Vec<String> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(auds)) => {
            auds.iter().filter_map(Value::as_str).map(str::to_owned).collect()
        }
        _ => Vec::new(),
    };
    if let Some(audience) = &trust.audience
        && !audiences.iter().any(|a| a == audience)
    {
        return reject(Reason::Audience);
    }
    let (subject, roles) = match &trust.claims {
        ClaimMapping::Realm => {
            let tenant = claims.get("tenant_id").and_then(Value::as_str);
            if tenant.and_then(|t| Uuid::parse_str(t).ok()) != Some(trust.tenant_id) {
                return reject(Reason::Tenant);
            }
            let roles = match claims.get("roles") {
                Some(Value::Array(roles)) => roles
                    .iter()
                    .map(|r| r.as_str().and_then(Role::parse))
                    .collect::<Option<Vec<_>>>()
                    .ok_or(Rejected { reason: Reason::Claim("roles") })?,
                None => Vec::new(),
                Some(_) => return reject(Reason::Claim("roles")),
            };
            (string(&claims, "sub")?, roles)
        }
        ClaimMapping::External(external) => {
            let ExternalClaims { subject, roles, role_map } = &**external;
            let subject = lookup(&claims, subject)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or(Rejected { reason: Reason::Claim("subject") })?
                .to_owned();
            let values: Vec<&str> = match lookup(&claims, roles) {
                Some(Value::Array(values)) => values.iter().filter_map(Value::as_str).collect(),
                Some(Value::String(value)) => vec![value.as_str()],
                _ => Vec::new(),
            };
            let mut roles: Vec<Role> =
                values.iter().filter_map(|v| role_map.get(*v).copied()).collect();
            roles.sort();
            roles.dedup();
            (subject, roles)
        }
    };
    Ok(Verified {
        tenant_id: trust.tenant_id,
        subject,
        roles,
        expires_at: exp,
        issued_at,
        kid: kid.to_owned(),
        audience: audiences,
    })
}

fn not_revoked(trust: &Trust, issued_at: Option<i64>) -> bool {
    trust.not_before.is_none_or(|cutoff| issued_at.is_some_and(|iat| iat > cutoff))
}

/// A NumericDate claim (RFC 7519 §2): seconds, possibly fractional.
fn number(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, Rejected> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(Rejected { reason: Reason::Claim(name) }),
        Some(_) => reject(Reason::Claim(name)),
    }
}

fn string(claims: &Map<String, Value>, name: &'static str) -> Result<String, Rejected> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or(Rejected { reason: Reason::Claim(name) })
}

fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// Tokens already verified, by a hash of the tenant, issuer, audience and token,
/// until they expire: verifying a signature costs tens of microseconds, a
/// lookup well under one. Each entry remembers the fingerprint of the key
/// that verified it, so it holds only while that very key is trusted under
/// its kid.
#[derive(Debug)]
pub struct VerifiedCache {
    /// By cache key: the answer, and the fingerprint of the key that gave it.
    entries: Mutex<HashMap<[u8; 32], (Verified, Fingerprint)>>,
    capacity: usize,
}

type Fingerprint = [u8; 32];

impl VerifiedCache {
    pub fn new(capacity: usize) -> Self {
        Self { entries: Mutex::default(), capacity }
    }

    fn key(token: &str, trust: &Trust) -> [u8; 32] {
        Sha256::new()
            .chain_update(trust.tenant_id.as_bytes())
            .chain_update(trust.issuer.as_bytes())
            .chain_update([0])
            // One token may pass for one audience and not another.
            .chain_update(trust.audience.as_deref().unwrap_or_default().as_bytes())
            .chain_update([0])
            .chain_update(token.as_bytes())
            .finalize()
            .into()
    }

    /// [`verify`], answered from the cache when it can be: a cached token
    /// still needs its key to be trusted and its `exp` to be ahead.
    pub fn verify(&self, token: &str, trust: &Trust, now: i64) -> Result<Verified, Rejected> {
        let key = Self::key(token, trust);
        if let Ok(entries) = self.entries.lock()
            && let Some((hit, signer)) = entries.get(&key)
            && hit.expires_at.saturating_add(LEEWAY_SECS) > now
            && trust.keys.get(&hit.kid).is_some_and(|k| k.fingerprint() == *signer)
            && not_revoked(trust, hit.issued_at)
        {
            return Ok(hit.clone());
        }
        let verified = verify(token, trust, now)?;
        let Some(signer) = trust.keys.get(&verified.kid).map(VerifyingKey::fingerprint) else {
            return Ok(verified);
        };
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= self.capacity {
                entries.retain(|_, (v, _)| v.expires_at.saturating_add(LEEWAY_SECS) > now);
                if entries.len() >= self.capacity {
                    entries.clear();
                }
            }
            entries.insert(key, (verified.clone(), signer));
        }
        Ok(verified)
    }

    /// Drops every cached token of a tenant (its realm changed or went).
    pub fn forget_tenant(&self, tenant: Uuid) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, (v, _)| v.tenant_id != tenant);
        }
    }
}
