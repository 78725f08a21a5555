//! A silo tenant on PostgreSQL: a database and a `NOLOGIN` owner role of
//! its own, with `CONNECT` revoked from `PUBLIC`, and a `NOLOGIN` read-only
//! role (`SELECT` on what the owner creates in `public`). The vault's
//! leases are login roles that are members of one of the two.

use bulkhead_model::{DatabaseUrl, Region, Tenant};
use bulkhead_vault::leases::{drop_role, reopen_database, roll_back_prepared};
use serde_json::json;

use crate::{
    Error, RegionServers, SiloNames,
    sql::{
        DATABASE_CONNECTABLE, DATABASE_EXISTS, DUPLICATE_DATABASE, ddl, ensure_role, exists,
        join_role,
    },
};

/// Creates what is missing of the tenant's database and roles; run again
/// after a crash at any point, it finishes the work.
pub async fn create(
    servers: &RegionServers,
    region: &Region,
    url: &DatabaseUrl,
    tenant: &Tenant,
) -> Result<serde_json::Value, Error> {
    let pool = servers.pool(&region.name, url)?;
    let SiloNames { database, owner, reader } = SiloNames::of(region, tenant);
    ensure_role(&pool, &owner).await?;
    join_role(&pool, &owner).await?;
    if !exists(&pool, DATABASE_EXISTS, &database).await? {
        let create = format!("CREATE DATABASE \"{database}\" OWNER \"{owner}\"");
        ddl(&pool, create, Some(DUPLICATE_DATABASE)).await?;
    }
    // Repeated on every run: a crash may have come between CREATE and these.
    ddl(&pool, format!("REVOKE ALL ON DATABASE \"{database}\" FROM PUBLIC"), None).await?;
    let comment = format!(
        "COMMENT ON DATABASE \"{database}\" IS 'bulkhead tenant {} ({})'",
        tenant.name, tenant.id
    );
    ddl(&pool, comment, None).await?;
    ensure_role(&pool, &reader).await?;
    join_role(&pool, &reader).await?;
    ddl(&pool, format!("GRANT CONNECT ON DATABASE \"{database}\" TO \"{reader}\""), None).await?;
    let inside = servers.database_pool(&region.name, url, &database).await?;
    for grant in [
        // PostgreSQL 15's default, made explicit for older servers.
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_owned(),
        format!("GRANT USAGE ON SCHEMA public TO \"{reader}\""),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{reader}\""),
        format!(
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"{owner}\" IN SCHEMA public \
             GRANT SELECT ON TABLES TO \"{reader}\""
        ),
    ] {
        ddl(&inside, grant, None).await?;
    }
    inside.close().await;
    Ok(json!({
        "engine": "postgres",
        "isolation": "silo",
        "database": database,
        "owner_role": owner,
        "read_role": reader,
    }))
}

/// Drops the tenant's database and roles, whatever of them exists.
pub async fn drop(
    servers: &RegionServers,
    region: &Region,
    url: &DatabaseUrl,
    tenant: &Tenant,
) -> Result<(), Error> {
    let pool = servers.pool(&region.name, url)?;
    let SiloNames { database, owner, reader } = SiloNames::of(region, tenant);
    // A prepared transaction outlives its session and would keep the
    // database from being dropped; nobody can commit it once the tenant is
    // going. It can only be finished from inside its database.
    if exists(&pool, DATABASE_CONNECTABLE, &database).await? {
        reopen_database(&pool, &database).await?;
        let inside = servers.database_pool(&region.name, url, &database).await?;
        let rolled_back = roll_back_prepared(&inside).await;
        inside.close().await;
        rolled_back?;
    }
    // A template cannot be dropped; the tenant's owner role can make its
    // database one.
    reopen_database(&pool, &database).await?;
    // FORCE ends the tenant's open sessions, which would otherwise keep the
    // database alive.
    ddl(&pool, format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"), None).await?;
    // Other tenants may have granted to these roles in their own databases:
    // `drop_role` clears that wherever it is.
    let databases = servers.databases(&region.name, url);
    for role in [&reader, &owner] {
        drop_role(&pool, &databases, role, None).await?;
    }
    Ok(())
}
