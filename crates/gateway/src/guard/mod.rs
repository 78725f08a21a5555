//! The guard phase. Reads: a request allowed so far and its API's
//! guardrails. Adds: the request body as the guardrails leave it, or a
//! refusal naming the rule (never the text that matched); on the way back,
//! the same for the answers of APIs whose guardrails scan responses.
//!
//! A guarded body is read whole: within the API's `max_body_bytes`, at
//! most [`GUARDED_BODY_MAX`], no more than the smallest `max_prompt_bytes`
//! (a larger one is refused as soon as it is known to be), and within the
//! API's `response_ms`. JSON is read as JSON: every string is decoded
//! before it is checked (so `\u0040` is an `@` and `\n4111...` is a card
//! after a line break) and, when redacted, encoded again in place, so the
//! body stays the JSON it was. Text is read as it is. Other media types
//! would be corrupted by a redaction, or pass unread: refused.
//!
//! Every guardrail's refusals are checked on the body as it came, then the
//! redactions are made in turn, so one guardrail's placeholder never hides
//! what another would refuse.

mod json;
mod scanner;

use std::{sync::Arc, time::Duration};

use bulkhead_model::{PiiAction, PiiKind};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
pub use scanner::{Guard, Rejection, Scanned};

use crate::{
    body::{Body, BoxError, Tracked, full},
    error::{Code, Phase, Refusal},
    snapshot::ApiEntry,
    stats::Stats,
};

/// The largest body the guard reads, whatever the API allows.
pub const GUARDED_BODY_MAX: u64 = 16 << 20;
/// Bodies larger than this are scanned off the gateway's threads, which
/// serve other requests meanwhile.
const SCAN_INLINE_MAX: usize = 64 << 10;

/// The guard phase on a request.
pub async fn request(
    api: &ApiEntry,
    request: Request<Body>,
    stats: &Stats,
) -> Result<Request<Body>, Refusal> {
    if api.guards.is_empty() {
        return Ok(request);
    }
    // A WebSocket handshake has no body; any other upgrade is read as a
    // request like the rest. A request without a body has nothing to scan.
    if request.method() == Method::GET && crate::headers::is_upgrade(request.headers())
        || http_body::Body::is_end_stream(request.body())
    {
        return Ok(request);
    }
    let refused = |code, reason: &'static str| Err(Refusal::new(Phase::Guard, code, reason));
    // A compressed body would pass unread: the guard reads bodies as sent.
    if encoded(request.headers()) {
        return refused(Code::UnsupportedEncoding, "a Content-Encoding the guard cannot read");
    }
    let Some(view) = View::of(request.headers()) else {
        return refused(Code::UnsupportedMediaType, "a media type the guard cannot read");
    };
    let smallest = api
        .guards
        .iter()
        .filter_map(|g| g.max_bytes().map(|max| (max, g)))
        .min_by_key(|(max, _)| *max);
    if let Some((_, guard)) = smallest
        && let Some(rejection) =
            crate::headers::content_length(request.headers()).and_then(|n| guard.oversized(n))
    {
        return Err(refusal(rejection, "request", stats));
    }
    let (mut parts, body) = request.into_parts();
    if !api.response_guards.is_empty() {
        // Answers must come whole and as they are for the guard to read them.
        for name in [header::ACCEPT_ENCODING, header::RANGE, header::IF_RANGE] {
            parts.headers.remove(name);
        }
    }
    let cap = api.spec.max_body_bytes.min(GUARDED_BODY_MAX);
    let cap = smallest.map_or(cap, |(max, _)| cap.min(max.saturating_add(1)));
    let within = Duration::from_millis(api.spec.timeouts.response_ms);
    let bytes = match read(body, cap, within).await {
        Ok(bytes) => bytes,
        Err(Unread::TooLarge) => {
            let oversized = smallest.and_then(|(_, g)| g.oversized(cap));
            return Err(match oversized {
                Some(rejection) => refusal(rejection, "request", stats),
                None => Unread::TooLarge.refusal(),
            });
        }
        Err(unread) => return Err(unread.refusal()),
    };
    let (bytes, changed) = inspect(&api.guards, bytes, view, stats, "request").await?;
    if changed {
        crate::headers::set_content_length(&mut parts.headers, bytes.len());
    }
    Ok(Request::from_parts(parts, full(bytes)))
}

/// The guard phase on an upstream's response, with the API's guardrails
/// that say `scan_responses`. `text/event-stream` passes as it streams (holding it
/// back would break it), as do answers without a body and media types
/// that are not text; any other answer is read whole within the API's
/// `max_body_bytes` and [`GUARDED_BODY_MAX`] (a larger one is refused with
/// 502 rather than passed unread).
pub async fn response(
    api: &ApiEntry,
    head: bool,
    response: Response<Incoming>,
    idle: Duration,
    stats: &Stats,
) -> Result<Response<Body>, Refusal> {
    let status = response.status();
    let bodiless = head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if api.response_guards.is_empty() || bodiless {
        return Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()));
    }
    let response = response.map(|body| Tracked::new(body, idle, Arc::default(), ()).boxed_unsync());
    answer(api, response, stats).await
}

/// An answer (an upstream's, or one the gateway made, as the MCP
/// endpoint's) through the API's guardrails that scan responses.
pub async fn answer(
    api: &ApiEntry,
    response: Response<Body>,
    stats: &Stats,
) -> Result<Response<Body>, Refusal> {
    if api.response_guards.is_empty() {
        return Ok(response);
    }
    let view = match View::of(response.headers()) {
        Some(view) if !streamed(response.headers()) => view,
        _ => return Ok(response),
    };
    let upstream =
        |reason: &'static str| Err(Refusal::new(Phase::Guard, Code::UpstreamUnavailable, reason));
    if encoded(response.headers()) {
        return upstream("the upstream encoded an answer the guard must read, though not asked to");
    }
    let (mut parts, body) = response.into_parts();
    let cap = api.spec.max_body_bytes.min(GUARDED_BODY_MAX);
    let within = Duration::from_millis(api.spec.timeouts.response_ms);
    let bytes = match read(body, cap, within).await {
        Ok(bytes) => bytes,
        Err(Unread::TooLarge) => return upstream("an answer too large for the guard to read"),
        Err(Unread::Late) => return upstream("the answer did not arrive in time"),
        Err(Unread::Failed(_)) => return upstream("the answer could not be read"),
    };
    let (bytes, changed) = inspect(&api.response_guards, bytes, view, stats, "response").await?;
    if changed {
        crate::headers::set_content_length(&mut parts.headers, bytes.len());
    }
    Ok(Response::from_parts(parts, full(bytes)))
}

/// How a body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    /// Each string decoded.
    Json,
    /// As it is.
    Text,
}

impl View {
    /// JSON (`application/json`, `application/*+json`), or text (`text/*`,
    /// form fields, no media type); `None` for anything else.
    fn of(headers: &HeaderMap) -> Option<View> {
        let Some(value) = headers.get(header::CONTENT_TYPE) else { return Some(View::Text) };
        let media = value.to_str().ok()?.split(';').next()?.trim().to_ascii_lowercase();
        if media == "application/json"
            || (media.starts_with("application/") && media.ends_with("+json"))
        {
            Some(View::Json)
        } else if media.starts_with("text/") || media == "application/x-www-form-urlencoded" {
            Some(View::Text)
        } else {
            None
        }
    }
}

fn streamed(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/event-stream"))
}

fn encoded(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONTENT_ENCODING).iter().any(|v| {
        v.to_str()
            .map_or(true, |v| v.split(',').any(|c| !c.trim().eq_ignore_ascii_case("identity")))
    })
}

pub(crate) enum Unread {
    TooLarge,
    Late,
    Failed(BoxError),
}

impl Unread {
    /// The refusal of a request whose body was not read whole.
    pub(crate) fn refusal(self) -> Refusal {
        match self {
            Unread::TooLarge => {
                Refusal::new(Phase::Proxy, Code::PayloadTooLarge, "a body over the cap")
            }
            Unread::Late => {
                Refusal::new(Phase::Guard, Code::BodyTimeout, "the body did not arrive in time")
            }
            Unread::Failed(error) => unreadable(error),
        }
    }
}

/// The whole body, if it is at most `cap` bytes and arrives `within`.
pub(crate) async fn read(mut body: Body, cap: u64, within: Duration) -> Result<Bytes, Unread> {
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    let whole = async {
        let mut buffer = BytesMut::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(Unread::Failed)?.into_data() else { continue };
            if buffer.len().saturating_add(data.len()) > cap {
                return Err(Unread::TooLarge);
            }
            buffer.extend_from_slice(&data);
        }
        Ok(buffer.freeze())
    };
    tokio::time::timeout(within, whole).await.map_err(|_| Unread::Late)?
}

/// Every guard's refusals on the body as it came, then each guard's
/// redactions in turn; findings are counted. Returns the body and whether
/// a redaction changed it. A large body is scanned on the blocking pool.
async fn inspect(
    guards: &[Arc<Guard>],
    body: Bytes,
    view: View,
    stats: &Stats,
    what: &str,
) -> Result<(Bytes, bool), Refusal> {
    let scanned = if body.len() <= SCAN_INLINE_MAX {
        scan(guards, &body, view)
    } else {
        let (guards, shared) = (guards.to_vec(), body.clone());
        match tokio::task::spawn_blocking(move || scan(&guards, &shared, view)).await {
            Ok(scanned) => scanned,
            Err(_) => {
                return Err(Refusal::new(Phase::Guard, Code::GuardUnavailable, "the scan failed"));
            }
        }
    };
    let (found, redacted) = scanned.map_err(|rejection| refusal(rejection, what, stats))?;
    for (kind, action, count) in found {
        stats.found(kind, action, count);
    }
    Ok(match redacted {
        Some(changed) => (Bytes::from(changed), true),
        None => (body, false),
    })
}

type Findings = Vec<(PiiKind, PiiAction, u32)>;

fn scan(
    guards: &[Arc<Guard>],
    body: &[u8],
    view: View,
) -> Result<(Findings, Option<Vec<u8>>), Rejection> {
    // JSON: each string, decoded, and written back encoded. Text, or JSON
    // that does not parse (the upstream's parser would refuse it too): the
    // bytes as they are, as one piece.
    let strings = match view {
        View::Json => json::strings(body),
        View::Text => None,
    };
    let pieces: Vec<(std::ops::Range<usize>, &[u8])> = match &strings {
        Some(strings) => strings.iter().map(|s| (s.span.clone(), s.text.as_bytes())).collect(),
        None => vec![(0..body.len(), body)],
    };
    let mut found = Vec::new();
    for guard in guards {
        for (_, text) in &pieces {
            found.extend(guard.check(text)?);
        }
    }
    if !redacts(&found) {
        return Ok((found, None));
    }
    let mut edits = Vec::new();
    for (span, original) in pieces {
        let mut text: Option<Vec<u8>> = None;
        for guard in guards {
            if let Some(redacted) = guard.redact(text.as_deref().unwrap_or(original)) {
                text = Some(redacted);
            }
        }
        if let Some(text) = text {
            let replacement = if strings.is_some() { json::encode(&text) } else { text };
            edits.push((span, replacement));
        }
    }
    Ok((found, json::splice(body, edits)))
}

/// Whether anything found is to be redacted: without, the body goes as it
/// came and is not scanned a second time.
fn redacts(found: &Findings) -> bool {
    found.iter().any(|(_, action, _)| *action == PiiAction::Redact)
}

fn refusal(rejection: Rejection, what: &str, stats: &Stats) -> Refusal {
    if let Some(kind) = rejection.pii {
        stats.found(kind, PiiAction::Reject, 1);
    }
    let mut refusal =
        Refusal::new(Phase::Guard, rejection.code, format!("{what}: {}", rejection.rule));
    refusal.rule = Some(rejection.rule);
    refusal
}

pub(crate) fn unreadable(error: BoxError) -> Refusal {
    if crate::proxy::caused_by::<http_body_util::LengthLimitError>(&*error) {
        return Refusal::new(Phase::Proxy, Code::PayloadTooLarge, "body over the cap");
    }
    Refusal::new(Phase::Guard, Code::BadRequest, format!("the body could not be read: {error}"))
}
