-- flowd_usage_add answers the cost of each row it records (sql/usage.sql), which the processes'
-- cost metrics count: its result changes, so it is dropped here and created again from the file.
DROP FUNCTION IF EXISTS flowd_usage_add(jsonb);
