//! Real eBPF profiling end to end (needs root): this test process is the workload.
//! Threads burn CPU in known functions inside spans that carry `thread.id`, exported by
//! the real OpenTelemetry SDK to the agent; `coral profile cpu` profiles the service
//! and `coral query trace-profile` shows each request's own function; a trigger
//! collects slow requests whole.

use crate::cli::coral;
use crate::harness::{Backend, Stack, produce};
use coral_analysis::profile::Profile;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::hint::black_box;
use std::time::{Duration, Instant};

#[inline(never)]
pub(crate) fn validate_signature(until: Instant) -> u64 {
    let mut x = 0u64;
    while Instant::now() < until {
        for i in 0..10_000u64 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    x
}

#[inline(never)]
pub(crate) fn render_receipt(until: Instant) -> u64 {
    let mut x = 1u64;
    while Instant::now() < until {
        for i in 0..10_000u64 {
            x = black_box(x.rotate_left(7) ^ i);
        }
    }
    x
}

/// Runs `work` for `busy` inside a server span of its own thread; returns the trace id.
pub(crate) fn request(
    tracer: &opentelemetry_sdk::trace::SdkTracer,
    name: &str,
    busy: Duration,
    work: fn(Instant) -> u64,
) -> String {
    let tid = nix::unistd::gettid().as_raw() as i64;
    let span = tracer
        .span_builder(name.to_string())
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("thread.id", tid),
            KeyValue::new("http.route", name.to_string()),
        ])
        .start(tracer);
    let trace_id = span.span_context().trace_id().to_string();
    let cx = Context::current_with_span(span);
    black_box(work(Instant::now() + busy));
    cx.span().end();
    trace_id
}

/// `coral query trace-profile` output once the request's profile has arrived.
async fn wait_for_profile(colony: &str, trace_id: &str, extra: &[&str]) -> String {
    let mut args = vec!["query", "trace-profile", trace_id];
    args.extend_from_slice(extra);
    let mut last = String::new();
    for _ in 0..100 {
        let out = coral(Some(colony), &args);
        if out.ok {
            return out.stdout;
        }
        last = out.stderr;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no profile of {trace_id}: {last}");
}

/// The merged profile of `coral query trace-profile --format json`.
fn merged_profile(json: &str) -> Profile {
    let view: serde_json::Value = serde_json::from_str(json).expect("trace-profile JSON");
    serde_json::from_value(view["merged"]["profile"].clone()).expect("a merged profile")
}

/// The eBPF tests count this process's perf events, so they run one at a time: each
/// holds the guard for its whole run.
static EBPF: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) async fn require_root() -> tokio::sync::MutexGuard<'static, ()> {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root for eBPF: run `cargo xtask test` as root"
    );
    EBPF.lock().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
async fn profiles_a_service_and_each_request_at_thread_precision() {
    let _ebpf = require_root().await;
    let stack = Stack::start(Backend::Sqlite).await;
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", stack.otlp_grpc))
        .build()
        .unwrap();
    let provider = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name("checkout-svc")
                .with_attribute(KeyValue::new("process.pid", std::process::id() as i64))
                .build(),
        )
        .with_simple_exporter(exporter)
        .build();
    // A first request tells the agent which process runs the service.
    let p = provider.clone();
    let warmup = produce(move || {
        request(
            &p.tracer("e2e"),
            "GET /warmup",
            Duration::from_millis(1),
            render_receipt,
        )
    })
    .await;
    stack.wait_for_trace(&warmup, 1).await;

    // Profile for 4 s while two threads serve one request each.
    let colony = stack.colony.clone();
    let profiling = tokio::task::spawn_blocking(move || {
        coral(
            Some(&colony),
            &[
                "profile",
                "cpu",
                "--service",
                "checkout-svc",
                "--duration",
                "4s",
                "--format",
                "folded",
            ],
        )
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (pa, pb) = (provider.clone(), provider.clone());
    let slow = std::thread::spawn(move || {
        request(
            &pa.tracer("e2e"),
            "POST /checkout",
            Duration::from_millis(1500),
            validate_signature,
        )
    });
    let other = std::thread::spawn(move || {
        request(
            &pb.tracer("e2e"),
            "GET /receipt",
            Duration::from_millis(1500),
            render_receipt,
        )
    });
    let (slow, other) = (slow.join().unwrap(), other.join().unwrap());
    let profile = profiling.await.unwrap();
    assert!(profile.ok, "{}", profile.stderr);
    assert!(
        profile.stdout.contains("validate_signature"),
        "{}",
        profile.stdout
    );
    assert!(
        profile.stdout.contains("render_receipt"),
        "{}",
        profile.stdout
    );

    // Each request's profile holds its own thread's function only, as nearly all of
    // its CPU time (stacks are whole, unwound from .eh_frame: this test binary has no
    // frame pointers, so the function is inclusive).
    for (trace, own, foreign) in [
        (&slow, "validate_signature", "render_receipt"),
        (&other, "render_receipt", "validate_signature"),
    ] {
        let text = wait_for_profile(&stack.colony, trace, &[]).await;
        assert!(text.contains("thread precision"), "{text}");
        assert!(text.contains(own) && !text.contains(foreign), "{text}");
        let json = wait_for_profile(&stack.colony, trace, &["--format", "json"]).await;
        let profile: Profile = merged_profile(&json);
        let share = profile
            .all_hotspots(coral_analysis::profile::ProfileType::Cpu)
            .iter()
            .find(|h| h.function.ends_with(own))
            .map(|h| h.total_share)
            .unwrap_or(0.0);
        // A frame-pointer walk skipped the leaf's caller (here `own`) in 15-25 % of
        // the samples (a leaf sampled before it pushed its frame pointer); unwind
        // tables describe every instruction.
        assert!(
            share >= 0.9,
            "{own} has {share:.2} of its request's CPU:\n{text}"
        );
    }
    provider.shutdown().unwrap();
}

/// Perf events the in-process agent's sampler has attached: each is held by a BPF
/// link (the perf event fd itself is closed once the link holds it).
fn perf_events() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| {
            let target = target.to_string_lossy();
            target == "anon_inode:bpf_link" || target == "anon_inode:[perf_event]"
        })
        .count()
}

pub(crate) async fn wait_for_perf_events(what: &str, done: impl Fn(usize) -> bool) {
    for _ in 0..200 {
        if done(perf_events()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: {} perf events attached", perf_events());
}

/// A request that spends its first half in `validate_signature` and its second half
/// in `render_receipt`: both show in its profile only if it was sampled whole.
fn two_phase_request(tracer: &opentelemetry_sdk::trace::SdkTracer, half: Duration) -> String {
    let tid = nix::unistd::gettid().as_raw() as i64;
    let span = tracer
        .span_builder("POST /checkout")
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("thread.id", tid),
            KeyValue::new("url.path", "/checkout"),
        ])
        .start(tracer);
    let trace_id = span.span_context().trace_id().to_string();
    let cx = Context::current_with_span(span);
    black_box(validate_signature(Instant::now() + half));
    black_box(render_receipt(Instant::now() + half));
    cx.span().end();
    trace_id
}

/// `n` checkouts, one in seven taking the slow path (300 ms in `validate_signature`),
/// the others 25 ms in `render_receipt`; returns the last one's trace id.
pub(crate) fn mixed_checkouts(tracer: &opentelemetry_sdk::trace::SdkTracer, n: usize) -> String {
    let mut last = String::new();
    for i in 0..n {
        last = if i % 7 == 3 {
            request(
                tracer,
                "POST /checkout",
                Duration::from_millis(300),
                validate_signature,
            )
        } else {
            request(
                tracer,
                "POST /checkout",
                Duration::from_millis(25),
                render_receipt,
            )
        };
    }
    last
}

/// A stack whose agent knows this process as the trigger tests' service (nothing
/// attached yet: checked), and `coral profile trace-trigger … --output json` with
/// `flags` running in the background once its sampler is attached.
async fn sampling_for_a_trigger(
    flags: &[&str],
) -> (
    Stack,
    opentelemetry_sdk::trace::SdkTracerProvider,
    tokio::task::JoinHandle<crate::cli::Output>,
) {
    let stack = Stack::start(Backend::Sqlite).await;
    let provider = crate::trigger::provider(stack.otlp_grpc);
    let p = provider.clone();
    let warmup = produce(move || {
        request(
            &p.tracer("e2e"),
            "GET /warmup",
            Duration::from_millis(1),
            render_receipt,
        )
    })
    .await;
    stack.wait_for_trace(&warmup, 1).await;
    assert_eq!(
        perf_events(),
        0,
        "nothing is attached while no trigger is active"
    );
    let mut args = vec![
        "profile".to_string(),
        "trace-trigger".into(),
        "--service".into(),
        crate::trigger::SERVICE.into(),
        "--timeout".into(),
        "60s".into(),
        "--output".into(),
        "json".into(),
    ];
    args.extend(flags.iter().map(|f| f.to_string()));
    let colony = stack.colony.clone();
    let cli = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        coral(Some(&colony), &args)
    });
    wait_for_perf_events("the trigger attaches the sampler", |n| n > 0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    (stack, provider, cli)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
async fn a_trigger_profiles_each_slow_request_from_its_first_to_its_last_moment() {
    let _ebpf = require_root().await;
    let (stack, provider, cli) =
        sampling_for_a_trigger(&["--min-duration", "300ms", "--count", "2"]).await;
    let p = provider.clone();
    let slow: Vec<String> = produce(move || {
        let tracer = p.tracer("e2e");
        let mut slow = Vec::new();
        for _ in 0..3 {
            slow.push(two_phase_request(&tracer, Duration::from_millis(250)));
            request(
                &tracer,
                "GET /fast",
                Duration::from_millis(5),
                render_receipt,
            );
        }
        slow
    })
    .await;

    let out = cli.await.unwrap();
    assert!(out.ok, "{}", out.stderr);
    let result: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(result["status"], "completed", "{result}");
    let collected = result["collected"].as_array().unwrap();
    assert_eq!(collected.len(), 2, "{result}");
    for c in collected {
        let trace = c["trace_id"].as_str().unwrap();
        assert!(
            slow.iter().any(|s| s == trace),
            "{trace} is not a slow request"
        );
        assert_eq!(c["precision"], "thread");
        let json = wait_for_profile(&stack.colony, trace, &["--format", "json"]).await;
        let profile: Profile = merged_profile(&json);
        let share = |f: &str| {
            profile
                .all_hotspots(coral_analysis::profile::ProfileType::Cpu)
                .iter()
                .find(|h| h.function.ends_with(f))
                .map_or(0.0, |h| h.total_share)
        };
        // Each half is ~50% of the request (less on a busy machine): a profile of the
        // tail only would lack the first, one cut short the second.
        for f in ["validate_signature", "render_receipt"] {
            assert!(share(f) >= 0.1, "{f}: {:.2} of {trace}: {json}", share(f));
        }
    }
    wait_for_perf_events("sampling stops when the trigger completes", |n| n == 0).await;
    provider.shutdown().unwrap();
}

/// RFD 080's diagnosis end to end: most requests are fast, a few take a slow path
/// through `validate_signature`; a trigger collects the slow ones and a baseline of
/// the others; `profile-compare` names the planted function first, significantly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
async fn profile_compare_names_the_planted_slow_path() {
    let _ebpf = require_root().await;
    let (stack, provider, trigger) = sampling_for_a_trigger(&[
        "--min-duration",
        "200ms",
        "--count",
        "6",
        "--baseline",
        "40",
    ])
    .await;
    let p = provider.clone();
    produce(move || mixed_checkouts(&p.tracer("e2e"), 42)).await;
    let out = trigger.await.unwrap();
    assert!(out.ok, "{}", out.stderr);
    // The baseline is sent when the trigger ends: wait until it is stored.
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let id = status["trigger_id"].as_str().unwrap().to_string();
    for _ in 0..100 {
        let s = coral(
            Some(&stack.colony),
            &["profile", "trigger-status", &id, "--output", "json"],
        );
        let s: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
        if s["baseline_collected"].as_u64().unwrap_or(0) >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let compare = |format: &str| {
        coral(
            Some(&stack.colony),
            &[
                "query",
                "profile-compare",
                "--service",
                crate::trigger::SERVICE,
                "--cohort-a",
                "duration > 200ms",
                "--cohort-b",
                "duration < 100ms",
                "--format",
                format,
            ],
        )
    };
    let out = compare("json");
    assert!(out.ok, "{}", out.stderr);
    let result: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let first = &result["functions"][0];
    assert!(
        first["function"]
            .as_str()
            .unwrap()
            .ends_with("validate_signature"),
        "{result:#}"
    );
    assert_eq!(first["significance"], "high", "{result:#}");
    assert!(first["delta_pp"].as_f64().unwrap() > 50.0, "{result:#}");
    assert!(result["cohort_a"]["requests"].as_u64().unwrap() >= 6);
    assert!(result["cohort_b"]["requests"].as_u64().unwrap() >= 30);

    // A cohort that matches none of the profiled requests says so, and shows no table.
    let none = coral(
        Some(&stack.colony),
        &[
            "query",
            "profile-compare",
            "--service",
            crate::trigger::SERVICE,
            "--cohort-a",
            "duration > 1h",
            "--cohort-b",
            "duration < 100ms",
        ],
    );
    assert!(!none.ok && none.stdout.is_empty(), "{}", none.stdout);
    assert!(
        none.stderr
            .contains("cohort A (duration > 1h) matched none of the profiled requests"),
        "{}",
        none.stderr
    );

    let table = compare("table");
    assert!(table.ok, "{}", table.stderr);
    assert!(
        table.stdout.contains("validate_signature"),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("Verdict:"), "{}", table.stdout);
    let svg = compare("svg");
    assert!(svg.ok && svg.stdout.starts_with("<?xml"), "{}", svg.stderr);
    provider.shutdown().unwrap();
}
