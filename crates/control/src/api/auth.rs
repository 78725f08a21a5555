//! Authentication of `/v1` requests: an operator token as a bearer token.
//!
//! A missing token and a wrong token get the same 401 with no detail; the
//! difference goes to the log only. The token itself is never logged.

use axum::{
    extract::{Request, State},
    http::header::AUTHORIZATION,
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{AppState, error::ApiError};
use crate::events::Actor;

/// Lets the request through with its [`Actor`] in the extensions, or
/// answers 401. Deliberately not a span of its own: handlers record the
/// tenant on the request's span, which must stay the current one.
pub async fn require_operator(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        tracing::info!(reason = "no bearer token", "request refused");
        return ApiError::unauthorized().into_response();
    };
    let Some(name) = state.operator_tokens.verify(presented) else {
        tracing::info!(reason = "unknown token", "request refused");
        return ApiError::unauthorized().into_response();
    };
    request.extensions_mut().insert(Actor::Operator(name.to_owned()));
    next.run(request).await
}
