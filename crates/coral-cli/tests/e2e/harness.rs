//! A colony and an agent, in this process, on port 0, over either store.

use coral_client::v1;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

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

pub struct Stack {
    pub colony: String,
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    _data_dir: tempfile::TempDir,
    stops: Vec<oneshot::Sender<()>>,
}

impl Stack {
    pub async fn start(backend: Backend) -> Self {
        let data_dir = tempfile::tempdir().unwrap();
        let config = match backend {
            Backend::Sqlite => coral_colony::StoreConfig::Embedded {
                data_dir: data_dir.path().to_path_buf(),
            },
            Backend::Postgres => coral_colony::StoreConfig::Postgres {
                url: fresh_postgres_url().await,
            },
        };
        let store = coral_colony::open_store(&config).await.expect("open store");
        let colony_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let colony = format!("http://{}", colony_listener.local_addr().unwrap());
        let (stop_colony, colony_stopped) = oneshot::channel::<()>();
        tokio::spawn(coral_colony::serve(colony_listener, store, async {
            let _ = colony_stopped.await;
        }));

        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (otlp_grpc, otlp_http) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
        let mut config = coral_agent::AgentConfig::new(colony.clone(), "test-node");
        config.flush_interval = Duration::from_millis(50);
        let listeners = coral_agent::Listeners {
            otlp_grpc: Some(grpc),
            otlp_http: Some(http),
        };
        let (stop_agent, agent_stopped) = oneshot::channel::<()>();
        tokio::spawn(coral_agent::serve(config, listeners, async {
            let _ = agent_stopped.await;
        }));
        Self {
            colony,
            otlp_grpc,
            otlp_http,
            _data_dir: data_dir,
            stops: vec![stop_agent, stop_colony],
        }
    }

    pub async fn query(&self) -> coral_client::QueryServiceClient<tonic::transport::Channel> {
        coral_client::query_client(coral_client::connect(&self.colony).await.unwrap())
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
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

/// Runs a blocking producer (an OTel SDK whose span processor exports synchronously)
/// on a thread that can reach this runtime's reactor.
pub async fn produce<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}
