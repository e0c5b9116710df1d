-- Per-request (trace) profiles and on-demand profiling sessions (PostgreSQL).
--
-- A trace profile's samples are stored as (stack, samples, CPU time) rows, one per
-- distinct stack; stacks are stored once, keyed by a hash of their frames, and
-- frames once in a dictionary, keyed by a hash of (function, module, kind). Both
-- hashes are coral_store::{frame_hash, stack_hash} (FNV-1a 64, as signed BIGINT),
-- computed by the colony, so every profile with the same stack shares one row.
-- Frames and stacks are never updated; nothing references them by foreign key
-- (stack_hash in samples and frame_hashes in stacks are content addresses).

-- The frame dictionary.
CREATE TABLE profile_frames (
    frame_hash BIGINT PRIMARY KEY,
    function   TEXT NOT NULL,
    module     TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('user', 'kernel'))
);

-- Distinct stacks: their frames' hashes, root first, leaf last.
CREATE TABLE profile_stacks (
    stack_hash   BIGINT PRIMARY KEY,
    frame_hashes BIGINT[] NOT NULL
);

-- One row per profiled request (span). samples and cpu_ns are the profile's totals;
-- created_unix_nano is when the colony stored it (for retention).
CREATE TABLE trace_profiles (
    trace_id            BYTEA NOT NULL CHECK (octet_length(trace_id) = 16),
    span_id             BYTEA NOT NULL CHECK (octet_length(span_id) = 8),
    service             TEXT NOT NULL,
    span_name           TEXT NOT NULL,
    start_unix_nano     BIGINT NOT NULL,
    duration_ns         BIGINT NOT NULL,
    node                TEXT NOT NULL,
    pid                 BIGINT,
    thread_id           BIGINT,
    precision           TEXT NOT NULL CHECK (precision IN ('thread', 'process')),
    -- u32 values: BIGINT holds all of them.
    frequency_hz        BIGINT NOT NULL CHECK (frequency_hz BETWEEN 0 AND 4294967295),
    concurrent_requests BIGINT NOT NULL CHECK (concurrent_requests BETWEEN 0 AND 4294967295),
    source              TEXT NOT NULL,
    samples             BIGINT NOT NULL,
    cpu_ns              BIGINT NOT NULL,
    created_unix_nano   BIGINT NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);

CREATE INDEX trace_profiles_by_service_start
    ON trace_profiles (service, start_unix_nano);

-- A trace profile's samples, one row per distinct stack. The primary key serves
-- reading a trace's profiles (an index range scan on its trace_id prefix).
CREATE TABLE trace_profile_samples (
    trace_id   BYTEA NOT NULL,
    span_id    BYTEA NOT NULL,
    stack_hash BIGINT NOT NULL,
    samples    BIGINT NOT NULL,
    cpu_ns     BIGINT NOT NULL,
    PRIMARY KEY (trace_id, span_id, stack_hash)
);

-- On-demand profiling sessions. ends_unix_nano is created_unix_nano + duration_ns
-- (saturating), kept so that active sessions are an index range scan.
CREATE TABLE profile_sessions (
    session_id        UUID PRIMARY KEY,
    service           TEXT NOT NULL,
    frequency_hz      BIGINT NOT NULL CHECK (frequency_hz BETWEEN 0 AND 4294967295),
    created_unix_nano BIGINT NOT NULL,
    duration_ns       BIGINT NOT NULL,
    ends_unix_nano    BIGINT NOT NULL
);

CREATE INDEX profile_sessions_by_end ON profile_sessions (ends_unix_nano);

-- Each agent's answer to a session; profile is a coral_analysis::Profile as JSON.
CREATE TABLE profile_session_results (
    session_id UUID NOT NULL REFERENCES profile_sessions ON DELETE CASCADE,
    agent_id   TEXT NOT NULL,
    node       TEXT NOT NULL,
    processes  BIGINT NOT NULL CHECK (processes BETWEEN 0 AND 4294967295),
    profile    JSONB NOT NULL,
    error      TEXT,
    PRIMARY KEY (session_id, agent_id)
);
