-- The billing ledger: each tenant's usage per UTC day, API and model or
-- tool, summed as the gateway's usage is stored (in the same
-- transaction), so it reconciles with it and outlives the per-minute rows
-- and Redis, whose budget counters are seeded from it.
-- kind: 'requests' (every request, item ''), 'model' or 'tool' (item
-- names it). Amounts are integer micro-units of the prices' currency.

CREATE TABLE usage_ledger (
    tenant_id    UUID NOT NULL,
    day          TEXT NOT NULL,
    api          TEXT NOT NULL,
    kind         TEXT NOT NULL,
    item         TEXT NOT NULL,
    requests     BIGINT NOT NULL,
    tokens_in    BIGINT NOT NULL,
    tokens_out   BIGINT NOT NULL,
    cost_micros  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, day, api, kind, item)
);

CREATE INDEX usage_ledger_by_day ON usage_ledger (day);

-- Budget notices already given, so each is given once per tenant and
-- period whatever the gateways and restarts: 'soft_cap' for now.
CREATE TABLE budget_notices (
    tenant_id    UUID NOT NULL,
    period       TEXT NOT NULL,
    kind         TEXT NOT NULL,
    noticed_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, period, kind)
);
