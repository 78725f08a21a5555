//! The control API client the CLI commands use.

use std::{path::Path, time::Duration};

use bulkhead_control::api::types::{
    CreateTenantRequest, ErrorBody, PlanList, TenantList, TenantView,
};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::{
    args::GlobalArgs,
    env,
    exit::{CliError, Kind},
};

const DEFAULT_API: &str = "http://127.0.0.1:7070";

pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: String,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

/// A tenant lookup that may legitimately find nothing (a purged tenant).
pub enum Found<T> {
    Yes(T),
    Gone,
}

impl ApiClient {
    /// Finds the API and the token: flags, then environment (both via
    /// clap), then the data directory's `api.url` and `operator.token`.
    pub fn discover(global: &GlobalArgs) -> Result<Self, CliError> {
        let data_dir = global.data_dir.clone().unwrap_or_else(env::default_data_dir);
        let api = match &global.api {
            Some(api) => api.clone(),
            None => {
                read_trimmed(&data_dir.join("api.url")).unwrap_or_else(|| DEFAULT_API.to_owned())
            }
        };
        let base = Url::parse(&api)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                CliError::usage(format!(
                    "--api {api:?} is not an http(s) URL such as {DEFAULT_API}"
                ))
            })?;
        let token = match &global.token {
            Some(token) => token.expose().to_owned(),
            None => {
                let path = data_dir.join("operator.token");
                // The local token belongs to the local server: never hand it
                // to an address someone typed.
                if global.api.is_some() && !is_loopback(&base) {
                    return Err(CliError::new(
                        Kind::Unauthorized,
                        format!(
                            "no operator token for {base}: pass --token or set {} (the token \
                             in {} is only sent to a server on this machine)",
                            env::TOKEN,
                            path.display()
                        ),
                    ));
                }
                read_trimmed(&path).ok_or_else(|| {
                    CliError::new(
                        Kind::Unauthorized,
                        format!(
                            "no operator token: pass --token, set {}, or run where {} exists",
                            env::TOKEN,
                            path.display()
                        ),
                    )
                })?
            }
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| CliError::failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self { http, base, token })
    }

    /// `base` + path segments, each percent-encoded: a tenant name can never
    /// reach another endpoint.
    fn url(&self, segments: &[&str]) -> Result<Url, CliError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| CliError::usage(format!("--api {} cannot take a path", self.base)))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        query: &[(&str, String)],
        body: Option<&CreateTenantRequest>,
    ) -> Result<T, CliError> {
        let mut request = self.http.request(method, url).bearer_auth(&self.token).query(query);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                CliError::new(Kind::Server, format!("unexpected answer from {}: {e}", self.base))
            });
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| format!("{} answered {status}", self.base));
        let kind = match status {
            StatusCode::NOT_FOUND => Kind::NotFound,
            StatusCode::CONFLICT => Kind::Conflict,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Kind::Unauthorized,
            s if s.is_client_error() => Kind::Usage,
            _ => Kind::Server,
        };
        let message = if kind == Kind::Unauthorized {
            format!("{message}: the operator token was refused (check --token or {})", env::TOKEN)
        } else {
            message
        };
        Err(CliError::new(kind, message))
    }

    fn unreachable(&self, error: reqwest::Error) -> CliError {
        let cause =
            std::error::Error::source(&error).map_or_else(|| error.to_string(), |s| s.to_string());
        CliError::new(
            Kind::Unreachable,
            format!(
                "cannot reach the Bulkhead API at {}: {cause}; is `bulkhead serve` running? (set \
                 --api or {} to point elsewhere)",
                self.base,
                env::API
            ),
        )
    }

    pub async fn create_tenant(
        &self,
        request: &CreateTenantRequest,
    ) -> Result<TenantView, CliError> {
        self.call(Method::POST, self.url(&["v1", "tenants"])?, &[], Some(request)).await
    }

    pub async fn tenant(&self, name: &str) -> Result<TenantView, CliError> {
        self.call(Method::GET, self.url(&["v1", "tenants", name])?, &[], None).await
    }

    /// Like [`ApiClient::tenant`], but a 404 is an answer, not an error.
    pub async fn find_tenant(&self, name: &str) -> Result<Found<TenantView>, CliError> {
        match self.tenant(name).await {
            Ok(view) => Ok(Found::Yes(view)),
            Err(e) if e.kind == Kind::NotFound => Ok(Found::Gone),
            Err(e) => Err(e),
        }
    }

    pub async fn list_tenants(
        &self,
        after: Option<&str>,
        state: Option<&str>,
        limit: u32,
    ) -> Result<TenantList, CliError> {
        let mut query = vec![("limit", limit.to_string())];
        query.extend(after.map(|a| ("after", a.to_owned())));
        query.extend(state.map(|s| ("state", s.to_owned())));
        self.call(Method::GET, self.url(&["v1", "tenants"])?, &query, None).await
    }

    pub async fn lifecycle(&self, name: &str, action: &str) -> Result<TenantView, CliError> {
        self.call(Method::POST, self.url(&["v1", "tenants", name, action])?, &[], None).await
    }

    pub async fn delete_tenant(&self, name: &str, purge: bool) -> Result<TenantView, CliError> {
        let query = [("purge", purge.to_string())];
        self.call(Method::DELETE, self.url(&["v1", "tenants", name])?, &query, None).await
    }

    pub async fn plans(&self) -> Result<PlanList, CliError> {
        self.call(Method::GET, self.url(&["v1", "plans"])?, &[], None).await
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}
