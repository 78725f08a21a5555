//! Header hygiene: what a client may not send upstream, what the gateway
//! adds in its place, and what an upstream may not send back.
//!
//! An upstream can trust every `x-bulkhead-*` header it receives because
//! the gateway removes each one a client sent, in any case and spelled
//! with `_` as well as `-` (some servers read `x_bulkhead_tenant` as
//! `x-bulkhead-tenant`), before it sets its own. `Forwarded` and
//! `X-Forwarded-*` from the client are dropped too: the gateway is the
//! edge, and says who the client is itself.

use std::{
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::{
    authn::Principal,
    snapshot::{ApiEntry, TenantEntry},
};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TENANT: HeaderName = HeaderName::from_static("x-bulkhead-tenant");
pub const TENANT_ID: HeaderName = HeaderName::from_static("x-bulkhead-tenant-id");
pub const SUBJECT: HeaderName = HeaderName::from_static("x-bulkhead-subject");
pub const ROLES: HeaderName = HeaderName::from_static("x-bulkhead-roles");
pub const API: HeaderName = HeaderName::from_static("x-bulkhead-api");
/// On a tool call: the plan that grants the tool, when the tenant did not
/// register it itself.
pub const PLAN: HeaderName = HeaderName::from_static("x-bulkhead-plan");
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
        .unwrap_or_else(new_request_id)
}

/// A new request id: 32 hex digits, unique within the process and
/// unpredictable outside it. A counter alone would tell a client how many
/// requests other tenants sent between two of its own, so the counter goes
/// through two SipHash keys drawn at random for the process; a v4 UUID
/// would cost a system call per request for randomness nobody needs.
fn new_request_id() -> HeaderValue {
    static KEYS: OnceLock<(RandomState, RandomState)> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (high, low) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let bits = (u128::from(high.hash_one(n)) << 64) | u128::from(low.hash_one(n));
    let mut id = [0u8; 32];
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("unknown"))
}

/// The body's declared length, if it declares a valid one.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Frames a body the gateway rewrote by its new length: whatever framing
/// it came with (chunked, or the old length) no longer holds.
pub fn set_content_length(headers: &mut HeaderMap, length: usize) {
    headers.remove(header::TRANSFER_ENCODING);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
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

/// Whether a client may not send `name` upstream: the gateway's own
/// namespace, and the forwarding headers the gateway sets itself.
fn is_spoofable(name: &HeaderName) -> bool {
    is_bulkhead(name)
        || [&header::FORWARDED, &X_FORWARDED_FOR, &X_FORWARDED_HOST, &X_FORWARDED_PROTO]
            .contains(&name)
}

/// Removes hop-by-hop headers and those `Connection` names (keeping
/// `Upgrade` and `Connection: upgrade` when `upgrade` is kept), and, from
/// a client, the spoofable ones: in one pass over the names, allocating
/// only when something is removed.
fn strip(headers: &mut HeaderMap, upgrade: bool, from_client: bool) {
    // `Connection: upgrade` names `Upgrade` itself; a kept upgrade keeps it.
    let protocol = if upgrade { headers.get(header::UPGRADE).cloned() } else { None };
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            HOP_BY_HOP.contains(name)
                || *name == header::UPGRADE
                || named.contains(name)
                || (from_client && is_spoofable(name))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
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

/// The headers that name a client connection's peer, made once per
/// connection.
#[derive(Debug, Clone)]
pub struct Peer {
    /// `X-Forwarded-For`: the address.
    address: HeaderValue,
    /// The start of `Forwarded`, up to the host: `for=…;host="`.
    forwarded: Box<str>,
}

impl Peer {
    pub fn new(peer: SocketAddr) -> Self {
        let forwarded = match peer {
            SocketAddr::V4(v4) => format!("for={};host=\"", v4.ip()),
            SocketAddr::V6(v6) => format!("for=\"[{}]\";host=\"", v6.ip()),
        };
        let address = HeaderValue::from_maybe_shared(Bytes::from(peer.ip().to_string()))
            .unwrap_or(HeaderValue::from_static(""));
        Self { address, forwarded: forwarded.into() }
    }

    fn forwarded(&self, host: &HeaderValue) -> HeaderValue {
        let host = host.as_bytes();
        let mut value = Vec::with_capacity(self.forwarded.len() + host.len() + 12);
        value.extend_from_slice(self.forwarded.as_bytes());
        value.extend_from_slice(host);
        value.extend_from_slice(b"\";proto=http");
        HeaderValue::from_maybe_shared(Bytes::from(value)).unwrap_or(HeaderValue::from_static(""))
    }
}

/// A header value for `s`, percent-encoded where it must be.
pub fn text_value(s: &str) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(encode(s).into_owned()))
        .unwrap_or(HeaderValue::from_static(""))
}

/// What the gateway tells the upstream about a request, and vouches for.
#[derive(Debug)]
pub struct Vouched<'a> {
    pub tenant: &'a TenantEntry,
    pub api: &'a ApiEntry,
    pub principal: Option<&'a Principal>,
    pub request_id: &'a HeaderValue,
    pub peer: &'a Peer,
    pub host: &'a HeaderValue,
}

/// The request headers as the upstream receives them: the client's,
/// cleaned, then the gateway's verified context.
pub fn for_upstream(headers: &mut HeaderMap, upgrade: bool, vouched: Vouched<'_>) {
    let Vouched { tenant, api, principal, request_id, peer, host } = vouched;
    strip(headers, upgrade, true);
    headers.insert(TENANT, tenant.vouched.name.clone());
    headers.insert(TENANT_ID, tenant.vouched.id.clone());
    headers.insert(API, api.name_header.clone());
    if let Some(principal) = principal {
        headers.insert(SUBJECT, text_value(&principal.subject));
        let roles: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
        headers.insert(ROLES, text_value(&roles.join(",")));
    }
    headers.insert(REQUEST_ID, request_id.clone());
    headers.insert(header::FORWARDED, peer.forwarded(host));
    headers.insert(X_FORWARDED_FOR, peer.address.clone());
    headers.insert(X_FORWARDED_HOST, host.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    headers.insert(header::HOST, host.clone());
}

/// The response headers as the client receives them.
pub fn for_client(headers: &mut HeaderMap, upgrade: bool, request_id: &HeaderValue) {
    strip(headers, upgrade, false);
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
