//! Plans: what a tenant pays for, expressed as the limits and policies every
//! capability reads.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

use crate::{Isolation, Rate, label::is_simple_label};

/// A plan's name. Plans are open-ended (custom plans arrive through
/// manifests), so this is a validated string rather than an enum.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "professional")]
pub struct PlanName(String);

impl PlanName {
    pub fn parse(name: &str) -> Result<Self, String> {
        if is_simple_label(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "plan name {name:?} is invalid; plan names are 1 to 40 characters of a-z, 0-9 and \
                 '-'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PlanName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for PlanName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PlanName> for String {
    fn from(value: PlanName) -> Self {
        value.0
    }
}

/// What the gateway allows a tenant: a request rate, how many of its
/// requests may be in flight at once and how many connections its
/// upstreams may hold (the bulkhead: past either, only this tenant waits),
/// and what a shared limit does when Redis cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayLimits {
    pub rate_limit: Rate,
    pub max_in_flight: u32,
    pub max_upstream_connections: u32,
    pub limiter_fallback: LimiterFallback,
}

/// What a rate limit shared through Redis does while Redis is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LimiterFallback {
    /// Each gateway replica enforces its share of the rate on its own.
    #[default]
    Local,
    /// Requests are refused until Redis answers again.
    Deny,
}

impl LimiterFallback {
    pub fn as_str(self) -> &'static str {
        match self {
            LimiterFallback::Local => "local",
            LimiterFallback::Deny => "deny",
        }
    }
}

impl std::str::FromStr for LimiterFallback {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [LimiterFallback::Local, LimiterFallback::Deny]
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a limiter fallback; use local or deny"))
    }
}

/// A tenant's model spend per calendar month (UTC), in whole units of the
/// prices' currency (`usd` by convention): past `soft_usd` responses carry a
/// warning and the tenant's stream records `budget.soft_cap`; a call that
/// could take the spend past `hard_usd` is refused before its upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CostCaps {
    pub soft_usd: u64,
    pub hard_usd: u64,
}

impl CostCaps {
    /// The largest cap: its micro-units stay exact in a Redis script's
    /// numbers (below 2^53).
    pub const MAX_USD: u64 = 1_000_000_000;

    /// Caps of at most [`Self::MAX_USD`], the soft one not above the hard.
    pub fn validate(&self) -> Result<(), String> {
        if self.hard_usd > Self::MAX_USD {
            return Err(format!("hard_usd must be at most {}", Self::MAX_USD));
        }
        if self.soft_usd > self.hard_usd {
            return Err(format!(
                "soft_usd ({}) must not be above hard_usd ({}): the soft cap warns before the hard one stops",
                self.soft_usd, self.hard_usd
            ));
        }
        Ok(())
    }

    /// The soft cap in micro-units.
    pub fn soft_micros(&self) -> u64 {
        self.soft_usd.saturating_mul(1_000_000)
    }

    /// The hard cap in micro-units.
    pub fn hard_micros(&self) -> u64 {
        self.hard_usd.saturating_mul(1_000_000)
    }
}

/// A tenant's scheduled backups: how often, and how many and how long
/// they are kept. A plan sets one; a tenant may set its own within it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BackupPolicy {
    /// Hours between two scheduled backups; 0 schedules none.
    #[schema(maximum = 8_760)]
    pub every_hours: u32,
    /// At most this many scheduled backups are kept, the newest...
    #[schema(minimum = 1, maximum = 100_000)]
    pub keep: u32,
    /// ...and none older than this many days.
    #[schema(minimum = 1, maximum = 36_500)]
    pub retention_days: u32,
}

impl BackupPolicy {
    /// Checks `own` (a tenant's policy) against this one (its plan's): no
    /// more often than the plan schedules, kept no longer than the plan
    /// keeps its audit trail (`audit_retention_days`).
    pub fn allows(&self, own: &BackupPolicy, audit_retention_days: u32) -> Result<(), String> {
        if own.every_hours > 8_760 {
            return Err("every_hours must be at most 8760 (a year); 0 schedules none".into());
        }
        if own.every_hours != 0 && own.every_hours < self.every_hours {
            return Err(format!(
                "every {} hours is more often than the plan allows (every {} hours at most)",
                own.every_hours, self.every_hours
            ));
        }
        if own.every_hours != 0 && self.every_hours == 0 {
            return Err("the plan schedules no backups".into());
        }
        if !(1..=100_000).contains(&own.keep) {
            return Err("keep must be 1 to 100000".into());
        }
        if own.retention_days == 0 || own.retention_days > audit_retention_days {
            return Err(format!(
                "retention_days must be 1 to {audit_retention_days} (the plan's audit retention)"
            ));
        }
        Ok(())
    }
}

/// Limits on each silo tenant's worker processes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuntimeLimits {
    pub memory_mib: u32,
    pub max_processes: u32,
    /// Thousandths of a CPU core: 500 is half a core.
    pub cpu_millicores: u32,
}

/// What the vault keeps and hands out for a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VaultPolicy {
    /// Versions kept of each secret; writing one more drops the oldest.
    pub secret_versions: u32,
    /// Longest lifetime of a dynamic database credential, in seconds.
    pub max_credential_ttl_secs: u64,
    /// Sessions one credential may hold at once on the database server
    /// (its role's `CONNECTION LIMIT`): the server's connection slots are
    /// shared by every tenant on it.
    pub max_sessions_per_credential: u32,
}

/// What one tenant may hold and how fast it may call the control API, so
/// that no tenant fills the shared store or crowds out the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ControlQuotas {
    /// Control API requests a minute, by the tenant's own credentials.
    pub requests_per_minute: u32,
    /// Requests that may come at once above that pace.
    pub burst: u32,
    /// Secret paths (each keeps `vault.secret_versions` versions).
    pub secrets: u32,
    /// API keys not revoked or expired.
    pub api_keys: u32,
    /// Database credentials not revoked.
    pub live_credentials: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub name: PlanName,
    pub description: String,
    pub default_isolation: Isolation,
    pub gateway: GatewayLimits,
    pub cost_caps: CostCaps,
    pub audit_retention_days: u32,
    pub backups: BackupPolicy,
    pub runtime: RuntimeLimits,
    pub vault: VaultPolicy,
    pub quotas: ControlQuotas,
    /// Tools every tenant on the plan has beside its own registry (the
    /// server's configuration, `[[plans.<plan>.tools]]`); a tenant's own
    /// tool of the same name takes its place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<crate::ToolSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown plan {name:?}; valid plans: {}", valid.join(", "))]
pub struct UnknownPlan {
    pub name: String,
    pub valid: Vec<String>,
}

/// The plans an installation offers, in the order they are listed.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanCatalog {
    plans: Vec<Plan>,
}

impl PlanCatalog {
    /// `starter`, `professional` and `enterprise`.
    pub fn builtin() -> Self {
        const HOUR: u64 = 3_600;
        let plan = |name: &str,
                    description: &str,
                    default_isolation,
                    gateway,
                    cost_caps,
                    audit_retention_days,
                    backups,
                    runtime,
                    vault,
                    quotas| Plan {
            name: PlanName(name.to_owned()),
            description: description.to_owned(),
            default_isolation,
            gateway,
            cost_caps,
            audit_retention_days,
            backups,
            runtime,
            vault,
            quotas,
            tools: Vec::new(),
        };
        Self {
            plans: vec![
                plan(
                    "starter",
                    "Small tenants and free tiers: shared database, modest limits.",
                    Isolation::Pool,
                    GatewayLimits {
                        rate_limit: Rate { requests_per_minute: 600, burst: 100 },
                        max_in_flight: 64,
                        max_upstream_connections: 32,
                        limiter_fallback: LimiterFallback::Local,
                    },
                    CostCaps { soft_usd: 50, hard_usd: 100 },
                    30,
                    BackupPolicy { every_hours: 24, keep: 7, retention_days: 7 },
                    RuntimeLimits { memory_mib: 256, max_processes: 32, cpu_millicores: 500 },
                    VaultPolicy {
                        secret_versions: 3,
                        max_credential_ttl_secs: HOUR,
                        max_sessions_per_credential: 10,
                    },
                    ControlQuotas {
                        requests_per_minute: 300,
                        burst: 50,
                        secrets: 100,
                        api_keys: 10,
                        live_credentials: 20,
                    },
                ),
                plan(
                    "professional",
                    "Growing tenants: shared database, higher limits, longer retention.",
                    Isolation::Pool,
                    GatewayLimits {
                        rate_limit: Rate { requests_per_minute: 6_000, burst: 1_000 },
                        max_in_flight: 512,
                        max_upstream_connections: 128,
                        limiter_fallback: LimiterFallback::Local,
                    },
                    CostCaps { soft_usd: 500, hard_usd: 1_000 },
                    365,
                    BackupPolicy { every_hours: 12, keep: 60, retention_days: 30 },
                    RuntimeLimits { memory_mib: 1_024, max_processes: 128, cpu_millicores: 2_000 },
                    VaultPolicy {
                        secret_versions: 10,
                        max_credential_ttl_secs: 8 * HOUR,
                        max_sessions_per_credential: 25,
                    },
                    ControlQuotas {
                        requests_per_minute: 1_200,
                        burst: 200,
                        secrets: 1_000,
                        api_keys: 50,
                        live_credentials: 100,
                    },
                ),
                plan(
                    "enterprise",
                    "Regulated and large tenants: their own database and workers.",
                    Isolation::Silo,
                    GatewayLimits {
                        rate_limit: Rate { requests_per_minute: 60_000, burst: 10_000 },
                        max_in_flight: 4_096,
                        max_upstream_connections: 1_024,
                        limiter_fallback: LimiterFallback::Local,
                    },
                    CostCaps { soft_usd: 5_000, hard_usd: 10_000 },
                    2_555,
                    BackupPolicy { every_hours: 4, keep: 540, retention_days: 90 },
                    RuntimeLimits { memory_mib: 4_096, max_processes: 512, cpu_millicores: 4_000 },
                    VaultPolicy {
                        secret_versions: 50,
                        max_credential_ttl_secs: 24 * HOUR,
                        max_sessions_per_credential: 100,
                    },
                    ControlQuotas {
                        requests_per_minute: 6_000,
                        burst: 1_000,
                        secrets: 10_000,
                        api_keys: 200,
                        live_credentials: 1_000,
                    },
                ),
            ],
        }
    }

    pub fn all(&self) -> &[Plan] {
        &self.plans
    }

    /// These plans with `tools` granted by plan name (the server's
    /// configuration). Refuses an unknown plan, an invalid tool, and two
    /// tools of one name on one plan, naming them.
    pub fn with_tools(
        mut self,
        tools: &std::collections::BTreeMap<String, Vec<crate::ToolSpec>>,
    ) -> Result<Self, String> {
        for (name, granted) in tools {
            let valid = self.plans.iter().map(|p| p.name.to_string()).collect::<Vec<_>>();
            let Some(plan) = self.plans.iter_mut().find(|p| p.name.as_str() == name) else {
                return Err(format!(
                    "plans.{name}: no such plan; valid plans: {}",
                    valid.join(", ")
                ));
            };
            let mut names = std::collections::HashSet::new();
            for tool in granted {
                tool.validate().map_err(|e| format!("plans.{name}.tools: {}: {e}", tool.name))?;
                if !names.insert(tool.name.as_str()) {
                    return Err(format!("plans.{name}.tools: {:?} is granted twice", tool.name));
                }
            }
            plan.tools = granted.clone();
        }
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Result<&Plan, UnknownPlan> {
        self.plans.iter().find(|p| p.name.as_str() == name).ok_or_else(|| UnknownPlan {
            name: name.to_owned(),
            valid: self.plans.iter().map(|p| p.name.to_string()).collect(),
        })
    }

    /// The longest any plan keeps audit events: what a stream whose plan
    /// is unknown is kept for.
    pub fn longest_audit_retention_days(&self) -> u32 {
        self.plans.iter().map(|p| p.audit_retention_days).max().unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_plans() {
        let plans = PlanCatalog::builtin();
        let names: Vec<_> = plans.all().iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["starter", "professional", "enterprise"]);
        assert_eq!(plans.get("starter").unwrap().default_isolation, Isolation::Pool);
        assert_eq!(plans.get("professional").unwrap().default_isolation, Isolation::Pool);
        assert_eq!(plans.get("enterprise").unwrap().default_isolation, Isolation::Silo);
        for plan in plans.all() {
            assert!(plan.cost_caps.soft_usd < plan.cost_caps.hard_usd, "{}", plan.name);
            assert!(plan.gateway.rate_limit.validate("rate_limit").is_ok());
            assert!(plan.gateway.max_upstream_connections <= plan.gateway.max_in_flight);
        }
    }

    #[test]
    fn unknown_plan_lists_the_valid_ones() {
        let err = PlanCatalog::builtin().get("gold").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown plan \"gold\"; valid plans: starter, professional, enterprise"
        );
    }

    #[test]
    fn fallbacks_parse_and_print() {
        for fallback in [LimiterFallback::Local, LimiterFallback::Deny] {
            assert_eq!(fallback.as_str().parse::<LimiterFallback>(), Ok(fallback));
            let json = serde_json::to_string(&fallback).unwrap();
            assert_eq!(json, format!("\"{}\"", fallback.as_str()));
        }
        assert_eq!(
            "block".parse::<LimiterFallback>(),
            Err("\"block\" is not a limiter fallback; use local or deny".to_owned())
        );
    }

    #[test]
    fn plans_grant_valid_tools_by_name() {
        let tool = |name: &str| -> crate::ToolSpec {
            serde_json::from_value(serde_json::json!({
                "name": name, "upstream": {"mcp": "http://127.0.0.1:9000/mcp"}
            }))
            .unwrap()
        };
        let granted =
            std::collections::BTreeMap::from([("professional".to_owned(), vec![tool("search")])]);
        let plans = PlanCatalog::builtin().with_tools(&granted).unwrap();
        assert_eq!(plans.get("professional").unwrap().tools, [tool("search")]);
        assert!(plans.get("starter").unwrap().tools.is_empty());
        let unknown = std::collections::BTreeMap::from([("gold".to_owned(), vec![tool("search")])]);
        let error = PlanCatalog::builtin().with_tools(&unknown).unwrap_err();
        assert!(error.starts_with("plans.gold: no such plan; valid plans: starter"), "{error}");
        let twice = std::collections::BTreeMap::from([(
            "starter".to_owned(),
            vec![tool("search"), tool("search")],
        )]);
        let error = PlanCatalog::builtin().with_tools(&twice).unwrap_err();
        assert_eq!(error, "plans.starter.tools: \"search\" is granted twice");
        let bad =
            std::collections::BTreeMap::from([("starter".to_owned(), vec![tool("Bad Name")])]);
        assert!(
            PlanCatalog::builtin().with_tools(&bad).unwrap_err().contains("not a valid tool name")
        );
    }

    #[test]
    fn plans_round_trip_through_json() {
        let plans = PlanCatalog::builtin();
        let json = serde_json::to_string(plans.all()).unwrap();
        let back: Vec<Plan> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, plans.all());
    }
}
