//! What goes over the wire: request bodies and response documents of the
//! control API. The CLI deserialises the same types.

use bulkhead_model::{BaseDomain, Isolation, Plan, RegionSummary, StepRecord, StepStatus, Tenant};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    /// A DNS label: 3 to 40 characters of a-z, 0-9 and '-'.
    #[schema(example = "acme")]
    pub name: String,
    #[schema(example = "professional")]
    pub plan: String,
    /// Overrides the plan's default isolation.
    #[serde(default)]
    pub isolation: Option<Isolation>,
    /// Defaults to the first configured region.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub admin_email: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListTenantsParams {
    /// At most this many tenants (1 to 1000, default 100).
    pub limit: Option<u32>,
    /// Only tenants whose name sorts after this one: pass the previous
    /// page's `next_after`.
    pub after: Option<String>,
    /// Only tenants in this state. Without it every state but `deleted` is
    /// listed.
    pub state: Option<String>,
}

#[derive(Debug, Clone, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteTenantParams {
    /// Remove the tenant's record too, freeing its name, instead of keeping
    /// it as `deleted`.
    #[serde(default)]
    pub purge: bool,
}

/// Where a provisioning step stands for one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Pending,
    Applied,
    Undone,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    pub name: String,
    pub state: StepState,
    #[schema(value_type = Option<Object>)]
    pub output: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub updated_at: Option<OffsetDateTime>,
}

/// A tenant as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TenantView {
    #[serde(flatten)]
    pub tenant: Tenant,
    /// The tenant's hostname under the base domain.
    pub domain: String,
    /// Every provisioning step in order (single-tenant reads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepView>>,
}

impl TenantView {
    pub fn new(tenant: Tenant, base_domain: &BaseDomain) -> Self {
        Self { domain: base_domain.tenant_host(&tenant.name), tenant, steps: None }
    }

    /// With the progress of each of `step_names`, in order.
    pub fn with_steps(mut self, step_names: &[&str], records: &[StepRecord]) -> Self {
        let steps = step_names
            .iter()
            .map(|name| match records.iter().find(|r| r.step == *name) {
                Some(record) => StepView {
                    name: (*name).to_owned(),
                    state: match record.status {
                        StepStatus::Applied => StepState::Applied,
                        StepStatus::Undone => StepState::Undone,
                    },
                    output: record.output.clone(),
                    updated_at: Some(record.updated_at),
                },
                None => StepView {
                    name: (*name).to_owned(),
                    state: StepState::Pending,
                    output: None,
                    updated_at: None,
                },
            })
            .collect();
        self.steps = Some(steps);
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<TenantView>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PlanList {
    pub plans: Vec<Plan>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegionList {
    pub regions: Vec<RegionSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Status {
    #[schema(example = "ok")]
    pub status: String,
}

/// Every error the API returns has this shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable and machine-readable, e.g. `tenant_not_found`.
    pub code: String,
    /// For people: what went wrong and how to fix it.
    pub message: String,
}
