//! Faults the colony must survive. PostgreSQL restarted under load: while it is down,
//! calls fail with a retryable `UNAVAILABLE` that says the database is unreachable;
//! afterwards the same colony serves again (its pool reconnects), every span sent is
//! stored exactly once (the agent retries, ingest is idempotent), and no profile is
//! half stored (a profile and its stacks are one transaction).
//!
//! The test runs its own PostgreSQL server, which it stops and starts; PostgreSQL
//! refuses to run as root, so its tools run as the `postgres` user (`runuser`), which
//! needs root: `cargo xtask test` runs it.

use crate::cli::coral;
use crate::harness::{Sampling, Stack};
use crate::metrics::scrape;
use coral_client::v1;
use coral_sampler::FakeSampler;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use opentelemetry_proto::tonic::trace::v1::Span;
use sqlx::Connection;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Mutex;

const NEEDS_ROOT: &str = "needs root (runs its own PostgreSQL as the postgres user): run \
                          `cargo xtask test`, which installs PostgreSQL and runs as root";

/// The load's service.
const SERVICE: &str = "fault-svc";
/// Stacks in each profile the load sends (the consistency query below says 40).
const STACKS_PER_PROFILE: usize = 40;
const _: () = assert!(STACKS_PER_PROFILE == 40);
/// How long PostgreSQL stays down.
const OUTAGE: Duration = Duration::from_secs(8);

/// A PostgreSQL server of the test's own, on a free port, that it can stop and start.
struct PgServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// The newest installed server's bin directory, e.g. /usr/lib/postgresql/15/bin.
fn pg_bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .unwrap_or_else(|e| panic!("no /usr/lib/postgresql ({e}): {NEEDS_ROOT}"))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .unwrap_or_else(|| panic!("no PostgreSQL server installed: {NEEDS_ROOT}"))
        .1
}

fn run_checked(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgServer {
    fn start() -> Self {
        assert!(is_root(), "{NEEDS_ROOT}");
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("coral-faults-pg")
            .tempdir()
            .unwrap();
        run_checked(
            Command::new("chown").arg("postgres").arg(dir.path()),
            "chown",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = Self { bin, dir, port };
        run_checked(
            server.tool("initdb").arg("-D").arg(server.data()).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ]),
            "initdb",
        );
        server.start_again();
        server
    }

    fn tool(&self, name: &str) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(self.bin.join(name));
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run_checked(
            self.tool("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-o", &options, "-l"])
                .arg(self.log())
                .args(["-w", "-t", "60", "start"]),
            &format!("pg_ctl start (log: {})", self.log().display()),
        );
    }

    /// Stops the server the way an operator restarting it would: `-m fast` ends every
    /// session, rolling back open transactions.
    fn stop(&self) {
        run_checked(
            self.tool("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "-t", "60", "stop"]),
            "pg_ctl stop",
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .tool("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn trace_id(n: u64) -> Vec<u8> {
    let mut id = vec![0xfa; 8];
    id.extend_from_slice(&n.to_be_bytes());
    id
}

/// One request of `SERVICE`: a server span and its child, as OTLP.
fn otlp_request(n: u64) -> ExportTraceServiceRequest {
    let start = now_ns();
    let span = |span_id: u8, parent: Vec<u8>, name: &str, kind: i32| Span {
        trace_id: trace_id(n),
        span_id: vec![span_id; 8],
        parent_span_id: parent,
        name: name.into(),
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: start + 2_000_000,
        ..Default::default()
    };
    crate::harness::otlp_request(
        Some(SERVICE),
        vec![
            span(1, vec![], "GET /pay", 2),
            span(2, vec![1; 8], "charge", 1),
        ],
    )
}

/// A profile of request `n` with `STACKS_PER_PROFILE` stacks of 1..=40 samples.
fn trace_profile(n: u64) -> v1::TraceProfile {
    let frames: Vec<v1::Frame> = (0..=STACKS_PER_PROFILE)
        .map(|i| v1::Frame {
            function: format!("fn_{i}"),
            module: "fault-svc".into(),
            ..Default::default()
        })
        .collect();
    let stacks: Vec<v1::Stack> = (1..=STACKS_PER_PROFILE)
        .map(|i| v1::Stack {
            frame_ids: vec![0, i as u32],
            samples: i as u64,
            cpu_ns: i as u64 * 10_101_010,
            off_cpu_ns: 0,
            memory_bytes: 0,
        })
        .collect();
    v1::TraceProfile {
        trace_id: trace_id(n),
        span_id: vec![1; 8],
        service: SERVICE.into(),
        span_name: "GET /pay".into(),
        start_time_unix_nano: now_ns() as i64,
        duration_ns: 2_000_000,
        node: "test-node".into(),
        pid: Some(4242),
        thread_id: Some(4243),
        precision: "thread".into(),
        frequency_hz: 99,
        concurrent_requests: 0,
        source: format!("session:{}", uuid::Uuid::new_v4()),
        profile: Some(v1::Profile { frames, stacks }),
        truncated_samples: 0,
        lost_samples: 0,
        profile_types: vec!["cpu".into()],
    }
}

/// What a load task saw: calls that succeeded, and each failure's code and message.
#[derive(Default)]
struct Seen {
    ok: u64,
    failures: Vec<(tonic::Code, String, bool)>,
}

impl Seen {
    fn fail(&mut self, status: &tonic::Status) {
        self.failures.push((
            status.code(),
            status.message().to_string(),
            coral_client::is_database_unavailable(status),
        ));
    }

    /// Every failure is the colony's retryable "database unreachable".
    fn assert_failures_retryable(&self, what: &str) {
        for (code, message, database) in &self.failures {
            assert_eq!(
                *code,
                tonic::Code::Unavailable,
                "{what} failed with {code:?}, not UNAVAILABLE: {message}"
            );
            assert!(
                *database && message.contains("database is unreachable"),
                "{what}: the failure does not say the database is unreachable: {message}"
            );
            assert!(
                message.contains("can be retried"),
                "{what}: the failure does not say the request can be retried: {message}"
            );
        }
    }
}

/// Rows of the test's service in the colony's database.
async fn count(url: &str, sql: &'static str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the test's PostgreSQL");
    sqlx::query_scalar(sql)
        .bind(SERVICE)
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to run its own PostgreSQL as the postgres user: run `cargo xtask test`"]
async fn postgres_restarted_under_load() {
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let stack =
        Stack::start_on_postgres(&pg.url(), Sampling::Fake(Arc::new(FakeSampler::new()))).await;
    let stop = Arc::new(AtomicBool::new(false));

    // Span load: OTLP/gRPC requests to the agent, one at a time; each is retried until
    // the agent accepts it (it only refuses when its buffer is full), and counted once.
    let otlp = format!("http://{}", stack.otlp_grpc);
    let spans_task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut client = TraceServiceClient::connect(otlp).await.unwrap();
            let mut requests = 0u64;
            let mut refused = 0u64;
            while !stop.load(Ordering::Relaxed) {
                loop {
                    match client.export(otlp_request(requests)).await {
                        Ok(resp) => {
                            let partial = resp.into_inner().partial_success;
                            assert!(
                                partial.as_ref().is_none_or(|p| p.rejected_spans == 0),
                                "the agent rejected valid spans: {partial:?}"
                            );
                            break;
                        }
                        Err(status) => {
                            assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                requests += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (requests, refused)
        }
    });

    // Profile load: IngestTraceProfiles straight to the colony, each batch retried on
    // failure as an agent does.
    let colony = stack.colony.clone();
    let profiles_seen = Arc::new(Mutex::new(Seen::default()));
    let profiles_task = tokio::spawn({
        let (stop, seen) = (stop.clone(), profiles_seen.clone());
        async move {
            let mut client =
                coral_client::agent_client(coral_client::connect(&colony).await.unwrap());
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let request = v1::IngestTraceProfilesRequest {
                    agent_id: "fault-agent".into(),
                    profiles: vec![trace_profile(sent), trace_profile(sent + 1)],
                };
                loop {
                    match client.ingest_trace_profiles(request.clone()).await {
                        Ok(resp) => {
                            let resp = resp.into_inner();
                            assert_eq!(resp.rejected, 0, "{}", resp.error_message);
                            seen.lock().await.ok += 1;
                            break;
                        }
                        Err(status) => {
                            seen.lock().await.fail(&status);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                sent += 2;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        }
    });

    // Query load: what the CLI and assistants call.
    let queries_seen = Arc::new(Mutex::new(Seen::default()));
    let queries_task = tokio::spawn({
        let (stop, seen) = (stop.clone(), queries_seen.clone());
        let colony = stack.colony.clone();
        async move {
            let mut client =
                coral_client::query_client(coral_client::connect(&colony).await.unwrap());
            while !stop.load(Ordering::Relaxed) {
                let result = client
                    .query_traces(v1::QueryTracesRequest {
                        service: SERVICE.into(),
                        limit: 10,
                        ..Default::default()
                    })
                    .await;
                match result {
                    Ok(_) => seen.lock().await.ok += 1,
                    // Before the first span is stored, the service is unknown.
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => seen.lock().await.fail(&s),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });

    // Load is flowing and stored before the outage.
    // The colony's database is the server's default one.
    let url = pg.url();
    for _ in 0..600 {
        if count(&url, "SELECT count(*) FROM spans WHERE service = $1").await > 0
            && queries_seen.lock().await.ok > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = count(&url, "SELECT count(*) FROM spans WHERE service = $1").await;
    assert!(before > 0, "no spans stored before the outage");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The outage.
    let outage_start = Instant::now();
    let pg = tokio::task::spawn_blocking(move || {
        pg.stop();
        pg
    })
    .await
    .unwrap();

    // A query now fails, retryably and saying why, without hanging.
    let mut query = stack.query().await;
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        query.list_services(v1::ListServicesRequest {}),
    )
    .await
    .expect("ListServices hung while PostgreSQL was down")
    .expect_err("ListServices succeeded while PostgreSQL was down");
    let mut outage_calls = Seen::default();
    outage_calls.fail(&status);
    outage_calls.assert_failures_retryable("ListServices during the outage");

    // The CLI prints it as what it is: the colony is up, its database is not.
    let colony = stack.colony.clone();
    let cli = tokio::task::spawn_blocking(move || coral(Some(&colony), &["query", "services"]))
        .await
        .unwrap();
    assert!(
        !cli.ok,
        "`coral query services` succeeded during the outage"
    );
    assert!(
        cli.stderr.contains("cannot reach its database")
            && cli.stderr.contains("once the database is back"),
        "unclear CLI error: {}",
        cli.stderr
    );
    assert!(
        !cli.stderr.contains("Is it running"),
        "the CLI blames the colony: {}",
        cli.stderr
    );

    let remaining = OUTAGE.saturating_sub(outage_start.elapsed());
    tokio::time::sleep(remaining).await;
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();
    let outage = outage_start.elapsed();

    // The same colony serves again: its pool reconnects by itself.
    let mut served_again = false;
    for _ in 0..600 {
        if query
            .list_services(v1::ListServicesRequest {})
            .await
            .is_ok()
        {
            served_again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served_again,
        "the colony does not serve again after PostgreSQL came back"
    );
    let cli = tokio::task::spawn_blocking({
        let colony = stack.colony.clone();
        move || coral(Some(&colony), &["query", "services"])
    })
    .await
    .unwrap();
    assert!(cli.ok && cli.stdout.contains(SERVICE), "{}", cli.stderr);

    // More load after the recovery, then stop it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (requests, refused_by_agent) = spans_task.await.unwrap();
    let profiles_sent = profiles_task.await.unwrap();
    queries_task.await.unwrap();

    // Every span sent is stored exactly once: (trace id, span id) is the key, so count
    // the rows and that every request has both of its spans.
    let spans_sent = 2 * requests as i64;
    let mut stored = 0;
    for _ in 0..600 {
        stored = count(&url, "SELECT count(*) FROM spans WHERE service = $1").await;
        if stored >= spans_sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stored, spans_sent, "spans stored vs sent");
    let whole_requests = count(
        &url,
        "SELECT count(*) FROM (SELECT trace_id FROM spans WHERE service = $1 \
         GROUP BY trace_id HAVING count(*) = 2) AS t",
    )
    .await;
    assert_eq!(whole_requests, requests as i64, "requests with both spans");

    // Every profile acknowledged is stored, and none in part: each has all its stacks,
    // and its totals are those of its stacks.
    let profiles = count(
        &url,
        "SELECT count(*) FROM trace_profiles WHERE service = $1",
    )
    .await;
    assert_eq!(profiles, profiles_sent as i64, "profiles stored vs sent");
    let partial = count(
        &url,
        "SELECT count(*) FROM trace_profiles tp WHERE tp.service = $1 AND (\
           (SELECT count(*) FROM trace_profile_samples s \
              WHERE s.trace_id = tp.trace_id AND s.span_id = tp.span_id) <> 40 \
           OR tp.samples <> (SELECT coalesce(sum(s.samples), 0) FROM trace_profile_samples s \
              WHERE s.trace_id = tp.trace_id AND s.span_id = tp.span_id))",
    )
    .await;
    assert_eq!(partial, 0, "profiles stored in part");
    let orphans = count(
        &url,
        "SELECT count(*) FROM trace_profile_samples s WHERE $1 <> '' AND NOT EXISTS \
         (SELECT 1 FROM trace_profiles tp \
            WHERE tp.trace_id = s.trace_id AND tp.span_id = s.span_id)",
    )
    .await;
    assert_eq!(orphans, 0, "samples without their profile");
    // Read back through the API too.
    let mut profile_client = stack.profile().await;
    let read = profile_client
        .get_trace_profile(v1::GetTraceProfileRequest {
            trace_id: hex::encode(trace_id(0)),
            ..Default::default()
        })
        .await
        .expect("GetTraceProfile after the outage")
        .into_inner();
    assert!(!read.profiles.is_empty(), "the first profile is not stored");
    assert!(
        read.profiles
            .iter()
            .all(|p| p.profile.as_ref().map_or(0, |p| p.stacks.len()) == STACKS_PER_PROFILE),
        "a profile read back without all its stacks"
    );

    // The failures seen under load were the retryable kind, and there were some.
    let profiles_seen = profiles_seen.lock().await;
    let queries_seen = queries_seen.lock().await;
    profiles_seen.assert_failures_retryable("IngestTraceProfiles");
    queries_seen.assert_failures_retryable("QueryTraces");
    assert!(
        !queries_seen.failures.is_empty(),
        "no query failed during the outage"
    );
    assert!(
        !profiles_seen.failures.is_empty(),
        "no profile batch failed during the outage"
    );

    // The colony counted its store errors.
    let metrics = scrape(stack.colony_metrics).await;
    let store_errors = metrics.sum("coral_colony_store_errors_total", &[]);
    assert!(
        store_errors > 0.0,
        "coral_colony_store_errors_total did not move"
    );
    let unavailable = metrics.sum(
        "coral_colony_rpc_duration_seconds_count",
        &[("code", "Unavailable")],
    );
    assert!(unavailable > 0.0, "no RPC counted as Unavailable");

    eprintln!(
        "faults: PostgreSQL down {:.1} s; {requests} requests ({spans_sent} spans) sent, \
         {stored} stored, agent refusals {refused_by_agent}; {profiles_sent} profiles stored \
         whole; query failures {} (ok {}), profile batch failures {} (ok {}); store errors \
         counted {store_errors}, UNAVAILABLE RPCs {unavailable}",
        outage.as_secs_f64(),
        queries_seen.failures.len(),
        queries_seen.ok,
        profiles_seen.failures.len(),
        profiles_seen.ok,
    );
    drop(pg);
}
