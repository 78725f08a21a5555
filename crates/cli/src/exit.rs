//! Failures of a command, each with the exit code scripts can test.

use std::{fmt, process::ExitCode};

/// Exit codes, documented in `docs/cli.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The operation ran and failed: a tenant ended `failed`, a wait timed
    /// out, the server could not start.
    Failed = 1,
    /// A flag, argument, configuration value or request field is invalid.
    Usage = 2,
    NotFound = 3,
    /// The request conflicts with the current state (name taken, wrong
    /// lifecycle state).
    Conflict = 4,
    /// The server answered with an internal error or is unavailable.
    Server = 5,
    /// Missing or rejected operator token.
    Unauthorized = 6,
    /// No server answered at the API address.
    Unreachable = 7,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Failed => "failed",
            Kind::Usage => "usage",
            Kind::NotFound => "not_found",
            Kind::Conflict => "conflict",
            Kind::Server => "server",
            Kind::Unauthorized => "unauthorized",
            Kind::Unreachable => "unreachable",
        }
    }
}

#[derive(Debug)]
pub struct CliError {
    pub kind: Kind,
    pub message: String,
    /// The server's id of the request that failed, for its log.
    pub request_id: Option<String>,
}

impl CliError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), request_id: None }
    }

    pub fn with_request_id(mut self, request_id: Option<String>) -> Self {
        self.request_id = request_id;
        self
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Kind::Usage, message)
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Kind::Failed, message)
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.kind as u8)
    }

    /// `{"error":{"kind":...,"exit_code":...,"message":...,"request_id":...}}`,
    /// what `-o json` prints on standard error.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "kind": self.kind.as_str(),
                "exit_code": self.kind as u8,
                "message": self.message,
                "request_id": self.request_id,
            }
        })
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match &self.request_id {
            Some(id) => write!(f, " (request {id})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for CliError {}
