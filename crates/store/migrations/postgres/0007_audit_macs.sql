-- The server signs only what its own writer wrote: every event carries an
-- HMAC-SHA256 by the writer (mac) under a key derived from the stream's
-- sealed signing key, or from the platform's key while that is not
-- loaded (mac_key_id names which). Events written before this version have
-- none; a signed checkpoint covers them.
--
-- audit_heads: the last head the writer signed for each stream (the signed
-- checkpoint itself), kept outside the audit schema, where the audit
-- tables' owner cannot roll it back; a writer that finds the stream behind
-- it refuses to sign.
--
-- Altering the audit tables needs their owner's rights, which the server's
-- role holds only for this migration (as in 0004).

DO $$
BEGIN
    EXECUTE format('GRANT %I TO %I', left(current_database(), 40) || '_audit_owner', current_user);
END
$$;

ALTER TABLE audit.audit_events ADD COLUMN mac BYTEA;
ALTER TABLE audit.audit_events ADD COLUMN mac_key_id TEXT;

DO $$
BEGIN
    EXECUTE format('REVOKE %I FROM %I', left(current_database(), 40) || '_audit_owner', current_user);
END
$$;

CREATE TABLE audit_heads (
    stream     TEXT   PRIMARY KEY,
    seq        BIGINT NOT NULL,
    head       BYTEA  NOT NULL,
    time       TEXT   NOT NULL,
    key_id     TEXT   NOT NULL,
    signature  BYTEA  NOT NULL
);
