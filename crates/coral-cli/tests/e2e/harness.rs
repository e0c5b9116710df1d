//! A colony and its agents, in this process, on port 0, over either store; either can
//! be stopped and started again.

use coral_client::v1;
use coral_sampler::FakeSampler;
use opentelemetry_proto::tonic as otlp;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

const NEEDS_POSTGRES: &str = "needs PostgreSQL: run `cargo xtask test`, which provides one";

/// A fresh, empty database on the test server named by `CORAL_TEST_POSTGRES_URL`.
async fn fresh_postgres_url() -> String {
    let base = std::env::var("CORAL_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| panic!("CORAL_TEST_POSTGRES_URL is not set: {NEEDS_POSTGRES}"));
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to test PostgreSQL");
    let name = format!("coral_e2e_{}", uuid::Uuid::new_v4().simple());
    // The name is generated here, never user text.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (prefix, _) = base.rsplit_once('/').expect("URL ends with /database");
    format!("{prefix}/{name}")
}

/// How the agents of a [`Stack`] sample CPU.
#[derive(Clone)]
pub enum Sampling {
    /// The real eBPF sampler (needs root).
    Ebpf,
    /// An in-memory sampler: targets are tracked, samples are only those pushed.
    Fake(Arc<FakeSampler>),
}

/// One agent of a [`Stack`], on its own OTLP ports.
pub struct Agent {
    pub node: String,
    /// Its data directory (the profile spool): a restarted agent gets the same one.
    pub data_dir: PathBuf,
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    /// Its Prometheus metrics endpoint (a new port after a restart).
    pub metrics: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Agent {
    async fn start(
        colony: &str,
        node: &str,
        data_dir: PathBuf,
        sampling: &Sampling,
        ports: Option<(SocketAddr, SocketAddr)>,
    ) -> Self {
        let (grpc, http) = match ports {
            Some((grpc, http)) => (bind_again(grpc).await, bind_again(http).await),
            None => (
                TcpListener::bind("127.0.0.1:0").await.unwrap(),
                TcpListener::bind("127.0.0.1:0").await.unwrap(),
            ),
        };
        let (otlp_grpc, otlp_http) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
        let metrics_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = metrics_listener.local_addr().unwrap();
        let mut config = coral_agent::AgentConfig::new(colony.to_string(), node);
        config.flush_interval = Duration::from_millis(50);
        config.data_dir = Some(data_dir.clone());
        let listeners = coral_agent::Listeners {
            otlp_grpc: Some(grpc),
            otlp_http: Some(http),
            metrics: Some(metrics_listener),
        };
        let mut options = coral_agent::ServeOptions::default();
        if let Sampling::Fake(sampler) = sampling {
            let sampler = sampler.clone();
            options.sampler_factory =
                Arc::new(move |_| Ok(sampler.clone() as Arc<dyn coral_sampler::Sampler>));
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            coral_agent::serve_with(config, listeners, options, async {
                let _ = stopped.await;
            })
            .await
            .expect("the agent runs");
        });
        Self {
            node: node.to_string(),
            data_dir,
            otlp_grpc,
            otlp_http,
            metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the agent and waits until it has (its ports are free again).
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("the agent stops cleanly");
        }
    }
}

impl Agent {
    /// Ends the agent at once, as a crash would: no flush, nothing sent at shutdown.
    /// Waits until its spool is released (the profiler thread has noticed).
    pub async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        self.stop = None;
        let lock = self.data_dir.join("spool/lock");
        for _ in 0..100 {
            let file = std::fs::File::open(&lock).unwrap();
            if file.try_lock().is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the killed agent still holds {}", lock.display());
    }
}

/// Binds an address that was just released (a restarted server keeps its port).
async fn bind_again(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot bind {addr} again");
}

pub struct Stack {
    pub colony: String,
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub agents: Vec<Agent>,
    /// The colony's Prometheus metrics endpoint (a new port after a restart).
    pub colony_metrics: SocketAddr,
    sampling: Sampling,
    colony_addr: SocketAddr,
    store_config: coral_colony::StoreConfig,
    colony_stop: Option<oneshot::Sender<()>>,
    colony_task: Option<JoinHandle<()>>,
    data_dir: tempfile::TempDir,
}

impl Stack {
    /// A colony on `backend` and one agent with the real eBPF sampler.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Sampling::Ebpf).await
    }

    pub async fn start_with(backend: Backend, sampling: Sampling) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let store_config = match backend {
            Backend::Sqlite => coral_colony::StoreConfig::Embedded {
                data_dir: data_dir.path().to_path_buf(),
            },
            Backend::Postgres => coral_colony::StoreConfig::Postgres {
                url: fresh_postgres_url().await,
            },
        };
        Self::start_on_store(store_config, data_dir, sampling).await
    }

    /// A colony on PostgreSQL at `url` (a server the test controls) and one agent.
    pub async fn start_on_postgres(url: &str, sampling: Sampling) -> Self {
        let config = coral_colony::StoreConfig::Postgres {
            url: url.to_string(),
        };
        Self::start_on_store(config, tempfile::tempdir().unwrap(), sampling).await
    }

    async fn start_on_store(
        store_config: coral_colony::StoreConfig,
        data_dir: tempfile::TempDir,
        sampling: Sampling,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let colony_addr = listener.local_addr().unwrap();
        let colony = format!("http://{colony_addr}");
        let mut stack = Self {
            colony: colony.clone(),
            otlp_grpc: colony_addr,
            otlp_http: colony_addr,
            agents: Vec::new(),
            colony_metrics: colony_addr,
            sampling,
            colony_addr,
            store_config,
            colony_stop: None,
            colony_task: None,
            data_dir,
        };
        stack.serve_colony(listener).await;
        let agent = Agent::start(
            &colony,
            "test-node",
            stack.agent_data_dir("test-node"),
            &stack.sampling,
            None,
        )
        .await;
        (stack.otlp_grpc, stack.otlp_http) = (agent.otlp_grpc, agent.otlp_http);
        stack.agents.push(agent);
        stack
    }

    async fn serve_colony(&mut self, listener: TcpListener) {
        let store = coral_colony::open_store(&self.store_config)
            .await
            .expect("open store");
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.colony_metrics = metrics.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        self.colony_stop = Some(stop);
        self.colony_task = Some(tokio::spawn(async move {
            let options = coral_colony::ColonyOptions::default();
            coral_colony::serve_with_metrics(listener, Some(metrics), store, options, async {
                let _ = stopped.await;
            })
            .await
            .expect("the colony serves");
        }));
    }

    /// Stops the colony (its store stays) and waits until it has.
    pub async fn stop_colony(&mut self) {
        if let Some(stop) = self.colony_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.colony_task.take() {
            task.await.expect("the colony stops cleanly");
        }
    }

    /// Starts the colony again, on the same address and store.
    pub async fn start_colony(&mut self) {
        let listener = bind_again(self.colony_addr).await;
        self.serve_colony(listener).await;
    }

    fn agent_data_dir(&self, node: &str) -> PathBuf {
        self.data_dir.path().join(format!("agent-{node}"))
    }

    /// Stops agent `i` and starts a new one on the same ports (a restarted pod).
    pub async fn restart_agent(&mut self, i: usize) {
        self.agents[i].stop().await;
        self.start_agent_again(i).await;
    }

    /// Starts agent `i` again after [`Agent::kill`]: same ports, same data directory.
    pub async fn start_agent_again(&mut self, i: usize) {
        let agent = &self.agents[i];
        let ports = Some((agent.otlp_grpc, agent.otlp_http));
        let (node, data_dir) = (agent.node.clone(), agent.data_dir.clone());
        self.agents[i] = Agent::start(&self.colony, &node, data_dir, &self.sampling, ports).await;
    }

    /// Starts one more agent (another node); returns its index.
    pub async fn add_agent(&mut self, node: &str) -> usize {
        let data_dir = self.agent_data_dir(node);
        let agent = Agent::start(&self.colony, node, data_dir, &self.sampling, None).await;
        self.agents.push(agent);
        self.agents.len() - 1
    }

    pub async fn query(&self) -> coral_client::QueryServiceClient<coral_client::Channel> {
        coral_client::query_client(coral_client::connect(&self.colony).await.unwrap())
    }

    pub async fn profile(&self) -> coral_client::ProfileServiceClient<coral_client::Channel> {
        coral_client::profile_client(coral_client::connect(&self.colony).await.unwrap())
    }

    /// Waits (up to 20 s) until the trace has `n` spans in the colony.
    pub async fn wait_for_trace(&self, trace_id: &str, n: usize) -> Vec<v1::Span> {
        let mut client = self.query().await;
        let mut last = Vec::new();
        for _ in 0..200 {
            if let Ok(resp) = client
                .get_trace(v1::GetTraceRequest {
                    trace_id: trace_id.to_string(),
                })
                .await
            {
                last = resp.into_inner().spans;
                if last.len() >= n {
                    return last;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("trace {trace_id} has {} spans, expected {n}", last.len());
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            if let Some(stop) = agent.stop.take() {
                let _ = stop.send(());
            }
        }
        if let Some(stop) = self.colony_stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs a blocking producer (an OTel SDK whose span processor exports synchronously)
/// on a thread that can reach this runtime's reactor.
pub async fn produce<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// An OTLP string attribute.
pub fn otlp_string(key: &str, value: impl Into<String>) -> otlp::common::v1::KeyValue {
    use otlp::common::v1::{AnyValue, KeyValue, any_value};
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// One OTLP export request: `spans` from one resource, named `service` if given.
pub fn otlp_request(
    service: Option<&str>,
    spans: Vec<otlp::trace::v1::Span>,
) -> otlp::collector::trace::v1::ExportTraceServiceRequest {
    use otlp::trace::v1::{ResourceSpans, ScopeSpans};
    otlp::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: service.map(|s| otlp::resource::v1::Resource {
                attributes: vec![otlp_string("service.name", s)],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

impl Stack {
    /// Sends `request` to the first agent's OTLP/gRPC receiver.
    pub async fn export(
        &self,
        request: otlp::collector::trace::v1::ExportTraceServiceRequest,
    ) -> Result<otlp::collector::trace::v1::ExportTraceServiceResponse, tonic::Status> {
        use otlp::collector::trace::v1::trace_service_client::TraceServiceClient;
        let mut client = TraceServiceClient::connect(format!("http://{}", self.otlp_grpc))
            .await
            .expect("the agent's OTLP/gRPC receiver accepts connections");
        client
            .export(request)
            .await
            .map(tonic::Response::into_inner)
    }
}
