//! What a profile measures ([`ProfileType`]), why a thread was off the CPU
//! ([`WaitCause`], decided by [`WaitCause::classify`]), and where a request's wall-clock
//! time went ([`Breakdown`]).
//!
//! One profile holds every type it was collected for: CPU stacks (sampled, weighted by
//! CPU time) and off-CPU stacks (the stack a thread blocked in, weighted by the time it
//! was switched out). An off-CPU stack ends in a pseudo-frame of kind
//! [`FrameKind::Wait`](super::FrameKind::Wait) naming its cause, so it never merges
//! with a CPU stack and a wall-clock flame graph tells the two apart.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Frame, FrameKind, WeightedStack};

/// The module of every wait pseudo-frame.
pub const OFF_CPU_MODULE: &str = "[off-cpu]";

/// What a profile's values measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileType {
    /// Time on the CPU, from sampled stacks.
    Cpu,
    /// Time switched out (blocked or waiting for a CPU), by the stack it was spent in.
    Offcpu,
    /// Both on one scale: where the thread's wall-clock time went.
    Wall,
    /// Memory made resident (pages the kernel allocated for the thread's page faults),
    /// in bytes, by the stack that faulted.
    Memory,
}

impl ProfileType {
    pub const ALL: [ProfileType; 4] = [
        ProfileType::Cpu,
        ProfileType::Offcpu,
        ProfileType::Wall,
        ProfileType::Memory,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProfileType::Cpu => "cpu",
            ProfileType::Offcpu => "offcpu",
            ProfileType::Wall => "wall",
            ProfileType::Memory => "memory",
        }
    }

    /// The stack's value of this type: nanoseconds, or bytes for `memory`
    /// ([`ProfileType::is_bytes`]).
    pub fn value(self, stack: &WeightedStack) -> u64 {
        match self {
            ProfileType::Cpu => stack.cpu_ns,
            ProfileType::Offcpu => stack.off_cpu_ns,
            ProfileType::Wall => stack.cpu_ns.saturating_add(stack.off_cpu_ns),
            ProfileType::Memory => stack.memory_bytes,
        }
    }

    /// What the values measure, for titles and labels ("CPU time", "off-CPU time").
    pub fn measure(self) -> &'static str {
        match self {
            ProfileType::Cpu => "CPU time",
            ProfileType::Offcpu => "off-CPU time",
            ProfileType::Wall => "wall-clock time",
            ProfileType::Memory => "memory made resident",
        }
    }

    /// Whether values are bytes (`memory`) rather than nanoseconds.
    pub fn is_bytes(self) -> bool {
        self == ProfileType::Memory
    }

    /// Whether agents collect this type. `wall` is not collected: it is a view of `cpu`
    /// and `offcpu` together.
    pub fn is_collected(self) -> bool {
        // Exhaustive, so that a new type must say whether it is collected.
        match self {
            ProfileType::Cpu | ProfileType::Offcpu | ProfileType::Memory => true,
            ProfileType::Wall => false,
        }
    }

    /// Whether collecting this type needs the agent's off-CPU records.
    pub fn needs_off_cpu(self) -> bool {
        matches!(self, ProfileType::Offcpu | ProfileType::Wall)
    }
}

impl fmt::Display for ProfileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile type that is not one of `cpu`, `offcpu`, `wall`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown profile type `{0}`: expected cpu, offcpu, wall or memory")]
pub struct ProfileTypeError(pub String);

impl FromStr for ProfileType {
    type Err = ProfileTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(ProfileType::Cpu),
            "offcpu" | "off-cpu" => Ok(ProfileType::Offcpu),
            "wall" => Ok(ProfileType::Wall),
            "memory" => Ok(ProfileType::Memory),
            _ => Err(ProfileTypeError(s.to_string())),
        }
    }
}

/// How a thread left the CPU, as the scheduler saw it at the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SwitchState {
    /// Still runnable: preempted, so it waited on the run queue.
    Preempted,
    /// Sleeping until woken (`S`): a futex, a socket, a timer.
    Interruptible,
    /// Sleeping without signals (`D`): mostly block I/O.
    Uninterruptible,
    /// Any other state (stopped, traced, dead).
    Other,
}

/// Why a thread was off the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaitCause {
    Lock,
    Disk,
    Network,
    Sleep,
    Runqueue,
    Other,
}

impl WaitCause {
    /// In the order the breakdown lists them.
    pub const ALL: [WaitCause; 6] = [
        WaitCause::Lock,
        WaitCause::Disk,
        WaitCause::Network,
        WaitCause::Sleep,
        WaitCause::Runqueue,
        WaitCause::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WaitCause::Lock => "lock",
            WaitCause::Disk => "disk",
            WaitCause::Network => "network",
            WaitCause::Sleep => "sleep",
            WaitCause::Runqueue => "runqueue",
            WaitCause::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The pseudo-frame that ends an off-CPU stack of this cause.
    pub fn frame(self) -> Frame {
        Frame {
            function: self.as_str().to_string(),
            module: OFF_CPU_MODULE.to_string(),
            kind: FrameKind::Wait,
        }
    }

    /// The cause of a wait, from the state the thread left the CPU in and its kernel
    /// stack at the switch (function names, leaf first or root first: any order).
    ///
    /// * `runqueue`: the thread was still runnable (preempted: CPU starvation or a
    ///   throttled cgroup);
    /// * `lock`: a futex wait (`futex_wait*`: pthread mutexes, condition variables,
    ///   Rust's `Mutex`, Java monitors), or a kernel mutex, rwsem or semaphore;
    /// * `network`: socket receive, accept, connect or send (`sk_wait_data`,
    ///   `tcp_recvmsg`, `unix_stream_*`, `inet_*`, `sock_*`), or waiting for readiness
    ///   (`ep_poll`, `do_sys_poll`, `do_select`);
    /// * `disk`: uninterruptible I/O (`io_schedule*`, folio/page/buffer waits, block
    ///   layer, filesystem journals), or any other uninterruptible sleep;
    /// * `sleep`: a timer (`do_nanosleep`, `hrtimer_nanosleep`, `msleep`), also
    ///   `schedule_timeout` without any of the above;
    /// * `other`: everything else (pipes, `wait4`, signals, an empty kernel stack).
    ///
    /// The kernel stack is checked first, in the order above, so a socket read that
    /// sleeps in `D` (NFS) still counts as `network`.
    pub fn classify<'a>(
        state: SwitchState,
        kernel_functions: impl IntoIterator<Item = &'a str>,
    ) -> WaitCause {
        if state == SwitchState::Preempted {
            return WaitCause::Runqueue;
        }
        let mut found: Option<WaitCause> = None;
        for function in kernel_functions {
            if let Some(cause) = kernel_function_cause(function) {
                // The most specific cause wins: lock and network over disk over sleep.
                found = Some(match found {
                    Some(seen) if rank(seen) <= rank(cause) => seen,
                    _ => cause,
                });
            }
        }
        match (found, state) {
            (Some(cause), _) => cause,
            (None, SwitchState::Uninterruptible) => WaitCause::Disk,
            (None, _) => WaitCause::Other,
        }
    }
}

/// Precedence when several kernel functions of one stack name a cause.
fn rank(cause: WaitCause) -> u8 {
    match cause {
        WaitCause::Lock => 0,
        WaitCause::Network => 1,
        WaitCause::Disk => 2,
        WaitCause::Sleep => 3,
        WaitCause::Runqueue | WaitCause::Other => 4,
    }
}

fn kernel_function_cause(function: &str) -> Option<WaitCause> {
    const LOCK: [&str; 6] = [
        "futex_wait",
        "__futex_wait",
        "futex_wait_queue",
        "mutex_lock",
        "rwsem_down",
        "__down",
    ];
    const NETWORK: [&str; 12] = [
        "sk_wait_data",
        "sk_stream_wait",
        "tcp_recvmsg",
        "tcp_sendmsg",
        "udp_recvmsg",
        "unix_stream_",
        "unix_dgram_recvmsg",
        "inet_csk_accept",
        "inet_wait_for_connect",
        "ep_poll",
        "do_sys_poll",
        "do_select",
    ];
    const DISK: [&str; 8] = [
        "io_schedule",
        "folio_wait",
        "wait_on_page",
        "__wait_on_buffer",
        "blk_",
        "submit_bio_wait",
        "jbd2_",
        "bit_wait_io",
    ];
    const SLEEP: [&str; 4] = [
        "do_nanosleep",
        "hrtimer_nanosleep",
        "msleep",
        "schedule_timeout",
    ];
    // Kernel symbols may carry a compiler suffix (`.isra.0`, `.constprop.0`).
    let name = function.split('.').next().unwrap_or(function);
    let any = |prefixes: &[&str]| prefixes.iter().any(|p| name.starts_with(p));
    if any(&LOCK) {
        Some(WaitCause::Lock)
    } else if any(&NETWORK) || name.starts_with("sock_") {
        Some(WaitCause::Network)
    } else if any(&DISK) {
        Some(WaitCause::Disk)
    } else if any(&SLEEP) {
        Some(WaitCause::Sleep)
    } else {
        None
    }
}

impl fmt::Display for WaitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a profile's time went: on the CPU, and off it by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breakdown {
    /// CPU time (sampled).
    pub on_cpu_ns: u64,
    /// Off-CPU time, all causes.
    pub off_cpu_ns: u64,
    pub lock_ns: u64,
    pub disk_ns: u64,
    pub network_ns: u64,
    pub sleep_ns: u64,
    pub runqueue_ns: u64,
    pub other_ns: u64,
}

impl Breakdown {
    /// The off-CPU time of one cause.
    pub fn cause_ns(&self, cause: WaitCause) -> u64 {
        match cause {
            WaitCause::Lock => self.lock_ns,
            WaitCause::Disk => self.disk_ns,
            WaitCause::Network => self.network_ns,
            WaitCause::Sleep => self.sleep_ns,
            WaitCause::Runqueue => self.runqueue_ns,
            WaitCause::Other => self.other_ns,
        }
    }

    fn cause_mut(&mut self, cause: WaitCause) -> &mut u64 {
        match cause {
            WaitCause::Lock => &mut self.lock_ns,
            WaitCause::Disk => &mut self.disk_ns,
            WaitCause::Network => &mut self.network_ns,
            WaitCause::Sleep => &mut self.sleep_ns,
            WaitCause::Runqueue => &mut self.runqueue_ns,
            WaitCause::Other => &mut self.other_ns,
        }
    }

    /// The time of a `duration_ns` request that neither CPU samples nor off-CPU records
    /// account for (sampling error, waits not recorded), 0 when they cover it all.
    pub fn unaccounted_ns(&self, duration_ns: u64) -> u64 {
        duration_ns.saturating_sub(self.on_cpu_ns.saturating_add(self.off_cpu_ns))
    }

    /// The one-line breakdown every text view of a request opens with:
    ///
    /// ```text
    /// 1.05s wall: on-CPU 31.0ms (3%) · waiting 1.01s (96%): lock 980ms, network 22.0ms, runqueue 9.00ms, disk 0, sleep 0, other 0 · unaccounted 8.00ms
    /// ```
    ///
    /// Causes in descending time, those with none last in their usual order
    /// ([`WaitCause::ALL`]); percentages of `duration_ns`, the request's duration. Without
    /// a duration (a session's profile, no single request) there is no wall part, no
    /// percentages and nothing unaccounted. When off-CPU time was not collected, the
    /// waiting part says so rather than showing zeros:
    /// `1.05s wall: on-CPU 31.0ms (3%) · waiting not recorded (cpu profile only)`.
    pub fn describe(&self, duration_ns: Option<u64>, off_cpu_collected: bool) -> String {
        let percent = |ns: u64| match duration_ns {
            Some(d) if d > 0 => format!(" ({})", percent_of(ns, d)),
            _ => String::new(),
        };
        let mut out = String::new();
        if let Some(d) = duration_ns {
            out.push_str(&format!("{} wall: ", time(d)));
        }
        out.push_str(&format!(
            "on-CPU {}{}",
            time(self.on_cpu_ns),
            percent(self.on_cpu_ns)
        ));
        if !off_cpu_collected {
            out.push_str(" · waiting not recorded (cpu profile only)");
            return out;
        }
        out.push_str(&format!(
            " · waiting {}{}",
            time(self.off_cpu_ns),
            percent(self.off_cpu_ns)
        ));
        let mut causes: Vec<(WaitCause, u64)> = WaitCause::ALL
            .iter()
            .map(|&c| (c, self.cause_ns(c)))
            .collect();
        // Stable: causes of equal time, and all the zeros, keep their usual order.
        causes.sort_by_key(|c| std::cmp::Reverse(c.1));
        let causes: Vec<String> = causes
            .into_iter()
            .map(|(c, ns)| format!("{c} {}", time(ns)))
            .collect();
        out.push_str(&format!(": {}", causes.join(", ")));
        if let Some(d) = duration_ns {
            out.push_str(&format!(" · unaccounted {}", time(self.unaccounted_ns(d))));
        }
        out
    }
}

/// A time of the breakdown; none at all is `0`, not `0ns`.
fn time(ns: u64) -> String {
    if ns == 0 {
        return "0".to_string();
    }
    crate::duration::format_duration_ns(i64::try_from(ns).unwrap_or(i64::MAX))
}

/// `ns` as a whole percentage of `of`; `<1%` for a time that rounds to 0 but is not.
fn percent_of(ns: u64, of: u64) -> String {
    let pct = (ns as f64 / of as f64 * 100.0).round();
    if pct == 0.0 && ns > 0 {
        "<1%".to_string()
    } else {
        format!("{pct:.0}%")
    }
}

impl super::Profile {
    /// Adds one off-CPU record: `waits` waits of `weight_ns` in total, blocked in
    /// `stack` (root → leaf, without the wait frame) for `cause`.
    pub fn add_off_cpu(&mut self, stack: &[Frame], cause: WaitCause, waits: u64, weight_ns: u64) {
        if weight_ns == 0 {
            return;
        }
        self.ensure_index();
        let mut ids: Vec<u32> = stack.iter().map(|f| self.intern_frame(f)).collect();
        ids.push(self.intern_frame(&cause.frame()));
        self.add_ids(
            ids,
            WeightedStack {
                frames: Vec::new(),
                samples: waits,
                cpu_ns: 0,
                off_cpu_ns: weight_ns,
                memory_bytes: 0,
            },
        );
    }

    /// The wait cause of a stack: its leaf's, when that is a wait frame.
    pub fn wait_cause(&self, stack: &WeightedStack) -> Option<WaitCause> {
        let leaf = self.frame(*stack.frames.last()?);
        (leaf.kind == FrameKind::Wait)
            .then(|| WaitCause::parse(&leaf.function))
            .flatten()
    }

    /// On-CPU and off-CPU time by cause. Off-CPU time of a stack without a wait frame
    /// (which no agent writes) counts as `other`.
    pub fn breakdown(&self) -> Breakdown {
        let mut b = Breakdown::default();
        for stack in &self.stacks {
            b.on_cpu_ns = b.on_cpu_ns.saturating_add(stack.cpu_ns);
            if stack.off_cpu_ns > 0 {
                b.off_cpu_ns = b.off_cpu_ns.saturating_add(stack.off_cpu_ns);
                let cause = self.wait_cause(stack).unwrap_or(WaitCause::Other);
                let slot = b.cause_mut(cause);
                *slot = slot.saturating_add(stack.off_cpu_ns);
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    #[test]
    fn profile_types_parse_and_print() {
        for ty in ProfileType::ALL {
            assert_eq!(ty.as_str().parse::<ProfileType>().unwrap(), ty);
        }
        assert_eq!(
            "OFF-CPU".parse::<ProfileType>().unwrap(),
            ProfileType::Offcpu
        );
        let error = "memroy".parse::<ProfileType>().unwrap_err().to_string();
        assert!(
            error.contains("`memroy`") && error.contains("cpu, offcpu, wall or memory"),
            "{error}"
        );
    }

    #[test]
    fn causes_from_state_and_kernel_stack() {
        use SwitchState::*;
        let c = |state, frames: &[&str]| WaitCause::classify(state, frames.iter().copied());
        assert_eq!(
            c(
                Interruptible,
                &[
                    "finish_task_switch.isra.0",
                    "__schedule",
                    "schedule",
                    "futex_wait_queue",
                    "__futex_wait",
                    "do_futex"
                ]
            ),
            WaitCause::Lock
        );
        assert_eq!(
            c(
                Interruptible,
                &[
                    "schedule",
                    "schedule_hrtimeout_range",
                    "do_nanosleep",
                    "hrtimer_nanosleep"
                ]
            ),
            WaitCause::Sleep
        );
        assert_eq!(
            c(
                Interruptible,
                &[
                    "schedule",
                    "schedule_timeout",
                    "wait_woken",
                    "sk_wait_data",
                    "tcp_recvmsg_locked",
                    "tcp_recvmsg",
                    "inet_recvmsg",
                    "sock_recvmsg"
                ]
            ),
            WaitCause::Network
        );
        assert_eq!(
            c(
                Interruptible,
                &[
                    "schedule",
                    "schedule_hrtimeout_range",
                    "ep_poll",
                    "do_epoll_wait"
                ]
            ),
            WaitCause::Network
        );
        assert_eq!(
            c(
                Uninterruptible,
                &[
                    "schedule",
                    "io_schedule",
                    "folio_wait_bit_common",
                    "filemap_read"
                ]
            ),
            WaitCause::Disk
        );
        assert_eq!(
            c(Uninterruptible, &["schedule", "something_else"]),
            WaitCause::Disk
        );
        assert_eq!(c(Preempted, &["futex_wait"]), WaitCause::Runqueue);
        assert_eq!(
            c(Interruptible, &["schedule", "pipe_read"]),
            WaitCause::Other
        );
        assert_eq!(c(Interruptible, &[]), WaitCause::Other);
    }

    fn request_breakdown() -> Breakdown {
        Breakdown {
            on_cpu_ns: 31_000_000,
            off_cpu_ns: 1_011_000_000,
            lock_ns: 980_000_000,
            network_ns: 22_000_000,
            runqueue_ns: 9_000_000,
            ..Breakdown::default()
        }
    }

    #[test]
    fn describe_a_request_with_waits() {
        assert_eq!(
            request_breakdown().describe(Some(1_050_000_000), true),
            "1.05s wall: on-CPU 31.0ms (3%) · waiting 1.01s (96%): lock 980ms, \
             network 22.0ms, runqueue 9.00ms, disk 0, sleep 0, other 0 · unaccounted 8.00ms"
        );
        // Recorded time short of the duration is unaccounted; a tiny share is `<1%`.
        let b = Breakdown {
            on_cpu_ns: 2_000_000,
            off_cpu_ns: 500_000_000,
            sleep_ns: 500_000_000,
            ..Breakdown::default()
        };
        assert_eq!(
            b.describe(Some(1_000_000_000), true),
            "1.00s wall: on-CPU 2.00ms (<1%) · waiting 500ms (50%): sleep 500ms, lock 0, \
             disk 0, network 0, runqueue 0, other 0 · unaccounted 498ms"
        );
    }

    #[test]
    fn describe_without_off_cpu_records() {
        let b = Breakdown {
            on_cpu_ns: 31_000_000,
            ..Breakdown::default()
        };
        assert_eq!(
            b.describe(Some(1_050_000_000), false),
            "1.05s wall: on-CPU 31.0ms (3%) · waiting not recorded (cpu profile only)"
        );
        assert_eq!(
            b.describe(None, false),
            "on-CPU 31.0ms · waiting not recorded (cpu profile only)"
        );
    }

    #[test]
    fn describe_without_a_duration() {
        assert_eq!(
            request_breakdown().describe(None, true),
            "on-CPU 31.0ms · waiting 1.01s: lock 980ms, network 22.0ms, runqueue 9.00ms, \
             disk 0, sleep 0, other 0"
        );
        // Nothing waited at all: every cause 0, in the usual order.
        assert_eq!(
            Breakdown::default().describe(None, true),
            "on-CPU 0 · waiting 0: lock 0, disk 0, network 0, sleep 0, runqueue 0, other 0"
        );
        // A zero duration gives no percentages rather than a division by zero.
        assert_eq!(
            Breakdown::default().describe(Some(0), false),
            "0 wall: on-CPU 0 · waiting not recorded (cpu profile only)"
        );
    }

    #[test]
    fn off_cpu_stacks_end_in_their_cause_and_break_down_by_it() {
        let main = Frame::user("main", "svc");
        let lock = Frame::user("acquire_ledger_lock", "svc");
        let mut p = Profile::new();
        p.add(&[main.clone(), lock.clone()], 3, 100);
        p.add_off_cpu(
            &[main.clone(), lock.clone()],
            WaitCause::Lock,
            2,
            900_000_000,
        );
        p.add_off_cpu(std::slice::from_ref(&main), WaitCause::Sleep, 1, 5_000_000);
        p.add_off_cpu(
            &[main.clone(), lock.clone()],
            WaitCause::Lock,
            1,
            80_000_000,
        );
        assert_eq!(
            p.stacks.len(),
            3,
            "the CPU stack and the lock stack stay apart"
        );
        let b = p.breakdown();
        assert_eq!(b.on_cpu_ns, 30_000_000);
        assert_eq!(b.off_cpu_ns, 985_000_000);
        assert_eq!(b.lock_ns, 980_000_000);
        assert_eq!(b.sleep_ns, 5_000_000);
        assert_eq!(b.unaccounted_ns(1_050_000_000), 35_000_000);
        let lock_stack = p
            .stacks
            .iter()
            .find(|s| s.off_cpu_ns == 980_000_000)
            .unwrap();
        assert_eq!(lock_stack.samples, 3);
        assert_eq!(p.wait_cause(lock_stack), Some(WaitCause::Lock));
    }
}
