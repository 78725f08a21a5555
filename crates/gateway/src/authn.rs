//! Reads: the resolved tenant and the `Authorization` header (never the
//! query string or a cookie). Adds: the [`Principal`] the credential proves,
//! for this tenant only, or `None` when no credential was presented (a
//! public API may take that; [`crate::authz`] decides).
//!
//! A realm token must verify against the tenant's own realm keys (issuer,
//! signature, `tenant_id`, expiry, revocation); an external token against
//! the tenant's trusted provider; an API key must be one of the tenant's,
//! found by its SHA-256. Another tenant's credential is simply not found,
//! and is refused like a forged one.

use std::sync::Arc;

use bulkhead_identity::{Rejected, Role, VerifiedCache, jws};
use http::{HeaderMap, header};
use sha2::{Digest, Sha256};

use crate::{
    error::{Code, Phase, Refusal},
    resolve::ResolvedTenant,
};

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    RealmToken,
    ExternalToken,
    ApiKey,
}

/// A caller proved to belong to the resolved tenant.
#[derive(Debug, Clone)]
pub struct Principal {
    pub subject: Arc<str>,
    pub roles: Vec<Role>,
    pub kind: CredentialKind,
    /// The token's audiences; empty for an API key.
    pub audience: Vec<String>,
}

fn refuse(reason: impl Into<std::borrow::Cow<'static, str>>) -> Refusal {
    Refusal::new(Phase::Authn, Code::Unauthenticated, reason)
}

/// The principal `headers` prove for `tenant` at unix time `now`.
pub fn authenticate(
    tenant: &ResolvedTenant,
    headers: &HeaderMap,
    cache: &VerifiedCache,
    now: i64,
) -> Result<Option<Principal>, Refusal> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(refuse("two Authorization headers"));
    }
    let value = value.to_str().map_err(|_| refuse("Authorization is not text"))?;
    let credential = match value.split_once(' ') {
        Some((scheme, credential)) if scheme.eq_ignore_ascii_case("bearer") => credential.trim(),
        _ => return Err(refuse("Authorization is not a Bearer credential")),
    };
    let tenant = &tenant.0;
    if credential.starts_with("bh_") {
        let hash: [u8; 32] = Sha256::digest(credential.as_bytes()).into();
        let key =
            tenant.api_keys.get(&hash).ok_or_else(|| refuse("not an API key of this tenant"))?;
        if key.expires_at.is_some_and(|at| at <= now) {
            return Err(refuse(format!("API key {} has expired", key.id)));
        }
        return Ok(Some(Principal {
            subject: format!("apikey:{}", key.name).into(),
            roles: key.roles.clone(),
            kind: CredentialKind::ApiKey,
            audience: Vec::new(),
        }));
    }
    let external = tenant
        .external
        .as_deref()
        .filter(|trust| jws::unverified_issuer(credential).as_deref() == Some(&trust.issuer));
    let (trust, kind) = match (external, tenant.realm.as_deref()) {
        (Some(trust), _) => (trust, CredentialKind::ExternalToken),
        (None, Some(realm)) => (realm, CredentialKind::RealmToken),
        (None, None) => return Err(refuse("the tenant has no realm yet")),
    };
    let verified = cache
        .verify(credential, trust, now)
        .map_err(|Rejected { reason }| refuse(format!("token refused: {reason}")))?;
    let subject = match kind {
        CredentialKind::ExternalToken => format!("{}#{}", trust.issuer, verified.subject).into(),
        _ => verified.subject.into(),
    };
    Ok(Some(Principal { subject, roles: verified.roles, kind, audience: verified.audience }))
}
