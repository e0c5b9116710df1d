//! The agent's Prometheus metrics: the counters of [`AgentStats`] (the same ones the
//! heartbeat carries), rendered at each scrape of `GET /metrics`.

use crate::stats::AgentStats;
use coral_metrics::{Exposition, Kind};

/// The exposition of the agent's counters now.
pub fn render(stats: &AgentStats) -> String {
    let spans = stats.snapshot();
    let p = stats.profiling();
    let mut e = Exposition::new();
    e.counter(
        "coral_agent_spans_received_total",
        "Spans that arrived in OTLP requests (valid or not).",
        spans.spans_received,
    )
    .counter(
        "coral_agent_spans_forwarded_total",
        "Spans delivered to the colony (accepted, or refused by it as invalid).",
        spans.spans_forwarded,
    )
    .counter(
        "coral_agent_spans_rejected_total",
        "Spans refused as invalid, by the agent or by the colony.",
        spans.spans_rejected,
    )
    .counter(
        "coral_agent_spans_dropped_total",
        "Spans lost: refused because the buffer was full, or still unsent at shutdown.",
        spans.spans_dropped,
    )
    .counter(
        "coral_agent_spans_truncated_total",
        "Spans kept with a name, URL or attribute cut to the size limits (marked …[truncated]).",
        stats.truncated(),
    )
    .gauge(
        "coral_agent_spans_buffered",
        "Spans queued or in flight to the colony now.",
        spans.spans_buffered as f64,
    )
    .counter(
        "coral_agent_profile_sessions_total",
        "CPU profiling sessions received from the colony.",
        p.sessions,
    )
    .counter(
        "coral_agent_profile_session_errors_total",
        "Profiling sessions answered with an error (allow list, sampler failure).",
        p.session_errors,
    )
    .counter(
        "coral_agent_samples_total",
        "CPU samples taken from the sampler.",
        p.samples,
    )
    .counter(
        "coral_agent_samples_lost_total",
        "Samples and off-CPU records the sampler lost (kernel ring buffer full, its own buffer overflowed, or off-CPU records over the rate bound).",
        p.samples_lost,
    )
    .counter(
        "coral_agent_stack_errors_total",
        "Stack walks or copies that failed in the kernel (those samples have no stack).",
        p.stack_errors,
    )
    .family(
        "coral_agent_stacks_total",
        "Samples by how their user stack was walked: unwind tables (dwarf), frame pointers (fp), both (mixed), or cut before the thread's root (truncated).",
        Kind::Counter,
    )
    .sample("coral_agent_stacks_total", &[("unwind", "dwarf")], p.stacks_dwarf as f64)
    .sample("coral_agent_stacks_total", &[("unwind", "fp")], p.stacks_fp as f64)
    .sample("coral_agent_stacks_total", &[("unwind", "mixed")], p.stacks_mixed as f64)
    .sample(
        "coral_agent_stacks_total",
        &[("unwind", "truncated")],
        p.stacks_truncated as f64,
    )
    .counter(
        "coral_agent_offcpu_records_total",
        "Off-CPU records (where a profiled thread waited) taken from the sampler.",
        p.off_cpu_records,
    )
    .counter(
        "coral_agent_memory_records_total",
        "Memory records (page faults of a profiled thread that made memory resident) taken from the sampler.",
        p.memory_records,
    )
    .counter(
        "coral_agent_clock_steps_total",
        "Steps of the wall clock (set by more than 100 ms at once) the sampler followed.",
        p.clock_steps,
    )
    .counter(
        "coral_agent_samples_evicted_total",
        "CPU samples pushed out of the recent-sample ring by newer ones before they aged out.",
        p.samples_evicted,
    )
    .counter(
        "coral_agent_trace_profiles_sent_total",
        "Per-request profiles the colony accepted.",
        p.trace_profiles_sent,
    )
    .counter(
        "coral_agent_trace_profiles_dropped_total",
        "Per-request profiles given up (spool full, refused by the colony, unreadable, or held in memory at shutdown).",
        p.trace_profiles_dropped,
    )
    .gauge(
        "coral_agent_spool_batches",
        "Batches of request profiles waiting in the spool for the colony.",
        p.spool_batches as f64,
    )
    .gauge(
        "coral_agent_spool_bytes",
        "Bytes of request profiles waiting in the spool (on disk, or in memory while the disk fails).",
        p.spool_bytes as f64,
    )
    .counter(
        "coral_agent_spool_write_errors_total",
        "Spool writes that failed (disk full, read-only); those batches were kept in memory.",
        p.spool_write_errors,
    )
    .gauge(
        "coral_agent_triggers_active",
        "Trace-profile triggers running on this agent.",
        p.active_triggers as f64,
    )
    .gauge(
        "coral_agent_processes_sampled",
        "Processes the CPU sampler samples now.",
        p.processes_sampled as f64,
    )
    .family(
        "coral_agent_sampler_attached",
        "1 while the CPU sampler's perf events are attached, else 0.",
        Kind::Gauge,
    )
    .sample(
        "coral_agent_sampler_attached",
        &[],
        if p.sampler_attached { 1.0 } else { 0.0 },
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_counters() {
        let stats = AgentStats::default();
        stats.add_received(7);
        stats.add_forwarded(5);
        stats.set_buffered(2);
        stats.add_samples(11);
        stats.add_stacks(&[
            coral_sampler::Sample::new(1, 1, 0, &[], &[]),
            coral_sampler::Sample::new_memory(
                1,
                1,
                0,
                coral_sampler::Memory {
                    bytes: 65_536,
                    page_bytes: 4096,
                },
                &[],
                &[],
            ),
        ]);
        stats.set_profiler_state(1, 3, true);
        let text = render(&stats);
        for line in [
            "coral_agent_spans_received_total 7",
            "coral_agent_spans_forwarded_total 5",
            "coral_agent_spans_buffered 2",
            "coral_agent_samples_total 11",
            "coral_agent_triggers_active 1",
            "coral_agent_processes_sampled 3",
            "coral_agent_sampler_attached 1",
            "coral_agent_memory_records_total 1",
            "coral_agent_offcpu_records_total 0",
            "# TYPE coral_agent_spans_dropped_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
