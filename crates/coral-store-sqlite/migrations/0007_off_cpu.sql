-- Off-CPU profiles and profile types (SQLite; the same as coral-store-postgres's
-- 0007).
--
-- An off-CPU stack (where a thread waited while switched out) ends in a wait
-- pseudo-frame of kind 'wait', whose function is the wait cause ('lock', 'disk',
-- 'network', 'sleep', 'runqueue', 'other'). SQLite cannot change a CHECK constraint,
-- so profile_frames is rebuilt with the new one: created anew, filled, and renamed
-- in place of the old (no index besides its rowid key, no foreign key or trigger
-- refers to it). The frames table holds each distinct frame once, so this copies
-- far fewer rows than the samples table has.
CREATE TABLE profile_frames_0007 (
    frame_hash INTEGER PRIMARY KEY,
    function   TEXT NOT NULL,
    module     TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('user', 'kernel', 'wait'))
) STRICT;
INSERT INTO profile_frames_0007 (frame_hash, function, module, kind)
    SELECT frame_hash, function, module, kind FROM profile_frames;
DROP TABLE profile_frames;
ALTER TABLE profile_frames_0007 RENAME TO profile_frames;

-- Each stack's time switched out, beside its CPU time: a CPU stack has 0, an
-- off-CPU stack 0 CPU time, and its samples count the waits summed into it.
ALTER TABLE trace_profile_samples ADD COLUMN off_cpu_ns INTEGER NOT NULL DEFAULT 0;
-- The profile's off-CPU total, as cpu_ns is its CPU total.
ALTER TABLE trace_profiles ADD COLUMN off_cpu_ns INTEGER NOT NULL DEFAULT 0;

-- The profile types collected, in order, comma-separated: 'cpu', 'offcpu' or
-- 'cpu,offcpu' ('wall' is a view of both, never collected). Profiles and triggers
-- from before this migration collected CPU samples only.
ALTER TABLE trace_profiles ADD COLUMN profile_types TEXT NOT NULL DEFAULT 'cpu'
    CHECK (profile_types <> '');
ALTER TABLE trace_profile_triggers ADD COLUMN profile_types TEXT NOT NULL DEFAULT 'cpu'
    CHECK (profile_types <> '');
