//! What happened to the spans the agent received: counters shared by the receivers and
//! the uplink, reported to the colony with every heartbeat. Also the CPU profiler's
//! counters ([`ProfilingCounters`]), which are logged but not (yet) on the wire.

use coral_client::v1::AgentCounters;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// At most one "spans dropped" warning per this interval.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The agent's span counters. Cheap to update from any task (relaxed atomics).
#[derive(Debug, Default)]
pub struct AgentStats {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
    buffered: AtomicU64,
    /// Spans kept with a field or attribute cut to the size limits.
    truncated: AtomicU64,
    drop_warning: Mutex<DropWarning>,
    profiling: ProfilingStats,
}

/// The CPU profiler's counters since the agent started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProfilingCounters {
    /// Profiling sessions received (each distinct session once).
    pub sessions: u64,
    /// Sessions answered with an error (refused by the allow list, sampler failure).
    pub session_errors: u64,
    /// Samples taken from the sampler.
    pub samples: u64,
    /// Samples the sampler lost (kernel ring buffer full, or its own buffer overflowed).
    pub samples_lost: u64,
    /// Stack walks or copies that failed in the kernel: those samples have no stack.
    pub stack_errors: u64,
    /// Samples by how their user stack was walked: unwind tables, frame pointers, both,
    /// or cut before the thread's root (`coral_agent_stacks_total{unwind}`).
    pub stacks_dwarf: u64,
    pub stacks_fp: u64,
    pub stacks_mixed: u64,
    pub stacks_truncated: u64,
    /// Steps of the wall clock the sampler saw (logged by it): requests around one may
    /// be profiled without their samples.
    pub clock_steps: u64,
    /// Off-CPU records (waits of target threads) taken from the sampler.
    pub off_cpu_records: u64,
    /// Memory records (page faults of target threads that made memory resident) taken
    /// from the sampler.
    pub memory_records: u64,
    /// Samples pushed out of the recent-sample ring by newer ones before they aged out.
    pub samples_evicted: u64,
    /// Per-request profiles the colony accepted.
    pub trace_profiles_sent: u64,
    /// Per-request profiles given up (spool full, refused by the colony, unreadable, or
    /// held in memory at shutdown).
    pub trace_profiles_dropped: u64,
    /// Batches of request profiles waiting in the spool for the colony.
    pub spool_batches: u64,
    /// Their size, in bytes (on disk, or in memory while the disk fails).
    pub spool_bytes: u64,
    /// Spool writes that failed (disk full, read-only); those batches stay in memory.
    pub spool_write_errors: u64,
    /// Triggers running on this agent now.
    pub active_triggers: u64,
    /// Processes the sampler samples now.
    pub processes_sampled: u64,
    /// Whether the sampler's perf events are attached now.
    pub sampler_attached: bool,
}

#[derive(Debug, Default)]
struct ProfilingStats {
    sessions: AtomicU64,
    session_errors: AtomicU64,
    samples: AtomicU64,
    samples_lost: AtomicU64,
    stack_errors: AtomicU64,
    stacks_dwarf: AtomicU64,
    stacks_fp: AtomicU64,
    stacks_mixed: AtomicU64,
    stacks_truncated: AtomicU64,
    clock_steps: AtomicU64,
    off_cpu_records: AtomicU64,
    memory_records: AtomicU64,
    samples_evicted: AtomicU64,
    trace_profiles_sent: AtomicU64,
    trace_profiles_dropped: AtomicU64,
    spool_batches: AtomicU64,
    spool_bytes: AtomicU64,
    spool_write_errors: AtomicU64,
    active_triggers: AtomicU64,
    processes_sampled: AtomicU64,
    sampler_attached: AtomicBool,
}

#[derive(Debug, Default)]
struct DropWarning {
    last: Option<Instant>,
    dropped_then: u64,
}

impl AgentStats {
    /// The counters now.
    pub fn snapshot(&self) -> AgentCounters {
        AgentCounters {
            spans_received: self.received.load(Relaxed),
            spans_forwarded: self.forwarded.load(Relaxed),
            spans_dropped: self.dropped.load(Relaxed),
            spans_rejected: self.rejected.load(Relaxed),
            spans_buffered: self.buffered.load(Relaxed),
        }
    }

    /// The CPU profiler's counters now.
    /// Spans kept with a field or attribute cut to the size limits
    /// (`coral_client::limits`); not on the heartbeat, only in the metrics.
    pub fn truncated(&self) -> u64 {
        self.truncated.load(Relaxed)
    }

    pub(crate) fn add_truncated(&self, n: usize) {
        self.truncated.fetch_add(n as u64, Relaxed);
    }

    pub fn profiling(&self) -> ProfilingCounters {
        let p = &self.profiling;
        ProfilingCounters {
            sessions: p.sessions.load(Relaxed),
            session_errors: p.session_errors.load(Relaxed),
            samples: p.samples.load(Relaxed),
            samples_lost: p.samples_lost.load(Relaxed),
            stack_errors: p.stack_errors.load(Relaxed),
            stacks_dwarf: p.stacks_dwarf.load(Relaxed),
            stacks_fp: p.stacks_fp.load(Relaxed),
            stacks_mixed: p.stacks_mixed.load(Relaxed),
            stacks_truncated: p.stacks_truncated.load(Relaxed),
            clock_steps: p.clock_steps.load(Relaxed),
            off_cpu_records: p.off_cpu_records.load(Relaxed),
            memory_records: p.memory_records.load(Relaxed),
            samples_evicted: p.samples_evicted.load(Relaxed),
            trace_profiles_sent: p.trace_profiles_sent.load(Relaxed),
            trace_profiles_dropped: p.trace_profiles_dropped.load(Relaxed),
            spool_batches: p.spool_batches.load(Relaxed),
            spool_bytes: p.spool_bytes.load(Relaxed),
            spool_write_errors: p.spool_write_errors.load(Relaxed),
            active_triggers: p.active_triggers.load(Relaxed),
            processes_sampled: p.processes_sampled.load(Relaxed),
            sampler_attached: p.sampler_attached.load(Relaxed),
        }
    }

    pub(crate) fn add_session(&self, failed: bool) {
        self.profiling.sessions.fetch_add(1, Relaxed);
        if failed {
            self.profiling.session_errors.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn add_samples(&self, n: usize) {
        self.profiling.samples.fetch_add(n as u64, Relaxed);
    }

    /// Samples the sampler lost since the last call (a counter: it never goes down,
    /// even when the sampler is unloaded and a new one starts from zero).
    pub(crate) fn add_samples_lost(&self, n: u64) {
        self.profiling.samples_lost.fetch_add(n, Relaxed);
    }

    /// What the profiler runs now: active triggers, processes sampled, perf events
    /// attached.
    pub(crate) fn set_profiler_state(&self, triggers: usize, processes: usize, attached: bool) {
        let p = &self.profiling;
        p.active_triggers.store(triggers as u64, Relaxed);
        p.processes_sampled.store(processes as u64, Relaxed);
        p.sampler_attached.store(attached, Relaxed);
    }

    /// Counts samples by how their user stack was walked.
    pub(crate) fn add_stacks(&self, samples: &[coral_sampler::Sample]) {
        use coral_sampler::Unwind;
        let p = &self.profiling;
        for sample in samples {
            if sample.off_cpu.is_some() {
                p.off_cpu_records.fetch_add(1, Relaxed);
            }
            if sample.memory.is_some() {
                p.memory_records.fetch_add(1, Relaxed);
            }
            let counter = match sample.stack.unwind {
                Unwind::Dwarf => &p.stacks_dwarf,
                Unwind::FramePointer => &p.stacks_fp,
                Unwind::Mixed => &p.stacks_mixed,
                Unwind::Truncated => &p.stacks_truncated,
            };
            counter.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn add_stack_errors(&self, n: u64) {
        self.profiling.stack_errors.fetch_add(n, Relaxed);
    }

    pub(crate) fn add_clock_steps(&self, n: u64) {
        self.profiling.clock_steps.fetch_add(n, Relaxed);
    }

    pub(crate) fn add_samples_evicted(&self, n: u64) {
        self.profiling.samples_evicted.fetch_add(n, Relaxed);
    }

    pub(crate) fn add_trace_profiles_sent(&self, n: usize) {
        self.profiling
            .trace_profiles_sent
            .fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn add_trace_profiles_dropped(&self, n: usize) {
        self.profiling
            .trace_profiles_dropped
            .fetch_add(n as u64, Relaxed);
    }

    /// What the profile spool holds now.
    pub(crate) fn set_spool(&self, batches: usize, bytes: u64) {
        self.profiling.spool_batches.store(batches as u64, Relaxed);
        self.profiling.spool_bytes.store(bytes, Relaxed);
    }

    pub(crate) fn add_spool_write_error(&self) {
        self.profiling.spool_write_errors.fetch_add(1, Relaxed);
    }

    /// Spans that arrived in an OTLP request (valid or not).
    pub(crate) fn add_received(&self, n: usize) {
        self.received.fetch_add(n as u64, Relaxed);
    }

    /// Spans refused as invalid, by the agent or by the colony.
    pub(crate) fn add_rejected(&self, n: usize) {
        self.rejected.fetch_add(n as u64, Relaxed);
    }

    /// Spans delivered to the colony.
    pub(crate) fn add_forwarded(&self, n: usize) {
        self.forwarded.fetch_add(n as u64, Relaxed);
    }

    /// Spans queued or in flight right now.
    pub(crate) fn set_buffered(&self, n: usize) {
        self.buffered.store(n as u64, Relaxed);
    }

    /// Spans lost: refused because the buffer was full, or still unsent at shutdown.
    /// Logs a warning at most every [`DROP_WARNING_INTERVAL`].
    pub(crate) fn add_dropped(&self, n: usize, why: &str) {
        let total = self.dropped.fetch_add(n as u64, Relaxed) + n as u64;
        let Ok(mut warning) = self.drop_warning.try_lock() else {
            return; // another task is warning right now
        };
        let now = Instant::now();
        if warning
            .last
            .is_some_and(|last| now.duration_since(last) < DROP_WARNING_INTERVAL)
        {
            return;
        }
        let since_last = total - warning.dropped_then;
        warning.last = Some(now);
        warning.dropped_then = total;
        tracing::warn!(
            dropped = since_last,
            dropped_total = total,
            "dropped {since_last} spans: {why}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_up() {
        let stats = AgentStats::default();
        stats.add_received(10);
        stats.add_rejected(2);
        stats.add_dropped(3, "test");
        stats.add_dropped(1, "test");
        stats.add_forwarded(4);
        stats.set_buffered(1);
        assert_eq!(
            stats.snapshot(),
            AgentCounters {
                spans_received: 10,
                spans_forwarded: 4,
                spans_dropped: 4,
                spans_rejected: 2,
                spans_buffered: 1,
            }
        );
    }
}
