-- Every change servingctl makes to what TorchServe serves: default versions, registered versions, workers.
-- `servingctl rollback` reads it to find the previous default; `servingctl history` prints it.
CREATE TABLE model_changes (
    id          bigserial PRIMARY KEY,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,                 -- who ($USER or --actor)
    model       text NOT NULL,
    version     text,                          -- the version acted on
    action      text NOT NULL CHECK (action IN
                    ('deploy', 'deploy-rejected', 'set-default', 'rollback', 'retire', 'scale')),
    from_value  text,                          -- before: a default version, or "min=2 max=2 workers=2"
    to_value    text,                          -- after
    reverts     bigint REFERENCES model_changes (id),  -- for a rollback: the default change it undid
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX model_changes_model_time ON model_changes (model, id DESC);
