-- API keys made with a token cannot outlive it (expires_at), and are
-- revoked with the realm's tokens (from_token: made with a token, or with
-- a key itself made with one), so a stolen token cannot renew itself.

ALTER TABLE identity_api_keys ADD COLUMN expires_at TIMESTAMPTZ;
ALTER TABLE identity_api_keys ADD COLUMN from_token BOOLEAN NOT NULL DEFAULT FALSE;
