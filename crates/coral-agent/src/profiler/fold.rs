//! From raw samples to a [`Profile`]: symbolize each distinct stack once (per batch),
//! put its frames root → leaf, count.

use coral_analysis::profile::{Frame, Profile};
use coral_sampler::{Sample, Stack};
use std::collections::{BTreeMap, HashMap};

/// What folding needs from a symbolizer ([`coral_symbolizer::Symbolizer`] in the agent,
/// a fake in unit tests). Both return one frame per address, in the input order.
pub trait Symbolize {
    /// Several stacks of one process at once (one read of its memory map for all).
    fn user_stacks(&mut self, pid: u32, stacks: &[&[u64]]) -> Vec<Vec<Frame>>;
    fn kernel(&mut self, addrs: &[u64]) -> Vec<Frame>;
    /// The process exited: drop what is cached for it.
    fn forget(&mut self, pid: u32);
}

impl Symbolize for coral_symbolizer::Symbolizer {
    fn user_stacks(&mut self, pid: u32, stacks: &[&[u64]]) -> Vec<Vec<Frame>> {
        self.symbolize_user_stacks(pid, stacks)
    }
    fn kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
        self.symbolize_kernel(addrs)
    }
    fn forget(&mut self, pid: u32) {
        self.forget_process(pid);
    }
}

/// The addresses to look up for a stack walked leaf first: the leaf is the interrupted
/// instruction, every other entry a return address, which points *after* the call (and,
/// after a call to a function that does not return, possibly into the next function);
/// one byte back lands inside the call instruction.
fn lookup_addrs(stack: &[u64]) -> Vec<u64> {
    stack
        .iter()
        .enumerate()
        .map(|(i, &addr)| if i == 0 { addr } else { addr.saturating_sub(1) })
        .collect()
}

/// A stack's identity: process and raw addresses (the same addresses in two processes
/// may be different functions).
type StackKey<'a> = (u32, &'a Stack);

/// Symbolized stacks of one batch, so that each distinct stack is symbolized once however
/// many samples and requests share it. Borrows the samples' stacks.
#[derive(Default)]
pub struct StackCache<'a> {
    stacks: HashMap<StackKey<'a>, Box<[Frame]>>,
}

impl<'a> StackCache<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Symbolizes the stacks of `samples` not cached yet: one call per process for all
    /// its new user stacks (a call costs a read of the process's memory map, about as
    /// much as symbolizing a whole stack from a warm cache).
    fn symbolize(&mut self, symbolizer: &mut dyn Symbolize, samples: &[&'a Sample]) {
        let mut by_pid: BTreeMap<u32, Vec<&'a Sample>> = BTreeMap::new();
        for &sample in samples {
            if !self.stacks.contains_key(&(sample.tgid, &*sample.stack)) {
                by_pid.entry(sample.tgid).or_default().push(sample);
            }
        }
        for (pid, group) in by_pid {
            let addrs: Vec<Vec<u64>> = group.iter().map(|s| lookup_addrs(&s.stack.user)).collect();
            let refs: Vec<&[u64]> = addrs.iter().map(Vec::as_slice).collect();
            let users = symbolizer.user_stacks(pid, &refs);
            for (sample, mut frames) in group.into_iter().zip(users) {
                frames.reverse();
                let mut kernel = symbolizer.kernel(&lookup_addrs(&sample.stack.kernel));
                kernel.reverse();
                frames.extend(kernel);
                self.stacks.insert((pid, &*sample.stack), frames.into());
            }
        }
    }

    /// Distinct stacks symbolized so far.
    pub fn distinct_stacks(&self) -> usize {
        self.stacks.len()
    }
}

/// The profile of `samples` taken at `frequency_hz`: equal stacks are counted together
/// (in order of first appearance, so the result is deterministic).
pub fn fold<'a>(
    samples: impl IntoIterator<Item = &'a Sample>,
    cache: &mut StackCache<'a>,
    symbolizer: &mut dyn Symbolize,
    frequency_hz: u32,
) -> Profile {
    let mut order: Vec<&'a Sample> = Vec::new();
    let mut counts: HashMap<StackKey<'a>, (usize, u64)> = HashMap::new();
    for sample in samples {
        let key = (sample.tgid, &*sample.stack);
        counts
            .entry(key)
            .or_insert_with(|| {
                order.push(sample);
                (order.len() - 1, 0)
            })
            .1 += 1;
    }
    let mut weights = vec![0u64; order.len()];
    for (index, count) in counts.into_values() {
        weights[index] = count;
    }
    cache.symbolize(symbolizer, &order);
    let mut profile = Profile::new();
    for (sample, count) in order.into_iter().zip(weights) {
        let frames = &cache.stacks[&(sample.tgid, &*sample.stack)];
        profile.add(frames, count, frequency_hz);
    }
    profile
}

#[cfg(test)]
mod tests {
    use super::*;
    use coral_analysis::profile::samples_to_cpu_ns;

    /// Names every address `u<pid>:<hex>` / `k:<hex>` and counts the lookups.
    #[derive(Default)]
    struct FakeSymbolizer {
        user_calls: usize,
        kernel_calls: usize,
    }

    impl Symbolize for FakeSymbolizer {
        fn user_stacks(&mut self, pid: u32, stacks: &[&[u64]]) -> Vec<Vec<Frame>> {
            self.user_calls += 1;
            stacks
                .iter()
                .map(|addrs| {
                    addrs
                        .iter()
                        .map(|a| Frame::user(format!("u{pid}:{a:x}"), "bin"))
                        .collect()
                })
                .collect()
        }
        fn kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
            if !addrs.is_empty() {
                self.kernel_calls += 1;
            }
            addrs
                .iter()
                .map(|a| Frame::kernel(format!("k:{a:x}")))
                .collect()
        }
        fn forget(&mut self, _pid: u32) {}
    }

    fn sample(tgid: u32, user: &[u64], kernel: &[u64]) -> Sample {
        Sample::new(tgid, tgid, 0, user, kernel)
    }

    fn names(profile: &Profile, stack: usize) -> Vec<String> {
        profile.stacks[stack]
            .frames
            .iter()
            .map(|&f| profile.frames[f as usize].function.clone())
            .collect()
    }

    #[test]
    fn stacks_go_root_to_leaf_with_kernel_frames_on_top() {
        // Leaf first, as the kernel walks them: main (0x30) called work (0x20) called
        // leaf (0x10), which made a syscall that was in do_sys (0xa0) → schedule (0x90).
        let samples = [sample(7, &[0x10, 0x21, 0x31], &[0x90, 0xa1])];
        let mut symbolizer = FakeSymbolizer::default();
        let mut cache = StackCache::new();
        let profile = fold(&samples, &mut cache, &mut symbolizer, 99);
        assert_eq!(
            names(&profile, 0),
            ["u7:30", "u7:20", "u7:10", "k:a0", "k:90"],
            "return addresses are looked up one byte back"
        );
        assert_eq!(profile.stacks[0].samples, 1);
        assert_eq!(profile.stacks[0].cpu_ns, samples_to_cpu_ns(1, 99));
    }

    #[test]
    fn equal_stacks_are_counted_and_symbolized_once() {
        let a = sample(7, &[0x10, 0x21], &[]);
        let b = sample(7, &[0x40], &[]);
        let other_process = sample(8, &[0x10, 0x21], &[]);
        let samples = [a.clone(), b.clone(), a.clone(), a, other_process, b];
        let mut symbolizer = FakeSymbolizer::default();
        let mut cache = StackCache::new();
        let profile = fold(&samples, &mut cache, &mut symbolizer, 100);
        assert_eq!(profile.total_samples(), 6);
        assert_eq!(profile.stacks.len(), 3);
        assert_eq!(names(&profile, 0), ["u7:20", "u7:10"]);
        assert_eq!(profile.stacks[0].samples, 3);
        assert_eq!(names(&profile, 1), ["u7:40"]);
        assert_eq!(profile.stacks[1].samples, 2);
        assert_eq!(names(&profile, 2), ["u8:20", "u8:10"]);
        assert_eq!(
            symbolizer.user_calls, 2,
            "one lookup per process, for its distinct stacks together"
        );
        assert_eq!(cache.distinct_stacks(), 3);

        // A second fold in the same batch reuses the cache.
        let again = fold(&samples[..2], &mut cache, &mut symbolizer, 100);
        assert_eq!(again.total_samples(), 2);
        assert_eq!(symbolizer.user_calls, 2);
    }

    #[test]
    fn samples_without_stacks_are_kept_as_empty_stacks() {
        let samples = [sample(7, &[], &[])];
        let mut symbolizer = FakeSymbolizer::default();
        let profile = fold(&samples, &mut StackCache::new(), &mut symbolizer, 99);
        assert_eq!(profile.total_samples(), 1);
        assert!(profile.stacks[0].frames.is_empty());
        assert_eq!(symbolizer.kernel_calls, 0);
    }

    #[test]
    fn no_samples_is_an_empty_profile() {
        let samples: [Sample; 0] = [];
        let mut symbolizer = FakeSymbolizer::default();
        let profile = fold(&samples, &mut StackCache::new(), &mut symbolizer, 99);
        assert!(profile.is_empty());
        assert_eq!(profile.total_samples(), 0);
    }
}
