-- Coral's first schema (PostgreSQL). A migration that has shipped is never edited:
-- later changes go in new files (0002_..., 0003_...).
--
-- Times are Unix nanoseconds (BIGINT) except in trace_profile_triggers, which uses
-- TIMESTAMPTZ. Trace and span ids are raw bytes (16 and 8).

-- Every service that has sent spans. service_id is stable once given.
CREATE TABLE services (
    service_id           UUID PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    first_seen_unix_nano BIGINT NOT NULL,
    last_seen_unix_nano  BIGINT NOT NULL
);

-- One row per span. The primary key serves trace look-ups (trace_id first).
CREATE TABLE spans (
    trace_id        BYTEA NOT NULL CHECK (octet_length(trace_id) = 16),
    span_id         BYTEA NOT NULL CHECK (octet_length(span_id) = 8),
    parent_span_id  BYTEA CHECK (octet_length(parent_span_id) = 8),
    service         TEXT NOT NULL,
    name            TEXT NOT NULL,
    kind            INTEGER NOT NULL,
    start_unix_nano BIGINT NOT NULL,
    duration_ns     BIGINT NOT NULL,
    status_code     INTEGER NOT NULL,
    status_message  TEXT NOT NULL,
    http_status     INTEGER,
    url             TEXT,
    route           TEXT,
    pid             BIGINT,
    thread_id       BIGINT,
    node            TEXT NOT NULL,
    attributes      JSONB NOT NULL,
    -- SpanRecord::is_request() at insert: server or consumer span, or a trace root.
    is_request      BOOLEAN NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);

-- Request listings of one service: newest first, or by duration.
CREATE INDEX spans_requests_by_start
    ON spans (service, start_unix_nano DESC) WHERE is_request;
CREATE INDEX spans_requests_by_duration
    ON spans (service, duration_ns) WHERE is_request;

-- Agents that registered with the colony. counters is the last heartbeat's.
CREATE TABLE agents (
    agent_id                 TEXT PRIMARY KEY,
    node                     TEXT NOT NULL,
    version                  TEXT NOT NULL,
    registered_unix_nano     BIGINT NOT NULL,
    last_heartbeat_unix_nano BIGINT NOT NULL,
    counters                 JSONB NOT NULL DEFAULT '{}'
);

-- Trace-driven profiling triggers (used by a later issue).
CREATE TABLE trace_profile_triggers (
    trigger_id          UUID PRIMARY KEY,
    service_id          UUID NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    expires_at          TIMESTAMPTZ NOT NULL,
    status              VARCHAR NOT NULL, -- 'active', 'completed', 'expired'
    min_duration_ms     INTEGER,
    max_duration_ms     INTEGER,
    status_code_pattern VARCHAR,
    url_pattern         VARCHAR,
    frequency_hz        INTEGER NOT NULL,
    max_requests        INTEGER NOT NULL,
    collected_requests  INTEGER DEFAULT 0,
    trace_ids           TEXT[]
);

CREATE INDEX trace_profile_triggers_by_service_status
    ON trace_profile_triggers (service_id, status);
