//! Bulkhead's meter: what the gateway consults and reports on every request.
//!
//! - [`gcra`]: per-tenant rate limits as one atomic word per (tenant, API)
//!   cell, checked without a lock or an allocation.
//! - [`usage`]: request events queued without waiting, summed per tenant,
//!   API and minute off the request path, and handed to the control plane.
//!
//! Nothing here reads the wall clock or the environment: time is a
//! parameter or a [`Clock`], configuration comes from the caller.

pub mod gcra;
pub mod usage;

use thiserror::Error;

pub use gcra::{Cell, Clock, Decision, Limit, Nanos, Verdict};
pub use usage::{
    Aggregator, AggregatorStats, Outcome, UsageEvent, UsageRecorder, UsageRow, UsageSink,
};

#[derive(Debug, Error)]
pub enum MeterError {
    #[error("invalid limit of {rate} per minute with a burst of {burst}: {reason}")]
    InvalidLimit { rate: u32, burst: u32, reason: &'static str },
}
