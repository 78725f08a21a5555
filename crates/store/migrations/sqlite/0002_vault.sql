-- The vault: wrapped data keys, encrypted secrets, credential leases.
-- Plaintext keys and secret values are never stored.

-- The id of the master key that wraps data keys, so that a server started
-- with another key refuses to start instead of wrapping new keys with it.
CREATE TABLE vault_master_key (
    singleton   INTEGER PRIMARY KEY CHECK (singleton = 1),
    kek_id      TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);

CREATE TABLE vault_data_keys (
    tenant_id   BLOB    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    kek_id      TEXT    NOT NULL,
    wrapped     BLOB    NOT NULL,
    created_at  TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, version)
);

CREATE INDEX vault_data_keys_by_kek ON vault_data_keys (kek_id);

CREATE TABLE vault_secrets (
    tenant_id    BLOB    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    path         TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    key_version  INTEGER NOT NULL,
    ciphertext   BLOB    NOT NULL,
    size         INTEGER NOT NULL,
    created_at   TEXT    NOT NULL,
    created_by   TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, path, version)
);

CREATE TABLE vault_leases (
    id          BLOB    PRIMARY KEY NOT NULL,
    tenant_id   BLOB    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    region      TEXT    NOT NULL,
    database    TEXT    NOT NULL,
    role        TEXT    NOT NULL UNIQUE,
    access      TEXT    NOT NULL CHECK (access IN ('read', 'write')),
    issued_by   TEXT    NOT NULL,
    issued_at   TEXT    NOT NULL,
    expires_at  TEXT    NOT NULL,
    revoked_at  TEXT
);

CREATE INDEX vault_leases_live ON vault_leases (expires_at) WHERE revoked_at IS NULL;
CREATE INDEX vault_leases_by_tenant ON vault_leases (tenant_id, issued_at);

CREATE TABLE vault_lockouts (
    principal   TEXT PRIMARY KEY NOT NULL,
    reason      TEXT NOT NULL,
    locked_at   TEXT NOT NULL
);

-- Keys other capabilities keep under a tenant's data key (realm signing
-- keys, audit keys, backup keys), re-encrypted with the secrets.
CREATE TABLE vault_blobs (
    tenant_id    BLOB    NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    label        TEXT    NOT NULL,
    key_version  INTEGER NOT NULL,
    ciphertext   BLOB    NOT NULL,
    created_at   TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, label)
);
