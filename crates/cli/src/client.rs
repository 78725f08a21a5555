//! The control API client the CLI commands use.

use std::{path::Path, time::Duration};

/// A backup or its verification reads the whole tenant: far longer than
/// any other call may take.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

use bulkhead_control::api::{
    audit::EventList,
    backups::{BackupKeyView, BackupList, BackupView, IDENTITY_HEADER, RestoreView, VerifyView},
    error::ApiError,
    types::{
        ApiApplied, ApiKeyCreated, ApiKeyList, ApiList, CreateApiKeyRequest, CreateTenantRequest,
        CredentialView, ErrorBody, IsolationReportView, IssueCredentialRequest, IssueTokenRequest,
        KeyStatusView, LeaseList, LeaseView, LockoutList, MasterRotationView, MigrationJobList,
        MigrationJobView, PlanList, PublicApiList, RealmKeyList, RegionList, RevokedTokensView,
        RewrapView, RotateKeyView, RotateRealmKeyView, SecretList, SecretWritten, ServerStatus,
        StartMigrationRequest, TenantKeyRequest, TenantKeyView, TenantList, TenantView, TokenView,
        TrustRequest, TrustView, UpdateTenantRequest,
    },
    usage::UsageList,
};
use bulkhead_model::ApiSpec;
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::{Serialize, de::DeserializeOwned};
use zeroize::Zeroizing;

use crate::{
    args::GlobalArgs,
    env,
    exit::{CliError, Kind},
};

const DEFAULT_API: &str = "http://127.0.0.1:7070";

/// How long `verify isolation` may take before the CLI gives up on it.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(1800);

pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    token: String,
    /// Where the credential came from, to name it when it is refused.
    token_source: String,
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

impl<T> Found<T> {
    pub fn into_option(self) -> Option<T> {
        match self {
            Found::Yes(value) => Some(value),
            Found::Gone => None,
        }
    }
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
        let (token, token_source) = match &global.token {
            Some(token) => (token.expose().to_owned(), format!("--token (or {})", env::TOKEN)),
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
                let token = read_trimmed(&path).ok_or_else(|| {
                    CliError::new(
                        Kind::Unauthorized,
                        format!(
                            "no operator token: pass --token, set {}, or run where {} exists",
                            env::TOKEN,
                            path.display()
                        ),
                    )
                })?;
                (token, format!("the operator token in {}", path.display()))
            }
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| CliError::failed(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self { http, base, token, token_source })
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

    /// Sends a request and returns the body of a success; an error answer
    /// becomes a [`CliError`] with the server's message.
    async fn send(
        &self,
        request: RequestBuilder,
    ) -> Result<(reqwest::header::HeaderMap, Vec<u8>), CliError> {
        let response = self.open(request).await?;
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        Ok((headers, bytes.into()))
    }

    /// Sends a request and returns a successful response unread, for
    /// answers read as they arrive.
    async fn open(&self, request: RequestBuilder) -> Result<reqwest::Response, CliError> {
        let response =
            request.bearer_auth(&self.token).send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let request_id =
            response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        let (code, message) = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| (b.error.code, b.error.message))
            .unwrap_or_else(|_| (String::new(), format!("{} answered {status}", self.base)));
        let kind = match status {
            StatusCode::NOT_FOUND => Kind::NotFound,
            // A quota is the tenant's state; a rate limit passes by itself.
            StatusCode::CONFLICT => Kind::Conflict,
            StatusCode::TOO_MANY_REQUESTS if code == "quota_exceeded" => Kind::Conflict,
            StatusCode::TOO_MANY_REQUESTS => Kind::Server,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Kind::Unauthorized,
            s if s.is_client_error() => Kind::Usage,
            _ => Kind::Server,
        };
        let message = match status {
            // The server says more only to the holder of a genuine
            // credential; otherwise say which credential this was.
            StatusCode::UNAUTHORIZED if message == ApiError::UNAUTHORIZED => format!(
                "the credential from {} was refused: it is neither an operator token of {} nor a \
                 valid token or API key of the tenant this command names",
                self.token_source, self.base
            ),
            StatusCode::UNAUTHORIZED => {
                format!("{message} (the credential from {})", self.token_source)
            }
            _ => message,
        };
        Err(CliError::new(kind, message).with_request_id(request_id))
    }

    fn audit_path(tenant: Option<&str>) -> Vec<&str> {
        match tenant {
            Some(tenant) => vec!["v1", "tenants", tenant, "audit"],
            None => vec!["v1", "audit", "platform"],
        }
    }

    /// A stream's events after `after`, or its last `limit`.
    pub async fn audit_events(
        &self,
        tenant: Option<&str>,
        after: Option<u64>,
        limit: u32,
    ) -> Result<EventList, CliError> {
        let mut path = Self::audit_path(tenant);
        path.push("events");
        let mut query = vec![("limit", limit.to_string())];
        if let Some(after) = after {
            query.push(("after", after.to_string()));
        }
        self.call(Method::GET, self.url(&path)?, &query).await
    }

    /// A stream's export, to be read as it arrives.
    pub async fn audit_export(
        &self,
        tenant: Option<&str>,
        since: Option<&str>,
    ) -> Result<reqwest::Response, CliError> {
        let mut path = Self::audit_path(tenant);
        path.push("export");
        let query: Vec<(&str, &str)> = since.map(|s| ("since", s)).into_iter().collect();
        self.open(self.http.get(self.url(&path)?).query(&query)).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        query: &[(&str, String)],
    ) -> Result<T, CliError> {
        self.parse(self.send(self.http.request(method, url).query(query)).await?.1)
    }

    async fn call_json<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        url: Url,
        body: &B,
    ) -> Result<T, CliError> {
        self.parse(self.send(self.http.request(method, url).json(body)).await?.1)
    }

    fn parse<T: DeserializeOwned>(&self, bytes: Vec<u8>) -> Result<T, CliError> {
        serde_json::from_slice(&bytes).map_err(|e| {
            CliError::new(Kind::Server, format!("unexpected answer from {}: {e}", self.base))
        })
    }

    fn unreachable(&self, error: reqwest::Error) -> CliError {
        // The innermost cause ("Connection refused"), not the layers
        // around it ("client error (Connect)").
        let mut cause: &dyn std::error::Error = &error;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        let cause =
            if error.is_timeout() { "no answer in time".to_owned() } else { cause.to_string() };
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
        self.call_json(Method::POST, self.url(&["v1", "tenants"])?, request).await
    }

    pub async fn tenant(&self, name: &str) -> Result<TenantView, CliError> {
        self.call(Method::GET, self.url(&["v1", "tenants", name])?, &[]).await
    }

    pub async fn update_tenant(
        &self,
        name: &str,
        request: &UpdateTenantRequest,
    ) -> Result<TenantView, CliError> {
        self.call_json(Method::PATCH, self.url(&["v1", "tenants", name])?, request).await
    }

    /// Like [`ApiClient::tenant`], but a 404 is an answer, not an error.
    pub async fn find_tenant(&self, name: &str) -> Result<Found<TenantView>, CliError> {
        found(self.tenant(name).await)
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
        self.call(Method::GET, self.url(&["v1", "tenants"])?, &query).await
    }

    pub async fn lifecycle(&self, name: &str, action: &str) -> Result<TenantView, CliError> {
        self.call(Method::POST, self.url(&["v1", "tenants", name, action])?, &[]).await
    }

    /// Offboards the tenant, or with `departed` purges that deleted tenant.
    pub async fn delete_tenant(
        &self,
        name: &str,
        purge: bool,
        departed: Option<&str>,
    ) -> Result<TenantView, CliError> {
        let mut query = vec![("purge", purge.to_string())];
        query.extend(departed.map(|id| ("departed", id.to_owned())));
        self.call(Method::DELETE, self.url(&["v1", "tenants", name])?, &query).await
    }

    pub async fn status(&self) -> Result<ServerStatus, CliError> {
        self.call(Method::GET, self.url(&["v1", "status"])?, &[]).await
    }

    pub async fn plans(&self) -> Result<PlanList, CliError> {
        self.call(Method::GET, self.url(&["v1", "plans"])?, &[]).await
    }

    pub async fn regions(&self) -> Result<RegionList, CliError> {
        self.call(Method::GET, self.url(&["v1", "regions"])?, &[]).await
    }

    /// `/v1/tenants/{tenant}/secrets/{path...}`, one URL segment per path
    /// segment so that the server sees the path as typed.
    fn secret_url(&self, tenant: &str, path: &str) -> Result<Url, CliError> {
        let mut segments = vec!["v1", "tenants", tenant, "secrets"];
        segments.extend(path.split('/'));
        self.url(&segments)
    }

    pub async fn put_secret(
        &self,
        tenant: &str,
        path: &str,
        value: Zeroizing<Vec<u8>>,
    ) -> Result<SecretWritten, CliError> {
        let request = self
            .http
            .put(self.secret_url(tenant, path)?)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(value.to_vec());
        self.parse(self.send(request).await?.1)
    }

    /// The value and its version.
    pub async fn get_secret(
        &self,
        tenant: &str,
        path: &str,
        version: Option<i64>,
    ) -> Result<(Option<String>, Zeroizing<Vec<u8>>), CliError> {
        let query: Vec<(&str, String)> =
            version.map(|v| ("version", v.to_string())).into_iter().collect();
        let request = self.http.get(self.secret_url(tenant, path)?).query(&query);
        let (headers, bytes) = self.send(request).await?;
        let version =
            headers.get("bulkhead-secret-version").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok((version, Zeroizing::new(bytes)))
    }

    fn backup_url(&self, tenant: &str, rest: &[&str]) -> Result<Url, CliError> {
        let mut segments = vec!["v1", "tenants", tenant];
        segments.extend_from_slice(rest);
        self.url(&segments)
    }

    /// Takes a backup; answers when it is stored, however long that takes.
    pub async fn create_backup(&self, tenant: &str) -> Result<BackupView, CliError> {
        let request = self.http.post(self.backup_url(tenant, &["backups"])?);
        self.parse(self.send(request.timeout(BACKUP_TIMEOUT)).await?.1)
    }

    pub async fn list_backups(&self, tenant: &str) -> Result<BackupList, CliError> {
        self.call(Method::GET, self.backup_url(tenant, &["backups"])?, &[]).await
    }

    pub async fn get_backup(&self, tenant: &str, id: &str) -> Result<BackupView, CliError> {
        self.call(Method::GET, self.backup_url(tenant, &["backups", id])?, &[]).await
    }

    pub async fn delete_backup(&self, tenant: &str, id: &str) -> Result<(), CliError> {
        let url = self.backup_url(tenant, &["backups", id])?;
        self.send(self.http.delete(url)).await.map(|_| ())
    }

    pub async fn verify_backup(
        &self,
        tenant: &str,
        id: &str,
        identity: Option<&str>,
    ) -> Result<VerifyView, CliError> {
        let url = self.backup_url(tenant, &["backups", id, "verify"])?;
        let body = serde_json::json!({ "identity": identity });
        let request = self.http.post(url).json(&body).timeout(BACKUP_TIMEOUT);
        self.parse(self.send(request).await?.1)
    }

    pub async fn restore_backup(
        &self,
        tenant: &str,
        id: &str,
        to: Option<&str>,
        force: bool,
        identity: Option<&str>,
    ) -> Result<RestoreView, CliError> {
        let url = self.backup_url(tenant, &["backups", id, "restore"])?;
        let body = serde_json::json!({ "to": to, "force": force, "identity": identity });
        let request = self.http.post(url).json(&body).timeout(BACKUP_TIMEOUT);
        self.parse(self.send(request).await?.1)
    }

    /// Brings a deleted tenant back from its final snapshot.
    pub async fn restore_departed(
        &self,
        tenant: &str,
        id: Option<&str>,
        to: Option<&str>,
        identity: Option<&str>,
    ) -> Result<RestoreView, CliError> {
        let url = self.backup_url(tenant, &["restore"])?;
        let body = serde_json::json!({
            "from_final": true, "tenant_id": id, "to": to, "identity": identity,
        });
        let request = self.http.post(url).json(&body).timeout(BACKUP_TIMEOUT);
        self.parse(self.send(request).await?.1)
    }

    /// Checks a deleted tenant's final snapshot, restoring nothing.
    pub async fn verify_departed(
        &self,
        tenant: &str,
        id: Option<&str>,
        identity: Option<&str>,
    ) -> Result<VerifyView, CliError> {
        let url = self.backup_url(tenant, &["final-snapshot", "verify"])?;
        let body = serde_json::json!({ "tenant_id": id, "identity": identity });
        let request = self.http.post(url).json(&body).timeout(BACKUP_TIMEOUT);
        self.parse(self.send(request).await?.1)
    }

    /// Streams an archive to the server, to restore into a new tenant.
    pub async fn restore_archive(
        &self,
        archive: reqwest::Body,
        identity: &str,
        to: Option<&str>,
    ) -> Result<RestoreView, CliError> {
        let url = self.url(&["v1", "backups", "restore"])?;
        let query: Vec<(&str, &str)> = to.map(|to| ("to", to)).into_iter().collect();
        let request = self
            .http
            .post(url)
            .query(&query)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(IDENTITY_HEADER, identity)
            .body(archive)
            .timeout(BACKUP_TIMEOUT);
        self.parse(self.send(request).await?.1)
    }

    /// Opens an archive at an http(s) URL, to be streamed on.
    pub async fn fetch_archive(&self, url: &str) -> Result<reqwest::Body, CliError> {
        let response = reqwest::Client::new()
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| CliError::usage(format!("cannot fetch {url}: {e}")))?;
        Ok(reqwest::Body::wrap_stream(response.bytes_stream()))
    }

    pub async fn backup_key(&self, tenant: &str) -> Result<BackupKeyView, CliError> {
        self.call(Method::GET, self.backup_url(tenant, &["backup-key"])?, &[]).await
    }

    pub async fn set_backup_key(
        &self,
        tenant: &str,
        recipient: Option<&str>,
    ) -> Result<BackupKeyView, CliError> {
        let url = self.backup_url(tenant, &["backup-key"])?;
        self.call_json(Method::PUT, url, &serde_json::json!({ "recipient": recipient })).await
    }

    pub async fn export_backup_key(&self, tenant: &str) -> Result<Zeroizing<String>, CliError> {
        #[derive(serde::Deserialize)]
        struct Exported {
            identity: String,
        }
        let url = self.backup_url(tenant, &["backup-key", "export"])?;
        let exported: Exported = self.call(Method::POST, url, &[]).await?;
        Ok(Zeroizing::new(exported.identity))
    }

    pub async fn list_secrets(&self, tenant: &str) -> Result<SecretList, CliError> {
        self.call(Method::GET, self.url(&["v1", "tenants", tenant, "secrets"])?, &[]).await
    }

    pub async fn delete_secret(&self, tenant: &str, path: &str) -> Result<(), CliError> {
        self.send(self.http.delete(self.secret_url(tenant, path)?)).await.map(|_| ())
    }

    pub async fn rewrap(&self, tenant: &str) -> Result<RewrapView, CliError> {
        let url = self.url(&["v1", "tenants", tenant, "keys", "rewrap"])?;
        self.call(Method::POST, url, &[]).await
    }

    pub async fn key_status(&self, tenant: &str) -> Result<KeyStatusView, CliError> {
        self.call(Method::GET, self.url(&["v1", "tenants", tenant, "keys"])?, &[]).await
    }

    pub async fn rotate_data_key(&self, tenant: &str) -> Result<RotateKeyView, CliError> {
        let url = self.url(&["v1", "tenants", tenant, "keys", "rotate"])?;
        self.call(Method::POST, url, &[]).await
    }

    pub async fn set_tenant_key(
        &self,
        tenant: &str,
        key: Zeroizing<String>,
    ) -> Result<TenantKeyView, CliError> {
        let url = self.url(&["v1", "tenants", tenant, "keys", "tenant-key"])?;
        self.call_json(Method::PUT, url, &TenantKeyRequest { key }).await
    }

    pub async fn forget_tenant_key(&self, tenant: &str) -> Result<(), CliError> {
        let url = self.url(&["v1", "tenants", tenant, "keys", "tenant-key"])?;
        self.send(self.http.delete(url)).await.map(|_| ())
    }

    pub async fn rotate_master(&self) -> Result<MasterRotationView, CliError> {
        let url = self.url(&["v1", "vault", "master-key", "rotate"])?;
        self.call(Method::POST, url, &[]).await
    }

    pub async fn issue_credential(
        &self,
        tenant: &str,
        request: &IssueCredentialRequest,
    ) -> Result<CredentialView, CliError> {
        let url = self.url(&["v1", "tenants", tenant, "credentials"])?;
        self.call_json(Method::POST, url, request).await
    }

    pub async fn list_credentials(&self, tenant: &str, all: bool) -> Result<LeaseList, CliError> {
        let url = self.url(&["v1", "tenants", tenant, "credentials"])?;
        self.call(Method::GET, url, &[("all", all.to_string())]).await
    }

    pub async fn revoke_credential(
        &self,
        tenant: Option<&str>,
        lease: &str,
    ) -> Result<LeaseView, CliError> {
        let url = match tenant {
            Some(tenant) => self.url(&["v1", "tenants", tenant, "credentials", lease])?,
            None => self.url(&["v1", "credentials", lease])?,
        };
        self.call(Method::DELETE, url, &[]).await
    }

    pub async fn lockouts(&self) -> Result<LockoutList, CliError> {
        self.call(Method::GET, self.url(&["v1", "vault", "lockouts"])?, &[]).await
    }

    pub async fn unlock(&self, principal: &str) -> Result<(), CliError> {
        let url = self.url(&["v1", "vault", "lockouts", principal])?;
        self.send(self.http.delete(url)).await.map(|_| ())
    }

    pub async fn issue_token(
        &self,
        tenant: &str,
        request: &IssueTokenRequest,
    ) -> Result<TokenView, CliError> {
        self.call_json(Method::POST, self.url(&["v1", "tenants", tenant, "tokens"])?, request).await
    }

    pub async fn rotate_realm_key(
        &self,
        tenant: &str,
        algorithm: Option<&str>,
    ) -> Result<RotateRealmKeyView, CliError> {
        let url = self.url(&["v1", "tenants", tenant, "realm", "rotate"])?;
        let query: Vec<(&str, String)> =
            algorithm.map(|a| ("algorithm", a.to_owned())).into_iter().collect();
        self.call(Method::POST, url, &query).await
    }

    pub async fn revoke_realm_tokens(&self, tenant: &str) -> Result<RevokedTokensView, CliError> {
        let url = self.url(&["v1", "tenants", tenant, "realm", "revoke-tokens"])?;
        self.call(Method::POST, url, &[]).await
    }

    pub async fn realm_keys(&self, tenant: &str) -> Result<RealmKeyList, CliError> {
        self.call(Method::GET, self.url(&["v1", "tenants", tenant, "realm", "keys"])?, &[]).await
    }

    pub async fn create_api_key(
        &self,
        tenant: &str,
        request: &CreateApiKeyRequest,
    ) -> Result<ApiKeyCreated, CliError> {
        let url = self.url(&["v1", "tenants", tenant, "api-keys"])?;
        self.call_json(Method::POST, url, request).await
    }

    pub async fn api_keys(&self, tenant: &str) -> Result<ApiKeyList, CliError> {
        self.call(Method::GET, self.url(&["v1", "tenants", tenant, "api-keys"])?, &[]).await
    }

    pub async fn set_trust(
        &self,
        tenant: &str,
        request: &TrustRequest,
    ) -> Result<TrustView, CliError> {
        let url = self.url(&["v1", "tenants", tenant, "realm", "trust"])?;
        self.call_json(Method::PUT, url, request).await
    }

    pub async fn remove_trust(&self, tenant: &str) -> Result<(), CliError> {
        let url = self.url(&["v1", "tenants", tenant, "realm", "trust"])?;
        self.send(self.http.delete(url)).await.map(|_| ())
    }

    pub async fn create_api(&self, tenant: &str, spec: &ApiSpec) -> Result<ApiApplied, CliError> {
        let url = self.url(&["v1", "tenants", tenant, "apis"])?;
        self.call_json(Method::POST, url, spec).await
    }

    pub async fn usage(
        &self,
        tenant: &str,
        api: Option<&str>,
        since: Option<&str>,
    ) -> Result<UsageList, CliError> {
        let mut query = Vec::new();
        query.extend(api.map(|a| ("api", a.to_owned())));
        query.extend(since.map(|s| ("since", s.to_owned())));
        self.call(Method::GET, self.url(&["v1", "tenants", tenant, "usage"])?, &query).await
    }

    pub async fn usage_export(
        &self,
        period: &str,
        tenant: Option<&str>,
    ) -> Result<bulkhead_control::usage::UsageExport, CliError> {
        let query = [("period", period.to_owned())];
        let url = match tenant {
            Some(tenant) => self.url(&["v1", "tenants", tenant, "usage", "export"])?,
            None => self.url(&["v1", "usage", "export"])?,
        };
        self.call(Method::GET, url, &query).await
    }

    pub async fn deploy_app(
        &self,
        tenant: &str,
        spec: &bulkhead_model::AppSpec,
    ) -> Result<serde_json::Value, CliError> {
        let url = self.url(&["v1", "tenants", tenant, "apps", spec.name.as_str()])?;
        self.call_json(Method::PUT, url, spec).await
    }

    pub async fn apps(&self, tenant: &str) -> Result<serde_json::Value, CliError> {
        self.call(Method::GET, self.url(&["v1", "tenants", tenant, "apps"])?, &[]).await
    }

    pub async fn app(&self, tenant: &str, name: &str) -> Result<serde_json::Value, CliError> {
        self.call(Method::GET, self.url(&["v1", "tenants", tenant, "apps", name])?, &[]).await
    }

    /// The app's spec; a 404 is an answer, not an error.
    pub async fn find_app(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Found<bulkhead_model::AppSpec>, CliError> {
        match found(self.app(tenant, name).await)? {
            Found::Yes(view) => {
                serde_json::from_value(view["spec"].clone()).map(Found::Yes).map_err(|e| {
                    CliError::new(
                        Kind::Server,
                        format!("unexpected answer from {}: {e}", self.base),
                    )
                })
            }
            Found::Gone => Ok(Found::Gone),
        }
    }

    pub async fn start_rollout(
        &self,
        request: &serde_json::Value,
    ) -> Result<serde_json::Value, CliError> {
        self.call_json(Method::POST, self.url(&["v1", "rollouts"])?, request).await
    }

    pub async fn rollouts(&self) -> Result<serde_json::Value, CliError> {
        self.call(Method::GET, self.url(&["v1", "rollouts"])?, &[]).await
    }

    pub async fn rollout(&self, id: &str) -> Result<serde_json::Value, CliError> {
        self.call(Method::GET, self.url(&["v1", "rollouts", id])?, &[]).await
    }

    /// `action` is `pause`, `resume` or `abort`.
    pub async fn steer_rollout(
        &self,
        id: &str,
        action: &str,
    ) -> Result<serde_json::Value, CliError> {
        self.call(Method::POST, self.url(&["v1", "rollouts", id, action])?, &[]).await
    }

    /// `action` is `start`, `stop`, `pin` or `unpin`.
    pub async fn app_action(
        &self,
        tenant: &str,
        name: &str,
        action: &str,
    ) -> Result<serde_json::Value, CliError> {
        let url = self.url(&["v1", "tenants", tenant, "apps", name, action])?;
        self.call(Method::POST, url, &[]).await
    }

    pub async fn flags(&self, tenant: &str) -> Result<serde_json::Value, CliError> {
        self.call(Method::GET, self.url(&["v1", "tenants", tenant, "flags"])?, &[]).await
    }

    pub async fn change_flags(
        &self,
        tenant: &str,
        changes: &serde_json::Value,
    ) -> Result<serde_json::Value, CliError> {
        let url = self.url(&["v1", "tenants", tenant, "flags"])?;
        self.call_json(Method::PATCH, url, changes).await
    }

    pub async fn delete_app(&self, tenant: &str, name: &str) -> Result<(), CliError> {
        let url = self.url(&["v1", "tenants", tenant, "apps", name])?;
        self.send(self.http.delete(url)).await.map(|_| ())
    }

    pub async fn app_logs(
        &self,
        tenant: &str,
        name: &str,
        query: &[(&str, String)],
    ) -> Result<serde_json::Value, CliError> {
        self.call(Method::GET, self.url(&["v1", "tenants", tenant, "apps", name, "logs"])?, query)
            .await
    }

    pub async fn apis(&self, tenant: &str) -> Result<ApiList, CliError> {
        self.call(Method::GET, self.url(&["v1", "tenants", tenant, "apis"])?, &[]).await
    }

    /// Every tenant's APIs that answer without a credential.
    pub async fn public_apis(&self) -> Result<PublicApiList, CliError> {
        self.call(Method::GET, self.url(&["v1", "apis", "public"])?, &[]).await
    }

    /// Runs the isolation checks, of one tenant or of all. The server
    /// probes every tenant in turn (tens of milliseconds each), so this
    /// waits longer than other calls: up to [`VERIFY_TIMEOUT`].
    pub async fn verify_isolation(
        &self,
        tenant: Option<&str>,
    ) -> Result<IsolationReportView, CliError> {
        let query: Vec<(&str, String)> =
            tenant.map(|t| ("tenant", t.to_owned())).into_iter().collect();
        let url = self.url(&["v1", "verify", "isolation"])?;
        let request = self.http.request(Method::POST, url).query(&query).timeout(VERIFY_TIMEOUT);
        self.parse(self.send(request).await?.1)
    }

    pub async fn start_migration(
        &self,
        request: &StartMigrationRequest,
    ) -> Result<MigrationJobView, CliError> {
        self.call_json(Method::POST, self.url(&["v1", "migrations"])?, request).await
    }

    pub async fn migration(&self, id: &str) -> Result<MigrationJobView, CliError> {
        self.call(Method::GET, self.url(&["v1", "migrations", id])?, &[]).await
    }

    pub async fn migrations(&self, limit: u32) -> Result<MigrationJobList, CliError> {
        let query = [("limit", limit.to_string())];
        self.call(Method::GET, self.url(&["v1", "migrations"])?, &query).await
    }

    pub async fn api(&self, tenant: &str, name: &str) -> Result<ApiSpec, CliError> {
        self.call(Method::GET, self.url(&["v1", "tenants", tenant, "apis", name])?, &[]).await
    }

    /// Like [`ApiClient::api`], but a 404 is an answer, not an error.
    pub async fn find_api(&self, tenant: &str, name: &str) -> Result<Found<ApiSpec>, CliError> {
        found(self.api(tenant, name).await)
    }

    /// Creates the API or changes it to `spec` (what `apply` does).
    pub async fn put_api(&self, tenant: &str, spec: &ApiSpec) -> Result<ApiApplied, CliError> {
        let url = self.url(&["v1", "tenants", tenant, "apis", spec.name.as_str()])?;
        self.call_json(Method::PUT, url, spec).await
    }

    pub async fn delete_api(&self, tenant: &str, name: &str) -> Result<(), CliError> {
        let url = self.url(&["v1", "tenants", tenant, "apis", name])?;
        self.send(self.http.delete(url)).await.map(|_| ())
    }

    /// A tenant's resources of one collection (`guardrails`, `tools`).
    pub async fn resources<T: DeserializeOwned>(
        &self,
        tenant: &str,
        collection: &str,
    ) -> Result<T, CliError> {
        self.call(Method::GET, self.url(&["v1", "tenants", tenant, collection])?, &[]).await
    }

    /// One resource; a 404 is an answer, not an error.
    pub async fn find_resource<T: DeserializeOwned>(
        &self,
        tenant: &str,
        collection: &str,
        name: &str,
    ) -> Result<Found<T>, CliError> {
        let url = self.url(&["v1", "tenants", tenant, collection, name])?;
        found(self.call(Method::GET, url, &[]).await)
    }

    /// Creates the resource or changes it to `spec` (what `apply` does).
    pub async fn put_resource<S: Serialize, T: DeserializeOwned>(
        &self,
        tenant: &str,
        collection: &str,
        name: &str,
        spec: &S,
    ) -> Result<T, CliError> {
        let url = self.url(&["v1", "tenants", tenant, collection, name])?;
        self.call_json(Method::PUT, url, spec).await
    }

    pub async fn delete_resource(
        &self,
        tenant: &str,
        collection: &str,
        name: &str,
    ) -> Result<(), CliError> {
        let url = self.url(&["v1", "tenants", tenant, collection, name])?;
        self.send(self.http.delete(url)).await.map(|_| ())
    }

    pub async fn revoke_api_key(&self, tenant: &str, id: &str) -> Result<(), CliError> {
        let url = self.url(&["v1", "tenants", tenant, "api-keys", id])?;
        self.send(self.http.delete(url)).await.map(|_| ())
    }
}

/// A 404 as an answer.
fn found<T>(result: Result<T, CliError>) -> Result<Found<T>, CliError> {
    match result {
        Ok(value) => Ok(Found::Yes(value)),
        Err(e) if e.kind == Kind::NotFound => Ok(Found::Gone),
        Err(e) => Err(e),
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
