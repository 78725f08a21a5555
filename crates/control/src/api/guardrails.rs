//! A tenant's guardrails over HTTP: what the gateway's guard phase checks
//! request bodies for.

use axum::{
    Extension, Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
};
use bulkhead_model::GuardrailSpec;

use super::{
    AppState,
    error::{ApiError, ErrorCode},
    record_tenant,
    types::{ErrorBody, GuardrailApplied, GuardrailList},
};
use crate::events::Actor;

/// The tenant's guardrails, by name.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/guardrails", tag = "guardrails",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = GuardrailList)),
    security(("operator_token" = []))
)]
pub async fn list_guardrails(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<GuardrailList>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(GuardrailList { guardrails: state.resources.list(&actor, &tenant).await? }))
}

/// One guardrail of the tenant.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/guardrails/{name}", tag = "guardrails",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "Guardrail name")),
    responses((status = 200, body = GuardrailSpec), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn get_guardrail(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<GuardrailSpec>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(state.resources.get(&actor, &tenant, &name).await?))
}

/// Create or replace a guardrail (what `bulkhead apply` does): the body
/// is the whole spec, and its name must be the path's. Every pattern is
/// compiled here, so one that would be too costly is refused now rather
/// than slowing requests.
#[utoipa::path(
    put, path = "/v1/tenants/{tenant}/guardrails/{name}", tag = "guardrails",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "Guardrail name")),
    request_body = GuardrailSpec,
    responses(
        (status = 200, description = "Changed or unchanged", body = GuardrailApplied),
        (status = 201, body = GuardrailApplied),
        (status = 400, description = "Invalid, or names an API the tenant lacks", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn put_guardrail(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
    body: Result<Json<GuardrailSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<GuardrailApplied>), ApiError> {
    record_tenant(&tenant);
    let Json(spec) = body?;
    if spec.name != name {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the body names guardrail {:?} but the path names {name:?}", spec.name),
        ));
    }
    let (guardrail, result) = state.resources.put(&actor, &tenant, spec).await?;
    let status =
        if result == crate::apis::Applied::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(GuardrailApplied { guardrail, result: result.as_str().to_owned() })))
}

/// Delete a guardrail: the gateway stops applying it at once.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}/guardrails/{name}", tag = "guardrails",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "Guardrail name")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn delete_guardrail(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    record_tenant(&tenant);
    state.resources.delete::<GuardrailSpec>(&actor, &tenant, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
