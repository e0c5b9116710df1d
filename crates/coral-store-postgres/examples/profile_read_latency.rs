//! How long reading one trace's profiles takes with many samples stored:
//!
//! ```text
//! cargo run --release -p coral-store-postgres --example profile_read_latency -- \
//!     postgres://postgres@127.0.0.1:5432/postgres [profiles] [stacks_per_profile]
//! ```
//!
//! Creates a scratch database `coral_profile_latency` on that server (dropping an old
//! one), seeds `profiles × stacks_per_profile` sample rows (default 100,000 × 100 =
//! 10,000,000), prints the median and p95 of 50 `trace_profiles` calls on random
//! traces and the plan of the samples query, and drops the database.

use std::time::{Duration, Instant};

use coral_store::Store;
use coral_store_postgres::{PgConnectOptions, PostgresStore, bench};
use sqlx::{Connection, PgConnection, Row};

const DATABASE: &str = "coral_profile_latency";
const RUNS: usize = 50;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: profile_read_latency <postgres-url> [profiles] [stacks_per_profile]")?;
    let profiles: u64 = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let stacks: u64 = args.next().map_or(Ok(100), |a| a.parse())?;
    let admin: PgConnectOptions = url.parse()?;

    let mut conn = PgConnection::connect_with(&admin).await?;
    sqlx::raw_sql(const_sql(&format!(
        "DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    sqlx::raw_sql(const_sql(&format!("CREATE DATABASE {DATABASE}")))
        .execute(&mut conn)
        .await?;
    let store = PostgresStore::connect_with(admin.clone().database(DATABASE)).await?;

    let t = Instant::now();
    let traces = bench::seed_profile_samples(&store, profiles, stacks).await?;
    println!(
        "seeded {} profiles × {stacks} stacks = {} sample rows in {:.1} s",
        traces.len(),
        traces.len() as u64 * stacks,
        t.elapsed().as_secs_f64()
    );

    let mut times: Vec<Duration> = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        // Spread over the table: no two runs read the same trace.
        let trace = traces[(run * 7919 * 13) % traces.len()];
        let t = Instant::now();
        let got = store.trace_profiles(&trace).await?;
        times.push(t.elapsed());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].profile.stacks.len() as u64, stacks);
    }
    times.sort();
    println!(
        "trace_profiles(one trace), {RUNS} runs: median {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        ms(times[RUNS / 2]),
        ms(times[RUNS * 95 / 100]),
        ms(times[RUNS - 1])
    );

    let pool = sqlx::PgPool::connect_with(admin.clone().database(DATABASE)).await?;
    let plan = sqlx::query(
        "EXPLAIN (ANALYZE, BUFFERS) \
         SELECT s.span_id, s.stack_hash, s.samples, s.cpu_ns, st.frame_hashes \
         FROM trace_profile_samples s \
         LEFT JOIN profile_stacks st ON st.stack_hash = s.stack_hash \
         WHERE s.trace_id = $1",
    )
    .bind(traces[traces.len() / 2].as_bytes())
    .fetch_all(&pool)
    .await?;
    println!("plan of the samples query:");
    for row in &plan {
        println!("  {}", row.try_get::<String, _>(0)?);
    }
    pool.close().await;
    store.close().await;
    sqlx::raw_sql(const_sql(&format!("DROP DATABASE {DATABASE} WITH (FORCE)")))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// `DATABASE` is a constant, not user input.
fn const_sql(sql: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql.to_string())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
