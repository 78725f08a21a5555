-- The gateway's contracts: each tenant's APIs, their validated spec in JSON.

CREATE TABLE apis (
    tenant_id   BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
