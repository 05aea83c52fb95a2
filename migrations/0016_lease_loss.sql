-- Lease renewal that tells a worker which leases it lost. A worker whose renewals did not land in
-- time (a stalled process, a slow or cut connection) finds its steps reaped and claimed again by
-- someone else, or ended meanwhile (cancelled, deleted by retention): it must stop their calls
-- instead of paying for answers no one will take. flowd_heartbeat only counted the renewals; it
-- stays for the processes of the previous version that still call it during a rolling upgrade.

-- Extends the leases p_owner still holds among p_ids (the steps it is running) and returns the
-- ids among p_ids that it no longer holds.
CREATE FUNCTION flowd_renew_leases(p_owner text, p_lease_ms integer, p_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    WITH renewed AS (
        UPDATE steps SET lease_expires_at = now() + p_lease_ms * interval '1 millisecond'
         WHERE id = ANY (p_ids) AND state = 'running' AND lease_owner = p_owner
        RETURNING id)
    SELECT x.id FROM unnest(p_ids) AS x(id)
     WHERE NOT EXISTS (SELECT 1 FROM renewed WHERE renewed.id = x.id);
END $$;
