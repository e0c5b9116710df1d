//! The real `coral` binary against a colony on port 0: output people read (pinned by
//! golden files), JSON, and clear errors for bad input.
//!
//! Set `CORAL_ACCEPT_GOLDEN=1` to rewrite the golden files after an intended change.

use crate::harness::{Backend, Stack};
use crate::ingest::{Transport, send_request};
use coral_client::v1;
use std::path::PathBuf;
use std::process::Command;

pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `coral` with a clean environment (no CORAL_* from the caller's shell).
pub fn coral(colony: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coral"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CORAL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("COLUMNS", "100");
    if let Some(colony) = colony {
        cmd.env("CORAL_COLONY", colony);
    }
    let out = cmd.args(args).output().expect("run coral");
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("CORAL_ACCEPT_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing {}: run with CORAL_ACCEPT_GOLDEN=1", path.display()));
    assert_eq!(
        actual, expected,
        "{name} changed; if intended, rerun with CORAL_ACCEPT_GOLDEN=1"
    );
}

#[test]
fn help_texts_are_pinned() {
    for (name, args) in [
        ("help.txt", &["--help"][..]),
        ("colony-start-help.txt", &["colony", "start", "--help"]),
        ("agent-start-help.txt", &["agent", "start", "--help"]),
        ("query-help.txt", &["query", "--help"]),
        ("query-traces-help.txt", &["query", "traces", "--help"]),
        (
            "query-trace-profile-help.txt",
            &["query", "trace-profile", "--help"],
        ),
        ("profile-cpu-help.txt", &["profile", "cpu", "--help"]),
        ("profile-help.txt", &["profile", "--help"]),
        ("mcp-help.txt", &["mcp", "--help"]),
        ("demo-help.txt", &["demo", "--help"]),
        (
            "profile-trace-trigger-help.txt",
            &["profile", "trace-trigger", "--help"],
        ),
    ] {
        let out = coral(None, args);
        assert!(out.ok, "{args:?}: {}", out.stderr);
        golden(name, &out.stdout);
    }
}

#[test]
fn bad_flags_say_how_to_fix_them() {
    let cases: [(&[&str], &str); 9] = [
        (
            &["profile", "cpu", "--service", "s", "--frequency", "0"],
            "1..=1000",
        ),
        (
            &["profile", "cpu", "--service", "s", "--frequency", "5000"],
            "1..=1000",
        ),
        (
            &["profile", "cpu", "--service", "s", "--duration", "soon"],
            "100ms",
        ),
        (&["query", "trace-profile", "xyz"], "32 hex digits"),
        (
            &["query", "traces", "--service", "s", "--since", "1x"],
            "100ms, 1.5s",
        ),
        (
            &["query", "traces", "--service", "s", "--min-duration", "100"],
            "100ms",
        ),
        (
            &["query", "traces", "--service", "s", "--status-code", "6xx"],
            "5xx",
        ),
        (
            &["query", "traces", "--service", "s", "--limit", "5000"],
            "1..=1000",
        ),
        (&["query", "trace", "not-hex"], "32 hex digits"),
    ];
    for (args, hint) in cases {
        let out = coral(Some("127.0.0.1:1"), args);
        assert!(!out.ok, "{args:?} should fail");
        assert!(out.stderr.contains(hint), "{args:?}: {}", out.stderr);
    }
    let out = coral(Some("127.0.0.1:1"), &["query", "services"]);
    assert!(!out.ok);
    assert!(out.stderr.contains("coral colony start"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_print_tables_trees_and_json() {
    let stack = Stack::start(Backend::Sqlite).await;
    let trace_id = send_request(&stack, "payment-svc", &[Transport::Grpc]).await;
    stack.wait_for_trace(&trace_id, 2).await;
    let colony = stack.colony.clone();

    let run = move |args: Vec<String>| {
        let colony = colony.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                coral(Some(&colony), &args)
            })
            .await
            .unwrap()
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let services = run(args(&["query", "services"])).await;
    assert!(services.ok, "{}", services.stderr);
    assert!(
        services.stdout.starts_with("SERVICE"),
        "{}",
        services.stdout
    );
    assert!(services.stdout.contains("payment-svc"));

    let traces = run(args(&[
        "query",
        "traces",
        "--service",
        "payment-svc",
        "--status-code",
        "5xx",
    ]))
    .await;
    assert!(traces.ok, "{}", traces.stderr);
    assert!(traces.stdout.contains(&trace_id), "{}", traces.stdout);
    assert!(traces.stdout.contains("503 "), "{}", traces.stdout);
    assert!(traces.stdout.contains("/checkout"));

    let json = run(args(&[
        "query",
        "traces",
        "--service",
        "payment-svc",
        "-o",
        "json",
    ]))
    .await;
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).expect("valid JSON");
    assert_eq!(parsed[0]["trace_id"], trace_id.as_str());
    assert_eq!(parsed[0]["http_status"], 503);
    assert_eq!(parsed[0]["thread_id"], 77);
    assert_eq!(parsed[0]["attributes"]["customer.tier"], "gold");

    let none = run(args(&[
        "query",
        "traces",
        "--service",
        "payment-svc",
        "--min-duration",
        "1h",
    ]))
    .await;
    assert!(none.ok);
    assert!(none.stdout.contains("No requests"), "{}", none.stdout);

    let unknown = run(args(&["query", "traces", "--service", "paymnt-svc"])).await;
    assert!(!unknown.ok);
    assert!(
        unknown.stderr.contains("known services: payment-svc"),
        "{}",
        unknown.stderr
    );

    let missing = run(args(&["query", "trace", &"ab".repeat(16)])).await;
    assert!(!missing.ok);
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);

    let unprofiled = run(args(&["query", "trace-profile", &trace_id])).await;
    assert!(!unprofiled.ok);
    assert!(
        unprofiled.stderr.contains("coral profile cpu"),
        "{}",
        unprofiled.stderr
    );

    // The spans name a process that cannot exist: no agent hosts the service.
    let unhosted = run(args(&[
        "profile",
        "cpu",
        "--service",
        "payment-svc",
        "--duration",
        "1s",
    ]))
    .await;
    assert!(unhosted.ok, "{}", unhosted.stderr);
    assert!(
        unhosted
            .stderr
            .contains("no agent hosts a process of payment-svc"),
        "{}",
        unhosted.stderr
    );
    assert!(
        unhosted.stdout.contains("no agent hosts it"),
        "{}",
        unhosted.stdout
    );

    let unknown_profile = run(args(&[
        "profile",
        "cpu",
        "--service",
        "paymnt-svc",
        "--duration",
        "1s",
    ]))
    .await;
    assert!(!unknown_profile.ok);
    assert!(
        unknown_profile
            .stderr
            .contains("known services: payment-svc"),
        "{}",
        unknown_profile.stderr
    );
}

/// The span tree of a trace with fixed timestamps, pinned by a golden file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_tree_is_pinned() {
    let stack = Stack::start(Backend::Sqlite).await;
    let t0 = 1_700_000_000_000_000_000i64;
    let span = |id: u8, parent: u8, service: &str, name: &str, kind, start_ms: i64, dur_ms: i64| {
        v1::Span {
            trace_id: vec![0xab; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            service: service.into(),
            name: name.into(),
            kind,
            start_time_unix_nano: t0 + start_ms * 1_000_000,
            duration_ns: dur_ms * 1_000_000,
            http_status: (kind == 2).then_some(200),
            ..Default::default()
        }
    };
    let mut error = span(4, 3, "ledger-svc", "INSERT ledger", 3, 1130, 40);
    error.status_code = 2;
    coral_client::agent_client(coral_client::connect(&stack.colony).await.unwrap())
        .ingest_spans(v1::IngestSpansRequest {
            agent_id: "golden".into(),
            spans: vec![
                span(1, 0, "payment-svc", "POST /checkout", 2, 0, 1210),
                span(2, 1, "payment-svc", "validate_signature", 1, 12, 1050),
                span(3, 1, "ledger-svc", "POST /ledger", 2, 1100, 100),
                error,
                span(
                    5,
                    9,
                    "payment-svc",
                    "orphan (parent never arrived)",
                    1,
                    5,
                    1,
                ),
            ],
        })
        .await
        .unwrap();
    let colony = stack.colony.clone();
    let out = tokio::task::spawn_blocking(move || {
        coral(Some(&colony), &["query", "trace", &"ab".repeat(16)])
    })
    .await
    .unwrap();
    assert!(out.ok, "{}", out.stderr);
    golden("trace-tree.txt", &out.stdout);
}
