//! A tenant's application, run by the runtime as confined workers: what to
//! run, with which files, environment, secrets, limits and health check.
//! Validated here, before anything is stored or started.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

use crate::{RuntimeLimits, label::is_simple_label};

/// Why an app definition was refused; the message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct InvalidApp {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidApp {
    InvalidApp { field, message: message.into() }
}

/// An app's name, unique within its tenant: 1 to 40 characters of a-z,
/// 0-9 and '-'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "keyring")]
pub struct AppName(String);

impl AppName {
    pub fn parse(name: &str) -> Result<Self, InvalidApp> {
        if is_simple_label(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(invalid(
                "name",
                format!(
                    "{name:?} is not a valid app name; use 1 to 40 characters of a-z, 0-9 and \
                     '-', starting and ending with a letter or digit"
                ),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AppName {
    type Error = InvalidApp;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<AppName> for String {
    fn from(value: AppName) -> Self {
        value.0
    }
}

/// A secret of the tenant's vault, delivered to the worker as the file
/// `/run/secrets/<file>` (never in its arguments or environment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSecret {
    /// The secret's path in the tenant's vault, such as `keyring/signing`.
    pub path: String,
    /// The file name: defaults to the path's last segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl AppSecret {
    pub fn file_name(&self) -> &str {
        self.file.as_deref().unwrap_or_else(|| self.path.rsplit('/').next().unwrap_or(&self.path))
    }
}

/// How the runtime decides that a worker serves: an HTTP `GET` of `path`
/// over the worker's socket answering 2xx within `timeout_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    #[serde(default = "HealthCheck::default_interval")]
    #[schema(minimum = 100, maximum = 3_600_000)]
    pub interval_ms: u64,
    #[serde(default = "HealthCheck::default_timeout")]
    #[schema(minimum = 100, maximum = 60_000)]
    pub timeout_ms: u64,
    /// Checks failed in a row before the worker is restarted.
    #[serde(default = "HealthCheck::default_failures")]
    #[schema(minimum = 1, maximum = 100)]
    pub failures: u32,
}

impl HealthCheck {
    fn default_interval() -> u64 {
        10_000
    }
    fn default_timeout() -> u64 {
        2_000
    }
    fn default_failures() -> u32 {
        3
    }
}

/// Per-worker limits below the plan's: an app may ask for less than its
/// plan allows, never more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 16, maximum = 1_048_576)]
    pub memory_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 8, maximum = 100_000)]
    pub max_processes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 10, maximum = 1_000_000)]
    pub cpu_millicores: Option<u32>,
}

impl AppLimits {
    /// The plan's limits with this app's lower values applied.
    pub fn within(&self, plan: &RuntimeLimits) -> Result<RuntimeLimits, InvalidApp> {
        let pick = |field: &'static str, asked: Option<u32>, allowed: u32, least: u32| match asked {
            None => Ok(allowed),
            Some(n) if n < least => Err(invalid(field, format!("{n} is below the least, {least}"))),
            Some(n) if n > allowed => Err(invalid(
                field,
                format!(
                    "{n} is above the plan's {allowed}; change the tenant's plan to allow more"
                ),
            )),
            Some(n) => Ok(n),
        };
        Ok(RuntimeLimits {
            memory_mib: pick("limits.memory_mib", self.memory_mib, plan.memory_mib, 16)?,
            max_processes: pick("limits.max_processes", self.max_processes, plan.max_processes, 8)?,
            cpu_millicores: pick(
                "limits.cpu_millicores",
                self.cpu_millicores,
                plan.cpu_millicores,
                10,
            )?,
        })
    }
}

/// Workers one app may run.
pub const MAX_WORKERS: u32 = 16;

/// One app of a tenant, as deployed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub name: AppName,
    /// The release this spec runs, such as `1.4.2`: 1 to 64 characters of
    /// A-Z, a-z, 0-9, '.', '_', '-' and '+'.
    pub version: String,
    /// The program and its arguments, as seen inside the sandbox: the app's
    /// files are at `/app`, the tenant's data at `/data`.
    pub command: Vec<String>,
    /// A directory on the server holding the app's files, shown read-only
    /// at `/app`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<AppSecret>,
    #[serde(default = "AppSpec::default_workers")]
    #[schema(minimum = 1, maximum = 16)]
    pub workers: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: AppLimits,
    /// Hosts the workers may open HTTPS connections to, as `host[:port]`
    /// (`*.example.com` for subdomains), through the runtime's proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
}

fn is_default(limits: &AppLimits) -> bool {
    *limits == AppLimits::default()
}

const RESERVED_ENV_PREFIX: &str = "BULKHEAD_";

/// A version label: 1 to 64 characters of A-Z, a-z, 0-9, `.`, `_`, `-`, `+`.
pub fn check_version(version: &str) -> Result<(), InvalidApp> {
    let ok = (1..=64).contains(&version.len())
        && version.chars().all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    if ok {
        return Ok(());
    }
    Err(invalid(
        "version",
        format!("{version:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '.', '_', '-' and '+'"),
    ))
}

impl AppSpec {
    fn default_workers() -> u32 {
        1
    }

    /// Checks every field; returns the spec unchanged when it is valid.
    pub fn validate(self) -> Result<Self, InvalidApp> {
        check_version(&self.version)?;
        match self.command.first() {
            None => return Err(invalid("command", "is empty; give the program and its arguments")),
            Some(program) if !program.starts_with('/') => {
                return Err(invalid(
                    "command",
                    format!(
                        "{program:?} is not an absolute path inside the sandbox (/app/server, say)"
                    ),
                ));
            }
            Some(_) => {}
        }
        if self.command.len() > 256
            || self.command.iter().any(|a| a.contains('\0') || a.len() > 4096)
        {
            return Err(invalid(
                "command",
                "at most 256 arguments of 4096 bytes each, without NUL",
            ));
        }
        if let Some(artifact) = &self.artifact {
            let parts_ok =
                artifact.starts_with('/') && !artifact.split('/').any(|p| p == "." || p == "..");
            if !parts_ok || artifact.contains('\0') || artifact.len() > 1024 {
                return Err(invalid(
                    "artifact",
                    format!("{artifact:?} is not an absolute directory path"),
                ));
            }
        }
        if self.env.len() > 128 {
            return Err(invalid("env", "at most 128 variables"));
        }
        for (name, value) in &self.env {
            let name_ok = !name.is_empty()
                && name.len() <= 128
                && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !name_ok {
                return Err(invalid(
                    "env",
                    format!("{name:?}: names are A-Z, 0-9 and '_', not starting with a digit"),
                ));
            }
            if name.starts_with(RESERVED_ENV_PREFIX) {
                return Err(invalid(
                    "env",
                    format!(
                        "{name:?}: names starting with {RESERVED_ENV_PREFIX} are set by Bulkhead"
                    ),
                ));
            }
            if value.contains('\0') || value.len() > 32_768 {
                return Err(invalid(
                    "env",
                    format!("{name}: a value is at most 32 KiB, without NUL"),
                ));
            }
        }
        if self.secrets.len() > 64 {
            return Err(invalid("secrets", "at most 64 secrets"));
        }
        let mut files = std::collections::BTreeSet::new();
        for secret in &self.secrets {
            let file = secret.file_name();
            let file_ok = !file.is_empty()
                && file.len() <= 128
                && file != "."
                && file != ".."
                && file.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !file_ok {
                return Err(invalid(
                    "secrets",
                    format!("file {file:?}: use A-Z, a-z, 0-9, '.', '_' and '-'"),
                ));
            }
            if file.starts_with("bulkhead-") {
                return Err(invalid(
                    "secrets",
                    format!(
                        "file {file:?}: names starting with bulkhead- are the runtime's own (its database lease); give another file name (--secret PATH=FILE)"
                    ),
                ));
            }
            if !files.insert(file) {
                return Err(invalid(
                    "secrets",
                    format!("two secrets would be written to the file {file:?}"),
                ));
            }
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(invalid("workers", format!("{} is not 1 to {MAX_WORKERS}", self.workers)));
        }
        if let Some(health) = &self.health {
            let path_ok = health.path.starts_with('/')
                && health.path.len() <= 1024
                && health.path.chars().all(|c| c.is_ascii_graphic());
            if !path_ok {
                return Err(invalid(
                    "health.path",
                    format!("{:?} is not an absolute request path", health.path),
                ));
            }
            if !(100..=3_600_000).contains(&health.interval_ms)
                || !(100..=60_000).contains(&health.timeout_ms)
                || !(1..=100).contains(&health.failures)
            {
                return Err(invalid(
                    "health",
                    "interval_ms is 100 to 3600000, timeout_ms 100 to 60000, failures 1 to 100",
                ));
            }
        }
        if self.egress.len() > 64 {
            return Err(invalid("egress", "at most 64 hosts"));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AppSpec {
        serde_json::from_value(serde_json::json!({
            "name": "keyring", "version": "1.0.0", "command": ["/app/keyring", "--port", "0"],
        }))
        .unwrap()
    }

    #[test]
    fn a_minimal_spec_gets_one_worker() {
        let spec = spec().validate().unwrap();
        assert_eq!(spec.workers, 1);
        assert!(spec.health.is_none());
    }

    #[test]
    fn each_bad_field_is_named() {
        type Change = Box<dyn Fn(&mut AppSpec)>;
        let cases: Vec<(&str, Change)> = vec![
            ("version", Box::new(|s| s.version = "1 0".into())),
            ("command", Box::new(|s| s.command.clear())),
            ("command", Box::new(|s| s.command[0] = "keyring".into())),
            ("artifact", Box::new(|s| s.artifact = Some("/srv/../etc".into()))),
            ("env", Box::new(|s| drop(s.env.insert("BULKHEAD_TENANT".into(), "x".into())))),
            ("env", Box::new(|s| drop(s.env.insert("lower".into(), "x".into())))),
            (
                "secrets",
                Box::new(|s| {
                    s.secrets.push(AppSecret { path: "a".into(), file: Some("../x".into()) })
                }),
            ),
            (
                "secrets",
                Box::new(|s| {
                    s.secrets.push(AppSecret { path: "bulkhead-database-url".into(), file: None })
                }),
            ),
            ("workers", Box::new(|s| s.workers = 0)),
            ("workers", Box::new(|s| s.workers = 17)),
        ];
        for (field, change) in cases {
            let mut s = spec();
            change(&mut s);
            assert_eq!(s.validate().unwrap_err().field, field);
        }
        let mut twice = spec();
        twice.secrets = vec![
            AppSecret { path: "a/token".into(), file: None },
            AppSecret { path: "b/token".into(), file: None },
        ];
        assert!(twice.validate().unwrap_err().message.contains("token"));
    }

    #[test]
    fn limits_stay_within_the_plan() {
        let plan = RuntimeLimits { memory_mib: 256, max_processes: 32, cpu_millicores: 500 };
        let lower = AppLimits { memory_mib: Some(128), ..AppLimits::default() };
        assert_eq!(lower.within(&plan).unwrap().memory_mib, 128);
        let higher = AppLimits { cpu_millicores: Some(1000), ..AppLimits::default() };
        assert!(higher.within(&plan).unwrap_err().message.contains("plan"));
    }
}
