-- The job queue. It lives in a schema of its own (Config.Schema, on the
-- connections' search_path), beside goose's version table for it, so it
-- never touches the host store's tables or migrations.

-- +goose Up
CREATE TABLE jobs (
    id            text        PRIMARY KEY, -- hex sha256 of kind and input
    kind          text        NOT NULL,
    priority      integer     NOT NULL,    -- jobs.Priority(kind): lower is claimed first
    input         bytea       NOT NULL,
    state         text        NOT NULL CHECK (state IN ('ready', 'running', 'succeeded', 'failed')),
    attempt       integer     NOT NULL DEFAULT 0,
    worker        text        NOT NULL DEFAULT '',
    -- Kept after the job finished, so a replayed result can be recognised.
    lease_token   text        NOT NULL DEFAULT '',
    lease_expires timestamptz,
    created_at    timestamptz NOT NULL,
    started_at    timestamptz,
    heartbeat_at  timestamptz,
    finished_at   timestamptz,
    result        bytea,
    error_class   text        NOT NULL DEFAULT '',
    error         text        NOT NULL DEFAULT ''
);
-- The claim order, over ready jobs only.
CREATE INDEX jobs_ready ON jobs (priority, created_at, id) WHERE state = 'ready';
-- The rescuer's two scans.
CREATE INDEX jobs_leases ON jobs (lease_expires) WHERE state = 'running';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('succeeded', 'failed');
-- List.
CREATE INDEX jobs_created ON jobs (created_at, id);

-- +goose Down
DROP TABLE jobs;
