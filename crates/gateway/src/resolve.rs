//! Reads: the request's host (the Host header, or `:authority` in HTTP/2).
//! Adds: the tenant it names, from the snapshot. `{tenant}.{base-domain}`
//! in any case, with a port or a trailing dot, names the tenant; anything
//! else (an IP literal, a nested name, another domain, `X-Forwarded-Host`,
//! which is never read) names nobody, and nobody looks like an unknown
//! tenant.

use std::sync::Arc;

use http::{HeaderValue, Request, header};

use crate::{
    error::{Code, Phase, Refusal},
    snapshot::{Snapshot, TenantEntry},
};

/// The tenant a request's host names, served and not suspended.
#[derive(Debug, Clone)]
pub struct ResolvedTenant(pub Arc<TenantEntry>);

fn unknown(reason: &'static str) -> Refusal {
    Refusal::new(Phase::Resolve, Code::NotFound, reason)
}

/// The tenant `request`'s host names, and that host as the upstream is
/// told it (`Host`, `X-Forwarded-Host`, `Forwarded`).
pub fn tenant<B>(
    snapshot: &Snapshot,
    request: &Request<B>,
) -> Result<(ResolvedTenant, HeaderValue), Refusal> {
    let value = match (request.headers().get(header::HOST), request.uri().authority()) {
        (Some(host), Some(authority)) if host.as_bytes() != authority.as_str().as_bytes() => {
            return Err(Refusal::new(
                Phase::Framing,
                Code::BadRequest,
                "Host header and :authority differ",
            ));
        }
        (Some(host), _) => host.clone(),
        (None, Some(authority)) => {
            HeaderValue::from_str(authority.as_str()).map_err(|_| unknown("host is not text"))?
        }
        (None, None) => return Err(unknown("no host")),
    };
    let host = value.to_str().map_err(|_| unknown("host is not text"))?;
    let name =
        tenant_label(host, &snapshot.domain.base_domain).ok_or(unknown("host names no tenant"))?;
    let entry = snapshot.tenant(&name).ok_or(unknown("no such tenant"))?;
    if entry.suspended {
        return Err(Refusal::new(Phase::Resolve, Code::TenantSuspended, "tenant is suspended"));
    }
    Ok((ResolvedTenant(Arc::clone(entry)), value))
}

/// The tenant label of `host` under `base_domain`: lower case, port and
/// trailing dot removed; `None` unless exactly one label precedes the base
/// domain.
pub fn tenant_label(host: &str, base_domain: &str) -> Option<String> {
    let host = match host.rsplit_once(':') {
        // An IPv6 literal ends in `]` or has colons of its own; neither names a tenant.
        Some((name, port)) if !name.contains(':') && !name.contains(']') => {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
                return None;
            }
            name
        }
        Some(_) => return None,
        None => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let label = host.strip_suffix(base_domain)?.strip_suffix('.')?;
    let valid = !label.is_empty()
        && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    valid.then(|| label.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised_and_nothing_else_names_a_tenant() {
        let cases = [
            ("acme.localhost", Some("acme")),
            ("ACME.LocalHost", Some("acme")),
            ("acme.localhost.", Some("acme")),
            ("acme.localhost:8080", Some("acme")),
            ("acme.localhost.:8080", Some("acme")),
            ("localhost", None),
            (".localhost", None),
            ("a.acme.localhost", None),
            ("acme.localhost.evil.com", None),
            ("acmelocalhost", None),
            ("127.0.0.1:8080", None),
            ("[::1]:8080", None),
            ("acme.localhost:", None),
            ("acme.localhost:80x", None),
            ("acme.localhost:8080:80", None),
            ("ac_me.localhost", None),
        ];
        for (host, expected) in cases {
            assert_eq!(tenant_label(host, "localhost").as_deref(), expected, "{host}");
        }
    }
}
