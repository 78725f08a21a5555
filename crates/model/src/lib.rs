//! Bulkhead's domain model: the types every other crate agrees on, and the
//! rules that make a value of one of them valid.
//!
//! Nothing here does I/O or awaits. A value that exists is valid: a
//! [`TenantName`] can only be built through its validation, a [`Plan`] is
//! looked up in a [`PlanCatalog`] that names the valid ones when the lookup
//! fails, and a [`TenantState`] only moves along the lifecycle's legal edges.

mod email;
mod isolation;
mod label;
mod plan;
mod region;
mod tenant;

pub use email::{AdminEmail, AdminEmailError};
pub use isolation::{Isolation, IsolationError, UnknownIsolation};
pub use label::{BaseDomain, RESERVED_TENANT_NAMES, RegionName, TenantName, TenantNameError};
pub use plan::{
    BackupPolicy, ControlQuotas, CostCaps, Plan, PlanCatalog, PlanName, RateLimit, RuntimeLimits,
    UnknownPlan, VaultPolicy,
};
pub use region::{
    DatabaseLocation, DatabasePrefix, DatabaseUrl, Region, RegionError, RegionSummary, Regions,
    UnknownRegion, redact_url,
};
pub use tenant::{
    Failure, IllegalTransition, NewTenant, StepRecord, StepStatus, Tenant, TenantId, TenantState,
    UnknownState,
};
