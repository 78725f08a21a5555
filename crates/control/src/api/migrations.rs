//! `/v1/migrations`: rolling an application's schema migrations across
//! tenant databases, as jobs the server runs (see `crate::migrations`).

use axum::{
    Extension, Json,
    extract::{Path, Query, State, rejection::JsonRejection, rejection::QueryRejection},
    http::StatusCode,
};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::{
    AppState,
    auth::operator_only,
    error::{ApiError, ErrorCode, store_error},
    types::{ErrorBody, MigrationJobList, MigrationJobView, StartMigrationRequest},
};
use crate::{
    events::Actor,
    migrations::{Canary, MigrationError, MigrationRequest},
};

/// The largest request: the files travel in it.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Start a migration job: the files are applied to every tenant database
/// in scope (a region's pool once), each database in one transaction with
/// its version recorded, canaries first. Answers at once; follow the job
/// with `GET /v1/migrations/{id}`. One job runs at a time. Operators only.
#[utoipa::path(
    post, path = "/v1/migrations", tag = "migrations",
    request_body = StartMigrationRequest,
    responses(
        (status = 202, description = "Recorded and started", body = MigrationJobView),
        (status = 400, description = "A file name, a canary, a concurrency or a halt-after that is not valid, or nothing to migrate", body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No tenant of a name given", body = ErrorBody),
        (status = 409, description = "Another job is running", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn start_migration(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    body: Result<Json<StartMigrationRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<MigrationJobView>), ApiError> {
    operator_only(&actor)?;
    let Json(body) = body?;
    let canary = Canary::parse(&body.canary).map_err(invalid)?;
    let request = MigrationRequest {
        files: body.files.into_iter().map(|f| (f.name, f.sql)).collect(),
        tenants: body.tenants,
        canary,
        concurrency: body.concurrency,
        halt_after: body.halt_after,
        dry_run: body.dry_run,
    };
    let report = state.migrations.start(&actor, request).await.map_err(migration_error)?;
    Ok((StatusCode::ACCEPTED, Json(MigrationJobView::new(report, true))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListMigrationsParams {
    /// How many of the latest jobs (1 to 100, default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<u32>,
}

/// The latest migration jobs, newest first, each with how many databases
/// are in each state. Operators only.
#[utoipa::path(
    get, path = "/v1/migrations", tag = "migrations",
    params(ListMigrationsParams),
    responses(
        (status = 200, body = MigrationJobList),
        (status = 400, description = "A limit out of range", body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn list_migrations(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    params: Result<Query<ListMigrationsParams>, QueryRejection>,
) -> Result<Json<MigrationJobList>, ApiError> {
    operator_only(&actor)?;
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(invalid(format!("limit {limit} is out of range; use 1 to 100")));
    }
    let jobs = state.migrations.jobs(limit).await.map_err(migration_error)?;
    Ok(Json(MigrationJobList {
        jobs: jobs.into_iter().map(|job| MigrationJobView::new(job, false)).collect(),
    }))
}

/// One migration job, with every database's state. Operators only.
#[utoipa::path(
    get, path = "/v1/migrations/{id}", tag = "migrations",
    params(("id" = Uuid, Path, description = "The job's id")),
    responses(
        (status = 200, body = MigrationJobView),
        (status = 403, body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn get_migration(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Json<MigrationJobView>, ApiError> {
    operator_only(&actor)?;
    let not_found =
        || ApiError::new(ErrorCode::MigrationNotFound, format!("no migration job {id:?}"));
    let uuid = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let report =
        state.migrations.job(uuid).await.map_err(migration_error)?.ok_or_else(not_found)?;
    Ok(Json(MigrationJobView::new(report, true)))
}

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidRequest, message)
}

fn migration_error(error: MigrationError) -> ApiError {
    match error {
        MigrationError::Invalid(message) => invalid(message),
        MigrationError::UnknownTenant(_) => {
            ApiError::new(ErrorCode::TenantNotFound, error.to_string())
        }
        MigrationError::Running(_) => ApiError::new(ErrorCode::Conflict, error.to_string()),
        MigrationError::Store(store) => store_error(&store),
    }
}
