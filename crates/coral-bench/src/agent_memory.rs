//! The agent's memory while it profiles a busy service: a colony process, an agent
//! process and `coral-bench busy-service` (2 threads burning CPU, ~50 requests/s, a
//! server span per request), then `ProfileCpu` of that service at 99 Hz for 10 minutes
//! (`CORAL_BENCH_MEMORY_SECS` shortens it), reading the agent's VmRSS every 10 s.

use crate::workload::{self, Database, Processes};
use anyhow::{Context, Result};
use coral_client::v1;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FREQUENCY_HZ: u32 = 99;
const RATE: u32 = 50;
const POLL: Duration = Duration::from_secs(10);

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

pub async fn run(coral: &str, postgres: Option<&str>) -> Result<()> {
    let secs: u64 = match std::env::var("CORAL_BENCH_MEMORY_SECS") {
        Ok(v) => v
            .parse()
            .context("CORAL_BENCH_MEMORY_SECS: a number of seconds")?,
        Err(_) => 600,
    };
    anyhow::ensure!(
        (1..=600).contains(&secs),
        "CORAL_BENCH_MEMORY_SECS must be between 1 and 600 (the longest profile)"
    );
    println!();
    println!(
        "## agent-memory: agent RSS while `ProfileCpu` samples busy-service (2 busy threads, ~{RATE} requests/s, a span each) at {FREQUENCY_HZ} Hz for {secs} s"
    );

    let db = Database::fresh(postgres).await?;
    let mut procs = Processes::default();
    let colony = workload::start_colony(coral, &db, &mut procs).await?;
    let (otlp, agent_pid) = workload::start_agent(coral, &colony, &mut procs)?;
    let busy = Command::new(std::env::current_exe()?)
        .args(["busy-service", "--otlp", &otlp, "--rate", &RATE.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start `coral-bench busy-service`")?;
    let busy_pid = busy.id();
    procs.children.push(busy);

    workload::wait_for_service(&colony, crate::busy::BUSY_SERVICE).await?;
    // Let the agent settle with spans flowing before taking the baseline.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let baseline = Rss::read(agent_pid)?;

    let mut profiles = coral_client::profile_client(coral_client::connect(&colony).await?);
    let request = v1::ProfileCpuRequest {
        service: crate::busy::BUSY_SERVICE.into(),
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
    for w in &response.warnings {
        println!("warning: {w}");
    }
    Ok(())
}
