//! An API of `type: llm`: a proxy to an OpenAI-compatible model provider
//! that knows what each call used. Reads: an admitted (and guarded)
//! request. Adds: the model it names, checked against the API's `models`,
//! and a [`Meter`] the response's body fills as it streams by.
//!
//! Calls are `POST` to a path ending in `/chat/completions`,
//! `/completions` or `/embeddings`; other `POST`s are refused (they could
//! reach a model the allowlist does not name), `GET`s (`/models`) pass
//! unmetered. The call goes upstream as it was checked (re-encoded, one
//! `model`). A streamed chat completion is asked to include its usage
//! (`stream_options.include_usage`, whatever the client set), which
//! OpenAI-compatible servers send in the last chunk. The answer is never
//! held back: the meter reads each chunk as it passes. When no usage
//! arrives (a server that ignores the option, a stream cut mid-way, an
//! answer over 1 MiB), output tokens are the content chunks counted (the
//! answer's bytes / 4 when not streamed) and input tokens the prompt's
//! bytes / 4, and the call is marked counted.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bulkhead_meter::ModelUse;
use bytes::Bytes;
use http::{Method, Request, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::{
    body::{Body, BoxError, full},
    error::{Code, Phase, Refusal},
    snapshot::ApiEntry,
};

/// The most of a non-streamed answer kept to read its usage from, and the
/// longest line of an event stream read.
const MAX_READ: usize = 1 << 20;

/// One model call's usage, filled in as its answer passes.
#[derive(Debug)]
pub struct Meter {
    model: Arc<str>,
    /// Estimated from the prompt, until the answer says.
    tokens_in: AtomicU64,
    tokens_out: AtomicU64,
    reported: AtomicBool,
    streamed: bool,
}

impl Meter {
    /// What the call used so far (all of it once the answer has ended).
    pub fn used(&self) -> ModelUse {
        ModelUse {
            model: Arc::clone(&self.model),
            tokens_in: self.tokens_in.load(Ordering::Relaxed),
            tokens_out: self.tokens_out.load(Ordering::Relaxed),
            counted: !self.reported.load(Ordering::Relaxed),
        }
    }

    fn report(&self, usage: &Value) -> bool {
        let tokens = |key: &str| usage.get(key).and_then(Value::as_u64);
        let Some(input) = tokens("prompt_tokens").or_else(|| tokens("input_tokens")) else {
            return false;
        };
        let output = tokens("completion_tokens").or_else(|| tokens("output_tokens")).unwrap_or(0);
        self.tokens_in.store(input, Ordering::Relaxed);
        self.tokens_out.store(output, Ordering::Relaxed);
        self.reported.store(true, Ordering::Relaxed);
        true
    }
}

/// The llm phase: for a model call, the request with its model checked
/// (and a streamed chat asked for its usage), and the call's meter.
pub async fn request(
    api: &ApiEntry,
    request: Request<Body>,
) -> Result<(Request<Body>, Option<Arc<Meter>>), Refusal> {
    if api.spec.api_type != bulkhead_model::ApiType::Llm || request.method() != Method::POST {
        return Ok((request, None));
    }
    let path = request.uri().path();
    let chat = path.ends_with("/chat/completions") || path.ends_with("/completions");
    if !chat && !path.ends_with("/embeddings") {
        return Err(Refusal::new(
            Phase::Route,
            Code::RouteNotFound,
            "not a model call this API meters",
        ));
    }
    let (mut parts, body) = request.into_parts();
    let bytes = body.collect().await.map_err(crate::guard::unreadable)?.to_bytes();
    let unreadable =
        || Refusal::new(Phase::Route, Code::BadRequest, "a model call is a JSON object");
    let mut call: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| unreadable())?;
    let model = call.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
    if !api.spec.models.contains(&model) {
        let mut refusal =
            Refusal::new(Phase::Authz, Code::ModelNotAllowed, "a model the API does not allow");
        refusal.rule = Some(format!("model {}", model.chars().take(200).collect::<String>()));
        return Err(refusal);
    }
    let streamed = chat && call.get("stream") == Some(&Value::Bool(true));
    if streamed {
        // Asked for whatever the client said: the usage is the meter's.
        let options = call.entry("stream_options").or_insert_with(|| serde_json::json!({}));
        if let Some(options) = options.as_object_mut() {
            options.insert("include_usage".into(), Value::Bool(true));
        }
    }
    // The upstream reads the call as checked: one `model`, whatever keys
    // the client repeated.
    let bytes = Bytes::from(serde_json::to_vec(&call).map_err(|_| unreadable())?);
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.insert(header::CONTENT_LENGTH, bytes.len().into());
    let meter = Arc::new(Meter {
        model: model.into(),
        tokens_in: AtomicU64::new(bytes.len() as u64 / 4),
        tokens_out: AtomicU64::new(0),
        reported: AtomicBool::new(false),
        streamed,
    });
    Ok((Request::from_parts(parts, full(bytes)), Some(meter)))
}

/// An answer's body, passed on as it comes, read by the meter on the way.
pub struct Metered {
    inner: Body,
    meter: Arc<Meter>,
    /// The answer so far (non-streamed, up to [`MAX_READ`]), or the part
    /// of the event stream after the last whole line.
    kept: Vec<u8>,
    /// The answer's bytes, for an estimate when it reports no usage.
    length: u64,
}

impl Metered {
    pub fn new(inner: Body, meter: Arc<Meter>) -> Self {
        Self { inner, meter, kept: Vec::new(), length: 0 }
    }

    fn read(&mut self, data: &[u8]) {
        self.length = self.length.saturating_add(data.len() as u64);
        if !self.meter.streamed {
            if self.kept.len() + data.len() <= MAX_READ {
                self.kept.extend_from_slice(data);
            }
            return;
        }
        if self.kept.len() + data.len() > MAX_READ {
            // A line this long is no event the meter reads.
            self.kept.clear();
            return;
        }
        self.kept.extend_from_slice(data);
        let Some(end) = self.kept.iter().rposition(|b| *b == b'\n') else { return };
        let lines: Vec<u8> = self.kept.drain(..=end).collect();
        for line in lines.split(|b| *b == b'\n') {
            let Some(data) = line.strip_prefix(b"data:") else { continue };
            let Ok(chunk) = serde_json::from_slice::<Value>(data.trim_ascii()) else { continue };
            if chunk.get("usage").is_some_and(|usage| self.meter.report(usage)) {
                continue;
            }
            let content = chunk.pointer("/choices/0/delta/content").and_then(Value::as_str);
            if content.is_some_and(|c| !c.is_empty())
                && !self.meter.reported.load(Ordering::Relaxed)
            {
                self.meter.tokens_out.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn ended(&mut self) {
        if !self.meter.streamed && !self.meter.reported.load(Ordering::Relaxed) {
            let reported = serde_json::from_slice::<Value>(&self.kept)
                .ok()
                .and_then(|answer| answer.get("usage").map(|usage| self.meter.report(usage)))
                .unwrap_or(false);
            if !reported {
                // No usage given (or an answer too large to read it from):
                // its bytes / 4, as for a prompt.
                self.meter.tokens_out.store(self.length / 4, Ordering::Relaxed);
            }
        }
        self.kept = Vec::new();
    }
}

impl std::fmt::Debug for Metered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metered").field("meter", &self.meter).finish_non_exhaustive()
    }
}

/// An answer cut short is metered with what had passed.
impl Drop for Metered {
    fn drop(&mut self) {
        self.ended();
    }
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let data = data.clone();
                    self.read(&data);
                }
                // A body of known length may not be polled past its end.
                if self.inner.is_end_stream() {
                    self.ended();
                }
            }
            Poll::Ready(None) => self.ended(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
