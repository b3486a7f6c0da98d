-- Reports and history at millions of rows: index-only scans per model and time range, keyset pagination.
CREATE INDEX inferences_model_time_cover ON inferences (model, created_at)
    INCLUDE (model_version, status, top_label, latency_ms);
CREATE INDEX inferences_keyset ON inferences (created_at DESC, request_id DESC);
DROP INDEX IF EXISTS inferences_time;
DROP INDEX IF EXISTS inferences_model_time;  -- superseded by the covering index above
