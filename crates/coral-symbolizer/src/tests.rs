use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

#[inline(never)]
fn coral_known_function(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_mul(31)
}

#[inline(never)]
fn coral_other_known_function(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_add(7)
}

fn own_pid() -> u32 {
    std::process::id()
}

fn own_exe_name() -> String {
    let exe = std::env::current_exe().unwrap();
    exe.file_name().unwrap().to_string_lossy().into_owned()
}

/// Address inside a function, as a return address would be.
fn addr_of(f: *const ()) -> u64 {
    f as u64 + 1
}

fn known_addr() -> u64 {
    addr_of(coral_known_function as *const ())
}

fn other_known_addr() -> u64 {
    addr_of(coral_other_known_function as *const ())
}

fn getpid_addr() -> u64 {
    addr_of(libc::getpid as *const ())
}

/// A child process killed and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const SPIN_C: &str = r#"
#include <unistd.h>
static volatile unsigned long sink;
__attribute__((noinline)) void coral_spin(void) {
    for (unsigned long i = 0; i < 1000; i++) sink += i;
}
int main(void) {
    for (;;) { coral_spin(); usleep(1000); }
}
"#;

/// Compiles the spin program into `dir/name`, optionally stripped / without build id.
fn build_spin(dir: &Path, name: &str, strip: bool, build_id: bool) -> std::path::PathBuf {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, SPIN_C).unwrap();
    let bin = dir.join(name);
    let mut cc = Command::new("cc");
    cc.args(["-O1", "-fno-omit-frame-pointer", "-o"])
        .arg(&bin)
        .arg(&src);
    if !build_id {
        cc.arg("-Wl,--build-id=none");
    }
    let status = cc
        .status()
        .expect("cc must be installed to build the test program");
    assert!(status.success(), "cc failed");
    if strip {
        let status = Command::new("strip").arg(&bin).status().expect("strip");
        assert!(status.success(), "strip failed");
    }
    bin
}

/// Starts `bin` and returns it with the start address and file offset of its
/// executable mapping, once the exec is visible in /proc/PID/maps.
fn spawn_and_find_text(bin: &Path) -> (Reaped, u64, u64) {
    let child = Reaped(
        Command::new(bin)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        for line in maps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() >= 6 && fields[1].contains('x') && Path::new(fields[5]) == bin {
                let (start, _) = fields[0].split_once('-').unwrap();
                let start = u64::from_str_radix(start, 16).unwrap();
                let offset = u64::from_str_radix(fields[2], 16).unwrap();
                return (child, start, offset);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never showed up in maps",
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        == Some("0")
}

#[test]
fn own_process_function_by_name() {
    let mut s = Symbolizer::new();
    let frames = s.symbolize_user(own_pid(), &[known_addr()]);
    assert_eq!(frames.len(), 1);
    let f = &frames[0];
    assert!(
        f.function.contains("coral_known_function"),
        "got {:?}",
        f.function
    );
    // Demangled, without the hash suffix.
    assert!(!f.function.starts_with("_ZN"), "{}", f.function);
    assert!(!f.function.contains("17h"), "{}", f.function);
    assert_eq!(f.module, own_exe_name());
    assert_eq!(f.kind, FrameKind::User);
}

#[test]
fn shared_library_frame() {
    let mut s = Symbolizer::new();
    let frames = s.symbolize_user(own_pid(), &[getpid_addr()]);
    let f = &frames[0];
    assert!(f.function.contains("getpid"), "got {f:?}");
    assert_eq!(f.module, "libc.so.6");
    assert_eq!(f.kind, FrameKind::User);
}

#[test]
fn stripped_binary_without_build_id() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_spin(dir.path(), "coral-stripped-spin", true, false);
    let (child, start, _) = spawn_and_find_text(&bin);
    let pid = child.0.id();
    let addrs = [start + 0x10, start + 0x40];
    let mut s = Symbolizer::new();
    let frames = s.symbolize_user(pid, &addrs);
    assert_eq!(frames.len(), 2);
    for f in &frames {
        // No symbol table: "[unknown]" or a dynamic symbol, but the right module.
        assert_eq!(f.module, "coral-stripped-spin", "{f:?}");
        assert!(!f.function.is_empty());
    }
    assert_eq!(s.stats().cache_misses, 2);
    // Keyed by (path, size, mtime): the second lookup is a hit.
    let again = s.symbolize_user(pid, &addrs);
    assert_eq!(again, frames);
    assert_eq!(s.stats().cache_hits, 2);
    assert_eq!(s.stats().cache_misses, 2);
}

#[test]
fn cache_is_shared_by_processes_running_the_same_binary() {
    let dir = tempfile::tempdir().unwrap();
    let bin = build_spin(dir.path(), "coral-spin", false, true);
    let (a, a_start, a_off) = spawn_and_find_text(&bin);
    let (b, b_start, b_off) = spawn_and_find_text(&bin);
    assert_eq!(a_off, b_off);
    let mut s = Symbolizer::new();
    // The same file offsets, at (ASLR) different addresses.
    let offsets = [0x10u64, 0x20, 0x30];
    let fa = s.symbolize_user(a.0.id(), &offsets.map(|o| a_start + o));
    let misses = s.stats().cache_misses;
    assert_eq!(misses, 3);
    let fb = s.symbolize_user(b.0.id(), &offsets.map(|o| b_start + o));
    assert_eq!(fa, fb);
    assert_eq!(
        s.stats().cache_misses,
        misses,
        "second process: no new lookups"
    );
    assert_eq!(s.stats().cache_hits, 3);
    assert!(fa.iter().all(|f| f.module == "coral-spin"));

    // An unstripped binary names its functions: find coral_spin through the sampled
    // program's own symbol table by scanning its text.
    let text: Vec<u64> = (0..0x400).step_by(4).map(|o| a_start + o).collect();
    let frames = s.symbolize_user(a.0.id(), &text);
    assert!(
        frames.iter().any(|f| f.function == "coral_spin"),
        "{:?}",
        frames.iter().map(|f| &f.function).collect::<HashSet<_>>()
    );
}

#[test]
#[ignore = "needs root for kallsyms: run `cargo xtask test`"]
fn kernel_symbol_from_kallsyms() {
    assert!(
        is_root(),
        "kernel_symbol_from_kallsyms needs root (kallsyms hides addresses otherwise): \
         run it as root, e.g. `cargo xtask test`"
    );
    let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
    let addr = kallsyms
        .lines()
        .find_map(|line| {
            let mut f = line.split_whitespace();
            let (addr, kind, name) = (f.next()?, f.next()?, f.next()?);
            (name == "schedule" && kind.eq_ignore_ascii_case("t"))
                .then(|| u64::from_str_radix(addr, 16).ok())
                .flatten()
        })
        .expect("schedule in /proc/kallsyms");
    assert_ne!(addr, 0);
    let mut s = Symbolizer::new();
    let frames = s.symbolize_kernel(&[addr, addr + 4, addr]);
    for f in &frames {
        assert_eq!(f.function, "schedule");
        assert_eq!(f.module, "[kernel]");
        assert_eq!(f.kind, FrameKind::Kernel);
    }
    assert_eq!(s.stats().cache_misses, 3);
    let again = s.symbolize_kernel(&[addr + 4]);
    assert_eq!(again[0].function, "schedule");
    assert_eq!(s.stats().cache_hits, 1);
    assert_eq!(s.stats().frames, 4);
}

/// Removes the perf map file when dropped.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn jit_frame_from_perf_map() {
    // blazesym consults the perf map only for addresses in anonymous mappings, as JIT
    // code lives in: map one.
    let region = memmap2::MmapMut::map_anon(3 * 4096).unwrap();
    let start = region.as_ptr() as u64;
    let path = std::path::PathBuf::from(format!("/tmp/perf-{}.map", own_pid()));
    let _cleanup = RemoveOnDrop(path.clone());
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(
        file,
        "{:x} {:x} LazyCompile:*coral_jit_fn app.js:1",
        start, 0x100
    )
    .unwrap();
    writeln!(file, "{:x} {:x} coral_jit_other", start + 0x100, 0x100).unwrap();
    drop(file);

    let mut s = Symbolizer::new();
    let frames = s.symbolize_user(own_pid(), &[start + 0x10, start + 0x180, start + 0x2000]);
    assert_eq!(frames[0].function, "LazyCompile:*coral_jit_fn app.js:1");
    assert_eq!(frames[0].module, JIT_MODULE);
    assert_eq!(frames[1].function, "coral_jit_other");
    // In the anonymous mapping but not in the perf map.
    assert_eq!(frames[2], Frame::unknown(FrameKind::User));
    assert_eq!(s.stats().cache_misses, 3);

    // Known JIT frames are cached per process, misses are retried.
    let again = s.symbolize_user(own_pid(), &[start + 0x10, start + 0x2000]);
    assert_eq!(again[0], frames[0]);
    assert_eq!(s.stats().cache_hits, 1);
    assert_eq!(s.stats().cache_misses, 4);

    // Forgetting the process drops its JIT symbols.
    s.forget_process(own_pid());
    let _ = s.symbolize_user(own_pid(), &[start + 0x10]);
    assert_eq!(s.stats().cache_misses, 5);
    drop(region);
}

#[test]
fn exited_process_and_garbage_addresses_are_unknown() {
    let mut s = Symbolizer::new();
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let frames = s.symbolize_user(pid, &[0x401000, known_addr(), u64::MAX]);
    assert_eq!(frames, vec![Frame::unknown(FrameKind::User); 3]);

    // Pid 0 is not "this process" (blazesym's reading of 0).
    let frames = s.symbolize_user(0, &[known_addr()]);
    assert_eq!(frames, vec![Frame::unknown(FrameKind::User)]);

    // Garbage in a live process, mixed with a real frame, order preserved.
    let addrs = [0, 1, u64::MAX, known_addr(), 0xffff_ffff_ffff_0000, 0x10];
    let frames = s.symbolize_user(own_pid(), &addrs);
    assert_eq!(frames.len(), addrs.len());
    for (i, f) in frames.iter().enumerate() {
        if i == 3 {
            assert!(f.function.contains("coral_known_function"), "{f:?}");
        } else {
            assert_eq!(
                f,
                &Frame::unknown(FrameKind::User),
                "address {:#x}",
                addrs[i]
            );
        }
    }

    assert!(s.symbolize_user(own_pid(), &[]).is_empty());
    assert!(s.symbolize_kernel(&[]).is_empty());
    // Kernel garbage: no panic, kernel frames.
    let frames = s.symbolize_kernel(&[0, 1, u64::MAX]);
    assert!(
        frames
            .iter()
            .all(|f| f.kind == FrameKind::Kernel && f.module == "[kernel]")
    );
}

#[test]
fn second_symbolization_of_a_stack_is_all_cache_hits() {
    let mut s = Symbolizer::new();
    let stack = [
        getpid_addr(),
        other_known_addr(),
        known_addr(),
        known_addr(),
    ];
    let first = s.symbolize_user(own_pid(), &stack);
    let after_first = s.stats();
    assert_eq!(after_first.frames, 4);
    assert_eq!(after_first.cache_misses, 4);
    assert_eq!(after_first.cache_hits, 0);
    let second = s.symbolize_user(own_pid(), &stack);
    assert_eq!(first, second);
    let after_second = s.stats();
    assert_eq!(after_second.cache_hits, 4);
    assert_eq!(after_second.cache_misses, 4);
    assert_eq!(after_second.frames, 8);
    assert!(first[1].function.contains("coral_other_known_function"));
    assert!(s.cached_symbols() >= 3);

    s.clear_caches();
    let third = s.symbolize_user(own_pid(), &stack);
    assert_eq!(third, first);
    assert_eq!(s.stats().cache_misses, 8);
}

#[test]
fn stacks_batch_matches_single_calls() {
    let mut s = Symbolizer::new();
    let a = [known_addr(), getpid_addr()];
    let b: [u64; 0] = [];
    let c = [other_known_addr(), 1, known_addr()];
    let batch = s.symbolize_user_stacks(own_pid(), &[&a[..], &b[..], &c[..]]);
    assert_eq!(batch.len(), 3);
    assert_eq!(batch[0], s.symbolize_user(own_pid(), &a));
    assert!(batch[1].is_empty());
    assert_eq!(batch[2], s.symbolize_user(own_pid(), &c));
    assert_eq!(s.stats().frames, 10);
}

/// Warm-cache throughput, printed (run with `--nocapture`); no assertion on time.
#[test]
fn warm_cache_throughput() {
    let mut s = Symbolizer::new();
    let mut stack: Vec<u64> = Vec::new();
    for i in 0..16 {
        stack.push(known_addr() + i);
        stack.push(getpid_addr() + i);
    }
    let _ = s.symbolize_user(own_pid(), &stack);
    let iterations = 300;
    let t = Instant::now();
    for _ in 0..iterations {
        let frames = s.symbolize_user(own_pid(), &stack);
        assert_eq!(frames.len(), stack.len());
    }
    let secs = t.elapsed().as_secs_f64();
    let frames = (iterations * stack.len()) as f64;
    println!(
        "warm cache, one stack per call: {:.0} frames/s ({} frames per call, {:.1} µs per call)",
        frames / secs,
        stack.len(),
        secs * 1e6 / iterations as f64
    );
    assert_eq!(s.stats().cache_hits, frames as u64);

    // 64 stacks of one process per call: /proc/PID/maps is read once per batch.
    let stacks: Vec<&[u64]> = (0..64).map(|_| &stack[..]).collect();
    let t = Instant::now();
    for _ in 0..iterations / 10 {
        let out = s.symbolize_user_stacks(own_pid(), &stacks);
        assert_eq!(out.len(), stacks.len());
    }
    let secs = t.elapsed().as_secs_f64();
    let frames = ((iterations / 10) * stacks.len() * stack.len()) as f64;
    println!(
        "warm cache, 64 stacks per call: {:.0} frames/s",
        frames / secs
    );
}
