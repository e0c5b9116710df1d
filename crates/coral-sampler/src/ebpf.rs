//! [`EbpfSampler`]: the real sampler, the C program in `ebpf/sampler.bpf.c` driven
//! through aya.

use crate::clock::{ClockOffset, OffsetTracker, REMEASURE_INTERVAL};
use crate::event::{
    COUNTER_LOST, COUNTER_STACK_ERRORS, MAP_ACTIVE_STACKS, MAP_COUNTERS, MAP_EVENTS, MAP_STACKS,
    MAP_TARGETS, MAX_TARGETS, PROGRAM, RawEvent,
};
use crate::{
    Sample, Sampler, SamplerConfig, SamplerError, SamplerStats, privileges, validate_frequency,
};
use aya::maps::{
    Array, HashMap as BpfHashMap, Map, MapData, MapError, PerCpuArray, RingBuf, StackTraceMap,
};
use aya::programs::perf_event::{
    PerfEventConfig, PerfEventLink, PerfEventScope, SamplePolicy, SoftwareEvent,
};
use aya::programs::{PerfEvent, ProgramError};
use aya::{Ebpf, EbpfLoader};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The compiled eBPF object (built by build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sampler.bpf.o"));

/// How often the reader thread empties the ring buffer.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How often the stack maps are rotated (see sampler.bpf.c).
const ROTATE_INTERVAL: Duration = Duration::from_secs(1);
/// How long after a flip the old stack map is cleared: far longer than one run of
/// the eBPF program (microseconds, not preemptible), so every event written with the
/// old index has been submitted and is drained first.
const ROTATE_GRACE: Duration = Duration::from_millis(20);
/// How often targets are checked for having exited.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// The eBPF CPU sampler. Needs root, or CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN on
/// kernels before 5.8); kernel ≥ 5.8 (ring buffer).
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
    buffer: Mutex<VecDeque<Sample>>,
    max_buffered: usize,
    /// Events read from the ring buffer.
    samples: AtomicU64,
    /// Samples dropped from the full buffer.
    dropped: AtomicU64,
    /// Stack ids that could not be resolved in user space.
    resolve_errors: AtomicU64,
    /// Steps of the wall clock the reader's offset tracker saw.
    clock_steps: AtomicU64,
    /// Stack map rotations done, and stack entries deleted by them (for tests and logs).
    rotations: AtomicU64,
    cleared_stacks: AtomicU64,
    stop: AtomicBool,
}

/// The program, its attachments and the set of targets.
struct Control {
    /// Owns the loaded program (maps used by user space are taken out of it).
    ebpf: Ebpf,
    targets_map: BpfHashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, u64>,
    /// Targets with their start time (jiffies since boot, field 22 of /proc/PID/stat),
    /// to tell an exited process from a new one that got the same pid.
    targets: BTreeMap<u32, u64>,
    /// One per online CPU while attached; dropping a link closes its perf event.
    links: Vec<PerfEventLink>,
    /// The frequency the links were opened with; 0 when detached.
    frequency_hz: u32,
}

/// The reader thread's own state: the ring buffer and the stack maps.
struct Reader {
    ring: RingBuf<MapData>,
    stacks: [StackTraceMap<MapData>; 2],
    /// Frames of the stacks already resolved in each map (ids name the same stack until
    /// their map is cleared).
    resolved: [HashMap<u32, Vec<u64>>; 2],
    active_map: Array<MapData, u32>,
    active: usize,
    /// The map to clear, and when it stopped being active.
    pending_clear: Option<(usize, Instant)>,
    offset: OffsetTracker,
}

impl EbpfSampler {
    /// Loads the eBPF program and its maps and starts the reader thread.
    pub fn new(config: SamplerConfig) -> Result<Self, SamplerError> {
        if config.max_frequency_hz == 0 {
            return Err(SamplerError::InvalidConfig(
                "max_frequency_hz must be at least 1".into(),
            ));
        }
        if config.stack_map_entries == 0 {
            return Err(SamplerError::InvalidConfig(
                "stack_map_entries must be at least 1".into(),
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

        privileges::check()?;
        raise_memlock_rlimit();

        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_STACKS[0], config.stack_map_entries)
            .map_max_entries(MAP_STACKS[1], config.stack_map_entries)
            .map_max_entries(MAP_EVENTS, ring_bytes)
            .load(OBJECT)
            .map_err(|e| privileges::classify("loading the eBPF maps", &e, SamplerError::Load))?;
        let program: &mut PerfEvent = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| SamplerError::Load(format!("program {PROGRAM} not in the object")))?
            .try_into()
            .map_err(|e: ProgramError| SamplerError::Load(e.to_string()))?;
        program.load().map_err(|e| {
            privileges::classify("loading the eBPF program", &e, SamplerError::Load)
        })?;

        let targets_map = BpfHashMap::try_from(take_map(&mut ebpf, MAP_TARGETS)?)
            .map_err(map_error(MAP_TARGETS))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, MAP_COUNTERS)?)
            .map_err(map_error(MAP_COUNTERS))?;
        let ring =
            RingBuf::try_from(take_map(&mut ebpf, MAP_EVENTS)?).map_err(map_error(MAP_EVENTS))?;
        let stacks = [
            StackTraceMap::try_from(take_map(&mut ebpf, MAP_STACKS[0])?)
                .map_err(map_error(MAP_STACKS[0]))?,
            StackTraceMap::try_from(take_map(&mut ebpf, MAP_STACKS[1])?)
                .map_err(map_error(MAP_STACKS[1]))?,
        ];
        let active_map = Array::try_from(take_map(&mut ebpf, MAP_ACTIVE_STACKS)?)
            .map_err(map_error(MAP_ACTIVE_STACKS))?;

        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                ebpf,
                targets_map,
                counters,
                targets: BTreeMap::new(),
                links: Vec::new(),
                frequency_hz: 0,
            }),
            buffer: Mutex::new(VecDeque::new()),
            max_buffered: config.max_buffered_samples,
            samples: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            resolve_errors: AtomicU64::new(0),
            clock_steps: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            cleared_stacks: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let mut reader = Reader {
            ring,
            stacks,
            resolved: [HashMap::new(), HashMap::new()],
            active_map,
            active: 0,
            pending_clear: None,
            offset: OffsetTracker::new(REMEASURE_INTERVAL),
        };
        reader.set_active(0);
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

    /// Stack map rotations completed and stack entries they deleted.
    pub(crate) fn rotations(&self) -> (u64, u64) {
        (
            self.shared.rotations.load(Ordering::Relaxed),
            self.shared.cleared_stacks.load(Ordering::Relaxed),
        )
    }

    /// The program's total run time and run count (kernel BPF stats; counted only
    /// while `aya::sys::enable_stats` is held).
    pub(crate) fn program_run_stats(&self) -> (Duration, u64) {
        let mut control = self.shared.control();
        let info = control.program().info().expect("program info");
        (info.run_time(), info.run_count())
    }
}

impl Sampler for EbpfSampler {
    fn add_targets(&self, tgids: &[u32], frequency_hz: u32) -> Result<(), SamplerError> {
        validate_frequency(frequency_hz, self.max_frequency_hz)?;
        let mut control = self.shared.control();
        let mut added = Vec::new();
        for &tgid in tgids {
            if control.targets.contains_key(&tgid) || added.contains(&tgid) {
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
            if let Err(error) = control.targets_map.insert(tgid, 1, 0) {
                control.forget(&added);
                return Err(map_error(MAP_TARGETS)(error));
            }
            control.targets.insert(tgid, start_time);
            added.push(tgid);
        }
        if control.targets.is_empty() {
            return Ok(());
        }
        let current = control.frequency_hz;
        let wanted = current.max(frequency_hz);
        if control.links.is_empty() || wanted != current {
            control.detach();
            if let Err(error) = control.attach(wanted) {
                control.forget(&added);
                if current != 0 && !control.targets.is_empty() {
                    // Best effort: keep sampling the earlier targets as before.
                    if let Err(again) = control.attach(current) {
                        tracing::warn!(error = %again, "re-attaching at the earlier frequency failed");
                    }
                }
                return Err(error);
            }
        }
        tracing::debug!(
            ?added,
            frequency_hz = control.frequency_hz,
            targets = control.targets.len(),
            "targets added"
        );
        Ok(())
    }

    fn remove_targets(&self, tgids: &[u32]) -> Result<(), SamplerError> {
        let mut control = self.shared.control();
        control.forget(tgids);
        tracing::debug!(?tgids, targets = control.targets.len(), "targets removed");
        Ok(())
    }

    fn drain(&self) -> Vec<Sample> {
        let mut samples = Vec::from(std::mem::take(&mut *self.shared.buffer()));
        // Stable: samples with equal times keep the order the kernel produced them in.
        samples.sort_by_key(|sample| sample.time_unix_nano);
        samples
    }

    fn stats(&self) -> SamplerStats {
        let control = self.shared.control();
        SamplerStats {
            samples: self.shared.samples.load(Ordering::Relaxed),
            lost: control.counter(COUNTER_LOST),
            stack_errors: control.counter(COUNTER_STACK_ERRORS)
                + self.shared.resolve_errors.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            clock_steps: self.shared.clock_steps.load(Ordering::Relaxed),
            frequency_hz: control.frequency_hz,
            targets: control.targets.len(),
            attached: !control.links.is_empty(),
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

    fn buffer(&self) -> MutexGuard<'_, VecDeque<Sample>> {
        self.buffer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, samples: Vec<Sample>) {
        if samples.is_empty() {
            return;
        }
        self.samples
            .fetch_add(samples.len() as u64, Ordering::Relaxed);
        let mut buffer = self.buffer();
        let mut dropped = 0;
        for sample in samples {
            if buffer.len() >= self.max_buffered {
                buffer.pop_front();
                dropped += 1;
            }
            buffer.push_back(sample);
        }
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    /// Stops targeting processes that have exited (or whose pid now names another
    /// process), detaching when none is left.
    fn prune_exited(&self) {
        let mut control = self.control();
        let exited: Vec<u32> = control
            .targets
            .iter()
            .filter(|&(&tgid, &start)| process_start_time(tgid) != Some(start))
            .map(|(&tgid, _)| tgid)
            .collect();
        if !exited.is_empty() {
            tracing::debug!(?exited, "profiled processes exited");
            control.forget(&exited);
        }
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

    /// Opens a CPU-clock perf event at `frequency_hz` on every online CPU and attaches
    /// the program to it. All or nothing.
    fn attach(&mut self, frequency_hz: u32) -> Result<(), SamplerError> {
        const ONLINE: &str = "/sys/devices/system/cpu/online";
        let cpus = aya::util::online_cpus().map_err(|(_, source)| SamplerError::Cpus {
            path: ONLINE,
            source,
        })?;
        let mut links = Vec::with_capacity(cpus.len());
        for cpu in cpus {
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
                Ok(link) => links.push(link),
                Err(error) => match errno_of(&error) {
                    // The CPU went offline since the list was read.
                    Some(nix::libc::ENODEV) => {
                        tracing::warn!(cpu, "CPU went offline; not sampling it")
                    }
                    Some(errno) if privileges::is_permission_errno(errno) => {
                        return Err(SamplerError::PermissionDenied {
                            operation: "opening the CPU clock perf event",
                            detail: privileges::denial_detail(),
                        });
                    }
                    Some(nix::libc::EINVAL) => {
                        return Err(SamplerError::FrequencyRejected {
                            requested: frequency_hz,
                            cpu,
                            kernel_max: kernel_max_sample_rate().unwrap_or(0),
                            source: std::io::Error::from_raw_os_error(nix::libc::EINVAL),
                        });
                    }
                    _ => {
                        return Err(SamplerError::Attach {
                            cpu,
                            message: privileges::chain_message(&error),
                        });
                    }
                },
            }
        }
        self.links = links;
        self.frequency_hz = frequency_hz;
        Ok(())
    }

    /// Closes the perf events: nothing is sampled any more.
    fn detach(&mut self) {
        self.links.clear();
        self.frequency_hz = 0;
    }

    /// Stops targeting these processes; detaches when none is left.
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
        if self.targets.is_empty() {
            self.detach();
        }
    }
}

impl Reader {
    fn run(&mut self, shared: &Shared) {
        let mut last_rotation = Instant::now();
        let mut last_prune = Instant::now();
        loop {
            let stopping = shared.stop.load(Ordering::Acquire);
            self.drain_ring(shared);
            if stopping {
                break;
            }
            if let Some((old, since)) = self.pending_clear
                && since.elapsed() >= ROTATE_GRACE
            {
                self.drain_ring(shared);
                self.clear(old, shared);
                self.pending_clear = None;
            }
            if self.pending_clear.is_none() && last_rotation.elapsed() >= ROTATE_INTERVAL {
                let old = self.active;
                self.set_active(1 - old);
                self.pending_clear = Some((old, Instant::now()));
                last_rotation = Instant::now();
            }
            if last_prune.elapsed() >= PRUNE_INTERVAL {
                shared.prune_exited();
                last_prune = Instant::now();
            }
            std::thread::park_timeout(POLL_INTERVAL);
        }
    }

    fn set_active(&mut self, index: usize) {
        match self.active_map.set(0, index as u32, 0) {
            Ok(()) => self.active = index,
            Err(error) => tracing::warn!(%error, "switching the active stack map failed"),
        }
    }

    /// Reads every event in the ring buffer and turns it into a [`Sample`].
    fn drain_ring(&mut self, shared: &Shared) {
        let mut events = Vec::new();
        while let Some(record) = self.ring.next() {
            match RawEvent::parse(&record) {
                Some(event) => events.push(event),
                None => tracing::warn!(
                    len = record.len(),
                    "short sample record from the eBPF program"
                ),
            }
        }
        if events.is_empty() {
            return;
        }
        let offset = self.offset.get();
        shared
            .clock_steps
            .store(self.offset.steps, Ordering::Relaxed);
        let mut errors = 0;
        let samples = events
            .into_iter()
            .map(|event| self.sample(event, offset, &mut errors))
            .collect();
        if errors > 0 {
            shared.resolve_errors.fetch_add(errors, Ordering::Relaxed);
        }
        shared.push(samples);
    }

    fn sample(&mut self, event: RawEvent, offset: ClockOffset, errors: &mut u64) -> Sample {
        let map = (event.stack_map & 1) as usize;
        Sample {
            tgid: event.tgid,
            tid: event.tid,
            cpu: event.cpu,
            time_unix_nano: offset.to_unix_nano(event.ktime_ns),
            user_stack: self.stack(map, event.user_stack_id, errors),
            kernel_stack: self.stack(map, event.kernel_stack_id, errors),
        }
    }

    /// The frames of stack `id` in map `map`, leaf first; empty if there is none.
    fn stack(&mut self, map: usize, id: i32, errors: &mut u64) -> Vec<u64> {
        let Some(key) = RawEvent::stack_key(id) else {
            return Vec::new();
        };
        if let Some(frames) = self.resolved[map].get(&key) {
            return frames.clone();
        }
        match self.stacks[map].get(&key, 0) {
            Ok(trace) => {
                let frames: Vec<u64> = trace.frames().iter().map(|frame| frame.ip).collect();
                self.resolved[map].insert(key, frames.clone());
                frames
            }
            Err(error) => {
                tracing::debug!(map, id, %error, "stack id not in its map");
                *errors += 1;
                Vec::new()
            }
        }
    }

    /// Empties a stack map that is no longer active.
    fn clear(&mut self, map: usize, shared: &Shared) {
        let ids: Vec<u32> = self.stacks[map]
            .stack_ids()
            .filter_map(Result::ok)
            .collect();
        for id in &ids {
            match self.stacks[map].remove(id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(error) => tracing::warn!(map, id, %error, "clearing a stack map entry failed"),
            }
        }
        self.resolved[map].clear();
        shared.rotations.fetch_add(1, Ordering::Relaxed);
        shared
            .cleared_stacks
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        if !ids.is_empty() {
            tracing::trace!(map, stacks = ids.len(), "stack map cleared");
        }
    }
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
                stack_map_entries: 0,
                ..SamplerConfig::default()
            },
            SamplerConfig {
                max_buffered_samples: 0,
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
