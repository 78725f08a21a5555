//! Recording what happened to tenants, in the control store's event table
//! until the audit log takes over. Details never carry secret values.

use std::{fmt, sync::Arc};

use bulkhead_identity::{Permission, Role, roles};
use bulkhead_model::{Tenant, TenantId};
use bulkhead_store::{ControlStore, NewEvent};
use serde_json::Value;

use crate::clock::Clock;

/// Who did something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An operator, by the name of the token they used.
    Operator(String),
    /// The provisioning reconciler.
    Reconciler,
    /// The vault's background work: expiring leases, scheduled rotation.
    Scheduler,
    /// Someone who presented no credential that verified.
    Anonymous,
    /// A credential scoped to one tenant (a token of its realm or of the
    /// identity provider it trusts, or one of its API keys): it may act on
    /// that tenant's own resources only, as its roles allow. `expires_at`
    /// is when the credential stops being valid (unix seconds), for a
    /// token; an API key lasts until revoked.
    Tenant { tenant_id: TenantId, subject: String, roles: Vec<Role>, expires_at: Option<i64> },
}

impl Actor {
    /// Whether the actor may touch `tenant`'s resources at all. Operators
    /// and the control plane's own tasks may; a tenant-scoped credential
    /// only for its own tenant, compared by id, never by name.
    pub fn may_access(&self, tenant: &Tenant) -> bool {
        match self {
            Actor::Operator(_) | Actor::Reconciler | Actor::Scheduler => true,
            Actor::Anonymous => false,
            Actor::Tenant { tenant_id, .. } => *tenant_id == tenant.id,
        }
    }

    /// Whether the actor may do `permission` to `tenant`: operators and
    /// the control plane's tasks always; a tenant-scoped credential on its
    /// own tenant when one of its roles allows it.
    pub fn allows(&self, tenant: &Tenant, permission: Permission) -> bool {
        match self {
            Actor::Tenant { roles, .. } => {
                self.may_access(tenant) && roles::allows(roles, permission)
            }
            _ => self.may_access(tenant),
        }
    }

    /// Whether the actor may use platform-wide endpoints (master key,
    /// lockouts, every tenant's list).
    pub fn is_operator(&self) -> bool {
        matches!(self, Actor::Operator(_))
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Operator(name) => write!(f, "operator:{name}"),
            Actor::Reconciler => f.write_str("reconciler"),
            Actor::Scheduler => f.write_str("scheduler"),
            Actor::Anonymous => f.write_str("anonymous"),
            Actor::Tenant { tenant_id, subject, .. } => write!(f, "tenant:{tenant_id}:{subject}"),
        }
    }
}

/// Where events go: the control store's event table.
#[derive(Debug, Clone)]
pub struct EventLog {
    store: Arc<dyn ControlStore>,
    clock: Arc<dyn Clock>,
}

impl EventLog {
    pub fn new(store: Arc<dyn ControlStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Appends one event. A failure to record is logged, not returned: the
    /// action it describes has already happened and is kept in the tenant's
    /// own record.
    pub async fn record(
        &self,
        actor: &Actor,
        tenant: &Tenant,
        action: &str,
        outcome: &str,
        details: Value,
    ) {
        self.append(actor, Some(tenant), action, outcome, details).await;
    }

    /// Appends an event about the platform rather than one tenant.
    pub async fn record_platform(
        &self,
        actor: &Actor,
        action: &str,
        outcome: &str,
        details: Value,
    ) {
        self.append(actor, None, action, outcome, details).await;
    }

    async fn append(
        &self,
        actor: &Actor,
        tenant: Option<&Tenant>,
        action: &str,
        outcome: &str,
        details: Value,
    ) {
        let event = NewEvent {
            at: self.clock.now(),
            tenant_id: tenant.map(|t| t.id),
            tenant: tenant.map(|t| t.name.to_string()),
            actor: actor.to_string(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            details,
        };
        if let Err(error) = self.store.append_event(&event).await {
            tracing::warn!(tenant = ?tenant.map(|t| t.name.as_str()), action, %error, "cannot record event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_model::{Isolation, NewTenant, PlanName, RegionName, TenantName};
    use time::OffsetDateTime;

    fn tenant(name: &str) -> Tenant {
        Tenant::new(
            NewTenant {
                id: TenantId::random(),
                name: TenantName::parse(name).unwrap(),
                plan: PlanName::parse("starter").unwrap(),
                isolation: Isolation::Pool,
                region: RegionName::default(),
                admin_email: None,
            },
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn a_tenant_credential_reaches_its_own_tenant_only() {
        let (acme, globex) = (tenant("acme"), tenant("globex"));
        let admin = Actor::Tenant {
            tenant_id: acme.id,
            subject: "alice".into(),
            roles: vec![Role::Admin],
            expires_at: None,
        };
        assert!(admin.may_access(&acme));
        assert!(!admin.may_access(&globex));
        assert!(admin.allows(&acme, Permission::Manage));
        assert!(!admin.allows(&acme, Permission::Own));
        assert!(!admin.allows(&globex, Permission::Read));
        // Same name, another tenant (recreated after a purge): still no.
        let impostor = Tenant { id: TenantId::random(), ..acme.clone() };
        assert!(!admin.may_access(&impostor));
        assert!(!admin.is_operator());
        assert!(Actor::Operator("initial".into()).may_access(&globex));
    }
}
