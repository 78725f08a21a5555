-- Tenants that left: what `tenants delete` keeps of each (its record, and
-- where its final snapshot is and the key that opens it, wrapped by the
-- master key) until the snapshot expires. No foreign key to tenants: the
-- tenant's row is gone and its name free for a new tenant.

CREATE TABLE departed_tenants (
    tenant_id        UUID PRIMARY KEY,
    name             TEXT NOT NULL,
    record           TEXT NOT NULL,
    backup_id        TEXT,
    recipient        TEXT,
    kek_id           TEXT,
    wrapped_key      BYTEA,
    -- The snapshot's manifest as it was taken: what a restore must find in
    -- the archive (the backup store alone cannot pass another off as it).
    manifest         TEXT,
    sealed_identity  BYTEA,
    departed_at      TIMESTAMPTZ NOT NULL,
    expires_at       TIMESTAMPTZ NOT NULL
);

CREATE INDEX departed_tenants_by_name ON departed_tenants (name, departed_at);
