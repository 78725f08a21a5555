//! Bulkhead's domain model: the types every other crate agrees on, and the
//! rules that make a value of one of them valid.
//!
//! Nothing here does I/O or awaits. A value that exists is valid: a
//! [`TenantName`] can only be built through its validation, a [`Plan`] is
//! looked up in a [`PlanCatalog`] that names the valid ones when the lookup
//! fails, and a [`TenantState`] only moves along the lifecycle's legal edges.

mod api;
mod app;
mod email;
mod fields;
mod guardrail;
mod isolation;
mod label;
mod limits;
pub mod manifest;
mod plan;
mod price;
mod region;
mod role;
mod tenant;
mod tool;

pub use api::{
    ApiAuth, ApiName, ApiSpec, ApiType, AuditLevel, DEFAULT_MAX_BODY_BYTES, InvalidApi,
    MAX_UPSTREAMS, PathPrefix, Rate, Timeouts, Upstream, UpstreamProtocol,
};
pub use app::{
    AppLimits, AppName, AppSecret, AppSpec, HealthCheck, InvalidApp, MAX_WORKERS, check_version,
};
pub use email::{AdminEmail, AdminEmailError};
pub use guardrail::{
    BlockedTopic, GuardrailSpec, InvalidGuardrail, PATTERN_SIZE_LIMIT, PiiAction, PiiKind,
};
pub use isolation::{Isolation, IsolationError, UnknownIsolation};
pub use label::{BaseDomain, RESERVED_TENANT_NAMES, RegionName, TenantName, TenantNameError};
pub use limits::{InvalidLimits, TenantLimits};
pub use plan::{
    BackupPolicy, ControlQuotas, CostCaps, GatewayLimits, LimiterFallback, Plan, PlanCatalog,
    PlanName, RuntimeLimits, UnknownPlan, VaultPolicy,
};
pub use price::{Price, PriceTable};
pub use region::{
    DatabaseLocation, DatabasePrefix, DatabaseUrl, Region, RegionError, RegionSummary, Regions,
    UnknownRegion, redact_url,
};
pub use role::{Permission, Role, allows};
pub use tenant::{
    Failure, IllegalTransition, NewTenant, StepRecord, StepStatus, Tenant, TenantId, TenantState,
    UnknownState,
};
pub use tool::{InvalidTool, MAX_TOOL_NAME, ToolCredential, ToolSpec, ToolUpstream, is_tool_name};
