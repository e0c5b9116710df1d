-- Memory profiles (PostgreSQL; the same as coral-store-sqlite's 0008).
--
-- A memory stack (where a thread page-faulted, weighted by the bytes of the pages the
-- kernel allocated for it) ends in a page pseudo-frame of kind 'page', whose function
-- is the page size ('4 KiB page', '2 MiB huge page'). 0007 named the kind's check
-- profile_frames_kind_check.
ALTER TABLE profile_frames
    DROP CONSTRAINT profile_frames_kind_check,
    ADD CONSTRAINT profile_frames_kind_check
        CHECK (kind IN ('user', 'kernel', 'wait', 'page'));

-- Constant defaults: PostgreSQL adds these columns without rewriting the tables.
-- Each stack's memory made resident, beside its CPU and off-CPU time: a memory stack
-- has 0 of both, and its samples count the memory records summed into it.
ALTER TABLE trace_profile_samples ADD COLUMN memory_bytes BIGINT NOT NULL DEFAULT 0;

-- The profile's memory total, as cpu_ns and off_cpu_ns are its time totals. Whether
-- memory was collected at all is profile_types' 'memory' (which 0007's text takes
-- as it is: 'cpu,memory', 'cpu,offcpu,memory').
ALTER TABLE trace_profiles ADD COLUMN memory_bytes BIGINT NOT NULL DEFAULT 0;
