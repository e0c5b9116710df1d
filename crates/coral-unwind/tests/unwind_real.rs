//! Real unwinding of real processes, sampled with ptrace the way the eBPF sampler samples
//! (registers + 32 KiB of stack), symbolized with coral-symbolizer. Needs root (ptrace,
//! /proc/PID/map_files), `cc` and zlib's headers (zlib1g-dev).

mod support;

use std::process::Command;
use std::time::Duration;

use coral_analysis::profile::Frame;
use coral_symbolizer::Symbolizer;
use coral_unwind::{Method, Truncation, Unwinder, UnwinderConfig, Unwound};
use support::{Running, Sample, compile, sample_all_threads, sample_thread};

/// The sampler's root tests drive the same workload through eBPF.
const WORKERS_C: &str = include_str!("../../coral-sampler/testdata/zlib_workers.c");

const OPT_FLAGS: &[&str] = &["-O2", "-g", "-fomit-frame-pointer"];

fn build_workers(dir: &std::path::Path) -> std::path::PathBuf {
    compile(
        dir,
        "workers",
        WORKERS_C,
        &[OPT_FLAGS, &["-lz", "-lpthread"]].concat(),
    )
}

fn start(program: &std::path::Path, args: &[&str]) -> Running {
    let mut command = Command::new(program);
    command.args(args);
    let mut running = Running::spawn(command);
    running.wait_for_line("ready");
    // Let it get past printing "ready".
    std::thread::sleep(Duration::from_millis(50));
    running
}

/// `rounds` samples of every thread, a few ms apart.
fn collect(pid: u32, rounds: usize) -> Vec<Sample> {
    let mut samples = Vec::new();
    for _ in 0..rounds {
        samples.extend(sample_all_threads(pid));
        std::thread::sleep(Duration::from_millis(7));
    }
    samples
}

/// Symbolizes an unwound stack (every frame but the leaf minus one, as the profile does).
fn symbolize(symbolizer: &mut Symbolizer, pid: u32, unwound: &Unwound) -> Vec<Frame> {
    let addrs: Vec<u64> = unwound
        .frames
        .iter()
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a - 1 })
        .collect();
    symbolizer.symbolize_user(pid, &addrs)
}

fn describe(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|f| format!("{}@{}", f.function, f.module))
        .collect::<Vec<_>>()
        .join(" <- ")
}

/// A stack that ended cleanly at a thread root or the process entry.
fn reaches_root(unwound: &Unwound, frames: &[Frame]) -> bool {
    unwound.truncated.is_none() && coral_symbolizer::ends_at_thread_root(frames)
}

#[derive(Debug, Default)]
struct Outcome {
    samples: usize,
    at_root: usize,
    in_zlib: usize,
    in_zlib_with_caller: usize,
}

impl Outcome {
    fn root_share(&self) -> f64 {
        self.at_root as f64 / self.samples.max(1) as f64
    }
    fn zlib_share(&self) -> f64 {
        self.in_zlib_with_caller as f64 / self.in_zlib.max(1) as f64
    }
}

fn evaluate(
    unwinder: &mut Unwinder,
    symbolizer: &mut Symbolizer,
    pid: u32,
    samples: &[Sample],
    label: &str,
) -> Outcome {
    let mut outcome = Outcome::default();
    let mut shown = 0;
    for sample in samples {
        let unwound = unwinder.unwind(pid, sample.regs, &sample.stack);
        assert!(!unwound.frames.is_empty() && unwound.frames[0] == sample.regs.ip);
        let frames = symbolize(symbolizer, pid, &unwound);
        outcome.samples += 1;
        let root = reaches_root(&unwound, &frames);
        outcome.at_root += usize::from(root);
        if let Some(last_zlib) = frames.iter().rposition(|f| f.module.starts_with("libz.so")) {
            outcome.in_zlib += 1;
            if frames[last_zlib..]
                .iter()
                .any(|f| f.function == "compress_block")
            {
                outcome.in_zlib_with_caller += 1;
            }
        }
        if !root && shown < 3 {
            shown += 1;
            eprintln!(
                "[{label}] not at root ({:?}, {:?}): {}",
                unwound.truncated,
                unwound.method,
                describe(&frames)
            );
        }
    }
    eprintln!(
        "[{label}] {outcome:?} root share {:.3}, zlib share {:.3}, stats {:?}",
        outcome.root_share(),
        outcome.zlib_share(),
        unwinder.stats()
    );
    outcome
}

#[test]
fn unwinds_zlib_workers_through_eh_frame_where_frame_pointers_fail() {
    let dir = tempfile::tempdir().unwrap();
    let program = build_workers(dir.path());
    let running = start(&program, &[]);
    let pid = running.pid();
    std::thread::sleep(Duration::from_millis(100));
    let samples = collect(pid, 50);
    assert!(samples.len() >= 150, "{} samples", samples.len());
    let mut symbolizer = Symbolizer::new();

    let mut dwarf = Unwinder::new(UnwinderConfig::default());
    let with_tables = evaluate(&mut dwarf, &mut symbolizer, pid, &samples, "dwarf");
    assert!(with_tables.in_zlib >= samples.len() / 4, "{with_tables:?}");
    assert!(with_tables.zlib_share() >= 0.9, "{with_tables:?}");
    assert!(with_tables.root_share() >= 0.9, "{with_tables:?}");
    let stats = dwarf.stats();
    assert_eq!(stats.stacks, samples.len() as u64);
    assert!(stats.dwarf >= stats.stacks * 9 / 10, "{stats:?}");

    // Replay the recorded (regs, stack) pairs (warm caches), as a benchmark would. Printed
    // only: never a timing in a pass/fail test.
    let started = std::time::Instant::now();
    let replays = 20;
    for _ in 0..replays {
        for sample in &samples {
            std::hint::black_box(dwarf.unwind(pid, sample.regs, &sample.stack));
        }
    }
    let per_stack = started.elapsed() / (replays * samples.len()) as u32;
    eprintln!("[dwarf] replay: {per_stack:?} per stack (warm caches)");

    let mut frame_pointers = Unwinder::new(UnwinderConfig {
        frame_pointers_only: true,
        ..UnwinderConfig::default()
    });
    let fp_only = evaluate(
        &mut frame_pointers,
        &mut symbolizer,
        pid,
        &samples,
        "fp-only",
    );
    assert!(fp_only.root_share() < 0.5, "{fp_only:?}");
    assert!(fp_only.zlib_share() < 0.5, "{fp_only:?}");
    assert_eq!(frame_pointers.stats().module_loads, 0);

    // A module cache one byte too small for all modules: modules are evicted and
    // reloaded, and the stacks are as good.
    let all_modules = stats.cached_bytes as usize;
    assert!(stats.cached_modules >= 2, "{stats:?}");
    let mut small = Unwinder::new(UnwinderConfig {
        max_module_bytes: all_modules - 1,
        ..UnwinderConfig::default()
    });
    let evicting = evaluate(&mut small, &mut symbolizer, pid, &samples, "small cache");
    let small_stats = small.stats();
    assert!(small_stats.module_evictions > 0, "{small_stats:?}");
    assert!(
        small_stats.module_loads > stats.module_loads,
        "{small_stats:?}"
    );
    assert!((small_stats.cached_bytes as usize) < all_modules);
    assert!(evicting.root_share() >= 0.9, "{evicting:?}");
    drop(running);
}

#[test]
fn a_binary_stripped_of_symbols_still_unwinds_to_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let program = build_workers(dir.path());
    let stripped = dir.path().join("workers-stripped");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&program)
        .status()
        .unwrap();
    assert!(status.success());
    let running = start(&stripped, &[]);
    let pid = running.pid();
    std::thread::sleep(Duration::from_millis(50));
    let samples = collect(pid, 30);
    let mut symbolizer = Symbolizer::new();
    let mut unwinder = Unwinder::new(UnwinderConfig::default());
    // The program's own functions have no names now (`[unknown]@workers-stripped`). A
    // clean stack ends in libc's thread root (clone3), or for the main thread in the
    // program's `_start` (under `__libc_start_main`); one inside zlib has the
    // program's three frames (compress_block, slow_path, worker_main) above zlib.
    let mut clean = 0;
    for sample in &samples {
        let unwound = unwinder.unwind(pid, sample.regs, &sample.stack);
        let frames = symbolize(&mut symbolizer, pid, &unwound);
        let in_program = |f: &Frame| f.module == "workers-stripped";
        let n = frames.len();
        let at_root = n >= 2
            && (frames[n - 1].module.starts_with("libc.so")
                || (in_program(&frames[n - 1])
                    && frames[n - 2].function.starts_with("__libc_start_main")));
        let callers_found = match frames.iter().rposition(|f| f.module.starts_with("libz.so")) {
            Some(last_zlib) => frames[last_zlib..].iter().filter(|f| in_program(f)).count() >= 3,
            None => true,
        };
        if unwound.truncated.is_none() && at_root && callers_found {
            clean += 1;
        } else {
            eprintln!(
                "[stripped] not clean: {:?} {}",
                unwound.truncated,
                describe(&frames)
            );
        }
    }
    eprintln!("[stripped] {clean} of {} samples clean", samples.len());
    assert!(
        clean * 10 >= samples.len() * 9,
        "{clean} of {} clean",
        samples.len()
    );
    assert!(unwinder.stats().dwarf >= samples.len() as u64 * 9 / 10);
}

const RECURSE_C: &str = r#"
#include <stdio.h>
volatile int stop;
volatile int sink;

__attribute__((noinline)) int recurse(int n) {
    if (n == 0) {
        printf("ready\n");
        fflush(stdout);
        while (!stop) {}
        return 0;
    }
    int r = recurse(n - 1);
    sink = r;
    return r + 1;
}

int main(void) { return recurse(500); }
"#;

#[test]
fn deep_recursion_stops_at_max_depth() {
    let dir = tempfile::tempdir().unwrap();
    let program = compile(
        dir.path(),
        "recurse",
        RECURSE_C,
        &[OPT_FLAGS, &["-fno-optimize-sibling-calls"]].concat(),
    );
    let running = start(&program, &[]);
    let pid = running.pid();
    let mut unwinder = Unwinder::new(UnwinderConfig::default());
    let mut symbolizer = Symbolizer::new();
    for _ in 0..5 {
        let sample = sample_thread(pid, pid).expect("sample");
        let unwound = unwinder.unwind(pid, sample.regs, &sample.stack);
        assert_eq!(unwound.frames.len(), 127, "{unwound:?}");
        assert_eq!(unwound.truncated, Some(Truncation::DepthLimit));
        assert_eq!(unwound.method, Method::Dwarf);
        let frames = symbolize(&mut symbolizer, pid, &unwound);
        let first = frames.iter().position(|f| f.function == "recurse").unwrap();
        assert!(
            frames[first..].iter().all(|f| f.function == "recurse"),
            "{}",
            describe(&frames)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // With more depth allowed, the same stack reaches _start.
    let mut deep = Unwinder::new(UnwinderConfig {
        max_depth: 1000,
        ..UnwinderConfig::default()
    });
    let sample = sample_thread(pid, pid).expect("sample");
    let unwound = deep.unwind(pid, sample.regs, &sample.stack);
    let frames = symbolize(&mut symbolizer, pid, &unwound);
    assert!(
        reaches_root(&unwound, &frames),
        "{:?} {}",
        unwound.truncated,
        describe(&frames)
    );
    assert!(unwound.frames.len() > 500);
}

const HOT_LIB_C: &str = r#"
volatile long hot_sink;
__attribute__((noinline)) long hot_inner(long n) {
    long s = 0;
    for (volatile long i = 0; i < n; i++) s += i * 3;
    return s;
}
__attribute__((noinline)) void hot_outer(void) {
    long v = hot_inner(200000);
    hot_sink = v;
}
"#;

const DLOPEN_C: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) void spin_main(void) { for (volatile long i = 0; i < 100000; i++) {} }
int main(int argc, char **argv) {
    printf("ready\n");
    fflush(stdout);
    while (access(argv[2], F_OK) != 0) spin_main();
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    void (*hot_outer)(void) = (void (*)(void))dlsym(lib, "hot_outer");
    printf("loaded\n");
    fflush(stdout);
    for (;;) hot_outer();
}
"#;

#[test]
fn a_library_dlopened_after_the_first_unwind_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let lib = compile(
        dir.path(),
        "libhot.so",
        HOT_LIB_C,
        &[OPT_FLAGS, &["-shared", "-fPIC"]].concat(),
    );
    let program = compile(
        dir.path(),
        "dlopener",
        DLOPEN_C,
        &[OPT_FLAGS, &["-ldl"]].concat(),
    );
    let trigger = dir.path().join("go");
    let mut running = start(
        &program,
        &[lib.to_str().unwrap(), trigger.to_str().unwrap()],
    );
    let pid = running.pid();
    // Periodic rescans off: only the rescan on an unknown address can find the library.
    let mut unwinder = Unwinder::new(UnwinderConfig {
        rescan_interval: Duration::from_secs(3600),
        ..UnwinderConfig::default()
    });
    let mut symbolizer = Symbolizer::new();
    let before = sample_thread(pid, pid).expect("sample");
    let unwound = unwinder.unwind(pid, before.regs, &before.stack);
    let frames = symbolize(&mut symbolizer, pid, &unwound);
    assert!(reaches_root(&unwound, &frames), "{}", describe(&frames));
    let rescans_before = unwinder.stats().map_rescans;

    std::fs::write(&trigger, b"").unwrap();
    running.wait_for_line("loaded");
    let mut found = None;
    for _ in 0..100 {
        let sample = sample_thread(pid, pid).expect("sample");
        let unwound = unwinder.unwind(pid, sample.regs, &sample.stack);
        let frames = symbolize(&mut symbolizer, pid, &unwound);
        if frames[0].function == "hot_inner" {
            found = Some((unwound, frames));
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (unwound, frames) = found.expect("no sample in hot_inner");
    let names: Vec<&str> = frames.iter().map(|f| f.function.as_str()).collect();
    assert_eq!(
        names.get(..3),
        Some(&["hot_inner", "hot_outer", "main"][..]),
        "{:?} {}",
        unwound.truncated,
        describe(&frames)
    );
    assert!(reaches_root(&unwound, &frames), "{}", describe(&frames));
    assert_eq!(unwound.method, Method::Dwarf);
    assert!(unwinder.stats().map_rescans > rescans_before);
}
