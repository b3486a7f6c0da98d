-- API keys (docs/api-keys.md): created, listed and revoked by `servingctl keys`; every bridge reads the active ones
-- about twice a second. Only a key's SHA-256 is stored: the key itself is shown once, when it is created.
CREATE TABLE api_keys (
    id           text PRIMARY KEY,                -- the key's public part (pk_<id>_… / sk_<id>_…): shown in lists and metrics
    name         text NOT NULL,                   -- what it is for ("web shop", "nightly import")
    kind         text NOT NULL CHECK (kind IN ('publishable', 'secret')),
    sha256       text NOT NULL,                   -- hex digest of the whole key
    scopes       text[] NOT NULL,                 -- predict, jobs (publishable: only these); results, reports, feedback, admin
    origins      text[] NOT NULL DEFAULT '{}',    -- browser origins a publishable key may be used from (CORS)
    rate_per_s   double precision CHECK (rate_per_s > 0),   -- token bucket: sustained requests per second; NULL = no limit
    burst        integer CHECK (burst >= 1),                -- and its depth
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL,
    revoked_at   timestamptz,
    revoked_by   text
);
CREATE INDEX api_keys_active ON api_keys (id) WHERE revoked_at IS NULL;
