-- The trigger of 0025 that wakes a step parked on an unknown send fired on every send's first
-- outcome too (pending -> accepted or failed), one more statement on steps for every message
-- sent. A parked step's send is always 'unknown' (flowd_send_claim marks an ambiguous send
-- unknown before the step parks; an ambiguous call is recorded unknown first), so only a send
-- leaving 'unknown' can wake one.

DROP TRIGGER sends_settled ON sends;
CREATE TRIGGER sends_settled AFTER UPDATE OF state ON sends
    FOR EACH ROW WHEN (OLD.state = 'unknown' AND NEW.state IN ('accepted', 'failed'))
    EXECUTE FUNCTION flowd_send_settled();
