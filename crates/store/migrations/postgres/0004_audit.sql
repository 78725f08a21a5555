-- Audit: one hash-chained stream per tenant plus the platform's, signed
-- checkpoints, and the streams' public keys.
--
-- Append-only, enforced by the database rather than by Bulkhead's code:
--   * the schema `audit`, its tables and functions belong to the role
--     <database>_audit_owner (NOLOGIN; the database name cut to 40
--     characters), which the server's role is not a member of once this
--     migration has run. A schema of its own, because whoever owns a
--     schema (for `public`, the database's owner) may drop what is in it;
--   * the server's role may only SELECT and INSERT the tables, and EXECUTE
--     the retention function;
--   * triggers refuse UPDATE, TRUNCATE, and any DELETE but the retention
--     function's, which deletes only events a signed truncation checkpoint
--     already covers (a superuser can still switch triggers off).
-- The server names the tables with their schema: an unqualified name could
-- find a look-alike table its own role made earlier on the search path.
-- Events recorded before this version stay, unchained, in
-- `events_before_audit`; new ones go to the streams.

ALTER TABLE events RENAME TO events_before_audit;

CREATE SCHEMA audit;

CREATE TABLE audit.audit_events (
    stream      TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    time        TEXT   NOT NULL,
    actor_kind  TEXT   NOT NULL,
    actor_id    TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    resource    TEXT   NOT NULL,
    outcome     TEXT   NOT NULL,
    request_id  TEXT,
    -- Canonical JSON, exactly the text the hash covers.
    details     TEXT   NOT NULL,
    prev_hash   BYTEA  NOT NULL,
    hash        BYTEA  NOT NULL,
    PRIMARY KEY (stream, seq)
);

-- No index on time: within a stream, time grows with seq, and the rare
-- queries by time (exports --since, retention) scan one stream by its key.
-- Every index is one more place each append writes to.

CREATE TABLE audit.audit_checkpoints (
    stream     TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    head       BYTEA  NOT NULL,
    time       TEXT   NOT NULL,
    kind       TEXT   NOT NULL CHECK (kind IN ('periodic', 'truncation')),
    key_id     TEXT   NOT NULL,
    signature  BYTEA  NOT NULL,
    PRIMARY KEY (stream, seq, kind)
);

CREATE TABLE audit.audit_keys (
    stream      TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (stream, key_id)
);

CREATE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Nested, not ANDed: OLD.seq exists only on audit_events rows.
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'audit_events'
       AND current_user = left(current_database(), 40) || '_audit_owner' THEN
        IF EXISTS (SELECT 1 FROM audit.audit_checkpoints
                   WHERE stream = OLD.stream AND kind = 'truncation' AND seq >= OLD.seq) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit.audit_events
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON audit.audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit.audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON audit.audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER append_only BEFORE UPDATE OR DELETE ON audit.audit_keys
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER no_truncate BEFORE TRUNCATE ON audit.audit_keys
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();

-- Retention's one path: records the signed truncation checkpoint, then
-- deletes the events it covers. Runs as the owner, so the trigger lets
-- exactly these deletes through.
CREATE FUNCTION audit.truncate_stream(
    p_stream TEXT, p_seq BIGINT, p_head BYTEA, p_time TEXT, p_key_id TEXT, p_signature BYTEA
) RETURNS BIGINT LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, audit AS $$
DECLARE
    deleted BIGINT;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM audit.audit_events
                   WHERE stream = p_stream AND seq = p_seq AND hash = p_head) THEN
        RAISE EXCEPTION 'no event % with that hash in stream %', p_seq, p_stream;
    END IF;
    -- Only what a periodic checkpoint already signed, and nothing recent:
    -- retention is for old history, never for the tail of a stream.
    IF NOT EXISTS (SELECT 1 FROM audit.audit_checkpoints
                   WHERE stream = p_stream AND kind = 'periodic' AND seq >= p_seq) THEN
        RAISE EXCEPTION 'event % of stream % is not under a periodic checkpoint yet', p_seq, p_stream;
    END IF;
    IF (SELECT time FROM audit.audit_events WHERE stream = p_stream AND seq = p_seq)
       > to_char(now() AT TIME ZONE 'UTC' - interval '1 day', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') THEN
        RAISE EXCEPTION 'event % of stream % is less than a day old', p_seq, p_stream;
    END IF;
    INSERT INTO audit.audit_checkpoints (stream, seq, head, time, kind, key_id, signature)
        VALUES (p_stream, p_seq, p_head, p_time, 'truncation', p_key_id, p_signature)
        ON CONFLICT DO NOTHING;
    DELETE FROM audit.audit_events WHERE stream = p_stream AND seq <= p_seq;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

DO $$
DECLARE
    owner TEXT := left(current_database(), 40) || '_audit_owner';
    me TEXT := current_user;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = owner) THEN
        EXECUTE format('CREATE ROLE %I NOLOGIN', owner);
    END IF;
    -- Membership and CREATE only for the hand-over, both taken back below.
    EXECUTE format('GRANT %I TO %I', owner, me);
    EXECUTE format('GRANT CREATE ON DATABASE %I TO %I', current_database(), owner);
    EXECUTE format('ALTER SCHEMA audit OWNER TO %I', owner);
    EXECUTE format('ALTER TABLE audit.audit_events OWNER TO %I', owner);
    EXECUTE format('ALTER TABLE audit.audit_checkpoints OWNER TO %I', owner);
    EXECUTE format('ALTER TABLE audit.audit_keys OWNER TO %I', owner);
    EXECUTE format('ALTER FUNCTION audit.refuse_change() OWNER TO %I', owner);
    EXECUTE format('ALTER FUNCTION audit.truncate_stream(TEXT, BIGINT, BYTEA, TEXT, TEXT, BYTEA) OWNER TO %I', owner);
    EXECUTE format('REVOKE CREATE ON DATABASE %I FROM %I', current_database(), owner);
    REVOKE ALL ON ALL TABLES IN SCHEMA audit FROM PUBLIC;
    REVOKE ALL ON FUNCTION audit.truncate_stream(TEXT, BIGINT, BYTEA, TEXT, TEXT, BYTEA) FROM PUBLIC;
    EXECUTE format('GRANT USAGE ON SCHEMA audit TO %I', me);
    EXECUTE format('GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA audit TO %I', me);
    EXECUTE format('GRANT EXECUTE ON FUNCTION audit.truncate_stream(TEXT, BIGINT, BYTEA, TEXT, TEXT, BYTEA) TO %I', me);
    EXECUTE format('REVOKE %I FROM %I', owner, me);
END
$$;
