//! The join of CPU samples to the request (span) they belong to.
//!
//! A request is a span's window: its process (`process.pid`), its thread (`thread.id`)
//! when the SDK records one, and its start and end. [`join`] cuts the request's samples
//! out of a time-ordered slice (binary search on time, then a filter on thread or
//! process) and says how precisely they belong to it ([`Precision`]);
//! [`concurrent_requests`] counts the other requests of the same process that ran at the
//! same time, whose work a *process*-precision profile includes. Samples are described
//! by [`TimedSample`], so this crate does not depend on the sampler.

/// How precisely a request profile's samples belong to its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Samples of the span's own thread (`thread.id`) within the span's time.
    Thread,
    /// Samples of the span's process within the span's time: includes the work of any
    /// other request that ran in that process at the same time.
    Process,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Thread => "thread",
            Precision::Process => "process",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "thread" => Some(Precision::Thread),
            "process" => Some(Precision::Process),
            _ => None,
        }
    }
}

/// What the join needs to know about one CPU sample. The agent's samples implement it;
/// this crate does not depend on the sampler.
pub trait TimedSample {
    /// Process id (thread group id) the sample was taken in.
    fn tgid(&self) -> u32;
    /// Thread id the sample was taken on.
    fn tid(&self) -> u32;
    /// When the sample was taken, Unix nanoseconds (wall clock).
    fn time_unix_nano(&self) -> i64;
}

/// A plain sample description, for callers (and tests) without a sample type of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SampleKey {
    pub tgid: u32,
    pub tid: u32,
    pub time_unix_nano: i64,
}

impl TimedSample for SampleKey {
    fn tgid(&self) -> u32 {
        self.tgid
    }
    fn tid(&self) -> u32 {
        self.tid
    }
    fn time_unix_nano(&self) -> i64 {
        self.time_unix_nano
    }
}

impl<T: TimedSample + ?Sized> TimedSample for &T {
    fn tgid(&self) -> u32 {
        (**self).tgid()
    }
    fn tid(&self) -> u32 {
        (**self).tid()
    }
    fn time_unix_nano(&self) -> i64 {
        (**self).time_unix_nano()
    }
}

/// Where and when one request (a server or consumer span) ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestWindow {
    /// The process (`process.pid` of the span's resource), when known.
    pub pid: Option<u32>,
    /// The thread that served the request (`thread.id` of the span), when known.
    pub thread_id: Option<u32>,
    /// Span start, Unix nanoseconds.
    pub start_unix_nano: i64,
    /// Span end, Unix nanoseconds (start + duration).
    pub end_unix_nano: i64,
}

impl RequestWindow {
    /// Whether the two windows share some time. Windows that only touch (one ends
    /// exactly when the other starts) do not overlap.
    pub fn overlaps(&self, other: &RequestWindow) -> bool {
        self.start_unix_nano < other.end_unix_nano && other.start_unix_nano < self.end_unix_nano
    }

    /// The precision a join of this window has, or `None` when it cannot be joined at
    /// all (neither a thread nor a process is known).
    pub fn precision(&self) -> Option<Precision> {
        match (self.thread_id, self.pid) {
            (Some(_), _) => Some(Precision::Thread),
            (None, Some(_)) => Some(Precision::Process),
            (None, None) => None,
        }
    }

    /// Whether `sample` belongs to this request (thread, process and time), ignoring
    /// whether the window can be joined at all.
    fn matches<S: TimedSample + ?Sized>(&self, sample: &S) -> bool {
        let time = sample.time_unix_nano();
        if time < self.start_unix_nano || time > self.end_unix_nano {
            return false;
        }
        if self.pid.is_some_and(|pid| sample.tgid() != pid) {
            return false;
        }
        self.thread_id.is_none_or(|tid| sample.tid() == tid)
    }
}

/// The samples of one request, and how precisely they belong to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined<'a, S> {
    pub precision: Precision,
    /// The request's samples, in the order of the input (time order).
    pub samples: Vec<&'a S>,
}

/// The index range of `samples` (sorted by time) whose time is within
/// `[start, end]` (both included), by binary search. Empty when `end < start`.
pub fn time_range<S: TimedSample>(
    samples: &[S],
    start_unix_nano: i64,
    end_unix_nano: i64,
) -> std::ops::Range<usize> {
    let first = samples.partition_point(|s| s.time_unix_nano() < start_unix_nano);
    let last = samples.partition_point(|s| s.time_unix_nano() <= end_unix_nano);
    first..last.max(first)
}

/// Selects the samples that belong to the request `window`, from `samples` sorted by
/// time (as a sampler hands them out):
///
/// * the span has a thread id: *thread* precision, the samples of that thread (and of
///   the span's process when its pid is known) within `[start, end]`;
/// * else it has a pid: *process* precision, the samples of the process within
///   `[start, end]` (which include the work of concurrent requests);
/// * else `None`: nothing ties any sample to the request.
///
/// A request that ran but was never sampled gives `Some` with no samples.
pub fn join<'a, S: TimedSample>(window: &RequestWindow, samples: &'a [S]) -> Option<Joined<'a, S>> {
    let precision = window.precision()?;
    let range = time_range(samples, window.start_unix_nano, window.end_unix_nano);
    let samples = samples[range]
        .iter()
        .filter(|s| window.matches(*s))
        .collect();
    Some(Joined { precision, samples })
}

/// How many of `others` ran in the same process as `window` at an overlapping time:
/// the requests whose work a *process*-precision profile of `window` may include.
/// 0 when `window` has no pid. `others` must not contain `window`'s own request.
pub fn concurrent_requests(window: &RequestWindow, others: &[RequestWindow]) -> u32 {
    let Some(pid) = window.pid else { return 0 };
    let count = others
        .iter()
        .filter(|o| o.pid == Some(pid) && o.overlaps(window))
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(tgid: u32, tid: u32, time: i64) -> SampleKey {
        SampleKey {
            tgid,
            tid,
            time_unix_nano: time,
        }
    }

    fn w(pid: Option<u32>, thread_id: Option<u32>, start: i64, end: i64) -> RequestWindow {
        RequestWindow {
            pid,
            thread_id,
            start_unix_nano: start,
            end_unix_nano: end,
        }
    }

    /// Samples of two processes (10, 20), threads 11/12 and 21, every 10 ns from 0 to 100.
    fn samples() -> Vec<SampleKey> {
        let mut out = Vec::new();
        for t in (0..=100).step_by(10) {
            out.push(s(10, 11, t));
            out.push(s(10, 12, t));
            out.push(s(20, 21, t));
        }
        out
    }

    fn times(joined: &Joined<'_, SampleKey>) -> Vec<(u32, u32, i64)> {
        joined
            .samples
            .iter()
            .map(|s| (s.tgid, s.tid, s.time_unix_nano))
            .collect()
    }

    #[test]
    fn precision_names_round_trip() {
        for p in [Precision::Thread, Precision::Process] {
            assert_eq!(Precision::parse(p.as_str()), Some(p));
        }
        assert_eq!(Precision::parse("exact"), None);
        assert_eq!(Precision::parse("Thread"), None);
    }

    #[test]
    fn thread_precision_takes_the_thread_within_the_window() {
        let all = samples();
        let joined = join(&w(Some(10), Some(11), 20, 40), &all).unwrap();
        assert_eq!(joined.precision, Precision::Thread);
        assert_eq!(times(&joined), [(10, 11, 20), (10, 11, 30), (10, 11, 40)]);
    }

    #[test]
    fn thread_precision_requires_the_process_when_it_is_known() {
        let all = samples();
        // Thread 21 belongs to process 20, not 10.
        let joined = join(&w(Some(10), Some(21), 0, 100), &all).unwrap();
        assert_eq!(joined.precision, Precision::Thread);
        assert!(joined.samples.is_empty());
    }

    #[test]
    fn thread_precision_without_a_pid_matches_the_thread_in_any_process() {
        let all = samples();
        let joined = join(&w(None, Some(21), 95, 100), &all).unwrap();
        assert_eq!(joined.precision, Precision::Thread);
        assert_eq!(times(&joined), [(20, 21, 100)]);
    }

    #[test]
    fn process_precision_takes_every_thread_of_the_process() {
        let all = samples();
        let joined = join(&w(Some(10), None, 25, 45), &all).unwrap();
        assert_eq!(joined.precision, Precision::Process);
        assert_eq!(
            times(&joined),
            [(10, 11, 30), (10, 12, 30), (10, 11, 40), (10, 12, 40)]
        );
    }

    #[test]
    fn no_pid_and_no_thread_cannot_be_joined() {
        let all = samples();
        assert_eq!(join(&w(None, None, 0, 100), &all), None);
        assert_eq!(w(None, None, 0, 1).precision(), None);
    }

    #[test]
    fn window_bounds_are_inclusive() {
        let all = samples();
        let joined = join(&w(Some(20), None, 30, 50), &all).unwrap();
        assert_eq!(times(&joined), [(20, 21, 30), (20, 21, 40), (20, 21, 50)]);
        // A zero-length window at a sample's time holds that sample.
        let joined = join(&w(Some(20), Some(21), 60, 60), &all).unwrap();
        assert_eq!(times(&joined), [(20, 21, 60)]);
    }

    #[test]
    fn requests_without_samples_join_to_nothing_but_still_join() {
        let all = samples();
        for window in [
            w(Some(10), None, 101, 200),   // after every sample
            w(Some(10), None, -50, -1),    // before every sample
            w(Some(10), None, 31, 39),     // between two samples
            w(Some(99), None, 0, 100),     // another process
            w(Some(10), Some(13), 0, 100), // another thread
            w(Some(10), None, 50, 40),     // end before start
        ] {
            let joined = join(&window, &all).unwrap();
            assert!(joined.samples.is_empty(), "{window:?}: {joined:?}");
        }
        let none: [SampleKey; 0] = [];
        assert!(
            join(&w(Some(1), None, 0, 10), &none)
                .unwrap()
                .samples
                .is_empty()
        );
    }

    #[test]
    fn time_range_is_a_binary_search_over_sorted_samples() {
        let all = samples(); // 3 samples per time step
        assert_eq!(time_range(&all, 0, 100), 0..33);
        assert_eq!(time_range(&all, 10, 10), 3..6);
        assert_eq!(time_range(&all, 11, 19), 6..6);
        assert_eq!(time_range(&all, -10, -1), 0..0);
        assert_eq!(time_range(&all, 200, 300), 33..33);
        assert_eq!(time_range(&all, 50, 40), 15..15);
        assert_eq!(time_range(&all, i64::MIN, i64::MAX), 0..33);
    }

    #[test]
    fn join_agrees_with_a_linear_scan() {
        // Unevenly spaced samples with duplicate times, several processes and threads.
        let mut all = Vec::new();
        let mut t = 0i64;
        for i in 0..500u32 {
            t += i64::from(i % 7) * 3;
            all.push(s(1 + i % 3, 100 + i % 5, t));
        }
        let end = t;
        let mut checked = 0;
        for start in (0..end).step_by(97) {
            for len in [0, 1, 13, 250, 1000] {
                for pid in [None, Some(1), Some(2), Some(4)] {
                    for thread in [None, Some(100), Some(103)] {
                        let window = w(pid, thread, start, start + len);
                        let Some(joined) = join(&window, &all) else {
                            assert!(pid.is_none() && thread.is_none());
                            continue;
                        };
                        let expected: Vec<&SampleKey> = all
                            .iter()
                            .filter(|s| {
                                s.time_unix_nano >= start
                                    && s.time_unix_nano <= start + len
                                    && pid.is_none_or(|p| s.tgid == p)
                                    && thread.is_none_or(|t| s.tid == t)
                            })
                            .collect();
                        assert_eq!(joined.samples, expected, "{window:?}");
                        let precision = if thread.is_some() {
                            Precision::Thread
                        } else {
                            Precision::Process
                        };
                        assert_eq!(joined.precision, precision);
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1000);
    }

    #[test]
    fn references_to_samples_work_too() {
        let all = samples();
        let refs: Vec<&SampleKey> = all.iter().collect();
        let joined = join(&w(Some(20), Some(21), 0, 10), &refs).unwrap();
        assert_eq!(joined.samples.len(), 2);
    }

    #[test]
    fn overlap_is_strict() {
        let a = w(Some(1), None, 10, 20);
        assert!(a.overlaps(&w(Some(1), None, 15, 30)));
        assert!(a.overlaps(&w(Some(1), None, 0, 11)));
        assert!(a.overlaps(&w(Some(1), None, 12, 13)), "inside");
        assert!(a.overlaps(&w(Some(1), None, 0, 100)), "around");
        assert!(!a.overlaps(&w(Some(1), None, 20, 30)), "touching after");
        assert!(!a.overlaps(&w(Some(1), None, 0, 10)), "touching before");
        assert!(!a.overlaps(&w(Some(1), None, 21, 30)));
        assert!(a.overlaps(&w(Some(1), None, 15, 15)), "an instant inside");
    }

    #[test]
    fn concurrent_requests_counts_overlapping_windows_of_the_same_process() {
        let me = w(Some(1), Some(5), 100, 200);
        let others = [
            w(Some(1), Some(6), 150, 250), // overlaps
            w(Some(1), None, 0, 101),      // overlaps by 1 ns
            w(Some(1), Some(5), 120, 130), // same thread, inside: counts too
            w(Some(1), None, 200, 300),    // touches: no
            w(Some(1), None, 0, 100),      // touches: no
            w(Some(2), None, 100, 200),    // another process
            w(None, None, 100, 200),       // unknown process
        ];
        assert_eq!(concurrent_requests(&me, &others), 3);
        assert_eq!(concurrent_requests(&me, &[]), 0);
        // No pid: nothing can be said to share the process.
        assert_eq!(concurrent_requests(&w(None, Some(5), 100, 200), &others), 0);
    }
}
