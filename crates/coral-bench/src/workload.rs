//! Synthetic spans, as store records and as OTLP requests, plus the processes and
//! databases a benchmark runs against.

use anyhow::{Context, Result, bail};
use coral_store::{SpanId, SpanRecord, TraceId};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i64
}

/// A trace id unique per (run, n).
pub fn trace_id(run: u32, n: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&run.to_be_bytes());
    id[8..].copy_from_slice(&(n + 1).to_be_bytes());
    id
}

/// Spans of `traces` traces, `per_trace` spans each (a server root and internal
/// children), in `services` services, over the last `window`; one root in 101 lasts
/// 1.2 s, the rest 20–70 ms.
pub fn records(
    run: u32,
    traces: u64,
    per_trace: u64,
    services: u64,
    window: Duration,
) -> Vec<SpanRecord> {
    let now = now_ns();
    let step = window.as_nanos() as i64 / traces.max(1) as i64;
    let mut out = Vec::with_capacity((traces * per_trace) as usize);
    for t in 0..traces {
        let trace = TraceId(trace_id(run, t));
        let start = now - window.as_nanos() as i64 + t as i64 * step;
        let duration = if t % 101 == 7 {
            1_200_000_000
        } else {
            20_000_000 + (t % 50) as i64 * 1_000_000
        };
        let service = format!("svc-{}", t % services);
        let mut attributes = serde_json::Map::new();
        attributes.insert("http.request.method".into(), "POST".into());
        for s in 0..per_trace {
            out.push(SpanRecord {
                trace_id: trace,
                span_id: SpanId((s + 1).to_be_bytes()),
                parent_span_id: (s > 0).then(|| SpanId(1u64.to_be_bytes())),
                service: service.clone(),
                name: if s == 0 {
                    "POST /checkout".into()
                } else {
                    format!("step-{s}")
                },
                kind: if s == 0 { 2 } else { 1 },
                start_unix_nano: start + s as i64 * 1000,
                duration_ns: if s == 0 { duration } else { duration / 10 },
                status_code: 0,
                status_message: String::new(),
                http_status: (s == 0).then_some(if t % 20 == 3 { 503 } else { 200 }),
                url: (s == 0).then(|| "/checkout".to_string()),
                route: (s == 0).then(|| "/checkout".to_string()),
                pid: Some(1000),
                thread_id: Some(1000 + (t % 8) as i64),
                node: "bench".into(),
                attributes: if s == 0 {
                    attributes.clone()
                } else {
                    serde_json::Map::new()
                },
            });
        }
    }
    out
}

pub fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// OTLP export requests of `per_request` spans each, like an SDK's batches: one server
/// span per trace with the usual HTTP attributes, of service `bench-svc` in process
/// `pid`; each lasts 1 s and ends now (when generated).
pub fn otlp_requests(
    run: u32,
    spans: u64,
    per_request: u64,
    pid: i64,
) -> Vec<ExportTraceServiceRequest> {
    let now = now_ns() as u64;
    (0..spans.div_ceil(per_request))
        .map(|r| {
            let batch = (r * per_request..((r + 1) * per_request).min(spans))
                .map(|n| Span {
                    trace_id: trace_id(run, n).to_vec(),
                    span_id: (n + 1).to_be_bytes().to_vec(),
                    name: "POST /checkout".into(),
                    kind: 2,
                    start_time_unix_nano: now - 1_000_000_000 + n,
                    end_time_unix_nano: now + n,
                    attributes: vec![
                        kv(
                            "http.route",
                            any_value::Value::StringValue("/checkout".into()),
                        ),
                        kv("http.response.status_code", any_value::Value::IntValue(200)),
                        kv(
                            "thread.id",
                            any_value::Value::IntValue(1000 + (n % 8) as i64),
                        ),
                        kv(
                            "http.request.method",
                            any_value::Value::StringValue("POST".into()),
                        ),
                    ],
                    ..Default::default()
                })
                .collect();
            ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![
                            kv(
                                "service.name",
                                any_value::Value::StringValue("bench-svc".into()),
                            ),
                            kv("process.pid", any_value::Value::IntValue(pid)),
                        ],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans: batch,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
        })
        .collect()
}

/// A fresh database: a new PostgreSQL database on the given server, or a new
/// directory for the embedded store.
pub struct Database {
    pub label: &'static str,
    pub config: coral_colony::StoreConfig,
    /// PostgreSQL: the server's URL and this database's name, to drop it.
    created: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Database {
    pub async fn fresh(postgres: Option<&str>) -> Result<Self> {
        match postgres {
            Some(base) => {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(base).await?;
                let name = format!("coral_bench_{}", uuid::Uuid::new_v4().simple());
                // The name is generated here, never user text.
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await?;
                let (prefix, _) = base.rsplit_once('/').context("URL ends with /database")?;
                Ok(Self {
                    label: "postgres",
                    config: coral_colony::StoreConfig::Postgres {
                        url: format!("{prefix}/{name}"),
                    },
                    created: Some((base.to_string(), name)),
                    _dir: None,
                })
            }
            None => {
                let dir = tempfile::tempdir()?;
                Ok(Self {
                    label: "sqlite",
                    config: coral_colony::StoreConfig::Embedded {
                        data_dir: dir.path().to_path_buf(),
                    },
                    created: None,
                    _dir: Some(dir),
                })
            }
        }
    }

    pub fn colony_args(&self) -> Vec<String> {
        match &self.config {
            coral_colony::StoreConfig::Postgres { url } => {
                vec!["--database-url".into(), url.clone()]
            }
            coral_colony::StoreConfig::Embedded { data_dir } => {
                vec!["--data-dir".into(), data_dir.display().to_string()]
            }
        }
    }

    /// How many spans are stored, read straight from the database.
    pub async fn count_spans(&self) -> Result<i64> {
        self.count_rows("spans").await
    }

    /// How many rows `table` holds, read straight from the database.
    pub async fn count_rows(&self, table: &'static str) -> Result<i64> {
        // The table name is a constant of this crate, never user text.
        self.scalar(format!("SELECT count(*) FROM {table}")).await
    }

    /// How many distinct (trace id, span id) keys the stored spans have.
    pub async fn count_distinct_span_keys(&self) -> Result<i64> {
        self.scalar(
            "SELECT count(*) FROM (SELECT DISTINCT trace_id, span_id FROM spans) AS k".into(),
        )
        .await
    }

    /// One integer, from a query of this crate's own text (never user text).
    async fn scalar(&self, sql: String) -> Result<i64> {
        use sqlx::Connection;
        let sql = sqlx::AssertSqlSafe(sql);
        Ok(match &self.config {
            coral_colony::StoreConfig::Postgres { url } => {
                let mut c = sqlx::PgConnection::connect(url).await?;
                sqlx::query_scalar(sql).fetch_one(&mut c).await?
            }
            coral_colony::StoreConfig::Embedded { data_dir } => {
                let url = format!("sqlite://{}?mode=ro", data_dir.join("coral.db").display());
                let mut c = sqlx::SqliteConnection::connect(&url).await?;
                sqlx::query_scalar(sql).fetch_one(&mut c).await?
            }
        })
    }

    /// Deletes the database now (PostgreSQL; the embedded store's directory goes when
    /// this is dropped), once nothing is connected to it.
    pub async fn drop_database(self) -> Result<()> {
        if let Some((base, name)) = &self.created {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(base).await?;
            // The name was generated in `fresh`, never user text.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await?;
        }
        Ok(())
    }
}

/// PostgreSQL (when a URL is given), then the embedded store.
pub fn backends(postgres: Option<&str>) -> Vec<Option<&str>> {
    postgres.map(Some).into_iter().chain([None]).collect()
}

/// Child processes killed on drop, the last started first (an agent before its
/// colony, which it would otherwise log about).
#[derive(Default)]
pub struct Processes {
    pub children: Vec<Child>,
    /// Their temporary directories, removed after they are killed.
    dirs: Vec<tempfile::TempDir>,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn spawn(coral: &str, args: &[String]) -> Result<Child> {
    Command::new(coral)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| {
            format!("cannot start {coral} (build it with `cargo build --release -p coral-cli`)")
        })
}

/// Starts a colony on `db`; returns its address once it answers.
pub async fn start_colony(coral: &str, db: &Database, procs: &mut Processes) -> Result<String> {
    Ok(start_colony_pid(coral, db, procs).await?.0)
}

/// [`start_colony`], also returning the colony's pid.
pub async fn start_colony_pid(
    coral: &str,
    db: &Database,
    procs: &mut Processes,
) -> Result<(String, u32)> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut args = vec![
        "colony".into(),
        "start".into(),
        "--listen".into(),
        addr.clone(),
    ];
    args.extend(db.colony_args());
    let colony = spawn(coral, &args)?;
    let pid = colony.id();
    procs.children.push(colony);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(ch) = coral_client::connect(&addr).await {
            let mut q = coral_client::query_client(ch);
            if q.list_services(coral_client::v1::ListServicesRequest {})
                .await
                .is_ok()
            {
                return Ok((addr, pid));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the colony did not start")
}

/// Starts an agent forwarding to `colony`, with OTLP/gRPC on a free port; returns
/// that address and the agent's pid.
pub fn start_agent(coral: &str, colony: &str, procs: &mut Processes) -> Result<(String, u32)> {
    start_agent_with(coral, colony, procs, &[])
}

/// [`start_agent`] with more arguments of `coral agent start`.
pub fn start_agent_with(
    coral: &str,
    colony: &str,
    procs: &mut Processes,
    extra: &[&str],
) -> Result<(String, u32)> {
    let otlp = format!("127.0.0.1:{}", free_port()?);
    let mut args = vec![
        "agent",
        "start",
        "--colony",
        colony,
        "--otlp-grpc",
        &otlp,
        "--otlp-http",
        "off",
        "--node",
        "bench",
    ];
    // Its own spool directory, removed with the processes.
    let data = tempfile::tempdir()?;
    args.extend([
        "--data-dir",
        data.path().to_str().expect("a UTF-8 temp path"),
    ]);
    args.extend(extra);
    let args: Vec<String> = args.into_iter().map(String::from).collect();
    procs.dirs.push(data);
    let agent = spawn(coral, &args)?;
    let pid = agent.id();
    procs.children.push(agent);
    Ok((otlp, pid))
}

/// An OTLP/gRPC client of the receiver at `addr`, once it accepts connections.
pub async fn otlp_client(addr: &str) -> TraceServiceClient<tonic::transport::Channel> {
    loop {
        match TraceServiceClient::connect(format!("http://{addr}")).await {
            Ok(c) => return c,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until the colony at `colony` lists `service` (its spans are stored).
pub async fn wait_for_service(colony: &str, service: &str) -> Result<()> {
    let mut query = coral_client::query_client(coral_client::connect(colony).await?);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let services = query
            .list_services(coral_client::v1::ListServicesRequest {})
            .await?
            .into_inner()
            .services;
        if services.iter().any(|s| s.name == service) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{service}'s spans did not reach the colony within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// CPU time process `pid` has used so far, to the nanosecond (its CPU-time clock;
/// /proc/PID/stat counts in 10 ms ticks).
pub fn process_cpu(pid: u32) -> Result<Duration> {
    use nix::time::{ClockId, clock_gettime};
    let clock = ClockId::pid_cpu_clock_id(nix::unistd::Pid::from_raw(pid as i32))
        .with_context(|| format!("process {pid} is gone"))?;
    Ok(clock_gettime(clock)
        .with_context(|| format!("process {pid} is gone"))?
        .into())
}

/// Kills a child on drop (a workload or a profiler left behind by an error).
pub struct Killed(pub Option<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// How much lower `values[i]` is than the mean of its neighbours (alternating rounds:
/// this cancels slow drifts of the machine's speed).
pub fn loss_vs_neighbours(values: &[f64], i: usize) -> f64 {
    1.0 - values[i] / ((values[i - 1] + values[i + 1]) / 2.0)
}

/// Median and 95th percentile.
pub fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95))
}

/// A tiny deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
