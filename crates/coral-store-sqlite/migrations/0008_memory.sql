-- Memory profiles (SQLite; the same as coral-store-postgres's 0008).
--
-- A memory stack (where a thread page-faulted, weighted by the bytes of the pages the
-- kernel allocated for it) ends in a page pseudo-frame of kind 'page', whose function
-- is the page size ('4 KiB page', '2 MiB huge page'). SQLite cannot change a CHECK
-- constraint, so profile_frames is rebuilt with the new one as 0007 did: created
-- anew, filled, and renamed in place of the old (no index besides its rowid key, no
-- foreign key or trigger refers to it).
CREATE TABLE profile_frames_0008 (
    frame_hash INTEGER PRIMARY KEY,
    function   TEXT NOT NULL,
    module     TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('user', 'kernel', 'wait', 'page'))
) STRICT;
INSERT INTO profile_frames_0008 (frame_hash, function, module, kind)
    SELECT frame_hash, function, module, kind FROM profile_frames;
DROP TABLE profile_frames;
ALTER TABLE profile_frames_0008 RENAME TO profile_frames;

-- Each stack's memory made resident, beside its CPU and off-CPU time: a memory stack
-- has 0 of both, and its samples count the memory records summed into it.
ALTER TABLE trace_profile_samples ADD COLUMN memory_bytes INTEGER NOT NULL DEFAULT 0;
-- The profile's memory total, as cpu_ns and off_cpu_ns are its time totals. Whether
-- memory was collected at all is profile_types' 'memory' (which 0007's text takes
-- as it is: 'cpu,memory', 'cpu,offcpu,memory').
ALTER TABLE trace_profiles ADD COLUMN memory_bytes INTEGER NOT NULL DEFAULT 0;
