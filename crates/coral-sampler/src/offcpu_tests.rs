//! Off-CPU records against the real kernel (root; `#[ignore]`d like the other root
//! tests, `cargo xtask test` runs them). The workloads are threads of the test process
//! itself, so their user stacks are symbolized from this binary: the functions to find
//! there are `#[inline(never)]`. True blocked times come from the kernel's own
//! accounting (`/proc/self/task/TID/schedstat`), never from the sampler.

use crate::root_tests::{Workload, require_root, serial};
use crate::{EbpfSampler, Recording, Sample, Sampler, SamplerConfig, SwitchState};
use coral_symbolizer::Symbolizer;
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const HZ: u32 = 99;

pub(crate) fn sampler() -> EbpfSampler {
    require_root();
    EbpfSampler::new(SamplerConfig::default()).expect("EbpfSampler::new as root")
}

/// The calling thread's id (/proc/thread-self is a link to PID/task/TID).
pub(crate) fn gettid() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.file_name()
        .and_then(|tid| tid.to_str()?.parse().ok())
        .expect("PID/task/TID")
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos() as i64
}

/// The calling thread's (time on CPU, time waiting on a run queue), in nanoseconds:
/// fields 1 and 2 of its schedstat.
fn schedstat() -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/self/task/{}/schedstat", gettid()))
        .expect("schedstat (CONFIG_SCHED_INFO)");
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<u64>().expect("number"));
    (
        fields.next().expect("run time"),
        fields.next().expect("run delay"),
    )
}

/// Waits for records in flight, then drains.
pub(crate) fn drain_settled(sampler: &EbpfSampler) -> Vec<Sample> {
    std::thread::sleep(Duration::from_millis(100));
    sampler.drain()
}

/// Off-CPU records of `tid` whose span overlaps `window` (Unix ns).
fn off_cpu_of(samples: &[Sample], tid: u32, window: (i64, i64)) -> Vec<&Sample> {
    samples
        .iter()
        .filter(|s| s.tid == tid)
        .filter(|s| {
            s.off_cpu
                .is_some_and(|o| o.start_unix_nano < window.1 && s.time_unix_nano > window.0)
        })
        .collect()
}

fn weight_ns<'a>(samples: impl IntoIterator<Item = &'a &'a Sample>) -> u64 {
    samples
        .into_iter()
        .map(|s| s.off_cpu.expect("off-CPU").weight_ns)
        .sum()
}

fn kernel_functions(symbolizer: &mut Symbolizer, sample: &Sample) -> Vec<String> {
    symbolizer
        .symbolize_kernel(&sample.stack.kernel)
        .into_iter()
        .map(|f| f.function)
        .collect()
}

/// User frames (every one but the leaf at `address - 1`, inside the call).
pub(crate) fn user_functions(symbolizer: &mut Symbolizer, sample: &Sample) -> Vec<String> {
    let addresses: Vec<u64> = sample
        .stack
        .user
        .iter()
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
        .collect();
    symbolizer
        .symbolize_user(sample.tgid, &addresses)
        .into_iter()
        .map(|f| f.function)
        .collect()
}

#[inline(never)]
fn hold_lock_sleeping(lock: &Mutex<()>, locked: &Barrier, hold: Duration) {
    let _guard = lock.lock().expect("lock");
    locked.wait();
    std::thread::sleep(hold);
}

#[inline(never)]
fn wait_for_lock(lock: &Mutex<()>) {
    drop(std::hint::black_box(lock.lock().expect("lock")));
}

#[inline(never)]
fn sleep_a_while(duration: Duration) {
    std::thread::sleep(std::hint::black_box(duration));
}

/// A thread blocked ~300 ms on a mutex: its records cover the wait, say it slept
/// interruptibly in a futex, and show the function that took the lock.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn a_mutex_wait_is_recorded_with_its_stacks() {
    let _serial = serial();
    let sampler = sampler();
    let pid = std::process::id();
    sampler
        .add_targets(&[pid], HZ, Recording::OFF_CPU)
        .expect("add_targets");
    assert!(sampler.stats().off_cpu_attached);

    let lock = Arc::new(Mutex::new(()));
    let locked = Arc::new(Barrier::new(2));
    let holder = {
        let (lock, locked) = (Arc::clone(&lock), Arc::clone(&locked));
        std::thread::spawn(move || hold_lock_sleeping(&lock, &locked, Duration::from_millis(300)))
    };
    let waiter = std::thread::spawn(move || {
        locked.wait();
        let tid = gettid();
        let start = unix_now();
        wait_for_lock(&lock);
        (tid, start, unix_now())
    });
    let (tid, start, end) = waiter.join().expect("waiter");
    holder.join().expect("holder");
    let samples = drain_settled(&sampler);
    let mut symbolizer = Symbolizer::new();
    let records = off_cpu_of(&samples, tid, (start, end));
    let waited = (end - start) as u64;
    let weight = weight_ns(&records);
    eprintln!(
        "waited {waited} ns; {} records weighing {weight} ns: {:?}",
        records.len(),
        records.iter().map(|s| s.off_cpu).collect::<Vec<_>>()
    );
    assert!(
        weight * 10 >= waited * 8 && weight <= waited * 3 / 2,
        "records weigh {weight} ns for a {waited} ns wait"
    );
    let longest = records
        .iter()
        .max_by_key(|s| s.off_cpu.expect("off-CPU").weight_ns)
        .expect("a record");
    assert_eq!(
        longest.off_cpu.expect("off-CPU").state,
        SwitchState::Interruptible
    );
    let kernel = kernel_functions(&mut symbolizer, longest);
    let user = user_functions(&mut symbolizer, longest);
    eprintln!("kernel {kernel:?}\nuser {user:?}");
    assert!(
        kernel.iter().any(|f| f.contains("futex")),
        "no futex function in the kernel stack {kernel:?}"
    );
    assert!(
        kernel
            .first()
            .is_some_and(|f| f == "__schedule" || f.starts_with("finish_task_switch")),
        "the stack starts in the scheduler, not in the probe: {kernel:?}"
    );
    assert!(
        user.iter().any(|f| f.ends_with("wait_for_lock")),
        "wait_for_lock not in the user stack {user:?}"
    );
    assert!(sampler.stats().off_cpu_events >= records.len() as u64);
    sampler.remove_targets(&[pid]).expect("remove_targets");
}

/// A thread sleeping 200 ms: an interruptible sleep in nanosleep.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn a_sleep_is_recorded_as_an_interruptible_nanosleep() {
    let _serial = serial();
    let sampler = sampler();
    let pid = std::process::id();
    sampler
        .add_targets(&[pid], HZ, Recording::OFF_CPU)
        .expect("add_targets");
    let (tid, start, end) = std::thread::spawn(|| {
        let tid = gettid();
        let start = unix_now();
        sleep_a_while(Duration::from_millis(200));
        (tid, start, unix_now())
    })
    .join()
    .expect("sleeper");
    let samples = drain_settled(&sampler);
    sampler.remove_targets(&[pid]).expect("remove_targets");
    let records = off_cpu_of(&samples, tid, (start, end));
    let slept = (end - start) as u64;
    let weight = weight_ns(&records);
    assert!(
        weight * 10 >= slept * 8 && weight <= slept * 3 / 2,
        "records weigh {weight} ns for a {slept} ns sleep: {records:?}"
    );
    let longest = records
        .iter()
        .max_by_key(|s| s.off_cpu.expect("off-CPU").weight_ns)
        .expect("a record");
    let off_cpu = longest.off_cpu.expect("off-CPU");
    assert_eq!(off_cpu.state, SwitchState::Interruptible);
    assert!(off_cpu.start_unix_nano >= start && longest.time_unix_nano <= end);
    // The timer woke it near the sleep's end, and it ran at once or soon after (the
    // scheduler may count no run-queue time at all when it ran at once).
    if let Some(woken) = off_cpu.woken_unix_nano {
        assert!(
            woken >= off_cpu.start_unix_nano + 150_000_000 && woken <= longest.time_unix_nano,
            "woken at {woken} in a wait from {} to {}",
            off_cpu.start_unix_nano,
            longest.time_unix_nano
        );
    }
    let mut symbolizer = Symbolizer::new();
    let kernel = kernel_functions(&mut symbolizer, longest);
    let user = user_functions(&mut symbolizer, longest);
    assert!(
        kernel.iter().any(|f| f.contains("nanosleep")),
        "no nanosleep in the kernel stack {kernel:?}"
    );
    assert!(
        user.iter().any(|f| f.ends_with("sleep_a_while")),
        "sleep_a_while not in the user stack {user:?}"
    );
}

/// Pins the calling thread to a CPU (sched_setaffinity through taskset: no unsafe code
/// in this crate).
fn pin_to_cpu(cpu: u32) {
    let pinned = std::process::Command::new("taskset")
        .args(["-c", "-p", &cpu.to_string(), &gettid().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running taskset (util-linux)");
    assert!(pinned.success(), "taskset failed");
}

#[inline(never)]
fn hog(until: Instant) -> u64 {
    let mut spins = 0u64;
    while Instant::now() < until {
        spins = std::hint::black_box(spins + 1);
    }
    spins
}

/// A thread that sleeps on a CPU two hogs keep busy waits, after each wake-up, for the
/// CPU: its records say when it was woken, and that tail adds up to about the
/// kernel's own run-queue wait for the thread.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn a_woken_thread_waiting_for_its_cpu_is_told_apart() {
    let _serial = serial();
    let sampler = sampler();
    let pid = std::process::id();
    sampler
        .add_targets(&[pid], HZ, Recording::OFF_CPU)
        .expect("add_targets");
    // Now and then the scheduler lets the woken thread run at once every time (the
    // kernel then counts no run-queue wait either): try again.
    for attempt in 1..=5 {
        let (tid, start, end, run_queue_wait) = sleep_beside_two_hogs();
        let samples = drain_settled(&sampler);
        if run_queue_wait == 0 {
            eprintln!("attempt {attempt}: the kernel saw no run-queue wait");
            continue;
        }
        sampler.remove_targets(&[pid]).expect("remove_targets");
        let records = off_cpu_of(&samples, tid, (start, end));
        let mut queued = 0i64;
        for record in &records {
            let off_cpu = record.off_cpu.expect("off-CPU");
            if let Some(woken) = off_cpu.woken_unix_nano {
                assert!(
                    (off_cpu.start_unix_nano..=record.time_unix_nano).contains(&woken),
                    "{record:?}"
                );
                if off_cpu.state == SwitchState::Interruptible {
                    queued += record.time_unix_nano - woken;
                }
            }
        }
        eprintln!(
            "sleeper {tid}: {} records, {queued} ns after wake-ups; the kernel's run-queue \
             wait {run_queue_wait} ns",
            records.len()
        );
        assert!(
            queued > 0 && (queued as u64).abs_diff(run_queue_wait) <= run_queue_wait / 5,
            "{queued} ns queued after wake-ups against {run_queue_wait} ns: {records:?}"
        );
        return;
    }
    panic!("the kernel saw no run-queue wait in 5 attempts: nothing to compare with");
}

/// 20 sleeps of 10 ms on CPU 0 while two hogs keep it busy: (tid, start, end, the
/// kernel's run-queue wait for the sleeper over that time).
fn sleep_beside_two_hogs() -> (u32, i64, i64, u64) {
    let until = Instant::now() + Duration::from_millis(600);
    let pinned = Arc::new(Barrier::new(3));
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            let pinned = Arc::clone(&pinned);
            std::thread::spawn(move || {
                pin_to_cpu(0);
                pinned.wait();
                hog(until)
            })
        })
        .collect();
    let sleeper = std::thread::spawn(move || {
        pin_to_cpu(0);
        pinned.wait();
        // Both hogs are running on the CPU.
        hog(Instant::now() + Duration::from_millis(50));
        let tid = gettid();
        let (_, delay_before) = schedstat();
        let start = unix_now();
        for _ in 0..20 {
            sleep_a_while(Duration::from_millis(10));
        }
        let end = unix_now();
        let (_, delay_after) = schedstat();
        (tid, start, end, delay_after - delay_before)
    })
    .join()
    .expect("sleeper");
    for h in hogs {
        h.join().expect("hog");
    }
    sleeper
}

/// Two CPU hogs sharing one CPU: each waits on the run queue while the other runs,
/// recorded as preempted, about as long as the kernel's run-queue wait says.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn a_hog_sharing_its_cpu_is_preempted() {
    let _serial = serial();
    let sampler = sampler();
    let pid = std::process::id();
    sampler
        .add_targets(&[pid], HZ, Recording::OFF_CPU)
        .expect("add_targets");
    let until = Instant::now() + Duration::from_millis(1000);
    let hogs: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                pin_to_cpu(0);
                let tid = gettid();
                let (_, delay_before) = schedstat();
                let start = unix_now();
                hog(until);
                let end = unix_now();
                let (_, delay_after) = schedstat();
                (tid, start, end, delay_after - delay_before)
            })
        })
        .collect();
    let hogs: Vec<_> = hogs.into_iter().map(|h| h.join().expect("hog")).collect();
    let samples = drain_settled(&sampler);
    sampler.remove_targets(&[pid]).expect("remove_targets");
    for (tid, start, end, run_queue_wait) in hogs {
        let records = off_cpu_of(&samples, tid, (start, end));
        let preempted: Vec<&Sample> = records
            .iter()
            .copied()
            .filter(|s| s.off_cpu.expect("off-CPU").state == SwitchState::Preempted)
            .collect();
        let weight = weight_ns(&preempted);
        eprintln!(
            "hog {tid}: {} records, {} preempted weighing {weight} ns; run-queue wait {run_queue_wait} ns",
            records.len(),
            preempted.len()
        );
        assert!(preempted.len() >= 5, "hog {tid}: {records:?}");
        assert!(
            weight * 4 >= run_queue_wait * 3 && weight * 4 <= run_queue_wait * 5,
            "hog {tid}: preempted records weigh {weight} ns, the kernel counted {run_queue_wait} ns"
        );
    }
}

/// 20,000 short waits (a condition variable ping-pong): far fewer records than waits,
/// and their weights add up to the thread's off-CPU time as the kernel accounts it
/// (wall time minus time on CPU) within 25%.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn short_waits_are_sampled_without_bias() {
    const ROUNDS: u64 = 20_000;
    let _serial = serial();
    let sampler = sampler();
    let pid = std::process::id();
    sampler
        .add_targets(&[pid], HZ, Recording::OFF_CPU)
        .expect("add_targets");
    // The turn: true for the pinger, false for the ponger.
    let turn = Arc::new((Mutex::new(true), Condvar::new()));
    let play = |mine: bool, turn: Arc<(Mutex<bool>, Condvar)>| {
        move || {
            let tid = gettid();
            let (on_cpu_before, _) = schedstat();
            let (start, started) = (unix_now(), Instant::now());
            let (lock, changed) = &*turn;
            for _ in 0..ROUNDS {
                let mut current = lock.lock().expect("lock");
                while *current != mine {
                    current = changed.wait(current).expect("wait");
                }
                *current = !mine;
                changed.notify_one();
            }
            let wall = started.elapsed().as_nanos() as u64;
            let (on_cpu_after, _) = schedstat();
            let off_cpu = wall.saturating_sub(on_cpu_after - on_cpu_before);
            (tid, start, unix_now(), off_cpu)
        }
    };
    let ponger = std::thread::spawn(play(false, Arc::clone(&turn)));
    let pinger = std::thread::spawn(play(true, turn));
    pinger.join().expect("pinger");
    let (tid, start, end, off_cpu) = ponger.join().expect("ponger");
    let samples = drain_settled(&sampler);
    sampler.remove_targets(&[pid]).expect("remove_targets");
    // Records that ended within the loop (the span before it is the start's wait).
    let records: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.tid == tid && s.off_cpu.is_some())
        .filter(|s| (start..=end).contains(&s.time_unix_nano))
        .collect();
    let weight = weight_ns(&records);
    let stats = sampler.stats();
    eprintln!(
        "{ROUNDS} waits: {} records weighing {weight} ns; the kernel's off-CPU time {off_cpu} ns; \
         {stats:?}",
        records.len()
    );
    assert_eq!(stats.off_cpu_throttled, 0, "{stats:?}");
    assert!(
        (records.len() as u64) * 10 < ROUNDS,
        "{} records for {ROUNDS} waits",
        records.len()
    );
    assert!(
        weight * 4 >= off_cpu * 3 && weight * 4 <= off_cpu * 5,
        "records weigh {weight} ns, the kernel's off-CPU time is {off_cpu} ns"
    );
}

/// The kernel's BPF links of these programs.
fn links_of(programs: [u32; 2]) -> usize {
    aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|link| programs.contains(&link.program_id()))
        .count()
}

/// The scheduler probes are attached (as the kernel sees it) exactly while a target asks
/// for off-CPU records.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn scheduler_probes_are_attached_only_for_off_cpu_targets() {
    let _serial = serial();
    let sampler = sampler();
    let pid = std::process::id();
    assert_eq!(
        sampler.scheduler_program_ids(),
        None,
        "not loaded before use"
    );
    sampler
        .add_targets(&[pid], HZ, Recording::CPU)
        .expect("add_targets");
    assert!(!sampler.stats().off_cpu_attached);
    assert_eq!(
        sampler.scheduler_program_ids(),
        None,
        "CPU only: not even loaded"
    );

    let other = Workload::spawn(&["wait"]);
    sampler
        .add_targets(&[other.pid()], HZ, Recording::OFF_CPU)
        .expect("add_targets");
    let programs = sampler.scheduler_program_ids().expect("loaded");
    assert!(sampler.stats().off_cpu_attached);
    assert_eq!(
        links_of(programs),
        2,
        "sched_switch and switch-in links in the kernel"
    );
    sampler.remove_targets(&[other.pid()]).expect("remove");
    let stats = sampler.stats();
    assert!(!stats.off_cpu_attached && stats.attached, "{stats:?}");
    assert_eq!(links_of(programs), 0, "the kernel has no link left");

    // A target that asks later turns it on; removing every target turns it off.
    sampler
        .add_targets(&[pid], HZ, Recording::OFF_CPU)
        .expect("add_targets");
    assert_eq!(links_of(programs), 2);
    sampler
        .add_targets(&[pid], HZ, Recording::CPU)
        .expect("add_targets");
    assert_eq!(links_of(programs), 2, "a process keeps off-CPU once asked");
    sampler.remove_targets(&[pid]).expect("remove");
    assert_eq!(links_of(programs), 0);
    let stats = sampler.stats();
    assert!(!stats.off_cpu_attached && !stats.attached, "{stats:?}");
}

/// While another process is an off-CPU target, a CPU-only target gets no off-CPU
/// records, and the other one does.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn cpu_only_targets_get_no_off_cpu_records() {
    use std::io::Write;
    let _serial = serial();
    let sampler = sampler();
    let pid = std::process::id();
    let mut other = Workload::spawn(&["wait"]);
    sampler
        .add_targets(&[other.pid()], HZ, Recording::OFF_CPU)
        .expect("add_targets");
    sampler
        .add_targets(&[pid], HZ, Recording::CPU)
        .expect("add_targets");
    // The other process blocked reading its stdin before the probes were attached: a
    // wait they ignore. Stopped and continued, it blocks again, now seen from the start.
    for signal in ["-STOP", "-CONT"] {
        let status = std::process::Command::new("kill")
            .args([signal, &other.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal}");
    }
    std::thread::spawn(|| sleep_a_while(Duration::from_millis(100)))
        .join()
        .expect("sleeper");
    // Wake it.
    let mut stdin = other.child.stdin.take().expect("piped stdin");
    writeln!(stdin, "0.05").expect("wake the workload");
    let _ = other.line();
    other.wait();
    let samples = drain_settled(&sampler);
    sampler
        .remove_targets(&[pid, other.pid()])
        .expect("remove_targets");
    let own = samples
        .iter()
        .filter(|s| s.tgid == pid && s.off_cpu.is_some())
        .count();
    let others = samples
        .iter()
        .filter(|s| s.tgid == other.pid() && s.off_cpu.is_some())
        .count();
    assert_eq!(own, 0, "off-CPU records of a CPU-only target");
    assert!(others > 0, "no off-CPU record of the off-CPU target");
}

/// The cost of the switch-in program, printed (not a pass/fail criterion): runs on
/// every context switch of the machine, builds an event for a few.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn switch_in_cost() {
    let _serial = serial();
    let sampler = sampler();
    let _stats_enabled =
        aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF run-time stats");
    let pid = std::process::id();
    sampler
        .add_targets(&[pid], HZ, Recording::OFF_CPU)
        .expect("add_targets");
    let until = Instant::now() + Duration::from_millis(500);
    std::thread::spawn(move || {
        while Instant::now() < until {
            sleep_a_while(Duration::from_millis(2));
        }
    })
    .join()
    .expect("sleeper");
    let samples = drain_settled(&sampler);
    let (time, runs) = sampler.switch_in_run_stats();
    sampler.remove_targets(&[pid]).expect("remove_targets");
    let events = samples.iter().filter(|s| s.off_cpu.is_some()).count();
    eprintln!(
        "switch-in: {runs} runs, {events} events, {:.0} ns per run on average",
        time.as_nanos() as f64 / runs.max(1) as f64
    );
    assert!(events > 0);
}

/// Above the per-CPU rate bound, off-CPU records are not sent but counted, and handed
/// out as losses of the thread (so its requests say they are incomplete); sampling
/// goes on.
#[test]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
fn off_cpu_records_over_the_rate_bound_are_losses() {
    let _serial = serial();
    require_root();
    let sampler = EbpfSampler::new(SamplerConfig {
        off_cpu_max_events_per_cpu: 20,
        ..SamplerConfig::default()
    })
    .expect("EbpfSampler::new as root");
    let pid = std::process::id();
    sampler
        .add_targets(&[pid], HZ, Recording::OFF_CPU)
        .expect("add_targets");
    // 300 sleeps of 2 ms (each at least the 1 ms threshold: one record each) in about
    // 0.7 s, on one CPU: far over 20 a second.
    let tid = std::thread::spawn(|| {
        pin_to_cpu(0);
        for _ in 0..300 {
            sleep_a_while(Duration::from_millis(2));
        }
        gettid()
    })
    .join()
    .expect("sleeper");
    let samples = drain_settled(&sampler);
    let losses = sampler.take_losses();
    let stats = sampler.stats();
    sampler.remove_targets(&[pid]).expect("remove_targets");
    let recorded = samples
        .iter()
        .filter(|s| s.tid == tid && s.off_cpu.is_some())
        .count() as u64;
    assert!(
        stats.off_cpu_throttled >= 150,
        "{} of 300 waits throttled: {stats:?}",
        stats.off_cpu_throttled
    );
    assert!(
        recorded < 100,
        "{recorded} records sent at a bound of 20 per CPU per second"
    );
    let lost: u64 = losses
        .iter()
        .filter(|l| l.tid == Some(tid) || l.tgid == Some(pid))
        .map(|l| l.samples)
        .sum();
    assert!(
        lost >= stats.off_cpu_throttled / 2,
        "{lost} lost of {} throttled reported as losses: {losses:?}",
        stats.off_cpu_throttled
    );
}
