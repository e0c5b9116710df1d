//! The eBPF CPU sampler: samples the stacks of the processes it is told to profile
//! and hands them out with wall-clock times, so the agent can tie each sample to the
//! trace span that was running on that thread at that moment.
//!
//! ```text
//!  perf_event (software CPU clock, frequency mode, one per online CPU)
//!    │ every tick, on the CPU it fired on
//!    ▼
//!  coral_sample (ebpf/sampler.bpf.c)
//!    tgid ∉ targets → return
//!    user registers, kernel stack (bpf_get_stack), and the user stack: copied from sp
//!    (up to 32 KiB; UnwindMode::Auto) or walked by frame pointer (UnwindMode::FramePointer)
//!    one event {ktime, tgid, tid, cpu, exec count, losses since, frames, stack bytes}
//!    → events (ring buffer)
//!    │
//!    ▼
//!  reader thread (every 10 ms)
//!    unwinds copied stacks (coral-unwind), interns equal stacks, monotonic → Unix time
//!    (offset re-measured every second), turns lost counts into Losses, forgets exited
//!    processes, attaches CPUs that came online
//!    │
//!    ▼
//!  bounded buffer ──► Sampler::drain()
//! ```
//!
//! Off-CPU intervals, for targets added with `off_cpu` (attached only while one is):
//!
//! ```text
//!  tp_btf/sched_switch: a target thread leaves the CPU
//!    → its task storage offcpu_start = {ktime, state, run_delay}
//!  tp_btf/sched_exit_tp (kprobe finish_task_switch* before 6.16), in the thread
//!  switched back in:
//!    d = now − offcpu_start.ktime (taken); its run-queue part = run_delay's growth
//!    d ≥ T: one event of weight d; d < T: with probability d/T, one event of weight T
//!    per-CPU token bucket; over it: counted as lost
//!    kernel stack (… ← schedule ← what it waited in), user stack as for CPU samples
//!    → events (ring buffer) → a Sample with `off_cpu: Some(OffCpu)`
//! ```
//!
//! The weight estimator is unbiased: an interval of length d < T is sent with
//! probability d/T and weighs T, so its expected weight is d. Summed per stack, the
//! weights estimate the time blocked there, while each thread sends at most about one
//! event per T of wall time however often it blocks ([`SamplerConfig::off_cpu_min_wait`]).
//!
//! Memory made resident, for targets added with `memory` (attached only while one is):
//!
//! ```text
//!  perf_event PAGE_FAULTS_MIN and _MAJ (software, one of each per CPU), period P:
//!  the kernel counts every resolved fault, the program runs on every P-th of the CPU
//!    tgid ∉ memory targets → return; a huge page fault (noted below) → return
//!    one event of weight P × 4 KiB (P = SamplerConfig::memory_fault_period)
//!  tp_btf/mm_page_alloc: order < 9 → return; a target's movable 2 MiB allocation
//!  (a transparent huge page for its fault) → one event of weight 2 MiB
//!  both: per-CPU token bucket (over it: counted as lost); the user stack that
//!  faulted (no kernel stack) → events (ring buffer) → a Sample with
//!  `memory: Some(Memory)`
//! ```
//!
//! * [`Sampler`] is the interface the layers above use; [`EbpfSampler`] is the real
//!   one (Linux, root or CAP_BPF + CAP_PERFMON) and [`FakeSampler`] an in-memory one
//!   for their tests.
//! * Perf events are attached only while at least one process is a target, the
//!   scheduler probes only while one is an off-CPU target, and the page-fault probes
//!   only while one is a memory target: nothing is sampled when nobody asks.
//! * Addresses are raw instruction pointers (user stacks: virtual addresses in the
//!   sampled process; kernel stacks: kernel addresses). Symbolizing them is the job of
//!   another layer.
//! * Process and thread ids are those of the initial PID namespace (what the host's
//!   `/proc` shows).

mod clock;
mod ebpf;
mod event;
mod fake;
mod privileges;

#[cfg(test)]
mod memory_tests;
#[cfg(test)]
mod offcpu_tests;
#[cfg(test)]
mod root_tests;
#[cfg(test)]
mod unwind_tests;

pub use ebpf::EbpfSampler;
pub use fake::FakeSampler;

use std::sync::Arc;
use std::time::Duration;

/// Most frames of a user or kernel stack.
pub const MAX_STACK_DEPTH: usize = 127;

/// One stack sample of one thread: on CPU (`off_cpu` is `None`), or a span of time it
/// spent switched out, with the stack it waited in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU the sample was taken on (off-CPU: the CPU the thread ran on again).
    pub cpu: u32,
    /// When the sample was taken, Unix nanoseconds (wall clock). Off-CPU: when the
    /// thread ran again (the end of the span).
    pub time_unix_nano: i64,
    /// The stack, shared with every other sample of the same stack (the sampler keeps
    /// one copy of each distinct stack while samples hold it).
    pub stack: Arc<Stack>,
    /// `Some` for an off-CPU span.
    pub off_cpu: Option<OffCpu>,
    /// `Some` for memory made resident (a page fault's new pages).
    pub memory: Option<Memory>,
}

impl Sample {
    /// A sample of a stack that is not shared (tests, fakes).
    pub fn new(tgid: u32, tid: u32, time_unix_nano: i64, user: &[u64], kernel: &[u64]) -> Self {
        Self {
            tgid,
            tid,
            cpu: 0,
            time_unix_nano,
            stack: Arc::new(Stack {
                user: user.into(),
                kernel: kernel.into(),
                unwind: Unwind::FramePointer,
            }),
            off_cpu: None,
            memory: None,
        }
    }

    /// An off-CPU span of a stack that is not shared (tests, fakes): switched out at
    /// `off_cpu.start_unix_nano`, running again at `time_unix_nano`.
    pub fn new_off_cpu(
        tgid: u32,
        tid: u32,
        time_unix_nano: i64,
        off_cpu: OffCpu,
        user: &[u64],
        kernel: &[u64],
    ) -> Self {
        Self {
            off_cpu: Some(off_cpu),
            ..Self::new(tgid, tid, time_unix_nano, user, kernel)
        }
    }

    /// Memory made resident at `time_unix_nano` by a fault of a stack that is not
    /// shared (tests, fakes).
    pub fn new_memory(
        tgid: u32,
        tid: u32,
        time_unix_nano: i64,
        memory: Memory,
        user: &[u64],
        kernel: &[u64],
    ) -> Self {
        Self {
            memory: Some(memory),
            ..Self::new(tgid, tid, time_unix_nano, user, kernel)
        }
    }

    /// The earliest time the sample covers: its time, or the start of its off-CPU span.
    pub fn start_unix_nano(&self) -> i64 {
        self.off_cpu
            .as_ref()
            .map_or(self.time_unix_nano, |off_cpu| off_cpu.start_unix_nano)
    }
}

/// A span of time the thread was switched out; [`Sample::time_unix_nano`] is when it ran
/// again.
///
/// Spans of at least [`SamplerConfig::off_cpu_min_wait`] (T) are all reported, each
/// weighing its length; a shorter span of length d is reported with probability d/T
/// and weighs T. Summing `weight_ns` per stack (or per thread and time range) is then
/// an unbiased estimate of the time spent blocked there, while a thread that blocks
/// very often sends at most about one record per T.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OffCpu {
    /// When the thread was switched out, Unix nanoseconds.
    pub start_unix_nano: i64,
    /// The off-CPU time this record stands for (see above): the span's length, or T
    /// for a sampled short span.
    pub weight_ns: u64,
    /// How the thread left the CPU.
    pub state: SwitchState,
    /// When it became runnable again (woken), Unix nanoseconds: from then until it
    /// ran it waited on the run queue (the scheduler's own run-queue accounting over
    /// the interval). `None` when it did not wait on a run queue, or the kernel does
    /// not keep that accounting (no `CONFIG_SCHED_INFO`).
    pub woken_unix_nano: Option<i64>,
}

/// Memory a thread made resident: the pages its page faults mapped (first touches of
/// anonymous memory, copy-on-write copies, file pages), with the stack that faulted.
///
/// One fault in [`SamplerConfig::memory_fault_period`] (P) of each CPU is reported,
/// weighing P × 4 KiB; every transparent huge page is reported, weighing 2 MiB.
/// Summing `bytes` per stack (or per thread and time range) is an unbiased estimate of
/// the memory the faults there mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Memory {
    /// The bytes this record stands for (see above).
    pub bytes: u64,
    /// The size of the pages the fault mapped: 4096, or 2 MiB for a transparent huge
    /// page.
    pub page_bytes: u64,
}

/// What is recorded of a profiled process besides its CPU samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Recording {
    /// Off-CPU spans ([`OffCpu`]): the scheduler probes.
    pub off_cpu: bool,
    /// Memory made resident ([`Memory`]): the page-fault probes.
    pub memory: bool,
}

impl Recording {
    /// CPU samples only.
    pub const CPU: Self = Self {
        off_cpu: false,
        memory: false,
    };
    /// CPU samples and off-CPU spans.
    pub const OFF_CPU: Self = Self {
        off_cpu: true,
        memory: false,
    };
    /// CPU samples and memory.
    pub const MEMORY: Self = Self {
        off_cpu: false,
        memory: true,
    };

    /// What either records.
    pub fn union(self, other: Self) -> Self {
        Self {
            off_cpu: self.off_cpu || other.off_cpu,
            memory: self.memory || other.memory,
        }
    }
}

/// How the thread left the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SwitchState {
    /// Preempted, or yielded, while runnable: the span is a wait on the run queue.
    Preempted,
    /// Blocked in an interruptible sleep (`S`: futex, sleep, socket, pipe...).
    Interruptible,
    /// Blocked in an uninterruptible sleep (`D`: disk I/O, some locks; including
    /// `TASK_KILLABLE` and `TASK_IDLE`).
    Uninterruptible,
    /// Another task state (stopped, traced, parked, dead...): the kernel's value.
    Other(u32),
}

impl SwitchState {
    /// The state from the kernel's `prev_state` of `sched_switch` and whether the task
    /// was preempted (or still runnable, `prev_state` 0).
    pub fn from_kernel(prev_state: u32, preempted: bool) -> Self {
        // TASK_INTERRUPTIBLE and TASK_UNINTERRUPTIBLE; other bits are modifiers
        // (TASK_WAKEKILL, TASK_NOLOAD, TASK_FREEZABLE...).
        const INTERRUPTIBLE: u32 = 0x1;
        const UNINTERRUPTIBLE: u32 = 0x2;
        if preempted || prev_state == 0 {
            Self::Preempted
        } else if prev_state & INTERRUPTIBLE != 0 {
            Self::Interruptible
        } else if prev_state & UNINTERRUPTIBLE != 0 {
            Self::Uninterruptible
        } else {
            Self::Other(prev_state)
        }
    }
}

/// A sampled stack.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Stack {
    /// User-space instruction pointers, **leaf first** (innermost frame at index 0,
    /// then its callers' return addresses). Empty when there was no user stack. At most
    /// [`MAX_STACK_DEPTH`] frames.
    pub user: Box<[u64]>,
    /// Kernel instruction pointers, leaf first. Empty when the sample was taken in
    /// user mode (the usual case).
    pub kernel: Box<[u64]>,
    /// How the user stack was walked.
    pub unwind: Unwind,
}

/// How a user stack was walked (the agent's `coral_agent_stacks_total{unwind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unwind {
    /// Every caller found through the modules' unwind tables (`.eh_frame`).
    Dwarf,
    /// Every caller found through frame pointers (modules without unwind tables, JIT
    /// code, or [`UnwindMode::FramePointer`]).
    FramePointer,
    /// Some callers each way.
    Mixed,
    /// The walk stopped before the thread's root (the copied stack ended, the depth
    /// limit, a frame that could not be unwound): the outer frames are missing.
    Truncated,
}

impl Unwind {
    /// The metric label: `dwarf`, `fp`, `mixed` or `truncated`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Dwarf => "dwarf",
            Self::FramePointer => "fp",
            Self::Mixed => "mixed",
            Self::Truncated => "truncated",
        }
    }
}

impl From<coral_unwind::Method> for Unwind {
    fn from(method: coral_unwind::Method) -> Self {
        match method {
            coral_unwind::Method::Dwarf => Self::Dwarf,
            coral_unwind::Method::FramePointer => Self::FramePointer,
            coral_unwind::Method::Mixed => Self::Mixed,
        }
    }
}

/// Samples the sampler took but could not hand out: a request whose time overlaps one
/// (of its process, or of any process when `tgid` is `None`) was not sampled whole.
/// Off-CPU records over [`SamplerConfig::off_cpu_max_events_per_cpu`] are losses too,
/// from the start of their span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    /// The process they were of; `None`: several, or unknown.
    pub tgid: Option<u32>,
    /// The thread; `None`: several, or unknown.
    pub tid: Option<u32>,
    /// When the first and the last of them were taken (Unix nanoseconds).
    pub start_unix_nano: i64,
    pub end_unix_nano: i64,
    /// How many.
    pub samples: u64,
}

impl Loss {
    /// One sample, dropped (an off-CPU one covers its whole span).
    pub fn of_sample(sample: &Sample) -> Self {
        Self {
            tgid: Some(sample.tgid),
            tid: Some(sample.tid),
            start_unix_nano: sample.start_unix_nano(),
            end_unix_nano: sample.time_unix_nano,
            samples: 1,
        }
    }

    /// Counts one more dropped sample of the same thread.
    pub fn add(&mut self, sample: &Sample) {
        self.start_unix_nano = self.start_unix_nano.min(sample.start_unix_nano());
        self.end_unix_nano = self.end_unix_nano.max(sample.time_unix_nano);
        self.samples += 1;
    }
}

/// How user stacks are walked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnwindMode {
    /// Copy the top of each sampled stack and unwind it with the modules' unwind tables
    /// where they have them, frame pointers elsewhere (JIT code).
    #[default]
    Auto,
    /// The kernel walks frame pointers only (whole stacks only in code built with them).
    FramePointer,
}

/// Counters and state of a sampler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SamplerStats {
    /// Samples received from the kernel (each became a [`Sample`]), off-CPU ones
    /// included.
    pub samples: u64,
    /// Of them, off-CPU records.
    pub off_cpu_events: u64,
    /// Of them, memory records.
    pub memory_events: u64,
    /// Samples the kernel took but could not hand over: the ring buffer was full.
    pub lost: u64,
    /// Off-CPU records not built because their CPU was over
    /// [`SamplerConfig::off_cpu_max_events_per_cpu`] (reported as [`Loss`]es).
    pub off_cpu_throttled: u64,
    /// Memory records not built because their CPU was over
    /// [`SamplerConfig::memory_max_events_per_cpu`] (reported as [`Loss`]es).
    pub memory_throttled: u64,
    /// Stack walks or copies that failed in the kernel (other than "nothing to walk");
    /// the sample is kept without that stack.
    pub stack_errors: u64,
    /// Samples discarded because the buffer was full ([`Sampler::drain`] not called
    /// often enough); the oldest go first.
    pub dropped: u64,
    /// Steps of the wall clock seen (it was set by more than 100 ms at once); samples
    /// follow the new clock within a second.
    pub clock_steps: u64,
    /// The frequency the perf events are attached with; 0 when detached.
    pub frequency_hz: u32,
    /// Number of processes being profiled.
    pub targets: usize,
    /// Whether perf events are attached (true exactly when there are targets).
    pub attached: bool,
    /// Whether the scheduler probes (off-CPU) are attached (true exactly when a
    /// target asked for off-CPU records).
    pub off_cpu_attached: bool,
    /// Whether the page-fault probes (memory) are attached (true exactly when a target
    /// asked for memory records).
    pub memory_attached: bool,
}

/// A CPU stack sampler of selected processes.
pub trait Sampler: Send + Sync {
    /// Starts sampling these processes at `frequency_hz` (perf events are attached on
    /// the first target; the frequency is the max requested so far while attached),
    /// and what `recording` asks besides: their threads' off-CPU spans (scheduler
    /// probes attached on the first such target) and the memory they make resident
    /// (page-fault probes, likewise). A process keeps what any call asked for until it
    /// is removed.
    ///
    /// Processes that do not exist are skipped (logged, not an error). Adding a process
    /// twice is harmless.
    fn add_targets(
        &self,
        tgids: &[u32],
        frequency_hz: u32,
        recording: Recording,
    ) -> Result<(), SamplerError>;

    /// Sets exactly what these targets record besides CPU samples (less than before:
    /// the probes no target needs any more are detached). Processes that are not
    /// targets are ignored.
    fn set_recording(&self, tgids: &[u32], recording: Recording) -> Result<(), SamplerError>;

    /// Stops sampling these processes. Unknown ones are ignored. When no target is left
    /// the perf events are detached. Samples already taken are still handed out by
    /// [`drain`](Self::drain).
    fn remove_targets(&self, tgids: &[u32]) -> Result<(), SamplerError>;

    /// Samples collected since the last call, in time order (so also in time order per
    /// CPU and per thread).
    fn drain(&self) -> Vec<Sample>;

    /// Samples lost since the last call (the kernel could not hand them over, or the
    /// buffer dropped them): call it after [`drain`](Self::drain), so that a loss of a
    /// sample not yet drained is never missed.
    fn take_losses(&self) -> Vec<Loss>;

    /// Counters and state.
    fn stats(&self) -> SamplerStats;
}

/// Settings of an [`EbpfSampler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerConfig {
    /// Highest sampling frequency [`Sampler::add_targets`] accepts. Default 1000 Hz.
    pub max_frequency_hz: u32,
    /// Size of the kernel → user ring buffer in bytes; rounded up to a power of two
    /// (at least one page). A sample takes 88 bytes, plus 8 per kernel frame, plus its
    /// copied stack (at most 32 KiB, usually a few) or 8 per user frame. Default 8 MiB.
    pub ring_bytes: usize,
    /// How user stacks are walked. Default [`UnwindMode::Auto`].
    pub unwind: UnwindMode,
    /// Samples kept between two [`Sampler::drain`] calls before the oldest are dropped.
    /// Default 65536.
    pub max_buffered_samples: usize,
    /// Off-CPU spans at least this long are all recorded with their length as weight;
    /// a shorter one of length d is recorded with probability d/T and weight T (T this
    /// value), an unbiased estimate that sends at most about one record per T per
    /// thread. At most 4.29 s (2³² ns). Default 1 ms: a thread blocking all the time
    /// then costs at most ~1000 records a second, and waits that matter for a request
    /// (tens of ms) are recorded exactly.
    pub off_cpu_min_wait: Duration,
    /// Most off-CPU records per second per CPU (a token bucket holding 100 ms of
    /// them); beyond, records are counted as lost. Default 2000: about as many records
    /// as CPU sampling at 1000 Hz can send, whatever the number of threads.
    pub off_cpu_max_events_per_cpu: u32,
    /// One page fault in this many of each CPU is recorded, weighing this many 4 KiB
    /// pages (the kernel counts the others for free): an unbiased estimate that sends
    /// about one record per P × 4 KiB of base pages. 1..=65536. Default 127 (~508 KiB,
    /// the OpenTelemetry profiler's 512 KiB allocation sampling interval; prime, so it
    /// does not beat in step with a loop's faults): a request that makes 300 MB
    /// resident sends ~600 records (±4 % on its total, one standard deviation). Huge
    /// page faults are all recorded.
    pub memory_fault_period: u32,
    /// Most memory records per second per CPU (a token bucket holding a second of
    /// them, so a burst of a few hundred MB is recorded whole); beyond, records are
    /// counted as lost. Default 2000.
    pub memory_max_events_per_cpu: u32,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            max_frequency_hz: 1000,
            ring_bytes: 8 * 1024 * 1024,
            unwind: UnwindMode::Auto,
            max_buffered_samples: 65536,
            off_cpu_min_wait: Duration::from_millis(1),
            off_cpu_max_events_per_cpu: 2000,
            memory_fault_period: 127,
            memory_max_events_per_cpu: 2000,
        }
    }
}

/// What went wrong in a sampler.
#[derive(Debug, thiserror::Error)]
pub enum SamplerError {
    /// The kernel refused an eBPF or perf operation for lack of privileges.
    #[error(
        "{operation}: permission denied ({detail}): run as root or grant CAP_BPF and CAP_PERFMON \
         (and CAP_SYS_PTRACE to read other processes' memory maps)"
    )]
    PermissionDenied {
        /// What was being done.
        operation: &'static str,
        /// Which capabilities are missing, or what else may have refused.
        detail: String,
    },

    /// A sampling frequency outside the accepted range.
    #[error("invalid sampling frequency {requested} Hz: allowed 1..={max} Hz")]
    InvalidFrequency {
        /// The frequency asked for.
        requested: u32,
        /// The highest accepted ([`SamplerConfig::max_frequency_hz`]).
        max: u32,
    },

    /// The configuration cannot work.
    #[error("invalid sampler configuration: {0}")]
    InvalidConfig(String),

    /// Loading the eBPF object (maps, program, verifier) failed.
    #[error("loading the eBPF sampler failed: {0}")]
    Load(String),

    /// The kernel refused the perf event's sampling frequency (`kernel.perf_event_max_sample_rate`).
    #[error(
        "the kernel refused sampling at {requested} Hz on CPU {cpu} (kernel.perf_event_max_sample_rate is {kernel_max}): {source}"
    )]
    FrequencyRejected {
        /// The frequency asked for.
        requested: u32,
        /// The CPU whose perf event failed.
        cpu: u32,
        /// The current value of `/proc/sys/kernel/perf_event_max_sample_rate` (0 if unknown).
        kernel_max: u64,
        /// The kernel's error.
        source: std::io::Error,
    },

    /// Opening or attaching a perf event failed for another reason.
    #[error("attaching the sampler to the CPU clock perf event of CPU {cpu} failed: {message}")]
    Attach {
        /// The CPU whose perf event failed.
        cpu: u32,
        /// The error.
        message: String,
    },

    /// Loading or attaching the page-fault probes of memory recording failed.
    #[error("attaching the memory probe {program} failed: {message}")]
    AttachMemory {
        /// What was being attached (`tp_btf/mm_page_alloc`...).
        program: String,
        /// The error.
        message: String,
    },

    /// Loading or attaching the scheduler probes of off-CPU recording failed.
    #[error("attaching the off-CPU probe {program} failed: {message}")]
    AttachScheduler {
        /// What was being attached (`tp_btf/sched_switch`, `kprobe/finish_task_switch`...).
        program: String,
        /// The error.
        message: String,
    },

    /// The set of profiled processes is full.
    #[error("cannot profile more than {max} processes at once")]
    TooManyTargets {
        /// The capacity of the `targets` map.
        max: u32,
    },

    /// An eBPF map operation failed.
    #[error("eBPF map `{map}`: {message}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// The error.
        message: String,
    },

    /// Listing the online CPUs failed.
    #[error("listing the online CPUs ({path}) failed: {source}")]
    Cpus {
        /// The file read.
        path: &'static str,
        /// The error.
        source: std::io::Error,
    },

    /// Starting the ring buffer reader thread failed.
    #[error("starting the sampler's reader thread failed: {0}")]
    Thread(#[source] std::io::Error),
}

/// Checks a requested frequency against `1..=max_hz`.
pub fn validate_frequency(frequency_hz: u32, max_hz: u32) -> Result<(), SamplerError> {
    if frequency_hz == 0 || frequency_hz > max_hz {
        return Err(SamplerError::InvalidFrequency {
            requested: frequency_hz,
            max: max_hz,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frequency_must_be_within_range() {
        assert!(validate_frequency(1, 1000).is_ok());
        assert!(validate_frequency(99, 1000).is_ok());
        assert!(validate_frequency(1000, 1000).is_ok());
        for bad in [0, 1001, u32::MAX] {
            match validate_frequency(bad, 1000) {
                Err(SamplerError::InvalidFrequency { requested, max }) => {
                    assert_eq!((requested, max), (bad, 1000));
                }
                other => panic!("{bad} Hz: {other:?}"),
            }
        }
        let message = validate_frequency(0, 1000).unwrap_err().to_string();
        assert!(message.contains("1..=1000 Hz"), "{message}");
    }

    #[test]
    fn permission_message_says_how_to_fix() {
        let error = SamplerError::PermissionDenied {
            operation: "loading",
            detail: "missing CAP_BPF".into(),
        };
        let message = error.to_string();
        assert!(
            message.contains("run as root or grant CAP_BPF and CAP_PERFMON"),
            "{message}"
        );
        assert!(message.contains("CAP_SYS_PTRACE"), "{message}");
    }

    #[test]
    fn default_config() {
        let config = SamplerConfig::default();
        assert_eq!(config.max_frequency_hz, 1000);
        assert_eq!(config.ring_bytes, 8 << 20);
        assert_eq!(config.unwind, UnwindMode::Auto);
        assert_eq!(config.off_cpu_min_wait, Duration::from_millis(1));
        assert_eq!(config.off_cpu_max_events_per_cpu, 2000);
        assert_eq!(config.memory_fault_period, 127);
        assert_eq!(config.memory_max_events_per_cpu, 2000);
    }

    #[test]
    fn switch_states_from_the_kernel() {
        assert_eq!(SwitchState::from_kernel(0, false), SwitchState::Preempted);
        assert_eq!(SwitchState::from_kernel(1, true), SwitchState::Preempted);
        assert_eq!(
            SwitchState::from_kernel(1, false),
            SwitchState::Interruptible
        );
        // TASK_INTERRUPTIBLE | TASK_FREEZABLE
        assert_eq!(
            SwitchState::from_kernel(0x2001, false),
            SwitchState::Interruptible
        );
        // TASK_KILLABLE, TASK_IDLE
        for state in [0x102, 0x402] {
            assert_eq!(
                SwitchState::from_kernel(state, false),
                SwitchState::Uninterruptible
            );
        }
        assert_eq!(
            SwitchState::from_kernel(0x8, false),
            SwitchState::Other(0x8)
        );
    }

    #[test]
    fn a_dropped_off_cpu_sample_is_a_loss_over_its_span() {
        let off_cpu = OffCpu {
            start_unix_nano: 100,
            weight_ns: 400,
            state: SwitchState::Interruptible,
            woken_unix_nano: None,
        };
        let sample = Sample::new_off_cpu(1, 2, 500, off_cpu, &[0x1000], &[]);
        assert_eq!(sample.start_unix_nano(), 100);
        let mut loss = Loss::of_sample(&sample);
        assert_eq!((loss.start_unix_nano, loss.end_unix_nano), (100, 500));
        loss.add(&Sample::new(1, 2, 50, &[], &[]));
        assert_eq!((loss.start_unix_nano, loss.samples), (50, 2));
    }

    #[test]
    fn traits_are_object_safe_and_thread_safe() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<EbpfSampler>();
        assert_send_sync::<FakeSampler>();
        let _: Box<dyn Sampler> = Box::new(FakeSampler::new());
    }
}
