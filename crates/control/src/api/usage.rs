//! A tenant's gateway usage over HTTP.

use axum::{
    Extension, Json,
    extract::{Path, Query, State, rejection::QueryRejection},
};
use bulkhead_meter::UsageRow;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{AppState, error::ApiError, record_tenant};
use crate::events::Actor;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageParams {
    /// Only this API's usage.
    pub api: Option<String>,
    /// From this time on: RFC 3339 or a duration back from now (`24h`);
    /// the last hour unless given.
    pub since: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageList {
    /// One row per API and minute, oldest first.
    pub usage: Vec<UsageRow>,
}

/// The tenant's gateway usage per API and minute: requests, refusals by
/// phase, bytes and upstream latency.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/usage", tag = "apis",
    params(("tenant" = String, Path, description = "Tenant name"), UsageParams),
    responses((status = 200, body = UsageList)),
    security(("operator_token" = []))
)]
pub async fn tenant_usage(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    params: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Json<UsageList>, ApiError> {
    record_tenant(&tenant);
    let Query(params) = params?;
    let now = state.audit.now();
    let since =
        super::since(params.since.as_deref(), now)?.unwrap_or(now - time::Duration::hours(1));
    let usage =
        crate::usage::usage(state.store.as_ref(), &actor, &tenant, params.api.as_deref(), since)
            .await?;
    Ok(Json(UsageList { usage }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// The month, `YYYY-MM` (UTC).
    pub period: String,
}

/// Every tenant's billing ledger of one month (operators only): one line
/// per tenant, API, model or tool, and day, with requests, tokens and cost,
/// and their totals.
#[utoipa::path(
    get, path = "/v1/usage/export", tag = "apis",
    params(ExportParams),
    responses((status = 200, body = crate::usage::UsageExport)),
    security(("operator_token" = []))
)]
pub async fn usage_export(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    params: Result<Query<ExportParams>, QueryRejection>,
) -> Result<Json<crate::usage::UsageExport>, ApiError> {
    let Query(params) = params?;
    let export = crate::usage::export(state.store.as_ref(), &actor, &params.period, None).await?;
    Ok(Json(export))
}

/// The tenant's billing ledger of one month, as `/v1/usage/export` gives
/// it; any role of the tenant may read it.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/usage/export", tag = "apis",
    params(("tenant" = String, Path, description = "Tenant name"), ExportParams),
    responses((status = 200, body = crate::usage::UsageExport)),
    security(("operator_token" = []))
)]
pub async fn tenant_usage_export(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    params: Result<Query<ExportParams>, QueryRejection>,
) -> Result<Json<crate::usage::UsageExport>, ApiError> {
    record_tenant(&tenant);
    let Query(params) = params?;
    let export =
        crate::usage::export(state.store.as_ref(), &actor, &params.period, Some(&tenant)).await?;
    Ok(Json(export))
}
