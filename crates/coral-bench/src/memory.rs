//! What recording memory made resident costs a page-fault-heavy process, beside
//! `perf record -e page-faults`: one thread per core allocating a fresh 256 KiB block
//! (glibc maps it: `coral-bench faulter`, a child process), writing one byte per
//! 4 KiB page (64 page faults) and freeing it (unmapped), in alternating rounds: off
//! (the baseline), Coral memory records + CPU sampling at 99 Hz, off, Coral CPU
//! sampling only (what the page-fault probes add is the difference), off, `perf
//! record -e page-faults -g -p PID` (perf's default: the fault count sampled about
//! 4,000 times a second), off, the same with `-c 1` (every fault), off, with
//! `--call-graph dwarf` (sampled), … off.
//!
//! As in `offcpu`, Coral's rounds are run as the agent's profiler pays for them
//! (drained every 100 ms, each drain's distinct stacks symbolized per process), each
//! "on" round is compared with the mean of the "off" rounds around it, and the direct
//! costs are printed beside the throughput: the profiler's CPU (this process for
//! Coral, the perf process for perf) and the run time of the eBPF programs (the
//! kernel's `bpf_stats_enabled` counters; `CORAL_BENCH_MEMORY_BPF_STATS=0` leaves them
//! off, for a throughput comparison without their cost).

use crate::offcpu::{BpfStats, ProgRun, bpf_delta, bpf_programs};
use crate::workload::{Killed, loss_vs_neighbours, median};
use anyhow::{Context, Result, bail};
use coral_sampler::{EbpfSampler, Recording, Sampler, SamplerConfig};
use coral_symbolizer::Symbolizer;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Cycles of (off, profiler) for every profiler, then a last off round.
/// `CORAL_BENCH_MEMORY_CYCLES` changes it.
const DEFAULT_CYCLES: usize = 3;
const ROUND: Duration = Duration::from_secs(5);
const FREQUENCY_HZ: u32 = 99;
/// How often the agent's profiler drains its sampler.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How long `perf record` is given to attach before the workload starts.
const PERF_STARTUP: Duration = Duration::from_millis(1500);
/// The workload's block: above glibc's mmap threshold, so each one is a fresh mapping.
const BLOCK: usize = 256 * 1024;
const PAGE: usize = 4096;
/// glibc raises its mmap threshold to the size of the last mapped block freed, after
/// which 256 KiB blocks would come from the heap and fault no more; set, it stays.
const MMAP_THRESHOLD: &str = "131072";

/// What runs during a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profiler {
    Off,
    /// Coral: CPU samples at 99 Hz, with or without memory records.
    Coral {
        memory: bool,
    },
    Perf(PerfMode),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PerfMode {
    /// `-g`: frame-pointer call graphs, the fault count sampled at perf's default
    /// frequency (4,000 samples/s).
    Sampled,
    /// `-c 1 -g`: every fault.
    EveryFault,
    /// `--call-graph dwarf`: 8 KiB of stack copied per sample, at the default frequency
    /// (every fault would be gigabytes a second).
    Dwarf,
}

impl Profiler {
    fn label(self) -> String {
        match self {
            Profiler::Off => "off (baseline)".into(),
            Profiler::Coral { memory: true } => format!("Coral memory + CPU {FREQUENCY_HZ} Hz"),
            Profiler::Coral { memory: false } => format!("Coral CPU only, {FREQUENCY_HZ} Hz"),
            Profiler::Perf(PerfMode::Sampled) => "perf record -e page-faults -g".into(),
            Profiler::Perf(PerfMode::EveryFault) => "perf record -e page-faults -c 1 -g".into(),
            Profiler::Perf(PerfMode::Dwarf) => {
                "perf record -e page-faults --call-graph dwarf".into()
            }
        }
    }
}

pub fn run() -> Result<()> {
    let cycles = match std::env::var("CORAL_BENCH_MEMORY_CYCLES") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .context("CORAL_BENCH_MEMORY_CYCLES: a number, at least 1")?,
        Err(_) => DEFAULT_CYCLES,
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // One per core by default; `CORAL_BENCH_MEMORY_THREADS` leaves cores to the profiler.
    let threads = match std::env::var("CORAL_BENCH_MEMORY_THREADS") {
        Ok(n) => n
            .parse()
            .context("CORAL_BENCH_MEMORY_THREADS: a number of threads")?,
        Err(_) => cpus,
    };
    println!();
    println!(
        "## memory: {threads} threads each mapping a fresh {} KiB block, writing one byte per {} KiB page ({} page faults) and unmapping it; {cycles} cycles of rounds of {} s: off, then each profiler in turn, off between",
        BLOCK / 1024,
        PAGE / 1024,
        BLOCK / PAGE,
        ROUND.as_secs()
    );
    let config = SamplerConfig::default();
    match EbpfSampler::new(config.clone()) {
        Ok(sampler) => {
            let me = [std::process::id()];
            sampler.add_targets(&me, FREQUENCY_HZ, Recording::CPU)?;
            let cpu_only = sampler.stats().memory_attached;
            sampler.remove_targets(&me)?;
            sampler.add_targets(&me, FREQUENCY_HZ, Recording::MEMORY)?;
            let memory = sampler.stats().memory_attached;
            sampler.remove_targets(&me)?;
            let removed = sampler.stats().memory_attached;
            println!(
                "Sanity: page-fault probes attached with a CPU-only target: {cpu_only}; with a memory target: {memory}; after its removal: {removed} (expected: false, true, false)."
            );
        }
        Err(e) => {
            println!("Skipped: the eBPF sampler cannot load here ({e}).");
            return Ok(());
        }
    }
    println!(
        "Memory records: one per {} page faults of a CPU (the kernel's fault counters, sampled: SamplerConfig::memory_fault_period), weighing that many 4 KiB pages, and one per huge page; at most {} per CPU per second (memory_max_events_per_cpu), {}/s on this machine's {cpus} CPUs, the rest counted as throttled.",
        config.memory_fault_period,
        config.memory_max_events_per_cpu,
        u64::from(config.memory_max_events_per_cpu) * cpus as u64
    );
    let perf = Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut profilers = vec![
        Profiler::Coral { memory: true },
        Profiler::Coral { memory: false },
    ];
    if perf {
        profilers.extend([
            Profiler::Perf(PerfMode::Sampled),
            Profiler::Perf(PerfMode::EveryFault),
            Profiler::Perf(PerfMode::Dwarf),
        ]);
    } else {
        println!("`perf` is not installed: its rounds are skipped.");
    }
    let plan: Vec<Profiler> = (0..cycles)
        .flat_map(|_| profilers.iter().flat_map(|&p| [Profiler::Off, p]))
        .chain([Profiler::Off])
        .collect();
    let want_stats = std::env::var("CORAL_BENCH_MEMORY_BPF_STATS").as_deref() != Ok("0");
    let stats_guard = want_stats.then(BpfStats::enable).flatten();
    if stats_guard.is_none() {
        println!(
            "The kernel's eBPF run-time statistics are off ({}): their columns stay empty.",
            if want_stats {
                "they cannot be enabled"
            } else {
                "CORAL_BENCH_MEMORY_BPF_STATS=0"
            }
        );
    }
    let busy = Command::new("pgrep")
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
            threads,
            stats_guard.is_some(),
            &mut symbolizer,
        )
        .with_context(|| format!("round {} ({})", i + 1, profiler.label()))?;
        eprintln!(
            "round {}/{}: {}: {:.0} iterations/s, {:.0} faults/s",
            i + 1,
            plan.len(),
            profiler.label(),
            round.rate,
            round.faults_per_s
        );
        rounds.push(round);
    }
    drop(stats_guard);
    report(&plan, &profilers, &rounds);
    Ok(())
}

/// One round of the workload.
struct Round {
    profiler: Profiler,
    /// Blocks mapped, touched and unmapped per second of wall time.
    rate: f64,
    elapsed: Duration,
    /// The workload's minor page faults per second.
    faults_per_s: f64,
    workload_cpu: Duration,
    /// CPU of the profiler during the round: this process (Coral: its reader thread,
    /// drains, symbolization) or the perf process.
    profiler_cpu: Duration,
    /// Run time of the eBPF programs during the round, per kind of program and per
    /// program (empty when the statistics are off).
    bpf: Vec<ProgRun>,
    bpf_each: Vec<ProgRun>,
    coral: Option<CoralRound>,
    /// perf rounds: the size of its output file.
    perf_bytes: Option<u64>,
}

#[derive(Debug, Default)]
struct CoralRound {
    cpu_samples: u64,
    memory_events: u64,
    /// Bytes the memory records stand for, summed.
    memory_bytes: u64,
    throttled: u64,
    lost: u64,
    dropped: u64,
    /// Distinct stacks per drain, summed over the drains (each symbolized once).
    stacks: u64,
    attached_during: bool,
    attached_after: bool,
}

fn run_round(
    profiler: Profiler,
    exe: &Path,
    threads: usize,
    bpf_stats: bool,
    symbolizer: &mut Symbolizer,
) -> Result<Round> {
    let mut child = Killed(Some(
        Command::new(exe)
            .args([
                "faulter",
                &ROUND.as_secs_f64().to_string(),
                &threads.to_string(),
            ])
            .env("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the workload")?,
    ));
    let pid = child.0.as_ref().map_or(0, Child::id);
    // Loaded afresh for each round, so that "off" has nothing loaded at all.
    let mut sampler = None;
    let mut perf = Killed(None);
    let perf_output: PathBuf =
        std::env::temp_dir().join(format!("coral-bench-memory-perf-{pid}.data"));
    match profiler {
        Profiler::Off => {}
        Profiler::Coral { memory } => {
            let s = EbpfSampler::new(SamplerConfig::default())?;
            let recording = if memory {
                Recording::MEMORY
            } else {
                Recording::CPU
            };
            s.add_targets(&[pid], FREQUENCY_HZ, recording)?;
            sampler = Some(s);
        }
        Profiler::Perf(mode) => {
            let mut c = Command::new("perf");
            c.args(["record", "-q", "-e", "page-faults"]);
            c.args(match mode {
                PerfMode::Sampled => &["-g"][..],
                PerfMode::EveryFault => &["-c", "1", "-g"][..],
                PerfMode::Dwarf => &["--call-graph", "dwarf"][..],
            });
            c.args(["-p", &pid.to_string(), "-o"]).arg(&perf_output);
            perf.0 = Some(
                c.stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("cannot start perf")?,
            );
            std::thread::sleep(PERF_STARTUP);
        }
    }
    let perf_pid = perf.0.as_ref().map(Child::id);
    let bpf_before = if bpf_stats {
        bpf_programs(std::process::id())
    } else {
        HashMap::new()
    };
    let own_cpu = crate::busy::cpu_time()?;
    let perf_cpu = perf_pid.map(crate::workload::process_cpu).transpose()?;
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
        bpf_programs(std::process::id())
    } else {
        HashMap::new()
    };
    let mut profiler_cpu = crate::busy::cpu_time()? - own_cpu;
    if let (Some(pid), Some(before)) = (perf_pid, perf_cpu) {
        // perf's CPU during the workload (this process only waited).
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
        c.throttled = stats.memory_throttled;
        c.lost = stats.lost;
        c.dropped = stats.dropped;
        // The workload has exited; its target is forgotten.
        s.remove_targets(&[pid])?;
        c.attached_after = s.stats().memory_attached;
    }
    let mut perf_bytes = None;
    if let Some(mut p) = perf.0.take() {
        // perf ends when its target exits; SIGINT if it has not within 30 s (-c 1
        // leaves it a large file to finish).
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p.id() as i32),
                    nix::sys::signal::Signal::SIGINT,
                );
                p.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        perf_bytes = Some(std::fs::metadata(&perf_output).map_or(0, |m| m.len()));
        let _ = std::fs::remove_file(&perf_output);
    }
    Ok(Round {
        profiler,
        rate: fields[0] as f64 / elapsed.as_secs_f64(),
        elapsed,
        faults_per_s: fields[3] as f64 / elapsed.as_secs_f64(),
        workload_cpu: Duration::from_nanos(fields[2]),
        profiler_cpu,
        bpf: bpf_delta(&bpf_before, &bpf_after),
        bpf_each: bpf_delta_each(&bpf_before, &bpf_after),
        coral,
        perf_bytes,
    })
}

/// What each program ran between two readings, one entry per program (the kernel's
/// fdinfo has no program names: the tp_btf ones are told apart by their run counts),
/// most runs first.
fn bpf_delta_each(before: &HashMap<u64, ProgRun>, after: &HashMap<u64, ProgRun>) -> Vec<ProgRun> {
    let mut v: Vec<ProgRun> = after
        .iter()
        .map(|(id, now)| {
            let was = before.get(id).cloned().unwrap_or_default();
            ProgRun {
                kind: now.kind,
                run_ns: now.run_ns.saturating_sub(was.run_ns),
                runs: now.runs.saturating_sub(was.runs),
            }
        })
        .filter(|p| p.runs > 0)
        .collect();
    v.sort_by(|a, b| (a.kind, b.runs).cmp(&(b.kind, a.runs)));
    v
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
        attached_during: sampler.stats().memory_attached,
        ..CoralRound::default()
    };
    round.stacks =
        crate::overhead::drain_until(sampler, symbolizer, stop, DRAIN_EVERY, |s| {
            match &s.memory {
                Some(m) => {
                    round.memory_events += 1;
                    round.memory_bytes += m.bytes;
                }
                None => round.cpu_samples += 1,
            }
        });
    round
}

fn report(plan: &[Profiler], profilers: &[Profiler], rounds: &[Round]) {
    let rates: Vec<f64> = rounds.iter().map(|r| r.rate).collect();
    let of = |p: Profiler| -> Vec<usize> { (0..plan.len()).filter(|&i| plan[i] == p).collect() };
    let per_s = |i: usize, v: f64| v / rounds[i].elapsed.as_secs_f64();
    let bpf_ns = |i: usize| rounds[i].bpf.iter().map(|p| p.run_ns).sum::<u64>() as f64;
    let med = |idx: &[usize], f: &dyn Fn(usize) -> f64| {
        median(&idx.iter().map(|&i| f(i)).collect::<Vec<_>>())
    };
    let opt = |v: f64, unit: &str, digits: usize| {
        if v.is_nan() {
            "—".to_string()
        } else {
            format!("{v:.digits$}{unit}")
        }
    };
    let offs = of(Profiler::Off);
    // The workload's own CPU per fault: unlike its throughput, this does not move with
    // the machine's other load, and it includes the eBPF programs run in its faults.
    let cpu_per_fault_ns = |i: usize| {
        rounds[i].workload_cpu.as_secs_f64() * 1e9
            / (rounds[i].faults_per_s * rounds[i].elapsed.as_secs_f64())
    };

    println!();
    println!(
        "| profiler | iterations/s (median) | loss vs the off rounds around it (median; each round) | workload faults/s (median) | faults per iteration | workload CPU per fault (median) | memory records received/s (median) | throttled/s (median) | estimated bytes made resident ÷ faults × 4 KiB | profiler's CPU, ms per s (median) | eBPF programs in the kernel, ms per s (median) | direct cost per workload fault (profiler + eBPF) | fault probes attached: during, after removal (every round) | perf: MB written per round (median) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.0} | | {:.0} | {:.1} | {:.0} ns | | | | | | | | |",
        Profiler::Off.label(),
        med(&offs, &|i| rates[i]),
        med(&offs, &|i| rounds[i].faults_per_s),
        med(&offs, &|i| rounds[i].faults_per_s / rates[i]),
        med(&offs, &cpu_per_fault_ns),
    );
    for &p in profilers {
        let on = of(p);
        let losses: Vec<f64> = on.iter().map(|&i| loss_vs_neighbours(&rates, i)).collect();
        let each: Vec<String> = losses.iter().map(|l| format!("{:.2}", l * 100.0)).collect();
        let coral = |i: usize| rounds[i].coral.as_ref();
        let events = |i: usize| coral(i).map_or(f64::NAN, |c| per_s(i, c.memory_events as f64));
        let throttled = |i: usize| coral(i).map_or(f64::NAN, |c| per_s(i, c.throttled as f64));
        let resident_ratio = |i: usize| {
            coral(i)
                .filter(|c| c.memory_events > 0)
                .map_or(f64::NAN, |c| {
                    per_s(i, c.memory_bytes as f64) / (rounds[i].faults_per_s * PAGE as f64)
                })
        };
        let cpu_ms = |i: usize| per_s(i, rounds[i].profiler_cpu.as_secs_f64() * 1e3);
        let bpf_ms = |i: usize| per_s(i, bpf_ns(i) / 1e6);
        let per_fault_ns = |i: usize| {
            (rounds[i].profiler_cpu.as_secs_f64() * 1e9 + bpf_ns(i))
                / (rounds[i].faults_per_s * rounds[i].elapsed.as_secs_f64())
        };
        let attached: Vec<String> = on
            .iter()
            .filter_map(|&i| coral(i))
            .map(|c| format!("{}/{}", c.attached_during, c.attached_after))
            .collect();
        let mb: Vec<f64> = on
            .iter()
            .filter_map(|&i| rounds[i].perf_bytes)
            .map(|b| b as f64 / 1e6)
            .collect();
        let bpf_col = if rounds[on[0]].bpf.is_empty() {
            "—".to_string()
        } else {
            format!("{:.1}", med(&on, &bpf_ms))
        };
        println!(
            "| {} | {:.0} | {:.2} % ({}) | {:.0} | {:.1} | {:.0} ns | {} | {} | {} | {:.1} | {bpf_col} | {:.0} ns | {} | {} |",
            p.label(),
            med(&on, &|i| rates[i]),
            median(&losses) * 100.0,
            each.join(", "),
            med(&on, &|i| rounds[i].faults_per_s),
            med(&on, &|i| rounds[i].faults_per_s / rates[i]),
            med(&on, &cpu_per_fault_ns),
            opt(med(&on, &events), "", 0),
            opt(med(&on, &throttled), "", 0),
            opt(med(&on, &resident_ratio), "", 3),
            med(&on, &cpu_ms),
            med(&on, &per_fault_ns),
            if attached.is_empty() {
                "—".to_string()
            } else {
                attached.join(", ")
            },
            if mb.is_empty() {
                "—".to_string()
            } else {
                format!("{:.1}", median(&mb))
            },
        );
    }
    println!();
    println!(
        "Iterations: blocks mapped, touched and unmapped, over all threads. Faults: the workload's minor page faults (getrusage of the child, all threads). Estimated bytes made resident: the memory records' weights summed, over the faults' 4 KiB pages (1 is exact). Direct cost per fault: the profiler's CPU plus the run time of its eBPF programs (the sampled-fault program runs on every 127th fault of each CPU, the huge page program on every page allocation of the machine, returning at once for small ones, Coral's CPU sampling program on its 99 Hz samples), over the workload's faults."
    );
    println!();
    println!(
        "| round | profiler | iterations/s | loss | faults/s | workload CPU | profiler CPU | eBPF programs: runs × ns per run (each program) | CPU samples | memory records (/s) | throttled | lost + dropped | distinct stacks symbolized | fault probes attached: during, after removal | perf MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, r) in rounds.iter().enumerate() {
        let loss = if r.profiler == Profiler::Off {
            String::new()
        } else {
            format!("{:.2} %", loss_vs_neighbours(&rates, i) * 100.0)
        };
        let bpf: Vec<String> = r
            .bpf_each
            .iter()
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
                "{} | {} ({:.0}) | {} | {} | {} | {}, {}",
                c.cpu_samples,
                c.memory_events,
                per_s(i, c.memory_events as f64),
                c.throttled,
                c.lost + c.dropped,
                c.stacks,
                c.attached_during,
                c.attached_after
            ),
            None => " | | | | | ".to_string(),
        };
        let perf = r
            .perf_bytes
            .map(|b| format!("{:.1}", b as f64 / 1e6))
            .unwrap_or_default();
        println!(
            "| {} | {} | {:.0} | {loss} | {:.0} | {:.2} s | {:.0} ms | {} | {coral} | {perf} |",
            i + 1,
            r.profiler.label(),
            r.rate,
            r.faults_per_s,
            r.workload_cpu.as_secs_f64(),
            r.profiler_cpu.as_secs_f64() * 1e3,
            bpf.join("; "),
        );
    }
}

/// `coral-bench faulter <seconds> [threads]`: waits for a line on stdin, then runs
/// `threads` threads (default 1) for that long, each allocating a [`BLOCK`], writing one
/// byte per page and freeing it, again and again; prints `iterations elapsed_ns cpu_ns
/// minor_faults` (the faults of the run, not of the start-up). Run with
/// `MALLOC_MMAP_THRESHOLD_=131072` so that every block is a fresh mapping (64 faults
/// per iteration; the output's counts tell).
pub fn faulter(args: &[String]) -> Result<()> {
    let secs: f64 = args
        .first()
        .context("usage: coral-bench faulter <seconds> [threads]")?
        .parse()
        .context("seconds: a number")?;
    let threads: usize = match args.get(1) {
        Some(n) => n.parse().context("threads: a number")?,
        None => 1,
    };
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let run_for = Duration::from_secs_f64(secs);
    let faults_before = minor_faults()?;
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| std::thread::spawn(move || fault_until(start, run_for)))
        .collect();
    let mut iterations = 0u64;
    for w in workers {
        iterations += w
            .join()
            .map_err(|_| anyhow::anyhow!("a faulting thread panicked"))?;
    }
    let elapsed = start.elapsed();
    println!(
        "{iterations} {} {} {}",
        elapsed.as_nanos(),
        crate::busy::cpu_time()?.as_nanos(),
        minor_faults()? - faults_before
    );
    Ok(())
}

/// Minor faults of this process so far, every thread included (ended ones too).
fn minor_faults() -> Result<u64> {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    Ok(usage.minor_page_faults().max(0) as u64)
}

fn fault_until(start: Instant, run_for: Duration) -> u64 {
    let mut iterations = 0u64;
    loop {
        if iterations.is_multiple_of(16) && start.elapsed() >= run_for {
            return iterations;
        }
        touch_fresh_block();
        iterations += 1;
    }
}

/// Maps a block (calloc of a block above the mmap threshold: a fresh anonymous
/// mapping, not cleared since it is zero already), faults each page in by writing
/// a byte, and unmaps it.
#[inline(never)]
fn touch_fresh_block() {
    let mut block = vec![0u8; BLOCK];
    for at in (0..BLOCK).step_by(PAGE) {
        block[at] = 1;
    }
    std::hint::black_box(&mut block);
}
