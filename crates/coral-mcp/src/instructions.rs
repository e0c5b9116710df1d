//! The guidance an assistant reads when it connects (RFD 080: "LLM system prompts").

pub const INSTRUCTIONS: &str = "\
Coral answers \"why was this request slow?\" with CPU profiles tied to trace spans: \
agents sample CPU stacks with eBPF and attribute each sample to the request that ran.

Diagnosing a latency outlier (e.g. \"p99 is 5s but the median is 50ms\"):
1. coral_query_summary {service} (or without service to see all): request rate, error \
rate, p50/p95/p99 and the slowest traces, with their profiles' top functions if any \
were profiled. Pick the service and a threshold between p50 and p99.
2. If the slow requests have no profiles, coral_profile_trace_trigger {service, \
min_duration_ms: that threshold, count: 10}: Coral profiles the next matching requests \
plus a random baseline of the others. It waits up to a minute; if the trigger is still \
collecting, poll coral_trigger_status {trigger_id} (or coral_cancel_trigger to stop).
3. coral_query_profile_compare {service, cohort_a_filter: \"duration > 1s\", \
cohort_b_filter: \"duration < 100ms\"}: the functions hotter in the slow cohort, with \
significance. Filters: duration (1s, 250ms; a bare number is ms), status (500, 5xx, \
error), url ~ \"/checkout*\", route, name, attr.<key>; joined with and/or/not.
4. coral_query_trace_profile {trace_id} for one request's profile, to show a concrete \
example of the function found.

Reading the evidence:
- significance high/medium/low comes from a per-function Mann-Whitney U test with \
requests as the unit and Benjamini-Hochberg correction (q-value) plus an effect-size \
floor. Only 'high' (and, with care, 'medium') supports a root cause. 'low'/'none' is not \
evidence of a difference.
- delta is in percentage points of request CPU time (+ hotter in cohort A); ms/req is \
mean CPU per request in the function, inclusive.
- precision 'thread' attributes samples to the request's own thread; 'process' mixes in \
other requests that ran concurrently in the process: treat it as approximate.
- A profile with fewer than 5 samples cannot say where time went. CPU time far below \
the request's duration means it mostly waited (I/O, locks, downstream calls), which CPU \
profiles do not show: look at the trace's spans (coral_query_traces) instead.

Do not conclude:
- a root cause from one request, from fewer than ~5 requests per cohort, or from \
warnings about weak evidence;
- that a function is the cause because it is hot in both cohorts (look at the delta);
- anything about memory: only CPU is collected today.
When evidence is weak, say so and propose collecting more (a trigger with a larger \
count) rather than guessing.";
