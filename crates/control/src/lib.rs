//! Bulkhead's control plane: the HTTP API that records what tenants should
//! exist, and the reconciler that makes it so.
//!
//! A command (create, suspend, delete) is validated and recorded in the
//! control store as desired state, then answered; the [`reconciler`]
//! converges the world to it through an ordered list of idempotent
//! [`provision`] steps, recording progress per step so that a crash at any
//! moment resumes where it stopped. Later capabilities plug in as further
//! steps and further API routes.

pub mod admission;
pub mod api;
pub mod apis;
pub mod apps;
pub mod audit;
pub mod backups;
pub mod budget;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod data_dir;
pub mod events;
pub mod gateway;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod migrations;
pub mod operator_token;
pub mod provider_keys;
pub mod provision;
pub mod realms;
pub mod reconciler;
pub mod resources;
pub mod rollouts;
pub mod runtime;
pub mod server;
pub mod tenants;
pub mod usage;
pub mod vault;
pub mod verify;

pub use config::{Config, ReconcilerSettings};
pub use server::{
    RunningGateway, RunningServer, StartError, start, start_gateway, start_with_steps,
};
