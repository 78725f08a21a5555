//! Recording what happened to tenants, in the control store's event table
//! until the audit log takes over. Details never carry secret values.

use std::{fmt, sync::Arc};

use bulkhead_model::Tenant;
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
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Operator(name) => write!(f, "operator:{name}"),
            Actor::Reconciler => f.write_str("reconciler"),
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
        let event = NewEvent {
            at: self.clock.now(),
            tenant_id: Some(tenant.id),
            tenant: Some(tenant.name.to_string()),
            actor: actor.to_string(),
            action: action.to_owned(),
            outcome: outcome.to_owned(),
            details,
        };
        if let Err(error) = self.store.append_event(&event).await {
            tracing::warn!(tenant = %tenant.name, action, %error, "cannot record event");
        }
    }
}
