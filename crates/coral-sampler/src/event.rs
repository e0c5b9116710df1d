//! The event the eBPF program sends through its ring buffer, mirrored from
//! `ebpf/sampler.h` (`struct coral_sample_event` and the `CORAL_*` constants).

/// `struct coral_sample_event`: one sample as the kernel wrote it (native endianness).
///
/// The layout must match the C struct exactly; [`RawEvent::SIZE`] and the field
/// offsets are checked by a unit test.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ktime_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    /// Id in stack map `stack_map`; negative: no stack (a negative errno).
    pub user_stack_id: i32,
    pub kernel_stack_id: i32,
    pub cpu: u32,
    /// 0: `stacks_0`, 1: `stacks_1`.
    pub stack_map: u32,
}

/// `CORAL_COUNTER_*`: indices into the per-CPU `counters` map.
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the user-space count is the one reported; tests compare"
    )
)]
pub(crate) const COUNTER_SAMPLES: u32 = 0;
pub(crate) const COUNTER_LOST: u32 = 1;
pub(crate) const COUNTER_STACK_ERRORS: u32 = 2;

/// `CORAL_MAX_TARGETS`: capacity of the `targets` map.
pub(crate) const MAX_TARGETS: u32 = 4096;

/// Map names in the object file.
pub(crate) const MAP_TARGETS: &str = "targets";
pub(crate) const MAP_STACKS: [&str; 2] = ["stacks_0", "stacks_1"];
pub(crate) const MAP_ACTIVE_STACKS: &str = "active_stacks";
pub(crate) const MAP_EVENTS: &str = "events";
pub(crate) const MAP_COUNTERS: &str = "counters";
/// The program's function name.
pub(crate) const PROGRAM: &str = "coral_sample";

impl RawEvent {
    /// `sizeof(struct coral_sample_event)`.
    pub const SIZE: usize = std::mem::size_of::<Self>();

    /// Parses an event from a ring buffer record. Records are at least as long as
    /// the event (the kernel rounds records up to 8 bytes); shorter ones are
    /// rejected.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::SIZE {
            return None;
        }
        let u64_at = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let i32_at = |at: usize| i32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        Some(Self {
            ktime_ns: u64_at(0),
            tgid: u32_at(8),
            tid: u32_at(12),
            user_stack_id: i32_at(16),
            kernel_stack_id: i32_at(20),
            cpu: u32_at(24),
            stack_map: u32_at(28),
        })
    }

    /// The id to look up for a stack id field, or `None` when the kernel had no stack.
    pub fn stack_key(id: i32) -> Option<u32> {
        u32::try_from(id).ok()
    }

    #[cfg(test)]
    pub fn to_bytes(self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(Self::SIZE);
        bytes.extend_from_slice(&self.ktime_ns.to_ne_bytes());
        bytes.extend_from_slice(&self.tgid.to_ne_bytes());
        bytes.extend_from_slice(&self.tid.to_ne_bytes());
        bytes.extend_from_slice(&self.user_stack_id.to_ne_bytes());
        bytes.extend_from_slice(&self.kernel_stack_id.to_ne_bytes());
        bytes.extend_from_slice(&self.cpu.to_ne_bytes());
        bytes.extend_from_slice(&self.stack_map.to_ne_bytes());
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn layout_matches_the_c_struct() {
        assert_eq!(RawEvent::SIZE, 32);
        assert_eq!(offset_of!(RawEvent, ktime_ns), 0);
        assert_eq!(offset_of!(RawEvent, tgid), 8);
        assert_eq!(offset_of!(RawEvent, tid), 12);
        assert_eq!(offset_of!(RawEvent, user_stack_id), 16);
        assert_eq!(offset_of!(RawEvent, kernel_stack_id), 20);
        assert_eq!(offset_of!(RawEvent, cpu), 24);
        assert_eq!(offset_of!(RawEvent, stack_map), 28);
    }

    #[test]
    fn header_constants_match() {
        let header = include_str!("../../../ebpf/sampler.h");
        for (name, value) in [
            ("CORAL_COUNTER_SAMPLES", COUNTER_SAMPLES),
            ("CORAL_COUNTER_LOST", COUNTER_LOST),
            ("CORAL_COUNTER_STACK_ERRORS", COUNTER_STACK_ERRORS),
            ("CORAL_MAX_TARGETS", MAX_TARGETS),
        ] {
            let line = header
                .lines()
                .find(|line| line.starts_with(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("{name} not in sampler.h"));
            let defined: u32 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
            assert_eq!(defined, value, "{name}");
        }
        for map in [
            MAP_TARGETS,
            MAP_ACTIVE_STACKS,
            MAP_EVENTS,
            MAP_COUNTERS,
            MAP_STACKS[0],
            MAP_STACKS[1],
        ] {
            let source = include_str!("../../../ebpf/sampler.bpf.c");
            assert!(
                source.contains(&format!("}} {map} SEC(\".maps\");")),
                "map {map} not in sampler.bpf.c"
            );
        }
    }

    #[test]
    fn parses_an_event() {
        let event = RawEvent {
            ktime_ns: 123_456_789_012,
            tgid: 4242,
            tid: 4243,
            user_stack_id: 7,
            kernel_stack_id: -14,
            cpu: 1,
            stack_map: 1,
        };
        let mut bytes = event.to_bytes();
        assert_eq!(bytes.len(), RawEvent::SIZE);
        assert_eq!(RawEvent::parse(&bytes), Some(event));
        // Records may carry padding after the event.
        bytes.extend_from_slice(&[0; 8]);
        assert_eq!(RawEvent::parse(&bytes), Some(event));
        // Short records are rejected.
        assert_eq!(RawEvent::parse(&bytes[..RawEvent::SIZE - 1]), None);
        assert_eq!(RawEvent::parse(&[]), None);
    }

    #[test]
    fn negative_stack_ids_mean_no_stack() {
        assert_eq!(RawEvent::stack_key(7), Some(7));
        assert_eq!(RawEvent::stack_key(0), Some(0));
        assert_eq!(RawEvent::stack_key(-14), None); // -EFAULT: nothing to walk
        assert_eq!(RawEvent::stack_key(-17), None); // -EEXIST: hash collision (counted by the program)
    }
}
