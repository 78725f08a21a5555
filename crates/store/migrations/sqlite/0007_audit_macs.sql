-- The server signs only what its own writer wrote: every event carries an
-- HMAC-SHA256 by the writer (mac) under a key derived from the stream's
-- sealed signing key, or from the platform's key while that is not
-- loaded (mac_key_id names which). Events written before this version have
-- none; a signed checkpoint covers them.
--
-- audit_heads: the last head the writer signed for each stream (the signed
-- checkpoint itself); a writer that finds the stream behind it refuses to
-- sign. (Whoever can write this file can change both; the witness file
-- outside it, and tenants' earlier exports, are what catch that.)

ALTER TABLE audit_events ADD COLUMN mac BLOB;
ALTER TABLE audit_events ADD COLUMN mac_key_id TEXT;

CREATE TABLE audit_heads (
    stream     TEXT    PRIMARY KEY,
    seq        INTEGER NOT NULL,
    head       BLOB    NOT NULL,
    time       TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    signature  BLOB    NOT NULL
);
