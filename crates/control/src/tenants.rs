//! Tenant lifecycle commands: validate, record the desired state, wake the
//! reconciler. No HTTP here; the API is one caller, tests are another.

use std::sync::Arc;

use bulkhead_model::{
    AdminEmail, AdminEmailError, InvalidLimits, Isolation, IsolationError, NewTenant, PlanCatalog,
    Regions, StepRecord, Tenant, TenantId, TenantName, TenantNameError, TenantState, UnknownPlan,
    UnknownRegion,
};
use bulkhead_store::{ControlStore, StoreError, TenantPage};
use serde_json::{Value, json};
use thiserror::Error;

use crate::{
    api::types::{CreateTenantRequest, UpdateTenantRequest},
    clock::Clock,
    events::{Actor, EventLog},
    reconciler::ReconcilerHandle,
};

/// Why a tenant a request names cannot be acted on by its actor: absent
/// (or another tenant's, which looks the same), or beyond its roles.
#[derive(Debug)]
pub enum Unreachable {
    NotFound(String),
    Forbidden(String),
    Store(StoreError),
}

/// `From<Unreachable>` for a service's error with `TenantNotFound`,
/// `Forbidden` and `Store` variants.
macro_rules! from_unreachable {
    ($error:ty) => {
        impl From<crate::tenants::Unreachable> for $error {
            fn from(unreachable: crate::tenants::Unreachable) -> Self {
                match unreachable {
                    crate::tenants::Unreachable::NotFound(name) => Self::TenantNotFound(name),
                    crate::tenants::Unreachable::Forbidden(name) => Self::Forbidden(name),
                    crate::tenants::Unreachable::Store(error) => Self::Store(error),
                }
            }
        }
    };
}
pub(crate) use from_unreachable;

/// The tenant named `name`, if `actor` may see it and do `permission` to
/// it; a deleted tenant is not found.
pub async fn reachable(
    store: &dyn ControlStore,
    actor: &Actor,
    name: &str,
    permission: bulkhead_identity::Permission,
) -> Result<Tenant, Unreachable> {
    let tenant = store
        .tenant_named(name)
        .await
        .map_err(Unreachable::Store)?
        .filter(|t| actor.may_access(t) && t.state != TenantState::Deleted)
        .ok_or_else(|| Unreachable::NotFound(name.to_owned()))?;
    if !actor.allows(&tenant, permission) {
        return Err(Unreachable::Forbidden(name.to_owned()));
    }
    Ok(tenant)
}

#[derive(Debug, Error)]
pub enum TenantError {
    #[error(transparent)]
    InvalidName(#[from] TenantNameError),
    #[error(transparent)]
    UnknownPlan(#[from] UnknownPlan),
    #[error(transparent)]
    UnknownRegion(#[from] UnknownRegion),
    #[error(transparent)]
    Isolation(#[from] IsolationError),
    #[error(transparent)]
    InvalidEmail(#[from] AdminEmailError),
    #[error(transparent)]
    InvalidLimits(#[from] InvalidLimits),
    /// A field that is fixed when the tenant is created was asked to change.
    #[error(
        "{field} cannot change for an existing tenant: {tenant:?} is {current}, not {requested} \
         (to move it, create a new tenant and move its data)"
    )]
    Immutable { tenant: String, field: &'static str, current: String, requested: String },
    #[error("tenant {0:?} does not exist")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    /// The tenant's state does not allow the action; the message says what
    /// would.
    #[error("{0}")]
    InvalidState(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug)]
pub struct TenantService {
    store: Arc<dyn ControlStore>,
    plans: PlanCatalog,
    regions: Regions,
    reconciler: ReconcilerHandle,
    clock: Arc<dyn Clock>,
    events: EventLog,
}

/// How often a lifecycle change is retried when another writer changed the
/// tenant between our read and our write.
const WRITE_RACE_RETRIES: usize = 5;

impl TenantService {
    pub fn new(
        store: Arc<dyn ControlStore>,
        plans: PlanCatalog,
        regions: Regions,
        reconciler: ReconcilerHandle,
        clock: Arc<dyn Clock>,
        events: EventLog,
    ) -> Self {
        Self { store, plans, regions, reconciler, clock, events }
    }

    /// The plans tenants can be created on.
    pub fn plans(&self) -> &PlanCatalog {
        &self.plans
    }

    /// The regions tenants can be placed in; the first is the default.
    pub fn regions(&self) -> &Regions {
        &self.regions
    }

    /// Records a new tenant in `provisioning` and hands it to the
    /// reconciler. Nothing outside the store exists yet when this returns.
    pub async fn create(
        &self,
        request: CreateTenantRequest,
        actor: &Actor,
    ) -> Result<Tenant, TenantError> {
        let name = TenantName::parse(&request.name)?;
        let plan = self.plans.get(&request.plan)?;
        let region = match &request.region {
            Some(region) => self.regions.get(region)?,
            None => self.regions.default_region(),
        };
        let isolation = Isolation::resolve(request.isolation, plan, region)?;
        let admin_email = request.admin_email.as_deref().map(AdminEmail::parse).transpose()?;
        request.limits.validate()?;
        backups_within(plan, &request.limits)?;
        let spec = NewTenant {
            id: TenantId::random(),
            name,
            plan: plan.name.clone(),
            isolation,
            region: region.name.clone(),
            admin_email,
            limits: request.limits,
        };
        let tenant = Tenant::new(spec, self.clock.now());
        match self.store.insert_tenant(&tenant).await {
            Ok(()) => {}
            Err(StoreError::NameTaken(_)) => return Err(self.name_taken(&tenant.name).await),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(tenant = %tenant.name, plan = %tenant.plan, isolation = %tenant.isolation, region = %tenant.region, "tenant requested");
        self.events
            .record(
                actor,
                &tenant,
                "tenant.create",
                "ok",
                json!({
                    "plan": tenant.plan, "isolation": tenant.isolation, "region": tenant.region,
                    "limits": tenant.limits,
                }),
            )
            .await;
        self.reconciler.wake(tenant.id);
        Ok(tenant)
    }

    async fn name_taken(&self, tenant: &TenantName) -> TenantError {
        let deleted = matches!(
            self.store.tenant(tenant).await,
            Ok(Some(existing)) if existing.state == TenantState::Deleted
        );
        let name = tenant.as_str();
        TenantError::Exists(if deleted {
            format!(
                "a deleted tenant named {name:?} still holds the name; purge it first with \
                 `bulkhead tenants delete {name} --purge`"
            )
        } else {
            format!("a tenant named {name:?} already exists")
        })
    }

    pub async fn get(&self, name: &str) -> Result<(Tenant, Vec<StepRecord>), TenantError> {
        let tenant = self.find(name).await?;
        let steps = self.store.steps(tenant.id).await?;
        Ok((tenant, steps))
    }

    pub async fn list(&self, page: &TenantPage) -> Result<Vec<Tenant>, TenantError> {
        Ok(self.store.list_tenants(page).await?)
    }

    /// Stops an active tenant's traffic; suspending a suspended tenant is a
    /// no-op.
    pub async fn suspend(&self, name: &str, actor: &Actor) -> Result<Tenant, TenantError> {
        self.toggle(
            name,
            actor,
            TenantState::Active,
            TenantState::Suspended,
            ("suspend", "suspended"),
        )
        .await
    }

    /// Resumes a suspended tenant; resuming an active tenant is a no-op.
    pub async fn resume(&self, name: &str, actor: &Actor) -> Result<Tenant, TenantError> {
        self.toggle(name, actor, TenantState::Suspended, TenantState::Active, ("resume", "resumed"))
            .await
    }

    /// Moves a tenant from `from` to `to`; a tenant already in `to` stays.
    /// `verb` names the action for events and errors, in two forms.
    async fn toggle(
        &self,
        name: &str,
        actor: &Actor,
        from: TenantState,
        to: TenantState,
        (verb, done): (&str, &str),
    ) -> Result<Tenant, TenantError> {
        let changed = self
            .change(name, actor, &format!("tenant.{verb}"), state_change, |tenant| {
                match tenant.state {
                    state if state == to => Ok(None),
                    state if state == from => moved(tenant, to).map(Some),
                    state => Err(TenantError::InvalidState(format!(
                        "tenant {:?} is {state}; only {from} tenants can be {done}",
                        tenant.name.as_str()
                    ))),
                }
            })
            .await;
        self.or_departed(name, changed, |name| {
            format!("tenant {name:?} is deleted; only {from} tenants can be {done}")
        })
        .await
    }

    /// `result`, unless it is that no tenant has the name while a deleted
    /// one had it: then `deleted` says why the action cannot be done.
    async fn or_departed(
        &self,
        name: &str,
        result: Result<Tenant, TenantError>,
        deleted: impl FnOnce(&str) -> String,
    ) -> Result<Tenant, TenantError> {
        match result {
            Err(TenantError::NotFound(missing)) => match self.store.departed_named(name).await? {
                Some(_) => Err(TenantError::InvalidState(deleted(name))),
                None => Err(TenantError::NotFound(missing)),
            },
            other => other,
        }
    }

    /// Starts offboarding: every step is undone in reverse. With `purge`, the
    /// tenant's record goes too and its name becomes free; without, the
    /// record stays as `deleted`.
    pub async fn delete(
        &self,
        name: &str,
        purge: bool,
        actor: &Actor,
    ) -> Result<Tenant, TenantError> {
        let action = if purge { "tenant.purge" } else { "tenant.delete" };
        let tenant = self
            .change(name, actor, action, state_change, |tenant| {
                let offboard = || -> Result<Tenant, TenantError> {
                    let mut next = match tenant.state {
                        TenantState::Offboarding => tenant.clone(),
                        _ => moved(tenant, TenantState::Offboarding)?,
                    };
                    next.purge_requested |= purge;
                    next.last_error = None;
                    Ok(next)
                };
                match tenant.state {
                    TenantState::Provisioning => Err(TenantError::InvalidState(format!(
                        "tenant {:?} is still provisioning; wait until it is active or failed, \
                         then delete it",
                        tenant.name.as_str()
                    ))),
                    TenantState::Active | TenantState::Suspended | TenantState::Failed => {
                        offboard().map(Some)
                    }
                    TenantState::Offboarding | TenantState::Deleted
                        if purge && !tenant.purge_requested =>
                    {
                        offboard().map(Some)
                    }
                    TenantState::Offboarding | TenantState::Deleted => Ok(None),
                }
            })
            .await?;
        self.reconciler.wake(tenant.id);
        Ok(tenant)
    }

    /// Changes the tenant's plan, its limits, or both. Its isolation and
    /// region were fixed when it was created: a request may repeat them, not
    /// change them. A plan whose default isolation differs is fine; the
    /// tenant keeps its own.
    pub async fn update(
        &self,
        name: &str,
        request: UpdateTenantRequest,
        actor: &Actor,
    ) -> Result<Tenant, TenantError> {
        let plan = match &request.plan {
            Some(plan) => Some(self.plans.get(plan)?.name.clone()),
            None => None,
        };
        if let Some(limits) = &request.limits {
            limits.validate()?;
        }
        let changed = self
            .change(name, actor, "tenant.update", plan_and_limits, |tenant| {
                let immutable =
                    |field, current: String, requested: String| TenantError::Immutable {
                        tenant: tenant.name.to_string(),
                        field,
                        current,
                        requested,
                    };
                if let Some(isolation) = request.isolation
                    && isolation != tenant.isolation
                {
                    return Err(immutable(
                        "isolation",
                        tenant.isolation.to_string(),
                        isolation.to_string(),
                    ));
                }
                if let Some(region) = &request.region
                    && region != tenant.region.as_str()
                {
                    return Err(immutable(
                        "region",
                        format!("in region {}", tenant.region),
                        format!("in {region}"),
                    ));
                }
                let name = tenant.name.as_str();
                match tenant.state {
                    TenantState::Provisioning | TenantState::Active | TenantState::Suspended => {}
                    TenantState::Failed => {
                        return Err(TenantError::InvalidState(format!(
                            "tenant {name:?} failed provisioning and cannot change; delete it with \
                         `bulkhead tenants delete {name} --purge --yes` and create it again"
                        )));
                    }
                    TenantState::Offboarding | TenantState::Deleted => {
                        return Err(TenantError::InvalidState(format!(
                            "tenant {name:?} is {}; it cannot change",
                            tenant.state
                        )));
                    }
                }
                let mut next = tenant.clone();
                if let Some(plan) = &plan {
                    next.plan = plan.clone();
                }
                if let Some(limits) = &request.limits {
                    next.limits = limits.clone();
                }
                // Checked against the plan the tenant ends up on.
                if let Ok(plan) = self.plans.get(next.plan.as_str()) {
                    backups_within(plan, &next.limits)?;
                }
                Ok((next.plan != tenant.plan || next.limits != tenant.limits).then_some(next))
            })
            .await;
        self.or_departed(name, changed, |name| {
            format!("tenant {name:?} is deleted; it cannot change")
        })
        .await
    }

    async fn find(&self, name: &str) -> Result<Tenant, TenantError> {
        // Shape only: a tenant whose name was reserved after it took it must
        // stay reachable.
        let name = TenantName::parse_stored(name)?;
        self.store.tenant(&name).await?.ok_or_else(|| TenantError::NotFound(name.to_string()))
    }

    /// Applies `decide` to the current record and writes the result, retrying
    /// when the record changed in between. `decide` returns `None` when
    /// there is nothing to change. The event's details are what `details`
    /// makes of the record before and after.
    async fn change<F>(
        &self,
        name: &str,
        actor: &Actor,
        action: &str,
        details: fn(&Tenant, &Tenant) -> Value,
        decide: F,
    ) -> Result<Tenant, TenantError>
    where
        F: Fn(&Tenant) -> Result<Option<Tenant>, TenantError>,
    {
        let mut tries = 0;
        loop {
            let current = self.find(name).await?;
            let Some(mut next) = decide(&current)? else {
                return Ok(current);
            };
            next.updated_at = self.clock.now();
            match self.store.update_tenant(&next).await {
                Ok(stored) => {
                    tracing::info!(tenant = %stored.name, from = %current.state, to = %stored.state, action, "tenant changed");
                    self.events
                        .record(actor, &stored, action, "ok", details(&current, &stored))
                        .await;
                    return Ok(stored);
                }
                Err(StoreError::VersionConflict) if tries < WRITE_RACE_RETRIES => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// What a lifecycle event says: the state before and after.
fn state_change(before: &Tenant, after: &Tenant) -> Value {
    json!({ "from": before.state, "to": after.state })
}

/// What a `tenant.update` event says: the plan and limits before and after.
fn plan_and_limits(before: &Tenant, after: &Tenant) -> Value {
    let settings = |t: &Tenant| json!({ "plan": t.plan, "limits": t.limits });
    json!({ "before": settings(before), "after": settings(after) })
}

/// `tenant` moved to `next`, if the lifecycle allows it.
fn moved(tenant: &Tenant, next: TenantState) -> Result<Tenant, TenantError> {
    let mut moved = tenant.clone();
    moved.transition(next).map_err(|e| TenantError::InvalidState(e.to_string()))?;
    Ok(moved)
}

/// A tenant's own backup policy must stay within its plan's.
fn backups_within(
    plan: &bulkhead_model::Plan,
    limits: &bulkhead_model::TenantLimits,
) -> Result<(), TenantError> {
    let Some(own) = &limits.backups else { return Ok(()) };
    plan.backups.allows(own, plan.audit_retention_days).map_err(|message| {
        TenantError::InvalidLimits(bulkhead_model::InvalidLimits { field: "backups", message })
    })
}
