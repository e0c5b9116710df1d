//! [`EbpfSampler`]: the real sampler, the C program in `ebpf/sampler.bpf.c` driven
//! through aya, and the reader thread that turns its events into [`Sample`]s.

use crate::clock::{ClockOffset, OffsetTracker, REMEASURE_INTERVAL};
use crate::event::{
    COUNTER_LOST, COUNTER_MEMORY_THROTTLED, COUNTER_OFFCPU_THROTTLED, COUNTER_STACK_ERRORS,
    GLOBAL_MEMORY_EVENT_COST, GLOBAL_MEMORY_FAULT_PERIOD, GLOBAL_OFFCPU_EVENT_COST,
    GLOBAL_OFFCPU_MIN_WAIT, GLOBAL_UNWIND_MODE, KIND_MEMORY, KIND_OFF_CPU, MAP_COUNTERS,
    MAP_EVENTS, MAP_OFFCPU_EPOCH, MAP_SCRATCH, MAP_TARGETS, MAX_TARGETS, PROGRAM,
    PROGRAM_FAULT_SAMPLE, PROGRAM_HUGE_ALLOC, PROGRAM_SWITCH_IN, PROGRAM_SWITCH_IN_KPROBE,
    PROGRAM_SWITCH_OUT, RawEvent, STATE_PREEMPTED, TARGET_CPU, TARGET_MEMORY, TARGET_OFF_CPU,
    UNWIND_COPY, UNWIND_FP,
};
use crate::{
    Loss, MAX_STACK_DEPTH, Memory, OffCpu, Recording, Sample, Sampler, SamplerConfig, SamplerError,
    SamplerStats, Stack, SwitchState, Unwind, UnwindMode, privileges, validate_frequency,
};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::kprobe::KProbeLink;
use aya::programs::perf_event::{
    PerfEventConfig, PerfEventLink, PerfEventScope, SamplePolicy, SoftwareEvent,
};
use aya::programs::tp_btf::BtfTracePointLink;
use aya::programs::{BtfTracePoint, KProbe, PerfEvent, ProgramError};
use aya::{Btf, Ebpf, EbpfLoader};
use coral_unwind::{Unwinder, UnwinderConfig, UserRegs};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The compiled eBPF object (built by build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sampler.bpf.o"));

/// How often the reader thread empties the ring buffer.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How often targets are checked for having exited, CPUs for having come online, and
/// the interned stacks for being unused.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// The eBPF CPU sampler. Needs root, or CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on
/// kernels before 5.8); kernel ≥ 5.15 (ring buffer, `bpf_task_pt_regs`).
///
/// Creating it loads the program and its maps and starts a reader thread; nothing is
/// sampled until [`Sampler::add_targets`]. Dropping it detaches everything and stops the
/// thread.
pub struct EbpfSampler {
    shared: Arc<Shared>,
    reader: Option<JoinHandle<()>>,
    max_frequency_hz: u32,
}

impl std::fmt::Debug for EbpfSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfSampler")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What the API calls and the reader thread share.
struct Shared {
    control: Mutex<Control>,
    buffer: Mutex<Buffer>,
    max_buffered: usize,
    /// Events read from the ring buffer.
    samples: AtomicU64,
    /// Of them, off-CPU events.
    off_cpu_events: AtomicU64,
    /// Of them, memory events.
    memory_events: AtomicU64,
    /// Samples dropped from the full buffer.
    dropped: AtomicU64,
    /// Steps of the wall clock the reader's offset tracker saw.
    clock_steps: AtomicU64,
    stop: AtomicBool,
}

/// Samples and losses waiting for [`Sampler::drain`] / [`Sampler::take_losses`].
#[derive(Default)]
struct Buffer {
    samples: VecDeque<Sample>,
    losses: Vec<Loss>,
}

/// A profiled process.
#[derive(Debug, Clone, Copy)]
struct Target {
    /// Start time (jiffies since boot, field 22 of /proc/PID/stat), to tell an exited
    /// process from a new one that got the same pid.
    start_time: u64,
    /// The frequency it was added with.
    frequency_hz: u32,
    /// What is recorded besides CPU samples.
    recording: Recording,
}

impl Target {
    /// Its value in the `targets` map (`CORAL_TARGET_*`).
    fn flags(&self) -> u32 {
        let mut flags = TARGET_CPU;
        if self.recording.off_cpu {
            flags |= TARGET_OFF_CPU;
        }
        if self.recording.memory {
            flags |= TARGET_MEMORY;
        }
        flags
    }
}

/// The memory programs, as errors name them.
const FAULT_EVENTS: &str = "perf_event/page-faults";
const HUGE_ALLOC: &str = "tp_btf/mm_page_alloc";

/// The tracepoint at the end of `__schedule` (Linux 6.16+), run by the thread switched in.
const SWITCH_IN_TRACEPOINT: &str = "sched_exit_tp";

/// The attached off-CPU programs; dropping them detaches.
struct SchedulerLinks {
    _switch_out: BtfTracePointLink,
    _switch_in: SwitchInLinks,
}

/// The switch-in program's attachment: the tracepoint, or kprobes where it is missing.
enum SwitchInLinks {
    Tracepoint { _link: BtfTracePointLink },
    Kprobes { _links: Vec<KProbeLink> },
}

/// The program, its attachments and the set of targets.
struct Control {
    /// Owns the loaded program (maps used by user space are taken out of it).
    ebpf: Ebpf,
    targets_map: BpfHashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, u64>,
    targets: BTreeMap<u32, Target>,
    /// One per CPU while attached; dropping a link closes its perf event.
    links: BTreeMap<u32, PerfEventLink>,
    /// The CPUs online at the last check, to find those that came online since.
    online: BTreeSet<u32>,
    /// The frequency the links were opened with; 0 when detached.
    frequency_hz: u32,
    /// When the off-CPU programs were last attached (CLOCK_MONOTONIC ns): the
    /// switch-in ignores waits that began before, left by an earlier attachment.
    offcpu_epoch: Array<MapData, u64>,
    /// The switch-in program once the off-CPU programs are loaded (on first use:
    /// kernels without BTF can still sample on CPU).
    switch_in_program: Option<&'static str>,
    /// `Some` while the off-CPU programs are attached.
    scheduler: Option<SchedulerLinks>,
    /// Faults per memory record (the page-fault perf events' sample period).
    memory_period: u64,
    /// Whether the memory programs are loaded (on first use, like the off-CPU ones).
    memory_loaded: bool,
    /// `Some` while the memory programs are attached; dropping them detaches.
    memory: Option<MemoryLinks>,
}

/// The attached memory programs.
struct MemoryLinks {
    /// The page-fault perf events of each CPU (minor, major).
    faults: BTreeMap<u32, [PerfEventLink; 2]>,
    /// The huge page allocation program.
    _huge: BtfTracePointLink,
}

/// The reader thread's own state.
struct Reader {
    ring: RingBuf<MapData>,
    stacks: Stacks,
    offset: OffsetTracker,
}

/// Turns events' stacks into [`Stack`]s.
struct Stacks {
    /// `Some` in [`UnwindMode::Auto`]: unwinds the copied stacks.
    unwinder: Option<Unwinder>,
    /// The processes the unwinder holds state for, with their exec count when it was
    /// taken (a process that execs has new mappings).
    unwound: HashMap<u32, u64>,
    /// One copy of each distinct stack, shared by the samples that have it.
    interned: HashSet<Arc<Stack>>,
}

impl EbpfSampler {
    /// Loads the eBPF program and its maps and starts the reader thread.
    pub fn new(config: SamplerConfig) -> Result<Self, SamplerError> {
        if config.max_frequency_hz == 0 {
            return Err(SamplerError::InvalidConfig(
                "max_frequency_hz must be at least 1".into(),
            ));
        }
        if config.max_buffered_samples == 0 {
            return Err(SamplerError::InvalidConfig(
                "max_buffered_samples must be at least 1".into(),
            ));
        }
        let ring_bytes = ring_size(config.ring_bytes, page_size()).ok_or_else(|| {
            SamplerError::InvalidConfig(format!("ring_bytes {} is too large", config.ring_bytes))
        })?;
        // The program scales a 32-bit random number by it (no overflow below 2^32).
        let min_wait_ns = u64::try_from(config.off_cpu_min_wait.as_nanos())
            .ok()
            .filter(|&ns| ns <= u64::from(u32::MAX))
            .ok_or_else(|| {
                SamplerError::InvalidConfig(format!(
                    "off_cpu_min_wait {:?} is over 4.29 s",
                    config.off_cpu_min_wait
                ))
            })?;
        if config.off_cpu_max_events_per_cpu == 0
            || config.off_cpu_max_events_per_cpu > 1_000_000_000
        {
            return Err(SamplerError::InvalidConfig(
                "off_cpu_max_events_per_cpu must be in 1..=1000000000".into(),
            ));
        }
        let event_cost_ns = 1_000_000_000 / u64::from(config.off_cpu_max_events_per_cpu);
        if !(1..=65536).contains(&config.memory_fault_period) {
            return Err(SamplerError::InvalidConfig(format!(
                "memory_fault_period {} is not in 1..=65536",
                config.memory_fault_period
            )));
        }
        let memory_fault_period = u64::from(config.memory_fault_period);
        if config.memory_max_events_per_cpu == 0 || config.memory_max_events_per_cpu > 1_000_000_000
        {
            return Err(SamplerError::InvalidConfig(
                "memory_max_events_per_cpu must be in 1..=1000000000".into(),
            ));
        }
        let memory_event_cost_ns = 1_000_000_000 / u64::from(config.memory_max_events_per_cpu);

        privileges::check()?;
        raise_memlock_rlimit();

        let mode = match config.unwind {
            UnwindMode::Auto => UNWIND_COPY,
            UnwindMode::FramePointer => UNWIND_FP,
        };
        let possible_cpus =
            aya::util::nr_cpus().map_err(|(path, source)| SamplerError::Cpus { path, source })?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_EVENTS, ring_bytes)
            .map_max_entries(MAP_SCRATCH, possible_cpus as u32)
            .override_global(GLOBAL_UNWIND_MODE, &mode, true)
            .override_global(GLOBAL_OFFCPU_MIN_WAIT, &min_wait_ns, true)
            .override_global(GLOBAL_OFFCPU_EVENT_COST, &event_cost_ns, true)
            .override_global(GLOBAL_MEMORY_FAULT_PERIOD, &memory_fault_period, true)
            .override_global(GLOBAL_MEMORY_EVENT_COST, &memory_event_cost_ns, true)
            // `offcpu_start` and `fault_mark` are task storage, which aya creates but
            // has no type for (only the eBPF programs use them).
            .allow_unsupported_maps()
            .load(OBJECT)
            .map_err(|e| privileges::classify("loading the eBPF maps", &e, SamplerError::Load))?;
        let program: &mut PerfEvent = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| SamplerError::Load(format!("program {PROGRAM} not in the object")))?
            .try_into()
            .map_err(|e: ProgramError| SamplerError::Load(e.to_string()))?;
        // The verifier refuses with EACCES too: say what it said, not "permission" (a
        // refusal by seccomp or an LSM leaves no log).
        program.load().map_err(|e| match verifier_log_tail(&e) {
            Some(tail) => SamplerError::Load(format!(
                "the kernel's verifier rejected the program: {tail}"
            )),
            None => privileges::classify("loading the eBPF program", &e, SamplerError::Load),
        })?;

        let targets_map = BpfHashMap::try_from(take_map(&mut ebpf, MAP_TARGETS)?)
            .map_err(map_error(MAP_TARGETS))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, MAP_COUNTERS)?)
            .map_err(map_error(MAP_COUNTERS))?;
        let ring =
            RingBuf::try_from(take_map(&mut ebpf, MAP_EVENTS)?).map_err(map_error(MAP_EVENTS))?;
        let offcpu_epoch = Array::try_from(take_map(&mut ebpf, MAP_OFFCPU_EPOCH)?)
            .map_err(map_error(MAP_OFFCPU_EPOCH))?;

        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                ebpf,
                targets_map,
                counters,
                targets: BTreeMap::new(),
                links: BTreeMap::new(),
                online: BTreeSet::new(),
                frequency_hz: 0,
                offcpu_epoch,
                switch_in_program: None,
                scheduler: None,
                memory_period: memory_fault_period,
                memory_loaded: false,
                memory: None,
            }),
            buffer: Mutex::new(Buffer::default()),
            max_buffered: config.max_buffered_samples,
            samples: AtomicU64::new(0),
            off_cpu_events: AtomicU64::new(0),
            memory_events: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            clock_steps: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let mut reader = Reader {
            ring,
            stacks: Stacks {
                unwinder: (config.unwind == UnwindMode::Auto).then(|| {
                    Unwinder::new(UnwinderConfig {
                        max_depth: MAX_STACK_DEPTH,
                        ..UnwinderConfig::default()
                    })
                }),
                unwound: HashMap::new(),
                interned: HashSet::new(),
            },
            offset: OffsetTracker::new(REMEASURE_INTERVAL),
        };
        let thread_shared = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("coral-sampler".into())
            .spawn(move || reader.run(&thread_shared))
            .map_err(SamplerError::Thread)?;
        Ok(Self {
            shared,
            reader: Some(handle),
            max_frequency_hz: config.max_frequency_hz,
        })
    }
}

#[cfg(test)]
impl EbpfSampler {
    /// A kernel-side counter, for tests.
    pub(crate) fn kernel_counter(&self, index: u32) -> u64 {
        self.shared.control().counter(index)
    }

    /// The program's total run time and run count (kernel BPF stats; counted only
    /// while `aya::sys::enable_stats` is held).
    pub(crate) fn program_run_stats(&self) -> (Duration, u64) {
        let mut control = self.shared.control();
        let info = control.program().info().expect("program info");
        (info.run_time(), info.run_count())
    }

    /// The CPUs with an open perf event.
    pub(crate) fn attached_cpus(&self) -> Vec<u32> {
        self.shared.control().links.keys().copied().collect()
    }

    /// The kernel's ids of the off-CPU programs (switch-out, switch-in), once loaded.
    pub(crate) fn scheduler_program_ids(&self) -> Option<[u32; 2]> {
        let control = self.shared.control();
        let id = |name: &str| {
            control
                .ebpf
                .program(name)
                .and_then(|program| program.info().ok())
                .map(|info| info.id())
        };
        Some([id(PROGRAM_SWITCH_OUT)?, id(control.switch_in_program?)?])
    }

    /// Run time and count of the switch-in program (kernel BPF stats).
    pub(crate) fn switch_in_run_stats(&self) -> (Duration, u64) {
        let control = self.shared.control();
        let info = control
            .ebpf
            .program(control.switch_in_program.expect("loaded"))
            .expect("in the object")
            .info()
            .expect("program info");
        (info.run_time(), info.run_count())
    }
}

impl Sampler for EbpfSampler {
    fn add_targets(
        &self,
        tgids: &[u32],
        frequency_hz: u32,
        recording: Recording,
    ) -> Result<(), SamplerError> {
        validate_frequency(frequency_hz, self.max_frequency_hz)?;
        let mut control = self.shared.control();
        let mut added = Vec::new();
        // Targets that recorded less before, with what they recorded: put back on
        // failure.
        let mut upgraded = Vec::new();
        for &tgid in tgids {
            if let Some(target) = control.targets.get_mut(&tgid) {
                target.frequency_hz = target.frequency_hz.max(frequency_hz);
                let before = target.recording;
                if before.union(recording) != before {
                    target.recording = before.union(recording);
                    let flags = target.flags();
                    if let Err(error) = control.targets_map.insert(tgid, flags, 0) {
                        control.downgrade(&upgraded);
                        control.forget(&added);
                        return Err(map_error(MAP_TARGETS)(error));
                    }
                    upgraded.push((tgid, before));
                }
                continue;
            }
            if added.contains(&tgid) {
                continue;
            }
            let Some(start_time) = process_start_time(tgid) else {
                tracing::warn!(
                    tgid,
                    "not profiling process: it does not exist (or has exited)"
                );
                continue;
            };
            if control.targets.len() >= MAX_TARGETS as usize {
                control.forget(&added);
                return Err(SamplerError::TooManyTargets { max: MAX_TARGETS });
            }
            let target = Target {
                start_time,
                frequency_hz,
                recording,
            };
            if let Err(error) = control.targets_map.insert(tgid, target.flags(), 0) {
                control.downgrade(&upgraded);
                control.forget(&added);
                return Err(map_error(MAP_TARGETS)(error));
            }
            control.targets.insert(tgid, target);
            added.push(tgid);
        }
        if let Err(error) = control.retune() {
            control.downgrade(&upgraded);
            control.forget(&added);
            return Err(error);
        }
        tracing::debug!(
            ?added,
            frequency_hz = control.frequency_hz,
            off_cpu = control.scheduler.is_some(),
            memory = control.memory.is_some(),
            targets = control.targets.len(),
            "targets added"
        );
        Ok(())
    }

    fn set_recording(&self, tgids: &[u32], recording: Recording) -> Result<(), SamplerError> {
        let mut control = self.shared.control();
        let mut changed = Vec::new();
        for &tgid in tgids {
            let Some(target) = control.targets.get_mut(&tgid) else {
                continue;
            };
            if target.recording == recording {
                continue;
            }
            let before = target.recording;
            target.recording = recording;
            let flags = target.flags();
            if let Err(error) = control.targets_map.insert(tgid, flags, 0) {
                control.downgrade(&[(tgid, before)]);
                control.downgrade(&changed);
                return Err(map_error(MAP_TARGETS)(error));
            }
            changed.push((tgid, before));
        }
        if let Err(error) = control.retune() {
            control.downgrade(&changed);
            return Err(error);
        }
        Ok(())
    }

    fn remove_targets(&self, tgids: &[u32]) -> Result<(), SamplerError> {
        let mut control = self.shared.control();
        control.forget(tgids);
        tracing::debug!(?tgids, targets = control.targets.len(), "targets removed");
        Ok(())
    }

    fn drain(&self) -> Vec<Sample> {
        let mut samples = Vec::from(std::mem::take(&mut self.shared.buffer().samples));
        // Stable: samples with equal times keep the order the kernel produced them in.
        samples.sort_by_key(|sample| sample.time_unix_nano);
        samples
    }

    fn take_losses(&self) -> Vec<Loss> {
        std::mem::take(&mut self.shared.buffer().losses)
    }

    fn stats(&self) -> SamplerStats {
        let control = self.shared.control();
        SamplerStats {
            samples: self.shared.samples.load(Ordering::Relaxed),
            off_cpu_events: self.shared.off_cpu_events.load(Ordering::Relaxed),
            memory_events: self.shared.memory_events.load(Ordering::Relaxed),
            lost: control.counter(COUNTER_LOST),
            off_cpu_throttled: control.counter(COUNTER_OFFCPU_THROTTLED),
            memory_throttled: control.counter(COUNTER_MEMORY_THROTTLED),
            stack_errors: control.counter(COUNTER_STACK_ERRORS),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            clock_steps: self.shared.clock_steps.load(Ordering::Relaxed),
            frequency_hz: control.frequency_hz,
            targets: control.targets.len(),
            attached: !control.links.is_empty(),
            off_cpu_attached: control.scheduler.is_some(),
            memory_attached: control.memory.is_some(),
        }
    }
}

impl Drop for EbpfSampler {
    fn drop(&mut self) {
        self.shared.control().detach();
        self.shared.stop.store(true, Ordering::Release);
        if let Some(handle) = self.reader.take() {
            handle.thread().unpark();
            if handle.join().is_err() {
                tracing::error!("the sampler's reader thread panicked");
            }
        }
    }
}

impl Shared {
    fn control(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, samples: Vec<Sample>, mut losses: Vec<Loss>) {
        if samples.is_empty() && losses.is_empty() {
            return;
        }
        self.samples
            .fetch_add(samples.len() as u64, Ordering::Relaxed);
        let off_cpu = samples.iter().filter(|s| s.off_cpu.is_some()).count();
        self.off_cpu_events
            .fetch_add(off_cpu as u64, Ordering::Relaxed);
        let memory = samples.iter().filter(|s| s.memory.is_some()).count();
        self.memory_events
            .fetch_add(memory as u64, Ordering::Relaxed);
        let mut buffer = self.buffer();
        // Dropped samples, one loss per thread (an overflow drops many at once).
        let mut dropped: HashMap<(u32, u32), Loss> = HashMap::new();
        for sample in samples {
            if buffer.samples.len() >= self.max_buffered
                && let Some(oldest) = buffer.samples.pop_front()
            {
                dropped
                    .entry((oldest.tgid, oldest.tid))
                    .and_modify(|loss| loss.add(&oldest))
                    .or_insert_with(|| Loss::of_sample(&oldest));
            }
            buffer.samples.push_back(sample);
        }
        let count: u64 = dropped.values().map(|loss| loss.samples).sum();
        if count > 0 {
            self.dropped.fetch_add(count, Ordering::Relaxed);
        }
        losses.extend(dropped.into_values());
        buffer.losses.extend(losses);
    }

    /// Stops targeting processes that have exited (or whose pid now names another
    /// process), detaching when none is left; opens perf events on CPUs that came
    /// online. Returns the processes still targeted.
    fn housekeeping(&self) -> BTreeSet<u32> {
        let mut control = self.control();
        let exited: Vec<u32> = control
            .targets
            .iter()
            .filter(|&(&tgid, target)| process_start_time(tgid) != Some(target.start_time))
            .map(|(&tgid, _)| tgid)
            .collect();
        if !exited.is_empty() {
            tracing::debug!(?exited, "profiled processes exited");
            control.forget(&exited);
        }
        if !control.links.is_empty()
            && let Err(error) = control.attach_new_cpus()
        {
            tracing::warn!(%error, "attaching to CPUs that came online failed");
        }
        control.targets.keys().copied().collect()
    }
}

impl Control {
    /// A kernel-side counter (`CORAL_COUNTER_*`), summed over the CPUs.
    fn counter(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map(|values| values.iter().sum())
            .unwrap_or_else(|error| {
                tracing::warn!(%error, index, "reading the sampler's counters failed");
                0
            })
    }

    fn program(&mut self) -> &mut PerfEvent {
        self.ebpf
            .program_mut(PROGRAM)
            .expect("loaded in EbpfSampler::new")
            .try_into()
            .expect("a perf_event program")
    }

    /// The frequency the targets ask for: the highest of theirs.
    fn wanted_frequency(&self) -> u32 {
        self.targets
            .values()
            .map(|target| target.frequency_hz)
            .max()
            .unwrap_or(0)
    }

    /// Attaches, re-attaches at a changed frequency, or detaches, to match the targets;
    /// the same for the off-CPU probes. A frequency change opens the new perf events
    /// before closing the old ones, so sampling has no gap. On failure the earlier
    /// attachment is kept.
    fn retune(&mut self) -> Result<(), SamplerError> {
        let wants_off_cpu = self.targets.values().any(|target| target.recording.off_cpu);
        match (wants_off_cpu, self.scheduler.is_some()) {
            (true, false) => self.attach_scheduler()?,
            (false, true) => self.detach_scheduler(),
            _ => {}
        }
        let wants_memory = self.targets.values().any(|target| target.recording.memory);
        match (wants_memory, self.memory.is_some()) {
            (true, false) => self.attach_memory()?,
            (false, true) => self.detach_memory(),
            _ => {}
        }
        let wanted = self.wanted_frequency();
        if wanted == 0 {
            self.detach();
            return Ok(());
        }
        if wanted == self.frequency_hz && !self.links.is_empty() {
            return Ok(());
        }
        let cpus = online_cpus()?;
        let mut links = BTreeMap::new();
        for &cpu in &cpus {
            if let Some(link) = self.open(cpu, wanted)? {
                links.insert(cpu, link);
            }
        }
        // Dropping the old links closes their perf events, after the new ones run.
        self.links = links;
        self.online = cpus;
        self.frequency_hz = wanted;
        Ok(())
    }

    /// Opens perf events on the CPUs that came online since the last check (a CPU
    /// taken offline loses its event, so one that comes back needs a new one).
    fn attach_new_cpus(&mut self) -> Result<(), SamplerError> {
        let cpus = online_cpus()?;
        let new: Vec<u32> = cpus.difference(&self.online).copied().collect();
        for cpu in new {
            if let Some(link) = self.open(cpu, self.frequency_hz)? {
                tracing::info!(cpu, "CPU came online: sampling it");
                self.links.insert(cpu, link);
            }
            if self.memory.is_some()
                && let Some(links) = self.open_fault_events(cpu)?
                && let Some(memory) = &mut self.memory
            {
                memory.faults.insert(cpu, links);
            }
        }
        self.online = cpus;
        Ok(())
    }

    /// Opens a CPU-clock perf event at `frequency_hz` on `cpu` and attaches the program
    /// to it; `None` when the CPU went offline meanwhile.
    fn open(&mut self, cpu: u32, frequency_hz: u32) -> Result<Option<PerfEventLink>, SamplerError> {
        let program = self.program();
        let attached = program
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(u64::from(frequency_hz)),
                false,
            )
            .and_then(|id| program.take_link(id));
        match attached {
            Ok(link) => Ok(Some(link)),
            Err(error) => match errno_of(&error) {
                Some(nix::libc::ENODEV) => {
                    tracing::warn!(cpu, "CPU went offline; not sampling it");
                    Ok(None)
                }
                Some(errno) if privileges::is_permission_errno(errno) => {
                    Err(SamplerError::PermissionDenied {
                        operation: "opening the CPU clock perf event",
                        detail: privileges::denial_detail(),
                    })
                }
                Some(nix::libc::EINVAL) => Err(SamplerError::FrequencyRejected {
                    requested: frequency_hz,
                    cpu,
                    kernel_max: kernel_max_sample_rate().unwrap_or(0),
                    source: std::io::Error::from_raw_os_error(nix::libc::EINVAL),
                }),
                _ => Err(SamplerError::Attach {
                    cpu,
                    message: privileges::chain_message(&error),
                }),
            },
        }
    }

    /// Closes the perf events: nothing is sampled any more.
    fn detach(&mut self) {
        self.detach_scheduler();
        self.detach_memory();
        self.links.clear();
        self.online.clear();
        self.frequency_hz = 0;
    }

    /// Loads (once) and attaches the off-CPU programs: `sched_switch` (switch-out) and
    /// `sched_exit_tp`, or kprobes on `finish_task_switch` (switch-in; its name varies
    /// with the kernel's build, so it is looked up in /proc/kallsyms).
    fn attach_scheduler(&mut self) -> Result<(), SamplerError> {
        let switch_in_program = match self.switch_in_program {
            Some(program) => program,
            None => self.load_scheduler_programs()?,
        };
        let switch_in = if switch_in_program == PROGRAM_SWITCH_IN {
            let program = self.tracepoint(PROGRAM_SWITCH_IN);
            let link = program
                .attach()
                .and_then(|id| program.take_link(id))
                .map_err(|e| {
                    scheduler_error(&format!("tp_btf/{SWITCH_IN_TRACEPOINT}"))(
                        program_error_message(&e),
                    )
                })?;
            SwitchInLinks::Tracepoint { _link: link }
        } else {
            let functions = finish_task_switch_symbols()
                .map_err(|e| scheduler_error("kprobe/finish_task_switch")(e.to_string()))?;
            if functions.is_empty() {
                return Err(scheduler_error("kprobe/finish_task_switch")(
                    "no finish_task_switch in /proc/kallsyms".into(),
                ));
            }
            let program: &mut KProbe = self
                .ebpf
                .program_mut(PROGRAM_SWITCH_IN_KPROBE)
                .expect("loaded")
                .try_into()
                .expect("a kprobe");
            let mut links = Vec::new();
            for function in &functions {
                let link = program
                    .attach(function, 0)
                    .and_then(|id| program.take_link(id))
                    .map_err(|e| {
                        scheduler_error(&format!("kprobe/{function}"))(program_error_message(&e))
                    })?;
                links.push(link);
            }
            SwitchInLinks::Kprobes { _links: links }
        };
        // Waits that began before now were seen by an earlier attachment, or only in
        // part: the switch-in ignores them.
        let now =
            u64::try_from(crate::clock::now_ns(nix::time::ClockId::CLOCK_MONOTONIC)).unwrap_or(0);
        self.offcpu_epoch
            .set(0, now, 0)
            .map_err(|e| scheduler_error("offcpu_epoch")(e.to_string()))?;
        let program = self.tracepoint(PROGRAM_SWITCH_OUT);
        let switch_out = program
            .attach()
            .and_then(|id| program.take_link(id))
            .map_err(|e| scheduler_error("tp_btf/sched_switch")(program_error_message(&e)))?;
        tracing::debug!(switch_in_program, "off-CPU probes attached");
        self.scheduler = Some(SchedulerLinks {
            _switch_out: switch_out,
            _switch_in: switch_in,
        });
        Ok(())
    }

    /// Loads the off-CPU programs: `sched_switch` (switch-out) and, for the switch-in,
    /// the `sched_exit_tp` tracepoint where the kernel has it, else a kprobe on
    /// `finish_task_switch`. Returns the switch-in program's name.
    fn load_scheduler_programs(&mut self) -> Result<&'static str, SamplerError> {
        let btf = Btf::from_sys_fs().map_err(|e| {
            scheduler_error("tp_btf/sched_switch")(format!("reading the kernel's BTF: {e}"))
        })?;
        self.tracepoint(PROGRAM_SWITCH_OUT)
            .load("sched_switch", &btf)
            .map_err(|e| scheduler_error("tp_btf/sched_switch")(program_error_message(&e)))?;
        // Kernels before 6.16 have no such tracepoint: loading fails, the kprobe is next.
        let switch_in = match self
            .tracepoint(PROGRAM_SWITCH_IN)
            .load(SWITCH_IN_TRACEPOINT, &btf)
        {
            Ok(()) => PROGRAM_SWITCH_IN,
            Err(tracepoint_error) => {
                let program: &mut KProbe = self
                    .ebpf
                    .program_mut(PROGRAM_SWITCH_IN_KPROBE)
                    .expect("in the object")
                    .try_into()
                    .map_err(|e: ProgramError| {
                        scheduler_error("kprobe/finish_task_switch")(e.to_string())
                    })?;
                program.load().map_err(|e| {
                    scheduler_error("kprobe/finish_task_switch")(format!(
                        "{} (and tp_btf/{SWITCH_IN_TRACEPOINT}: {})",
                        program_error_message(&e),
                        program_error_message(&tracepoint_error)
                    ))
                })?;
                PROGRAM_SWITCH_IN_KPROBE
            }
        };
        self.switch_in_program = Some(switch_in);
        Ok(switch_in)
    }

    /// Loads (once) and attaches the memory programs: the sampled page-fault perf
    /// events of every online CPU, and the huge page allocation tracepoint.
    fn attach_memory(&mut self) -> Result<(), SamplerError> {
        if !self.memory_loaded {
            self.load_memory_programs()?;
        }
        let program = self.tracepoint(PROGRAM_HUGE_ALLOC);
        let huge = program
            .attach()
            .and_then(|id| program.take_link(id))
            .map_err(|e| memory_error(HUGE_ALLOC)(program_error_message(&e)))?;
        let mut faults = BTreeMap::new();
        for cpu in online_cpus()? {
            if let Some(links) = self.open_fault_events(cpu)? {
                faults.insert(cpu, links);
            }
        }
        tracing::debug!("memory probes attached");
        self.memory = Some(MemoryLinks {
            faults,
            _huge: huge,
        });
        Ok(())
    }

    /// Loads the memory programs.
    fn load_memory_programs(&mut self) -> Result<(), SamplerError> {
        let program: &mut PerfEvent = self
            .ebpf
            .program_mut(PROGRAM_FAULT_SAMPLE)
            .expect("in the object")
            .try_into()
            .map_err(|e: ProgramError| memory_error(FAULT_EVENTS)(e.to_string()))?;
        program
            .load()
            .map_err(|e| memory_error(FAULT_EVENTS)(program_error_message(&e)))?;
        let btf = Btf::from_sys_fs()
            .map_err(|e| memory_error(HUGE_ALLOC)(format!("reading the kernel's BTF: {e}")))?;
        self.tracepoint(PROGRAM_HUGE_ALLOC)
            .load("mm_page_alloc", &btf)
            .map_err(|e| memory_error(HUGE_ALLOC)(program_error_message(&e)))?;
        self.memory_loaded = true;
        Ok(())
    }

    /// Opens the minor and major page-fault perf events of `cpu`, sampled every
    /// `memory_period` faults, with the fault program attached; `None` when the CPU
    /// went offline meanwhile.
    fn open_fault_events(&mut self, cpu: u32) -> Result<Option<[PerfEventLink; 2]>, SamplerError> {
        let period = self.memory_period;
        let program: &mut PerfEvent = self
            .ebpf
            .program_mut(PROGRAM_FAULT_SAMPLE)
            .expect("loaded")
            .try_into()
            .expect("a perf_event program");
        let mut open = |event| {
            program
                .attach(
                    PerfEventConfig::Software(event),
                    PerfEventScope::AllProcessesOneCpu { cpu },
                    SamplePolicy::Period(period),
                    false,
                )
                .and_then(|id| program.take_link(id))
        };
        match open(SoftwareEvent::PageFaultsMin)
            .and_then(|min| Ok([min, open(SoftwareEvent::PageFaultsMaj)?]))
        {
            Ok(links) => Ok(Some(links)),
            Err(error) if errno_of(&error) == Some(nix::libc::ENODEV) => Ok(None),
            Err(error) => Err(memory_error(FAULT_EVENTS)(privileges::chain_message(
                &error,
            ))),
        }
    }

    /// Detaches the memory programs (a huge page fault noted in task storage goes
    /// stale: the thread's fault count moves past it).
    fn detach_memory(&mut self) {
        if self.memory.take().is_some() {
            tracing::debug!("memory probes detached");
        }
    }

    /// One of the object's tp_btf programs.
    fn tracepoint(&mut self, name: &str) -> &mut BtfTracePoint {
        self.ebpf
            .program_mut(name)
            .expect("in the object")
            .try_into()
            .expect("a tp_btf program")
    }

    /// Detaches the off-CPU programs (what they saw switched out stays in task
    /// storage, older than the next attachment's epoch).
    fn detach_scheduler(&mut self) {
        if self.scheduler.take().is_some() {
            tracing::debug!("off-CPU probes detached");
        }
    }

    /// Puts back what targets recorded before [`Sampler::add_targets`] asked for more,
    /// when that call fails.
    fn downgrade(&mut self, upgraded: &[(u32, Recording)]) {
        for (tgid, before) in upgraded {
            if let Some(target) = self.targets.get_mut(tgid) {
                target.recording = *before;
                let flags = target.flags();
                if let Err(error) = self.targets_map.insert(*tgid, flags, 0) {
                    tracing::warn!(tgid, %error, "updating a target in the eBPF map failed");
                }
            }
        }
    }

    /// Stops targeting these processes; lowers the frequency to what the others ask
    /// for, or detaches when none is left.
    fn forget(&mut self, tgids: &[u32]) {
        for tgid in tgids {
            if self.targets.remove(tgid).is_some() {
                match self.targets_map.remove(tgid) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(error) => {
                        tracing::warn!(tgid, %error, "removing a target from the eBPF map failed")
                    }
                }
            }
        }
        if let Err(error) = self.retune() {
            tracing::warn!(%error, "lowering the sampling frequency failed; keeping the higher one");
        }
    }
}

impl Reader {
    fn run(&mut self, shared: &Shared) {
        let mut last_housekeeping = Instant::now();
        loop {
            let stopping = shared.stop.load(Ordering::Acquire);
            self.drain_ring(shared);
            if stopping {
                break;
            }
            if last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
                let targets = shared.housekeeping();
                self.stacks.housekeeping(&targets);
                last_housekeeping = Instant::now();
            }
            std::thread::park_timeout(POLL_INTERVAL);
        }
    }

    /// Reads every event in the ring buffer and turns it into a [`Sample`].
    fn drain_ring(&mut self, shared: &Shared) {
        let mut samples = Vec::new();
        let mut losses = Vec::new();
        let mut offset = None;
        while let Some(record) = self.ring.next() {
            let Some(event) = RawEvent::parse(&record) else {
                tracing::warn!(
                    len = record.len(),
                    "malformed sample record from the eBPF program"
                );
                continue;
            };
            let offset = *offset.get_or_insert_with(|| self.offset.get());
            if event.lost > 0 {
                losses.push(Loss {
                    tgid: (event.lost_tgid != 0).then_some(event.lost_tgid),
                    tid: (event.lost_tid != 0).then_some(event.lost_tid),
                    start_unix_nano: offset.to_unix_nano(event.lost_since_ns),
                    end_unix_nano: offset.to_unix_nano(event.ktime_ns),
                    samples: event.lost,
                });
            }
            let sample = self.stacks.sample(event, offset);
            samples.push(sample);
        }
        if offset.is_some() {
            shared
                .clock_steps
                .store(self.offset.steps, Ordering::Relaxed);
        }
        shared.push(samples, losses);
    }
}

impl Stacks {
    /// Drops the unwinder's state of processes no longer profiled, and interned stacks
    /// no sample holds any more.
    fn housekeeping(&mut self, targets: &BTreeSet<u32>) {
        if let Some(unwinder) = &mut self.unwinder {
            self.unwound.retain(|pid, _| {
                let keep = targets.contains(pid);
                if !keep {
                    unwinder.forget(*pid);
                }
                keep
            });
        }
        self.interned.retain(|stack| Arc::strong_count(stack) > 1);
    }

    fn sample(&mut self, event: RawEvent<'_>, offset: ClockOffset) -> Sample {
        let (user, unwind) = match &mut self.unwinder {
            Some(unwinder) if event.sp != 0 => {
                // The process exec'd: what the unwinder knows of its mappings is stale.
                let seen = self.unwound.entry(event.tgid).or_insert(event.exec_id);
                if event.exec_id > *seen {
                    *seen = event.exec_id;
                    unwinder.forget(event.tgid);
                }
                let regs = UserRegs {
                    ip: event.ip,
                    sp: event.sp,
                    bp: event.bp,
                };
                let unwound = unwinder.unwind(event.tgid, regs, event.stack);
                let unwind = match unwound.truncated {
                    Some(_) => Unwind::Truncated,
                    None => Unwind::from(unwound.method),
                };
                (unwound.frames, unwind)
            }
            Some(_) => (Vec::new(), Unwind::Truncated),
            None => {
                // The kernel's walk cannot tell a root from a frame it could not follow;
                // only a walk cut at the depth limit is known to be truncated.
                let unwind = if event.user.is_empty() || event.user.len() >= MAX_STACK_DEPTH {
                    Unwind::Truncated
                } else {
                    Unwind::FramePointer
                };
                (event.user, unwind)
            }
        };
        let stack = Stack {
            user: user.into(),
            kernel: event.kernel.into(),
            unwind,
        };
        let stack = match self.interned.get(&stack) {
            Some(interned) => Arc::clone(interned),
            None => {
                let stack = Arc::new(stack);
                self.interned.insert(Arc::clone(&stack));
                stack
            }
        };
        let off_cpu = (event.kind == KIND_OFF_CPU).then(|| OffCpu {
            start_unix_nano: offset.to_unix_nano(event.off_cpu_start_ns),
            weight_ns: event.weight,
            state: SwitchState::from_kernel(
                event.state & !STATE_PREEMPTED,
                event.state & STATE_PREEMPTED != 0,
            ),
            woken_unix_nano: (event.runqueue_ns > 0)
                .then(|| offset.to_unix_nano(event.ktime_ns.saturating_sub(event.runqueue_ns))),
        });
        let memory = (event.kind == KIND_MEMORY).then(|| Memory {
            bytes: event.weight,
            page_bytes: 4096u64 << event.state.min(30),
        });
        Sample {
            tgid: event.tgid,
            tid: event.tid,
            cpu: event.cpu,
            time_unix_nano: offset.to_unix_nano(event.ktime_ns),
            stack,
            off_cpu,
            memory,
        }
    }
}

fn online_cpus() -> Result<BTreeSet<u32>, SamplerError> {
    aya::util::online_cpus()
        .map(|cpus| cpus.into_iter().collect())
        .map_err(|(_, source)| SamplerError::Cpus {
            path: "/sys/devices/system/cpu/online",
            source,
        })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, SamplerError> {
    ebpf.take_map(name).ok_or_else(|| SamplerError::Map {
        map: name,
        message: "not in the eBPF object".into(),
    })
}

fn map_error(map: &'static str) -> impl Fn(MapError) -> SamplerError {
    move |error| SamplerError::Map {
        map,
        message: privileges::chain_message(&error),
    }
}

/// The last lines of the verifier's log when it refused to load a program.
fn verifier_log_tail(error: &ProgramError) -> Option<String> {
    let ProgramError::LoadError { verifier_log, .. } = error else {
        return None;
    };
    let log = verifier_log.to_string();
    if log.trim().is_empty() {
        return None;
    }
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    Some(tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
}

/// A program error's message, with the verifier's last lines when it refused.
fn program_error_message(error: &ProgramError) -> String {
    match verifier_log_tail(error) {
        Some(tail) => format!("the kernel's verifier rejected it: {tail}"),
        None => privileges::chain_message(error),
    }
}

/// How attaching or loading the off-CPU program `program` failed.
fn scheduler_error(program: &str) -> impl FnOnce(String) -> SamplerError {
    let program = program.to_owned();
    move |message| SamplerError::AttachScheduler { program, message }
}

fn memory_error(program: &str) -> impl FnOnce(String) -> SamplerError {
    let program = program.to_owned();
    move |message| SamplerError::AttachMemory { program, message }
}

/// The kernel's `finish_task_switch`: the function itself, or, when the compiler only
/// left specialized copies (`finish_task_switch.isra.0`...), those.
fn finish_task_switch_symbols() -> std::io::Result<Vec<String>> {
    let kallsyms = std::fs::read_to_string("/proc/kallsyms")?;
    Ok(finish_task_switch_in(&kallsyms))
}

fn finish_task_switch_in(kallsyms: &str) -> Vec<String> {
    const NAME: &str = "finish_task_switch";
    let mut copies = BTreeSet::new();
    for line in kallsyms.lines() {
        let Some(name) = line.split_whitespace().nth(2) else {
            continue;
        };
        if name == NAME {
            return vec![NAME.to_owned()];
        }
        if name
            .strip_prefix(NAME)
            .is_some_and(|suffix| suffix.starts_with('.'))
        {
            copies.insert(name.to_owned());
        }
    }
    copies.into_iter().collect()
}

fn errno_of(error: &ProgramError) -> Option<i32> {
    privileges::errno_in_chain(error)
}

/// The ring buffer's size: a power of two, at least one page.
fn ring_size(requested: usize, page_size: usize) -> Option<u32> {
    let size = requested.max(page_size).checked_next_power_of_two()?;
    u32::try_from(size).ok()
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| usize::try_from(size).ok())
        .unwrap_or(4096)
}

/// Before Linux 5.11, eBPF maps are charged to RLIMIT_MEMLOCK (since, to the memory
/// cgroup): raise the soft limit as far as allowed. Failing is not fatal: loading then
/// fails with a clear error if the limit is really too low.
fn raise_memlock_rlimit() {
    use aya::util::KernelVersion;
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let charged_to_memlock = KernelVersion::current()
        .map(|v| v < KernelVersion::new(5, 11, 0))
        .unwrap_or(true);
    if !charged_to_memlock {
        return;
    }
    let raised = setrlimit(
        Resource::RLIMIT_MEMLOCK,
        nix::libc::RLIM_INFINITY,
        nix::libc::RLIM_INFINITY,
    )
    .or_else(|_| {
        let (_, hard) = getrlimit(Resource::RLIMIT_MEMLOCK)?;
        setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard)
    });
    if let Err(error) = raised {
        tracing::debug!(%error, "could not raise RLIMIT_MEMLOCK");
    }
}

fn kernel_max_sample_rate() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_max_sample_rate")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A process's start time (field 22 of /proc/PID/stat), or `None` if it does not
/// exist or is a zombie (exited, not yet reaped).
fn process_start_time(tgid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // Field 3 is the state, so field 22 (starttime) is 19 further on.
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_process_start_time() {
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        let zombie = "4242 (x) Z 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 0 0";
        assert_eq!(parse_start_time(zombie), None);
        assert_eq!(parse_start_time("garbage"), None);
        let own = process_start_time(std::process::id()).expect("this process exists");
        assert!(own > 0);
        assert_eq!(process_start_time(u32::MAX), None);
    }

    #[test]
    fn finds_finish_task_switch_whatever_the_compiler_named_it() {
        let isra = "ffffffff813aec30 t __pfx_finish_task_switch.isra.0\n\
                    ffffffff813aec40 t finish_task_switch.isra.0\n\
                    ffffffff813aee00 T schedule\n";
        assert_eq!(finish_task_switch_in(isra), ["finish_task_switch.isra.0"]);
        let plain = "ffffffff813aec40 t finish_task_switch\n\
                     ffffffff813aed40 t finish_task_switch.part.0\n";
        assert_eq!(finish_task_switch_in(plain), ["finish_task_switch"]);
        assert!(finish_task_switch_in("ffffffff813aee00 T schedule\n").is_empty());
        let own = finish_task_switch_symbols().expect("/proc/kallsyms");
        assert!(!own.is_empty(), "this kernel has a finish_task_switch");
    }

    #[test]
    fn ring_size_is_a_power_of_two_of_pages() {
        assert_eq!(ring_size(4 << 20, 4096), Some(4 << 20));
        assert_eq!(ring_size(3 << 20, 4096), Some(4 << 20));
        assert_eq!(ring_size(0, 4096), Some(4096));
        assert_eq!(ring_size(100, 65536), Some(65536));
        assert_eq!(ring_size(usize::MAX, 4096), None);
        assert_eq!(ring_size(1 << 33, 4096), None);
    }

    /// Privileged, `new` works; unprivileged (a plain `cargo test`), it fails with an
    /// error naming the missing capabilities. Either way the contract is checked.
    #[test]
    fn new_works_or_names_the_missing_capabilities() {
        let missing = privileges::effective_capabilities()
            .map(privileges::missing_capabilities)
            .unwrap_or_default();
        match EbpfSampler::new(SamplerConfig::default()) {
            Ok(sampler) => {
                assert!(missing.is_empty(), "loaded without {missing:?}?");
                assert_eq!(
                    sampler.stats(),
                    SamplerStats::default(),
                    "nothing attached before the first target"
                );
            }
            Err(error @ SamplerError::PermissionDenied { .. }) => {
                let message = error.to_string();
                assert!(!missing.is_empty(), "{message}");
                for capability in missing {
                    assert!(message.contains(capability), "{message}");
                }
                assert!(
                    message.contains("run as root or grant CAP_BPF and CAP_PERFMON"),
                    "{message}"
                );
            }
            Err(other) => panic!("{other}"),
        }
    }

    #[test]
    fn new_rejects_bad_config() {
        for config in [
            SamplerConfig {
                max_frequency_hz: 0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                max_buffered_samples: 0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                off_cpu_min_wait: Duration::from_secs(5),
                ..SamplerConfig::default()
            },
            SamplerConfig {
                off_cpu_max_events_per_cpu: 0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                memory_fault_period: 0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                memory_fault_period: 65537,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                memory_max_events_per_cpu: 0,
                ..SamplerConfig::default()
            },
        ] {
            assert!(matches!(
                EbpfSampler::new(config),
                Err(SamplerError::InvalidConfig(_))
            ));
        }
    }
}
