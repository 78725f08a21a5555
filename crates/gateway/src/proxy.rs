//! Reads: a [`Permitted`] request. Adds: the upstream's response, streamed
//! both ways without buffering.
//!
//! Each API has its own pooled client (keep-alive; HTTP/1.1, or h2c by
//! prior knowledge) whose connections count against the tenant's cap, so
//! a hung upstream holds only its own tenant's share. Upstreams are taken
//! in turn; one that fails to connect or answer [`EJECT_AFTER`] times in a
//! row is left out for [`EJECT_FOR`], then tried again.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bulkhead_model::{ApiSpec, Upstream, UpstreamProtocol};
use bytes::Bytes;
use http::{
    HeaderValue, Request, Response, StatusCode, Uri, Version,
    uri::{Authority, PathAndQuery, Scheme},
};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection},
    },
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::{TcpStream, UnixStream};

use crate::{
    authz::Permitted,
    body::{Body, Tracked, empty},
    error::{Code, Phase, Refusal},
    headers,
    limit::{ConnectionSlot, Slot, TenantRuntime},
    record::Pending,
    stats::Stats,
};

/// Consecutive failures that take an upstream out of rotation.
pub const EJECT_AFTER: u32 = 3;
/// How long an ejected upstream stays out.
pub const EJECT_FOR: Duration = Duration::from_secs(10);
/// Idle pooled connections kept per upstream.
const IDLE_PER_UPSTREAM: usize = 64;

/// What an API's client is built from: a change to any of it builds a new
/// client, anything else keeps the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamKey {
    upstreams: Arc<[Upstream]>,
    protocol: UpstreamProtocol,
    connect_ms: u64,
}

impl UpstreamKey {
    pub fn of(spec: &ApiSpec) -> Self {
        Self {
            upstreams: Arc::clone(&spec.upstreams),
            protocol: spec.protocol,
            connect_ms: spec.timeouts.connect_ms,
        }
    }
}

#[derive(Debug, Default)]
struct Health {
    failures: AtomicU32,
    /// Nanoseconds after the runtime's epoch until which it is out.
    ejected_until: AtomicU64,
}

type UpstreamClient = Client<Connector, Body>;

/// An API's upstream client and the health of its upstreams, across
/// snapshots.
pub struct ApiRuntime {
    pub key: UpstreamKey,
    connector: Connector,
    /// One pooled client per gateway worker, made on the worker's first
    /// request: a pooled connection is driven by the thread that opened it,
    /// and an API nobody calls costs no pool.
    clients: Box<[OnceLock<Box<UpstreamClient>>]>,
    health: Vec<Health>,
    next: AtomicUsize,
    epoch: Instant,
}

impl std::fmt::Debug for ApiRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiRuntime").field("key", &self.key).finish_non_exhaustive()
    }
}

impl ApiRuntime {
    pub fn new(key: UpstreamKey, tenant: Arc<TenantRuntime>) -> Self {
        let connector = Connector {
            targets: Arc::clone(&key.upstreams),
            tenant,
            timeout: Duration::from_millis(key.connect_ms),
        };
        let clients = (0..crate::server::cores()).map(|_| OnceLock::new()).collect();
        let health = key.upstreams.iter().map(|_| Health::default()).collect();
        Self { key, connector, clients, health, next: AtomicUsize::new(0), epoch: Instant::now() }
    }

    /// The calling worker's client (shared when there are more workers
    /// than clients).
    fn client(&self) -> &UpstreamClient {
        let slot = &self.clients[crate::server::worker() % self.clients.len().max(1)];
        slot.get_or_init(|| {
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_max_idle_per_host(IDLE_PER_UPSTREAM)
                .pool_idle_timeout(Duration::from_secs(60));
            if self.key.protocol == UpstreamProtocol::H2c {
                builder.http2_only(true);
            }
            Box::new(builder.build(self.connector.clone()))
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The next upstream in turn that is not ejected; when all are, the
    /// next in turn anyway (refusing everything would not heal them).
    fn pick(&self) -> usize {
        let n = self.health.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now();
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.health[i].ejected_until.load(Ordering::Relaxed) <= now)
            .unwrap_or(start % n)
    }

    fn succeeded(&self, i: usize) {
        self.health[i].failures.store(0, Ordering::Relaxed);
    }

    fn failed(&self, i: usize) {
        let failures = self.health[i].failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= EJECT_AFTER {
            let until = self.now() + EJECT_FOR.as_nanos() as u64;
            self.health[i].ejected_until.store(until, Ordering::Relaxed);
            self.health[i].failures.store(0, Ordering::Relaxed);
            tracing::warn!(upstream = %self.key.upstreams[i], "upstream ejected after consecutive failures");
        }
    }
}

/// The request as its upstream reads it: its body capped at the API's
/// `max_body_bytes` (a larger `Content-Length` is refused at once), cut
/// when it falls idle, and counted into `bytes_in`.
pub fn inbound(
    request: Request<Incoming>,
    spec: &ApiSpec,
    bytes_in: &Arc<AtomicU64>,
) -> Result<Request<Body>, Refusal> {
    if headers::content_length(request.headers()).is_some_and(|len| len > spec.max_body_bytes) {
        return Err(Refusal::new(
            Phase::Proxy,
            Code::PayloadTooLarge,
            "Content-Length over the cap",
        ));
    }
    let cap = usize::try_from(spec.max_body_bytes).unwrap_or(usize::MAX);
    let idle = Duration::from_millis(spec.timeouts.idle_ms);
    let bytes_in = Arc::clone(bytes_in);
    Ok(request.map(|body| Tracked::new(Limited::new(body, cap), idle, bytes_in, ()).boxed_unsync()))
}

/// What the proxy needs besides the request.
#[derive(Debug)]
pub struct Forward<'a> {
    pub request_id: &'a HeaderValue,
    pub peer: &'a headers::Peer,
    pub host: HeaderValue,
    /// Held until the response body ends.
    pub slot: Slot,
    /// The request's record, sent when the response body ends.
    pub pending: Pending,
    /// Where the guard counts what it finds in responses.
    pub stats: &'a Stats,
    /// A model call's meter, which reads the answer as it passes.
    pub meter: Option<Arc<crate::llm::Meter>>,
}

/// How long the upstream took to answer with its headers.
#[derive(Debug, Clone, Copy)]
pub struct Answered {
    pub latency: Duration,
}

pub async fn forward(
    mut permitted: Permitted,
    mut request: Request<Body>,
    context: Forward<'_>,
) -> Result<(Response<Body>, Answered), Refusal> {
    let target = std::mem::take(&mut permitted.route.upstream_target);
    let api = &permitted.route.api;
    let spec = &api.spec;
    let upgrade = headers::is_upgrade(request.headers());
    let head = request.method() == http::Method::HEAD;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    let runtime = &api.runtime;
    let index = runtime.pick();
    parts.uri = upstream_uri(index, target)
        .ok_or_else(|| Refusal::new(Phase::Proxy, Code::BadRequest, "unusable request target"))?;
    parts.version = match spec.protocol {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::H2c => Version::HTTP_2,
    };
    let vouched = headers::Vouched {
        tenant: &permitted.tenant.0,
        api,
        principal: permitted.principal.as_ref(),
        request_id: context.request_id,
        peer: context.peer,
        host: &context.host,
    };
    headers::for_upstream(&mut parts.headers, upgrade, vouched);
    let idle = Duration::from_millis(spec.timeouts.idle_ms);
    let mut pending = context.pending;
    let started = Instant::now();
    let timeout = Duration::from_millis(spec.timeouts.response_ms);
    // From here the upstream may have the request, whatever ends it.
    pending.sent = true;
    let outcome =
        tokio::time::timeout(timeout, runtime.client().request(Request::from_parts(parts, body)))
            .await;
    let response = match outcome {
        Ok(Ok(response)) => {
            runtime.succeeded(index);
            response
        }
        Ok(Err(error)) => {
            // No connection: nothing reached the upstream.
            pending.sent = !error.is_connect() && !caused_by::<TenantConnectionCap>(&error);
            if caused_by::<TenantConnectionCap>(&error) {
                return Err(Refusal::new(
                    Phase::Limit,
                    Code::TenantOverloaded,
                    "upstream connection cap reached",
                ));
            }
            if caused_by::<http_body_util::LengthLimitError>(&error) {
                return Err(Refusal::new(Phase::Proxy, Code::PayloadTooLarge, "body over the cap"));
            }
            runtime.failed(index);
            tracing::debug!(%error, "upstream request failed");
            return Err(Refusal::new(
                Phase::Proxy,
                Code::UpstreamUnavailable,
                format!("upstream: {error}"),
            ));
        }
        Err(_) => {
            runtime.failed(index);
            return Err(Refusal::new(
                Phase::Proxy,
                Code::UpstreamTimeout,
                "no response headers in time",
            ));
        }
    };
    let answered = Answered { latency: started.elapsed() };
    // Scanned before the request counts as answered, so that a response
    // the guard refuses is recorded as that refusal alone.
    let mut response = crate::guard::response(api, head, response, idle, context.stats).await?;
    pending.answered(response.status().as_u16(), answered.latency);
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::for_client(response.headers_mut(), switching, context.request_id);
    if switching && let Some(client_upgrade) = client_upgrade {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let (parts, _) = response.into_parts();
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, (context.slot, pending)));
        return Ok((Response::from_parts(parts, empty()), answered));
    }
    let (parts, body) = response.into_parts();
    // Only an answered call used the model; a refused or failed one is a
    // request like any other.
    let body = match context.meter {
        Some(meter) if parts.status.is_success() => {
            crate::llm::Metered::new(body, meter).boxed_unsync()
        }
        _ => {
            pending.model = None;
            body
        }
    };
    let bytes_out = Arc::clone(&pending.bytes_out);
    let body = Tracked::new(body, idle, bytes_out, (context.slot, pending)).boxed_unsync();
    Ok((Response::from_parts(parts, body), answered))
}

/// `http://u{index}{target}`, the URI the connector reads the upstream from.
fn upstream_uri(index: usize, target: String) -> Option<Uri> {
    /// The authorities of the first upstreams, made without allocating.
    const NAMED: [&str; 8] = ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7"];
    let authority = match NAMED.get(index) {
        Some(name) => Authority::from_static(name),
        None => Authority::from_maybe_shared(Bytes::from(format!("u{index}"))).ok()?,
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority);
    parts.path_and_query = Some(PathAndQuery::from_maybe_shared(Bytes::from(target)).ok()?);
    Uri::from_parts(parts).ok()
}

/// Copies bytes both ways between an upgraded client and upstream (a
/// WebSocket) until either side closes; the tenant's slot is held as long.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    held: (Slot, Pending),
) {
    let _held = held;
    let (Ok(client), Ok(upstream)) = (client.await, upstream.await) else { return };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(%error, "upgraded connection ended");
    }
}

pub(crate) fn caused_by<E: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<E>() {
            return true;
        }
        // An io::Error's `source` skips the error it wraps; look inside.
        source = match e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            Some(inner) => Some(inner),
            None => e.source(),
        };
    }
    false
}

/// The tenant holds as many upstream connections as its plan allows.
#[derive(Debug, thiserror::Error)]
#[error("the tenant's upstream connection cap is reached")]
pub struct TenantConnectionCap;

/// Connects an API's client to its upstreams: the request URI's host
/// `u{index}` names the upstream, so one pool serves each upstream.
#[derive(Clone)]
struct Connector {
    targets: Arc<[Upstream]>,
    tenant: Arc<TenantRuntime>,
    timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let target = uri
            .host()
            .and_then(|h| h.strip_prefix('u'))
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| self.targets.get(i).cloned());
        let tenant = Arc::clone(&self.tenant);
        let timeout = self.timeout;
        Box::pin(async move {
            let target = target.ok_or_else(|| io::Error::other("no such upstream"))?;
            let slot = tenant.connect().ok_or_else(|| io::Error::other(TenantConnectionCap))?;
            let connect = async {
                Ok::<_, io::Error>(match &target {
                    Upstream::Http(authority) => {
                        let stream = TcpStream::connect(authority.as_str()).await?;
                        stream.set_nodelay(true)?;
                        Io::Tcp(TokioIo::new(stream))
                    }
                    Upstream::Unix(path) => {
                        Io::Unix(TokioIo::new(UnixStream::connect(path).await?))
                    }
                    Upstream::Worker { path, uid } => {
                        // The socket lives in a directory the tenant's
                        // workers write: whatever answers there must be
                        // the tenant's own user, never a link it planted
                        // to another tenant's socket or a server's.
                        let stream = UnixStream::connect(path).await?;
                        let peer = stream.peer_cred()?.uid();
                        if peer != *uid || *uid == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::PermissionDenied,
                                format!(
                                    "{path} is answered by user {peer}, not the tenant's worker"
                                ),
                            ));
                        }
                        Io::Unix(TokioIo::new(stream))
                    }
                    Upstream::App(name) => {
                        return Err(io::Error::other(format!(
                            "app:{name} was not resolved to its workers"
                        )));
                    }
                })
            };
            let io = tokio::time::timeout(timeout, connect)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            Ok(Conn { io, _slot: slot })
        })
    }
}

enum Io {
    Tcp(TokioIo<TcpStream>),
    Unix(TokioIo<UnixStream>),
}

/// An upstream connection, counted against its tenant's cap while open.
struct Conn {
    io: Io,
    _slot: ConnectionSlot,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr) => {
        match &mut $self.get_mut().io {
            Io::Tcp($io) => {
                let $io = Pin::new($io);
                $call
            }
            Io::Unix($io) => {
                let $io = Pin::new($io);
                $call
            }
        }
    };
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tcp(io) => io.is_write_vectored(),
            Io::Unix(io) => io.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }
}
