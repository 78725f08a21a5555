//! Audit streams over HTTP: the last events of a stream, an export as JSON
//! lines streamed page by page, and the public keys a tenant's stream is
//! signed with (public, next to its realm's other documents).

use axum::{
    Extension, Json,
    body::Body,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use bulkhead_audit::export::Exporter;
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{
    AppState,
    error::{ApiError, ErrorCode},
    record_tenant,
    types::ErrorBody,
};
use crate::{
    audit::{EventView, StreamRequest},
    events::Actor,
};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TailParams {
    /// Events after this seq, oldest first; without it, the last `limit`.
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub after: Option<u64>,
    /// At most this many (1 to 10,000; default 100).
    #[param(minimum = 1, maximum = 10_000)]
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// Only events from this time on: RFC 3339 (`2026-12-01T00:00:00Z`) or
    /// a duration back from now (`24h`, `7d`).
    pub since: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct EventList {
    pub events: Vec<EventView>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct AuditKeyList {
    /// Ed25519 public keys (base64url) that sign the stream's checkpoints.
    #[schema(value_type = Vec<Object>)]
    pub keys: Vec<bulkhead_audit::PublicKeyInfo>,
}

async fn tail(
    state: &AppState,
    actor: &Actor,
    stream: StreamRequest,
    params: Result<Query<TailParams>, QueryRejection>,
) -> Result<Json<EventList>, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("limit {limit} is out of range; use 1 to 10000"),
        ));
    }
    let events = state.audit.tail(actor, &stream, params.after, limit).await?;
    Ok(Json(EventList { events }))
}

/// JSON lines, produced page by page as the client reads them. The first
/// page is made before the answer starts, so that a refusal there (a stream
/// changed outside Bulkhead, say) is an ordinary error response. A later
/// failure can no longer change the status: it ends the body with an error
/// line, `{"error":{"code":...,"message":...},"type":"error"}`, which no
/// verifier accepts and the CLI reports.
async fn ndjson(mut exporter: Exporter) -> Result<Response, ApiError> {
    let first = exporter.next_page().await?;
    let rest = futures_util::stream::unfold(Some(exporter), |exporter| async move {
        let mut exporter = exporter?;
        match exporter.next_page().await {
            Ok(Some(page)) => Some((page, Some(exporter))),
            Ok(None) => None,
            Err(error) => {
                tracing::error!(%error, "audit export failed midway");
                Some((error_line(&error.into()), None))
            }
        }
    });
    let pages =
        futures_util::stream::iter(first).chain(rest).map(Ok::<_, std::convert::Infallible>);
    let mut response = Body::from_stream(pages).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The error trailer of an export cut short.
fn error_line(error: &ApiError) -> String {
    let line = serde_json::json!({
        "type": "error",
        "error": { "code": error.code().as_str(), "message": error.message() },
    });
    format!("{line}\n")
}

/// The last events of the tenant's audit stream.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/audit/events", tag = "audit",
    params(("tenant" = String, Path, description = "Tenant name"), TailParams),
    responses((status = 200, body = EventList), (status = 401, body = ErrorBody), (status = 403, description = "Needs the admin role", body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn tenant_events(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    params: Result<Query<TailParams>, QueryRejection>,
) -> Result<Json<EventList>, ApiError> {
    record_tenant(&tenant);
    tail(&state, &actor, StreamRequest::Tenant(tenant), params).await
}

/// Export the tenant's audit stream as JSON lines (`bulkhead-audit/2`):
/// header, events, checkpoints, and a closing checkpoint signed now.
/// Verify it offline with `bulkhead audit verify`.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/audit/export", tag = "audit",
    params(("tenant" = String, Path, description = "Tenant name"), ExportParams),
    responses((status = 200, description = "JSON lines", content_type = "application/x-ndjson"), (status = 401, body = ErrorBody), (status = 403, description = "Needs the admin role", body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn tenant_export(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Path(tenant): Path<String>,
    params: Result<Query<ExportParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    record_tenant(&tenant);
    let Query(params) = params?;
    let since = super::since(params.since.as_deref(), state.audit.now())?;
    let exporter = state.audit.export(&actor, &StreamRequest::Tenant(tenant), since).await?;
    ndjson(exporter).await
}

/// The last events of the platform's audit stream (operators' actions).
#[utoipa::path(
    get, path = "/v1/audit/platform/events", tag = "audit",
    params(TailParams),
    responses((status = 200, body = EventList), (status = 401, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn platform_events(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    params: Result<Query<TailParams>, QueryRejection>,
) -> Result<Json<EventList>, ApiError> {
    tail(&state, &actor, StreamRequest::Platform, params).await
}

/// Export the platform's audit stream as JSON lines.
#[utoipa::path(
    get, path = "/v1/audit/platform/export", tag = "audit",
    params(ExportParams),
    responses((status = 200, description = "JSON lines", content_type = "application/x-ndjson"), (status = 401, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn platform_export(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    params: Result<Query<ExportParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let since = super::since(params.since.as_deref(), state.audit.now())?;
    let exporter = state.audit.export(&actor, &StreamRequest::Platform, since).await?;
    ndjson(exporter).await
}

/// The public keys that sign the tenant's audit checkpoints: pin them to
/// verify exports without trusting the server that made them.
#[utoipa::path(
    get, path = "/realms/{tenant}/audit-keys.json", tag = "realms",
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = AuditKeyList), (status = 404, description = "No such realm", body = ErrorBody))
)]
pub async fn audit_keys(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    record_tenant(&tenant);
    let keys = state.audit.published_keys(&tenant).await?;
    Ok(super::identity::cacheable(Json(AuditKeyList { keys })))
}
