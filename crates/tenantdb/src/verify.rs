//! Checks of a live installation's tenant databases, for `bulkhead verify
//! isolation`: what the catalogs say (row-level security, policies,
//! owners, privileges, role attributes), and what a fresh login of a
//! tenant can actually do (probes).
//!
//! Each check returns [`Finding`]s: an empty list is a clean bill.

use bulkhead_model::{DatabaseUrl, Region, Tenant};
use bulkhead_vault::leases::Heir;
use sqlx::{AssertSqlSafe, Connection, PgPool};

use crate::{
    Error, PoolNames, PoolTenantRoles, RegionServers, SiloNames,
    login::{Purpose, TemporaryLogin},
    pool::{POLICY, SCHEMA, TENANT_COLUMN, tables},
    sql::{DATABASE_EXISTS, exists, transient},
};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Another tenant's data is reachable, or can be made reachable.
    Critical,
    /// A boundary is weaker than designed, or unproven.
    High,
    /// Works, but costs or risks what it need not.
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Warning => "warning",
        }
    }
}

/// Something a check found wrong, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// The check's name (`pool.rls`, `silo.connect`, …).
    pub check: &'static str,
    /// What it is about: a table, a role, a database, a tenant.
    pub subject: String,
    pub problem: String,
    pub fix: String,
}

impl Finding {
    pub fn new(
        severity: Severity,
        check: &'static str,
        subject: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self { severity, check, subject: subject.into(), problem: problem.into(), fix: fix.into() }
    }
}

/// A finding when `PUBLIC` may connect to `database` (no ACL at all means
/// the server's default, which lets it).
async fn open_to_public(admin: &PgPool, database: &str) -> Result<Option<Finding>, Error> {
    let (open,): (bool,) = sqlx::query_as(
        "SELECT d.datacl IS NULL OR EXISTS ( \
           SELECT 1 FROM pg_catalog.aclexplode(d.datacl) a \
           WHERE a.grantee = 0 AND a.privilege_type = 'CONNECT') \
         FROM pg_catalog.pg_database d WHERE d.datname = $1",
    )
    .bind(database)
    .fetch_one(admin)
    .await
    .map_err(transient("cannot read the database's privileges"))?;
    Ok(open.then(|| {
        Finding::new(
            Severity::Critical,
            "database.connect",
            database,
            "every role may connect (CONNECT is granted to PUBLIC)",
            format!("REVOKE CONNECT, TEMPORARY ON DATABASE \"{database}\" FROM PUBLIC"),
        )
    }))
}

/// A finding for each role that is, directly or through other roles, a
/// member of any of `roles` (`whose` names them in the problem) and has an
/// attribute that bypasses row-level security. The region's own role is a
/// member of tenants' roles to manage them, and is no application's: it,
/// and whoever is a member of it, are left out.
async fn bypassing(admin: &PgPool, roles: &[&str], whose: &str) -> Result<Vec<Finding>, Error> {
    let rows: Vec<(String, bool, bool)> = sqlx::query_as(
        "WITH RECURSIVE members(oid) AS ( \
           SELECT oid FROM pg_catalog.pg_roles WHERE rolname = ANY($1) \
           UNION SELECT m.member FROM pg_catalog.pg_auth_members m JOIN members ON m.roleid = members.oid \
             WHERE m.member <> (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)) \
         SELECT r.rolname::text, r.rolsuper, r.rolbypassrls FROM pg_catalog.pg_roles r \
         JOIN members ON members.oid = r.oid WHERE r.rolsuper OR r.rolbypassrls ORDER BY 1",
    )
    .bind(roles)
    .fetch_all(admin)
    .await
    .map_err(transient("cannot read the roles' attributes"))?;
    Ok(rows
        .into_iter()
        .map(|(role, superuser, _)| {
            let attribute = if superuser { "SUPERUSER" } else { "BYPASSRLS" };
            Finding::new(
                Severity::Critical,
                "role.bypass",
                &role,
                format!("{whose} has {attribute}, which ignores row-level security"),
                format!("ALTER ROLE \"{role}\" NO{attribute}"),
            )
        })
        .collect())
}

/// Application roles of the pool (its groups, the tenants' roles, their
/// leases) that are members of the pool's owner: `current_tenant()` takes
/// such a session for an administrator's, which names its tenant itself.
async fn owning(admin: &PgPool, names: &PoolNames) -> Result<Vec<Finding>, Error> {
    let roles: Vec<(String,)> = sqlx::query_as(
        "WITH RECURSIVE \
           owners(oid) AS ( \
             SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1 \
             UNION SELECT m.member FROM pg_catalog.pg_auth_members m JOIN owners ON m.roleid = owners.oid \
               WHERE m.member <> (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)), \
           apps(oid) AS ( \
             SELECT oid FROM pg_catalog.pg_roles WHERE rolname = ANY($2) \
             UNION SELECT m.member FROM pg_catalog.pg_auth_members m JOIN apps ON m.roleid = apps.oid \
               WHERE m.member <> (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)) \
         SELECT r.rolname::text FROM pg_catalog.pg_roles r \
         JOIN owners ON owners.oid = r.oid JOIN apps ON apps.oid = r.oid ORDER BY 1",
    )
    .bind(&names.owner)
    .bind([names.writers.as_str(), names.readers.as_str()])
    .fetch_all(admin)
    .await
    .map_err(transient("cannot read the pool's role memberships"))?;
    Ok(roles
        .into_iter()
        .map(|(role,)| {
            Finding::new(
                Severity::Critical,
                "role.owner",
                &role,
                "an application role that is a member of the pool's owner: its sessions are no \
                 tenant's, and may set bulkhead.tenant_id to any tenant's",
                format!(
                    "REVOKE \"{}\" FROM \"{role}\" (or from the role it inherits it through)",
                    names.owner
                ),
            )
        })
        .collect())
}

/// The pool database: every tenant table bound, no code that runs as its
/// owner, nothing of it open to everyone, no application role above
/// row-level security. Nothing to check when the region has no pool yet.
pub async fn pool(
    servers: &RegionServers,
    region: &Region,
    url: &DatabaseUrl,
) -> Result<Vec<Finding>, Error> {
    let names = PoolNames::of(region);
    let admin = servers.pool(&region.name, url)?;
    if !exists(&admin, DATABASE_EXISTS, &names.database).await? {
        return Ok(Vec::new());
    }
    let mut findings = Vec::new();
    findings.extend(open_to_public(&admin, &names.database).await?);
    let roles = [names.writers.as_str(), names.readers.as_str()];
    findings.extend(bypassing(&admin, &roles, "an application role of the pool").await?);
    findings.extend(owning(&admin, &names).await?);
    let inside = servers.database_pool(&region.name, url, &names.database).await?;
    let result = pool_tables(&inside, &names, &mut findings).await;
    inside.close().await;
    result?;
    Ok(findings)
}

async fn pool_tables(
    inside: &PgPool,
    names: &PoolNames,
    findings: &mut Vec<Finding>,
) -> Result<(), Error> {
    let secure = "provision a pool tenant, which binds every tenant table (and, to come, \
                  `bulkhead migrate` on the pool)";
    for state in tables::states(inside, names).await? {
        let table = state.table.as_str();
        let mut found = |severity, check, problem: String, fix: String| {
            findings.push(Finding::new(severity, check, table, problem, fix));
        };
        if !state.enabled || !state.forced {
            let problem = if state.enabled {
                "row-level security is not forced: its owner sees every tenant's rows"
            } else {
                "row-level security is off: every tenant's rows are visible to every tenant"
            };
            found(Severity::Critical, "pool.rls", problem.into(), secure.into());
        }
        if !state.policy_bound {
            found(
                Severity::Critical,
                "pool.policy",
                format!(
                    "no `{POLICY}` policy for all commands comparing {TENANT_COLUMN} with \
                     {SCHEMA}.current_tenant() in USING and WITH CHECK"
                ),
                secure.into(),
            );
        }
        if state.other_policies > 0 {
            found(
                Severity::Critical,
                "pool.policy",
                format!(
                    "{} other permissive policies, which widen what a tenant sees",
                    state.other_policies
                ),
                format!(
                    "drop them (DROP POLICY … ON {table}); `{POLICY}` is the one a tenant table needs"
                ),
            );
        }
        if state.owner != names.owner {
            found(
                Severity::Critical,
                "pool.owner",
                format!("owned by {}, who can switch its row-level security off", state.owner),
                format!("ALTER TABLE {table} OWNER TO \"{}\"", names.owner),
            );
        }
        if state.column_type != "uuid" {
            found(
                Severity::High,
                "pool.column",
                format!(
                    "its {TENANT_COLUMN} is {}, which cannot hold a tenant's id",
                    state.column_type
                ),
                format!(
                    "ALTER TABLE {table} ALTER COLUMN {TENANT_COLUMN} TYPE uuid USING {TENANT_COLUMN}::uuid"
                ),
            );
        }
        if !state.indexed {
            found(
                Severity::Warning,
                "pool.index",
                format!(
                    "no index leads with {TENANT_COLUMN}: every tenant's query reads every tenant's rows"
                ),
                format!("CREATE INDEX ON {table} ({TENANT_COLUMN})"),
            );
        }
        if !state.default_bound {
            found(
                Severity::Warning,
                "pool.default",
                format!("{TENANT_COLUMN} is not filled from the session"),
                secure.into(),
            );
        }
        if !state.granted {
            found(
                Severity::Warning,
                "pool.grants",
                "the pool's groups lack their privileges on it: tenants cannot use it".into(),
                secure.into(),
            );
        }
    }
    for (view, materialized) in tables::definer_views(inside).await? {
        findings.push(if materialized {
            Finding::new(
                Severity::High,
                "pool.view",
                &view,
                "a materialized view: it holds rows of every tenant, without row-level security",
                format!("DROP MATERIALIZED VIEW {view}, or keep no tenant's rows in it"),
            )
        } else {
            Finding::new(
                Severity::High,
                "pool.view",
                &view,
                "a view that runs as its owner, not as the tenant reading it",
                format!("ALTER VIEW {view} SET (security_invoker = true)"),
            )
        });
    }
    Ok(())
}

/// A silo tenant's database: closed to everyone but the tenant's roles,
/// whose members never bypass row-level security or privileges.
pub async fn silo(
    servers: &RegionServers,
    region: &Region,
    url: &DatabaseUrl,
    tenant: &Tenant,
) -> Result<Vec<Finding>, Error> {
    let names = SiloNames::of(region, tenant);
    let admin = servers.pool(&region.name, url)?;
    let mut findings = Vec::new();
    if !exists(&admin, DATABASE_EXISTS, &names.database).await? {
        findings.push(Finding::new(
            Severity::High,
            "silo.database",
            &names.database,
            format!("tenant {} has no database", tenant.name),
            "reconcile the tenant (`bulkhead tenants get` shows its steps)",
        ));
        return Ok(findings);
    }
    findings.extend(open_to_public(&admin, &names.database).await?);
    let whose = format!("a role of tenant {}", tenant.name);
    findings.extend(bypassing(&admin, &[&names.owner, &names.reader], &whose).await?);
    Ok(findings)
}

/// With a fresh login of `tenant`'s (a write lease's), every tenant table
/// of the pool shows only the tenant's rows, and refuses a row of any
/// other tenant.
pub async fn probe_pool(
    servers: &RegionServers,
    region: &Region,
    url: &DatabaseUrl,
    tenant: &Tenant,
    now: time::OffsetDateTime,
) -> Result<Vec<Finding>, Error> {
    let names = PoolNames::of(region);
    let roles = PoolTenantRoles::of(region, tenant);
    let probe =
        TemporaryLogin::make(servers, region, url, tenant, &roles.writer, Purpose::Probe, now)
            .await?;
    let result = probe_pool_tables(&probe, &names, tenant).await;
    let heir = Heir { database: &names.database, owner: &names.owner };
    probe.drop(servers, region, url, heir).await?;
    result
}

async fn probe_pool_tables(
    probe: &TemporaryLogin,
    names: &PoolNames,
    tenant: &Tenant,
) -> Result<Vec<Finding>, Error> {
    let mut conn = probe
        .connect(&names.database)
        .await
        .map_err(transient("a fresh login of the tenant cannot connect to the pool"))?;
    let mut findings = Vec::new();
    let tables = tables::states(&mut conn, names).await?;
    let other = uuid::Uuid::new_v4();
    for table in tables.iter().map(|state| state.table.as_str()) {
        let read =
            format!("SELECT count(*) FROM {table} WHERE {TENANT_COLUMN} IS DISTINCT FROM $1");
        let foreign: Result<(i64,), _> =
            sqlx::query_as(AssertSqlSafe(read)).bind(tenant.id.0).fetch_one(&mut conn).await;
        match foreign {
            Ok((0,)) => {}
            Ok((n,)) => findings.push(Finding::new(
                Severity::Critical,
                "pool.probe.read",
                table,
                format!("a fresh login of tenant {} reads {n} rows of other tenants", tenant.name),
                "see the pool.rls and pool.policy findings for this table",
            )),
            Err(e) => findings.push(Finding::new(
                Severity::High,
                "pool.probe.read",
                table,
                format!(
                    "a fresh login of tenant {} cannot read it: {}",
                    tenant.name,
                    bulkhead_store::describe_error(&e)
                ),
                "grant SELECT on it to the pool's groups (provisioning a pool tenant does)",
            )),
        }
        // Row-level security's check comes before the table's own
        // constraints: a refusal for any other reason means it let the
        // row through. Never committed.
        let write = format!("INSERT INTO {table} ({TENANT_COLUMN}) VALUES ($1)");
        let mut tx = conn.begin().await.map_err(transient("cannot probe a write"))?;
        let written = sqlx::query(AssertSqlSafe(write)).bind(other).execute(&mut *tx).await;
        tx.rollback().await.map_err(transient("cannot roll the probe back"))?;
        let refused_by_policy = matches!(&written, Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501"));
        if !refused_by_policy {
            findings.push(Finding::new(
                Severity::Critical,
                "pool.probe.write",
                table,
                format!("a fresh login of tenant {} was not stopped by row-level security from writing another tenant's row", tenant.name),
                "see the pool.rls and pool.policy findings for this table",
            ));
        }
    }
    let _ = conn.close().await;
    Ok(findings)
}

/// With a fresh login of `tenant`'s, `other`'s silo database refuses the
/// connection.
pub async fn probe_silo(
    servers: &RegionServers,
    region: &Region,
    url: &DatabaseUrl,
    tenant: &Tenant,
    other: &Tenant,
    now: time::OffsetDateTime,
) -> Result<Vec<Finding>, Error> {
    let names = SiloNames::of(region, tenant);
    let theirs = SiloNames::of(region, other);
    let probe =
        TemporaryLogin::make(servers, region, url, tenant, &names.reader, Purpose::Probe, now)
            .await?;
    let connected = probe.connect(&theirs.database).await;
    let heir = Heir { database: &names.database, owner: &names.owner };
    probe.drop(servers, region, url, heir).await?;
    Ok(match connected {
        Ok(conn) => {
            let _ = conn.close().await;
            vec![Finding::new(
                Severity::Critical,
                "silo.probe",
                &theirs.database,
                format!(
                    "a fresh login of tenant {} connects to tenant {}'s database",
                    tenant.name, other.name
                ),
                format!(
                    "REVOKE CONNECT, TEMPORARY ON DATABASE \"{}\" FROM PUBLIC",
                    theirs.database
                ),
            )]
        }
        Err(_) => Vec::new(),
    })
}

/// The lease login roles on the region's server, by name.
pub async fn lease_roles(
    servers: &RegionServers,
    region: &Region,
    url: &DatabaseUrl,
) -> Result<Vec<String>, Error> {
    let admin = servers.pool(&region.name, url)?;
    let pattern = format!("{}l\\_%", region.database_prefix.as_str().replace('_', "\\_"));
    let roles: Vec<(String,)> = sqlx::query_as(
        "SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname LIKE $1 ORDER BY 1",
    )
    .bind(pattern)
    .fetch_all(&admin)
    .await
    .map_err(transient("cannot list the lease roles"))?;
    Ok(roles.into_iter().map(|(r,)| r).collect())
}

/// The short-lived logins of probes and migrations (`<prefix>v_…`,
/// `<prefix>m_…`) still on the server more than `grace` after they
/// expired: left by a server that stopped before dropping them. (One in
/// use expires within minutes of being made.)
pub async fn stale_logins(
    servers: &RegionServers,
    region: &Region,
    url: &DatabaseUrl,
    now: time::OffsetDateTime,
    grace: std::time::Duration,
) -> Result<Vec<Finding>, Error> {
    let admin = servers.pool(&region.name, url)?;
    let prefix = region.database_prefix.as_str().replace('_', "\\_");
    let patterns = [format!("{prefix}v\\_%"), format!("{prefix}m\\_%")];
    let stale: Vec<(String,)> = sqlx::query_as(
        "SELECT rolname::text FROM pg_catalog.pg_roles \
         WHERE (rolname LIKE $1 OR rolname LIKE $2) AND rolcanlogin \
           AND coalesce(rolvaliduntil < $3, true) ORDER BY 1",
    )
    .bind(&patterns[0])
    .bind(&patterns[1])
    .bind(now - grace)
    .fetch_all(&admin)
    .await
    .map_err(transient("cannot list the temporary logins"))?;
    Ok(stale
        .into_iter()
        .map(|(role,)| {
            Finding::new(
                Severity::High,
                "login.left",
                &role,
                "a short-lived login of a check or a migration, expired and still there",
                format!("DROP OWNED BY \"{role}\"; DROP ROLE \"{role}\" (in each database it holds something in)"),
            )
        })
        .collect())
}

/// An embedded tenant's directory and SQLite files: there, and readable by
/// the server's user only (another local user, or another tenant's
/// process under another user, must not open them).
pub fn sqlite(tenant_dir: &std::path::Path, tenant: &Tenant) -> Vec<Finding> {
    use std::os::unix::fs::PermissionsExt;
    let mut findings = Vec::new();
    let database = crate::sqlite::path(tenant_dir);
    if !database.exists() {
        findings.push(Finding::new(
            Severity::High,
            "sqlite.database",
            database.display().to_string(),
            format!("tenant {} has no database file", tenant.name),
            "reconcile the tenant (`bulkhead tenants get` shows its steps)",
        ));
    }
    let paths = std::iter::once(tenant_dir.to_path_buf())
        .chain(crate::sqlite::FILES.iter().map(|file| tenant_dir.join(file)));
    for path in paths {
        let Ok(metadata) = std::fs::metadata(&path) else { continue };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let wanted = if metadata.is_dir() { "700" } else { "600" };
            findings.push(Finding::new(
                Severity::High,
                "sqlite.mode",
                path.display().to_string(),
                format!("tenant {}'s data is open to other users (mode {mode:o})", tenant.name),
                format!("chmod {wanted} {}", path.display()),
            ));
        }
    }
    findings
}
