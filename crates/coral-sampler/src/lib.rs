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
//!    bpf_get_stackid(user), bpf_get_stackid(kernel) → active stack map (stacks_0|stacks_1)
//!    event {ktime, tgid, tid, cpu, stack ids, map index} → events (ring buffer)
//!    │
//!    ▼
//!  reader thread (every 10 ms)
//!    resolves stack ids to addresses at once, monotonic → Unix time (offset
//!    re-measured every second), rotates and clears the stack maps, forgets exited
//!    processes
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

pub use ebpf::EbpfSampler;
pub use fake::FakeSampler;

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
    /// User-space instruction pointers, **leaf first** (innermost frame at index 0, then
    /// its callers' return addresses), as the kernel walks them (frame pointers).
    /// Empty when there was no user stack. At most 127 frames.
    pub user_stack: Vec<u64>,
    /// Kernel instruction pointers, leaf first. Empty when the sample was taken in
    /// user mode (the usual case) or the stack could not be stored.
    pub kernel_stack: Vec<u64>,
}

/// Counters and state of a sampler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SamplerStats {
    /// Samples received from the kernel (each became a [`Sample`]).
    pub samples: u64,
    /// Samples the kernel took but could not hand over: the ring buffer was full.
    pub lost: u64,
    /// Stacks that could not be stored or resolved (stack map hash collision or full,
    /// or an id no longer in its map); the sample is kept without that stack.
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

    /// Counters and state.
    fn stats(&self) -> SamplerStats;
}

/// Settings of an [`EbpfSampler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerConfig {
    /// Highest sampling frequency [`Sampler::add_targets`] accepts. Default 1000 Hz.
    pub max_frequency_hz: u32,
    /// Size of the kernel → user ring buffer in bytes; rounded up to a power of two
    /// (at least one page). Each sample takes 40 bytes. Default 4 MiB.
    pub ring_bytes: usize,
    /// Capacity of each of the two stack maps (distinct stacks per rotation period,
    /// about a second). Default 16384.
    pub stack_map_entries: u32,
    /// Samples kept between two [`Sampler::drain`] calls before the oldest are dropped.
    /// Default 65536.
    pub max_buffered_samples: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            max_frequency_hz: 1000,
            ring_bytes: 4 * 1024 * 1024,
            stack_map_entries: 16384,
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
        assert_eq!(config.ring_bytes, 4 << 20);
        assert_eq!(config.stack_map_entries, 16384);
    }

    #[test]
    fn traits_are_object_safe_and_thread_safe() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<EbpfSampler>();
        assert_send_sync::<FakeSampler>();
        let _: Box<dyn Sampler> = Box::new(FakeSampler::new());
    }
}
