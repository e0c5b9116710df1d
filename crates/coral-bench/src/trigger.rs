//! Trace-triggered profiling (RFD 080): what a trigger costs, and how soon it shows a
//! request it collected. Colony and agent are child processes of the real `coral`
//! binary; triggers are started and cancelled with `coral profile trace-trigger` and
//! `coral profile trigger-cancel`.
//!
//! 1. Perf events: those the agent process holds (perf_event fds, or BPF links of type
//!    perf) while a busy service's spans flow in, with no trigger yet, with an active
//!    one, after its cancellation, and (part 4) after one completed.
//! 2. Throughput: `busy-service --saturate` (2 threads serving back-to-back requests of
//!    ~1 ms of CPU, spans to the agent) in alternating rounds without and with an
//!    active trigger at 99 Hz that never matches; each "on" round is compared with the
//!    "off" rounds around it, as in overhead.rs.
//! 3. Matching: `RequestCriteria::matches` over 1M request facts on one thread, beside
//!    a duration comparison alone; and in situ, span ingest through an agent process
//!    with and without an active trigger on the spans' service, with the CPU its
//!    profiler thread (where request spans are deduplicated, recorded and matched)
//!    used.
//! 4. Latency: a matching span exported to the agent, until its trace id is in
//!    `GetTraceProfileTrigger`'s `collected`, beside that RPC's round trip alone.

use crate::busy::BUSY_SERVICE;
use crate::ingest::{PER_REQUEST, SENDERS, pump};
use crate::workload::{self, Database, Processes, Rng, kv, median, percentiles};
use anyhow::{Context, Result, bail};
use coral_analysis::{RequestCriteria, RequestFacts};
use coral_client::v1;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const FREQUENCY_HZ: &str = "99";
/// The criteria of parts 3 and 4, as `coral profile trace-trigger` takes them.
const CRITERIA: [&str; 6] = [
    "--min-duration",
    "1s",
    "--status-code",
    "5xx",
    "--url",
    "/checkout*",
];
/// CPU per request of the saturated service: about 2,000 requests/s on 2 threads.
const WORK_MS: &str = "1";
/// Alternating throughput rounds, off first and last; `CORAL_BENCH_TRIGGER_ROUNDS`
/// changes it.
const DEFAULT_ROUNDS: usize = 11;
const ROUND: Duration = Duration::from_secs(4);
/// Most CPU other work may use (share of the machine) in an "on" round and the "off"
/// rounds around it for the comparison to count as undisturbed.
const QUIET: f64 = 0.05;
/// After the perf events are attached, before an "on" round is measured.
const SETTLE: Duration = Duration::from_millis(500);
const FACTS: usize = 1_000_000;
const PASSES: usize = 5;
/// Spans sent through the agent per in-situ run, after a warm-up batch.
const IN_SITU_SPANS: u64 = 200_000;
/// In-situ spans end over this window before they are made: each process then has a
/// few hundred requests in flight.
const IN_SITU_WINDOW: Duration = Duration::from_secs(2);
const IN_SITU_SERVICE: &str = "bench-svc";
/// Matching spans sent one at a time in the latency part (= the trigger's count).
const LATENCY_SPANS: u64 = 20;
const LATENCY_SERVICE: &str = "checkout-svc";
const POLL: Duration = Duration::from_millis(5);
const RPC_RUNS: usize = 200;

pub async fn run(coral: &str, postgres: Option<&str>) -> Result<()> {
    println!();
    println!("## trigger: trace-triggered profiling (RFD 080)");
    matching_micro()?;
    // The rest samples for real.
    if let Err(e) = coral_sampler::EbpfSampler::new(coral_sampler::SamplerConfig::default()) {
        println!();
        println!(
            "Skipped (perf events, throughput, in-situ matching, latency): the eBPF sampler cannot load here ({e})."
        );
        return Ok(());
    }
    cost(coral).await?;
    matching_in_situ(coral, postgres).await?;
    latency(coral, postgres).await
}

/// The agent's perf events (one per CPU while it samples) and other eBPF objects
/// (program, maps: loaded when the first trigger needs the sampler).
#[derive(Debug, Clone, Copy)]
struct Fds {
    perf: usize,
    bpf: usize,
}

/// Counts `pid`'s perf events: `anon_inode:[perf_event]` fds, and BPF links of type
/// perf (newer kernels attach the program through a link, which then holds the perf
/// event, and aya closes the event's own fd).
fn fds(pid: u32) -> Result<Fds> {
    let mut fds = Fds { perf: 0, bpf: 0 };
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("process {pid} is gone"))?;
    for entry in dir {
        let entry = entry?;
        // An fd closed since the listing has no link any more.
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let perf_link = || {
            std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                entry.file_name().to_string_lossy()
            ))
            .is_ok_and(|info| {
                info.lines()
                    .any(|l| l.split_whitespace().eq(["link_type:", "perf"]))
            })
        };
        if target == "anon_inode:[perf_event]" || (target == "anon_inode:bpf_link" && perf_link()) {
            fds.perf += 1;
        } else if target.starts_with("anon_inode:bpf") {
            fds.bpf += 1;
        }
    }
    Ok(fds)
}

/// Waits until the agent has perf events open (`attached`) or none; returns how long
/// that took.
async fn wait_perf(pid: u32, attached: bool) -> Result<Duration> {
    let start = Instant::now();
    while (fds(pid)?.perf > 0) != attached {
        if start.elapsed() > Duration::from_secs(10) {
            bail!(
                "the agent's perf events were not {} within 10 s",
                if attached { "attached" } else { "closed" }
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(start.elapsed())
}

/// `/proc` times in clock ticks (USER_HZ) as a duration.
fn ticks(n: u64) -> Result<Duration> {
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
        .filter(|&t| t > 0)
        .unwrap_or(100);
    Ok(Duration::from_secs_f64(n as f64 / per_second as f64))
}

/// CPU time of the agent's profiler thread (`coral-profiler`), in 10 ms ticks: this
/// kernel has no per-thread schedstat, and thread CPU clocks are per process.
fn profiler_cpu(agent: u32) -> Result<Duration> {
    for task in std::fs::read_dir(format!("/proc/{agent}/task"))? {
        let task = task?.path();
        if std::fs::read_to_string(task.join("comm")).is_ok_and(|c| c.trim() == "coral-profiler") {
            let stat = std::fs::read_to_string(task.join("stat"))?;
            // utime and stime: fields 14 and 15, the 12th and 13th after the name.
            let used = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .skip(11)
                .take(2)
                .map(|f| f.parse::<u64>().unwrap_or(0))
                .sum();
            return ticks(used);
        }
    }
    bail!("the agent has no coral-profiler thread")
}

/// Busy time of the whole machine so far, summed over CPUs (everything but idle and
/// I/O wait, steal included), from /proc/stat.
fn machine_busy() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .context("empty /proc/stat")?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    ticks(cpu.iter().sum::<u64>() - cpu.get(3).unwrap_or(&0) - cpu.get(4).unwrap_or(&0))
}

/// Runs `coral <args>`; returns its standard output.
pub(crate) async fn coral_cli(coral: &str, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(coral)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .with_context(|| format!("cannot run {coral}"))?;
    if !out.status.success() {
        bail!(
            "`coral {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `coral profile trace-trigger --service S <args> --detach --output json`: the id.
pub(crate) async fn start_trigger(
    coral: &str,
    colony: &str,
    service: &str,
    args: &[&str],
) -> Result<String> {
    let mut all = vec![
        "profile",
        "trace-trigger",
        "--colony",
        colony,
        "--service",
        service,
        "--frequency",
        FREQUENCY_HZ,
        "--detach",
        "--output",
        "json",
    ];
    all.extend(args);
    let out = coral_cli(coral, &all).await?;
    let json: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("unexpected output of trace-trigger: {out:?}"))?;
    json["trigger_id"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no trigger_id in {out:?}"))
}

pub(crate) async fn cancel_trigger(coral: &str, colony: &str, id: &str) -> Result<()> {
    let args = [
        "profile",
        "trigger-cancel",
        "--colony",
        colony,
        id,
        "--output",
        "json",
    ];
    coral_cli(coral, &args).await.map(drop)
}

/// `busy-service --saturate`, asked how many requests it has completed.
struct Service {
    pid: u32,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Service {
    fn start(otlp: &str, procs: &mut Processes) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["busy-service", "--otlp", otlp, "--work-ms", WORK_MS])
            .arg("--saturate")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start `coral-bench busy-service`")?;
        let service = Self {
            pid: child.id(),
            stdin: child.stdin.take().context("child stdin")?,
            stdout: BufReader::new(child.stdout.take().context("child stdout")?),
        };
        procs.children.push(child);
        Ok(service)
    }

    /// Requests completed so far, and the service's clock.
    fn completed(&mut self) -> Result<(u64, Duration)> {
        self.stdin.write_all(b"\n")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let mut fields = line.split_whitespace().map(str::parse::<u64>);
        match (fields.next(), fields.next()) {
            (Some(Ok(done)), Some(Ok(ns))) => Ok((done, Duration::from_nanos(ns))),
            _ => bail!("unexpected answer of busy-service: {line:?}"),
        }
    }
}

/// One throughput round.
struct Round {
    on: bool,
    /// Requests completed per second.
    rate: f64,
    /// CPU used, as shares of all cores: the service, the agent, the colony, and the
    /// rest of the machine (other processes, and time the hypervisor took).
    service: f64,
    agent: f64,
    colony: f64,
    rest: f64,
    fds: Fds,
}

impl Round {
    /// Requests per CPU-second the service got: its speed while it runs.
    fn per_cpu_second(&self) -> f64 {
        self.rate / (self.service * cores())
    }
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Parts 1 and 2: perf events and throughput, on the embedded store.
async fn cost(coral: &str) -> Result<()> {
    let rounds_count = match std::env::var("CORAL_BENCH_TRIGGER_ROUNDS") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| n % 2 == 1 && *n >= 3)
            .context("CORAL_BENCH_TRIGGER_ROUNDS: an odd number, at least 3")?,
        Err(_) => DEFAULT_ROUNDS,
    };
    let db = Database::fresh(None).await?;
    let mut procs = Processes::default();
    let colony = workload::start_colony(coral, &db, &mut procs).await?;
    // The child start_colony just added.
    let colony_pid = procs.children.last().context("no colony process")?.id();
    let (otlp, agent) = workload::start_agent(coral, &colony, &mut procs)?;
    let mut service = Service::start(&otlp, &mut procs)?;
    workload::wait_for_service(&colony, BUSY_SERVICE).await?;
    // Past the first exports (connections, tables) before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let never_args = ["--min-duration", "10s", "--timeout", "10m"];
    let (mut attach, mut detach) = (Vec::new(), Vec::new());
    let mut rounds = Vec::new();
    for r in 0..rounds_count {
        let on = r % 2 == 1;
        let trigger = if on {
            let asked = Instant::now();
            let id = start_trigger(coral, &colony, BUSY_SERVICE, &never_args).await?;
            wait_perf(agent, true).await?;
            attach.push(asked.elapsed());
            tokio::time::sleep(SETTLE).await;
            Some(id)
        } else {
            None
        };
        let fds_during = fds(agent)?;
        let cpu = workload::process_cpu;
        let before = [
            cpu(service.pid)?,
            cpu(agent)?,
            cpu(colony_pid)?,
            machine_busy()?,
        ];
        let (done, clock) = service.completed()?;
        tokio::time::sleep(ROUND).await;
        let (done_after, clock_after) = service.completed()?;
        let after = [
            cpu(service.pid)?,
            cpu(agent)?,
            cpu(colony_pid)?,
            machine_busy()?,
        ];
        let elapsed = (clock_after - clock).as_secs_f64();
        let [service_cpu, agent_cpu, colony_cpu, busy] =
            std::array::from_fn(|i| (after[i] - before[i]).as_secs_f64() / (elapsed * cores()));
        rounds.push(Round {
            on,
            rate: (done_after - done) as f64 / elapsed,
            service: service_cpu,
            agent: agent_cpu,
            colony: colony_cpu,
            rest: busy - service_cpu - agent_cpu - colony_cpu,
            fds: fds_during,
        });
        if let Some(id) = trigger {
            let asked = Instant::now();
            cancel_trigger(coral, &colony, &id).await?;
            wait_perf(agent, false).await?;
            detach.push(asked.elapsed());
        }
    }
    let after = fds(agent)?;

    let of = |on: bool, value: fn(&Round) -> f64| {
        median(
            &rounds
                .iter()
                .filter(|r| r.on == on)
                .map(value)
                .collect::<Vec<_>>(),
        )
    };
    let range = |values: Vec<usize>| {
        let (min, max) = (values.iter().min(), values.iter().max());
        match (min, max) {
            (Some(a), Some(b)) if a == b => a.to_string(),
            (Some(a), Some(b)) => format!("{a}–{b}"),
            _ => String::new(),
        }
    };
    let on_rounds: Vec<&Round> = rounds.iter().filter(|r| r.on).collect();
    let later_off: Vec<&Round> = rounds.iter().skip(1).filter(|r| !r.on).collect();
    println!();
    println!(
        "### Perf events: agent process with busy-service's spans flowing ({} CPUs)",
        cores()
    );
    println!(
        "| state | agent perf events (perf_event fds + perf BPF links) | other eBPF fds (program, maps) | agent CPU (% of all cores) |"
    );
    println!("|---|---|---|---|");
    println!(
        "| no trigger yet (round 1) | **{}** | {} | {} |",
        rounds[0].fds.perf,
        rounds[0].fds.bpf,
        pct(rounds[0].agent)
    );
    println!(
        "| trigger active at {FREQUENCY_HZ} Hz (on rounds) | **{}** | {} | {} (median) |",
        range(on_rounds.iter().map(|r| r.fds.perf).collect()),
        range(on_rounds.iter().map(|r| r.fds.bpf).collect()),
        pct(of(true, |r| r.agent))
    );
    println!(
        "| after `coral profile trigger-cancel` (later off rounds) | **{}** | {} | {} (median) |",
        range(later_off.iter().map(|r| r.fds.perf).collect()),
        range(later_off.iter().map(|r| r.fds.bpf).collect()),
        pct(median(
            &later_off.iter().map(|r| r.agent).collect::<Vec<_>>()
        ))
    );
    println!();
    println!(
        "Trigger started (CLI) → perf events open in the agent: {} median (first: {}); trigger-cancel → closed: {} median. After the last round: {} perf events.",
        ms(median_duration(&attach)),
        attach.first().map_or(String::new(), |d| ms(*d)),
        ms(median_duration(&detach)),
        after.perf
    );

    // Each "on" round against the mean of the "off" rounds around it, then the median.
    let versus_neighbours =
        |on: &[usize], value: fn(&Round) -> f64, change: fn(&[f64], usize) -> f64| {
            let values: Vec<f64> = rounds.iter().map(value).collect();
            median(&on.iter().map(|&i| change(&values, i)).collect::<Vec<_>>())
        };
    let all_on: Vec<usize> = (1..rounds_count).step_by(2).collect();
    // Other work (another build, the hypervisor) takes CPU from the service in bursts:
    // the comparisons it did not disturb.
    let quiet: Vec<usize> = all_on
        .iter()
        .copied()
        .filter(|&i| rounds[i - 1..=i + 1].iter().all(|r| r.rest <= QUIET))
        .collect();
    let points = |values: &[f64], i: usize| values[i] - (values[i - 1] + values[i + 1]) / 2.0;
    // CPU shares, in the order of the tables' columns.
    let shares: [fn(&Round) -> f64; 4] = [|r| r.service, |r| r.agent, |r| r.colony, |r| r.rest];
    println!();
    println!(
        "### Throughput: busy-service --saturate (2 threads, ~{WORK_MS} ms of CPU per request, back to back; agent and colony on the same {} cores), {rounds_count} alternating rounds of {} s; on = an active trigger at {FREQUENCY_HZ} Hz that never matches (--min-duration 10s)",
        cores(),
        ROUND.as_secs()
    );
    println!(
        "| trigger | requests/s | requests per CPU-second of the service | CPU (% of all cores): service | agent | colony | rest of the machine |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, on) in [("off (baseline, median)", false), ("on (median)", true)] {
        let cpu: Vec<String> = shares.iter().map(|v| pct(of(on, *v))).collect();
        println!(
            "| {label} | {:.0} | {:.0} | {} |",
            of(on, |r| r.rate),
            of(on, Round::per_cpu_second),
            cpu.join(" | ")
        );
    }
    for (label, on) in [
        ("all on rounds".to_string(), &all_on),
        (
            format!(
                "the {} of {} on rounds with at most {} of the machine used by other work in them and around them",
                quiet.len(),
                all_on.len(),
                pct(QUIET)
            ),
            &quiet,
        ),
    ] {
        if on.is_empty() {
            continue;
        }
        let cpu: Vec<String> = shares
            .iter()
            .map(|v| format!("{:+.2} pts", versus_neighbours(on, *v, points) * 100.0))
            .collect();
        println!(
            "| loss, or change (median over {label}, each vs the off rounds around it) | **{}** | {} | {} |",
            pct(versus_neighbours(
                on,
                |r| r.rate,
                workload::loss_vs_neighbours
            )),
            pct(versus_neighbours(
                on,
                Round::per_cpu_second,
                workload::loss_vs_neighbours
            )),
            cpu.join(" | ")
        );
    }
    println!();
    println!(
        "| round | trigger | requests/s | loss vs the off rounds around it | service | agent | colony | rest of the machine | agent perf events |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let rates: Vec<f64> = rounds.iter().map(|r| r.rate).collect();
    for (i, r) in rounds.iter().enumerate() {
        let cpu: Vec<String> = shares.iter().map(|v| pct(v(r))).collect();
        println!(
            "| {} | {} | {:.0} | {} | {} | {} |",
            i + 1,
            if r.on { "on" } else { "off" },
            r.rate,
            if r.on {
                pct(workload::loss_vs_neighbours(&rates, i))
            } else {
                String::new()
            },
            cpu.join(" | "),
            r.fds.perf
        );
    }
    if quiet.is_empty() {
        println!();
        println!(
            "Other work disturbed every on round (\"rest\" above {}): the requests/s say more about it than about the trigger; rerun on a quiet machine.",
            pct(QUIET)
        );
    }
    Ok(())
}

fn median_duration(values: &[Duration]) -> Duration {
    Duration::from_secs_f64(median(
        &values.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
    ))
}

/// What the agent knows of a request span, owned as in its `v1::Span`.
struct Fact {
    duration_ns: i64,
    http_status: Option<i32>,
    status_code: i32,
    url: Option<String>,
    route: Option<String>,
}

impl Fact {
    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            duration_ns: self.duration_ns,
            http_status: self.http_status,
            status_code: self.status_code,
            url: self.url.as_deref(),
            route: self.route.as_deref(),
        }
    }
}

/// URL paths and their routes, as a web shop's spans carry them.
const URLS: [(&str, Option<&str>); 8] = [
    ("/checkout", Some("/checkout")),
    (
        "/checkout/pay?card=visa&amount=129.90",
        Some("/checkout/pay"),
    ),
    ("/cart/items/88123", Some("/cart/items/{id}")),
    (
        "/api/v2/users/1234567/orders?page=3&sort=desc",
        Some("/api/v2/users/{id}/orders"),
    ),
    ("/search?q=running+shoes&size=42", Some("/search")),
    ("/health", None),
    ("/static/js/app.3f9a1c.js", None),
    (
        "/products/sku-0042-blue/reviews",
        Some("/products/{sku}/reviews"),
    ),
];

/// `n` request facts: 90 % under 200 ms, 8 % up to 1 s, 2 % 1–5 s (all 1–5 s when
/// `slow`); mostly 200, some 4xx and 5xx, 1 % without HTTP status (span status error).
fn facts(n: usize, slow: bool, rng: &mut Rng) -> Vec<Fact> {
    const MS: i64 = 1_000_000;
    (0..n)
        .map(|_| {
            let ms = |lo: i64, hi: i64, rng: &mut Rng| lo + rng.below((hi - lo) as usize) as i64;
            let duration_ns = match rng.below(100) {
                _ if slow => ms(1000, 5000, rng),
                0..=89 => ms(1, 200, rng),
                90..=97 => ms(200, 1000, rng),
                _ => ms(1000, 5000, rng),
            } * MS;
            let http_status = match rng.below(100) {
                0..=84 => Some(200),
                85..=89 => Some(404),
                90..=92 => Some(201),
                93..=96 => Some(500),
                97..=98 => Some(503),
                _ => None,
            };
            let (url, route) = URLS[rng.below(URLS.len())];
            Fact {
                duration_ns,
                http_status,
                status_code: if http_status.is_none_or(|s| s >= 500) {
                    2
                } else {
                    0
                },
                url: Some(url.to_string()),
                route: route.map(str::to_string),
            }
        })
        .collect()
}

/// Spans/s of `check` over `facts` on this thread (median of [`PASSES`]), and how many
/// it accepted.
fn rate(facts: &[Fact], check: impl Fn(&RequestFacts<'_>) -> bool) -> (f64, usize) {
    let mut rates = Vec::new();
    let mut accepted = 0;
    for _ in 0..PASSES {
        let start = Instant::now();
        accepted = black_box(
            black_box(facts)
                .iter()
                .filter(|f| check(&f.facts()))
                .count(),
        );
        rates.push(facts.len() as f64 / start.elapsed().as_secs_f64());
    }
    (median(&rates), accepted)
}

/// Part 3a: matching in process.
fn matching_micro() -> Result<()> {
    let criteria = RequestCriteria::new(Some(1000), None, Some("5xx"), Some("/checkout*"))?;
    let criteria = black_box(&criteria);
    let min = black_box(1_000_000_000i64);
    println!();
    println!(
        "### Matching in process: `RequestCriteria::matches` ({criteria}) over {FACTS} request facts, one thread, median of {PASSES} passes; baseline: the same loop comparing the duration only"
    );
    println!(
        "| facts | matches spans/s | ns per span | duration comparison only spans/s (baseline) | ratio | matched |"
    );
    println!("|---|---|---|---|---|---|");
    let mut rng = Rng(0x5eed_cafe);
    for (label, slow) in [
        ("mixed (2 % ≥ 1 s)", false),
        ("all ≥ 1 s (status checked too; URL for the 7 % 5xx)", true),
    ] {
        let facts = facts(FACTS, slow, &mut rng);
        let (matching, matched) = rate(&facts, |f| criteria.matches(f));
        let (baseline, _) = rate(&facts, |f| f.duration_ns >= min);
        println!(
            "| {label} | **{matching:.0}** | {:.1} | {baseline:.0} | {:.2} | {matched} |",
            1e9 / matching,
            matching / baseline
        );
    }
    Ok(())
}

/// How the in-situ spans reach the agent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// No trigger: the baseline.
    Off,
    /// An active trigger; each sender exports the spans of its own process, in end
    /// order, as one SDK does.
    On,
    /// An active trigger; the senders export spans of one process, so that they reach
    /// the agent out of end order (by up to a quarter of the spans).
    OnOutOfOrder,
}

impl Scenario {
    fn label(self) -> &'static str {
        match self {
            Self::Off => "none (baseline)",
            Self::On => "active",
            Self::OnOutOfOrder => {
                "active, spans of one process from 4 exporters (out of end order)"
            }
        }
    }
}

/// One in-situ ingest run.
struct Ingest {
    spans_per_s: f64,
    agent_cpu: Duration,
    profiler_cpu: Duration,
    /// From the last span stored to the profiler thread going idle.
    profiler_lag: Duration,
    baseline_profiles: Option<u32>,
}

/// Part 3b: spans through an agent process, without and with an active trigger on
/// their service, whose processes it samples.
async fn matching_in_situ(coral: &str, postgres: Option<&str>) -> Result<()> {
    println!();
    println!(
        "### Matching in situ: {IN_SITU_SPANS} request spans of {SENDERS} idle processes ({SENDERS} senders, {PER_REQUEST} per request; 20 ms, 1 in 50 lasting 1.2 s; none matches) over OTLP/gRPC → agent → colony → store, without and with an active trigger ({}) on their service",
        CRITERIA.join(" ")
    );
    println!(
        "| store | trigger | end-to-end spans/s | agent CPU per span | profiler thread CPU per span | spans/s per core of the profiler thread | profiler done after the last span was stored | baseline profiles kept |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let per_span = |d: Duration| format!("{:.2} µs", d.as_secs_f64() * 1e6 / IN_SITU_SPANS as f64);
    let backends = workload::backends(postgres);
    for (i, &pg) in backends.iter().enumerate() {
        // The store plays no part in the out-of-order case: once is enough.
        let last = i + 1 == backends.len();
        let scenarios = [Scenario::Off, Scenario::On, Scenario::OnOutOfOrder];
        let mut runs = Vec::new();
        for scenario in scenarios
            .into_iter()
            .filter(|s| last || *s != Scenario::OnOutOfOrder)
        {
            let (label, run) = ingest_run(coral, pg, scenario).await?;
            println!(
                "| {label} | {} | {:.0} | {} | {} | {} | {} | {} |",
                scenario.label(),
                run.spans_per_s,
                per_span(run.agent_cpu),
                per_span(run.profiler_cpu),
                match scenario {
                    Scenario::Off => String::new(),
                    _ => format!(
                        "**{:.0}**",
                        IN_SITU_SPANS as f64 / run.profiler_cpu.as_secs_f64()
                    ),
                },
                ms(run.profiler_lag),
                run.baseline_profiles
                    .map_or(String::new(), |n| n.to_string())
            );
            runs.push(run);
        }
        println!(
            "| | active / none | {:.2} | {:.2} | | | | |",
            runs[1].spans_per_s / runs[0].spans_per_s,
            runs[1].agent_cpu.as_secs_f64() / runs[0].agent_cpu.as_secs_f64(),
        );
    }
    println!();
    println!(
        "Agent CPU is the whole process (receiving, forwarding to the colony, profiler thread) until the profiler thread is idle again; the profiler thread's CPU (10 ms ticks) includes its drains every 100 ms and the baseline profiles it assembles."
    );
    Ok(())
}

/// `spans` request spans of [`IN_SITU_SERVICE`] in process `pid`, in batches of
/// [`PER_REQUEST`], ending evenly over the [`IN_SITU_WINDOW`] before now, in end order:
/// 200s on /checkout of 20 ms; 1 in 50 lasts 1.2 s, and 1 in 10 of those is a 503 on
/// /health (every criterion is checked for it; none matches).
fn in_situ_requests(run: u32, pid: i64, spans: u64) -> Vec<ExportTraceServiceRequest> {
    const MS: i64 = 1_000_000;
    let window = IN_SITU_WINDOW.as_nanos() as i64;
    let (now, step) = (workload::now_ns(), window / spans as i64);
    let numbers: Vec<u64> = (0..spans).collect();
    numbers
        .chunks(PER_REQUEST as usize)
        .map(|batch| {
            let batch = batch.iter().map(|&n| {
                let end = now - window + (n as i64 + 1) * step;
                let slow = n % 50 == 7;
                let (status, url) = if n % 500 == 7 {
                    (503, "/health")
                } else {
                    (200, "/checkout")
                };
                Span {
                    trace_id: workload::trace_id(run, n).to_vec(),
                    span_id: (n + 1).to_be_bytes().to_vec(),
                    name: format!("GET {url}"),
                    kind: 2,
                    start_time_unix_nano: (end - if slow { 1200 * MS } else { 20 * MS }) as u64,
                    end_time_unix_nano: end as u64,
                    attributes: vec![
                        kv("url.path", Value::StringValue(url.into())),
                        kv("http.route", Value::StringValue(url.into())),
                        kv("http.request.method", Value::StringValue("GET".into())),
                        kv("http.response.status_code", Value::IntValue(status)),
                    ],
                    ..Default::default()
                }
            });
            export_request(IN_SITU_SERVICE, pid, batch.collect())
        })
        .collect()
}

/// One export request of `spans`, from service `service` in process `pid`.
fn export_request(service: &str, pid: i64, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Value::StringValue(service.into())),
                    kv("process.pid", Value::IntValue(pid)),
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

/// Idle processes (`coral-bench spin`, blocked on its stdin) the agent can sample.
pub(crate) fn idle_processes(n: usize, procs: &mut Processes) -> Result<Vec<i64>> {
    (0..n)
        .map(|_| {
            let child = Command::new(std::env::current_exe()?)
                .args(["spin", "0"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start `coral-bench spin`")?;
            let pid = i64::from(child.id());
            procs.children.push(child);
            Ok(pid)
        })
        .collect()
}

/// Waits until the agent's profiler thread has worked through its queue (its CPU time
/// stops growing); returns how long that took.
async fn profiler_settled(agent: u32) -> Result<Duration> {
    const EVERY: Duration = Duration::from_millis(300);
    let start = Instant::now();
    let mut busy_until = Duration::ZERO;
    let mut last = profiler_cpu(agent)?;
    loop {
        tokio::time::sleep(EVERY).await;
        let cpu = profiler_cpu(agent)?;
        // Idle, it ticks every 100 ms: well under a 10 ms tick per 300 ms.
        if cpu - last <= Duration::from_millis(10) {
            return Ok(busy_until);
        }
        busy_until = start.elapsed();
        if busy_until > Duration::from_secs(120) {
            bail!("the agent's profiler thread was still busy after 120 s");
        }
        last = cpu;
    }
}

async fn ingest_run(
    coral: &str,
    pg: Option<&str>,
    scenario: Scenario,
) -> Result<(&'static str, Ingest)> {
    let db = Database::fresh(pg).await?;
    let mut procs = Processes::default();
    let colony = workload::start_colony(coral, &db, &mut procs).await?;
    let (otlp, agent) = workload::start_agent(coral, &colony, &mut procs)?;
    let mut pids = idle_processes(SENDERS, &mut procs)?;
    if scenario == Scenario::OnOutOfOrder {
        pids = vec![pids[0]; SENDERS];
    }
    // Teaches the agent the service's processes, and the colony the service (a trigger
    // needs it), in every run alike.
    let warmup: Vec<_> = pids
        .iter()
        .enumerate()
        .flat_map(|(i, &pid)| in_situ_requests(20 + i as u32, pid, PER_REQUEST))
        .collect();
    let warmup_spans = PER_REQUEST * SENDERS as u64;
    pump(&otlp, &db, warmup, warmup_spans).await?;
    let trigger = if scenario == Scenario::Off {
        None
    } else {
        let mut args = CRITERIA.to_vec();
        args.extend(["--timeout", "10m"]);
        let id = start_trigger(coral, &colony, IN_SITU_SERVICE, &args).await?;
        wait_perf(agent, true).await?;
        Some(id)
    };
    // Every span then starts after sampling began (the agent only considers those), in
    // both runs alike.
    tokio::time::sleep(IN_SITU_WINDOW + Duration::from_millis(1500)).await;
    // One list per sender (pump gives each sender an equal contiguous share).
    let per_sender = IN_SITU_SPANS / SENDERS as u64;
    let requests: Vec<_> = pids
        .iter()
        .enumerate()
        .flat_map(|(i, &pid)| in_situ_requests(30 + i as u32, pid, per_sender))
        .collect();
    let (agent_cpu, profiler) = (workload::process_cpu(agent)?, profiler_cpu(agent)?);
    let elapsed = pump(&otlp, &db, requests, warmup_spans + IN_SITU_SPANS).await?;
    let profiler_lag = profiler_settled(agent).await?;
    let agent_cpu = workload::process_cpu(agent)? - agent_cpu;
    let profiler = profiler_cpu(agent)? - profiler;
    let baseline_profiles = match trigger {
        Some(id) => {
            // Cancelling sends the baseline reservoir: proof the spans went through.
            cancel_trigger(coral, &colony, &id).await?;
            let mut client = coral_client::profile_client(coral_client::connect(&colony).await?);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let t = get_trigger(&mut client, &id).await?;
                if t.baseline_collected >= t.baseline_requests || Instant::now() > deadline {
                    break Some(t.baseline_collected);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        None => None,
    };
    Ok((
        db.label,
        Ingest {
            spans_per_s: IN_SITU_SPANS as f64 / elapsed.as_secs_f64(),
            agent_cpu,
            profiler_cpu: profiler,
            profiler_lag,
            baseline_profiles,
        },
    ))
}

pub(crate) async fn get_trigger(
    client: &mut v1::profile_service_client::ProfileServiceClient<coral_client::Channel>,
    id: &str,
) -> Result<v1::TraceProfileTrigger> {
    Ok(client
        .get_trace_profile_trigger(v1::GetTraceProfileTriggerRequest {
            trigger_id: id.to_string(),
        })
        .await?
        .into_inner())
}

/// One server span of [`LATENCY_SERVICE`] in process `pid`, that started 1.2 s ago and
/// ended 1 ms ago: a 503 on /checkout/pay (or a quick 200 when not `matching`).
fn request_span(trace_id: [u8; 16], pid: i64, matching: bool) -> ExportTraceServiceRequest {
    let now = workload::now_ns() as u64;
    let (start, status) = if matching {
        (now - 1_200_000_000, 503)
    } else {
        (now - 20_000_000, 200)
    };
    let span = Span {
        trace_id: trace_id.to_vec(),
        span_id: trace_id[8..].to_vec(),
        name: "POST /checkout/pay".into(),
        kind: 2,
        start_time_unix_nano: start,
        end_time_unix_nano: now - 1_000_000,
        attributes: vec![
            kv("url.path", Value::StringValue("/checkout/pay".into())),
            kv("http.route", Value::StringValue("/checkout/pay".into())),
            kv("http.request.method", Value::StringValue("POST".into())),
            kv("http.response.status_code", Value::IntValue(status)),
        ],
        ..Default::default()
    };
    export_request(LATENCY_SERVICE, pid, vec![span])
}

/// Part 4: from a matching span's export to its trace id in `trigger-status`.
async fn latency(coral: &str, postgres: Option<&str>) -> Result<()> {
    println!();
    println!(
        "### Latency: a matching span exported to the agent (OTLP/gRPC) until its trace id is in `GetTraceProfileTrigger`'s collected requests (polled every {} ms), {LATENCY_SPANS} spans one at a time, trigger `{} --count {LATENCY_SPANS} --baseline 0`; baseline: the `GetTraceProfileTrigger` round trip alone ({RPC_RUNS} runs)",
        POLL.as_millis(),
        CRITERIA.join(" ")
    );
    println!(
        "| store | p50 | p95 | max | GetTraceProfileTrigger p50 (baseline) | p95 | ratio p50/baseline |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut notes = Vec::new();
    for pg in workload::backends(postgres) {
        let db = Database::fresh(pg).await?;
        let mut procs = Processes::default();
        let colony = workload::start_colony(coral, &db, &mut procs).await?;
        let (otlp, agent) = workload::start_agent(coral, &colony, &mut procs)?;
        let mut otlp = workload::otlp_client(&otlp).await;
        // The request's process must be live for the agent to sample it: this one.
        let pid = i64::from(std::process::id());
        // Teaches the agent the service's process, and the colony the service.
        otlp.export(request_span(workload::trace_id(5, 0), pid, false))
            .await?;
        workload::wait_for_service(&colony, LATENCY_SERVICE).await?;
        let count = LATENCY_SPANS.to_string();
        let mut args = CRITERIA.to_vec();
        args.extend(["--count", &count, "--baseline", "0", "--timeout", "5m"]);
        let id = start_trigger(coral, &colony, LATENCY_SERVICE, &args).await?;
        wait_perf(agent, true).await?;
        let perf_active = fds(agent)?.perf;
        // Spans start 1.2 s before they are sent: after sampling began.
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let mut client = coral_client::profile_client(coral_client::connect(&colony).await?);
        let mut latencies = Vec::new();
        for n in 0..LATENCY_SPANS {
            let trace = workload::trace_id(6, n);
            let hex = coral_store::TraceId(trace).to_string();
            let request = request_span(trace, pid, true);
            let start = Instant::now();
            otlp.export(request).await?;
            loop {
                let t = get_trigger(&mut client, &id).await?;
                if t.collected.iter().any(|c| c.trace_id == hex) {
                    break;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    bail!(
                        "request {} of {LATENCY_SPANS} was not collected within 10 s (trigger {}, {} collected)",
                        n + 1,
                        t.status,
                        t.collected_requests
                    );
                }
                tokio::time::sleep(POLL).await;
            }
            latencies.push(start.elapsed());
        }
        let done = get_trigger(&mut client, &id).await?;
        let detached = wait_perf(agent, false).await?;
        let mut rpc = Vec::with_capacity(RPC_RUNS);
        for _ in 0..RPC_RUNS {
            let start = Instant::now();
            get_trigger(&mut client, &id).await?;
            rpc.push(start.elapsed());
        }
        let max = latencies.iter().max().copied().unwrap_or_default();
        let (p50, p95) = percentiles(latencies);
        let (rpc50, rpc95) = percentiles(rpc);
        println!(
            "| {} | **{}** | {} | {} | {} | {} | {:.0} |",
            db.label,
            ms(p50),
            ms(p95),
            ms(max),
            ms(rpc50),
            ms(rpc95),
            p50.as_secs_f64() / rpc50.as_secs_f64()
        );
        notes.push(format!(
            "{}: the trigger was {} with {}/{} requests; the agent's perf events went from {perf_active} to 0 {} after the last request was visible.",
            db.label,
            done.status,
            done.collected_requests,
            done.max_requests,
            ms(detached)
        ));
    }
    println!();
    for note in notes {
        println!("{note}");
    }
    Ok(())
}
