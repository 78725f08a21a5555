-- Identity: a realm per tenant, its signing keys (private halves sealed in
-- vault_blobs), an external identity provider it may trust, API keys.

CREATE TABLE identity_realms (
    tenant_id         UUID        PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    algorithm         TEXT    NOT NULL CHECK (algorithm IN ('EdDSA', 'ES256')),
    default_ttl_secs  BIGINT  NOT NULL,
    max_ttl_secs      BIGINT  NOT NULL,
    -- Tokens issued at or before this time are refused: `auth revoke-tokens`.
    tokens_not_before TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);

CREATE TABLE identity_keys (
    tenant_id     UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kid           TEXT NOT NULL,
    algorithm     TEXT NOT NULL CHECK (algorithm IN ('EdDSA', 'ES256')),
    public_jwk    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    -- Set when a newer key took over signing; the key stays published
    -- until remove_after, when no token it signed can still be valid.
    retired_at    TIMESTAMPTZ,
    remove_after  TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, kid)
);

CREATE TABLE identity_trusts (
    tenant_id      UUID PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    issuer         TEXT NOT NULL,
    jwks_url       TEXT NOT NULL,
    audience       TEXT NOT NULL,
    subject_claim  TEXT NOT NULL,
    roles_claim    TEXT NOT NULL,
    -- JSON object: the provider's role values and the Bulkhead role each grants.
    role_map       TEXT NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);

CREATE TABLE identity_api_keys (
    id            UUID PRIMARY KEY,
    tenant_id     UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    -- The key's first characters, to recognise it in lists: bh_acme_3kX9.
    prefix        TEXT NOT NULL,
    key_hash      BYTEA NOT NULL UNIQUE,
    roles         TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    last_used_at  TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ,
    UNIQUE (tenant_id, name)
);
