//! A tenant's resources that are a spec alone (guardrails, and tools
//! next): created, replaced, listed and deleted here, each change recorded
//! on the tenant's audit stream, which is also what tells the gateway to
//! rebuild the tenant's entry. One service for every such kind; what
//! differs between kinds is the [`Resource`] trait. No HTTP here.

use std::{fmt, sync::Arc};

use bulkhead_identity::Permission;
use bulkhead_model::{GuardrailSpec, Tenant, TenantState, ToolSpec};
use bulkhead_store::{ControlStore, ResourceRecord, StoreError};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use thiserror::Error;

use crate::{
    apis::Applied,
    clock::Clock,
    events::{Actor, EventLog},
};

/// A kind of tenant resource the service keeps.
pub trait Resource: Serialize + DeserializeOwned + PartialEq + Clone + Send + Sync {
    /// Stored as the row's kind, used in audit actions
    /// (`guardrail.create`) and as messages name it.
    const KIND: &'static str;
    /// The `bulkhead` command that lists them, for messages.
    const LIST_COMMAND: &'static str;
    /// How many one tenant may have: each is held, compiled, in every
    /// gateway.
    const MAX_PER_TENANT: usize;

    fn name(&self) -> &str;
    fn validate(&self) -> Result<(), String>;
    /// What the audit event records of it (never a secret).
    fn summary(&self) -> Value;
}

impl Resource for GuardrailSpec {
    const KIND: &'static str = "guardrail";
    const LIST_COMMAND: &'static str = "bulkhead get guardrails --tenant";
    const MAX_PER_TENANT: usize = 20;

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), String> {
        GuardrailSpec::validate(self).map_err(|e| e.to_string())
    }

    fn summary(&self) -> Value {
        json!({
            "name": self.name,
            "api": self.api,
            "pii": self.pii,
            "topics": self.topics.iter().map(|t| &t.name).collect::<Vec<_>>(),
            "max_prompt_bytes": self.max_prompt_bytes,
            "scan_responses": self.scan_responses,
        })
    }
}

impl Resource for ToolSpec {
    const KIND: &'static str = "tool";
    const LIST_COMMAND: &'static str = "bulkhead tools list --tenant";
    const MAX_PER_TENANT: usize = 50;

    fn name(&self) -> &str {
        &self.name
    }

    fn validate(&self) -> Result<(), String> {
        ToolSpec::validate(self).map_err(|e| e.to_string())
    }

    fn summary(&self) -> Value {
        json!({
            "name": self.name,
            "upstream": self.upstream,
            "tools": self.tools,
            "roles": self.roles,
            "credential": self.credential.as_ref().map(|c| &c.secret),
        })
    }
}

#[derive(Debug, Error)]
pub enum ResourcesError {
    #[error("tenant {0:?} does not exist")]
    TenantNotFound(String),
    #[error("your roles in tenant {0:?} do not allow this")]
    Forbidden(String),
    #[error("{kind} {name:?}: {error}")]
    Invalid { kind: &'static str, name: String, error: String },
    #[error("tenant {tenant:?} has no {kind} named {name:?}; `{list} {tenant}` shows them")]
    NotFound { kind: &'static str, list: &'static str, tenant: String, name: String },
    #[error(
        "tenant {tenant:?} has {max} {kind}s, as many as a tenant may; delete one it no longer \
         needs"
    )]
    TooMany { kind: &'static str, tenant: String, max: usize },
    #[error("tenant {0:?} is being deleted; its resources cannot change")]
    Leaving(String),
    #[error("the stored {kind} {name:?} of tenant {tenant:?} is unreadable: {error}")]
    Corrupt { kind: &'static str, tenant: String, name: String, error: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

crate::tenants::from_unreachable!(ResourcesError);

type Result<T, E = ResourcesError> = std::result::Result<T, E>;

/// Reads a stored spec back through the model's validation.
pub fn decode<R: Resource>(record: &ResourceRecord) -> Result<R, String> {
    let spec: R = serde_json::from_str(&record.spec).map_err(|e| e.to_string())?;
    spec.validate()?;
    Ok(spec)
}

pub struct ResourceService {
    store: Arc<dyn ControlStore>,
    clock: Arc<dyn Clock>,
    events: EventLog,
}

impl fmt::Debug for ResourceService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceService").finish_non_exhaustive()
    }
}

impl ResourceService {
    pub fn new(store: Arc<dyn ControlStore>, clock: Arc<dyn Clock>, events: EventLog) -> Self {
        Self { store, clock, events }
    }

    async fn tenant(&self, actor: &Actor, name: &str, permission: Permission) -> Result<Tenant> {
        Ok(crate::tenants::reachable(&*self.store, actor, name, permission).await?)
    }

    fn corrupt<R: Resource>(tenant: &Tenant, name: &str, error: String) -> ResourcesError {
        ResourcesError::Corrupt {
            kind: R::KIND,
            tenant: tenant.name.to_string(),
            name: name.to_owned(),
            error,
        }
    }

    async fn stored<R: Resource>(&self, tenant: &Tenant) -> Result<Vec<R>> {
        self.store
            .resources(tenant.id, R::KIND)
            .await?
            .iter()
            .map(|record| decode(record).map_err(|e| Self::corrupt::<R>(tenant, &record.name, e)))
            .collect()
    }

    /// Creates the resource or replaces the one of its name (what `apply`
    /// does), once it validates. A guardrail may name an API the tenant
    /// does not have yet: it applies once the API exists, so that an API
    /// and its guardrail applied together are never served unguarded.
    pub async fn put<R: Resource>(
        &self,
        actor: &Actor,
        tenant_name: &str,
        spec: R,
    ) -> Result<(R, Applied)> {
        let tenant = self.tenant(actor, tenant_name, Permission::Manage).await?;
        if tenant.state == TenantState::Offboarding {
            return Err(ResourcesError::Leaving(tenant_name.to_owned()));
        }
        let name = spec.name().to_owned();
        spec.validate().map_err(|error| ResourcesError::Invalid {
            kind: R::KIND,
            name: name.clone(),
            error,
        })?;
        // Read, not validated again: only to tell an unchanged spec and to
        // count.
        let existing = self.store.resources(tenant.id, R::KIND).await?;
        match existing.iter().find(|r| r.name == name) {
            Some(current) if serde_json::from_str::<R>(&current.spec).is_ok_and(|c| c == spec) => {
                return Ok((spec, Applied::Unchanged));
            }
            None if existing.len() >= R::MAX_PER_TENANT => {
                return Err(ResourcesError::TooMany {
                    kind: R::KIND,
                    tenant: tenant_name.to_owned(),
                    max: R::MAX_PER_TENANT,
                });
            }
            _ => {}
        }
        let now = self.clock.now();
        let record = ResourceRecord {
            tenant_id: tenant.id,
            kind: R::KIND.to_owned(),
            name: name.clone(),
            spec: serde_json::to_string(&spec)
                .map_err(|e| Self::corrupt::<R>(&tenant, &name, e.to_string()))?,
            created_at: now,
            updated_at: now,
        };
        let created = self.store.put_resource(&record).await?;
        let (applied, verb) =
            if created { (Applied::Created, "create") } else { (Applied::Changed, "update") };
        let action = format!("{}.{verb}", R::KIND);
        self.events.record(actor, &tenant, &action, "ok", spec.summary()).await;
        Ok((spec, applied))
    }

    pub async fn list<R: Resource>(&self, actor: &Actor, tenant_name: &str) -> Result<Vec<R>> {
        let tenant = self.tenant(actor, tenant_name, Permission::Read).await?;
        self.stored(&tenant).await
    }

    fn missing<R: Resource>(tenant: &str, name: &str) -> ResourcesError {
        ResourcesError::NotFound {
            kind: R::KIND,
            list: R::LIST_COMMAND,
            tenant: tenant.to_owned(),
            name: name.to_owned(),
        }
    }

    pub async fn get<R: Resource>(
        &self,
        actor: &Actor,
        tenant_name: &str,
        name: &str,
    ) -> Result<R> {
        let tenant = self.tenant(actor, tenant_name, Permission::Read).await?;
        let record = self
            .store
            .resource(tenant.id, R::KIND, name)
            .await?
            .ok_or_else(|| Self::missing::<R>(tenant_name, name))?;
        decode(&record).map_err(|e| Self::corrupt::<R>(&tenant, name, e))
    }

    pub async fn delete<R: Resource>(
        &self,
        actor: &Actor,
        tenant_name: &str,
        name: &str,
    ) -> Result<()> {
        let tenant = self.tenant(actor, tenant_name, Permission::Manage).await?;
        if !self.store.delete_resource(tenant.id, R::KIND, name).await? {
            return Err(Self::missing::<R>(tenant_name, name));
        }
        let action = format!("{}.delete", R::KIND);
        self.events.record(actor, &tenant, &action, "ok", json!({ "name": name })).await;
        Ok(())
    }
}
