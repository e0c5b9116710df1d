//! The MCP server with rmcp's own client: over stdio (the real `coral mcp` binary)
//! and over streamable HTTP, against a live colony with spans from the real
//! OpenTelemetry SDK. Tool schemas are pinned by `tests/golden/mcp-tools.json`.

use crate::harness::{Backend, Stack};
use crate::trigger::{SERVICE, request, sampled_from_now, stack_with};
use coral_sampler::FakeSampler;
use rmcp::model::{CallToolRequestParams, CallToolResult, ErrorCode};
use rmcp::service::{RunningService, ServiceError};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub(crate) type Client = RunningService<RoleClient, ()>;

/// `coral mcp` on stdio, for the colony at `colony`, with a clean environment.
pub(crate) async fn stdio_client(colony: &str) -> Client {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_coral"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CORAL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("CORAL_COLONY", colony)
        .env("RUST_LOG", "warn")
        .arg("mcp");
    ().serve(TokioChildProcess::new(cmd).expect("spawn coral mcp"))
        .await
        .expect("MCP handshake over stdio")
}

async fn call(client: &Client, tool: &str, args: Value) -> Result<CallToolResult, ServiceError> {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await
}

/// A successful answer's text; its structured content must be there too.
pub(crate) async fn ok(client: &Client, tool: &str, args: Value) -> (String, Value) {
    let result = call(client, tool, args.clone())
        .await
        .unwrap_or_else(|e| panic!("{tool} {args}: {e}"));
    let text = text_of(&result);
    assert_ne!(result.is_error, Some(true), "{tool} {args}: {text}");
    let data = result
        .structured_content
        .unwrap_or_else(|| panic!("{tool}: no structured content"));
    (text, data)
}

/// A tool error's text (the model sees it and can fix the call).
async fn tool_error(client: &Client, tool: &str, args: Value) -> String {
    let result = call(client, tool, args.clone())
        .await
        .unwrap_or_else(|e| panic!("{tool} {args}: expected a tool error, got {e}"));
    assert_eq!(
        result.is_error,
        Some(true),
        "{tool} {args}: {}",
        text_of(&result)
    );
    text_of(&result)
}

/// Arguments that do not fit the schema: a tool error (as MCP asks, so that the model
/// can correct the call) that points at the schema.
async fn schema_error(client: &Client, tool: &str, args: Value) -> String {
    let text = tool_error(client, tool, args).await;
    assert!(
        text.contains("failed to deserialize parameters") && text.contains("inputSchema"),
        "{text}"
    );
    text
}

fn text_of(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A rough token count (about four characters per token for English and ids).
fn tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// The tool list as the golden file pins it: names, descriptions, schemas.
async fn tools_json(client: &Client) -> String {
    let mut tools = client.list_all_tools().await.expect("tools/list");
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    let tools: Vec<Value> = tools
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "description": t.description,
                "inputSchema": Value::Object(t.input_schema.as_ref().clone()),
            })
        })
        .collect();
    serde_json::to_string_pretty(&tools).unwrap() + "\n"
}

/// A stack with requests of [`SERVICE`]: `fast` quick ones and one slow one (its id
/// is returned).
async fn stack_with_requests(backend: Backend, sampler: &Arc<FakeSampler>) -> (Stack, String) {
    let (stack, provider) = stack_with(backend, sampler).await;
    let now = SystemTime::now() - Duration::from_secs(5);
    for i in 0..20 {
        let status = if i == 0 { 500 } else { 200 };
        let t = request(
            &provider,
            now,
            Duration::from_millis(20 + i),
            "/pay",
            status,
        )
        .await;
        stack.wait_for_trace(&t, 1).await;
    }
    let slow = request(&provider, now, Duration::from_millis(1500), "/pay", 200).await;
    stack.wait_for_trace(&slow, 1).await;
    provider.shutdown().unwrap();
    (stack, slow)
}

async fn every_tool_over_stdio(backend: Backend) {
    let sampler = Arc::new(FakeSampler::new());
    let (stack, slow) = stack_with_requests(backend, &sampler).await;
    let client = stdio_client(&stack.colony).await;

    let info = client.peer_info().expect("server info");
    let instructions = info.instructions.clone().unwrap_or_default();
    for needle in ["coral_query_profile_compare", "significance", "precision"] {
        assert!(instructions.contains(needle), "{instructions}");
    }
    crate::cli::golden("mcp-tools.json", &tools_json(&client).await);

    let (text, data) = ok(&client, "coral_list_services", json!({})).await;
    assert!(text.contains(SERVICE), "{text}");
    assert_eq!(data["services"][0]["name"], SERVICE);

    let (text, data) = ok(&client, "coral_query_summary", json!({"service": SERVICE})).await;
    // Exact over the 22 requests (1ms hello, 20..39ms, 1.5s slow; one HTTP 500):
    // nearest rank puts p50 on the 11th, p95 on the 21st, p99 on the 22nd.
    assert!(
        text.contains("22 requests") && text.contains("errors 4.5% (1)"),
        "{text}"
    );
    assert!(text.contains("p50 29.0ms p95 39.0ms p99 1.50s"), "{text}");
    assert!(text.contains(&format!("slow: {slow}")), "{text}");
    let stats = &data["services"][0]["stats"];
    assert_eq!(stats["requests"], 22, "{data}");
    assert_eq!(stats["errors"], 1, "{data}");
    assert_eq!(stats["p50_ns"], 29_000_000, "{data}");
    assert_eq!(data["services"][0]["slowest"][0]["trace_id"], slow);
    assert_eq!(data["services"][0]["slowest"][0]["profile"], Value::Null);
    // The rate is over the time the requests span, whatever window was asked for (it
    // was the count divided by the window: 7d made it near 0).
    let rate = |data: &Value| data["services"][0]["stats"]["requests_per_second"].as_f64();
    let (week_text, week) = ok(
        &client,
        "coral_query_summary",
        json!({"service": SERVICE, "since": "7d"}),
    )
    .await;
    assert!(rate(&data).unwrap() > 0.0, "{data}");
    assert_eq!(rate(&data), rate(&week), "{week}");
    assert!(week_text.contains("/s over the "), "{week_text}");
    assert_eq!(data["services"][0]["slowest"].as_array().unwrap().len(), 3);
    assert!(tokens(&text) < 2000, "{} tokens: {text}", tokens(&text));
    let (text, _) = ok(&client, "coral_query_summary", json!({"since": "30m"})).await;
    assert!(text.contains(SERVICE), "{text}");
    // The colony RPC behind it refuses what it cannot answer, naming the fix.
    let mut query = stack.query().await;
    let summary = |service: &str, seconds: i64, slowest: Option<u32>| {
        coral_client::v1::GetServiceSummaryRequest {
            service: service.into(),
            since: Some(prost_types::Duration { seconds, nanos: 0 }),
            slowest,
        }
    };
    for (request, code, needle) in [
        (
            summary(SERVICE, 60, Some(21)),
            tonic::Code::InvalidArgument,
            "at most 20",
        ),
        (
            summary(SERVICE, 0, None),
            tonic::Code::InvalidArgument,
            "since",
        ),
        (
            summary("no-such-svc", 60, None),
            tonic::Code::NotFound,
            SERVICE,
        ),
    ] {
        let status = query.get_service_summary(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(needle), "{status:?}");
    }
    // Over every service: no exemplars, the figures alone.
    let all = query
        .get_service_summary(summary("", 3600, Some(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.services.len(), 1);
    assert_eq!((all.services[0].requests, all.services[0].errors), (22, 1));
    assert!(all.services[0].slowest.is_empty() && !all.truncated);

    let (text, data) = ok(
        &client,
        "coral_query_traces",
        json!({"service": SERVICE, "min_duration_ms": 1000}),
    )
    .await;
    assert!(text.contains(&slow), "{text}");
    assert_eq!(data["requests"].as_array().unwrap().len(), 1, "{data}");

    // Not profiled: the error says how to get a profile.
    let text = tool_error(
        &client,
        "coral_query_trace_profile",
        json!({"trace_id": slow}),
    )
    .await;
    assert!(text.contains("coral_profile_trace_trigger"), "{text}");
    let text = tool_error(
        &client,
        "coral_query_trace_profile",
        json!({"trace_id": slow, "profile_type": "memory"}),
    )
    .await;
    // Memory is a type like the others: not refused, the same answer on how to profile.
    assert!(
        text.contains("coral_profile_trace_trigger") && !text.contains("not collected yet"),
        "{text}"
    );

    // A trigger that completes while the tool waits.
    let peer = client.peer().clone();
    let trigger =
        tokio::spawn(async move {
            peer.call_tool(CallToolRequestParams::new("coral_profile_trace_trigger").with_arguments(
            json!({"service": SERVICE, "min_duration_ms": 1000, "count": 1, "timeout": "2m"})
                .as_object()
                .unwrap()
                .clone(),
        ))
        .await
        });
    let t0 = sampled_from_now(&sampler).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let provider = crate::trigger::provider(stack.otlp_grpc);
    let matched = request(&provider, t0, Duration::from_millis(1200), "/pay", 200).await;
    let result = trigger.await.unwrap().expect("the trigger tool answers");
    let answer = text_of(&result);
    assert!(
        answer.contains("completed") && answer.contains("1/1") && answer.contains(&matched),
        "{answer}"
    );
    let id = result.structured_content.unwrap()["trigger_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (text, data) = ok(&client, "coral_trigger_status", json!({"trigger_id": id})).await;
    assert_eq!(data["status"], "completed", "{text}");
    // The summary's slowest requests now include the profiled one, with its profile.
    let (text, data) = ok(&client, "coral_query_summary", json!({"service": SERVICE})).await;
    let profiled = &data["services"][0]["slowest"][1];
    assert_eq!(profiled["trace_id"], matched.as_str(), "{data}");
    // The fake sampler records no stacks: what matters is that the profile is found.
    assert_eq!(profiled["profile"]["precision"], "process", "{data}");
    assert!(profiled["profile"]["samples"].is_u64(), "{data}");
    assert!(
        text.contains("  profile: ") && text.contains("precision, top self: "),
        "{text}"
    );
    // Its breakdown: a process-precision request has CPU time only, and asking for
    // where it waited says why there is none.
    assert!(
        text.contains("wall: on-CPU") && text.contains("waiting not recorded"),
        "{text}"
    );
    assert_eq!(
        profiled["profile"]["breakdown"]["off_cpu_ns"],
        serde_json::Value::Null,
        "{data}"
    );
    let (text, data) = ok(
        &client,
        "coral_query_trace_profile",
        json!({"trace_id": matched, "profile_type": "cpu"}),
    )
    .await;
    assert!(text.contains("waiting not recorded"), "{text}");
    assert_eq!(data["profile_type"], "cpu", "{data}");
    for ty in ["offcpu", "wall"] {
        let text = tool_error(
            &client,
            "coral_query_trace_profile",
            json!({"trace_id": matched, "profile_type": ty}),
        )
        .await;
        assert!(
            text.contains(&format!("no {ty} profile"))
                && text.contains("process precision")
                && text.contains("profile_type \"cpu\""),
            "{text}"
        );
    }
    // Cancel: a trigger nothing matches.
    let started = stack
        .profile()
        .await
        .start_trace_profile_trigger(coral_client::v1::StartTraceProfileTriggerRequest {
            service_id: SERVICE.into(),
            min_duration_ms: 60_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (text, data) = ok(
        &client,
        "coral_cancel_trigger",
        json!({"trigger_id": started.trigger_id}),
    )
    .await;
    assert_eq!(data["status"], "cancelled", "{text}");
    assert_eq!(data["already_ended"], false, "{text}");
    // Again: it had already ended, and the answer says so.
    let (text, data) = ok(
        &client,
        "coral_cancel_trigger",
        json!({"trigger_id": started.trigger_id}),
    )
    .await;
    assert!(
        text.starts_with(&format!(
            "Nothing to cancel: trigger {} had already ended (cancelled)",
            started.trigger_id
        )),
        "{text}"
    );
    assert_eq!(data["already_ended"], true, "{text}");

    // Only the slow request has a profile: cohort B is empty, and the answer says why
    // (over the RFD's default window, 1h) instead of showing meaningless rows.
    let text = tool_error(
        &client,
        "coral_query_profile_compare",
        json!({"service": SERVICE, "cohort_a_filter": "duration > 1s",
               "cohort_b_filter": "duration < 100ms"}),
    )
    .await;
    assert!(
        text.starts_with(
            "cohort B (duration < 100ms) matched none of the profiled requests of \
             payment-svc in the last 1h00m"
        ),
        "{text}"
    );
    provider.shutdown().unwrap();

    bad_input(&client).await;
    // Still serving.
    ok(&client, "coral_list_services", json!({})).await;
    client.cancel().await.unwrap();
}

/// Each mistake is refused with a message that names the fix; none stops the server.
async fn bad_input(client: &Client) {
    let msg = schema_error(
        client,
        "coral_query_profile_compare",
        json!({"service": SERVICE, "cohort_a_filter": "duration > 1s"}),
    )
    .await;
    assert!(msg.contains("cohort_b_filter"), "{msg}");
    let msg = schema_error(
        client,
        "coral_profile_trace_trigger",
        json!({"service": SERVICE, "min_duration_ms": "1s"}),
    )
    .await;
    assert!(msg.contains("invalid type: string \"1s\""), "{msg}");
    let msg = schema_error(
        client,
        "coral_query_trace_profile",
        json!({"trace_id": "00", "profile_type": "disk"}),
    )
    .await;
    assert!(msg.contains("cpu") && msg.contains("memory"), "{msg}");

    let text = tool_error(
        client,
        "coral_query_summary",
        json!({"service": "no-such-svc"}),
    )
    .await;
    assert!(
        text.contains("no-such-svc")
            && text.contains(SERVICE)
            && text.contains("coral_list_services"),
        "{text}"
    );
    let text = tool_error(
        client,
        "coral_query_profile_compare",
        json!({"service": SERVICE, "cohort_a_filter": "duration >> 1s",
               "cohort_b_filter": "duration < 100ms"}),
    )
    .await;
    assert!(
        text.contains("cohort A filter") && text.contains("column"),
        "{text}"
    );
    // Not about the service: no hint about service names.
    assert!(!text.contains("coral_list_services"), "{text}");
    // A trigger every request would match is refused, with no command to run.
    let text = tool_error(
        client,
        "coral_profile_trace_trigger",
        json!({"service": SERVICE, "min_duration_ms": 0}),
    )
    .await;
    assert!(text.contains("at least one criterion"), "{text}");
    assert!(
        !text.contains("coral_list_services") && !text.contains("`coral "),
        "{text}"
    );
    let text = tool_error(
        client,
        "coral_query_profile_compare",
        json!({"service": SERVICE, "cohort_a_filter": "duration > 1s",
               "cohort_b_filter": "duration < 100ms", "since": "yesterday"}),
    )
    .await;
    assert!(text.contains("\"1h\""), "{text}");
    let text = tool_error(
        client,
        "coral_query_trace_profile",
        json!({"trace_id": "0123456789abcdef0123456789abcdef"}),
    )
    .await;
    assert!(text.contains("no profile"), "{text}");
    let text = tool_error(
        client,
        "coral_query_trace_profile",
        json!({"trace_id": "xyz"}),
    )
    .await;
    assert!(text.contains("32 hex"), "{text}");
    let text = tool_error(client, "coral_trigger_status", json!({"trigger_id": "42"})).await;
    assert!(text.contains("UUID"), "{text}");
    match call(client, "coral_no_such_tool", json!({})).await {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.code, ErrorCode::INVALID_PARAMS, "{e:?}");
            assert!(e.message.contains("tools/list"), "{e:?}");
        }
        other => panic!("an unknown tool: expected invalid_params, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_over_stdio_sqlite() {
    every_tool_over_stdio(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: run `cargo xtask test`, which provides one"]
async fn every_tool_over_stdio_postgres() {
    every_tool_over_stdio(Backend::Postgres).await;
}

/// Streamable HTTP with a bearer token: the same tools, and no token, no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_with_a_token() {
    let sampler = Arc::new(FakeSampler::new());
    let (stack, slow) = stack_with_requests(Backend::Sqlite, &sampler).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = coral_mcp::CoralMcp::new(&stack.colony).unwrap();
    let serving = tokio::spawn(coral_mcp::serve_http(
        listener,
        server,
        Some("s3cret".into()),
        async {
            let _ = stopped.await;
        },
    ));

    let config =
        rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
            url.as_str(),
        );
    let refused = ()
        .serve(StreamableHttpClientTransport::from_config(
            config.clone().auth_header("wrong"),
        ))
        .await;
    assert!(refused.is_err(), "a wrong token must not open a session");

    let client = ()
        .serve(StreamableHttpClientTransport::from_config(
            config.auth_header("s3cret"),
        ))
        .await
        .expect("MCP handshake over HTTP");
    crate::cli::golden("mcp-tools.json", &tools_json(&client).await);
    let (text, _) = ok(
        &client,
        "coral_query_traces",
        json!({"service": SERVICE, "limit": 5}),
    )
    .await;
    assert!(text.contains("5 request(s)"), "{text}");
    let (text, _) = ok(&client, "coral_query_summary", json!({"service": SERVICE})).await;
    assert!(text.contains(&slow), "{text}");
    let text = tool_error(
        &client,
        "coral_query_traces",
        json!({"service": SERVICE, "limit": 0}),
    )
    .await;
    assert!(text.contains("1 to 100"), "{text}");
    client.cancel().await.unwrap();
    let _ = stop.send(());
    serving
        .await
        .unwrap()
        .expect("the HTTP server stops cleanly");
}

/// RFD 080's use case as a scripted assistant, with real eBPF: this test process is
/// the workload (a few requests take a slow path through `validate_signature`). The
/// assistant reads the summary, triggers profiling of requests slower than what it
/// saw, and the comparison names the planted function first with 'high' significance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
async fn scripted_diagnosis_names_the_planted_slow_path() {
    use crate::profile::{mixed_checkouts, require_root, wait_for_perf_events};
    use opentelemetry::trace::TracerProvider as _;
    let _ebpf = require_root().await;
    let stack = Stack::start(Backend::Sqlite).await;
    let provider = crate::trigger::provider(stack.otlp_grpc);
    // Traffic before anyone looks: one request in seven takes the slow path.
    let workload = |n: usize| {
        let p = provider.clone();
        crate::harness::produce(move || mixed_checkouts(&p.tracer("e2e"), n))
    };
    let last = workload(14).await;
    stack.wait_for_trace(&last, 1).await;
    let client = stdio_client(&stack.colony).await;

    // 1. Summary: p99 far above p50, and the slow requests as exemplars.
    let (text, data) = ok(&client, "coral_query_summary", json!({"service": SERVICE})).await;
    let stats = &data["services"][0]["stats"];
    let p50_ms = stats["p50_ns"].as_i64().unwrap() / 1_000_000;
    let p99_ms = stats["p99_ns"].as_i64().unwrap() / 1_000_000;
    assert!(p50_ms < 100 && p99_ms >= 300, "{text}");
    assert!(text.contains("slow: "), "{text}");
    assert!(tokens(&text) < 2000, "{} tokens: {text}", tokens(&text));

    // 2. Trigger: profile requests slower than halfway to p99 (the tool waits).
    let threshold_ms = p99_ms / 2;
    let peer = client.peer().clone();
    let args = json!({"service": SERVICE, "min_duration_ms": threshold_ms, "count": 6,
                      "timeout": "60s"});
    let trigger = tokio::spawn(async move {
        peer.call_tool(
            CallToolRequestParams::new("coral_profile_trace_trigger")
                .with_arguments(args.as_object().unwrap().clone()),
        )
        .await
    });
    wait_for_perf_events("the trigger attaches the sampler", |n| n > 0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    workload(42).await;
    let result = trigger.await.unwrap().expect("the trigger tool answers");
    let answer = text_of(&result);
    assert!(
        answer.contains("completed") && answer.contains("6/6"),
        "{answer}"
    );
    let id = result.structured_content.unwrap()["trigger_id"]
        .as_str()
        .unwrap()
        .to_string();
    // The baseline (fast requests) is sent when the trigger ends.
    for _ in 0..100 {
        let (_, status) = ok(&client, "coral_trigger_status", json!({"trigger_id": id})).await;
        if status["baseline_collected"].as_u64().unwrap_or(0) >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 3. Compare slow against fast: the planted function first, significantly.
    let (text, data) = ok(
        &client,
        "coral_query_profile_compare",
        json!({"service": SERVICE,
               "cohort_a_filter": format!("duration > {threshold_ms}ms"),
               "cohort_b_filter": "duration < 100ms"}),
    )
    .await;
    let first = &data["functions"][0];
    assert!(
        first["function"]
            .as_str()
            .unwrap()
            .ends_with("validate_signature"),
        "{text}"
    );
    assert_eq!(first["significance"], "high", "{text}");
    assert!(first["delta_pp"].as_f64().unwrap() > 50.0, "{text}");
    // The evidence is in the text the model reads: delta and CPU per request.
    let line = text
        .lines()
        .find(|l| l.starts_with("1. "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("validate_signature")
            && line.contains("pp, A ")
            && line.contains("/req vs B ")
            && line.contains("significance high"),
        "{text}"
    );
    assert!(tokens(&text) < 2000, "{} tokens: {text}", tokens(&text));
    client.cancel().await.unwrap();
    provider.shutdown().unwrap();
}
