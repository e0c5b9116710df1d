-- Coral's first schema (SQLite). A migration that has shipped is never edited:
-- later changes go in new files (0002_..., 0003_...).
--
-- The same logical content as coral-store-postgres's 0001_initial.sql, in SQLite
-- types. Tables are STRICT, so a value of the wrong type is refused, not stored:
--   * UUIDs are TEXT in the lowercase hyphenated form (36 characters);
--   * booleans are INTEGER 0 or 1;
--   * JSON is TEXT;
--   * times are INTEGER Unix nanoseconds (UTC), including trace_profile_triggers'
--     created_at and expires_at, which PostgreSQL keeps as TIMESTAMPTZ.
-- Trace and span ids are raw bytes (BLOB of 16 and 8).

-- Every service that has sent spans. service_id is stable once given.
CREATE TABLE services (
    service_id           TEXT PRIMARY KEY CHECK (length(service_id) = 36),
    name                 TEXT NOT NULL UNIQUE,
    first_seen_unix_nano INTEGER NOT NULL,
    last_seen_unix_nano  INTEGER NOT NULL
) STRICT;

-- One row per span. The primary key serves trace look-ups (trace_id first).
CREATE TABLE spans (
    trace_id        BLOB NOT NULL CHECK (length(trace_id) = 16),
    span_id         BLOB NOT NULL CHECK (length(span_id) = 8),
    parent_span_id  BLOB CHECK (length(parent_span_id) = 8),
    service         TEXT NOT NULL,
    name            TEXT NOT NULL,
    kind            INTEGER NOT NULL,
    start_unix_nano INTEGER NOT NULL,
    duration_ns     INTEGER NOT NULL,
    status_code     INTEGER NOT NULL,
    status_message  TEXT NOT NULL,
    http_status     INTEGER,
    url             TEXT,
    route           TEXT,
    pid             INTEGER,
    thread_id       INTEGER,
    node            TEXT NOT NULL,
    -- A JSON object.
    attributes      TEXT NOT NULL,
    -- SpanRecord::is_request() at insert (0 or 1): server or consumer span, or a
    -- trace root.
    is_request      INTEGER NOT NULL CHECK (is_request IN (0, 1)),
    PRIMARY KEY (trace_id, span_id)
) STRICT;

-- Request listings of one service: newest first, or by duration.
CREATE INDEX spans_requests_by_start
    ON spans (service, start_unix_nano DESC) WHERE is_request;
CREATE INDEX spans_requests_by_duration
    ON spans (service, duration_ns) WHERE is_request;

-- Agents that registered with the colony. counters (a JSON object) is the last
-- heartbeat's.
CREATE TABLE agents (
    agent_id                 TEXT PRIMARY KEY,
    node                     TEXT NOT NULL,
    version                  TEXT NOT NULL,
    registered_unix_nano     INTEGER NOT NULL,
    last_heartbeat_unix_nano INTEGER NOT NULL,
    counters                 TEXT NOT NULL DEFAULT '{}'
) STRICT;

-- Trace-driven profiling triggers (used by a later issue). created_at and
-- expires_at are INTEGER Unix nanoseconds (UTC), not ISO-8601 text; trace_ids
-- (PostgreSQL: TEXT[]) is a JSON array of strings, in TEXT.
CREATE TABLE trace_profile_triggers (
    trigger_id          TEXT PRIMARY KEY CHECK (length(trigger_id) = 36),
    service_id          TEXT NOT NULL CHECK (length(service_id) = 36),
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    status              TEXT NOT NULL, -- 'active', 'completed', 'expired'
    min_duration_ms     INTEGER,
    max_duration_ms     INTEGER,
    status_code_pattern TEXT,
    url_pattern         TEXT,
    frequency_hz        INTEGER NOT NULL,
    max_requests        INTEGER NOT NULL,
    collected_requests  INTEGER DEFAULT 0,
    trace_ids           TEXT
) STRICT;

CREATE INDEX trace_profile_triggers_by_service_status
    ON trace_profile_triggers (service_id, status);
