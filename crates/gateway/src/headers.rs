//! Header hygiene: what a client may not send upstream, what the gateway
//! adds in its place, and what an upstream may not send back.
//!
//! An upstream can trust every `x-bulkhead-*` header it receives because
//! the gateway removes each one a client sent, in any case and spelled
//! with `_` as well as `-` (some servers read `x_bulkhead_tenant` as
//! `x-bulkhead-tenant`), before it sets its own. `Forwarded` and
//! `X-Forwarded-*` from the client are dropped too: the gateway is the
//! edge, and says who the client is itself.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::{authn::Principal, snapshot::TenantEntry};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TENANT: HeaderName = HeaderName::from_static("x-bulkhead-tenant");
pub const TENANT_ID: HeaderName = HeaderName::from_static("x-bulkhead-tenant-id");
pub const SUBJECT: HeaderName = HeaderName::from_static("x-bulkhead-subject");
pub const ROLES: HeaderName = HeaderName::from_static("x-bulkhead-roles");
pub const API: HeaderName = HeaderName::from_static("x-bulkhead-api");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Hop-by-hop headers (RFC 9110 §7.6.1), and the older ones proxies still
/// see.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// The client's `x-request-id` when it is well formed (1 to 128 of
/// `A-Z a-z 0-9 . _ : -`), else a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&REQUEST_ID)
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(b))
        })
        .cloned()
        .unwrap_or_else(|| {
            let id = uuid::Uuid::new_v4().simple().to_string();
            HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("unknown"))
        })
}

/// Whether the request asks to switch protocols (a WebSocket).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, and the headers `Connection` names; keeps
/// `Upgrade` and `Connection: upgrade` when `upgrade` is kept.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // `Connection: upgrade` names `Upgrade` itself; a kept upgrade keeps it.
    let protocol = if upgrade { headers.get(header::UPGRADE).cloned() } else { None };
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if let Some(protocol) = protocol {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

fn is_bulkhead(name: &HeaderName) -> bool {
    let name = name.as_str().as_bytes();
    name.len() >= 11
        && name[..11].iter().map(|b| if *b == b'_' { b'-' } else { *b }).eq(*b"x-bulkhead-")
}

/// What the gateway tells the upstream about a request, and vouches for.
#[derive(Debug)]
pub struct Vouched<'a> {
    pub tenant: &'a TenantEntry,
    pub api: &'a str,
    pub principal: Option<&'a Principal>,
    pub request_id: &'a HeaderValue,
    pub peer: SocketAddr,
    pub host: &'a HeaderValue,
}

/// The request headers as the upstream receives them: the client's,
/// cleaned, then the gateway's verified context.
pub fn for_upstream(headers: &mut HeaderMap, upgrade: bool, vouched: Vouched<'_>) {
    let Vouched { tenant, api, principal, request_id, peer, host } = vouched;
    strip_hop_by_hop(headers, upgrade);
    let spoofable: Vec<HeaderName> = headers.keys().filter(|n| is_bulkhead(n)).cloned().collect();
    for name in spoofable {
        headers.remove(&name);
    }
    for name in [header::FORWARDED, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO] {
        headers.remove(name);
    }
    let value = |s: &str| HeaderValue::from_str(&encode(s)).unwrap_or(HeaderValue::from_static(""));
    headers.insert(TENANT, value(&tenant.name));
    headers.insert(TENANT_ID, value(&tenant.id.to_string()));
    headers.insert(API, value(api));
    if let Some(principal) = principal {
        headers.insert(SUBJECT, value(&principal.subject));
        let roles: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
        headers.insert(ROLES, value(&roles.join(",")));
    }
    headers.insert(REQUEST_ID, request_id.clone());
    let for_ = match peer {
        SocketAddr::V4(v4) => format!("{}", v4.ip()),
        SocketAddr::V6(v6) => format!("\"[{}]\"", v6.ip()),
    };
    let host_text = host.to_str().unwrap_or_default();
    headers
        .insert(header::FORWARDED, value(&format!("for={for_};host=\"{host_text}\";proto=http")));
    headers.insert(X_FORWARDED_FOR, value(&peer.ip().to_string()));
    headers.insert(X_FORWARDED_HOST, host.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    headers.insert(header::HOST, host.clone());
}

/// The response headers as the client receives them.
pub fn for_client(headers: &mut HeaderMap, upgrade: bool, request_id: &HeaderValue) {
    strip_hop_by_hop(headers, upgrade);
    headers.insert(REQUEST_ID, request_id.clone());
}

/// `s` with every byte outside visible ASCII and space, and `%`,
/// percent-encoded: an external provider's subject may hold anything.
fn encode(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'%') {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_the_namespace_is_caught() {
        for name in ["x-bulkhead-tenant", "x_bulkhead_tenant", "x-bulkhead_roles", "x_bulkhead-x"] {
            assert!(is_bulkhead(&HeaderName::from_bytes(name.as_bytes()).unwrap()), "{name}");
        }
        for name in ["x-bulkhea", "x-bulkheadx", "bulkhead-tenant", "x-request-id"] {
            assert!(!is_bulkhead(&HeaderName::from_bytes(name.as_bytes()).unwrap()), "{name}");
        }
    }

    #[test]
    fn request_ids_are_kept_only_when_well_formed() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID, HeaderValue::from_static("a b"));
        assert_ne!(request_id(&headers), "a b");
        assert_eq!(encode("ä%\n"), "%C3%A4%25%0A");
    }
}
