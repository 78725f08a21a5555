//! Reads: a model call's meter (the most the call can cost) and its
//! tenant's cost caps. Adds: the call's reservation of the tenant's budget
//! for the month, settled when its record is sent; or a refusal before the
//! upstream, 402 `budget_exhausted`, when the reservation could take the
//! month's spend past the hard cap. Past the soft cap the response carries
//! `Bulkhead-Budget-Warning`, and the tenant's stream is told (once per
//! month in this process; the control plane records it once in all).

use bulkhead_meter::{Budgets, Spend};
use http::{HeaderName, HeaderValue};

use crate::{
    error::{Code, Phase, Refusal},
    llm::Meter,
    record::BudgetNotice,
    snapshot::TenantEntry,
};

/// Says the tenant's spend this month passed its soft cap:
/// `soft-cap; period=2026-12; spent-micros=…; soft-micros=…; hard-micros=…`.
pub const BUDGET_WARNING: HeaderName = HeaderName::from_static("bulkhead-budget-warning");

/// A model call admitted by the tenant's budget.
#[derive(Debug)]
pub struct Charged {
    pub reservation: bulkhead_meter::Reservation,
    /// For the response, past the soft cap.
    pub warning: Option<HeaderValue>,
    /// For the tenant's stream, the first time past the soft cap.
    pub notice: Option<BudgetNotice>,
}

/// Reserves what the call can cost from the tenant's budget for the month
/// of `at` (unix seconds).
pub async fn reserve(
    budgets: &Budgets,
    tenant: &TenantEntry,
    meter: &Meter,
    at: i64,
) -> Result<Charged, Refusal> {
    let at =
        time::OffsetDateTime::from_unix_timestamp(at).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let caps = tenant.budget;
    let fallback = tenant.limits.limiter_fallback;
    let most = meter.most();
    let reservation = match budgets.reserve(tenant.id, caps, most, at, fallback).await {
        Spend::Reserved(reservation) => reservation,
        Spend::Exhausted { spent } => {
            return Err(Refusal::new(
                Phase::Meter,
                Code::BudgetExhausted,
                format!(
                    "{} micro-units spent this month of a hard cap of {}; the call could cost {}",
                    spent, caps.hard_micros, most
                ),
            ));
        }
        Spend::Unavailable => {
            return Err(Refusal::new(
                Phase::Meter,
                Code::BudgetUnavailable,
                "the budget's counter or ledger cannot be read",
            ));
        }
    };
    let (period, spent) = (reservation.period, reservation.spent);
    if spent < caps.soft_micros {
        return Ok(Charged { reservation, warning: None, notice: None });
    }
    let warning = HeaderValue::try_from(format!(
        "soft-cap; period={period}; spent-micros={spent}; soft-micros={}; hard-micros={}",
        caps.soft_micros, caps.hard_micros
    ))
    .ok();
    let notice = budgets.first_notice(tenant.id, period).then(|| BudgetNotice {
        period: period.to_string(),
        spent_micros: spent,
        soft_micros: caps.soft_micros,
        hard_micros: caps.hard_micros,
    });
    Ok(Charged { reservation, warning, notice })
}
