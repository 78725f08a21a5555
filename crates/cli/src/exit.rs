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

#[derive(Debug)]
pub struct CliError {
    pub kind: Kind,
    pub message: String,
}

impl CliError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
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
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}
