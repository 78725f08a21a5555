//! Tenant databases: where each tenant's application data lives, and the
//! boundary that keeps it the tenant's.
//!
//! - [`sqlite`]: the embedded default, a file per tenant in its directory.
//! - [`silo`]: a PostgreSQL database per tenant, owned by a role of its
//!   own, closed to everyone else.
//! - [`pool`]: one shared PostgreSQL database per region, where every row
//!   carries its tenant and row-level security lets a session see only the
//!   rows of the tenant its *login* belongs to (not of a setting the
//!   session could change).
//!
//! [`RegionServers`] holds the administrative connections to each region's
//! PostgreSQL server that all of these use, and the vault's leases too.

pub mod dump;
mod login;
pub mod migrate;
pub mod names;
pub mod pool;
pub mod restore;
mod servers;
pub mod silo;
mod sql;
pub mod sqlite;
pub mod verify;

pub use names::{PoolNames, PoolTenantRoles, SiloNames};
pub use servers::{RegionDatabases, RegionServers};

/// Why a tenant database could not be made, changed or removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Might work on another attempt: a server that is down, a lock
    /// timeout.
    #[error("{0}")]
    Transient(String),
    /// Will fail the same way every time until the configuration changes.
    #[error("{0}")]
    Permanent(String),
}

impl Error {
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Permanent(_))
    }
}

impl From<bulkhead_vault::VaultError> for Error {
    fn from(error: bulkhead_vault::VaultError) -> Self {
        Error::Transient(error.to_string())
    }
}
