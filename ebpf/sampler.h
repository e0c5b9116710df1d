/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Coral CPU sampler: what the eBPF program (sampler.bpf.c) and user space
 * (crates/coral-sampler/src/event.rs) share. The Rust side mirrors every
 * definition here with constants of the same names and a parser of the event;
 * change both together (a unit test there checks the constants and offsets).
 */
#ifndef CORAL_SAMPLER_H
#define CORAL_SAMPLER_H

#include <linux/types.h>

/*
 * One sample, sent through the `events` ring buffer: this header, then
 * kernel_bytes of kernel frames (u64 instruction pointers, leaf first), then
 * user_bytes of user frames (frame-pointer mode: the kernel's walk, leaf
 * first), then stack_bytes of user stack memory copied from regs.sp upwards
 * (unwind-table mode: user space unwinds it). 112 bytes, no padding.
 *
 * kind CORAL_KIND_CPU: a CPU sample (ktime_ns when it was taken).
 * kind CORAL_KIND_OFF_CPU: the thread was switched out from off_cpu_start_ns to
 * ktime_ns (when it ran again), with the stack it waited in. weight is the
 * off-CPU time it stands for, in nanoseconds: the interval itself when it lasted
 * at least coral_offcpu_min_wait_ns (T), else T for an interval sent with
 * probability (its length / T); the sum of weights per stack estimates, without
 * bias, the time spent waiting there.
 * kind CORAL_KIND_MEMORY: at ktime_ns a page fault of the thread mapped pages of
 * order `state` (4 KiB << state), with the user stack that faulted (no kernel
 * stack). weight is the memory it stands for, in bytes: the sampled fault's
 * coral_memory_fault_period x 4 KiB, or a huge page's size (all are sent).
 */
struct coral_sample_event {
	/* bpf_ktime_get_ns() at the sample: CLOCK_MONOTONIC, in nanoseconds. */
	__u64 ktime_ns;
	/* Process (thread group) id and thread id, as the initial pid namespace sees them. */
	__u32 tgid;
	__u32 tid;
	/* CPU the sample was taken on. */
	__u32 cpu;
	__u16 kernel_bytes;
	__u16 user_bytes;
	__u32 stack_bytes;
	/* Samples this CPU took but could not send (ring buffer full, or off-CPU
	 * events over the rate bound) since its previous event: how many, of which
	 * process and thread (0: of several; lost_tid is below), and the earliest
	 * time they cover (0 when lost is 0). */
	__u32 lost_tgid;
	__u64 lost;
	__u64 lost_since_ns;
	/* The thread's user registers (what it would resume with); 0 when unknown. */
	__u64 ip;
	__u64 sp;
	__u64 bp;
	/* The thread's exec count (task_struct.self_exec_id): changes when the
	 * process execs, so user space drops what it knew of its mappings. */
	__u64 exec_id;
	/* CORAL_KIND_*. */
	__u32 kind;
	/* Off-CPU: the task state it left the CPU in (sched_switch's prev_state,
	 * e.g. 1 TASK_INTERRUPTIBLE, 2 TASK_UNINTERRUPTIBLE), with
	 * CORAL_STATE_PREEMPTED when it was preempted or still runnable. Memory:
	 * the order of the pages allocated. 0 for CPU samples. */
	__u32 state;
	/* Off-CPU: bpf_ktime_get_ns() when it was switched out; 0 for CPU samples. */
	__u64 off_cpu_start_ns;
	/* Off-CPU: the waiting time this event stands for (ns); memory: the bytes
	 * (see above); 0 for CPU samples. */
	__u64 weight;
	/* The thread of the lost samples (0: several, or none lost). */
	__u32 lost_tid;
	/* 0 (keeps the size a multiple of 8). */
	__u32 reserved;
	/* Off-CPU: how much of the interval (off_cpu_start_ns to ktime_ns) the
	 * thread spent runnable on a run queue (the scheduler's run_delay over the
	 * interval): after its wake-up, or all of it when it was preempted. 0 for
	 * CPU samples, and without CONFIG_SCHED_INFO. */
	__u64 runqueue_ns;
};

/* Values of coral_sample_event.kind. */
#define CORAL_KIND_CPU 0
#define CORAL_KIND_OFF_CPU 1
#define CORAL_KIND_MEMORY 2

/* Marker bit in coral_sample_event.state: preempted (runnable, on the run queue). */
#define CORAL_STATE_PREEMPTED 0x80000000

/* Flags of a process in the `targets` map. */
#define CORAL_TARGET_CPU 1     /* sampled on CPU (the perf_event program only checks presence) */
#define CORAL_TARGET_OFF_CPU 2 /* off-CPU intervals recorded */
#define CORAL_TARGET_MEMORY 4  /* memory made resident recorded */

/* Indices into the per-CPU `counters` array. */
#define CORAL_COUNTER_SAMPLES 0      /* events submitted to the ring buffer */
#define CORAL_COUNTER_LOST 1         /* ring buffer full: event dropped */
#define CORAL_COUNTER_STACK_ERRORS 2 /* a stack walk or copy failed other than "nothing to walk" */
#define CORAL_COUNTER_OFFCPU_EVENTS 3    /* off-CPU events submitted (also in SAMPLES) */
#define CORAL_COUNTER_OFFCPU_THROTTLED 4 /* off-CPU events over the rate bound: not built */
#define CORAL_COUNTER_MEMORY_EVENTS 5    /* memory events submitted (also in SAMPLES) */
#define CORAL_COUNTER_MEMORY_THROTTLED 6 /* memory events over the rate bound: not built */
#define CORAL_COUNTER_COUNT 7

/* How user stacks are taken (the read-only global coral_unwind_mode). */
#define CORAL_UNWIND_FP 0     /* the kernel walks frame pointers */
#define CORAL_UNWIND_COPY 1   /* copy registers and the top of the stack */

/* Default sizes; user space overrides the ring buffer's at load time. */
#define CORAL_MAX_TARGETS 4096
#define CORAL_RING_BYTES (8 * 1024 * 1024)
/* Frames per walked stack (PERF_MAX_STACK_DEPTH). */
#define CORAL_MAX_STACK_DEPTH 127
#define CORAL_FRAMES_BYTES (CORAL_MAX_STACK_DEPTH * 8)
/* Most user stack copied per sample, from sp upwards (perf's default is 8 KiB). */
#define CORAL_STACK_COPY_BYTES (32 * 1024)
#define CORAL_PAGE_BYTES 4096
/* Most credit an off-CPU token bucket holds: 100 ms worth of events (a burst). */
#define CORAL_OFFCPU_BURST_NS 100000000
/* Most credit a memory token bucket holds: 1 s worth of events, so that a request
 * that makes hundreds of MB resident in a burst is recorded whole. */
#define CORAL_MEMORY_BURST_NS 1000000000

#endif /* CORAL_SAMPLER_H */
