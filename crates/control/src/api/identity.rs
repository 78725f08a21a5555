//! Realms over HTTP: the public OIDC documents of every tenant's realm,
//! and the authenticated endpoints that mint tokens, rotate realm keys and
//! manage API keys.

use axum::{
    Extension, Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bulkhead_identity::Algorithm;

use super::{
    AppState,
    error::{ApiError, ErrorCode},
    record_tenant,
    types::{
        ApiKeyCreated, ApiKeyList, ApiKeyView, CreateApiKeyRequest, ErrorBody, IssueTokenRequest,
        Jwks, RealmKeyList, RealmKeyView, RevokedTokensView, RotateRealmKeyParams,
        RotateRealmKeyView, TokenView, TrustRequest, TrustView,
    },
};
use crate::{
    events::Actor,
    identity::{TokenRequest, TrustConfig},
};

/// Realm documents change only when a key rotates, and rotation keeps old
/// keys published longer than this.
pub(super) fn cacheable(json: impl IntoResponse) -> Response {
    let mut response = json.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    response
}

/// The realm's OpenID Provider metadata.
#[utoipa::path(
    get, path = "/realms/{tenant}/.well-known/openid-configuration", tag = "realms",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, description = "OpenID Provider metadata", body = Object),
        (status = 404, description = "No such realm", body = ErrorBody),
    )
)]
pub async fn discovery(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    record_tenant(&tenant);
    Ok(cacheable(Json(state.identity.discovery(&tenant).await?)))
}

/// The realm's public signing keys (RFC 7517).
#[utoipa::path(
    get, path = "/realms/{tenant}/jwks.json", tag = "realms",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, body = Jwks),
        (status = 404, description = "No such realm", body = ErrorBody),
    )
)]
pub async fn jwks(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    record_tenant(&tenant);
    let keys = state.identity.jwks(&tenant).await?;
    Ok(cacheable(Json(Jwks { keys: keys.into_iter().map(|k| serde_json::json!(k)).collect() })))
}

/// Mint a token of the tenant's realm.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/tokens", tag = "realms",
    params(("tenant" = String, Path, description = "Tenant name")),
    request_body = IssueTokenRequest,
    responses(
        (status = 201, body = TokenView),
        (status = 400, description = "Bad subject, role or TTL", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "A role above the caller's own", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 503, description = "The audit stream could not record it: nothing was handed out", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn issue_token(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    body: Result<Json<IssueTokenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    record_tenant(&tenant);
    let Json(body) = body?;
    let ttl = super::ttl(body.ttl.as_deref())?;
    let request = TokenRequest {
        subject: body.subject,
        roles: body.roles,
        ttl,
        audience: body.audience,
        control_api: body.control_api,
    };
    let issued = state.identity.issue_token(&actor, &tenant, request).await?;
    let view = TokenView {
        token: issued.token.as_str().to_owned(),
        token_type: "Bearer".into(),
        kid: issued.kid,
        expires_at: issued.claims.exp,
        claims: serde_json::json!(issued.claims),
    };
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Rotate the realm's signing key: the new key signs from now on; older
/// keys stay in the JWKS until every token they signed has expired.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/realm/rotate", tag = "realms",
    params(("tenant" = String, Path, description = "Tenant name"), RotateRealmKeyParams),
    responses((status = 200, body = RotateRealmKeyView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn rotate_realm_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    params: Result<Query<RotateRealmKeyParams>, QueryRejection>,
) -> Result<Json<RotateRealmKeyView>, ApiError> {
    record_tenant(&tenant);
    let Query(params) = params?;
    let algorithm = params
        .algorithm
        .as_deref()
        .map(Algorithm::parse_realm)
        .transpose()
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    let (kid, retired) = state.identity.rotate_key(&actor, &tenant, algorithm).await?;
    Ok(Json(RotateRealmKeyView { kid, retired }))
}

/// Refuse every token the realm has issued so far: for a leaked token or a
/// departing administrator. Tokens minted afterwards verify; API keys are
/// revoked one by one.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/realm/revoke-tokens", tag = "realms",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = RevokedTokensView), (status = 401, body = ErrorBody), (status = 403, description = "Needs the owner role", body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn revoke_realm_tokens(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<RevokedTokensView>, ApiError> {
    record_tenant(&tenant);
    let (not_before, api_keys_revoked) = state.identity.revoke_tokens(&actor, &tenant).await?;
    Ok(Json(RevokedTokensView { not_before, api_keys_revoked }))
}

/// The realm's published signing keys and their state.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/realm/keys", tag = "realms",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = RealmKeyList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn realm_keys(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<RealmKeyList>, ApiError> {
    record_tenant(&tenant);
    let keys = state.identity.realm_keys(&actor, &tenant).await?;
    Ok(Json(RealmKeyList { keys: keys.into_iter().map(RealmKeyView::from).collect() }))
}

/// Create an API key for a service of the tenant. The key is in this
/// response only; Bulkhead keeps its SHA-256.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/api-keys", tag = "realms",
    params(("tenant" = String, Path, description = "Tenant name")),
    request_body = CreateApiKeyRequest,
    responses(
        (status = 201, body = ApiKeyCreated),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The name is taken", body = ErrorBody),
        (status = 503, description = "The audit stream could not record it: nothing was handed out", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn create_api_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    body: Result<Json<CreateApiKeyRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    record_tenant(&tenant);
    let Json(body) = body?;
    let ttl = super::ttl(body.ttl.as_deref())?;
    let created =
        state.identity.create_api_key(&actor, &tenant, &body.name, body.roles, ttl).await?;
    let view = ApiKeyCreated {
        key: created.key.as_str().to_owned(),
        api_key: ApiKeyView::from(created.record),
    };
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The tenant's API keys: names, prefixes, roles, last use; never keys.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/api-keys", tag = "realms",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = ApiKeyList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn list_api_keys(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<ApiKeyList>, ApiError> {
    record_tenant(&tenant);
    let keys = state.identity.api_keys(&actor, &tenant).await?;
    Ok(Json(ApiKeyList { api_keys: keys.into_iter().map(ApiKeyView::from).collect() }))
}

/// Revoke an API key: it stops working at once.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}/api-keys/{id}", tag = "realms",
    params(("tenant" = String, Path, description = "Tenant name"), ("id" = String, Path, description = "API key id")),
    responses((status = 204, description = "Revoked"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "Already revoked", body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn revoke_api_key(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    record_tenant(&tenant);
    state.identity.revoke_api_key(&actor, &tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Trust an external identity provider for the tenant: its tokens, signed
/// by a key of its JWKS, act for this tenant only, with the roles the
/// mapping finds. The JWKS is fetched at once; a URL that does not serve
/// one is refused.
#[utoipa::path(
    put, path = "/v1/tenants/{tenant}/realm/trust", tag = "realms",
    params(("tenant" = String, Path, description = "Tenant name")),
    request_body = TrustRequest,
    responses(
        (status = 200, body = TrustView),
        (status = 400, description = "Bad URL or claim, or no usable JWKS there", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Needs the owner role", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn set_trust(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    body: Result<Json<TrustRequest>, JsonRejection>,
) -> Result<Json<TrustView>, ApiError> {
    record_tenant(&tenant);
    let Json(body) = body?;
    let config = TrustConfig {
        issuer: body.issuer,
        jwks_url: body.jwks_url,
        audience: body.audience,
        subject_claim: body.subject_claim.unwrap_or_else(|| "sub".into()),
        roles_claim: body.roles_claim.unwrap_or_else(|| "roles".into()),
        role_map: body.role_map,
    };
    Ok(Json(TrustView::from(state.identity.set_trust(&actor, &tenant, config).await?)))
}

/// The external identity provider the tenant trusts.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/realm/trust", tag = "realms",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = TrustView), (status = 401, body = ErrorBody), (status = 404, description = "No such tenant, or it trusts no provider", body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn get_trust(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<TrustView>, ApiError> {
    record_tenant(&tenant);
    match state.identity.trust(&actor, &tenant).await? {
        Some(trust) => Ok(Json(TrustView::from(trust))),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("tenant {tenant:?} trusts no external identity provider"),
        )),
    }
}

/// Stop trusting the external identity provider.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}/realm/trust", tag = "realms",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 204, description = "Removed"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn remove_trust(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<StatusCode, ApiError> {
    record_tenant(&tenant);
    state.identity.remove_trust(&actor, &tenant).await?;
    Ok(StatusCode::NO_CONTENT)
}
