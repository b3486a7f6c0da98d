-- Durable async jobs: one photo, several models; a PostgreSQL queue shared by every bridge process.
CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    models          text[] NOT NULL,
    input_sha256    char(64) NOT NULL,
    input_bytes     integer NOT NULL,
    content_type    text NOT NULL,
    photo           bytea,                 -- dropped once the job is finished
    idempotency_key text UNIQUE,
    attempts        integer NOT NULL DEFAULT 0,
    lease_until     timestamptz,           -- a running job whose lease expired is picked up again
    results         jsonb,                 -- {model: {status, request_id, output}}
    error           text
);

CREATE INDEX jobs_pending ON jobs (created_at) WHERE status IN ('queued', 'running');
