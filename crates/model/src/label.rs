//! Names that end up in hostnames, directory names and database identifiers.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

/// Names a tenant may not take: they collide with hostnames the platform
/// itself serves under the base domain, or with words that confuse operators.
pub const RESERVED_TENANT_NAMES: &[&str] = &[
    "admin",
    "api",
    "app",
    "assets",
    "auth",
    "bulkhead",
    "cdn",
    "console",
    "control",
    "default",
    "docs",
    "gateway",
    "health",
    "help",
    "internal",
    "localhost",
    "login",
    "mail",
    "metrics",
    "null",
    "operator",
    "platform",
    "realms",
    "root",
    "static",
    "status",
    "support",
    "system",
    "www",
];

const TENANT_NAME_RULE: &str = "tenant names are DNS labels: 3 to 40 characters of a-z, 0-9 and \
                                '-', starting and ending with a letter or digit";

/// Why a string is not a valid tenant name. Every message states the rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TenantNameError {
    #[error("tenant name {name:?} is {len} characters long; {TENANT_NAME_RULE}")]
    Length { name: String, len: usize },
    #[error("tenant name {name:?} contains {found:?}; {TENANT_NAME_RULE}")]
    Character { name: String, found: char },
    #[error("tenant name {name:?} starts or ends with '-'; {TENANT_NAME_RULE}")]
    Hyphen { name: String },
    #[error(
        "tenant name {name:?} has '--' in its third and fourth characters, which DNS reserves \
         for internationalised names; choose another name"
    )]
    Idna { name: String },
    #[error("tenant name {name:?} is reserved for the platform; choose another name")]
    Reserved { name: String },
}

/// A tenant's name: a DNS label that becomes its subdomain, its directory and
/// part of its database names, so it is validated once, here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, min_length = 3, max_length = 40, pattern = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", example = "acme")]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(name: &str) -> Result<Self, TenantNameError> {
        let shaped = Self::parse_stored(name)?;
        if RESERVED_TENANT_NAMES.contains(&name) {
            return Err(TenantNameError::Reserved { name: shaped.0 });
        }
        Ok(shaped)
    }

    /// A name read back from storage: checked for shape only, so that a
    /// word reserved after the tenant took it does not make its record
    /// unreadable.
    pub fn parse_stored(name: &str) -> Result<Self, TenantNameError> {
        let len = name.chars().count();
        let owned = || name.to_owned();
        if !(3..=40).contains(&len) {
            return Err(TenantNameError::Length { name: owned(), len });
        }
        if let Some(found) =
            name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(TenantNameError::Character { name: owned(), found });
        }
        if name.starts_with('-') || name.ends_with('-') {
            return Err(TenantNameError::Hyphen { name: owned() });
        }
        if name.get(2..4) == Some("--") {
            return Err(TenantNameError::Idna { name: owned() });
        }
        Ok(Self(owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TenantName {
    type Error = TenantNameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TenantName> for String {
    fn from(value: TenantName) -> Self {
        value.0
    }
}

/// 1 to 40 characters of a-z, 0-9 and '-', not starting or ending with '-':
/// the shape of region and plan names.
pub(crate) fn is_simple_label(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A region's name, e.g. `eu-west`: 1 to 40 characters of a-z, 0-9 and '-'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "local")]
pub struct RegionName(String);

/// The region every installation has unless it configures its own.
impl Default for RegionName {
    fn default() -> Self {
        Self("local".to_owned())
    }
}

impl RegionName {
    pub fn parse(name: &str) -> Result<Self, String> {
        if is_simple_label(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "region name {name:?} is invalid; region names are 1 to 40 characters of a-z, 0-9 \
                 and '-', starting and ending with a letter or digit"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RegionName {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<RegionName> for String {
    fn from(value: RegionName) -> Self {
        value.0
    }
}

/// The domain tenants' subdomains hang under: tenant `acme` on base domain
/// `saas.example.com` is served at `acme.saas.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseDomain(String);

impl BaseDomain {
    /// Accepts a DNS name (labels of a-z, 0-9 and '-', at most 253
    /// characters), case-insensitively, with or without a trailing dot.
    pub fn parse(domain: &str) -> Result<Self, String> {
        let normalised = domain.trim_end_matches('.').to_ascii_lowercase();
        let valid = (1..=253).contains(&normalised.len())
            && normalised.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if valid {
            Ok(Self(normalised))
        } else {
            Err(format!(
                "base domain {domain:?} is not a DNS name; expected something like \
                 saas.example.com"
            ))
        }
    }

    /// The tenant's own hostname.
    pub fn tenant_host(&self, tenant: &TenantName) -> String {
        format!("{tenant}.{}", self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for BaseDomain {
    /// `localhost`: `acme.localhost` resolves to the loopback address in
    /// browsers and curl without any DNS setup.
    fn default() -> Self {
        Self("localhost".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for name in ["acme", "a1b", "acme-corp", "123", &"a".repeat(40), "x-y-z"] {
            assert_eq!(TenantName::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        for name in ["", "ab", &"a".repeat(41)] {
            let err = TenantName::parse(name).unwrap_err();
            assert!(matches!(err, TenantNameError::Length { .. }), "{name}: {err}");
            assert!(err.to_string().contains("3 to 40 characters"), "{err}");
        }
    }

    #[test]
    fn rejects_characters_outside_the_label_alphabet() {
        for (name, found) in [
            ("Acme", 'A'),
            ("ac_me", '_'),
            ("acme.io", '.'),
            ("acmé", 'é'),
            ("ac me", ' '),
            ("acme\0", '\0'),
            ("../x", '.'),
        ] {
            assert_eq!(
                TenantName::parse(name).unwrap_err(),
                TenantNameError::Character { name: name.into(), found }
            );
        }
    }

    #[test]
    fn rejects_edge_hyphens_and_idna_prefix() {
        assert!(matches!(TenantName::parse("-acme"), Err(TenantNameError::Hyphen { .. })));
        assert!(matches!(TenantName::parse("acme-"), Err(TenantNameError::Hyphen { .. })));
        assert!(matches!(TenantName::parse("xn--acme"), Err(TenantNameError::Idna { .. })));
        assert!(TenantName::parse("acme--corp").is_ok());
    }

    #[test]
    fn rejects_reserved_names() {
        for name in ["www", "api", "admin", "console", "realms", "bulkhead", "default"] {
            let err = TenantName::parse(name).unwrap_err();
            assert_eq!(err, TenantNameError::Reserved { name: name.into() });
            assert!(err.to_string().contains("reserved"));
        }
    }

    #[test]
    fn stored_names_are_checked_for_shape_only() {
        assert_eq!(TenantName::parse_stored("admin").unwrap().as_str(), "admin");
        assert!(TenantName::parse_stored("Admin").is_err());
    }

    #[test]
    fn deserialisation_validates() {
        assert!(serde_json::from_str::<TenantName>("\"acme\"").is_ok());
        let err = serde_json::from_str::<TenantName>("\"WWW\"").unwrap_err();
        assert!(err.to_string().contains("DNS labels"), "{err}");
    }

    #[test]
    fn base_domains() {
        let domain = BaseDomain::parse("SaaS.Example.com.").unwrap();
        assert_eq!(domain.as_str(), "saas.example.com");
        let acme = TenantName::parse("acme").unwrap();
        assert_eq!(domain.tenant_host(&acme), "acme.saas.example.com");
        for bad in ["", "a..b", "-a.com", "a_b.com", "a b.com", &"a".repeat(64)] {
            assert!(BaseDomain::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(BaseDomain::default().tenant_host(&acme), "acme.localhost");
    }

    #[test]
    fn region_names() {
        assert!(RegionName::parse("eu-west-1").is_ok());
        assert!(RegionName::parse("EU").is_err());
        assert!(RegionName::parse("").is_err());
        assert_eq!(RegionName::default().as_str(), "local");
    }
}
