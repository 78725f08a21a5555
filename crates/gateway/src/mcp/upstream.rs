//! The gateway as a client of tools' upstreams: an MCP server over
//! streamable HTTP (initialized once per tenant and entry at the revision
//! the server chooses, its session kept and renewed when the server forgets
//! it; answers read as JSON, or from an event stream as soon as the
//! response arrives), or a plain HTTP endpoint. Each call carries the
//! tenant's credential for the entry, read for that call only.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bulkhead_model::ToolSpec;
use http::{HeaderName, HeaderValue};
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// The protocol revisions the gateway speaks, newest first: offered to
/// upstreams at `initialize`, and accepted from clients.
pub const PROTOCOL_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];
/// How long an MCP server's tool list is trusted before it is asked again.
const LIST_FOR: Duration = Duration::from_secs(30);
/// How long a server whose tools could not be listed is left alone, so
/// that a dead server does not slow every call of the tenant.
const FAILED_FOR: Duration = Duration::from_secs(10);
/// Pages of a server's tool list read at most, and tools kept per server.
const MAX_PAGES: usize = 10;
const MAX_TOOLS: usize = 256;
/// The largest answer read from a tool's upstream.
const MAX_ANSWER: usize = 8 << 20;

/// Reads a tenant's secret for a tool's credential; the gateway beside the
/// control plane reads the vault, a gateway on its own has none.
#[async_trait::async_trait]
pub trait ToolSecrets: Send + Sync {
    async fn read(&self, tenant: uuid::Uuid, path: &str) -> Result<Zeroizing<String>, String>;
}

/// Why a call to an upstream failed; said to the caller as it is (it names
/// the tenant's own entry only).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("tool server {0:?} cannot be reached")]
    Unreachable(String),
    #[error("tool server {0:?} did not answer in time")]
    Timeout(String),
    #[error("tool server {0:?} answered with something that is not MCP: {1}")]
    Garbled(String, String),
    #[error("the credential of tool {0:?} cannot be used: {1}")]
    Credential(String, String),
}

/// A tool an MCP server offers, as its `tools/list` describes it.
#[derive(Debug, Clone)]
pub struct RemoteTool {
    pub name: String,
    /// The whole description object (`description`, `inputSchema`, ...).
    pub described: Value,
}

/// An MCP entry's tools, and when they were listed.
type Listed = (Instant, Arc<Vec<RemoteTool>>);

#[derive(Debug, Clone)]
struct Session {
    id: Option<HeaderValue>,
    /// The revision the server chose at `initialize`, sent on every
    /// request after.
    version: HeaderValue,
}

/// What a tenant's tools keep between calls: each MCP entry's session and
/// tool list. Kept across snapshots while the tenant's registry is
/// unchanged.
#[derive(Debug, Default)]
pub struct ToolBox {
    sessions: Mutex<HashMap<String, Session>>,
    /// Held while a session is opened, so that callers arriving together
    /// share one.
    opening: tokio::sync::Mutex<()>,
    lists: Mutex<HashMap<String, Listed>>,
    failed: Mutex<HashMap<String, Instant>>,
}

/// Everything a call needs besides the box.
pub struct Caller<'a> {
    pub client: &'a reqwest::Client,
    pub secrets: Option<&'a dyn ToolSecrets>,
    pub tenant: uuid::Uuid,
    /// The tenant's name and id as the gateway vouches for them, and the
    /// caller's subject: what a tool's server learns of who calls.
    pub vouched: &'a crate::snapshot::TenantHeaders,
    pub subject: Option<HeaderValue>,
    pub timeout: Duration,
}

impl std::fmt::Debug for Caller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller").field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

impl ToolBox {
    /// The tools of an MCP entry, from its server (cached for a while; a
    /// server that failed is not asked again for a while).
    pub async fn list(
        &self,
        caller: &Caller<'_>,
        spec: &ToolSpec,
    ) -> Result<Arc<Vec<RemoteTool>>, UpstreamError> {
        if let Ok(lists) = self.lists.lock()
            && let Some((at, list)) = lists.get(&spec.name)
            && at.elapsed() < LIST_FOR
        {
            return Ok(Arc::clone(list));
        }
        if let Ok(failed) = self.failed.lock()
            && failed.get(&spec.name).is_some_and(|at| at.elapsed() < FAILED_FOR)
        {
            return Err(UpstreamError::Unreachable(spec.name.clone()));
        }
        let listed = self.list_pages(caller, spec).await;
        match &listed {
            Ok(list) => {
                if let Ok(mut lists) = self.lists.lock() {
                    lists.insert(spec.name.clone(), (Instant::now(), Arc::clone(list)));
                }
            }
            Err(_) => {
                if let Ok(mut failed) = self.failed.lock() {
                    failed.insert(spec.name.clone(), Instant::now());
                }
            }
        }
        listed
    }

    async fn list_pages(
        &self,
        caller: &Caller<'_>,
        spec: &ToolSpec,
    ) -> Result<Arc<Vec<RemoteTool>>, UpstreamError> {
        let garbled = |why: &str| UpstreamError::Garbled(spec.name.clone(), why.to_owned());
        let mut list = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let params = match &cursor {
                Some(cursor) => json!({ "cursor": cursor }),
                None => json!({}),
            };
            let answer = self.rpc(caller, spec, "tools/list", params).await?;
            let result = answer.get("result").ok_or_else(|| garbled("tools/list failed"))?;
            let tools = result
                .get("tools")
                .and_then(Value::as_array)
                .ok_or_else(|| garbled("tools/list has no tools"))?;
            list.extend(tools.iter().filter_map(|t| {
                let name = t.get("name")?.as_str()?;
                bulkhead_model::is_tool_name(name)
                    .then(|| RemoteTool { name: name.to_owned(), described: t.clone() })
            }));
            cursor = result.get("nextCursor").and_then(Value::as_str).map(str::to_owned);
            if cursor.is_none() || list.len() >= MAX_TOOLS {
                break;
            }
        }
        list.truncate(MAX_TOOLS);
        Ok(Arc::new(list))
    }

    /// Calls `remote` of an MCP entry; the answer is the server's whole
    /// JSON-RPC response (a result or an error).
    pub async fn call_mcp(
        &self,
        caller: &Caller<'_>,
        spec: &ToolSpec,
        remote: &str,
        arguments: &Value,
    ) -> Result<Value, UpstreamError> {
        self.rpc(caller, spec, "tools/call", json!({ "name": remote, "arguments": arguments }))
            .await
    }

    /// One request to an MCP server within a session, opened first if there
    /// is none; a server that forgot the session (404) gets a new one, once.
    async fn rpc(
        &self,
        caller: &Caller<'_>,
        spec: &ToolSpec,
        method: &str,
        params: Value,
    ) -> Result<Value, UpstreamError> {
        let credential = credential(caller, spec).await?;
        for attempt in 0..2 {
            let session = match self.session(&spec.name) {
                Some(session) => session,
                None => {
                    let _opening = self.opening.lock().await;
                    match self.session(&spec.name) {
                        Some(session) => session,
                        None => self.open(caller, spec, credential.as_ref()).await?,
                    }
                }
            };
            let message = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
            let sent = post(caller, spec, &message, Some(&session), credential.as_ref()).await?;
            let forgotten = sent.status() == reqwest::StatusCode::NOT_FOUND && session.id.is_some();
            if forgotten && attempt == 0 {
                self.forget(&spec.name, &session);
                continue;
            }
            return answer_of(spec, sent, caller.timeout).await;
        }
        Err(UpstreamError::Garbled(spec.name.clone(), "the session could not be renewed".into()))
    }

    fn session(&self, entry: &str) -> Option<Session> {
        self.sessions.lock().ok()?.get(entry).cloned()
    }

    /// Forgets `session` of `entry`, unless another call replaced it.
    fn forget(&self, entry: &str, session: &Session) {
        if let Ok(mut sessions) = self.sessions.lock()
            && sessions.get(entry).is_some_and(|s| s.id == session.id)
        {
            sessions.remove(entry);
        }
    }

    /// `initialize`, then `notifications/initialized`.
    async fn open(
        &self,
        caller: &Caller<'_>,
        spec: &ToolSpec,
        credential: Option<&(HeaderName, HeaderValue)>,
    ) -> Result<Session, UpstreamError> {
        let initialize = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL_VERSIONS[0],
                "capabilities": {},
                "clientInfo": { "name": "bulkhead-gateway", "version": env!("CARGO_PKG_VERSION") },
            },
        });
        let sent = post(caller, spec, &initialize, None, credential).await?;
        let id = sent.headers().get("mcp-session-id").cloned();
        let answer = answer_of(spec, sent, caller.timeout).await?;
        let chosen = answer.pointer("/result/protocolVersion").and_then(Value::as_str);
        let Some(version) = chosen.and_then(|v| HeaderValue::from_str(v).ok()) else {
            let why = "initialize did not name a protocol revision".to_owned();
            return Err(UpstreamError::Garbled(spec.name.clone(), why));
        };
        let session = Session { id, version };
        let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        post(caller, spec, &initialized, Some(&session), credential).await?;
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(spec.name.clone(), session.clone());
        }
        Ok(session)
    }
}

/// Calls an HTTP tool: the arguments POSTed as JSON; the answer's body is
/// the result's text, an error status makes it an error result.
pub async fn call_http(
    caller: &Caller<'_>,
    spec: &ToolSpec,
    arguments: &Value,
) -> Result<Value, UpstreamError> {
    let credential = credential(caller, spec).await?;
    let sent = post(caller, spec, arguments, None, credential.as_ref()).await?;
    let failed = !sent.status().is_success();
    let text = read(spec, sent, caller.timeout).await?;
    let text = String::from_utf8_lossy(&text);
    Ok(json!({ "content": [{ "type": "text", "text": text }], "isError": failed }))
}

/// The header an entry's credential goes in, with the secret's value.
async fn credential(
    caller: &Caller<'_>,
    spec: &ToolSpec,
) -> Result<Option<(HeaderName, HeaderValue)>, UpstreamError> {
    let Some(credential) = &spec.credential else { return Ok(None) };
    let failed = |why: String| UpstreamError::Credential(spec.name.clone(), why);
    let Some(secrets) = caller.secrets else {
        return Err(failed("this gateway reads no vault; run it beside the control plane".into()));
    };
    let secret = secrets.read(caller.tenant, &credential.secret).await.map_err(failed)?;
    let (name, value) = match &credential.header {
        Some(header) => (
            HeaderName::from_bytes(header.as_bytes()).ok(),
            Zeroizing::new(secret.trim().to_owned()),
        ),
        None => {
            (Some(http::header::AUTHORIZATION), Zeroizing::new(format!("Bearer {}", secret.trim())))
        }
    };
    let name = name.ok_or_else(|| failed("the header name is not valid".into()))?;
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| failed("the secret cannot be sent in a header".into()))?;
    value.set_sensitive(true);
    Ok(Some((name, value)))
}

/// Sends `body` to the entry's upstream; waits `caller.timeout` at most
/// for the answer's head.
async fn post(
    caller: &Caller<'_>,
    spec: &ToolSpec,
    body: &Value,
    session: Option<&Session>,
    credential: Option<&(HeaderName, HeaderValue)>,
) -> Result<reqwest::Response, UpstreamError> {
    let mut request = caller
        .client
        .post(spec.upstream.url())
        .header(http::header::ACCEPT, "application/json, text/event-stream")
        .json(body);
    if let Some(session) = session {
        request = request.header("mcp-protocol-version", session.version.clone());
        if let Some(id) = &session.id {
            request = request.header("mcp-session-id", id.clone());
        }
    }
    if let Some((name, value)) = credential {
        request = request.header(name.clone(), value.clone());
    }
    // As an API's upstream is told: a server shared by tenants (a plan's
    // tool) tells them apart by these, and a call through a tenant's own
    // entry carries no plan.
    request = request
        .header(crate::headers::TENANT, caller.vouched.name.clone())
        .header(crate::headers::TENANT_ID, caller.vouched.id.clone());
    if let Some(subject) = &caller.subject {
        request = request.header(crate::headers::SUBJECT, subject.clone());
    }
    if let Some(plan) = spec.granted_by.as_deref().and_then(|p| HeaderValue::from_str(p).ok()) {
        request = request.header(crate::headers::PLAN, plan);
    }
    match tokio::time::timeout(caller.timeout, request.send()).await {
        Err(_) => Err(UpstreamError::Timeout(spec.name.clone())),
        Ok(Err(error)) => {
            tracing::debug!(tool = %spec.name, %error, "tool upstream unreachable");
            Err(UpstreamError::Unreachable(spec.name.clone()))
        }
        Ok(Ok(sent)) => Ok(sent),
    }
}

/// The whole answer, up to [`MAX_ANSWER`], within `within`.
async fn read(
    spec: &ToolSpec,
    mut sent: reqwest::Response,
    within: Duration,
) -> Result<Vec<u8>, UpstreamError> {
    let whole = async {
        let mut body = Vec::new();
        while let Some(chunk) = next_chunk(spec, &mut sent).await? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(garbled(spec, "the answer is too large"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    tokio::time::timeout(within, whole)
        .await
        .map_err(|_| UpstreamError::Timeout(spec.name.clone()))?
}

async fn next_chunk(
    spec: &ToolSpec,
    sent: &mut reqwest::Response,
) -> Result<Option<bytes::Bytes>, UpstreamError> {
    sent.chunk().await.map_err(|_| UpstreamError::Unreachable(spec.name.clone()))
}

fn garbled(spec: &ToolSpec, why: &str) -> UpstreamError {
    UpstreamError::Garbled(spec.name.clone(), why.to_owned())
}

/// The JSON-RPC response in an MCP server's answer: the body itself, or
/// the first response among the events of an event stream, taken as soon
/// as it arrives (the stream may stay open after it).
async fn answer_of(
    spec: &ToolSpec,
    mut sent: reqwest::Response,
    within: Duration,
) -> Result<Value, UpstreamError> {
    let status = sent.status();
    if !status.is_success() {
        return Err(garbled(spec, &format!("it answered HTTP {status}")));
    }
    let streamed = sent
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !streamed {
        let body = read(spec, sent, within).await?;
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| garbled(spec, &e.to_string()))?;
        return if is_response(&value) { Ok(value) } else { Err(garbled(spec, "no response")) };
    }
    let events = async {
        // Carriage returns dropped as they come (JSON has none outside
        // escapes), so that events end at "\n\n"; each is read once.
        let mut buffer: Vec<u8> = Vec::new();
        let mut next = 0;
        while let Some(chunk) = next_chunk(spec, &mut sent).await? {
            if buffer.len() + chunk.len() > MAX_ANSWER {
                return Err(garbled(spec, "the answer is too large"));
            }
            buffer.extend(chunk.iter().filter(|b| **b != b'\r'));
            while let Some(end) = memchr::memmem::find(&buffer[next..], b"\n\n") {
                let event = String::from_utf8_lossy(&buffer[next..next + end]);
                if let Some(response) = event_response(&event) {
                    return Ok(response);
                }
                next += end + 2;
            }
        }
        Err(garbled(spec, "the event stream ended without a response"))
    };
    tokio::time::timeout(within, events)
        .await
        .map_err(|_| UpstreamError::Timeout(spec.name.clone()))?
}

fn is_response(value: &Value) -> bool {
    value.get("result").is_some() || value.get("error").is_some()
}

/// An event's data (its `data:` lines joined), if it is a JSON-RPC
/// response.
fn event_response(event: &str) -> Option<Value> {
    let data: Vec<&str> = event
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    let value: Value = serde_json::from_str(&data.join("\n")).ok()?;
    is_response(&value).then_some(value)
}
