use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(
        "cannot reach the control store at {location}: {source}; check --store (or \
         BULKHEAD_STORE) and that the server is running and accepts this user"
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
