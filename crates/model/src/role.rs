//! Roles inside a tenant, and what each may do. The table is documented in
//! `docs/identity.md`; this is where it is enforced, for the control API
//! and the gateway alike.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A role a principal holds in one tenant, highest first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Analyst,
    Viewer,
}

/// Something a tenant-scoped principal may be allowed to do to its own
/// tenant. Operators may do everything to every tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// See the tenant, its key status and its secret, lease and API key
    /// lists (never values).
    Read,
    /// Read secret values; issue read-only database credentials.
    ReadSecrets,
    /// Write and delete secrets, issue write credentials, revoke leases,
    /// rotate and rewrap keys, mint tokens, manage API keys.
    Manage,
    /// Bring or forget the tenant's own key; trust an external identity
    /// provider.
    Own,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Analyst, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Analyst => "analyst",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str().eq_ignore_ascii_case(name))
    }

    pub fn allows(self, permission: Permission) -> bool {
        match permission {
            Permission::Read => true,
            Permission::ReadSecrets => self <= Role::Analyst,
            Permission::Manage => self <= Role::Admin,
            Permission::Own => self == Role::Owner,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether any of `roles` allows `permission`.
pub fn allows(roles: &[Role], permission: Permission) -> bool {
    roles.iter().any(|r| r.allows(permission))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_permission_table() {
        use Permission::*;
        let table = [
            (Role::Owner, [true, true, true, true]),
            (Role::Admin, [true, true, true, false]),
            (Role::Analyst, [true, true, false, false]),
            (Role::Viewer, [true, false, false, false]),
        ];
        for (role, expected) in table {
            let got = [Read, ReadSecrets, Manage, Own].map(|p| role.allows(p));
            assert_eq!(got, expected, "{role}");
        }
        assert!(!allows(&[], Read));
        assert_eq!(Role::parse("Admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }
}
