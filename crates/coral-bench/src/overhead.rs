//! What sampling costs a busy process, beside `perf record`: a CPU-bound workload built
//! without frame pointers, on both cores (a child process: the C program of
//! [`crate::nofp`], or `coral-bench spin` with `CORAL_BENCH_OVERHEAD_WORKLOAD=spin`), in
//! alternating rounds: off (the baseline), then one profiler at 99 Hz, off, the next
//! profiler, … off. The profilers:
//!
//! - Coral `auto`: the eBPF sampler copying registers and stack, its reader unwinding
//!   them (.eh_frame), drained every 100 ms and each drain's distinct stacks symbolized,
//!   as the agent's profiler does;
//! - Coral `fp`: the same with the kernel's frame-pointer walk;
//! - `perf record -F 99 --call-graph dwarf -p PID` and `perf record -F 99 -g -p PID`
//!   (when `perf` is installed), writing to a file in /tmp.
//!
//! Each "on" round is compared with the mean of the "off" rounds around it. Coral's
//! rounds also give the share of samples whose stack reaches a thread root.

use crate::workload::{Killed, loss_vs_neighbours, median};
use anyhow::{Context, Result, bail};
use coral_sampler::{EbpfSampler, Recording, Sample, Sampler, SamplerConfig, Unwind, UnwindMode};
use coral_symbolizer::Symbolizer;
use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Cycles of (off, profiler) for every profiler, then a last off round.
/// `CORAL_BENCH_OVERHEAD_CYCLES` changes it.
const DEFAULT_CYCLES: usize = 3;
const ROUND: Duration = Duration::from_secs(5);
const FREQUENCY_HZ: u32 = 99;
/// How often the agent's profiler drains its sampler.
const DRAIN_EVERY: Duration = Duration::from_millis(100);
/// How long `perf record` is given to attach before the workload starts.
const PERF_STARTUP: Duration = Duration::from_millis(1500);

/// Whether a symbolized user stack (leaf first) reached its thread's root: the walk was
/// not cut and its outermost frame is a thread root.
pub fn reaches_root(unwind: Unwind, frames: &[coral_analysis::profile::Frame]) -> bool {
    unwind != Unwind::Truncated && coral_symbolizer::ends_at_thread_root(frames)
}

/// What runs during a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profiler {
    Off,
    Coral(UnwindMode),
    Perf { dwarf: bool },
}

impl Profiler {
    fn label(self) -> &'static str {
        match self {
            Profiler::Off => "off (baseline)",
            Profiler::Coral(UnwindMode::Auto) => "Coral auto (copy + unwind + symbolize)",
            Profiler::Coral(UnwindMode::FramePointer) => "Coral fp (kernel frame-pointer walk)",
            Profiler::Perf { dwarf: true } => "perf record --call-graph dwarf",
            Profiler::Perf { dwarf: false } => "perf record -g (frame pointers)",
        }
    }
}

pub fn run() -> Result<()> {
    let cycles = match std::env::var("CORAL_BENCH_OVERHEAD_CYCLES") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .context("CORAL_BENCH_OVERHEAD_CYCLES: a number, at least 1")?,
        Err(_) => DEFAULT_CYCLES,
    };
    let use_spin = match std::env::var("CORAL_BENCH_OVERHEAD_WORKLOAD").as_deref() {
        Ok("spin") => true,
        Ok("c") | Err(_) => false,
        Ok(other) => bail!("CORAL_BENCH_OVERHEAD_WORKLOAD: `c` or `spin`, not {other:?}"),
    };
    let perf = Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut profilers = vec![
        Profiler::Coral(UnwindMode::Auto),
        Profiler::Coral(UnwindMode::FramePointer),
    ];
    if perf {
        profilers.extend([
            Profiler::Perf { dwarf: true },
            Profiler::Perf { dwarf: false },
        ]);
    }
    let plan: Vec<Profiler> = (0..cycles)
        .flat_map(|_| profilers.iter().flat_map(|&p| [Profiler::Off, p]))
        .chain([Profiler::Off])
        .collect();

    let spin_fp = crate::nofp::spin_has_frame_pointers();
    let workload_label = if use_spin {
        format!(
            "`coral-bench spin` ({} frame pointers)",
            if spin_fp { "WITH" } else { "without" }
        )
    } else {
        "a C program built with `-O2 -fomit-frame-pointer` (16-frame stacks)".to_string()
    };
    println!();
    println!(
        "## overhead: CPU-bound workload without frame pointers on {} threads (both cores): {workload_label}; {} rounds of {} s: off, then each profiler at {FREQUENCY_HZ} Hz in turn, off between ({cycles} cycles)",
        crate::busy::THREADS,
        plan.len(),
        ROUND.as_secs(),
    );
    println!(
        "`coral-bench spin`'s work functions {} frame pointers in this build.",
        if spin_fp { "set up" } else { "have no" }
    );
    if !perf {
        println!("`perf` is not installed: its rounds are skipped.");
    }
    if let Err(e) = EbpfSampler::new(SamplerConfig::default()) {
        println!("Skipped: the eBPF sampler cannot load here ({e}).");
        return Ok(());
    }
    let nofp = if use_spin {
        None
    } else {
        Some(crate::nofp::NoFpWorkload::build()?)
    };
    let exe = std::env::current_exe()?;
    let workload = || -> Command {
        match &nofp {
            Some(w) => w.command(ROUND.as_secs_f64()),
            None => {
                let mut c = Command::new(&exe);
                c.args(["spin", &ROUND.as_secs_f64().to_string()]);
                c
            }
        }
    };

    let drainer = Drainer::start();
    let mut rounds: Vec<Round> = Vec::new();
    for (i, &profiler) in plan.iter().enumerate() {
        let round = run_round(profiler, workload(), &drainer)
            .with_context(|| format!("round {} ({})", i + 1, profiler.label()))?;
        rounds.push(round);
    }
    report(&plan, &profilers, &rounds);
    Ok(())
}

fn run_round(profiler: Profiler, mut workload: Command, drainer: &Drainer) -> Result<Round> {
    let mut child = Killed(Some(
        workload
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start the workload")?,
    ));
    let pid = child.0.as_ref().map_or(0, Child::id);
    // Loaded afresh for each round, so that "off" has nothing loaded at all.
    let mut sampler = None;
    let mut perf = Killed(None);
    let perf_output = std::env::temp_dir().join(format!("coral-bench-perf-{pid}.data"));
    match profiler {
        Profiler::Off => {}
        Profiler::Coral(unwind) => {
            let s = Arc::new(EbpfSampler::new(SamplerConfig {
                unwind,
                ..SamplerConfig::default()
            })?);
            s.add_targets(&[pid], FREQUENCY_HZ, Recording::CPU)?;
            drainer.begin(s.clone())?;
            sampler = Some(s);
        }
        Profiler::Perf { dwarf } => {
            let mut c = Command::new("perf");
            c.args(["record", "-q", "-F", &FREQUENCY_HZ.to_string()]);
            c.args(if dwarf {
                &["--call-graph", "dwarf"][..]
            } else {
                &["-g"][..]
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
    let own_cpu = crate::busy::cpu_time()?;
    let perf_cpu = perf_pid.map(crate::workload::process_cpu).transpose()?;
    let mut workload = child.0.take().context("the workload")?;
    workload
        .stdin
        .take()
        .context("workload stdin")?
        .write_all(b"go\n")?;
    let out = workload.wait_with_output()?;
    if !out.status.success() {
        bail!("the workload failed: {}", out.status);
    }
    let mut profiler_cpu = crate::busy::cpu_time()? - own_cpu;
    if let (Some(pid), Some(before)) = (perf_pid, perf_cpu) {
        // perf's CPU during the workload (this process only waited).
        profiler_cpu = crate::workload::process_cpu(pid)
            .map(|now| now - before)
            .unwrap_or_default();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()
        .filter(|f: &Vec<u64>| f.len() == 3)
        .with_context(|| format!("unexpected output of the workload: {text:?}"))?;
    let mut stats = None;
    if let Some(sampler) = sampler {
        let mut s = drainer.end()?;
        let sampler_stats = sampler.stats();
        s.lost = sampler_stats.lost;
        s.dropped = sampler_stats.dropped;
        stats = Some(s);
    }
    let mut perf_bytes = None;
    if let Some(mut p) = perf.0.take() {
        // perf ends when its target exits; SIGINT if it has not within 10 s.
        let deadline = Instant::now() + Duration::from_secs(10);
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
        rate: fields[0] as f64 / (fields[1] as f64 / 1e9),
        elapsed: Duration::from_nanos(fields[1]),
        workload_cpu: Duration::from_nanos(fields[2]),
        profiler_cpu,
        stats,
        perf_bytes,
    })
}

fn report(plan: &[Profiler], profilers: &[Profiler], rounds: &[Round]) {
    let rates: Vec<f64> = rounds.iter().map(Round::rate).collect();
    let per_cpu: Vec<f64> = rounds.iter().map(Round::per_cpu_second).collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let of = |p: Profiler| -> Vec<usize> { (0..plan.len()).filter(|&i| plan[i] == p).collect() };
    let offs = of(Profiler::Off);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;

    println!(
        "| profiler | iterations/s (median) | loss vs the off rounds around it (median; each round) | loss per CPU-second of the workload (median) | profiler's own CPU, % of all cores | samples per round | stacks reaching a thread root | user frames per stack | perf: bytes written per round |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.0} | | | | | | | |",
        Profiler::Off.label(),
        median(&offs.iter().map(|&i| rates[i]).collect::<Vec<_>>())
    );
    for &p in profilers {
        let on = of(p);
        let losses: Vec<f64> = on.iter().map(|&i| loss_vs_neighbours(&rates, i)).collect();
        let cpu_losses: Vec<f64> = on
            .iter()
            .map(|&i| loss_vs_neighbours(&per_cpu, i))
            .collect();
        let share: Vec<f64> = on
            .iter()
            .map(|&i| {
                rounds[i].profiler_cpu.as_secs_f64() / (rounds[i].elapsed.as_secs_f64() * cores)
            })
            .collect();
        let each: Vec<String> = losses.iter().map(|l| format!("{:.2}", l * 100.0)).collect();
        let coral: Vec<&RoundStats> = on
            .iter()
            .filter_map(|&i| rounds[i].stats.as_ref())
            .collect();
        let (samples, rooted, frames, lost) = coral.iter().fold((0, 0, 0, 0), |a, s| {
            (
                a.0 + s.samples,
                a.1 + s.rooted,
                a.2 + s.user_frames,
                a.3 + s.lost + s.dropped,
            )
        });
        let coral_cols = if coral.is_empty() {
            "| |".to_string()
        } else {
            format!(
                "{:.1} % ({rooted} of {samples}) | {:.1} |",
                rooted as f64 * 100.0 / samples.max(1) as f64,
                frames as f64 / samples.max(1) as f64
            )
        };
        let per_round_samples = if coral.is_empty() {
            String::new()
        } else {
            format!(
                "{:.0}{}",
                samples as f64 / coral.len() as f64,
                if lost > 0 {
                    format!(" ({lost} lost)")
                } else {
                    String::new()
                }
            )
        };
        let bytes: Vec<u64> = on.iter().filter_map(|&i| rounds[i].perf_bytes).collect();
        let perf_cols = if bytes.is_empty() {
            String::new()
        } else {
            format!(
                "{:.1} MiB ({:.0} KiB/s)",
                mib(bytes.iter().sum::<u64>()) / bytes.len() as f64,
                bytes.iter().sum::<u64>() as f64
                    / 1024.0
                    / on.iter()
                        .map(|&i| rounds[i].elapsed.as_secs_f64())
                        .sum::<f64>()
            )
        };
        println!(
            "| {} | {:.0} | {:.2} % ({}) | {:.2} % | {:.2} % | {per_round_samples} | {coral_cols} {perf_cols} |",
            p.label(),
            median(&on.iter().map(|&i| rates[i]).collect::<Vec<_>>()),
            median(&losses) * 100.0,
            each.join(", "),
            median(&cpu_losses) * 100.0,
            median(&share) * 100.0,
        );
    }
    println!();
    println!(
        "Expected samples per round if the workload had both cores the whole time: {:.0}. Profiler's own CPU: this process (Coral's reader thread, drains, symbolization) or the perf process, during the round.",
        crate::busy::THREADS as f64 * f64::from(FREQUENCY_HZ) * ROUND.as_secs_f64()
    );
    println!();
    println!(
        "| round | profiler | iterations/s | loss vs the off rounds around it | workload CPU | profiler CPU | samples | rooted | distinct stacks symbolized (summed over drains) | symbolizing time | perf bytes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, r) in rounds.iter().enumerate() {
        let on = r.profiler != Profiler::Off;
        let coral = match &r.stats {
            Some(s) => format!(
                "{} | {} | {} | {:.0} ms",
                s.samples,
                s.rooted,
                s.stacks,
                s.symbolize_time.as_secs_f64() * 1e3
            ),
            None => " | | | ".to_string(),
        };
        println!(
            "| {} | {} | {:.0} | {} | {:.2} s | {:.0} ms | {coral} | {} |",
            i + 1,
            r.profiler.label(),
            r.rate,
            if on {
                format!("{:.2} %", loss_vs_neighbours(&rates, i) * 100.0)
            } else {
                String::new()
            },
            r.workload_cpu.as_secs_f64(),
            r.profiler_cpu.as_secs_f64() * 1e3,
            r.perf_bytes
                .map(|b| format!("{:.1} MiB", mib(b)))
                .unwrap_or_default()
        );
    }
}

impl Round {
    fn rate(&self) -> f64 {
        self.rate
    }

    /// Iterations per second of CPU the workload got: its speed while it runs.
    fn per_cpu_second(&self) -> f64 {
        self.rate * self.elapsed.as_secs_f64() / self.workload_cpu.as_secs_f64()
    }
}

/// One round of the workload.
struct Round {
    profiler: Profiler,
    /// Iterations per second of wall time.
    rate: f64,
    elapsed: Duration,
    /// CPU time the workload got.
    workload_cpu: Duration,
    /// CPU time the profiler's user side used during the round: this process (Coral) or
    /// the perf process.
    profiler_cpu: Duration,
    /// `Some` for Coral rounds.
    stats: Option<RoundStats>,
    /// `Some` for perf rounds: the size of its output file.
    perf_bytes: Option<u64>,
}

/// What one Coral round drained.
#[derive(Debug, Default)]
struct RoundStats {
    samples: u64,
    /// Samples whose user stack reached its thread's root ([`reaches_root`]).
    rooted: u64,
    /// User frames, summed over samples.
    user_frames: u64,
    /// Distinct stacks per drain, summed over the drains (each symbolized once per drain).
    stacks: u64,
    symbolize_time: Duration,
    lost: u64,
    dropped: u64,
}

enum Cmd {
    Begin(Arc<EbpfSampler>),
    End(mpsc::Sender<RoundStats>),
}

/// The drain-and-symbolize thread, idle (blocked) between rounds. It keeps one
/// symbolizer for the whole benchmark, as the agent keeps one for its life.
struct Drainer {
    tx: mpsc::Sender<Cmd>,
}

impl Drainer {
    fn start() -> Self {
        let (tx, rx) = mpsc::channel::<Cmd>();
        std::thread::spawn(move || {
            let mut symbolizer = Symbolizer::new();
            while let Ok(cmd) = rx.recv() {
                let Cmd::Begin(sampler) = cmd else { continue };
                let mut stats = RoundStats::default();
                loop {
                    match rx.recv_timeout(DRAIN_EVERY) {
                        Err(RecvTimeoutError::Timeout) => {
                            drain_once(&*sampler, &mut symbolizer, &mut stats);
                        }
                        Ok(Cmd::End(reply)) => {
                            // The sampler's reader empties the ring every 10 ms.
                            std::thread::sleep(Duration::from_millis(50));
                            drain_once(&*sampler, &mut symbolizer, &mut stats);
                            let _ = reply.send(stats);
                            break;
                        }
                        Ok(Cmd::Begin(_)) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
        });
        Self { tx }
    }

    fn begin(&self, sampler: Arc<EbpfSampler>) -> Result<()> {
        self.tx
            .send(Cmd::Begin(sampler))
            .map_err(|_| anyhow::anyhow!("the drain thread stopped"))
    }

    fn end(&self) -> Result<RoundStats> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .send(Cmd::End(reply))
            .map_err(|_| anyhow::anyhow!("the drain thread stopped"))?;
        Ok(answer.recv()?)
    }
}

/// Return addresses point after the call: look up the byte before (the agent does the
/// same).
pub fn lookup_addrs(stack: &[u64]) -> Vec<u64> {
    stack
        .iter()
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
        .collect()
}

/// Symbolizes the stacks of `samples` (each distinct stack once) as the agent's fold
/// does: a process's user stacks in one call, then each kernel stack. Returns the user
/// frames of each, in the order of `samples`.
pub fn symbolize_like_the_agent(
    symbolizer: &mut Symbolizer,
    samples: &[&Sample],
) -> Vec<Vec<coral_analysis::profile::Frame>> {
    let mut by_pid: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, s) in samples.iter().enumerate() {
        by_pid.entry(s.tgid).or_default().push(i);
    }
    let mut users = vec![Vec::new(); samples.len()];
    for (pid, group) in by_pid {
        let addrs: Vec<Vec<u64>> = group
            .iter()
            .map(|&i| lookup_addrs(&samples[i].stack.user))
            .collect();
        let refs: Vec<&[u64]> = addrs.iter().map(Vec::as_slice).collect();
        let frames = symbolizer.symbolize_user_stacks(pid, &refs);
        for (i, user) in group.into_iter().zip(frames) {
            let kernel = lookup_addrs(&samples[i].stack.kernel);
            std::hint::black_box(symbolizer.symbolize_kernel(&kernel));
            users[i] = user;
        }
    }
    users
}

/// Drains `sampler` every `every` until `stop` (and once more after, for what its
/// reader had not handed out yet), as the agent's profiler does: each drain's distinct
/// stacks symbolized once. Every sample goes to `count`; returns the distinct stacks
/// symbolized, summed over the drains.
pub(crate) fn drain_until(
    sampler: &EbpfSampler,
    symbolizer: &mut Symbolizer,
    stop: &std::sync::atomic::AtomicBool,
    every: Duration,
    mut count: impl FnMut(&Sample),
) -> u64 {
    let mut stacks = 0;
    let mut drain = |symbolizer: &mut Symbolizer| {
        let samples = sampler.drain();
        let _ = sampler.take_losses();
        let mut distinct: std::collections::HashSet<(u32, &coral_sampler::Stack)> =
            std::collections::HashSet::new();
        let mut unique: Vec<&Sample> = Vec::new();
        for s in &samples {
            count(s);
            if distinct.insert((s.tgid, &*s.stack)) {
                unique.push(s);
            }
        }
        std::hint::black_box(symbolize_like_the_agent(symbolizer, &unique));
        stacks += unique.len() as u64;
    };
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(every);
        drain(symbolizer);
    }
    // The sampler's reader empties the ring every 10 ms.
    std::thread::sleep(Duration::from_millis(50));
    drain(symbolizer);
    stacks
}

/// One drain: each distinct stack symbolized once, like the agent's fold.
fn drain_once(sampler: &dyn Sampler, symbolizer: &mut Symbolizer, stats: &mut RoundStats) {
    let samples = sampler.drain();
    stats.samples += samples.len() as u64;
    let start = Instant::now();
    let mut distinct: HashMap<(u32, &coral_sampler::Stack), (&Sample, u64)> = HashMap::new();
    for s in &samples {
        distinct.entry((s.tgid, &*s.stack)).or_insert((s, 0)).1 += 1;
    }
    let distinct: Vec<(&Sample, u64)> = distinct.into_values().collect();
    let stacks: Vec<&Sample> = distinct.iter().map(|&(s, _)| s).collect();
    let users = symbolize_like_the_agent(symbolizer, &stacks);
    for (&(s, count), user) in distinct.iter().zip(users) {
        if reaches_root(s.stack.unwind, &user) {
            stats.rooted += count;
        }
        stats.user_frames += s.stack.user.len() as u64 * count;
    }
    stats.stacks += distinct.len() as u64;
    stats.symbolize_time += start.elapsed();
}
