//! A tenant's guardrails and tools over HTTP: what the gateway's guard
//! phase checks request bodies for, and what the tenant's agents may call
//! through its MCP endpoint. One handler body per verb serves both kinds;
//! the functions here give each its path and schema.

use axum::{
    Extension, Json,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
};
use bulkhead_model::{GuardrailSpec, ToolSpec};

use super::{
    AppState,
    error::{ApiError, ErrorCode},
    record_tenant,
    types::{ErrorBody, GuardrailApplied, GuardrailList, ToolApplied, ToolList},
};
use crate::{apis::Applied, events::Actor, resources::Resource};

/// Creates or replaces `spec` as the path names it.
async fn put<R: Resource>(
    state: &AppState,
    actor: &Actor,
    tenant: &str,
    name: &str,
    body: Result<Json<R>, JsonRejection>,
) -> Result<(StatusCode, R, Applied), ApiError> {
    record_tenant(tenant);
    let Json(spec) = body?;
    if spec.name() != name {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the body names {} {:?} but the path names {name:?}", R::KIND, spec.name()),
        ));
    }
    let (spec, result) = state.resources.put(actor, tenant, spec).await?;
    let status = if result == Applied::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, spec, result))
}

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
    let (status, guardrail, result) = put(&state, &actor, &tenant, &name, body).await?;
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

/// The tenant's tool registry, by name.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/tools", tag = "tools",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = ToolList)),
    security(("operator_token" = []))
)]
pub async fn list_tools(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<ToolList>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(ToolList { tools: state.resources.list(&actor, &tenant).await? }))
}

/// One entry of the tenant's tool registry.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/tools/{name}", tag = "tools",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "Tool name")),
    responses((status = 200, body = ToolSpec), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn get_tool(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<ToolSpec>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(state.resources.get(&actor, &tenant, &name).await?))
}

/// Register or change a tool (what `bulkhead apply` and `bulkhead tools
/// add` do): an MCP server or an HTTP endpoint, the roles that may call
/// it, and the tenant secret that authenticates the gateway to it.
#[utoipa::path(
    put, path = "/v1/tenants/{tenant}/tools/{name}", tag = "tools",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "Tool name")),
    request_body = ToolSpec,
    responses(
        (status = 200, description = "Changed or unchanged", body = ToolApplied),
        (status = 201, body = ToolApplied),
        (status = 400, body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn put_tool(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
    body: Result<Json<ToolSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<ToolApplied>), ApiError> {
    let (status, tool, result) = put(&state, &actor, &tenant, &name, body).await?;
    Ok((status, Json(ToolApplied { tool, result: result.as_str().to_owned() })))
}

/// Remove a tool from the registry: the tenant's agents stop seeing it at
/// once.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}/tools/{name}", tag = "tools",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "Tool name")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn delete_tool(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    record_tenant(&tenant);
    state.resources.delete::<ToolSpec>(&actor, &tenant, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
