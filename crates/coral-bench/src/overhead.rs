//! What sampling costs a busy process: a CPU-bound workload on both cores (`coral-bench
//! spin`, a child process) in alternating rounds without and with the eBPF sampler
//! attached at 99 Hz, drained every 100 ms and its stacks symbolized, as the agent's
//! profiler does.

use crate::workload::{loss_vs_neighbours, median};
use anyhow::{Context, Result, bail};
use coral_sampler::{EbpfSampler, Sample, Sampler, SamplerConfig};
use coral_symbolizer::Symbolizer;
use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// Rounds, alternately off and on, off first and last: each "on" round is compared
/// with the mean of the "off" rounds around it, which cancels slow drifts of the
/// machine's speed (other work, thermal). `CORAL_BENCH_OVERHEAD_ROUNDS` changes it.
const DEFAULT_ROUNDS: usize = 7;
const ROUND: Duration = Duration::from_secs(5);
const FREQUENCY_HZ: u32 = 99;
/// How often the agent's profiler drains its sampler.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

pub fn run() -> Result<()> {
    let rounds_count = match std::env::var("CORAL_BENCH_OVERHEAD_ROUNDS") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| n % 2 == 1 && *n >= 3)
            .context("CORAL_BENCH_OVERHEAD_ROUNDS: an odd number, at least 3")?,
        Err(_) => DEFAULT_ROUNDS,
    };
    println!();
    println!(
        "## overhead: CPU-bound workload on {} threads (both cores), {rounds_count} alternating rounds of {} s, off / on = eBPF sampler at {FREQUENCY_HZ} Hz, drained every {} ms and symbolized",
        crate::busy::THREADS,
        ROUND.as_secs(),
        DRAIN_EVERY.as_millis()
    );
    if let Err(e) = EbpfSampler::new(SamplerConfig::default()) {
        println!("Skipped: the eBPF sampler cannot load here ({e}).");
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let drainer = Drainer::start();
    let mut rounds: Vec<Round> = Vec::new();
    for round in 0..rounds_count {
        let sampled = round % 2 == 1;
        let mut child = Command::new(&exe)
            .args(["spin", &ROUND.as_secs_f64().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start `coral-bench spin`")?;
        let pid = child.id();
        // Loaded afresh for each "on" round, so that "off" has nothing loaded at all.
        let sampler = if sampled {
            let attach = || -> Result<Arc<EbpfSampler>> {
                let sampler = Arc::new(EbpfSampler::new(SamplerConfig::default())?);
                sampler.add_targets(&[pid], FREQUENCY_HZ)?;
                Ok(sampler)
            };
            match attach() {
                Ok(sampler) => {
                    drainer.begin(sampler.clone())?;
                    Some(sampler)
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            }
        } else {
            None
        };
        let own_cpu = crate::busy::cpu_time()?;
        child
            .stdin
            .take()
            .context("child stdin")?
            .write_all(b"go\n")?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("`coral-bench spin` failed: {}", out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<u64> = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()
            .filter(|f: &Vec<u64>| f.len() == 3)
            .with_context(|| format!("unexpected output of `coral-bench spin`: {text:?}"))?;
        let stats = match sampler {
            Some(sampler) => {
                let mut stats = drainer.end()?;
                let s = sampler.stats();
                stats.lost = s.lost;
                stats.dropped = s.dropped;
                Some(stats)
            }
            None => None,
        };
        rounds.push(Round {
            rate: fields[0] as f64 / (fields[1] as f64 / 1e9),
            elapsed: Duration::from_nanos(fields[1]),
            workload_cpu: Duration::from_nanos(fields[2]),
            own_cpu: crate::busy::cpu_time()? - own_cpu,
            stats,
        });
    }

    // Each "on" round (2k+1) against the mean of the "off" rounds around it.
    let versus_neighbours = |round: usize, value: fn(&Round) -> f64| {
        loss_vs_neighbours(&rounds.iter().map(value).collect::<Vec<_>>(), round)
    };
    let slowdown = |round: usize| versus_neighbours(round, Round::rate);
    let on_indices: Vec<usize> = (1..rounds_count).step_by(2).collect();
    let median_of = |on: bool, value: fn(&Round) -> f64| {
        median(
            &rounds
                .iter()
                .filter(|r| r.stats.is_some() == on)
                .map(value)
                .collect::<Vec<_>>(),
        )
    };
    let median_slowdown = |value: fn(&Round) -> f64| {
        median(
            &on_indices
                .iter()
                .map(|&i| versus_neighbours(i, value))
                .collect::<Vec<_>>(),
        )
    };
    let on_rounds: Vec<&RoundStats> = rounds.iter().filter_map(|r| r.stats.as_ref()).collect();
    let samples: Vec<f64> = on_rounds.iter().map(|r| r.samples as f64).collect();
    // CPU the sampler side (this process: reader thread, drains, symbolization) used,
    // as a share of the whole machine during the round.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let sampler_share: Vec<f64> = rounds
        .iter()
        .filter(|r| r.stats.is_some())
        .map(|r| r.own_cpu.as_secs_f64() / (r.elapsed.as_secs_f64() * cores))
        .collect();
    let expected = crate::busy::THREADS as f64 * f64::from(FREQUENCY_HZ) * ROUND.as_secs_f64();
    println!("| sampler | iterations/s | iterations per CPU-second of the workload |");
    println!("|---|---|---|");
    println!(
        "| off (baseline, median) | {:.0} | {:.0} |",
        median_of(false, Round::rate),
        median_of(false, Round::per_cpu_second)
    );
    println!(
        "| on (median) | {:.0} | {:.0} |",
        median_of(true, Round::rate),
        median_of(true, Round::per_cpu_second)
    );
    println!(
        "| slowdown (median over on rounds, each vs the off rounds around it) | {:.2} % | {:.2} % |",
        median_slowdown(Round::rate) * 100.0,
        median_slowdown(Round::per_cpu_second) * 100.0
    );
    println!();
    println!(
        "Sampler side (sampler reader thread, drains, symbolization): {:.2} % of all cores (median of on rounds). Samples per on round: {:.0} (median; {expected:.0} if the workload had both cores the whole time), {} lost.",
        median(&sampler_share) * 100.0,
        median(&samples),
        on_rounds.iter().map(|r| r.lost + r.dropped).sum::<u64>()
    );
    println!();
    println!(
        "| round | sampler | iterations/s | slowdown vs the off rounds around it | workload CPU | iterations per CPU s | sampler-side CPU | samples | distinct stacks symbolized (summed over drains) | symbolizing time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, r) in rounds.iter().enumerate() {
        let common = format!(
            "| {} | {} | {:.0} | {} | {:.2} s | {:.0} | {:.0} ms |",
            i + 1,
            if r.stats.is_some() { "on" } else { "off" },
            r.rate,
            if r.stats.is_some() {
                format!("{:.2} %", slowdown(i) * 100.0)
            } else {
                String::new()
            },
            r.workload_cpu.as_secs_f64(),
            r.per_cpu_second(),
            r.own_cpu.as_secs_f64() * 1e3
        );
        match &r.stats {
            Some(s) => println!(
                "{common} {} | {} | {:.0} ms |",
                s.samples,
                s.stacks,
                s.symbolize_time.as_secs_f64() * 1e3
            ),
            None => println!("{common} | | |"),
        }
    }
    Ok(())
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
    /// Iterations per second of wall time.
    rate: f64,
    elapsed: Duration,
    /// CPU time the workload got.
    workload_cpu: Duration,
    /// CPU time this process used during the round (the sampler side).
    own_cpu: Duration,
    /// `Some` for "on" rounds.
    stats: Option<RoundStats>,
}

/// What one "on" round drained.
#[derive(Debug, Default)]
struct RoundStats {
    samples: u64,
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
fn lookup_addrs(stack: &[u64]) -> Vec<u64> {
    stack
        .iter()
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
        .collect()
}

/// One drain: each distinct stack symbolized once, like the agent's fold.
fn drain_once(sampler: &dyn Sampler, symbolizer: &mut Symbolizer, stats: &mut RoundStats) {
    let samples = sampler.drain();
    stats.samples += samples.len() as u64;
    let start = Instant::now();
    let mut distinct: HashMap<(u32, &[u64], &[u64]), &Sample> = HashMap::new();
    for s in &samples {
        distinct
            .entry((s.tgid, s.user_stack.as_slice(), s.kernel_stack.as_slice()))
            .or_insert(s);
    }
    for s in distinct.values() {
        std::hint::black_box(symbolizer.symbolize_user(s.tgid, &lookup_addrs(&s.user_stack)));
        std::hint::black_box(symbolizer.symbolize_kernel(&lookup_addrs(&s.kernel_stack)));
    }
    stats.stacks += distinct.len() as u64;
    stats.symbolize_time += start.elapsed();
}
