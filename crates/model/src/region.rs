//! Regions: where a tenant's database lives.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

use crate::{Isolation, RegionName};

/// A PostgreSQL connection URL. It may carry a password, so it never prints
/// itself: `Display` and `Debug` show it with the password replaced.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self(url.to_owned()))
        } else {
            Err(format!(
                "database url {} is not a PostgreSQL url; expected postgres://user@host:port/database",
                redact_url(url)
            ))
        }
    }

    /// The URL with its password, for the one call that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

/// Replaces the password of `scheme://user:password@host/...` and any
/// `password=` query parameter with `***`, so a URL can go into errors and
/// logs. A password may hold unencoded `/`, `?`, `#` or `@`, so everything
/// between the first `:` after the scheme and the last `@` is treated as
/// password: this can hide more than the password, never less.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let start = scheme_end + 3;
        if let Some(at) = out[start..].rfind('@')
            && let Some(colon) = out[start..start + at].find(':')
        {
            out.replace_range(start + colon + 1..start + at, "***");
        }
    }
    if let Some(query_start) = out.find('?') {
        let (base, query) = out.split_at(query_start + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{base}{}", redacted.join("&"));
    }
    out
}

/// Where a region's tenant databases live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// SQLite files in each tenant's directory under the data directory.
    Embedded,
    /// Databases on a PostgreSQL server, reached as a role that may create
    /// databases and roles.
    Postgres(DatabaseUrl),
}

/// Prepended to every database and role Bulkhead creates on a region's
/// server, so that several installations can share one server and an
/// operator can tell Bulkhead's objects from others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabasePrefix(String);

impl DatabasePrefix {
    /// Long enough to tell installations apart, short enough that prefix, a
    /// 40-character tenant name and a unique suffix fit PostgreSQL's
    /// 63-byte identifiers.
    pub const MAX_LEN: usize = 8;

    pub fn parse(prefix: &str) -> Result<Self, String> {
        let valid = (1..=Self::MAX_LEN).contains(&prefix.len())
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Self(prefix.to_owned()))
        } else {
            Err(format!(
                "database prefix {prefix:?} is invalid; it must be 1 to {} characters of a-z, 0-9 \
                 and '_', starting with a letter",
                Self::MAX_LEN
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for DatabasePrefix {
    fn default() -> Self {
        Self("bh_".to_owned())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub name: RegionName,
    pub databases: DatabaseLocation,
    pub database_prefix: DatabasePrefix,
}

impl Region {
    pub fn new(
        name: RegionName,
        databases: DatabaseLocation,
        database_prefix: Option<DatabasePrefix>,
    ) -> Self {
        Self { name, databases, database_prefix: database_prefix.unwrap_or_default() }
    }

    pub fn supports(&self, isolation: Isolation) -> bool {
        match self.databases {
            DatabaseLocation::Embedded => isolation == Isolation::Silo,
            DatabaseLocation::Postgres(_) => true,
        }
    }

    /// What the API shows about a region: never its server's credentials.
    pub fn summary(&self) -> RegionSummary {
        RegionSummary {
            name: self.name.to_string(),
            databases: match &self.databases {
                DatabaseLocation::Embedded => "embedded".to_owned(),
                DatabaseLocation::Postgres(_) => "postgres".to_owned(),
            },
            isolation: Isolation::ALL.into_iter().filter(|i| self.supports(*i)).collect(),
        }
    }
}

/// A region as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegionSummary {
    pub name: String,
    /// `embedded` (SQLite files in the data directory) or `postgres`.
    pub databases: String,
    /// The isolation models tenants in this region can have.
    pub isolation: Vec<Isolation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegionError {
    #[error("region `{0}` is configured twice; region names must be unique")]
    Duplicate(String),
    #[error("no regions are configured; configure at least one or leave regions out")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown region {name:?}; valid regions: {}", valid.join(", "))]
pub struct UnknownRegion {
    pub name: String,
    pub valid: Vec<String>,
}

/// The configured regions; the first is where tenants go when they do not
/// name one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regions {
    regions: Vec<Region>,
}

impl Regions {
    pub fn new(regions: Vec<Region>) -> Result<Self, RegionError> {
        if regions.is_empty() {
            return Err(RegionError::Empty);
        }
        for (i, region) in regions.iter().enumerate() {
            if regions[..i].iter().any(|r| r.name == region.name) {
                return Err(RegionError::Duplicate(region.name.to_string()));
            }
        }
        Ok(Self { regions })
    }

    /// One region named `local` whose tenant databases live at `databases`.
    pub fn single(databases: DatabaseLocation) -> Self {
        Self { regions: vec![Region::new(RegionName::default(), databases, None)] }
    }

    pub fn all(&self) -> &[Region] {
        &self.regions
    }

    pub fn default_region(&self) -> &Region {
        // `new` and `single` guarantee at least one region.
        &self.regions[0]
    }

    pub fn get(&self, name: &str) -> Result<&Region, UnknownRegion> {
        self.regions.iter().find(|r| r.name.as_str() == name).ok_or_else(|| UnknownRegion {
            name: name.to_owned(),
            valid: self.regions.iter().map(|r| r.name.to_string()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=secret&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://u:p@ss@h/db"), "postgres://u:***@h/db");
        for password in ["p/ss", "p?ss", "p#ss", "p:ss"] {
            let url = format!("postgres://u:{password}@h:5432/db");
            assert_eq!(redact_url(&url), "postgres://u:***@h:5432/db", "{password}");
        }
        let url = DatabaseUrl::parse("postgres://u:secret@h/db").unwrap();
        assert!(!format!("{url} {url:?}").contains("secret"));
        assert_eq!(url.expose(), "postgres://u:secret@h/db");
    }

    #[test]
    fn rejects_non_postgres_urls_without_echoing_passwords() {
        let err = DatabaseUrl::parse("mysql://u:secret@h/db").unwrap_err();
        assert!(err.contains("not a PostgreSQL url") && !err.contains("secret"), "{err}");
    }

    #[test]
    fn prefixes() {
        assert!(DatabasePrefix::parse("bh_").is_ok());
        assert!(DatabasePrefix::parse("staging_").is_ok());
        for bad in ["", "Bh", "_bh", "toolongprefix", "bh-"] {
            assert!(DatabasePrefix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn regions_lookup() {
        let regions = Regions::single(DatabaseLocation::Embedded);
        assert_eq!(regions.default_region().name.as_str(), "local");
        let err = regions.get("mars").unwrap_err();
        assert_eq!(err.to_string(), "unknown region \"mars\"; valid regions: local");
        let twice = vec![regions.default_region().clone(), regions.default_region().clone()];
        assert_eq!(Regions::new(twice), Err(RegionError::Duplicate("local".into())));
        assert_eq!(Regions::new(vec![]), Err(RegionError::Empty));
    }
}
