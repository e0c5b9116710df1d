//! Trace-triggered profiling end to end: the real `coral` binary starts triggers on a
//! colony (both stores); the real OpenTelemetry SDK sends request spans of this test
//! process to the agents. The agents' sampler is the in-memory one here (the trigger
//! logic is under test, not eBPF: `trigger_ebpf` has that), so profiles are empty but
//! every decision — what matches, what counts, when sampling starts and stops — is
//! the real one.

use crate::cli::coral;
use crate::harness::{Backend, Sampling, Stack, produce};
use coral_client::v1;
use coral_sampler::{FakeSampler, Sampler};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Tracer, TracerProvider as _};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const SERVICE: &str = "payment-svc";

/// An SDK exporting spans of [`SERVICE`] from this process to the agent at `otlp_grpc`.
pub fn provider(otlp_grpc: SocketAddr) -> SdkTracerProvider {
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{otlp_grpc}"))
        .build()
        .expect("build OTLP exporter");
    SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name(SERVICE)
                .with_attribute(KeyValue::new("process.pid", std::process::id() as i64))
                .build(),
        )
        .with_simple_exporter(exporter)
        .build()
}

/// A finished request: a server span on `url` with an HTTP status, that started
/// `start` and lasted `duration`. Returns its trace id.
pub async fn request(
    provider: &SdkTracerProvider,
    start: SystemTime,
    duration: Duration,
    url: &str,
    status: i64,
) -> String {
    let (provider, url) = (provider.clone(), url.to_string());
    produce(move || {
        let tracer = provider.tracer("coral-e2e");
        let mut span = tracer
            .span_builder(format!("POST {url}"))
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes([
                KeyValue::new("url.path", url),
                KeyValue::new("http.response.status_code", status),
            ])
            .start(&tracer);
        let trace_id = span.span_context().trace_id().to_string();
        span.end_with_timestamp(start + duration);
        trace_id
    })
    .await
}

/// Waits until the fake sampler's targets are `expected` (at most 20 s).
pub async fn wait_for_targets(sampler: &FakeSampler, expected: &[u32]) {
    for _ in 0..400 {
        if sampler.targets() == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("targets are {:?}, expected {expected:?}", sampler.targets());
}

/// Runs `coral` off the async runtime, checks it succeeded, returns stdout.
async fn run(colony: &str, args: &[&str]) -> String {
    let (colony, args): (String, Vec<String>) = (
        colony.to_string(),
        args.iter().map(|s| s.to_string()).collect(),
    );
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        coral(Some(&colony), &args)
    })
    .await
    .unwrap();
    assert!(out.ok, "coral failed: {}", out.stderr);
    out.stdout
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `coral profile trigger-status ID --output json`.
async fn status(stack: &Stack, id: &str) -> serde_json::Value {
    json(
        &run(
            &stack.colony,
            &["profile", "trigger-status", id, "--output", "json"],
        )
        .await,
    )
}

/// Starts a trigger with `--detach`; returns its id.
async fn start_detached(stack: &Stack, flags: &[&str]) -> String {
    let mut args = vec!["profile", "trace-trigger", "--service", SERVICE, "--detach"];
    args.extend_from_slice(flags);
    run(&stack.colony, &args).await.trim().to_string()
}

/// Polls the trigger until `done` holds (at most 20 s).
async fn wait_for_trigger(
    stack: &Stack,
    id: &str,
    what: &str,
    done: impl Fn(&v1::TraceProfileTrigger) -> bool,
) -> v1::TraceProfileTrigger {
    let mut client = stack.profile().await;
    let mut last = None;
    for _ in 0..200 {
        let t = client
            .get_trace_profile_trigger(v1::GetTraceProfileTriggerRequest {
                trigger_id: id.to_string(),
            })
            .await
            .expect("the trigger exists")
            .into_inner();
        if done(&t) {
            return t;
        }
        last = Some(t);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: the trigger is {last:?}");
}

/// A fresh stack whose agents use `sampler`, with the agent knowing this process as
/// [`SERVICE`] (one span seen).
pub async fn stack_with(
    backend: Backend,
    sampler: &Arc<FakeSampler>,
) -> (Stack, SdkTracerProvider) {
    let stack = Stack::start_with(backend, Sampling::Fake(sampler.clone())).await;
    let provider = provider(stack.otlp_grpc);
    say_hello(&stack, &provider).await;
    (stack, provider)
}

/// One quick request, stored: the agent knows this process as [`SERVICE`] from it.
async fn say_hello(stack: &Stack, provider: &SdkTracerProvider) {
    let hello = request(
        provider,
        SystemTime::now(),
        Duration::from_millis(1),
        "/hello",
        200,
    )
    .await;
    stack.wait_for_trace(&hello, 1).await;
}

fn pid() -> u32 {
    std::process::id()
}

/// The sampler is attached to this process: requests that start from now on are
/// sampled from their first moment. Returns a start time just after that.
pub async fn sampled_from_now(sampler: &FakeSampler) -> SystemTime {
    wait_for_targets(sampler, &[pid()]).await;
    SystemTime::now() + Duration::from_millis(20)
}

async fn collects_exactly_count_matching_requests(backend: Backend) {
    let sampler = Arc::new(FakeSampler::new());
    let (stack, provider) = stack_with(backend, &sampler).await;
    assert!(
        sampler.targets().is_empty(),
        "nothing sampled before a trigger"
    );

    let colony = stack.colony.clone();
    let cli = tokio::task::spawn_blocking(move || {
        coral(
            Some(&colony),
            &[
                "profile",
                "trace-trigger",
                "--service",
                SERVICE,
                "--min-duration",
                "1s",
                "--status-code",
                "5xx",
                "--url",
                "/checkout*",
                "--count",
                "3",
                "--timeout",
                "60s",
                "--output",
                "json",
            ],
        )
    });
    let t0 = sampled_from_now(&sampler).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let slow = Duration::from_millis(1200);
    let mut matching = HashSet::new();
    for i in 0..4 {
        let start = t0 + Duration::from_millis(i * 10);
        matching.insert(request(&provider, start, slow, "/checkout/card", 503).await);
    }
    let mut others = HashSet::new();
    for (duration, url, status) in [
        (Duration::from_millis(50), "/checkout", 500), // fast
        (slow, "/checkout", 200),                      // succeeded
        (slow, "/health", 500),                        // other URL
        (Duration::from_millis(5), "/checkout", 503),  // fast
    ] {
        others.insert(request(&provider, t0, duration, url, status).await);
    }

    let out = cli.await.unwrap();
    assert!(out.ok, "{}", out.stderr);
    let result = json(&out.stdout);
    assert_eq!(result["status"], "completed", "{result}");
    assert_eq!(result["collected_requests"], 3);
    let collected = result["collected"].as_array().unwrap();
    assert_eq!(collected.len(), 3, "{result}");
    for c in collected {
        let trace = c["trace_id"].as_str().unwrap();
        assert!(matching.contains(trace), "{trace} did not match: {result}");
        assert_eq!(c["http_status"], 503);
        assert!(c["duration_ns"].as_i64().unwrap() >= 1_000_000_000);
        assert_eq!(c["node"], "test-node");
    }
    // Sampling stops once the trigger completes.
    wait_for_targets(&sampler, &[]).await;
    // The baseline (the 4 non-matching requests; room for 15) arrives after the end.
    let id = result["trigger_id"].as_str().unwrap();
    let done = wait_for_trigger(&stack, id, "the baseline", |t| t.baseline_collected == 4).await;
    assert_eq!(done.baseline_requests, 15);
    assert_eq!(
        done.collected_requests, 3,
        "the count never passes max_requests"
    );

    // The requests that have profiles, and where each came from.
    let listed = json(
        &run(
            &stack.colony,
            &[
                "query",
                "traces",
                "--service",
                SERVICE,
                "--profiled",
                "-o",
                "json",
            ],
        )
        .await,
    );
    let mut kinds: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["profile_source"]["kind"].as_str().unwrap_or("none"))
        .collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        [
            "baseline", "baseline", "baseline", "baseline", "trigger", "trigger", "trigger"
        ],
        "{listed:#}"
    );
    // A unique prefix of the id is enough, as git takes a short commit id.
    let short = run(&stack.colony, &["profile", "trigger-status", &id[..8]]).await;
    assert!(short.contains(id) && short.contains("completed"), "{short}");

    let active = run(&stack.colony, &["profile", "triggers"]).await;
    assert!(active.contains("No active triggers"), "{active}");
    let all = run(&stack.colony, &["profile", "triggers", "--all"]).await;
    assert!(
        all.contains(id) && all.contains("completed") && all.contains("3/3"),
        "{all}"
    );
    provider.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_collects_exactly_count_matching_requests_sqlite() {
    collects_exactly_count_matching_requests(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
async fn a_trigger_collects_exactly_count_matching_requests_postgres() {
    collects_exactly_count_matching_requests(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_trigger_requests_are_refused_and_create_nothing() {
    let sampler = Arc::new(FakeSampler::new());
    let (stack, provider) = stack_with(Backend::Sqlite, &sampler).await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["--service", "nope", "--min-duration", "1s"],
            "unknown service \"nope\"; known services: payment-svc",
        ),
        (
            &[
                "--service",
                SERVICE,
                "--min-duration",
                "2s",
                "--max-duration",
                "1s",
            ],
            "above the maximum",
        ),
        (
            &["--service", SERVICE, "--status-code", "6xx"],
            "invalid status-code pattern",
        ),
        (
            &["--service", SERVICE, "--url", "/a b"],
            "invalid URL pattern",
        ),
        (&["--service", SERVICE, "--frequency", "0"], "--frequency"),
        (
            &["--service", SERVICE, "--frequency", "1001"],
            "--frequency",
        ),
        (&["--service", SERVICE, "--count", "0"], "--count"),
        (
            &["--service", SERVICE, "--timeout", "0s"],
            "--timeout must be more than 0",
        ),
        (&["--service", SERVICE, "--timeout", "abc"], "--timeout"),
        // Every request would match: no baseline, nothing to compare with.
        (&["--service", SERVICE], "at least one criterion"),
        // Paths start with '/': this pattern would wait for ever.
        (
            &["--service", SERVICE, "--url", "checkout"],
            "can never match",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["profile", "trace-trigger", "--detach"];
        args.extend_from_slice(flags);
        let out = coral(Some(&stack.colony), &args);
        assert!(!out.ok, "{flags:?} was accepted: {}", out.stdout);
        assert!(out.stderr.contains(expected), "{flags:?}: {}", out.stderr);
    }
    for (args, expected) in [
        (
            &["profile", "trigger-status", "not-a-uuid"][..],
            "invalid trigger id",
        ),
        (
            &[
                "profile",
                "trigger-status",
                "6f1c7b0e-2c1a-4d8e-9f3b-0a1b2c3d4e5f",
            ],
            "not found",
        ),
        (
            &[
                "profile",
                "trigger-cancel",
                "6f1c7b0e-2c1a-4d8e-9f3b-0a1b2c3d4e5f",
            ],
            "not found",
        ),
    ] {
        let out = coral(Some(&stack.colony), args);
        assert!(
            !out.ok && out.stderr.contains(expected),
            "{args:?}: {}",
            out.stderr
        );
    }
    let all = json(
        &run(
            &stack.colony,
            &["profile", "triggers", "--all", "--output", "json"],
        )
        .await,
    );
    assert_eq!(all, serde_json::json!([]), "no trigger was created");
    assert!(sampler.targets().is_empty());
    provider.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_expire_and_can_be_cancelled() {
    let sampler = Arc::new(FakeSampler::new());
    let (stack, provider) = stack_with(Backend::Sqlite, &sampler).await;

    // Nothing matches within the timeout: expired, and it says what to check.
    let colony = stack.colony.clone();
    let out = tokio::task::spawn_blocking(move || {
        coral(
            Some(&colony),
            &[
                "profile",
                "trace-trigger",
                "--service",
                SERVICE,
                "--min-duration",
                "10s",
                "--timeout",
                "2s",
            ],
        )
    })
    .await
    .unwrap();
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("expired"), "{}", out.stdout);
    assert!(out.stdout.contains("0/10 requests"), "{}", out.stdout);
    assert!(out.stdout.contains("No request matched"), "{}", out.stdout);
    wait_for_targets(&sampler, &[]).await;

    let id = start_detached(&stack, &["--min-duration", "1s"]).await;
    wait_for_targets(&sampler, &[pid()]).await;
    let cancelled = json(
        &run(
            &stack.colony,
            &["profile", "trigger-cancel", &id, "--output", "json"],
        )
        .await,
    );
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["ended"].is_string());
    wait_for_targets(&sampler, &[]).await;
    let out = coral(Some(&stack.colony), &["profile", "trigger-cancel", &id]);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("had already ended (cancelled)"),
        "{}",
        out.stderr
    );
    assert_eq!(status(&stack, &id).await["status"], "cancelled");
    provider.shutdown().unwrap();
}

/// The trigger lives in the store: a colony restart loses nothing, and a profile sent
/// while the colony was down is delivered when it is back.
async fn survives_a_colony_restart(backend: Backend) {
    let sampler = Arc::new(FakeSampler::new());
    let (mut stack, provider) = stack_with(backend, &sampler).await;
    let id = start_detached(
        &stack,
        &["--min-duration", "500ms", "--count", "2", "--baseline", "0"],
    )
    .await;
    let t0 = sampled_from_now(&sampler).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let first = request(&provider, t0, Duration::from_millis(600), "/checkout", 200).await;
    wait_for_trigger(&stack, &id, "the first request", |t| {
        t.collected_requests == 1
    })
    .await;

    stack.stop_colony().await;
    // Still sampled (the agent keeps the trigger), collected while the colony is away.
    let t1 = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = request(&provider, t1, Duration::from_millis(600), "/checkout", 200).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.start_colony().await;

    let done = wait_for_trigger(&stack, &id, "both requests", |t| t.status == "completed").await;
    let traces: HashSet<String> = done.collected.iter().map(|c| c.trace_id.clone()).collect();
    assert_eq!(traces, HashSet::from([first, second]));
    wait_for_targets(&sampler, &[]).await;
    provider.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_survives_a_colony_restart_sqlite() {
    survives_a_colony_restart(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
async fn a_trigger_survives_a_colony_restart_postgres() {
    survives_a_colony_restart(Backend::Postgres).await;
}

/// A trigger expires on time while the colony is down: the agent stops sampling at its
/// expiry by itself, and the restarted colony marks it expired at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_expires_on_time_across_a_colony_restart() {
    let sampler = Arc::new(FakeSampler::new());
    let (mut stack, provider) = stack_with(Backend::Sqlite, &sampler).await;
    let id = start_detached(&stack, &["--min-duration", "10s", "--timeout", "3s"]).await;
    wait_for_targets(&sampler, &[pid()]).await;
    let trigger = wait_for_trigger(&stack, &id, "the trigger", |_| true).await;
    let expires = std::time::UNIX_EPOCH + Duration::from_nanos(trigger.expires_unix_nano as u64);
    stack.stop_colony().await;
    wait_for_targets(&sampler, &[]).await;
    assert!(
        SystemTime::now() >= expires,
        "the agent stopped sampling before the trigger's expiry"
    );
    stack.start_colony().await;
    let done = wait_for_trigger(&stack, &id, "expiry", |t| t.status != "active").await;
    assert_eq!(done.status, "expired");
    provider.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_resumes_the_active_trigger() {
    let sampler = Arc::new(FakeSampler::new());
    let (mut stack, provider) = stack_with(Backend::Sqlite, &sampler).await;
    let id = start_detached(&stack, &["--min-duration", "500ms", "--count", "1"]).await;
    wait_for_targets(&sampler, &[pid()]).await;

    stack.restart_agent(0).await;
    // The new agent has the trigger at once, and learns the process from its next span.
    say_hello(&stack, &provider).await;
    let t0 = sampled_from_now(&sampler).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let slow = request(&provider, t0, Duration::from_millis(600), "/checkout", 200).await;
    let done = wait_for_trigger(&stack, &id, "the request", |t| t.status == "completed").await;
    assert_eq!(done.collected[0].trace_id, slow);
    provider.shutdown().unwrap();
}

/// Exactly `count` across agents: the store decides, not the agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
async fn two_agents_of_one_service_collect_exactly_count_together() {
    let sampler = Arc::new(FakeSampler::new());
    let (mut stack, provider) = stack_with(Backend::Postgres, &sampler).await;
    let second = stack.add_agent("node-2").await;
    let provider_2 = self::provider(stack.agents[second].otlp_grpc);
    say_hello(&stack, &provider_2).await;

    let id = start_detached(&stack, &["--min-duration", "500ms", "--count", "3"]).await;
    let t0 = sampled_from_now(&sampler).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let slow = Duration::from_millis(600);
    let mut sent = Vec::new();
    for i in 0..4 {
        let start = t0 + Duration::from_millis(i * 10);
        sent.push(request(&provider, start, slow, "/checkout", 200));
        sent.push(request(&provider_2, start, slow, "/checkout", 200));
    }
    futures::future::join_all(sent).await;
    let done = wait_for_trigger(&stack, &id, "three requests", |t| t.status == "completed").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let done_later = status(&stack, &id).await;
    assert_eq!(done.collected_requests, 3);
    assert_eq!(done_later["collected_requests"], 3);
    assert_eq!(done_later["collected"].as_array().unwrap().len(), 3);
    provider.shutdown().unwrap();
    provider_2.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_triggers_share_one_sampler_and_each_collects_its_own() {
    let sampler = Arc::new(FakeSampler::new());
    let (stack, provider) = stack_with(Backend::Sqlite, &sampler).await;
    let slow_id = start_detached(
        &stack,
        &[
            "--min-duration",
            "500ms",
            "--count",
            "2",
            "--frequency",
            "99",
        ],
    )
    .await;
    let errors_id = start_detached(
        &stack,
        &["--status-code", "5xx", "--count", "2", "--frequency", "499"],
    )
    .await;
    wait_for_targets(&sampler, &[pid()]).await;
    // Sampling runs once, at the highest frequency, from when the second trigger
    // reached the agent: requests are sampled whole for both from then on.
    for _ in 0..400 {
        if sampler.stats().frequency_hz == 499 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sampler.stats().frequency_hz,
        499,
        "once, at the highest frequency"
    );
    assert_eq!(sampler.targets(), [pid()]);
    let t0 = SystemTime::now() + Duration::from_millis(20);
    tokio::time::sleep(Duration::from_millis(800)).await;

    let mut slow = HashSet::new();
    let mut errors = HashSet::new();
    for i in 0..2 {
        let start = t0 + Duration::from_millis(i * 10);
        slow.insert(
            request(
                &provider,
                start,
                Duration::from_millis(600),
                "/checkout",
                200,
            )
            .await,
        );
        errors.insert(
            request(
                &provider,
                start,
                Duration::from_millis(20),
                "/checkout",
                503,
            )
            .await,
        );
    }
    for (id, expected) in [(&slow_id, &slow), (&errors_id, &errors)] {
        let done = wait_for_trigger(&stack, id, "two requests", |t| t.status == "completed").await;
        let got: HashSet<String> = done.collected.iter().map(|c| c.trace_id.clone()).collect();
        assert_eq!(&got, expected);
    }
    wait_for_targets(&sampler, &[]).await;
    provider.shutdown().unwrap();
}

/// Request profiles spooled on disk by the agent with data directory `dir`.
fn spooled_profiles(dir: &std::path::Path) -> usize {
    use prost::Message;
    let Ok(entries) = std::fs::read_dir(dir.join("spool")) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pb"))
        .filter_map(|p| std::fs::read(p).ok())
        .map(|bytes| {
            v1::IngestTraceProfilesRequest::decode(bytes.as_slice())
                .expect("a spool file is a profile batch")
                .profiles
                .len()
        })
        .sum()
}

/// The colony is down for a minute while a trigger collects, and the agent is killed
/// (no flush) and restarted during the outage: the profiles it took wait on disk and
/// reach the colony once it is back; nothing is lost or stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes over a minute (a 60 s colony outage): run `cargo xtask test`"]
async fn a_trigger_loses_nothing_through_a_colony_outage_and_an_agent_crash() {
    const OUTAGE: Duration = Duration::from_secs(60);
    let sampler = Arc::new(FakeSampler::new());
    let (mut stack, provider) = stack_with(Backend::Sqlite, &sampler).await;
    let id = start_detached(
        &stack,
        &[
            "--min-duration",
            "500ms",
            "--count",
            "6",
            "--baseline",
            "0",
            "--timeout",
            "10m",
        ],
    )
    .await;
    let slow = async |provider: &SdkTracerProvider| {
        let t = SystemTime::now();
        tokio::time::sleep(Duration::from_millis(700)).await;
        request(provider, t, Duration::from_millis(600), "/checkout", 200).await
    };
    sampled_from_now(&sampler).await;
    let mut expected = vec![slow(&provider).await];
    wait_for_trigger(&stack, &id, "the first request", |t| {
        t.collected_requests == 1
    })
    .await;

    stack.stop_colony().await;
    let outage = std::time::Instant::now();
    for _ in 0..3 {
        expected.push(slow(&provider).await);
    }
    let dir = stack.agents[0].data_dir.clone();
    for _ in 0..200 {
        if spooled_profiles(&dir) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        spooled_profiles(&dir),
        3,
        "profiles spooled during the outage"
    );

    stack.agents[0].kill().await;
    stack.start_agent_again(0).await;
    assert_eq!(spooled_profiles(&dir), 3, "the spool after the crash");
    tokio::time::sleep(OUTAGE.saturating_sub(outage.elapsed())).await;
    stack.start_colony().await;

    // The restarted agent learns the trigger from the colony and this process from
    // its next span; the spool drains.
    say_hello(&stack, &provider).await;
    wait_for_trigger(&stack, &id, "the spooled requests", |t| {
        t.collected_requests == 4
    })
    .await;
    sampled_from_now(&sampler).await;
    for _ in 0..2 {
        expected.push(slow(&provider).await);
    }
    let done = wait_for_trigger(&stack, &id, "all requests", |t| t.status == "completed").await;

    let collected: Vec<String> = done.collected.iter().map(|c| c.trace_id.clone()).collect();
    assert_eq!(collected.len(), 6, "{collected:?}");
    assert_eq!(
        collected.iter().collect::<HashSet<_>>(),
        expected.iter().collect::<HashSet<_>>()
    );
    assert_eq!(spooled_profiles(&dir), 0, "the spool is empty");
    let metrics = crate::metrics::scrape(stack.agents[0].metrics).await;
    assert_eq!(metrics.get("coral_agent_trace_profiles_dropped_total"), 0.0);
    assert_eq!(metrics.get("coral_agent_spool_batches"), 0.0);
    let colony = crate::metrics::scrape(stack.colony_metrics).await;
    let completed = "coral_colony_trigger_events_total{event=\"completed\"}";
    assert_eq!(
        colony.get(completed),
        1.0,
        "{completed} (the restarted colony)"
    );
    let mut client = stack.profile().await;
    for trace in &expected {
        let profiles = client
            .get_trace_profile(v1::GetTraceProfileRequest {
                trace_id: trace.clone(),
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .profiles;
        assert_eq!(profiles.len(), 1, "trace {trace}: {profiles:?}");
    }
    provider.shutdown().unwrap();
}

/// `timeout`, CI and Kubernetes stop a waiting `trace-trigger` with SIGTERM, and a
/// script's Ctrl-C reaches it without a terminal: the id was printed before the wait,
/// the trigger keeps running, a line says how to follow or cancel it, `-o json` still
/// prints JSON, and the exit status is 128 + the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_wait_leaves_the_trigger_running_and_says_so() {
    use nix::sys::signal::Signal;
    use std::io::BufRead;
    let sampler = Arc::new(FakeSampler::new());
    let (stack, _provider) = stack_with(Backend::Sqlite, &sampler).await;
    for (signal, code) in [(Signal::SIGTERM, 143), (Signal::SIGINT, 130)] {
        let colony = stack.colony.clone();
        let (id, status, stdout, stderr) = tokio::task::spawn_blocking(move || {
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coral"))
                .env("CORAL_COLONY", &colony)
                .args(["profile", "trace-trigger", "--service", SERVICE])
                .args(["--min-duration", "10s", "--timeout", "5m", "-o", "json"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run coral");
            let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
            // The id comes before any waiting.
            let mut first = String::new();
            stderr.read_line(&mut first).unwrap();
            let id = first
                .strip_prefix("trigger ")
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no id first: {first:?}"))
                .to_string();
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
            let out = child.wait_with_output().unwrap();
            let mut rest = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
            (
                id,
                out.status,
                String::from_utf8(out.stdout).unwrap(),
                first + &rest,
            )
        })
        .await
        .unwrap();
        assert_eq!(status.code(), Some(code), "{signal}: {stderr}");
        assert!(
            stderr.contains(&format!("trigger {id} is still running"))
                && stderr.contains(&format!("coral profile trigger-cancel {id}")),
            "{signal}: {stderr}"
        );
        let json: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{signal}: not JSON ({e}): {stdout:?}"));
        assert_eq!(json["trigger_id"], id.as_str(), "{json:#}");
        let trigger = stack
            .profile()
            .await
            .get_trace_profile_trigger(v1::GetTraceProfileTriggerRequest {
                trigger_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(trigger.status, "active", "{signal}: left running");
    }
}
