use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "cannot reach the control store at {location}: {}; check --store (or \
         BULKHEAD_STORE) and that the server is running and accepts this user",
        describe(source)
    )]
    Unreachable {
        location: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot bring the control store at {location} up to date: {source}")]
    Migrate {
        location: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("cannot lock {what}: {reason}")]
    Locked { what: String, reason: String },
    #[error("a tenant named {0:?} already exists")]
    NameTaken(String),
    #[error("{0} already exists")]
    Duplicate(String),
    #[error("the tenant record changed since it was read")]
    VersionConflict,
    #[error("tenant {0} does not exist")]
    NotFound(String),
    #[error("the control store holds a value it cannot read ({0}); was it edited by hand?")]
    Corrupt(String),
    #[error("control store query failed: {0}")]
    Query(#[from] sqlx::Error),
}

impl StoreError {
    pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
        err.as_database_error().is_some_and(|e| e.is_unique_violation())
    }
}

/// A database error as a person needs it: the server's own message, without
/// where in PostgreSQL's source it was raised, and what to do about the
/// common ones; the innermost cause of anything else.
pub fn describe(error: &sqlx::Error) -> String {
    if let Some(db) = error.as_database_error() {
        let message = db.message().to_owned();
        return match db.code().as_deref() {
            // invalid_catalog_name
            Some("3D000") => format!("{message} (create it first, e.g. `createdb`)"),
            // invalid_password, invalid_authorization_specification
            Some("28P01" | "28000") => format!("{message} (check the user and password)"),
            _ => message,
        };
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}
