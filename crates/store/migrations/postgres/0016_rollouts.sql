-- `live` is the spec the gateway routes an app's requests to. A deploy
-- changes `spec`; the runtime starts the new spec's workers beside the
-- live ones and, once they pass their health check, sets `live` to
-- `spec` (the switch), or sets `spec` back to `live` (the revert). NULL
-- on apps stored before this column: their spec is live.
ALTER TABLE apps ADD COLUMN live TEXT;

-- Bumped by every write of the row: writers read it and write only if it
-- is unchanged, so the runtime's switch, a deploy, a rollout and a pin never
-- overwrite one another.
ALTER TABLE apps ADD COLUMN revision BIGINT NOT NULL DEFAULT 1;

-- Rollouts of a version across every tenant's app of one name. `body` is
-- the rollout in JSON (its options and each tenant's step); `state` is
-- copied out of it so that one app has at most one rollout under way.
CREATE TABLE rollouts (
    id          UUID PRIMARY KEY,
    app         TEXT NOT NULL,
    state       TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE UNIQUE INDEX rollouts_one_under_way ON rollouts (app)
    WHERE state IN ('running', 'paused', 'halted');
