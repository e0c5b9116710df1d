//! Converting the eBPF program's timestamps (`bpf_ktime_get_ns()`, CLOCK_MONOTONIC)
//! to wall-clock Unix nanoseconds.
//!
//! The offset CLOCK_REALTIME − CLOCK_MONOTONIC is not constant: NTP slews and steps
//! the real-time clock, and suspend stops the monotonic one. So it is measured as a
//! tight pair of reads (monotonic, real-time, monotonic; the try with the smallest gap
//! of a few wins, which bounds the error by half that gap) and re-measured
//! periodically by the sampler's reader thread ([`REMEASURE_INTERVAL`]). A sample is
//! converted with the offset current when it is read, a few milliseconds after it was
//! taken.

use nix::time::{ClockId, clock_gettime};
use std::time::{Duration, Instant};

/// How often the reader re-measures the offset.
pub(crate) const REMEASURE_INTERVAL: Duration = Duration::from_secs(1);

/// Pairs of reads per measurement; the tightest one is kept.
const TRIES: usize = 5;

/// One reading of the clocks: monotonic before, real-time, monotonic after (ns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reading {
    pub mono_before: i64,
    pub real: i64,
    pub mono_after: i64,
}

impl Reading {
    fn gap(&self) -> i64 {
        self.mono_after - self.mono_before
    }
}

/// A measured CLOCK_REALTIME − CLOCK_MONOTONIC offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClockOffset {
    /// Real-time minus monotonic, in nanoseconds.
    pub offset_ns: i64,
    /// Half the gap of the reading it came from: the offset's error bound.
    pub uncertainty_ns: i64,
}

impl ClockOffset {
    /// Picks the reading with the smallest gap and takes the real-time read as
    /// simultaneous with the midpoint of its two monotonic reads. Readings whose
    /// monotonic clock went backwards (impossible on a sane system) are ignored;
    /// `None` if no reading is usable.
    pub fn from_readings(readings: impl IntoIterator<Item = Reading>) -> Option<Self> {
        let best = readings
            .into_iter()
            .filter(|r| r.gap() >= 0)
            .min_by_key(Reading::gap)?;
        let mono_mid = best.mono_before + best.gap() / 2;
        Some(Self {
            offset_ns: best.real - mono_mid,
            uncertainty_ns: (best.gap() + 1) / 2,
        })
    }

    /// Measures the offset now, from the system clocks.
    pub fn measure() -> Self {
        let readings = (0..TRIES).map(|_| {
            let mono_before = now_ns(ClockId::CLOCK_MONOTONIC);
            let real = now_ns(ClockId::CLOCK_REALTIME);
            let mono_after = now_ns(ClockId::CLOCK_MONOTONIC);
            Reading {
                mono_before,
                real,
                mono_after,
            }
        });
        Self::from_readings(readings.collect::<Vec<_>>())
            .expect("CLOCK_MONOTONIC never goes backwards within one measurement")
    }

    /// Converts a CLOCK_MONOTONIC timestamp (as `bpf_ktime_get_ns` gives) to Unix ns.
    pub fn to_unix_nano(self, monotonic_ns: u64) -> i64 {
        i64::try_from(monotonic_ns)
            .unwrap_or(i64::MAX)
            .saturating_add(self.offset_ns)
    }
}

/// A change of the offset larger than this between two measurements is a step of the
/// real-time clock (NTP slews by at most 0.5 ms/s; a step is set by hand or by NTP
/// after a long drift), logged and counted.
pub(crate) const CLOCK_STEP: Duration = Duration::from_millis(100);

/// The offset with the time it was measured, re-measured when it gets old.
#[derive(Debug)]
pub(crate) struct OffsetTracker {
    current: ClockOffset,
    measured_at: Instant,
    interval: Duration,
    /// Steps of the real-time clock seen (see [`CLOCK_STEP`]).
    pub steps: u64,
}

impl OffsetTracker {
    pub fn new(interval: Duration) -> Self {
        Self {
            current: ClockOffset::measure(),
            measured_at: Instant::now(),
            interval,
            steps: 0,
        }
    }

    /// The current offset, re-measuring it first if it is older than the interval.
    pub fn get(&mut self) -> ClockOffset {
        if self.measured_at.elapsed() >= self.interval {
            self.update(ClockOffset::measure());
        }
        self.current
    }

    /// Takes a fresh measurement; a step of the real-time clock is logged and counted.
    fn update(&mut self, fresh: ClockOffset) {
        let shift = fresh.offset_ns - self.current.offset_ns;
        if shift.unsigned_abs() > CLOCK_STEP.as_nanos() as u64 {
            self.steps += 1;
            tracing::warn!(
                step_ms = shift / 1_000_000,
                "the wall clock stepped by {:+.3} s (set by hand or by NTP): samples are \
                 placed on the new clock from now on; requests around the step may be \
                 profiled without their samples",
                shift as f64 / 1e9
            );
        } else if shift.abs() > 1_000_000 {
            tracing::debug!(
                shift_ns = shift,
                "real-time clock moved against the monotonic clock"
            );
        }
        self.current = fresh;
        self.measured_at = Instant::now();
    }
}

/// `clock_gettime(clock)` in nanoseconds.
pub(crate) fn now_ns(clock: ClockId) -> i64 {
    let ts = clock_gettime(clock).expect("clock_gettime on a clock every Linux has");
    ts.tv_sec() * 1_000_000_000 + ts.tv_nsec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_tightest_reading() {
        let readings = [
            Reading {
                mono_before: 1_000,
                real: 1_000_000_500,
                mono_after: 2_000,
            }, // gap 1000
            Reading {
                mono_before: 5_000,
                real: 1_000_004_050,
                mono_after: 5_100,
            }, // gap 100: wins
            Reading {
                mono_before: 9_000,
                real: 1_000_009_000,
                mono_after: 9_400,
            }, // gap 400
        ];
        let offset = ClockOffset::from_readings(readings).unwrap();
        assert_eq!(offset.offset_ns, 1_000_004_050 - 5_050);
        assert_eq!(offset.uncertainty_ns, 50);
        assert_eq!(offset.to_unix_nano(5_050), 1_000_004_050);
        assert_eq!(offset.to_unix_nano(6_050), 1_000_005_050);
    }

    #[test]
    fn ignores_backward_readings_and_needs_one() {
        assert_eq!(ClockOffset::from_readings([]), None);
        let backwards = Reading {
            mono_before: 10,
            real: 100,
            mono_after: 5,
        };
        assert_eq!(ClockOffset::from_readings([backwards]), None);
        let good = Reading {
            mono_before: 10,
            real: 100,
            mono_after: 30,
        };
        assert_eq!(
            ClockOffset::from_readings([backwards, good])
                .unwrap()
                .offset_ns,
            80
        );
    }

    #[test]
    fn conversion_saturates() {
        let offset = ClockOffset {
            offset_ns: 10,
            uncertainty_ns: 0,
        };
        assert_eq!(offset.to_unix_nano(u64::MAX), i64::MAX);
    }

    #[test]
    fn measured_offset_matches_the_system_clocks() {
        let offset = ClockOffset::measure();
        assert!(offset.uncertainty_ns >= 0);
        assert!(
            offset.uncertainty_ns < 1_000_000,
            "clock reads took {} ns",
            offset.uncertainty_ns
        );
        // A monotonic timestamp taken now converts to about now.
        let mono = now_ns(ClockId::CLOCK_MONOTONIC);
        let real = now_ns(ClockId::CLOCK_REALTIME);
        let converted = offset.to_unix_nano(mono as u64);
        assert!(
            (converted - real).abs() < 5_000_000,
            "converted {converted}, real {real}"
        );
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        assert!((system - real).abs() < 5_000_000);
    }

    #[test]
    fn a_step_of_the_wall_clock_is_counted_and_followed() {
        let mut tracker = OffsetTracker::new(Duration::from_secs(3600));
        let at = |offset_ns| ClockOffset {
            offset_ns,
            uncertainty_ns: 10,
        };
        let base = tracker.current.offset_ns;
        tracker.update(at(base + 400_000)); // an NTP slew: followed, not a step
        assert_eq!(tracker.steps, 0);
        tracker.update(at(base + 400_000 + 30_000_000_000)); // set 30 s ahead
        assert_eq!(tracker.steps, 1);
        assert_eq!(tracker.get().to_unix_nano(0), base + 30_000_400_000);
        tracker.update(at(base - 5_000_000_000)); // and back, past where it was
        assert_eq!(tracker.steps, 2);
        assert_eq!(tracker.get().to_unix_nano(1), base - 4_999_999_999);
    }

    #[test]
    fn tracker_remeasures_when_old() {
        let mut tracker = OffsetTracker::new(Duration::ZERO);
        let first_measured = tracker.measured_at;
        let _ = tracker.get();
        assert!(
            tracker.measured_at > first_measured,
            "an old offset is measured again"
        );

        let mut tracker = OffsetTracker::new(Duration::from_secs(3600));
        let measured = tracker.measured_at;
        let offset = tracker.current;
        assert_eq!(tracker.get(), offset);
        assert_eq!(tracker.measured_at, measured, "a fresh offset is kept");
    }
}
