//! Rows as both databases return them, and their checked conversion into
//! domain types: a value that no longer validates is reported as corrupt
//! rather than trusted.

use bulkhead_model::{
    AdminEmail, Failure, PlanName, RegionName, StepRecord, Tenant, TenantId, TenantLimits,
    TenantName,
};
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{OperatorToken, StoreError};

/// Every column of `tenants`, as `tenant_columns!` selects them.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct TenantRow {
    id: Uuid,
    name: String,
    plan: String,
    isolation: String,
    region: String,
    admin_email: Option<String>,
    /// `TenantLimits` in JSON.
    limits: String,
    state: String,
    failure_step: Option<String>,
    failure_reason: Option<String>,
    failure_undone: bool,
    purge_requested: bool,
    last_error: Option<String>,
    version: i64,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    provisioned_at: Option<OffsetDateTime>,
}

/// The columns of `tenants`, as a literal so that `concat!` can build
/// `&'static` statements from it.
macro_rules! tenant_columns {
    () => {
        "id, name, plan, isolation, region, admin_email, limits, state, failure_step, \
         failure_reason, failure_undone, purge_requested, last_error, version, created_at, \
         updated_at, provisioned_at"
    };
}
pub(crate) use tenant_columns;

/// A tenant's limits as the `limits` column holds them.
pub(crate) fn limits_json(limits: &TenantLimits) -> String {
    // A struct of options and numbers always serialises.
    serde_json::to_string(limits).unwrap_or_else(|_| "{}".to_owned())
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {err}"))
}

impl TryFrom<TenantRow> for Tenant {
    type Error = StoreError;

    fn try_from(row: TenantRow) -> Result<Self, StoreError> {
        let failure = match (row.failure_step, row.failure_reason) {
            (Some(step), Some(reason)) => {
                Some(Failure { step, reason, undone: row.failure_undone })
            }
            _ => None,
        };
        let limits: TenantLimits =
            serde_json::from_str(&row.limits).map_err(|e| corrupt("tenant limits", e))?;
        limits.validate().map_err(|e| corrupt("tenant limits", e))?;
        Ok(Tenant {
            id: TenantId(row.id),
            name: TenantName::parse_stored(&row.name).map_err(|e| corrupt("tenant name", e))?,
            plan: PlanName::parse(&row.plan).map_err(|e| corrupt("plan", e))?,
            isolation: row.isolation.parse().map_err(|e| corrupt("isolation", e))?,
            region: RegionName::parse(&row.region).map_err(|e| corrupt("region", e))?,
            admin_email: row
                .admin_email
                .map(|e| AdminEmail::parse(&e))
                .transpose()
                .map_err(|e| corrupt("admin email", e))?,
            limits,
            state: row.state.parse().map_err(|e| corrupt("state", e))?,
            failure,
            purge_requested: row.purge_requested,
            last_error: row.last_error,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
            provisioned_at: row.provisioned_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StepRow {
    step: String,
    status: String,
    output: Option<Json<serde_json::Value>>,
    updated_at: OffsetDateTime,
}

impl TryFrom<StepRow> for StepRecord {
    type Error = StoreError;

    fn try_from(row: StepRow) -> Result<Self, StoreError> {
        Ok(StepRecord {
            status: row.status.parse().map_err(|e| corrupt("step status", e))?,
            step: row.step,
            output: row.output.map(|Json(v)| v),
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TokenRow {
    id: Uuid,
    name: String,
    token_hash: Vec<u8>,
    created_at: OffsetDateTime,
}

impl TryFrom<TokenRow> for OperatorToken {
    type Error = StoreError;

    fn try_from(row: TokenRow) -> Result<Self, StoreError> {
        Ok(OperatorToken {
            id: row.id,
            token_hash: row
                .token_hash
                .try_into()
                .map_err(|_| StoreError::Corrupt("operator token hash is not 32 bytes".into()))?,
            name: row.name,
            created_at: row.created_at,
        })
    }
}
