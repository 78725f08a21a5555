//! `/v1/tenants`: the tenant lifecycle.

use axum::{
    Extension, Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::{StatusCode, header},
    response::IntoResponse,
};
use bulkhead_model::{TenantId, TenantState};
use bulkhead_store::TenantPage;

use super::auth::operator_only;
use super::{
    AppState,
    error::{ApiError, ErrorCode},
    record_tenant,
    types::{
        CreateTenantRequest, DeleteTenantParams, ErrorBody, ListTenantsParams, TenantList,
        TenantView, UpdateTenantRequest,
    },
};
use crate::{events::Actor, tenants::TenantError};
use bulkhead_identity::Permission;

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1_000;

/// Create a tenant. Answers at once with the tenant `provisioning`; poll it
/// until it is `active` or `failed`.
#[utoipa::path(
    post, path = "/v1/tenants", tag = "tenants",
    request_body = CreateTenantRequest,
    responses(
        (status = 202, description = "Recorded; provisioning has started", body = TenantView,
         headers(("location" = String, description = "The tenant's URL"))),
        (status = 400, description = "Invalid name, unknown plan or region, unavailable isolation, invalid limits, malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid operator token", body = ErrorBody),
        (status = 409, description = "A tenant with this name exists", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn create_tenant(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Result<Json<CreateTenantRequest>, JsonRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Json(body) = body?;
    record_tenant(&body.name);
    let tenant = state.tenants.create(body, &actor).await?;
    let location = format!("/v1/tenants/{}", tenant.name);
    let view = TenantView::new(tenant, &state.base_domain).with_steps(&state.step_names, &[]);
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(view)))
}

/// List tenants by name, a page at a time.
#[utoipa::path(
    get, path = "/v1/tenants", tag = "tenants",
    params(ListTenantsParams),
    responses(
        (status = 200, body = TenantList),
        (status = 400, description = "Invalid paging or state filter", body = ErrorBody),
        (status = 401, body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn list_tenants(
    State(state): State<AppState>,
    params: Result<Query<ListTenantsParams>, QueryRejection>,
) -> Result<Json<TenantList>, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("limit {limit} is out of range; use 1 to {MAX_PAGE}"),
        ));
    }
    let state_filter = params
        .state
        .as_deref()
        .map(str::parse::<TenantState>)
        .transpose()
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    let page = TenantPage { after: params.after.clone(), state: state_filter, limit };
    let mut tenants: Vec<TenantView> = state
        .tenants
        .list(&page)
        .await?
        .into_iter()
        .map(|t| TenantView::new(t, &state.base_domain))
        .collect();
    // Deleted tenants are departures now (their records left the tenant
    // table to free their names), listed with those deleted before.
    if state_filter == Some(TenantState::Deleted) {
        let after = params.after.as_deref().unwrap_or("");
        tenants.extend(
            state
                .backups
                .departures()
                .await?
                .iter()
                .filter(|d| d.name.as_str() > after)
                .filter_map(|d| TenantView::departed(d, &state.base_domain)),
        );
        tenants.sort_by(|a, b| a.tenant.name.as_str().cmp(b.tenant.name.as_str()));
        tenants.truncate(limit as usize);
    }
    let next_after = match tenants.last() {
        Some(last) if tenants.len() == limit as usize => Some(last.tenant.name.to_string()),
        _ => None,
    };
    Ok(Json(TenantList { tenants, next_after }))
}

/// Get one tenant, with the progress of every provisioning step.
#[utoipa::path(
    get, path = "/v1/tenants/{name}", tag = "tenants",
    params(("name" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, body = TenantView),
        (status = 400, description = "Not a valid tenant name", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn get_tenant(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    record_tenant(&name);
    let (tenant, steps) = match state.tenants.get(&name).await {
        Ok(found) => found,
        Err(TenantError::NotFound(missing)) => {
            return match departed(&state, &actor, &name).await? {
                Some(view) => Ok(Json(view)),
                None => Err(TenantError::NotFound(missing).into()),
            };
        }
        Err(error) => return Err(error.into()),
    };
    if !actor.allows(&tenant, Permission::Read) {
        return Err(ApiError::new(ErrorCode::Forbidden, "your roles do not allow this"));
    }
    let view = TenantView::new(tenant, &state.base_domain).with_steps(&state.step_names, &steps);
    Ok(Json(if actor.is_operator() { view } else { view.for_tenant() }))
}

/// Change a tenant's plan or limits (or both). Its isolation and region
/// cannot change: a body may repeat them, not change them. A field left out
/// stays as it is; a body that changes nothing answers with the tenant as
/// it is.
#[utoipa::path(
    patch, path = "/v1/tenants/{name}", tag = "tenants",
    params(("name" = String, Path, description = "Tenant name")),
    request_body = UpdateTenantRequest,
    responses(
        (status = 200, description = "Changed, or already so", body = TenantView),
        (status = 400, description = "Unknown plan, invalid limits, malformed JSON", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The body would change the tenant's isolation or region (`immutable_field`), or the tenant is failed or being deleted", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn update_tenant(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    body: Result<Json<UpdateTenantRequest>, JsonRejection>,
) -> Result<Json<TenantView>, ApiError> {
    record_tenant(&name);
    operator_only(&actor)?;
    let Json(body) = body?;
    let tenant = state.tenants.update(&name, body, &actor).await?;
    Ok(Json(TenantView::new(tenant, &state.base_domain)))
}

/// Suspend an active tenant. Suspending a suspended tenant changes nothing.
#[utoipa::path(
    post, path = "/v1/tenants/{name}/suspend", tag = "tenants",
    params(("name" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, body = TenantView),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The tenant is not active", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn suspend_tenant(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    record_tenant(&name);
    operator_only(&actor)?;
    let tenant = state.tenants.suspend(&name, &actor).await?;
    apply_suspensions(&state).await;
    Ok(Json(TenantView::new(tenant, &state.base_domain)))
}

/// Disables a suspended tenant's database logins (ending their sessions)
/// or enables a resumed one's, now; the lease sweeper retries whatever
/// fails here, so the answer does not wait on a region that is down.
async fn apply_suspensions(state: &AppState) {
    if let Err(error) = state.vault.apply_suspensions().await {
        tracing::warn!(%error, "cannot apply the suspension to database credentials yet; the sweeper retries");
    }
}

/// Resume a suspended tenant. Resuming an active tenant changes nothing.
#[utoipa::path(
    post, path = "/v1/tenants/{name}/resume", tag = "tenants",
    params(("name" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, body = TenantView),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The tenant is not suspended", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn resume_tenant(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    record_tenant(&name);
    operator_only(&actor)?;
    let tenant = state.tenants.resume(&name, &actor).await?;
    apply_suspensions(&state).await;
    Ok(Json(TenantView::new(tenant, &state.base_domain)))
}

/// Offboard a tenant: undo its provisioning in reverse. With `purge=true`
/// its record goes too. Answers at once with the tenant `offboarding`.
#[utoipa::path(
    delete, path = "/v1/tenants/{name}", tag = "tenants",
    params(("name" = String, Path, description = "Tenant name"), DeleteTenantParams),
    responses(
        (status = 202, description = "Offboarding has started (or had already)", body = TenantView),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "The tenant is still provisioning", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn delete_tenant(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    params: Result<Query<DeleteTenantParams>, QueryRejection>,
) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    record_tenant(&name);
    operator_only(&actor)?;
    let Query(params) = params?;
    if let Some(id) = params.departed {
        if !params.purge {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "`departed` names a deleted tenant to purge: give `purge=true` with it",
            ));
        }
        return purge_departure(&state, &actor, &name, TenantId(id)).await;
    }
    let tenant = match state.tenants.delete(&name, params.purge, &actor).await {
        Ok(tenant) => tenant,
        // A deleted tenant's departure: kept, or with --purge destroyed.
        Err(TenantError::NotFound(missing)) => {
            let Some(view) = departed(&state, &actor, &name).await? else {
                return Err(TenantError::NotFound(missing).into());
            };
            if params.purge {
                return purge_departure(&state, &actor, &name, view.tenant.id).await;
            }
            return Ok((StatusCode::ACCEPTED, Json(view)));
        }
        Err(error) => return Err(error.into()),
    };
    // With its steps: a client waiting for a purge may never see the tenant
    // again, and still names every step undone.
    let (tenant, steps) = match state.tenants.get(tenant.name.as_str()).await {
        Ok((tenant, steps)) => (tenant, steps),
        Err(_) => (tenant, Vec::new()),
    };
    let view = TenantView::new(tenant, &state.base_domain).with_steps(&state.step_names, &steps);
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// The departed tenant of this name, as the actor may see it.
async fn departed(
    state: &AppState,
    actor: &Actor,
    name: &str,
) -> Result<Option<TenantView>, ApiError> {
    let Some(departed) = state.backups.departed(name).await? else { return Ok(None) };
    let view = TenantView::departed(&departed, &state.base_domain)
        .filter(|view| actor.may_access(&view.tenant));
    Ok(view.map(|view| if actor.is_operator() { view } else { view.for_tenant() }))
}

/// Destroys the final snapshot of the deleted tenant `id` of this name, and
/// answers with the tenant as it left.
async fn purge_departure(
    state: &AppState,
    actor: &Actor,
    name: &str,
    id: TenantId,
) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    let departed = state.backups.purge_departed(actor, name, id).await?;
    let mut view = TenantView::departed(&departed, &state.base_domain)
        .ok_or_else(|| ApiError::new(ErrorCode::TenantNotFound, "its record is unreadable"))?;
    view.departure = None;
    Ok((StatusCode::ACCEPTED, Json(view)))
}
