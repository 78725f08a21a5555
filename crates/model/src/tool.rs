//! A tenant's tools (`kind: Tool`): what its agents may call through the
//! gateway's MCP endpoint. Each entry of the registry is an MCP server (its
//! tools, or those listed) or one plain HTTP endpoint, with the roles that
//! may call it and the vault secret that authenticates the gateway to it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use utoipa::ToSchema;

use crate::{Role, label::is_simple_label};

/// Why a tool was refused; the message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct InvalidTool {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidTool {
    InvalidTool { field, message: message.into() }
}

/// Where a tool's calls go.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ToolUpstream {
    /// An MCP server over streamable HTTP (`http://host:port/mcp`): the
    /// gateway lists its tools and forwards calls to it.
    Mcp(String),
    /// A plain HTTP endpoint, one tool: a call POSTs the arguments as JSON
    /// and the response's body is the result.
    Http(String),
}

impl ToolUpstream {
    pub fn url(&self) -> &str {
        match self {
            ToolUpstream::Mcp(url) | ToolUpstream::Http(url) => url,
        }
    }
}

/// How the gateway authenticates to a tool's upstream: the value of one of
/// the tenant's secrets, read from the vault for each call and never
/// logged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCredential {
    /// The secret's path in the tenant's vault.
    pub secret: String,
    /// The header to send it in, as it is; absent, `Authorization: Bearer
    /// <secret>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

/// One entry of a tenant's tool registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    /// The entry's name: an HTTP tool's name, and the prefix of an MCP
    /// server's tools where two entries' tools share a name.
    pub name: String,
    /// An HTTP tool's description (an MCP server's tools keep their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub upstream: ToolUpstream,
    /// The MCP server's tools to offer; every one when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// An HTTP tool's arguments, as a JSON Schema object; `{"type":
    /// "object"}` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input_schema: Option<Value>,
    /// The caller needs one of these roles, or a stronger one; empty lets
    /// any caller of the tenant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<ToolCredential>,
    /// The plan that grants the tool (`[[plans.<plan>.tools]]`); `None` for
    /// the tenant's own. Set by the control plane, never read from a spec:
    /// the gateway vouches for it to the tool's server.
    #[serde(skip)]
    pub granted_by: Option<String>,
}

/// Longest MCP tool name (the protocol's limit).
pub const MAX_TOOL_NAME: usize = 128;
const MAX_LISTED_TOOLS: usize = 256;
const MAX_DESCRIPTION: usize = 4_096;

/// An MCP tool name: 1 to 128 of A-Z, a-z, 0-9, `_`, `-`, `.`.
pub fn is_tool_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl ToolSpec {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), InvalidTool> {
        if !is_simple_label(&self.name) {
            return Err(invalid(
                "name",
                format!(
                    "{:?} is not a valid tool name; use 1 to 40 characters of a-z, 0-9 and '-'",
                    self.name
                ),
            ));
        }
        check_url(self.upstream.url())?;
        if self.description.as_ref().is_some_and(|d| d.len() > MAX_DESCRIPTION) {
            return Err(invalid("description", format!("at most {MAX_DESCRIPTION} bytes")));
        }
        match &self.upstream {
            ToolUpstream::Mcp(_) => {
                if self.input_schema.is_some() {
                    return Err(invalid(
                        "input_schema",
                        "an MCP server's tools describe their own arguments; leave it out",
                    ));
                }
                if self.tools.len() > MAX_LISTED_TOOLS {
                    return Err(invalid("tools", format!("at most {MAX_LISTED_TOOLS}")));
                }
                if let Some(bad) = self.tools.iter().find(|t| !is_tool_name(t)) {
                    return Err(invalid(
                        "tools",
                        format!(
                            "{bad:?} is not an MCP tool name (1 to {MAX_TOOL_NAME} of A-Z, a-z, \
                             0-9, '_', '-', '.')"
                        ),
                    ));
                }
            }
            ToolUpstream::Http(_) => {
                if !self.tools.is_empty() {
                    return Err(invalid(
                        "tools",
                        "an HTTP tool is one tool, named by the entry; `tools` lists an MCP \
                         server's",
                    ));
                }
                if let Some(schema) = &self.input_schema
                    && schema.get("type").and_then(Value::as_str) != Some("object")
                {
                    return Err(invalid(
                        "input_schema",
                        "a JSON Schema with \"type\": \"object\", as MCP requires",
                    ));
                }
            }
        }
        if let Some(credential) = &self.credential {
            let path_ok = !credential.secret.is_empty()
                && credential.secret.len() <= 256
                && !credential.secret.starts_with('/');
            if !path_ok {
                return Err(invalid(
                    "credential.secret",
                    "the path of one of the tenant's secrets, such as tools/crm-token",
                ));
            }
            if let Some(header) = &credential.header
                && !settable(header)
            {
                return Err(invalid(
                    "credential.header",
                    format!("{header:?} is not a header the gateway may set"),
                ));
            }
        }
        Ok(())
    }
}

/// Whether a credential may go in header `name`: a valid name that is
/// none of the headers that frame the request or its MCP session, nor one
/// of the gateway's own.
fn settable(name: &str) -> bool {
    const FRAMING: &[&str] = &[
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "accept",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
        "forwarded",
    ];
    let lower = name.to_ascii_lowercase();
    http::HeaderName::from_bytes(name.as_bytes()).is_ok()
        && !FRAMING.contains(&lower.as_str())
        && !lower.starts_with("x-bulkhead-")
        && !lower.starts_with("x-forwarded-")
        && !lower.starts_with("proxy-")
}

/// `http(s)://host[:port][/path]`, without credentials, query or fragment.
fn check_url(url: &str) -> Result<(), InvalidTool> {
    let bad = || {
        invalid(
            "upstream",
            format!(
                "{url:?} is not a tool upstream; use http://host:port/path or https://... (no \
                 credentials, query or fragment: put a credential in `credential`)"
            ),
        )
    };
    let parsed: http::Uri = url.parse().map_err(|_| bad())?;
    let scheme_ok = matches!(parsed.scheme_str(), Some("http" | "https"));
    let authority = parsed.authority().ok_or_else(bad)?;
    if !scheme_ok
        || authority.as_str().contains('@')
        || parsed.query().is_some()
        || url.contains('#')
    {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(value: Value) -> Result<ToolSpec, String> {
        let spec: ToolSpec = serde_json::from_value(value).map_err(|e| e.to_string())?;
        spec.validate().map_err(|e| e.to_string())?;
        Ok(spec)
    }

    #[test]
    fn tools_are_checked_field_by_field() {
        assert!(
            spec(json!({"name": "crm", "upstream": {"mcp": "http://127.0.0.1:9/mcp"}})).is_ok()
        );
        let weather = json!({
            "name": "weather", "upstream": {"http": "https://api.example.com/v1/weather"},
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            "credential": {"secret": "tools/weather", "header": "X-Api-Key"}, "roles": ["analyst"]
        });
        assert!(spec(weather).is_ok());
        for (bad, field) in [
            (json!({"name": "Crm", "upstream": {"mcp": "http://h:1/"}}), "name"),
            (json!({"name": "crm", "upstream": {"mcp": "ftp://h/"}}), "upstream"),
            (json!({"name": "crm", "upstream": {"mcp": "http://u:p@h/"}}), "upstream"),
            (json!({"name": "crm", "upstream": {"mcp": "http://h/?k=1"}}), "upstream"),
            (json!({"name": "crm", "upstream": {"mcp": "http://h/"}, "tools": ["a b"]}), "tools"),
            (json!({"name": "w", "upstream": {"http": "http://h/"}, "tools": ["a"]}), "tools"),
            (
                json!({"name": "w", "upstream": {"http": "http://h/"}, "input_schema": {}}),
                "input_schema",
            ),
            (
                json!({"name": "w", "upstream": {"http": "http://h/"},
                       "credential": {"secret": "s", "header": "X-Bulkhead-Tenant"}}),
                "credential.header",
            ),
            (
                json!({"name": "w", "upstream": {"http": "http://h/"}, "credential": {"secret": ""}}),
                "credential.secret",
            ),
            (
                json!({"name": "w", "upstream": {"http": "http://h/"},
                       "credential": {"secret": "s", "header": "Transfer-Encoding"}}),
                "credential.header",
            ),
        ] {
            let error = spec(bad.clone()).unwrap_err();
            assert!(error.starts_with(field), "{bad}: {error}");
        }
        assert!(spec(json!({"name": "crm", "upstream": {"grpc": "http://h/"}})).is_err());
    }
}
