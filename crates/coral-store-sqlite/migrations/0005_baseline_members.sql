-- Which stored requests count towards which trigger's baseline (SQLite; the same
-- as coral-store-postgres's 0005).
--
-- A request is stored once in trace_profiles (one source: what it was first sent
-- for), but an agent offers every request to the baseline of each trigger of its
-- service, so one request may belong to several baselines, and to a trigger's
-- collected requests besides. A row here is one request counted in one trigger's
-- baseline_collected; its primary key is what makes a retried baseline count once.
-- Rows go with their trigger and with their profile.
CREATE TABLE trace_profile_baselines (
    trigger_id TEXT NOT NULL REFERENCES trace_profile_triggers (trigger_id) ON DELETE CASCADE,
    trace_id   BLOB NOT NULL,
    span_id    BLOB NOT NULL,
    PRIMARY KEY (trigger_id, trace_id, span_id),
    FOREIGN KEY (trace_id, span_id) REFERENCES trace_profiles (trace_id, span_id)
        ON DELETE CASCADE
) STRICT, WITHOUT ROWID;

-- Deleting a profile (retention) finds its rows here by this index.
CREATE INDEX trace_profile_baselines_by_request
    ON trace_profile_baselines (trace_id, span_id);

-- The baseline profiles stored so far are their triggers' members.
INSERT INTO trace_profile_baselines (trigger_id, trace_id, span_id)
SELECT t.trigger_id, p.trace_id, p.span_id
FROM trace_profile_triggers t
JOIN trace_profiles p ON p.source = 'baseline:' || t.trigger_id;
