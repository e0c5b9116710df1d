//! The node agent: receives OpenTelemetry spans and forwards them to the colony;
//! samples CPU stacks when the colony asks and ties them to the requests that ran.
//!
//! ```text
//!  app / OTel SDK / Collector
//!    │ OTLP/gRPC (:4317)           OTLP/HTTP (:4318, protobuf or JSON, optionally gzip)
//!    ▼                             ▼
//!  receiver::grpc ──┐   ┌── receiver::http
//!                   ▼   ▼
//!            otlp::convert (validate, flatten to coral_client::v1::Span)
//!                     │ ─── SpanObserver ──► profiler (process directory, request spans)
//!                     │ one all-or-nothing push per request
//!                     ▼
//!            uplink::Buffer (bounded by max_buffered_spans)
//!                     │ batches of batch_size (or what is there after flush_interval)
//!                     ▼
//!            uplink workers ── IngestSpans ──► colony   (retried with backoff)
//!            uplink session ── RegisterAgent / Heartbeat ──► colony
//!
//!  colony ── WatchCommands ──► profiler ── ReportSession ──► colony
//!                                 │ request profiles
//!                                 ▼
//!                      profiler::Spool (<data_dir>/spool, bounded) ── IngestTraceProfiles ──► colony
//! ```
//!
//! * [`otlp`] is pure conversion: OTLP `ExportTraceServiceRequest` to Coral's wire
//!   spans, rejecting invalid spans one by one with a reason.
//! * [`receiver`] serves the OTLP trace receivers (gRPC and HTTP) on listeners that the
//!   caller binds.
//! * [`uplink`] buffers spans and ships them to the colony. When the buffer is full the
//!   receivers refuse requests with a retryable error (gRPC `UNAVAILABLE`, HTTP 503)
//!   and count the spans as dropped, so back-pressure reaches the senders, whose OTLP
//!   exporters retry.
//! * [`AgentStats`] counts what happened to every span; the counters go to the colony
//!   with each heartbeat. Every received span is, at any time, exactly one of:
//!   rejected (invalid), dropped (buffer full, or still unsent at shutdown), buffered
//!   (queued or in flight) or forwarded (accepted by the colony, or refused by it as
//!   invalid, which also counts as rejected).
//! * [`profiler`] runs the CPU profiling sessions the colony pushes, and profiles every
//!   request of the profiled service that ran during one (see its documentation).
//!   Request profiles go through a spool on disk ([`profiler::Spool`]): a colony outage
//!   or an agent restart loses none.
//!
//! [`serve`] runs everything until its shutdown future resolves, then stops accepting,
//! flushes the buffer (waiting at most [`SHUTDOWN_FLUSH_TIMEOUT`]) and returns.

pub mod metrics;
pub mod otlp;
pub mod privileges;
pub mod profiler;
pub mod receiver;
pub mod stats;
pub mod uplink;

#[cfg(test)]
mod tests;

pub use profiler::{ProfilingConfig, SamplerFactory, UnwindMode};
pub use stats::{AgentStats, ProfilingCounters};

/// The counters an agent reports (the wire type of the heartbeat).
pub use coral_client::v1::AgentCounters;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How long [`serve`] waits, after shutdown was requested, for open OTLP requests to
/// finish and then again for buffered spans to reach the colony.
pub const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's settings. [`AgentConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Colony address, e.g. `http://127.0.0.1:7070` or `127.0.0.1:7070`.
    pub colony: String,
    /// TLS (for `https://` colonies; a client certificate for mutual TLS) and token.
    pub security: coral_client::Security,
    /// Node name, reported with every span.
    pub node: String,
    /// Stable id of this agent process, e.g. `<node>-<uuid>`.
    pub agent_id: String,
    /// Most spans held (queued or in flight to the colony); beyond it requests are
    /// refused with a retryable error.
    pub max_buffered_spans: usize,
    /// Most spans per `IngestSpans` call.
    pub batch_size: usize,
    /// A partial batch is sent after waiting this long.
    pub flush_interval: Duration,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Largest OTLP request accepted, in bytes (after decompression): the gRPC decode
    /// limit and the HTTP body limit.
    pub max_request_bytes: usize,
    /// CPU profiling sessions and per-request profiles.
    pub profiling: ProfilingConfig,
    /// Where request profiles wait for the colony (the spool, see
    /// [`profiler::Spool`]); `None` keeps them in memory only, lost on restart.
    pub data_dir: Option<std::path::PathBuf>,
    /// Most bytes of request profiles held for the colony.
    pub spool_max_bytes: u64,
}

impl AgentConfig {
    pub const DEFAULT_MAX_BUFFERED_SPANS: usize = 200_000;
    pub const DEFAULT_BATCH_SIZE: usize = 2_000;
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
    pub const DEFAULT_MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;
    pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 * 1024 * 1024;

    /// The defaults, with `agent_id` = `<node>-<random uuid>`.
    pub fn new(colony: impl Into<String>, node: impl Into<String>) -> Self {
        let node = node.into();
        Self {
            colony: colony.into(),
            security: coral_client::Security::default(),
            agent_id: format!("{node}-{}", uuid::Uuid::new_v4()),
            node,
            max_buffered_spans: Self::DEFAULT_MAX_BUFFERED_SPANS,
            batch_size: Self::DEFAULT_BATCH_SIZE,
            flush_interval: Self::DEFAULT_FLUSH_INTERVAL,
            heartbeat_interval: Self::DEFAULT_HEARTBEAT_INTERVAL,
            max_request_bytes: Self::DEFAULT_MAX_REQUEST_BYTES,
            profiling: ProfilingConfig::default(),
            data_dir: None,
            spool_max_bytes: Self::DEFAULT_SPOOL_MAX_BYTES,
        }
    }

    fn validate(&self) -> Result<(), AgentError> {
        let bad = |what: &str| Err(AgentError::InvalidConfig(what.to_string()));
        if self.node.is_empty() {
            return bad("node must not be empty");
        }
        if self.agent_id.is_empty() {
            return bad("agent_id must not be empty");
        }
        if self.max_buffered_spans == 0 {
            return bad("max_buffered_spans must be at least 1");
        }
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        if self.batch_size > coral_client::limits::MAX_SPANS_PER_INGEST {
            return Err(AgentError::InvalidConfig(format!(
                "batch_size is {}; the colony accepts at most {} spans per call: lower \
                 --batch-size",
                self.batch_size,
                coral_client::limits::MAX_SPANS_PER_INGEST
            )));
        }
        if self.max_request_bytes == 0 {
            return bad("max_request_bytes must be at least 1");
        }
        if self.spool_max_bytes == 0 {
            return bad("spool_max_bytes must be at least 1");
        }
        if self.heartbeat_interval.is_zero() {
            return bad("heartbeat_interval must be longer than zero");
        }
        if self.profiling.max_frequency_hz == 0 {
            return bad("profiling.max_frequency_hz must be at least 1");
        }
        if self.profiling.ring_samples == 0 {
            return bad("profiling.ring_samples must be at least 1");
        }
        Ok(())
    }
}

impl Default for AgentConfig {
    /// The local colony ([`coral_client::DEFAULT_COLONY_ADDR`]) and node `localhost`.
    fn default() -> Self {
        Self::new(coral_client::DEFAULT_COLONY_ADDR, "localhost")
    }
}

/// Listeners the caller bound (port 0 is fine). `None` disables that receiver.
#[derive(Debug, Default)]
pub struct Listeners {
    /// OTLP/gRPC, usually port 4317.
    pub otlp_grpc: Option<TcpListener>,
    /// OTLP/HTTP, usually port 4318.
    pub otlp_http: Option<TcpListener>,
    /// Prometheus metrics (`GET /metrics`, see [`metrics`]); served until [`serve`]
    /// returns.
    pub metrics: Option<TcpListener>,
}

/// A failure to start or run the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    ColonyAddress(#[from] coral_client::ConnectError),
    #[error("invalid agent configuration: {0}")]
    InvalidConfig(String),
    #[error("no OTLP receiver to run: give an OTLP/gRPC or an OTLP/HTTP listener")]
    NoListeners,
    #[error("the {receiver} receiver failed: {source}")]
    Listener {
        receiver: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the OTLP/gRPC receiver failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("starting the profiler thread failed: {0}")]
    Profiler(#[source] std::io::Error),
    #[error(
        "cannot use {} as the agent's data directory ({source}): make it writable, or pick another with --data-dir",
        .dir.display()
    )]
    DataDir {
        dir: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`serve_with`] runs with besides the configuration.
#[derive(Clone)]
pub struct ServeOptions {
    /// Where the agent counts (watch it with [`AgentStats::snapshot`] and
    /// [`AgentStats::profiling`]).
    pub stats: Arc<AgentStats>,
    /// Creates the CPU sampler on the first profiling session: the eBPF sampler
    /// ([`profiler::ebpf_sampler_factory`]) by default, an in-memory one in tests.
    pub sampler_factory: SamplerFactory,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            stats: Arc::new(AgentStats::default()),
            sampler_factory: profiler::ebpf_sampler_factory(),
        }
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Runs the agent until `shutdown` resolves; then stops accepting, flushes what is
/// buffered (waiting at most [`SHUTDOWN_FLUSH_TIMEOUT`]) and returns.
pub async fn serve(
    config: AgentConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    serve_with_stats(config, listeners, Arc::new(AgentStats::default()), shutdown).await
}

/// [`serve`], counting into `stats` so that the caller can watch the counters
/// ([`AgentStats::snapshot`]).
pub async fn serve_with_stats(
    config: AgentConfig,
    listeners: Listeners,
    stats: Arc<AgentStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let options = ServeOptions {
        stats,
        ..ServeOptions::default()
    };
    serve_with(config, listeners, options, shutdown).await
}

/// [`serve`] with [`ServeOptions`]: the counters to update and the sampler to profile
/// with.
pub async fn serve_with(
    config: AgentConfig,
    listeners: Listeners,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let ServeOptions {
        stats,
        sampler_factory,
    } = options;
    config.validate()?;
    if listeners.otlp_grpc.is_none() && listeners.otlp_http.is_none() {
        return Err(AgentError::NoListeners);
    }
    let channel = coral_client::connect_lazy_with(&config.colony, &config.security)?;
    let spool_dir = config.data_dir.as_ref().map(|dir| dir.join("spool"));
    let spool = profiler::Spool::open(spool_dir.as_deref(), config.spool_max_bytes, stats.clone())
        .map_err(|source| AgentError::DataDir {
            dir: spool_dir.clone().unwrap_or_default(),
            source,
        })?;
    let profiler = profiler::Running::start(
        &config,
        channel.clone(),
        stats.clone(),
        sampler_factory,
        Arc::new(spool),
    )
    .map_err(AgentError::Profiler)?;
    let uplink = uplink::Uplink::start(&config, channel, stats.clone());
    let intake = receiver::Intake::new(config.node.clone(), uplink.buffer(), stats.clone())
        .with_observer(profiler.observer());

    // One shutdown signal, watched by both receivers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let metrics = listeners.metrics.map(|listener| {
        let stats = stats.clone();
        let render: coral_metrics::Render = Arc::new(move || metrics::render(&stats));
        tokio::spawn(async move {
            if let Err(e) = coral_metrics::serve(listener, render, std::future::pending()).await {
                tracing::error!("the metrics endpoint failed: {e}");
            }
        })
    });

    let mut receivers: Vec<JoinHandle<Result<(), AgentError>>> = Vec::new();
    if let Some(listener) = listeners.otlp_grpc {
        let server = receiver::grpc::serve(
            listener,
            intake.clone(),
            config.max_request_bytes,
            stopped(),
        );
        receivers.push(tokio::spawn(server));
    }
    if let Some(listener) = listeners.otlp_http {
        let server = receiver::http::serve(
            listener,
            intake.clone(),
            config.max_request_bytes,
            stopped(),
        );
        receivers.push(tokio::spawn(server));
    }

    let aborts: Vec<_> = receivers.iter().map(JoinHandle::abort_handle).collect();

    // Run until shutdown is requested or a receiver fails.
    let mut running = futures::future::select_all(receivers);
    let mut failure = None;
    tokio::pin!(shutdown);
    let remaining = tokio::select! {
        () = &mut shutdown => {
            tracing::info!("agent shutting down: no longer accepting spans, flushing the buffer");
            running.into_inner()
        }
        (result, _, others) = &mut running => {
            failure = Some(flatten(result));
            others
        }
    };
    let _ = stop_tx.send(true);

    // Let open OTLP requests finish (bounded), then flush.
    let drain = futures::future::join_all(remaining);
    match tokio::time::timeout(SHUTDOWN_FLUSH_TIMEOUT, drain).await {
        Ok(results) => {
            for result in results {
                if let Err(err) = flatten(result) {
                    failure.get_or_insert(Err(err));
                }
            }
        }
        Err(_) => {
            tracing::warn!(
                "OTLP requests still open {:?} after shutdown; closing them",
                SHUTDOWN_FLUSH_TIMEOUT
            );
            aborts.iter().for_each(|abort| abort.abort());
        }
    }
    tokio::join!(
        profiler.shutdown(SHUTDOWN_FLUSH_TIMEOUT),
        uplink.shutdown(SHUTDOWN_FLUSH_TIMEOUT)
    );
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    failure.unwrap_or(Ok(()))
}

fn flatten(
    result: Result<Result<(), AgentError>, tokio::task::JoinError>,
) -> Result<(), AgentError> {
    match result {
        Ok(inner) => inner,
        Err(join) => Err(AgentError::Listener {
            receiver: "OTLP",
            source: std::io::Error::other(join.to_string()),
        }),
    }
}
