-- Only Bulkhead connects to its own database. PostgreSQL lets every role
-- (PUBLIC) connect to a new database, which would let a tenant's database
-- credential connect here and list the control plane's tables. Revoked when
-- the server's role owns the database (it can then still connect as the
-- owner); otherwise the server warns at start with the statement to run.

DO $$
BEGIN
    IF (SELECT datdba FROM pg_catalog.pg_database WHERE datname = current_database())
       = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    END IF;
END
$$;
