//! A tenant's apps over HTTP: deployed, started, stopped, pinned, deleted,
//! their workers' logs, and rollouts of a version across tenants.

use axum::{
    Extension, Json,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::StatusCode,
};
use bulkhead_model::AppSpec;
use serde::{Deserialize, Serialize};

use super::{
    AppState,
    error::{ApiError, ErrorCode},
    record_tenant,
    types::ErrorBody,
};
use crate::{
    apps::AppView,
    events::Actor,
    rollouts::{Rollout, RolloutRequest, Steer},
};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AppList {
    pub apps: Vec<AppView>,
}

/// Deploy an app: create it, or replace its spec with this one (a new
/// version, say). Its workers start, or restart with the new spec.
#[utoipa::path(
    put, path = "/v1/tenants/{tenant}/apps/{name}", tag = "apps",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "App name")),
    request_body = AppSpec,
    responses(
        (status = 200, description = "Replaced", body = AppView),
        (status = 201, body = AppView),
        (status = 400, body = ErrorBody),
        (status = 503, description = "This server runs no apps", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn deploy_app(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
    body: Result<Json<AppSpec>, JsonRejection>,
) -> Result<(StatusCode, Json<AppView>), ApiError> {
    record_tenant(&tenant);
    let Json(spec) = body?;
    if spec.name.as_str() != name {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the body names app {:?} but the path names {name:?}", spec.name.as_str()),
        ));
    }
    let (view, created) = state.apps.deploy(&actor, &tenant, spec).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(view)))
}

/// The tenant's apps, with their workers.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/apps", tag = "apps",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = AppList)),
    security(("operator_token" = []))
)]
pub async fn list_apps(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<AppList>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(AppList { apps: state.apps.list(&actor, &tenant).await? }))
}

/// One app of the tenant, with its workers.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/apps/{name}", tag = "apps",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "App name")),
    responses((status = 200, body = AppView), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn get_app(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<AppView>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(state.apps.get(&actor, &tenant, &name).await?))
}

/// Delete an app: its workers stop (SIGTERM, then SIGKILL after the grace
/// period).
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}/apps/{name}", tag = "apps",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "App name")),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn delete_app(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    record_tenant(&tenant);
    state.apps.delete(&actor, &tenant, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Start a stopped app.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/apps/{name}/start", tag = "apps",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "App name")),
    responses((status = 200, body = AppView), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn start_app(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<AppView>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(state.apps.set_running(&actor, &tenant, &name, true).await?))
}

/// Stop an app's workers; it stays deployed.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/apps/{name}/stop", tag = "apps",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "App name")),
    responses((status = 200, body = AppView), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn stop_app(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<AppView>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(state.apps.set_running(&actor, &tenant, &name, false).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Which worker (0 by default).
    #[param(minimum = 0, maximum = 15)]
    pub worker: Option<u32>,
    /// Only lines written at or after this time: RFC 3339, or a duration
    /// back from now (10m, 2h).
    pub since: Option<String>,
    /// At most this many lines, the newest (1000 by default).
    #[param(minimum = 1, maximum = 100000)]
    pub tail: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AppLogs {
    /// `<RFC 3339 time> <stdout|stderr> <text>`, oldest first.
    pub lines: Vec<String>,
}

/// A worker's standard output and error, as the runtime wrote them.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/apps/{name}/logs", tag = "apps",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "App name"), LogQuery),
    responses((status = 200, body = AppLogs), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn app_logs(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
    query: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Json<AppLogs>, ApiError> {
    record_tenant(&tenant);
    let Query(query) = query?;
    let worker = query.worker.unwrap_or(0);
    let tail = query.tail.unwrap_or(1000);
    if worker >= bulkhead_model::MAX_WORKERS || !(1..=100_000).contains(&tail) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "worker is 0 to 15 and tail 1 to 100000",
        ));
    }
    let since = super::since(query.since.as_deref(), state.audit.now())?;
    Ok(Json(AppLogs { lines: state.apps.logs(&actor, &tenant, &name, worker, since, tail).await? }))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Flags {
    /// Each flag's value, by name.
    pub flags: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagChanges {
    /// Flags to set (names: a-z, 0-9, '.', '_', '-'; values up to 4096 bytes).
    #[serde(default)]
    pub set: std::collections::BTreeMap<String, String>,
    /// Flags to remove.
    #[serde(default)]
    pub unset: Vec<String>,
}

/// The tenant's configuration and feature flags, as its workers read them
/// from `$BULKHEAD_FLAGS`.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/flags", tag = "apps",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = Flags), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn get_flags(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
) -> Result<Json<Flags>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(Flags { flags: state.apps.flags(&actor, &tenant).await? }))
}

/// Set and remove flags, all or none: the tenant's workers find the new
/// file and get a SIGHUP to read it.
#[utoipa::path(
    patch, path = "/v1/tenants/{tenant}/flags", tag = "apps",
    params(("tenant" = String, Path, description = "Tenant name")),
    request_body = FlagChanges,
    responses((status = 200, body = Flags), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn change_flags(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    body: Result<Json<FlagChanges>, JsonRejection>,
) -> Result<Json<Flags>, ApiError> {
    record_tenant(&tenant);
    let Json(changes) = body?;
    Ok(Json(Flags {
        flags: state.apps.set_flags(&actor, &tenant, changes.set, changes.unset).await?,
    }))
}

/// Keep an app out of rollouts: it stays on its version until unpinned (a
/// deploy still changes it).
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/apps/{name}/pin", tag = "apps",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "App name")),
    responses((status = 200, body = AppView), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn pin_app(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<AppView>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(state.apps.set_pinned(&actor, &tenant, &name, true).await?))
}

/// Let rollouts move the app again.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/apps/{name}/unpin", tag = "apps",
    params(("tenant" = String, Path, description = "Tenant name"), ("name" = String, Path, description = "App name")),
    responses((status = 200, body = AppView), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn unpin_app(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<AppView>, ApiError> {
    record_tenant(&tenant);
    Ok(Json(state.apps.set_pinned(&actor, &tenant, &name, false).await?))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RolloutList {
    pub rollouts: Vec<Rollout>,
}

/// Start a rollout: every tenant's app of this name moves to the version,
/// canary tenants first, then batch by batch, each tenant switched only
/// once its new workers pass their health check.
#[utoipa::path(
    post, path = "/v1/rollouts", tag = "apps",
    request_body = RolloutRequest,
    responses(
        (status = 201, body = Rollout),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, description = "The app has a rollout under way", body = ErrorBody),
        (status = 503, description = "This server runs no apps", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn start_rollout(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Result<Json<RolloutRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Rollout>), ApiError> {
    let Json(request) = body?;
    Ok((StatusCode::CREATED, Json(state.rollouts.start(&actor, request).await?)))
}

/// The latest rollouts, newest first.
#[utoipa::path(
    get, path = "/v1/rollouts", tag = "apps",
    responses((status = 200, body = RolloutList), (status = 403, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn list_rollouts(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<RolloutList>, ApiError> {
    Ok(Json(RolloutList { rollouts: state.rollouts.list(&actor).await? }))
}

/// One rollout, with each tenant's step.
#[utoipa::path(
    get, path = "/v1/rollouts/{id}", tag = "apps",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = Rollout), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn get_rollout(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    Ok(Json(state.rollouts.get(&actor, &id).await?))
}

/// Pause a rollout: no new batch starts; tenants switching finish.
#[utoipa::path(
    post, path = "/v1/rollouts/{id}/pause", tag = "apps",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = Rollout), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn pause_rollout(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    Ok(Json(state.rollouts.steer(&actor, &id, Steer::Pause).await?))
}

/// Resume a paused rollout, or a halted one (allowing as many failed
/// tenants again).
#[utoipa::path(
    post, path = "/v1/rollouts/{id}/resume", tag = "apps",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = Rollout), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn resume_rollout(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    Ok(Json(state.rollouts.steer(&actor, &id, Steer::Resume).await?))
}

/// Abort a rollout: the tenants not moved yet stay where they are (those
/// moved stay too).
#[utoipa::path(
    post, path = "/v1/rollouts/{id}/abort", tag = "apps",
    params(("id" = String, Path, description = "Rollout id")),
    responses((status = 200, body = Rollout), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn abort_rollout(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    Ok(Json(state.rollouts.steer(&actor, &id, Steer::Abort).await?))
}
