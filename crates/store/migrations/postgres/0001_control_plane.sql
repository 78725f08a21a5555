-- The control plane's own state. Tenant data never lives here.

CREATE TABLE tenants (
    id               UUID        PRIMARY KEY,
    name             TEXT        NOT NULL UNIQUE,
    plan             TEXT        NOT NULL,
    isolation        TEXT        NOT NULL CHECK (isolation IN ('pool', 'silo')),
    region           TEXT        NOT NULL,
    admin_email      TEXT,
    state            TEXT        NOT NULL CHECK (state IN ('provisioning', 'active', 'suspended', 'offboarding', 'deleted', 'failed')),
    failure_step     TEXT,
    failure_reason   TEXT,
    failure_undone   BOOLEAN     NOT NULL DEFAULT FALSE,
    purge_requested  BOOLEAN     NOT NULL DEFAULT FALSE,
    last_error       TEXT,
    version          BIGINT      NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    provisioned_at   TIMESTAMPTZ
);

-- The reconciler's scan: every tenant that is not settled.
CREATE INDEX tenants_unsettled ON tenants (state) WHERE state IN ('provisioning', 'offboarding', 'failed');

CREATE TABLE tenant_steps (
    tenant_id   UUID        NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    step        TEXT        NOT NULL,
    status      TEXT        NOT NULL CHECK (status IN ('applied', 'undone')),
    output      JSONB,
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, step)
);

CREATE TABLE events (
    id          BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL,
    tenant_id   UUID,
    tenant      TEXT,
    actor       TEXT        NOT NULL,
    action      TEXT        NOT NULL,
    outcome     TEXT        NOT NULL,
    details     JSONB       NOT NULL
);

CREATE INDEX events_by_tenant ON events (tenant_id, id);

CREATE TABLE operator_tokens (
    id          UUID        PRIMARY KEY,
    name        TEXT        NOT NULL UNIQUE,
    token_hash  BYTEA       NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL
);
