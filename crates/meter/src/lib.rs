//! Bulkhead's meter: what the gateway consults and reports on every request.
//!
//! - [`gcra`]: per-tenant rate limits as one atomic word per (tenant, API)
//!   cell, checked without a lock or an allocation.
//! - [`Limiter`]: what the gateway calls: those limits kept in this process,
//!   or shared by every gateway replica through Redis (one atomic Lua script
//!   per decision) with a fallback when Redis cannot answer in time.
//! - [`budget`]: each tenant's model spend this month against its cost
//!   caps, reserved before a call and settled after it, in this process or
//!   through the same Redis.
//! - [`usage`]: request events queued without waiting, summed per tenant,
//!   API and minute off the request path, and handed to the control plane.
//!
//! Nothing here reads the wall clock or the environment: time is a
//! parameter or a [`Clock`], configuration comes from the caller.

pub mod budget;
pub mod gcra;
mod limiter;
mod redis_limit;
pub mod usage;

use thiserror::Error;

pub use budget::{Budgets, Caps, Ledger, Period, Reservation, Spend};
pub use gcra::{Cell, Clock, Decision, Limit, Nanos, Verdict};
pub use limiter::{Fallback, LimitKey, Limiter, LimiterStats};
pub use redis_limit::RedisOptions;
pub use usage::{
    Aggregator, AggregatorStats, ModelTotals, ModelUse, Outcome, SubjectTotals, UsageEvent,
    UsageRecorder, UsageRow, UsageSink, take_batch,
};

#[derive(Debug, Error)]
pub enum MeterError {
    /// A rate or burst of 0, or a burst spanning more time than fits.
    #[error("invalid limit of {rate} per minute with a burst of {burst}: {reason}")]
    InvalidLimit { rate: u32, burst: u32, reason: &'static str },
    /// A malformed Redis URL, or a client that cannot be set up.
    #[error("redis client: {0}")]
    Redis(redis::RedisError),
}
