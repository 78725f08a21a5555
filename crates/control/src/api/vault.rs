//! `/v1/tenants/{tenant}/secrets`, `/keys`, `/credentials` and `/v1/vault`:
//! the vault over HTTP. Secret values travel as raw bytes
//! (`application/octet-stream`), never inside JSON, and never appear in a
//! log line or an error.

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, JsonRejection, QueryRejection},
    },
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bulkhead_vault::TenantKeyChange;
use zeroize::Zeroizing;

use super::{
    AppState,
    error::{ApiError, ErrorCode},
    record_tenant,
    types::{
        CredentialView, ErrorBody, IssueCredentialRequest, KeyStatusView, LeaseList,
        LeaseListParams, LeaseView, LockoutList, LockoutView, MasterRotationView, RewrapView,
        RotateKeyView, SecretList, SecretParams, SecretSummaryView, SecretWritten,
        TenantKeyRequest, TenantKeyView,
    },
};
use crate::{credentials::Access, events::Actor};

/// The secret's version, on a read.
pub const SECRET_VERSION_HEADER: HeaderName = HeaderName::from_static("bulkhead-secret-version");

/// Store a new version of a secret. The body is the value itself, 1 byte
/// to 64 KiB; older versions beyond the plan's count are dropped.
#[utoipa::path(
    put, path = "/v1/tenants/{tenant}/secrets/{path}", tag = "vault",
    params(
        ("tenant" = String, Path, description = "Tenant name"),
        ("path" = String, Path, description = "Secret path, e.g. db/primary/password; its slashes are sent as they are"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, body = SecretWritten),
        (status = 400, description = "Invalid path or empty value", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The caller is locked out", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 413, description = "Value larger than 64 KiB", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn put_secret(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, path)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<SecretWritten>), ApiError> {
    record_tenant(&tenant);
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the secret value is larger than {} bytes (64 KiB), the largest a secret may be",
                bulkhead_vault::MAX_VALUE_BYTES
            ),
        ),
        _ => ApiError::new(ErrorCode::InvalidRequest, rejection.body_text()),
    })?;
    // The request's copy of the value is wiped once stored.
    let value = Zeroizing::new(Vec::from(body));
    let stored = state.vault.put_secret(&actor, &tenant, &path, &value).await?;
    Ok((StatusCode::CREATED, Json(SecretWritten::from(stored))))
}

/// Read a secret: its latest version, or `?version=N`. The body is the
/// value; the version is in the `bulkhead-secret-version` header.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/secrets/{path}", tag = "vault",
    params(
        ("tenant" = String, Path, description = "Tenant name"),
        ("path" = String, Path, description = "Secret path"),
        SecretParams,
    ),
    responses(
        (status = 200, content_type = "application/octet-stream", body = Vec<u8>,
         headers(("bulkhead-secret-version" = i64, description = "The version returned"))),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The caller is locked out", body = ErrorBody),
        (status = 404, description = "No such tenant, secret or version", body = ErrorBody),
        (status = 409, description = "The tenant's own key is not loaded", body = ErrorBody),
        (status = 503, description = "The audit stream could not record it: nothing was handed out", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn get_secret(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, path)): Path<(String, String)>,
    params: Result<Query<SecretParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    record_tenant(&tenant);
    let Query(params) = params?;
    let secret = state.vault.get_secret(&actor, &tenant, &path, params.version).await?;
    let mut response = Bytes::copy_from_slice(&secret.value).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(SECRET_VERSION_HEADER, HeaderValue::from(secret.version));
    Ok(response)
}

/// Delete every version of a secret.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}/secrets/{path}", tag = "vault",
    params(
        ("tenant" = String, Path, description = "Tenant name"),
        ("path" = String, Path, description = "Secret path"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn delete_secret(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, path)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    record_tenant(&tenant);
    state.vault.delete_secret(&actor, &tenant, &path).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List a tenant's secrets: paths, versions and sizes, never values.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/secrets", tag = "vault",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, body = SecretList),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn list_secrets(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<SecretList>, ApiError> {
    record_tenant(&tenant);
    let secrets = state.vault.list_secrets(&actor, &tenant).await?;
    Ok(Json(SecretList { secrets: secrets.into_iter().map(SecretSummaryView::from).collect() }))
}

/// The tenant's data key versions and what wraps them.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/keys", tag = "vault",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = KeyStatusView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn key_status(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<KeyStatusView>, ApiError> {
    record_tenant(&tenant);
    let (tenant, status) = state.vault.key_status(&actor, &tenant).await?;
    Ok(Json(KeyStatusView::new(&tenant, status)))
}

/// Make a new data key version; new writes use it. Run `rewrap` to move
/// existing secrets to it.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/keys/rotate", tag = "vault",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = RotateKeyView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn rotate_data_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<RotateKeyView>, ApiError> {
    record_tenant(&tenant);
    let version = state.vault.rotate_data_key(&actor, &tenant).await?;
    Ok(Json(RotateKeyView { version }))
}

/// Re-encrypt every secret version of the tenant under its latest data key.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/keys/rewrap", tag = "vault",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = RewrapView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn rewrap(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<RewrapView>, ApiError> {
    record_tenant(&tenant);
    let reencrypted = state.vault.rewrap(&actor, &tenant).await?;
    Ok(Json(RewrapView { reencrypted }))
}

/// Supply the tenant's own key (bring-your-own-key). The first time, the
/// tenant gets a fresh data key wrapped by it, its secrets are re-encrypted
/// under that key and its master-wrapped keys are destroyed; after a
/// restart, it loads the key again. The key is held in memory only.
#[utoipa::path(
    put, path = "/v1/tenants/{tenant}/keys/tenant-key", tag = "vault",
    params(("tenant" = String, Path, description = "Tenant name")),
    request_body = TenantKeyRequest,
    responses((status = 200, body = TenantKeyView), (status = 400, description = "Not a key, or not this tenant's key", body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn set_tenant_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    body: Result<Json<TenantKeyRequest>, JsonRejection>,
) -> Result<Json<TenantKeyView>, ApiError> {
    record_tenant(&tenant);
    let Json(body) = body?;
    let change = state.vault.set_tenant_key(&actor, &tenant, &body.key).await?;
    Ok(Json(match change {
        TenantKeyChange::Adopted { reencrypted } => TenantKeyView { adopted: true, reencrypted },
        TenantKeyChange::Loaded => TenantKeyView { adopted: false, reencrypted: 0 },
    }))
}

/// Forget the tenant's own key: its secrets are unreadable until the key
/// is supplied again.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}/keys/tenant-key", tag = "vault",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 204, description = "Forgotten"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn forget_tenant_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    record_tenant(&tenant);
    state.vault.forget_tenant_key(&actor, &tenant).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rotate the master key: every data key it wraps is re-wrapped by a new
/// one; no secret ciphertext changes.
#[utoipa::path(
    post, path = "/v1/vault/master-key/rotate", tag = "vault",
    responses((status = 200, body = MasterRotationView), (status = 401, body = ErrorBody), (status = 409, description = "The master key came from the environment", body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn rotate_master_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<MasterRotationView>, ApiError> {
    let rotation = state.vault.rotate_master(&actor).await?;
    Ok(Json(MasterRotationView {
        from: rotation.from,
        to: rotation.to,
        rewrapped: rotation.rewrapped,
    }))
}

/// Issue a short-lived database login for the tenant. The response is the
/// only place its password ever appears.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/credentials", tag = "vault",
    params(("tenant" = String, Path, description = "Tenant name")),
    request_body = IssueCredentialRequest,
    responses(
        (status = 201, body = CredentialView),
        (status = 400, description = "TTL above the plan's maximum, or malformed", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "The caller is locked out", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The tenant is not active, or its database has no login roles", body = ErrorBody),
        (status = 503, description = "The audit stream could not record it: nothing was handed out", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn issue_credential(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    body: Result<Json<IssueCredentialRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    record_tenant(&tenant);
    let Json(body) = body?;
    let ttl = super::ttl(body.ttl.as_deref())?;
    let access = body.access.unwrap_or(Access::Write);
    let issued = state.vault.issue_credential(&actor, &tenant, access, ttl).await?;
    let view = CredentialView {
        lease: LeaseView::from(issued.lease),
        url: issued.url.as_str().to_owned(),
    };
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// List the tenant's leases: live ones, or all with `all=true`.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/credentials", tag = "vault",
    params(("tenant" = String, Path, description = "Tenant name"), LeaseListParams),
    responses((status = 200, body = LeaseList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn list_credentials(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    params: Result<Query<LeaseListParams>, QueryRejection>,
) -> Result<Json<LeaseList>, ApiError> {
    record_tenant(&tenant);
    let Query(params) = params?;
    let leases = state.vault.list_credentials(&actor, &tenant, params.all).await?;
    let operator = actor.is_operator();
    let leases = leases.into_iter().map(|l| LeaseView::for_operator(l, operator)).collect();
    Ok(Json(LeaseList { leases }))
}

/// Revoke a lease now: its sessions end and its role is dropped.
#[utoipa::path(
    delete, path = "/v1/credentials/{lease}", tag = "vault",
    params(("lease" = String, Path, description = "Lease id")),
    responses(
        (status = 200, body = LeaseView),
        (status = 401, body = ErrorBody),
        (status = 404, description = "No such lease", body = ErrorBody),
        (status = 409, description = "Already revoked", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn revoke_credential(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(lease): Path<String>,
) -> Result<Json<LeaseView>, ApiError> {
    let lease = state.vault.revoke_credential(&actor, None, &lease).await?;
    Ok(Json(LeaseView::for_operator(lease, actor.is_operator())))
}

/// Revoke one of the tenant's leases: the same as `DELETE
/// /v1/credentials/{lease}`, on the tenant's own path, where its own
/// credentials reach.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}/credentials/{lease}", tag = "vault",
    params(
        ("tenant" = String, Path, description = "Tenant name"),
        ("lease" = String, Path, description = "Lease id"),
    ),
    responses(
        (status = 200, body = LeaseView),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Needs the admin role", body = ErrorBody),
        (status = 404, description = "No such lease for this tenant", body = ErrorBody),
        (status = 409, description = "Already revoked", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn revoke_tenant_credential(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, lease)): Path<(String, String)>,
) -> Result<Json<LeaseView>, ApiError> {
    record_tenant(&tenant);
    let lease = state.vault.revoke_credential(&actor, Some(&tenant), &lease).await?;
    Ok(Json(LeaseView::for_operator(lease, actor.is_operator())))
}

/// Principals refused by anomaly detection.
#[utoipa::path(
    get, path = "/v1/vault/lockouts", tag = "vault",
    responses((status = 200, body = LockoutList), (status = 401, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn list_lockouts(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<LockoutList>, ApiError> {
    let lockouts = state.vault.lockouts(&actor).await?;
    Ok(Json(LockoutList { lockouts: lockouts.into_iter().map(LockoutView::from).collect() }))
}

/// Clear a principal's lockout.
#[utoipa::path(
    delete, path = "/v1/vault/lockouts/{principal}", tag = "vault",
    params(("principal" = String, Path, description = "The principal, e.g. operator:initial")),
    responses((status = 204, description = "Cleared"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn clear_lockout(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(principal): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.vault.unlock(&actor, &principal).await?;
    Ok(StatusCode::NO_CONTENT)
}
