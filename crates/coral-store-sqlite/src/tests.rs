use super::*;
use coral_store::conformance::{full_span, minimal_child};
use tempfile::TempDir;

/// A store in a temporary directory, removed with it.
struct TestStore {
    store: SqliteStore,
    dir: TempDir,
}

async fn fresh_store() -> TestStore {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path()).await.expect("open store");
    TestStore { store, dir }
}

/// The suite and the tests below use the store inside; the wrapper only keeps its
/// database alive.
impl std::ops::Deref for TestStore {
    type Target = SqliteStore;
    fn deref(&self) -> &SqliteStore {
        &self.store
    }
}

coral_store::conformance_suite!(fresh_store().await);

#[tokio::test]
async fn open_creates_the_directory_and_a_wal_database() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("nested").join("data");
    let store = SqliteStore::open(&data_dir).await.unwrap();
    assert!(data_dir.join(DATABASE_FILE).is_file());
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&store.reader)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&store.writer)
        .await
        .unwrap();
    assert_eq!(synchronous, 1, "NORMAL");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&store.reader)
        .await
        .unwrap();
    assert_eq!(foreign_keys, 1);
    // The triggers table exists, for a later issue.
    let triggers: i64 = sqlx::query_scalar("SELECT count(*) FROM trace_profile_triggers")
        .fetch_one(&store.reader)
        .await
        .unwrap();
    assert_eq!(triggers, 0);
}

#[tokio::test]
async fn reopening_keeps_the_data() {
    let tmp = fresh_store().await;
    let span = full_span("svc", 1, 1);
    tmp.store
        .insert_spans(std::slice::from_ref(&span))
        .await
        .unwrap();
    tmp.store.close().await;
    let again = SqliteStore::open(tmp.dir.path()).await.unwrap();
    assert_eq!(again.get_trace(&span.trace_id).await.unwrap(), vec![span]);
    assert!(matches!(
        tmp.store.list_services().await,
        Err(StoreError::Unavailable(_))
    ));
}

/// Two stores on one file stand for two processes: their writes wait for each other
/// (busy timeout) instead of failing.
#[tokio::test]
async fn two_stores_on_one_file_write_concurrently() {
    let tmp = fresh_store().await;
    let other = SqliteStore::open(tmp.dir.path()).await.unwrap();
    let root = full_span("svc", 3, 1);
    let batch = |writer: u8| -> Vec<SpanRecord> {
        (0..2000u32)
            .map(|i| {
                let mut s = minimal_child(&root, 0, i64::from(i), 1);
                s.span_id = SpanId([writer, (i >> 8) as u8, i as u8, 1, 1, 1, 1, 1]);
                s
            })
            .collect()
    };
    let (a, b, c, d) = (batch(1), batch(2), batch(3), batch(4));
    let (ra, rb, rc, rd) = tokio::join!(
        tmp.store.insert_spans(&a),
        other.insert_spans(&b),
        tmp.store.insert_spans(&c),
        other.insert_spans(&d),
    );
    assert_eq!(ra.unwrap() + rb.unwrap() + rc.unwrap() + rd.unwrap(), 8000);
    assert_eq!(other.get_trace(&root.trace_id).await.unwrap().len(), 8000);
}

#[tokio::test]
async fn undecodable_rows_are_corrupt() {
    let tmp = fresh_store().await;
    let span = full_span("svc", 4, 1);
    tmp.store
        .insert_spans(std::slice::from_ref(&span))
        .await
        .unwrap();
    sqlx::query("UPDATE spans SET attributes = '[1, 2]'")
        .execute(&tmp.store.writer)
        .await
        .unwrap();
    let err = tmp.store.get_trace(&span.trace_id).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");

    sqlx::query("UPDATE spans SET attributes = '{}', trace_id = zeroblob(16)")
        .execute(&tmp.store.writer)
        .await
        .unwrap();
    let err = tmp.store.get_trace(&TraceId([0; 16])).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");

    sqlx::query("UPDATE services SET service_id = 'not-a-uuid-but-thirty-six-characters'")
        .execute(&tmp.store.writer)
        .await
        .unwrap();
    let err = tmp.store.list_services().await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

#[tokio::test]
async fn a_data_dir_that_is_a_file_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let err = SqliteStore::open(&file).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
}

async fn count(store: &SqliteStore, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&store.reader)
        .await
        .unwrap()
}

#[tokio::test]
async fn profile_stacks_and_frames_are_stored_once() {
    use coral_store::conformance::{checkout_profile, trace_profile};
    let tmp = fresh_store().await;
    let a = trace_profile(1, 1, checkout_profile(1));
    let b = trace_profile(2, 1, checkout_profile(3));
    tmp.store.insert_trace_profiles(&[a]).await.unwrap();
    tmp.store.insert_trace_profiles(&[b]).await.unwrap();
    // Four stacks (one empty) of seven distinct frames, in each of two profiles.
    assert_eq!(count(&tmp.store, "profile_frames").await, 7);
    assert_eq!(count(&tmp.store, "profile_stacks").await, 4);
    assert_eq!(count(&tmp.store, "trace_profile_samples").await, 8);
    assert_eq!(count(&tmp.store, "trace_profiles").await, 2);
}

async fn query_plan(store: &SqliteStore, query: &str, binds: &[&[u8]]) -> String {
    let mut explain = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {query}")));
    for bind in binds {
        explain = explain.bind(*bind);
    }
    let plan: Vec<String> = explain
        .fetch_all(&store.reader)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<String, _>("detail"))
        .collect();
    plan.join("\n")
}

#[tokio::test]
async fn trace_profile_reads_use_the_primary_keys() {
    let tmp = fresh_store().await;
    let plan = query_plan(&tmp.store, SELECT_TRACE_PROFILES, &[&[1; 16]]).await;
    assert!(plan.contains("SEARCH") && !plan.contains("SCAN"), "{plan}");
    // The keys' JSON array is scanned; each key is a primary-key search.
    let plan = query_plan(&tmp.store, SELECT_SAMPLES, &[b"[]"]).await;
    assert!(
        plan.contains("SEARCH s USING PRIMARY KEY (trace_id=? AND span_id=?)")
            && plan.contains("SEARCH st USING INTEGER PRIMARY KEY")
            && !plan.contains("SCAN s"),
        "{plan}"
    );
}

#[tokio::test]
async fn cohort_reads_use_the_service_start_index_and_span_keys() {
    let tmp = fresh_store().await;
    // A fragment on the span: without one, SQLite drops the (unique) LEFT JOIN.
    let query = format!("{SELECT_COHORT}COALESCE(s.route = ?4, FALSE){COHORT_ORDER}");
    let plan = query_plan(&tmp.store, &query, &[]).await;
    assert!(
        plan.contains("SEARCH tp USING INDEX trace_profiles_by_service_start")
            && plan.contains("SEARCH s USING INDEX sqlite_autoindex_spans_1")
            && !plan.contains("SCAN")
            && !plan.contains("TEMP B-TREE"),
        "{plan}"
    );
}

#[tokio::test]
async fn summaries_read_the_window_from_the_covering_index() {
    let tmp = fresh_store().await;
    // The plan may not say COVERING (the partial index's `is_request` term counts as
    // a table column), but the table seek is deferred and never made: every column
    // read is in the index.
    for query in [SUMMARY_COUNTS, SUMMARY_PERCENTILE_ROWS] {
        let plan = query_plan(&tmp.store, query, &[]).await;
        assert!(
            plan.contains(
                "INDEX spans_requests_by_start_covering (service=? AND start_unix_nano>?)"
            ) && !plan.contains("spans_requests_by_duration"),
            "{plan}"
        );
    }
}

#[tokio::test]
async fn missing_profile_rows_are_corrupt() {
    use coral_store::conformance::{checkout_profile, trace_profile};
    let tmp = fresh_store().await;
    let p = trace_profile(1, 1, checkout_profile(1));
    tmp.store
        .insert_trace_profiles(std::slice::from_ref(&p))
        .await
        .unwrap();
    sqlx::query("DELETE FROM profile_frames WHERE kind = 'kernel'")
        .execute(&tmp.store.writer)
        .await
        .unwrap();
    let err = tmp.store.trace_profiles(&p.trace_id).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    sqlx::query("DELETE FROM profile_stacks")
        .execute(&tmp.store.writer)
        .await
        .unwrap();
    let err = tmp.store.trace_profiles(&p.trace_id).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

/// Two stores on one file (two processes) race for one trigger's slots.
#[tokio::test]
async fn two_stores_on_one_file_never_collect_more_than_max_requests() {
    let tmp = fresh_store().await;
    let other = SqliteStore::open(tmp.dir.path()).await.unwrap();
    coral_store::conformance::two_stores_collect_at_most_max_requests(&tmp.store, &other).await;
    assert_eq!(count(&tmp.store, "trace_profiles").await, 10);
    // The refused profiles left no samples.
    assert_eq!(count(&tmp.store, "trace_profile_samples").await, 10 * 4);
}

/// A profile stored before migration 0006 reads back with no truncated or lost
/// samples (nothing was known about them).
#[tokio::test]
async fn profiles_stored_before_sample_losses_were_recorded_have_none() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(DATABASE_FILE);
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .foreign_keys(true);
    let before = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    MIGRATOR.run_to(5, &before).await.unwrap();
    sqlx::query(
        "INSERT INTO trace_profiles (trace_id, span_id, service, span_name, \
         start_unix_nano, duration_ns, node, pid, thread_id, precision, frequency_hz, \
         concurrent_requests, source, samples, cpu_ns, created_unix_nano) \
         VALUES (?, ?, 'svc', 'GET /', 1, 2, 'n', NULL, NULL, 'process', 99, 0, ?, 0, 0, 3)",
    )
    .bind(&[7u8; 16][..])
    .bind(&[8u8; 8][..])
    .bind(format!("session:{}", uuid::Uuid::nil()))
    .execute(&before)
    .await
    .unwrap();
    before.close().await;

    let store = SqliteStore::open_file(&path).await.unwrap();
    let got = store.trace_profiles(&TraceId([7; 16])).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].truncated_samples, got[0].lost_samples), (0, 0));
}

/// A database at migration 0006 (before off-CPU profiles) with a trigger and the
/// profile it collected migrates to 0007 with its data intact: CPU only, no off-CPU
/// time; and its frames table, rebuilt, still refuses an unknown frame kind.
#[tokio::test]
async fn data_from_before_off_cpu_profiles_migrates_as_cpu_only() {
    use coral_store::conformance::{before_off_cpu, data_from_before_off_cpu_reads_as_cpu_only};
    use coral_store::profile_rows::ProfileRows;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(DATABASE_FILE);
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .foreign_keys(true);
    let before = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    MIGRATOR.run_to(6, &before).await.unwrap();
    let (trigger, profile) = before_off_cpu();
    let service_id = uuid::Uuid::from_bytes([5; 16]).to_string();
    sqlx::query("INSERT INTO services VALUES (?1, ?2, 1, 2)")
        .bind(&service_id)
        .bind(&trigger.service)
        .execute(&before)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO trace_profile_triggers (trigger_id, service_id, created_at, expires_at, \
         ended_at, status, min_duration_ms, max_duration_ms, status_code_pattern, \
         url_pattern, frequency_hz, max_requests, collected_requests, trace_ids, \
         baseline_requests, baseline_collected) \
         VALUES (?1, ?2, ?3, ?4, NULL, 'active', ?5, NULL, ?6, NULL, ?7, ?8, ?9, ?10, ?11, 0)",
    )
    .bind(trigger.trigger_id.to_string())
    .bind(&service_id)
    .bind(trigger.created_unix_nano)
    .bind(trigger.expires_unix_nano)
    .bind(trigger.min_duration_ms.map(i64::from))
    .bind(trigger.status_code_pattern.as_deref())
    .bind(i64::from(trigger.frequency_hz))
    .bind(i64::from(trigger.max_requests))
    .bind(i64::from(trigger.collected_requests))
    .bind(Json(trace_id_texts(&trigger.trace_ids)))
    .bind(i64::from(trigger.baseline_requests))
    .execute(&before)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO trace_profiles (trace_id, span_id, service, span_name, \
         start_unix_nano, duration_ns, node, pid, thread_id, precision, frequency_hz, \
         concurrent_requests, source, samples, cpu_ns, created_unix_nano, \
         truncated_samples, lost_samples) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, 1, ?16, ?17)",
    )
    .bind(profile.trace_id.as_bytes())
    .bind(profile.span_id.as_bytes())
    .bind(&profile.service)
    .bind(&profile.span_name)
    .bind(profile.start_unix_nano)
    .bind(profile.duration_ns)
    .bind(&profile.node)
    .bind(profile.pid)
    .bind(profile.thread_id)
    .bind(profile.precision.as_str())
    .bind(i64::from(profile.frequency_hz))
    .bind(i64::from(profile.concurrent_requests))
    .bind(profile.source.to_string())
    .bind(to_i64(profile.samples()))
    .bind(to_i64(profile.profile.total_cpu_ns()))
    .bind(i64::from(profile.truncated_samples))
    .bind(to_i64(profile.lost_samples))
    .execute(&before)
    .await
    .unwrap();
    let rows = ProfileRows::of([&profile]);
    for (hash, frame) in &rows.frames {
        sqlx::query("INSERT INTO profile_frames VALUES (?1, ?2, ?3, ?4)")
            .bind(hash)
            .bind(&frame.function)
            .bind(&frame.module)
            .bind(kind_str(frame.kind))
            .execute(&before)
            .await
            .unwrap();
    }
    for (hash, frame_hashes) in &rows.stacks {
        sqlx::query("INSERT INTO profile_stacks VALUES (?1, ?2)")
            .bind(hash)
            .bind(hashes_to_bytes(frame_hashes))
            .execute(&before)
            .await
            .unwrap();
    }
    for r in &rows.samples {
        sqlx::query("INSERT INTO trace_profile_samples VALUES (?1, ?2, ?3, ?4, ?5)")
            .bind(r.trace_id.as_bytes())
            .bind(r.span_id.as_bytes())
            .bind(r.stack_hash)
            .bind(r.samples)
            .bind(r.cpu_ns)
            .execute(&before)
            .await
            .unwrap();
    }
    // A wait frame is refused before the migration.
    let wait = sqlx::query("INSERT INTO profile_frames VALUES (1, 'lock', '[off-cpu]', 'wait')")
        .execute(&before)
        .await;
    assert!(wait.is_err());
    before.close().await;

    let store = SqliteStore::open_file(&path).await.unwrap();
    let frames = rows.frames.len() as i64;
    assert_eq!(count(&store, "profile_frames").await, frames);
    data_from_before_off_cpu_reads_as_cpu_only(&store).await;
    let bogus = sqlx::query("INSERT INTO profile_frames VALUES (1, 'f', 'm', 'bogus')")
        .execute(&store.writer)
        .await;
    assert!(bogus.is_err(), "the rebuilt table keeps its check");
    let table: String =
        sqlx::query_scalar("SELECT sql FROM sqlite_schema WHERE name = 'profile_frames'")
            .fetch_one(&store.reader)
            .await
            .unwrap();
    assert!(
        table.contains("CREATE TABLE \"profile_frames\"") && table.ends_with("STRICT"),
        "renamed, and still STRICT: {table}"
    );
}
