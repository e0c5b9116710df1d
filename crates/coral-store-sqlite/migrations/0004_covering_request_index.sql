-- The service summary behind coral_query_summary counts a service's requests in a
-- time window, their errors and their duration percentiles. With the duration and
-- the statuses in the index, SQLite reads the window from the index alone instead
-- of looking each request up in the table. The new index replaces
-- spans_requests_by_start (same leading keys), which also served request listings,
-- newest first, and still does. (The same change as coral-store-postgres's 0004.)
CREATE INDEX spans_requests_by_start_covering
    ON spans (service, start_unix_nano DESC, duration_ns, status_code, http_status)
    WHERE is_request;
DROP INDEX spans_requests_by_start;
