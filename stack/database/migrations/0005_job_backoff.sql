-- Jobs wait out outages: a model that answered 503/504 (or could not be reached) is retried with backoff
-- until the job's deadline; the answers already final are kept so that only the waiting models run again.
ALTER TABLE jobs
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),  -- a queued job is not claimed before
    ADD COLUMN deadline_at     timestamptz,                          -- still waiting then → failed
    ADD COLUMN answers         jsonb NOT NULL DEFAULT '{}',          -- {model: result} final so far (2xx/4xx)
    ADD COLUMN outages         jsonb NOT NULL DEFAULT '{}';          -- {model: {status, error, attempts, since}}

-- Jobs stored before this migration, or by a bridge of the previous release during a rolling update, get the
-- default budget (the bridge sets its own from BRIDGE_JOB_DEADLINE_S or ?deadline=).
UPDATE jobs SET deadline_at = now() + interval '10 minutes' WHERE status IN ('queued', 'running');
ALTER TABLE jobs ALTER COLUMN deadline_at SET DEFAULT now() + interval '10 minutes';

-- The claim: queued and due, or running with an expired lease.
CREATE INDEX jobs_due ON jobs (next_attempt_at) WHERE status = 'queued';
CREATE INDEX jobs_leased ON jobs (lease_until) WHERE status = 'running';
