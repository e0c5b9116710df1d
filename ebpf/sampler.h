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
 * (unwind-table mode: user space unwinds it). 80 bytes, no padding.
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
	/* Samples this CPU took but could not send (ring buffer full) since its
	 * previous event: how many, of which process (0: of several), and when the
	 * first of them was taken (0 when lost is 0). */
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
};

/* Indices into the per-CPU `counters` array. */
#define CORAL_COUNTER_SAMPLES 0      /* events submitted to the ring buffer */
#define CORAL_COUNTER_LOST 1         /* ring buffer full: event dropped */
#define CORAL_COUNTER_STACK_ERRORS 2 /* a stack walk or copy failed other than "nothing to walk" */
#define CORAL_COUNTER_COUNT 3

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

#endif /* CORAL_SAMPLER_H */
