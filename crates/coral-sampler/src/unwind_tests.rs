//! Whole stacks through the real eBPF sampler (root): programs built the way production
//! code is (no frame pointers, libraries without them, JIT code, `dlopen`, `exec`,
//! stripped binaries, deep recursion) are sampled with [`UnwindMode::Auto`] and, at the
//! same time, with [`UnwindMode::FramePointer`] for comparison; the stacks are symbolized
//! with coral-symbolizer and checked for the expected call chains and for reaching the
//! thread's root. The last test compares the call edges with `perf record --call-graph
//! dwarf`.
//!
//! The programs are in `testdata/`, compiled at test time with `cc` (gcc; zlib's headers
//! from zlib1g-dev), `rustc`, `strip` (binutils) and run with `perf` (linux-perf): `cargo
//! xtask test` installs them and runs these tests as root.

use crate::root_tests::{require_root, serial};
use crate::{
    EbpfSampler, MAX_STACK_DEPTH, Recording, Sample, Sampler, SamplerConfig, Unwind, UnwindMode,
};
use coral_analysis::profile::{Frame, UNKNOWN_FUNCTION};
use coral_symbolizer::{JIT_MODULE, Symbolizer, ends_at_thread_root};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Sampling frequency of these tests: enough samples in two seconds on two CPUs, even
/// when other work takes most of them.
const HZ: u32 = 499;
/// How long each test samples its program.
const SAMPLING: Duration = Duration::from_millis(1500);
/// How long a test samples before it makes its program change (dlopen, exec).
const BEFORE_CHANGE: Duration = Duration::from_millis(400);
/// The share of samples that must be whole (the bar).
const WHOLE: f64 = 0.9;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// Compiles `testdata/<source>` with `cc` into `dir/<output>`.
fn cc(dir: &Path, source: &str, output: &str, flags: &[&str]) -> PathBuf {
    let binary = dir.join(output);
    let status = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&binary)
        .arg(testdata(source))
        .args(["-lz", "-lpthread", "-ldl"])
        .status()
        .expect("running cc (gcc) to build a test program");
    assert!(status.success(), "compiling {source} failed");
    binary
}

/// A test program, killed when dropped.
struct Program {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Program {
    /// Starts `binary` and waits for it to print `ready`.
    fn start(binary: &Path, args: &[&Path]) -> Self {
        let mut child = Command::new(binary)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut program = Self { child, lines };
        program.wait_for_line("ready");
        program
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_for_line(&mut self, expected: &str) {
        for line in self.lines.by_ref() {
            if line.expect("reading the program's output") == expected {
                return;
            }
        }
        panic!("the program exited before printing {expected:?}");
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The two samplers of these tests, loaded once (loading one takes about half a second):
/// [`UnwindMode::Auto`] (what is tested) and [`UnwindMode::FramePointer`] (the
/// comparison). Between tests they have no target, so nothing is attached.
fn samplers() -> &'static (EbpfSampler, EbpfSampler) {
    static SAMPLERS: OnceLock<(EbpfSampler, EbpfSampler)> = OnceLock::new();
    SAMPLERS.get_or_init(|| {
        require_root();
        let new = |unwind| {
            EbpfSampler::new(SamplerConfig {
                unwind,
                ..SamplerConfig::default()
            })
            .expect("EbpfSampler::new as root")
        };
        (new(UnwindMode::Auto), new(UnwindMode::FramePointer))
    })
}

/// One process sampled in both modes at the same time.
struct BothModes {
    pid: u32,
    auto: &'static EbpfSampler,
    frame_pointer: &'static EbpfSampler,
    stack_errors_before: u64,
    auto_samples: Vec<Sample>,
    frame_pointer_samples: Vec<Sample>,
}

impl BothModes {
    fn start(pid: u32) -> Self {
        let (auto, frame_pointer) = samplers();
        for sampler in [auto, frame_pointer] {
            // Whatever an earlier (failed) test left.
            sampler.drain();
            sampler
                .add_targets(&[pid], HZ, Recording::CPU)
                .expect("add_targets");
        }
        Self {
            pid,
            auto,
            frame_pointer,
            stack_errors_before: auto.stats().stack_errors,
            auto_samples: Vec::new(),
            frame_pointer_samples: Vec::new(),
        }
    }

    /// Samples for `duration` more.
    fn collect(&mut self, duration: Duration) {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(200));
            self.drain();
        }
    }

    fn drain(&mut self) {
        let pid = self.pid;
        let of_pid = |samples: Vec<Sample>| samples.into_iter().filter(move |s| s.tgid == pid);
        self.auto_samples.extend(of_pid(self.auto.drain()));
        self.frame_pointer_samples
            .extend(of_pid(self.frame_pointer.drain()));
    }

    /// Stops sampling; the samples of each mode. No stack copy may have failed.
    fn finish(self) -> (Vec<Sample>, Vec<Sample>) {
        let (auto, frame_pointer, stack_errors) = self.finish_with_stack_errors();
        assert_eq!(stack_errors, 0, "stack copies failed");
        (auto, frame_pointer)
    }

    /// Stops sampling; the samples of each mode and the number of stack copies that
    /// failed in the automatic one.
    fn finish_with_stack_errors(mut self) -> (Vec<Sample>, Vec<Sample>, u64) {
        for sampler in [self.auto, self.frame_pointer] {
            sampler.remove_targets(&[self.pid]).expect("remove_targets");
        }
        std::thread::sleep(Duration::from_millis(50));
        self.drain();
        let stats = self.auto.stats();
        assert_eq!((stats.lost, stats.dropped), (0, 0), "{stats:?}");
        (
            self.auto_samples,
            self.frame_pointer_samples,
            stats.stack_errors - self.stack_errors_before,
        )
    }
}

/// Symbolizes a sample's user stack (every frame but the leaf at `address - 1`, inside
/// the call instruction, as the profile does). The process must still run.
fn symbolize(symbolizer: &mut Symbolizer, sample: &Sample) -> Vec<Frame> {
    let addresses: Vec<u64> = sample
        .stack
        .user
        .iter()
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
        .collect();
    symbolizer.symbolize_user(sample.tgid, &addresses)
}

fn describe(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|f| format!("{}@{}", f.function, f.module))
        .collect::<Vec<_>>()
        .join(" <- ")
}

/// A stack that ended cleanly at a thread root or the process entry.
fn reaches_root(sample: &Sample, frames: &[Frame]) -> bool {
    sample.stack.unwind != Unwind::Truncated && ends_at_thread_root(frames)
}

/// Whether `frames[at..]` starts with these functions.
fn chain_at(frames: &[Frame], at: usize, functions: &[&str]) -> bool {
    frames.len() >= at + functions.len()
        && frames[at..]
            .iter()
            .zip(functions)
            .all(|(frame, &function)| frame.function == function)
}

/// How whole the stacks of one sampling mode were.
#[derive(Debug, Default)]
struct Shares {
    samples: usize,
    /// Samples whose stack reached the thread's root.
    rooted: usize,
    /// Samples the test looks at (e.g. those in zlib).
    focus: usize,
    /// Of those, the ones that show the expected callers.
    focus_chain: usize,
    /// Of those, the ones that show the expected callers and reach the root.
    focus_whole: usize,
}

impl Shares {
    fn root(&self) -> f64 {
        self.rooted as f64 / self.samples.max(1) as f64
    }
    fn chain(&self) -> f64 {
        self.focus_chain as f64 / self.focus.max(1) as f64
    }
    fn whole(&self) -> f64 {
        self.focus_whole as f64 / self.focus.max(1) as f64
    }
}

/// Symbolizes and scores `samples`: `focus` says whether a stack is one the test looks
/// at (`Some`) and then whether it shows the expected callers (`Some(true)`).
fn score(
    label: &str,
    symbolizer: &mut Symbolizer,
    samples: &[Sample],
    focus: impl Fn(&[Frame]) -> Option<bool>,
) -> Shares {
    let mut shares = Shares::default();
    let mut unwinds: BTreeMap<&str, usize> = BTreeMap::new();
    let mut shown = 0;
    for sample in samples {
        let frames = symbolize(symbolizer, sample);
        let rooted = reaches_root(sample, &frames);
        shares.samples += 1;
        shares.rooted += usize::from(rooted);
        *unwinds.entry(sample.stack.unwind.label()).or_default() += 1;
        let chain = focus(&frames);
        if let Some(chain) = chain {
            shares.focus += 1;
            shares.focus_chain += usize::from(chain);
            shares.focus_whole += usize::from(chain && rooted);
        }
        if (!rooted || chain == Some(false)) && shown < 3 {
            shown += 1;
            eprintln!(
                "[{label}] not whole ({:?}, {} frames): {}",
                sample.stack.unwind,
                frames.len(),
                describe(&frames)
            );
        }
    }
    eprintln!(
        "[{label}] {} samples, {:.1}% reach the root; {} in focus: {:.1}% show the callers, {:.1}% \
         also reach the root; unwind {unwinds:?}",
        shares.samples,
        shares.root() * 100.0,
        shares.focus,
        shares.chain() * 100.0,
        shares.whole() * 100.0,
    );
    shares
}

/// The zlib workers (built with `frame_pointers`) sampled in both modes: in
/// [`UnwindMode::Auto`] the stacks in zlib show the program's callers and stacks reach
/// the thread's root; the frame-pointer walk's figures are printed beside them.
fn zlib_workers_unwind_whole(label: &str, frame_pointers: &str) {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let binary = cc(
        dir.path(),
        "zlib_workers.c",
        "zlib_workers",
        &["-O2", frame_pointers],
    );
    let program = Program::start(&binary, &[]);
    let mut sampling = BothModes::start(program.pid());
    sampling.collect(SAMPLING);
    let (auto, frame_pointer) = sampling.finish();
    let mut symbolizer = Symbolizer::new();
    // A stack in zlib shows the program's callers above the outermost zlib frame.
    let in_zlib = |frames: &[Frame]| {
        let outermost_zlib = frames
            .iter()
            .rposition(|f| f.module.starts_with("libz.so"))?;
        Some(chain_at(
            frames,
            outermost_zlib + 1,
            &["compress_block", "slow_path", "worker_main"],
        ))
    };
    let dwarf = score(&format!("{label}/auto"), &mut symbolizer, &auto, in_zlib);
    let fp = score(
        &format!("{label}/frame pointers"),
        &mut symbolizer,
        &frame_pointer,
        in_zlib,
    );
    drop(program);

    assert!(dwarf.samples >= 100, "{dwarf:?}");
    assert!(
        dwarf.focus * 2 >= dwarf.samples,
        "mostly in zlib: {dwarf:?}"
    );
    assert!(dwarf.chain() >= WHOLE, "callers above zlib: {dwarf:?}");
    assert!(dwarf.root() >= WHOLE, "stacks reach the root: {dwarf:?}");
    // What the frame-pointer walk loses through zlib (it has no frame pointers).
    assert!(fp.samples >= 100, "{fp:?}");
    assert!(
        fp.chain() < dwarf.chain() - 0.3,
        "frame pointers alone lose the callers above zlib: {fp:?} vs {dwarf:?}"
    );
}

/// Issue test 1: no frame pointers anywhere (program built -fomit-frame-pointer, Debian's
/// zlib and libc).
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn zlib_workers_without_frame_pointers_unwind_whole() {
    zlib_workers_unwind_whole("no frame pointers", "-fomit-frame-pointer");
}

/// Issue test 3: the program has frame pointers, its libraries (zlib, libc) do not.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn zlib_workers_with_frame_pointers_only_in_the_program_unwind_whole() {
    zlib_workers_unwind_whole("program with frame pointers", "-fno-omit-frame-pointer");
}

/// The `rustc` to build the Rust test program with: `$RUSTC` or `rustc` on the PATH.
fn rustc() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc).arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "this test builds a Rust program with `{rustc}` and it cannot be run ({version:?}): \
         put rustc on the PATH or set RUSTC"
    );
    rustc
}

/// Issue test 2: a Rust program built with default release flags (plain rustc, so the
/// workspace's rustflags do not apply: no frame pointers).
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn rust_release_build_unwinds_whole() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let binary = dir.path().join("chain");
    let status = Command::new(rustc())
        .args(["-C", "opt-level=3", "--edition", "2021", "-o"])
        .arg(&binary)
        .arg(testdata("chain.rs"))
        .status()
        .expect("running rustc");
    assert!(status.success(), "compiling chain.rs failed");
    let program = Program::start(&binary, &[]);
    let mut sampling = BothModes::start(program.pid());
    sampling.collect(SAMPLING);
    let (auto, frame_pointer) = sampling.finish();
    let mut symbolizer = Symbolizer::new();
    let names = |frames: &[Frame]| -> Vec<String> {
        // `chain::mix_leaf` → `mix_leaf`
        frames
            .iter()
            .map(|f| f.function.rsplit("::").next().unwrap_or("").to_owned())
            .collect()
    };
    let in_leaf = |frames: &[Frame]| {
        let names = names(frames);
        (names.first()? == "mix_leaf").then(|| {
            names
                .get(1..4)
                .is_some_and(|callers| callers == ["hash_block", "slow_path", "worker_main"])
        })
    };
    let dwarf = score("rust/auto", &mut symbolizer, &auto, in_leaf);
    let fp = score(
        "rust/frame pointers",
        &mut symbolizer,
        &frame_pointer,
        in_leaf,
    );
    // Both threads: the main one (root `_start`) and the spawned one (libc's clone3).
    let outermost: BTreeSet<String> = auto
        .iter()
        .map(|s| {
            symbolize(&mut symbolizer, s)
                .last()
                .map(|f| format!("{}@{}", f.function, f.module))
                .unwrap_or_default()
        })
        .collect();
    eprintln!("[rust/auto] outermost frames: {outermost:?}");
    drop(program);

    assert!(dwarf.focus >= 50, "{dwarf:?}");
    assert!(dwarf.whole() >= WHOLE, "{dwarf:?}");
    assert!(dwarf.root() >= WHOLE, "{dwarf:?}");
    assert!(
        outermost.iter().any(|f| f.starts_with("_start@")),
        "the main thread's stacks end at _start: {outermost:?}"
    );
    assert!(
        outermost.iter().any(|f| f.contains("@libc.so")),
        "the spawned thread's stacks end in libc (clone3): {outermost:?}"
    );
    assert!(fp.whole() < dwarf.whole() - 0.3, "{fp:?} vs {dwarf:?}");
}

/// Removes a perf map file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Issue test 4: a JIT frame (frame-pointer prologue, no unwind tables, named in
/// `/tmp/perf-PID.map`) between native frames built without frame pointers.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn a_jit_frame_between_native_frames_unwinds_whole() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let binary = cc(
        dir.path(),
        "jit.c",
        "jit_host",
        &["-O2", "-fomit-frame-pointer"],
    );
    let program = Program::start(&binary, &[]);
    let _perf_map = RemoveOnDrop(PathBuf::from(format!("/tmp/perf-{}.map", program.pid())));
    let mut sampling = BothModes::start(program.pid());
    sampling.collect(SAMPLING);
    let (auto, frame_pointer) = sampling.finish();
    let mut symbolizer = Symbolizer::new();
    let in_hot_native = |frames: &[Frame]| {
        (frames.first()?.function == "hot_native").then(|| {
            chain_at(frames, 1, &["jitted_trampoline", "native_caller", "main"])
                && frames[1].module == JIT_MODULE
        })
    };
    let dwarf = score("jit/auto", &mut symbolizer, &auto, in_hot_native);
    let fp = score(
        "jit/frame pointers",
        &mut symbolizer,
        &frame_pointer,
        in_hot_native,
    );
    drop(program);

    assert!(dwarf.focus >= 50, "{dwarf:?}");
    assert!(dwarf.whole() >= WHOLE, "{dwarf:?}");
    let mixed = auto
        .iter()
        .filter(|s| s.stack.unwind == Unwind::Mixed)
        .count();
    assert!(
        mixed * 10 >= dwarf.focus * 9,
        "stacks through the JIT frame are unwound both ways: {mixed} mixed of {}",
        dwarf.focus
    );
    assert!(fp.whole() < dwarf.whole() - 0.3, "{fp:?} vs {dwarf:?}");
}

/// Issue test 5a: a library `dlopen`ed after profiling started (built without frame
/// pointers) unwinds through it to the root.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn a_library_dlopened_while_profiled_unwinds_whole() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = ["-O2", "-fomit-frame-pointer"];
    let library = cc(
        dir.path(),
        "hot_lib.c",
        "libhot.so",
        &[&flags[..], &["-shared", "-fPIC"]].concat(),
    );
    let binary = cc(dir.path(), "dlopener.c", "dlopener", &flags);
    let trigger = dir.path().join("go");
    let mut program = Program::start(&binary, &[&library, &trigger]);
    let mut sampling = BothModes::start(program.pid());
    sampling.collect(BEFORE_CHANGE);
    assert!(
        !sampling.auto_samples.is_empty(),
        "sampled before the dlopen"
    );
    std::fs::write(&trigger, b"").expect("write the trigger file");
    program.wait_for_line("loaded");
    sampling.collect(SAMPLING);
    let (auto, frame_pointer) = sampling.finish();
    let mut symbolizer = Symbolizer::new();
    let in_library = |frames: &[Frame]| {
        (frames.first()?.function == "hot_inner")
            .then(|| chain_at(frames, 1, &["hot_outer", "call_library", "main"]))
    };
    let dwarf = score("dlopen/auto", &mut symbolizer, &auto, in_library);
    let fp = score(
        "dlopen/frame pointers",
        &mut symbolizer,
        &frame_pointer,
        in_library,
    );
    drop(program);

    assert!(dwarf.focus >= 50, "{dwarf:?}");
    assert!(dwarf.whole() >= WHOLE, "{dwarf:?}");
    assert!(dwarf.root() >= WHOLE, "{dwarf:?}");
    assert!(fp.whole() < dwarf.whole() - 0.3, "{fp:?} vs {dwarf:?}");
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as i64
}

/// Issue test 5b: after an `exec` of a different program, samples unwind with the new
/// program's modules. Both programs are built `-no-pie`, so their code is at the same
/// addresses with different functions there: a module kept from before the exec unwinds
/// the new frames with the old tables. (Position-independent programs land elsewhere
/// after the exec, and the unwinder's rescan on an unknown address hides the problem.)
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn a_process_that_execs_unwinds_with_the_new_program() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = ["-O2", "-fomit-frame-pointer", "-no-pie"];
    let first = cc(dir.path(), "exec_first.c", "exec_first", &flags);
    let second = cc(dir.path(), "exec_second.c", "exec_second", &flags);
    let trigger = dir.path().join("go");
    let mut program = Program::start(&first, &[&trigger, &second]);
    let mut sampling = BothModes::start(program.pid());
    let sampling_started = unix_now();
    sampling.collect(BEFORE_CHANGE);
    std::fs::write(&trigger, b"").expect("write the trigger file");
    program.wait_for_line("exec'd");
    let exec_seen = unix_now();
    sampling.collect(SAMPLING);
    // A sample taken inside execve, after the switch to the new address space, has the
    // old stack pointer: copying from it fails (a stack error, the sample is kept with
    // its leaf only).
    let (auto, frame_pointer, stack_errors) = sampling.finish_with_stack_errors();
    assert!(stack_errors <= 2, "{stack_errors} stack errors");
    let before = auto.iter().filter(|s| s.time_unix_nano < exec_seen).count();
    let after_exec = |samples: Vec<Sample>| -> Vec<Sample> {
        samples
            .into_iter()
            .filter(|s| s.time_unix_nano > exec_seen)
            .collect()
    };
    let (auto, frame_pointer) = (after_exec(auto), after_exec(frame_pointer));
    let mut symbolizer = Symbolizer::new();
    let in_new_program = |frames: &[Frame]| {
        (frames.first()?.function == "after_exec_leaf")
            .then(|| chain_at(frames, 1, &["after_exec_outer", "main"]))
    };
    let dwarf = score("exec/auto", &mut symbolizer, &auto, in_new_program);
    // When the stacks that are not whole were taken: right after the exec only (a
    // stale module), or all along.
    let not_whole_ms: Vec<i64> = auto
        .iter()
        .filter(|s| {
            let frames = symbolize(&mut symbolizer, s);
            in_new_program(&frames) != Some(true) || !reaches_root(s, &frames)
        })
        .map(|s| (s.time_unix_nano - exec_seen) / 1_000_000)
        .collect();
    let timing = format!(
        "sampling started {} ms before the exec was seen; stacks not whole from {:?} ms after \
         it",
        (exec_seen - sampling_started) / 1_000_000,
        not_whole_ms.first().zip(not_whole_ms.last())
    );
    eprintln!("[exec/auto] {timing}");
    let fp = score(
        "exec/frame pointers",
        &mut symbolizer,
        &frame_pointer,
        in_new_program,
    );
    drop(program);

    assert!(before >= 20, "{before} samples before the exec");
    assert!(dwarf.focus >= 50, "{dwarf:?}");
    assert!(
        dwarf.whole() >= WHOLE,
        "stacks after the exec not whole ({timing}): {dwarf:?}"
    );
    assert!(dwarf.root() >= WHOLE, "{dwarf:?}");
    assert!(fp.whole() < dwarf.whole() - 0.3, "{fp:?} vs {dwarf:?}");
}

/// Issue test 5c: a binary stripped of its symbols (`strip --strip-all` keeps
/// `.eh_frame`) unwinds to the root; its own frames are unnamed.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn a_stripped_binary_unwinds_whole() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let binary = cc(
        dir.path(),
        "zlib_workers.c",
        "zlib_workers",
        &["-O2", "-fomit-frame-pointer"],
    );
    let stripped = dir.path().join("workers-stripped");
    let status = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&stripped)
        .arg(&binary)
        .status()
        .expect("running strip (binutils)");
    assert!(status.success(), "strip failed");
    let program = Program::start(&stripped, &[]);
    let mut sampling = BothModes::start(program.pid());
    sampling.collect(SAMPLING);
    let (auto, frame_pointer) = sampling.finish();
    let mut symbolizer = Symbolizer::new();
    let in_program = |f: &Frame| f.module == "workers-stripped";
    // A stack in zlib has the program's three frames (compress_block, slow_path,
    // worker_main, now unnamed) right above the outermost zlib frame.
    let in_zlib = |frames: &[Frame]| {
        let outermost_zlib = frames
            .iter()
            .rposition(|f| f.module.starts_with("libz.so"))?;
        let callers = frames.get(outermost_zlib + 1..outermost_zlib + 4)?;
        Some(callers.len() == 3 && callers.iter().all(in_program))
    };
    let dwarf = score("stripped/auto", &mut symbolizer, &auto, in_zlib);
    let fp = score(
        "stripped/frame pointers",
        &mut symbolizer,
        &frame_pointer,
        in_zlib,
    );
    let named_in_program: BTreeSet<String> = auto
        .iter()
        .flat_map(|s| symbolize(&mut symbolizer, s))
        .filter(|f| in_program(f) && f.function != UNKNOWN_FUNCTION)
        .map(|f| f.function)
        .collect();
    drop(program);

    assert!(
        named_in_program.is_empty(),
        "the stripped program's functions have no names: {named_in_program:?}"
    );
    assert!(dwarf.focus * 2 >= dwarf.samples, "{dwarf:?}");
    assert!(dwarf.chain() >= WHOLE, "{dwarf:?}");
    assert!(dwarf.root() >= WHOLE, "{dwarf:?}");
    assert!(fp.chain() < dwarf.chain() - 0.3, "{fp:?} vs {dwarf:?}");
}

/// Issue test 5d: recursion 1000 deep gives stacks of exactly the depth limit, marked
/// truncated, every frame in the recursive function (never garbage).
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn deep_recursion_is_truncated_at_the_depth_limit_without_garbage() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let binary = cc(
        dir.path(),
        "recurse.c",
        "recurse",
        &["-O2", "-fomit-frame-pointer", "-fno-optimize-sibling-calls"],
    );
    let program = Program::start(&binary, &[]);
    let mut sampling = BothModes::start(program.pid());
    sampling.collect(SAMPLING / 2);
    let (auto, frame_pointer) = sampling.finish();
    let mut symbolizer = Symbolizer::new();
    let mut check = |label: &str, samples: &[Sample]| -> (usize, usize) {
        let (mut clean, mut shown) = (0, 0);
        for sample in samples {
            let frames = symbolize(&mut symbolizer, sample);
            let all_recurse = frames.iter().all(|f| f.function == "recurse");
            if frames.len() == MAX_STACK_DEPTH
                && sample.stack.unwind == Unwind::Truncated
                && all_recurse
            {
                clean += 1;
            } else if shown < 3 {
                shown += 1;
                eprintln!(
                    "[{label}] {:?}, {} frames: {}",
                    sample.stack.unwind,
                    frames.len(),
                    describe(&frames)
                );
            }
        }
        eprintln!(
            "[{label}] {clean} of {} samples: {MAX_STACK_DEPTH} frames of recurse, truncated",
            samples.len()
        );
        (clean, samples.len())
    };
    let (clean, total) = check("recursion/auto", &auto);
    let (fp_clean, fp_total) = check("recursion/frame pointers", &frame_pointer);
    drop(program);

    assert!(total >= 50, "{total} samples");
    assert_eq!(clean, total, "every stack is the depth limit of recurse");
    assert!(fp_total >= 50, "{fp_total} samples");
    assert!(
        fp_clean * 2 < fp_total,
        "frame pointers alone cannot walk code built without them: {fp_clean} of {fp_total}"
    );
}

/// Caller → callee edges between named functions of the modules both tools name alike.
type Edges = BTreeMap<(String, String), usize>;

/// Counts, for each edge, the samples whose stack (leaf first, `(function, module)`)
/// has it. Only frames of the modules `keep` accepts count: perf names libc's internal functions from its
/// MiniDebugInfo, which coral-symbolizer does not read, so an edge into libc would differ
/// by naming, not by unwinding. Frames elsewhere or unnamed end an edge, never bridge one.
fn count_edges(stacks: &[Vec<(String, String)>], keep: impl Fn(&str) -> bool) -> Edges {
    let mut edges = Edges::new();
    for stack in stacks {
        let named = |(function, module): &(String, String)| {
            (keep(module) && function != UNKNOWN_FUNCTION).then_some(function.clone())
        };
        let in_stack: BTreeSet<(String, String)> = stack
            .windows(2)
            .filter_map(|pair| Some((named(&pair[1])?, named(&pair[0])?)))
            .collect();
        for edge in in_stack {
            *edges.entry(edge).or_default() += 1;
        }
    }
    edges
}

/// The edges in at least `share` of `samples` samples.
fn frequent(edges: &Edges, samples: usize, share: f64) -> BTreeSet<(String, String)> {
    edges
        .iter()
        .filter(|&(_, &n)| n as f64 >= share * samples as f64)
        .map(|(edge, _)| edge.clone())
        .collect()
}

/// The user stacks of `perf script -F ip,sym,dso` output, leaf first, as (function,
/// module file name).
fn parse_perf_script(output: &str) -> Vec<Vec<(String, String)>> {
    let mut stacks = Vec::new();
    let mut stack: Vec<(String, String)> = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        if line.is_empty() {
            if !stack.is_empty() {
                stacks.push(std::mem::take(&mut stack));
            }
            continue;
        }
        // `<ip> <symbol> (<dso path>)`; a sample's header line (its tid) has no dso.
        let Some((ip_and_symbol, dso)) = line.rsplit_once(" (") else {
            continue;
        };
        let Some((_, symbol)) = ip_and_symbol.split_once(' ') else {
            continue;
        };
        let dso = dso.trim_end_matches(')');
        let module = dso.rsplit('/').next().unwrap_or(dso);
        stack.push((symbol.trim().to_owned(), module.to_owned()));
    }
    if !stack.is_empty() {
        stacks.push(stack);
    }
    stacks
}

/// Issue test 6: the call edges Coral finds agree with `perf record --call-graph dwarf`
/// on the same process at the same time.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn call_edges_agree_with_perf_dwarf_unwinding() {
    let _serial = serial();
    require_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let binary = cc(
        dir.path(),
        "zlib_workers.c",
        "zlib_workers",
        &["-O2", "-fomit-frame-pointer"],
    );
    let program = Program::start(&binary, &[]);
    let pid = program.pid();
    let (sampler, _) = samplers();
    sampler.drain();
    sampler
        .add_targets(&[pid], 199, Recording::CPU)
        .expect("add_targets");
    let perf_data = dir.path().join("perf.data");
    // Records the process for as long as `sleep` runs; no build-id collection (-N -B),
    // which only slows the run down.
    let recorded = Command::new("perf")
        .args([
            "record",
            "-q",
            "-N",
            "-B",
            "-F",
            "199",
            "--call-graph",
            "dwarf",
            "-p",
        ])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&perf_data)
        .args(["--", "sleep", "2"])
        .stdout(Stdio::null())
        .output()
        .expect("running perf (linux-perf)");
    assert!(
        recorded.status.success(),
        "perf record failed: {}",
        String::from_utf8_lossy(&recorded.stderr)
    );
    sampler.remove_targets(&[pid]).expect("remove_targets");
    std::thread::sleep(Duration::from_millis(50));
    let samples: Vec<Sample> = sampler
        .drain()
        .into_iter()
        .filter(|s| s.tgid == pid)
        .collect();
    let mut symbolizer = Symbolizer::new();
    let coral_stacks: Vec<Vec<(String, String)>> = samples
        .iter()
        .map(|s| {
            symbolize(&mut symbolizer, s)
                .into_iter()
                .map(|f| (f.function, f.module))
                .collect()
        })
        .collect();
    drop(program);
    let script = Command::new("perf")
        .args(["script", "-F", "tid,ip,sym,dso", "-i"])
        .arg(&perf_data)
        .output()
        .expect("running perf script");
    assert!(
        script.status.success(),
        "perf script failed: {}",
        String::from_utf8_lossy(&script.stderr)
    );
    let perf_stacks = parse_perf_script(&String::from_utf8_lossy(&script.stdout));

    let keep = |module: &str| module == "zlib_workers" || module.starts_with("libz.so");
    let coral = count_edges(&coral_stacks, keep);
    let perf = count_edges(&perf_stacks, keep);
    let (coral_n, perf_n) = (coral_stacks.len(), perf_stacks.len());
    let (coral_1, perf_1) = (
        frequent(&coral, coral_n, 0.01),
        frequent(&perf, perf_n, 0.01),
    );
    let (coral_5, perf_5) = (
        frequent(&coral, coral_n, 0.05),
        frequent(&perf, perf_n, 0.05),
    );
    let shares = |edges: &Edges, n: usize, set: &BTreeSet<(String, String)>| -> Vec<String> {
        set.iter()
            .map(|e| {
                format!(
                    "{} -> {} {:.1}%",
                    e.0,
                    e.1,
                    edges[e] as f64 * 100.0 / n as f64
                )
            })
            .collect()
    };
    eprintln!(
        "coral ({coral_n} samples), edges in >= 1%: {:#?}",
        shares(&coral, coral_n, &coral_1)
    );
    eprintln!(
        "perf ({perf_n} samples), edges in >= 1%: {:#?}",
        shares(&perf, perf_n, &perf_1)
    );
    let jaccard =
        coral_1.intersection(&perf_1).count() as f64 / coral_1.union(&perf_1).count().max(1) as f64;
    eprintln!("Jaccard index of the >= 1% sets: {jaccard:.2}");

    assert!(
        coral_n >= 100 && perf_n >= 100,
        "{coral_n} / {perf_n} samples"
    );
    // perf itself saw the program's chain down into zlib (else the comparison is void).
    for (caller, callee) in [
        ("worker_main", "slow_path"),
        ("slow_path", "compress_block"),
        ("compress_block", "compress2"),
    ] {
        let edge = (caller.to_owned(), callee.to_owned());
        assert!(perf_5.contains(&edge), "perf's profile lacks {edge:?}");
    }
    // The criterion: an edge in at least 5% of one profile's samples is in at least 1%
    // of the other's. Comparing the 1% sets directly (Jaccard) would hinge on edges near
    // the threshold, which sampling noise puts on either side (with ~200 perf samples,
    // 1% is two samples); an edge at 5% in one profile is far above 1% in truth, so
    // missing it from the other's 1% set means that unwinder lost it (or made it up).
    let coral_missing: Vec<_> = perf_5.difference(&coral_1).collect();
    let perf_missing: Vec<_> = coral_5.difference(&perf_1).collect();
    assert!(
        coral_missing.is_empty(),
        "edges in >= 5% of perf's samples but < 1% of Coral's: {coral_missing:?}"
    );
    assert!(
        perf_missing.is_empty(),
        "edges in >= 5% of Coral's samples but < 1% of perf's: {perf_missing:?}"
    );
}
