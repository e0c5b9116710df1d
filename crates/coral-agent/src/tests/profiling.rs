//! CPU profiling: sessions pushed by the (fake) colony, samples from a `FakeSampler`
//! holding real addresses of functions of this test binary, and the process of this
//! test as the profiled service (so that `/proc/<pid>` exists and symbolization works).

use super::{FakeColony, PATIENCE, TestAgent, test_config};
use crate::otlp::tests::{TRACE_ID, kv, request, string};
use crate::{AgentConfig, ServeOptions};
use coral_analysis::profile::samples_to_cpu_ns;
use coral_client::v1;
use coral_sampler::{FakeSampler, Sample, Sampler, SamplerError};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub(super) const MS: i64 = 1_000_000;

#[inline(never)]
pub(super) fn hot_fn(n: u64) -> u64 {
    let mut x = std::hint::black_box(n);
    for i in 0..n {
        x = x.wrapping_mul(31).wrapping_add(i);
    }
    x
}

#[inline(never)]
pub(super) fn other_fn(n: u64) -> u64 {
    let mut x = std::hint::black_box(n);
    for i in 0..n {
        x ^= x.rotate_left(7).wrapping_add(i);
    }
    x
}

#[inline(never)]
fn caller_fn(n: u64) -> u64 {
    std::hint::black_box(hot_fn(n)) + std::hint::black_box(other_fn(n))
}

/// A user stack as the kernel walks it, leaf first: `leaf` called from `caller_fn`
/// (a return address inside it).
pub(super) fn stack(leaf: fn(u64) -> u64) -> Vec<u64> {
    vec![
        leaf as *const () as u64 + 4,
        caller_fn as *const () as u64 + 16,
    ]
}

pub(super) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

pub(super) fn pid() -> u32 {
    std::process::id()
}

pub(super) fn sample(tgid: u32, tid: u32, time: i64, leaf: fn(u64) -> u64) -> Sample {
    Sample::new(tgid, tid, time, &stack(leaf), &[])
}

pub(super) fn factory(sampler: &Arc<FakeSampler>) -> ServeOptions {
    let sampler = sampler.clone();
    ServeOptions {
        sampler_factory: Arc::new(move |_| Ok(sampler.clone() as Arc<dyn Sampler>)),
        ..ServeOptions::default()
    }
}

fn session(id: &str, service: &str, start: i64, duration_ms: i64) -> v1::ProfileSessionCommand {
    v1::ProfileSessionCommand {
        session_id: id.to_string(),
        service: service.to_string(),
        frequency_hz: 99,
        start_time_unix_nano: start,
        duration_ns: duration_ms * MS,
    }
}

/// A server span `[start, start + duration]` with span id `[n; 8]`.
pub(super) fn request_span(n: u8, start: i64, duration_ms: i64, thread: Option<i64>) -> OtlpSpan {
    OtlpSpan {
        trace_id: TRACE_ID.to_vec(),
        span_id: vec![n; 8],
        name: format!("GET /{n}"),
        kind: 2,
        start_time_unix_nano: start as u64,
        end_time_unix_nano: (start + duration_ms * MS) as u64,
        attributes: thread
            .map(|t| vec![kv("thread.id", Value::IntValue(t))])
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// Exports spans of `service` from process `pid` over OTLP/gRPC.
pub(super) async fn export(agent: &TestAgent, service: &str, pid: u32, spans: Vec<OtlpSpan>) {
    let mut client = TraceServiceClient::connect(agent.grpc_url()).await.unwrap();
    let resource = vec![
        kv("service.name", string(service)),
        kv("process.pid", Value::IntValue(i64::from(pid))),
    ];
    client
        .export(request(resource, spans))
        .await
        .expect("the agent takes the spans");
}

/// Tells the agent that `service` runs as process `pid` (one span, long ago).
pub(super) async fn announce(agent: &TestAgent, service: &str, pid: u32) {
    let long_ago = now_ns() - 3_600_000 * MS;
    export(
        agent,
        service,
        pid,
        vec![request_span(200, long_ago, 1, None)],
    )
    .await;
}

/// Waits until the fake sampler's targets are `expected`.
pub(super) async fn wait_for_targets(sampler: &FakeSampler, expected: &[u32]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sampler.targets() != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "targets are {:?}, expected {expected:?}",
            sampler.targets()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(super) fn function_names(profile: &v1::Profile) -> Vec<String> {
    profile.frames.iter().map(|f| f.function.clone()).collect()
}

pub(super) fn total_samples(profile: &v1::Profile) -> u64 {
    profile.stacks.iter().map(|s| s.samples).sum()
}

/// The profile's stacks as function names, root first.
fn stacks(profile: &v1::Profile) -> Vec<Vec<String>> {
    profile
        .stacks
        .iter()
        .map(|s| {
            s.frame_ids
                .iter()
                .map(|&i| profile.frames[i as usize].function.clone())
                .collect()
        })
        .collect()
}

fn trace_profile(colony: &FakeColony, n: u8) -> v1::TraceProfile {
    colony.with(|c| {
        c.trace_profiles
            .iter()
            .find(|p| p.span_id == vec![n; 8])
            .cloned()
            .unwrap_or_else(|| panic!("no profile of span {n}"))
    })
}

#[tokio::test]
async fn a_session_samples_the_service_and_reports_its_profile() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let agent = TestAgent::start_with(test_config(&colony.url()), factory(&sampler)).await;
    // The agent learns the service's process from its spans.
    announce(&agent, "checkout", pid()).await;
    let start = now_ns() - 500 * MS;

    let command = session("s-1", "checkout", start, 1500);
    colony.push_session(command.clone());
    colony.push_session(command); // a duplicate, as after a reconnect: ignored
    wait_for_targets(&sampler, &[pid()]).await;
    assert_eq!(sampler.stats().frequency_hz, 99);

    let mut samples: Vec<Sample> = (0..5)
        .map(|i| sample(pid(), pid(), start + (100 + i * 100) * MS, hot_fn))
        .collect();
    samples.push(sample(pid(), pid(), start - 100 * MS, other_fn)); // before the session
    samples.push(sample(1, 1, start + 200 * MS, other_fn)); // another process
    sampler.push(samples);

    colony
        .wait_until("the session report", |c| !c.reports.is_empty())
        .await;
    let report = colony.with(|c| c.reports[0].clone());
    assert_eq!(report.session_id, "s-1");
    assert_eq!(report.agent_id, agent.agent_id);
    assert_eq!(report.node, "test-node");
    assert_eq!(report.processes, 1);
    assert_eq!(report.error, "");
    let profile = report.profile.expect("a profile");
    assert_eq!(total_samples(&profile), 5, "{profile:?}");
    let names = function_names(&profile);
    assert!(names.iter().any(|n| n.contains("hot_fn")), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("other_fn")), "{names:?}");
    // Root first: the caller below the function it called.
    let stack = &stacks(&profile)[0];
    let caller = stack.iter().position(|n| n.contains("caller_fn"));
    let leaf = stack.iter().position(|n| n.contains("hot_fn"));
    assert!(caller.is_some() && caller < leaf, "{stack:?}");
    assert_eq!(profile.stacks[0].cpu_ns, samples_to_cpu_ns(5, 99));

    // Sampling stopped (the perf events detach), and the duplicate got no report.
    wait_for_targets(&sampler, &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(colony.with(|c| c.reports.len()), 1);
    let counters = agent.stats.profiling();
    assert_eq!((counters.sessions, counters.session_errors), (1, 0));
    assert_eq!(counters.samples, 7);
    agent.stop().await.unwrap();
}

/// A session longer than the ring keeps samples still reports all of them: the
/// session profile is folded as samples are drained, not cut from the ring at the end.
#[tokio::test]
async fn a_session_longer_than_the_ring_keeps_every_sample() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let agent = TestAgent::start_with(test_config(&colony.url()), factory(&sampler)).await;
    announce(&agent, "checkout", pid()).await;
    let horizon = crate::profiler::RING_HORIZON.as_millis() as i64;
    let start = now_ns() - (horizon + 30_000) * MS;
    colony.push_session(session("s-long", "checkout", start, horizon + 31_000));
    wait_for_targets(&sampler, &[pid()]).await;
    // Samples from the session's first seconds, older than the ring's horizon.
    sampler.push((0..4).map(|i| sample(pid(), pid(), start + (1_000 + i * 10) * MS, hot_fn)));
    colony
        .wait_until("the session report", |c| !c.reports.is_empty())
        .await;
    let profile = colony
        .with(|c| c.reports[0].profile.clone())
        .expect("a profile");
    assert_eq!(total_samples(&profile), 4, "{profile:?}");
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn requests_with_a_thread_id_get_their_own_threads_samples() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let agent = TestAgent::start_with(test_config(&colony.url()), factory(&sampler)).await;
    let now = now_ns();
    announce(&agent, "checkout", pid()).await;
    colony.push_session(session("s-2", "checkout", now - 1_000 * MS, 3_000));
    wait_for_targets(&sampler, &[pid()]).await;

    let t0 = now - 800 * MS; // both requests run from t0 to t0 + 200 ms
    sampler.push([
        sample(pid(), 101, t0 + 10 * MS, hot_fn),
        sample(pid(), 102, t0 + 20 * MS, other_fn),
        sample(pid(), 101, t0 + 50 * MS, hot_fn),
        sample(pid(), 102, t0 + 120 * MS, other_fn),
        sample(pid(), 101, t0 + 200 * MS, hot_fn),
        sample(pid(), 101, t0 + 300 * MS, other_fn), // after both requests
    ]);
    export(
        &agent,
        "checkout",
        pid(),
        vec![
            request_span(1, t0, 200, Some(101)),
            request_span(2, t0, 200, Some(102)),
            // Before the session: not profiled.
            request_span(7, now - 5_000 * MS, 200, Some(101)),
        ],
    )
    .await;

    colony
        .wait_until("two request profiles", |c| c.trace_profiles.len() >= 2)
        .await;
    let a = trace_profile(&colony, 1);
    assert_eq!(a.precision, "thread");
    assert_eq!(a.thread_id, Some(101));
    assert_eq!(a.pid, Some(i64::from(pid())));
    assert_eq!(a.service, "checkout");
    assert_eq!(a.span_name, "GET /1");
    assert_eq!((a.start_time_unix_nano, a.duration_ns), (t0, 200 * MS));
    assert_eq!(a.node, "test-node");
    assert_eq!(a.frequency_hz, 99);
    assert_eq!(a.source, "session:s-2");
    assert_eq!(a.concurrent_requests, 1);
    let profile = a.profile.unwrap();
    assert_eq!(total_samples(&profile), 3);
    let names = function_names(&profile);
    assert!(names.iter().any(|n| n.contains("hot_fn")), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("other_fn")), "{names:?}");

    let b = trace_profile(&colony, 2);
    assert_eq!((b.precision.as_str(), b.thread_id), ("thread", Some(102)));
    assert_eq!(b.concurrent_requests, 1);
    let profile = b.profile.unwrap();
    assert_eq!(total_samples(&profile), 2);
    let names = function_names(&profile);
    assert!(names.iter().any(|n| n.contains("other_fn")), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("hot_fn")), "{names:?}");

    // The span from before the session got no profile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(colony.with(|c| c.trace_profiles.len()), 2);
    agent.stop().await.unwrap();
}

/// A request's profile says how many of its samples had truncated stacks and how many
/// were lost in its window (of its thread, or of its process with no thread named);
/// another thread's drop does not count, and stacks are counted by unwind method.
#[tokio::test]
async fn a_request_profile_counts_its_truncated_and_lost_samples() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let agent = TestAgent::start_with(test_config(&colony.url()), factory(&sampler)).await;
    let now = now_ns();
    announce(&agent, "checkout", pid()).await;
    colony.push_session(session("s-3", "checkout", now - 1_000 * MS, 3_000));
    wait_for_targets(&sampler, &[pid()]).await;

    let t0 = now - 800 * MS;
    let truncated = |time| {
        let mut s = sample(pid(), 101, time, hot_fn);
        Arc::make_mut(&mut s.stack).unwind = coral_sampler::Unwind::Truncated;
        s
    };
    sampler.push([
        sample(pid(), 101, t0 + 10 * MS, hot_fn),
        truncated(t0 + 20 * MS),
        truncated(t0 + 30 * MS),
    ]);
    let loss = |tid, at, samples| coral_sampler::Loss {
        tgid: Some(pid()),
        tid,
        start_unix_nano: at,
        end_unix_nano: at,
        samples,
    };
    sampler.push_losses([
        loss(None, t0 + 40 * MS, 4), // the ring buffer was full: the process's
        loss(Some(101), t0 + 50 * MS, 1), // a dropped sample of this thread
        loss(Some(102), t0 + 60 * MS, 9), // another thread's
        loss(None, t0 + 500 * MS, 20), // after the request
    ]);
    export(
        &agent,
        "checkout",
        pid(),
        vec![request_span(1, t0, 200, Some(101))],
    )
    .await;
    colony
        .wait_until("a request profile", |c| !c.trace_profiles.is_empty())
        .await;
    let profile = trace_profile(&colony, 1);
    assert_eq!(total_samples(profile.profile.as_ref().unwrap()), 3);
    assert_eq!(profile.truncated_samples, 2);
    assert_eq!(profile.lost_samples, 5);
    let text = crate::metrics::render(&agent.stats);
    assert!(
        text.contains("coral_agent_stacks_total{unwind=\"truncated\"} 2")
            && text.contains("coral_agent_stacks_total{unwind=\"fp\"} 1"),
        "{text}"
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn requests_without_a_thread_id_get_their_process_samples_and_count_concurrency() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let agent = TestAgent::start_with(test_config(&colony.url()), factory(&sampler)).await;
    let now = now_ns();
    announce(&agent, "checkout", pid()).await;
    colony.push_session(session("s-3", "checkout", now - 1_000 * MS, 3_000));
    wait_for_targets(&sampler, &[pid()]).await;

    // C: [t0, t0+200], D: [t0+100, t0+300] overlap; E: [t0+400, t0+500] alone.
    let t0 = now - 900 * MS;
    sampler.push([
        sample(pid(), 201, t0 + 50 * MS, hot_fn),    // C
        sample(pid(), 202, t0 + 150 * MS, other_fn), // C and D
        sample(1, 1, t0 + 150 * MS, other_fn),       // another process
        sample(pid(), 203, t0 + 250 * MS, hot_fn),   // D
    ]);
    let mut internal = request_span(6, t0, 100, None);
    internal.kind = 1;
    internal.parent_span_id = vec![3; 8];
    export(
        &agent,
        "checkout",
        pid(),
        vec![
            request_span(3, t0, 200, None),
            request_span(4, t0 + 100 * MS, 200, None),
            request_span(5, t0 + 400 * MS, 100, None),
            internal, // not a request: no profile of its own
        ],
    )
    .await;

    colony
        .wait_until("three request profiles", |c| c.trace_profiles.len() >= 3)
        .await;
    let c = trace_profile(&colony, 3);
    let d = trace_profile(&colony, 4);
    let e = trace_profile(&colony, 5);
    for p in [&c, &d, &e] {
        assert_eq!(p.precision, "process");
        assert_eq!(p.thread_id, None);
    }
    assert_eq!(total_samples(c.profile.as_ref().unwrap()), 2);
    assert_eq!(total_samples(d.profile.as_ref().unwrap()), 2);
    // A request without samples is still profiled: an honest empty profile.
    assert_eq!(total_samples(e.profile.as_ref().unwrap()), 0);
    assert_eq!(
        (
            c.concurrent_requests,
            d.concurrent_requests,
            e.concurrent_requests
        ),
        (1, 1, 0)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(colony.with(|c| c.trace_profiles.len()), 3);
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_service_without_a_live_process_here_answers_zero_processes_at_once() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let created = Arc::new(AtomicUsize::new(0));
    let options = {
        let (sampler, created) = (sampler.clone(), created.clone());
        ServeOptions {
            sampler_factory: Arc::new(move |_| {
                created.fetch_add(1, Ordering::Relaxed);
                Ok(sampler.clone() as Arc<dyn Sampler>)
            }),
            ..ServeOptions::default()
        }
    };
    let agent = TestAgent::start_with(test_config(&colony.url()), options).await;
    // A pid that cannot be alive (above the kernel's pid_max).
    announce(&agent, "gone", 4_000_000_000).await;

    let started = std::time::Instant::now();
    colony.push_session(session("s-4", "ghost", now_ns(), 60_000));
    colony.push_session(session("s-5", "gone", now_ns(), 60_000));
    colony
        .wait_until("two reports", |c| c.reports.len() == 2)
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answered long before the sessions end"
    );
    for report in colony.with(|c| c.reports.clone()) {
        assert_eq!((report.processes, report.error.as_str()), (0, ""));
        assert_eq!(total_samples(&report.profile.unwrap_or_default()), 0);
    }
    assert_eq!(created.load(Ordering::Relaxed), 0, "no sampler was needed");
    assert!(sampler.targets().is_empty());
    agent.stop().await.unwrap();
}

/// A span from a container names a pid of the container's pid namespace: when the
/// container is not on this host (or the agent cannot see its processes), that pid is
/// not sampled, even though a host process of that number exists.
#[tokio::test]
async fn a_process_in_a_container_that_is_not_found_here_is_not_sampled() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let agent = TestAgent::start_with(test_config(&colony.url()), factory(&sampler)).await;
    let container = "ab".repeat(32);
    let mut client = TraceServiceClient::connect(agent.grpc_url()).await.unwrap();
    let resource = vec![
        kv("service.name", string("boxed")),
        kv("process.pid", Value::IntValue(i64::from(pid()))),
        kv("container.id", string(&container)),
    ];
    let span = request_span(1, now_ns() - 3_600_000 * MS, 1, Some(1));
    client.export(request(resource, vec![span])).await.unwrap();
    colony
        .wait_until("the span forwarded", |c| !c.spans.is_empty())
        .await;
    // Forwarded as the service sent it.
    let forwarded = colony.with(|c| c.spans[0].clone());
    assert_eq!(forwarded.pid, Some(i64::from(pid())));
    assert_eq!(forwarded.container_id.as_deref(), Some(container.as_str()));

    colony.push_session(session("s-6", "boxed", now_ns(), 60_000));
    colony
        .wait_until("the report", |c| !c.reports.is_empty())
        .await;
    let report = colony.with(|c| c.reports[0].clone());
    assert_eq!((report.processes, report.error.as_str()), (0, ""));
    assert!(sampler.targets().is_empty());
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_sampler_that_cannot_start_is_reported_and_the_agent_keeps_serving() {
    let colony = FakeColony::start().await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let options = {
        let attempts = attempts.clone();
        ServeOptions {
            sampler_factory: Arc::new(move |_| {
                attempts.fetch_add(1, Ordering::Relaxed);
                Err(SamplerError::PermissionDenied {
                    operation: "loading the eBPF sampler",
                    detail: "missing CAP_BPF".into(),
                })
            }),
            ..ServeOptions::default()
        }
    };
    let agent = TestAgent::start_with(test_config(&colony.url()), options).await;
    announce(&agent, "checkout", pid()).await;
    colony.push_session(session("s-6", "checkout", now_ns(), 60_000));
    colony
        .wait_until("a report", |c| c.reports.len() == 1)
        .await;
    let report = colony.with(|c| c.reports[0].clone());
    assert_eq!(report.processes, 1, "the service runs here");
    assert!(report.error.contains("CAP_BPF"), "{}", report.error);
    assert!(
        report.error.contains("permission denied"),
        "{}",
        report.error
    );

    // Still serving: spans flow, the next session tries again.
    export(
        &agent,
        "checkout",
        pid(),
        vec![request_span(1, now_ns(), 1, None)],
    )
    .await;
    colony.wait_for_spans(1).await;
    colony.push_session(session("s-7", "checkout", now_ns(), 60_000));
    colony
        .wait_until("a second report", |c| c.reports.len() == 2)
        .await;
    assert_eq!(attempts.load(Ordering::Relaxed), 2);
    let counters = agent.stats.profiling();
    assert_eq!((counters.sessions, counters.session_errors), (2, 2));
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn services_outside_the_allow_list_are_refused() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let mut config: AgentConfig = test_config(&colony.url());
    config.profiling.allow_services = Some(vec!["payments".to_string()]);
    let agent = TestAgent::start_with(config, factory(&sampler)).await;
    announce(&agent, "checkout", pid()).await;
    colony.push_session(session("s-8", "checkout", now_ns(), 60_000));
    colony
        .wait_until("a report", |c| c.reports.len() == 1)
        .await;
    let report = colony.with(|c| c.reports[0].clone());
    assert_eq!(
        report.error,
        "service checkout is not in this agent's --profile-allow list"
    );
    assert_eq!(report.processes, 1);
    // A service not hosted here is simply not here, allowed or not.
    colony.push_session(session("s-10", "elsewhere", now_ns(), 60_000));
    colony
        .wait_until("a second report", |c| c.reports.len() == 2)
        .await;
    let report = colony.with(|c| c.reports[1].clone());
    assert_eq!((report.processes, report.error.as_str()), (0, ""));
    assert!(sampler.targets().is_empty());
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_reports_an_open_session_and_stops_sampling() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let agent = TestAgent::start_with(test_config(&colony.url()), factory(&sampler)).await;
    announce(&agent, "checkout", pid()).await;
    let start = now_ns() - 100 * MS;
    colony.push_session(session("s-9", "checkout", start, 600_000));
    wait_for_targets(&sampler, &[pid()]).await;
    sampler.push([sample(pid(), pid(), start + 50 * MS, hot_fn)]);
    agent.stop().await.unwrap();
    assert!(sampler.targets().is_empty(), "detached at shutdown");
    let reports = colony.with(|c| c.reports.clone());
    assert_eq!(reports.len(), 1, "reported before serve returned");
    assert_eq!(total_samples(reports[0].profile.as_ref().unwrap()), 1);
}

#[tokio::test]
async fn processes_outside_the_allowed_cgroups_are_not_sampled() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let mut config: AgentConfig = test_config(&colony.url());
    config.profiling.allow_cgroups = Some(vec!["*no-such-cgroup*".to_string()]);
    let agent = TestAgent::start_with(config, factory(&sampler)).await;
    announce(&agent, "checkout", pid()).await;
    colony.push_session(session("s-11", "checkout", now_ns(), 60_000));
    colony
        .wait_until("a report", |c| c.reports.len() == 1)
        .await;
    let report = colony.with(|c| c.reports[0].clone());
    assert!(
        report
            .error
            .starts_with("no process of checkout may be sampled here")
            && report
                .error
                .contains("matches no --profile-cgroup pattern (*no-such-cgroup*)"),
        "{}",
        report.error
    );
    assert!(sampler.targets().is_empty());
    agent.stop().await.unwrap();

    // This process's own cgroup is allowed: sampled.
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = cgroup
        .lines()
        .next()
        .unwrap()
        .splitn(3, ':')
        .nth(2)
        .unwrap();
    let mut config: AgentConfig = test_config(&colony.url());
    config.profiling.allow_cgroups = Some(vec![format!("{path}*")]);
    let agent = TestAgent::start_with(config, factory(&sampler)).await;
    announce(&agent, "checkout", pid()).await;
    colony.push_session(session("s-12", "checkout", now_ns(), 60_000));
    wait_for_targets(&sampler, &[pid()]).await;
    agent.stop().await.unwrap();
}

/// Full kernel maps (samples lost, stacks not stored) are counted, and profiling goes
/// on.
#[tokio::test]
async fn sampler_losses_are_counted_and_profiling_goes_on() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let agent = TestAgent::start_with(test_config(&colony.url()), factory(&sampler)).await;
    announce(&agent, "checkout", pid()).await;
    let start = now_ns() - 100 * MS;
    colony.push_session(session("s-13", "checkout", start, 1_500));
    wait_for_targets(&sampler, &[pid()]).await;
    sampler.set_counters(5, 7, 2);
    sampler.push([sample(pid(), pid(), start + 50 * MS, hot_fn)]);
    colony
        .wait_until("a report", |c| c.reports.len() == 1)
        .await;
    let report = colony.with(|c| c.reports[0].clone());
    assert_eq!(
        (
            report.error.as_str(),
            total_samples(report.profile.as_ref().unwrap())
        ),
        ("", 1)
    );
    let counters = agent.stats.profiling();
    assert_eq!((counters.samples_lost, counters.stack_errors), (7, 7));
    let text = crate::metrics::render(&agent.stats);
    assert!(text.contains("coral_agent_stack_errors_total 7"), "{text}");
    agent.stop().await.unwrap();
}
