// SPDX-License-Identifier: GPL-2.0
/*
 * Coral CPU sampler.
 *
 * User space (crates/coral-sampler) attaches `coral_sample` to a software
 * CPU-clock perf event (PERF_TYPE_SOFTWARE / PERF_COUNT_SW_CPU_CLOCK, in
 * sample-frequency mode) on every online CPU. On each tick it:
 *   1. returns at once unless the current process (tgid) is in `targets`;
 *   2. takes the time (bpf_ktime_get_ns: CLOCK_MONOTONIC) and the thread's
 *      user registers;
 *   3. walks the kernel stack (bpf_get_stack) and takes the user stack:
 *      - CORAL_UNWIND_COPY (default): copies the top of the user stack, from sp
 *        up to CORAL_STACK_COPY_BYTES or the first unreadable page, which user
 *        space unwinds with the modules' unwind tables (.eh_frame), as
 *        `perf --call-graph dwarf` does;
 *      - CORAL_UNWIND_FP: the kernel's frame-pointer walk (bpf_get_stack);
 *   4. sends one variable-length event (sampler.h) through the `events` ring
 *      buffer, or counts it as lost when the ring buffer is full. The next
 *      event of the CPU says how many were lost since, of which process, and
 *      from when, so user space knows which requests were not sampled whole.
 *
 * Frames and stack bytes go into the event itself (no stack maps): nothing is
 * lost to hash collisions or a full map, and nothing has to be rotated.
 */
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>

#include "sampler.h"

/* Only the field read here; its offset is relocated against the running
 * kernel's BTF (CO-RE). */
struct task_struct {
	__u64 self_exec_id;
} __attribute__((preserve_access_index));

char LICENSE[] SEC("license") = "GPL";

/* Keeps clang from dropping a bound check the verifier needs (it can prove the
 * value in range; the verifier cannot). */
#define verifier_bound(var, max)                  \
	do {                                      \
		asm volatile("" : "+r"(var));     \
		if ((var) > (max))                \
			(var) = (max);            \
	} while (0)

/* Set by user space at load time (CORAL_UNWIND_*). */
volatile const __u32 coral_unwind_mode = CORAL_UNWIND_COPY;

/* Profiled processes: tgid -> 1. Maintained by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CORAL_MAX_TARGETS);
	__type(key, __u32);
	__type(value, __u32);
} targets SEC(".maps");

/* Where an event is assembled before it is copied into the ring buffer, one
 * per CPU (indexed by CPU id: a per-CPU array cannot hold values over 32 KiB;
 * user space sizes it to the possible CPUs). The data area has slack beyond
 * the largest event so that the verifier can bound every offset with a mask. */
struct scratch {
	struct coral_sample_event event;
	__u8 data[2 * 1024 + CORAL_STACK_COPY_BYTES + 2 * CORAL_PAGE_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* Samples of this CPU lost since its last event. */
struct lost_state {
	__u64 count;
	__u64 since_ns;
	__u32 tgid;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lost_state);
} lost SEC(".maps");

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

/* The registers the thread returns to user space with. In a sample taken in
 * user mode they are the interrupted ones; in kernel mode (a system call, a
 * page fault) they are saved at the top of the thread's kernel stack. */
static __always_inline void user_regs(struct bpf_perf_event_data *ctx,
				      struct coral_sample_event *event)
{
	struct pt_regs regs;

	if ((ctx->regs.cs & 3) == 3) {
		event->ip = ctx->regs.rip;
		event->sp = ctx->regs.rsp;
		event->bp = ctx->regs.rbp;
		return;
	}
	long saved = bpf_task_pt_regs(bpf_get_current_task_btf());

	if (!saved || bpf_probe_read_kernel(&regs, sizeof(regs), (void *)saved)) {
		event->ip = event->sp = event->bp = 0;
		return;
	}
	event->ip = regs.rip;
	event->sp = regs.rsp;
	event->bp = regs.rbp;
}

/* The current thread's exec count: it changes when the process execs. */
static __always_inline __u64 exec_id(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 id = 0;

	bpf_probe_read_kernel(&id, sizeof(id),
			      __builtin_preserve_access_index(&task->self_exec_id));
	return id;
}

/* Copies user memory from sp upwards, a page at a time, until
 * CORAL_STACK_COPY_BYTES or the first page that cannot be read (the end of the
 * stack's mapping, or a page not resident). Returns the bytes copied. */
static __always_inline __u64 copy_stack(__u8 *to, __u64 sp)
{
	__u64 copied = 0;

	for (int i = 0; i < CORAL_STACK_COPY_BYTES / CORAL_PAGE_BYTES + 1; i++) {
		__u64 at = sp + copied;
		__u64 len = CORAL_PAGE_BYTES - (at & (CORAL_PAGE_BYTES - 1));

		if (copied >= CORAL_STACK_COPY_BYTES)
			break;
		if (len > CORAL_STACK_COPY_BYTES - copied)
			len = CORAL_STACK_COPY_BYTES - copied;
		/* The masks change nothing (copied < 32 KiB, len <= 4 KiB); they bound
		 * the offsets for the verifier, within the scratch area's slack. */
		if (bpf_probe_read_user(to + (copied & (CORAL_STACK_COPY_BYTES - 1)),
					len & (2 * CORAL_PAGE_BYTES - 1), (void *)at))
			break;
		copied += len;
	}
	return copied;
}

SEC("perf_event")
int coral_sample(struct bpf_perf_event_data *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	__u32 zero = 0, cpu = bpf_get_smp_processor_id();
	struct coral_sample_event *event;
	struct lost_state *pending;
	struct scratch *s;
	__u64 kernel_bytes = 0, user_bytes = 0, stack_bytes = 0;
	__u64 size;
	long n;

	if (!bpf_map_lookup_elem(&targets, &tgid))
		return 0;
	s = bpf_map_lookup_elem(&scratch, &cpu);
	pending = bpf_map_lookup_elem(&lost, &zero);
	if (!s || !pending)
		return 0;
	event = &s->event;
	event->ktime_ns = bpf_ktime_get_ns();
	event->tgid = tgid;
	event->tid = (__u32)pid_tgid;
	event->cpu = cpu;
	user_regs(ctx, event);
	event->exec_id = exec_id();

	n = bpf_get_stack(ctx, s->data, CORAL_FRAMES_BYTES, 0);
	if (n > 0)
		kernel_bytes = n & 1023;
	else if (n < 0 && n != -EFAULT)
		count(CORAL_COUNTER_STACK_ERRORS);

	if (coral_unwind_mode == CORAL_UNWIND_FP) {
		n = bpf_get_stack(ctx, s->data + kernel_bytes, CORAL_FRAMES_BYTES,
				  BPF_F_USER_STACK);
		if (n > 0)
			user_bytes = n & 1023;
		else if (n < 0 && n != -EFAULT)
			count(CORAL_COUNTER_STACK_ERRORS);
	} else if (event->sp) {
		stack_bytes = copy_stack(s->data + kernel_bytes, event->sp);
		verifier_bound(stack_bytes, CORAL_STACK_COPY_BYTES);
		if (!stack_bytes)
			count(CORAL_COUNTER_STACK_ERRORS);
	}
	event->kernel_bytes = kernel_bytes;
	event->user_bytes = user_bytes;
	event->stack_bytes = stack_bytes;
	event->lost = pending->count;
	event->lost_since_ns = pending->since_ns;
	event->lost_tgid = pending->tgid;

	size = sizeof(*event) + kernel_bytes + user_bytes + stack_bytes;
	/* No wakeup: user space polls the ring buffer every few milliseconds. */
	if (bpf_ringbuf_output(&events, s, size, BPF_RB_NO_WAKEUP)) {
		count(CORAL_COUNTER_LOST);
		if (!pending->count) {
			pending->since_ns = event->ktime_ns;
			pending->tgid = tgid;
		} else if (pending->tgid != tgid) {
			pending->tgid = 0;
		}
		pending->count += 1;
		return 0;
	}
	pending->count = 0;
	pending->since_ns = 0;
	pending->tgid = 0;
	count(CORAL_COUNTER_SAMPLES);
	return 0;
}
