//! These tests need a PostgreSQL server: `cargo xtask test` provides one and sets
//! `CORAL_TEST_POSTGRES_URL`. Each test runs in a database of its own, created here
//! and dropped afterwards, so they run in parallel.

use super::*;
use coral_store::conformance::full_span;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

const URL_VAR: &str = "CORAL_TEST_POSTGRES_URL";

/// The server the tests use, with a database to connect to for administration.
fn admin_options() -> PgConnectOptions {
    let url = std::env::var(URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{URL_VAR} is not set. These tests need PostgreSQL: run `cargo xtask test`, \
             which starts one and sets {URL_VAR}"
        )
    });
    url.parse()
        .unwrap_or_else(|e| panic!("{URL_VAR}={url:?} is not a PostgreSQL URL: {e}"))
}

/// A store on a fresh database of its own, dropped with it.
struct TestDb {
    store: PostgresStore,
    admin: PgConnectOptions,
    name: String,
}

async fn fresh_store() -> TestDb {
    let (admin, name) = create_database().await;
    let store = PostgresStore::connect_with(admin.clone().database(&name))
        .await
        .expect("connect to the test database");
    TestDb { store, admin, name }
}

/// A new, empty database on the server, and its name.
async fn create_database() -> (PgConnectOptions, String) {
    let admin = admin_options();
    // Generated here (a fixed prefix and hex digits), never user text: identifiers
    // cannot be bound, so this is the one name formatted into SQL.
    let name = format!("coral_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect_with(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {URL_VAR}: {e}"));
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create the test database");
    conn.close().await.ok();
    (admin, name)
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, which can't block on a future: use a
        // thread with a runtime of its own. FORCE ends the store's connections.
        let admin = self.admin.clone();
        let name = std::mem::take(&mut self.name);
        let dropped = std::thread::spawn(move || -> Result<(), BoxError> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect_with(&admin).await?;
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await?;
                Ok(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop a test database: {e}");
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The suite and the tests below use the store inside; the wrapper only keeps its
/// database alive.
impl std::ops::Deref for TestDb {
    type Target = PostgresStore;
    fn deref(&self) -> &PostgresStore {
        &self.store
    }
}

coral_store::conformance_suite!(
    #[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
    fresh_store().await
);

#[tokio::test]
#[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
async fn reconnecting_keeps_the_data() {
    let db = fresh_store().await;
    let span = full_span("svc", 1, 1);
    db.store
        .insert_spans(std::slice::from_ref(&span))
        .await
        .unwrap();
    // A second colony on the same database: migrations are already applied.
    let again = PostgresStore::connect_with(db.admin.clone().database(&db.name))
        .await
        .unwrap();
    assert_eq!(again.get_trace(&span.trace_id).await.unwrap(), vec![span]);
    again.close().await;
    assert!(matches!(
        again.list_services().await,
        Err(StoreError::Unavailable(_))
    ));
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
async fn undecodable_rows_are_corrupt() {
    let db = fresh_store().await;
    let span = full_span("svc", 4, 1);
    db.store
        .insert_spans(std::slice::from_ref(&span))
        .await
        .unwrap();
    sqlx::query("UPDATE spans SET attributes = '[1, 2]'")
        .execute(&db.store.pool)
        .await
        .unwrap();
    let err = db.store.get_trace(&span.trace_id).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");

    sqlx::query(
        "UPDATE spans SET attributes = '{}', trace_id = '\\x00000000000000000000000000000000'",
    )
    .execute(&db.store.pool)
    .await
    .unwrap();
    let err = db.store.get_trace(&TraceId([0; 16])).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
async fn the_triggers_table_exists() {
    let db = fresh_store().await;
    let (count,): (i64,) = sqlx::query_as("SELECT count(*) FROM trace_profile_triggers")
        .fetch_one(&db.store.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

async fn count(store: &PostgresStore, table: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&store.pool)
        .await
        .unwrap()
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
async fn profile_stacks_and_frames_are_stored_once() {
    use coral_store::conformance::{checkout_profile, trace_profile};
    let db = fresh_store().await;
    let a = trace_profile(1, 1, checkout_profile(1));
    let b = trace_profile(2, 1, checkout_profile(3));
    db.store.insert_trace_profiles(&[a]).await.unwrap();
    db.store.insert_trace_profiles(&[b]).await.unwrap();
    // Four stacks (one empty) of seven distinct frames, in each of two profiles.
    assert_eq!(count(&db.store, "profile_frames").await, 7);
    assert_eq!(count(&db.store, "profile_stacks").await, 4);
    assert_eq!(count(&db.store, "trace_profile_samples").await, 8);
    assert_eq!(count(&db.store, "trace_profiles").await, 2);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
async fn missing_profile_rows_are_corrupt() {
    use coral_store::conformance::{checkout_profile, trace_profile};
    let db = fresh_store().await;
    let p = trace_profile(1, 1, checkout_profile(1));
    db.store
        .insert_trace_profiles(std::slice::from_ref(&p))
        .await
        .unwrap();
    sqlx::query("DELETE FROM profile_frames WHERE kind = 'kernel'")
        .execute(&db.store.pool)
        .await
        .unwrap();
    let err = db.store.trace_profiles(&p.trace_id).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    sqlx::query("DELETE FROM profile_stacks")
        .execute(&db.store.pool)
        .await
        .unwrap();
    let err = db.store.trace_profiles(&p.trace_id).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
}

/// Two colonies, each with its own pool, race for one trigger's slots.
#[tokio::test]
#[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
async fn two_pools_never_collect_more_than_max_requests() {
    let db = fresh_store().await;
    let other = PostgresStore::connect_with(db.admin.clone().database(&db.name))
        .await
        .unwrap();
    coral_store::conformance::two_stores_collect_at_most_max_requests(&db.store, &other).await;
    other.close().await;
    assert_eq!(count(&db.store, "trace_profiles").await, 10);
    // The refused profiles left no samples.
    assert_eq!(count(&db.store, "trace_profile_samples").await, 10 * 4);
}

/// A profile row written without the columns of migration 0006 (as every row stored
/// before it was) has no truncated or lost samples.
#[tokio::test]
#[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
async fn profiles_stored_before_sample_losses_were_recorded_have_none() {
    let db = fresh_store().await;
    sqlx::query(
        "INSERT INTO trace_profiles (trace_id, span_id, service, span_name, \
         start_unix_nano, duration_ns, node, pid, thread_id, precision, frequency_hz, \
         concurrent_requests, source, samples, cpu_ns, created_unix_nano) \
         VALUES ($1, $2, 'svc', 'GET /', 1, 2, 'n', NULL, NULL, 'process', 99, 0, $3, 0, 0, 3)",
    )
    .bind(&[7u8; 16][..])
    .bind(&[8u8; 8][..])
    .bind(format!("session:{}", uuid::Uuid::nil()))
    .execute(&db.store.pool)
    .await
    .unwrap();
    let got = db.store.trace_profiles(&TraceId([7; 16])).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].truncated_samples, got[0].lost_samples), (0, 0));
}

/// A database at migration 0006 (before off-CPU profiles) with a trigger and the
/// profile it collected migrates to 0007 with its data intact: CPU only, no off-CPU
/// time; and its frame kind check takes wait frames, and only known kinds.
#[tokio::test]
#[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
async fn data_from_before_off_cpu_profiles_migrates_as_cpu_only() {
    use coral_store::conformance::{before_off_cpu, data_from_before_off_cpu_reads_as_cpu_only};
    use coral_store::profile_rows::ProfileRows;
    let (admin, name) = create_database().await;
    let before = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(admin.clone().database(&name))
        .await
        .unwrap();
    MIGRATOR.run_to(6, &before).await.unwrap();
    let (trigger, profile) = before_off_cpu();
    let service_id = uuid::Uuid::from_bytes([5; 16]);
    sqlx::query("INSERT INTO services VALUES ($1, $2, 1, 2)")
        .bind(service_id)
        .bind(&trigger.service)
        .execute(&before)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(concat!(
        "INSERT INTO trace_profile_triggers (trigger_id, service_id, created_at, expires_at, \
         ended_at, status, min_duration_ms, max_duration_ms, status_code_pattern, \
         url_pattern, frequency_hz, max_requests, collected_requests, trace_ids, \
         baseline_requests, baseline_collected) VALUES ($1, $2, ",
        timestamptz!("$3"),
        ", ",
        timestamptz!("$4"),
        ", NULL, 'active', $5, NULL, $6, NULL, $7, $8, $9, $10, $11, 0)"
    )))
    .bind(trigger.trigger_id)
    .bind(service_id)
    .bind(trigger.created_unix_nano)
    .bind(trigger.expires_unix_nano)
    .bind(trigger.min_duration_ms.map(|n| n as i32))
    .bind(trigger.status_code_pattern.as_deref())
    .bind(trigger.frequency_hz as i32)
    .bind(trigger.max_requests as i32)
    .bind(trigger.collected_requests as i32)
    .bind(trace_id_texts(&trigger.trace_ids))
    .bind(trigger.baseline_requests as i32)
    .execute(&before)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO trace_profiles (trace_id, span_id, service, span_name, \
         start_unix_nano, duration_ns, node, pid, thread_id, precision, frequency_hz, \
         concurrent_requests, source, samples, cpu_ns, created_unix_nano, \
         truncated_samples, lost_samples) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 1, $16, $17)",
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
        sqlx::query("INSERT INTO profile_frames VALUES ($1, $2, $3, $4)")
            .bind(hash)
            .bind(&frame.function)
            .bind(&frame.module)
            .bind(kind_str(frame.kind))
            .execute(&before)
            .await
            .unwrap();
    }
    for (hash, frame_hashes) in &rows.stacks {
        sqlx::query("INSERT INTO profile_stacks VALUES ($1, $2)")
            .bind(hash)
            .bind(frame_hashes)
            .execute(&before)
            .await
            .unwrap();
    }
    for r in &rows.samples {
        sqlx::query("INSERT INTO trace_profile_samples VALUES ($1, $2, $3, $4, $5)")
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

    let store = PostgresStore::connect_with(admin.clone().database(&name))
        .await
        .unwrap();
    let db = TestDb { store, admin, name };
    let frames = rows.frames.len() as i64;
    assert_eq!(count(&db.store, "profile_frames").await, frames);
    data_from_before_off_cpu_reads_as_cpu_only(&db.store).await;
    let bogus = sqlx::query("INSERT INTO profile_frames VALUES (1, 'f', 'm', 'bogus')")
        .execute(&db.store.pool)
        .await;
    assert!(bogus.is_err(), "the kind is still checked");
}
