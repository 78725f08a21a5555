//! End-to-end tests: the real binary, on a free port, in a temporary data
//! directory, against real SQLite files and a real PostgreSQL server.
//! One test binary for the whole crate, to link once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::disallowed_methods
)]

mod access;
mod ai;
mod api;
mod apps;
mod audit;
mod audit_attacks;
mod backups;
mod bad_input;
mod crash;
mod gateway;
mod identity;
mod isolation;
mod kit;
mod lifecycle;
mod manifests;
mod migrate;
mod offboarding;
mod startup;
mod upstream;
mod vault;
