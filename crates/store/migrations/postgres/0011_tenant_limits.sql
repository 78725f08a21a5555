-- A tenant's own gateway limits, overriding its plan's field by field:
-- bulkhead_model::TenantLimits in JSON, `{}` when it has none.

ALTER TABLE tenants ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
