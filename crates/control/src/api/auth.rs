//! Authentication of `/v1` requests, by a bearer credential:
//!
//! - an operator token: every endpoint, every tenant;
//! - on a tenant's own paths (`/v1/tenants/{tenant}/...`), a token of that
//!   tenant's realm or one of its API keys. The tenant is the one in the
//!   path; the credential is verified against that tenant's keys only, so a
//!   credential of another tenant never verifies, whatever it claims.
//!
//! Every refusal is a 401 that says nothing to whoever does not hold a
//! genuine credential; the reason goes to the log (and, for tenant
//! credentials, the tenant's event record). The holder of a genuine
//! credential is told what is wrong with it (expired, revoked, not issued
//! for the control API, its tenant suspended, another tenant's paths),
//! which says nothing about any other tenant. Credentials are never logged.

use std::time::Instant;

use axum::{
    extract::{Request, State},
    http::{
        HeaderValue,
        header::{AUTHORIZATION, RETRY_AFTER},
    },
    middleware::Next,
    response::{IntoResponse, Response},
};
use bulkhead_model::Tenant;

use super::{
    AppState,
    error::{ApiError, ErrorCode},
};
use crate::events::Actor;

/// Lets the request through with its [`Actor`] in the extensions, or
/// answers 401. Deliberately not a span of its own: handlers record the
/// tenant on the request's span, which must stay the current one.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|value| !value.is_empty());
    let Some(presented) = presented else {
        tracing::info!(reason = "no bearer token", "request refused");
        return ApiError::unauthorized().into_response();
    };
    let actor = if let Some(name) = state.operator_tokens.verify(presented) {
        Actor::Operator(name.to_owned())
    } else if let Some(tenant) = tenant_in_path(request.uri().path()) {
        match state.identity.authenticate(tenant, presented).await {
            Ok((actor, tenant)) => {
                if let Some(refused) = over_rate(&state, &tenant) {
                    return refused;
                }
                actor
            }
            Err(refusal) => {
                tracing::info!(reason = %refusal.reason, "request refused");
                return ApiError::unauthorized_because(refusal.holder).into_response();
            }
        }
    } else {
        tracing::info!(reason = "not an operator token", "request refused");
        let told = state.identity.whose(presented).await.map(|owner| {
            format!("{}; this endpoint needs an operator token", owner.reaches_only())
        });
        return ApiError::unauthorized_because(told).into_response();
    };
    request.extensions_mut().insert(actor);
    next.run(request).await
}

/// A tenant's own credentials call the control API at its plan's pace;
/// above it, the answer: `429` with `Retry-After`.
fn over_rate(state: &AppState, tenant: &Tenant) -> Option<Response> {
    let quotas = &state.tenants.plans().get(tenant.plan.as_str()).ok()?.quotas;
    let wait = state.rate.check(tenant.id, quotas, Instant::now()).err()?;
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    tracing::info!(reason = "over the tenant's request rate", "request refused");
    let message = format!(
        "too many requests: this tenant's credentials may make {} control API requests a \
         minute (bursts of {}); retry in {seconds}s",
        quotas.requests_per_minute, quotas.burst
    );
    let mut response = ApiError::new(ErrorCode::RateLimited, message).into_response();
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    Some(response)
}

/// Refuses tenant-scoped credentials: for endpoints that change a tenant's
/// lifecycle or reach beyond one tenant.
pub fn operator_only(actor: &Actor) -> Result<(), ApiError> {
    if actor.is_operator() {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Forbidden, "this endpoint needs an operator token"))
    }
}

/// The tenant a `/v1/tenants/{tenant}/...` path is about.
fn tenant_in_path(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/tenants/")?.split('/').next().filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_tenant_of_tenant_paths_only() {
        assert_eq!(tenant_in_path("/v1/tenants/acme"), Some("acme"));
        assert_eq!(tenant_in_path("/v1/tenants/acme/secrets/a/b"), Some("acme"));
        assert_eq!(tenant_in_path("/v1/tenants"), None);
        assert_eq!(tenant_in_path("/v1/tenants/"), None);
        assert_eq!(tenant_in_path("/v1/plans"), None);
        assert_eq!(tenant_in_path("/v1/credentials/x"), None);
    }
}
