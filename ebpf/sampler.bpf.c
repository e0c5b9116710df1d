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
 *
 * Off-CPU intervals (targets whose `targets` value has CORAL_TARGET_OFF_CPU):
 * user space attaches `coral_switch_out` (tp_btf/sched_switch) and
 * `coral_switch_in` (tp_btf/sched_exit_tp) or `coral_switch_in_kprobe` (a
 * kprobe on finish_task_switch, where that tracepoint does not exist) only
 * while such a target exists.
 *   - switch-out: a target thread leaving the CPU gets an `offcpu_start` entry
 *     {ktime, state}: the task state it left in (prev_state), with
 *     CORAL_STATE_PREEMPTED when it was preempted or still runnable (a wait on
 *     the run queue, not a block).
 *     It also notes the thread's run-queue time so far (sched_info.run_delay),
 *     so the switch-in can tell how much of the wait was spent runnable, after
 *     a wake-up, waiting for a CPU (event.runqueue_ns).
 *   - switch-in: the sched_exit_tp tracepoint at the end of __schedule
 *     (kernels >= 6.16), else a kprobe on finish_task_switch, runs in the
 *     thread switched in, so its kernel stack (__schedule <- schedule <- what
 *     it waited in) and its saved user registers are those of the wait. The entry
 *     is taken; d = now - start. With T = coral_offcpu_min_wait_ns:
 *       d >= T: one event of weight d;
 *       d <  T: one event of weight T with probability d / T, else none.
 *     The expected weight sent is d either way, so the weights summed per stack
 *     are an unbiased estimate of the time blocked there, while a thread sends
 *     at most about one event per T of wall time.
 *   - a per-CPU token bucket (coral_offcpu_event_cost_ns of credit per event,
 *     100 ms of credit at most) bounds the off-CPU events per second; an event
 *     over it is not built and is counted as lost, like a full ring buffer.
 * `offcpu_start` is task-local storage: found from the task itself (no hash
 * to search on every switch of the system) and freed with the task. An entry
 * older than `offcpu_epoch` (when user space last attached the programs) was
 * left by an earlier attachment and is ignored.
 *
 * Memory made resident (targets whose `targets` value has CORAL_TARGET_MEMORY):
 * user space attaches, only while such a target exists:
 *   - `coral_fault_sample` to the kernel's own resolved-fault counters
 *     (PERF_COUNT_SW_PAGE_FAULTS_MIN and _MAJ, one of each per CPU) with a sample
 *     period of P = coral_memory_fault_period: the kernel counts every fault (a
 *     per-CPU increment) and runs the program on every P-th fault of the CPU,
 *     after the fault mapped its page. For a target's thread it sends one event of
 *     weight P x 4 KiB: each fault has probability 1/P of being the sampled one,
 *     so the weights summed per stack estimate, without bias, the bytes the
 *     stack's faults mapped. The event carries the user stack that faulted (the
 *     perf event's registers in user mode; the saved user registers when the
 *     fault was the kernel's, copying into a user buffer), no kernel stack.
 *   - `coral_huge_alloc` (tp_btf/mm_page_alloc) on every movable allocation of
 *     a huge page (order >= 9: 2 MiB) by a target's thread, which is a
 *     transparent huge page its fault maps: one event of weight its size (state =
 *     its order), since a huge page counted as one 4 KiB fault would be 512 times
 *     too small. Smaller allocations return at the first comparison.
 *   A per-CPU token bucket bounds the memory events like the off-CPU ones.
 * The kernel's per-fault cost is its own counter increment and the allocation
 * program's first comparison; the rest runs only on sampled faults and huge
 * pages.
 */
#include <linux/bpf.h>
#include <linux/bpf_perf_event.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>

#include "sampler.h"

/* Only the fields read here; their offsets are relocated against the running
 * kernel's BTF (CO-RE). */
struct sched_info {
	/* Time spent runnable on a run queue, in all: updated when the task
	 * is switched in (CONFIG_SCHED_INFO; stays 0 without it). */
	unsigned long long run_delay;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	__u64 self_exec_id;
	struct sched_info sched_info;
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
/* Off-CPU intervals shorter than this are sampled (see the top); set at load. */
volatile const __u64 coral_offcpu_min_wait_ns = 1000000;
/* Token bucket credit one off-CPU event takes: 1e9 / (events per second per
 * CPU); set at load. */
volatile const __u64 coral_offcpu_event_cost_ns = 500000;
/* Faults per memory event (the perf events' sample period, see the top); set at
 * load. */
volatile const __u64 coral_memory_fault_period = 127;
/* Token bucket credit one memory event takes; set at load. */
volatile const __u64 coral_memory_event_cost_ns = 500000;

/* Profiled processes: tgid -> CORAL_TARGET_* flags. Maintained by user space. */
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

/* Samples of this CPU lost since its last event: how many, since when, of
 * which process and thread (0: several). */
struct lost_state {
	__u64 count;
	__u64 since_ns;
	__u32 tgid;
	__u32 tid;
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

/* Target threads switched out: when (0: not out), how, and their run-queue time
 * so far (sched_info.run_delay). */
struct offcpu_start {
	__u64 ktime_ns;
	__u64 run_delay_ns;
	__u32 state;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct offcpu_start);
} offcpu_start SEC(".maps");

/* ktime when user space last attached the off-CPU programs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} offcpu_epoch SEC(".maps");

/* Per-CPU token buckets of events: credit in nanoseconds; one per BUDGET_*. */
struct budget {
	__u64 credit_ns;
	__u64 last_ns;
};

#define BUDGET_OFF_CPU 0
#define BUDGET_MEMORY 1

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct budget);
} budget SEC(".maps");

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

/* The user registers saved at the top of the current thread's kernel stack
 * (what it returns to user space with); 0 when unreadable. */
static __always_inline void saved_user_regs(struct coral_sample_event *event)
{
	struct pt_regs regs;
	long saved = bpf_task_pt_regs(bpf_get_current_task_btf());

	if (!saved || bpf_probe_read_kernel(&regs, sizeof(regs), (void *)saved)) {
		event->ip = event->sp = event->bp = 0;
		return;
	}
	event->ip = regs.rip;
	event->sp = regs.rsp;
	event->bp = regs.rbp;
}

/* The current thread's run-queue time so far (the kprobe path cannot
 * dereference the task directly). */
static __always_inline __u64 current_run_delay(void)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 delay = 0;

	bpf_probe_read_kernel(&delay, sizeof(delay),
			      __builtin_preserve_access_index(&task->sched_info.run_delay));
	return delay;
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

/* Counts an event that was not sent (ring buffer full, or over the off-CPU
 * budget); `since_ns` is the earliest time it covers. */
static __always_inline void note_lost(struct lost_state *pending, __u32 tgid,
				      __u32 tid, __u64 since_ns)
{
	if (!pending->count) {
		pending->since_ns = since_ns;
		pending->tgid = tgid;
		pending->tid = tid;
	} else {
		if (since_ns < pending->since_ns)
			pending->since_ns = since_ns;
		if (pending->tgid != tgid)
			pending->tgid = 0;
		if (pending->tid != tid)
			pending->tid = 0;
	}
	pending->count += 1;
}

/* Completes the event the caller started in `s` (time, ids, CPU, user
 * registers, kind, state, off-CPU start and weight) with the exec count, the
 * kernel (unless NO_KERNEL_STACK) and user stacks and the pending losses, and
 * sends it. `ctx` is the program's context, for bpf_get_stack; kernel_skip, how
 * many leaf kernel frames are the probe's own. Returns whether it was sent. */
#define NO_KERNEL_STACK (~0ULL)
static __always_inline int send_event(void *ctx, struct scratch *s,
				      struct lost_state *pending, __u64 kernel_skip)
{
	struct coral_sample_event *event = &s->event;
	__u64 kernel_bytes = 0, user_bytes = 0, stack_bytes = 0;
	__u64 size;
	long n;

	event->exec_id = exec_id();
	if (kernel_skip != NO_KERNEL_STACK) {
		n = bpf_get_stack(ctx, s->data, CORAL_FRAMES_BYTES,
				  kernel_skip & BPF_F_SKIP_FIELD_MASK);
		if (n > 0)
			kernel_bytes = n & 1023;
		else if (n < 0 && n != -EFAULT)
			count(CORAL_COUNTER_STACK_ERRORS);
	}

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
	event->lost_tid = pending->tid;
	event->reserved = 0;

	size = sizeof(*event) + kernel_bytes + user_bytes + stack_bytes;
	/* No wakeup: user space polls the ring buffer every few milliseconds. */
	if (bpf_ringbuf_output(&events, s, size, BPF_RB_NO_WAKEUP)) {
		count(CORAL_COUNTER_LOST);
		note_lost(pending, event->tgid, event->tid,
			  event->kind == CORAL_KIND_OFF_CPU ? event->off_cpu_start_ns
							    : event->ktime_ns);
		return 0;
	}
	pending->count = 0;
	pending->since_ns = 0;
	pending->tgid = 0;
	pending->tid = 0;
	count(CORAL_COUNTER_SAMPLES);
	return 1;
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
	/* Interrupted in user mode: those are the user registers; in kernel mode
	 * (a system call, a page fault) they are saved on the kernel stack. */
	if ((ctx->regs.cs & 3) == 3) {
		event->ip = ctx->regs.rip;
		event->sp = ctx->regs.rsp;
		event->bp = ctx->regs.rbp;
	} else {
		saved_user_regs(event);
	}
	event->kind = CORAL_KIND_CPU;
	event->state = 0;
	event->off_cpu_start_ns = 0;
	event->weight = 0;
	event->runqueue_ns = 0;
	send_event(ctx, s, pending, 0);
	return 0;
}

/* Whether one more event of `cost_ns` fits this CPU's budget `which` (and takes
 * it); the bucket holds at most `burst_ns` of credit. */
static __always_inline int budget_take(__u32 which, __u64 cost_ns, __u64 burst_ns,
				       __u64 now)
{
	struct budget *b = bpf_map_lookup_elem(&budget, &which);
	__u64 cap = cost_ns > burst_ns ? cost_ns : burst_ns;

	if (!b)
		return 0;
	b->credit_ns += now - b->last_ns;
	b->last_ns = now;
	if (b->credit_ns > cap)
		b->credit_ns = cap;
	if (b->credit_ns < cost_ns)
		return 0;
	b->credit_ns -= cost_ns;
	return 1;
}

SEC("tp_btf/sched_switch")
int coral_switch_out(unsigned long long *ctx)
{
	/* (bool preempt, struct task_struct *prev, struct task_struct *next,
	 *  unsigned int prev_state) */
	int preempt = (int)(__u8)ctx[0];
	struct task_struct *prev = (struct task_struct *)ctx[1];
	__u32 prev_state = (__u32)ctx[3];
	__u32 tgid = prev->tgid;
	__u32 *flags = bpf_map_lookup_elem(&targets, &tgid);
	struct offcpu_start *start;

	if (!flags || !(*flags & CORAL_TARGET_OFF_CPU))
		return 0;
	start = bpf_task_storage_get(&offcpu_start, prev, 0,
				     BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!start)
		return 0;
	start->ktime_ns = bpf_ktime_get_ns();
	start->run_delay_ns = prev->sched_info.run_delay;
	start->state = prev_state & ~CORAL_STATE_PREEMPTED;
	if (preempt || prev_state == 0)
		start->state |= CORAL_STATE_PREEMPTED;
	return 0;
}

/* The switch-in side, in the context of the thread switched in (current). */
static __always_inline int switch_in(void *ctx, __u64 kernel_skip)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32, tid = (__u32)pid_tgid;
	__u32 zero = 0, cpu, *flags;
	struct offcpu_start *found;
	struct coral_sample_event *event;
	struct lost_state *pending;
	struct scratch *s;
	__u64 now, start_ns, wait, weight, threshold = coral_offcpu_min_wait_ns;
	__u64 *epoch, run_delay_ns, queued;
	__u32 state;

	found = bpf_task_storage_get(&offcpu_start, bpf_get_current_task_btf(), 0, 0);
	if (!found || !found->ktime_ns)
		return 0;
	start_ns = found->ktime_ns;
	run_delay_ns = found->run_delay_ns;
	state = found->state;
	found->ktime_ns = 0;
	epoch = bpf_map_lookup_elem(&offcpu_epoch, &zero);
	if (!epoch || start_ns < *epoch)
		return 0;
	/* The process may have stopped being a target while the thread was out. */
	flags = bpf_map_lookup_elem(&targets, &tgid);
	if (!flags || !(*flags & CORAL_TARGET_OFF_CPU))
		return 0;
	now = bpf_ktime_get_ns();
	if (now <= start_ns)
		return 0;
	wait = now - start_ns;
	weight = wait;
	if (wait < threshold) {
		/* Sent with probability wait / threshold, weighing threshold. */
		if ((((__u64)bpf_get_prandom_u32() * threshold) >> 32) >= wait)
			return 0;
		weight = threshold;
	}
	pending = bpf_map_lookup_elem(&lost, &zero);
	if (!pending)
		return 0;
	if (!budget_take(BUDGET_OFF_CPU, coral_offcpu_event_cost_ns,
			 CORAL_OFFCPU_BURST_NS, now)) {
		count(CORAL_COUNTER_OFFCPU_THROTTLED);
		note_lost(pending, tgid, tid, start_ns);
		return 0;
	}
	cpu = bpf_get_smp_processor_id();
	s = bpf_map_lookup_elem(&scratch, &cpu);
	if (!s)
		return 0;
	event = &s->event;
	event->ktime_ns = now;
	event->tgid = tgid;
	event->tid = tid;
	event->cpu = cpu;
	/* The thread is in the kernel (in schedule()): its user registers are
	 * the saved ones. */
	saved_user_regs(event);
	event->kind = CORAL_KIND_OFF_CPU;
	event->state = state;
	event->off_cpu_start_ns = start_ns;
	event->weight = weight;
	/* The scheduler counted the wait on the run queue (after a wake-up, or all
	 * of it when preempted) when it switched the thread in, just before. */
	queued = current_run_delay();
	queued = queued > run_delay_ns ? queued - run_delay_ns : 0;
	event->runqueue_ns = queued < wait ? queued : wait;
	if (send_event(ctx, s, pending, kernel_skip))
		count(CORAL_COUNTER_OFFCPU_EVENTS);
	return 0;
}

/* Switch-in, kernels >= 6.16: the tracepoint at the end of __schedule(), which
 * runs in the thread switched in, on the stack it waited in. */
SEC("tp_btf/sched_exit_tp")
int coral_switch_in(unsigned long long *ctx)
{
	/* The stack starts in __schedule, not in this program and bpf_trace_run1. */
	return switch_in(ctx, 2);
}

/* Switch-in, older kernels: a kprobe on finish_task_switch (or its compiler
 * copy, finish_task_switch.isra.N), also run by the thread switched in. */
SEC("kprobe")
int coral_switch_in_kprobe(struct pt_regs *ctx)
{
	return switch_in(ctx, 0);
}

/* Whether `tgid` is a memory target. */
static __always_inline int memory_target(__u32 tgid)
{
	__u32 *flags = bpf_map_lookup_elem(&targets, &tgid);

	return flags && (*flags & CORAL_TARGET_MEMORY);
}

/* Sends a memory event of the current thread: `bytes` made resident in pages of
 * `order`, the user stack as `event` has it. Over the budget: counted as lost. */
static __always_inline int send_memory(void *ctx, struct scratch *s,
				       struct lost_state *pending, __u32 order,
				       __u64 bytes, __u64 now)
{
	struct coral_sample_event *event = &s->event;

	if (!budget_take(BUDGET_MEMORY, coral_memory_event_cost_ns,
			 CORAL_MEMORY_BURST_NS, now)) {
		count(CORAL_COUNTER_MEMORY_THROTTLED);
		note_lost(pending, event->tgid, event->tid, now);
		return 0;
	}
	event->ktime_ns = now;
	event->kind = CORAL_KIND_MEMORY;
	event->state = order;
	event->off_cpu_start_ns = 0;
	event->weight = bytes;
	event->runqueue_ns = 0;
	if (send_event(ctx, s, pending, NO_KERNEL_STACK))
		count(CORAL_COUNTER_MEMORY_EVENTS);
	return 0;
}

/* Starts a memory event of the current thread in this CPU's scratch area. */
static __always_inline struct scratch *memory_scratch(__u64 pid_tgid,
						      struct lost_state **pending)
{
	__u32 zero = 0, cpu = bpf_get_smp_processor_id();
	struct scratch *s = bpf_map_lookup_elem(&scratch, &cpu);

	*pending = bpf_map_lookup_elem(&lost, &zero);
	if (!s || !*pending)
		return 0;
	s->event.tgid = pid_tgid >> 32;
	s->event.tid = (__u32)pid_tgid;
	s->event.cpu = cpu;
	return s;
}

/* Every P-th resolved page fault of the CPU (see the top). */
SEC("perf_event")
int coral_fault_sample(struct bpf_perf_event_data *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct lost_state *pending;
	struct scratch *s;

	if (!memory_target(pid_tgid >> 32))
		return 0;
	s = memory_scratch(pid_tgid, &pending);
	if (!s)
		return 0;
	/* A fault in user mode: those are the user registers; in the kernel (copying
	 * into a user buffer) they are saved on the kernel stack. */
	if ((ctx->regs.cs & 3) == 3) {
		s->event.ip = ctx->regs.rip;
		s->event.sp = ctx->regs.rsp;
		s->event.bp = ctx->regs.rbp;
	} else {
		saved_user_regs(&s->event);
	}
	return send_memory(ctx, s, pending, 0,
			   coral_memory_fault_period * CORAL_PAGE_BYTES,
			   bpf_ktime_get_ns());
}

/* The order of a PMD-sized transparent huge page (2 MiB of 4 KiB pages). */
#define CORAL_HPAGE_PMD_ORDER 9
/* __GFP_MOVABLE: user memory (anonymous, page cache, huge pages); page tables and
 * kernel buffers are not movable. */
#define CORAL_GFP_MOVABLE 0x08u

SEC("tp_btf/mm_page_alloc")
int coral_huge_alloc(unsigned long long *ctx)
{
	/* (struct page *page, unsigned int order, gfp_t gfp_flags, int migratetype) */
	__u32 order = (__u32)ctx[1];
	__u64 pid_tgid;
	struct lost_state *pending;
	struct scratch *s;

	if (order < CORAL_HPAGE_PMD_ORDER || order > 18 || !ctx[0] ||
	    !((__u32)ctx[2] & CORAL_GFP_MOVABLE))
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	if (!memory_target(pid_tgid >> 32))
		return 0;
	s = memory_scratch(pid_tgid, &pending);
	if (!s)
		return 0;
	/* The thread is in the kernel: the registers it faulted (or entered it) with. */
	saved_user_regs(&s->event);
	return send_memory(ctx, s, pending, order, (__u64)CORAL_PAGE_BYTES << order,
			   bpf_ktime_get_ns());
}
