//! A load test on loopback (issue 8): the real `coral colony start` and `coral agent
//! start` as separate processes, OTLP/gRPC spans into the agent at a steady open-loop
//! rate (default 20,000 spans/s for 600 s), an active trace trigger on one service the
//! whole time (re-armed whenever one completes), and queries through `coral-client`
//! every second. At the end: the agent drained, every span accepted by the agent is
//! counted in the store (lost and duplicates must be 0), and the RSS of both
//! processes over time (flat after warm-up, or not).
//!
//! `coral-bench load [--seconds N] [--rate SPANS_PER_S] [--store postgres|sqlite|both]`
//! (through `cargo xtask bench load …`). Exits non-zero when a span was lost or
//! duplicated, or the rate held was under 95 % of the target.

use crate::workload::{self, Database, Processes, Rng, kv};
use anyhow::{Context, Result, bail, ensure};
use coral_client::v1;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};

/// The generator's tick: each one sends the spans due since the last.
const TICK: Duration = Duration::from_millis(100);
/// Most spans per OTLP export request (an SDK batch processor's default is 512).
const MAX_PER_REQUEST: usize = 500;
/// Export requests in flight at most; beyond it the generator falls behind (and the
/// achieved rate shows it).
const IN_FLIGHT: usize = 64;
/// How often the progress line is printed, and RSS read.
const PROGRESS: Duration = Duration::from_secs(10);
const RSS_EVERY: Duration = Duration::from_secs(5);
/// The triggered service, and how many of its requests per second match the trigger.
const TRIGGERED: &str = "checkout";
const MATCHES_PER_S: f64 = 2.0;
/// `coral profile trace-trigger` arguments: slow failed checkouts, 10 per trigger.
const TRIGGER_ARGS: [&str; 8] = [
    "--min-duration",
    "1s",
    "--status-code",
    "5xx",
    "--count",
    "10",
    "--timeout",
    "2m",
];
/// Queries are sent in rounds, one round a second.
const QUERY_EVERY: Duration = Duration::from_secs(1);
/// Memory is "flat" when the fitted growth after warm-up is at most this share of the
/// RSS at the warm-up's end, or at most [`FLAT_MIB`], whichever is larger.
const FLAT_SHARE: f64 = 0.05;
const FLAT_MIB: f64 = 4.0;
/// Warm-up before the memory fit (shorter for short runs: half the run).
const WARM_UP: Duration = Duration::from_secs(120);
/// The achieved rate must be at least this share of the target.
const RATE_HELD: f64 = 0.95;

#[derive(Debug, Clone)]
struct Options {
    seconds: u64,
    rate: u64,
    stores: Vec<&'static str>,
}

fn parse(args: &[String]) -> Result<Options> {
    const USAGE: &str =
        "usage: coral-bench load [--seconds N] [--rate SPANS_PER_S] [--store postgres|sqlite|both]";
    let mut o = Options {
        seconds: 600,
        rate: 20_000,
        stores: vec!["postgres"],
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--seconds" => o.seconds = value.parse().context("--seconds: a whole number")?,
            "--rate" => o.rate = value.parse().context("--rate: spans per second")?,
            "--store" => {
                o.stores = match value.as_str() {
                    "postgres" => vec!["postgres"],
                    "sqlite" => vec!["sqlite"],
                    "both" => vec!["postgres", "sqlite"],
                    _ => bail!("--store: postgres, sqlite or both\n{USAGE}"),
                }
            }
            _ => bail!("unknown argument {flag}\n{USAGE}"),
        }
    }
    ensure!(o.seconds >= 10, "--seconds: at least 10");
    ensure!(o.rate >= 100, "--rate: at least 100 spans/s");
    Ok(o)
}

pub async fn run(coral: &str, postgres: Option<&str>, args: &[String]) -> Result<()> {
    let options = parse(args)?;
    let mut failures = Vec::new();
    for store in &options.stores {
        let pg = match *store {
            "postgres" => Some(postgres.context(
                "--store postgres needs CORAL_BENCH_POSTGRES_URL (cargo xtask bench provides it)",
            )?),
            _ => None,
        };
        failures.extend(run_one(coral, pg, &options).await?);
    }
    if !failures.is_empty() {
        bail!("load test failed: {}", failures.join("; "));
    }
    Ok(())
}

/// What the generator has done so far.
#[derive(Default)]
struct Sent {
    /// Spans made and handed to an exporter task.
    generated: AtomicU64,
    /// Spans the agent accepted (OK answers, minus any it rejected as invalid).
    accepted: AtomicU64,
    /// Spans the agent rejected as invalid (partial success): must stay 0.
    rejected: AtomicU64,
    /// Export attempts refused with the retryable back-pressure error, and their spans.
    refusals: AtomicU64,
    refused_spans: AtomicU64,
    /// Other failed attempts (retried too), and requests given up after all retries.
    errors: AtomicU64,
    given_up: AtomicU64,
    requests: AtomicU64,
    /// Ticks that found the generator late by more than a tick.
    late_ticks: AtomicU64,
}

/// Latencies and errors of one kind of query.
#[derive(Default)]
struct QueryStats {
    times: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

type Queries = Arc<Mutex<BTreeMap<&'static str, QueryStats>>>;

#[derive(Default)]
struct Triggers {
    started: u64,
    completed: u64,
    /// Ended otherwise (expired, cancelled): should stay 0.
    other_ends: u64,
    collected: u64,
    baseline: u64,
    /// From `trace-trigger` to the trigger's completion.
    times: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

/// One RSS reading of both processes, in KiB.
#[derive(Clone, Copy)]
struct Reading {
    at: Duration,
    agent: u64,
    colony: u64,
}

async fn run_one(coral: &str, pg: Option<&str>, o: &Options) -> Result<Vec<String>> {
    let db = Database::fresh(pg).await?;
    println!();
    println!(
        "## load ({}): {} spans/s for {} s, OTLP/gRPC into an agent process → colony process; an active trigger on `{TRIGGERED}` ({MATCHES_PER_S} matching requests/s), queries every second",
        db.label, o.rate, o.seconds
    );
    let mut procs = Processes::default();
    let (colony, colony_pid) = workload::start_colony_pid(coral, &db, &mut procs).await?;
    let metrics = format!("127.0.0.1:{}", workload::free_port()?);
    let (otlp, agent_pid) =
        workload::start_agent_with(coral, &colony, &mut procs, &["--metrics", &metrics])?;
    // The triggered service's process: idle, so the agent has a live process to sample.
    let checkout_pid = crate::trigger::idle_processes(1, &mut procs)?[0];
    let client = workload::otlp_client(&otlp).await;
    let mut rng = Rng(0x6c6f_6164_2d62_656e);
    let plan = Plan::new(o.rate, checkout_pid, i64::from(std::process::id()));

    // Warm-up: one tick's worth, so that the colony knows the services (a trigger
    // needs its service) and the agent knows checkout's process.
    let sent = Arc::new(Sent::default());
    let mut generator = Generator::new(plan, 1);
    for request in generator.tick(&mut rng, (o.rate / 10).max(1)) {
        export(&client, request, &sent).await;
    }
    workload::wait_for_service(&colony, TRIGGERED).await?;
    let rss_before = (rss_kib(agent_pid)?, rss_kib(colony_pid)?);
    // The rate is that of the run proper, without the warm-up tick.
    let (warm_spans, warm_accepted) = (generator.spans, sent.accepted.load(Relaxed));

    let stop = Arc::new(AtomicBool::new(false));
    let queries: Queries = Arc::default();
    let triggers = Arc::new(Mutex::new(Triggers::default()));
    let query_task = tokio::spawn(query_loop(colony.clone(), queries.clone(), stop.clone()));
    let trigger_task = tokio::spawn(trigger_loop(
        coral.to_string(),
        colony.clone(),
        triggers.clone(),
        stop.clone(),
    ));

    // The generator: open loop, paced per tick against the clock.
    let start = Instant::now();
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let total = Duration::from_secs(o.seconds);
    let mut readings = Vec::new();
    let mut next_tick = tokio::time::Instant::now();
    let mut next_rss = RSS_EVERY;
    let mut next_progress = PROGRESS;
    let mut last_progress = (Duration::ZERO, warm_accepted);
    // Whether the agent's eBPF sampler was seen attached (at a progress line).
    let (mut sampler_seen, mut progress_lines) = (0u32, 0u32);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= total {
            break;
        }
        // Spans due by now (the schedule is continuous: a late tick sends more).
        let due = (o.rate as f64 * elapsed.as_secs_f64().min(total.as_secs_f64())) as u64;
        let generated = generator.spans - warm_spans;
        if due > generated {
            // At most two ticks' worth at once: when the agent refuses and every export
            // slot is taken, the backlog stays a number (the schedule), not spans in
            // memory (a first version made them all and was killed at 23 GB).
            let chunk = (due - generated).min(o.rate / 5).max(1);
            for request in generator.tick(&mut rng, chunk) {
                let permit = permits.clone().acquire_owned().await?;
                let (client, sent) = (client.clone(), sent.clone());
                tokio::spawn(async move {
                    export(&client, request, &sent).await;
                    drop(permit);
                });
            }
            sent.generated.store(generator.spans, Relaxed);
        }
        if elapsed >= next_rss {
            readings.push(Reading {
                at: elapsed,
                agent: rss_kib(agent_pid)?,
                colony: rss_kib(colony_pid)?,
            });
            next_rss += RSS_EVERY;
        }
        if elapsed >= next_progress {
            let accepted = sent.accepted.load(Relaxed);
            let window = elapsed - last_progress.0;
            let m = agent_metrics(&metrics).await.unwrap_or_default();
            progress_lines += 1;
            if m.get("coral_agent_sampler_attached") == Some(&1.0) {
                sampler_seen += 1;
            }
            let p99 = {
                let q = queries.lock().await;
                let all: Vec<Duration> = q.values().flat_map(|s| s.times.clone()).collect();
                percentile(all, 0.99)
            };
            let t = triggers.lock().await;
            println!(
                "[{:>4.0} s] {:>6.0} spans/s (last {:.0} s; {:.0} overall) | agent RSS {:.1} MiB | colony RSS {:.1} MiB | agent buffered {:.0} | refused {} | query p99 {} | triggers completed {}",
                elapsed.as_secs_f64(),
                (accepted - last_progress.1) as f64 / window.as_secs_f64(),
                window.as_secs_f64(),
                (accepted - warm_accepted) as f64 / elapsed.as_secs_f64(),
                mib(rss_kib(agent_pid)?),
                mib(rss_kib(colony_pid)?),
                m.get("coral_agent_spans_buffered")
                    .copied()
                    .unwrap_or(f64::NAN),
                sent.refusals.load(Relaxed),
                ms(p99),
                t.completed,
            );
            last_progress = (elapsed, accepted);
            next_progress += PROGRESS;
        }
        next_tick += TICK;
        let now = tokio::time::Instant::now();
        if now > next_tick + TICK {
            sent.late_ticks.fetch_add(1, Relaxed);
            next_tick = now;
        }
        tokio::time::sleep_until(next_tick).await;
    }
    // Every export answered (retries included).
    let _all = permits.acquire_many(IN_FLIGHT as u32).await?;
    let send_time = start.elapsed();
    stop.store(true, Relaxed);
    query_task.await?;
    trigger_task.await?;
    let rss_end = (rss_kib(agent_pid)?, rss_kib(colony_pid)?);
    let m = agent_metrics(&metrics).await.unwrap_or_default();
    let samples = m.get("coral_agent_samples_total").copied().unwrap_or(0.0);

    // The agent drains, then the store holds everything.
    let drain_start = Instant::now();
    let accepted = sent.accepted.load(Relaxed);
    let mut drained = None;
    while drain_start.elapsed() < Duration::from_secs(300) {
        let m = agent_metrics(&metrics).await?;
        let buffered = m.get("coral_agent_spans_buffered").copied().unwrap_or(-1.0);
        if buffered == 0.0 {
            drained = Some(drain_start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let agent_counts = agent_metrics(&metrics).await?;
    let (stored, distinct) = stored_spans(&db).await?;
    let lost = accepted as i64 - stored;
    let duplicates = stored - distinct;
    let achieved = (accepted - warm_accepted) as f64 / send_time.as_secs_f64();

    // Report.
    let q = queries.lock().await;
    let t = triggers.lock().await;
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    let row = |k: &str, v: String| println!("| {k} | {v} |");
    row("store", db.label.to_string());
    row(
        "target rate",
        format!("{} spans/s for {} s", o.rate, o.seconds),
    );
    row(
        "achieved rate (accepted by the agent / sending time)",
        format!(
            "**{achieved:.0} spans/s** ({:.1} % of target; {:.1} s of sending)",
            100.0 * achieved / o.rate as f64,
            send_time.as_secs_f64()
        ),
    );
    row(
        "spans sent (accepted by the agent, with the warm-up tick) / generated",
        format!(
            "{accepted} / {} in {} export requests of ≤ {MAX_PER_REQUEST} spans ({} traces)",
            sent.generated.load(Relaxed),
            sent.requests.load(Relaxed),
            generator.traces
        ),
    );
    row(
        "refused by the agent (retryable back-pressure, retried)",
        format!(
            "{} attempts, {} spans",
            sent.refusals.load(Relaxed),
            sent.refused_spans.load(Relaxed)
        ),
    );
    row(
        "other failed attempts (retried) / given up / rejected as invalid",
        format!(
            "{} / {} / {}",
            sent.errors.load(Relaxed),
            sent.given_up.load(Relaxed),
            sent.rejected.load(Relaxed)
        ),
    );
    row(
        "generator late (ticks over 100 ms behind)",
        sent.late_ticks.load(Relaxed).to_string(),
    );
    row(
        "agent drained after the last export",
        match drained {
            Some(d) => format!("{:.1} s", d.as_secs_f64()),
            None => "no (still buffering after 300 s)".into(),
        },
    );
    row(
        "agent counters: received / forwarded / rejected / dropped",
        format!(
            "{:.0} / {:.0} / {:.0} / {:.0}",
            agent_counts
                .get("coral_agent_spans_received_total")
                .unwrap_or(&f64::NAN),
            agent_counts
                .get("coral_agent_spans_forwarded_total")
                .unwrap_or(&f64::NAN),
            agent_counts
                .get("coral_agent_spans_rejected_total")
                .unwrap_or(&f64::NAN),
            agent_counts
                .get("coral_agent_spans_dropped_total")
                .unwrap_or(&f64::NAN)
        ),
    );
    row("spans stored", stored.to_string());
    row("**lost** (sent − stored)", format!("**{lost}**"));
    row(
        "**duplicates** (stored − distinct (trace id, span id))",
        format!("**{duplicates}**"),
    );
    let memory = Memory::new(&readings, rss_before, rss_end, o.seconds);
    memory.rows(&row);
    for (name, s) in q.iter() {
        let n = s.times.len();
        row(
            &format!("query `{name}`: p50 / p99 / max (calls, errors)"),
            format!(
                "{} / {} / {} ({n}, {}){}",
                ms(percentile(s.times.clone(), 0.5)),
                ms(percentile(s.times.clone(), 0.99)),
                ms(s.times.iter().max().copied().unwrap_or_default()),
                s.errors,
                s.first_error
                    .as_ref()
                    .map(|e| format!("; first error: {e}"))
                    .unwrap_or_default()
            ),
        );
    }
    row(
        "triggers: started / completed / ended otherwise",
        format!("{} / {} / {}", t.started, t.completed, t.other_ends),
    );
    row(
        "trigger requests collected / baseline profiles",
        format!("{} / {}", t.collected, t.baseline),
    );
    row(
        "trigger start → completed: p50 / max",
        format!(
            "{} / {}",
            ms(percentile(t.times.clone(), 0.5)),
            ms(t.times.iter().max().copied().unwrap_or_default())
        ),
    );
    row(
        "trigger errors",
        format!(
            "{}{}",
            t.errors,
            t.first_error
                .as_ref()
                .map(|e| format!("; first: {e}"))
                .unwrap_or_default()
        ),
    );
    row(
        "agent's eBPF sampler attached (progress lines) / CPU samples taken",
        format!(
            "{sampler_seen} of {progress_lines} / {samples:.0}{}",
            if sampler_seen == 0 {
                " (never seen attached: no real sampling)"
            } else {
                " (the checkout process is idle: few samples)"
            }
        ),
    );
    row(
        "request profiles stored",
        db.count_rows("trace_profiles").await?.to_string(),
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    row(
        "load average at the end (1, 5, 15 min)",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    println!();
    memory.series();
    drop(procs);
    let label = db.label;
    db.drop_database().await?;

    let mut failures = Vec::new();
    if lost != 0 {
        failures.push(format!("{}: {lost} spans lost", label));
    }
    if duplicates != 0 {
        failures.push(format!("{}: {duplicates} duplicates", label));
    }
    if achieved < RATE_HELD * o.rate as f64 {
        failures.push(format!(
            "{}: {achieved:.0} spans/s is under {:.0} % of {}",
            label,
            RATE_HELD * 100.0,
            o.rate
        ));
    }
    Ok(failures)
}

/// Sends one export request until the agent takes it, retrying as an SDK does.
async fn export(
    client: &TraceServiceClient<tonic::transport::Channel>,
    request: ExportTraceServiceRequest,
    sent: &Sent,
) {
    let spans: u64 = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum();
    sent.requests.fetch_add(1, Relaxed);
    let mut backoff = Duration::from_millis(50);
    for _ in 0..30 {
        match client.clone().export(request.clone()).await {
            Ok(response) => {
                let rejected = response
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| p.rejected_spans as u64);
                sent.accepted.fetch_add(spans - rejected, Relaxed);
                sent.rejected.fetch_add(rejected, Relaxed);
                return;
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                sent.refusals.fetch_add(1, Relaxed);
                sent.refused_spans.fetch_add(spans, Relaxed);
            }
            Err(_) => {
                sent.errors.fetch_add(1, Relaxed);
            }
        }
        // Exponential backoff with jitter, as the OTLP exporters' retry policy.
        let jitter = Duration::from_millis(u64::from(rand_u16() % 50));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    sent.given_up.fetch_add(1, Relaxed);
}

fn rand_u16() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos()
        >> 4) as u16
}

/// A round of queries every second until `stop`: what an operator (or an assistant)
/// watching the system sends.
async fn query_loop(colony: String, stats: Queries, stop: Arc<AtomicBool>) {
    let Ok(channel) = coral_client::connect(&colony).await else {
        stats.lock().await.entry("connect").or_default().errors += 1;
        return;
    };
    let mut query = coral_client::query_client(channel.clone());
    let mut profile = coral_client::profile_client(channel);
    let secs = |s| {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    };
    let mut next = tokio::time::Instant::now();
    while !stop.load(Relaxed) {
        let t = Instant::now();
        let r = query
            .query_traces(v1::QueryTracesRequest {
                service: TRIGGERED.into(),
                since: secs(3600),
                min_duration: secs(1),
                status_code_pattern: String::new(),
                limit: 20,
                profiled: false,
            })
            .await
            .map(drop);
        record(
            &stats,
            "query traces --service checkout --min-duration 1s",
            t,
            r,
        )
        .await;
        let t = Instant::now();
        let r = query
            .get_service_summary(v1::GetServiceSummaryRequest {
                service: TRIGGERED.into(),
                since: secs(60),
                slowest: None,
            })
            .await
            .map(drop);
        record(&stats, "GetServiceSummary checkout, last 1 min", t, r).await;
        let t = Instant::now();
        let r = profile
            .compare_trace_profiles(v1::CompareTraceProfilesRequest {
                service_id: TRIGGERED.into(),
                cohort_a_filter: "duration > 1s".into(),
                cohort_b_filter: "duration < 500ms".into(),
                time_range: secs(3600),
                ..Default::default()
            })
            .await
            .map(drop);
        record(&stats, "profile-compare checkout, last 1 h", t, r).await;
        next += QUERY_EVERY;
        tokio::time::sleep_until(next.max(tokio::time::Instant::now())).await;
    }
}

async fn record(
    stats: &Queries,
    name: &'static str,
    start: Instant,
    result: Result<(), tonic::Status>,
) {
    let took = start.elapsed();
    let mut s = stats.lock().await;
    let e = s.entry(name).or_default();
    match result {
        Ok(()) => e.times.push(took),
        Err(status) => {
            e.errors += 1;
            e.first_error
                .get_or_insert_with(|| format!("{:?}: {}", status.code(), status.message()));
        }
    }
}

/// Keeps one trigger active on [`TRIGGERED`] until `stop`: started with `coral profile
/// trace-trigger … --detach`, polled every 250 ms, started again when it ends.
async fn trigger_loop(
    coral: String,
    colony: String,
    stats: Arc<Mutex<Triggers>>,
    stop: Arc<AtomicBool>,
) {
    let fail = |stats: &mut Triggers, e: String| {
        stats.errors += 1;
        stats.first_error.get_or_insert(e);
    };
    let mut client = match coral_client::connect(&colony).await {
        Ok(c) => coral_client::profile_client(c),
        Err(e) => return fail(&mut *stats.lock().await, e.to_string()),
    };
    while !stop.load(Relaxed) {
        let started = Instant::now();
        let id =
            match crate::trigger::start_trigger(&coral, &colony, TRIGGERED, &TRIGGER_ARGS).await {
                Ok(id) => id,
                Err(e) => {
                    fail(&mut *stats.lock().await, format!("{e:#}"));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
        stats.lock().await.started += 1;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if stop.load(Relaxed) {
                // Leave nothing running: the last one is cancelled.
                if let Err(e) = crate::trigger::cancel_trigger(&coral, &colony, &id).await {
                    fail(&mut *stats.lock().await, format!("{e:#}"));
                }
                return;
            }
            match crate::trigger::get_trigger(&mut client, &id).await {
                Ok(t) if t.status == "active" => {}
                Ok(t) => {
                    let mut s = stats.lock().await;
                    if t.status == "completed" {
                        s.completed += 1;
                        s.times.push(started.elapsed());
                    } else {
                        s.other_ends += 1;
                    }
                    s.collected += u64::from(t.collected_requests);
                    // Agents send the baseline when the trigger ends: counted at the end.
                    drop(s);
                    let mut c = client.clone();
                    let (stats, id) = (stats.clone(), id.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        if let Ok(t) = crate::trigger::get_trigger(&mut c, &id).await {
                            stats.lock().await.baseline += u64::from(t.baseline_collected);
                        }
                    });
                    break;
                }
                Err(e) => fail(&mut *stats.lock().await, format!("{e:#}")),
            }
        }
    }
}

/// The services, their processes, and how often checkout's requests match.
#[derive(Clone, Copy)]
struct Plan {
    checkout_pid: i64,
    other_pid: i64,
    /// One checkout request in this many is slow (1.2 s) and fails with 503.
    match_every: u64,
}

impl Plan {
    fn new(rate: u64, checkout_pid: i64, other_pid: i64) -> Self {
        // Traces are 4.2 spans on average, and 40 % of them go through checkout.
        let checkouts_per_s = rate as f64 / MEAN_SPANS_PER_TRACE * 0.4;
        Self {
            checkout_pid,
            other_pid,
            match_every: (checkouts_per_s / MATCHES_PER_S).round().max(1.0) as u64,
        }
    }
}

/// Shapes: checkout (5 spans, 40 %), browse (4 spans, 40 %), cart (3 spans, 20 %).
const MEAN_SPANS_PER_TRACE: f64 = 0.4 * 5.0 + 0.4 * 4.0 + 0.2 * 3.0;

const CART: &str = "cart";

/// Makes traces, and export requests of them grouped per service (one SDK per
/// service process, each exporting its own batches).
struct Generator {
    plan: Plan,
    run: u32,
    traces: u64,
    spans: u64,
    checkouts: u64,
}

/// One span under construction.
struct Made {
    service: &'static str,
    span: Span,
}

impl Generator {
    fn new(plan: Plan, run: u32) -> Self {
        Self {
            plan,
            run,
            traces: 0,
            spans: 0,
            checkouts: 0,
        }
    }

    /// At least `spans` spans (whole traces), as export requests.
    fn tick(&mut self, rng: &mut Rng, spans: u64) -> Vec<ExportTraceServiceRequest> {
        let target = self.spans + spans;
        let mut by_service: BTreeMap<&'static str, Vec<Span>> = BTreeMap::new();
        while self.spans < target {
            for made in self.trace(rng) {
                by_service.entry(made.service).or_default().push(made.span);
                self.spans += 1;
            }
        }
        let mut out = Vec::new();
        for (service, spans) in by_service {
            let pid = if service == TRIGGERED {
                self.plan.checkout_pid
            } else {
                self.plan.other_pid
            };
            let mut spans = spans;
            while !spans.is_empty() {
                let rest = spans.split_off(spans.len().min(MAX_PER_REQUEST));
                out.push(request(service, pid, std::mem::replace(&mut spans, rest)));
            }
        }
        out
    }

    /// One trace, its root ending now.
    fn trace(&mut self, rng: &mut Rng) -> Vec<Made> {
        let n = self.traces;
        self.traces += 1;
        let trace_id = workload::trace_id(self.run, n).to_vec();
        let now = workload::now_ns() as u64;
        let shape = rng.below(10);
        let mut spans = Vec::with_capacity(5);
        // Durations: 20–300 ms; 1 in 100 slow (1–3 s); 1 in 200 fails fast with a 500.
        let mut duration = 20_000_000 + rng.below(280) as u64 * 1_000_000;
        let mut status = 200;
        if rng.below(100) == 0 {
            duration = 1_000_000_000 + rng.below(2000) as u64 * 1_000_000;
        } else if rng.below(200) == 0 {
            status = 500;
        }
        let thread = |rng: &mut Rng| 1000 + rng.below(16) as i64;
        let mut next_span = 1u64;
        let mut span_id = || {
            let id = next_span;
            next_span += 1;
            id.to_be_bytes().to_vec()
        };
        let root_start = now - duration;
        if shape < 4 {
            // frontend → checkout → payment, inventory
            self.checkouts += 1;
            let planted = self.checkouts.is_multiple_of(self.plan.match_every);
            if planted {
                duration = 1_200_000_000;
                status = 503;
            } else if status == 500 || duration >= 1_000_000_000 {
                // Only planted requests match the trigger (slow and 5xx): known rate.
                status = if duration >= 1_000_000_000 { 200 } else { 500 };
            }
            let root_start = now - duration - 2_000_000;
            let root = span_id();
            let client = span_id();
            let co = span_id();
            let pay = span_id();
            let inv = span_id();
            let co_start = root_start + 1_000_000;
            spans.push(server(
                "frontend",
                &trace_id,
                &root,
                None,
                "POST /api/checkout",
                "/api/checkout",
                root_start,
                duration + 2_000_000,
                status,
                thread(rng),
            ));
            spans.push(client_span(
                "frontend",
                &trace_id,
                &client,
                &root,
                "POST checkout",
                "http://checkout:8080/checkout",
                co_start,
                duration,
                status,
            ));
            spans.push(server(
                TRIGGERED,
                &trace_id,
                &co,
                Some(&client),
                "POST /checkout",
                "/checkout",
                co_start,
                duration,
                status,
                thread(rng),
            ));
            spans.push(server(
                "payment",
                &trace_id,
                &pay,
                Some(&co),
                "POST /charge",
                "/charge",
                co_start + duration / 10,
                duration / 2,
                if status >= 500 { 503 } else { 200 },
                thread(rng),
            ));
            spans.push(server(
                "inventory",
                &trace_id,
                &inv,
                Some(&co),
                "GET /stock/{sku}",
                "/stock/{sku}",
                co_start + duration / 10 * 6,
                duration / 5,
                200,
                thread(rng),
            ));
        } else if shape < 8 {
            // frontend → catalog (+ a database call)
            let root = span_id();
            let client = span_id();
            let cat = span_id();
            let db = span_id();
            spans.push(server(
                "frontend",
                &trace_id,
                &root,
                None,
                "GET /api/products",
                "/api/products",
                root_start,
                duration,
                status,
                thread(rng),
            ));
            spans.push(client_span(
                "frontend",
                &trace_id,
                &client,
                &root,
                "GET catalog",
                "http://catalog:8080/products",
                root_start + 500_000,
                duration - 1_000_000,
                status,
            ));
            spans.push(server(
                "catalog",
                &trace_id,
                &cat,
                Some(&client),
                "GET /products",
                "/products",
                root_start + 600_000,
                duration - 1_200_000,
                status,
                thread(rng),
            ));
            let mut q = internal(
                "catalog",
                &trace_id,
                &db,
                &cat,
                "SELECT products",
                root_start + 1_000_000,
                duration / 2,
            );
            q.span.attributes.extend([
                kv("db.system", Value::StringValue("postgresql".into())),
                kv(
                    "db.query.text",
                    Value::StringValue(
                        "SELECT id, name, price FROM products WHERE tag = $1".into(),
                    ),
                ),
            ]);
            spans.push(q);
        } else {
            // cart alone
            let root = span_id();
            let work = span_id();
            let redis = span_id();
            spans.push(server(
                CART,
                &trace_id,
                &root,
                None,
                "GET /cart",
                "/cart",
                root_start,
                duration,
                status,
                thread(rng),
            ));
            spans.push(internal(
                CART,
                &trace_id,
                &work,
                &root,
                "load cart",
                root_start + 100_000,
                duration / 2,
            ));
            let mut r = internal(
                CART,
                &trace_id,
                &redis,
                &work,
                "HGETALL",
                root_start + 200_000,
                duration / 4,
            );
            r.span.kind = 3;
            r.span
                .attributes
                .push(kv("db.system", Value::StringValue("redis".into())));
            spans.push(r);
        }
        spans
    }
}

fn span_status(http: i64) -> Option<Status> {
    (http >= 500).then(|| Status {
        message: format!("HTTP {http}"),
        code: status::StatusCode::Error as i32,
    })
}

#[allow(clippy::too_many_arguments)]
fn server(
    service: &'static str,
    trace_id: &[u8],
    span_id: &[u8],
    parent: Option<&[u8]>,
    name: &str,
    route: &str,
    start: u64,
    duration: u64,
    http: i64,
    thread: i64,
) -> Made {
    Made {
        service,
        span: Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: parent.map(<[u8]>::to_vec).unwrap_or_default(),
            name: name.into(),
            kind: 2,
            start_time_unix_nano: start,
            end_time_unix_nano: start + duration,
            attributes: vec![
                kv(
                    "http.request.method",
                    Value::StringValue(name.split(' ').next().unwrap_or("GET").into()),
                ),
                kv("http.route", Value::StringValue(route.into())),
                kv("url.path", Value::StringValue(route.replace("{sku}", "42"))),
                kv("url.scheme", Value::StringValue("http".into())),
                kv("http.response.status_code", Value::IntValue(http)),
                kv("server.address", Value::StringValue(service.into())),
                kv("network.protocol.version", Value::StringValue("1.1".into())),
                kv(
                    "user_agent.original",
                    Value::StringValue("Mozilla/5.0 (X11; Linux x86_64)".into()),
                ),
                kv("thread.id", Value::IntValue(thread)),
            ],
            status: span_status(http),
            ..Default::default()
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn client_span(
    service: &'static str,
    trace_id: &[u8],
    span_id: &[u8],
    parent: &[u8],
    name: &str,
    url: &str,
    start: u64,
    duration: u64,
    http: i64,
) -> Made {
    Made {
        service,
        span: Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: parent.to_vec(),
            name: name.into(),
            kind: 3,
            start_time_unix_nano: start,
            end_time_unix_nano: start + duration,
            attributes: vec![
                kv(
                    "http.request.method",
                    Value::StringValue(name.split(' ').next().unwrap_or("GET").into()),
                ),
                kv("url.full", Value::StringValue(url.into())),
                kv("http.response.status_code", Value::IntValue(http)),
            ],
            status: span_status(http),
            ..Default::default()
        },
    }
}

fn internal(
    service: &'static str,
    trace_id: &[u8],
    span_id: &[u8],
    parent: &[u8],
    name: &str,
    start: u64,
    duration: u64,
) -> Made {
    Made {
        service,
        span: Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: parent.to_vec(),
            name: name.into(),
            kind: 1,
            start_time_unix_nano: start,
            end_time_unix_nano: start + duration,
            ..Default::default()
        },
    }
}

/// One service's batch, as its SDK would export it.
fn request(service: &str, pid: i64, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue(service.into())),
                    kv("service.version", Value::StringValue("1.4.2".into())),
                    kv("process.pid", Value::IntValue(pid)),
                    kv("host.name", Value::StringValue("load-node".into())),
                    kv("telemetry.sdk.language", Value::StringValue("rust".into())),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The agent's Prometheus metrics (`--metrics`), by name (unlabelled samples).
async fn agent_metrics(addr: &str) -> Result<BTreeMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
        .await?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await?;
    let (_, body) = body.split_once("\r\n\r\n").context("no HTTP body")?;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect())
}

/// Spans stored, and distinct (trace id, span id) among them.
async fn stored_spans(db: &Database) -> Result<(i64, i64)> {
    let stored = db.count_spans().await?;
    let distinct = db.count_distinct_span_keys().await?;
    Ok((stored, distinct))
}

fn rss_kib(pid: u32) -> Result<u64> {
    crate::agent_memory::status_kib(pid, "VmRSS")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The `q` quantile (nearest rank); zero when there is none.
fn percentile(mut v: Vec<Duration>, q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Least-squares slope of (x, y).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// RSS over the run: before, at 1 min, at the end, and the fit after warm-up.
struct Memory<'a> {
    readings: &'a [Reading],
    before: (u64, u64),
    end: (u64, u64),
    warm_up: Duration,
}

impl<'a> Memory<'a> {
    fn new(readings: &'a [Reading], before: (u64, u64), end: (u64, u64), seconds: u64) -> Self {
        Self {
            readings,
            before,
            end,
            warm_up: WARM_UP.min(Duration::from_secs(seconds / 2)),
        }
    }

    fn at(&self, t: Duration) -> Option<Reading> {
        self.readings.iter().find(|r| r.at >= t).copied()
    }

    fn rows(&self, row: &impl Fn(&str, String)) {
        let one_min = self.at(Duration::from_secs(60));
        for (name, pick, before, end) in [
            (
                "agent",
                (|r: &Reading| r.agent) as fn(&Reading) -> u64,
                self.before.0,
                self.end.0,
            ),
            ("colony", |r: &Reading| r.colony, self.before.1, self.end.1),
        ] {
            let fit: Vec<(f64, f64)> = self
                .readings
                .iter()
                .filter(|r| r.at >= self.warm_up)
                .map(|r| (r.at.as_secs_f64() / 60.0, mib(pick(r))))
                .collect();
            let per_min = slope(&fit);
            let minutes = fit.last().map_or(0.0, |l| l.0) - fit.first().map_or(0.0, |f| f.0);
            let growth = per_min * minutes;
            let start = fit.first().map_or(0.0, |f| f.1);
            let bound = (FLAT_SHARE * start).max(FLAT_MIB);
            let verdict = if growth <= bound { "flat" } else { "GROWING" };
            row(
                &format!(
                    "{name} RSS: before load / 1 min / end / slope after {:.0} s",
                    self.warm_up.as_secs_f64()
                ),
                format!(
                    "{:.1} / {} / {:.1} MiB / **{per_min:+.2} MiB/min** (fitted growth {growth:+.1} MiB over {minutes:.1} min, bound {bound:.1} MiB): **{verdict}**",
                    mib(before),
                    one_min.map_or("–".into(), |r| format!("{:.1}", mib(pick(&r)))),
                    mib(end),
                ),
            );
        }
    }

    /// The readings every minute (every 10 s for short runs).
    fn series(&self) {
        let every = if self.readings.len() > 24 { 12 } else { 2 };
        println!("| time | agent VmRSS | colony VmRSS |");
        println!("|---|---|---|");
        for r in self.readings.iter().skip(every - 1).step_by(every) {
            println!(
                "| {:.0} s | {:.1} MiB | {:.1} MiB |",
                r.at.as_secs_f64(),
                mib(r.agent),
                mib(r.colony)
            );
        }
    }
}
