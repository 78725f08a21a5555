-- What the backup scheduler remembers of each tenant: its last backup that
-- succeeded (scheduled or not), and the failures since, so that a failing
-- tenant backs off alone and `bulkhead backups list` and /metrics can say
-- so. The backups themselves are in the backup store, not here.

CREATE TABLE backup_runs (
    tenant_id     UUID PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    last_success  TIMESTAMPTZ,
    last_backup   TEXT,
    last_attempt  TIMESTAMPTZ NOT NULL,
    failures      BIGINT NOT NULL DEFAULT 0,
    last_error    TEXT,
    retry_at      TIMESTAMPTZ
);
