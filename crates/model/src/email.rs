//! The tenant administrator's email address.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "admin email {0:?} is not an address of the form name@example.com (at most 254 characters, \
     no spaces)"
)]
pub struct AdminEmailError(pub String);

/// An address that will receive the tenant's owner invitation once identity
/// realms exist. Only the shape is checked: deliverability is the mail
/// server's business, and full RFC 5322 parsing rejects nothing useful here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, format = Email, example = "ops@acme.example")]
pub struct AdminEmail(String);

impl AdminEmail {
    pub fn parse(value: &str) -> Result<Self, AdminEmailError> {
        let well_formed = value.len() <= 254
            && !value.chars().any(|c| c.is_whitespace() || c.is_control())
            && match value.rsplit_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && local.len() <= 64
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !domain.contains('@')
                }
                None => false,
            };
        if well_formed {
            Ok(Self(value.to_owned()))
        } else {
            Err(AdminEmailError(value.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AdminEmail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AdminEmail {
    type Error = AdminEmailError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<AdminEmail> for String {
    fn from(value: AdminEmail) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        for ok in ["ops@acme.example", "a.b+c@sub.acme.io"] {
            assert!(AdminEmail::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "acme", "@acme.io", "ops@", "ops@localhost", "o ps@acme.io", "ops@.io"] {
            assert!(AdminEmail::parse(bad).is_err(), "{bad}");
        }
        let long = format!("{}@acme.io", "a".repeat(250));
        assert!(AdminEmail::parse(&long).is_err());
    }
}
