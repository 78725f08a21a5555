-- For gateways that run on their own and follow the store: how clients
-- reach the control plane (realms' issuers start with it), and the
-- decisions they queue for the control plane to record on the tenants'
-- audit streams (a gateway holds no signing keys).

ALTER TABLE installation ADD COLUMN public_url TEXT;

CREATE TABLE gateway_decisions (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   UUID NOT NULL,
    record      TEXT NOT NULL
);
