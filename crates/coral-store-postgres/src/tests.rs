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
    let store = PostgresStore::connect_with(admin.clone().database(&name))
        .await
        .expect("connect to the test database");
    TestDb { store, admin, name }
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
