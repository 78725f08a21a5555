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
use serde_json::Value;

use crate::{
    body::{Body, BoxError, full},
    error::{Code, Phase, Refusal},
    guard::Unread,
    snapshot::ApiEntry,
};

/// The most of a non-streamed answer kept to read its usage from, and the
/// longest line of an event stream read.
const MAX_READ: usize = 1 << 20;

/// The output tokens a call that sets no `max_tokens` reserves from its
/// tenant's budget.
pub const DEFAULT_OUTPUT_RESERVE: u64 = 4_096;

/// One model call's usage, filled in as its answer passes.
#[derive(Debug)]
pub struct Meter {
    model: Arc<str>,
    price: bulkhead_model::Price,
    /// Estimated from the prompt, until the answer says.
    tokens_in: AtomicU64,
    tokens_out: AtomicU64,
    reported: AtomicBool,
    streamed: bool,
    /// The most input and output tokens the call can use: what it
    /// reserves from the tenant's budget.
    most_tokens: (u64, u64),
}

impl Meter {
    /// What the call used so far (all of it once the answer has ended).
    pub fn used(&self) -> ModelUse {
        let tokens_in = self.tokens_in.load(Ordering::Relaxed);
        let tokens_out = self.tokens_out.load(Ordering::Relaxed);
        ModelUse {
            model: Arc::clone(&self.model),
            tokens_in,
            tokens_out,
            cost_micros: self.price.cost(tokens_in, tokens_out),
            counted: !self.reported.load(Ordering::Relaxed),
        }
    }

    /// What a call the upstream received but did not answer through the
    /// gateway (a timeout, a refused answer, a client gone) is charged:
    /// all it reserved, as the provider may bill it whole.
    pub fn unanswered(&self) -> ModelUse {
        ModelUse {
            model: Arc::clone(&self.model),
            tokens_in: self.most_tokens.0,
            tokens_out: self.most_tokens.1,
            cost_micros: self.most(),
            counted: true,
        }
    }

    /// The most the call can cost.
    pub fn most(&self) -> u64 {
        self.price.cost(self.most_tokens.0, self.most_tokens.1)
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
    prices: &bulkhead_model::PriceTable,
    request: Request<Body>,
) -> Result<(Request<Body>, Option<Arc<Meter>>), Refusal> {
    if api.spec.api_type != bulkhead_model::ApiType::Llm {
        return Ok((request, None));
    }
    let not_metered =
        || Refusal::new(Phase::Route, Code::RouteNotFound, "not a model call this API meters");
    // The path within the API, with or without the provider's `/v1`:
    // exact, so that no path (Azure's deployments, the legacy engines) can
    // name a model the body's `model` does not.
    let within = request.uri().path().strip_prefix(api.spec.prefix.as_str()).unwrap_or_default();
    let within = within.strip_prefix("/v1").unwrap_or(within);
    let method = request.method();
    if *method == Method::GET || *method == Method::HEAD {
        let listing = within == "/models"
            || within.strip_prefix("/models/").is_some_and(|m| !m.contains('/'));
        return if listing { Ok((request, None)) } else { Err(not_metered()) };
    }
    let kind = match within {
        "/chat/completions" => Kind::Chat,
        "/completions" => Kind::Completion,
        "/embeddings" => Kind::Embedding,
        _ => return Err(not_metered()),
    };
    let chat = kind != Kind::Embedding;
    if *method != Method::POST {
        return Err(not_metered());
    }
    let (mut parts, body) = request.into_parts();
    let cap = api.spec.max_body_bytes.min(crate::guard::GUARDED_BODY_MAX);
    let deadline = std::time::Duration::from_millis(api.spec.timeouts.response_ms);
    let bytes = crate::guard::read(body, cap, deadline).await.map_err(Unread::refusal)?;
    let unreadable =
        || Refusal::new(Phase::Route, Code::BadRequest, "a model call is a JSON object");
    let mut call: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| unreadable())?;
    let model = call.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
    // Priced when the API was applied; a price since removed refuses the
    // model rather than making it free.
    let price = prices.get(&model).filter(|_| api.spec.models.contains(&model));
    let Some(price) = price.copied() else {
        let mut refusal =
            Refusal::new(Phase::Authz, Code::ModelNotAllowed, "a model the API does not allow");
        refusal.rule = Some(format!("model {}", model.chars().take(200).collect::<String>()));
        return Err(refusal);
    };
    // As lenient servers read it (`1`, `"true"`), so that a stream is
    // never metered as a JSON answer.
    let streamed = chat
        && match call.get("stream") {
            Some(Value::Bool(on)) => *on,
            Some(Value::Number(n)) => n.as_f64().is_some_and(|n| n != 0.0),
            Some(Value::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "1"),
            _ => false,
        };
    if streamed {
        // Asked for whatever the client said: the usage is the meter's.
        let mut options = match call.remove("stream_options") {
            Some(Value::Object(options)) => options,
            _ => serde_json::Map::new(),
        };
        options.insert("include_usage".into(), Value::Bool(true));
        call.insert("stream_options".into(), Value::Object(options));
    }
    let (most_out, images) = bound_output(&mut call, kind)?;
    // The upstream reads the call as checked: one `model`, whatever keys
    // the client repeated, as JSON whatever type it claimed, with the
    // output limit reserved for; and answers uncompressed, for the meter
    // to read.
    let bytes = Bytes::from(serde_json::to_vec(&call).map_err(|_| unreadable())?);
    let most_in = (bytes.len() as u64).saturating_add(IMAGE_RESERVE * images);
    crate::headers::set_content_length(&mut parts.headers, bytes.len());
    parts.headers.remove(header::ACCEPT_ENCODING);
    parts.headers.insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    let meter = Arc::new(Meter {
        model: model.into(),
        most_tokens: (most_in, most_out),
        price,
        tokens_in: AtomicU64::new(bytes.len() as u64 / 4),
        tokens_out: AtomicU64::new(0),
        reported: AtomicBool::new(false),
        streamed,
    });
    Ok((Request::from_parts(parts, full(bytes)), Some(meter)))
}

/// The input tokens reserved for each image in a prompt, whatever its URL's
/// length (OpenAI's largest image is about 1,500 tokens).
pub const IMAGE_RESERVE: u64 = 4_096;
/// The most choices (`n`, `best_of`) or prompts a call may ask for at once.
pub const MAX_CHOICES: u64 = 128;
/// The largest output limit a call may set.
pub const MAX_OUTPUT_TOKENS: u64 = 1_000_000;
/// Output limits some servers read besides `max_tokens` (llama.cpp's
/// `n_predict`, TGI's `max_new_tokens`, the Responses API's
/// `max_output_tokens`): refused, as the gateway would not bound them.
const OTHER_LIMITS: [&str; 4] = ["n_predict", "max_new_tokens", "max_output_tokens", "max_length"];
/// Parts whose tokens the call's bytes do not bound (an uploaded file of
/// many pages): refused, as they cannot be reserved for.
const UNBOUNDED_PARTS: [&str; 2] = ["file", "input_file"];

/// What a `POST` within an llm API is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    /// The legacy `/completions`: prompts may come in a list, `best_of`
    /// generates more than it returns.
    Completion,
    Embedding,
}

/// The most output tokens the call can produce, made a bound the upstream
/// keeps: its output limit (the larger of `max_tokens` and
/// `max_completion_tokens`; [`DEFAULT_OUTPUT_RESERVE`] written as
/// `max_completion_tokens`, or `max_tokens` on `/completions`, when it sets
/// neither) times its choices (`n`, `best_of`) and, on `/completions`, its
/// prompts. A limit or a count that is not a positive integer within bounds
/// is refused: lenient servers read `"100"` or `1e5` where the gateway
/// would read nothing; so are the limits other servers read and the parts
/// whose size the call does not show. Also returns the call's images.
fn bound_output(
    call: &mut serde_json::Map<String, Value>,
    kind: Kind,
) -> Result<(u64, u64), Refusal> {
    let parts = scan_parts(call);
    if kind == Kind::Embedding {
        return Ok((0, parts.images));
    }
    let invalid = |rule: String| {
        let mut refusal = Refusal::new(Phase::Route, Code::BadRequest, "an unbounded model call");
        refusal.rule = Some(rule);
        refusal
    };
    let positive = |key: &str, most: u64| -> Result<Option<u64>, Refusal> {
        match call.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => match value.as_u64().filter(|n| (1..=most).contains(n)) {
                Some(n) => Ok(Some(n)),
                None => Err(invalid(format!("{key} must be an integer from 1 to {most}"))),
            },
        }
    };
    if let Some(other) = OTHER_LIMITS.iter().find(|key| call.contains_key(**key)) {
        return Err(invalid(format!("{other} is not read here; set max_tokens")));
    }
    if let Some(part) = parts.unbounded {
        return Err(invalid(format!("{part} parts cannot be metered before the call; send text")));
    }
    let limits = [
        positive("max_tokens", MAX_OUTPUT_TOKENS)?,
        positive("max_completion_tokens", MAX_OUTPUT_TOKENS)?,
    ];
    let choices = [positive("n", MAX_CHOICES)?, positive("best_of", MAX_CHOICES)?];
    let limit = match limits.iter().flatten().max() {
        Some(limit) => *limit,
        None => {
            let key = if kind == Kind::Completion { "max_tokens" } else { "max_completion_tokens" };
            call.insert(key.into(), Value::from(DEFAULT_OUTPUT_RESERVE));
            DEFAULT_OUTPUT_RESERVE
        }
    };
    let choices = choices.iter().flatten().max().copied().unwrap_or(1);
    let prompts = match (kind, call.get("prompt")) {
        // A list of strings or of token lists is one prompt each; a list
        // of numbers is one prompt of tokens.
        (Kind::Completion, Some(Value::Array(prompts)))
            if prompts.iter().any(|p| p.is_string() || p.is_array()) =>
        {
            prompts.len() as u64
        }
        _ => 1,
    };
    if prompts > MAX_CHOICES {
        return Err(invalid(format!("a call may hold at most {MAX_CHOICES} prompts")));
    }
    Ok((limit.saturating_mul(choices).saturating_mul(prompts.max(1)), parts.images))
}

/// What a call's typed parts (`{"type": ...}` objects, wherever they are)
/// say of its size.
#[derive(Debug, Default)]
struct Parts {
    /// Parts typed `image_url`, `input_image` or `image`.
    images: u64,
    /// The first part of a type in [`UNBOUNDED_PARTS`].
    unbounded: Option<&'static str>,
}

/// One pass over the call (its depth is serde_json's, at most 128).
fn scan_parts(call: &serde_json::Map<String, Value>) -> Parts {
    fn visit(value: &Value, parts: &mut Parts) {
        match value {
            Value::Array(items) => items.iter().for_each(|item| visit(item, parts)),
            Value::Object(object) => {
                if let Some(kind) = object.get("type").and_then(Value::as_str) {
                    parts.images +=
                        u64::from(matches!(kind, "image_url" | "input_image" | "image"));
                    if parts.unbounded.is_none() {
                        parts.unbounded = UNBOUNDED_PARTS.iter().find(|k| **k == kind).copied();
                    }
                }
                object.values().for_each(|item| visit(item, parts));
            }
            _ => {}
        }
    }
    let mut parts = Parts::default();
    call.values().for_each(|value| visit(value, &mut parts));
    parts
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
    /// In the middle of an event-stream line too long to read.
    skipping: bool,
}

impl Metered {
    pub fn new(inner: Body, meter: Arc<Meter>) -> Self {
        Self { inner, meter, kept: Vec::new(), length: 0, skipping: false }
    }

    fn read(&mut self, data: &[u8]) {
        self.length = self.length.saturating_add(data.len() as u64);
        if !self.meter.streamed {
            if self.kept.len() + data.len() <= MAX_READ {
                self.kept.extend_from_slice(data);
            }
            // Kept current, so that an answer cut at any point is metered
            // with what passed.
            if !self.meter.reported.load(Ordering::Relaxed) {
                self.meter.tokens_out.store(self.length / 4, Ordering::Relaxed);
            }
            return;
        }
        // Only the new bytes are searched; only an unfinished line is kept,
        // and one over the limit is skipped to its end.
        let Some(last) = data.iter().rposition(|b| *b == b'\n') else {
            if self.skipping || self.kept.len() + data.len() > MAX_READ {
                self.kept.clear();
                self.skipping = true;
            } else {
                self.kept.extend_from_slice(data);
            }
            return;
        };
        let mut whole = std::mem::take(&mut self.kept);
        let mut from = 0;
        if self.skipping {
            // The overlong line ends at the first newline.
            from = data.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
            self.skipping = false;
        }
        whole.extend_from_slice(&data[from..=last.max(from.saturating_sub(1))]);
        for line in whole.split(|b| *b == b'\n') {
            self.line(line);
        }
        let rest = &data[last + 1..];
        if rest.len() > MAX_READ {
            self.skipping = true;
        } else {
            self.kept.extend_from_slice(rest);
        }
    }

    /// One line of the event stream.
    fn line(&self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else { return };
        let Ok(chunk) = serde_json::from_slice::<Value>(data.trim_ascii()) else { return };
        if chunk.get("usage").is_some_and(|usage| self.meter.report(usage)) {
            return;
        }
        if self.meter.reported.load(Ordering::Relaxed) {
            return;
        }
        // Any output counts: content, reasoning, tool calls, legacy text.
        let choice = chunk.pointer("/choices/0");
        let produced = choice.is_some_and(|c| {
            let delta = c.get("delta");
            let said = |v: Option<&Value>| v.is_some_and(|v| !v.is_null() && v != "");
            said(delta.and_then(|d| d.get("content")))
                || said(delta.and_then(|d| d.get("reasoning_content")))
                || said(delta.and_then(|d| d.get("tool_calls")))
                || said(c.get("text"))
        });
        if produced {
            self.meter.tokens_out.fetch_add(1, Ordering::Relaxed);
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
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.ended(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn metered(streamed: bool) -> Metered {
        let meter = Arc::new(Meter {
            model: Arc::from("m"),
            price: bulkhead_model::Price { input: 1_000_000, output: 2_000_000 },
            tokens_in: AtomicU64::new(10),
            tokens_out: AtomicU64::new(0),
            reported: AtomicBool::new(false),
            streamed,
            most_tokens: (0, 0),
        });
        Metered::new(crate::body::empty(), meter)
    }

    #[test]
    fn a_call_reserves_its_bounded_output_times_its_choices_and_prompts() {
        use serde_json::json;
        let bound = |kind: Kind, body: Value| {
            let mut call = body.as_object().unwrap().clone();
            bound_output(&mut call, kind).map(|(most, _)| (most, Value::Object(call)))
        };
        // No limit: the default, written for the upstream to keep.
        let (most, sent) = bound(Kind::Chat, json!({"model": "m"})).unwrap();
        assert_eq!(most, DEFAULT_OUTPUT_RESERVE);
        assert_eq!(sent["max_completion_tokens"], DEFAULT_OUTPUT_RESERVE);
        assert_eq!(bound(Kind::Chat, json!({"max_tokens": 50, "n": 3})).unwrap().0, 150);
        let both = json!({"max_completion_tokens": 7, "max_tokens": 50});
        assert_eq!(bound(Kind::Chat, both).unwrap().0, 50, "the larger of the two");
        assert_eq!(
            bound(Kind::Chat, json!({"max_tokens": null})).unwrap().0,
            DEFAULT_OUTPUT_RESERVE
        );
        let legacy = json!({"max_tokens": 10, "n": 2, "best_of": 5, "prompt": ["a", "b", "c"]});
        assert_eq!(bound(Kind::Completion, legacy).unwrap().0, 10 * 5 * 3);
        let tokens = json!({"max_tokens": 10, "prompt": [1, 2, 3]});
        assert_eq!(bound(Kind::Completion, tokens).unwrap().0, 10, "one prompt of tokens");
        assert_eq!(bound(Kind::Embedding, json!({"max_tokens": 5})).unwrap().0, 0);
        for bad in [
            json!({"max_tokens": 0}),
            json!({"max_tokens": -1}),
            json!({"max_tokens": "100000"}),
            json!({"max_completion_tokens": 1e5}),
            json!({"n": 129}),
            json!({"best_of": 0}),
            json!({"max_tokens": 1_000_001}),
        ] {
            let refused = bound(Kind::Chat, bad.clone()).unwrap_err();
            assert_eq!(refused.code, Code::BadRequest, "{bad}");
            assert!(refused.rule.unwrap().contains("must be an integer from 1 to"), "{bad}");
        }
        let other = bound(Kind::Chat, json!({"max_tokens": 1, "n_predict": -1})).unwrap_err();
        assert_eq!(other.rule.unwrap(), "n_predict is not read here; set max_tokens");
        let file = json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f"}}]}]});
        assert!(bound(Kind::Chat, file).unwrap_err().rule.unwrap().starts_with("file parts"));
        let (_, sent) = bound(Kind::Completion, json!({"prompt": "x"})).unwrap();
        assert_eq!(sent["max_tokens"], DEFAULT_OUTPUT_RESERVE, "the legacy endpoint's own name");
        let many = json!({"max_tokens": 1, "prompt": vec!["x"; 129]});
        assert!(bound(Kind::Completion, many).is_err());
    }

    #[test]
    fn images_are_counted_wherever_they_are() {
        let call = serde_json::json!({"messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
                {"type": "input_image", "image_url": "https://x/b.png"}
            ]},
            {"role": "user", "content": "type image_url"}
        ]});
        assert_eq!(scan_parts(call.as_object().unwrap()).images, 2);
    }

    const CHUNK: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n";

    #[test]
    fn a_stream_is_read_whatever_its_chunking_and_its_usage_wins() {
        let mut m = metered(true);
        let stream = format!(
            "{CHUNK}{CHUNK}data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":4}}}}\n\ndata: [DONE]\n\n"
        );
        for piece in stream.as_bytes().chunks(7) {
            m.read(piece);
        }
        let used = m.meter.used();
        assert_eq!((used.tokens_in, used.tokens_out, used.counted), (9, 4, false));
        assert_eq!(used.cost_micros, 9 + 2 * 4);
    }

    #[test]
    fn without_usage_chunks_are_counted_and_an_overlong_line_is_skipped() {
        let mut m = metered(true);
        m.read(CHUNK.as_bytes());
        m.read(b"data: ");
        m.read(&vec![b'a'; MAX_READ + 1]);
        m.read(format!("tail\n\n{CHUNK}").as_bytes());
        let used = m.meter.used();
        assert_eq!((used.tokens_in, used.tokens_out, used.counted), (10, 2, true));
    }

    #[test]
    fn a_json_answer_is_read_at_its_end_or_counted_as_it_passes() {
        let mut m = metered(false);
        m.read(br#"{"usage":{"prompt_tokens":3,"#);
        assert_eq!(m.meter.used().tokens_out, 7, "bytes / 4 so far");
        m.read(br#""completion_tokens":2}}"#);
        m.ended();
        let used = m.meter.used();
        assert_eq!((used.tokens_in, used.tokens_out, used.counted), (3, 2, false));
    }
}
