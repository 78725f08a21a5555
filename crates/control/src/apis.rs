//! A tenant's APIs, the contracts its gateway routes by: created, replaced,
//! listed and deleted here, each change recorded on the tenant's audit
//! stream (which is also what tells the gateway to rebuild the tenant's
//! entry). No HTTP here.

use std::{collections::HashMap, sync::Arc};

use bulkhead_identity::Permission;
use bulkhead_model::{
    ApiAuth, ApiSpec, InvalidApi, Tenant, TenantId, TenantName, TenantState, Upstream,
};
use bulkhead_store::{ApiRecord, ControlStore, StoreError};
use serde_json::json;
use thiserror::Error;

use crate::{
    clock::Clock,
    events::{Actor, EventLog},
};

/// APIs one tenant may define: each is routed on every request of the
/// tenant and held in every gateway's memory.
pub const MAX_APIS_PER_TENANT: usize = 100;

#[derive(Debug, Error)]
pub enum ApisError {
    #[error("tenant {0:?} does not exist")]
    TenantNotFound(String),
    #[error("your roles in tenant {0:?} do not allow this")]
    Forbidden(String),
    #[error("API {name:?}: {error}")]
    Invalid { name: String, error: InvalidApi },
    #[error(
        "tenant {tenant:?} already has an API named {name:?}; `bulkhead apis get` shows it, \
         `bulkhead apply` changes it"
    )]
    Exists { tenant: String, name: String },
    #[error("tenant {tenant:?} has no API named {name:?}; `bulkhead apis list` shows its APIs")]
    NotFound { tenant: String, name: String },
    #[error(
        "API {name:?} would serve prefix {prefix} of tenant {tenant:?}, which API {other:?} \
         serves already; each prefix belongs to one API"
    )]
    PrefixTaken { tenant: String, name: String, prefix: String, other: String },
    #[error(
        "tenant {tenant:?} has {MAX_APIS_PER_TENANT} APIs, as many as a tenant may; delete one \
         it no longer needs"
    )]
    TooMany { tenant: String },
    #[error("tenant {0:?} is being deleted; its APIs cannot change")]
    Leaving(String),
    #[error("the stored API {name:?} of tenant {tenant:?} is unreadable: {error}")]
    Corrupt { tenant: String, name: String, error: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

crate::tenants::from_unreachable!(ApisError);

type Result<T, E = ApisError> = std::result::Result<T, E>;

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Created,
    Changed,
    Unchanged,
}

impl Applied {
    pub fn as_str(self) -> &'static str {
        match self {
            Applied::Created => "created",
            Applied::Changed => "changed",
            Applied::Unchanged => "unchanged",
        }
    }
}

#[derive(Debug)]
pub struct ApiService {
    store: Arc<dyn ControlStore>,
    clock: Arc<dyn Clock>,
    events: EventLog,
    /// An API of `type: llm` may name only models priced here.
    prices: Arc<bulkhead_model::PriceTable>,
}

/// Reads a stored spec back through the model's validation.
pub fn decode(record: &ApiRecord) -> Result<ApiSpec, String> {
    serde_json::from_str::<ApiSpec>(&record.spec)
        .map_err(|e| e.to_string())
        .and_then(|spec| spec.validate().map_err(|e| e.to_string()))
}

impl ApiService {
    pub fn new(
        store: Arc<dyn ControlStore>,
        clock: Arc<dyn Clock>,
        events: EventLog,
        prices: Arc<bulkhead_model::PriceTable>,
    ) -> Self {
        Self { store, clock, events, prices }
    }

    async fn tenant(&self, actor: &Actor, name: &str, permission: Permission) -> Result<Tenant> {
        Ok(crate::tenants::reachable(&*self.store, actor, name, permission).await?)
    }

    async fn stored(&self, tenant: &Tenant) -> Result<Vec<ApiSpec>> {
        self.store
            .apis(tenant.id)
            .await?
            .iter()
            .map(|record| {
                decode(record).map_err(|error| ApisError::Corrupt {
                    tenant: tenant.name.to_string(),
                    name: record.name.clone(),
                    error,
                })
            })
            .collect()
    }

    /// Creates the API, or with `replace` also changes an existing one of
    /// that name (what `apply` does). The spec is validated first, and its
    /// prefix must not be another API's.
    pub async fn put(
        &self,
        actor: &Actor,
        tenant_name: &str,
        spec: ApiSpec,
        replace: bool,
    ) -> Result<(ApiSpec, Applied)> {
        let tenant = self.tenant(actor, tenant_name, Permission::Manage).await?;
        if tenant.state == TenantState::Offboarding {
            return Err(ApisError::Leaving(tenant_name.to_owned()));
        }
        let name = spec.name.to_string();
        let spec =
            spec.validate().map_err(|error| ApisError::Invalid { name: name.clone(), error })?;
        // A socket path names anything on the server, another tenant's
        // worker included: only an operator routes to one. A tenant's own
        // app is `app:NAME`.
        if !actor.is_operator() && spec.upstreams.iter().any(|u| matches!(u, Upstream::Unix(_))) {
            return Err(ApisError::Invalid {
                name,
                error: InvalidApi {
                    field: "upstreams",
                    message: "only an operator may route to a unix: socket; route to the tenant's \
                              own app with app:NAME"
                        .to_owned(),
                },
            });
        }
        // A model call's cost must be known before it is made: never free.
        if let Some(unpriced) = spec.models.iter().find(|m| !self.prices.contains_key(*m)) {
            return Err(ApisError::Invalid {
                name,
                error: InvalidApi {
                    field: "models",
                    message: format!(
                        "model {unpriced:?} has no price; add [prices.\"{unpriced}\"] (input and \
                         output, micro-units per million tokens) to the server's configuration"
                    ),
                },
            });
        }
        let existing = self.stored(&tenant).await?;
        let current = existing.iter().find(|a| a.name == spec.name);
        match current {
            Some(current) if current == &spec => return Ok((spec, Applied::Unchanged)),
            Some(_) if !replace => {
                return Err(ApisError::Exists { tenant: tenant_name.to_owned(), name });
            }
            None if existing.len() >= MAX_APIS_PER_TENANT => {
                return Err(ApisError::TooMany { tenant: tenant_name.to_owned() });
            }
            _ => {}
        }
        if let Some(other) =
            existing.iter().find(|a| a.name != spec.name && a.prefix == spec.prefix)
        {
            return Err(ApisError::PrefixTaken {
                tenant: tenant_name.to_owned(),
                name,
                prefix: spec.prefix.as_str().to_owned(),
                other: other.name.to_string(),
            });
        }
        let now = self.clock.now();
        let record = ApiRecord {
            tenant_id: tenant.id,
            name: name.clone(),
            spec: serde_json::to_string(&spec).map_err(|e| ApisError::Corrupt {
                tenant: tenant_name.to_owned(),
                name: name.clone(),
                error: e.to_string(),
            })?,
            created_at: now,
            updated_at: now,
        };
        let created = self.store.put_api(&record).await?;
        let (applied, action) = if created {
            (Applied::Created, "api.create")
        } else {
            (Applied::Changed, "api.update")
        };
        let details = json!({ "name": name, "prefix": spec.prefix.as_str(), "auth": spec.auth });
        self.events.record(actor, &tenant, action, "ok", details).await;
        Ok((spec, applied))
    }

    /// Every API that answers without a credential, of every tenant not
    /// deleted, by tenant and name.
    pub async fn public(&self) -> Result<Vec<(TenantName, ApiSpec)>> {
        let mut public = Vec::new();
        let mut names: HashMap<TenantId, Option<Tenant>> = HashMap::new();
        for record in self.store.all_apis().await? {
            let Ok(spec) = decode(&record) else { continue };
            if spec.auth != ApiAuth::Public {
                continue;
            }
            let tenant = match names.get(&record.tenant_id) {
                Some(tenant) => tenant.clone(),
                None => {
                    let tenant = self.store.tenant_by_id(record.tenant_id).await?;
                    names.insert(record.tenant_id, tenant.clone());
                    tenant
                }
            };
            if let Some(tenant) = tenant.filter(|t| t.state != TenantState::Deleted) {
                public.push((tenant.name, spec));
            }
        }
        public.sort_by(|a, b| {
            (a.0.as_str(), a.1.name.as_str()).cmp(&(b.0.as_str(), b.1.name.as_str()))
        });
        Ok(public)
    }

    pub async fn list(&self, actor: &Actor, tenant_name: &str) -> Result<Vec<ApiSpec>> {
        let tenant = self.tenant(actor, tenant_name, Permission::Read).await?;
        self.stored(&tenant).await
    }

    pub async fn get(&self, actor: &Actor, tenant_name: &str, name: &str) -> Result<ApiSpec> {
        let tenant = self.tenant(actor, tenant_name, Permission::Read).await?;
        let missing =
            || ApisError::NotFound { tenant: tenant_name.to_owned(), name: name.to_owned() };
        let record = self.store.api(tenant.id, name).await?.ok_or_else(missing)?;
        decode(&record).map_err(|error| ApisError::Corrupt {
            tenant: tenant_name.to_owned(),
            name: name.to_owned(),
            error,
        })
    }

    pub async fn delete(&self, actor: &Actor, tenant_name: &str, name: &str) -> Result<()> {
        let tenant = self.tenant(actor, tenant_name, Permission::Manage).await?;
        if !self.store.delete_api(tenant.id, name).await? {
            return Err(ApisError::NotFound {
                tenant: tenant_name.to_owned(),
                name: name.to_owned(),
            });
        }
        self.events.record(actor, &tenant, "api.delete", "ok", json!({ "name": name })).await;
        Ok(())
    }
}
