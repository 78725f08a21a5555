-- Audit: one hash-chained stream per tenant plus the platform's, signed
-- checkpoints, and the streams' public keys. Append-only: triggers refuse
-- every UPDATE, and every DELETE but retention's, which may delete only
-- events a truncation checkpoint already covers.
-- Events recorded before this version stay, unchained, in
-- `events_before_audit`; new ones go to the streams.

ALTER TABLE events RENAME TO events_before_audit;

CREATE TABLE audit_events (
    stream      TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    time        TEXT    NOT NULL,
    actor_kind  TEXT    NOT NULL,
    actor_id    TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    resource    TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    request_id  TEXT,
    -- Canonical JSON, exactly the text the hash covers.
    details     TEXT    NOT NULL,
    prev_hash   BLOB    NOT NULL,
    hash        BLOB    NOT NULL,
    PRIMARY KEY (stream, seq)
);

-- No index on time: within a stream, time grows with seq, and the rare
-- queries by time (exports --since, retention) scan one stream by its key.
-- Every index is one more place each append writes to.

CREATE TABLE audit_checkpoints (
    stream     TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    head       BLOB    NOT NULL,
    time       TEXT    NOT NULL,
    kind       TEXT    NOT NULL CHECK (kind IN ('periodic', 'truncation')),
    key_id     TEXT    NOT NULL,
    signature  BLOB    NOT NULL,
    PRIMARY KEY (stream, seq, kind)
);

CREATE TABLE audit_keys (
    stream      TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (stream, key_id)
);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only');
END;

CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN NOT EXISTS (
    SELECT 1 FROM audit_checkpoints
    WHERE stream = OLD.stream AND kind = 'truncation' AND seq >= OLD.seq
)
BEGIN
    SELECT RAISE(ABORT, 'audit events are append-only; retention deletes only events a truncation checkpoint covers');
END;

CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;

CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit checkpoints are append-only');
END;

CREATE TRIGGER audit_keys_no_update BEFORE UPDATE ON audit_keys
BEGIN
    SELECT RAISE(ABORT, 'audit keys are append-only');
END;

CREATE TRIGGER audit_keys_no_delete BEFORE DELETE ON audit_keys
BEGIN
    SELECT RAISE(ABORT, 'audit keys are append-only');
END;
