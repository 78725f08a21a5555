//! A tenant's APIs: the contracts its gateway routes by. Each names a path
//! prefix on the tenant's host, the upstreams behind it, and the policy a
//! request must meet on its way there.
//!
//! Everything here is validated when an API is created or applied, so the
//! gateway builds its routes from values that cannot be wrong.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

use crate::{Role, label::is_simple_label};

/// Why an API definition was refused; each message names the field and the
/// rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct InvalidApi {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidApi {
    InvalidApi { field, message: message.into() }
}

/// An API's name, unique within its tenant: 1 to 40 characters of a-z,
/// 0-9 and '-'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "orders")]
pub struct ApiName(String);

impl ApiName {
    pub fn parse(name: &str) -> Result<Self, InvalidApi> {
        if is_simple_label(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(invalid(
                "name",
                format!(
                    "{name:?} is not a valid API name; use 1 to 40 characters of a-z, 0-9 and \
                     '-', starting and ending with a letter or digit"
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApiName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ApiName {
    type Error = InvalidApi;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ApiName> for String {
    fn from(value: ApiName) -> Self {
        value.0
    }
}

/// The path an API is mounted at: `/` or segments of unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`), no `.` or `..` segment, no empty segment, no
/// trailing `/`. A request matches it only on a segment boundary: `/echo`
/// matches `/echo` and `/echo/x`, never `/echoes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "/orders")]
pub struct PathPrefix(String);

impl PathPrefix {
    pub fn parse(prefix: &str) -> Result<Self, InvalidApi> {
        let rule = "a prefix is `/` or `/segment[/segment...]` of A-Z, a-z, 0-9, '-', '.', '_' \
                    and '~', without `.` or `..` segments, empty segments or a trailing `/`";
        if prefix == "/" {
            return Ok(Self(prefix.to_owned()));
        }
        let Some(rest) = prefix.strip_prefix('/') else {
            return Err(invalid("prefix", format!("{prefix:?} does not start with '/'; {rule}")));
        };
        if prefix.len() > 200 {
            return Err(invalid("prefix", "is longer than 200 characters"));
        }
        for segment in rest.split('/') {
            let valid = !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment.chars().all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c));
            if !valid {
                return Err(invalid("prefix", format!("{prefix:?} is not a valid prefix; {rule}")));
            }
        }
        Ok(Self(prefix.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `path` (already canonical) is under this prefix, on a
    /// segment boundary.
    pub fn matches(&self, path: &str) -> bool {
        if self.0 == "/" {
            return path.starts_with('/');
        }
        path.strip_prefix(self.0.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

impl TryFrom<String> for PathPrefix {
    type Error = InvalidApi;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PathPrefix> for String {
    fn from(value: PathPrefix) -> Self {
        value.0
    }
}

/// Where an API's requests go: `http://host:port` (a host name or an IP
/// literal, no path), `unix:/absolute/path` for a socket on this machine,
/// or `app:NAME` for the workers of the tenant's own app of that name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Upstream {
    /// `host:port`, as written.
    Http(String),
    Unix(String),
    /// The tenant's app: resolved by the control plane into its workers.
    App(crate::AppName),
    /// One worker's socket, and the Unix user that must be listening on it
    /// (the tenant's): what `App` becomes in the gateway's configuration.
    /// Never parsed from a spec.
    Worker {
        path: String,
        uid: u32,
    },
}

impl Upstream {
    pub fn parse(upstream: &str) -> Result<Self, InvalidApi> {
        let rule = "an upstream is http://host:port (no path, query or credentials), \
                    unix:/absolute/path or app:NAME";
        if let Some(app) = upstream.strip_prefix("app:") {
            return crate::AppName::parse(app)
                .map(Self::App)
                .map_err(|e| invalid("upstreams", format!("{upstream:?}: {}", e.message)));
        }
        if let Some(path) = upstream.strip_prefix("unix:") {
            if !path.starts_with('/') || path.contains('\0') || path.len() > 107 {
                return Err(invalid(
                    "upstreams",
                    format!(
                        "{upstream:?}: a unix socket needs an absolute path of at most 107 bytes"
                    ),
                ));
            }
            return Ok(Self::Unix(path.to_owned()));
        }
        let Some(authority) = upstream.strip_prefix("http://") else {
            return Err(invalid("upstreams", format!("{upstream:?}: {rule}")));
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => (host, port),
            _ => {
                return Err(invalid(
                    "upstreams",
                    format!("{upstream:?} has no port; {rule} (http://localhost:8000, say)"),
                ));
            }
        };
        let port_valid = port.parse::<u16>().is_ok_and(|p| p != 0);
        let host_valid = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'))
        {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            host.len() <= 253
                && host.split('.').all(|label| {
                    (1..=63).contains(&label.len())
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
        };
        if !port_valid || !host_valid {
            return Err(invalid("upstreams", format!("{upstream:?}: {rule}")));
        }
        Ok(Self::Http(authority.to_ascii_lowercase()))
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Http(authority) => write!(f, "http://{authority}"),
            Upstream::Unix(path) => write!(f, "unix:{path}"),
            Upstream::App(name) => write!(f, "app:{name}"),
            Upstream::Worker { path, uid } => write!(f, "worker:{uid}:{path}"),
        }
    }
}

impl TryFrom<String> for Upstream {
    type Error = InvalidApi;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Upstream> for String {
    fn from(value: Upstream) -> Self {
        value.to_string()
    }
}

/// How the gateway talks to an API's upstreams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 without TLS, by prior knowledge.
    H2c,
}

/// Whether an API needs a credential. `public` must be said: an API
/// defined without `auth` requires one, and `bulkhead verify` lists the
/// public ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApiAuth {
    #[default]
    Required,
    Public,
}

/// What of an API's traffic goes to the tenant's audit stream. Usage
/// counters see every request whatever this says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuditLevel {
    Off,
    /// Refused requests only.
    #[default]
    Denied,
    All,
}

/// A request rate: a sustained pace and how many may come at once above
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct Rate {
    #[schema(minimum = 1, maximum = 60_000_000)]
    pub requests_per_minute: u32,
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub burst: u32,
}

crate::from_a_mapping_only!(Rate);

impl Rate {
    /// A million requests a second.
    pub const MAX_PER_MINUTE: u32 = 60_000_000;
    pub const MAX_BURST: u32 = 1_000_000;

    pub fn validate(&self, field: &'static str) -> Result<(), InvalidApi> {
        if !(1..=Self::MAX_PER_MINUTE).contains(&self.requests_per_minute)
            || !(1..=Self::MAX_BURST).contains(&self.burst)
        {
            return Err(invalid(
                field,
                format!(
                    "requests_per_minute must be 1 to {} and burst 1 to {}",
                    Self::MAX_PER_MINUTE,
                    Self::MAX_BURST
                ),
            ));
        }
        Ok(())
    }
}

/// How long the gateway waits on an API's upstream, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// To open a connection.
    pub connect_ms: u64,
    /// From sending the request to the response's headers.
    pub response_ms: u64,
    /// Longest silence on a body, either way, once the response started.
    pub idle_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { connect_ms: 2_000, response_ms: 30_000, idle_ms: 60_000 }
    }
}

/// Upstreams per API.
pub const MAX_UPSTREAMS: usize = 16;
/// Models an API of `type: llm` may allow.
pub const MAX_MODELS: usize = 100;

/// Request bodies above this are refused with 413 unless the API allows
/// more.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// What an API is: a proxy to its upstreams, or an endpoint the gateway
/// answers itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApiType {
    /// Requests go to the API's upstreams.
    #[default]
    Http,
    /// One MCP endpoint (streamable HTTP) for the tenant's agents: the
    /// tools of the tenant's registry that the caller's roles allow. It
    /// has no upstreams of its own; each tool names its own.
    Mcp,
    /// A proxy to an OpenAI-compatible model provider: chat completions,
    /// completions and embeddings of the models in `models` only, each
    /// call's tokens read from the answer (streamed ones too) and metered.
    Llm,
}

/// One API of a tenant, as created or applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiSpec {
    pub name: ApiName,
    pub prefix: PathPrefix,
    #[serde(default, rename = "type", skip_serializing_if = "ApiType::is_http")]
    pub api_type: ApiType,
    /// Tried in turn (round robin); one that fails repeatedly is left out
    /// for a while. Shared: the gateway's upstream clients hold the same
    /// list for as long as it is unchanged.
    #[schema(value_type = Vec<String>, example = json!(["http://127.0.0.1:9000"]))]
    #[serde(default = "no_upstreams", skip_serializing_if = "<[Upstream]>::is_empty")]
    pub upstreams: Arc<[Upstream]>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// Removes the prefix before the request goes upstream: `/orders/42`
    /// under `/orders` arrives as `/42`.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Methods allowed (upper case); empty allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default)]
    pub auth: ApiAuth,
    /// The caller must hold one of these roles, or a stronger one; empty
    /// lets any authenticated caller of the tenant through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// The audience a token must name for this API; unset, the tenant's
    /// application audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// This API's own limit, within the tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rate>,
    #[serde(default)]
    pub audit: AuditLevel,
    /// Its upstreams serve other tenants too, on purpose: a multi-tenant
    /// service that tells tenants apart by the headers the gateway sets.
    /// `bulkhead verify isolation` reports an upstream that two tenants'
    /// APIs share unless every one of them says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_upstream: bool,
    /// For `type: llm`: the models the tenant's callers may use (the
    /// request's `model`, exactly).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

fn no_upstreams() -> Arc<[Upstream]> {
    Arc::from([])
}

impl ApiType {
    pub fn is_http(&self) -> bool {
        *self == ApiType::Http
    }
}

fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

const METHODS: &[&str] =
    &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"];

impl ApiSpec {
    /// Checks what the field types cannot, and normalises: methods upper
    /// case, sorted and unique; roles sorted and unique.
    pub fn validate(mut self) -> Result<Self, InvalidApi> {
        if self.api_type != ApiType::Llm && !self.models.is_empty() {
            return Err(invalid("models", "only an API of type llm has models"));
        }
        if self.api_type == ApiType::Mcp {
            if !self.upstreams.is_empty() {
                return Err(invalid(
                    "upstreams",
                    "an API of type mcp has no upstreams: the gateway answers it with the \
                     tenant's tools, and each tool names its own server",
                ));
            }
            if self.auth == ApiAuth::Public {
                return Err(invalid(
                    "auth",
                    "an API of type mcp calls the tenant's tools with its credentials: it \
                     cannot be public",
                ));
            }
            if self.methods.iter().any(|m| !m.eq_ignore_ascii_case("POST")) {
                return Err(invalid(
                    "methods",
                    "an API of type mcp takes POST only (streamable HTTP); leave methods out",
                ));
            }
        } else if self.api_type == ApiType::Llm
            && (self.models.is_empty()
                || self.models.len() > MAX_MODELS
                || self.models.iter().any(|m| m.is_empty() || m.len() > 200))
        {
            return Err(invalid(
                "models",
                format!(
                    "an API of type llm names the models its callers may use: 1 to \
                     {MAX_MODELS} names (e.g. [gpt-4o-mini])"
                ),
            ));
        }
        if self.api_type != ApiType::Mcp
            && (self.upstreams.is_empty() || self.upstreams.len() > MAX_UPSTREAMS)
        {
            return Err(invalid(
                "upstreams",
                format!(
                    "an API needs 1 to {MAX_UPSTREAMS} upstreams, not {}",
                    self.upstreams.len()
                ),
            ));
        }
        for method in &mut self.methods {
            let upper = method.to_ascii_uppercase();
            if !METHODS.contains(&upper.as_str()) {
                return Err(invalid(
                    "methods",
                    format!("{method:?} is not an HTTP method; use {}", METHODS.join(", ")),
                ));
            }
            *method = upper;
        }
        self.methods.sort();
        self.methods.dedup();
        self.roles.sort();
        self.roles.dedup();
        if self.auth == ApiAuth::Public && !self.roles.is_empty() {
            return Err(invalid(
                "roles",
                "a public API takes no credential, so it cannot require roles; remove `roles` or \
                 make `auth` required",
            ));
        }
        if let Some(audience) = &self.audience
            && (audience.trim().is_empty() || audience.len() > 255)
        {
            return Err(invalid("audience", "must be 1 to 255 characters"));
        }
        let Timeouts { connect_ms, response_ms, idle_ms } = self.timeouts;
        for (field, value) in
            [("connect_ms", connect_ms), ("response_ms", response_ms), ("idle_ms", idle_ms)]
        {
            if !(1..=3_600_000).contains(&value) {
                return Err(invalid(
                    "timeouts",
                    format!("{field} is {value}; give 1 to 3600000 milliseconds"),
                ));
            }
        }
        if self.max_body_bytes == 0 {
            return Err(invalid("max_body_bytes", "must be at least 1"));
        }
        if let Some(rate) = &self.rate_limit {
            rate.validate("rate_limit")?;
        }
        Ok(self)
    }

    /// Whether the API takes `method` (upper case, as on the wire).
    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Result<ApiSpec, String> {
        serde_json::from_value::<ApiSpec>(json)
            .map_err(|e| e.to_string())
            .and_then(|s| s.validate().map_err(|e| e.to_string()))
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let echo = PathPrefix::parse("/echo").unwrap();
        assert!(echo.matches("/echo"));
        assert!(echo.matches("/echo/"));
        assert!(echo.matches("/echo/x"));
        assert!(!echo.matches("/echoes"));
        assert!(!echo.matches("/ech"));
        assert!(PathPrefix::parse("/").unwrap().matches("/anything"));
        for bad in ["", "echo", "/echo/", "//x", "/a/../b", "/.", "/a b", "/a%2Fb", "/a;b"] {
            assert!(PathPrefix::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn upstreams_are_http_with_a_port_or_unix_sockets() {
        assert_eq!(
            Upstream::parse("http://LocalHost:8000/").unwrap(),
            Upstream::Http("localhost:8000".into())
        );
        assert_eq!(Upstream::parse("http://[::1]:80").unwrap(), Upstream::Http("[::1]:80".into()));
        assert_eq!(
            Upstream::parse("unix:/run/a.sock").unwrap(),
            Upstream::Unix("/run/a.sock".into())
        );
        for bad in [
            "https://x:1",
            "http://x",
            "http://x:0",
            "http://x:1/path",
            "http://u:p@x:1",
            "http://:80",
            "unix:relative",
            "ftp://x:1",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_spec_is_checked_and_normalised() {
        let ok = spec(serde_json::json!({
            "name": "orders", "prefix": "/orders", "upstreams": ["http://127.0.0.1:9000"],
            "methods": ["post", "GET", "get"], "roles": ["viewer", "admin"]
        }))
        .unwrap();
        assert_eq!(ok.methods, ["GET", "POST"]);
        assert_eq!(ok.roles, [Role::Admin, Role::Viewer]);
        assert_eq!(ok.auth, ApiAuth::Required, "public must be said");
        assert_eq!(ok.audit, AuditLevel::Denied);
        assert_eq!(ok.max_body_bytes, DEFAULT_MAX_BODY_BYTES);

        let cases = [
            (
                serde_json::json!({"name": "a", "prefix": "/", "upstreams": []}),
                "upstreams: an API needs 1 to 16",
            ),
            (
                serde_json::json!({"name": "a", "prefix": "/", "upstreams": ["http://x:1"], "methods": ["FETCH"]}),
                "methods: \"FETCH\" is not an HTTP method",
            ),
            (
                serde_json::json!({"name": "a", "prefix": "/", "upstreams": ["http://x:1"], "auth": "public", "roles": ["admin"]}),
                "roles: a public API takes no credential",
            ),
            (
                serde_json::json!({"name": "a", "prefix": "/", "upstreams": ["http://x:1"], "colour": "red"}),
                "unknown field `colour`",
            ),
            (
                serde_json::json!({"name": "a", "prefix": "/", "upstreams": ["http://x:1"], "rate_limit": {"requests_per_minute": 0, "burst": 1}}),
                "rate_limit: requests_per_minute must be 1 to 60000000 and burst 1 to 1000000",
            ),
            (
                serde_json::json!({"name": "a", "prefix": "/", "upstreams": ["http://x:1"], "timeouts": {"connect_ms": 0}}),
                "timeouts: connect_ms is 0",
            ),
        ];
        for (json, expected) in cases {
            let err = spec(json.clone()).unwrap_err();
            assert!(err.contains(expected), "{json}: {err}");
        }
    }
}
