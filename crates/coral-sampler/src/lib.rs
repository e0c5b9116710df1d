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
//! * [`Sampler`] is the interface the layers above use; [`EbpfSampler`] is the real
//!   one (Linux, root or CAP_BPF + CAP_PERFMON) and [`FakeSampler`] an in-memory one
//!   for their tests.
//! * Perf events are attached only while at least one process is a target: nothing is
//!   sampled when nobody asks.
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
mod root_tests;
#[cfg(test)]
mod unwind_tests;

pub use ebpf::EbpfSampler;
pub use fake::FakeSampler;

use std::sync::Arc;

/// Most frames of a user or kernel stack.
pub const MAX_STACK_DEPTH: usize = 127;

/// One stack sample of one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// CPU the sample was taken on.
    pub cpu: u32,
    /// When the sample was taken, Unix nanoseconds (wall clock).
    pub time_unix_nano: i64,
    /// The stack, shared with every other sample of the same stack (the sampler keeps
    /// one copy of each distinct stack while samples hold it).
    pub stack: Arc<Stack>,
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
    /// One sample, dropped.
    pub fn of_sample(sample: &Sample) -> Self {
        Self {
            tgid: Some(sample.tgid),
            tid: Some(sample.tid),
            start_unix_nano: sample.time_unix_nano,
            end_unix_nano: sample.time_unix_nano,
            samples: 1,
        }
    }

    /// Counts one more dropped sample of the same thread.
    pub fn add(&mut self, sample: &Sample) {
        self.start_unix_nano = self.start_unix_nano.min(sample.time_unix_nano);
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
    /// Samples received from the kernel (each became a [`Sample`]).
    pub samples: u64,
    /// Samples the kernel took but could not hand over: the ring buffer was full.
    pub lost: u64,
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
}

/// A CPU stack sampler of selected processes.
pub trait Sampler: Send + Sync {
    /// Starts sampling these processes at `frequency_hz` (perf events are attached on
    /// the first target; the frequency is the max requested so far while attached).
    ///
    /// Processes that do not exist are skipped (logged, not an error). Adding a process
    /// twice is harmless.
    fn add_targets(&self, tgids: &[u32], frequency_hz: u32) -> Result<(), SamplerError>;

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
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            max_frequency_hz: 1000,
            ring_bytes: 8 * 1024 * 1024,
            unwind: UnwindMode::Auto,
            max_buffered_samples: 65536,
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
    }

    #[test]
    fn traits_are_object_safe_and_thread_safe() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<EbpfSampler>();
        assert_send_sync::<FakeSampler>();
        let _: Box<dyn Sampler> = Box::new(FakeSampler::new());
    }
}
