-- /metrics counts the runs that are not finished (flowd_runs{state}): with this index a scrape
-- reads those rows only, however many finished runs the table keeps until retention. A run's
-- state changes twice while it is in here (queued -> running -> finished), and those updates are
-- no longer HOT; its progress updates (steps_done) still are.
CREATE INDEX runs_active ON runs (state) WHERE state IN ('queued', 'running');
