// SPDX-License-Identifier: GPL-2.0
/*
 * Coral CPU sampler.
 *
 * User space (crates/coral-sampler) attaches `coral_sample` to a software
 * CPU-clock perf event (PERF_TYPE_SOFTWARE / PERF_COUNT_SW_CPU_CLOCK, in
 * sample-frequency mode) on every online CPU. On each tick it:
 *   1. returns at once unless the current process (tgid) is in `targets`;
 *   2. takes the time (bpf_ktime_get_ns: CLOCK_MONOTONIC);
 *   3. stores the user and the kernel stack in the *active* stack map;
 *   4. sends a struct coral_sample_event through the `events` ring buffer
 *      (or counts it as lost when the ring buffer is full).
 *
 * Stack map rotation (so the stack maps never fill up in long runs):
 * there are two STACK_TRACE maps, stacks_0 and stacks_1, and the one-entry
 * array `active_stacks` says which one new samples write to. Every event
 * records the index it used. User space, periodically:
 *   a. flips active_stacks (k -> 1-k): from then on new samples use map 1-k;
 *   b. waits a grace period far longer than one run of this program (it runs
 *      in the perf overflow handler, which cannot sleep or be preempted, for
 *      a few microseconds), so every program that read index k has submitted
 *      its event;
 *   c. drains the ring buffer, resolving every event's stack ids from the map
 *      the event names (it resolves ids as soon as it reads an event);
 *   d. deletes every entry of map k, which is empty when it becomes active
 *      again at the next flip.
 * A sample that still used map k after (d) (only possible if a CPU stalled
 * for longer than the grace period) at worst loses its stack (counted as a
 * stack error in user space), and its entry is cleared at the next rotation.
 * Identical stacks share an id within one map, so each map holds only the
 * distinct stacks seen in one rotation period.
 *
 * Stack ids are not reused (no BPF_F_REUSE_STACKID): an id names the same
 * stack until user space clears the map, so a pending event can never resolve
 * to someone else's stack. A hash collision (-EEXIST) or a full map (-ENOMEM)
 * instead loses that one stack and is counted in CORAL_COUNTER_STACK_ERRORS.
 */
#include <linux/bpf.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>

#include "sampler.h"

char LICENSE[] SEC("license") = "GPL";

/* Profiled processes: tgid -> 1. Maintained by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CORAL_MAX_TARGETS);
	__type(key, __u32);
	__type(value, __u32);
} targets SEC(".maps");

/* The two stack maps (see "Stack map rotation" above). */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, CORAL_STACK_MAP_ENTRIES);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, CORAL_MAX_STACK_DEPTH * sizeof(__u64));
} stacks_0 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, CORAL_STACK_MAP_ENTRIES);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, CORAL_MAX_STACK_DEPTH * sizeof(__u64));
} stacks_1 SEC(".maps");

/* Index (0 or 1) of the stack map new samples write to. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} active_stacks SEC(".maps");

/* Samples on their way to user space. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, CORAL_RING_BYTES);
} events SEC(".maps");

/* CORAL_COUNTER_* counters, per CPU (summed by user space). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CORAL_COUNTER_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &which);

	if (value)
		*value += 1; /* per-CPU slot, and this program cannot nest on a CPU */
}

static __always_inline void count_stack_error(long id)
{
	/* -EFAULT: nothing to walk (a kernel stack of a user-mode sample). */
	if (id < 0 && id != -EFAULT)
		count(CORAL_COUNTER_STACK_ERRORS);
}

SEC("perf_event")
int coral_sample(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	__u32 zero = 0;
	struct coral_sample_event *event;
	__u32 *active;
	__u32 map_index;
	long user_id, kernel_id;
	__u64 now;

	if (!bpf_map_lookup_elem(&targets, &tgid))
		return 0;

	now = bpf_ktime_get_ns();

	active = bpf_map_lookup_elem(&active_stacks, &zero);
	map_index = active ? (*active & 1) : 0;
	/* Whichever register the compiler keeps the map in, the verifier follows
	 * each branch with its own constant map pointer. */
	if (map_index == 0) {
		user_id = bpf_get_stackid(ctx, &stacks_0, BPF_F_USER_STACK);
		kernel_id = bpf_get_stackid(ctx, &stacks_0, 0);
	} else {
		user_id = bpf_get_stackid(ctx, &stacks_1, BPF_F_USER_STACK);
		kernel_id = bpf_get_stackid(ctx, &stacks_1, 0);
	}
	count_stack_error(user_id);
	count_stack_error(kernel_id);

	event = bpf_ringbuf_reserve(&events, sizeof(*event), 0);
	if (!event) {
		count(CORAL_COUNTER_LOST);
		return 0;
	}
	event->ktime_ns = now;
	event->tgid = tgid;
	event->tid = (__u32)pid_tgid;
	event->user_stack_id = (__s32)user_id;
	event->kernel_stack_id = (__s32)kernel_id;
	event->cpu = bpf_get_smp_processor_id();
	event->stack_map = map_index;
	/* No wakeup: user space polls the ring buffer every few milliseconds. */
	bpf_ringbuf_submit(event, BPF_RB_NO_WAKEUP);
	count(CORAL_COUNTER_SAMPLES);
	return 0;
}
