//! Bulkhead's data plane. A request reaches a tenant's upstream only if its
//! host, its credential and its route all name the same tenant, and only
//! within that tenant's limits.
//!
//! Each phase is one module that says what it reads and what it adds;
//! [`Gateway::pass`] runs them in order. The gateway never reads the
//! control store: it serves a [`Snapshot`] the control plane builds and
//! swaps in whole, so a request loads one `Arc` and awaits nothing but its
//! upstream.

pub mod authn;
pub mod authz;
pub mod body;
pub mod error;
pub mod framing;
pub mod guard;
pub mod headers;
pub mod limit;
pub mod llm;
pub mod mcp;
pub mod meter;
pub mod path;
pub mod proxy;
pub mod record;
pub mod resolve;
pub mod route;
mod server;
pub mod snapshot;
pub mod stats;

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use bulkhead_identity::VerifiedCache;
use bulkhead_meter::{Budgets, Limiter};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

pub use body::Body;
pub use error::{Code, Phase, Refusal};
pub use snapshot::{ApiKeyConfig, Domain, Snapshot, TenantConfig};

/// How the gateway treats clients.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A client that has not sent a whole request head within this is cut
    /// (slowloris).
    pub header_read_timeout: Duration,
    /// The largest request head accepted; larger ones get 431.
    pub max_header_bytes: usize,
    /// Verified tokens remembered, across tenants.
    pub token_cache_entries: usize,
    /// Tenants with series of their own in `/metrics`; the rest are summed
    /// as `tenant="_other"`.
    pub metrics_tenant_labels: usize,
    /// Threads serving clients, each with its connections and upstream
    /// pools; by default one per core.
    pub workers: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            token_cache_entries: 100_000,
            metrics_tenant_labels: 1_000,
            workers: server::cores(),
        }
    }
}

/// A running data plane: the snapshot it serves and what it keeps across
/// snapshots.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    verified: VerifiedCache,
    limiter: Limiter,
    budgets: Budgets,
    recorder: Arc<record::Recorder>,
    stats: stats::Stats,
    settings: Settings,
    now: UnixClock,
    tools: mcp::ToolAccess,
}

/// The time in unix seconds, as the control plane's clock tells it (so
/// expiry is testable without sleeping).
pub type UnixClock = Arc<dyn Fn() -> i64 + Send + Sync>;

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Gateway {
    /// `limiter` keeps the rate limits, in this process or shared through
    /// Redis, and `budgets` the model spend, where the limiter keeps its
    /// limits; `recorder` takes every decision's usage and audit records;
    /// `tools` is how MCP endpoints reach tenants' tools.
    pub fn new(
        snapshot: Snapshot,
        settings: Settings,
        limiter: Limiter,
        budgets: Budgets,
        recorder: record::Recorder,
        now: UnixClock,
        tools: mcp::ToolAccess,
    ) -> Arc<Self> {
        Arc::new(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            verified: VerifiedCache::new(settings.token_cache_entries),
            limiter,
            budgets,
            recorder: Arc::new(recorder),
            stats: stats::Stats::new(settings.metrics_tenant_labels),
            settings,
            now,
            tools,
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Serves `snapshot` from the next request on.
    pub fn replace(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    /// What `/metrics` reports of this gateway.
    pub fn stats(&self) -> &stats::Stats {
        &self.stats
    }

    pub fn limiter_stats(&self) -> bulkhead_meter::LimiterStats {
        self.limiter.stats()
    }

    /// Usage events and audit records dropped because a queue was full.
    pub fn dropped(&self) -> (u64, u64) {
        self.recorder.dropped()
    }

    /// Forgets the tokens verified for a tenant (its realm or trust
    /// changed); the next request verifies again.
    pub fn forget_tenant(&self, tenant: uuid::Uuid) {
        self.verified.forget_tenant(tenant);
    }

    /// Answers one request, however it ends. `verdict` is what the
    /// connection's inspector found in the request's head.
    async fn handle(
        &self,
        request: Request<Incoming>,
        peer: &headers::Peer,
        verdict: framing::Verdict,
    ) -> Response<Body> {
        let request_id = headers::request_id(request.headers());
        let snapshot = self.snapshot.load();
        let ended = record::Ended {
            method: request.method().clone(),
            uri: request.uri().clone(),
            status: 0,
            request_id: request_id.clone(),
            at: (self.now)(),
        };
        // A refused request's body may be left unread, and then its HTTP/1
        // connection cannot carry another request: say so, or a client
        // reusing it is reset.
        let close_if_refused = request.version() < http::Version::HTTP_2
            && (request.headers().contains_key(http::header::TRANSFER_ENCODING)
                || headers::content_length(request.headers()).is_some_and(|n| n > 0));
        let mut learned = record::Learned::default();
        let passed =
            self.pass(&snapshot, request, peer, verdict, &request_id, &mut learned, &ended).await;
        match passed {
            Ok(response) => response,
            Err(refusal) => {
                tracing::debug!(
                    phase = refusal.phase.as_str(),
                    code = refusal.code.as_str(),
                    reason = %refusal.reason,
                    request_id = request_id.to_str().unwrap_or_default(),
                    "request refused"
                );
                let mut response = error::rescue(&refusal, &request_id);
                if close_if_refused {
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                let labelled = learned.tenant.as_deref().map(|t| &t.runtime.labelled);
                self.stats.count(labelled, Some(&refusal));
                let ended = record::Ended { status: response.status().as_u16(), ..ended };
                record::refused(&self.recorder, learned, ended, &refusal);
                response
            }
        }
    }

    /// The request path, phase by phase; any phase may end it. What each
    /// phase learns goes into `learned` for the record.
    #[allow(clippy::too_many_arguments)]
    async fn pass(
        &self,
        snapshot: &Snapshot,
        request: Request<Incoming>,
        peer: &headers::Peer,
        verdict: framing::Verdict,
        request_id: &HeaderValue,
        learned: &mut record::Learned,
        ended: &record::Ended,
    ) -> Result<Response<Body>, Refusal> {
        framing::check(&request, verdict)?;
        let (tenant, host) = resolve::tenant(snapshot, &request)?;
        learned.tenant = Some(Arc::clone(&tenant.0));
        let principal = authn::authenticate(&tenant, request.headers(), &self.verified, ended.at)?;
        learned.subject = principal.as_ref().map(|p| Arc::clone(&p.subject));
        let path = path::canonical(request.uri().path())?;
        let route = route::find(&tenant, &path, request.uri().query(), request.method())?;
        learned.api = Some(Arc::clone(&route.api));
        let permitted = authz::authorize(&snapshot.domain, tenant, route, principal)?;
        let admitted = limit::admit(&self.limiter, &permitted).await?;
        // A clone: a refusal from here on is recorded from `learned`.
        let mut pending =
            record::Pending::new(Arc::clone(&self.recorder), learned.clone(), ended.clone());
        let request = proxy::inbound(request, &permitted.route.api.spec, &pending.bytes_in)?;
        let request = guard::request(&permitted.route.api, request, &self.stats).await?;
        if permitted.route.api.spec.api_type == bulkhead_model::ApiType::Mcp {
            let called = std::sync::Mutex::default();
            let tools = mcp::Tools {
                client: &self.tools.client,
                secrets: self.tools.secrets.as_deref(),
                recorder: &self.recorder,
                learned,
                ended,
                called: &called,
            };
            let started = std::time::Instant::now();
            let response = mcp::answer(&tools, &permitted, request).await?;
            pending.tools = called.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
            let response = guard::answer(&permitted.route.api, response, &self.stats).await?;
            let length = http_body::Body::size_hint(response.body()).exact().unwrap_or(0);
            pending.bytes_out.store(length, std::sync::atomic::Ordering::Relaxed);
            pending.answered(response.status().as_u16(), started.elapsed());
            self.stats.count(Some(&permitted.tenant.0.runtime.labelled), None);
            return Ok(response);
        }
        let prices = &snapshot.domain.prices;
        let (request, meter) = llm::request(&permitted.route.api, prices, request).await?;
        let mut budget_warning = None;
        if let Some(meter) = &meter {
            let charged =
                meter::reserve(&self.budgets, &permitted.tenant.0, meter, ended.at).await?;
            if let Some(notice) = charged.notice
                && !self.recorder.budget_passed(learned, ended, notice)
            {
                let period = charged.reservation.period;
                self.budgets.forget_notice(permitted.tenant.0.id, period);
            }
            budget_warning = charged.warning;
            pending.reservation = Some(charged.reservation);
        }
        pending.model = meter.clone();
        let stats = &self.stats;
        let slot = admitted.slot;
        let context = proxy::Forward { request_id, peer, host, slot, pending, stats, meter };
        let runtime = Arc::clone(&permitted.tenant.0.runtime);
        let (mut response, answered) = proxy::forward(permitted, request, context).await?;
        self.stats.count(Some(&runtime.labelled), None);
        self.stats.observe_upstream(answered.latency);
        if let Some(rate) = &admitted.rate {
            response.headers_mut().extend(limit::rate_headers(rate).map(|(n, v)| (Some(n), v)));
        }
        if let Some(warning) = budget_warning {
            response.headers_mut().insert(meter::BUDGET_WARNING, warning);
        }
        Ok(response)
    }
}
