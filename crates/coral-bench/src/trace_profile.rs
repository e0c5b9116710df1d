//! `coral query trace-profile <id>`: `GetTraceProfile` in a colony process over many
//! stored profile samples.

use crate::workload::{self, Database, Processes, Rng};
use anyhow::{Context, Result};
use coral_analysis::profile::{Frame, Profile};
use coral_client::v1;
use coral_store::{Precision, SpanId, Store, TraceId, TraceProfileRecord};
use std::time::{Duration, Instant};

/// PostgreSQL: profiles × stacks per profile = 10,000,000 sample rows.
const PG_PROFILES: u64 = 100_000;
const STACKS_PER_PROFILE: u64 = 100;
/// SQLite is seeded through the store API (no SQL shortcut): slower, same size.
const SQLITE_PROFILES: u64 = 100_000;
const RUNS: usize = 200;

pub async fn run(coral: &str, postgres: Option<&str>) -> Result<()> {
    println!();
    println!(
        "## trace-profile: GetTraceProfile (what `coral query trace-profile <id>` sends) of {RUNS} random seeded traces, {STACKS_PER_PROFILE} stacks each"
    );
    println!(
        "| store | sample rows stored | seeding time | p50 | p95 | ListServices round trip p50 (baseline) | ratio p50/baseline |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    match postgres {
        Some(pg) => {
            let db = Database::fresh(Some(pg)).await?;
            let coral_colony::StoreConfig::Postgres { url } = &db.config else {
                unreachable!("a PostgreSQL database")
            };
            let store = coral_store_postgres::PostgresStore::connect(url).await?;
            let t = Instant::now();
            let ids = coral_store_postgres::bench::seed_profile_samples(
                &store,
                PG_PROFILES,
                STACKS_PER_PROFILE,
            )
            .await?;
            let seeding = t.elapsed();
            store.close().await;
            measure(coral, &db, &ids, seeding).await?;
            notes.push(format!(
                "PostgreSQL: seeded with `coral_store_postgres::bench::seed_profile_samples` ({PG_PROFILES} profiles copied in SQL)."
            ));
        }
        None => notes.push(
            "PostgreSQL skipped: no CORAL_BENCH_POSTGRES_URL (`cargo xtask bench` sets it).".into(),
        ),
    }
    let db = Database::fresh(None).await?;
    let store = coral_colony::open_store(&db.config).await?;
    let t = Instant::now();
    let ids = seed_through_store(store.as_ref(), SQLITE_PROFILES, STACKS_PER_PROFILE).await?;
    let seeding = t.elapsed();
    drop(store);
    measure(coral, &db, &ids, seeding).await?;
    notes.push(format!(
        "SQLite: seeded with {SQLITE_PROFILES} profiles written through `Store::insert_trace_profiles`, {PROFILES_PER_CALL} per call, 1,000 distinct stack sets."
    ));
    println!();
    for note in notes {
        println!("{note}");
    }
    Ok(())
}

async fn measure(coral: &str, db: &Database, ids: &[TraceId], seeding: Duration) -> Result<()> {
    let rows = db.count_rows("trace_profile_samples").await?;
    let mut procs = Processes::default();
    let colony = workload::start_colony(coral, db, &mut procs).await?;
    let channel = coral_client::connect(&colony).await?;
    let mut profiles = coral_client::profile_client(channel.clone());
    let mut query = coral_client::query_client(channel);
    let request = |id: &TraceId| v1::GetTraceProfileRequest {
        trace_id: id.to_string(),
        service: String::new(),
    };
    let first = profiles
        .get_trace_profile(request(&ids[0]))
        .await?
        .into_inner();
    let stacks = first
        .profiles
        .first()
        .and_then(|p| p.profile.as_ref())
        .map_or(0, |p| p.stacks.len());
    anyhow::ensure!(
        first.profiles.len() == 1 && stacks as u64 == STACKS_PER_PROFILE,
        "expected 1 profile of {STACKS_PER_PROFILE} stacks, got {} profiles ({stacks} stacks)",
        first.profiles.len()
    );
    let mut rng = Rng(0x7ace_9f0f_11e5_0001);
    let mut times = Vec::with_capacity(RUNS);
    let mut floor = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let id = &ids[rng.below(ids.len())];
        let t = Instant::now();
        let got = profiles.get_trace_profile(request(id)).await?.into_inner();
        times.push(t.elapsed());
        anyhow::ensure!(got.profiles.len() == 1, "trace {id}: no profile");
        let t = Instant::now();
        query.list_services(v1::ListServicesRequest {}).await?;
        floor.push(t.elapsed());
    }
    let (p50, p95) = workload::percentiles(times);
    let (floor, _) = workload::percentiles(floor);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "| {} | {rows} | {:.0} s | {:.2} ms | {:.2} ms | {:.2} ms | {:.1} |",
        db.label,
        seeding.as_secs_f64(),
        ms(p50),
        ms(p95),
        ms(floor),
        p50.as_secs_f64() / floor.as_secs_f64()
    );
    Ok(())
}

/// Frames the stacks are made of (as in the PostgreSQL seed).
const FRAME_POOL: u64 = 500;
const STACK_DEPTH: u64 = 20;
/// Distinct stack sets: profile `i` uses set `i % VARIANTS`.
const VARIANTS: u64 = 1000;
/// Profiles per `insert_trace_profiles` call.
const PROFILES_PER_CALL: usize = 200;

/// Seeds `profiles` profiles of one span each through the store API, shaped like
/// `coral_store_postgres::bench`'s: `stacks` stacks of 20 frames from a pool of 500,
/// 1,000 distinct stack sets, random trace ids. Returns the trace ids.
async fn seed_through_store(store: &dyn Store, profiles: u64, stacks: u64) -> Result<Vec<TraceId>> {
    let pool: Vec<Frame> = (0..FRAME_POOL)
        .map(|n| {
            if n % 10 == 9 {
                Frame::kernel(format!("kernel_fn_{n}"))
            } else {
                Frame::user(format!("app::module_{}::function_{n}", n % 17), "bench-svc")
            }
        })
        .collect();
    let variant = |v: u64| {
        let mut profile = Profile::new();
        for k in 0..stacks {
            let mut stack = vec![Frame::user("main", "bench-svc")];
            stack.extend(
                (1..STACK_DEPTH - 1)
                    .map(|j| pool[((k * 7 + j * 13 + v * j) % FRAME_POOL) as usize].clone()),
            );
            stack.push(Frame::user(format!("leaf_{k}"), "libc.so.6"));
            profile.add(&stack, k % 50 + 1, 99);
        }
        profile
    };
    let variants: Vec<Profile> = (0..VARIANTS.min(profiles)).map(variant).collect();
    let start = workload::now_ns() - 3_600_000_000_000;
    let mut ids = Vec::with_capacity(profiles as usize);
    let mut batch = Vec::with_capacity(PROFILES_PER_CALL);
    for i in 0..profiles {
        let trace_id =
            TraceId::from_bytes(uuid::Uuid::new_v4().as_bytes()).context("a random trace id")?;
        ids.push(trace_id);
        batch.push(TraceProfileRecord {
            trace_id,
            span_id: SpanId([1, 2, 3, 4, 5, 6, 7, 8]),
            service: "bench-svc".into(),
            span_name: "GET /bench".into(),
            start_unix_nano: start + i as i64 * 1_000_000,
            duration_ns: 250_000_000,
            node: "bench-node".into(),
            pid: Some(1000),
            thread_id: Some(1000 + i as i64),
            precision: Precision::Thread,
            frequency_hz: 99,
            concurrent_requests: 0,
            truncated_samples: 0,
            lost_samples: 0,
            source: coral_store::ProfileSource::Session(uuid::Uuid::nil()),
            profile_types: vec![coral_store::ProfileType::Cpu],
            profile: variants[(i % VARIANTS) as usize].clone(),
        });
        if batch.len() == PROFILES_PER_CALL || i + 1 == profiles {
            store.insert_trace_profiles(&batch).await?;
            batch.clear();
        }
    }
    Ok(ids)
}
