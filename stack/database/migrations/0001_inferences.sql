-- Every inference the bridge served (successes and failures), exactly once per request id.
CREATE TABLE inferences (
    request_id    uuid PRIMARY KEY,
    created_at    timestamptz NOT NULL,
    model         text NOT NULL,
    model_version text,
    source        text NOT NULL,          -- 'sync' (proxied prediction) or 'job'
    status        smallint NOT NULL,      -- HTTP status answered to the client
    latency_ms    double precision NOT NULL,
    batch_size    integer,
    input_sha256  char(64) NOT NULL,
    input_bytes   integer NOT NULL,
    top_label     text,
    top_score     double precision,
    output        jsonb,
    error         text
);

CREATE INDEX inferences_model_time ON inferences (model, created_at DESC);
CREATE INDEX inferences_time ON inferences (created_at DESC);
CREATE INDEX inferences_input ON inferences (input_sha256);
