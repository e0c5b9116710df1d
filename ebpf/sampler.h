/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Coral CPU sampler: what the eBPF program (sampler.bpf.c) and user space
 * (crates/coral-sampler/src/event.rs) share. The Rust side mirrors every
 * definition here with #[repr(C)] types and constants of the same names;
 * change both together (a unit test there checks the event's size and
 * field offsets).
 */
#ifndef CORAL_SAMPLER_H
#define CORAL_SAMPLER_H

#include <linux/types.h>

/* One sample, sent through the `events` ring buffer. 32 bytes, no padding. */
struct coral_sample_event {
	/* bpf_ktime_get_ns() at the sample: CLOCK_MONOTONIC, in nanoseconds. */
	__u64 ktime_ns;
	/* Process (thread group) id and thread id, as the initial pid namespace sees them. */
	__u32 tgid;
	__u32 tid;
	/* Ids in stack map `stack_map` (0: stacks_0, 1: stacks_1). Negative: no
	 * stack; the value is bpf_get_stackid()'s negative errno (-EFAULT is the
	 * normal "nothing to walk", e.g. the kernel stack of a sample taken in
	 * user mode). */
	__s32 user_stack_id;
	__s32 kernel_stack_id;
	/* CPU the sample was taken on. */
	__u32 cpu;
	/* Which stack map the ids refer to (CORAL_ACTIVE_STACKS at sample time). */
	__u32 stack_map;
};

/* Indices into the per-CPU `counters` array. */
#define CORAL_COUNTER_SAMPLES 0      /* events submitted to the ring buffer */
#define CORAL_COUNTER_LOST 1         /* ring buffer full: event dropped */
#define CORAL_COUNTER_STACK_ERRORS 2 /* bpf_get_stackid failed other than -EFAULT (-EEXIST collision, -ENOMEM full) */
#define CORAL_COUNTER_COUNT 3

/* Default sizes; user space overrides the stack maps' and the ring buffer's
 * max_entries at load time from SamplerConfig. */
#define CORAL_MAX_TARGETS 4096
#define CORAL_STACK_MAP_ENTRIES 16384
#define CORAL_RING_BYTES (4 * 1024 * 1024)
/* PERF_MAX_STACK_DEPTH: frames per stored stack. */
#define CORAL_MAX_STACK_DEPTH 127

#endif /* CORAL_SAMPLER_H */
