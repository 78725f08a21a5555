//! An application's migration files: `NNNN_name.sql`, applied in the order
//! of their numbers, each known by the SHA-256 of its text.

use std::{collections::BTreeSet, fmt};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The comment by which a file declares tables it creates without a
/// tenant column as shared by every tenant of a pool:
/// `-- bulkhead: shared countries, currencies`.
pub const SHARED_MARKER: &str = "-- bulkhead: shared";

/// One migration file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub version: u32,
    /// The file's name, `0002_add_due_date.sql`.
    pub file: String,
    pub sql: String,
    /// Lower-case hex SHA-256 of `sql`.
    pub checksum: String,
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("file", &self.file)
            .field("checksum", &self.checksum)
            .finish_non_exhaustive()
    }
}

impl Migration {
    /// Reads a file's name and text; an error says what is wrong with the
    /// name.
    pub fn parse(file: &str, sql: String) -> Result<Self, String> {
        let bad = || {
            format!(
                "{file:?} is not a migration file name: use NNNN_name.sql (four to nine digits, \
                 then `_` and lower-case letters, digits or `_`), e.g. 0001_create_notes.sql"
            )
        };
        let stem = file.strip_suffix(".sql").ok_or_else(bad)?;
        let (number, name) = stem.split_once('_').ok_or_else(bad)?;
        let well_formed = (4..=9).contains(&number.len())
            && number.bytes().all(|b| b.is_ascii_digit())
            && !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !well_formed {
            return Err(bad());
        }
        let version: u32 = number.parse().map_err(|_| bad())?;
        if version == 0 {
            return Err(format!("{file:?}: migrations are numbered from 0001"));
        }
        if sql.trim().is_empty() {
            return Err(format!("{file:?} is empty"));
        }
        if let Some((line, keyword)) = transaction_control(&sql) {
            return Err(format!(
                "{file}, line {line}: `{keyword}` would end the transaction that each \
                 database's migrations run in (all of them or none); remove it"
            ));
        }
        let checksum = Sha256::digest(sql.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { version, file: file.to_owned(), sql, checksum })
    }

    /// The tables the file declares shared (lower-cased, unquoted names,
    /// optionally `schema.table`).
    pub fn shared_tables(&self) -> BTreeSet<String> {
        self.sql
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix(SHARED_MARKER))
            .flat_map(|names| names.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| !name.is_empty())
            .collect()
    }
}

/// A set of migrations, ordered by version, no version twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Migration>", into = "Vec<Migration>")]
pub struct Migrations(Vec<Migration>);

impl Migrations {
    pub fn new(mut migrations: Vec<Migration>) -> Result<Self, String> {
        if migrations.is_empty() {
            return Err("no migration files: give at least one NNNN_name.sql".into());
        }
        migrations.sort_by_key(|m| m.version);
        for pair in migrations.windows(2) {
            if pair[0].version == pair[1].version {
                return Err(format!(
                    "{} and {} have the same number: give each file its own",
                    pair[0].file, pair[1].file
                ));
            }
        }
        Ok(Self(migrations))
    }

    pub fn all(&self) -> &[Migration] {
        &self.0
    }

    pub fn latest(&self) -> u32 {
        self.0.last().map_or(0, |m| m.version)
    }

    /// What a database that recorded `applied` still needs, in order; an
    /// error when its history and the files disagree: a file changed or
    /// removed after it was applied, or a new file numbered below the
    /// database's latest version.
    pub fn pending(&self, applied: &[Applied]) -> Result<Vec<&Migration>, String> {
        for done in applied {
            match self.0.iter().find(|m| m.version == done.version) {
                Some(file) if file.checksum != done.checksum => {
                    return Err(format!(
                        "{} changed after it was applied to this database (recorded checksum \
                         {}, the file's is now {}): restore the file as it was, and put the \
                         change in a new migration",
                        file.file,
                        short(&done.checksum),
                        short(&file.checksum)
                    ));
                }
                Some(_) => {}
                None => {
                    return Err(format!(
                        "this database has version {:04} ({}) applied, which is not among the \
                         files: add the file back (applied migrations stay in the directory)",
                        done.version, done.file
                    ));
                }
            }
        }
        let latest = applied.iter().map(|a| a.version).max().unwrap_or(0);
        let pending: Vec<&Migration> =
            self.0.iter().filter(|m| !applied.iter().any(|a| a.version == m.version)).collect();
        if let Some(late) = pending.iter().find(|m| m.version < latest) {
            return Err(format!(
                "{} is numbered below this database's latest version {latest:04}: number new \
                 migrations after the last applied one",
                late.file
            ));
        }
        Ok(pending)
    }
}

impl TryFrom<Vec<Migration>> for Migrations {
    type Error = String;

    fn try_from(migrations: Vec<Migration>) -> Result<Self, String> {
        for m in &migrations {
            let reparsed = Migration::parse(&m.file, m.sql.clone())?;
            if reparsed != *m {
                return Err(format!("{}: its version or checksum does not match it", m.file));
            }
        }
        Self::new(migrations)
    }
}

impl From<Migrations> for Vec<Migration> {
    fn from(migrations: Migrations) -> Self {
        migrations.0
    }
}

/// A migration a database records as applied.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Applied {
    #[sqlx(try_from = "i64")]
    pub version: u32,
    pub file: String,
    pub checksum: String,
}

/// The first statement that begins, ends or abandons a transaction, as
/// its line and keyword: outside comments, quoted strings and identifiers,
/// and dollar-quoted bodies (a PL/pgSQL `BEGIN` is inside one).
fn transaction_control(sql: &str) -> Option<(usize, String)> {
    const ENDERS: [&str; 6] = ["begin", "commit", "rollback", "start", "abort", "end"];
    let bytes = sql.as_bytes();
    let (mut i, mut line) = (0, 1);
    let mut statement_start = true;
    let mut in_body = false;
    let skip_to = |from: usize, end: &[u8]| {
        bytes[from..]
            .windows(end.len())
            .position(|w| w == end)
            .map_or(bytes.len(), |p| from + p + end.len())
    };
    while i < bytes.len() {
        let rest = &bytes[i..];
        let next = if rest.starts_with(b"--") {
            skip_to(i, b"\n")
        } else if rest.starts_with(b"/*") {
            skip_to(i + 2, b"*/")
        } else if rest[0] == b'\'' || rest[0] == b'"' {
            skip_to(i + 1, &rest[..1])
        } else if rest[0] == b'$' {
            let tag_len = rest[1..].iter().position(|&b| !(b.is_ascii_alphanumeric() || b == b'_'));
            match tag_len {
                Some(n) if rest.get(n + 1) == Some(&b'$') => skip_to(i + n + 2, &rest[..n + 2]),
                _ => i + 1,
            }
        } else if rest[0] == b';' {
            statement_start = true;
            i + 1
        } else if rest[0].is_ascii_alphabetic() {
            let len = rest
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || b == &b'_'))
                .unwrap_or(rest.len());
            let word = sql[i..i + len].to_ascii_lowercase();
            if statement_start {
                // A body (a SQLite trigger's, a `BEGIN ATOMIC` function's)
                // is statements up to `END`.
                if in_body && word == "end" {
                    in_body = false;
                } else if ENDERS.contains(&word.as_str()) {
                    return Some((line, word.to_ascii_uppercase()));
                }
            } else if word == "begin" {
                in_body = true;
            }
            statement_start = false;
            i + len
        } else {
            if !rest[0].is_ascii_whitespace() {
                statement_start = false;
            }
            i + 1
        };
        line += bytes[i..next.min(bytes.len())].iter().filter(|&&b| b == b'\n').count();
        i = next;
    }
    None
}

fn short(checksum: &str) -> &str {
    checksum.get(..12).unwrap_or(checksum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(file: &str, sql: &str) -> Migration {
        Migration::parse(file, sql.to_owned()).unwrap()
    }

    fn applied(m: &Migration) -> Applied {
        Applied { version: m.version, file: m.file.clone(), checksum: m.checksum.clone() }
    }

    #[test]
    fn names_are_numbered_and_plain() {
        for bad in ["1_a.sql", "0001.sql", "0001_.sql", "0001_A.sql", "0001_a.txt", "x001_a.sql"] {
            let error = Migration::parse(bad, "select 1".into()).unwrap_err();
            assert!(error.contains("NNNN_name.sql"), "{bad}: {error}");
        }
        assert!(Migration::parse("0000_a.sql", "select 1".into()).is_err());
        assert!(Migration::parse("0001_a.sql", " \n".into()).unwrap_err().contains("empty"));
        assert_eq!(m("00012_add_x.sql", "select 1").version, 12);
    }

    #[test]
    fn files_are_ordered_and_unique() {
        let set = Migrations::new(vec![m("0002_b.sql", "b"), m("0001_a.sql", "a")]).unwrap();
        assert_eq!(set.all()[0].file, "0001_a.sql");
        assert_eq!(set.latest(), 2);
        let twice = Migrations::new(vec![m("0001_a.sql", "a"), m("0001_b.sql", "b")]);
        assert!(twice.unwrap_err().contains("same number"));
        assert!(Migrations::new(vec![]).is_err());
    }

    #[test]
    fn a_database_history_must_match_the_files() {
        let (a, b, c) = (m("0001_a.sql", "a"), m("0002_b.sql", "b"), m("0003_c.sql", "c"));
        let set = Migrations::new(vec![a.clone(), b.clone(), c.clone()]).unwrap();
        let pending = set.pending(&[applied(&a)]).unwrap();
        assert_eq!(pending.iter().map(|m| m.version).collect::<Vec<_>>(), [2, 3]);
        assert!(set.pending(&[applied(&a), applied(&b), applied(&c)]).unwrap().is_empty());

        let changed = Applied { checksum: "0".repeat(64), ..applied(&a) };
        assert!(set.pending(&[changed]).unwrap_err().contains("changed after it was applied"));
        let gone = Applied { version: 9, file: "0009_z.sql".into(), checksum: "x".into() };
        assert!(set.pending(&[gone]).unwrap_err().contains("not among the files"));
        let skipped = set.pending(&[applied(&a), applied(&c)]).unwrap_err();
        assert!(skipped.contains("0002_b.sql is numbered below"), "{skipped}");
    }

    #[test]
    fn files_may_not_control_the_transaction() {
        for (sql, keyword) in [
            ("create table a (x int);\nCOMMIT;", "line 2: `COMMIT`"),
            ("begin;\ncreate table a (x int);", "line 1: `BEGIN`"),
            ("select 1; /* a\n b */ rollback;", "line 2: `ROLLBACK`"),
            ("START TRANSACTION;", "`START`"),
        ] {
            let error = Migration::parse("0001_a.sql", sql.into()).unwrap_err();
            assert!(error.contains(keyword), "{sql}: {error}");
        }
        for fine in [
            "create function f() returns int language plpgsql as $$ begin return 1; end $$;",
            "create function g() returns int language plpgsql as $body$ begin commit; end $body$;",
            "-- commit;\nselect 'begin; commit;' as \"rollback\";",
            "create trigger t after insert on a begin update b set n = n + 1; end;\nselect 1;",
            "create function h() returns int begin atomic select 1; end;",
        ] {
            assert!(Migration::parse("0001_a.sql", fine.into()).is_ok(), "{fine}");
        }
    }

    #[test]
    fn shared_tables_are_declared_in_a_comment() {
        let file =
            m("0001_a.sql", "-- bulkhead: shared Countries, ref.currencies\ncreate table x();");
        let shared: Vec<String> = file.shared_tables().into_iter().collect();
        assert_eq!(shared, ["countries", "ref.currencies"]);
    }

    #[test]
    fn a_tampered_record_does_not_deserialize() {
        let mut json =
            serde_json::to_value(Migrations::new(vec![m("0001_a.sql", "a")]).unwrap()).unwrap();
        json[0]["sql"] = "drop table x".into();
        assert!(serde_json::from_value::<Migrations>(json).is_err());
    }
}
