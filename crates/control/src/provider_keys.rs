//! The signing keys of tenants' external identity providers: fetched from
//! the JWKS URL a tenant configured, cached, refetched when a token names a
//! kid the cache lacks.
//!
//! A JWKS URL is input from a tenant, and fetching it is a request from
//! inside the platform's network, so the fetch is held to what a public
//! identity provider needs: https to a public address, no redirects, no
//! proxies, a size cap. Plain http and private addresses are allowed only
//! for hosts the operator lists (`[identity] insecure_jwks_hosts`), for a
//! provider on the operator's own network or a test.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bulkhead_identity::{Jwk, VerifyingKey};
use reqwest::{
    Url,
    dns::{Addrs, Name, Resolve, Resolving},
};
use uuid::Uuid;

/// How long a provider's JWKS is used before it is fetched again.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(600);
/// The least time between two fetches of one provider's JWKS, failed or
/// not: a stream of tokens with made-up kids must not turn Bulkhead into a
/// client hammering the provider.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(5);
/// The largest JWKS read; real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 256 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

use bulkhead_identity::KeySet;

/// Providers' keys, per tenant, and the one client that fetches them.
#[derive(Debug)]
pub struct ProviderKeys {
    http: reqwest::Client,
    insecure_hosts: Arc<HashSet<String>>,
    /// One entry per tenant; its async lock makes concurrent requests that
    /// need a fetch wait for one fetch instead of each making their own,
    /// without one tenant's slow provider holding up another tenant.
    tenants: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<Cached>>>>,
}

#[derive(Debug, Default)]
struct Cached {
    url: String,
    keys: KeySet,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
}

impl ProviderKeys {
    /// `insecure_hosts` may be reached over plain http and at private
    /// addresses.
    pub fn new(insecure_hosts: &[String]) -> Result<Self, String> {
        let insecure_hosts: Arc<HashSet<String>> =
            Arc::new(insecure_hosts.iter().map(|h| h.to_ascii_lowercase()).collect());
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(PublicOnly { insecure_hosts: Arc::clone(&insecure_hosts) })
            .build()
            .map_err(|e| format!("cannot build the HTTP client for identity providers: {e}"))?;
        Ok(Self { http, insecure_hosts, tenants: Mutex::default() })
    }

    /// Whether `url` may be fetched at all; the error says why not and how
    /// to fix it.
    pub fn check_url(&self, url: &str) -> Result<Url, String> {
        let parsed = Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(format!("{url:?} carries credentials; give a URL without them"));
        }
        let insecure = self.insecure_hosts.contains(host);
        match parsed.scheme() {
            "https" => {}
            "http" if insecure => {}
            "http" => {
                return Err(format!(
                    "{url:?} is plain http; use https, or have the operator list {host:?} in \
                     [identity] insecure_jwks_hosts"
                ));
            }
            other => return Err(format!("{url:?} has scheme {other:?}; use https")),
        }
        if let Ok(ip) = host.parse::<IpAddr>()
            && !insecure
            && !is_public(ip)
        {
            return Err(format!(
                "{url:?} points at a private or reserved address; use a public provider, or \
                 have the operator list {host:?} in [identity] insecure_jwks_hosts"
            ));
        }
        Ok(parsed)
    }

    /// Fetches `url` now, outside the cache: to check a trust before it is
    /// stored. Errors name the kind of failure, never the network's detail.
    pub async fn fetch(&self, url: &str) -> Result<KeySet, String> {
        let url = self.check_url(url)?;
        let mut response = self.http.get(url.clone()).send().await.map_err(|e| {
            tracing::warn!(%url, error = %e, "fetching a provider's JWKS failed");
            if e.is_timeout() {
                "the JWKS URL did not answer in time".to_owned()
            } else {
                "the JWKS URL could not be reached (a public https address is required)".to_owned()
            }
        })?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(format!("the JWKS URL answered {}, not 200", response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|_| "reading the JWKS failed")? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWKS is larger than {} KiB", MAX_JWKS_BYTES / 1024));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body)
    }

    /// The keys of the provider at `url` for `tenant`: cached ones while
    /// fresh; fetched when missing, older than [`JWKS_MAX_AGE`], or when
    /// `refetch` (a token named an unknown kid), never more often than
    /// [`JWKS_REFETCH_INTERVAL`]. When a fetch fails, the last good keys go
    /// on serving.
    pub async fn keys(&self, tenant: Uuid, url: &str, refetch: bool) -> Result<KeySet, String> {
        let entry = {
            let mut tenants = self.tenants.lock().map_err(|_| "provider key cache poisoned")?;
            Arc::clone(tenants.entry(tenant).or_default())
        };
        let mut cached = entry.lock().await;
        if cached.url != url {
            *cached = Cached { url: url.to_owned(), ..Cached::default() };
        }
        let since = |at: Option<Instant>| at.map_or(Duration::MAX, |at| at.elapsed());
        let stale = cached.keys.is_empty() || since(cached.fetched_at) >= JWKS_MAX_AGE || refetch;
        if stale && since(cached.attempted_at) >= JWKS_REFETCH_INTERVAL {
            cached.attempted_at = Some(Instant::now());
            match self.fetch(url).await {
                Ok(keys) => {
                    cached.keys = keys;
                    cached.fetched_at = cached.attempted_at;
                }
                Err(error) if !cached.keys.is_empty() => {
                    tracing::warn!(%tenant, %error, "serving a provider's last good keys");
                }
                Err(error) => return Err(error),
            }
        }
        if cached.keys.is_empty() {
            return Err("the provider's JWKS could not be fetched recently".into());
        }
        Ok(cached.keys.clone())
    }

    /// Seeds the cache with keys just fetched for a new trust.
    pub async fn store(&self, tenant: Uuid, url: &str, keys: KeySet) {
        let entry = match self.tenants.lock() {
            Ok(mut tenants) => Arc::clone(tenants.entry(tenant).or_default()),
            Err(_) => return,
        };
        let now = Some(Instant::now());
        *entry.lock().await =
            Cached { url: url.to_owned(), keys, fetched_at: now, attempted_at: now };
    }

    pub fn forget(&self, tenant: Uuid) {
        if let Ok(mut tenants) = self.tenants.lock() {
            tenants.remove(&tenant);
        }
    }
}

/// The signing keys of a JWKS that Bulkhead can verify with: EdDSA, ES256
/// and RS256 (2048 bits or more) keys with a kid, not marked for
/// encryption. A kid given twice is
/// an error: which key would it name?
fn parse_jwks(body: &[u8]) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set =
        serde_json::from_slice(body).map_err(|_| "the answer is not a JWKS (RFC 7517)")?;
    let mut keys = KeySet::default();
    let mut kids = HashSet::new();
    for value in set.keys {
        let kid = value.get("kid").and_then(serde_json::Value::as_str).map(str::to_owned);
        if let Some(kid) = &kid
            && !kids.insert(kid.clone())
        {
            return Err(format!("the JWKS has two keys with kid {kid:?}"));
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else { continue };
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let (Some(kid), Ok(key)) = (kid, VerifyingKey::from_jwk(&jwk)) else { continue };
        keys.insert(kid, key);
    }
    if keys.is_empty() {
        return Err(
            "the JWKS holds no EdDSA, ES256 or RS256 (2048 bits or more) signing key with a kid"
                .into(),
        );
    }
    Ok(keys)
}

/// Resolves names for the provider client, dropping addresses that are
/// not public unless the operator allowed the host. Checking here, not
/// before the request, means a name cannot pass the check and then
/// resolve elsewhere when connecting.
struct PublicOnly {
    insecure_hosts: Arc<HashSet<String>>,
}

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let insecure = self.insecure_hosts.contains(&host);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| insecure || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Whether `ip` is a global unicast address, not loopback, private,
/// link-local, shared, reserved or documentation space.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let first = v6.segments()[0];
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || first & 0xfe00 == 0xfc00 // unique local
                || first & 0xffc0 == 0xfe80 // link-local
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || v6.segments()[..6] == [0; 6]) // IPv4-compatible, deprecated
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_global_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "2001:db8::1",
        ] {
            let address: IpAddr = private.parse().unwrap_or_else(|e| panic!("{private}: {e}"));
            assert!(!is_public(address), "{private}");
        }
        for public in ["1.1.1.1", "8.8.8.8", "2606:4700::1111"] {
            let address: IpAddr = public.parse().unwrap_or_else(|e| panic!("{public}: {e}"));
            assert!(is_public(address), "{public}");
        }
    }

    #[test]
    fn urls_are_held_to_https_and_public_addresses() {
        let keys = ProviderKeys::new(&["idp.internal".into()]).unwrap_or_else(|e| panic!("{e}"));
        assert!(keys.check_url("https://idp.example/jwks").is_ok());
        assert!(keys.check_url("http://idp.internal:8080/jwks").is_ok());
        for (refused, why) in [
            ("http://idp.example/jwks", "is plain http"),
            ("https://127.0.0.1/jwks", "private or reserved address"),
            ("https://[::1]/jwks", "private or reserved address"),
            ("https://169.254.169.254/latest/meta-data", "private or reserved address"),
            ("https://user:pass@idp.example/jwks", "carries credentials"),
            ("file:///etc/passwd", "has scheme \"file\""),
            ("not a url", "is not a URL"),
        ] {
            let error = keys.check_url(refused).err().unwrap_or_else(|| panic!("{refused}"));
            assert!(error.contains(why), "{refused}: {error}");
        }
    }

    #[test]
    fn a_jwks_keeps_signing_keys_and_refuses_duplicate_kids() {
        let jwk = |kid: &str, use_: &str| {
            serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "kid": kid, "use": use_,
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
            })
        };
        let set = |keys: Vec<serde_json::Value>| serde_json::json!({ "keys": keys }).to_string();
        let keys = parse_jwks(set(vec![jwk("a", "sig"), jwk("b", "enc")]).as_bytes());
        assert_eq!(keys.map(|k| k.len()), Ok(1));
        let refused = |body: &[u8]| parse_jwks(body).err().unwrap_or_default();
        let twice = set(vec![jwk("a", "sig"), jwk("a", "sig")]);
        assert!(refused(twice.as_bytes()).contains("two keys with kid \"a\""));
        let no_signing = set(vec![jwk("b", "enc")]);
        assert!(refused(no_signing.as_bytes()).contains("holds no EdDSA, ES256 or RS256"));
        assert!(refused(b"<html>").contains("is not a JWKS"));
    }
}
