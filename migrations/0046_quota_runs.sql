-- Runs started by events, schedules and a schedule's trigger are taken from runs_per_month too
-- (sql/graph.sql, sql/schedules.sql). flowd_schedules_fire answers the ticks the quota had no room
-- for in a new column, so it is dropped here and created again from sql/schedules.sql.
DROP FUNCTION IF EXISTS flowd_schedules_fire(jsonb);
