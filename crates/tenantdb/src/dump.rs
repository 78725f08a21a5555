//! A tenant database's contents, written to a file for a backup:
//!
//! - [`sqlite`]: a consistent copy of the tenant's SQLite file, taken while
//!   its writers go on (`VACUUM INTO`, which reads in one transaction).
//! - [`silo`]: `pg_dump` of the tenant's own database in custom format,
//!   what `pg_restore` reads.
//! - [`pool_rows`]: a pool tenant's rows, read through a connection of the
//!   tenant's *own* login role, so row-level security, not a `WHERE` of
//!   ours, decides what is included; written as the `COPY ... FROM stdin`
//!   blocks `psql` and `pg_dump`'s plain format use.

use std::path::Path;

use bulkhead_model::{DatabaseUrl, Region, Tenant};
use futures_util::StreamExt;
use sqlx::{Connection, PgConnection, sqlite::SqliteConnectOptions};
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

use crate::{Error, SiloNames, sql::transient};

/// Copies the tenant's SQLite database to `dest` (which must not exist).
pub async fn sqlite(tenant_dir: &Path, dest: &Path) -> Result<(), Error> {
    let options = SqliteConnectOptions::new().filename(crate::sqlite::path(tenant_dir));
    let mut conn = sqlx::ConnectOptions::connect(&options)
        .await
        .map_err(transient("cannot open the tenant's SQLite database"))?;
    let dest = dest
        .to_str()
        .ok_or_else(|| Error::Permanent(format!("{} is not a UTF-8 path", dest.display())))?;
    sqlx::query("VACUUM INTO ?")
        .bind(dest)
        .execute(&mut conn)
        .await
        .map_err(transient("cannot copy the tenant's SQLite database"))?;
    conn.close().await.map_err(transient("cannot close the tenant's SQLite database"))
}

/// `pg_dump --format=custom` of the silo tenant's database to `dest`, as
/// the region's role.
pub async fn silo(
    region: &Region,
    url: &DatabaseUrl,
    tenant: &Tenant,
    dest: &Path,
) -> Result<(), Error> {
    let database = SiloNames::of(region, tenant).database;
    let args = ["--format=custom".to_owned(), format!("--file={}", dest.display())];
    pg_tool("pg_dump", url.expose(), &database, &args).await.map_err(|e| region_error(region, e))
}

/// Rows written to a silo database's tables (`pg_stat_user_tables`) since
/// its statistics began, and when they began. Recorded with each backup
/// and restore: a figure that has moved since says the database was
/// written to outside Bulkhead's knowledge, by the tenant's application.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Writes {
    pub rows: i64,
    /// `pg_stat_database.stats_reset`: counts from before a reset (a
    /// crash, `pg_stat_reset()`) cannot be compared with those after.
    pub since: Option<String>,
}

/// The silo tenant's database's [`Writes`], read as the region's role.
pub async fn silo_writes(
    region: &Region,
    url: &DatabaseUrl,
    tenant: &Tenant,
) -> Result<Writes, Error> {
    let database = SiloNames::of(region, tenant).database;
    let options = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(url.expose())
        .map_err(|e| Error::Permanent(format!("region {}: {e}", region.name)))?
        .database(&database);
    let mut conn = PgConnection::connect_with(&options)
        .await
        .map_err(transient("cannot connect to the tenant's database"))?;
    let read = sqlx::query_as(
        "SELECT (SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::int8 \
                 FROM pg_catalog.pg_stat_user_tables), \
                (SELECT stats_reset::text FROM pg_catalog.pg_stat_database \
                 WHERE datname = current_database())",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(transient("cannot read the tenant's database statistics"));
    let _ = conn.close().await;
    let (rows, since) = read?;
    Ok(Writes { rows, since })
}

fn region_error(region: &Region, error: Error) -> Error {
    match error {
        Error::Permanent(reason) => Error::Permanent(format!("region {}: {reason}", region.name)),
        other => other,
    }
}

/// Runs one of PostgreSQL's client tools (`pg_dump`, `pg_restore`) against
/// `database` on the server of `url`, as its user, with its TLS settings
/// (`sslmode`, `sslrootcert`, ...). The password goes in the environment,
/// not the command line other users can read.
pub(crate) async fn pg_tool(
    program: &str,
    url: &str,
    database: &str,
    args: &[String],
) -> Result<(), Error> {
    let (conninfo, password) = conninfo(url, database)?;
    let mut command = tokio::process::Command::new(program);
    command.arg("--no-password").arg(format!("--dbname={conninfo}")).args(args).kill_on_drop(true);
    if let Some(password) = password {
        command.env("PGPASSWORD", password.as_str());
    }
    let output = command.output().await.map_err(|e| {
        Error::Permanent(format!(
            "cannot run {program} ({e}); install PostgreSQL's client tools (Debian: postgresql-client)"
        ))
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(Error::Transient(format!("{program} of {database} failed: {}", stderr.trim())));
    }
    Ok(())
}

/// Parameters of a connection URL that libpq reads too; the others are the
/// Rust driver's own, which libpq would refuse.
const LIBPQ_PARAMETERS: [&str; 11] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "options",
    "application_name",
    "connect_timeout",
    "host",
    "hostaddr",
    "target_session_attrs",
];

/// `url` for libpq, pointed at `database`, without its password (returned
/// decoded, for the environment).
fn conninfo(url: &str, database: &str) -> Result<(String, Option<Zeroizing<String>>), Error> {
    let mut parsed =
        url::Url::parse(url).map_err(|e| Error::Permanent(format!("not a PostgreSQL URL: {e}")))?;
    let password = match parsed.password() {
        Some(encoded) => Some(Zeroizing::new(
            percent_encoding::percent_decode_str(encoded)
                .decode_utf8()
                .map_err(|e| Error::Permanent(format!("the URL's password: {e}")))?
                .into_owned(),
        )),
        None => None,
    };
    let _ = parsed.set_password(None);
    parsed.set_path(&format!("/{database}"));
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| LIBPQ_PARAMETERS.contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    parsed.set_query(None);
    if !kept.is_empty() {
        parsed.query_pairs_mut().extend_pairs(kept);
    }
    Ok((parsed.to_string(), password))
}

/// Writes the rows `conn` (a login of the pool tenant) can see in each of
/// `tables` (`schema.name`, quoted) to `dest`; returns how many bytes.
pub async fn pool_rows(
    conn: &mut PgConnection,
    tables: &[String],
    dest: &Path,
) -> Result<u64, Error> {
    let file = tokio::fs::File::create_new(dest)
        .await
        .map_err(|e| Error::Transient(format!("{}: {e}", dest.display())))?;
    let mut out = tokio::io::BufWriter::new(file);
    let write_failed = |e: std::io::Error| Error::Transient(format!("{}: {e}", dest.display()));
    let mut written = 0u64;
    for table in tables {
        let head = format!("COPY {table} FROM stdin;\n");
        out.write_all(head.as_bytes()).await.map_err(write_failed)?;
        written += head.len() as u64;
        let mut rows = conn
            // ONLY: a partitioned or inherited table's rows are dumped
            // once, with the partition or child that holds them.
            .copy_out_raw(&format!("COPY (SELECT * FROM ONLY {table}) TO STDOUT"))
            .await
            .map_err(transient("cannot read the tenant's rows"))?;
        while let Some(chunk) = rows.next().await {
            let chunk = chunk.map_err(transient("cannot read the tenant's rows"))?;
            out.write_all(&chunk).await.map_err(write_failed)?;
            written += chunk.len() as u64;
        }
        out.write_all(b"\\.\n\n").await.map_err(write_failed)?;
        written += 4;
    }
    out.flush().await.map_err(write_failed)?;
    out.into_inner().sync_all().await.map_err(write_failed)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::conninfo;

    #[test]
    fn the_tools_get_the_url_without_its_password_and_with_libpqs_parameters() {
        let (info, password) = conninfo(
            "postgres://u:p%40ss@h:5432/postgres?sslmode=verify-full&sslrootcert=/ca.pem&statement-cache-capacity=5",
            "tenant_db",
        )
        .unwrap();
        assert_eq!(info, "postgres://u@h:5432/tenant_db?sslmode=verify-full&sslrootcert=%2Fca.pem");
        assert_eq!(password.as_deref().map(String::as_str), Some("p@ss"));
        let (info, password) = conninfo("postgres://u@h/db", "other").unwrap();
        assert_eq!((info.as_str(), password), ("postgres://u@h/other", None));
        assert!(conninfo("not a url", "db").is_err());
    }
}
