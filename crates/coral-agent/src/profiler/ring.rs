//! The ring of recent samples: what the sampler took lately, kept in time order so that
//! a request's samples can be cut out of it by binary search when its span arrives
//! (tail-based capture: a request is known only once it has ended).

use coral_analysis::join::{RequestWindow, TimedSample};
use coral_sampler::{Loss, Sample};
use std::collections::VecDeque;

/// One sample in the ring (a newtype, so that it can be joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingSample(pub Sample);

impl TimedSample for RingSample {
    fn tgid(&self) -> u32 {
        self.0.tgid
    }
    fn tid(&self) -> u32 {
        self.0.tid
    }
    fn time_unix_nano(&self) -> i64 {
        self.0.time_unix_nano
    }
}

/// Samples in time order, bounded by count (the oldest are evicted first) and by age
/// ([`SampleRing::trim`]).
#[derive(Debug)]
pub struct SampleRing {
    samples: VecDeque<RingSample>,
    capacity: usize,
    /// Every sample taken at or after this time is still here (none was evicted or
    /// trimmed from after it).
    complete_since: i64,
    /// Samples the sampler could not hand over lately (trimmed with the samples): a
    /// request whose window overlaps one was not sampled whole.
    losses: VecDeque<Loss>,
}

impl SampleRing {
    pub fn new(capacity: usize) -> Self {
        Self {
            samples: VecDeque::new(),
            capacity: capacity.max(1),
            complete_since: i64::MIN,
            losses: VecDeque::new(),
        }
    }

    /// Records samples the sampler lost.
    pub fn add_losses(&mut self, losses: Vec<Loss>) {
        self.losses.extend(losses);
    }

    /// How many samples were lost in a request's window: losses of its process (or of
    /// an unknown one) and thread (or an unknown one) that overlap its time.
    pub fn lost_in(&self, window: &RequestWindow) -> u64 {
        let matches =
            |want: Option<u32>, lost: Option<u32>| want.is_none() || lost.is_none() || want == lost;
        self.losses
            .iter()
            .filter(|loss| {
                loss.start_unix_nano <= window.end_unix_nano
                    && window.start_unix_nano <= loss.end_unix_nano
                    && matches(window.pid, loss.tgid)
                    && matches(window.thread_id, loss.tid)
            })
            .map(|loss| loss.samples)
            .sum()
    }

    /// Appends samples (each batch in time order, as [`coral_sampler::Sampler::drain`]
    /// hands them out; a batch that starts before the newest sample kept is merged in
    /// order). Returns how many old samples were evicted to stay within the capacity.
    pub fn extend(&mut self, samples: Vec<Sample>) -> u64 {
        if samples.is_empty() {
            return 0;
        }
        let newest = self.newest_time();
        let out_of_order = newest.is_some_and(|newest| samples[0].time_unix_nano < newest)
            || samples
                .windows(2)
                .any(|w| w[1].time_unix_nano < w[0].time_unix_nano);
        self.samples.extend(samples.into_iter().map(RingSample));
        if out_of_order {
            // Stable and adaptive: nearly sorted input sorts in about linear time.
            self.samples
                .make_contiguous()
                .sort_by_key(|s| s.0.time_unix_nano);
        }
        let excess = self.samples.len().saturating_sub(self.capacity);
        if excess > 0 {
            let last_evicted = self.samples[excess - 1].0.time_unix_nano;
            self.complete_since = self.complete_since.max(last_evicted + 1);
            self.samples.drain(..excess);
        }
        excess as u64
    }

    /// Drops the samples taken before `oldest_unix_nano`.
    pub fn trim(&mut self, oldest_unix_nano: i64) {
        let keep_from = self
            .samples
            .partition_point(|s| s.0.time_unix_nano < oldest_unix_nano);
        self.samples.drain(..keep_from);
        self.complete_since = self.complete_since.max(oldest_unix_nano);
        self.losses
            .retain(|loss| loss.end_unix_nano >= oldest_unix_nano);
    }

    /// Every sample taken at or after this time is in the ring: a request that started
    /// earlier can only be joined in part.
    pub fn complete_since(&self) -> i64 {
        self.complete_since
    }

    /// The time of the newest sample kept.
    pub fn newest_time(&self) -> Option<i64> {
        self.samples.back().map(|s| s.0.time_unix_nano)
    }

    /// All samples, oldest first, as one slice.
    pub fn as_slice(&mut self) -> &[RingSample] {
        self.samples.make_contiguous()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(time: i64) -> Sample {
        Sample::new(1, 2, time, &[], &[])
    }

    fn times(ring: &mut SampleRing) -> Vec<i64> {
        ring.as_slice().iter().map(|s| s.0.time_unix_nano).collect()
    }

    #[test]
    fn keeps_time_order_and_evicts_the_oldest_beyond_capacity() {
        let mut ring = SampleRing::new(4);
        assert!(ring.is_empty());
        assert_eq!(ring.extend(vec![sample(1), sample(2), sample(3)]), 0);
        assert_eq!(ring.extend(vec![sample(4), sample(5)]), 1);
        assert_eq!(times(&mut ring), [2, 3, 4, 5]);
        assert_eq!(ring.complete_since(), 2);
        assert_eq!(ring.newest_time(), Some(5));
        assert_eq!(ring.extend(vec![]), 0);
        assert_eq!(ring.len(), 4);
    }

    #[test]
    fn late_samples_are_merged_in_order() {
        let mut ring = SampleRing::new(100);
        ring.extend(vec![sample(10), sample(20), sample(30)]);
        ring.extend(vec![sample(25), sample(40)]);
        ring.extend(vec![sample(50), sample(45)]);
        assert_eq!(times(&mut ring), [10, 20, 25, 30, 40, 45, 50]);
    }

    #[test]
    fn losses_count_in_the_windows_they_overlap() {
        let mut ring = SampleRing::new(100);
        let loss = |tgid, tid, start, end, samples| Loss {
            tgid,
            tid,
            start_unix_nano: start,
            end_unix_nano: end,
            samples,
        };
        ring.add_losses(vec![
            loss(Some(1), Some(2), 100, 100, 1), // one dropped sample of thread 2
            loss(Some(1), None, 200, 300, 5),    // ring buffer full, process 1
            loss(None, None, 1000, 1100, 7),     // several processes
            loss(Some(9), None, 100, 1100, 50),  // another process
        ]);
        let window = |thread_id, start, end| RequestWindow {
            pid: Some(1),
            thread_id,
            start_unix_nano: start,
            end_unix_nano: end,
        };
        assert_eq!(ring.lost_in(&window(Some(2), 50, 150)), 1);
        assert_eq!(
            ring.lost_in(&window(Some(3), 50, 150)),
            0,
            "another thread's drop"
        );
        assert_eq!(ring.lost_in(&window(Some(3), 250, 260)), 5);
        assert_eq!(ring.lost_in(&window(None, 0, 2000)), 13);
        assert_eq!(ring.lost_in(&window(Some(2), 400, 900)), 0);
        ring.trim(500);
        assert_eq!(
            ring.lost_in(&window(None, 0, 2000)),
            7,
            "old losses trimmed"
        );
    }

    #[test]
    fn trim_drops_samples_older_than_the_horizon() {
        let mut ring = SampleRing::new(100);
        ring.extend((0..10).map(|t| sample(t * 10)).collect());
        assert_eq!(ring.complete_since(), i64::MIN);
        ring.trim(35);
        assert_eq!(ring.complete_since(), 35);
        assert_eq!(times(&mut ring), [40, 50, 60, 70, 80, 90]);
        ring.trim(0);
        assert_eq!(ring.len(), 6);
        assert_eq!(ring.complete_since(), 35);
        ring.trim(1000);
        assert!(ring.is_empty());
        assert_eq!(ring.newest_time(), None);
    }
}
