//! What off-CPU recording costs a context-switch-heavy process, beside bcc's
//! `offcputime`: pairs of threads handing a token back and forth (`coral-bench
//! pingpong`, a child process; every hand-off blocks one thread and wakes the other),
//! in alternating rounds: off (the baseline), Coral with off-CPU records (threshold
//! 1 ms, the default) plus CPU sampling at 99 Hz, off, the same with a 100 µs
//! threshold, off, `offcputime -p PID` (when installed), … off.
//!
//! Coral's rounds are run as the agent's profiler pays for them: drained every 100 ms,
//! each drain's distinct stacks symbolized per process. Each "on" round is compared with
//! the mean of the "off" rounds around it; the throughput noise of a small VM is
//! several %, so the direct costs are printed too: the profiler's user-space CPU (this
//! process for Coral, the `offcputime` process for bcc) and the run time of the eBPF
//! programs in the kernel (the kernel's `bpf_stats_enabled` counters, switched on for
//! the benchmark and restored after), which is charged to whichever thread was
//! switching, the workload's included. The counters themselves cost every run a little;
//! `CORAL_BENCH_OFFCPU_BPF_STATS=0` leaves them off for a throughput comparison without
//! that cost.

use crate::workload::{Killed, loss_vs_neighbours, median};
use anyhow::{Context, Result, bail};
use coral_sampler::{EbpfSampler, Recording, Sampler, SamplerConfig};
use coral_symbolizer::Symbolizer;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Cycles of (off, profiler) for every profiler, then a last off round.
/// `CORAL_BENCH_OFFCPU_CYCLES` changes it.
const DEFAULT_CYCLES: usize = 3;
const ROUND: Duration = Duration::from_secs(5);
const FREQUENCY_HZ: u32 = 99;
/// How often the agent's profiler drains its sampler.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// Ping-pong pairs of the workload: one per core of the benchmark machine.
const PAIRS: usize = 2;
/// How long `offcputime` is given to load and attach before the workload starts.
const BCC_STARTUP: Duration = Duration::from_millis(1500);
/// bcc's `offcputime`: the libbpf-tools build (CO-RE, needs only the kernel's BTF),
/// then the Python one of bpfcc-tools (needs the running kernel's headers).
const BCC_TOOLS: &[&str] = &["/usr/sbin/offcputime", "/usr/sbin/offcputime-bpfcc"];
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
/// CPU work each thread does with the token before handing it back, so that the
/// workload switches at a service-like rate (the target: ≥ 50,000/s).
/// `CORAL_BENCH_OFFCPU_WORK_US` changes it; 0 is the bare ping-pong (the most switches).
const DEFAULT_WORK: Duration = Duration::from_micros(20);

/// What runs during a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profiler {
    Off,
    /// Coral, off-CPU records with this threshold plus CPU sampling.
    Coral {
        min_wait: Duration,
    },
    Bcc,
}

impl Profiler {
    fn label(self) -> String {
        match self {
            Profiler::Off => "off (baseline)".into(),
            Profiler::Coral { min_wait } => format!(
                "Coral off-CPU (threshold {}) + CPU {FREQUENCY_HZ} Hz",
                duration_label(min_wait)
            ),
            Profiler::Bcc => "bcc offcputime -p PID".into(),
        }
    }
}

fn duration_label(d: Duration) -> String {
    if d >= Duration::from_millis(1) && d.subsec_micros().is_multiple_of(1000) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} µs", d.as_micros())
    }
}

pub fn run() -> Result<()> {
    let cycles = match std::env::var("CORAL_BENCH_OFFCPU_CYCLES") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .context("CORAL_BENCH_OFFCPU_CYCLES: a number, at least 1")?,
        Err(_) => DEFAULT_CYCLES,
    };
    let work = match std::env::var("CORAL_BENCH_OFFCPU_WORK_US") {
        Ok(v) => Duration::from_micros(
            v.parse()
                .context("CORAL_BENCH_OFFCPU_WORK_US: a number of microseconds")?,
        ),
        Err(_) => DEFAULT_WORK,
    };
    let work_iterations = calibrate(work);
    println!();
    println!(
        "## offcpu: {PAIRS} pairs of threads ping-ponging a token (thread park/unpark: a futex), {} µs of CPU work ({work_iterations} iterations) per turn, {cycles} cycles of rounds of {} s: off, then each profiler in turn, off between",
        work.as_micros(),
        ROUND.as_secs()
    );
    let config = SamplerConfig::default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    match EbpfSampler::new(config.clone()) {
        Ok(sampler) => {
            // No off-CPU target, no scheduler probe: a CPU-only target of this process.
            sampler.add_targets(&[std::process::id()], FREQUENCY_HZ, Recording::CPU)?;
            let cpu_only = sampler.stats();
            sampler.remove_targets(&[std::process::id()])?;
            println!(
                "Sanity: with a CPU-only target, perf events attached: {}, scheduler probes attached: {} (expected: true, false).",
                cpu_only.attached, cpu_only.off_cpu_attached
            );
        }
        Err(e) => {
            println!("Skipped: the eBPF sampler cannot load here ({e}).");
            return Ok(());
        }
    }
    println!(
        "Bound on off-CPU records sent to user space: {} per CPU per second (SamplerConfig::off_cpu_max_events_per_cpu), {} /s on this machine's {cpus} CPUs; records above it are counted as throttled and reported as losses over their span.",
        config.off_cpu_max_events_per_cpu,
        u64::from(config.off_cpu_max_events_per_cpu) * cpus as u64
    );
    let bcc = find_bcc();
    match &bcc {
        Ok(path) => println!("bcc: {}", path.display()),
        Err(why) => println!(
            "bcc offcputime skipped: {why}; install libbpf-tools (or bpfcc-tools with the running kernel's headers)"
        ),
    }
    let mut profilers = vec![
        Profiler::Coral {
            min_wait: config.off_cpu_min_wait,
        },
        Profiler::Coral {
            min_wait: Duration::from_micros(100),
        },
    ];
    if bcc.is_ok() {
        profilers.push(Profiler::Bcc);
    }
    let plan: Vec<Profiler> = (0..cycles)
        .flat_map(|_| profilers.iter().flat_map(|&p| [Profiler::Off, p]))
        .chain([Profiler::Off])
        .collect();
    // The statistics cost every run of every program a little: off, the throughput
    // comparison is fair; on, the eBPF columns say where the time goes.
    let want_stats = std::env::var("CORAL_BENCH_OFFCPU_BPF_STATS").as_deref() != Ok("0");
    let stats_guard = want_stats.then(BpfStats::enable).flatten();
    if stats_guard.is_none() {
        println!(
            "The kernel's eBPF run-time statistics are off ({}): their columns stay empty.",
            if want_stats {
                format!("{BPF_STATS} cannot be enabled")
            } else {
                "CORAL_BENCH_OFFCPU_BPF_STATS=0".to_string()
            }
        );
    }
    let busy = std::process::Command::new("pgrep")
        .args(["-c", "rustc"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "Compilers running at the start (pgrep -c rustc): {}",
        if busy.is_empty() { "0" } else { &busy }
    );

    let exe = std::env::current_exe()?;
    let mut symbolizer = Symbolizer::new();
    let mut rounds = Vec::new();
    for (i, &profiler) in plan.iter().enumerate() {
        let round = run_round(
            profiler,
            &exe,
            work_iterations,
            bcc.as_deref().ok(),
            stats_guard.is_some(),
            &mut symbolizer,
        )
        .with_context(|| format!("round {} ({})", i + 1, profiler.label()))?;
        eprintln!(
            "round {}/{}: {}: {:.0} round trips/s",
            i + 1,
            plan.len(),
            profiler.label(),
            round.rate
        );
        rounds.push(round);
    }
    drop(stats_guard);
    report(&plan, &profilers, &rounds, cpus);
    Ok(())
}

/// bcc's `offcputime`, if installed and able to run here (a 1-second trial).
fn find_bcc() -> Result<PathBuf, String> {
    let path = BCC_TOOLS
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or_else(|| format!("none of {} is installed", BCC_TOOLS.join(", ")))?;
    let out = Command::new(path)
        .args(["-p", &std::process::id().to_string(), "1"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} does not start: {e}", path.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(format!(
            "{} does not run here ({})",
            path.display(),
            last.unwrap_or("no message")
        ));
    }
    Ok(path.to_path_buf())
}

/// The kernel's eBPF run-time statistics, switched on while this lives (and back to
/// what they were after).
pub(crate) struct BpfStats {
    before: String,
}

impl BpfStats {
    pub(crate) fn enable() -> Option<Self> {
        let before = std::fs::read_to_string(BPF_STATS).ok()?;
        std::fs::write(BPF_STATS, "1").ok()?;
        Some(Self {
            before: before.trim().to_string(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.before);
    }
}

/// Run time and runs of one eBPF program (from its fd's fdinfo).
#[derive(Debug, Clone, Default)]
pub(crate) struct ProgRun {
    pub(crate) kind: &'static str,
    pub(crate) run_ns: u64,
    pub(crate) runs: u64,
}

/// The eBPF programs process `pid` holds open, by program id.
pub(crate) fn bpf_programs(pid: u32) -> HashMap<u64, ProgRun> {
    let mut out = HashMap::new();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return out;
    };
    for fd in fds.flatten() {
        let Ok(text) = std::fs::read_to_string(fd.path()) else {
            continue;
        };
        let field = |name: &str| -> Option<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        };
        let (Some(prog_type), Some(id)) = (field("prog_type:"), field("prog_id:")) else {
            continue;
        };
        // The kernel's enum bpf_prog_type.
        let kind = match prog_type {
            2 => "kprobe",
            5 => "tracepoint",
            7 => "perf_event",
            17 => "raw_tp",
            26 => "tracing (tp_btf)",
            _ => "other",
        };
        out.insert(
            id,
            ProgRun {
                kind,
                run_ns: field("run_time_ns:").unwrap_or(0),
                runs: field("run_cnt:").unwrap_or(0),
            },
        );
    }
    out
}

/// What each program ran between two readings, summed per kind of program.
pub(crate) fn bpf_delta(
    before: &HashMap<u64, ProgRun>,
    after: &HashMap<u64, ProgRun>,
) -> Vec<ProgRun> {
    let mut by_kind: HashMap<&'static str, ProgRun> = HashMap::new();
    for (id, now) in after {
        let was = before.get(id).cloned().unwrap_or_default();
        let e = by_kind.entry(now.kind).or_insert_with(|| ProgRun {
            kind: now.kind,
            ..ProgRun::default()
        });
        e.run_ns += now.run_ns.saturating_sub(was.run_ns);
        e.runs += now.runs.saturating_sub(was.runs);
    }
    let mut v: Vec<ProgRun> = by_kind.into_values().collect();
    v.sort_by_key(|p| p.kind);
    v
}

/// One round of the workload.
struct Round {
    profiler: Profiler,
    /// Round trips per second of wall time.
    rate: f64,
    elapsed: Duration,
    /// Context switches of the workload's threads per second.
    switches_per_s: f64,
    workload_cpu: Duration,
    /// User-space CPU of the profiler during the round: this process (Coral: its
    /// reader thread, drains, symbolization) or the `offcputime` process.
    profiler_cpu: Duration,
    /// The eBPF programs' run time during the round, per kind of program (empty when
    /// the statistics are off).
    bpf: Vec<ProgRun>,
    coral: Option<CoralRound>,
    bcc: Option<BccRound>,
}

#[derive(Debug, Default)]
struct CoralRound {
    cpu_samples: u64,
    off_cpu_events: u64,
    /// Off-CPU time the records stand for, summed.
    off_cpu_weight: Duration,
    throttled: u64,
    lost: u64,
    dropped: u64,
    /// Distinct stacks per drain, summed over the drains (each symbolized once).
    stacks: u64,
    attached_during: bool,
    attached_after: bool,
}

#[derive(Debug)]
struct BccRound {
    /// Stacks in its report.
    stacks: usize,
    /// From SIGINT to its exit: aggregating and printing its report.
    report_time: Duration,
}

fn run_round(
    profiler: Profiler,
    exe: &Path,
    work_iterations: u64,
    bcc: Option<&Path>,
    bpf_stats: bool,
    symbolizer: &mut Symbolizer,
) -> Result<Round> {
    let mut child = Killed(Some(
        Command::new(exe)
            .args([
                "pingpong",
                &ROUND.as_secs_f64().to_string(),
                &work_iterations.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the workload")?,
    ));
    let pid = child.0.as_ref().map_or(0, Child::id);
    // Loaded afresh for each round, so that "off" has nothing loaded at all.
    let mut sampler = None;
    let mut tool = Killed(None);
    match profiler {
        Profiler::Off => {}
        Profiler::Coral { min_wait } => {
            let s = EbpfSampler::new(SamplerConfig {
                off_cpu_min_wait: min_wait,
                ..SamplerConfig::default()
            })?;
            s.add_targets(&[pid], FREQUENCY_HZ, Recording::OFF_CPU)?;
            sampler = Some(s);
        }
        Profiler::Bcc => {
            let path = bcc.context("no offcputime")?;
            tool.0 = Some(
                Command::new(path)
                    .args(["-p", &pid.to_string()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("cannot start offcputime")?,
            );
            std::thread::sleep(BCC_STARTUP);
        }
    }
    let tool_pid = tool.0.as_ref().map(Child::id);
    let bpf_holder = tool_pid.unwrap_or_else(std::process::id);
    let bpf_before = if bpf_stats {
        bpf_programs(bpf_holder)
    } else {
        HashMap::new()
    };
    let own_cpu = crate::busy::cpu_time()?;
    let tool_cpu = tool_pid.map(crate::workload::process_cpu).transpose()?;
    let mut workload = child.0.take().context("the workload")?;
    workload
        .stdin
        .take()
        .context("workload stdin")?
        .write_all(b"go\n")?;

    // The symbolizer stays on this thread (it is not `Send`): the wait goes to another.
    let stop = AtomicBool::new(false);
    let (out, coral) = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let out = workload.wait_with_output();
            stop.store(true, Ordering::Relaxed);
            out
        });
        let coral = sampler.as_ref().map(|s| drain_until(s, symbolizer, &stop));
        let out = waiter
            .join()
            .map_err(|_| anyhow::anyhow!("the wait thread panicked"));
        (out, coral)
    });
    let out = out??;
    let bpf_after = if bpf_stats {
        bpf_programs(bpf_holder)
    } else {
        HashMap::new()
    };
    let mut profiler_cpu = crate::busy::cpu_time()? - own_cpu;
    if let (Some(pid), Some(before)) = (tool_pid, tool_cpu) {
        // offcputime's CPU during the workload (this process only waited).
        profiler_cpu = crate::workload::process_cpu(pid)
            .map(|now| now - before)
            .unwrap_or_default();
    }
    if !out.status.success() {
        bail!("the workload failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()
        .filter(|f: &Vec<u64>| f.len() == 4)
        .with_context(|| format!("unexpected output of the workload: {text:?}"))?;
    let elapsed = Duration::from_nanos(fields[1]);

    let mut coral = coral;
    if let (Some(s), Some(c)) = (&sampler, &mut coral) {
        let stats = s.stats();
        c.throttled = stats.off_cpu_throttled;
        c.lost = stats.lost;
        c.dropped = stats.dropped;
        // The workload has exited; its target is forgotten.
        s.remove_targets(&[pid])?;
        c.attached_after = s.stats().off_cpu_attached;
    }
    let mut bcc_round = None;
    if let Some(t) = tool.0.take() {
        let asked = Instant::now();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(t.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let report = t.wait_with_output()?;
        let report_time = asked.elapsed();
        // Each stack of its report ends with its total (µs) on a line of its own.
        let stacks = String::from_utf8_lossy(&report.stdout)
            .lines()
            .filter(|l| {
                let l = l.trim();
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit())
            })
            .count();
        bcc_round = Some(BccRound {
            stacks,
            report_time,
        });
    }
    Ok(Round {
        profiler,
        rate: fields[0] as f64 / elapsed.as_secs_f64(),
        elapsed,
        switches_per_s: fields[3] as f64 / elapsed.as_secs_f64(),
        workload_cpu: Duration::from_nanos(fields[2]),
        profiler_cpu,
        bpf: bpf_delta(&bpf_before, &bpf_after),
        coral,
        bcc: bcc_round,
    })
}

/// The agent's loop: drain every 100 ms and symbolize each drain's distinct stacks per
/// process, until `stop`, then once more.
/// Drains like the agent until `stop`, counting what the round received.
fn drain_until(
    sampler: &EbpfSampler,
    symbolizer: &mut Symbolizer,
    stop: &AtomicBool,
) -> CoralRound {
    let mut round = CoralRound {
        attached_during: sampler.stats().off_cpu_attached,
        ..CoralRound::default()
    };
    round.stacks =
        crate::overhead::drain_until(sampler, symbolizer, stop, DRAIN_EVERY, |s| {
            match &s.off_cpu {
                Some(off) => {
                    round.off_cpu_events += 1;
                    round.off_cpu_weight += Duration::from_nanos(off.weight_ns);
                }
                None => round.cpu_samples += 1,
            }
        });
    round
}

fn report(plan: &[Profiler], profilers: &[Profiler], rounds: &[Round], cpus: usize) {
    let rates: Vec<f64> = rounds.iter().map(|r| r.rate).collect();
    let of = |p: Profiler| -> Vec<usize> { (0..plan.len()).filter(|&i| plan[i] == p).collect() };
    let per_s = |i: usize, v: f64| v / rounds[i].elapsed.as_secs_f64();
    let bpf_ns = |i: usize| rounds[i].bpf.iter().map(|p| p.run_ns).sum::<u64>() as f64;
    let med = |idx: &[usize], f: &dyn Fn(usize) -> f64| {
        median(&idx.iter().map(|&i| f(i)).collect::<Vec<_>>())
    };
    let offs = of(Profiler::Off);

    println!();
    println!(
        "| profiler | round trips/s (median) | loss vs the off rounds around it (median; each round) | workload switches/s (median) | off-CPU records received/s (median) | throttled/s (median) | profiler's user-space CPU, ms per s (median) | eBPF programs in the kernel, ms per s (median) | direct cost per workload switch (user + eBPF) | user-space CPU per record |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.0} | | {:.0} | | | | | | |",
        Profiler::Off.label(),
        med(&offs, &|i| rates[i]),
        med(&offs, &|i| rounds[i].switches_per_s),
    );
    for &p in profilers {
        let on = of(p);
        let losses: Vec<f64> = on.iter().map(|&i| loss_vs_neighbours(&rates, i)).collect();
        let each: Vec<String> = losses.iter().map(|l| format!("{:.2}", l * 100.0)).collect();
        let events = |i: usize| {
            rounds[i]
                .coral
                .as_ref()
                .map_or(f64::NAN, |c| per_s(i, c.off_cpu_events as f64))
        };
        let throttled = |i: usize| {
            rounds[i]
                .coral
                .as_ref()
                .map_or(f64::NAN, |c| per_s(i, c.throttled as f64))
        };
        let user_ms = |i: usize| per_s(i, rounds[i].profiler_cpu.as_secs_f64() * 1e3);
        let bpf_ms = |i: usize| per_s(i, bpf_ns(i) / 1e6);
        let per_switch_ns = |i: usize| {
            (rounds[i].profiler_cpu.as_secs_f64() * 1e9 + bpf_ns(i))
                / (rounds[i].switches_per_s * rounds[i].elapsed.as_secs_f64())
        };
        let per_event_us = |i: usize| {
            rounds[i].coral.as_ref().map_or(f64::NAN, |c| {
                rounds[i].profiler_cpu.as_secs_f64() * 1e6 / c.off_cpu_events.max(1) as f64
            })
        };
        let opt = |v: f64, unit: &str, digits: usize| {
            if v.is_nan() {
                "—".to_string()
            } else {
                format!("{v:.digits$}{unit}")
            }
        };
        let bpf_col = if rounds[on[0]].bpf.is_empty() {
            "—".to_string()
        } else {
            format!("{:.1}", med(&on, &bpf_ms))
        };
        println!(
            "| {} | {:.0} | {:.2} % ({}) | {:.0} | {} | {} | {:.1} | {bpf_col} | {:.0} ns | {} |",
            p.label(),
            med(&on, &|i| rates[i]),
            median(&losses) * 100.0,
            each.join(", "),
            med(&on, &|i| rounds[i].switches_per_s),
            opt(med(&on, &events), "", 0),
            opt(med(&on, &throttled), "", 0),
            med(&on, &user_ms),
            med(&on, &per_switch_ns),
            opt(med(&on, &per_event_us), " µs", 1),
        );
    }
    println!();
    println!(
        "Round trips: one hand-off there and back in each of the {PAIRS} pairs. Switches: the workload's voluntary + involuntary context switches (getrusage of the child, all threads). Direct cost per switch: the profiler's user-space CPU plus the run time of its eBPF programs (which run on every context switch of the machine, and Coral's also on its 99 Hz × {cpus} CPU samples), over the workload's switches. bcc sends nothing to user space while it runs: its records are aggregated in kernel maps and printed when it ends."
    );
    println!();
    println!(
        "| round | profiler | round trips/s | loss | switches/s | workload CPU | profiler CPU | eBPF programs: runs, ns per run | CPU samples | off-CPU records (/s) | off-CPU weight, s per s | throttled | lost + dropped | distinct stacks symbolized | scheduler probes attached: during, after removal | bcc: stacks, report time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, r) in rounds.iter().enumerate() {
        let loss = if r.profiler == Profiler::Off {
            String::new()
        } else {
            format!("{:.2} %", loss_vs_neighbours(&rates, i) * 100.0)
        };
        let bpf: Vec<String> = r
            .bpf
            .iter()
            .filter(|p| p.runs > 0)
            .map(|p| {
                format!(
                    "{} {} × {:.0}",
                    p.kind,
                    p.runs,
                    p.run_ns as f64 / p.runs as f64
                )
            })
            .collect();
        let coral = match &r.coral {
            Some(c) => format!(
                "{} | {} ({:.0}) | {:.2} | {} | {} | {} | {}, {}",
                c.cpu_samples,
                c.off_cpu_events,
                per_s(i, c.off_cpu_events as f64),
                per_s(i, c.off_cpu_weight.as_secs_f64()),
                c.throttled,
                c.lost + c.dropped,
                c.stacks,
                c.attached_during,
                c.attached_after
            ),
            None => " | | | | | | ".to_string(),
        };
        let bcc = r
            .bcc
            .as_ref()
            .map(|b| format!("{}, {:.0} ms", b.stacks, b.report_time.as_secs_f64() * 1e3))
            .unwrap_or_default();
        println!(
            "| {} | {} | {:.0} | {loss} | {:.0} | {:.2} s | {:.0} ms | {} | {coral} | {bcc} |",
            i + 1,
            r.profiler.label(),
            r.rate,
            r.switches_per_s,
            r.workload_cpu.as_secs_f64(),
            r.profiler_cpu.as_secs_f64() * 1e3,
            bpf.join("; "),
        );
    }
}

/// Iterations of [`work`] that take about `d` on this machine (the fastest of a few
/// trials), computed once by the benchmark so that every round does the same work.
fn calibrate(d: Duration) -> u64 {
    const TRIAL: u64 = 200_000;
    let fastest = (0..5)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(work(TRIAL));
            start.elapsed()
        })
        .min()
        .unwrap_or(Duration::from_millis(1));
    (d.as_secs_f64() / fastest.as_secs_f64().max(1e-9) * TRIAL as f64) as u64
}

#[inline(never)]
fn work(iterations: u64) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ iterations;
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x)
}

/// `coral-bench pingpong <seconds> [work_iterations]`: waits for a line on stdin, then
/// runs [`PAIRS`] pairs of threads handing a token back and forth for that long, each
/// doing `work_iterations` of CPU work per turn (each hand-off parks one thread and
/// unparks the other); prints `round_trips elapsed_ns cpu_ns context_switches`.
pub fn pingpong(args: &[String]) -> Result<()> {
    let secs: f64 = args
        .first()
        .context("usage: coral-bench pingpong <seconds> [work_iterations]")?
        .parse()
        .context("seconds: a number")?;
    let work_iterations: u64 = match args.get(1) {
        Some(n) => n.parse().context("work_iterations: a number")?,
        None => 0,
    };
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let run_for = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let pairs: Vec<_> = (0..PAIRS)
        .map(|_| spawn_pair(start, run_for, work_iterations))
        .collect();
    let mut round_trips = 0u64;
    for (a, b) in pairs {
        round_trips += a
            .join()
            .map_err(|_| anyhow::anyhow!("a ping thread panicked"))?;
        b.join()
            .map_err(|_| anyhow::anyhow!("a pong thread panicked"))?;
    }
    let elapsed = start.elapsed();
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    // Both counts sum over every thread of the process, ended ones included.
    let switches = usage.voluntary_context_switches() + usage.involuntary_context_switches();
    println!(
        "{round_trips} {} {} {switches}",
        elapsed.as_nanos(),
        crate::busy::cpu_time()?.as_nanos()
    );
    Ok(())
}

/// Whose turn it is (0: ping, 1: pong), and whether ping has stopped.
struct Token {
    turn: AtomicU32,
    stopped: AtomicBool,
    ping: OnceLock<std::thread::Thread>,
    pong: OnceLock<std::thread::Thread>,
}

impl Token {
    fn wait_for(&self, side: u32) {
        while self.turn.load(Ordering::Acquire) != side {
            std::thread::park();
        }
    }

    fn hand_to(&self, side: u32) {
        self.turn.store(side, Ordering::Release);
        let other = if side == 0 { &self.ping } else { &self.pong };
        other.wait().unpark();
    }
}

type PairHandles = (std::thread::JoinHandle<u64>, std::thread::JoinHandle<()>);

fn spawn_pair(start: Instant, run_for: Duration, work_iterations: u64) -> PairHandles {
    let token = Arc::new(Token {
        turn: AtomicU32::new(0),
        stopped: AtomicBool::new(false),
        ping: OnceLock::new(),
        pong: OnceLock::new(),
    });
    let t = token.clone();
    let pong = std::thread::spawn(move || {
        let _ = t.pong.set(std::thread::current());
        loop {
            t.wait_for(1);
            if t.stopped.load(Ordering::Acquire) {
                return;
            }
            work(work_iterations);
            t.hand_to(0);
        }
    });
    let t = token;
    let ping = std::thread::spawn(move || {
        let _ = t.ping.set(std::thread::current());
        let mut round_trips = 0u64;
        loop {
            if round_trips.is_multiple_of(64) && start.elapsed() >= run_for {
                t.stopped.store(true, Ordering::Release);
                t.hand_to(1);
                return round_trips;
            }
            work(work_iterations);
            t.hand_to(1);
            t.wait_for(0);
            round_trips += 1;
        }
    });
    (ping, pong)
}
