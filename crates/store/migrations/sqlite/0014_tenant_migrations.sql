-- Rolling migrations of tenant databases: each run is a job, recorded
-- with its files so that it outlives the CLI that started it and resumes
-- after a restart; each database it covers is a target with its outcome.

CREATE TABLE migration_jobs (
    id           BLOB PRIMARY KEY,
    created_at   TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    state        TEXT NOT NULL,
    spec         TEXT NOT NULL,
    finished_at  TEXT
);

-- One job runs at a time.
CREATE UNIQUE INDEX migration_jobs_one_running ON migration_jobs (state) WHERE state = 'running';
CREATE INDEX migration_jobs_by_time ON migration_jobs (created_at);

CREATE TABLE migration_targets (
    job_id        BLOB NOT NULL REFERENCES migration_jobs (id) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    tenant_id     BLOB,
    region        TEXT NOT NULL,
    label         TEXT NOT NULL,
    canary        BOOLEAN NOT NULL,
    state         TEXT NOT NULL,
    from_version  INTEGER,
    to_version    INTEGER,
    detail        TEXT,
    finished_at   TEXT,
    PRIMARY KEY (job_id, position)
);
