//! A CPU-bound workload that certainly has no frame pointers: a C program compiled at run
//! time with `-O2 -fomit-frame-pointer` (the usual build of C and C++ services; Debian's
//! libc has none either), with the same protocol as `coral-bench spin`: it waits for a
//! line on stdin, burns CPU on 2 threads for the given seconds (forever for 0) and prints
//! `<iterations> <elapsed ns> <CPU ns used>`. Its stacks are ~16 frames deep (a
//! recursion with stack buffers, then a few named functions), under `start_thread` /
//! `clone3` of libc.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCE: &str = r#"
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define THREADS 2

static double run_for;
static struct timespec started;

static double since_start(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - started.tv_sec) + (now.tv_nsec - started.tv_nsec) / 1e9;
}

/* An opaque barrier: no tail calls, no accumulator rewriting of the recursion. */
#define KEEP(x) __asm__ volatile("" : "+r"(x))

__attribute__((noinline)) uint64_t nofp_mix(uint64_t x, int rounds) {
    for (int i = 0; i < rounds; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    KEEP(x);
    return x;
}

__attribute__((noinline)) uint64_t nofp_hash_items(uint64_t seed) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (uint64_t i = 0; i < 16; i++) h = (h ^ nofp_mix(seed + i, 8)) * 0x100000001b3ull;
    KEEP(h);
    return h;
}

__attribute__((noinline)) uint64_t nofp_price_cart(uint64_t seed) {
    uint64_t total = 0;
    for (uint64_t i = 0; i < 4; i++) total += nofp_hash_items(seed ^ (i << 32));
    KEEP(total);
    return total;
}

__attribute__((noinline)) uint64_t nofp_handle_unit(uint64_t seed) {
    uint64_t r = nofp_price_cart(seed) + nofp_mix(seed, 64);
    KEEP(r);
    return r;
}

/* Frames of a few hundred bytes each, as request handlers have. */
__attribute__((noinline)) uint64_t nofp_nest(int depth, uint64_t seed) {
    volatile char buf[256];
    buf[depth & 255] = (char)seed;
    uint64_t r = depth == 0 ? nofp_handle_unit(seed) : nofp_nest(depth - 1, seed * 31 + 7);
    KEEP(r);
    return r ^ (uint64_t)buf[depth & 255];
}

__attribute__((noinline)) void *nofp_worker(void *arg) {
    uint64_t acc = (uint64_t)(uintptr_t)arg, iterations = 0;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            acc += nofp_nest(8, acc ^ iterations);
            iterations++;
        }
        if (run_for > 0 && since_start() >= run_for) break;
    }
    KEEP(acc);
    return (void *)(uintptr_t)iterations;
}

int main(int argc, char **argv) {
    run_for = argc > 1 ? atof(argv[1]) : 0;
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;
    clock_gettime(CLOCK_MONOTONIC, &started);
    pthread_t threads[THREADS];
    for (uintptr_t t = 0; t < THREADS; t++) pthread_create(&threads[t], NULL, nofp_worker, (void *)t);
    uint64_t iterations = 0;
    for (int t = 0; t < THREADS; t++) {
        void *n;
        pthread_join(threads[t], &n);
        iterations += (uint64_t)(uintptr_t)n;
    }
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    uint64_t cpu_ns = (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000000000ull +
                      (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1000ull;
    printf("%llu %llu %llu\n", (unsigned long long)iterations,
           (unsigned long long)(since_start() * 1e9), (unsigned long long)cpu_ns);
    return 0;
}
"#;

/// The workload's functions, to check that none sets up a frame pointer.
const FUNCTIONS: &[&str] = &[
    "nofp_mix",
    "nofp_hash_items",
    "nofp_price_cart",
    "nofp_handle_unit",
    "nofp_nest",
    "nofp_worker",
    "main",
];

/// The compiled workload, in a temporary directory removed on drop.
pub struct NoFpWorkload {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl NoFpWorkload {
    /// Compiles the workload with `cc` and checks its functions have no frame pointer.
    pub fn build() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let src = dir.path().join("nofp.c");
        std::fs::write(&src, SOURCE)?;
        let path = dir.path().join("nofp-workload");
        let status = Command::new("cc")
            .args(["-O2", "-g", "-fomit-frame-pointer", "-pthread", "-o"])
            .arg(&path)
            .arg(&src)
            .status()
            .context("cannot run `cc` (the no-frame-pointer workload is compiled with it)")?;
        if !status.success() {
            bail!("compiling the no-frame-pointer workload failed: {status}");
        }
        let with_fp = functions_with_frame_pointer(&path)?;
        anyhow::ensure!(
            with_fp.is_empty(),
            "the workload's {with_fp:?} set up frame pointers"
        );
        Ok(Self { path, _dir: dir })
    }

    /// `<workload> <seconds>` (0: until killed), waiting for a line on stdin.
    pub fn command(&self, seconds: f64) -> Command {
        let mut command = Command::new(&self.path);
        command.arg(seconds.to_string());
        command
    }
}

/// Which of [`FUNCTIONS`] copy sp to bp (`mov %rsp,%rbp`: a frame pointer), read from
/// `objdump -d`. Without objdump, none is reported (the flags say so anyway).
fn functions_with_frame_pointer(binary: &Path) -> Result<Vec<String>> {
    let Ok(out) = Command::new("objdump")
        .args(["-d", "--no-show-raw-insn"])
        .arg(binary)
        .output()
    else {
        return Ok(Vec::new());
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut current: Option<&str> = None;
    let mut found = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_suffix(">:").and_then(|l| l.split_once(" <")) {
            current = FUNCTIONS.iter().copied().find(|f| *f == name.1);
        } else if let Some(f) = current
            && line.contains("mov    %rsp,%rbp")
            && !found.iter().any(|x| x == f)
        {
            found.push(f.to_string());
        }
    }
    Ok(found)
}

/// Whether `coral-bench`'s own `spin` work functions set up a frame pointer: looks for
/// `mov %rsp,%rbp` (48 89 e5) in their first bytes, in this very process.
pub fn spin_has_frame_pointers() -> bool {
    crate::busy::work_function_prologues()
        .iter()
        .any(|bytes| bytes.windows(3).any(|w| w == [0x48, 0x89, 0xe5]))
}
