-- How complete a request profile is (SQLite; the same as coral-store-postgres's
-- 0006): truncated_samples counts its samples whose stack stops short of the
-- thread's root, lost_samples the samples taken in its window that never arrived.
-- Profiles stored before the agent reported either count as 0 (nothing known).
ALTER TABLE trace_profiles ADD COLUMN truncated_samples INTEGER NOT NULL DEFAULT 0
    CHECK (truncated_samples BETWEEN 0 AND 4294967295);
ALTER TABLE trace_profiles ADD COLUMN lost_samples INTEGER NOT NULL DEFAULT 0
    CHECK (lost_samples >= 0);
