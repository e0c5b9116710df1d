-- Per-request (trace) profiles and on-demand profiling sessions (SQLite).
--
-- The same logical content as coral-store-postgres's 0002_profiles.sql, in SQLite
-- types (see 0001_initial.sql), STRICT. One difference: a stack's frame hashes
-- (PostgreSQL: BIGINT[]) are a BLOB of little-endian 8-byte integers, root first.
--
-- A trace profile's samples are stored as (stack, samples, CPU time) rows, one per
-- distinct stack; stacks are stored once, keyed by a hash of their frames, and
-- frames once in a dictionary, keyed by a hash of (function, module, kind). Both
-- hashes are coral_store::{frame_hash, stack_hash} (FNV-1a 64, as signed INTEGER).
-- Frames and stacks are never updated; nothing references them by foreign key.

-- The frame dictionary. frame_hash is the rowid.
CREATE TABLE profile_frames (
    frame_hash INTEGER PRIMARY KEY,
    function   TEXT NOT NULL,
    module     TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('user', 'kernel'))
) STRICT;

-- Distinct stacks: their frames' hashes, root first, as little-endian i64s.
CREATE TABLE profile_stacks (
    stack_hash   INTEGER PRIMARY KEY,
    frame_hashes BLOB NOT NULL CHECK (length(frame_hashes) % 8 = 0)
) STRICT;

-- One row per profiled request (span). samples and cpu_ns are the profile's totals;
-- created_unix_nano is when the colony stored it (for retention).
CREATE TABLE trace_profiles (
    trace_id            BLOB NOT NULL CHECK (length(trace_id) = 16),
    span_id             BLOB NOT NULL CHECK (length(span_id) = 8),
    service             TEXT NOT NULL,
    span_name           TEXT NOT NULL,
    start_unix_nano     INTEGER NOT NULL,
    duration_ns         INTEGER NOT NULL,
    node                TEXT NOT NULL,
    pid                 INTEGER,
    thread_id           INTEGER,
    precision           TEXT NOT NULL CHECK (precision IN ('thread', 'process')),
    frequency_hz        INTEGER NOT NULL CHECK (frequency_hz BETWEEN 0 AND 4294967295),
    concurrent_requests INTEGER NOT NULL CHECK (concurrent_requests BETWEEN 0 AND 4294967295),
    source              TEXT NOT NULL,
    samples             INTEGER NOT NULL,
    cpu_ns              INTEGER NOT NULL,
    created_unix_nano   INTEGER NOT NULL,
    PRIMARY KEY (trace_id, span_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX trace_profiles_by_service_start
    ON trace_profiles (service, start_unix_nano);

-- A trace profile's samples, one row per distinct stack, clustered on the primary
-- key: a trace's samples are one contiguous range.
CREATE TABLE trace_profile_samples (
    trace_id   BLOB NOT NULL,
    span_id    BLOB NOT NULL,
    stack_hash INTEGER NOT NULL,
    samples    INTEGER NOT NULL,
    cpu_ns     INTEGER NOT NULL,
    PRIMARY KEY (trace_id, span_id, stack_hash)
) STRICT, WITHOUT ROWID;

-- On-demand profiling sessions. ends_unix_nano is created_unix_nano + duration_ns
-- (saturating), kept so that active sessions are an index range scan.
CREATE TABLE profile_sessions (
    session_id        TEXT PRIMARY KEY CHECK (length(session_id) = 36),
    service           TEXT NOT NULL,
    frequency_hz      INTEGER NOT NULL CHECK (frequency_hz BETWEEN 0 AND 4294967295),
    created_unix_nano INTEGER NOT NULL,
    duration_ns       INTEGER NOT NULL,
    ends_unix_nano    INTEGER NOT NULL
) STRICT;

CREATE INDEX profile_sessions_by_end ON profile_sessions (ends_unix_nano);

-- Each agent's answer to a session; profile is a coral_analysis::Profile as JSON
-- text.
CREATE TABLE profile_session_results (
    session_id TEXT NOT NULL REFERENCES profile_sessions ON DELETE CASCADE,
    agent_id   TEXT NOT NULL,
    node       TEXT NOT NULL,
    processes  INTEGER NOT NULL CHECK (processes BETWEEN 0 AND 4294967295),
    profile    TEXT NOT NULL,
    error      TEXT,
    PRIMARY KEY (session_id, agent_id)
) STRICT;
