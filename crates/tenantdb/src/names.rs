//! The names of tenants' databases and roles on a region's server.
//!
//! Names carry the region's prefix, the tenant's name and the first eight
//! hex digits of its id (`bh_acme_1f3c9a2e`), so that a tenant recreated
//! under an old name, or another installation sharing the server, never
//! adopts someone else's database or role. Every name is `[a-z0-9_]` and at
//! most 63 bytes, PostgreSQL's identifier limit, so it can be quoted into
//! DDL as it is.

use bulkhead_model::{Region, Tenant};

/// The names of a silo tenant's database and roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiloNames {
    /// At most 8 + 40 + 1 + 8 = 57 bytes.
    pub database: String,
    /// `<database>_owner`: owns the database and everything in it.
    pub owner: String,
    /// `<database>_read`: `SELECT` on what the owner creates in `public`.
    pub reader: String,
}

impl SiloNames {
    pub fn of(region: &Region, tenant: &Tenant) -> Self {
        let database = tenant_stem(region, tenant);
        Self { owner: format!("{database}_owner"), reader: format!("{database}_read"), database }
    }
}

/// The names in a region's shared pool database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolNames {
    /// `<prefix>pool`.
    pub database: String,
    /// `<prefix>pool_owner`: owns the database, its schemas and tables;
    /// migrations run as it. No application logs in as it.
    pub owner: String,
    /// `<prefix>pool_write`: the privileges every tenant's write role
    /// inherits (`SELECT`, `INSERT`, `UPDATE`, `DELETE` on tenant tables).
    pub writers: String,
    /// `<prefix>pool_read`: `SELECT` on tenant tables.
    pub readers: String,
}

impl PoolNames {
    pub fn of(region: &Region) -> Self {
        let database = format!("{}pool", region.database_prefix.as_str());
        Self {
            owner: format!("{database}_owner"),
            writers: format!("{database}_write"),
            readers: format!("{database}_read"),
            database,
        }
    }
}

/// A pool tenant's own roles, which its leases are members of. They hold
/// no privilege of their own (those come from the pool's groups): what
/// binds them to the tenant is the pool's mapping of role to tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTenantRoles {
    /// `<stem>_write`, a member of the pool's writers.
    pub writer: String,
    /// `<stem>_read`, a member of the pool's readers.
    pub reader: String,
}

impl PoolTenantRoles {
    pub fn of(region: &Region, tenant: &Tenant) -> Self {
        let stem = tenant_stem(region, tenant);
        Self { writer: format!("{stem}_write"), reader: format!("{stem}_read") }
    }
}

/// `<prefix><name with _ for ->_<first 8 hex digits of the id>`.
fn tenant_stem(region: &Region, tenant: &Tenant) -> String {
    format!(
        "{}{}_{}",
        region.database_prefix.as_str(),
        tenant.name.as_str().replace('-', "_"),
        tenant.id.short()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_model::{
        DatabaseLocation, DatabasePrefix, Isolation, NewTenant, PlanName, RegionName, TenantId,
        TenantName,
    };
    use time::OffsetDateTime;

    #[test]
    fn names_fit_postgres_limits() {
        let region = Region::new(
            RegionName::default(),
            DatabaseLocation::Embedded,
            Some(DatabasePrefix::parse("staging_").unwrap()),
        );
        let tenant = Tenant::new(
            NewTenant {
                id: TenantId::random(),
                name: TenantName::parse(&format!("a-{}", "b".repeat(38))).unwrap(),
                plan: PlanName::parse("enterprise").unwrap(),
                isolation: Isolation::Silo,
                region: RegionName::default(),
                admin_email: None,
                limits: bulkhead_model::TenantLimits::default(),
            },
            OffsetDateTime::UNIX_EPOCH,
        );
        let silo = SiloNames::of(&region, &tenant);
        assert!(silo.database.starts_with("staging_a_bbb"));
        let pool = PoolNames::of(&region);
        let roles = PoolTenantRoles::of(&region, &tenant);
        for name in [
            &silo.database,
            &silo.owner,
            &silo.reader,
            &pool.database,
            &pool.owner,
            &pool.writers,
            &pool.readers,
            &roles.writer,
            &roles.reader,
        ] {
            assert!(name.len() <= 63, "{name} is {} bytes", name.len());
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
    }
}
