-- Runs are found by what they are about: a workflow's "search" declares input paths whose values
-- are kept on each run it starts ({"lead": "30012"}), and a client may add tags when it enqueues.
-- Both live in runs.meta (string values only), found with containment (meta @> '{"lead":
-- "30012"}') through a GIN index of jsonb_path_ops, which indexes each key-value pair as one hash
-- and answers an exact match without scanning. Runs without metadata stay out of the index, and
-- meta never changes once a run exists, so the index does not stop progress updates being HOT.
ALTER TABLE runs ADD COLUMN meta jsonb;
CREATE INDEX runs_meta ON runs USING gin (meta jsonb_path_ops) WHERE meta IS NOT NULL;
