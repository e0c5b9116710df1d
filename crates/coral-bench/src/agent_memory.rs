//! The agent's memory while it profiles a busy service: a colony process, an agent
//! process and a service burning CPU on 2 threads, ~50 requests/s with a server span per
//! request, then `ProfileCpu` of that service at 99 Hz for `--minutes N` (default 10, at
//! most 10: the longest profile; `CORAL_BENCH_MEMORY_SECS` sets seconds instead),
//! reading the agent's VmRSS every 10 s. The service is, with `--workload nofp` (the
//! default), the C program of [`crate::nofp`] (no frame pointers: the agent copies and
//! unwinds every stack), its spans sent by this process on its behalf (its pid and
//! thread ids); with `--workload busy-service`, `coral-bench busy-service`.

use crate::workload::{self, Database, Processes};
use anyhow::{Context, Result};
use coral_client::v1;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FREQUENCY_HZ: u32 = 99;
const RATE: u32 = 50;
const POLL: Duration = Duration::from_secs(10);
/// The service name of the no-frame-pointer workload's spans.
const NOFP_SERVICE: &str = "nofp-svc";

/// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
pub(crate) fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// VmRSS, and its anonymous and file-backed parts (file pages, e.g. the binaries the
/// symbolizer maps, are shared and reclaimable), in KiB.
#[derive(Debug, Clone, Copy)]
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
}

impl Rss {
    fn read(pid: u32) -> Result<Self> {
        Ok(Self {
            total: status_kib(pid, "VmRSS")?,
            anon: status_kib(pid, "RssAnon")?,
            file: status_kib(pid, "RssFile")?,
        })
    }

    fn row(&self, when: &str) -> String {
        format!(
            "| {when} | {:.1} MiB | {:.1} MiB | {:.1} MiB |",
            mib(self.total),
            mib(self.anon),
            mib(self.file)
        )
    }
}

pub async fn run(coral: &str, postgres: Option<&str>, args: &[String]) -> Result<()> {
    let mut minutes = 10u64;
    let mut nofp = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--minutes" => minutes = value()?.parse().context("--minutes: a number")?,
            "--workload" => {
                nofp = match value()?.as_str() {
                    "nofp" => true,
                    "busy-service" => false,
                    other => anyhow::bail!("--workload: nofp or busy-service, not {other}"),
                }
            }
            other => anyhow::bail!("agent-memory: unknown option {other}"),
        }
    }
    let secs: u64 = match std::env::var("CORAL_BENCH_MEMORY_SECS") {
        Ok(v) => v
            .parse()
            .context("CORAL_BENCH_MEMORY_SECS: a number of seconds")?,
        Err(_) => minutes * 60,
    };
    anyhow::ensure!(
        (1..=600).contains(&secs),
        "the session lasts 1 s to 10 minutes (the longest profile)"
    );
    let service = if nofp {
        NOFP_SERVICE
    } else {
        crate::busy::BUSY_SERVICE
    };
    println!();
    println!(
        "## agent-memory: agent RSS while `ProfileCpu` samples {} (2 busy threads, ~{RATE} requests/s, a span each) at {FREQUENCY_HZ} Hz for {secs} s",
        if nofp {
            "a C service built with `-O2 -fomit-frame-pointer` (the agent unwinds its copied stacks)"
        } else {
            "`coral-bench busy-service`"
        }
    );

    let db = Database::fresh(postgres).await?;
    let mut procs = Processes::default();
    let colony = workload::start_colony(coral, &db, &mut procs).await?;
    let (otlp, agent_pid) = workload::start_agent(coral, &colony, &mut procs)?;
    let nofp_binary = if nofp {
        Some(crate::nofp::NoFpWorkload::build()?)
    } else {
        None
    };
    let busy = match &nofp_binary {
        Some(w) => {
            let mut child = w
                .command(0.0)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start the no-frame-pointer workload")?;
            child
                .stdin
                .take()
                .context("workload stdin")?
                .write_all(b"go\n")?;
            child
        }
        None => Command::new(std::env::current_exe()?)
            .args(["busy-service", "--otlp", &otlp, "--rate", &RATE.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start `coral-bench busy-service`")?,
    };
    let busy_pid = busy.id();
    procs.children.push(busy);
    let feeder = if nofp {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Some(tokio::spawn(feed_spans(otlp.clone(), busy_pid)))
    } else {
        None
    };

    workload::wait_for_service(&colony, service).await?;
    // Let the agent settle with spans flowing before taking the baseline.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let baseline = Rss::read(agent_pid)?;

    let mut profiles = coral_client::profile_client(coral_client::connect(&colony).await?);
    let request = v1::ProfileCpuRequest {
        service: service.into(),
        duration: Some(prost_types::Duration {
            seconds: secs as i64,
            nanos: 0,
        }),
        frequency_hz: FREQUENCY_HZ,
    };
    let session_start = Instant::now();
    let busy_cpu_before = workload::process_cpu(busy_pid)?;
    let mut call = tokio::spawn(async move { profiles.profile_cpu(request).await });
    let mut readings: Vec<(Duration, Rss)> = Vec::new();
    let mut next = tokio::time::Instant::now() + POLL;
    let response = loop {
        tokio::select! {
            r = &mut call => break r??.into_inner(),
            _ = tokio::time::sleep_until(next) => {
                readings.push((session_start.elapsed(), Rss::read(agent_pid)?));
                next += POLL;
            }
        }
    };
    let after = Rss::read(agent_pid)?;
    // What the session could have sampled: the service's CPU time × the frequency.
    let expected_samples = (workload::process_cpu(busy_pid)? - busy_cpu_before).as_secs_f64()
        * f64::from(FREQUENCY_HZ);
    let ended = session_start.elapsed();
    let peak = status_kib(agent_pid, "VmHWM")?;
    // Request profiles may still be on their way (the agent holds requests ≤ 2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let request_profiles = db.count_rows("trace_profiles").await?;
    let samples: u64 = response.agents.iter().map(|a| a.samples).sum();
    let processes: u32 = response.agents.iter().map(|a| a.processes).sum();

    // Every minute, or every 10 s for short runs.
    let every = if secs >= 120 { 6 } else { 1 };
    println!("| time since the session started | agent VmRSS | anonymous | file-backed |");
    println!("|---|---|---|---|");
    println!("{}", baseline.row("before (baseline)"));
    for (i, (at, rss)) in readings.iter().enumerate() {
        if (i + 1) % every == 0 {
            println!("{}", rss.row(&format!("{:.0} s", at.as_secs_f64())));
        }
    }
    println!(
        "{}",
        after.row(&format!("answer received ({:.0} s)", ended.as_secs_f64()))
    );
    println!();
    let max = readings
        .iter()
        .map(|r| r.1.total)
        .max()
        .unwrap_or(after.total)
        .max(after.total);
    let max_anon = readings
        .iter()
        .map(|r| r.1.anon)
        .max()
        .unwrap_or(after.anon)
        .max(after.anon);
    println!(
        "| agent RSS before (baseline) | max RSS during the session (10 s reads) | max anonymous | peak RSS (VmHWM) | max/baseline | processes sampled | samples in the session profile | samples expected (busy-service CPU × {FREQUENCY_HZ} Hz) | request profiles stored |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} | {processes} | {samples} | {expected_samples:.0} | {request_profiles} |",
        mib(baseline.total),
        mib(max),
        mib(max_anon),
        mib(peak),
        max as f64 / baseline.total as f64
    );
    // Flat or growing: least-squares slope of the 10 s reads, over the whole session and
    // over its second half (after the caches filled).
    let points: Vec<(f64, f64)> = readings
        .iter()
        .map(|(at, rss)| (at.as_secs_f64() / 60.0, mib(rss.total)))
        .collect();
    let half = &points[points.len() / 2..];
    let start = readings.first().map_or(baseline, |r| r.1);
    println!();
    println!(
        "| RSS at the first read (10 s) | at the answer | max | slope over the session | slope over its second half |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {:.1} MiB | {:.1} MiB | {:.1} MiB | {} | {} |",
        mib(start.total),
        mib(after.total),
        mib(max),
        slope(&points).map_or("n/a".into(), |s| format!("{s:+.3} MiB/min")),
        slope(half).map_or("n/a".into(), |s| format!("{s:+.3} MiB/min"))
    );
    for w in &response.warnings {
        println!("warning: {w}");
    }
    if let Some(feeder) = feeder {
        feeder.abort();
    }
    Ok(())
}

/// Least-squares slope of (x, y) points; `None` for fewer than 2 distinct x.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    (points.len() >= 2 && sxx > 0.0).then(|| sxy / sxx)
}

/// Server spans of the no-frame-pointer workload, sent on its behalf (it does not speak
/// OTLP): every 200 ms, for each of its worker threads, back-to-back requests covering
/// the last 200 ms, ~[`RATE`] per second in total, until aborted.
async fn feed_spans(otlp: String, pid: u32) -> Result<()> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    const BATCH: Duration = Duration::from_millis(200);
    let workers: Vec<i64> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&tid: &i64| tid != i64::from(pid))
        .collect();
    anyhow::ensure!(!workers.is_empty(), "the workload has no worker threads");
    let per_thread = ((RATE as f64 * BATCH.as_secs_f64()) / workers.len() as f64).max(1.0) as u64;
    let resource = Resource {
        attributes: vec![
            workload::kv("service.name", Value::StringValue(NOFP_SERVICE.into())),
            workload::kv("process.pid", Value::IntValue(i64::from(pid))),
        ],
        ..Default::default()
    };
    let mut client = workload::otlp_client(&otlp).await;
    let mut batch_start = workload::now_ns() as u64;
    let mut n = 0u64;
    loop {
        tokio::time::sleep(BATCH).await;
        let end = workload::now_ns() as u64;
        let each = (end - batch_start) / per_thread;
        let mut spans = Vec::new();
        for &tid in &workers {
            for i in 0..per_thread {
                n += 1;
                let start = batch_start + i * each;
                let mut trace_id = [0u8; 16];
                trace_id[..4].copy_from_slice(&pid.to_be_bytes());
                trace_id[8..].copy_from_slice(&n.to_be_bytes());
                spans.push(Span {
                    trace_id: trace_id.to_vec(),
                    span_id: n.to_be_bytes().to_vec(),
                    name: "GET /work".into(),
                    kind: 2,
                    start_time_unix_nano: start,
                    end_time_unix_nano: start + each,
                    attributes: vec![
                        workload::kv("http.route", Value::StringValue("/work".into())),
                        workload::kv("http.request.method", Value::StringValue("GET".into())),
                        workload::kv("http.response.status_code", Value::IntValue(200)),
                        workload::kv("thread.id", Value::IntValue(tid)),
                    ],
                    ..Default::default()
                });
            }
        }
        batch_start = end;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        // A failed batch is dropped, as an SDK beyond its queue.
        let _ = client.export(request).await;
    }
}
