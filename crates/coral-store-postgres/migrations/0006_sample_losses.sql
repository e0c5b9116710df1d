-- How complete a request profile is (PostgreSQL; the same as coral-store-sqlite's
-- 0006): truncated_samples counts its samples whose stack stops short of the
-- thread's root, lost_samples the samples taken in its window that never arrived.
-- Profiles stored before the agent reported either count as 0 (nothing known).
-- A constant default: PostgreSQL adds the columns without rewriting the table
-- (the checks read it once).
ALTER TABLE trace_profiles
    ADD COLUMN truncated_samples BIGINT NOT NULL DEFAULT 0
        CHECK (truncated_samples BETWEEN 0 AND 4294967295),
    ADD COLUMN lost_samples BIGINT NOT NULL DEFAULT 0 CHECK (lost_samples >= 0);
