//! Pool tenants on PostgreSQL: one shared database per region, where row
//! level security binds every row to the tenant of the session's *login*.
//!
//! - The database, its schemas and its tables belong to the pool's owner
//!   role, which migrations run as and no application logs in as.
//! - Each pool tenant has two `NOLOGIN` roles, a writer and a reader,
//!   members of the pool's writer and reader groups (which hold every
//!   privilege; the tenant roles hold none of their own). Its leases are
//!   login roles that are members of one of the two, as in a silo.
//! - `bulkhead.tenant_roles` maps each tenant role to its tenant; only the
//!   owner can read or change it. `bulkhead.current_tenant()` (`SECURITY
//!   DEFINER`, fixed `search_path`) returns the tenant of the role that
//!   `session_user` is a direct member of: `session_user` is the login, and
//!   nothing short of a superuser changes it. `SET ROLE`, `RESET ROLE` and
//!   `set_config` change `current_user` and settings, never the answer.
//! - Every table with a `tenant_id` column gets row level security enabled
//!   and forced (the owner too), one policy for all commands comparing the
//!   row's tenant with `current_tenant()` (`USING` and `WITH CHECK`), an
//!   index leading with `tenant_id`, and `current_tenant()` as the column's
//!   default, so applications may leave it out: see [`secure_tables`].
//! - Administrators (members of the owner role) are no tenant's: to act on
//!   one tenant's rows they set `bulkhead.tenant_id`, which is read for
//!   them only.

use bulkhead_model::{DatabaseUrl, Region, Tenant};
use bulkhead_vault::leases::drop_role;
use serde_json::json;
use sqlx::{AssertSqlSafe, PgPool, Postgres, Transaction};
use uuid::Uuid;

pub mod tables;

use crate::{
    Error, PoolNames, PoolTenantRoles, RegionServers,
    sql::{
        DATABASE_EXISTS, DUPLICATE_DATABASE, ddl, ddl_in, ensure_role, exists, join_role, transient,
    },
};

/// The schema of Bulkhead's own objects in the pool database.
pub const SCHEMA: &str = "bulkhead";
/// The column that names a row's tenant.
pub const TENANT_COLUMN: &str = "tenant_id";
/// The policy every tenant table gets.
pub const POLICY: &str = "bulkhead_tenant";
/// The setting through which an administrator acts on one tenant's rows.
pub const ADMIN_TENANT_SETTING: &str = "bulkhead.tenant_id";

/// Serialises changes to the pool's own objects (two tenants provisioned
/// at once would otherwise race to replace the same function).
const LOCK: i64 = 0x6275_6c6b_706f_6f6c; // "bulkpool"

/// Makes the pool database and its objects exist, as they should be: run
/// before anything that uses them, and again to repair them.
pub async fn ensure(
    servers: &RegionServers,
    region: &Region,
    url: &DatabaseUrl,
) -> Result<PoolNames, Error> {
    let names = PoolNames::of(region);
    let admin = servers.pool(&region.name, url)?;
    for role in [&names.owner, &names.writers, &names.readers] {
        ensure_role(&admin, role).await?;
    }
    join_role(&admin, &names.owner).await?;
    let PoolNames { database, owner, writers, readers } = &names;
    if !exists(&admin, DATABASE_EXISTS, database).await? {
        let create = format!("CREATE DATABASE \"{database}\" OWNER \"{owner}\"");
        ddl(&admin, create, Some(DUPLICATE_DATABASE)).await?;
    }
    // Pools made before tenants had roles belonged to the region's role.
    ddl(&admin, format!("ALTER DATABASE \"{database}\" OWNER TO \"{owner}\""), None).await?;
    // No TEMP: a tenant's temporary function or view would be its own code
    // running beside the others'.
    ddl(&admin, format!("REVOKE ALL ON DATABASE \"{database}\" FROM PUBLIC"), None).await?;
    let connect =
        format!("GRANT CONNECT ON DATABASE \"{database}\" TO \"{writers}\", \"{readers}\"");
    ddl(&admin, connect, None).await?;
    let comment =
        format!("COMMENT ON DATABASE \"{database}\" IS 'bulkhead pool of region {}'", region.name);
    ddl(&admin, comment, None).await?;

    let reference = format!("{SCHEMA}.{}", tables::REFERENCE);
    let inside = servers.database_pool(&region.name, url, database).await?;
    let result = async {
        let mut tx = as_owner(&inside, &names).await?;
        for statement in [
            format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA}"),
            format!("REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC"),
            format!("GRANT USAGE ON SCHEMA {SCHEMA} TO \"{writers}\", \"{readers}\""),
            // PostgreSQL 15's default, made explicit for older servers.
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_owned(),
            format!("GRANT USAGE ON SCHEMA public TO \"{writers}\", \"{readers}\""),
            format!(
                "CREATE TABLE IF NOT EXISTS {SCHEMA}.tenant_roles (\
                   role_name text COLLATE \"C\" PRIMARY KEY, tenant_id uuid NOT NULL)"
            ),
            format!("CREATE INDEX IF NOT EXISTS tenant_roles_tenant ON {SCHEMA}.tenant_roles (tenant_id)"),
            format!("REVOKE ALL ON {SCHEMA}.tenant_roles FROM PUBLIC"),
            current_tenant_function(owner),
            format!("REVOKE ALL ON FUNCTION {SCHEMA}.current_tenant() FROM PUBLIC"),
            format!(
                "GRANT EXECUTE ON FUNCTION {SCHEMA}.current_tenant() TO \"{writers}\", \"{readers}\""
            ),
            // Bound as every tenant table is: what the others are compared
            // with (see `tables`). Rebound each time, in case Bulkhead's
            // binding changed.
            format!("CREATE TABLE IF NOT EXISTS {reference} ({TENANT_COLUMN} uuid)"),
            format!("REVOKE ALL ON {reference} FROM PUBLIC"),
            format!("ALTER TABLE {reference} ENABLE ROW LEVEL SECURITY"),
            format!("ALTER TABLE {reference} FORCE ROW LEVEL SECURITY"),
            format!("DROP POLICY IF EXISTS {POLICY} ON {reference}"),
            policy_sql(&reference),
            default_sql(&reference),
        ] {
            ddl_in(&mut tx, statement).await?;
        }
        tx.commit().await.map_err(transient("cannot set up the pool database"))
    }
    .await;
    inside.close().await;
    result.map(|()| names)
}

/// `bulkhead.current_tenant()`: the tenant of the login, from the tenant
/// role it is a direct member of (a lease is exactly that); `NULL`, which
/// no row matches, for a login of no tenant or, should it ever happen, of
/// two. For members of the owner, the administrator's setting.
///
/// It runs once per statement, so it is kept cheap: PL/pgSQL, whose plans
/// last the session (a SQL function that cannot be inlined, as a `SECURITY
/// DEFINER` one cannot, is planned again for every statement), and two
/// index lookups: the login's memberships, then each role's tenant,
/// compared as bytes (`tenant_roles.role_name` is `COLLATE "C"`, as role
/// names are; under the database's collation the lookup could not use the
/// index and read the whole table).
fn current_tenant_function(owner: &str) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {SCHEMA}.current_tenant() RETURNS uuid \
         LANGUAGE plpgsql STABLE SECURITY DEFINER \
         SET search_path = pg_catalog, pg_temp \
         AS $body$ \
         DECLARE \
           low text; \
           high text; \
         BEGIN \
           IF pg_catalog.pg_has_role(session_user, '{owner}', 'MEMBER') THEN \
             RETURN nullif(pg_catalog.current_setting('{ADMIN_TENANT_SETTING}', true), '')::uuid; \
           END IF; \
           SELECT min(t.tenant_id::text), max(t.tenant_id::text) INTO low, high \
             FROM pg_catalog.pg_auth_members m \
             JOIN {SCHEMA}.tenant_roles t \
               ON t.role_name = pg_catalog.pg_get_userbyid(m.roleid)::text \
             WHERE m.member = pg_catalog.quote_ident(session_user)::regrole::oid; \
           RETURN CASE WHEN low = high THEN low::uuid END; \
         END \
         $body$"
    )
}

/// A transaction in the pool database as its owner, holding the pool's
/// lock, with the administrator's tenant setting cleared.
pub(crate) async fn as_owner<'a>(
    inside: &'a PgPool,
    names: &PoolNames,
) -> Result<Transaction<'a, Postgres>, Error> {
    let mut tx = inside.begin().await.map_err(transient("cannot reach the pool database"))?;
    sqlx::query("SELECT pg_catalog.pg_advisory_xact_lock($1)")
        .bind(LOCK)
        .execute(&mut *tx)
        .await
        .map_err(transient("cannot lock the pool's objects"))?;
    ddl_in(&mut tx, format!("SET LOCAL ROLE \"{}\"", names.owner)).await?;
    ddl_in(&mut tx, format!("SET LOCAL {ADMIN_TENANT_SETTING} = ''")).await?;
    Ok(tx)
}

/// Gives the tenant its roles in the pool, mapped to it.
pub async fn create(
    servers: &RegionServers,
    region: &Region,
    url: &DatabaseUrl,
    tenant: &Tenant,
) -> Result<serde_json::Value, Error> {
    // Securing the tables ensures the pool, and repairs whatever a change
    // made by hand since left unbound.
    secure_tables(servers, region, url).await?;
    let names = PoolNames::of(region);
    let roles = PoolTenantRoles::of(region, tenant);
    let admin = servers.pool(&region.name, url)?;
    for (role, group) in [(&roles.writer, &names.writers), (&roles.reader, &names.readers)] {
        ensure_role(&admin, role).await?;
        // So that the region's role may drop it whatever it was granted.
        join_role(&admin, role).await?;
        ddl(&admin, format!("GRANT \"{group}\" TO \"{role}\""), None).await?;
    }
    let inside = servers.database_pool(&region.name, url, &names.database).await?;
    let result = map_roles(&inside, &names, &roles, tenant.id.0).await;
    inside.close().await;
    result?;
    Ok(json!({
        "engine": "postgres",
        "isolation": "pool",
        "database": names.database,
        "write_role": roles.writer,
        "read_role": roles.reader,
    }))
}

async fn map_roles(
    inside: &PgPool,
    names: &PoolNames,
    roles: &PoolTenantRoles,
    tenant: Uuid,
) -> Result<(), Error> {
    let mut tx = as_owner(inside, names).await?;
    for role in [&roles.writer, &roles.reader] {
        let mapped: (Uuid,) = sqlx::query_as(AssertSqlSafe(format!(
            "INSERT INTO {SCHEMA}.tenant_roles (role_name, tenant_id) VALUES ($1, $2) \
             ON CONFLICT (role_name) DO UPDATE SET role_name = EXCLUDED.role_name \
             RETURNING tenant_id"
        )))
        .bind(role)
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await
        .map_err(transient("cannot map the tenant's roles"))?;
        if mapped.0 != tenant {
            return Err(Error::Permanent(format!(
                "role {role} is mapped to tenant {} in the pool database, not to {tenant}; \
                 remove that tenant first",
                mapped.0
            )));
        }
    }
    tx.commit().await.map_err(transient("cannot map the tenant's roles"))
}

/// The policy that binds table `t`'s rows to the session's tenant.
fn policy_sql(t: &str) -> String {
    let bound = format!("{TENANT_COLUMN} = (SELECT {SCHEMA}.current_tenant())");
    format!("CREATE POLICY {POLICY} ON {t} FOR ALL USING ({bound}) WITH CHECK ({bound})")
}

/// The default that fills table `t`'s tenant column from the session.
fn default_sql(t: &str) -> String {
    format!("ALTER TABLE {t} ALTER COLUMN {TENANT_COLUMN} SET DEFAULT {SCHEMA}.current_tenant()")
}

/// Binds every tenant table of the pool to the session's tenant: row level
/// security enabled and forced, the policy, the index, the default and the
/// groups' privileges. Only what is missing is changed, so a table already
/// bound is not locked. Run whenever a pool tenant is provisioned, and
/// after every migration of the pool. A `tenant_id` that is not a `uuid`,
/// or a table the pool's owner does not own, is refused by name. Returns
/// the tenant tables.
pub async fn secure_tables(
    servers: &RegionServers,
    region: &Region,
    url: &DatabaseUrl,
) -> Result<Vec<String>, Error> {
    let names = ensure(servers, region, url).await?;
    let inside = servers.database_pool(&region.name, url, &names.database).await?;
    let result = async {
        let mut tx = as_owner(&inside, &names).await?;
        let tables = secure_in(&mut tx, &names).await?;
        tx.commit().await.map_err(transient("cannot secure the pool's tables"))?;
        Ok(tables)
    }
    .await;
    inside.close().await;
    result
}

/// [`secure_tables`] inside a transaction of the pool's owner: a migration
/// secures the tables it made before it commits.
pub(crate) async fn secure_in(
    tx: &mut Transaction<'_, Postgres>,
    names: &PoolNames,
) -> Result<Vec<String>, Error> {
    let states = tables::states(&mut **tx, names).await?;
    for state in &states {
        let t = &state.table;
        if state.column_type != "uuid" {
            return Err(Error::Permanent(format!(
                "table {t}: its {TENANT_COLUMN} is {}; a tenant column must be uuid",
                state.column_type
            )));
        }
        if state.owner != names.owner {
            return Err(Error::Permanent(format!(
                "table {t} belongs to {}, who could switch its row-level security off; \
                 give it to the pool's owner: ALTER TABLE {t} OWNER TO \"{}\"",
                state.owner, names.owner
            )));
        }
        secure(tx, state, names).await?;
    }
    Ok(states.into_iter().map(|state| state.table).collect())
}

async fn secure(
    tx: &mut Transaction<'_, Postgres>,
    state: &tables::TableState,
    names: &PoolNames,
) -> Result<(), Error> {
    let t = &state.table;
    let PoolNames { writers, readers, .. } = names;
    if !state.enabled {
        ddl_in(tx, format!("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY")).await?;
    }
    if !state.forced {
        ddl_in(tx, format!("ALTER TABLE {t} FORCE ROW LEVEL SECURITY")).await?;
    }
    if !state.policy_bound {
        // Replaced, not kept: whatever a migration left under the name goes.
        ddl_in(tx, format!("DROP POLICY IF EXISTS {POLICY} ON {t}")).await?;
        ddl_in(tx, policy_sql(t)).await?;
    }
    if !state.default_bound {
        ddl_in(tx, default_sql(t)).await?;
    }
    if !state.indexed {
        ddl_in(tx, format!("CREATE INDEX ON {t} ({TENANT_COLUMN})")).await?;
    }
    if !state.granted {
        let schema = &state.schema;
        ddl_in(tx, format!("GRANT USAGE ON SCHEMA {schema} TO \"{writers}\", \"{readers}\""))
            .await?;
        ddl_in(tx, format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO \"{writers}\"")).await?;
        ddl_in(tx, format!("GRANT SELECT ON {t} TO \"{readers}\"")).await?;
    }
    // The sequences behind its serial columns: their values are shared by
    // every tenant (a tenant sees how many rows were made, not which).
    let sequences: Vec<(String,)> = sqlx::query_as(
        "SELECT s.oid::regclass::text FROM pg_catalog.pg_depend d \
         JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
         WHERE d.refobjid = $1::regclass AND d.deptype IN ('a', 'i') \
           AND CASE WHEN s.relkind = 'S' \
                    THEN NOT pg_catalog.has_sequence_privilege($2, s.oid, 'USAGE') END",
    )
    .bind(t)
    .bind(writers)
    .fetch_all(&mut **tx)
    .await
    .map_err(transient("cannot read the table's sequences"))?;
    for (sequence,) in sequences {
        ddl_in(tx, format!("GRANT USAGE ON SEQUENCE {sequence} TO \"{writers}\"")).await?;
    }
    Ok(())
}

/// Offboards a pool tenant: deletes its rows from every tenant table (in
/// as many passes as foreign keys between them need), then its mapping and
/// its roles. Its leases were revoked before.
pub async fn drop(
    servers: &RegionServers,
    region: &Region,
    url: &DatabaseUrl,
    tenant: &Tenant,
) -> Result<(), Error> {
    let names = PoolNames::of(region);
    let admin = servers.pool(&region.name, url)?;
    if !exists(&admin, DATABASE_EXISTS, &names.database).await? {
        return Ok(());
    }
    let inside = servers.database_pool(&region.name, url, &names.database).await?;
    let result = delete_rows(&inside, &names, tenant.id.0).await;
    inside.close().await;
    result?;
    let roles = PoolTenantRoles::of(region, tenant);
    let databases = servers.databases(&region.name, url);
    for role in [&roles.writer, &roles.reader] {
        drop_role(&admin, &databases, role, None).await?;
    }
    Ok(())
}

async fn delete_rows(inside: &PgPool, names: &PoolNames, tenant: Uuid) -> Result<(), Error> {
    let mut tx = as_owner(inside, names).await?;
    if !schema_exists(&mut tx).await? {
        return tx.commit().await.map_err(transient("cannot reach the pool database"));
    }
    ddl_in(&mut tx, format!("SET LOCAL {ADMIN_TENANT_SETTING} = '{tenant}'")).await?;
    let mut left: Vec<String> =
        tables::states(&mut *tx, names).await?.into_iter().map(|state| state.table).collect();
    while !left.is_empty() {
        let mut blocked = Vec::new();
        let mut last_error = None;
        for table in left.iter() {
            ddl_in(&mut tx, "SAVEPOINT rows".to_owned()).await?;
            let delete = format!("DELETE FROM {table} WHERE {TENANT_COLUMN} = $1");
            match sqlx::query(AssertSqlSafe(delete)).bind(tenant).execute(&mut *tx).await {
                Ok(_) => ddl_in(&mut tx, "RELEASE SAVEPOINT rows".to_owned()).await?,
                Err(e) => {
                    ddl_in(&mut tx, "ROLLBACK TO SAVEPOINT rows".to_owned()).await?;
                    last_error = Some(format!("{table}: {}", bulkhead_store::describe_error(&e)));
                    blocked.push(table.clone());
                }
            }
        }
        if blocked.len() == left.len() {
            return Err(Error::Transient(format!(
                "cannot delete the tenant's rows: {}",
                last_error.unwrap_or_default()
            )));
        }
        left = blocked;
    }
    sqlx::query(AssertSqlSafe(format!("DELETE FROM {SCHEMA}.tenant_roles WHERE tenant_id = $1")))
        .bind(tenant)
        .execute(&mut *tx)
        .await
        .map_err(transient("cannot unmap the tenant's roles"))?;
    tx.commit().await.map_err(transient("cannot delete the tenant's rows"))
}

async fn schema_exists(tx: &mut Transaction<'_, Postgres>) -> Result<bool, Error> {
    let (found,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)")
            .bind(SCHEMA)
            .fetch_one(&mut **tx)
            .await
            .map_err(transient("cannot reach the pool database"))?;
    Ok(found)
}
