//! A tenant's APIs over HTTP: the contracts the gateway routes by.

use axum::{
    Extension, Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
};
use bulkhead_model::ApiSpec;

use super::{
    AppState,
    auth::operator_only,
    error::{ApiError, ErrorCode},
    record_tenant,
    types::{ApiApplied, ApiList, ErrorBody, PublicApi, PublicApiList},
};
use crate::{apis::Applied, events::Actor};

fn applied(spec: ApiSpec, result: Applied) -> (StatusCode, Json<ApiApplied>) {
    let status = if result == Applied::Created { StatusCode::CREATED } else { StatusCode::OK };
    (status, Json(ApiApplied { api: spec, result: result.as_str().to_owned() }))
}

/// Create an API of the tenant: a path prefix on the tenant's host and the
/// upstreams behind it.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/apis", tag = "apis",
    params(("tenant" = String, Path, description = "Tenant name")),
    request_body = ApiSpec,
    responses(
        (status = 201, body = ApiApplied),
        (status = 409, description = "The name or the prefix is taken", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn create_api(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    body: Result<Json<ApiSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<ApiApplied>), ApiError> {
    record_tenant(&tenant);
    let Json(spec) = body?;
    let (spec, result) = state.apis.put(&actor, &tenant, spec, false).await?;
    Ok(applied(spec, result))
}

/// The tenant's APIs.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/apis", tag = "apis",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = ApiList)),
    security(("operator_token" = []))
)]
pub async fn list_apis(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<ApiList>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(ApiList { apis: state.apis.list(&actor, &tenant).await? }))
}

/// One API of the tenant.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/apis/{name}", tag = "apis",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "API name")),
    responses((status = 200, body = ApiSpec)),
    security(("operator_token" = []))
)]
pub async fn get_api(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<ApiSpec>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(state.apis.get(&actor, &tenant, &name).await?))
}

/// Create or change an API (what `bulkhead apply` does): the body is the
/// whole spec, and its name must be the path's.
#[utoipa::path(
    put, path = "/v1/tenants/{tenant}/apis/{name}", tag = "apis",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "API name")),
    request_body = ApiSpec,
    responses(
        (status = 200, description = "Changed or unchanged", body = ApiApplied),
        (status = 201, body = ApiApplied),
        (status = 409, description = "The prefix is another API's", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn put_api(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
    body: Result<Json<ApiSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<ApiApplied>), ApiError> {
    record_tenant(&tenant);
    let Json(spec) = body?;
    if spec.name.as_str() != name {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the body names API {:?} but the path names {name:?}", spec.name.as_str()),
        ));
    }
    let (spec, result) = state.apis.put(&actor, &tenant, spec, true).await?;
    Ok(applied(spec, result))
}

/// Delete an API: the gateway stops routing to it at once.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}/apis/{name}", tag = "apis",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "API name")),
    responses((status = 204, description = "Deleted")),
    security(("operator_token" = []))
)]
pub async fn delete_api(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    record_tenant(&tenant);
    state.apis.delete(&actor, &tenant, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every API, of every tenant, that answers without a credential
/// (`auth: public`): what `bulkhead verify` lists. Operators only.
#[utoipa::path(
    get, path = "/v1/apis/public", tag = "apis",
    responses((status = 200, body = PublicApiList), (status = 403, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn public_apis(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<PublicApiList>, ApiError> {
    operator_only(&actor)?;
    let apis = state.apis.public().await?;
    Ok(Json(PublicApiList {
        apis: apis
            .into_iter()
            .map(|(tenant, api)| PublicApi { tenant: tenant.to_string(), api })
            .collect(),
    }))
}
