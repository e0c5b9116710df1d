-- Off-CPU profiles and profile types (PostgreSQL; the same as coral-store-sqlite's
-- 0007).
--
-- An off-CPU stack (where a thread waited while switched out) ends in a wait
-- pseudo-frame of kind 'wait', whose function is the wait cause ('lock', 'disk',
-- 'network', 'sleep', 'runqueue', 'other'). 0002 declared the kind's check inline,
-- so PostgreSQL named it profile_frames_kind_check.
ALTER TABLE profile_frames
    DROP CONSTRAINT profile_frames_kind_check,
    ADD CONSTRAINT profile_frames_kind_check CHECK (kind IN ('user', 'kernel', 'wait'));

-- Constant defaults: PostgreSQL adds these columns without rewriting the tables.
-- Each stack's time switched out, beside its CPU time: a CPU stack has 0, an
-- off-CPU stack 0 CPU time, and its samples count the waits summed into it.
ALTER TABLE trace_profile_samples ADD COLUMN off_cpu_ns BIGINT NOT NULL DEFAULT 0;

-- The profile's off-CPU total, as cpu_ns is its CPU total; the profile types
-- collected, in order, comma-separated: 'cpu', 'offcpu' or 'cpu,offcpu' ('wall' is
-- a view of both, never collected). Profiles and triggers from before this
-- migration collected CPU samples only.
ALTER TABLE trace_profiles
    ADD COLUMN off_cpu_ns BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN profile_types TEXT NOT NULL DEFAULT 'cpu' CHECK (profile_types <> '');
ALTER TABLE trace_profile_triggers
    ADD COLUMN profile_types TEXT NOT NULL DEFAULT 'cpu' CHECK (profile_types <> '');
