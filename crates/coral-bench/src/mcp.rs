//! Every query tool of `coral mcp`, called by a real MCP client (rmcp's, over the
//! child's stdio) against a colony holding 1,000,000 spans and a few thousand request
//! profiles of one service: slow requests (1.2 s) with a planted hot function, fast
//! ones (20–69 ms) without, and a completed trigger with its baseline.

use crate::workload::{self, Database, Processes, Rng};
use anyhow::{Context, Result, ensure};
use coral_analysis::profile::{Frame, Profile};
use coral_client::v1;
use coral_store::{
    Precision, ProfileSession, ProfileSource, SpanRecord, Store, TraceId, TraceProfileRecord,
    TraceProfileTrigger, TriggerStatus,
};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const TRACES: u64 = 200_000;
const SPANS_PER_TRACE: u64 = 5;
const SERVICES: u64 = 5;
/// The spans start over this window before seeding: inside the tools' default `1h`.
const WINDOW: Duration = Duration::from_secs(3000);
const SERVICE: &str = "svc-0";
/// Calls per tool, unless [`BUDGET`] runs out first.
const RUNS: usize = 50;
/// Time per tool at most; at least [`MIN_RUNS`] calls are made whatever it takes.
const BUDGET: Duration = Duration::from_secs(60);
const MIN_RUNS: usize = 5;
/// The function slow requests spend most of their CPU time in.
const HOT: &str = "checkout::pricing::recompute_discounts";
/// One fast request of the service in this many is profiled.
const FAST_EVERY: usize = 12;
/// The trigger's matching requests and baseline.
const TRIGGER_REQUESTS: u32 = 10;
const BASELINE_REQUESTS: u32 = 10;
const FREQUENCY_HZ: u32 = 99;
/// Profiles per `insert_trace_profiles` call.
const PROFILES_PER_CALL: usize = 200;

type Client = RunningService<RoleClient, ()>;

/// What the seeded colony holds, for the calls and their checks.
struct Seeded {
    /// Requests of [`SERVICE`] in the window.
    requests: u64,
    slow_profiles: u64,
    fast_profiles: u64,
    /// A slow request with a profile.
    slow_trace: TraceId,
    trigger_id: uuid::Uuid,
    seeding: Duration,
}

pub async fn run(coral: &str, postgres: Option<&str>) -> Result<()> {
    println!();
    println!(
        "## mcp: every query tool of `coral mcp` (rmcp client over stdio) over {} spans ({TRACES} traces, {SERVICES} services, last {} min), up to {RUNS} calls each",
        TRACES * SPANS_PER_TRACE,
        WINDOW.as_secs() / 60
    );
    let mut notes = Vec::new();
    let mut rows = Vec::new();
    for pg in workload::backends(postgres) {
        let db = Database::fresh(pg).await?;
        let store = coral_colony::open_store(&db.config).await?;
        let seeded = seed(store.as_ref()).await?;
        drop(store);
        vacuum(&db).await?;
        let profiles = db.count_rows("trace_profiles").await?;
        let samples = db.count_rows("trace_profile_samples").await?;
        notes.push(format!(
            "{}: {} spans, {profiles} request profiles of {SERVICE} ({} slow with {HOT}, {} fast; {samples} sample rows), a completed trigger; seeded in {:.0} s",
            db.label,
            db.count_spans().await?,
            seeded.slow_profiles,
            seeded.fast_profiles,
            seeded.seeding.as_secs_f64()
        ));
        rows.extend(measure(coral, &db, &seeded).await?);
    }
    println!(
        "| store | tool (arguments) | p50 | p95 | calls | text chars | ~tokens (chars/4) | JSON chars | p50 / coral_list_services p50 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("{row}");
    }
    println!();
    for note in notes {
        println!("{note}");
    }
    Ok(())
}

/// 1,000,000 spans, then profiles of [`SERVICE`]'s slow requests and of one fast
/// request in [`FAST_EVERY`], the first of each kind collected by a trigger (and its
/// baseline), the others by a profiling session.
async fn seed(store: &dyn Store) -> Result<Seeded> {
    let t = Instant::now();
    let records = workload::records(6, TRACES, SPANS_PER_TRACE, SERVICES, WINDOW);
    for chunk in records.chunks(5_000) {
        store.insert_spans(chunk).await?;
    }
    let roots: Vec<&SpanRecord> = records
        .iter()
        .filter(|s| s.parent_span_id.is_none() && s.service == SERVICE)
        .collect();
    let slow: Vec<&SpanRecord> = roots
        .iter()
        .copied()
        .filter(|s| s.duration_ns > 1_000_000_000)
        .collect();
    let fast: Vec<&SpanRecord> = roots
        .iter()
        .copied()
        .filter(|s| s.duration_ns < 100_000_000)
        .step_by(FAST_EVERY)
        .collect();
    ensure!(
        slow.len() > TRIGGER_REQUESTS as usize && fast.len() > BASELINE_REQUESTS as usize,
        "too few requests to profile"
    );

    let now = workload::now_ns();
    let trigger_id = uuid::Uuid::new_v4();
    store
        .create_trigger(&TraceProfileTrigger {
            trigger_id,
            service: SERVICE.into(),
            created_unix_nano: now - WINDOW.as_nanos() as i64,
            expires_unix_nano: now + 3_600_000_000_000,
            ended_unix_nano: None,
            status: TriggerStatus::Active,
            min_duration_ms: Some(1000),
            max_duration_ms: None,
            status_code_pattern: None,
            url_pattern: None,
            frequency_hz: FREQUENCY_HZ,
            max_requests: TRIGGER_REQUESTS,
            collected_requests: 0,
            trace_ids: Vec::new(),
            baseline_requests: BASELINE_REQUESTS,
            baseline_collected: 0,
            profile_types: vec![coral_store::ProfileType::Cpu],
        })
        .await?;
    let session = ProfileSession {
        session_id: uuid::Uuid::new_v4(),
        service: SERVICE.into(),
        frequency_hz: FREQUENCY_HZ,
        created_unix_nano: now - WINDOW.as_nanos() as i64,
        duration_ns: WINDOW.as_nanos() as i64,
    };
    store.create_profile_session(&session).await?;

    let shapes = Shapes::new();
    let mut rng = Rng(0x6d63_705f_6265_6e63);
    let mut profiles = Vec::with_capacity(slow.len() + fast.len());
    for (i, span) in slow.iter().enumerate() {
        let source = if i < TRIGGER_REQUESTS as usize {
            ProfileSource::Trigger(trigger_id)
        } else {
            ProfileSource::Session(session.session_id)
        };
        profiles.push(profile_of(span, source, shapes.slow(&mut rng)));
    }
    for (i, span) in fast.iter().enumerate() {
        let source = if i < BASELINE_REQUESTS as usize {
            ProfileSource::Baseline(trigger_id)
        } else {
            ProfileSource::Session(session.session_id)
        };
        let samples = (span.duration_ns / 10_000_000).max(1) as u64;
        profiles.push(profile_of(span, source, shapes.fast(&mut rng, samples)));
    }
    let mut new = 0;
    for chunk in profiles.chunks(PROFILES_PER_CALL) {
        let inserted = store.insert_trace_profiles(chunk).await?;
        ensure!(
            inserted.over_limit == 0,
            "{} profiles refused",
            inserted.over_limit
        );
        new += inserted.new;
    }
    ensure!(new == profiles.len() as u64, "only {new} profiles stored");
    let trigger = store.trigger(trigger_id).await?;
    ensure!(
        trigger.status == TriggerStatus::Completed
            && trigger.baseline_collected == BASELINE_REQUESTS,
        "the trigger is {} with baseline {}/{BASELINE_REQUESTS}",
        trigger.status,
        trigger.baseline_collected
    );
    Ok(Seeded {
        requests: roots.len() as u64,
        slow_profiles: slow.len() as u64,
        fast_profiles: fast.len() as u64,
        slow_trace: slow[slow.len() / 2].trace_id,
        trigger_id,
        seeding: t.elapsed(),
    })
}

/// PostgreSQL: `VACUUM (ANALYZE)`, what autovacuum does within a minute or two of a
/// bulk load (spans is vacuumed every 50,000 new rows): it sets the visibility map
/// that lets the summary's index-only scans skip the heap, and the planner's
/// statistics. (SQLite has neither.)
async fn vacuum(db: &Database) -> Result<()> {
    if let coral_colony::StoreConfig::Postgres { url } = &db.config {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::query("VACUUM (ANALYZE)").execute(&mut conn).await?;
    }
    Ok(())
}

fn profile_of(span: &SpanRecord, source: ProfileSource, profile: Profile) -> TraceProfileRecord {
    TraceProfileRecord {
        trace_id: span.trace_id,
        span_id: span.span_id,
        service: span.service.clone(),
        span_name: span.name.clone(),
        start_unix_nano: span.start_unix_nano,
        duration_ns: span.duration_ns,
        node: span.node.clone(),
        pid: span.pid,
        thread_id: span.thread_id,
        precision: Precision::Thread,
        frequency_hz: FREQUENCY_HZ,
        concurrent_requests: 0,
        truncated_samples: 0,
        lost_samples: 0,
        source,
        profile_types: vec![coral_store::ProfileType::Cpu],
        profile,
    }
}

/// The stacks of the checkout service: 40 ordinary ones (a handler, one of 10
/// middle functions, one of 30 leaves, some ending in the kernel) and the hot one.
struct Shapes {
    ordinary: Vec<Vec<Frame>>,
    hot: Vec<Frame>,
}

impl Shapes {
    fn new() -> Self {
        let module = "checkout-svc";
        let base = || {
            vec![
                Frame::user("main", module),
                Frame::user(
                    "tokio::runtime::scheduler::multi_thread::worker::run",
                    module,
                ),
                Frame::user("checkout::handler::post_checkout", module),
            ]
        };
        let ordinary = (0..40)
            .map(|k| {
                let mut stack = base();
                stack.push(Frame::user(
                    format!("checkout::step_{}::run", k % 10),
                    module,
                ));
                stack.push(Frame::user(
                    format!("checkout::work::leaf_{}", k % 30),
                    module,
                ));
                if k % 4 == 3 {
                    stack.push(Frame::user("__libc_write", "libc.so.6"));
                    stack.push(Frame::kernel("ksys_write"));
                }
                stack
            })
            .collect();
        let mut hot = base();
        hot.push(Frame::user("checkout::pricing::apply", module));
        hot.push(Frame::user(HOT, module));
        Self { ordinary, hot }
    }

    /// A 1.2 s request at 99 Hz: about 119 samples, 60% of them in [`HOT`].
    fn slow(&self, rng: &mut Rng) -> Profile {
        let mut profile = Profile::new();
        let samples = 112 + rng.below(14) as u64;
        let hot = samples * 6 / 10;
        profile.add(&self.hot, hot, FREQUENCY_HZ);
        for _ in hot..samples {
            profile.add(&self.ordinary[rng.below(40)], 1, FREQUENCY_HZ);
        }
        profile
    }

    /// A fast request: `samples` samples of ordinary stacks.
    fn fast(&self, rng: &mut Rng, samples: u64) -> Profile {
        let mut profile = Profile::new();
        for _ in 0..samples {
            profile.add(&self.ordinary[rng.below(40)], 1, FREQUENCY_HZ);
        }
        profile
    }
}

/// What a call's answer (its text and structured content) must hold.
type Check = Box<dyn Fn(&str, &Value) -> Result<()>>;

/// One tool call of the table, and what its answer must hold.
struct Call {
    label: String,
    tool: &'static str,
    args: Value,
    check: Check,
}

fn call(
    tool: &'static str,
    args: Value,
    check: impl Fn(&str, &Value) -> Result<()> + 'static,
) -> Call {
    // Ids are long and differ between runs: the table shows what they stand for.
    let label = match args.as_object() {
        Some(map) if !map.is_empty() => {
            let shown: Vec<String> = map
                .iter()
                .map(|(k, v)| match k.as_str() {
                    "trace_id" => format!("{k}: <a slow request>"),
                    "trigger_id" => format!("{k}: <the trigger>"),
                    _ => format!("{k}: {v}"),
                })
                .collect();
            format!("{tool} {{{}}}", shown.join(", "))
        }
        _ => format!("{tool} {{}}"),
    };
    Call {
        label,
        tool,
        args,
        check: Box::new(check),
    }
}

fn calls(seeded: &Seeded) -> Vec<Call> {
    let (requests, slow, fast) = (seeded.requests, seeded.slow_profiles, seeded.fast_profiles);
    vec![
        call("coral_list_services", json!({}), |_, data| {
            let n = data["services"].as_array().map_or(0, Vec::len);
            ensure!(n == SERVICES as usize, "{n} services");
            Ok(())
        }),
        call(
            "coral_query_summary",
            json!({"service": SERVICE}),
            move |text, data| {
                let s = &data["services"][0];
                ensure!(
                    s["stats"]["requests"] == requests,
                    "expected {requests} requests: {text}"
                );
                let slowest = s["slowest"].as_array().context("no slowest")?;
                ensure!(slowest.len() == 3, "{} slowest: {text}", slowest.len());
                for e in slowest {
                    ensure!(
                        e["duration_ns"] == 1_200_000_000
                            && e["profile"]["top_self"][0]["function"] == HOT,
                        "a slowest request without the hot profile: {text}"
                    );
                }
                Ok(())
            },
        ),
        call("coral_query_summary", json!({}), move |text, data| {
            let n = data["services"].as_array().map_or(0, Vec::len);
            ensure!(n == SERVICES as usize, "{n} services: {text}");
            ensure!(
                data["services"][0]["stats"]["requests"] == requests,
                "{text}"
            );
            Ok(())
        }),
        call(
            "coral_query_traces",
            json!({"service": SERVICE}),
            |text, data| {
                let n = data["requests"].as_array().map_or(0, Vec::len);
                ensure!(n == 20, "{n} requests: {text}");
                Ok(())
            },
        ),
        call(
            "coral_query_traces",
            json!({"service": SERVICE, "min_duration_ms": 1000}),
            |text, data| {
                let found = data["requests"].as_array().context("no requests")?;
                ensure!(
                    found.len() == 20
                        && found
                            .iter()
                            .all(|r| r["duration_ns"].as_i64() >= Some(1_000_000_000)),
                    "expected 20 slow requests: {text}"
                );
                Ok(())
            },
        ),
        call(
            "coral_query_trace_profile",
            json!({"trace_id": seeded.slow_trace.to_string(), "profile_type": "cpu"}),
            |text, data| {
                let spans = data["spans"].as_array().context("no spans")?;
                ensure!(
                    spans.len() == 1 && spans[0]["hotspots"][0]["function"] == HOT,
                    "expected one profile, hottest {HOT}: {text}"
                );
                Ok(())
            },
        ),
        call(
            "coral_query_profile_compare",
            json!({"service": SERVICE, "cohort_a_filter": "duration > 1s",
                   "cohort_b_filter": "duration < 100ms", "since": "1h"}),
            move |text, data| {
                ensure!(
                    data["cohort_a"]["requests"] == slow && data["cohort_b"]["requests"] == fast,
                    "expected cohorts of {slow} and {fast} requests: {text}"
                );
                ensure!(
                    data["functions"][0]["function"] == HOT
                        && data["functions"][0]["significance"] == "high",
                    "expected {HOT} first, significance high: {text}"
                );
                Ok(())
            },
        ),
        call(
            "coral_trigger_status",
            json!({"trigger_id": seeded.trigger_id.to_string()}),
            |text, data| {
                ensure!(
                    data["status"] == "completed"
                        && data["collected_requests"] == TRIGGER_REQUESTS
                        && data["collected"].as_array().map_or(0, Vec::len)
                            == TRIGGER_REQUESTS as usize
                        && data["collected"][0]["http_status"].is_number(),
                    "expected a completed trigger with {TRIGGER_REQUESTS} requests and their spans: {text}"
                );
                Ok(())
            },
        ),
    ]
}

/// `coral mcp --colony ADDR` as a child process, with rmcp's client on its stdio.
async fn mcp_client(coral: &str, colony: &str) -> Result<Client> {
    let mut cmd = tokio::process::Command::new(coral);
    for (key, _) in std::env::vars() {
        if key.starts_with("CORAL_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(["mcp", "--colony", colony])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    let transport = TokioChildProcess::new(cmd).context("cannot start coral mcp")?;
    Ok(().serve(transport).await?)
}

/// One call's answer: its text and structured content, after checking it is no
/// tool error.
async fn answer(client: &Client, c: &Call) -> Result<(String, Value)> {
    let Value::Object(args) = c.args.clone() else {
        anyhow::bail!("arguments must be an object")
    };
    let result: CallToolResult = client
        .call_tool(CallToolRequestParams::new(c.tool.to_string()).with_arguments(args))
        .await
        .with_context(|| c.label.clone())?;
    let text = result
        .content
        .iter()
        .filter_map(|b| b.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n");
    ensure!(result.is_error != Some(true), "{}: {text}", c.label);
    let data = result
        .structured_content
        .with_context(|| format!("{}: no structured content", c.label))?;
    Ok((text, data))
}

async fn measure(coral: &str, db: &Database, seeded: &Seeded) -> Result<Vec<String>> {
    let mut procs = Processes::default();
    let colony = workload::start_colony(coral, db, &mut procs).await?;
    let mut grpc = coral_client::query_client(coral_client::connect(&colony).await?);
    let client = mcp_client(coral, &colony).await?;
    let calls = calls(seeded);
    // Sizes from the first answer of each call, checked like every later one.
    let mut sizes = Vec::with_capacity(calls.len());
    for c in &calls {
        let (text, data) = answer(&client, c).await?;
        (c.check)(&text, &data).with_context(|| c.label.clone())?;
        sizes.push((text.chars().count(), serde_json::to_string(&data)?.len()));
    }
    // Rounds over every call in turn, so that a drift of the machine's speed touches
    // them all alike; a call that has used its budget sits the later rounds out.
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(RUNS); calls.len()];
    let mut spent = vec![Duration::ZERO; calls.len()];
    let mut grpc_floor = Vec::with_capacity(RUNS);
    for round in 0..RUNS {
        for (i, c) in calls.iter().enumerate() {
            if round >= MIN_RUNS && spent[i] > BUDGET {
                continue;
            }
            let t = Instant::now();
            let (text, data) = answer(&client, c).await?;
            let took = t.elapsed();
            (c.check)(&text, &data).with_context(|| c.label.clone())?;
            times[i].push(took);
            spent[i] += took;
        }
        let t = Instant::now();
        grpc.list_services(v1::ListServicesRequest {}).await?;
        grpc_floor.push(t.elapsed());
    }
    client.cancel().await?;

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (baseline, _) = workload::percentiles(times[0].clone());
    let mut rows = Vec::with_capacity(calls.len() + 1);
    for ((c, t), (chars, json)) in calls.iter().zip(times).zip(sizes) {
        let n = t.len();
        let (p50, p95) = workload::percentiles(t);
        rows.push(format!(
            "| {} | `{}` | {:.1} ms | {:.1} ms | {n} | {chars} | {} | {json} | {:.1} |",
            db.label,
            c.label,
            ms(p50),
            ms(p95),
            chars.div_ceil(4),
            p50.as_secs_f64() / baseline.as_secs_f64()
        ));
    }
    let (g50, g95) = workload::percentiles(grpc_floor);
    rows.push(format!(
        "| {} | (gRPC `ListServices` round trip, no MCP) | {:.2} ms | {:.2} ms | {RUNS} | | | | {:.2} |",
        db.label,
        ms(g50),
        ms(g95),
        g50.as_secs_f64() / baseline.as_secs_f64()
    ));
    Ok(rows)
}
