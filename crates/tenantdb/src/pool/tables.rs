//! What the catalogs say of each tenant table of the pool, in one query:
//! what securing it still has to do, and what the verifier reports.
//!
//! The policy and the default are compared with those of
//! `bulkhead.reference`, a table the pool's setup binds the same way: the
//! server deparses both alike, whatever its version, so an expression that
//! merely mentions `current_tenant()` (`… OR true`) does not pass.

use sqlx::PgExecutor;

use super::{POLICY, SCHEMA, TENANT_COLUMN};
use crate::{Error, PoolNames, sql::transient};

/// The table the pool's setup binds as every tenant table should be.
pub const REFERENCE: &str = "reference";

/// One tenant table: an ordinary or partitioned table outside the
/// system's and Bulkhead's schemas with a `tenant_id` column. Partitions
/// are tenant tables of their own: a query through the parent uses only
/// the parent's policy, but one that names a partition uses the
/// partition's.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TableState {
    /// `schema.name`, each quoted as SQL needs.
    pub table: String,
    /// The schema, quoted.
    pub schema: String,
    pub column_type: String,
    pub owner: String,
    /// Row-level security enabled, and forced.
    pub enabled: bool,
    pub forced: bool,
    /// The `bulkhead_tenant` policy is the reference's: all commands, for
    /// everyone, permissive, the same `USING` and `WITH CHECK`.
    pub policy_bound: bool,
    /// Other permissive policies, which would widen it.
    pub other_policies: i64,
    /// An index leads with the tenant column.
    pub indexed: bool,
    /// The tenant column's default is the reference's.
    pub default_bound: bool,
    /// The groups hold their privileges on it and on its schema.
    pub granted: bool,
}

/// The names (`schema.name`, quoted) of every tenant table of the pool,
/// in name order: what a pool tenant's backup holds rows of.
pub async fn names<'e>(
    executor: impl PgExecutor<'e>,
    pool: &PoolNames,
) -> Result<Vec<String>, Error> {
    Ok(states(executor, pool).await?.into_iter().map(|state| state.table).collect())
}

/// Every tenant table of the pool, in name order.
pub async fn states<'e>(
    executor: impl PgExecutor<'e>,
    names: &PoolNames,
) -> Result<Vec<TableState>, Error> {
    sqlx::query_as(
        "WITH reference AS ( \
           SELECT pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS qual, \
                  pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS checked, \
                  (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d \
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
                     WHERE d.adrelid = p.polrelid AND a.attname = $1) AS fill \
           FROM pg_catalog.pg_policy p \
           JOIN pg_catalog.pg_class c ON c.oid = p.polrelid \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           WHERE n.nspname = $3 AND c.relname = $6 AND p.polname = $2) \
         SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS table, \
           pg_catalog.quote_ident(n.nspname) AS schema, \
           pg_catalog.format_type(a.atttypid, a.atttypmod) AS column_type, \
           pg_catalog.pg_get_userbyid(c.relowner)::text AS owner, \
           c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced, \
           coalesce((SELECT p.polcmd = '*' AND p.polpermissive AND p.polroles = '{0}'::oid[] \
                       AND pg_catalog.pg_get_expr(p.polqual, p.polrelid) = r.qual \
                       AND pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) = r.checked \
                     FROM pg_catalog.pg_policy p, reference r \
                     WHERE p.polrelid = c.oid AND p.polname = $2), false) AS policy_bound, \
           (SELECT count(*) FROM pg_catalog.pg_policy p \
              WHERE p.polrelid = c.oid AND p.polname <> $2 AND p.polpermissive) AS other_policies, \
           EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                     WHERE i.indrelid = c.oid AND i.indkey[0] = a.attnum) AS indexed, \
           coalesce((SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid) = r.fill \
                     FROM pg_catalog.pg_attrdef d, reference r \
                     WHERE d.adrelid = c.oid AND d.adnum = a.attnum), false) AS default_bound, \
           pg_catalog.has_schema_privilege($4, n.oid, 'USAGE') \
             AND pg_catalog.has_schema_privilege($5, n.oid, 'USAGE') \
             AND pg_catalog.has_table_privilege($4, c.oid, 'SELECT') \
             AND pg_catalog.has_table_privilege($4, c.oid, 'INSERT') \
             AND pg_catalog.has_table_privilege($4, c.oid, 'UPDATE') \
             AND pg_catalog.has_table_privilege($4, c.oid, 'DELETE') \
             AND pg_catalog.has_table_privilege($5, c.oid, 'SELECT') AS granted \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = $1 AND NOT a.attisdropped \
         WHERE c.relkind IN ('r', 'p') \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', $3) \
           AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
         ORDER BY 1",
    )
    .bind(TENANT_COLUMN)
    .bind(POLICY)
    .bind(SCHEMA)
    .bind(&names.writers)
    .bind(&names.readers)
    .bind(REFERENCE)
    .fetch_all(executor)
    .await
    .map_err(transient("cannot read the pool's tables"))
}

/// The pool's views that run as their owner rather than as the tenant
/// reading them (not `security_invoker`), materialized views included,
/// which cannot be: `schema.name`, quoted, and whether it is materialized.
pub async fn definer_views<'e>(
    executor: impl PgExecutor<'e>,
) -> Result<Vec<(String, bool)>, Error> {
    sqlx::query_as(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), c.relkind = 'm' \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('v', 'm') \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pg\\_toast%' \
           AND NOT coalesce('security_invoker=true' = ANY(c.reloptions) \
                            OR 'security_invoker=on' = ANY(c.reloptions), false) \
         ORDER BY 1",
    )
    .fetch_all(executor)
    .await
    .map_err(transient("cannot read the pool's views"))
}

/// Tables (materialized views too) outside the system's and Bulkhead's
/// schemas without a tenant column: shared by every tenant of the pool.
/// `(schema, name)`, as the catalogs spell them.
pub async fn shared<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<(String, String)>, Error> {
    sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p', 'm') AND NOT c.relispartition \
           AND n.nspname NOT IN ('pg_catalog', 'information_schema', $2) \
           AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
                           WHERE a.attrelid = c.oid AND a.attname = $1 AND NOT a.attisdropped) \
         ORDER BY 1, 2",
    )
    .bind(TENANT_COLUMN)
    .bind(SCHEMA)
    .fetch_all(executor)
    .await
    .map_err(transient("cannot read the pool's tables"))
}
