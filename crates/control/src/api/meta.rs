//! Unauthenticated endpoints about the server itself: liveness, readiness,
//! metrics and the API description.

use std::time::Duration;

use axum::{
    Extension, Json,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{
    AppState,
    auth::operator_only,
    error::{ApiError, ErrorCode},
    types::{ErrorBody, ServerStatus, Status},
};
use crate::events::Actor;

/// Liveness: the process is up and answering.
#[utoipa::path(get, path = "/healthz", tag = "meta", responses((status = 200, body = Status)))]
pub async fn healthz() -> Json<Status> {
    Json(Status { status: "ok".to_owned() })
}

/// Readiness: the control store answers and the reconciler runs.
#[utoipa::path(
    get, path = "/readyz", tag = "meta",
    responses((status = 200, body = Status), (status = 503, body = ErrorBody))
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    if state.reconciler_stopped() {
        return Err(ApiError::new(ErrorCode::Unavailable, "the reconciler is not running"));
    }
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => Ok(Json(Status { status: "ready".to_owned() })),
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: control store unreachable");
            Err(ApiError::new(ErrorCode::Unavailable, "the control store is unreachable"))
        }
        Err(_) => Err(ApiError::new(ErrorCode::Unavailable, "the control store does not answer")),
    }
}

/// Prometheus metrics: OpenMetrics when the scraper asks for it (as
/// Prometheus does), else the Prometheus text format.
#[utoipa::path(
    get, path = "/metrics", tag = "meta",
    responses((status = 200, content_type = "text/plain", body = String))
)]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match state.store.count_by_state().await {
        Ok(counts) => state.metrics.set_tenant_counts(&counts),
        Err(error) => tracing::warn!(%error, "metrics: cannot count tenants"),
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|accept| accept.contains("application/openmetrics-text"));
    let (encoded, content_type) = if openmetrics {
        (state.metrics.encode(), "application/openmetrics-text; version=1.0.0; charset=utf-8")
    } else {
        (state.metrics.encode_classic(), "text/plain; version=0.0.4; charset=utf-8")
    };
    match encoded {
        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(error) => ApiError::internal(&error).into_response(),
    }
}

/// Where this server is and what it runs on: its API and gateway
/// addresses, its store and data directory, and how many tenants it has.
#[utoipa::path(
    get, path = "/v1/status", tag = "meta",
    responses((status = 200, body = ServerStatus), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn status(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> Result<Json<ServerStatus>, ApiError> {
    operator_only(&actor)?;
    let counts = state.store.count_by_state().await.map_err(|e| ApiError::internal(&e))?;
    let tenants = counts.into_iter().map(|(state, n)| (state.to_string(), n)).collect();
    Ok(Json(ServerStatus { tenants, ..state.about.as_ref().clone() }))
}

/// This document.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, content_type = "application/json", body = Object))
)]
pub async fn openapi(State(state): State<AppState>) -> Response {
    match state.openapi.get() {
        Some(json) => ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
