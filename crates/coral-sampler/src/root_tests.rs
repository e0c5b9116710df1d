//! Tests against the real kernel: they load the eBPF program, so they need root (or
//! CAP_BPF + CAP_PERFMON). Marked `#[ignore]` so that a plain `cargo test` stays
//! unprivileged; `cargo xtask test` runs them as root with `--include-ignored`. Run
//! without the privileges, they fail with a message saying so (never skip silently).
//!
//! The workload is a small C program compiled at test time with frame pointers and
//! known functions; the tests find those functions' addresses in the running process
//! (ELF symbol table + /proc/PID/maps) to check the leaf frames of the samples.

use crate::event::COUNTER_SAMPLES;
use crate::{EbpfSampler, Recording, Sample, Sampler, SamplerConfig, SamplerError};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const WORKLOAD_C: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long sink;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A cycle counter read inline, so a function that spins on it stays the leaf frame. */
static inline __attribute__((always_inline)) unsigned long long ticks(void) {
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_ia32_rdtsc();
#elif defined(__aarch64__)
    unsigned long long value;
    __asm__ volatile("mrs %0, cntvct_el0" : "=r"(value));
    return value;
#else
#error "add a cycle counter for this architecture"
#endif
}

/* Spin for a number of counter ticks: the time split is then exactly the tick split,
 * whatever each loop's cost per iteration (alignment, store forwarding...). The
 * deadline is a volatile local so that the function has a stack frame: GCC sets up
 * no frame pointer in a leaf function that needs no frame, even with
 * -fno-omit-frame-pointer, and the walk would then skip the caller. */
void hot_leaf(unsigned long long n) { volatile unsigned long long end = ticks() + n; while (ticks() < end) sink++; }
void cold_leaf(unsigned long long n) { volatile unsigned long long end = ticks() + n; while (ticks() < end) sink++; }
void hot_a(unsigned long long n) { volatile unsigned long long end = ticks() + n; while (ticks() < end) sink++; }
void hot_b(unsigned long long n) { volatile unsigned long long end = ticks() + n; while (ticks() < end) sink++; }

/* Per round, 80% of the time in hot_leaf and 20% in cold_leaf. */
void run_work(double seconds) {
    double end = now() + seconds;
    while (now() < end) {
        hot_leaf(400000);
        cold_leaf(100000);
    }
}

/* A fixed amount of CPU work, for throughput. */
static unsigned long spin(unsigned long n) { for (unsigned long i = 0; i < n; i++) sink += i; return n; }

static double thread_seconds;

static void *thread_a(void *arg) {
    (void)arg;
    printf("A %ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    double end = now() + thread_seconds;
    while (now() < end) hot_a(100000);
    return NULL;
}

static void *thread_b(void *arg) {
    (void)arg;
    printf("B %ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    double end = now() + thread_seconds;
    while (now() < end) hot_b(100000);
    return NULL;
}

/* Usage: workload work SECONDS | threads SECONDS | count SECONDS | wait */
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    double seconds = argc > 2 ? atof(argv[2]) : 1.0;
    if (strcmp(argv[1], "wait") == 0) {
        /* Waits for a line on stdin (SECONDS), spins for that much CPU time and prints
         * the calls made and the CPU time used: throughput that does not depend on
         * what else the machine runs. */
        char line[64];
        printf("ready\n");
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin)) return 3;
        seconds = atof(line);
        unsigned long calls = 0;
        double start = cpu_now(), end = start + seconds;
        while (cpu_now() < end) calls += spin(100000) / 100000;
        printf("%lu %.6f\n", calls, cpu_now() - start);
        return 0;
    }
    printf("ready\n");
    fflush(stdout);
    if (strcmp(argv[1], "work") == 0) {
        run_work(seconds);
    } else if (strcmp(argv[1], "threads") == 0) {
        pthread_t a, b;
        thread_seconds = seconds;
        pthread_create(&a, NULL, thread_a, NULL);
        pthread_create(&b, NULL, thread_b, NULL);
        pthread_join(a, NULL);
        pthread_join(b, NULL);
    } else {
        return 2;
    }
    return 0;
}
"#;

/// Root tests run one at a time: they measure CPU shares and throughput on a small
/// machine, and each spins up busy workloads.
pub(crate) fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let euid: u32 = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|id| id.parse().ok())
        .expect("Uid line in /proc/self/status");
    assert!(
        euid == 0,
        "this test loads eBPF programs and must run as root (euid is {euid}): run `cargo xtask test`"
    );
}

/// The workload binary, compiled once per test run.
fn workload() -> &'static Path {
    static BINARY: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = BINARY.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let source = dir.path().join("workload.c");
        std::fs::write(&source, WORKLOAD_C).expect("write workload.c");
        let binary = dir.path().join("workload");
        let status = Command::new("cc")
            .args([
                "-O1",
                "-g",
                "-fno-omit-frame-pointer",
                "-fno-inline",
                "-pthread",
                "-o",
            ])
            .arg(&binary)
            .arg(&source)
            .status()
            .expect("running cc (gcc) to build the test workload");
        assert!(status.success(), "compiling the test workload failed");
        let binary = binary.canonicalize().expect("workload path");
        (dir, binary)
    });
    path
}

/// A running workload process, killed if the test fails before waiting for it.
pub(crate) struct Workload {
    pub(crate) child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Workload {
    pub(crate) fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(workload())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning the workload");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut workload = Self { child, stdout };
        assert_eq!(workload.line(), "ready");
        workload
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("reading the workload's output");
        line.trim().to_owned()
    }

    pub(crate) fn wait(&mut self) {
        let status = self.child.wait().expect("waiting for the workload");
        assert!(status.success(), "workload failed: {status}");
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the workload's functions are in a running process.
struct Symbols(HashMap<String, Range<u64>>);

impl Symbols {
    /// Reads the symbol table of the workload binary and maps it to the process's
    /// load address (the binary is position-independent).
    fn of(pid: u32) -> Self {
        use object::{Object, ObjectSegment, ObjectSymbol};
        let binary = workload();
        let data = std::fs::read(binary).expect("read workload binary");
        let file = object::File::parse(&*data).expect("parse workload ELF");
        let maps =
            std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read /proc/PID/maps");
        // (start, end, file offset) of the mappings of the binary.
        let mappings: Vec<(u64, u64, u64)> = maps
            .lines()
            .filter(|line| line.ends_with(binary.to_str().expect("utf-8 path")))
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (start, end) = fields[0].split_once('-').expect("address range");
                let hex = |s: &str| u64::from_str_radix(s, 16).expect("hex");
                (hex(start), hex(end), hex(fields[2]))
            })
            .collect();
        assert!(
            !mappings.is_empty(),
            "workload binary not mapped in /proc/{pid}/maps"
        );
        let runtime = |address: u64| -> u64 {
            let segment = file
                .segments()
                .find(|s| (s.address()..s.address() + s.size()).contains(&address))
                .expect("symbol in a segment");
            let file_offset = address - segment.address() + segment.file_range().0;
            let &(start, _, offset) = mappings
                .iter()
                .find(|&&(start, end, offset)| {
                    (offset..offset + (end - start)).contains(&file_offset)
                })
                .expect("symbol's page mapped");
            start + (file_offset - offset)
        };
        let mut symbols = HashMap::new();
        for name in [
            "hot_leaf",
            "cold_leaf",
            "run_work",
            "hot_a",
            "hot_b",
            "main",
        ] {
            let symbol = file
                .symbols()
                .find(|s| s.name() == Ok(name))
                .unwrap_or_else(|| panic!("{name} in ELF"));
            assert!(symbol.size() > 0, "{name} has a size");
            let start = runtime(symbol.address());
            symbols.insert(name.to_owned(), start..start + symbol.size());
        }
        Self(symbols)
    }

    /// The workload function an address is in, if any.
    fn function(&self, address: u64) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, range)| range.contains(&address))
            .map(|(name, _)| name.as_str())
    }
}

/// CPU time (user + system, all threads) a process has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 1..]
        .split_whitespace()
        .collect();
    // Fields 14 and 15 (utime, stime); fields[0] is field 3.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    ticks as f64 / per_second as f64
}

/// Samples expected at `hz` for `cpu_seconds` of CPU time: the CPU clock ticks only
/// while the process runs, so this holds however busy the machine is. When the process
/// shares its CPU, whether each tick finds it running is a coin toss, hence the
/// tolerance of 3 standard deviations (at least 20%): still far from half or double
/// the frequency.
fn assert_rate(samples: usize, hz: u32, cpu_seconds: f64, what: &str) {
    let expected = f64::from(hz) * cpu_seconds;
    let ratio = samples as f64 / expected;
    eprintln!(
        "{what}: {samples} samples at {hz} Hz for {cpu_seconds:.2} CPU s (expected {expected:.0}, ratio {ratio:.2})"
    );
    let tolerance = (0.2 * expected).max(3.0 * expected.sqrt());
    assert!(
        (samples as f64 - expected).abs() <= tolerance,
        "{what}: {samples} samples, expected {expected:.0} ± {tolerance:.0}"
    );
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as i64
}

/// Number of perf event and BPF link file descriptors this process holds (with BPF
/// links, the link holds the perf event and aya closes the perf event's own fd).
fn open_perf_events() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            target.contains("perf_event") || target.contains("bpf_link")
        })
        .count()
}

fn sampler() -> EbpfSampler {
    require_root();
    EbpfSampler::new(SamplerConfig::default()).expect("EbpfSampler::new as root")
}

fn leaf_counts<'a>(
    samples: impl IntoIterator<Item = &'a Sample>,
    symbols: &Symbols,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for sample in samples {
        let leaf = sample
            .stack
            .user
            .first()
            .and_then(|&ip| symbols.function(ip))
            .unwrap_or("(other)");
        *counts.entry(leaf.to_owned()).or_insert(0) += 1;
    }
    counts
}

#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn samples_the_hot_function_of_a_target_and_nothing_else() {
    let _serial = serial();
    let sampler = sampler();
    let perf_fds_before = open_perf_events();
    assert!(
        !sampler.stats().attached,
        "nothing attached before the first target"
    );

    let window_start = unix_now();
    let mut workload = Workload::spawn(&["work", "3.5"]);
    let pid = workload.pid();
    let symbols = Symbols::of(pid);
    sampler
        .add_targets(&[pid], 99, Recording::CPU)
        .expect("add_targets");
    let cpu_start = cpu_seconds(pid);
    let stats = sampler.stats();
    assert!(
        stats.attached && stats.targets == 1 && stats.frequency_hz == 99,
        "{stats:?}"
    );
    assert!(open_perf_events() > perf_fds_before, "perf events opened");

    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_millis(3000) {
        std::thread::sleep(Duration::from_millis(250));
        let drained = sampler.drain();
        assert!(
            drained.is_sorted_by_key(|s| s.time_unix_nano),
            "drain returns samples in time order"
        );
        samples.extend(drained);
    }
    let cpu_end = cpu_seconds(pid);
    sampler.remove_targets(&[pid]).expect("remove_targets");
    let window_end = unix_now();
    let stats = sampler.stats();
    assert!(
        !stats.attached && stats.targets == 0 && stats.frequency_hz == 0,
        "{stats:?}"
    );
    assert_eq!(
        open_perf_events(),
        perf_fds_before,
        "no perf event left open after the last target went"
    );

    // Samples already in flight arrive; then nothing more while the workload still runs.
    std::thread::sleep(Duration::from_millis(100));
    samples.extend(sampler.drain());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sampler.drain().is_empty(),
        "no samples after remove_targets"
    );
    workload.wait();

    // ~99 Hz of the CPU time the workload got (3 s if it had a CPU to itself).
    assert_rate(
        samples.len(),
        99,
        cpu_end - cpu_start,
        "single-threaded workload",
    );
    assert!(
        samples.iter().all(|s| s.tgid == pid),
        "samples of other processes"
    );
    for s in &samples {
        assert!(
            (window_start..=window_end).contains(&s.time_unix_nano),
            "sample time {} outside the run [{window_start}, {window_end}]",
            s.time_unix_nano
        );
    }

    let counts = leaf_counts(&samples, &symbols);
    let total = samples.len() as f64;
    let hot = *counts.get("hot_leaf").unwrap_or(&0) as f64 / total;
    let cold = *counts.get("cold_leaf").unwrap_or(&0) as f64 / total;
    eprintln!("{} samples, leaf shares: {counts:?}", samples.len());
    assert!(
        (0.65..=0.95).contains(&hot),
        "hot_leaf share {hot:.2} not in 0.65..=0.95: {counts:?}"
    );
    assert!(cold > 0.05, "cold_leaf share {cold:.2}: {counts:?}");

    // Most hot_leaf samples show run_work as the caller, main above.
    let hot_samples: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.stack.user.first().and_then(|&ip| symbols.function(ip)) == Some("hot_leaf"))
        .collect();
    let with_caller = hot_samples
        .iter()
        .filter(|s| {
            s.stack.user.get(1).and_then(|&ip| symbols.function(ip)) == Some("run_work")
                && s.stack.user.get(2).and_then(|&ip| symbols.function(ip)) == Some("main")
        })
        .count();
    assert!(
        with_caller * 10 >= hot_samples.len() * 8,
        "only {with_caller} of {} hot_leaf samples walk up to run_work and main",
        hot_samples.len()
    );

    let stats = sampler.stats();
    assert_eq!(stats.samples, samples.len() as u64, "{stats:?}");
    assert_eq!((stats.lost, stats.dropped), (0, 0), "{stats:?}");
    assert_eq!(stats.stack_errors, 0, "{stats:?}");
    assert!(
        samples.iter().all(|s| !s.stack.user.is_empty()),
        "every sample has a user stack"
    );
    // The kernel's own count agrees with what user space received.
    assert_eq!(sampler.kernel_counter(COUNTER_SAMPLES), stats.samples);
    assert!(sampler.take_losses().is_empty());
    // Equal stacks share one copy.
    let distinct: std::collections::HashSet<*const crate::Stack> = samples
        .iter()
        .map(|s| std::sync::Arc::as_ptr(&s.stack))
        .collect();
    let distinct_content: std::collections::HashSet<&crate::Stack> =
        samples.iter().map(|s| &*s.stack).collect();
    assert_eq!(
        distinct.len(),
        distinct_content.len(),
        "stacks are interned"
    );
}

#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn samples_are_attributed_to_the_right_thread() {
    let _serial = serial();
    let sampler = sampler();
    let mut workload = Workload::spawn(&["threads", "2.5"]);
    let pid = workload.pid();
    let mut tids = HashMap::new();
    for _ in 0..2 {
        let line = workload.line();
        let (name, tid) = line.split_once(' ').expect("thread line");
        tids.insert(name.to_owned(), tid.parse::<u32>().expect("tid"));
    }
    let symbols = Symbols::of(pid);
    sampler
        .add_targets(&[pid], 99, Recording::CPU)
        .expect("add_targets");
    workload.wait();
    std::thread::sleep(Duration::from_millis(100));
    let samples = sampler.drain();
    sampler.remove_targets(&[pid]).expect("remove_targets");

    let (tid_a, tid_b) = (tids["A"], tids["B"]);
    let of = |tid: u32| samples.iter().filter(move |s| s.tid == tid);
    let counts_a = leaf_counts(of(tid_a), &symbols);
    let counts_b = leaf_counts(of(tid_b), &symbols);
    eprintln!("thread A ({tid_a}): {counts_a:?}; thread B ({tid_b}): {counts_b:?}");
    assert!(
        counts_a.get("hot_a").copied().unwrap_or(0) >= 20,
        "thread A samples in hot_a: {counts_a:?}"
    );
    assert!(
        counts_b.get("hot_b").copied().unwrap_or(0) >= 20,
        "thread B samples in hot_b: {counts_b:?}"
    );
    assert!(
        !counts_a.contains_key("hot_b"),
        "thread A sampled in hot_b: {counts_a:?}"
    );
    assert!(
        !counts_b.contains_key("hot_a"),
        "thread B sampled in hot_a: {counts_b:?}"
    );
    assert!(samples.iter().all(|s| s.tgid == pid));
}

#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn missing_and_exiting_processes_do_not_break_sampling() {
    let _serial = serial();
    let sampler = sampler();

    // A pid that does not exist: skipped, nothing attached.
    let missing = (1_000_000..4_000_000)
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .expect("free pid");
    sampler
        .add_targets(&[missing], 99, Recording::CPU)
        .expect("a missing pid is not an error");
    let stats = sampler.stats();
    assert!(!stats.attached && stats.targets == 0, "{stats:?}");
    sampler
        .remove_targets(&[missing, 12345678])
        .expect("removing unknown pids is fine");

    // One process exits mid-profile, another goes on.
    let mut short = Workload::spawn(&["work", "0.5"]);
    let mut long = Workload::spawn(&["work", "3"]);
    let (short_pid, long_pid) = (short.pid(), long.pid());
    sampler
        .add_targets(&[short_pid, long_pid], 99, Recording::CPU)
        .expect("add_targets");
    assert_eq!(sampler.stats().targets, 2);
    short.wait();
    let exited_at = unix_now();
    // The exited process is forgotten within about a second.
    let deadline = Instant::now() + Duration::from_secs(3);
    while sampler.stats().targets != 1 {
        assert!(
            Instant::now() < deadline,
            "exited process still a target: {:?}",
            sampler.stats()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sampler.stats().attached, "still sampling the other process");
    long.wait();
    std::thread::sleep(Duration::from_millis(100));
    let samples = sampler.drain();
    let after_exit = samples
        .iter()
        .filter(|s| s.tgid == long_pid && s.time_unix_nano > exited_at + 200_000_000)
        .count();
    assert!(
        after_exit >= 20,
        "the other process is still sampled after one exited: {after_exit} samples"
    );
    assert!(
        samples.iter().any(|s| s.tgid == short_pid),
        "the short process was sampled while it ran"
    );
    assert!(
        samples
            .iter()
            .filter(|s| s.tgid == short_pid)
            .all(|s| s.time_unix_nano <= exited_at)
    );

    // The long one has exited too: pruned, and then nothing is attached.
    let deadline = Instant::now() + Duration::from_secs(3);
    while sampler.stats().attached {
        assert!(
            Instant::now() < deadline,
            "still attached with no live target: {:?}",
            sampler.stats()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sampler.stats().targets, 0);
}

#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn frequency_follows_the_targets() {
    let _serial = serial();
    let sampler = sampler();
    let workload = Workload::spawn(&["work", "3"]);
    let pid = workload.pid();
    for bad in [0, 1001] {
        match sampler.add_targets(&[pid], bad, Recording::CPU) {
            Err(SamplerError::InvalidFrequency {
                requested,
                max: 1000,
            }) => assert_eq!(requested, bad),
            other => panic!("{bad} Hz: {other:?}"),
        }
    }
    assert_eq!(
        sampler.stats().targets,
        0,
        "an invalid call changes nothing"
    );
    // A second of sampling: its wall-clock range and the CPU time the workload used.
    let window = || {
        let (t0, c0) = (unix_now(), cpu_seconds(pid));
        std::thread::sleep(Duration::from_millis(1000));
        (t0..unix_now(), cpu_seconds(pid) - c0)
    };
    sampler
        .add_targets(&[pid], 49, Recording::CPU)
        .expect("add_targets");
    assert_eq!(sampler.stats().frequency_hz, 49);
    let (at_49, cpu_49) = window();
    sampler
        .add_targets(&[pid], 199, Recording::CPU)
        .expect("add_targets");
    assert_eq!(
        sampler.stats().frequency_hz,
        199,
        "raised to the max requested"
    );
    sampler
        .add_targets(&[pid], 99, Recording::CPU)
        .expect("add_targets");
    assert_eq!(
        sampler.stats().frequency_hz,
        199,
        "a target keeps the highest frequency it asked for"
    );
    let (at_199, cpu_199) = window();
    std::thread::sleep(Duration::from_millis(50));
    let samples = sampler.drain();
    let count = |range: &Range<i64>| {
        samples
            .iter()
            .filter(|s| range.contains(&s.time_unix_nano))
            .count()
    };
    assert_rate(count(&at_49), 49, cpu_49, "at 49 Hz");
    assert_rate(count(&at_199), 199, cpu_199, "raised to 199 Hz");
    // Another process asks for less; when the one that asked for more goes, the
    // frequency comes down to what is still asked for.
    let other = Workload::spawn(&["work", "2"]);
    sampler
        .add_targets(&[other.pid()], 49, Recording::CPU)
        .expect("add_targets");
    assert_eq!(sampler.stats().frequency_hz, 199);
    sampler.remove_targets(&[pid]).expect("remove_targets");
    assert_eq!(sampler.stats().frequency_hz, 49, "lowered");
    sampler
        .remove_targets(&[other.pid()])
        .expect("remove_targets");
    assert_eq!(sampler.stats().frequency_hz, 0);
}

/// Runs the `wait` workload for `seconds` of CPU time, optionally profiled, and returns
/// its loop's calls per CPU second (independent of how busy the machine is).
fn throughput(sampler: Option<&EbpfSampler>, seconds: f64) -> f64 {
    use std::io::Write;
    let mut workload = Workload::spawn(&["wait"]);
    if let Some(sampler) = sampler {
        sampler
            .add_targets(&[workload.pid()], 99, Recording::CPU)
            .expect("add_targets");
    }
    let mut stdin = workload.child.stdin.take().expect("piped stdin");
    writeln!(stdin, "{seconds}").expect("start the workload");
    let line = workload.line();
    let (calls, cpu_seconds) = line.split_once(' ').expect("calls and CPU seconds");
    let calls: f64 = calls.parse().expect("call count");
    let cpu_seconds: f64 = cpu_seconds.parse().expect("CPU seconds");
    workload.wait();
    if let Some(sampler) = sampler {
        sampler
            .remove_targets(&[workload.pid()])
            .expect("remove_targets");
    }
    calls / cpu_seconds
}

/// Memory of the sampler's eBPF maps: (kernel memory charged for them, from
/// `memlock:` in /proc/self/fdinfo; resident size of their mappings in this process,
/// i.e. the ring buffer's pages, from /proc/self/smaps), in KiB.
fn bpf_map_memory_kib() -> (u64, u64) {
    let mut charged = 0;
    for entry in std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
    {
        let is_map =
            std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().contains("bpf-map"));
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ));
        if let (true, Ok(info)) = (is_map, info) {
            charged += info
                .lines()
                .find_map(|line| line.strip_prefix("memlock:"))
                .and_then(|bytes| bytes.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
    let mut resident = 0;
    let mut in_bpf_mapping = false;
    for line in smaps.lines() {
        if line
            .split_whitespace()
            .next()
            .is_some_and(|first| first.contains('-') && !first.ends_with(':'))
        {
            in_bpf_mapping = line.contains("bpf");
        } else if let Some(kib) = line.strip_prefix("Rss:").filter(|_| in_bpf_mapping) {
            resident += kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    (charged / 1024, resident)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS")
}

/// Not a benchmark (that comes later): prints the throughput of a CPU-bound loop with
/// and without sampling at 99 Hz, interleaved in the same run, the eBPF program's own
/// cost per sample, and the sampler's memory. Fails only on a gross slowdown.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn overhead_at_99_hz() {
    let _serial = serial();
    require_root();
    let _ = workload();
    let rss_before = rss_kib();
    let sampler = EbpfSampler::new(SamplerConfig::default()).expect("EbpfSampler::new as root");
    let rss_loaded = rss_kib();
    let _stats_enabled =
        aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF run-time stats");
    // Attached, but the only target sleeps: every tick is a non-target tick.
    let idle = Workload::spawn(&["wait"]);
    sampler
        .add_targets(&[idle.pid()], 99, Recording::CPU)
        .expect("add_targets");
    std::thread::sleep(Duration::from_secs(1));
    sampler
        .remove_targets(&[idle.pid()])
        .expect("remove_targets");
    drop(idle);
    let (idle_time, idle_runs) = sampler.program_run_stats();
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..4 {
        without.push(throughput(None, 1.0));
        with.push(throughput(Some(&sampler), 1.0));
    }
    let samples = sampler.drain().len();
    let (run_time, runs) = sampler.program_run_stats();
    let rss_after = rss_kib();
    let (map_charged, map_resident) = bpf_map_memory_kib();
    let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let (best_without, best_with) = (best(&without), best(&with));
    let overhead = (1.0 - best_with / best_without) * 100.0;
    let per_idle_run = idle_time.as_nanos() as f64 / idle_runs.max(1) as f64;
    let (busy_time, busy_runs) = (run_time - idle_time, runs - idle_runs);
    // Runs while profiling: `samples` targeted ones, the rest non-target ticks.
    let per_sample = (busy_time.as_nanos() as f64
        - per_idle_run * busy_runs.saturating_sub(samples as u64) as f64)
        / samples.max(1) as f64;
    eprintln!(
        "overhead at 99 Hz: without {without:.0?} calls/CPU-s, with {with:.0?} calls/CPU-s; best {best_without:.0} vs \
         {best_with:.0}: {overhead:.2}% slower; {samples} samples"
    );
    eprintln!(
        "eBPF program: {per_idle_run:.0} ns per tick of a non-target ({idle_runs} runs), about {per_sample:.0} ns per \
         sample ({samples} of {busy_runs} runs); at 99 Hz: {:.3}% of a profiled thread's CPU, {:.4}% of each CPU \
         for other work",
        per_sample * 99.0 / 1e9 * 100.0,
        per_idle_run * 99.0 / 1e9 * 100.0
    );
    eprintln!(
        "memory: RSS {rss_before} KiB before, {rss_loaded} KiB loaded, {rss_after} KiB after sampling; eBPF maps: \
         {map_charged} KiB kernel memory, {map_resident} KiB of ring buffer mappings resident"
    );
    assert!(samples >= 50, "{samples} samples in 4 profiled seconds");
    assert!(
        best_with > best_without * 0.5,
        "sampling at 99 Hz halved the throughput"
    );
}

/// A full ring buffer and a full user-space buffer: a 16 KiB ring holds one or two
/// samples with their stacks, and samples not drained for a second overflow an
/// 8-sample buffer. Both are counted and reported as losses of that process, nothing
/// fails, and sampling goes on.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn full_buffers_are_counted_as_losses_and_sampling_goes_on() {
    let _serial = serial();
    require_root();
    let sampler = EbpfSampler::new(SamplerConfig {
        ring_bytes: 16 * 1024,
        max_buffered_samples: 8,
        ..SamplerConfig::default()
    })
    .expect("EbpfSampler::new as root");
    let mut workload = Workload::spawn(&["work", "2.5"]);
    let pid = workload.pid();
    sampler
        .add_targets(&[pid], 1000, Recording::CPU)
        .expect("add_targets");
    std::thread::sleep(Duration::from_millis(1000));
    let stats = sampler.stats();
    assert!(
        stats.dropped > 0,
        "the 8-sample buffer overflowed: {stats:?}"
    );
    assert!(stats.lost > 0, "the 16 KiB ring buffer was full: {stats:?}");
    assert!(sampler.drain().len() <= 8, "{stats:?}");
    let losses = sampler.take_losses();
    // Drops in user space are all reported; ring buffer losses are reported with the
    // CPU's next event, so some may still be pending.
    let reported: u64 = losses.iter().map(|l| l.samples).sum();
    assert!(
        reported > stats.dropped && reported <= stats.dropped + sampler.stats().lost,
        "every dropped sample and ring buffer losses are reported: {losses:?}, {stats:?}"
    );
    assert!(
        losses.len() < reported as usize,
        "a thread's drops at once are one loss: {losses:?}"
    );
    assert!(
        losses.iter().all(|l| l.tgid == Some(pid)
            && l.tid == Some(pid)
            && l.start_unix_nano <= l.end_unix_nano),
        "losses name the process and its only thread: {losses:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let more = sampler.drain();
    assert!(!more.is_empty(), "still sampling after the maps filled up");
    assert!(more.iter().all(|s| s.tgid == pid));
    sampler.remove_targets(&[pid]).expect("remove_targets");
    workload.wait();
}

/// Takes a CPU offline for the test and brings it back online when dropped.
struct OfflineCpu(u32);

impl OfflineCpu {
    fn path(cpu: u32) -> String {
        format!("/sys/devices/system/cpu/cpu{cpu}/online")
    }

    fn take(cpu: u32) -> Self {
        std::fs::write(Self::path(cpu), "0").expect("taking a CPU offline (root, CPU hotplug)");
        Self(cpu)
    }
}

impl Drop for OfflineCpu {
    fn drop(&mut self) {
        if let Err(error) = std::fs::write(Self::path(self.0), "1") {
            eprintln!("bringing CPU {} back online failed: {error}", self.0);
        }
    }
}

/// A CPU that goes offline and comes back while a process is profiled is sampled again
/// (its perf event died with it and is opened anew within about a second).
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn a_cpu_that_comes_back_online_is_sampled() {
    let _serial = serial();
    let cpus = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("online CPUs");
    let last: u32 = cpus
        .trim()
        .rsplit(['-', ','])
        .next()
        .and_then(|n| n.parse().ok())
        .expect("CPU list");
    assert!(
        last > 0 && Path::new(&OfflineCpu::path(last)).exists(),
        "this test needs a second CPU that can go offline ({cpus:?})"
    );
    let sampler = sampler();
    let mut workload = Workload::spawn(&["threads", "6"]);
    let pid = workload.pid();
    sampler
        .add_targets(&[pid], 99, Recording::CPU)
        .expect("add_targets");
    assert!(sampler.attached_cpus().contains(&last));
    {
        let _offline = OfflineCpu::take(last);
        std::thread::sleep(Duration::from_millis(1500));
    }
    // Keep the workload on that CPU now, so it is busy whatever the scheduler prefers.
    let pinned = Command::new("taskset")
        .args(["-a", "-c", "-p", &last.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("running taskset (util-linux)");
    assert!(pinned.success(), "taskset failed");
    let back_at = unix_now();
    std::thread::sleep(Duration::from_millis(2500));
    let on_it = sampler
        .drain()
        .iter()
        .filter(|s| s.cpu == last && s.time_unix_nano > back_at + 1_200_000_000)
        .count();
    sampler.remove_targets(&[pid]).expect("remove_targets");
    workload.wait();
    // About 99 Hz × 1.3 s of a busy CPU, less what other processes take of it on a
    // loaded machine (none without re-attaching).
    assert!(
        on_it >= 15,
        "CPU {last} came back online but only {on_it} samples were taken on it since"
    );
}
