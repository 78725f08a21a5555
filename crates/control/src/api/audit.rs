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
use bulkhead_vault::ttl::parse_duration;
use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
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
#[serde(deny_unknown_fields)]
pub struct TailParams {
    /// Events after this seq, oldest first; without it, the last `limit`.
    pub after: Option<u64>,
    /// At most this many (default 100, at most 10,000).
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
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

fn since(params: &ExportParams, now: OffsetDateTime) -> Result<Option<OffsetDateTime>, ApiError> {
    let Some(text) = params.since.as_deref() else { return Ok(None) };
    if let Ok(at) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(Some(at));
    }
    let ago = parse_duration(text).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("since {text:?} is neither an RFC 3339 time nor a duration: {e}"),
        )
    })?;
    Ok(Some(now - ago))
}

async fn tail(
    state: &AppState,
    actor: &Actor,
    stream: StreamRequest,
    params: Result<Query<TailParams>, QueryRejection>,
) -> Result<Json<EventList>, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(100);
    let events = state.audit.tail(actor, &stream, params.after, limit).await?;
    Ok(Json(EventList { events }))
}

/// JSON lines, produced page by page as the client reads them.
fn ndjson(exporter: Exporter) -> Response {
    let pages = futures_util::stream::unfold(Some(exporter), |exporter| async move {
        let mut exporter = exporter?;
        match exporter.next_page().await {
            Ok(Some(page)) => Some((Ok::<_, std::io::Error>(page), Some(exporter))),
            Ok(None) => None,
            Err(error) => {
                // The export is cut short; the verifier will say the file
                // does not end with its export checkpoint.
                tracing::error!(%error, "audit export failed midway");
                Some((Err(std::io::Error::other(error)), None))
            }
        }
    });
    let mut response = Body::from_stream(pages).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
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
    let since = since(&params, state.audit.now())?;
    let exporter = state.audit.export(&actor, &StreamRequest::Tenant(tenant), since).await?;
    Ok(ndjson(exporter))
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
    let since = since(&params, state.audit.now())?;
    let exporter = state.audit.export(&actor, &StreamRequest::Platform, since).await?;
    Ok(ndjson(exporter))
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
