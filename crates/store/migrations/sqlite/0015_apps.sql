-- Each tenant's apps, run by the runtime as confined workers. `spec` is a
-- bulkhead_model::AppSpec in JSON; `previous` the spec it replaced, which a
-- failed rollout goes back to. `running` is what the operator asked for
-- (start/stop); `pinned` keeps the app out of rollouts.

CREATE TABLE apps (
    tenant_id   BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    previous    TEXT,
    running     BOOLEAN NOT NULL DEFAULT TRUE,
    pinned      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- The Unix user of each tenant's workers, from the configured range. The
-- row outlives the tenant (no foreign key): a uid that may still own files
-- is never given to another tenant until it is released by hand.
CREATE TABLE runtime_users (
    uid           INTEGER PRIMARY KEY,
    tenant_id     BLOB NOT NULL UNIQUE,
    allocated_at  TEXT NOT NULL
);

-- Each tenant's configuration and feature flags, given to its workers as a
-- file they re-read on SIGHUP.
CREATE TABLE tenant_flags (
    tenant_id   BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, key)
);
