//! From raw samples to a [`Profile`]: symbolize each distinct stack once (per batch),
//! put its frames root → leaf, count CPU samples, weigh off-CPU records by the part
//! of their wait within the request and memory records by the bytes they stand for.

use coral_analysis::profile::{Frame, FrameKind, Profile, SwitchState, WaitCause};
use coral_sampler::{OffCpu, Sample, Stack};
use std::collections::{BTreeMap, HashMap};

/// What folding needs from a symbolizer ([`coral_symbolizer::Symbolizer`] in the agent,
/// a fake in unit tests). Both return one frame per address, in the input order.
pub trait Symbolize {
    /// Several stacks of one process at once (one read of its memory map for all).
    fn user_stacks(&mut self, pid: u32, stacks: &[&[u64]]) -> Vec<Vec<Frame>>;
    fn kernel(&mut self, addrs: &[u64]) -> Vec<Frame>;
    /// The process exited: drop what is cached for it.
    fn forget(&mut self, pid: u32);
}

impl Symbolize for coral_symbolizer::Symbolizer {
    fn user_stacks(&mut self, pid: u32, stacks: &[&[u64]]) -> Vec<Vec<Frame>> {
        self.symbolize_user_stacks(pid, stacks)
    }
    fn kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
        self.symbolize_kernel(addrs)
    }
    fn forget(&mut self, pid: u32) {
        self.forget_process(pid);
    }
}

/// The addresses to look up for a stack walked leaf first: the leaf is the interrupted
/// instruction, every other entry a return address, which points *after* the call (and,
/// after a call to a function that does not return, possibly into the next function);
/// one byte back lands inside the call instruction.
fn lookup_addrs(stack: &[u64]) -> Vec<u64> {
    stack
        .iter()
        .enumerate()
        .map(|(i, &addr)| if i == 0 { addr } else { addr.saturating_sub(1) })
        .collect()
}

/// A stack's identity: process and raw addresses (the same addresses in two processes
/// may be different functions).
type StackKey<'a> = (u32, &'a Stack);

/// Symbolized stacks of one batch, so that each distinct stack is symbolized once however
/// many samples and requests share it. Borrows the samples' stacks.
#[derive(Default)]
pub struct StackCache<'a> {
    stacks: HashMap<StackKey<'a>, Box<[Frame]>>,
}

impl<'a> StackCache<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Symbolizes the stacks of `samples` not cached yet: one call per process for all
    /// its new user stacks (a call costs a read of the process's memory map, about as
    /// much as symbolizing a whole stack from a warm cache).
    fn symbolize(&mut self, symbolizer: &mut dyn Symbolize, samples: &[&'a Sample]) {
        let mut by_pid: BTreeMap<u32, Vec<&'a Sample>> = BTreeMap::new();
        for &sample in samples {
            if !self.stacks.contains_key(&(sample.tgid, &*sample.stack)) {
                by_pid.entry(sample.tgid).or_default().push(sample);
            }
        }
        for (pid, group) in by_pid {
            let addrs: Vec<Vec<u64>> = group.iter().map(|s| lookup_addrs(&s.stack.user)).collect();
            let refs: Vec<&[u64]> = addrs.iter().map(Vec::as_slice).collect();
            let users = symbolizer.user_stacks(pid, &refs);
            for (sample, mut frames) in group.into_iter().zip(users) {
                frames.reverse();
                let mut kernel = symbolizer.kernel(&lookup_addrs(&sample.stack.kernel));
                kernel.reverse();
                frames.extend(kernel);
                self.stacks.insert((pid, &*sample.stack), frames.into());
            }
        }
    }

    /// Distinct stacks symbolized so far.
    pub fn distinct_stacks(&self) -> usize {
        self.stacks.len()
    }
}

/// What a fold keeps of off-CPU records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffCpuWindow {
    /// None: CPU samples only (sessions, process-precision requests, or off-CPU time
    /// not recorded for the request).
    Skip,
    /// The part of each wait within `[start, end]` (Unix ns): a wait that began before
    /// the request counts from the request's start.
    Within { start: i64, end: i64 },
}

/// The parts of an off-CPU record that ended at `end`, within `[start, stop]`: the
/// wait itself (in the state the thread left the CPU in) until it was woken, then the
/// run-queue wait until it ran. Each weighs the record's weight scaled by its share
/// of the interval inside the window.
fn parts_within(off: &OffCpu, end: i64, start: i64, stop: i64) -> [(SwitchState, u64); 2] {
    let interval = end.saturating_sub(off.start_unix_nano);
    if interval <= 0 {
        let inside = (start..=stop).contains(&end);
        return [
            (
                switch_state(off.state),
                if inside { off.weight_ns } else { 0 },
            ),
            (SwitchState::Preempted, 0),
        ];
    }
    let woken = off
        .woken_unix_nano
        .unwrap_or(end)
        .clamp(off.start_unix_nano, end);
    let weigh = |from: i64, to: i64| {
        let inside = to.min(stop).saturating_sub(from.max(start));
        if inside <= 0 {
            return 0;
        }
        let scaled = u128::from(off.weight_ns) * inside as u128 / interval as u128;
        u64::try_from(scaled).unwrap_or(u64::MAX)
    };
    [
        (switch_state(off.state), weigh(off.start_unix_nano, woken)),
        (SwitchState::Preempted, weigh(woken, end)),
    ]
}

/// Kernel frames every off-CPU stack has on top (the switch itself): dropped, so the
/// leaf is where the thread waited.
fn is_switch_frame(frame: &Frame) -> bool {
    let name = frame.function.as_str();
    frame.kind == FrameKind::Kernel
        && (name.starts_with("finish_task_switch") || name == "__schedule" || name == "schedule")
}

fn switch_state(state: coral_sampler::SwitchState) -> SwitchState {
    match state {
        coral_sampler::SwitchState::Preempted => SwitchState::Preempted,
        coral_sampler::SwitchState::Interruptible => SwitchState::Interruptible,
        coral_sampler::SwitchState::Uninterruptible => SwitchState::Uninterruptible,
        coral_sampler::SwitchState::Other(_) => SwitchState::Other,
    }
}

/// What a fold keeps of memory records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryRecords {
    /// None (sessions, or memory not recorded for the request).
    Skip,
    /// All those given: the request's, which the join cut out by thread or process and
    /// time, as its CPU samples (a memory record is a point in time, the fault).
    Keep,
}

/// Whether a sample is a CPU sample: neither an off-CPU nor a memory record.
pub fn is_cpu_sample(sample: &Sample) -> bool {
    sample.off_cpu.is_none() && sample.memory.is_none()
}

/// What one folded stack is made of: CPU samples, a wait in one switch state, or
/// memory in pages of one size (so that base and huge pages stay apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Part {
    Cpu,
    Wait(SwitchState),
    Memory { page_bytes: u64 },
}

/// The profile of `samples`: CPU samples taken at `frequency_hz`, equal stacks counted
/// together (in order of first appearance, so the result is deterministic), the
/// off-CPU records `off_cpu` keeps, each stack ending in its wait cause (decided from
/// the switch state and the kernel stack, [`WaitCause::classify`]; the time between
/// a wait's wake-up and the thread running again is a `runqueue` wait of that stack),
/// and the memory records `memory` keeps, each stack ending in its page size and
/// weighing the bytes its records stand for.
pub fn fold<'a>(
    samples: impl IntoIterator<Item = &'a Sample>,
    cache: &mut StackCache<'a>,
    symbolizer: &mut dyn Symbolize,
    frequency_hz: u32,
    off_cpu: OffCpuWindow,
    memory: MemoryRecords,
) -> Profile {
    // Per distinct stack and part: first index, count, weight.
    let mut order: Vec<&'a Sample> = Vec::new();
    let mut counts: HashMap<(StackKey<'a>, Part), (usize, u64, u64)> = HashMap::new();
    let mut add = |sample: &'a Sample, part: Part, weight: u64| {
        let entry = counts
            .entry(((sample.tgid, &*sample.stack), part))
            .or_insert_with(|| {
                order.push(sample);
                (order.len() - 1, 0, 0)
            });
        entry.1 += 1;
        entry.2 = entry.2.saturating_add(weight);
    };
    for sample in samples {
        if let Some(record) = &sample.memory {
            if memory == MemoryRecords::Keep && record.bytes > 0 {
                let page_bytes = record.page_bytes;
                add(sample, Part::Memory { page_bytes }, record.bytes);
            }
            continue;
        }
        match (&sample.off_cpu, off_cpu) {
            (None, _) => add(sample, Part::Cpu, 0),
            (Some(_), OffCpuWindow::Skip) => {}
            (Some(off), OffCpuWindow::Within { start, end }) => {
                // Parts that weigh nothing (outside the window, or no run-queue wait)
                // add nothing.
                for (state, weight) in parts_within(off, sample.time_unix_nano, start, end) {
                    if weight > 0 {
                        add(sample, Part::Wait(state), weight);
                    }
                }
            }
        }
    }
    let mut weights = vec![(Part::Cpu, 0u64, 0u64); order.len()];
    for ((_, part), (index, count, weight)) in counts {
        weights[index] = (part, count, weight);
    }
    cache.symbolize(symbolizer, &order);
    let mut profile = Profile::new();
    for (sample, (part, count, weight)) in order.into_iter().zip(weights) {
        let frames = &cache.stacks[&(sample.tgid, &*sample.stack)];
        match part {
            Part::Cpu => profile.add(frames, count, frequency_hz),
            Part::Wait(state) => {
                let kernel = frames.iter().filter(|f| f.kind == FrameKind::Kernel);
                let cause = WaitCause::classify(state, kernel.map(|f| f.function.as_str()));
                let keep = frames.len()
                    - frames
                        .iter()
                        .rev()
                        .take_while(|f| is_switch_frame(f))
                        .count();
                profile.add_off_cpu(&frames[..keep], cause, count, weight);
            }
            Part::Memory { page_bytes } => profile.add_memory(frames, page_bytes, count, weight),
        }
    }
    profile
}

#[cfg(test)]
mod tests {
    use super::*;
    use coral_analysis::profile::samples_to_cpu_ns;

    /// Names every address `u<pid>:<hex>` / `k:<hex>` (or its entry in `kernel_names`)
    /// and counts the lookups.
    #[derive(Default)]
    struct FakeSymbolizer {
        user_calls: usize,
        kernel_calls: usize,
        kernel_names: HashMap<u64, &'static str>,
    }

    impl Symbolize for FakeSymbolizer {
        fn user_stacks(&mut self, pid: u32, stacks: &[&[u64]]) -> Vec<Vec<Frame>> {
            self.user_calls += 1;
            stacks
                .iter()
                .map(|addrs| {
                    addrs
                        .iter()
                        .map(|a| Frame::user(format!("u{pid}:{a:x}"), "bin"))
                        .collect()
                })
                .collect()
        }
        fn kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
            if !addrs.is_empty() {
                self.kernel_calls += 1;
            }
            addrs
                .iter()
                .map(|a| match self.kernel_names.get(a) {
                    Some(name) => Frame::kernel(*name),
                    None => Frame::kernel(format!("k:{a:x}")),
                })
                .collect()
        }
        fn forget(&mut self, _pid: u32) {}
    }

    fn sample(tgid: u32, user: &[u64], kernel: &[u64]) -> Sample {
        Sample::new(tgid, tgid, 0, user, kernel)
    }

    fn names(profile: &Profile, stack: usize) -> Vec<String> {
        profile.stacks[stack]
            .frames
            .iter()
            .map(|&f| profile.frames[f as usize].function.clone())
            .collect()
    }

    #[test]
    fn stacks_go_root_to_leaf_with_kernel_frames_on_top() {
        // Leaf first, as the kernel walks them: main (0x30) called work (0x20) called
        // leaf (0x10), which made a syscall that was in do_sys (0xa0) → schedule (0x90).
        let samples = [sample(7, &[0x10, 0x21, 0x31], &[0x90, 0xa1])];
        let mut symbolizer = FakeSymbolizer::default();
        let mut cache = StackCache::new();
        let profile = fold(
            &samples,
            &mut cache,
            &mut symbolizer,
            99,
            OffCpuWindow::Skip,
            MemoryRecords::Skip,
        );
        assert_eq!(
            names(&profile, 0),
            ["u7:30", "u7:20", "u7:10", "k:a0", "k:90"],
            "return addresses are looked up one byte back"
        );
        assert_eq!(profile.stacks[0].samples, 1);
        assert_eq!(profile.stacks[0].cpu_ns, samples_to_cpu_ns(1, 99));
    }

    #[test]
    fn equal_stacks_are_counted_and_symbolized_once() {
        let a = sample(7, &[0x10, 0x21], &[]);
        let b = sample(7, &[0x40], &[]);
        let other_process = sample(8, &[0x10, 0x21], &[]);
        let samples = [a.clone(), b.clone(), a.clone(), a, other_process, b];
        let mut symbolizer = FakeSymbolizer::default();
        let mut cache = StackCache::new();
        let profile = fold(
            &samples,
            &mut cache,
            &mut symbolizer,
            100,
            OffCpuWindow::Skip,
            MemoryRecords::Skip,
        );
        assert_eq!(profile.total_samples(), 6);
        assert_eq!(profile.stacks.len(), 3);
        assert_eq!(names(&profile, 0), ["u7:20", "u7:10"]);
        assert_eq!(profile.stacks[0].samples, 3);
        assert_eq!(names(&profile, 1), ["u7:40"]);
        assert_eq!(profile.stacks[1].samples, 2);
        assert_eq!(names(&profile, 2), ["u8:20", "u8:10"]);
        assert_eq!(
            symbolizer.user_calls, 2,
            "one lookup per process, for its distinct stacks together"
        );
        assert_eq!(cache.distinct_stacks(), 3);

        // A second fold in the same batch reuses the cache.
        let again = fold(
            &samples[..2],
            &mut cache,
            &mut symbolizer,
            100,
            OffCpuWindow::Skip,
            MemoryRecords::Skip,
        );
        assert_eq!(again.total_samples(), 2);
        assert_eq!(symbolizer.user_calls, 2);
    }

    #[test]
    fn samples_without_stacks_are_kept_as_empty_stacks() {
        let samples = [sample(7, &[], &[])];
        let mut symbolizer = FakeSymbolizer::default();
        let profile = fold(
            &samples,
            &mut StackCache::new(),
            &mut symbolizer,
            99,
            OffCpuWindow::Skip,
            MemoryRecords::Skip,
        );
        assert_eq!(profile.total_samples(), 1);
        assert!(profile.stacks[0].frames.is_empty());
        assert_eq!(symbolizer.kernel_calls, 0);
    }

    fn off_cpu(
        tgid: u32,
        start: i64,
        end: i64,
        state: coral_sampler::SwitchState,
        kernel: &[u64],
    ) -> Sample {
        let off_cpu = OffCpu {
            start_unix_nano: start,
            weight_ns: u64::try_from(end - start).unwrap(),
            state,
            woken_unix_nano: None,
        };
        Sample::new_off_cpu(tgid, tgid, end, off_cpu, &[0x10, 0x21], kernel)
    }

    #[test]
    fn off_cpu_records_count_within_the_request_and_end_in_their_cause() {
        use coral_sampler::SwitchState::*;
        // Kernel stacks leaf first, one byte past each return address but the leaf.
        let mut symbolizer = FakeSymbolizer {
            kernel_names: HashMap::from([
                (0x100, "finish_task_switch.isra.0"),
                (0x200, "__schedule"),
                (0x300, "schedule"),
                (0x400, "futex_wait_queue"),
                (0x500, "do_nanosleep"),
            ]),
            ..FakeSymbolizer::default()
        };
        let futex = [0x100, 0x201, 0x301, 0x401];
        let nanosleep = [0x100, 0x201, 0x301, 0x501];
        let samples = [
            Sample::new(7, 7, 1_000, &[0x10, 0x21], &[]),
            // Began 400 before the request (which starts at 1,000): 600 of it counts.
            off_cpu(7, 600, 1_600, Interruptible, &futex),
            off_cpu(7, 1_700, 1_900, Interruptible, &futex),
            off_cpu(7, 2_000, 2_050, Interruptible, &nanosleep),
            off_cpu(7, 2_100, 2_200, Preempted, &futex),
            // Entirely before the request.
            off_cpu(7, 100, 900, Interruptible, &futex),
            // Blocked 100, then runnable (woken at 2,400) 100 more before it ran.
            {
                let mut woken = off_cpu(7, 2_300, 2_500, Interruptible, &nanosleep);
                woken.off_cpu.as_mut().unwrap().woken_unix_nano = Some(2_400);
                woken
            },
        ];
        let within = OffCpuWindow::Within {
            start: 1_000,
            end: 3_000,
        };
        let profile = fold(
            &samples,
            &mut StackCache::new(),
            &mut symbolizer,
            100,
            within,
            MemoryRecords::Skip,
        );
        let b = profile.breakdown();
        assert_eq!(b.lock_ns, 600 + 200);
        assert_eq!(b.sleep_ns, 50 + 100);
        assert_eq!(
            b.runqueue_ns,
            100 + 100,
            "after its wake-up a wait is a run-queue wait"
        );
        assert_eq!(b.off_cpu_ns, 1_150);
        assert_eq!(b.on_cpu_ns, samples_to_cpu_ns(1, 100));
        let lock = profile
            .stacks
            .iter()
            .find(|s| s.off_cpu_ns == 800)
            .expect("the two futex waits are one stack");
        assert_eq!(lock.samples, 2);
        assert_eq!(
            names_of(&profile, lock),
            ["u7:20", "u7:10", "futex_wait_queue", "lock"],
            "the switch frames are dropped; the cause is the leaf"
        );
        assert_eq!(
            profile.frames[*lock.frames.last().unwrap() as usize].kind,
            FrameKind::Wait
        );

        let cpu_only = fold(
            &samples,
            &mut StackCache::new(),
            &mut symbolizer,
            100,
            OffCpuWindow::Skip,
            MemoryRecords::Skip,
        );
        assert_eq!(cpu_only.breakdown().off_cpu_ns, 0);
        assert_eq!(cpu_only.total_samples(), 1);
    }

    fn names_of(profile: &Profile, stack: &coral_analysis::profile::WeightedStack) -> Vec<String> {
        stack
            .frames
            .iter()
            .map(|&f| profile.frames[f as usize].function.clone())
            .collect()
    }

    fn memory(tid: u32, time: i64, bytes: u64, page_bytes: u64, user: &[u64]) -> Sample {
        let record = coral_sampler::Memory { bytes, page_bytes };
        Sample::new_memory(7, tid, time, record, user, &[])
    }

    #[test]
    fn memory_records_weigh_their_bytes_by_page_size_and_are_never_cpu_samples() {
        use coral_analysis::profile::ProfileType;
        const HUGE: u64 = 2 << 20;
        let samples = [
            Sample::new(7, 7, 1_000, &[0x10, 0x21], &[]),
            memory(7, 1_100, 65_536, 4096, &[0x10, 0x21]),
            memory(7, 1_200, HUGE, HUGE, &[0x10, 0x21]),
            memory(7, 1_300, 65_536, 4096, &[0x10, 0x21]),
            // Another stack, another thread: the join decides whose records come in.
            memory(8, 1_400, 4096, 4096, &[0x40]),
            Sample::new(7, 7, 1_500, &[0x10, 0x21], &[]),
        ];
        let mut symbolizer = FakeSymbolizer::default();
        let profile = fold(
            &samples,
            &mut StackCache::new(),
            &mut symbolizer,
            100,
            OffCpuWindow::Skip,
            MemoryRecords::Keep,
        );
        let stacks: Vec<(Vec<String>, u64, u64, u64)> = profile
            .stacks
            .iter()
            .map(|s| (names_of(&profile, s), s.samples, s.cpu_ns, s.memory_bytes))
            .collect();
        let cpu_ns = samples_to_cpu_ns(2, 100);
        assert_eq!(
            stacks,
            [
                (vec!["u7:20".into(), "u7:10".into()], 2, cpu_ns, 0),
                (
                    vec!["u7:20".into(), "u7:10".into(), "4 KiB page".into()],
                    2,
                    0,
                    131_072
                ),
                (
                    vec!["u7:20".into(), "u7:10".into(), "2 MiB huge page".into()],
                    1,
                    0,
                    HUGE
                ),
                (vec!["u7:40".into(), "4 KiB page".into()], 1, 0, 4096),
            ],
            "base and huge pages are separate stacks, each ending in its page frame"
        );
        assert_eq!(profile.count(ProfileType::Cpu), 2);
        assert_eq!(
            profile.total(ProfileType::Cpu),
            cpu_ns,
            "memory is no CPU time"
        );
        assert_eq!(profile.total(ProfileType::Memory), 131_072 + HUGE + 4096);
        assert_eq!(profile.count(ProfileType::Memory), 4);
        assert_eq!(profile.memory_breakdown().huge_page_bytes, HUGE);
        assert_eq!(
            profile.frames[*profile.stacks[1].frames.last().unwrap() as usize].kind,
            FrameKind::Page
        );

        // Not asked for: no memory at all, and still no CPU sample more.
        let skipped = fold(
            &samples,
            &mut StackCache::new(),
            &mut symbolizer,
            100,
            OffCpuWindow::Within {
                start: 0,
                end: 10_000,
            },
            MemoryRecords::Skip,
        );
        assert_eq!(skipped.stacks.len(), 1);
        assert_eq!(skipped.total_samples(), 2);
        assert_eq!(skipped.total(ProfileType::Memory), 0);
        assert_eq!(skipped.total(ProfileType::Cpu), cpu_ns);

        assert!(is_cpu_sample(&samples[0]));
        assert!(!is_cpu_sample(&samples[1]));
        assert!(!is_cpu_sample(&off_cpu(
            7,
            1,
            2,
            coral_sampler::SwitchState::Preempted,
            &[]
        )));
    }

    #[test]
    fn no_samples_is_an_empty_profile() {
        let samples: [Sample; 0] = [];
        let mut symbolizer = FakeSymbolizer::default();
        let profile = fold(
            &samples,
            &mut StackCache::new(),
            &mut symbolizer,
            99,
            OffCpuWindow::Skip,
            MemoryRecords::Skip,
        );
        assert!(profile.is_empty());
        assert_eq!(profile.total_samples(), 0);
    }
}
