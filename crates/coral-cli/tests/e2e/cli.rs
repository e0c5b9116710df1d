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
        ("query-services-help.txt", &["query", "services", "--help"]),
        ("query-trace-help.txt", &["query", "trace", "--help"]),
        ("query-agents-help.txt", &["query", "agents", "--help"]),
        (
            "query-profile-compare-help.txt",
            &["query", "profile-compare", "--help"],
        ),
        (
            "profile-triggers-help.txt",
            &["profile", "triggers", "--help"],
        ),
        (
            "profile-trigger-status-help.txt",
            &["profile", "trigger-status", "--help"],
        ),
        (
            "profile-trigger-cancel-help.txt",
            &["profile", "trigger-cancel", "--help"],
        ),
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
    let trace = "ab".repeat(16);
    let cases: [(&[&str], &str); 13] = [
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
        // Each command takes only the formats it has, and one format.
        (
            &["query", "services", "--format", "svg"],
            "[possible values: text, json]",
        ),
        (
            &[
                "query",
                "trace-profile",
                &trace,
                "--format",
                "svg",
                "-o",
                "json",
            ],
            "cannot be used multiple times",
        ),
        (
            &["profile", "triggers", "--output", "pprof"],
            "[possible values: text, json]",
        ),
        (
            &[
                "query",
                "profile-compare",
                "--service",
                "s",
                "--cohort-a",
                "duration > 1s",
                "--cohort-b",
                "duration < 1s",
                "-o",
                "pprof",
            ],
            "[possible values: text, json, folded, svg]",
        ),
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

/// A profile of `stacks` (root first; `samples` each) sampled at `hz`.
fn wire_profile(stacks: &[(&[&str], u64)], hz: u64) -> v1::Profile {
    let mut frames: Vec<v1::Frame> = Vec::new();
    let mut wire_stacks = Vec::new();
    for (functions, samples) in stacks {
        let frame_ids = functions
            .iter()
            .map(|f| match frames.iter().position(|x| x.function == *f) {
                Some(i) => i as u32,
                None => {
                    frames.push(v1::Frame {
                        function: f.to_string(),
                        module: "checkout-svc".into(),
                        ..Default::default()
                    });
                    frames.len() as u32 - 1
                }
            })
            .collect();
        wire_stacks.push(v1::Stack {
            frame_ids,
            samples: *samples,
            cpu_ns: samples * 1_000_000_000 / hz,
            off_cpu_ns: 0,
            memory_bytes: 0,
        });
    }
    v1::Profile {
        frames,
        stacks: wire_stacks,
    }
}

const SESSION: &str = "5b1f0c3e-0000-4000-8000-000000000001";
/// The trace of the slow request whose profile came with truncated and lost samples.
const LOSSY_TRACE: u8 = 3;
const HOT: &str = "validateToken /work/app/node_modules/@corp/auth/lib/middleware/server.js:30:29";

/// Requests of checkout-svc with their profiles, stored through the agent API: one
/// trace of two profiled spans (the trace id is returned), three slow requests that
/// spend their time in [`HOT`] (the first, [`LOSSY_TRACE`], with truncated and lost
/// samples), three fast ones and a fast one without samples.
async fn profiled_requests(stack: &Stack) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let mut spans = Vec::new();
    let mut profiles = Vec::new();
    let mut add = |n: u8, parent: u8, name: &str, ms: i64, profile: v1::Profile| {
        let trace = if n <= 2 { 0xcd } else { n };
        let span = v1::Span {
            trace_id: vec![trace; 16],
            span_id: vec![n; 8],
            parent_span_id: if parent == 0 { vec![] } else { vec![parent; 8] },
            service: "checkout-svc".into(),
            name: name.into(),
            kind: if parent == 0 { 2 } else { 1 },
            start_time_unix_nano: now - 60_000_000_000 + i64::from(n) * 1_000_000,
            duration_ns: ms * 1_000_000,
            http_status: (parent == 0).then_some(200),
            pid: Some(4242),
            thread_id: Some(i64::from(n) + 100),
            node: "node-a".into(),
            ..Default::default()
        };
        profiles.push(v1::TraceProfile {
            trace_id: span.trace_id.clone(),
            span_id: span.span_id.clone(),
            service: span.service.clone(),
            span_name: span.name.clone(),
            start_time_unix_nano: span.start_time_unix_nano,
            duration_ns: span.duration_ns,
            node: "node-a".into(),
            pid: Some(4242),
            thread_id: span.thread_id,
            precision: "thread".into(),
            frequency_hz: 100,
            concurrent_requests: 0,
            source: format!("session:{SESSION}"),
            profile: Some(profile),
            truncated_samples: if n == LOSSY_TRACE { 12 } else { 0 },
            lost_samples: if n == LOSSY_TRACE { 40 } else { 0 },
            profile_types: vec!["cpu".into()],
        });
        spans.push(span);
    };
    let slow = |samples| {
        wire_profile(
            &[
                (&["main", "handle", HOT][..], samples),
                (&["main", "handle"][..], 2),
            ],
            100,
        )
    };
    add(1, 0, "POST /checkout", 1200, slow(90));
    add(
        2,
        1,
        "render_receipt",
        40,
        wire_profile(&[(&["main", "render_receipt"][..], 3)], 100),
    );
    for n in 3..6 {
        add(n, 0, "POST /checkout", 1000, slow(80));
    }
    for n in 6..9 {
        add(
            n,
            0,
            "POST /checkout",
            50,
            wire_profile(&[(&["main", "handle"][..], 4)], 100),
        );
    }
    add(9, 0, "POST /checkout", 30, v1::Profile::default());
    let mut agent = coral_client::agent_client(coral_client::connect(&stack.colony).await.unwrap());
    agent
        .ingest_spans(v1::IngestSpansRequest {
            agent_id: "golden".into(),
            spans,
        })
        .await
        .unwrap();
    let stored = agent
        .ingest_trace_profiles(v1::IngestTraceProfilesRequest {
            agent_id: "golden".into(),
            profiles,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stored.rejected, 0, "{}", stored.error_message);
    "cd".repeat(16)
}

async fn run(colony: &str, dir: &std::path::Path, args: &[&str]) -> Output {
    let (colony, dir) = (colony.to_string(), dir.to_path_buf());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        coral_in(Some(&colony), &dir, &args)
    })
    .await
    .unwrap()
}

/// [`coral`] in the directory `dir`.
pub fn coral_in(colony: Option<&str>, dir: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coral"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CORAL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("COLUMNS", "100").current_dir(dir);
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

fn json(out: &Output) -> serde_json::Value {
    assert!(out.ok, "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

/// One output model: `--format` says what, `--output-file` says where, for every
/// command and format; the JSON says what the text says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_goes_to_stdout_or_a_file_and_json_says_what_text_says() {
    let stack = Stack::start(Backend::Sqlite).await;
    let trace = profiled_requests(&stack).await;
    let dir = tempfile::tempdir().unwrap();
    let (colony, d) = (stack.colony.as_str(), dir.path());

    // The text of one request's profiles, pinned.
    let text = run(colony, d, &["query", "trace-profile", &trace]).await;
    assert!(text.ok, "{}", text.stderr);
    golden("trace-profile.txt", &text.stdout);

    // Text to a file: the file, not standard output.
    let to_file = run(
        colony,
        d,
        &["query", "trace-profile", &trace, "--output-file", "p.txt"],
    )
    .await;
    assert!(
        to_file.ok && to_file.stdout.is_empty(),
        "{}",
        to_file.stderr
    );
    assert_eq!(
        std::fs::read_to_string(d.join("p.txt")).unwrap(),
        text.stdout
    );
    for (args, file) in [
        (
            &["query", "services", "--output-file", "s.txt"][..],
            "s.txt",
        ),
        (
            &["query", "agents", "-o", "json", "--output-file", "a.json"],
            "a.json",
        ),
        (
            &["profile", "triggers", "--all", "--output-file", "t.txt"],
            "t.txt",
        ),
    ] {
        let out = run(colony, d, args).await;
        assert!(out.ok && out.stdout.is_empty(), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("wrote {file}")),
            "{}",
            out.stderr
        );
        assert!(d.join(file).exists(), "{args:?}");
    }
    assert!(
        std::fs::read_to_string(d.join("s.txt"))
            .unwrap()
            .starts_with("SERVICE")
    );
    let pprof = run(
        colony,
        d,
        &[
            "query",
            "trace-profile",
            &trace,
            "-o",
            "pprof",
            "--output-file",
            "p.pb.gz",
        ],
    )
    .await;
    assert!(pprof.ok, "{}", pprof.stderr);
    assert_eq!(
        &std::fs::read(d.join("p.pb.gz")).unwrap()[..2],
        &[0x1f, 0x8b]
    );
    // "table" is the old name of text.
    let table = run(
        colony,
        d,
        &["query", "trace-profile", &trace, "--format", "table"],
    )
    .await;
    assert_eq!(table.stdout, text.stdout);

    // trace-profile JSON: each span with its own profile and summary, and the merge.
    let view = json(&run(colony, d, &["query", "trace-profile", &trace, "-o", "json"]).await);
    assert_eq!(view["trace_id"], trace.as_str());
    assert_eq!(view["truncated"], false);
    let spans = view["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2, "{view:#}");
    let root = &spans[0];
    assert_eq!(root["service"], "checkout-svc");
    assert_eq!(root["span_name"], "POST /checkout");
    assert_eq!(root["span_id"], "01".repeat(8));
    assert_eq!(root["duration_ns"], 1_200_000_000i64);
    assert_eq!(root["precision"], "thread");
    assert_eq!(root["frequency_hz"], 100);
    assert_eq!(root["samples"], 92);
    assert_eq!(root["cpu_ns"], 920_000_000i64);
    assert_eq!(root["node"], "node-a");
    assert_eq!(root["pid"], 4242);
    assert_eq!(root["thread_id"], 101);
    assert_eq!(root["source"]["kind"], "session");
    assert_eq!(root["source"]["id"], SESSION);
    assert!(root["start"].as_str().unwrap().ends_with('Z'), "{root}");
    assert!(root["start_unix_nano"].is_i64());
    assert_eq!(root["hotspots"][0]["function"], HOT);
    assert!(root["profile"]["stacks"].is_array());
    // The child waited most of its time: the text's warnings are in the JSON.
    let child = &spans[1];
    let warnings: Vec<&str> = child["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(!warnings.is_empty());
    for w in &warnings {
        assert!(text.stdout.contains(&format!("warning: {w}")), "{w}");
    }
    assert_eq!(view["merged"]["samples"], 95);
    for span in spans {
        assert_eq!(span["truncated_samples"], 0);
        assert_eq!(span["lost_samples"], 0);
    }

    // A profile with truncated stacks and lost samples says so, in text and JSON.
    let lossy = format!("{LOSSY_TRACE:02x}").repeat(16);
    let lossy_text = run(colony, d, &["query", "trace-profile", &lossy]).await;
    assert!(lossy_text.ok, "{}", lossy_text.stderr);
    let expected = [
        "warning: 12 of 82 samples (15%) have truncated stacks (outer frames missing)",
        "warning: at least 40 samples lost in this request's window (sampler overflow): the \
         profile undercounts",
    ];
    for line in expected {
        assert!(
            lossy_text.stdout.lines().any(|l| l == line),
            "{line}\n{}",
            lossy_text.stdout
        );
    }
    let lossy_view = json(&run(colony, d, &["query", "trace-profile", &lossy, "-o", "json"]).await);
    let span = &lossy_view["spans"][0];
    assert_eq!(span["samples"], 82, "{lossy_view:#}");
    assert_eq!(span["truncated_samples"], 12);
    assert_eq!(span["lost_samples"], 40);
    for line in expected {
        let warning = line.strip_prefix("warning: ").unwrap();
        assert!(
            span["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w == warning),
            "{span:#}"
        );
    }
    assert_eq!(
        view["merged"]["profile"]["frames"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    // Compare: text to a file, and the JSON with the requests that had samples.
    let compare = |extra: &[&'static str]| {
        let base = [
            "query",
            "profile-compare",
            "--service",
            "checkout-svc",
            "--cohort-a",
            "duration > 500ms",
            "--cohort-b",
            "duration < 100ms",
        ];
        [&base[..], extra].concat()
    };
    let view = json(&run(colony, d, &compare(&["-o", "json"])).await);
    let (a, b) = (&view["cohort_a"], &view["cohort_b"]);
    assert_eq!(a["requests"], 4, "{view:#}");
    assert_eq!(a["requests_with_samples"], 4, "{view:#}");
    let b_requests = b["requests"].as_u64().unwrap();
    assert_eq!(b["requests_with_samples"], b_requests - 1, "{view:#}");
    assert_eq!(view["since_ns"], 3_600_000_000_000i64);
    let to_file = run(colony, d, &compare(&["--output-file", "c.txt"])).await;
    assert!(
        to_file.ok && to_file.stdout.is_empty(),
        "{}",
        to_file.stderr
    );
    let table = std::fs::read_to_string(d.join("c.txt")).unwrap();
    let cohort_b = format!("{b_requests} requests ({} with samples)", b_requests - 1);
    assert!(table.contains(&cohort_b), "{table}");
    // The long name fits 100 columns: its path gave way, not the function.
    let row = table
        .lines()
        .find(|l| l.starts_with("validateToken"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.chars().count() <= 100, "{row}");
    assert!(
        row.contains("…") && row.contains("server.js:30:29"),
        "{row}"
    );

    // `profile cpu -o json` is JSON on standard output (it was a file named "json"),
    // with what the text says.
    let profile_cpu = |extra: &[&'static str]| {
        let base = [
            "profile",
            "cpu",
            "--service",
            "checkout-svc",
            "--duration",
            "1s",
        ];
        [&base[..], extra].concat()
    };
    let cpu = run(colony, d, &profile_cpu(&["-o", "json"])).await;
    let view = json(&cpu);
    assert!(!d.join("json").exists());
    assert_eq!(view["service"], "checkout-svc");
    assert_eq!(view["duration_ns"], 1_000_000_000i64);
    assert_eq!(view["frequency_hz"], 99);
    assert_eq!(view["source"]["kind"], "session");
    assert!(view["agents"].is_array() && view["profile"]["frames"].is_array());
    assert!(
        view["warnings"][0]
            .as_str()
            .unwrap()
            .contains("no agent hosts"),
        "{view:#}"
    );
    let cpu = run(colony, d, &profile_cpu(&["--output-file", "cpu.txt"])).await;
    assert!(cpu.ok && cpu.stdout.is_empty(), "{}", cpu.stderr);
    assert!(
        std::fs::read_to_string(d.join("cpu.txt"))
            .unwrap()
            .contains("no agent hosts it")
    );
}

/// `coral … | head -1`: a reader that stops reading ends `coral` quietly, with status
/// 0 (not "Broken pipe" and 1, nor a panic when standard error is the same pipe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_ends_quietly() {
    let stack = Stack::start(Backend::Sqlite).await;
    profiled_requests(&stack).await;
    let run_closed = |args: &'static [&'static str], stderr_too: bool| {
        let colony = stack.colony.clone();
        tokio::task::spawn_blocking(move || {
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader); // closed before coral writes a byte
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_coral"));
            cmd.env("CORAL_COLONY", colony).args(args);
            if stderr_too {
                cmd.stderr(writer.try_clone().unwrap());
            } else {
                cmd.stderr(std::process::Stdio::piped());
            }
            let out = cmd.stdout(writer).output().unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    for args in [
        &["query", "services"][..],
        &["query", "traces", "--service", "checkout-svc", "-o", "json"],
        &["profile", "triggers", "--all"],
    ] {
        let (code, stderr) = run_closed(args, false).await.unwrap();
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert_eq!(stderr, "", "{args:?}");
    }
    // Standard error closed too, with a warning to write there (no agent hosts it).
    let (code, _) = run_closed(
        &[
            "profile",
            "cpu",
            "--service",
            "checkout-svc",
            "--duration",
            "1s",
        ],
        true,
    )
    .await
    .unwrap();
    assert_eq!(code, Some(0));
}
