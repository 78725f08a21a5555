//! Checks of the live installation, over HTTP.

use axum::{
    Extension, Json,
    extract::{Query, State, rejection::QueryRejection},
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{
    AppState,
    auth::operator_only,
    error::{ApiError, ErrorCode},
    types::IsolationReportView,
};
use crate::{events::Actor, verify::VerifyError};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VerifyParams {
    /// Only this tenant (and the pool of its region, if it is pooled).
    pub tenant: Option<String>,
}

/// Checks that no tenant can reach another: the pool's row-level security,
/// owners, policies and views, every tenant database closed to everyone
/// else, no application role bypassing row-level security, no lease role
/// left behind; and, as each tenant, with a short-lived login made for the
/// check, that other tenants' rows and databases stay out of reach. Slow
/// with many tenants. Operators only.
#[utoipa::path(
    post, path = "/v1/verify/isolation", tag = "verify",
    params(VerifyParams),
    responses(
        (status = 200, body = IsolationReportView),
        (status = 403, body = super::types::ErrorBody),
        (status = 404, description = "No tenant of that name", body = super::types::ErrorBody),
    ),
    security(("operator_token" = []))
)]
pub async fn verify_isolation(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    params: Result<Query<VerifyParams>, QueryRejection>,
) -> Result<Json<IsolationReportView>, ApiError> {
    operator_only(&actor)?;
    let Query(params) = params?;
    let tenant = match params.tenant.as_deref() {
        None => None,
        Some(name) => Some(
            state
                .store
                .tenant_named(name)
                .await
                .map_err(|e| super::error::store_error(&e))?
                .ok_or_else(|| {
                    ApiError::new(ErrorCode::TenantNotFound, format!("no tenant named {name:?}"))
                })?,
        ),
    };
    let report = state.verifier.isolation(tenant.as_ref()).await.map_err(|error| match error {
        VerifyError::Store(store) => super::error::store_error(&store),
        VerifyError::Database(reason) => {
            ApiError::new(ErrorCode::Unavailable, format!("cannot finish the checks: {reason}"))
        }
    })?;
    Ok(Json(report.into()))
}
