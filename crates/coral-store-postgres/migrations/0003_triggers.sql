-- Trace-profile triggers (RFD 080), PostgreSQL: what 0001's trace_profile_triggers
-- lacked, and the indexes their use needs.
--
-- Times stay TIMESTAMPTZ as RFD 080 has them; the store converts Unix nanoseconds
-- exactly at the microsecond, so nanoseconds below it are truncated. status is
-- 'active', 'completed', 'expired' or 'cancelled'; trace_ids holds the collected
-- traces as 32 lowercase hex digits, in collection order.

ALTER TABLE trace_profile_triggers
    -- When it left 'active'; NULL while active.
    ADD COLUMN ended_at           TIMESTAMPTZ,
    -- The baseline cohort: non-matching requests kept for comparison.
    ADD COLUMN baseline_requests  INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN baseline_collected INTEGER NOT NULL DEFAULT 0,
    ADD FOREIGN KEY (service_id) REFERENCES services (service_id);

-- What agents run and what the sweeper expires: active triggers by expiry.
CREATE INDEX trace_profile_triggers_active_by_expiry
    ON trace_profile_triggers (expires_at) WHERE status = 'active';

-- A trigger's collected requests (source 'trigger:<uuid>'), in collection order.
CREATE INDEX trace_profiles_by_source
    ON trace_profiles (source, created_unix_nano);

-- Retention deletes profiles by the time they were stored.
CREATE INDEX trace_profiles_by_created
    ON trace_profiles (created_unix_nano);
