-- Safe rollouts (docs/rollouts.md): a candidate version shadowed or canaried beside the live one, compared, promoted.

-- A candidate's answer to a request it did not serve (shadowing, or a replay of a captured photo): the id of the
-- live request it mirrors. Results, reports, the cache and the dashboards count only rows where it is NULL.
ALTER TABLE inferences ADD COLUMN shadow_of uuid;
CREATE INDEX inferences_shadow_pairs ON inferences (model, model_version, created_at) INCLUDE (shadow_of)
    WHERE shadow_of IS NOT NULL;

-- The reports' covering index, now over served rows only (their queries say `shadow_of IS NULL`).
CREATE INDEX inferences_served_cover ON inferences (model, created_at)
    INCLUDE (model_version, status, top_label, latency_ms) WHERE shadow_of IS NULL;
DROP INDEX IF EXISTS inferences_model_time_cover;

-- One rollout at a time per model: a candidate version shadowed (a fraction of live requests also sent to it) or
-- canaried (a percentage of clients answered by it). Every bridge reads the active ones; servingctl writes them.
CREATE TABLE rollouts (
    id            bigserial PRIMARY KEY,
    model         text NOT NULL,
    version       text NOT NULL,               -- the candidate
    live_version  text,                        -- the default when it started
    mode          text NOT NULL CHECK (mode IN ('shadow', 'canary')),
    fraction      double precision NOT NULL CHECK (fraction > 0 AND fraction <= 1),  -- of requests / of clients
    thresholds    jsonb NOT NULL DEFAULT '{}', -- a canary's abort margins (bridge.rollouts.CanaryLimits)
    state         text NOT NULL CHECK (state IN ('active', 'stopped', 'aborted', 'promoted')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    started_by    text NOT NULL,
    ended_at      timestamptz,
    ended_reason  text
);
CREATE UNIQUE INDEX rollouts_one_active ON rollouts (model) WHERE state = 'active';

-- The history audits every step of a rollout.
ALTER TABLE model_changes DROP CONSTRAINT IF EXISTS model_changes_action_check;
ALTER TABLE model_changes ADD CONSTRAINT model_changes_action_check CHECK (action IN (
    'deploy', 'deploy-rejected', 'set-default', 'rollback', 'retire', 'scale',
    'shadow', 'canary', 'canary-abort', 'rollout-stop', 'promote', 'promote-refused', 'promote-forced', 'replay'));

-- Ground truth for served answers: one per request id (POST /v1/feedback), for live accuracy per version.
CREATE TABLE feedback (
    request_id    uuid PRIMARY KEY,
    received_at   timestamptz NOT NULL DEFAULT now(),
    model         text NOT NULL,
    model_version text,
    truth         jsonb NOT NULL
);
CREATE INDEX feedback_model_time ON feedback (model, received_at);
