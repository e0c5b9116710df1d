//! The event the eBPF program sends through its ring buffer, mirrored from
//! `ebpf/sampler.h` (`struct coral_sample_event` and the `CORAL_*` constants).

/// `struct coral_sample_event` and what follows it: one sample as the kernel wrote it
/// (native endianness), borrowing the record's stack bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEvent<'a> {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ktime_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub cpu: u32,
    /// Samples this CPU could not send since its previous event, of which process (0:
    /// several) and since when (monotonic ns).
    pub lost: u64,
    pub lost_tgid: u32,
    pub lost_since_ns: u64,
    /// User registers; 0 when unknown.
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The thread's exec count: changes when the process execs.
    pub exec_id: u64,
    /// [`KIND_CPU`], [`KIND_OFF_CPU`] or [`KIND_MEMORY`].
    pub kind: u32,
    /// Off-CPU: the task state it was switched out in, with [`STATE_PREEMPTED`].
    /// Memory: the order of the pages allocated.
    pub state: u32,
    /// Off-CPU: when it was switched out (monotonic ns).
    pub off_cpu_start_ns: u64,
    /// Off-CPU: the waiting time the event stands for (ns); memory: the bytes.
    pub weight: u64,
    /// The thread of the lost samples (0: several).
    pub lost_tid: u32,
    /// Off-CPU: how much of the interval the thread spent runnable on a run queue.
    pub runqueue_ns: u64,
    /// Kernel frames, leaf first.
    pub kernel: Vec<u64>,
    /// User frames walked by the kernel (frame-pointer mode), leaf first.
    pub user: Vec<u64>,
    /// User stack memory from `sp` upwards (unwind-table mode).
    pub stack: &'a [u8],
}

/// `sizeof(struct coral_sample_event)`.
pub(crate) const HEADER_SIZE: usize = 120;

/// `CORAL_KIND_*`: what an event is.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "mirrors sampler.h; tests check it")
)]
pub(crate) const KIND_CPU: u32 = 0;
pub(crate) const KIND_OFF_CPU: u32 = 1;
pub(crate) const KIND_MEMORY: u32 = 2;
/// `CORAL_STATE_PREEMPTED`: marker bit of an off-CPU event's state.
pub(crate) const STATE_PREEMPTED: u32 = 0x8000_0000;
/// `CORAL_TARGET_*`: flags of a process in the `targets` map.
pub(crate) const TARGET_CPU: u32 = 1;
pub(crate) const TARGET_OFF_CPU: u32 = 2;
pub(crate) const TARGET_MEMORY: u32 = 4;

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
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "mirrors sampler.h; tests check it")
)]
pub(crate) const COUNTER_OFFCPU_EVENTS: u32 = 3;
pub(crate) const COUNTER_OFFCPU_THROTTLED: u32 = 4;
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "mirrors sampler.h; tests check it")
)]
pub(crate) const COUNTER_MEMORY_EVENTS: u32 = 5;
pub(crate) const COUNTER_MEMORY_THROTTLED: u32 = 6;

/// `CORAL_UNWIND_*`: values of the program's `coral_unwind_mode` global.
pub(crate) const UNWIND_FP: u32 = 0;
pub(crate) const UNWIND_COPY: u32 = 1;
pub(crate) const GLOBAL_UNWIND_MODE: &str = "coral_unwind_mode";
/// Globals of the off-CPU programs (u64 nanoseconds).
pub(crate) const GLOBAL_OFFCPU_MIN_WAIT: &str = "coral_offcpu_min_wait_ns";
pub(crate) const GLOBAL_OFFCPU_EVENT_COST: &str = "coral_offcpu_event_cost_ns";
/// Globals of the memory programs (u64 bytes, u64 nanoseconds).
pub(crate) const GLOBAL_MEMORY_FAULT_PERIOD: &str = "coral_memory_fault_period";
pub(crate) const GLOBAL_MEMORY_EVENT_COST: &str = "coral_memory_event_cost_ns";

/// `CORAL_MAX_TARGETS`: capacity of the `targets` map.
pub(crate) const MAX_TARGETS: u32 = 4096;

/// Map names in the object file.
pub(crate) const MAP_TARGETS: &str = "targets";
pub(crate) const MAP_EVENTS: &str = "events";
pub(crate) const MAP_COUNTERS: &str = "counters";
pub(crate) const MAP_SCRATCH: &str = "scratch";
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "only the eBPF programs use it; tests check the name"
    )
)]
pub(crate) const MAP_OFFCPU_START: &str = "offcpu_start";
pub(crate) const MAP_OFFCPU_EPOCH: &str = "offcpu_epoch";
/// The programs' function names: the CPU sampler, and the off-CPU switch-out
/// (`tp_btf/sched_switch`) and switch-in (`tp_btf/sched_exit_tp`, or a kprobe on
/// `finish_task_switch` on kernels without that tracepoint) programs.
pub(crate) const PROGRAM: &str = "coral_sample";
pub(crate) const PROGRAM_SWITCH_OUT: &str = "coral_switch_out";
pub(crate) const PROGRAM_SWITCH_IN: &str = "coral_switch_in";
pub(crate) const PROGRAM_SWITCH_IN_KPROBE: &str = "coral_switch_in_kprobe";
/// The memory programs: on sampled faults (the page-fault perf events), and on
/// huge page allocations (`tp_btf/mm_page_alloc`).
pub(crate) const PROGRAM_FAULT_SAMPLE: &str = "coral_fault_sample";
pub(crate) const PROGRAM_HUGE_ALLOC: &str = "coral_huge_alloc";

impl<'a> RawEvent<'a> {
    /// Parses an event from a ring buffer record. Records are at least as long as
    /// the event (the kernel rounds records up to 8 bytes); shorter ones, and lengths
    /// that overrun the record, are rejected.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() < HEADER_SIZE {
            return None;
        }
        let u64_at = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u16_at = |at: usize| u16::from_ne_bytes(bytes[at..at + 2].try_into().expect("2 bytes"));
        let kernel_bytes = usize::from(u16_at(20));
        let user_bytes = usize::from(u16_at(22));
        let stack_bytes = u32_at(24) as usize;
        let frames_end = HEADER_SIZE + kernel_bytes + user_bytes;
        let stack_end = frames_end.checked_add(stack_bytes)?;
        if stack_end > bytes.len() || kernel_bytes % 8 != 0 || user_bytes % 8 != 0 {
            return None;
        }
        let frames = |from: usize, len: usize| -> Vec<u64> {
            bytes[from..from + len]
                .chunks_exact(8)
                .map(|word| u64::from_ne_bytes(word.try_into().expect("8 bytes")))
                .collect()
        };
        Some(Self {
            ktime_ns: u64_at(0),
            tgid: u32_at(8),
            tid: u32_at(12),
            cpu: u32_at(16),
            lost_tgid: u32_at(28),
            lost: u64_at(32),
            lost_since_ns: u64_at(40),
            ip: u64_at(48),
            sp: u64_at(56),
            bp: u64_at(64),
            exec_id: u64_at(72),
            kind: u32_at(80),
            state: u32_at(84),
            off_cpu_start_ns: u64_at(88),
            weight: u64_at(96),
            lost_tid: u32_at(104),
            runqueue_ns: u64_at(112),
            kernel: frames(HEADER_SIZE, kernel_bytes),
            user: frames(HEADER_SIZE + kernel_bytes, user_bytes),
            stack: &bytes[frames_end..stack_end],
        })
    }

    #[cfg(test)]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&self.ktime_ns.to_ne_bytes());
        bytes.extend_from_slice(&self.tgid.to_ne_bytes());
        bytes.extend_from_slice(&self.tid.to_ne_bytes());
        bytes.extend_from_slice(&self.cpu.to_ne_bytes());
        bytes.extend_from_slice(&((self.kernel.len() * 8) as u16).to_ne_bytes());
        bytes.extend_from_slice(&((self.user.len() * 8) as u16).to_ne_bytes());
        bytes.extend_from_slice(&(self.stack.len() as u32).to_ne_bytes());
        bytes.extend_from_slice(&self.lost_tgid.to_ne_bytes());
        bytes.extend_from_slice(&self.lost.to_ne_bytes());
        bytes.extend_from_slice(&self.lost_since_ns.to_ne_bytes());
        for register in [self.ip, self.sp, self.bp, self.exec_id] {
            bytes.extend_from_slice(&register.to_ne_bytes());
        }
        bytes.extend_from_slice(&self.kind.to_ne_bytes());
        bytes.extend_from_slice(&self.state.to_ne_bytes());
        bytes.extend_from_slice(&self.off_cpu_start_ns.to_ne_bytes());
        bytes.extend_from_slice(&self.weight.to_ne_bytes());
        bytes.extend_from_slice(&self.lost_tid.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&self.runqueue_ns.to_ne_bytes());
        assert_eq!(bytes.len(), HEADER_SIZE);
        for frame in self.kernel.iter().chain(&self.user) {
            bytes.extend_from_slice(&frame.to_ne_bytes());
        }
        bytes.extend_from_slice(self.stack);
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header's size and field offsets as clang lays them out, read from the
    /// compiled object's BTF would be ideal; the C struct is simple enough that its
    /// declaration order, checked here, fixes the offsets.
    #[test]
    fn header_matches_the_c_struct() {
        let header = include_str!("../../../ebpf/sampler.h");
        let start = header.find("struct coral_sample_event {").unwrap();
        let body = &header[start..start + header[start..].find("};").unwrap()];
        let fields: Vec<(&str, &str)> = body
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with("__u") && line.ends_with(';'))
            .map(|line| {
                let mut parts = line.trim_end_matches(';').split_whitespace();
                (parts.next().unwrap(), parts.next().unwrap())
            })
            .collect();
        let expected = [
            ("__u64", "ktime_ns"),
            ("__u32", "tgid"),
            ("__u32", "tid"),
            ("__u32", "cpu"),
            ("__u16", "kernel_bytes"),
            ("__u16", "user_bytes"),
            ("__u32", "stack_bytes"),
            ("__u32", "lost_tgid"),
            ("__u64", "lost"),
            ("__u64", "lost_since_ns"),
            ("__u64", "ip"),
            ("__u64", "sp"),
            ("__u64", "bp"),
            ("__u64", "exec_id"),
            ("__u32", "kind"),
            ("__u32", "state"),
            ("__u64", "off_cpu_start_ns"),
            ("__u64", "weight"),
            ("__u32", "lost_tid"),
            ("__u32", "reserved"),
            ("__u64", "runqueue_ns"),
        ];
        assert_eq!(fields, expected);
        let size: usize = fields
            .iter()
            .map(|(ty, _)| match *ty {
                "__u64" => 8,
                "__u32" => 4,
                _ => 2,
            })
            .sum();
        assert_eq!(size, HEADER_SIZE);
        // Padding-free: every field at a multiple of its size.
        let mut offset = 0;
        for (ty, name) in &fields {
            let field_size = match *ty {
                "__u64" => 8,
                "__u32" => 4,
                _ => 2,
            };
            assert_eq!(offset % field_size, 0, "{name} at {offset} is misaligned");
            offset += field_size;
        }
        assert_eq!(HEADER_SIZE % 8, 0);
    }

    #[test]
    fn header_constants_match() {
        let header = include_str!("../../../ebpf/sampler.h");
        let define = |name: &str| -> String {
            let line = header
                .lines()
                .find(|line| line.starts_with(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("{name} not in sampler.h"));
            line.split_whitespace()
                .skip(2)
                .collect::<Vec<_>>()
                .join(" ")
        };
        for (name, value) in [
            ("CORAL_COUNTER_SAMPLES", COUNTER_SAMPLES),
            ("CORAL_COUNTER_LOST", COUNTER_LOST),
            ("CORAL_COUNTER_STACK_ERRORS", COUNTER_STACK_ERRORS),
            ("CORAL_MAX_TARGETS", MAX_TARGETS),
            ("CORAL_UNWIND_FP", UNWIND_FP),
            ("CORAL_UNWIND_COPY", UNWIND_COPY),
            ("CORAL_COUNTER_OFFCPU_EVENTS", COUNTER_OFFCPU_EVENTS),
            ("CORAL_COUNTER_OFFCPU_THROTTLED", COUNTER_OFFCPU_THROTTLED),
            ("CORAL_COUNTER_MEMORY_EVENTS", COUNTER_MEMORY_EVENTS),
            ("CORAL_COUNTER_MEMORY_THROTTLED", COUNTER_MEMORY_THROTTLED),
            ("CORAL_KIND_CPU", KIND_CPU),
            ("CORAL_KIND_OFF_CPU", KIND_OFF_CPU),
            ("CORAL_KIND_MEMORY", KIND_MEMORY),
            ("CORAL_STATE_PREEMPTED", STATE_PREEMPTED),
            ("CORAL_TARGET_CPU", TARGET_CPU),
            ("CORAL_TARGET_OFF_CPU", TARGET_OFF_CPU),
            ("CORAL_TARGET_MEMORY", TARGET_MEMORY),
        ] {
            let defined = define(name);
            let literal = defined.split_whitespace().next().unwrap();
            let number = match literal.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16).unwrap(),
                None => literal.parse().unwrap(),
            };
            assert_eq!(number, value, "{name}");
        }
        let source = include_str!("../../../ebpf/sampler.bpf.c");
        for map in [
            MAP_TARGETS,
            MAP_EVENTS,
            MAP_COUNTERS,
            MAP_SCRATCH,
            MAP_OFFCPU_START,
            MAP_OFFCPU_EPOCH,
        ] {
            assert!(
                source.contains(&format!("}} {map} SEC(\".maps\");")),
                "map {map} not in sampler.bpf.c"
            );
        }
        assert!(source.contains(&format!("volatile const __u32 {GLOBAL_UNWIND_MODE} ")));
        for global in [GLOBAL_OFFCPU_MIN_WAIT, GLOBAL_OFFCPU_EVENT_COST] {
            assert!(source.contains(&format!("volatile const __u64 {global} ")));
        }
        for program in [
            PROGRAM,
            PROGRAM_SWITCH_OUT,
            PROGRAM_SWITCH_IN,
            PROGRAM_SWITCH_IN_KPROBE,
        ] {
            assert!(source.contains(&format!("int {program}(")), "{program}");
        }
    }

    #[test]
    fn parses_an_event() {
        let stack = [7u8; 24];
        let event = RawEvent {
            ktime_ns: 123_456_789_012,
            tgid: 4242,
            tid: 4243,
            cpu: 1,
            lost: 3,
            lost_tgid: 4242,
            lost_since_ns: 123_000_000_000,
            ip: 0x5555_0000_1234,
            sp: 0x7ffc_0000_0000,
            bp: 0,
            exec_id: 2,
            kind: KIND_OFF_CPU,
            state: STATE_PREEMPTED | 1,
            off_cpu_start_ns: 122_000_000_000,
            weight: 1_000_000,
            lost_tid: 4243,
            runqueue_ns: 3_000,
            kernel: vec![0xffff_ffff_8100_0000, 0xffff_ffff_8100_0100],
            user: vec![0x4000],
            stack: &stack,
        };
        let mut bytes = event.to_bytes();
        assert_eq!(RawEvent::parse(&bytes), Some(event.clone()));
        // Records may carry padding after the event.
        bytes.extend_from_slice(&[0; 8]);
        assert_eq!(RawEvent::parse(&bytes), Some(event));
        // Short records, and lengths beyond the record, are rejected.
        assert_eq!(RawEvent::parse(&bytes[..HEADER_SIZE - 1]), None);
        assert_eq!(RawEvent::parse(&bytes[..HEADER_SIZE + 20]), None);
        assert_eq!(RawEvent::parse(&[]), None);
    }
}
