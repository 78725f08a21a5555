-- The installation this store belongs to: its id is also kept in the data
-- directory, so that a data directory is never used with another store
-- (an embedded one swapped for PostgreSQL, say), which would look like an
-- empty installation beside the first one's files.

CREATE TABLE installation (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    id         TEXT    NOT NULL
);
