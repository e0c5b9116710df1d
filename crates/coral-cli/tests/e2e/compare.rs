//! `coral query profile-compare` on both stores: bad filters are refused with the
//! column and what was expected, and nothing they contain reaches the database;
//! cohorts without profiles are said to be empty. (The real comparison, with eBPF,
//! is in `profile.rs`.)

use crate::cli::coral;
use crate::harness::{Backend, Sampling, Stack};
use crate::trigger::{SERVICE, provider, request};
use coral_client::v1;
use coral_sampler::FakeSampler;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

async fn span_count(stack: &Stack) -> usize {
    stack
        .query()
        .await
        .query_traces(v1::QueryTracesRequest {
            service: SERVICE.into(),
            since: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .spans
        .len()
}

async fn bad_filters_are_refused_and_harmless(backend: Backend) {
    let stack = Stack::start_with(backend, Sampling::Fake(Arc::new(FakeSampler::new()))).await;
    let provider = provider(stack.otlp_grpc);
    let trace = request(
        &provider,
        SystemTime::now(),
        Duration::from_millis(5),
        "/checkout",
        200,
    )
    .await;
    stack.wait_for_trace(&trace, 1).await;
    let before = span_count(&stack).await;

    let colony = stack.colony.clone();
    let compare = move |a: &str| {
        coral(
            Some(&colony),
            &[
                "query",
                "profile-compare",
                "--service",
                SERVICE,
                "--cohort-a",
                a,
                "--cohort-b",
                "duration < 100ms",
            ],
        )
    };
    for (filter, expected) in [
        ("duration >", "column"),
        ("duration > \"abc\"", "duration"),
        ("latency > 1s", "unknown field"),
        ("duration > 1s; DROP TABLE spans", "column"),
        ("name = \"x\" OR 1=1 --", "column"),
        ("duration > 1s /* comment */", "column"),
        ("(duration > 1s", "column"),
        ("status ~ 5", "status"),
    ] {
        let out = tokio::task::spawn_blocking({
            let compare = compare.clone();
            let filter = filter.to_string();
            move || compare(&filter)
        })
        .await
        .unwrap();
        assert!(!out.ok, "{filter:?} was accepted: {}", out.stdout);
        assert!(
            out.stderr.contains("cohort A filter"),
            "{filter:?}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(expected), "{filter:?}: {}", out.stderr);
    }
    // A quote in a value is a value: it selects nothing, and executes nothing.
    let out = tokio::task::spawn_blocking({
        let compare = compare.clone();
        move || compare("name = \"x'; DROP TABLE spans; --\"")
    })
    .await
    .unwrap();
    assert!(!out.ok, "an empty cohort is no comparison: {}", out.stdout);
    assert!(
        out.stderr
            .contains("has no profiled request in the last 1h00m, so cohort A"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "no table: {}", out.stdout);
    assert_eq!(span_count(&stack).await, before, "the store is untouched");

    let out = coral(
        Some(&stack.colony),
        &[
            "query",
            "profile-compare",
            "--service",
            "nope",
            "--cohort-a",
            "duration > 1s",
            "--cohort-b",
            "duration < 1s",
        ],
    );
    assert!(
        !out.ok && out.stderr.contains("unknown service"),
        "{}",
        out.stderr
    );
    provider.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filters_are_refused_and_harmless_sqlite() {
    bad_filters_are_refused_and_harmless(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
async fn bad_filters_are_refused_and_harmless_postgres() {
    bad_filters_are_refused_and_harmless(Backend::Postgres).await;
}
