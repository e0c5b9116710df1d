//! The PostgreSQL backend of [`coral_store::Store`], for colonies that share one
//! database or keep a lot of data.
//!
//! [`PostgresStore::connect`] opens a connection pool and applies this crate's
//! migrations (`migrations/`, embedded at compile time and run under sqlx's advisory
//! lock, so several colonies may start at once). Every query is a runtime
//! `sqlx::query` with bound parameters; the dynamic ones bind every value too: the
//! request listing is built with [`sqlx::QueryBuilder`], and a cohort's query takes
//! the `WHERE` fragment `coral_store::filter_sql` compiles (numbered parameters only).
//!
//! Spans go in with one statement per batch: each column is bound as an array and
//! `INSERT … SELECT unnest($1), …, unnest($18) ON CONFLICT DO NOTHING` turns them
//! back into rows, so a batch of thousands of spans is one round trip. The batch is
//! sorted by (trace id, span id) and deduplicated first, so that concurrent batches
//! take their locks in the same order and cannot deadlock; the batch's services are
//! then upserted (sorted by name, for the same reason) in the same transaction.
//!
//! Trace profiles go in the same way, one transaction per batch: the profile rows
//! first (`RETURNING` the ones that were new), then, for the new ones only, their
//! frames, stacks and per-stack sample rows, each table's rows sorted by key and
//! inserted with `ON CONFLICT DO NOTHING` (frames and stacks are shared by every
//! profile that has them; see `coral_store::profile_rows`). A stack's frame hashes are a
//! `BIGINT[]`, bound as one array literal per stack (`unnest($2::text[])::int8[]`),
//! since PostgreSQL arrays of arrays must be rectangular. Profiles (a trace's or a
//! cohort's) are read with three queries: their rows, the samples of all of them
//! (their keys bound as two arrays, a primary-key look-up each) joined to their
//! stacks, and the frames those use.
//!
//! A trigger or baseline profile must also claim a slot of its trigger, after the
//! profile rows went in (only new ones claim, so a retry never counts twice; a
//! baseline profile of a request already stored claims too, once per trigger and
//! request, recorded in `trace_profile_baselines`): one
//! conditional `UPDATE` of the trigger row per profile, in trigger order (see
//! `coral_store::trigger_rows::claim_order`). Under READ COMMITTED, an `UPDATE`
//! blocked by another colony's claim re-evaluates its `WHERE` on the row that one
//! committed, so no two colonies can take the last slot. Profiles that claim none
//! are deleted again before their samples would go in.
//!
//! Trigger times are `TIMESTAMPTZ`, which has microsecond precision: Unix
//! nanoseconds are converted exactly at the microsecond, in SQL (`timestamptz!`,
//! `unix_nano!`), so nanoseconds below it are truncated.

pub mod bench;
mod error;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use async_trait::async_trait;
use coral_analysis::StatusPattern;
use coral_analysis::filter::Filter;
use coral_analysis::profile::{Frame, Profile};
use coral_analysis::status::{OTEL_STATUS_ERROR, StatusTerm};
use coral_store::{
    AgentRecord, Claim, CollectedRequest, InsertedProfiles, ListedRequest, Precision,
    ProfileSession, ProfileSource, ProfileType, RequestQuery, RequestSummary, SUMMARY_PERCENTILES,
    ServiceRecord, SessionResult, SpanId, SpanRecord, Store, StoreError, TraceId,
    TraceProfileRecord, TraceProfileTrigger,
};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgBindIterExt, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder, Row};

pub use sqlx::postgres::PgConnectOptions;

use crate::error::{map_err, map_migrate_err};

/// The lowest HTTP status a summary counts as an error (5xx).
const HTTP_SERVER_ERROR: i32 = 500;
use coral_store::batch::{distinct_spans, now_unix_nano, services_seen};
use coral_store::filter_sql::{self, Dialect, SqlValue};
use coral_store::profile_rows::{
    ProfileRows, StackRead, StacksByProfile, attach_profiles,
    distinct_sorted as distinct_sorted_profiles, frame_hashes_of, kind_str, parse_kind,
    parse_profile_types, parse_source, profile_types_text, to_i64, to_u32, to_u64,
};
use coral_store::trigger_rows::{
    ClaimTally, TriggerRow, resolved_trigger_id, slot_claims, to_i32, trace_id_texts,
    trigger_id_prefix, unknown_service,
};

/// This crate's migrations, embedded at compile time.
static MIGRATOR: Migrator = sqlx::migrate!();

/// Connections in the pool.
const MAX_CONNECTIONS: u32 = 10;
/// How long a query waits for a connection before the store reports
/// [`StoreError::Unavailable`]. While PostgreSQL is down (restarting, failing over),
/// sqlx keeps retrying a refused connection until this deadline, so it is also how
/// long a call takes to fail during an outage: short enough that a person at the CLI
/// and an agent's retry loop hear about it soon, long enough for a busy pool's
/// connections to come free under load.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns of a span, in [`span_from_row`]'s and the insert's order.
macro_rules! span_columns {
    () => {
        "trace_id, span_id, parent_span_id, service, name, kind, start_unix_nano, \
         duration_ns, status_code, status_message, http_status, url, route, pid, \
         thread_id, node, attributes"
    };
}

/// The columns arrive as 18 arrays and leave as rows. The `unnest` calls are in the
/// select list, where PostgreSQL steps them in lockstep one row at a time; the
/// equivalent `SELECT * FROM UNNEST($1, …, $18)` first copies every array into a
/// tuplestore of its own and took twice the server time.
const INSERT_SPANS: &str = concat!(
    "INSERT INTO spans (",
    span_columns!(),
    ", is_request) SELECT \
     unnest($1::bytea[]), unnest($2::bytea[]), unnest($3::bytea[]), unnest($4::text[]), \
     unnest($5::text[]), unnest($6::int4[]), unnest($7::int8[]), unnest($8::int8[]), \
     unnest($9::int4[]), unnest($10::text[]), unnest($11::int4[]), unnest($12::text[]), \
     unnest($13::text[]), unnest($14::int8[]), unnest($15::int8[]), unnest($16::text[]), \
     unnest($17::jsonb[]), unnest($18::bool[]) \
     ON CONFLICT (trace_id, span_id) DO NOTHING"
);

/// New services get the given id; known ones keep theirs and widen their seen range.
const UPSERT_SERVICES: &str = "\
    INSERT INTO services (service_id, name, first_seen_unix_nano, last_seen_unix_nano) \
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int8[], $4::int8[]) \
    ON CONFLICT (name) DO UPDATE SET \
        first_seen_unix_nano = LEAST(services.first_seen_unix_nano, EXCLUDED.first_seen_unix_nano), \
        last_seen_unix_nano = GREATEST(services.last_seen_unix_nano, EXCLUDED.last_seen_unix_nano) \
    WHERE EXCLUDED.first_seen_unix_nano < services.first_seen_unix_nano \
       OR EXCLUDED.last_seen_unix_nano > services.last_seen_unix_nano";

const SELECT_TRACE: &str = concat!(
    "SELECT ",
    span_columns!(),
    " FROM spans WHERE trace_id = $1 ORDER BY start_unix_nano, span_id LIMIT $2"
);

// COLLATE "C": byte order whatever the database's locale, as SQLite sorts.
const SELECT_SERVICES: &str = "SELECT service_id, name, first_seen_unix_nano, \
     last_seen_unix_nano FROM services ORDER BY name COLLATE \"C\"";

const SELECT_SERVICE: &str = "SELECT service_id, name, first_seen_unix_nano, \
     last_seen_unix_nano FROM services WHERE name = $1";

/// The columns of a trace profile row, in [`trace_profile_from_row`]'s and the
/// insert's order.
macro_rules! trace_profile_columns {
    () => {
        "trace_id, span_id, service, span_name, start_unix_nano, duration_ns, node, pid, \
         thread_id, precision, frequency_hz, concurrent_requests, source, samples, cpu_ns, \
         created_unix_nano, truncated_samples, lost_samples, off_cpu_ns, profile_types, \
         memory_bytes"
    };
}

const INSERT_TRACE_PROFILES: &str = concat!(
    "INSERT INTO trace_profiles (",
    trace_profile_columns!(),
    ") SELECT \
     unnest($1::bytea[]), unnest($2::bytea[]), unnest($3::text[]), unnest($4::text[]), \
     unnest($5::int8[]), unnest($6::int8[]), unnest($7::text[]), unnest($8::int8[]), \
     unnest($9::int8[]), unnest($10::text[]), unnest($11::int8[]), unnest($12::int8[]), \
     unnest($13::text[]), unnest($14::int8[]), unnest($15::int8[]), unnest($16::int8[]), \
     unnest($17::int8[]), unnest($18::int8[]), unnest($19::int8[]), unnest($20::text[]), \
     unnest($21::int8[]) \
     ON CONFLICT (trace_id, span_id) DO NOTHING \
     RETURNING trace_id, span_id"
);

const INSERT_FRAMES: &str = "INSERT INTO profile_frames (frame_hash, function, module, kind) \
     SELECT unnest($1::int8[]), unnest($2::text[]), unnest($3::text[]), unnest($4::text[]) \
     ON CONFLICT (frame_hash) DO NOTHING";

/// Each stack's frame hashes come as an array literal (`{1,-2,3}`).
const INSERT_STACKS: &str = "INSERT INTO profile_stacks (stack_hash, frame_hashes) \
     SELECT unnest($1::int8[]), unnest($2::text[])::int8[] \
     ON CONFLICT (stack_hash) DO NOTHING";

const INSERT_SAMPLES: &str = "\
    INSERT INTO trace_profile_samples (trace_id, span_id, stack_hash, samples, cpu_ns, \
        off_cpu_ns, memory_bytes) \
    SELECT unnest($1::bytea[]), unnest($2::bytea[]), unnest($3::int8[]), unnest($4::int8[]), \
           unnest($5::int8[]), unnest($6::int8[]), unnest($7::int8[]) \
    ON CONFLICT (trace_id, span_id, stack_hash) DO NOTHING";

const SELECT_TRACE_PROFILES: &str = concat!(
    "SELECT ",
    trace_profile_columns!(),
    " FROM trace_profiles WHERE trace_id = $1 ORDER BY start_unix_nano, span_id"
);

/// The samples of some profiles, by their (trace id, span id) as two arrays: a
/// primary-key look-up per profile.
const SELECT_SAMPLES: &str = "\
    SELECT s.trace_id, s.span_id, s.stack_hash, s.samples, s.cpu_ns, s.off_cpu_ns, \
        s.memory_bytes, st.frame_hashes \
    FROM unnest($1::bytea[], $2::bytea[]) AS k (trace_id, span_id) \
    JOIN trace_profile_samples s ON s.trace_id = k.trace_id AND s.span_id = k.span_id \
    LEFT JOIN profile_stacks st ON st.stack_hash = s.stack_hash";

/// A service's request profiles since a time, newest first, with their spans (if
/// stored) as `s` for the cohort filter's fragment, which follows `AND` and whose
/// parameters start at `$4`. `tp.*` because both tables have columns of the same
/// names; rows are read by column name.
const SELECT_COHORT: &str = "\
    SELECT tp.* FROM trace_profiles tp \
    LEFT JOIN spans s ON s.trace_id = tp.trace_id AND s.span_id = tp.span_id \
    WHERE tp.service = $1 AND tp.start_unix_nano >= $2 AND ";
const COHORT_ORDER: &str =
    " ORDER BY tp.start_unix_nano DESC, tp.trace_id DESC, tp.span_id DESC LIMIT $3";

/// A join rather than `frame_hash = ANY($1)`, which PostgreSQL may run as a scan of
/// the frames testing each against the whole array.
const SELECT_FRAMES: &str = "SELECT f.frame_hash, f.function, f.module, f.kind \
     FROM unnest($1::int8[]) AS h (frame_hash) \
     JOIN profile_frames f ON f.frame_hash = h.frame_hash";

const DELETE_TRACE_PROFILE: &str =
    "DELETE FROM trace_profiles WHERE trace_id = $1 AND span_id = $2";

/// A Unix-nanosecond parameter as `TIMESTAMPTZ`, truncated to the microsecond. Whole
/// seconds and the rest are added apart: `float8 * interval` is exact while the
/// product fits a double's 53 bits, which the microseconds of dates after 2255 do not.
macro_rules! timestamptz {
    ($param:literal) => {
        concat!(
            "(TIMESTAMPTZ 'epoch' + ",
            $param,
            "::int8 / 1000000000 * INTERVAL '1 second' + ",
            $param,
            "::int8 % 1000000000 / 1000 * INTERVAL '1 microsecond')"
        )
    };
}

/// A `TIMESTAMPTZ` column as Unix nanoseconds (`extract` is an exact `numeric` since
/// PostgreSQL 14).
macro_rules! unix_nano {
    ($column:literal) => {
        concat!("(extract(epoch FROM ", $column, ") * 1000000000)::int8")
    };
}

/// A trigger's columns, with its service's name, in [`trigger_from_row`]'s order.
macro_rules! select_triggers {
    () => {
        concat!(
            "SELECT t.trigger_id, s.name AS service, ",
            unix_nano!("t.created_at"),
            " AS created_unix_nano, ",
            unix_nano!("t.expires_at"),
            " AS expires_unix_nano, ",
            unix_nano!("t.ended_at"),
            " AS ended_unix_nano, \
             t.status, t.min_duration_ms, t.max_duration_ms, t.status_code_pattern, \
             t.url_pattern, t.frequency_hz, t.max_requests, t.collected_requests, \
             t.trace_ids, t.baseline_requests, t.baseline_collected, t.profile_types \
             FROM trace_profile_triggers t JOIN services s ON s.service_id = t.service_id"
        )
    };
}

/// Inserts nothing if the service (by name) is unknown.
const INSERT_TRIGGER: &str = concat!(
    "INSERT INTO trace_profile_triggers (trigger_id, service_id, created_at, expires_at, \
         ended_at, status, min_duration_ms, max_duration_ms, status_code_pattern, \
         url_pattern, frequency_hz, max_requests, collected_requests, trace_ids, \
         baseline_requests, baseline_collected, profile_types) \
     SELECT $1, service_id, ",
    timestamptz!("$3"),
    ", ",
    timestamptz!("$4"),
    ", ",
    timestamptz!("$5"),
    ", $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17 FROM services WHERE name = $2"
);

/// Takes one of a trigger's slots for trace `$2`, at `$3`: only while it is active,
/// not full and without the trace. The last slot completes it.
const CLAIM_TRIGGER_SLOT: &str = concat!(
    "UPDATE trace_profile_triggers SET \
         collected_requests = collected_requests + 1, \
         trace_ids = array_append(coalesce(trace_ids, '{}'), $2::text), \
         status = CASE WHEN collected_requests + 1 >= max_requests \
             THEN 'completed' ELSE status END, \
         ended_at = CASE WHEN collected_requests + 1 >= max_requests THEN ",
    timestamptz!("$3"),
    " ELSE ended_at END \
     WHERE trigger_id = $1 AND status = 'active' AND collected_requests < max_requests \
         AND NOT ($2::text = ANY(coalesce(trace_ids, '{}'))) \
     RETURNING status"
);

const TRIGGER_HAS_TRACE: &str = "SELECT EXISTS (SELECT 1 FROM trace_profile_triggers \
     WHERE trigger_id = $1 AND $2::text = ANY(trace_ids))";

const CLAIM_BASELINE_SLOT: &str = "UPDATE trace_profile_triggers \
     SET baseline_collected = baseline_collected + 1 \
     WHERE trigger_id = $1 AND baseline_collected < baseline_requests";

/// Makes request (`$2`, `$3`) a member of trigger `$1`'s baseline, if the trigger
/// exists; nothing if it is one already (a concurrent insert of the same member waits
/// for the first to commit, then does nothing).
const INSERT_BASELINE_MEMBER: &str = "\
    INSERT INTO trace_profile_baselines (trigger_id, trace_id, span_id) \
    SELECT $1, $2, $3 WHERE EXISTS \
        (SELECT 1 FROM trace_profile_triggers WHERE trigger_id = $1) \
    ON CONFLICT DO NOTHING";

const BASELINE_HAS_MEMBER: &str = "\
    SELECT EXISTS (SELECT 1 FROM trace_profile_baselines \
        WHERE trigger_id = $1 AND trace_id = $2 AND span_id = $3)";

const DELETE_BASELINE_MEMBER: &str = "\
    DELETE FROM trace_profile_baselines WHERE trigger_id = $1 AND trace_id = $2 AND span_id = $3";

const RELABEL_TRACE_PROFILE: &str =
    "UPDATE trace_profiles SET source = $3 WHERE trace_id = $1 AND span_id = $2";

/// How many triggers have an id whose hex digits start with `$1`, and the first (the
/// least by its text, as PostgreSQL has no `min(uuid)`).
const MATCH_TRIGGER_PREFIX: &str = "\
    SELECT count(*), min(trigger_id::text)::uuid FROM trace_profile_triggers \
    WHERE left(replace(trigger_id::text, '-', ''), length($1)) = $1";

/// A trigger's profiles, with the status of their spans.
const SELECT_COLLECTED: &str = "\
    SELECT p.trace_id, p.span_id, p.span_name, p.start_unix_nano, p.duration_ns, \
        s.http_status, s.status_code, p.node, p.samples, p.precision, p.cpu_ns, \
        p.off_cpu_ns, p.memory_bytes, p.profile_types \
    FROM trace_profiles p \
    LEFT JOIN spans s ON s.trace_id = p.trace_id AND s.span_id = p.span_id \
    WHERE p.source = $1 \
    ORDER BY p.created_unix_nano, p.start_unix_nano, p.trace_id, p.span_id";

/// Old profiles and their samples; returns how many profiles.
const PURGE_TRACE_PROFILES: &str = "\
    WITH gone AS ( \
        DELETE FROM trace_profiles WHERE created_unix_nano < $1 RETURNING trace_id, span_id \
    ), samples AS ( \
        DELETE FROM trace_profile_samples s USING gone \
        WHERE s.trace_id = gone.trace_id AND s.span_id = gone.span_id \
    ) \
    SELECT count(*) FROM gone";

/// A [`Store`] on PostgreSQL. Cloning shares the connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/database`) and applies the
    /// migrations. A server that refuses connections (still starting, say) is retried
    /// for up to 10 s before [`StoreError::Unavailable`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(map_err)?;
        Self::connect_with(options).await
    }

    /// Like [`connect`](Self::connect), with options built in code.
    pub async fn connect_with(options: PgConnectOptions) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A pooled connection may have died with a restarted server: check it
            // before handing it out, so the first query after an outage succeeds
            // (sqlx's default, set here because reconnection depends on it).
            .test_before_acquire(true)
            .connect_with(options)
            .await
            .map_err(map_err)?;
        Self::from_pool(pool).await
    }

    /// Uses an existing pool, after applying the migrations.
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        MIGRATOR.run(&pool).await.map_err(map_migrate_err)?;
        tracing::debug!("postgres store ready");
        Ok(Self { pool })
    }

    /// Closes every connection; later calls fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn insert_spans(&self, spans: &[SpanRecord]) -> Result<u64, StoreError> {
        if spans.is_empty() {
            return Ok(0);
        }
        let spans = distinct_spans(spans);
        let services = services_seen(&spans);

        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let inserted = sqlx::query(INSERT_SPANS)
            .bind(spans.iter().map(|s| s.trace_id.as_bytes()).bind_iter())
            .bind(spans.iter().map(|s| s.span_id.as_bytes()).bind_iter())
            .bind(
                spans
                    .iter()
                    .map(|s| s.parent_span_id.as_ref().map(SpanId::as_bytes))
                    .bind_iter(),
            )
            .bind(spans.iter().map(|s| s.service.as_str()).bind_iter())
            .bind(spans.iter().map(|s| s.name.as_str()).bind_iter())
            .bind(spans.iter().map(|s| s.kind).bind_iter())
            .bind(spans.iter().map(|s| s.start_unix_nano).bind_iter())
            .bind(spans.iter().map(|s| s.duration_ns).bind_iter())
            .bind(spans.iter().map(|s| s.status_code).bind_iter())
            .bind(spans.iter().map(|s| s.status_message.as_str()).bind_iter())
            .bind(spans.iter().map(|s| s.http_status).bind_iter())
            .bind(spans.iter().map(|s| s.url.as_deref()).bind_iter())
            .bind(spans.iter().map(|s| s.route.as_deref()).bind_iter())
            .bind(spans.iter().map(|s| s.pid).bind_iter())
            .bind(spans.iter().map(|s| s.thread_id).bind_iter())
            .bind(spans.iter().map(|s| s.node.as_str()).bind_iter())
            .bind(spans.iter().map(|s| Json(&s.attributes)).bind_iter())
            .bind(spans.iter().map(|s| s.is_request()).bind_iter())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        // After the spans, so that the hot service rows stay locked only briefly.
        sqlx::query(UPSERT_SERVICES)
            .bind(services.iter().map(|_| uuid::Uuid::new_v4()).bind_iter())
            .bind(services.iter().map(|(name, _)| *name).bind_iter())
            .bind(services.iter().map(|(_, (first, _))| *first).bind_iter())
            .bind(services.iter().map(|(_, (_, last))| *last).bind_iter())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(inserted)
    }

    async fn list_services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        let rows = sqlx::query(SELECT_SERVICES)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(service_from_row).collect()
    }

    async fn service(&self, name: &str) -> Result<ServiceRecord, StoreError> {
        let row = sqlx::query(SELECT_SERVICE)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("service {name:?}")))?;
        service_from_row(&row)
    }

    async fn query_requests(&self, query: &RequestQuery) -> Result<Vec<ListedRequest>, StoreError> {
        // A profile's key is its span's: one primary-key look-up per request listed.
        // Only profiled ones: the service's profiles (by their (service, start)
        // index) may lead, the spans are looked up.
        let mut qb = QueryBuilder::<Postgres>::new(concat!(
            "SELECT ",
            span_columns!(),
            ", (SELECT tp.source FROM trace_profiles tp \
               WHERE tp.trace_id = spans.trace_id AND tp.span_id = spans.span_id) \
               AS profile_source \
             FROM spans WHERE is_request AND service = "
        ));
        qb.push_bind(query.service.as_str());
        qb.push(" AND start_unix_nano >= ");
        qb.push_bind(query.since_unix_nano);
        if query.profiled {
            qb.push(
                " AND (trace_id, span_id) IN (SELECT trace_id, span_id FROM trace_profiles \
                 WHERE service = ",
            );
            qb.push_bind(query.service.as_str());
            qb.push(" AND start_unix_nano >= ");
            qb.push_bind(query.since_unix_nano);
            qb.push(")");
        }
        if let Some(min) = query.min_duration_ns {
            qb.push(" AND duration_ns >= ");
            qb.push_bind(min);
        }
        if let Some(status) = &query.status {
            push_status_filter(&mut qb, status);
        }
        qb.push(" ORDER BY start_unix_nano DESC LIMIT ");
        qb.push_bind(i64::from(query.limit));
        let rows = qb.build().fetch_all(&self.pool).await.map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let source: Option<&str> = row.try_get("profile_source").map_err(map_err)?;
                Ok(ListedRequest {
                    span: span_from_row(row)?,
                    profile_source: source.map(parse_source).transpose()?,
                })
            })
            .collect()
    }

    async fn request_summary(
        &self,
        service: &str,
        since_unix_nano: i64,
        slowest: u32,
    ) -> Result<RequestSummary, StoreError> {
        // percentile_disc is nearest rank, as SQLite's backend computes it; one
        // REPEATABLE READ transaction so the slowest requests match the counts.
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let row = sqlx::query(
            "SELECT count(*), \
                 count(*) FILTER (WHERE status_code = $1 OR http_status >= $2), \
                 percentile_disc($3::float8[]) WITHIN GROUP (ORDER BY duration_ns), \
                 min(start_unix_nano), max(start_unix_nano) \
             FROM spans WHERE is_request AND service = $4 AND start_unix_nano >= $5",
        )
        .bind(OTEL_STATUS_ERROR)
        .bind(HTTP_SERVER_ERROR)
        .bind(&SUMMARY_PERCENTILES[..])
        .bind(service)
        .bind(since_unix_nano)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let requests = to_u64(row.try_get(0).map_err(map_err)?, "request count")?;
        let errors = to_u64(row.try_get(1).map_err(map_err)?, "error count")?;
        // NULL when there is no request.
        let percentiles_ns: Option<Vec<i64>> = row.try_get(2).map_err(map_err)?;
        let first_start_unix_nano: Option<i64> = row.try_get(3).map_err(map_err)?;
        let last_start_unix_nano: Option<i64> = row.try_get(4).map_err(map_err)?;
        let rows = sqlx::query(concat!(
            "SELECT ",
            span_columns!(),
            " FROM spans WHERE is_request AND service = $1 AND start_unix_nano >= $2 \
             ORDER BY duration_ns DESC LIMIT $3"
        ))
        .bind(service)
        .bind(since_unix_nano)
        .bind(i64::from(slowest))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(RequestSummary {
            requests,
            errors,
            percentiles_ns: percentiles_ns.unwrap_or_default(),
            slowest: rows.iter().map(span_from_row).collect::<Result<_, _>>()?,
            first_start_unix_nano,
            last_start_unix_nano,
        })
    }

    async fn get_trace(&self, trace_id: &TraceId) -> Result<Vec<SpanRecord>, StoreError> {
        let rows = sqlx::query(SELECT_TRACE)
            .bind(trace_id.as_bytes())
            .bind(coral_store::MAX_TRACE_SPANS as i64 + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        if rows.is_empty() {
            return Err(StoreError::NotFound(format!("trace {trace_id}")));
        }
        rows.iter().map(span_from_row).collect()
    }

    async fn register_agent(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO agents (agent_id, node, version, registered_unix_nano, \
                 last_heartbeat_unix_nano, counters) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (agent_id) DO UPDATE SET \
                 node = EXCLUDED.node, \
                 version = EXCLUDED.version, \
                 registered_unix_nano = EXCLUDED.registered_unix_nano, \
                 last_heartbeat_unix_nano = EXCLUDED.last_heartbeat_unix_nano",
        )
        .bind(&agent.agent_id)
        .bind(&agent.node)
        .bind(&agent.version)
        .bind(agent.registered_unix_nano)
        .bind(agent.last_heartbeat_unix_nano)
        .bind(Json(&agent.counters))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        agent_id: &str,
        at_unix_nano: i64,
        counters: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let updated = sqlx::query(
            "UPDATE agents SET last_heartbeat_unix_nano = $2, counters = $3 \
             WHERE agent_id = $1",
        )
        .bind(agent_id)
        .bind(at_unix_nano)
        .bind(Json(counters))
        .execute(&self.pool)
        .await
        .map_err(map_err)?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound(format!("agent {agent_id:?}")));
        }
        Ok(())
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT agent_id, node, version, registered_unix_nano, \
                 last_heartbeat_unix_nano, counters \
             FROM agents ORDER BY node COLLATE \"C\", agent_id COLLATE \"C\"",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(AgentRecord {
                    agent_id: row.try_get("agent_id").map_err(map_err)?,
                    node: row.try_get("node").map_err(map_err)?,
                    version: row.try_get("version").map_err(map_err)?,
                    registered_unix_nano: row.try_get("registered_unix_nano").map_err(map_err)?,
                    last_heartbeat_unix_nano: row
                        .try_get("last_heartbeat_unix_nano")
                        .map_err(map_err)?,
                    counters: row
                        .try_get::<Json<serde_json::Value>, _>("counters")
                        .map_err(map_err)?
                        .0,
                })
            })
            .collect()
    }

    async fn insert_trace_profiles(
        &self,
        batch: &[TraceProfileRecord],
    ) -> Result<InsertedProfiles, StoreError> {
        if batch.is_empty() {
            return Ok(InsertedProfiles::default());
        }
        let profiles = distinct_sorted_profiles(batch);
        // Checked before anything is written: a batch with a bad one stores nothing.
        let profile_types = profiles
            .iter()
            .map(|p| profile_types_text(&p.profile_types))
            .collect::<Result<Vec<String>, StoreError>>()?;
        let created = now_unix_nano();

        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let new_rows = sqlx::query(INSERT_TRACE_PROFILES)
            .bind(profiles.iter().map(|p| p.trace_id.as_bytes()).bind_iter())
            .bind(profiles.iter().map(|p| p.span_id.as_bytes()).bind_iter())
            .bind(profiles.iter().map(|p| p.service.as_str()).bind_iter())
            .bind(profiles.iter().map(|p| p.span_name.as_str()).bind_iter())
            .bind(profiles.iter().map(|p| p.start_unix_nano).bind_iter())
            .bind(profiles.iter().map(|p| p.duration_ns).bind_iter())
            .bind(profiles.iter().map(|p| p.node.as_str()).bind_iter())
            .bind(profiles.iter().map(|p| p.pid).bind_iter())
            .bind(profiles.iter().map(|p| p.thread_id).bind_iter())
            .bind(profiles.iter().map(|p| p.precision.as_str()).bind_iter())
            .bind(
                profiles
                    .iter()
                    .map(|p| i64::from(p.frequency_hz))
                    .bind_iter(),
            )
            .bind(
                profiles
                    .iter()
                    .map(|p| i64::from(p.concurrent_requests))
                    .bind_iter(),
            )
            .bind(profiles.iter().map(|p| p.source.to_string()).bind_iter())
            .bind(profiles.iter().map(|p| to_i64(p.samples())).bind_iter())
            .bind(
                profiles
                    .iter()
                    .map(|p| to_i64(p.profile.total_cpu_ns()))
                    .bind_iter(),
            )
            .bind(profiles.iter().map(|_| created).bind_iter())
            .bind(
                profiles
                    .iter()
                    .map(|p| i64::from(p.truncated_samples))
                    .bind_iter(),
            )
            .bind(profiles.iter().map(|p| to_i64(p.lost_samples)).bind_iter())
            .bind(
                profiles
                    .iter()
                    .map(|p| to_i64(p.profile.total(ProfileType::Offcpu)))
                    .bind_iter(),
            )
            .bind(&profile_types)
            .bind(
                profiles
                    .iter()
                    .map(|p| to_i64(p.profile.total(ProfileType::Memory)))
                    .bind_iter(),
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        let mut new_keys: HashSet<(&[u8], &[u8])> = HashSet::with_capacity(new_rows.len());
        for row in &new_rows {
            new_keys.insert((
                row.try_get("trace_id").map_err(map_err)?,
                row.try_get("span_id").map_err(map_err)?,
            ));
        }
        let mut new: Vec<&TraceProfileRecord> = profiles
            .iter()
            .copied()
            .filter(|p| new_keys.contains(&(p.trace_id.as_bytes(), p.span_id.as_bytes())))
            .collect();
        let mut tally = ClaimTally::default();
        for claim in slot_claims(batch, &new) {
            let result = claims_slot(&mut tx, claim.profile, created).await?;
            tally.record(&claim, result);
        }
        let outcome = tally.finish();
        for (trace_id, span_id) in &outcome.delete {
            sqlx::query(DELETE_TRACE_PROFILE)
                .bind(trace_id.as_bytes())
                .bind(span_id.as_bytes())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        for ((trace_id, span_id), source) in &outcome.relabel {
            sqlx::query(RELABEL_TRACE_PROFILE)
                .bind(trace_id.as_bytes())
                .bind(span_id.as_bytes())
                .bind(source.to_string())
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        let inserted = outcome.inserted(&mut new);
        if new.is_empty() {
            tx.commit().await.map_err(map_err)?;
            return Ok(inserted);
        }
        let rows = ProfileRows::of(new);

        sqlx::query(INSERT_FRAMES)
            .bind(rows.frames.keys().copied().bind_iter())
            .bind(
                rows.frames
                    .values()
                    .map(|f| f.function.as_str())
                    .bind_iter(),
            )
            .bind(rows.frames.values().map(|f| f.module.as_str()).bind_iter())
            .bind(rows.frames.values().map(|f| kind_str(f.kind)).bind_iter())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query(INSERT_STACKS)
            .bind(rows.stacks.keys().copied().bind_iter())
            .bind(rows.stacks.values().map(|h| array_literal(h)).bind_iter())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query(INSERT_SAMPLES)
            .bind(
                rows.samples
                    .iter()
                    .map(|r| r.trace_id.as_bytes())
                    .bind_iter(),
            )
            .bind(
                rows.samples
                    .iter()
                    .map(|r| r.span_id.as_bytes())
                    .bind_iter(),
            )
            .bind(rows.samples.iter().map(|r| r.stack_hash).bind_iter())
            .bind(rows.samples.iter().map(|r| r.samples).bind_iter())
            .bind(rows.samples.iter().map(|r| r.cpu_ns).bind_iter())
            .bind(rows.samples.iter().map(|r| r.off_cpu_ns).bind_iter())
            .bind(rows.samples.iter().map(|r| r.memory_bytes).bind_iter())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(inserted)
    }

    async fn trace_profiles(
        &self,
        trace_id: &TraceId,
    ) -> Result<Vec<TraceProfileRecord>, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let rows = sqlx::query(SELECT_TRACE_PROFILES)
            .bind(trace_id.as_bytes())
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
        if rows.is_empty() {
            return Err(StoreError::NotFound(format!(
                "profiles of trace {trace_id}"
            )));
        }
        let mut records = rows
            .iter()
            .map(trace_profile_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        load_profiles(&mut conn, &mut records).await?;
        Ok(records)
    }

    async fn cohort_profiles(
        &self,
        service: &str,
        since_unix_nano: i64,
        filter: &Filter,
        limit: u32,
    ) -> Result<(Vec<TraceProfileRecord>, bool), StoreError> {
        let (fragment, values) = filter_sql::compile(filter, Dialect::Postgres, 4);
        let sql = format!("{SELECT_COHORT}{fragment}{COHORT_ORDER}");
        // The fragment is the compiler's own text (every value is bound), and one
        // statement per filter is not worth preparing for reuse.
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .persistent(false)
            .bind(service)
            .bind(since_unix_nano)
            .bind(i64::from(limit) + 1);
        for value in values {
            query = match value {
                SqlValue::I64(v) => query.bind(v),
                SqlValue::F64(v) => query.bind(v),
                SqlValue::Text(v) => query.bind(v),
                SqlValue::Bytes(v) => query.bind(v),
                SqlValue::Bool(v) => query.bind(v),
            };
        }
        let mut conn = self.pool.acquire().await.map_err(map_err)?;
        let rows = query.fetch_all(&mut *conn).await.map_err(map_err)?;
        let truncated = rows.len() > limit as usize;
        let mut records = rows
            .iter()
            .take(limit as usize)
            .map(trace_profile_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        load_profiles(&mut conn, &mut records).await?;
        Ok((records, truncated))
    }

    async fn create_profile_session(&self, session: &ProfileSession) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO profile_sessions (session_id, service, frequency_hz, \
                 created_unix_nano, duration_ns, ends_unix_nano) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(session.session_id)
        .bind(&session.service)
        .bind(i64::from(session.frequency_hz))
        .bind(session.created_unix_nano)
        .bind(session.duration_ns)
        .bind(session.ends_unix_nano())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn active_profile_sessions(
        &self,
        now_unix_nano: i64,
    ) -> Result<Vec<ProfileSession>, StoreError> {
        let rows = sqlx::query(
            "SELECT session_id, service, frequency_hz, created_unix_nano, duration_ns \
             FROM profile_sessions WHERE ends_unix_nano > $1 \
             ORDER BY created_unix_nano, session_id",
        )
        .bind(now_unix_nano)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(ProfileSession {
                    session_id: row.try_get("session_id").map_err(map_err)?,
                    service: row.try_get("service").map_err(map_err)?,
                    frequency_hz: to_u32(
                        row.try_get("frequency_hz").map_err(map_err)?,
                        "profile_sessions.frequency_hz",
                    )?,
                    created_unix_nano: row.try_get("created_unix_nano").map_err(map_err)?,
                    duration_ns: row.try_get("duration_ns").map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn put_session_result(&self, result: &SessionResult) -> Result<(), StoreError> {
        // The foreign key on session_id refuses a result for an unknown session.
        sqlx::query(
            "INSERT INTO profile_session_results \
                 (session_id, agent_id, node, processes, profile, error) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (session_id, agent_id) DO UPDATE SET \
                 node = EXCLUDED.node, \
                 processes = EXCLUDED.processes, \
                 profile = EXCLUDED.profile, \
                 error = EXCLUDED.error",
        )
        .bind(result.session_id)
        .bind(&result.agent_id)
        .bind(&result.node)
        .bind(i64::from(result.processes))
        .bind(Json(&result.profile))
        .bind(result.error.as_deref())
        .execute(&self.pool)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                StoreError::NotFound(format!("profile session {}", result.session_id))
            }
            _ => map_err(e),
        })?;
        Ok(())
    }

    async fn session_results(
        &self,
        session_id: uuid::Uuid,
    ) -> Result<Vec<SessionResult>, StoreError> {
        let rows = sqlx::query(
            "SELECT session_id, agent_id, node, processes, profile, error \
             FROM profile_session_results WHERE session_id = $1 \
             ORDER BY node COLLATE \"C\", agent_id COLLATE \"C\"",
        )
        .bind(session_id)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(SessionResult {
                    session_id: row.try_get("session_id").map_err(map_err)?,
                    agent_id: row.try_get("agent_id").map_err(map_err)?,
                    node: row.try_get("node").map_err(map_err)?,
                    processes: to_u32(
                        row.try_get("processes").map_err(map_err)?,
                        "profile_session_results.processes",
                    )?,
                    profile: row
                        .try_get::<Json<Profile>, _>("profile")
                        .map_err(map_err)?
                        .0,
                    error: row.try_get("error").map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn create_trigger(&self, trigger: &TraceProfileTrigger) -> Result<(), StoreError> {
        let inserted = sqlx::query(INSERT_TRIGGER)
            .bind(trigger.trigger_id)
            .bind(&trigger.service)
            .bind(trigger.created_unix_nano)
            .bind(trigger.expires_unix_nano)
            .bind(trigger.ended_unix_nano)
            .bind(trigger.status.as_str())
            .bind(
                trigger
                    .min_duration_ms
                    .map(|n| to_i32(n, "min_duration_ms"))
                    .transpose()?,
            )
            .bind(
                trigger
                    .max_duration_ms
                    .map(|n| to_i32(n, "max_duration_ms"))
                    .transpose()?,
            )
            .bind(trigger.status_code_pattern.as_deref())
            .bind(trigger.url_pattern.as_deref())
            .bind(to_i32(trigger.frequency_hz, "frequency_hz")?)
            .bind(to_i32(trigger.max_requests, "max_requests")?)
            .bind(to_i32(trigger.collected_requests, "collected_requests")?)
            .bind(trace_id_texts(&trigger.trace_ids))
            .bind(to_i32(trigger.baseline_requests, "baseline_requests")?)
            .bind(to_i32(trigger.baseline_collected, "baseline_collected")?)
            .bind(profile_types_text(&trigger.profile_types)?)
            .execute(&self.pool)
            .await
            .map_err(map_err)?
            .rows_affected();
        if inserted == 0 {
            return Err(unknown_service(&trigger.service));
        }
        Ok(())
    }

    async fn trigger(&self, trigger_id: uuid::Uuid) -> Result<TraceProfileTrigger, StoreError> {
        let row = sqlx::query(concat!(select_triggers!(), " WHERE t.trigger_id = $1"))
            .bind(trigger_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("trigger {trigger_id}")))?;
        trigger_from_row(&row)
    }

    async fn resolve_trigger_id(&self, prefix: &str) -> Result<uuid::Uuid, StoreError> {
        let digits = trigger_id_prefix(prefix)?;
        let (matching, first): (i64, Option<uuid::Uuid>) = sqlx::query_as(MATCH_TRIGGER_PREFIX)
            .bind(digits.as_str())
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        resolved_trigger_id(&digits, to_u64(matching, "count(*)")?, first)
    }

    async fn list_triggers(
        &self,
        service: Option<&str>,
        include_ended: bool,
        limit: u32,
    ) -> Result<Vec<TraceProfileTrigger>, StoreError> {
        let rows = sqlx::query(concat!(
            select_triggers!(),
            " WHERE ($1::text IS NULL OR s.name = $1) AND ($2 OR t.status = 'active') \
             ORDER BY t.created_at DESC, t.trigger_id DESC LIMIT $3"
        ))
        .bind(service)
        .bind(include_ended)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(trigger_from_row).collect()
    }

    async fn active_triggers(
        &self,
        now_unix_nano: i64,
    ) -> Result<Vec<TraceProfileTrigger>, StoreError> {
        let rows = sqlx::query(concat!(
            select_triggers!(),
            " WHERE t.status = 'active' AND t.expires_at > ",
            timestamptz!("$1"),
            " ORDER BY t.created_at, t.trigger_id"
        ))
        .bind(now_unix_nano)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(trigger_from_row).collect()
    }

    async fn cancel_trigger(
        &self,
        trigger_id: uuid::Uuid,
        now_unix_nano: i64,
    ) -> Result<TraceProfileTrigger, StoreError> {
        sqlx::query(concat!(
            "UPDATE trace_profile_triggers SET status = 'cancelled', ended_at = ",
            timestamptz!("$2"),
            " WHERE trigger_id = $1 AND status = 'active'"
        ))
        .bind(trigger_id)
        .bind(now_unix_nano)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        self.trigger(trigger_id).await
    }

    async fn expire_triggers(&self, now_unix_nano: i64) -> Result<u64, StoreError> {
        let expired = sqlx::query(concat!(
            "UPDATE trace_profile_triggers SET status = 'expired', ended_at = expires_at \
             WHERE status = 'active' AND expires_at <= ",
            timestamptz!("$1")
        ))
        .bind(now_unix_nano)
        .execute(&self.pool)
        .await
        .map_err(map_err)?
        .rows_affected();
        Ok(expired)
    }

    async fn trigger_requests(
        &self,
        trigger_id: uuid::Uuid,
    ) -> Result<Vec<CollectedRequest>, StoreError> {
        let rows = sqlx::query(SELECT_COLLECTED)
            .bind(ProfileSource::Trigger(trigger_id).to_string())
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(collected_request_from_row).collect()
    }

    async fn purge_profiles_before(&self, cutoff_unix_nano: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let purged: i64 = sqlx::query_scalar(PURGE_TRACE_PROFILES)
            .bind(cutoff_unix_nano)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        // Their results go with them (ON DELETE CASCADE).
        sqlx::query("DELETE FROM profile_sessions WHERE ends_unix_nano < $1")
            .bind(cutoff_unix_nano)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query(concat!(
            "DELETE FROM trace_profile_triggers WHERE status <> 'active' AND ended_at < ",
            timestamptz!("$1")
        ))
        .bind(cutoff_unix_nano)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        to_u64(purged, "count(*)")
    }
}

/// ` AND (<term> OR <term> …)`, every value bound.
fn push_status_filter(qb: &mut QueryBuilder<Postgres>, status: &StatusPattern) {
    qb.push(" AND (");
    if status.terms().is_empty() {
        qb.push("FALSE");
    }
    for (i, term) in status.terms().iter().enumerate() {
        if i > 0 {
            qb.push(" OR ");
        }
        match term {
            StatusTerm::Http(range) => {
                qb.push("(http_status BETWEEN ");
                qb.push_bind(*range.start());
                qb.push(" AND ");
                qb.push_bind(*range.end());
                qb.push(")");
            }
            StatusTerm::OtelError => {
                qb.push("status_code = ");
                qb.push_bind(OTEL_STATUS_ERROR);
            }
        }
    }
    qb.push(")");
}

/// Whether a new profile is kept: a trigger or baseline profile only if it claims a
/// slot of its trigger (see [`Store::insert_trace_profiles`]).
async fn claims_slot(
    conn: &mut PgConnection,
    profile: &TraceProfileRecord,
    now_unix_nano: i64,
) -> Result<Claim, StoreError> {
    let kept = |kept: bool| if kept { Claim::Kept } else { Claim::Refused };
    match profile.source {
        ProfileSource::Session(_) => Ok(Claim::Kept),
        ProfileSource::Trigger(id) => {
            let trace = profile.trace_id.to_string();
            let claimed: Option<String> = sqlx::query_scalar(CLAIM_TRIGGER_SLOT)
                .bind(id)
                .bind(&trace)
                .bind(now_unix_nano)
                .fetch_optional(&mut *conn)
                .await
                .map_err(map_err)?;
            if let Some(status) = claimed {
                return Ok(if status == "completed" {
                    Claim::Completed
                } else {
                    Claim::Kept
                });
            }
            // Another statement, so that it sees a claim of the trace that another
            // colony committed while the one above waited for it.
            Ok(kept(
                sqlx::query_scalar(TRIGGER_HAS_TRACE)
                    .bind(id)
                    .bind(&trace)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(map_err)?,
            ))
        }
        ProfileSource::Baseline(id) => {
            // Membership first: a request counts once per baseline, however often
            // (and under whichever source) it arrives.
            let (trace, span) = (profile.trace_id.as_bytes(), profile.span_id.as_bytes());
            let member = |sql: &'static str| sqlx::query(sql).bind(id).bind(trace).bind(span);
            if member(INSERT_BASELINE_MEMBER)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?
                .rows_affected()
                == 0
            {
                // Counted already (a retry, or sent twice), or the trigger is gone.
                let counted: bool = sqlx::query_scalar(BASELINE_HAS_MEMBER)
                    .bind(id)
                    .bind(trace)
                    .bind(span)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(map_err)?;
                return Ok(kept(counted));
            }
            let claimed = sqlx::query(CLAIM_BASELINE_SLOT)
                .bind(id)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?
                .rows_affected()
                == 1;
            if !claimed {
                member(DELETE_BASELINE_MEMBER)
                    .execute(&mut *conn)
                    .await
                    .map_err(map_err)?;
            }
            Ok(kept(claimed))
        }
    }
}

fn trigger_from_row(row: &PgRow) -> Result<TraceProfileTrigger, StoreError> {
    // INTEGER columns, read as i32.
    let int = |column: &str| {
        row.try_get::<i32, _>(column)
            .map(i64::from)
            .map_err(map_err)
    };
    let opt_int = |column: &str| {
        row.try_get::<Option<i32>, _>(column)
            .map(|n| n.map(i64::from))
            .map_err(map_err)
    };
    TriggerRow {
        trigger_id: row.try_get("trigger_id").map_err(map_err)?,
        service: row.try_get("service").map_err(map_err)?,
        created_unix_nano: row.try_get("created_unix_nano").map_err(map_err)?,
        expires_unix_nano: row.try_get("expires_unix_nano").map_err(map_err)?,
        ended_unix_nano: row.try_get("ended_unix_nano").map_err(map_err)?,
        status: row.try_get("status").map_err(map_err)?,
        min_duration_ms: opt_int("min_duration_ms")?,
        max_duration_ms: opt_int("max_duration_ms")?,
        status_code_pattern: row.try_get("status_code_pattern").map_err(map_err)?,
        url_pattern: row.try_get("url_pattern").map_err(map_err)?,
        frequency_hz: int("frequency_hz")?,
        max_requests: int("max_requests")?,
        collected_requests: opt_int("collected_requests")?,
        trace_ids: row
            .try_get::<Option<Vec<String>>, _>("trace_ids")
            .map_err(map_err)?
            .unwrap_or_default(),
        baseline_requests: int("baseline_requests")?,
        baseline_collected: int("baseline_collected")?,
        profile_types: row.try_get("profile_types").map_err(map_err)?,
    }
    .into_trigger()
}

fn collected_request_from_row(row: &PgRow) -> Result<CollectedRequest, StoreError> {
    let bad_id =
        |column: &str| StoreError::Corrupt(format!("trace_profiles.{column} is not a valid id"));
    let trace_id: &[u8] = row.try_get("trace_id").map_err(map_err)?;
    let span_id: &[u8] = row.try_get("span_id").map_err(map_err)?;
    let precision: &str = row.try_get("precision").map_err(map_err)?;
    Ok(CollectedRequest {
        trace_id: TraceId::from_bytes(trace_id).ok_or_else(|| bad_id("trace_id"))?,
        span_id: SpanId::from_bytes(span_id).ok_or_else(|| bad_id("span_id"))?,
        span_name: row.try_get("span_name").map_err(map_err)?,
        start_unix_nano: row.try_get("start_unix_nano").map_err(map_err)?,
        duration_ns: row.try_get("duration_ns").map_err(map_err)?,
        http_status: row.try_get("http_status").map_err(map_err)?,
        status_code: row.try_get("status_code").map_err(map_err)?,
        node: row.try_get("node").map_err(map_err)?,
        samples: to_u64(
            row.try_get("samples").map_err(map_err)?,
            "trace_profiles.samples",
        )?,
        precision: Precision::parse(precision).ok_or_else(|| {
            StoreError::Corrupt(format!("trace_profiles.precision is {precision:?}"))
        })?,
        cpu_ns: to_u64(
            row.try_get("cpu_ns").map_err(map_err)?,
            "trace_profiles.cpu_ns",
        )?,
        off_cpu_ns: to_u64(
            row.try_get("off_cpu_ns").map_err(map_err)?,
            "trace_profiles.off_cpu_ns",
        )?,
        memory_bytes: to_u64(
            row.try_get("memory_bytes").map_err(map_err)?,
            "trace_profiles.memory_bytes",
        )?,
        profile_types: parse_profile_types(
            row.try_get("profile_types").map_err(map_err)?,
            "trace_profiles.profile_types",
        )?,
    })
}

/// Fills in the profiles of `records` (rows of `trace_profiles`) from their samples,
/// stacks and frames: two queries however many profiles. Samples of a profile stored
/// after its row was read are ignored.
async fn load_profiles(
    conn: &mut PgConnection,
    records: &mut [TraceProfileRecord],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let trace_ids: Vec<&[u8]> = records.iter().map(|r| r.trace_id.as_bytes()).collect();
    let span_ids: Vec<&[u8]> = records.iter().map(|r| r.span_id.as_bytes()).collect();
    let sample_rows = sqlx::query(SELECT_SAMPLES)
        .bind(&trace_ids)
        .bind(&span_ids)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    let mut stacks = StacksByProfile::new();
    for row in &sample_rows {
        let bad_id = |column: &str| {
            StoreError::Corrupt(format!("trace_profile_samples.{column} is not a valid id"))
        };
        let trace_id: &[u8] = row.try_get("trace_id").map_err(map_err)?;
        let span_id: &[u8] = row.try_get("span_id").map_err(map_err)?;
        let key = (
            TraceId::from_bytes(trace_id).ok_or_else(|| bad_id("trace_id"))?,
            SpanId::from_bytes(span_id).ok_or_else(|| bad_id("span_id"))?,
        );
        let stack_hash: i64 = row.try_get("stack_hash").map_err(map_err)?;
        let hashes: Vec<i64> = row
            .try_get::<Option<Vec<i64>>, _>("frame_hashes")
            .map_err(map_err)?
            .ok_or_else(|| StoreError::Corrupt(format!("stack {stack_hash} is not stored")))?;
        stacks.entry(key).or_default().push(StackRead {
            stack_hash,
            samples: to_u64(
                row.try_get("samples").map_err(map_err)?,
                "trace_profile_samples.samples",
            )?,
            cpu_ns: to_u64(
                row.try_get("cpu_ns").map_err(map_err)?,
                "trace_profile_samples.cpu_ns",
            )?,
            off_cpu_ns: to_u64(
                row.try_get("off_cpu_ns").map_err(map_err)?,
                "trace_profile_samples.off_cpu_ns",
            )?,
            memory_bytes: to_u64(
                row.try_get("memory_bytes").map_err(map_err)?,
                "trace_profile_samples.memory_bytes",
            )?,
            frame_hashes: hashes,
        });
    }

    let frame_rows = sqlx::query(SELECT_FRAMES)
        .bind(frame_hashes_of(&stacks))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    let mut frames: HashMap<i64, Frame> = HashMap::with_capacity(frame_rows.len());
    for row in &frame_rows {
        let kind: &str = row.try_get("kind").map_err(map_err)?;
        frames.insert(
            row.try_get("frame_hash").map_err(map_err)?,
            Frame {
                function: row.try_get("function").map_err(map_err)?,
                module: row.try_get("module").map_err(map_err)?,
                kind: parse_kind(kind)?,
            },
        );
    }
    attach_profiles(records, stacks, &frames)
}

/// A PostgreSQL array literal of integers: `{1,-2,3}`.
fn array_literal(values: &[i64]) -> String {
    let mut s = String::with_capacity(values.len() * 21 + 2);
    s.push('{');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{v}");
    }
    s.push('}');
    s
}

/// A trace profile row, with an empty profile.
fn trace_profile_from_row(row: &PgRow) -> Result<TraceProfileRecord, StoreError> {
    let bad_id =
        |column: &str| StoreError::Corrupt(format!("trace_profiles.{column} is not a valid id"));
    let trace_id: &[u8] = row.try_get("trace_id").map_err(map_err)?;
    let span_id: &[u8] = row.try_get("span_id").map_err(map_err)?;
    let precision: &str = row.try_get("precision").map_err(map_err)?;
    Ok(TraceProfileRecord {
        trace_id: TraceId::from_bytes(trace_id).ok_or_else(|| bad_id("trace_id"))?,
        span_id: SpanId::from_bytes(span_id).ok_or_else(|| bad_id("span_id"))?,
        service: row.try_get("service").map_err(map_err)?,
        span_name: row.try_get("span_name").map_err(map_err)?,
        start_unix_nano: row.try_get("start_unix_nano").map_err(map_err)?,
        duration_ns: row.try_get("duration_ns").map_err(map_err)?,
        node: row.try_get("node").map_err(map_err)?,
        pid: row.try_get("pid").map_err(map_err)?,
        thread_id: row.try_get("thread_id").map_err(map_err)?,
        precision: Precision::parse(precision).ok_or_else(|| {
            StoreError::Corrupt(format!("trace_profiles.precision is {precision:?}"))
        })?,
        frequency_hz: to_u32(
            row.try_get("frequency_hz").map_err(map_err)?,
            "trace_profiles.frequency_hz",
        )?,
        concurrent_requests: to_u32(
            row.try_get("concurrent_requests").map_err(map_err)?,
            "trace_profiles.concurrent_requests",
        )?,
        truncated_samples: to_u32(
            row.try_get("truncated_samples").map_err(map_err)?,
            "trace_profiles.truncated_samples",
        )?,
        lost_samples: to_u64(
            row.try_get("lost_samples").map_err(map_err)?,
            "trace_profiles.lost_samples",
        )?,
        source: parse_source(row.try_get("source").map_err(map_err)?)?,
        profile_types: parse_profile_types(
            row.try_get("profile_types").map_err(map_err)?,
            "trace_profiles.profile_types",
        )?,
        profile: Profile::new(),
    })
}

fn service_from_row(row: &PgRow) -> Result<ServiceRecord, StoreError> {
    Ok(ServiceRecord {
        service_id: row.try_get("service_id").map_err(map_err)?,
        name: row.try_get("name").map_err(map_err)?,
        first_seen_unix_nano: row.try_get("first_seen_unix_nano").map_err(map_err)?,
        last_seen_unix_nano: row.try_get("last_seen_unix_nano").map_err(map_err)?,
    })
}

fn span_from_row(row: &PgRow) -> Result<SpanRecord, StoreError> {
    let get_id = |column: &str| -> Result<&[u8], StoreError> {
        row.try_get::<&[u8], _>(column).map_err(map_err)
    };
    let bad_id = |column: &str, bytes: &[u8]| {
        StoreError::Corrupt(format!(
            "spans.{column} is {} bytes, not a valid id",
            bytes.len()
        ))
    };
    let trace_id = get_id("trace_id")?;
    let span_id = get_id("span_id")?;
    let parent_span_id = row
        .try_get::<Option<&[u8]>, _>("parent_span_id")
        .map_err(map_err)?
        .map(|bytes| SpanId::from_bytes(bytes).ok_or_else(|| bad_id("parent_span_id", bytes)))
        .transpose()?;
    Ok(SpanRecord {
        trace_id: TraceId::from_bytes(trace_id).ok_or_else(|| bad_id("trace_id", trace_id))?,
        span_id: SpanId::from_bytes(span_id).ok_or_else(|| bad_id("span_id", span_id))?,
        parent_span_id,
        service: row.try_get("service").map_err(map_err)?,
        name: row.try_get("name").map_err(map_err)?,
        kind: row.try_get("kind").map_err(map_err)?,
        start_unix_nano: row.try_get("start_unix_nano").map_err(map_err)?,
        duration_ns: row.try_get("duration_ns").map_err(map_err)?,
        status_code: row.try_get("status_code").map_err(map_err)?,
        status_message: row.try_get("status_message").map_err(map_err)?,
        http_status: row.try_get("http_status").map_err(map_err)?,
        url: row.try_get("url").map_err(map_err)?,
        route: row.try_get("route").map_err(map_err)?,
        pid: row.try_get("pid").map_err(map_err)?,
        thread_id: row.try_get("thread_id").map_err(map_err)?,
        node: row.try_get("node").map_err(map_err)?,
        attributes: row
            .try_get::<Json<serde_json::Map<String, serde_json::Value>>, _>("attributes")
            .map_err(map_err)?
            .0,
    })
}

#[cfg(test)]
mod tests;
