-- Each tenant's resources that are a spec and nothing else: guardrails
-- now, tools next. `kind` says which model type `spec` (JSON) is; the
-- model validates it on the way in and again on the way out.

CREATE TABLE tenant_resources (
    tenant_id   BLOB NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, kind, name)
);

CREATE INDEX tenant_resources_by_kind ON tenant_resources (kind);
