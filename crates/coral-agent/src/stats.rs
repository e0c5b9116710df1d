//! What happened to the spans the agent received: counters shared by the receivers and
//! the uplink, reported to the colony with every heartbeat.

use coral_client::v1::AgentCounters;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
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
    drop_warning: Mutex<DropWarning>,
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
