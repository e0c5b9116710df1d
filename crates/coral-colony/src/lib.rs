//! The colony: Coral's central server. It serves the gRPC API of `proto/` over a
//! [`Store`] — agents push spans in, the CLI and MCP server ask questions.
//!
//! This is the only crate that maps wire types (`coral_client::v1`) to domain records
//! (`coral_store`). It keeps no state of its own: every fact lives in the store, so
//! several colony replicas can share one PostgreSQL.

mod auth;
mod compare;
mod convert;
mod ingest;
pub mod metrics;
mod profile;
mod query;
mod trigger;

pub use auth::{Role, Tokens, TokensError};
pub use metrics::ColonyMetrics;
pub use profile::{MAX_FREQUENCY_HZ, WEAK_EVIDENCE_SAMPLES};

use coral_client::v1::agent_service_server::AgentServiceServer;
use coral_client::v1::profile_service_server::ProfileServiceServer;
use coral_client::v1::query_service_server::QueryServiceServer;
use coral_store::{Store, StoreError};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Where the colony keeps its data.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// The embedded SQLite store in this directory (created on first start).
    Embedded { data_dir: PathBuf },
    /// A PostgreSQL server (`postgres://…`).
    Postgres { url: String },
}

/// A failure to start or run the colony.
#[derive(Debug, thiserror::Error)]
pub enum ColonyError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("the gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("bad TLS configuration: {0}")]
    Tls(String),
}

/// Opens (and migrates) the configured store.
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Embedded { data_dir } => {
            Arc::new(coral_store_sqlite::SqliteStore::open(data_dir).await?)
        }
        StoreConfig::Postgres { url } => {
            Arc::new(coral_store_postgres::PostgresStore::connect(url).await?)
        }
    })
}

/// How the colony runs, beyond its store and address.
#[derive(Debug, Clone)]
pub struct ColonyOptions {
    /// Request profiles (and ended triggers and sessions) older than this are deleted.
    pub profile_retention: Duration,
    /// Serve TLS with this identity (and, with a client CA, mutual TLS for agents).
    pub tls: Option<TlsOptions>,
    /// Set: every RPC needs a bearer token of the right role.
    pub tokens: Option<Arc<Tokens>>,
}

/// The colony's TLS identity, as PEM.
#[derive(Clone)]
pub struct TlsOptions {
    /// Certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// Private key (PEM).
    pub key_pem: Vec<u8>,
    /// Set: AgentService calls need a client certificate signed by this CA (PEM);
    /// other clients may connect without one (and authenticate with tokens).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("client_ca", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl ColonyOptions {
    pub const DEFAULT_PROFILE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
}

impl Default for ColonyOptions {
    fn default() -> Self {
        Self {
            profile_retention: Self::DEFAULT_PROFILE_RETENTION,
            tls: None,
            tokens: None,
        }
    }
}

/// Serves the colony API on `listener` until `shutdown` resolves, with default options.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ColonyError> {
    serve_with(listener, store, ColonyOptions::default(), shutdown).await
}

/// Serves the colony API on `listener` until `shutdown` resolves; also runs the sweeper
/// (trigger expiry, retention) meanwhile.
pub async fn serve_with(
    listener: TcpListener,
    store: Arc<dyn Store>,
    options: ColonyOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ColonyError> {
    serve_with_metrics(listener, None, store, options, shutdown).await
}

/// [`serve_with`], and Prometheus metrics (`GET /metrics`, see [`metrics`]) on
/// `metrics` while the API is served.
pub async fn serve_with_metrics(
    listener: TcpListener,
    metrics: Option<TcpListener>,
    store: Arc<dyn Store>,
    options: ColonyOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ColonyError> {
    let guard = auth::Guard {
        tokens: options.tokens.clone(),
        require_agent_certificate: options
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca_pem.is_some()),
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &options.tls {
        let mut config = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem),
        );
        if let Some(ca) = &tls.client_ca_pem {
            // Optional at the TLS layer: query and profile clients may connect without
            // a certificate; the guard requires one for AgentService.
            config = config
                .client_ca_root(tonic::transport::Certificate::from_pem(ca))
                .client_auth_optional(true);
        }
        builder = builder
            .tls_config(config)
            .map_err(|e| ColonyError::Tls(coral_client::chain(&e)))?;
    }
    let counters = Arc::new(ColonyMetrics::default());
    let endpoint = metrics.map(|listener| {
        let counters = counters.clone();
        let render: coral_metrics::Render = Arc::new(move || counters.render());
        tokio::spawn(async move {
            if let Err(e) = coral_metrics::serve(listener, render, std::future::pending()).await {
                tracing::error!("the metrics endpoint failed: {e}");
            }
        })
    });
    let max = coral_client::MAX_MESSAGE_BYTES;
    // Agents hold command streams open for as long as they run; the server's graceful
    // stop waits for open calls, so those streams must end when the stop begins.
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let sweeper = tokio::spawn(trigger::sweep(
        store.clone(),
        options.profile_retention,
        stopping.clone(),
        counters.clone(),
    ));
    let ingest = AgentServiceServer::new(ingest::IngestService::new(store.clone(), stopping))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let query = QueryServiceServer::new(query::QueryService::new(store.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let profile = ProfileServiceServer::new(profile::ProfileService::new(store))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let served = builder
        .layer(metrics::RpcMetricsLayer(counters))
        .layer(guard)
        .add_service(ingest)
        .add_service(query)
        .add_service(profile)
        .serve_with_incoming_shutdown(coral_client::incoming(listener), shutdown)
        .await;
    sweeper.abort();
    if let Some(endpoint) = endpoint {
        endpoint.abort();
    }
    served?;
    Ok(())
}

/// Maps a store failure to the gRPC status a client should see.
pub(crate) fn store_status(err: StoreError) -> tonic::Status {
    match &err {
        StoreError::NotFound(_) => tonic::Status::not_found(err.to_string()),
        StoreError::InvalidArgument(_) => tonic::Status::invalid_argument(err.to_string()),
        StoreError::Unavailable(_) => {
            metrics::with_current(|m| m.add_store_error());
            tracing::warn!(error = %err, "database unreachable");
            // UNAVAILABLE is gRPC's "retry later" code; the metadata tells clients that
            // the colony itself is up (see coral_client::is_database_unavailable).
            let mut status = tonic::Status::unavailable(err.to_string());
            status.metadata_mut().insert(
                coral_client::UNAVAILABLE_CAUSE_KEY,
                tonic::metadata::MetadataValue::from_static(coral_client::CAUSE_DATABASE),
            );
            status
        }
        _ => {
            metrics::with_current(|m| m.add_store_error());
            tracing::error!(error = %err, "store failure");
            tonic::Status::internal(err.to_string())
        }
    }
}

pub(crate) fn now_unix_nano() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}
