//! How a tenant's data is separated from other tenants' data.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

use crate::{Plan, Region};

/// `silo` gives a tenant its own database; `pool` puts it in the region's
/// shared database behind row-level security bound to its own role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Pool,
    Silo,
}

impl Isolation {
    pub const ALL: [Isolation; 2] = [Isolation::Pool, Isolation::Silo];

    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Pool => "pool",
            Isolation::Silo => "silo",
        }
    }

    /// The isolation a new tenant gets: the one it asked for, else its plan's
    /// default. A region whose databases are embedded SQLite files can only
    /// hold silos, so a plan's `pool` default falls back to `silo` there,
    /// while an explicit request for `pool` is refused rather than silently
    /// changed.
    pub fn resolve(
        requested: Option<Isolation>,
        plan: &Plan,
        region: &Region,
    ) -> Result<Isolation, IsolationError> {
        match requested {
            Some(isolation) if region.supports(isolation) => Ok(isolation),
            Some(isolation) => {
                Err(IsolationError::Unsupported { isolation, region: region.name.to_string() })
            }
            None if region.supports(plan.default_isolation) => Ok(plan.default_isolation),
            None => Ok(Isolation::Silo),
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown isolation {0:?}; valid values: pool, silo")]
pub struct UnknownIsolation(pub String);

impl FromStr for Isolation {
    type Err = UnknownIsolation;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pool" => Ok(Isolation::Pool),
            "silo" => Ok(Isolation::Silo),
            other => Err(UnknownIsolation(other.to_owned())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IsolationError {
    #[error(
        "isolation `{isolation}` needs a PostgreSQL region, but region `{region}` keeps tenant \
         databases as SQLite files in the data directory, which only supports `silo`; start the \
         server with --store postgres://... or configure a region with a PostgreSQL url, or \
         leave --isolation out"
    )]
    Unsupported { isolation: Isolation, region: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DatabaseLocation, DatabaseUrl, PlanCatalog, RegionName};

    fn region(databases: DatabaseLocation) -> Region {
        Region::new(RegionName::default(), databases, None)
    }

    #[test]
    fn embedded_regions_only_hold_silos() {
        let plans = PlanCatalog::builtin();
        let professional = plans.get("professional").unwrap();
        let embedded = region(DatabaseLocation::Embedded);
        assert_eq!(Isolation::resolve(None, professional, &embedded), Ok(Isolation::Silo));
        assert_eq!(
            Isolation::resolve(Some(Isolation::Silo), professional, &embedded),
            Ok(Isolation::Silo)
        );
        let err = Isolation::resolve(Some(Isolation::Pool), professional, &embedded).unwrap_err();
        assert!(err.to_string().contains("needs a PostgreSQL region"), "{err}");
    }

    #[test]
    fn postgres_regions_follow_the_plan_or_the_request() {
        let plans = PlanCatalog::builtin();
        let pg = region(DatabaseLocation::Postgres(
            DatabaseUrl::parse("postgres://localhost/postgres").unwrap(),
        ));
        let starter = plans.get("starter").unwrap();
        let enterprise = plans.get("enterprise").unwrap();
        assert_eq!(Isolation::resolve(None, starter, &pg), Ok(Isolation::Pool));
        assert_eq!(Isolation::resolve(None, enterprise, &pg), Ok(Isolation::Silo));
        assert_eq!(Isolation::resolve(Some(Isolation::Silo), starter, &pg), Ok(Isolation::Silo));
        assert_eq!(Isolation::resolve(Some(Isolation::Pool), enterprise, &pg), Ok(Isolation::Pool));
    }

    #[test]
    fn parses() {
        assert_eq!("pool".parse::<Isolation>(), Ok(Isolation::Pool));
        assert!("bridge".parse::<Isolation>().unwrap_err().to_string().contains("pool, silo"));
    }
}
