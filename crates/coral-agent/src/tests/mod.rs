//! Integration tests: a real agent ([`crate::serve_with_stats`]) on port 0, real OTLP
//! clients, and a fake colony — an in-memory `AgentService` — below it.

mod bad_input;
mod grpc;
mod http;
mod profiling;
mod triggers;
mod uplink;

use crate::{AgentConfig, AgentError, AgentStats, Listeners, ServeOptions};
use coral_client::v1::agent_service_server::{AgentService, AgentServiceServer};
use coral_client::v1::{self, AgentCounters};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

/// How long a test waits for something that should happen soon.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// What the fake colony has seen.
#[derive(Debug, Default)]
pub(crate) struct ColonyState {
    pub spans: Vec<v1::Span>,
    pub ingest_calls: usize,
    pub registrations: Vec<v1::RegisterAgentRequest>,
    pub heartbeats: Vec<v1::HeartbeatRequest>,
    /// Agents registered and not forgotten; a heartbeat from another is NOT_FOUND.
    pub known: HashSet<String>,
    /// Profiling sessions to push: every command stream sends each of them once.
    pub sessions: Vec<v1::ProfileSessionCommand>,
    /// The active triggers: every command stream sends the set first and whenever it
    /// changes.
    pub triggers: Vec<v1::TriggerCommand>,
    /// Command streams opened.
    pub watches: usize,
    pub reports: Vec<v1::ReportSessionRequest>,
    pub trace_profiles: Vec<v1::TraceProfile>,
    /// Set when stopping: command streams end (a graceful server shutdown waits for
    /// open streams).
    pub closing: bool,
}

type CommandStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::AgentCommand, Status>> + Send>>;

#[derive(Clone, Default)]
struct FakeColonyService(Arc<Mutex<ColonyState>>);

#[tonic::async_trait]
impl AgentService for FakeColonyService {
    type WatchCommandsStream = CommandStream;

    async fn watch_commands(
        &self,
        request: Request<v1::WatchCommandsRequest>,
    ) -> Result<Response<Self::WatchCommandsStream>, Status> {
        assert!(!request.into_inner().agent_id.is_empty());
        self.0.lock().unwrap().watches += 1;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let state = self.0.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            let mut triggers_sent = None;
            loop {
                let (new, triggers) = {
                    let state = state.lock().unwrap();
                    if state.closing {
                        return;
                    }
                    (state.sessions[sent..].to_vec(), state.triggers.clone())
                };
                if triggers_sent.as_ref() != Some(&triggers) {
                    triggers_sent = Some(triggers.clone());
                    let command = v1::AgentCommand {
                        command: Some(v1::agent_command::Command::ActiveTriggers(
                            v1::ActiveTriggers { triggers },
                        )),
                    };
                    if tx.send(Ok(command)).await.is_err() {
                        return;
                    }
                }
                for session in new {
                    sent += 1;
                    let command = v1::AgentCommand {
                        command: Some(v1::agent_command::Command::ProfileSession(session)),
                    };
                    if tx.send(Ok(command)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_session(
        &self,
        request: Request<v1::ReportSessionRequest>,
    ) -> Result<Response<v1::ReportSessionResponse>, Status> {
        self.0.lock().unwrap().reports.push(request.into_inner());
        Ok(Response::new(v1::ReportSessionResponse {}))
    }

    async fn ingest_trace_profiles(
        &self,
        request: Request<v1::IngestTraceProfilesRequest>,
    ) -> Result<Response<v1::IngestTraceProfilesResponse>, Status> {
        let request = request.into_inner();
        let accepted = request.profiles.len() as u64;
        let mut state = self.0.lock().unwrap();
        for profile in request.profiles {
            // Idempotent on (trace id, span id) per source: the colony stores a request
            // once, but counts it for each trigger's baseline it is sent for.
            state.trace_profiles.retain(|p| {
                (&p.trace_id, &p.span_id, &p.source)
                    != (&profile.trace_id, &profile.span_id, &profile.source)
            });
            state.trace_profiles.push(profile);
        }
        Ok(Response::new(v1::IngestTraceProfilesResponse {
            accepted,
            ..Default::default()
        }))
    }

    async fn register_agent(
        &self,
        request: Request<v1::RegisterAgentRequest>,
    ) -> Result<Response<v1::RegisterAgentResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.0.lock().unwrap();
        state.known.insert(request.agent_id.clone());
        state.registrations.push(request);
        Ok(Response::new(v1::RegisterAgentResponse {}))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.0.lock().unwrap();
        if !state.known.contains(&request.agent_id) {
            return Err(Status::not_found(format!(
                "agent {} is not registered",
                request.agent_id
            )));
        }
        state.heartbeats.push(request);
        Ok(Response::new(v1::HeartbeatResponse {}))
    }

    async fn ingest_spans(
        &self,
        request: Request<v1::IngestSpansRequest>,
    ) -> Result<Response<v1::IngestSpansResponse>, Status> {
        let request = request.into_inner();
        let accepted = request.spans.len() as u64;
        let mut state = self.0.lock().unwrap();
        state.ingest_calls += 1;
        state.spans.extend(request.spans);
        Ok(Response::new(v1::IngestSpansResponse {
            accepted,
            ..Default::default()
        }))
    }
}

/// An in-memory colony on a local port.
pub(crate) struct FakeColony {
    pub addr: SocketAddr,
    state: Arc<Mutex<ColonyState>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl FakeColony {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind the fake colony");
        let addr = listener.local_addr().unwrap();
        let service = FakeColonyService::default();
        let state = service.0.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(
                    AgentServiceServer::new(service)
                        .max_decoding_message_size(coral_client::MAX_MESSAGE_BYTES),
                )
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .expect("fake colony serves");
        });
        Self {
            addr,
            state,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Looks at the state.
    pub fn with<T>(&self, f: impl FnOnce(&ColonyState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    /// Starts a profiling session: pushed to every command stream, open or future.
    pub fn push_session(&self, session: v1::ProfileSessionCommand) {
        self.state.lock().unwrap().sessions.push(session);
    }

    /// Sets the active triggers (pushed to every command stream).
    pub fn set_triggers(&self, triggers: Vec<v1::TriggerCommand>) {
        self.state.lock().unwrap().triggers = triggers;
    }

    /// Forgets registered agents (as a colony that lost its state would).
    pub fn forget_agents(&self) {
        self.state.lock().unwrap().known.clear();
    }

    /// Waits (at most [`PATIENCE`]) until `done` holds.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&ColonyState) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if self.with(&done) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let summary = self.with(|s| {
                    format!(
                        "{} spans, {} registrations, {} heartbeats, {} reports, {} trace profiles",
                        s.spans.len(),
                        s.registrations.len(),
                        s.heartbeats.len(),
                        s.reports.len(),
                        s.trace_profiles.len()
                    )
                });
                panic!("timed out waiting for {what}; the fake colony has {summary}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until at least `n` spans arrived.
    pub async fn wait_for_spans(&self, n: usize) {
        self.wait_until(&format!("{n} spans"), |s| s.spans.len() >= n)
            .await;
    }

    pub async fn stop(mut self) {
        self.state.lock().unwrap().closing = true;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// A running agent with both receivers on local ports.
pub(crate) struct TestAgent {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub stats: Arc<AgentStats>,
    pub agent_id: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), AgentError>>>,
}

/// Settings for fast tests.
pub(crate) fn test_config(colony: &str) -> AgentConfig {
    let mut config = AgentConfig::new(colony, "test-node");
    config.flush_interval = Duration::from_millis(20);
    config.heartbeat_interval = Duration::from_millis(100);
    config
}

/// Log lines show with a failing test's output (`RUST_LOG` overrides the filter).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("coral_agent=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl TestAgent {
    pub async fn start(config: AgentConfig) -> Self {
        Self::start_with(config, ServeOptions::default()).await
    }

    /// [`TestAgent::start`] with a sampler of the test's choosing; `options.stats` is
    /// replaced by the agent's own.
    pub async fn start_with(config: AgentConfig, options: ServeOptions) -> Self {
        init_logging();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
        let stats = Arc::new(AgentStats::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let agent_id = config.agent_id.clone();
        let listeners = Listeners {
            otlp_grpc: Some(grpc),
            otlp_http: Some(http),
            metrics: None,
        };
        let options = ServeOptions {
            stats: stats.clone(),
            ..options
        };
        let task = tokio::spawn(crate::serve_with(config, listeners, options, async {
            let _ = stopped.await;
        }));
        Self {
            grpc: grpc_addr,
            http: http_addr,
            stats,
            agent_id,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn counters(&self) -> AgentCounters {
        self.stats.snapshot()
    }

    /// Requests shutdown and waits for `serve` to return.
    pub async fn stop(mut self) -> Result<(), AgentError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(PATIENCE, task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve does not panic")
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Waits (at most [`PATIENCE`]) until the agent's counters satisfy `done`.
pub(crate) async fn wait_for_counters(agent: &TestAgent, done: impl Fn(&AgentCounters) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done(&agent.counters()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out; counters are {:?}",
            agent.counters()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free local address with nothing listening on it (yet).
pub(crate) async fn unused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Distinct span ids of `spans`, as hex.
pub(crate) fn span_ids(spans: &[v1::Span]) -> HashSet<String> {
    spans.iter().map(|s| hex::encode(&s.span_id)).collect()
}

/// A serve() call with no receivers is refused (the CLI also checks this).
#[tokio::test]
async fn serve_needs_a_listener() {
    let result = crate::serve(
        AgentConfig::new("127.0.0.1:1", "n"),
        Listeners::default(),
        async {},
    )
    .await;
    assert!(matches!(result, Err(AgentError::NoListeners)));
}

#[tokio::test]
async fn serve_rejects_a_bad_colony_address() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = crate::serve(
        AgentConfig::new("http://bad host:7070", "n"),
        Listeners {
            otlp_grpc: Some(listener),
            otlp_http: None,
            metrics: None,
        },
        async {},
    )
    .await;
    let err = result.expect_err("invalid address");
    assert!(matches!(err, AgentError::ColonyAddress(_)), "{err}");
    assert!(err.to_string().contains("invalid colony address"), "{err}");
}

#[tokio::test]
async fn serve_rejects_a_zero_batch_size() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = AgentConfig::new("127.0.0.1:1", "n");
    config.batch_size = 0;
    let result = crate::serve(
        config,
        Listeners {
            otlp_grpc: None,
            otlp_http: Some(listener),
            metrics: None,
        },
        async {},
    )
    .await;
    assert!(matches!(result, Err(AgentError::InvalidConfig(_))));
}

/// `n` valid spans with distinct span ids, starting at `first`.
pub(crate) fn numbered_spans(
    first: u32,
    n: u32,
) -> Vec<opentelemetry_proto::tonic::trace::v1::Span> {
    (first..first + n)
        .map(|i| {
            let mut s = crate::otlp::tests::span(1);
            s.span_id = [i.to_be_bytes(), [0xcc; 4]].concat();
            s
        })
        .collect()
}
