//! Memory records against the real kernel (root; `#[ignore]`d like the other root
//! tests, `cargo xtask test` runs them). The workloads are threads of the test process
//! itself, so their user stacks are symbolized from this binary: the functions to find
//! there are `#[inline(never)]`. What was really made resident comes from what the
//! workloads touched, and for huge pages from the kernel's own `/proc/self/smaps`.
//!
//! Unsafe code is allowed here only: mapping, advising and forking are what these
//! tests exercise, and each call says why it is sound.
#![allow(unsafe_code)]

use crate::offcpu_tests::{drain_settled, gettid, sampler, unix_now, user_functions};
use crate::root_tests::{require_root, serial};
use crate::{EbpfSampler, Recording, Sample, Sampler, SamplerConfig};
use coral_symbolizer::Symbolizer;
use nix::libc;

const HZ: u32 = 99;
const PAGE: usize = 4096;
const BLOCK: usize = 256 * 1024;
const HUGE_PAGE: usize = 2 << 20;

/// Memory records of `tid` within `window` (Unix ns), give or take the few
/// microseconds by which the sampler's clock conversion may differ from this one.
fn memory_of(samples: &[Sample], tid: u32, window: (i64, i64)) -> Vec<&Sample> {
    const SLACK_NS: i64 = 5_000_000;
    samples
        .iter()
        .filter(|s| s.tid == tid && s.memory.is_some())
        .filter(|s| {
            s.time_unix_nano >= window.0 - SLACK_NS && s.time_unix_nano <= window.1 + SLACK_NS
        })
        .collect()
}

fn bytes<'a>(samples: impl IntoIterator<Item = &'a &'a Sample>) -> u64 {
    samples
        .into_iter()
        .map(|s| s.memory.expect("memory").bytes)
        .sum()
}

/// The share of `samples`' bytes whose stack has a function containing `name`.
fn share_under(symbolizer: &mut Symbolizer, samples: &[&Sample], name: &str) -> f64 {
    let under: u64 = samples
        .iter()
        .filter(|s| {
            user_functions(symbolizer, s)
                .iter()
                .any(|f| f.contains(name))
        })
        .map(|s| s.memory.expect("memory").bytes)
        .sum();
    under as f64 / bytes(samples).max(1) as f64
}

/// An anonymous private mapping of `len` bytes, not touched yet.
fn map(len: usize) -> *mut u8 {
    // SAFETY: a fresh anonymous mapping; the kernel picks the address.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(at, libc::MAP_FAILED, "mmap {len}");
    at.cast()
}

fn unmap(at: *mut u8, len: usize) {
    // SAFETY: `at..at+len` is a mapping this test made and no longer uses.
    assert_eq!(unsafe { libc::munmap(at.cast(), len) }, 0);
}

/// Writes one byte per page: each write to a page not yet resident faults it in.
#[inline(never)]
fn touch(at: *mut u8, len: usize) {
    for offset in (0..len).step_by(PAGE) {
        // SAFETY: within the caller's mapping.
        unsafe { std::ptr::write_volatile(at.add(offset), 1) };
    }
}

/// Maps a fresh 256 KiB block and touches all of it, like an allocator handing out
/// a large block that its caller fills.
#[inline(never)]
fn grab_block() -> *mut u8 {
    let block = map(BLOCK);
    touch(block, BLOCK);
    block
}

/// Builds a `total`-byte snapshot out of 256 KiB blocks, then frees them.
#[inline(never)]
fn build_snapshot(total: usize) {
    let blocks: Vec<*mut u8> = (0..total / BLOCK).map(|_| grab_block()).collect();
    for block in blocks {
        unmap(block, BLOCK);
    }
}

/// Touches `total` bytes of one mapping from another function (the other thread).
#[inline(never)]
fn scribble(total: usize) {
    let at = map(total);
    touch(at, total);
    unmap(at, total);
}

/// A thread that touches 300 MB in 256 KiB blocks: its records add up to what it
/// touched, nearly all of it under `grab_block`; another thread's records, made at the
/// same time, carry that thread's id.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn memory_made_resident_is_recorded_with_the_stack_that_touched_it() {
    let _serial = serial();
    let sampler = sampler();
    let pid = std::process::id();
    sampler
        .add_targets(&[pid], HZ, Recording::MEMORY)
        .expect("add_targets");
    assert!(sampler.stats().memory_attached);

    const TOTAL: usize = 300 << 20;
    const OTHER: usize = 64 << 20;
    let other = std::thread::spawn(|| {
        let tid = gettid();
        scribble(OTHER);
        tid
    });
    let (tid, start) = (gettid(), unix_now());
    build_snapshot(TOTAL);
    let end = unix_now();
    let other_tid = other.join().expect("other thread");
    let samples = drain_settled(&sampler);

    let mine = memory_of(&samples, tid, (start, end));
    let recorded = bytes(&mine);
    let ratio = recorded as f64 / TOTAL as f64;
    assert!(
        (0.8..=1.2).contains(&ratio),
        "recorded {recorded} bytes in {} records for {TOTAL} touched (ratio {ratio:.3}); \
         stats {:?}",
        mine.len(),
        sampler.stats()
    );
    assert!(
        mine.iter()
            .all(|s| s.memory.unwrap().page_bytes == PAGE as u64),
        "256 KiB blocks are not huge-page eligible here: 4 KiB pages only"
    );
    assert!(
        mine.iter()
            .all(|s| s.stack.kernel.is_empty() && !s.stack.user.is_empty()),
        "memory records carry the user stack only"
    );
    let mut symbolizer = Symbolizer::new();
    let share = share_under(&mut symbolizer, &mine, "grab_block");
    assert!(share >= 0.8, "{share:.2} of the bytes under grab_block");

    let theirs = memory_of(&samples, other_tid, (start, unix_now()));
    let ratio = bytes(&theirs) as f64 / OTHER as f64;
    assert!(
        (0.6..=1.4).contains(&ratio),
        "the other thread's {OTHER} bytes are its own records (ratio {ratio:.2})"
    );
    assert!(share_under(&mut symbolizer, &theirs, "scribble") >= 0.8);
    assert_eq!(
        share_under(&mut symbolizer, &mine, "scribble"),
        0.0,
        "no record of this thread is the other thread's"
    );
    assert_eq!(sampler.stats().memory_throttled, 0);
}

/// The AnonHugePages of the smaps entry that contains `at`, in bytes.
fn anon_huge_pages(at: *mut u8) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
    let address = at as u64;
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ')
            && let Some((low, high)) = range.split_once('-')
            && let (Ok(low), Ok(high)) =
                (u64::from_str_radix(low, 16), u64::from_str_radix(high, 16))
        {
            inside = (low..high).contains(&address);
            continue;
        }
        if inside && let Some(kib) = line.strip_prefix("AnonHugePages:") {
            let kib: u64 = kib
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .expect("kB");
            return kib * 1024;
        }
    }
    panic!("no smaps entry for {address:#x}")
}

#[inline(never)]
fn touch_huge(at: *mut u8, len: usize) {
    touch(at, len);
}

/// Memory backed by transparent huge pages is recorded in 2 MiB pages, exactly as
/// much as the kernel says it backed with them; the rest in 4 KiB pages.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn huge_pages_are_recorded_at_their_size() {
    let _serial = serial();
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .expect("this test needs transparent huge pages (CONFIG_TRANSPARENT_HUGEPAGE)");
    assert!(
        !thp.contains("[never]"),
        "transparent huge pages are disabled ({thp}): enable them (madvise) to run this test"
    );
    let sampler = sampler();
    sampler
        .add_targets(&[std::process::id()], HZ, Recording::MEMORY)
        .expect("add_targets");

    const LEN: usize = 64 << 20;
    // Over-map by one huge page to align the region to 2 MiB.
    let raw = map(LEN + HUGE_PAGE);
    let aligned = ((raw as usize).next_multiple_of(HUGE_PAGE)) as *mut u8;
    // SAFETY: within the mapping just made.
    let advised = unsafe { libc::madvise(aligned.cast(), LEN, libc::MADV_HUGEPAGE) };
    assert_eq!(advised, 0, "madvise(MADV_HUGEPAGE)");
    let (tid, start) = (gettid(), unix_now());
    touch_huge(aligned, LEN);
    let end = unix_now();
    let huge = anon_huge_pages(aligned);
    unmap(raw, LEN + HUGE_PAGE);
    let samples = drain_settled(&sampler);

    let mine = memory_of(&samples, tid, (start, end));
    assert!(
        huge >= (LEN / 2) as u64,
        "the kernel backed only {huge} of {LEN} bytes with huge pages (memory too \
         fragmented?): cannot test"
    );
    let recorded_huge: u64 = mine
        .iter()
        .filter(|s| s.memory.unwrap().page_bytes == HUGE_PAGE as u64)
        .map(|s| s.memory.unwrap().bytes)
        .sum();
    assert_eq!(recorded_huge, huge, "every huge page is recorded, once");
    let total = bytes(&mine);
    let ratio = total as f64 / LEN as f64;
    assert!(
        (0.8..=1.2).contains(&ratio),
        "total {total} for {LEN} (ratio {ratio:.2})"
    );
}

/// Reads `len` bytes of /dev/zero into `at`: the kernel's copy faults the pages in.
#[inline(never)]
fn read_zeros_into(at: *mut u8, len: usize) {
    let mut zero = std::fs::File::open("/dev/zero").expect("/dev/zero");
    // SAFETY: `at..at+len` is the caller's writable mapping.
    let buffer = unsafe { std::slice::from_raw_parts_mut(at, len) };
    std::io::Read::read_exact(&mut zero, buffer).expect("reading /dev/zero");
}

/// Pages a system call faults in for a user buffer count for the thread, under the
/// call that passed the buffer.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn a_system_call_filling_a_fresh_buffer_counts() {
    let _serial = serial();
    let sampler = sampler();
    sampler
        .add_targets(&[std::process::id()], HZ, Recording::MEMORY)
        .expect("add_targets");
    const LEN: usize = 64 << 20;
    let at = map(LEN);
    let (tid, start) = (gettid(), unix_now());
    read_zeros_into(at, LEN);
    let end = unix_now();
    unmap(at, LEN);
    let samples = drain_settled(&sampler);
    let mine = memory_of(&samples, tid, (start, end));
    let ratio = bytes(&mine) as f64 / LEN as f64;
    assert!((0.7..=1.3).contains(&ratio), "ratio {ratio:.2}");
    let mut symbolizer = Symbolizer::new();
    assert!(share_under(&mut symbolizer, &mine, "read_zeros_into") >= 0.8);
}

/// A forked child's memory is its own process's, not a target's; the parent's
/// copy-on-write copies after the fork are the parent's.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn a_forked_child_is_not_the_parent_but_copy_on_write_is() {
    let _serial = serial();
    let sampler = sampler();
    let pid = std::process::id();
    sampler
        .add_targets(&[pid], HZ, Recording::MEMORY)
        .expect("add_targets");
    const SHARED: usize = 32 << 20;
    const CHILD: usize = 64 << 20;
    let shared = map(SHARED);
    touch(shared, SHARED);
    let child_memory = map(CHILD);
    let (tid, start) = (gettid(), unix_now());
    // SAFETY: the child only touches memory and exits (no allocation, no locks).
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork");
    if child == 0 {
        touch(child_memory, CHILD);
        // SAFETY: leaves the child at once, running no destructors.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    // The parent writes to memory it shares with the (exited) child's image: with the
    // child gone the pages are no longer shared, so the kernel may reuse them; write
    // while a second child holds them to force copies.
    // SAFETY: as above.
    let holder = unsafe { libc::fork() };
    assert!(holder >= 0, "fork");
    if holder == 0 {
        // SAFETY: sleeps, then leaves at once.
        unsafe {
            libc::sleep(2);
            libc::_exit(0)
        };
    }
    copy_on_write(shared, SHARED);
    let end = unix_now();
    // SAFETY: ends and reaps the holder.
    unsafe {
        libc::kill(holder, libc::SIGKILL);
        libc::waitpid(holder, &mut status, 0);
    }
    unmap(shared, SHARED);
    unmap(child_memory, CHILD);
    let samples = drain_settled(&sampler);

    assert!(
        !samples
            .iter()
            .any(|s| s.tgid == child as u32 || s.tgid == holder as u32),
        "no record of the children: they are not targets"
    );
    let mine = memory_of(&samples, tid, (start, end));
    let ratio = bytes(&mine) as f64 / SHARED as f64;
    assert!(
        (0.7..=1.3).contains(&ratio),
        "the parent's copy-on-write copies of {SHARED} bytes: ratio {ratio:.2}"
    );
    let mut symbolizer = Symbolizer::new();
    assert!(share_under(&mut symbolizer, &mine, "copy_on_write") >= 0.8);
}

#[inline(never)]
fn copy_on_write(at: *mut u8, len: usize) {
    touch(at, len);
}

/// The page-fault probes are attached only while a target asks for memory.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn memory_probes_are_attached_only_while_asked_for() {
    let _serial = serial();
    let sampler = sampler();
    let pid = std::process::id();
    sampler
        .add_targets(&[pid], HZ, Recording::CPU)
        .expect("add_targets");
    assert!(!sampler.stats().memory_attached);
    let (tid, start) = (gettid(), unix_now());
    scribble(32 << 20);
    let samples = drain_settled(&sampler);
    assert!(
        memory_of(&samples, tid, (start, unix_now())).is_empty(),
        "a CPU-only target records no memory"
    );
    sampler
        .add_targets(&[pid], HZ, Recording::MEMORY)
        .expect("add_targets");
    assert!(sampler.stats().memory_attached);
    // Recording less (the memory trigger ended, another goes on): the page-fault probes
    // go, CPU sampling stays.
    sampler
        .set_recording(&[pid], Recording::OFF_CPU)
        .expect("set_recording");
    let stats = sampler.stats();
    assert!(!stats.memory_attached && stats.off_cpu_attached && stats.attached);
    sampler
        .set_recording(&[pid], Recording::MEMORY)
        .expect("set_recording");
    let stats = sampler.stats();
    assert!(stats.memory_attached && !stats.off_cpu_attached && stats.attached);
    sampler.remove_targets(&[pid]).expect("remove_targets");
    assert!(!sampler.stats().memory_attached);
    sampler
        .add_targets(&[pid], HZ, Recording::OFF_CPU)
        .expect("add_targets");
    assert!(!sampler.stats().memory_attached);
}

/// Memory records over the per-CPU rate bound are not sent: they are counted and come
/// back as losses of their thread, so the requests they fall in say they are
/// incomplete.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn memory_records_over_the_rate_bound_are_losses() {
    let _serial = serial();
    require_root();
    let sampler = EbpfSampler::new(SamplerConfig {
        memory_fault_period: 1,
        memory_max_events_per_cpu: 20,
        ..SamplerConfig::default()
    })
    .expect("EbpfSampler::new as root");
    sampler
        .add_targets(&[std::process::id()], HZ, Recording::MEMORY)
        .expect("add_targets");
    const LEN: usize = 16 << 20;
    let (tid, start) = (gettid(), unix_now());
    scribble(LEN);
    let end = unix_now();
    let samples = drain_settled(&sampler);
    let losses = sampler.take_losses();
    let stats = sampler.stats();
    let sent = memory_of(&samples, tid, (start, end)).len() as u64;
    // 4,096 faults of one page each, every one recorded (a period of 1): a second's
    // credit (20 records, per CPU) is sent, the rest is lost.
    assert!(
        sent <= 60,
        "{sent} records sent past a bound of 20 a second"
    );
    assert!(
        stats.memory_throttled >= 4096 - 60,
        "throttled {} of 4096",
        stats.memory_throttled
    );
    let lost_here: u64 = losses
        .iter()
        .filter(|loss| loss.tid.is_none_or(|t| t == tid))
        .filter(|loss| loss.start_unix_nano <= end && loss.end_unix_nano >= start)
        .map(|loss| loss.samples)
        .sum();
    // A CPU hands its pending losses out with its next event: those of the last
    // moments may still wait for one.
    assert!(
        lost_here >= stats.memory_throttled / 2,
        "losses covering the thread's window: {lost_here} of {} throttled ({losses:?})",
        stats.memory_throttled
    );
}
