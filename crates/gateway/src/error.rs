//! The one place the gateway turns a refusal into a response: a table of
//! stable codes, each with its status and a message that says nothing about
//! any tenant but the caller's own (an unknown tenant and another tenant's
//! credential look alike from outside).

use std::{borrow::Cow, time::Duration};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};

use crate::body::{Body, full};

/// The phase that ended a request, for records and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The request's own shape: smuggling, absolute-form, duplicate Host.
    Framing,
    Resolve,
    Authn,
    Route,
    Authz,
    Limit,
    /// The tenant's guardrails, on the request's body.
    Guard,
    /// The tenant's model budget, before a model call goes upstream.
    Meter,
    Proxy,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Framing,
        Phase::Resolve,
        Phase::Authn,
        Phase::Route,
        Phase::Authz,
        Phase::Limit,
        Phase::Guard,
        Phase::Meter,
        Phase::Proxy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Framing => "framing",
            Phase::Resolve => "resolve",
            Phase::Authn => "authn",
            Phase::Route => "route",
            Phase::Authz => "authz",
            Phase::Limit => "limit",
            Phase::Guard => "guard",
            Phase::Meter => "meter",
            Phase::Proxy => "proxy",
        }
    }
}

/// Every refusal the gateway answers with, by its stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    BadRequest,
    NotFound,
    TenantSuspended,
    Unauthenticated,
    Forbidden,
    RouteNotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    RateLimited,
    TenantOverloaded,
    LimiterUnavailable,
    UpstreamUnavailable,
    UpstreamTimeout,
    GuardrailPii,
    GuardrailBlockedTopic,
    GuardrailPromptTooLarge,
    UnsupportedEncoding,
    UnsupportedMediaType,
    BodyTimeout,
    GuardUnavailable,
    ModelNotAllowed,
    BudgetExhausted,
    BudgetUnavailable,
}

impl Code {
    /// Code, status, message: the whole table.
    fn entry(self) -> (&'static str, StatusCode, &'static str) {
        use Code::*;
        match self {
            BadRequest => ("bad_request", StatusCode::BAD_REQUEST, "the request is malformed"),
            NotFound => ("not_found", StatusCode::NOT_FOUND, "no tenant is served at this host"),
            TenantSuspended => (
                "tenant_suspended",
                StatusCode::FORBIDDEN,
                "this tenant is suspended; its operator can resume it",
            ),
            Unauthenticated => (
                "unauthenticated",
                StatusCode::UNAUTHORIZED,
                "a valid credential of this tenant is required (Authorization: Bearer ...)",
            ),
            Forbidden => (
                "forbidden",
                StatusCode::FORBIDDEN,
                "this credential is not allowed to call this API",
            ),
            RouteNotFound => {
                ("route_not_found", StatusCode::NOT_FOUND, "no API of this tenant serves this path")
            }
            MethodNotAllowed => (
                "method_not_allowed",
                StatusCode::METHOD_NOT_ALLOWED,
                "this API does not take this method",
            ),
            PayloadTooLarge => (
                "payload_too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is larger than this API accepts",
            ),
            RateLimited => (
                "rate_limited",
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests; retry after the seconds Retry-After says",
            ),
            TenantOverloaded => (
                "tenant_overloaded",
                StatusCode::SERVICE_UNAVAILABLE,
                "this tenant has as many requests in flight as its plan allows; retry shortly",
            ),
            LimiterUnavailable => (
                "limiter_unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                "the rate limiter cannot be reached; retry shortly",
            ),
            UpstreamUnavailable => (
                "upstream_unavailable",
                StatusCode::BAD_GATEWAY,
                "the API's upstream cannot be reached",
            ),
            UpstreamTimeout => (
                "upstream_timeout",
                StatusCode::GATEWAY_TIMEOUT,
                "the API's upstream did not answer in time",
            ),
            GuardrailPii => (
                "guardrail_pii",
                StatusCode::UNPROCESSABLE_ENTITY,
                "personal data that this tenant's guardrail refuses was found; `rule` names it",
            ),
            GuardrailBlockedTopic => (
                "guardrail_blocked_topic",
                StatusCode::UNPROCESSABLE_ENTITY,
                "a topic that this tenant's guardrail blocks was found; `rule` names it",
            ),
            GuardrailPromptTooLarge => (
                "guardrail_prompt_too_large",
                StatusCode::UNPROCESSABLE_ENTITY,
                "the request body is larger than this tenant's guardrail allows",
            ),
            UnsupportedEncoding => (
                "unsupported_content_encoding",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "this API's guardrails read request bodies as sent; send it without \
                 Content-Encoding",
            ),
            UnsupportedMediaType => (
                "unsupported_media_type",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "this API's guardrails read JSON and text bodies only; send the body as JSON or \
                 text",
            ),
            BodyTimeout => (
                "request_timeout",
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time; send it whole within the API's response \
                 timeout",
            ),
            GuardUnavailable => (
                "guard_unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                "this tenant's guardrails could not check the request; retry shortly",
            ),
            ModelNotAllowed => (
                "model_not_allowed",
                StatusCode::FORBIDDEN,
                "this API does not allow the model the request names (`rule` names it); use one of \
                 the models the tenant's API lists",
            ),
            BudgetExhausted => (
                "budget_exhausted",
                StatusCode::PAYMENT_REQUIRED,
                "this tenant's model budget for the month is spent; its operator can raise the \
                 tenant's cost caps",
            ),
            BudgetUnavailable => (
                "budget_unavailable",
                StatusCode::SERVICE_UNAVAILABLE,
                "this tenant's model budget cannot be checked now; retry shortly",
            ),
        }
    }

    pub fn as_str(self) -> &'static str {
        self.entry().0
    }

    pub fn status(self) -> StatusCode {
        self.entry().1
    }
}

/// Why a request ends at the gateway. `reason` is for the record and the
/// log, never for the wire.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub phase: Phase,
    pub code: Code,
    pub reason: Cow<'static, str>,
    /// Headers the response carries besides the body (Retry-After, Allow).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The caller's own rule that refused it (`guardrail: topic`), sent as
    /// `error.rule`: never matched text, never another tenant's.
    pub rule: Option<String>,
}

impl Refusal {
    pub fn new(phase: Phase, code: Code, reason: impl Into<Cow<'static, str>>) -> Self {
        Self { phase, code, reason: reason.into(), headers: Vec::new(), rule: None }
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds `Retry-After` in whole seconds, rounded up, at least one.
    pub fn retry_after(self, wait: Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.with_header(header::RETRY_AFTER, HeaderValue::from(secs.max(1)))
    }
}

/// The response for `refusal`: `{"error":{"code","message","request_id"}}`.
pub fn rescue(refusal: &Refusal, request_id: &HeaderValue) -> Response<Body> {
    let (code, status, message) = refusal.code.entry();
    let mut body = serde_json::json!({
        "error": {
            "code": code,
            "message": message,
            "request_id": request_id.to_str().unwrap_or_default(),
        }
    });
    if let Some(rule) = &refusal.rule {
        body["error"]["rule"] = serde_json::Value::from(rule.as_str());
    }
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(crate::headers::REQUEST_ID, request_id.clone());
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    for (name, value) in &refusal.headers {
        headers.append(name, value.clone());
    }
    response
}
