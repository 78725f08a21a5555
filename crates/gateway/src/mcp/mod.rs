//! An API of `type: mcp`: one MCP endpoint (streamable HTTP, JSON-RPC 2.0)
//! per tenant, answered by the gateway itself from the tenant's tool
//! registry. `tools/list` offers the tools the tenant registered and the
//! caller's roles allow; `tools/call` of anything else is refused before
//! any upstream sees it; an allowed call goes to the entry's upstream with
//! the entry's credential, and is recorded on the tenant's audit stream
//! (the tool, the caller, the outcome, and the arguments' size and SHA-256,
//! never the arguments).
//!
//! Tool names are the upstream's; where two entries offer the same name,
//! each is offered as `<entry>__<name>`. The endpoint is stateless: it
//! gives no session id, answers every request with JSON, and has no
//! stream for server-sent messages (GET is 405), as the protocol allows.

mod upstream;

use std::{collections::HashSet, sync::Arc, time::Duration};

use bulkhead_model::{Role, ToolSpec, ToolUpstream};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use upstream::{Caller, RemoteTool};
pub use upstream::{PROTOCOL_VERSIONS, ToolBox, ToolSecrets};

use crate::{
    authz::{Permitted, roles_allow},
    body::{Body, full},
    error::Refusal,
    record::{Ended, Learned, Recorder, ToolOutcome, ToolUse},
};

/// What the endpoint needs of the gateway and of the request's record.
pub struct Tools<'a> {
    pub client: &'a reqwest::Client,
    pub secrets: Option<&'a dyn ToolSecrets>,
    pub recorder: &'a Recorder,
    pub learned: &'a Learned,
    pub ended: &'a Ended,
    /// The tools that reached their upstream, for the usage ledger.
    pub called: &'a std::sync::Mutex<Vec<Arc<str>>>,
}

impl std::fmt::Debug for Tools<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools").finish_non_exhaustive()
    }
}

/// How the gateway reaches tools' upstreams: its client (no redirects
/// followed) and, beside the control plane, the vault.
#[derive(Clone)]
pub struct ToolAccess {
    pub client: reqwest::Client,
    pub secrets: Option<Arc<dyn ToolSecrets>>,
}

impl std::fmt::Debug for ToolAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolAccess").field("vault", &self.secrets.is_some()).finish_non_exhaustive()
    }
}

/// JSON-RPC's error codes the endpoint uses.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;
/// Messages one batch may hold: each may be a call to an upstream.
const MAX_BATCH: usize = 16;

/// Answers one HTTP request to the endpoint.
pub async fn answer(
    tools: &Tools<'_>,
    permitted: &Permitted,
    request: Request<Body>,
) -> Result<Response<Body>, Refusal> {
    if request.method() != Method::POST {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, Bytes::new());
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(response);
    }
    let (parts, body) = request.into_parts();
    // Read first, so that the connection can carry the next request
    // whatever the answer.
    let body = body.collect().await.map_err(crate::guard::unreadable)?.to_bytes();
    if let Some(version) = parts.headers.get("mcp-protocol-version")
        && !PROTOCOL_VERSIONS.iter().any(|v| version.as_bytes() == v.as_bytes())
    {
        let message = format!(
            "unsupported MCP-Protocol-Version; this endpoint speaks {}",
            PROTOCOL_VERSIONS.join(", ")
        );
        let refused = error(Value::Null, INVALID_REQUEST, &message);
        return Ok(rpc_response(StatusCode::BAD_REQUEST, &refused));
    }
    let message: Value = match serde_json::from_slice(&body) {
        Ok(message) => message,
        Err(e) => {
            let refused = error(Value::Null, PARSE_ERROR, &format!("not JSON: {e}"));
            return Ok(rpc_response(StatusCode::BAD_REQUEST, &refused));
        }
    };
    if let Value::Array(batch) = &message
        && !(1..=MAX_BATCH).contains(&batch.len())
    {
        let message = format!("a batch holds 1 to {MAX_BATCH} messages");
        return Ok(rpc_response(
            StatusCode::BAD_REQUEST,
            &error(Value::Null, INVALID_REQUEST, &message),
        ));
    }
    // One deadline for the whole request, however many calls it holds.
    let within = Duration::from_millis(permitted.route.api.spec.timeouts.response_ms);
    let mut session = Session { tools, permitted, catalog: None, unlisted: Vec::new() };
    let answered = tokio::time::timeout(within, async {
        match message {
            Value::Array(batch) => {
                let mut answers = Vec::new();
                for message in batch {
                    answers.extend(session.handle(message).await);
                }
                (!answers.is_empty()).then_some(Value::Array(answers))
            }
            message => session.handle(message).await,
        }
    })
    .await;
    Ok(match answered {
        Ok(Some(answer)) => rpc_response(StatusCode::OK, &answer),
        Ok(None) => plain(StatusCode::ACCEPTED, Bytes::new()),
        Err(_) => {
            let late = error(
                Value::Null,
                INTERNAL_ERROR,
                "the request took longer than the API's response_ms",
            );
            rpc_response(StatusCode::GATEWAY_TIMEOUT, &late)
        }
    })
}

/// One tool as the tenant's caller sees it.
struct Offered {
    /// As offered: the upstream's name, or `<entry>__<name>` on a clash.
    name: String,
    entry: Arc<ToolSpec>,
    /// The name the upstream knows it by.
    remote: String,
    described: Value,
}

/// One HTTP request's messages, with the catalog read once for all.
struct Session<'a, 'b> {
    tools: &'a Tools<'b>,
    permitted: &'a Permitted,
    catalog: Option<Vec<Offered>>,
    /// Entries whose tools could not be listed, for the refusals' words.
    unlisted: Vec<String>,
}

impl Session<'_, '_> {
    /// The answer to one message; `None` for a notification or a response.
    async fn handle(&mut self, message: Value) -> Option<Value> {
        let id = message.get("id").cloned();
        let method = message.get("method").and_then(Value::as_str);
        let well_formed = message.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
            && id.as_ref().is_none_or(|id| id.is_string() || id.is_i64() || id.is_u64());
        let (Some(method), true) = (method, well_formed) else {
            // A response from the client (there are no requests of ours to
            // answer) is taken and dropped; anything else is malformed.
            let response = message.get("result").is_some() || message.get("error").is_some();
            if response && well_formed {
                return None;
            }
            return Some(error(
                id.unwrap_or(Value::Null),
                INVALID_REQUEST,
                "not a JSON-RPC 2.0 request",
            ));
        };
        let Some(id) = id else {
            // Notifications (initialized, cancelled, ...) need no answer.
            return None;
        };
        let params = message.get("params").cloned().unwrap_or(Value::Null);
        Some(match method {
            "initialize" => result(id, initialize(&params)),
            "ping" => result(id, json!({})),
            "tools/list" => {
                let tools: Vec<Value> = self
                    .catalog()
                    .await
                    .iter()
                    .map(|t| {
                        let mut described = t.described.clone();
                        described["name"] = Value::from(t.name.as_str());
                        described
                    })
                    .collect();
                result(id, json!({ "tools": tools }))
            }
            "tools/call" => self.call(id, &params).await,
            other => error(
                id,
                METHOD_NOT_FOUND,
                &format!(
                    "method {other:?} is not served here; this endpoint serves initialize, ping, tools/list and tools/call"
                ),
            ),
        })
    }

    /// The tools offered to this caller.
    async fn catalog(&mut self) -> &[Offered] {
        if self.catalog.is_none() {
            self.catalog = Some(self.read_catalog().await);
        }
        self.catalog.as_deref().unwrap_or_default()
    }

    async fn read_catalog(&mut self) -> Vec<Offered> {
        // No caller, no tools (an MCP endpoint cannot be public; this holds
        // whatever the spec says).
        let Some(principal) = &self.permitted.principal else { return Vec::new() };
        let held: &[Role] = &principal.roles;
        let tenant = &self.permitted.tenant.0;
        let caller = self.caller();
        let mut offered = Vec::new();
        let mut unlisted = Vec::new();
        // Every entry of the tenant, whoever calls, so that a tool's name
        // does not depend on the caller's roles; those the caller may not
        // use are left out after.
        for entry in tenant.tools.iter() {
            match &entry.upstream {
                ToolUpstream::Http(_) => {
                    let described = json!({
                        "description": entry.description.clone().unwrap_or_default(),
                        "inputSchema": entry.input_schema.clone().unwrap_or_else(|| json!({ "type": "object" })),
                    });
                    offered.push(Offered {
                        name: entry.name.clone(),
                        entry: Arc::clone(entry),
                        remote: entry.name.clone(),
                        described,
                    });
                }
                ToolUpstream::Mcp(_) => match tenant.toolbox.list(&caller, entry).await {
                    Ok(list) => offered.extend(
                        list.iter()
                            .filter(|t| entry.tools.is_empty() || entry.tools.contains(&t.name))
                            .map(|t: &RemoteTool| Offered {
                                name: t.name.clone(),
                                entry: Arc::clone(entry),
                                remote: t.name.clone(),
                                described: t.described.clone(),
                            }),
                    ),
                    Err(error) => {
                        tracing::warn!(tenant = %tenant.name, tool = %entry.name, %error, "a tool server's tools cannot be listed");
                        unlisted.push(entry.name.clone());
                    }
                },
            }
        }
        let clashing = repeated(&offered);
        for tool in &mut offered {
            if clashing.contains(&tool.name) {
                tool.name = format!("{}__{}", tool.entry.name, tool.name);
            }
        }
        // A prefixed name may meet a server's own (`crm__search` offered by
        // another server too) or grow too long: such tools are left out,
        // never sent to whichever came first.
        let clashing = repeated(&offered);
        offered.retain(|t| {
            !clashing.contains(&t.name)
                && bulkhead_model::is_tool_name(&t.name)
                && roles_allow(&t.entry.roles, held)
        });
        self.unlisted = unlisted;
        offered
    }

    fn caller(&self) -> Caller<'_> {
        let spec = &self.permitted.route.api.spec;
        let subject = self.permitted.principal.as_ref().map(|p| p.subject.as_ref());
        Caller {
            client: self.tools.client,
            secrets: self.tools.secrets,
            tenant: self.permitted.tenant.0.id,
            vouched: &self.permitted.tenant.0.vouched,
            subject: subject.map(crate::headers::text_value),
            timeout: Duration::from_millis(spec.timeouts.response_ms),
        }
    }

    async fn call(&mut self, id: Value, params: &Value) -> Value {
        let Some(name) = params.get("name").and_then(Value::as_str).map(str::to_owned) else {
            return error(id, INVALID_PARAMS, "tools/call needs params.name");
        };
        let arguments = params.get("arguments").cloned().unwrap_or_else(|| json!({}));
        let bytes = serde_json::to_vec(&arguments).unwrap_or_default();
        let mut used = ToolUse {
            // A name no tool could have is recorded cut, not whole.
            tool: used_name(&name),
            server: None,
            outcome: ToolOutcome::Refused,
            argument_bytes: bytes.len() as u64,
            argument_sha256: hex(&Sha256::digest(&bytes)),
        };
        if !arguments.is_object() {
            self.record(used);
            return error(id, INVALID_PARAMS, "tools/call arguments must be an object");
        }
        let found = self
            .catalog()
            .await
            .iter()
            .find(|t| t.name == name)
            .map(|t| (Arc::clone(&t.entry), t.remote.clone()));
        let Some((entry, remote)) = found else {
            let mut message = format!("Unknown tool: {}", used.tool);
            if !self.unlisted.is_empty() {
                let unlisted = self.unlisted.join(", ");
                message.push_str(&format!(" (the tools of {unlisted} cannot be listed now)"));
            }
            self.record(used);
            return error(id, INVALID_PARAMS, &message);
        };
        used.server = Some(entry.name.clone());
        let caller = self.caller();
        let toolbox = &self.permitted.tenant.0.toolbox;
        let called = match &entry.upstream {
            ToolUpstream::Mcp(_) => toolbox.call_mcp(&caller, &entry, &remote, &arguments).await,
            ToolUpstream::Http(_) => upstream::call_http(&caller, &entry, &arguments)
                .await
                .map(|result| json!({ "result": result })),
        };
        let answer = match called {
            Ok(mut answer) => {
                let failed = answer.get("error").is_some()
                    || answer.pointer("/result/isError") == Some(&Value::Bool(true));
                used.outcome = if failed { ToolOutcome::Error } else { ToolOutcome::Ok };
                answer["id"] = id;
                answer["jsonrpc"] = Value::from("2.0");
                answer
            }
            Err(failure) => {
                used.outcome = ToolOutcome::Error;
                error(id, INTERNAL_ERROR, &failure.to_string())
            }
        };
        self.record(used);
        answer
    }

    fn record(&self, used: ToolUse) {
        if used.server.is_some()
            && let Ok(mut called) = self.tools.called.lock()
        {
            called.push(Arc::from(used.tool.as_str()));
        }
        self.tools.recorder.tool_used(self.tools.learned, self.tools.ended, used);
    }
}

/// The names offered more than once.
fn repeated(offered: &[Offered]) -> HashSet<String> {
    let mut seen = HashSet::new();
    offered.iter().filter(|t| !seen.insert(t.name.as_str())).map(|t| t.name.clone()).collect()
}

fn initialize(params: &Value) -> Value {
    let asked = params.get("protocolVersion").and_then(Value::as_str);
    let version = asked.filter(|v| PROTOCOL_VERSIONS.contains(v)).unwrap_or(PROTOCOL_VERSIONS[0]);
    json!({
        "protocolVersion": version,
        "capabilities": { "tools": { "listChanged": false } },
        "serverInfo": { "name": "bulkhead", "version": env!("CARGO_PKG_VERSION") },
        "instructions": "The tools of this tenant that your roles allow.",
    })
}

fn result(id: Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

fn rpc_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = plain(status, Bytes::from(body.to_string()));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn plain(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
}

/// A name as records and refusals repeat it: cut where no tool name could
/// go on.
fn used_name(name: &str) -> String {
    name.chars().take(bulkhead_model::MAX_TOOL_NAME).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
