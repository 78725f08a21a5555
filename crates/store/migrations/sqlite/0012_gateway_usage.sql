-- The gateway's usage per tenant, API and minute, as deltas the meter
-- summed: a minute may have several rows, added up when read.

CREATE TABLE gateway_usage (
    tenant_id  BLOB NOT NULL,
    api        TEXT NOT NULL,
    minute     TEXT NOT NULL,
    row        TEXT NOT NULL
);

CREATE INDEX gateway_usage_by_tenant ON gateway_usage (tenant_id, minute);
CREATE INDEX gateway_usage_by_minute ON gateway_usage (minute);
