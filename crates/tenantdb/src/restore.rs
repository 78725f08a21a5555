//! A tenant database's contents put back from a backup's dump (see
//! [`crate::dump`]), into the same tenant or another one.

use std::path::Path;

use bulkhead_model::{Region, Tenant};
use sqlx::PgConnection;
use tokio::io::AsyncBufReadExt;

use crate::{Error, SiloNames, dump::pg_tool, pool::TENANT_COLUMN, sql::transient};

/// Puts the SQLite copy `from` in place of the tenant's database. Nothing
/// may have the database open (the tenant is suspended or new): its
/// write-ahead log, which belongs to the file being replaced, is removed
/// first, and the copy is renamed over the file in one step.
pub async fn sqlite(tenant_dir: &Path, from: &Path) -> Result<(), Error> {
    let io = |path: &Path, e: std::io::Error| Error::Transient(format!("{}: {e}", path.display()));
    let staged = tenant_dir.join("data.db.restoring");
    match tokio::fs::remove_file(&staged).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&staged, e)),
        _ => {}
    }
    tokio::fs::copy(from, &staged).await.map_err(|e| io(&staged, e))?;
    let file = tokio::fs::File::open(&staged).await.map_err(|e| io(&staged, e))?;
    file.sync_all().await.map_err(|e| io(&staged, e))?;
    tokio::fs::set_permissions(&staged, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .await
        .map_err(|e| io(&staged, e))?;
    for file in &crate::sqlite::FILES[1..] {
        let path = tenant_dir.join(file);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&path, e)),
            _ => {}
        }
    }
    let path = crate::sqlite::path(tenant_dir);
    tokio::fs::rename(&staged, &path).await.map_err(|e| io(&path, e))
}

/// `pg_restore` of `from` into the silo tenant's database, in one
/// transaction, through `lease_url` (a write login of the tenant) acting as
/// the tenant's owner role: whatever the dump holds runs with the tenant's
/// own rights, never the region's (a dump brought from elsewhere is not to
/// be trusted with those), and what it creates is the tenant's. The dump's
/// objects are dropped first: what the tenant has now (a new tenant's
/// migrations included) gives way to what the backup has.
pub async fn silo(
    region: &Region,
    tenant: &Tenant,
    lease_url: &str,
    from: &Path,
) -> Result<(), Error> {
    let SiloNames { database, owner, .. } = SiloNames::of(region, tenant);
    let args = [
        "--single-transaction".to_owned(),
        "--exit-on-error".to_owned(),
        "--clean".to_owned(),
        "--if-exists".to_owned(),
        "--no-owner".to_owned(),
        "--no-acl".to_owned(),
        format!("--role={owner}"),
        from.display().to_string(),
    ];
    pg_tool("pg_restore", lease_url, &database, &args).await
}

/// Rows inserted per statement.
const BATCH: usize = 1_000;

/// Puts a pool tenant's rows back through `conn`, a write login of the
/// tenant, into `tables` (the pool's tenant tables, as
/// [`crate::pool::tables::states`] names them) only, so row-level security
/// checks that every row is the tenant's:
/// each table's rows (the tenant's only: row-level security again) are
/// deleted and the backup's inserted, with the tenant column set to the
/// tenant's own id whichever tenant they were taken of. One transaction:
/// all or nothing. Tables are cleared referencing ones first and filled
/// referenced ones first, so foreign keys between them hold at every
/// statement whatever order the backup lists them in. PostgreSQL refuses
/// `COPY FROM` under row-level security, and the pool allows no temporary
/// tables, so the rows go in as batched `INSERT ... SELECT FROM
/// unnest(...)`, each value cast from its text form as `COPY` would.
pub async fn pool_rows(
    conn: &mut PgConnection,
    tenant: &Tenant,
    tables: &[String],
    from: &Path,
) -> Result<(), Error> {
    // The whole file is read once before anything changes: a cut or
    // malformed one, or one naming anything but the pool's tenant tables
    // (`tables`), is refused with the pool untouched.
    let sections = sections(from).await?;
    let mut seen = std::collections::HashSet::new();
    for section in &sections {
        if !tables.contains(&section.table) {
            return Err(Error::Permanent(format!(
                "the rows part lists {}, which is not a tenant table of this pool; run the \
                 application's migrations (`bulkhead migrate`) before restoring",
                section.table
            )));
        }
        if !seen.insert(section.table.as_str()) {
            return Err(Error::Permanent(format!("the rows part lists {} twice", section.table)));
        }
    }
    let mut tx =
        sqlx::Connection::begin(conn).await.map_err(transient("cannot begin the restore"))?;
    // Tables that reference each other in a cycle have no order that
    // holds at every statement: their keys, if deferrable, hold at commit.
    sqlx::query("SET CONSTRAINTS ALL DEFERRED")
        .execute(&mut *tx)
        .await
        .map_err(transient("cannot defer the tables' constraints"))?;
    let order = referenced_first(&mut tx, sections).await?;
    for section in order.iter().rev() {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM ONLY {}", section.table)))
            .execute(&mut *tx)
            .await
            .map_err(transient("cannot clear the tenant's rows"))?;
    }
    let id = tenant.id.0.to_string();
    for section in order {
        let columns = Columns::of(&mut tx, &section.table).await?;
        let mut lines = section.rows(from).await?;
        let mut batch: Vec<Vec<Option<String>>> = vec![Vec::new(); columns.all.len()];
        while let Some(row) = lines.next_line().await.map_err(read_failed(from))? {
            if row == END {
                break;
            }
            let fields: Vec<&str> = row.split('\t').collect();
            if fields.len() != columns.all.len() {
                return Err(Error::Permanent(format!(
                    "a row of {} has {} fields and the table {} columns",
                    section.table,
                    fields.len(),
                    columns.all.len()
                )));
            }
            for (i, field) in fields.into_iter().enumerate() {
                let value =
                    if Some(i) == columns.tenant { Some(id.clone()) } else { copy_text(field) };
                batch[i].push(value);
            }
            if batch[0].len() == BATCH {
                columns.insert(&mut tx, &section.table, &mut batch).await?;
            }
        }
        if batch.first().is_some_and(|b| !b.is_empty()) {
            columns.insert(&mut tx, &section.table, &mut batch).await?;
        }
    }
    tx.commit().await.map_err(transient("cannot commit the restore"))
}

/// The line that ends a table's rows.
const END: &str = "\\.";

fn read_failed(from: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Transient(format!("{}: {e}", from.display()))
}

/// One table's rows in the rows part: its name and where its first row
/// starts.
struct Section {
    table: String,
    offset: u64,
}

impl Section {
    /// The part's lines from this table's first row on.
    async fn rows(
        &self,
        from: &Path,
    ) -> Result<tokio::io::Lines<tokio::io::BufReader<tokio::fs::File>>, Error> {
        use tokio::io::AsyncSeekExt;
        let mut file = tokio::fs::File::open(from).await.map_err(read_failed(from))?;
        file.seek(std::io::SeekFrom::Start(self.offset)).await.map_err(read_failed(from))?;
        Ok(tokio::io::BufReader::new(file).lines())
    }
}

/// The tables of a rows part (`COPY t FROM stdin;`, rows, `\.`), in the
/// order it lists them; refuses a part cut short or not of that form.
async fn sections(from: &Path) -> Result<Vec<Section>, Error> {
    let file = tokio::fs::File::open(from).await.map_err(read_failed(from))?;
    let mut reader = tokio::io::BufReader::new(file);
    let mut sections: Vec<Section> = Vec::new();
    let (mut offset, mut open) = (0u64, false);
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line).await.map_err(read_failed(from))?;
        if read == 0 {
            break;
        }
        offset += read as u64;
        let text = line.trim_end_matches('\n');
        if open {
            open = text != END;
        } else if !text.is_empty() {
            let table = text
                .strip_prefix("COPY ")
                .and_then(|rest| rest.strip_suffix(" FROM stdin;"))
                .ok_or_else(|| Error::Permanent(format!("the rows part has {text:?}")))?;
            sections.push(Section { table: table.to_owned(), offset });
            open = true;
        }
    }
    if let Some(last) = sections.last().filter(|_| open) {
        return Err(Error::Permanent(format!("the rows of {} are cut short", last.table)));
    }
    Ok(sections)
}

/// `sections` with every table after the tables its foreign keys
/// reference. Where references go round in a cycle, a table on the cycle
/// goes first: the cycle's keys must be deferrable.
async fn referenced_first(
    conn: &mut PgConnection,
    sections: Vec<Section>,
) -> Result<Vec<Section>, Error> {
    let names: Vec<&str> = sections.iter().map(|s| s.table.as_str()).collect();
    let references: Vec<(String, String)> = sqlx::query_as(
        "WITH t AS (SELECT name, name::regclass::oid AS oid FROM unnest($1::text[]) AS name) \
         SELECT child.name, parent.name FROM pg_catalog.pg_constraint c \
         JOIN t child ON child.oid = c.conrelid JOIN t parent ON parent.oid = c.confrelid \
         WHERE c.contype = 'f' AND c.conrelid <> c.confrelid",
    )
    .bind(&names)
    .fetch_all(conn)
    .await
    .map_err(transient("cannot read the tables' foreign keys"))?;
    let index = |name: &str| names.iter().position(|n| *n == name);
    let references: Vec<(usize, usize)> = references
        .iter()
        .filter_map(|(child, parent)| Some((index(child)?, index(parent)?)))
        .collect();
    let order = parents_first(names.len(), &references);
    let mut sections: Vec<Option<Section>> = sections.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| sections[i].take()).collect())
}

/// The indexes `0..count` with each after those it references
/// (`(child, parent)` pairs), otherwise in index order; where references
/// go round in a cycle, a table on the cycle goes first.
fn parents_first(count: usize, references: &[(usize, usize)]) -> Vec<usize> {
    // parents[i]: the tables table i references, not yet placed.
    let mut parents: Vec<std::collections::BTreeSet<usize>> = vec![Default::default(); count];
    for &(child, parent) in references {
        parents[child].insert(parent);
    }
    let mut placed = vec![false; count];
    let mut order = Vec::with_capacity(count);
    while let Some(first) = placed.iter().position(|p| !p) {
        let next = match (0..count).find(|&i| !placed[i] && parents[i].is_empty()) {
            Some(ready) => ready,
            // Every table left waits for another: following what each
            // waits for must come round to a table on a cycle.
            None => {
                let mut seen = vec![false; count];
                let mut at = first;
                while !seen[at] {
                    seen[at] = true;
                    at = parents[at].first().copied().unwrap_or(at);
                }
                at
            }
        };
        placed[next] = true;
        order.push(next);
        for waiting in &mut parents {
            waiting.remove(&next);
        }
    }
    order
}

/// A table's columns in `SELECT *` order: name, type, and whether a row
/// gives it (a generated column does not).
struct Columns {
    all: Vec<(String, String, bool)>,
    tenant: Option<usize>,
}

impl Columns {
    async fn of(conn: &mut PgConnection, table: &str) -> Result<Self, Error> {
        let all: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod), attgenerated = '' \
             FROM pg_catalog.pg_attribute \
             WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        )
        .bind(table)
        .fetch_all(conn)
        .await
        .map_err(transient("cannot read the table's columns"))?;
        let tenant = all.iter().position(|(name, _, _)| name == TENANT_COLUMN);
        Ok(Self { all, tenant })
    }

    /// Inserts the batch (one text array per column) and empties it.
    async fn insert(
        &self,
        conn: &mut PgConnection,
        table: &str,
        batch: &mut [Vec<Option<String>>],
    ) -> Result<(), Error> {
        let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
        let given: Vec<usize> = (0..self.all.len()).filter(|&i| self.all[i].2).collect();
        let names: Vec<String> = given.iter().map(|&i| quote(&self.all[i].0)).collect();
        let arrays: Vec<String> = (1..=given.len()).map(|n| format!("${n}::text[]")).collect();
        let casts: Vec<String> =
            given.iter().enumerate().map(|(n, &i)| format!("r.c{n}::{}", self.all[i].1)).collect();
        let aliases: Vec<String> = (0..given.len()).map(|n| format!("c{n}")).collect();
        let sql = format!(
            "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM unnest({}) AS r({})",
            names.join(", "),
            casts.join(", "),
            arrays.join(", "),
            aliases.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for &i in &given {
            query = query.bind(std::mem::take(&mut batch[i]));
        }
        for column in batch.iter_mut() {
            column.clear();
        }
        query.execute(conn).await.map_err(transient("cannot put the tenant's rows back"))?;
        Ok(())
    }
}

/// A field of `COPY`'s text format: `\N` is NULL; backslash escapes
/// stand for the characters they name.
fn copy_text(field: &str) -> Option<String> {
    if field == "\\N" {
        return None;
    }
    if !field.contains('\\') {
        return Some(field.to_owned());
    }
    let mut out = Vec::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' || i + 1 == bytes.len() {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let next = bytes[i + 1];
        i += 2;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match bytes.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((value & 0xff) as u8);
            }
            b'x' => {
                let mut value = 0u32;
                for _ in 0..2 {
                    match bytes.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(value as u8);
            }
            other => out.push(other),
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::{copy_text, parents_first};

    #[test]
    fn tables_go_after_those_they_reference_and_a_cycle_starts_on_itself() {
        // 0 references 1: 1 first, the rest in order.
        assert_eq!(parents_first(3, &[(0, 1)]), [1, 0, 2]);
        // A chain listed child first.
        assert_eq!(parents_first(3, &[(0, 1), (1, 2)]), [2, 1, 0]);
        // 0 references 1, and 1 and 2 reference each other: the cycle
        // starts with one of its own, never with 0, which waits for 1.
        assert_eq!(parents_first(3, &[(0, 1), (1, 2), (2, 1)]), [1, 0, 2]);
        assert_eq!(parents_first(3, &[(0, 2), (1, 2), (2, 1)]), [2, 0, 1]);
        assert_eq!(parents_first(0, &[]), Vec::<usize>::new());
    }

    #[test]
    fn copy_text_fields_decode_as_postgres_writes_them() {
        assert_eq!(copy_text("\\N"), None);
        assert_eq!(copy_text("plain").as_deref(), Some("plain"));
        assert_eq!(copy_text("a\\tb\\nc\\\\d").as_deref(), Some("a\tb\nc\\d"));
        assert_eq!(copy_text("\\101\\x42").as_deref(), Some("AB"));
        assert_eq!(copy_text("\\\\N").as_deref(), Some("\\N"));
    }
}
