//! CPU-bound workloads run as child processes of `coral-bench` (hidden subcommands), so
//! that the benchmarks can sample them from outside:
//!
//! - `spin <seconds>`: waits for a line on stdin (so the parent can attach a sampler
//!   first), then burns CPU on 2 threads for that long and prints
//!   `<iterations> <elapsed ns> <CPU ns used>`.
//! - `busy-service --otlp HOST:PORT [--rate N] [--work-ms M] [--saturate]`: a service
//!   of 2 worker threads serving about N requests/s in total, each request M ms of CPU
//!   in named functions, exporting a server span per request over OTLP/gRPC (service
//!   `busy-svc`, resource `process.pid`, span attribute `thread.id`), until killed.
//!   With `--saturate`, the workers serve requests back to back, each a fixed amount of
//!   work (calibrated at start to take M ms of CPU), so that what the service completes
//!   measures the CPU it gets; every line on stdin is answered on stdout with
//!   `<requests completed> <ns since the workers started>`.

use crate::workload::kv;
use anyhow::{Context, Result, bail};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use std::hint::black_box;
use std::io::{BufRead, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Worker threads of both workloads (the machine has 2 cores).
pub const THREADS: usize = 2;
/// The service name `busy-service` reports.
pub const BUSY_SERVICE: &str = "busy-svc";

// The work, in a few named functions that do not inline, so that sampled stacks have
// some depth and recognizable names.

#[inline(never)]
fn busy_mix(mut x: u64, rounds: u32) -> u64 {
    for _ in 0..rounds {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    black_box(x)
}

#[inline(never)]
fn busy_hash_items(seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for i in 0..16u64 {
        h = (h ^ busy_mix(seed.wrapping_add(i), 8)).wrapping_mul(0x0100_0000_01b3);
    }
    black_box(h)
}

#[inline(never)]
fn busy_price_cart(seed: u64) -> u64 {
    let mut total = 0u64;
    for i in 0..4u64 {
        total = total.wrapping_add(busy_hash_items(seed ^ (i << 32)));
    }
    black_box(total)
}

/// One unit of work: a few microseconds of CPU.
#[inline(never)]
fn busy_handle_unit(seed: u64) -> u64 {
    busy_price_cart(seed).wrapping_add(busy_mix(seed, 64))
}

/// The first bytes of `spin`'s work functions, read from this process's memory (no
/// `unsafe`), to check whether they set up frame pointers.
pub fn work_function_prologues() -> Vec<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let Ok(mem) = std::fs::File::open("/proc/self/mem") else {
        return Vec::new();
    };
    let functions: [usize; 5] = [
        busy_mix as fn(u64, u32) -> u64 as usize,
        busy_hash_items as fn(u64) -> u64 as usize,
        busy_price_cart as fn(u64) -> u64 as usize,
        busy_handle_unit as fn(u64) -> u64 as usize,
        spin_worker as fn(u64, Instant, Duration) -> u64 as usize,
    ];
    functions
        .iter()
        .filter_map(|&addr| {
            let mut bytes = vec![0u8; 16];
            mem.read_exact_at(&mut bytes, addr as u64).ok()?;
            Some(bytes)
        })
        .collect()
}

/// `coral-bench spin <seconds>`.
pub fn spin(args: &[String]) -> Result<()> {
    let secs: f64 = args
        .first()
        .context("usage: coral-bench spin <seconds>")?
        .parse()
        .context("seconds: a number")?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let run_for = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let workers: Vec<_> = (0..THREADS as u64)
        .map(|t| std::thread::spawn(move || spin_worker(t, start, run_for)))
        .collect();
    let mut iterations = 0u64;
    for w in workers {
        iterations += w
            .join()
            .map_err(|_| anyhow::anyhow!("a spin thread panicked"))?;
    }
    println!(
        "{iterations} {} {}",
        start.elapsed().as_nanos(),
        cpu_time()?.as_nanos()
    );
    Ok(())
}

/// CPU time (user + system) this process has used so far.
pub fn cpu_time() -> Result<Duration> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    Ok(micros(usage.user_time()) + micros(usage.system_time()))
}

#[inline(never)]
fn spin_worker(thread: u64, start: Instant, run_for: Duration) -> u64 {
    let mut iterations = 0u64;
    let mut acc = thread;
    loop {
        for _ in 0..64 {
            acc = acc.wrapping_add(busy_handle_unit(acc ^ iterations));
            iterations += 1;
        }
        if start.elapsed() >= run_for {
            break;
        }
    }
    black_box(acc);
    iterations
}

/// Burns CPU for about `work` in the named functions.
#[inline(never)]
fn busy_serve_request(seed: u64, work: Duration) -> u64 {
    let start = Instant::now();
    let mut acc = seed;
    while start.elapsed() < work {
        for _ in 0..16 {
            acc = acc.wrapping_add(busy_handle_unit(acc));
        }
    }
    acc
}

/// Does `units` units of work: the same amount whatever CPU share the thread gets.
#[inline(never)]
fn busy_serve_units(seed: u64, units: u64) -> u64 {
    let mut acc = seed;
    for _ in 0..units {
        acc = acc.wrapping_add(busy_handle_unit(acc));
    }
    acc
}

/// CPU time this thread has used so far.
fn thread_cpu_time() -> Result<Duration> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_THREAD)?;
    let micros = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().max(0) as u64)
            + Duration::from_micros(t.tv_usec().max(0) as u64)
    };
    Ok(micros(usage.user_time()) + micros(usage.system_time()))
}

/// How many units of work take `work` of CPU, measured on this thread's CPU time (not
/// wall time: the other processes of the benchmark share the cores).
fn calibrate(work: Duration) -> Result<u64> {
    const MEASURE: Duration = Duration::from_millis(300);
    let start = thread_cpu_time()?;
    let (mut units, mut acc) = (0u64, 0u64);
    while thread_cpu_time()? - start < MEASURE {
        acc = acc.wrapping_add(busy_serve_units(acc, 64));
        units += 64;
    }
    black_box(acc);
    Ok(((units as f64 * work.as_secs_f64() / MEASURE.as_secs_f64()) as u64).max(1))
}

/// How a request's work is bounded.
#[derive(Clone, Copy)]
enum Work {
    /// Wall time: paced requests that take about this long.
    Time(Duration),
    /// Units of work: back-to-back requests.
    Units(u64),
}

fn unix_nanos() -> u64 {
    crate::workload::now_ns().max(0) as u64
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    for chunk in out.chunks_mut(16) {
        let u = uuid::Uuid::new_v4();
        chunk.copy_from_slice(&u.as_bytes()[..chunk.len()]);
    }
    out
}

/// `coral-bench busy-service --otlp HOST:PORT [--rate N] [--work-ms M] [--saturate]`.
pub fn busy_service(args: &[String]) -> Result<()> {
    let mut otlp = None;
    let mut rate = 50.0f64;
    let mut work_ms = 15.0f64;
    let mut saturate = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--otlp" => otlp = Some(value()?.clone()),
            "--rate" => rate = value()?.parse().context("--rate: a number")?,
            "--work-ms" => work_ms = value()?.parse().context("--work-ms: a number")?,
            "--saturate" => saturate = true,
            other => bail!("unknown option {other}"),
        }
    }
    let otlp = otlp.context("usage: coral-bench busy-service --otlp HOST:PORT [--rate N]")?;
    anyhow::ensure!(rate > 0.0, "--rate must be positive");

    let (tx, rx) = std::sync::mpsc::channel::<Span>();
    // Each worker serves rate / THREADS requests per second.
    let period = Duration::from_secs_f64(THREADS as f64 / rate);
    let work = Duration::from_secs_f64(work_ms / 1e3);
    let work = if saturate {
        Work::Units(calibrate(work)?)
    } else {
        Work::Time(work)
    };
    let completed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    for t in 0..THREADS as u64 {
        let tx = tx.clone();
        let completed = completed.clone();
        // Runs until the process is killed.
        std::thread::spawn(move || {
            let tid = i64::from(nix::unistd::gettid().as_raw());
            let mut next = Instant::now();
            let mut n = 0u64;
            loop {
                let start = unix_nanos();
                black_box(match work {
                    Work::Time(work) => busy_serve_request(t << 40 | n, work),
                    Work::Units(units) => busy_serve_units(t << 40 | n, units),
                });
                let end = unix_nanos();
                completed.fetch_add(1, Ordering::Relaxed);
                let span = Span {
                    trace_id: random_bytes::<16>().to_vec(),
                    span_id: random_bytes::<8>().to_vec(),
                    name: "GET /work".into(),
                    kind: 2,
                    start_time_unix_nano: start,
                    end_time_unix_nano: end.max(start + 1),
                    attributes: vec![
                        kv("http.route", any_value::Value::StringValue("/work".into())),
                        kv(
                            "http.request.method",
                            any_value::Value::StringValue("GET".into()),
                        ),
                        kv("http.response.status_code", any_value::Value::IntValue(200)),
                        kv("thread.id", any_value::Value::IntValue(tid)),
                    ],
                    ..Default::default()
                };
                if tx.send(span).is_err() {
                    return;
                }
                n += 1;
                if saturate {
                    continue;
                }
                next += period;
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
    }
    drop(tx);
    if saturate {
        std::thread::spawn(move || -> Result<()> {
            let mut out = std::io::stdout().lock();
            for line in std::io::stdin().lock().lines() {
                line?;
                let done = completed.load(Ordering::Relaxed);
                writeln!(out, "{done} {}", started.elapsed().as_nanos())?;
                out.flush()?;
            }
            Ok(())
        });
    }

    // The exporter: a batch every 200 ms, like an SDK's batch span processor.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let resource = Resource {
            attributes: vec![
                kv(
                    "service.name",
                    any_value::Value::StringValue(BUSY_SERVICE.into()),
                ),
                kv(
                    "process.pid",
                    any_value::Value::IntValue(i64::from(std::process::id())),
                ),
            ],
            ..Default::default()
        };
        let mut client = crate::workload::otlp_client(&otlp).await;
        let mut pending: Vec<Span> = Vec::new();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            pending.extend(rx.try_iter());
            if pending.is_empty() {
                continue;
            }
            let request = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(resource.clone()),
                    scope_spans: vec![ScopeSpans {
                        spans: pending.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            match client.export(request).await {
                Ok(_) => pending.clear(),
                // Keep them for the next batch (bounded: an SDK drops beyond its queue).
                Err(_) => pending.truncate(10_000),
            }
        }
    })
}
