-- Trace-profile triggers (RFD 080), SQLite: the same logical content as
-- coral-store-postgres's 0003_triggers.sql, in SQLite types (see 0001_initial.sql):
-- ended_at is INTEGER Unix nanoseconds, and trace_ids a JSON array of the collected
-- traces (32 lowercase hex digits each), in collection order. status is 'active',
-- 'completed', 'expired' or 'cancelled'.
--
-- service_id refers to services, as in PostgreSQL, but without a foreign key:
-- SQLite cannot add one to an existing table, and services are never deleted.

-- When it left 'active'; NULL while active.
ALTER TABLE trace_profile_triggers ADD COLUMN ended_at INTEGER;
-- The baseline cohort: non-matching requests kept for comparison.
ALTER TABLE trace_profile_triggers ADD COLUMN baseline_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE trace_profile_triggers ADD COLUMN baseline_collected INTEGER NOT NULL DEFAULT 0;

-- What agents run and what the sweeper expires: active triggers by expiry.
CREATE INDEX trace_profile_triggers_active_by_expiry
    ON trace_profile_triggers (expires_at) WHERE status = 'active';

-- A trigger's collected requests (source 'trigger:<uuid>'), in collection order.
CREATE INDEX trace_profiles_by_source
    ON trace_profiles (source, created_unix_nano);

-- Retention deletes profiles by the time they were stored.
CREATE INDEX trace_profiles_by_created
    ON trace_profiles (created_unix_nano);
