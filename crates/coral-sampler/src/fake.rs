//! An in-memory [`Sampler`] for the tests of the layers above: samples are pushed in
//! by the test and drained out by the code under test.

use crate::{Loss, Recording, Sample, Sampler, SamplerError, SamplerStats, validate_frequency};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// An in-memory [`Sampler`]: [`push`](Self::push) samples in, [`Sampler::drain`] them
/// out (and [`push_losses`](Self::push_losses), [`Sampler::take_losses`]). Targets,
/// frequency and the attached state behave as in [`EbpfSampler`](crate::EbpfSampler)
/// (the frequency is validated against `max_frequency_hz` and is the highest the
/// current targets asked for; attached exactly while there are targets, the off-CPU
/// probes while one asked for off-CPU records); pushed samples, on-CPU and off-CPU
/// ([`Sample::new_off_cpu`]), are handed out whatever their tgid.
#[derive(Debug)]
pub struct FakeSampler {
    max_frequency_hz: u32,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Target → the frequency it was added with, and what it records besides.
    targets: BTreeMap<u32, (u32, Recording)>,
    samples: Vec<Sample>,
    losses: Vec<Loss>,
    stats: SamplerStats,
}

impl Default for FakeSampler {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeSampler {
    /// A fake sampler accepting 1..=1000 Hz, like the default [`crate::SamplerConfig`].
    pub fn new() -> Self {
        Self::with_max_frequency(crate::SamplerConfig::default().max_frequency_hz)
    }

    /// A fake sampler accepting 1..=`max_frequency_hz` Hz.
    pub fn with_max_frequency(max_frequency_hz: u32) -> Self {
        Self {
            max_frequency_hz,
            state: Mutex::new(State::default()),
        }
    }

    /// Queues samples for the next [`Sampler::drain`].
    pub fn push(&self, samples: impl IntoIterator<Item = Sample>) {
        let mut state = self.lock();
        for sample in samples {
            state.stats.samples += 1;
            if sample.off_cpu.is_some() {
                state.stats.off_cpu_events += 1;
            }
            if sample.memory.is_some() {
                state.stats.memory_events += 1;
            }
            state.samples.push(sample);
        }
    }

    /// Queues losses for the next [`Sampler::take_losses`].
    pub fn push_losses(&self, losses: impl IntoIterator<Item = Loss>) {
        self.lock().losses.extend(losses);
    }

    /// Sets the `lost` / `stack_errors` / `dropped` counters, to test how they are reported.
    pub fn set_counters(&self, lost: u64, stack_errors: u64, dropped: u64) {
        let mut state = self.lock();
        state.stats.lost = lost;
        state.stats.stack_errors = stack_errors;
        state.stats.dropped = dropped;
    }

    /// The processes currently targeted, in ascending order.
    pub fn targets(&self) -> Vec<u32> {
        self.lock().targets.keys().copied().collect()
    }

    /// The processes currently targeted with off-CPU records, in ascending order.
    pub fn off_cpu_targets(&self) -> Vec<u32> {
        self.targets_recording(|recording| recording.off_cpu)
    }

    /// The processes currently targeted with memory records, in ascending order.
    pub fn memory_targets(&self) -> Vec<u32> {
        self.targets_recording(|recording| recording.memory)
    }

    fn targets_recording(&self, wanted: impl Fn(Recording) -> bool) -> Vec<u32> {
        self.lock()
            .targets
            .iter()
            .filter(|(_, (_, recording))| wanted(*recording))
            .map(|(&tgid, _)| tgid)
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Sampler for FakeSampler {
    fn add_targets(
        &self,
        tgids: &[u32],
        frequency_hz: u32,
        recording: Recording,
    ) -> Result<(), SamplerError> {
        validate_frequency(frequency_hz, self.max_frequency_hz)?;
        let mut state = self.lock();
        for &tgid in tgids {
            let (frequency, recorded) = state.targets.entry(tgid).or_default();
            *frequency = (*frequency).max(frequency_hz);
            *recorded = recorded.union(recording);
        }
        Ok(())
    }

    fn set_recording(&self, tgids: &[u32], recording: Recording) -> Result<(), SamplerError> {
        let mut state = self.lock();
        for tgid in tgids {
            if let Some((_, recorded)) = state.targets.get_mut(tgid) {
                *recorded = recording;
            }
        }
        Ok(())
    }

    fn remove_targets(&self, tgids: &[u32]) -> Result<(), SamplerError> {
        let mut state = self.lock();
        for tgid in tgids {
            state.targets.remove(tgid);
        }
        Ok(())
    }

    fn drain(&self) -> Vec<Sample> {
        let mut samples = std::mem::take(&mut self.lock().samples);
        samples.sort_by_key(|sample| sample.time_unix_nano);
        samples
    }

    fn take_losses(&self) -> Vec<Loss> {
        std::mem::take(&mut self.lock().losses)
    }

    fn stats(&self) -> SamplerStats {
        let state = self.lock();
        SamplerStats {
            frequency_hz: state
                .targets
                .values()
                .map(|&(frequency, _)| frequency)
                .max()
                .unwrap_or(0),
            targets: state.targets.len(),
            attached: !state.targets.is_empty(),
            off_cpu_attached: state.targets.values().any(|(_, r)| r.off_cpu),
            memory_attached: state.targets.values().any(|(_, r)| r.memory),
            ..state.stats.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tid: u32, time: i64) -> Sample {
        Sample::new(1, tid, time, &[0x1000, 0x2000], &[])
    }

    #[test]
    fn pushes_and_drains_in_time_order() {
        let sampler = FakeSampler::new();
        sampler.push([sample(1, 30), sample(2, 10)]);
        sampler.push([sample(3, 20)]);
        let drained = sampler.drain();
        assert_eq!(drained.iter().map(|s| s.tid).collect::<Vec<_>>(), [2, 3, 1]);
        assert!(
            sampler.drain().is_empty(),
            "drain hands out each sample once"
        );
        assert_eq!(sampler.stats().samples, 3);
    }

    #[test]
    fn targets_frequency_and_attachment() {
        let sampler = FakeSampler::new();
        assert_eq!(sampler.stats(), SamplerStats::default());

        assert!(matches!(
            sampler.add_targets(&[1], 0, Recording::CPU),
            Err(SamplerError::InvalidFrequency { .. })
        ));
        assert!(matches!(
            sampler.add_targets(&[1], 1001, Recording::CPU),
            Err(SamplerError::InvalidFrequency { .. })
        ));
        assert!(!sampler.stats().attached);

        sampler.add_targets(&[10, 11], 99, Recording::CPU).unwrap();
        sampler.add_targets(&[12], 49, Recording::CPU).unwrap();
        let stats = sampler.stats();
        assert_eq!(
            (stats.targets, stats.frequency_hz, stats.attached),
            (3, 99, true)
        );
        sampler.add_targets(&[12], 199, Recording::CPU).unwrap();
        assert_eq!(
            sampler.stats().frequency_hz,
            199,
            "the max the targets ask for"
        );
        sampler.remove_targets(&[12]).unwrap();
        assert_eq!(
            sampler.stats().frequency_hz,
            99,
            "back down when the target that asked for more goes"
        );

        sampler.remove_targets(&[10, 999]).unwrap();
        assert_eq!(sampler.targets(), [11]);
        sampler.remove_targets(&[11]).unwrap();
        let stats = sampler.stats();
        assert_eq!(
            (stats.targets, stats.frequency_hz, stats.attached),
            (0, 0, false)
        );

        sampler.add_targets(&[13], 49, Recording::CPU).unwrap();
        assert_eq!(
            sampler.stats().frequency_hz,
            49,
            "a new attachment starts afresh"
        );
    }

    #[test]
    fn off_cpu_samples_and_targets() {
        use crate::{OffCpu, SwitchState};
        let sampler = FakeSampler::new();
        sampler.add_targets(&[10, 11], 99, Recording::CPU).unwrap();
        assert!(!sampler.stats().off_cpu_attached);
        sampler.add_targets(&[11], 49, Recording::OFF_CPU).unwrap();
        sampler.add_targets(&[11], 49, Recording::CPU).unwrap();
        assert_eq!(
            sampler.off_cpu_targets(),
            [11],
            "off-CPU stays on once asked"
        );
        assert!(sampler.stats().off_cpu_attached);
        let off_cpu = OffCpu {
            start_unix_nano: 5,
            weight_ns: 20,
            state: SwitchState::Uninterruptible,
            woken_unix_nano: None,
        };
        sampler.push([
            Sample::new_off_cpu(11, 12, 25, off_cpu, &[0x1000], &[0xffff_0000]),
            sample(12, 10),
        ]);
        let drained = sampler.drain();
        assert_eq!(drained[1].off_cpu, Some(off_cpu));
        assert_eq!(drained[0].off_cpu, None);
        let stats = sampler.stats();
        assert_eq!((stats.samples, stats.off_cpu_events), (2, 1));
        sampler.remove_targets(&[11]).unwrap();
        assert!(!sampler.stats().off_cpu_attached);
        assert!(sampler.stats().attached);
    }

    #[test]
    fn losses_are_handed_out_once() {
        let sampler = FakeSampler::new();
        let loss = Loss::of_sample(&sample(7, 50));
        sampler.push_losses([loss]);
        assert_eq!(sampler.take_losses(), [loss]);
        assert!(sampler.take_losses().is_empty());
    }

    #[test]
    fn counters_are_reported() {
        let sampler = FakeSampler::new();
        sampler.set_counters(1, 2, 3);
        let stats = sampler.stats();
        assert_eq!((stats.lost, stats.stack_errors, stats.dropped), (1, 2, 3));
    }
}
