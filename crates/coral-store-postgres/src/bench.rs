//! Seeding a database with many trace profiles, for benchmarks
//! (`examples/profile_read_latency.rs`, `coral-bench`).

use coral_analysis::profile::{Frame, Profile};
use coral_store::{
    Precision, ProfileSource, ProfileType, SpanId, Store, StoreError, TraceId, TraceProfileRecord,
};
use sqlx::Row;

use crate::PostgresStore;
use crate::error::map_err;

/// Profiles cloned per statement.
const PROFILES_PER_STATEMENT: u64 = 10_000;
/// Distinct frames the seeded stacks are made of.
const FRAME_POOL: u64 = 500;
/// Frames per seeded stack.
const STACK_DEPTH: u64 = 20;
/// Copies of the template's stacks under other hashes, so that the stacks table is
/// not tiny: profile `i` uses copy `i % STACK_VARIANTS` (copy 0 is the template's).
const STACK_VARIANTS: i64 = 1000;

/// Adds `profiles` trace profiles of one span each, every one with
/// `stacks_per_profile` stacks (so `profiles × stacks_per_profile` rows in
/// `trace_profile_samples`), and returns their trace ids.
///
/// The first profile is stored with [`Store::insert_trace_profiles`]; the others are
/// copies of it made in SQL (`INSERT … SELECT` over `generate_series`, 10,000
/// profiles per statement), each under a pseudo-random trace id (`md5` of its
/// number), so the primary keys are spread as real trace ids are. The frames (a pool
/// of 500, 20 per stack) are shared; the stacks are stored 1,000 times, under the
/// template's hashes XOR `variant << 40` (not their true hashes: reading does not
/// check them), and profile `i` uses variant `i % 1000`. The tables are analyzed at
/// the end.
pub async fn seed_profile_samples(
    store: &PostgresStore,
    profiles: u64,
    stacks_per_profile: u64,
) -> Result<Vec<TraceId>, StoreError> {
    if profiles == 0 {
        return Ok(Vec::new());
    }
    let template = template_profile(stacks_per_profile);
    let template_trace = template.trace_id;
    store.insert_trace_profiles(&[template]).await?;
    sqlx::query(
        "INSERT INTO profile_stacks (stack_hash, frame_hashes) \
         SELECT st.stack_hash # (v << 40), st.frame_hashes \
         FROM generate_series(1::int8, $2::int8) AS v, trace_profile_samples s \
         JOIN profile_stacks st ON st.stack_hash = s.stack_hash \
         WHERE s.trace_id = $1 \
         ON CONFLICT (stack_hash) DO NOTHING",
    )
    .bind(template_trace.as_bytes())
    .bind(STACK_VARIANTS - 1)
    .execute(&store.pool)
    .await
    .map_err(map_err)?;

    let mut next = 2;
    while next <= profiles {
        let last = (next + PROFILES_PER_STATEMENT - 1).min(profiles);
        let (first, last_i) = (as_i64(next), as_i64(last));
        let mut tx = store.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO trace_profiles (trace_id, span_id, service, span_name, \
                 start_unix_nano, duration_ns, node, pid, thread_id, precision, frequency_hz, \
                 concurrent_requests, source, samples, cpu_ns, created_unix_nano) \
             SELECT decode(md5(i::text), 'hex'), t.span_id, t.service, t.span_name, \
                 t.start_unix_nano + i * 1000000, t.duration_ns, t.node, t.pid, \
                 t.thread_id + i, t.precision, t.frequency_hz, t.concurrent_requests, \
                 t.source, t.samples, t.cpu_ns, t.created_unix_nano \
             FROM generate_series($1::int8, $2::int8) AS i, trace_profiles t \
             WHERE t.trace_id = $3",
        )
        .bind(first)
        .bind(last_i)
        .bind(template_trace.as_bytes())
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        // Ordered as a colony writes them: each profile's samples together.
        sqlx::query(
            "INSERT INTO trace_profile_samples (trace_id, span_id, stack_hash, samples, cpu_ns) \
             SELECT decode(md5(i::text), 'hex'), s.span_id, \
                 s.stack_hash # ((i % $4) << 40), s.samples, s.cpu_ns \
             FROM generate_series($1::int8, $2::int8) AS i, trace_profile_samples s \
             WHERE s.trace_id = $3 \
             ORDER BY i, s.stack_hash",
        )
        .bind(first)
        .bind(last_i)
        .bind(template_trace.as_bytes())
        .bind(STACK_VARIANTS)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        next = last + 1;
    }
    sqlx::query("ANALYZE trace_profiles, trace_profile_samples, profile_stacks, profile_frames")
        .execute(&store.pool)
        .await
        .map_err(map_err)?;

    let rows = sqlx::query(
        "SELECT decode(md5(i::text), 'hex') AS trace_id FROM generate_series(2::int8, $1::int8) AS i",
    )
    .bind(as_i64(profiles))
    .fetch_all(&store.pool)
    .await
    .map_err(map_err)?;
    let mut ids = vec![template_trace];
    for row in &rows {
        let bytes: &[u8] = row.try_get("trace_id").map_err(map_err)?;
        ids.push(
            TraceId::from_bytes(bytes)
                .ok_or_else(|| StoreError::Corrupt("md5 gave a zero trace id".into()))?,
        );
    }
    Ok(ids)
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The profile that every seeded one copies: `stacks` distinct stacks of
/// [`STACK_DEPTH`] frames, stored under the trace id `md5('1')` like the copies.
fn template_profile(stacks: u64) -> TraceProfileRecord {
    let frame = |n: u64| {
        if n % 10 == 9 {
            Frame::kernel(format!("kernel_fn_{n}"))
        } else {
            Frame::user(format!("app::module_{}::function_{n}", n % 17), "bench-svc")
        }
    };
    let mut profile = Profile::new();
    for k in 0..stacks {
        let mut stack: Vec<Frame> = vec![Frame::user("main", "bench-svc")];
        stack.extend((1..STACK_DEPTH - 1).map(|j| frame((k * 7 + j * 13) % FRAME_POOL)));
        stack.push(Frame::user(format!("leaf_{k}"), "libc.so.6"));
        profile.add(&stack, k % 50 + 1, 99);
    }
    TraceProfileRecord {
        // md5('1') = c4ca4238a0b923820dcc509a6f75849b
        trace_id: TraceId([
            0xc4, 0xca, 0x42, 0x38, 0xa0, 0xb9, 0x23, 0x82, 0x0d, 0xcc, 0x50, 0x9a, 0x6f, 0x75,
            0x84, 0x9b,
        ]),
        span_id: SpanId([1, 2, 3, 4, 5, 6, 7, 8]),
        service: "bench-svc".into(),
        span_name: "GET /bench".into(),
        start_unix_nano: 1_700_000_000_000_000_000,
        duration_ns: 250_000_000,
        node: "bench-node".into(),
        pid: Some(1000),
        thread_id: Some(1000),
        precision: Precision::Thread,
        frequency_hz: 99,
        concurrent_requests: 0,
        truncated_samples: 0,
        lost_samples: 0,
        source: ProfileSource::Session(uuid::Uuid::nil()),
        profile_types: vec![ProfileType::Cpu],
        profile,
    }
}
