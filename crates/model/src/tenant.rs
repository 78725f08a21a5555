//! Tenants and their lifecycle.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{AdminEmail, Isolation, PlanName, RegionName, TenantLimits, TenantName};

/// A tenant's permanent identity. Names can be reused after a purge; ids
/// never are, which is why resources outside the control store (databases,
/// roles) carry part of the id in their names.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct TenantId(pub Uuid);

impl TenantId {
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The first eight hex digits: short enough for identifiers, random
    /// enough (with the tenant's name beside it) to never collide.
    pub fn short(&self) -> String {
        self.0.simple().to_string()[..8].to_owned()
    }
}

impl From<Uuid> for TenantId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a tenant is in its life.
///
/// ```text
/// provisioning ──▶ active ◀──▶ suspended
///      │             │             │
///      ▼             ▼             ▼
///    failed ────▶ offboarding ◀────┘ ──▶ deleted
/// ```
///
/// A deleted tenant keeps its record (and so its name) until it is purged;
/// purging it runs offboarding once more, which finds nothing left to undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    Provisioning,
    Active,
    Suspended,
    Offboarding,
    Deleted,
    Failed,
}

impl TenantState {
    pub const ALL: [TenantState; 6] = [
        TenantState::Provisioning,
        TenantState::Active,
        TenantState::Suspended,
        TenantState::Offboarding,
        TenantState::Deleted,
        TenantState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Provisioning => "provisioning",
            TenantState::Active => "active",
            TenantState::Suspended => "suspended",
            TenantState::Offboarding => "offboarding",
            TenantState::Deleted => "deleted",
            TenantState::Failed => "failed",
        }
    }

    /// Whether `self → next` is an edge of the lifecycle.
    pub fn can_become(self, next: TenantState) -> bool {
        use TenantState::*;
        matches!(
            (self, next),
            (Provisioning, Active)
                | (Provisioning, Failed)
                | (Active, Suspended)
                | (Suspended, Active)
                | (Active | Suspended | Failed | Deleted, Offboarding)
                | (Offboarding, Deleted)
        )
    }
}

impl fmt::Display for TenantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "unknown tenant state {0:?}; valid states: provisioning, active, suspended, offboarding, \
     deleted, failed"
)]
pub struct UnknownState(pub String);

impl FromStr for TenantState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TenantState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// Why provisioning gave up, and whether the steps it had completed have
/// been undone yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Failure {
    /// The provisioning step that failed.
    pub step: String,
    pub reason: String,
    /// True once every step that had run has been undone.
    pub undone: bool,
}

/// What the control plane knows about a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    pub id: TenantId,
    pub name: TenantName,
    pub plan: PlanName,
    /// The effective isolation: what was asked for, else the plan's default
    /// as the region allows it.
    pub isolation: Isolation,
    pub region: RegionName,
    pub admin_email: Option<AdminEmail>,
    /// The tenant's own gateway limits, in place of its plan's.
    #[serde(default)]
    pub limits: TenantLimits,
    pub state: TenantState,
    pub failure: Option<Failure>,
    /// Offboarding will remove the tenant's record too, not just its
    /// resources.
    pub purge_requested: bool,
    /// The last error a step hit while being retried; cleared on success.
    pub last_error: Option<String>,
    /// Bumped by every write, for optimistic concurrency.
    pub version: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub provisioned_at: Option<OffsetDateTime>,
}

/// A change of state that is not an edge of the lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("tenant {tenant:?} cannot go from {from} to {to}")]
pub struct IllegalTransition {
    pub tenant: String,
    pub from: TenantState,
    pub to: TenantState,
}

impl Tenant {
    /// Moves the tenant to `next`, if the lifecycle allows it. Every state
    /// change, by a command or by the reconciler, goes through here.
    pub fn transition(&mut self, next: TenantState) -> Result<(), IllegalTransition> {
        if self.state.can_become(next) {
            self.state = next;
            Ok(())
        } else {
            Err(IllegalTransition { tenant: self.name.to_string(), from: self.state, to: next })
        }
    }

    /// A tenant as it is first recorded: desired, not yet provisioned.
    pub fn new(spec: NewTenant, now: OffsetDateTime) -> Self {
        Self {
            id: spec.id,
            name: spec.name,
            plan: spec.plan,
            isolation: spec.isolation,
            region: spec.region,
            admin_email: spec.admin_email,
            limits: spec.limits,
            state: TenantState::Provisioning,
            failure: None,
            purge_requested: false,
            last_error: None,
            version: 1,
            created_at: now,
            updated_at: now,
            provisioned_at: None,
        }
    }

    /// Whether the reconciler still has something to do for this tenant.
    pub fn needs_work(&self) -> bool {
        match self.state {
            TenantState::Provisioning | TenantState::Offboarding => true,
            TenantState::Failed => self.failure.as_ref().is_some_and(|f| !f.undone),
            TenantState::Active | TenantState::Suspended | TenantState::Deleted => false,
        }
    }
}

/// A validated request for a new tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTenant {
    pub id: TenantId,
    pub name: TenantName,
    pub plan: PlanName,
    pub isolation: Isolation,
    pub region: RegionName,
    pub admin_email: Option<AdminEmail>,
    pub limits: TenantLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    Applied,
    Undone,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Applied => "applied",
            StepStatus::Undone => "undone",
        }
    }
}

impl FromStr for StepStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "applied" => Ok(StepStatus::Applied),
            "undone" => Ok(StepStatus::Undone),
            other => Err(format!("unknown step status {other:?}")),
        }
    }
}

/// The recorded progress of one provisioning step for one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StepRecord {
    pub step: String,
    pub status: StepStatus,
    /// What the step made, e.g. the database it created.
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;
    use TenantState::*;

    #[test]
    fn lifecycle_edges() {
        let legal = [
            (Provisioning, Active),
            (Provisioning, Failed),
            (Active, Suspended),
            (Suspended, Active),
            (Active, Offboarding),
            (Suspended, Offboarding),
            (Failed, Offboarding),
            (Deleted, Offboarding),
            (Offboarding, Deleted),
        ];
        for from in TenantState::ALL {
            for to in TenantState::ALL {
                assert_eq!(from.can_become(to), legal.contains(&(from, to)), "{from} -> {to}");
            }
        }
    }

    #[test]
    fn states_parse_and_print() {
        for state in TenantState::ALL {
            assert_eq!(state.as_str().parse::<TenantState>(), Ok(state));
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{state}\""));
        }
        assert!("gone".parse::<TenantState>().is_err());
    }

    #[test]
    fn work_remains_until_settled() {
        let spec = NewTenant {
            id: TenantId::random(),
            name: TenantName::parse("acme").unwrap(),
            plan: PlanName::parse("starter").unwrap(),
            isolation: Isolation::Silo,
            region: RegionName::default(),
            admin_email: None,
            limits: TenantLimits::default(),
        };
        let mut tenant = Tenant::new(spec, OffsetDateTime::UNIX_EPOCH);
        assert!(tenant.needs_work());
        tenant.transition(Active).unwrap();
        assert!(!tenant.needs_work());
        let err = tenant.transition(Failed).unwrap_err();
        assert_eq!(err.to_string(), "tenant \"acme\" cannot go from active to failed");
        assert_eq!(tenant.state, Active, "an illegal transition changes nothing");
        tenant.state = Failed;
        tenant.failure = Some(Failure { step: "s".into(), reason: "r".into(), undone: false });
        assert!(tenant.needs_work());
        tenant.failure = Some(Failure { step: "s".into(), reason: "r".into(), undone: true });
        assert!(!tenant.needs_work());
    }

    #[test]
    fn short_ids_are_eight_hex_digits() {
        let short = TenantId::random().short();
        assert_eq!(short.len(), 8);
        assert!(short.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
