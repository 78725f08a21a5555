-- Lease revocation that one tenant cannot stall for others: a lease whose
-- role cannot be dropped is retried with backoff (next_attempt_at), so it
-- leaves the front of the sweeper's queue; its last error is kept for
-- operators. disabled_at: the role was made NOLOGIN because its tenant was
-- suspended; resuming the tenant lets it log in again.

ALTER TABLE vault_leases ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE vault_leases ADD COLUMN next_attempt_at TIMESTAMPTZ;
ALTER TABLE vault_leases ADD COLUMN last_error TEXT;
ALTER TABLE vault_leases ADD COLUMN disabled_at TIMESTAMPTZ;

-- Leases waiting for another attempt, found without scanning the others.
CREATE INDEX vault_leases_retry ON vault_leases (next_attempt_at)
    WHERE revoked_at IS NULL AND next_attempt_at IS NOT NULL;
