-- What the backup scheduler remembers of each tenant: its last backup that
-- succeeded (scheduled or not), and the failures since, so that a failing
-- tenant backs off alone and `bulkhead backups list` and /metrics can say
-- so. The backups themselves are in the backup store, not here.

CREATE TABLE backup_runs (
    tenant_id     BLOB PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    last_success  TEXT,
    last_backup   TEXT,
    last_attempt  TEXT NOT NULL,
    failures      INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT,
    retry_at      TEXT
);
