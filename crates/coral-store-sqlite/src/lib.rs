//! The embedded SQLite backend of [`coral_store::Store`]: Coral's zero-setup default,
//! one file (`coral.db`) in the colony's data directory.
//!
//! [`SqliteStore::open`] creates the directory and the database if missing, in WAL
//! journal mode (readers never block the writer nor each other) with
//! `synchronous=NORMAL`, foreign keys on and a busy timeout, and applies this
//! crate's migrations (`migrations/`, embedded at compile time). Every query is a
//! runtime `sqlx::query` with bound parameters; the dynamic ones are built with
//! [`sqlx::QueryBuilder`] and bind every value, or take the `WHERE` fragment of a
//! cohort filter that `coral_store::filter_sql` compiles (numbered parameters only).
//! Every connection registers `REGEXP` (Rust's `regex`) for the filters' regexes.
//!
//! SQLite allows one writer at a time, so the store keeps two pools on the file: a
//! single-connection writer pool, which queues this process's writes in order
//! instead of letting them fight over the lock, and a pool of up to four connections
//! for reads. Write transactions start with `BEGIN IMMEDIATE` and every connection
//! waits up to the busy timeout for the lock, so another process writing to the
//! same file delays a write rather than failing it.
//!
//! A batch of spans is one transaction: multi-row `INSERT … ON CONFLICT DO NOTHING`
//! statements of at most 500 rows (9,000 bound variables, under SQLite's limit of
//! 32,766), then one upsert of the batch's services. The batch is sorted by (trace
//! id, span id) and deduplicated first.
//!
//! A batch of trace profiles is one transaction too: the profile rows first
//! (`RETURNING` the ones that were new), then, for the new ones only, their frames,
//! stacks and per-stack sample rows, in chunked multi-row `INSERT … ON CONFLICT DO
//! NOTHING` statements (frames and stacks are shared by every profile that has them;
//! see `coral_store::profile_rows`). A stack's frame hashes are a BLOB of little-endian `i64`s.
//! The samples table is `WITHOUT ROWID`, clustered on its primary key (trace id,
//! span id, stack hash), so a profile's samples are one contiguous range; profiles
//! are read with their keys as one JSON array, a primary-key search each.
//!
//! A trigger or baseline profile must also claim a slot of its trigger, after the
//! profile rows went in (only new ones claim, so a retry never counts twice; a
//! baseline profile of a request already stored claims too, once per trigger and
//! request, recorded in `trace_profile_baselines`): one
//! conditional `UPDATE` of the trigger row per profile. Write transactions are
//! serialized, so no two writers, in this process or another, can take the last
//! slot. Profiles that claim none are deleted again before their samples would go in.
//! A trigger's `trace_ids` is a JSON array, appended to with `json_insert`.

mod error;

use std::collections::{HashMap, HashSet};
use std::path::Path;
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
    TraceProfileRecord, TraceProfileTrigger, nearest_rank_offset,
};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite};

use crate::error::{map_err, map_migrate_err};

/// The lowest HTTP status a summary counts as an error (5xx).
const HTTP_SERVER_ERROR: i32 = 500;
use coral_store::batch::{distinct_spans, now_unix_nano, services_seen};
use coral_store::filter_sql::{self, Dialect, SqlValue};
use coral_store::profile_rows::{
    ProfileRows, StackRead, StacksByProfile, attach_profiles,
    distinct_sorted as distinct_sorted_profiles, frame_hashes_of, hashes_from_bytes,
    hashes_to_bytes, kind_str, parse_kind, parse_profile_types, parse_source, profile_types_text,
    to_i64, to_u32, to_u64,
};
use coral_store::trigger_rows::{
    ClaimTally, TriggerRow, resolved_trigger_id, slot_claims, to_i32, trace_id_texts,
    trigger_id_prefix, unknown_service,
};

/// This crate's migrations, embedded at compile time.
static MIGRATOR: Migrator = sqlx::migrate!();

/// The database file's name in the data directory.
pub const DATABASE_FILE: &str = "coral.db";

/// Connections of the read pool.
const MAX_READERS: u32 = 4;
/// How long a statement waits for another connection's (or process's) lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call waits for a free connection before the store reports
/// [`StoreError::Unavailable`]; writes queue for the one writer connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Columns bound per span row.
const SPAN_INSERT_COLUMNS: usize = 18;
/// Rows per span insert statement: 9,000 bound variables, well under SQLite's
/// 32,766. Statements of exactly this many rows are prepared once and cached.
const SPAN_ROWS_PER_INSERT: usize = 500;
/// Rows per services upsert statement (4 variables each).
const SERVICE_ROWS_PER_UPSERT: usize = 1000;
const _: () = assert!(SPAN_ROWS_PER_INSERT * SPAN_INSERT_COLUMNS <= 32_766);
/// Rows per statement of the trace profile tables: at most 9,000 bound variables each.
const PROFILE_ROWS_PER_INSERT: usize = 428; // 21 columns
const FRAME_ROWS_PER_INSERT: usize = 2000; // 4 columns
const STACK_ROWS_PER_INSERT: usize = 4000; // 2 columns
const SAMPLE_ROWS_PER_INSERT: usize = 1250; // 7 columns

/// The columns of a span, in [`span_from_row`]'s and the insert's order.
macro_rules! span_columns {
    () => {
        "trace_id, span_id, parent_span_id, service, name, kind, start_unix_nano, \
         duration_ns, status_code, status_message, http_status, url, route, pid, \
         thread_id, node, attributes"
    };
}

const SELECT_TRACE: &str = concat!(
    "SELECT ",
    span_columns!(),
    " FROM spans WHERE trace_id = ? ORDER BY start_unix_nano, span_id LIMIT ?"
);

const SELECT_SERVICES: &str = "SELECT service_id, name, first_seen_unix_nano, \
     last_seen_unix_nano FROM services ORDER BY name";

const SELECT_SERVICE: &str = "SELECT service_id, name, first_seen_unix_nano, \
     last_seen_unix_nano FROM services WHERE name = ?";

/// How many requests service `?3` served since `?4`, and how many failed (OTel
/// status `?1` or HTTP status `?2` and above): read from the covering
/// `spans_requests_by_start_covering` index alone.
const SUMMARY_COUNTS: &str = "\
    SELECT count(*), coalesce(sum(status_code = ?1 OR http_status >= ?2), 0), \
        min(start_unix_nano), max(start_unix_nano) \
    FROM spans WHERE is_request AND service = ?3 AND start_unix_nano >= ?4";

/// SQLite has no percentile function: the nearest-rank rows `?3`, `?4`, `?5` of
/// service `?1`'s requests since `?2`, numbered in duration order in one pass (one
/// `OFFSET` query per percentile would walk the window once each). The window comes
/// from the covering start index and is sorted; `+duration_ns` keeps the planner
/// from walking the `(service, duration_ns)` index instead, which avoids the sort
/// but reads every request the service ever sent and looks each up in the table.
const SUMMARY_PERCENTILE_ROWS: &str = "\
    SELECT rank, duration_ns FROM ( \
        SELECT duration_ns, row_number() OVER (ORDER BY +duration_ns) - 1 AS rank \
        FROM spans WHERE is_request AND service = ?1 AND start_unix_nano >= ?2) \
    WHERE rank IN (?3, ?4, ?5)";

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

const SELECT_TRACE_PROFILES: &str = concat!(
    "SELECT ",
    trace_profile_columns!(),
    " FROM trace_profiles WHERE trace_id = ? ORDER BY start_unix_nano, span_id"
);

/// The samples of some profiles, whose (trace id, span id) come as one JSON array
/// of `[trace hex, span hex]` pairs: a primary-key look-up per profile.
const SELECT_SAMPLES: &str = "\
    SELECT s.trace_id, s.span_id, s.stack_hash, s.samples, s.cpu_ns, s.off_cpu_ns, \
        s.memory_bytes, st.frame_hashes \
    FROM json_each(?1) AS k \
    CROSS JOIN trace_profile_samples s \
    LEFT JOIN profile_stacks st ON st.stack_hash = s.stack_hash \
    WHERE s.trace_id = unhex(k.value ->> 0) AND s.span_id = unhex(k.value ->> 1)";

/// A service's request profiles since a time, newest first, with their spans (if
/// stored) as `s` for the cohort filter's fragment, which follows `AND` and whose
/// parameters start at `?4`. `tp.*` because both tables have columns of the same
/// names; rows are read by column name.
const SELECT_COHORT: &str = "\
    SELECT tp.* FROM trace_profiles tp \
    LEFT JOIN spans s ON s.trace_id = tp.trace_id AND s.span_id = tp.span_id \
    WHERE tp.service = ?1 AND tp.start_unix_nano >= ?2 AND ";
const COHORT_ORDER: &str =
    " ORDER BY tp.start_unix_nano DESC, tp.trace_id DESC, tp.span_id DESC LIMIT ?3";

/// The frame hashes come as one JSON array.
const SELECT_FRAMES: &str = "SELECT frame_hash, function, module, kind \
     FROM profile_frames WHERE frame_hash IN (SELECT value FROM json_each(?))";

const DELETE_TRACE_PROFILE: &str =
    "DELETE FROM trace_profiles WHERE trace_id = ?1 AND span_id = ?2";

/// A trigger's columns, with its service's name, in [`trigger_from_row`]'s order.
macro_rules! select_triggers {
    () => {
        "SELECT t.trigger_id, s.name AS service, t.created_at AS created_unix_nano, \
             t.expires_at AS expires_unix_nano, t.ended_at AS ended_unix_nano, t.status, \
             t.min_duration_ms, t.max_duration_ms, t.status_code_pattern, t.url_pattern, \
             t.frequency_hz, t.max_requests, t.collected_requests, t.trace_ids, \
             t.baseline_requests, t.baseline_collected, t.profile_types \
         FROM trace_profile_triggers t JOIN services s ON s.service_id = t.service_id"
    };
}

/// Inserts nothing if the service (by name) is unknown.
const INSERT_TRIGGER: &str = "\
    INSERT INTO trace_profile_triggers (trigger_id, service_id, created_at, expires_at, \
        ended_at, status, min_duration_ms, max_duration_ms, status_code_pattern, \
        url_pattern, frequency_hz, max_requests, collected_requests, trace_ids, \
        baseline_requests, baseline_collected, profile_types) \
    SELECT ?1, service_id, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17 \
    FROM services WHERE name = ?2";

/// Takes one of a trigger's slots for trace `?2`, at `?3`: only while it is active,
/// not full and without the trace. The last slot completes it.
const CLAIM_TRIGGER_SLOT: &str = "\
    UPDATE trace_profile_triggers SET \
        collected_requests = collected_requests + 1, \
        trace_ids = json_insert(coalesce(trace_ids, '[]'), '$[#]', ?2), \
        status = CASE WHEN collected_requests + 1 >= max_requests \
            THEN 'completed' ELSE status END, \
        ended_at = CASE WHEN collected_requests + 1 >= max_requests \
            THEN ?3 ELSE ended_at END \
    WHERE trigger_id = ?1 AND status = 'active' AND collected_requests < max_requests \
        AND NOT EXISTS (SELECT 1 FROM json_each(trace_ids) WHERE value = ?2) \
    RETURNING status";

const TRIGGER_HAS_TRACE: &str = "\
    SELECT EXISTS (SELECT 1 FROM trace_profile_triggers t, json_each(t.trace_ids) j \
        WHERE t.trigger_id = ?1 AND j.value = ?2)";

const CLAIM_BASELINE_SLOT: &str = "\
    UPDATE trace_profile_triggers SET baseline_collected = baseline_collected + 1 \
    WHERE trigger_id = ?1 AND baseline_collected < baseline_requests";

/// Makes request (`?2`, `?3`) a member of trigger `?1`'s baseline, if the trigger
/// exists; nothing if it is one already.
const INSERT_BASELINE_MEMBER: &str = "\
    INSERT INTO trace_profile_baselines (trigger_id, trace_id, span_id) \
    SELECT ?1, ?2, ?3 WHERE EXISTS \
        (SELECT 1 FROM trace_profile_triggers WHERE trigger_id = ?1) \
    ON CONFLICT DO NOTHING";

const BASELINE_HAS_MEMBER: &str = "\
    SELECT EXISTS (SELECT 1 FROM trace_profile_baselines \
        WHERE trigger_id = ?1 AND trace_id = ?2 AND span_id = ?3)";

const DELETE_BASELINE_MEMBER: &str = "\
    DELETE FROM trace_profile_baselines WHERE trigger_id = ?1 AND trace_id = ?2 AND span_id = ?3";

const RELABEL_TRACE_PROFILE: &str =
    "UPDATE trace_profiles SET source = ?3 WHERE trace_id = ?1 AND span_id = ?2";

/// How many triggers have an id whose hex digits start with `?1`, and the first.
const MATCH_TRIGGER_PREFIX: &str = "\
    SELECT count(*) AS matching, min(trigger_id) AS trigger_id FROM trace_profile_triggers \
    WHERE substr(replace(trigger_id, '-', ''), 1, length(?1)) = ?1";

/// A trigger's profiles, with the status of their spans.
const SELECT_COLLECTED: &str = "\
    SELECT p.trace_id, p.span_id, p.span_name, p.start_unix_nano, p.duration_ns, \
        s.http_status, s.status_code, p.node, p.samples, p.precision, p.cpu_ns, \
        p.off_cpu_ns, p.memory_bytes, p.profile_types \
    FROM trace_profiles p \
    LEFT JOIN spans s ON s.trace_id = p.trace_id AND s.span_id = p.span_id \
    WHERE p.source = ?1 \
    ORDER BY p.created_unix_nano, p.start_unix_nano, p.trace_id, p.span_id";

/// A [`Store`] in one SQLite file. Cloning shares the connection pools.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// One connection: every write goes through it, in turn.
    writer: SqlitePool,
    /// Up to [`MAX_READERS`] connections for queries.
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) `data_dir/coral.db`, creating `data_dir` too, and
    /// applies the migrations.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(
                format!("cannot create data directory {}: {e}", data_dir.display()).into(),
            )
        })?;
        Self::open_file(&data_dir.join(DATABASE_FILE)).await
    }

    /// Opens (creating if missing) the database file `path`, whose directory must
    /// exist, and applies the migrations.
    pub async fn open_file(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .with_regexp();
        // The writer first: it creates the file and switches it to WAL.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(map_err)?;
        MIGRATOR.run(&writer).await.map_err(map_migrate_err)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(MAX_READERS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(map_err)?;
        tracing::debug!(path = %path.display(), "sqlite store ready");
        Ok(Self { writer, reader })
    }

    /// Closes every connection (SQLite checkpoints the WAL into the database file
    /// when the last one closes); later calls fail with [`StoreError::Unavailable`].
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn insert_spans(&self, spans: &[SpanRecord]) -> Result<u64, StoreError> {
        if spans.is_empty() {
            return Ok(0);
        }
        let spans = distinct_spans(spans);
        let services = services_seen(&spans);

        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        let mut inserted = 0;
        for chunk in spans.chunks(SPAN_ROWS_PER_INSERT) {
            let mut qb = QueryBuilder::<Sqlite>::new(concat!(
                "INSERT INTO spans (",
                span_columns!(),
                ", is_request) "
            ));
            qb.push_values(chunk, |mut row, s| {
                row.push_bind(s.trace_id.as_bytes())
                    .push_bind(s.span_id.as_bytes())
                    .push_bind(s.parent_span_id.as_ref().map(SpanId::as_bytes))
                    .push_bind(s.service.as_str())
                    .push_bind(s.name.as_str())
                    .push_bind(s.kind)
                    .push_bind(s.start_unix_nano)
                    .push_bind(s.duration_ns)
                    .push_bind(s.status_code)
                    .push_bind(s.status_message.as_str())
                    .push_bind(s.http_status)
                    .push_bind(s.url.as_deref())
                    .push_bind(s.route.as_deref())
                    .push_bind(s.pid)
                    .push_bind(s.thread_id)
                    .push_bind(s.node.as_str())
                    .push_bind(Json(&s.attributes))
                    .push_bind(s.is_request());
            });
            qb.push(" ON CONFLICT (trace_id, span_id) DO NOTHING");
            // Only full chunks share one statement text; don't cache the others.
            let full = chunk.len() == SPAN_ROWS_PER_INSERT;
            inserted += qb
                .build()
                .persistent(full)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?
                .rows_affected();
        }
        for chunk in services.chunks(SERVICE_ROWS_PER_UPSERT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO services \
                 (service_id, name, first_seen_unix_nano, last_seen_unix_nano) ",
            );
            qb.push_values(chunk, |mut row, (name, (first, last))| {
                row.push_bind(uuid::Uuid::new_v4().to_string())
                    .push_bind(*name)
                    .push_bind(*first)
                    .push_bind(*last);
            });
            qb.push(
                " ON CONFLICT (name) DO UPDATE SET \
                 first_seen_unix_nano = MIN(first_seen_unix_nano, excluded.first_seen_unix_nano), \
                 last_seen_unix_nano = MAX(last_seen_unix_nano, excluded.last_seen_unix_nano) \
                 WHERE excluded.first_seen_unix_nano < first_seen_unix_nano \
                    OR excluded.last_seen_unix_nano > last_seen_unix_nano",
            );
            qb.build().execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(inserted)
    }

    async fn list_services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        let rows = sqlx::query(SELECT_SERVICES)
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        rows.iter().map(service_from_row).collect()
    }

    async fn service(&self, name: &str) -> Result<ServiceRecord, StoreError> {
        let row = sqlx::query(SELECT_SERVICE)
            .bind(name)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("service {name:?}")))?;
        service_from_row(&row)
    }

    async fn query_requests(&self, query: &RequestQuery) -> Result<Vec<ListedRequest>, StoreError> {
        // A profile's key is its span's: one primary-key look-up per request listed.
        // Only profiled ones: the service's profiles (by their (service, start)
        // index) may lead, the spans are looked up.
        let mut qb = QueryBuilder::<Sqlite>::new(concat!(
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
        let rows = qb.build().fetch_all(&self.reader).await.map_err(map_err)?;
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
        // One read transaction: the count and the percentile rows see the same snapshot.
        let mut tx = self.reader.begin().await.map_err(map_err)?;
        let row = sqlx::query(SUMMARY_COUNTS)
            .bind(OTEL_STATUS_ERROR)
            .bind(HTTP_SERVER_ERROR)
            .bind(service)
            .bind(since_unix_nano)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        let requests = to_u64(row.try_get(0).map_err(map_err)?, "request count")?;
        let errors = to_u64(row.try_get(1).map_err(map_err)?, "error count")?;
        let first_start_unix_nano: Option<i64> = row.try_get(2).map_err(map_err)?;
        let last_start_unix_nano: Option<i64> = row.try_get(3).map_err(map_err)?;
        let mut percentiles_ns = Vec::new();
        if requests > 0 {
            let offsets = SUMMARY_PERCENTILES
                .map(|q| i64::try_from(nearest_rank_offset(q, requests)).unwrap_or(i64::MAX));
            let rows: Vec<(i64, i64)> = sqlx::query_as(SUMMARY_PERCENTILE_ROWS)
                .bind(service)
                .bind(since_unix_nano)
                .bind(offsets[0])
                .bind(offsets[1])
                .bind(offsets[2])
                .fetch_all(&mut *tx)
                .await
                .map_err(map_err)?;
            for offset in offsets {
                let (_, d) = rows
                    .iter()
                    .find(|(rank, _)| *rank == offset)
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("no request at rank {offset} of {requests}"))
                    })?;
                percentiles_ns.push(*d);
            }
        }
        let rows = sqlx::query(concat!(
            "SELECT ",
            span_columns!(),
            " FROM spans \
             WHERE is_request AND service = ? AND start_unix_nano >= ? \
             ORDER BY duration_ns DESC LIMIT ?"
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
            percentiles_ns,
            slowest: rows.iter().map(span_from_row).collect::<Result<_, _>>()?,
            first_start_unix_nano,
            last_start_unix_nano,
        })
    }

    async fn get_trace(&self, trace_id: &TraceId) -> Result<Vec<SpanRecord>, StoreError> {
        let rows = sqlx::query(SELECT_TRACE)
            .bind(trace_id.as_bytes())
            .bind(coral_store::MAX_TRACE_SPANS as i64 + 1)
            .fetch_all(&self.reader)
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
             VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (agent_id) DO UPDATE SET \
                 node = excluded.node, \
                 version = excluded.version, \
                 registered_unix_nano = excluded.registered_unix_nano, \
                 last_heartbeat_unix_nano = excluded.last_heartbeat_unix_nano",
        )
        .bind(&agent.agent_id)
        .bind(&agent.node)
        .bind(&agent.version)
        .bind(agent.registered_unix_nano)
        .bind(agent.last_heartbeat_unix_nano)
        .bind(Json(&agent.counters))
        .execute(&self.writer)
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
            "UPDATE agents SET last_heartbeat_unix_nano = ?, counters = ? WHERE agent_id = ?",
        )
        .bind(at_unix_nano)
        .bind(Json(counters))
        .bind(agent_id)
        .execute(&self.writer)
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
             FROM agents ORDER BY node, agent_id",
        )
        .fetch_all(&self.reader)
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
        let typed = profiles
            .iter()
            .map(|&p| Ok((p, profile_types_text(&p.profile_types)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let created = now_unix_nano();

        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        let mut new_keys: HashSet<(TraceId, SpanId)> = HashSet::new();
        for chunk in typed.chunks(PROFILE_ROWS_PER_INSERT) {
            let mut qb = QueryBuilder::<Sqlite>::new(concat!(
                "INSERT INTO trace_profiles (",
                trace_profile_columns!(),
                ") "
            ));
            qb.push_values(chunk, |mut row, (p, profile_types)| {
                row.push_bind(p.trace_id.as_bytes())
                    .push_bind(p.span_id.as_bytes())
                    .push_bind(p.service.as_str())
                    .push_bind(p.span_name.as_str())
                    .push_bind(p.start_unix_nano)
                    .push_bind(p.duration_ns)
                    .push_bind(p.node.as_str())
                    .push_bind(p.pid)
                    .push_bind(p.thread_id)
                    .push_bind(p.precision.as_str())
                    .push_bind(i64::from(p.frequency_hz))
                    .push_bind(i64::from(p.concurrent_requests))
                    .push_bind(p.source.to_string())
                    .push_bind(to_i64(p.samples()))
                    .push_bind(to_i64(p.profile.total_cpu_ns()))
                    .push_bind(created)
                    .push_bind(i64::from(p.truncated_samples))
                    .push_bind(to_i64(p.lost_samples))
                    .push_bind(to_i64(p.profile.total(ProfileType::Offcpu)))
                    .push_bind(profile_types.as_str())
                    .push_bind(to_i64(p.profile.total(ProfileType::Memory)));
            });
            qb.push(" ON CONFLICT (trace_id, span_id) DO NOTHING RETURNING trace_id, span_id");
            let full = chunk.len() == PROFILE_ROWS_PER_INSERT;
            let rows = qb
                .build()
                .persistent(full)
                .fetch_all(&mut *tx)
                .await
                .map_err(map_err)?;
            for row in &rows {
                new_keys.insert(row_ids(row, "trace_profiles")?);
            }
        }
        let mut new: Vec<&TraceProfileRecord> = profiles
            .iter()
            .copied()
            .filter(|p| new_keys.contains(&(p.trace_id, p.span_id)))
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

        let frames: Vec<(&i64, &Frame)> = rows.frames.iter().collect();
        for chunk in frames.chunks(FRAME_ROWS_PER_INSERT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO profile_frames (frame_hash, function, module, kind) ",
            );
            qb.push_values(chunk, |mut row, (hash, frame)| {
                row.push_bind(**hash)
                    .push_bind(frame.function.as_str())
                    .push_bind(frame.module.as_str())
                    .push_bind(kind_str(frame.kind));
            });
            qb.push(" ON CONFLICT (frame_hash) DO NOTHING");
            let full = chunk.len() == FRAME_ROWS_PER_INSERT;
            qb.build()
                .persistent(full)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        let stacks: Vec<(&i64, &Vec<i64>)> = rows.stacks.iter().collect();
        for chunk in stacks.chunks(STACK_ROWS_PER_INSERT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO profile_stacks (stack_hash, frame_hashes) ",
            );
            qb.push_values(chunk, |mut row, (hash, frame_hashes)| {
                row.push_bind(**hash)
                    .push_bind(hashes_to_bytes(frame_hashes));
            });
            qb.push(" ON CONFLICT (stack_hash) DO NOTHING");
            let full = chunk.len() == STACK_ROWS_PER_INSERT;
            qb.build()
                .persistent(full)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        for chunk in rows.samples.chunks(SAMPLE_ROWS_PER_INSERT) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO trace_profile_samples \
                 (trace_id, span_id, stack_hash, samples, cpu_ns, off_cpu_ns, memory_bytes) ",
            );
            qb.push_values(chunk, |mut row, r| {
                row.push_bind(r.trace_id.as_bytes())
                    .push_bind(r.span_id.as_bytes())
                    .push_bind(r.stack_hash)
                    .push_bind(r.samples)
                    .push_bind(r.cpu_ns)
                    .push_bind(r.off_cpu_ns)
                    .push_bind(r.memory_bytes);
            });
            qb.push(" ON CONFLICT (trace_id, span_id, stack_hash) DO NOTHING");
            let full = chunk.len() == SAMPLE_ROWS_PER_INSERT;
            qb.build()
                .persistent(full)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(inserted)
    }

    async fn trace_profiles(
        &self,
        trace_id: &TraceId,
    ) -> Result<Vec<TraceProfileRecord>, StoreError> {
        let mut conn = self.reader.acquire().await.map_err(map_err)?;
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
        let (fragment, values) = filter_sql::compile(filter, Dialect::Sqlite, 4);
        let sql = format!("{SELECT_COHORT}{fragment}{COHORT_ORDER}");
        // The fragment is the compiler's own text (every value is bound), and one
        // statement per filter is not worth caching.
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
        let mut conn = self.reader.acquire().await.map_err(map_err)?;
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
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(session.session_id.to_string())
        .bind(&session.service)
        .bind(i64::from(session.frequency_hz))
        .bind(session.created_unix_nano)
        .bind(session.duration_ns)
        .bind(session.ends_unix_nano())
        .execute(&self.writer)
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
             FROM profile_sessions WHERE ends_unix_nano > ? \
             ORDER BY created_unix_nano, session_id",
        )
        .bind(now_unix_nano)
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(ProfileSession {
                    session_id: uuid_column(row, "profile_sessions", "session_id")?,
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
             VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (session_id, agent_id) DO UPDATE SET \
                 node = excluded.node, \
                 processes = excluded.processes, \
                 profile = excluded.profile, \
                 error = excluded.error",
        )
        .bind(result.session_id.to_string())
        .bind(&result.agent_id)
        .bind(&result.node)
        .bind(i64::from(result.processes))
        .bind(Json(&result.profile))
        .bind(result.error.as_deref())
        .execute(&self.writer)
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
             FROM profile_session_results WHERE session_id = ? \
             ORDER BY node, agent_id",
        )
        .bind(session_id.to_string())
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(SessionResult {
                    session_id: uuid_column(row, "profile_session_results", "session_id")?,
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
            .bind(trigger.trigger_id.to_string())
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
            .bind(Json(trace_id_texts(&trigger.trace_ids)))
            .bind(to_i32(trigger.baseline_requests, "baseline_requests")?)
            .bind(to_i32(trigger.baseline_collected, "baseline_collected")?)
            .bind(profile_types_text(&trigger.profile_types)?)
            .execute(&self.writer)
            .await
            .map_err(map_err)?
            .rows_affected();
        if inserted == 0 {
            return Err(unknown_service(&trigger.service));
        }
        Ok(())
    }

    async fn trigger(&self, trigger_id: uuid::Uuid) -> Result<TraceProfileTrigger, StoreError> {
        let row = sqlx::query(concat!(select_triggers!(), " WHERE t.trigger_id = ?1"))
            .bind(trigger_id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?
            .ok_or_else(|| StoreError::NotFound(format!("trigger {trigger_id}")))?;
        trigger_from_row(&row)
    }

    async fn resolve_trigger_id(&self, prefix: &str) -> Result<uuid::Uuid, StoreError> {
        let digits = trigger_id_prefix(prefix)?;
        let row = sqlx::query(MATCH_TRIGGER_PREFIX)
            .bind(digits.as_str())
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        let matching = to_u64(row.try_get("matching").map_err(map_err)?, "count(*)")?;
        // `min(trigger_id)` is NULL when no trigger matches.
        let first = match matching {
            0 => None,
            _ => Some(uuid_column(&row, "trace_profile_triggers", "trigger_id")?),
        };
        resolved_trigger_id(&digits, matching, first)
    }

    async fn list_triggers(
        &self,
        service: Option<&str>,
        include_ended: bool,
        limit: u32,
    ) -> Result<Vec<TraceProfileTrigger>, StoreError> {
        let rows = sqlx::query(concat!(
            select_triggers!(),
            " WHERE (?1 IS NULL OR s.name = ?1) AND (?2 OR t.status = 'active') \
             ORDER BY t.created_at DESC, t.trigger_id DESC LIMIT ?3"
        ))
        .bind(service)
        .bind(include_ended)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
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
            " WHERE t.status = 'active' AND t.expires_at > ?1 \
             ORDER BY t.created_at, t.trigger_id"
        ))
        .bind(now_unix_nano)
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(trigger_from_row).collect()
    }

    async fn cancel_trigger(
        &self,
        trigger_id: uuid::Uuid,
        now_unix_nano: i64,
    ) -> Result<TraceProfileTrigger, StoreError> {
        sqlx::query(
            "UPDATE trace_profile_triggers SET status = 'cancelled', ended_at = ?2 \
             WHERE trigger_id = ?1 AND status = 'active'",
        )
        .bind(trigger_id.to_string())
        .bind(now_unix_nano)
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        self.trigger(trigger_id).await
    }

    async fn expire_triggers(&self, now_unix_nano: i64) -> Result<u64, StoreError> {
        let expired = sqlx::query(
            "UPDATE trace_profile_triggers SET status = 'expired', ended_at = expires_at \
             WHERE status = 'active' AND expires_at <= ?1",
        )
        .bind(now_unix_nano)
        .execute(&self.writer)
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
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        rows.iter().map(collected_request_from_row).collect()
    }

    async fn purge_profiles_before(&self, cutoff_unix_nano: i64) -> Result<u64, StoreError> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)?;
        sqlx::query(
            "DELETE FROM trace_profile_samples WHERE (trace_id, span_id) IN \
             (SELECT trace_id, span_id FROM trace_profiles WHERE created_unix_nano < ?1)",
        )
        .bind(cutoff_unix_nano)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let purged = sqlx::query("DELETE FROM trace_profiles WHERE created_unix_nano < ?1")
            .bind(cutoff_unix_nano)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
        // Their results go with them (ON DELETE CASCADE).
        sqlx::query("DELETE FROM profile_sessions WHERE ends_unix_nano < ?1")
            .bind(cutoff_unix_nano)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query(
            "DELETE FROM trace_profile_triggers WHERE status <> 'active' AND ended_at < ?1",
        )
        .bind(cutoff_unix_nano)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(purged)
    }
}

/// ` AND (<term> OR <term> …)`, every value bound.
fn push_status_filter(qb: &mut QueryBuilder<Sqlite>, status: &StatusPattern) {
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

/// Fills in the profiles of `records` (rows of `trace_profiles`) from their samples,
/// stacks and frames: two queries however many profiles. Samples of a profile stored
/// after its row was read are ignored.
async fn load_profiles(
    conn: &mut SqliteConnection,
    records: &mut [TraceProfileRecord],
) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    let keys: Vec<[String; 2]> = records
        .iter()
        .map(|r| [r.trace_id.to_string(), r.span_id.to_string()])
        .collect();
    let sample_rows = sqlx::query(SELECT_SAMPLES)
        .bind(Json(&keys))
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    let mut stacks = StacksByProfile::new();
    for row in &sample_rows {
        let key = row_ids(row, "trace_profile_samples")?;
        let stack_hash: i64 = row.try_get("stack_hash").map_err(map_err)?;
        let bytes: Option<&[u8]> = row.try_get("frame_hashes").map_err(map_err)?;
        let bytes = bytes
            .ok_or_else(|| StoreError::Corrupt(format!("stack {stack_hash} is not stored")))?;
        let hashes = hashes_from_bytes(bytes).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "profile_stacks.frame_hashes of stack {stack_hash} is {} bytes",
                bytes.len()
            ))
        })?;
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
        .bind(Json(frame_hashes_of(&stacks)))
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

/// Whether a new profile is kept: a trigger or baseline profile only if it claims a
/// slot of its trigger (see [`Store::insert_trace_profiles`]).
async fn claims_slot(
    conn: &mut SqliteConnection,
    profile: &TraceProfileRecord,
    now_unix_nano: i64,
) -> Result<Claim, StoreError> {
    let kept = |kept: bool| if kept { Claim::Kept } else { Claim::Refused };
    match profile.source {
        ProfileSource::Session(_) => Ok(Claim::Kept),
        ProfileSource::Trigger(id) => {
            let (id, trace) = (id.to_string(), profile.trace_id.to_string());
            let claimed: Option<String> = sqlx::query_scalar(CLAIM_TRIGGER_SLOT)
                .bind(&id)
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
            Ok(kept(
                sqlx::query_scalar(TRIGGER_HAS_TRACE)
                    .bind(&id)
                    .bind(&trace)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(map_err)?,
            ))
        }
        ProfileSource::Baseline(id) => {
            // Membership first: a request counts once per baseline, however often
            // (and under whichever source) it arrives.
            let (id, trace, span) = (
                id.to_string(),
                profile.trace_id.as_bytes(),
                profile.span_id.as_bytes(),
            );
            let member =
                |sql: &'static str| sqlx::query(sql).bind(id.as_str()).bind(trace).bind(span);
            if member(INSERT_BASELINE_MEMBER)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?
                .rows_affected()
                == 0
            {
                // Counted already (a retry, or sent twice), or the trigger is gone.
                let counted: bool = sqlx::query_scalar(BASELINE_HAS_MEMBER)
                    .bind(id.as_str())
                    .bind(trace)
                    .bind(span)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(map_err)?;
                return Ok(kept(counted));
            }
            let claimed = sqlx::query(CLAIM_BASELINE_SLOT)
                .bind(id.as_str())
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

fn trigger_from_row(row: &SqliteRow) -> Result<TraceProfileTrigger, StoreError> {
    let trace_ids: Option<Json<Vec<String>>> = row.try_get("trace_ids").map_err(map_err)?;
    TriggerRow {
        trigger_id: uuid_column(row, "trace_profile_triggers", "trigger_id")?,
        service: row.try_get("service").map_err(map_err)?,
        created_unix_nano: row.try_get("created_unix_nano").map_err(map_err)?,
        expires_unix_nano: row.try_get("expires_unix_nano").map_err(map_err)?,
        ended_unix_nano: row.try_get("ended_unix_nano").map_err(map_err)?,
        status: row.try_get("status").map_err(map_err)?,
        min_duration_ms: row.try_get("min_duration_ms").map_err(map_err)?,
        max_duration_ms: row.try_get("max_duration_ms").map_err(map_err)?,
        status_code_pattern: row.try_get("status_code_pattern").map_err(map_err)?,
        url_pattern: row.try_get("url_pattern").map_err(map_err)?,
        frequency_hz: row.try_get("frequency_hz").map_err(map_err)?,
        max_requests: row.try_get("max_requests").map_err(map_err)?,
        collected_requests: row.try_get("collected_requests").map_err(map_err)?,
        trace_ids: trace_ids.map(|ids| ids.0).unwrap_or_default(),
        baseline_requests: row.try_get("baseline_requests").map_err(map_err)?,
        baseline_collected: row.try_get("baseline_collected").map_err(map_err)?,
        profile_types: row.try_get("profile_types").map_err(map_err)?,
    }
    .into_trigger()
}

fn collected_request_from_row(row: &SqliteRow) -> Result<CollectedRequest, StoreError> {
    let (trace_id, span_id) = row_ids(row, "trace_profiles")?;
    let precision: &str = row.try_get("precision").map_err(map_err)?;
    Ok(CollectedRequest {
        trace_id,
        span_id,
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

/// A row's `trace_id` and `span_id`.
fn row_ids(row: &SqliteRow, table: &str) -> Result<(TraceId, SpanId), StoreError> {
    let trace_id: &[u8] = row.try_get("trace_id").map_err(map_err)?;
    let span_id: &[u8] = row.try_get("span_id").map_err(map_err)?;
    let bad = |column: &str| StoreError::Corrupt(format!("{table}.{column} is not a valid id"));
    Ok((
        TraceId::from_bytes(trace_id).ok_or_else(|| bad("trace_id"))?,
        SpanId::from_bytes(span_id).ok_or_else(|| bad("span_id"))?,
    ))
}

/// A UUID stored as text.
fn uuid_column(row: &SqliteRow, table: &str, column: &str) -> Result<uuid::Uuid, StoreError> {
    let text: &str = row.try_get(column).map_err(map_err)?;
    uuid::Uuid::parse_str(text)
        .map_err(|e| StoreError::Corrupt(format!("{table}.{column} {text:?}: {e}")))
}

/// A trace profile row, with an empty profile.
fn trace_profile_from_row(row: &SqliteRow) -> Result<TraceProfileRecord, StoreError> {
    let (trace_id, span_id) = row_ids(row, "trace_profiles")?;
    let precision: &str = row.try_get("precision").map_err(map_err)?;
    Ok(TraceProfileRecord {
        trace_id,
        span_id,
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

fn service_from_row(row: &SqliteRow) -> Result<ServiceRecord, StoreError> {
    let id: &str = row.try_get("service_id").map_err(map_err)?;
    Ok(ServiceRecord {
        service_id: uuid::Uuid::parse_str(id)
            .map_err(|e| StoreError::Corrupt(format!("services.service_id {id:?}: {e}")))?,
        name: row.try_get("name").map_err(map_err)?,
        first_seen_unix_nano: row.try_get("first_seen_unix_nano").map_err(map_err)?,
        last_seen_unix_nano: row.try_get("last_seen_unix_nano").map_err(map_err)?,
    })
}

fn span_from_row(row: &SqliteRow) -> Result<SpanRecord, StoreError> {
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
