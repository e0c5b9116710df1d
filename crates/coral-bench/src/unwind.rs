//! Unwinding + symbolization speed of the agent's pipeline, per core: real samples of
//! the no-frame-pointer workload ([`crate::nofp`]), as the eBPF program captures them
//! (user registers and up to 32 KiB of stack from sp, here read with ptrace and
//! `process_vm_readv` while the thread is stopped), replayed through
//! `coral_unwind::Unwinder::unwind` then `Symbolizer::symbolize_user` on one thread:
//! the first pass cold (new unwinder and symbolizer: modules and symbols loaded), then
//! warm passes. Every stack is symbolized (the agent's fold symbolizes each distinct
//! stack once per drain, so it does less).

use crate::overhead::{lookup_addrs, reaches_root};
use anyhow::{Context, Result};
use coral_sampler::Unwind;
use coral_symbolizer::Symbolizer;
use coral_unwind::{Unwinder, UnwinderConfig};
use std::collections::HashSet;
use std::hint::black_box;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Rounds of sampling every worker thread.
const CAPTURE_ROUNDS: usize = 1000;
const WARM_PASSES: usize = 20;
/// Samples per drain of the agent's profiler: 100 ms of 2 busy threads at 99 Hz.
const DRAIN_SAMPLES: usize = 20;

/// Capturing a thread's registers and stack with ptrace, as coral-unwind's tests do.
#[path = "../../coral-unwind/tests/support/capture.rs"]
#[allow(dead_code)]
mod capture;

use capture::{Sample as RawSample, sample_thread};

pub fn run() -> Result<()> {
    println!();
    println!(
        "## unwind: `Unwinder::unwind` + `Symbolizer::symbolize_user` on one thread, over real samples (registers + ≤ 32 KiB of stack) of a 2-thread C workload built with `-O2 -fomit-frame-pointer`; pass 1 cold (new unwinder and symbolizer), passes 2..{} warm",
        WARM_PASSES + 1
    );
    let workload = crate::nofp::NoFpWorkload::build()?;
    let mut child = workload
        .command(0.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the workload")?;
    let pid = child.id();
    let result = (|| -> Result<()> {
        child
            .stdin
            .as_mut()
            .context("workload stdin")?
            .write_all(b"go\n")?;
        std::thread::sleep(Duration::from_millis(300));
        let samples = capture(pid)?;
        anyhow::ensure!(!samples.is_empty(), "no sample could be captured (ptrace)");
        replay(pid, &samples);
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Samples every worker thread (not the main one, which waits in `pthread_join`: a CPU
/// clock sampler would not see it) [`CAPTURE_ROUNDS`] times, 2 ms apart.
fn capture(pid: u32) -> Result<Vec<RawSample>> {
    let tids: Vec<u32> = capture::threads(pid)
        .into_iter()
        .filter(|&tid| tid != pid)
        .collect();
    let mut samples = Vec::with_capacity(CAPTURE_ROUNDS * tids.len());
    for _ in 0..CAPTURE_ROUNDS {
        samples.extend(tids.iter().filter_map(|&tid| sample_thread(pid, tid)));
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(samples)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

/// Wall and CPU time of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (wall, cpu) = (Instant::now(), thread_cpu());
    let out = f();
    (out, wall.elapsed(), thread_cpu() - cpu)
}

fn replay(pid: u32, samples: &[RawSample]) {
    let n = samples.len();
    let mut unwinder = Unwinder::new(UnwinderConfig::default());
    let mut symbolizer = Symbolizer::new();
    let both = |u: &mut Unwinder, s: &mut Symbolizer| {
        for sample in samples {
            let unwound = u.unwind(pid, sample.regs, &sample.stack);
            black_box(s.symbolize_user(pid, &lookup_addrs(&unwound.frames)));
        }
    };
    let ((), cold_wall, cold_cpu) = timed(|| both(&mut unwinder, &mut symbolizer));
    let ((), warm_wall, warm_cpu) = timed(|| {
        for _ in 0..WARM_PASSES {
            both(&mut unwinder, &mut symbolizer);
        }
    });
    // Each half alone, warm.
    let (stacks, unwind_wall, unwind_cpu) = timed(|| {
        samples
            .iter()
            .map(|s| unwinder.unwind(pid, s.regs, &s.stack))
            .collect::<Vec<_>>()
    });
    let ((), symbolize_wall, symbolize_cpu) = timed(|| {
        for _ in 0..WARM_PASSES {
            for u in &stacks {
                black_box(symbolizer.symbolize_user(pid, &lookup_addrs(&u.frames)));
            }
        }
    });

    // The agent's way: per drain, unwind every sample, symbolize each distinct stack
    // once (per stack, as its fold does, or all at once).
    let mut distinct_stacks = 0;
    let mut per_drain = |u: &mut Unwinder, s: &mut Symbolizer, batch_api: bool| {
        for drain in samples.chunks(DRAIN_SAMPLES) {
            let unwound: Vec<Vec<u64>> = drain
                .iter()
                .map(|x| lookup_addrs(&u.unwind(pid, x.regs, &x.stack).frames))
                .collect();
            let distinct: HashSet<&[u64]> = unwound.iter().map(Vec::as_slice).collect();
            distinct_stacks += distinct.len();
            if batch_api {
                let stacks: Vec<&[u64]> = distinct.into_iter().collect();
                black_box(s.symbolize_user_stacks(pid, &stacks));
            } else {
                for stack in distinct {
                    black_box(s.symbolize_user(pid, stack));
                }
            }
        }
    };
    let ((), fold_wall, fold_cpu) = timed(|| {
        for _ in 0..WARM_PASSES {
            per_drain(&mut unwinder, &mut symbolizer, false);
        }
    });
    let ((), batch_wall, batch_cpu) = timed(|| {
        for _ in 0..WARM_PASSES {
            per_drain(&mut unwinder, &mut symbolizer, true);
        }
    });
    let distinct_per_drain =
        distinct_stacks as f64 / (2 * WARM_PASSES * n.div_ceil(DRAIN_SAMPLES)) as f64;

    let rate = |count: usize, d: Duration| count as f64 / d.as_secs_f64();
    println!(
        "| pass | stacks | wall time | stacks/s (wall) | CPU time of the thread | stacks per CPU-second (per core) | µs per stack (CPU) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (label, count, wall, cpu) in [
        (
            "unwind + symbolize, cold (baseline: first pass)",
            n,
            cold_wall,
            cold_cpu,
        ),
        (
            "unwind + symbolize, warm",
            n * WARM_PASSES,
            warm_wall,
            warm_cpu,
        ),
        ("unwind only, warm", n, unwind_wall, unwind_cpu),
        (
            "symbolize only, warm",
            n * WARM_PASSES,
            symbolize_wall,
            symbolize_cpu,
        ),
        (
            "agent's way, warm: per drain of 20 samples, unwind each, `symbolize_user` each distinct stack",
            n * WARM_PASSES,
            fold_wall,
            fold_cpu,
        ),
        (
            "same, the distinct stacks of a drain in one `symbolize_user_stacks` call",
            n * WARM_PASSES,
            batch_wall,
            batch_cpu,
        ),
    ] {
        println!(
            "| {label} | {count} | {:.0} ms | {:.0} | {:.0} ms | {:.0} | {:.2} |",
            wall.as_secs_f64() * 1e3,
            rate(count, wall),
            cpu.as_secs_f64() * 1e3,
            rate(count, cpu),
            cpu.as_secs_f64() * 1e6 / count as f64
        );
    }
    let stats = unwinder.stats();
    let frames: usize = stacks.iter().map(|u| u.frames.len()).sum();
    let rooted = stacks
        .iter()
        .filter(|u| {
            let unwind = match u.truncated {
                Some(_) => Unwind::Truncated,
                None => u.method.into(),
            };
            reaches_root(
                unwind,
                &symbolizer.symbolize_user(pid, &lookup_addrs(&u.frames)),
            )
        })
        .count();
    let bytes: usize = samples.iter().map(|s| s.stack.len()).sum();
    println!();
    println!(
        "A drain of {DRAIN_SAMPLES} samples (100 ms of 2 busy threads at 99 Hz) held {distinct_per_drain:.1} distinct stacks on average."
    );
    println!(
        "Samples: {n} ({:.1} KiB of stack each on average), {:.1} frames per stack; {rooted} ({:.1} %) reach a thread root. Unwinder over all passes: {} dwarf, {} fp, {} mixed, {} complete; truncated: {} stack copy end, {} no unwind info, {} bad frame; {} modules loaded ({:.1} KiB of unwind tables cached).",
        bytes as f64 / n as f64 / 1024.0,
        frames as f64 / n as f64,
        rooted as f64 * 100.0 / n as f64,
        stats.dwarf,
        stats.frame_pointer,
        stats.mixed,
        stats.complete,
        stats.truncated_stack_copy_end,
        stats.truncated_no_unwind_info,
        stats.truncated_bad_frame,
        stats.module_loads,
        stats.cached_bytes as f64 / 1024.0
    );
}
