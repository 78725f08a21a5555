//! A tenant's own gateway limits: overrides of its plan's, one field at a
//! time.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

use crate::{BackupPolicy, CostCaps, GatewayLimits, LimiterFallback, Rate};

/// What a tenant gets instead of its plan's gateway limits. Each field left
/// out is the plan's; `{}` is the plan's limits as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(remote = "Self", deny_unknown_fields)]
pub struct TenantLimits {
    /// The tenant's request rate at the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rate>,
    /// Requests of the tenant in flight at once; past it, 503
    /// `tenant_overloaded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub max_in_flight: Option<u32>,
    /// Connections the tenant's upstreams may hold at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub max_upstream_connections: Option<u32>,
    /// What the tenant's shared rate limit does while Redis is unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limiter_fallback: Option<LimiterFallback>,
    /// The tenant's model spend per month, in place of its plan's caps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_caps: Option<CostCaps>,
    /// The tenant's own backup schedule and retention, within its plan's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups: Option<BackupPolicy>,
}

crate::from_a_mapping_only!(TenantLimits);

/// Why a tenant's limits were refused; the message names the field and the
/// rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("limits.{field}: {message}")]
pub struct InvalidLimits {
    pub field: &'static str,
    pub message: String,
}

impl TenantLimits {
    /// The largest cap on requests in flight or upstream connections.
    pub const MAX_CAP: u32 = 1_000_000;

    /// Whether the tenant has no override: its plan's limits apply as they
    /// are.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Checks what the field types cannot: a rate as [`Rate::validate`]
    /// allows it, caps of 1 to [`Self::MAX_CAP`].
    pub fn validate(&self) -> Result<(), InvalidLimits> {
        if let Some(rate) = &self.rate_limit {
            rate.validate("rate_limit")
                .map_err(|e| InvalidLimits { field: e.field, message: e.message })?;
        }
        for (field, cap) in [
            ("max_in_flight", self.max_in_flight),
            ("max_upstream_connections", self.max_upstream_connections),
        ] {
            if cap.is_some_and(|cap| !(1..=Self::MAX_CAP).contains(&cap)) {
                return Err(InvalidLimits {
                    field,
                    message: format!(
                        "must be 1 to {} (to stop a tenant's traffic, suspend it)",
                        Self::MAX_CAP
                    ),
                });
            }
        }
        if let Some(caps) = &self.cost_caps {
            caps.validate().map_err(|message| InvalidLimits { field: "cost_caps", message })?;
        }
        Ok(())
    }

    /// The plan's cost caps, or the tenant's own.
    pub fn cost_caps(&self, plan: &CostCaps) -> CostCaps {
        self.cost_caps.clone().unwrap_or_else(|| plan.clone())
    }

    /// The plan's limits with this tenant's overrides in their place.
    pub fn apply(&self, plan: &GatewayLimits) -> GatewayLimits {
        GatewayLimits {
            rate_limit: self.rate_limit.unwrap_or(plan.rate_limit),
            max_in_flight: self.max_in_flight.unwrap_or(plan.max_in_flight),
            max_upstream_connections: self
                .max_upstream_connections
                .unwrap_or(plan.max_upstream_connections),
            limiter_fallback: self.limiter_fallback.unwrap_or(plan.limiter_fallback),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::PlanCatalog;

    #[test]
    fn overrides_replace_only_their_own_fields() {
        let plans = PlanCatalog::builtin();
        let plan = &plans.get("professional").unwrap().gateway;
        assert_eq!(TenantLimits::default().apply(plan), *plan, "no override: the plan's limits");

        let limits = TenantLimits {
            max_in_flight: Some(5),
            limiter_fallback: Some(LimiterFallback::Deny),
            ..TenantLimits::default()
        };
        assert_eq!(
            limits.apply(plan),
            GatewayLimits {
                rate_limit: plan.rate_limit,
                max_in_flight: 5,
                max_upstream_connections: plan.max_upstream_connections,
                limiter_fallback: LimiterFallback::Deny,
            }
        );
        let rate = Rate { requests_per_minute: 60, burst: 1 };
        let all = TenantLimits {
            rate_limit: Some(rate),
            max_in_flight: Some(7),
            max_upstream_connections: Some(3),
            limiter_fallback: Some(LimiterFallback::Local),
            cost_caps: None,
            backups: None,
        };
        assert_eq!(
            all.apply(plan),
            GatewayLimits {
                rate_limit: rate,
                max_in_flight: 7,
                max_upstream_connections: 3,
                limiter_fallback: LimiterFallback::Local,
            }
        );
    }

    #[test]
    fn json_leaves_out_what_is_not_overridden() {
        assert_eq!(serde_json::to_value(TenantLimits::default()).unwrap(), json!({}));
        let limits: TenantLimits =
            serde_json::from_value(json!({"max_in_flight": 9, "limiter_fallback": "deny"}))
                .unwrap();
        assert_eq!(
            serde_json::to_value(&limits).unwrap(),
            json!({"max_in_flight": 9, "limiter_fallback": "deny"})
        );
        assert!(!limits.is_empty());
        assert!(TenantLimits::default().is_empty());
        let unknown = serde_json::from_value::<TenantLimits>(json!({"max_inflight": 9}));
        assert!(unknown.unwrap_err().to_string().starts_with("unknown field `max_inflight`"));
        let rate_field = serde_json::from_value::<TenantLimits>(
            json!({"rate_limit": {"requests_per_minute": 1, "burst": 1, "per": "hour"}}),
        );
        assert!(rate_field.unwrap_err().to_string().starts_with("unknown field `per`"));
        // A sequence of the fields' values is not a way to write them.
        for sequence in [json!([null, null, null, null]), json!({"rate_limit": [600, 100]})] {
            let err = serde_json::from_value::<TenantLimits>(sequence.clone()).unwrap_err();
            assert_eq!(
                err.to_string(),
                "invalid type: sequence, expected a mapping of field names to values",
                "{sequence}"
            );
        }
    }

    #[test]
    fn rates_and_caps_are_bounded() {
        let cases = [
            (
                json!({"rate_limit": {"requests_per_minute": 0, "burst": 5}}),
                "limits.rate_limit: requests_per_minute must be 1 to 60000000 and burst 1 to \
                 1000000",
            ),
            (
                json!({"rate_limit": {"requests_per_minute": 5, "burst": 0}}),
                "limits.rate_limit: requests_per_minute must be 1 to 60000000 and burst 1 to \
                 1000000",
            ),
            (
                json!({"max_in_flight": 0}),
                "limits.max_in_flight: must be 1 to 1000000 (to stop a tenant's traffic, \
                 suspend it)",
            ),
            (
                json!({"max_upstream_connections": 1_000_001}),
                "limits.max_upstream_connections: must be 1 to 1000000 (to stop a tenant's \
                 traffic, suspend it)",
            ),
        ];
        for (json, expected) in cases {
            let limits: TenantLimits = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(limits.validate().unwrap_err().to_string(), expected, "{json}");
        }
        let fine: TenantLimits = serde_json::from_value(json!({
            "rate_limit": {"requests_per_minute": 60_000_000, "burst": 1},
            "max_in_flight": 1,
            "max_upstream_connections": 1_000_000,
        }))
        .unwrap();
        assert_eq!(fine.validate(), Ok(()));
    }
}
