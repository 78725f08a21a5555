//! `/v1/plans` and `/v1/regions`: what tenants can be created with.

use axum::{Json, extract::State};

use super::{
    AppState,
    types::{ErrorBody, PlanList, RegionList},
};

/// The plans tenants can be created on.
#[utoipa::path(
    get, path = "/v1/plans", tag = "catalog",
    responses((status = 200, body = PlanList), (status = 401, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn list_plans(State(state): State<AppState>) -> Json<PlanList> {
    Json(PlanList { plans: state.tenants.plans().all().to_vec() })
}

/// The regions tenants can be placed in; the first is the default.
#[utoipa::path(
    get, path = "/v1/regions", tag = "catalog",
    responses((status = 200, body = RegionList), (status = 401, body = ErrorBody)),
    security(("operator_token" = []))
)]
pub async fn list_regions(State(state): State<AppState>) -> Json<RegionList> {
    Json(RegionList {
        regions: state.tenants.regions().all().iter().map(|r| r.summary()).collect(),
    })
}
