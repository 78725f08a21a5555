//! The control API: JSON over HTTP, described by an OpenAPI document that is
//! generated from the handlers themselves (so an undocumented route cannot
//! exist).

mod apis;
mod apps;
pub mod audit;
pub(crate) mod auth;
pub mod backups;
mod catalog;
pub mod error;
mod identity;
mod meta;
mod migrations;
mod resources;
mod tenants;
pub mod types;
pub mod usage;
mod vault;
mod verify;

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{HeaderValue, Method, Uri},
    middleware::{self, Next},
    response::Response,
    routing::get,
};
use bulkhead_model::BaseDomain;
use bulkhead_store::ControlStore;
use tracing::{Instrument, field::Empty};
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    apis::ApiService, audit::AuditService, identity::IdentityService, metrics::Metrics,
    operator_token::OperatorTokens, tenants::TenantService, vault::VaultService,
};
use error::{ApiError, ErrorCode};

/// Bodies larger than this are refused before parsing.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub tenants: Arc<TenantService>,
    pub apis: Arc<ApiService>,
    /// Guardrails (and the other resources that are a spec alone).
    pub resources: Arc<crate::resources::ResourceService>,
    pub apps: Arc<crate::apps::AppService>,
    pub rollouts: Arc<crate::rollouts::RolloutService>,
    pub vault: Arc<VaultService>,
    pub verifier: Arc<crate::verify::Verifier>,
    pub migrations: Arc<crate::migrations::MigrationService>,
    pub identity: Arc<IdentityService>,
    pub audit: Arc<AuditService>,
    pub backups: Arc<crate::backups::BackupService>,
    pub base_domain: BaseDomain,
    pub step_names: Arc<[&'static str]>,
    pub store: Arc<dyn ControlStore>,
    pub operator_tokens: OperatorTokens,
    pub metrics: Arc<Metrics>,
    /// Set when the reconciler's task has ended, which makes `/readyz` fail.
    pub reconciler_done: Arc<AtomicBool>,
    /// Each tenant's request rate on the control API.
    pub rate: Arc<crate::limits::RequestRate>,
    /// The server's addresses, store and data directory, for `/v1/status`
    /// (its tenant counts are filled in per request).
    pub about: Arc<types::ServerStatus>,
    /// Filled in by [`router`] once the document is generated.
    pub(crate) openapi: Arc<OnceLock<String>>,
}

impl AppState {
    fn reconciler_stopped(&self) -> bool {
        self.reconciler_done.load(Ordering::Relaxed)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bulkhead control API",
        description = "Tenant lifecycle, vault, identity and audit of a Bulkhead control plane. \
                       Every `/v1` endpoint but this document takes a bearer credential: an \
                       operator token reaches every endpoint; on a tenant's own paths \
                       (`/v1/tenants/{tenant}/...`) a token of that tenant's realm minted for \
                       the control API, a token of the identity provider it trusts, or one of \
                       its API keys works too, as its roles allow. Errors are JSON: \
                       `{\"error\": {\"code\": ..., \"message\": ...}}`, and every answer \
                       carries an `x-request-id`.",
    ),
    paths(vault::get_secret, vault::put_secret, vault::delete_secret),
    modifiers(&OperatorTokenScheme),
    tags(
        (name = "tenants", description = "Tenant lifecycle"),
        (name = "catalog", description = "Plans and regions"),
        (name = "vault", description = "Secrets, data keys and database credentials of tenants"),
        (name = "realms", description = "Each tenant's identity realm: OIDC documents, tokens, signing keys, API keys"),
        (name = "apis", description = "Each tenant's APIs: the contracts its gateway routes by"),
        (name = "backups", description = "Each tenant's encrypted backups and the key they are encrypted to"),
        (name = "guardrails", description = "Each tenant's guardrails: personal data, blocked topics and prompt sizes its gateway checks bodies for"),
        (name = "tools", description = "Each tenant's tool registry: the MCP servers and HTTP tools its agents may call through its MCP endpoint"),
        (name = "apps", description = "Each tenant's apps, run as confined workers, and their logs"),
        (name = "audit", description = "Each tenant's hash-chained, signed audit stream, and the platform's"),
        (name = "verify", description = "Checks of the live installation's isolation"),
        (name = "migrations", description = "Schema migrations rolled across tenant databases"),
        (name = "meta", description = "Health, readiness, metrics and this document"),
    )
)]
struct ApiDoc;

struct OperatorTokenScheme;

impl Modify for OperatorTokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "operator_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What an error status means on any endpoint, for the responses the
/// handlers do not describe themselves.
fn status_description(status: &str) -> &'static str {
    match status {
        "200" => "OK",
        "201" => "Created",
        "202" => "Accepted: the change is under way",
        "204" => "Done; no content",
        "400" => "The request is invalid: a parameter, a field or the body; the message says which",
        "401" => "No credential, or one refused for this endpoint",
        "403" => "The credential's roles do not allow this, or it is locked out",
        "404" => "Not found (or not the credential's to see)",
        "409" => "Conflicts with the current state; the message says what would not",
        "413" => "The body is larger than the API accepts (64 KiB)",
        "429" => "Over a quota of the tenant's plan, or its request rate (see Retry-After)",
        "500" => "An internal error; the message carries no detail, the server's log does",
        "503" => "A store or server Bulkhead depends on is unavailable; retry",
        _ => "See the error's code and message",
    }
}

/// Completes the generated document where the handlers' annotations leave
/// out what is true of every endpoint: each response's description (which
/// OpenAPI requires), the error answers any endpoint can give (invalid
/// parameters, credentials refused, rate limits, unavailable stores), and
/// which credentials a tenant's own paths accept.
fn complete_document(document: &mut serde_json::Value) {
    use serde_json::{Value, json};
    let error =
        json!({ "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } });
    if let Some(schemes) =
        document.pointer_mut("/components/securitySchemes").and_then(Value::as_object_mut)
    {
        schemes.insert(
            "tenant_credential".into(),
            json!({
                "type": "http",
                "scheme": "bearer",
                "description": "On the tenant's own paths only: a token of its realm minted for \
                                the control API (`bulkhead auth token --control-api`), a token \
                                of the identity provider it trusts, or one of its API keys \
                                (`bh_<tenant>_...`)",
            }),
        );
    }
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for (path, item) in paths.iter_mut() {
        let tenant_path = path.starts_with("/v1/tenants/{");
        let authenticated = path.starts_with("/v1/") && path != "/v1/openapi.json";
        let Some(item) = item.as_object_mut() else { continue };
        for (_, operation) in item.iter_mut() {
            let Some(operation) = operation.as_object_mut() else { continue };
            let mut errors: Vec<&str> = vec!["500"];
            if operation.contains_key("parameters") || operation.contains_key("requestBody") {
                errors.push("400");
            }
            if operation.contains_key("requestBody") {
                errors.push("413");
            }
            if path.contains('{') {
                errors.push("404");
            }
            if authenticated {
                errors.extend(["401", "403", "503"]);
            }
            if tenant_path {
                // The tenant's state may not allow it (offboarding, its own
                // key not loaded), and its quotas and rate apply.
                errors.extend(["409", "429"]);
                operation.insert(
                    "security".into(),
                    json!([{ "operator_token": [] }, { "tenant_credential": [] }]),
                );
            }
            let Some(responses) =
                operation.entry("responses").or_insert_with(|| json!({})).as_object_mut()
            else {
                continue;
            };
            for status in errors {
                responses.entry(status).or_insert_with(
                    || json!({ "description": status_description(status), "content": error }),
                );
            }
            for (status, response) in responses.iter_mut() {
                if let Some(response) = response.as_object_mut() {
                    response
                        .entry("description")
                        .or_insert_with(|| Value::from(status_description(status)));
                }
            }
        }
    }
}

/// The whole control API, ready to serve.
pub fn router(state: AppState) -> Router {
    let authenticated = OpenApiRouter::new()
        .routes(routes!(tenants::create_tenant, tenants::list_tenants))
        .routes(routes!(tenants::get_tenant, tenants::update_tenant, tenants::delete_tenant))
        .routes(routes!(tenants::suspend_tenant))
        .routes(routes!(tenants::resume_tenant))
        .routes(routes!(catalog::list_plans))
        .routes(routes!(catalog::list_regions))
        .routes(routes!(vault::list_secrets))
        // A secret's path may hold slashes: axum's wildcard routes it, while
        // the document names it the standard way (`{path}`, in ApiDoc).
        .route(
            "/v1/tenants/{tenant}/secrets/{*path}",
            get(vault::get_secret).put(vault::put_secret).delete(vault::delete_secret),
        )
        .routes(routes!(vault::key_status))
        .routes(routes!(vault::rotate_data_key))
        .routes(routes!(vault::rewrap))
        .routes(routes!(vault::set_tenant_key, vault::forget_tenant_key))
        .routes(routes!(vault::rotate_master_key))
        .routes(routes!(vault::issue_credential, vault::list_credentials))
        .routes(routes!(vault::revoke_credential))
        .routes(routes!(vault::revoke_tenant_credential))
        .routes(routes!(vault::list_lockouts))
        .routes(routes!(vault::clear_lockout))
        .routes(routes!(identity::issue_token))
        .routes(routes!(identity::rotate_realm_key))
        .routes(routes!(identity::realm_keys))
        .routes(routes!(identity::revoke_realm_tokens))
        .routes(routes!(identity::create_api_key, identity::list_api_keys))
        .routes(routes!(identity::revoke_api_key))
        .routes(routes!(identity::set_trust, identity::get_trust, identity::remove_trust))
        .routes(routes!(apis::create_api, apis::list_apis))
        .routes(routes!(apis::get_api, apis::put_api, apis::delete_api))
        .routes(routes!(apis::public_apis))
        .routes(routes!(resources::list_guardrails))
        .routes(routes!(
            resources::get_guardrail,
            resources::put_guardrail,
            resources::delete_guardrail
        ))
        .routes(routes!(resources::list_tools))
        .routes(routes!(resources::get_tool, resources::put_tool, resources::delete_tool))
        .routes(routes!(apps::list_apps))
        .routes(routes!(apps::get_app, apps::deploy_app, apps::delete_app))
        .routes(routes!(apps::start_app))
        .routes(routes!(apps::stop_app))
        .routes(routes!(apps::pin_app))
        .routes(routes!(apps::unpin_app))
        .routes(routes!(apps::list_rollouts, apps::start_rollout))
        .routes(routes!(apps::get_rollout))
        .routes(routes!(apps::pause_rollout))
        .routes(routes!(apps::resume_rollout))
        .routes(routes!(apps::abort_rollout))
        .routes(routes!(apps::app_logs))
        .routes(routes!(apps::get_flags, apps::change_flags))
        .routes(routes!(verify::verify_isolation))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(migrations::start_migration, migrations::list_migrations))
                .routes(routes!(migrations::get_migration))
                // Applied nearer the handler than the default limit, so it wins.
                .layer(DefaultBodyLimit::max(migrations::MAX_BODY_BYTES)),
        )
        .routes(routes!(backups::list_backups, backups::create_backup))
        .routes(routes!(backups::get_backup, backups::delete_backup))
        .routes(routes!(backups::verify_backup))
        .routes(routes!(backups::restore_backup))
        .routes(routes!(backups::restore_departed))
        .routes(routes!(backups::verify_departed))
        .merge(
            OpenApiRouter::new()
                .routes(routes!(backups::restore_archive))
                // An archive is as large as its tenant: read as it streams.
                .layer(DefaultBodyLimit::disable()),
        )
        .routes(routes!(backups::backup_key, backups::set_backup_key))
        .routes(routes!(backups::export_backup_key))
        .routes(routes!(usage::tenant_usage))
        .routes(routes!(usage::usage_export))
        .routes(routes!(usage::tenant_usage_export))
        .routes(routes!(audit::tenant_events))
        .routes(routes!(audit::tenant_export))
        .routes(routes!(audit::platform_events))
        .routes(routes!(audit::platform_export))
        .routes(routes!(meta::status))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate));
    let public = OpenApiRouter::new()
        .routes(routes!(audit::audit_keys))
        .routes(routes!(identity::discovery))
        .routes(routes!(identity::jwks))
        .routes(routes!(meta::healthz))
        .routes(routes!(meta::readyz))
        .routes(routes!(meta::metrics))
        .routes(routes!(meta::openapi));
    let (router, document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(authenticated)
        .merge(public)
        .split_for_parts();
    let rendered = serde_json::to_value(&document).and_then(|mut value| {
        complete_document(&mut value);
        serde_json::to_string_pretty(&value)
    });
    match rendered {
        Ok(json) => {
            let _ = state.openapi.set(json);
        }
        Err(error) => tracing::error!(%error, "cannot render the OpenAPI document"),
    }

    // Layers run outside-in in reverse order of these lines: `observe` sees
    // every request first, including those the body limit refuses.
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no endpoint {method} {}; /v1/openapi.json lists them all", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} does not accept {method}; /v1/openapi.json lists what it does", uri.path()),
    )
}

/// A request's `ttl` field (`15m`, `1h30m`, `30d`), or what is wrong with it.
pub(crate) fn ttl(text: Option<&str>) -> Result<Option<std::time::Duration>, ApiError> {
    text.map(bulkhead_vault::ttl::parse_duration)
        .transpose()
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("ttl: {e}")))
}

/// A `since` parameter: RFC 3339 (`2026-12-01T00:00:00Z`) or a duration
/// back from `now` (`24h`, `7d`).
pub(crate) fn since(
    text: Option<&str>,
    now: time::OffsetDateTime,
) -> Result<Option<time::OffsetDateTime>, ApiError> {
    let Some(text) = text else { return Ok(None) };
    if let Ok(at) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(Some(at));
    }
    let ago = bulkhead_vault::ttl::parse_duration(text).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("since {text:?} is neither an RFC 3339 time nor a duration: {e}"),
        )
    })?;
    Ok(Some(now - ago))
}

/// Names the tenant a request is about on its span (and so in its logs).
pub(crate) fn record_tenant(name: &str) {
    tracing::Span::current().record("tenant", name);
}

/// One span per request, with a request id (the caller's `x-request-id` if
/// it is sane, else a new one) that is returned in the response; the span's
/// `tenant` is filled in by handlers that learn it. Also counts and times
/// the request.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %method,
        route = %route,
        status = Empty,
        tenant = Empty,
    );
    let started = Instant::now();
    let run = next.run(request).instrument(span.clone());
    let mut response = crate::events::REQUEST_ID.scope(request_id.clone(), run).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    span.record("status", status);
    state.metrics.observe_request(method.as_str(), &route, status, elapsed);
    // Reads that went as expected are routine (a client waiting on a tenant
    // polls several times a second); changes, refusals and failures are not.
    let quiet = matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics")
        || (method == Method::GET && status < 500 && status != 401 && status != 403);
    span.in_scope(|| {
        let elapsed_us = elapsed.as_micros() as u64;
        if quiet {
            tracing::debug!(elapsed_us, "request finished");
        } else {
            tracing::info!(elapsed_us, "request finished");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
