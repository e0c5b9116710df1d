//! The Prometheus endpoints of agent and colony: spans sent with the real
//! OpenTelemetry SDK through a real agent to a real colony move the counters by
//! exactly what was sent; both expositions parse as the text format (strictly, by the
//! parser below); a bad request does not disturb serving; a trigger moves the
//! trigger and sampler gauges of both, and back when cancelled; and the `coral` binary
//! serves metrics with `--metrics` (and logs JSON with `--log-format json`).

use crate::cli::coral;
use crate::harness::{Backend, Sampling, Stack, produce};
use crate::trigger::{SERVICE, provider, request};
use coral_sampler::FakeSampler;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// One parsed exposition: every series (`name{labels}` as written, labels in their
/// order) with its value.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    series: BTreeMap<String, f64>,
    types: HashMap<String, String>,
}

impl Exposition {
    pub(crate) fn get(&self, series: &str) -> f64 {
        *self
            .series
            .get(series)
            .unwrap_or_else(|| panic!("no series {series} in {:#?}", self.series))
    }

    /// The sum of the series of `name` whose labels include all of `labels`.
    pub(crate) fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series
            .iter()
            .filter(|(s, _)| {
                let (n, rest) = s.split_once('{').unwrap_or((s, ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// A strict parser of the text exposition format 0.0.4: every family has one `# HELP`
/// and then one `# TYPE` before its samples, families are not split, sample names
/// belong to the family (histograms: `_bucket` with `le`, `_sum`, `_count`), label
/// values are quoted with valid escapes, values are floats, no series twice, and the
/// text ends with a newline.
fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    if !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    let mut helped: Option<String> = None;
    let mut family: Option<(String, String)> = None;
    let mut done: Vec<String> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = |what: String| format!("line {}: {what}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _help) = rest
                .split_once(' ')
                .ok_or_else(|| at("HELP without text".into()))?;
            if !valid_name(name) || done.iter().any(|d| d == name) {
                return Err(at("bad or repeated family".into()));
            }
            if let Some((f, _)) = family.take() {
                done.push(f);
            }
            helped = Some(name.to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE without type".into()))?;
            if helped.as_deref() != Some(name) {
                return Err(at("TYPE not right after its HELP".into()));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at("unknown type".into()));
            }
            helped = None;
            out.types.insert(name.to_string(), kind.to_string());
            family = Some((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(at("unexpected comment or blank line".into()));
        }
        let (family_name, kind) = family
            .clone()
            .ok_or_else(|| at("sample before TYPE".into()))?;
        // name, optional labels, value.
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels: Vec<(String, String)> = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let eq = rest.find('=').ok_or_else(|| at("label without =".into()))?;
                let label = &rest[..eq];
                if !valid_name(label) || label.contains(':') {
                    return Err(at(format!("bad label name {label:?}")));
                }
                rest = rest[eq + 1..]
                    .strip_prefix('"')
                    .ok_or_else(|| at("unquoted label value".into()))?;
                let mut value = String::new();
                let mut chars = rest.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            _ => return Err(at("bad escape".into())),
                        },
                        Some((j, '"')) => break j,
                        Some((_, c)) => value.push(c),
                        None => return Err(at("unterminated label value".into())),
                    }
                };
                labels.push((label.to_string(), value));
                rest = &rest[end + 1..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                } else if !rest.starts_with('}') {
                    return Err(at("labels not separated by commas".into()));
                }
            }
        }
        let value = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().map_err(|_| at(format!("bad value {v:?}")))?,
        };
        let belongs = match kind.as_str() {
            "histogram" => {
                (name == format!("{family_name}_bucket")
                    && labels.last().is_some_and(|(l, _)| l == "le"))
                    || name == format!("{family_name}_sum")
                    || name == format!("{family_name}_count")
            }
            _ => name == family_name,
        };
        if !belongs {
            return Err(at(format!("sample not of family {family_name} ({kind})")));
        }
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("negative or NaN counter".into()));
        }
        let key = line[..line.len() - rest.len()].to_string();
        if out.series.insert(key, value).is_some() {
            return Err(at("series repeated".into()));
        }
    }
    if helped.is_some() {
        return Err("a HELP without its TYPE at the end".into());
    }
    Ok(out)
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\\\"\"} 3\n";
    assert_eq!(parse(good).unwrap().get("a_total{x=\"1\\\"\"}"), 3.0);
    for bad in [
        "a_total 3\n",                                                       // no TYPE
        "# HELP a_total A.\n# TYPE a_total counter\na_total 3",              // no newline
        "# HELP a_total A.\n# TYPE a_total counter\nb_total 3\n",            // other family
        "# HELP a_total A.\n# TYPE a_total counter\na_total{x=1} 3\n",       // unquoted
        "# HELP a_total A.\n# TYPE a_total counter\na_total x\n",            // bad value
        "# HELP a_total A.\n# TYPE a_total counter\na_total 3\na_total 4\n", // repeated
        "# HELP h A.\n# TYPE h histogram\nh_bucket 3\n",                     // bucket without le
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}

struct Scrape {
    status: u16,
    content_type: String,
    body: String,
}

async fn get(addr: SocketAddr, path: &str) -> Scrape {
    let response = reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    Scrape {
        status: response.status().as_u16(),
        content_type: response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        body: response.text().await.unwrap(),
    }
}

pub(crate) async fn scrape(addr: SocketAddr) -> Exposition {
    let s = get(addr, "/metrics").await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert!(
        s.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        s.content_type
    );
    parse(&s.body).unwrap_or_else(|e| panic!("{e}\n{}", s.body))
}

/// Scrapes until `done` holds (at most 20 s).
pub(crate) async fn scrape_until(
    addr: SocketAddr,
    done: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = scrape(addr).await;
        if done(&e) || Instant::now() > deadline {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_spans_from_sdk_to_colony() {
    use opentelemetry_proto::tonic::trace::v1::Span;

    let sampling = Sampling::Fake(Arc::new(FakeSampler::new()));
    let stack = Stack::start_with(Backend::Sqlite, sampling).await;
    let agent = stack.agents[0].metrics;
    let colony = stack.colony_metrics;

    // Before any span: both serve, every counter at zero.
    let before = scrape(agent).await;
    assert_eq!(before.get("coral_agent_spans_received_total"), 0.0);
    assert_eq!(before.get("coral_agent_sampler_attached"), 0.0);

    // Real SDK spans (one OTLP export each), and one invalid span.
    const SENT: usize = 6;
    let sdk = provider(stack.otlp_grpc);
    let mut traces = Vec::new();
    for i in 0..SENT {
        let url = format!("/pay/{i}");
        traces.push(request(&sdk, SystemTime::now(), Duration::from_millis(3), &url, 200).await);
    }
    let invalid = crate::harness::otlp_request(
        None,
        vec![Span {
            trace_id: vec![1; 5], // too short
            span_id: vec![1; 8],
            name: "bad".into(),
            ..Default::default()
        }],
    );
    stack.export(invalid).await.expect("partial success is OK");
    for trace in &traces {
        stack.wait_for_trace(trace, 1).await;
    }

    // A bad request on either endpoint is a 404 and changes nothing.
    for addr in [agent, colony] {
        let nope = get(addr, "/nope").await;
        assert_eq!(nope.status, 404, "{}", nope.body);
    }

    let a = scrape_until(agent, |e| {
        e.get("coral_agent_spans_forwarded_total") >= SENT as f64
    })
    .await;
    assert_eq!(a.get("coral_agent_spans_received_total"), (SENT + 1) as f64);
    assert_eq!(a.get("coral_agent_spans_forwarded_total"), SENT as f64);
    assert_eq!(a.get("coral_agent_spans_rejected_total"), 1.0);
    assert_eq!(a.get("coral_agent_spans_dropped_total"), 0.0);
    assert_eq!(a.get("coral_agent_spans_buffered"), 0.0);
    assert_eq!(a.get("coral_agent_samples_total"), 0.0);
    assert_eq!(a.get("coral_agent_samples_lost_total"), 0.0);
    assert_eq!(a.get("coral_agent_triggers_active"), 0.0);
    assert_eq!(a.get("coral_agent_processes_sampled"), 0.0);
    assert_eq!(a.types["coral_agent_spans_received_total"], "counter");
    assert_eq!(a.types["coral_agent_spans_buffered"], "gauge");

    let c = scrape(colony).await;
    assert_eq!(
        c.get("coral_colony_spans_ingested_total{result=\"new\"}"),
        SENT as f64
    );
    assert_eq!(
        c.get("coral_colony_spans_ingested_total{result=\"rejected\"}"),
        0.0
    );
    assert_eq!(c.get("coral_colony_store_errors_total"), 0.0);
    assert_eq!(c.get("coral_colony_triggers{state=\"active\"}"), 0.0);
    assert_eq!(c.types["coral_colony_rpc_duration_seconds"], "histogram");
    let ingest = [
        ("service", "coral.v1.AgentService"),
        ("method", "IngestSpans"),
        ("code", "OK"),
    ];
    let calls = c.sum("coral_colony_rpc_duration_seconds_count", &ingest);
    assert!(
        (1.0..=SENT as f64).contains(&calls),
        "{calls} IngestSpans calls for {SENT} spans"
    );
    let mut inf = ingest.to_vec();
    inf.push(("le", "+Inf"));
    assert_eq!(
        c.sum("coral_colony_rpc_duration_seconds_bucket", &inf),
        calls
    );
    // The agent registered; the query calls of wait_for_trace are counted too.
    let register = [("method", "RegisterAgent"), ("code", "OK")];
    assert!(c.sum("coral_colony_rpc_duration_seconds_count", &register) >= 1.0);
    let get_trace = [("method", "GetTrace"), ("code", "OK")];
    assert!(c.sum("coral_colony_rpc_duration_seconds_count", &get_trace) >= SENT as f64);

    // A refused call is counted with its code.
    let mut query = stack.query().await;
    let err = query
        .get_trace(coral_client::v1::GetTraceRequest {
            trace_id: "not-hex".into(),
        })
        .await
        .expect_err("a bad trace id is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let c = scrape(colony).await;
    let refused = [("method", "GetTrace"), ("code", "InvalidArgument")];
    assert_eq!(
        c.sum("coral_colony_rpc_duration_seconds_count", &refused),
        1.0
    );

    // A trigger: the colony's sweeper sees it active, the agent runs it and samples
    // this process (the spans' process.pid); cancelled, all goes back to zero.
    let colony_addr = stack.colony.clone();
    let id = produce(move || {
        let out = coral(
            Some(&colony_addr),
            &[
                "profile",
                "trace-trigger",
                "--service",
                SERVICE,
                "--min-duration",
                "10s",
                "--detach",
                "--timeout",
                "60s",
            ],
        );
        assert!(out.ok, "{}", out.stderr);
        out.stdout.trim().to_string()
    })
    .await;
    let running = |e: &Exposition| {
        e.get("coral_agent_triggers_active") == 1.0
            && e.get("coral_agent_processes_sampled") == 1.0
            && e.get("coral_agent_sampler_attached") == 1.0
    };
    let a = scrape_until(agent, running).await;
    assert!(running(&a), "{:#?}", a.series);
    let c = scrape_until(colony, |e| {
        e.get("coral_colony_triggers{state=\"active\"}") == 1.0
    })
    .await;
    assert_eq!(c.get("coral_colony_triggers{state=\"active\"}"), 1.0);
    let colony_addr = stack.colony.clone();
    produce(move || {
        let out = coral(Some(&colony_addr), &["profile", "trigger-cancel", &id]);
        assert!(out.ok, "{}", out.stderr);
    })
    .await;
    let stopped = |e: &Exposition| {
        e.get("coral_agent_triggers_active") == 0.0
            && e.get("coral_agent_processes_sampled") == 0.0
            && e.get("coral_agent_sampler_attached") == 0.0
    };
    let a = scrape_until(agent, stopped).await;
    assert!(stopped(&a), "{:#?}", a.series);
    let c = scrape_until(colony, |e| {
        e.get("coral_colony_triggers{state=\"active\"}") == 0.0
    })
    .await;
    assert_eq!(c.get("coral_colony_triggers{state=\"active\"}"), 0.0);
    for (event, n) in [
        ("started", 1.0),
        ("cancelled", 1.0),
        ("completed", 0.0),
        ("expired", 0.0),
    ] {
        let series = format!("coral_colony_trigger_events_total{{event=\"{event}\"}}");
        assert_eq!(c.get(&series), n, "{series}");
    }
    sdk.shutdown().ok();
}

/// Runs `coral` with `args` and waits (at most 20 s) for a stderr line containing
/// `marker`; returns the child (killed when dropped) and that line. Every line read must satisfy `check`.
pub(crate) fn spawn_until(args: &[&str], marker: &str, check: impl Fn(&str)) -> (Kill, String) {
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_coral"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run coral"),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        check(&line);
        if line.contains(marker) {
            // Keep draining stderr so the child never blocks on it.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (child, line);
        }
    }
    panic!("coral {args:?} never logged {marker:?}");
}

/// The address in "metrics listening on http://ADDR/metrics".
fn metrics_addr(line: &str) -> SocketAddr {
    let start = line.find("http://").expect("an address") + "http://".len();
    let end = line[start..].find("/metrics").expect("the path") + start;
    line[start..end].parse().expect("a socket address")
}

pub(crate) struct Kill(pub(crate) Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coral_binary_serves_metrics_and_logs_json() {
    let data = tempfile::tempdir().unwrap();
    let json = |line: &str| {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    };
    let (colony, line) = spawn_until(
        &[
            "colony",
            "start",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.path().to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        "metrics listening on",
        json,
    );
    let colony_metrics = metrics_addr(&line);
    let c = scrape(colony_metrics).await;
    assert_eq!(
        c.get("coral_colony_spans_ingested_total{result=\"new\"}"),
        0.0
    );

    let agent_data = tempfile::tempdir().unwrap();
    let (agent, line) = spawn_until(
        &[
            "agent",
            "start",
            "--colony",
            "http://127.0.0.1:1", // no colony: the agent still serves its metrics
            "--otlp-grpc",
            "127.0.0.1:0",
            "--otlp-http",
            "off",
            "--metrics",
            "127.0.0.1:0",
            "--data-dir",
            agent_data.path().to_str().unwrap(),
        ],
        "metrics listening on",
        |_| {},
    );
    let a = scrape(metrics_addr(&line)).await;
    assert_eq!(a.get("coral_agent_spans_received_total"), 0.0);
    assert_eq!(get(metrics_addr(&line), "/").await.status, 404);
    drop((agent, colony));
}
