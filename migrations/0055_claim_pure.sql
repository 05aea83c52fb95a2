-- A claim's answer says which steps it only locked: pure steps (a kind whose attempt has no effect
-- outside the database, such as transform) are not written running by the claim; the worker
-- computes them while the claim's transaction is open and finishes them before it commits
-- (flowd_finish_pure), so such a step's row is updated once instead of twice. Workers of the
-- previous release read the columns by position and never ask for pure steps.
ALTER TYPE flowd_work_item ADD ATTRIBUTE pure boolean;
