//! One module per top-level command.

pub mod agent;
pub mod colony;
pub mod demo;
pub mod mcp;
pub mod profile;
pub mod query;
pub mod trigger;

use clap::Args;

/// The colony this command connected to, so that a call's transport error can be
/// explained ([`coral_client::explain_status`]).
pub(crate) static CONNECTED: std::sync::OnceLock<(String, coral_client::Security)> =
    std::sync::OnceLock::new();

/// A command stopped by a signal after it said what it left behind: `coral` exits with
/// 128 + the signal, as shells report an interrupted command, and prints no error.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by signal {0}")]
pub struct Interrupted(pub i32);

/// Where the colony is, for commands that talk to it.
#[derive(Args, Debug, Clone)]
pub struct ColonyAddr {
    /// Colony address (host:port, http://host:port, or https://host:port for TLS).
    #[arg(long = "colony", global = true, env = coral_client::COLONY_ADDR_ENV, default_value = coral_client::DEFAULT_COLONY_ADDR)]
    pub addr: String,
    /// CA certificate (PEM) that signs the colony's TLS certificate (https:// addresses).
    /// Unset: the public webpki roots.
    #[arg(long = "tls-ca", global = true, env = coral_client::TLS_CA_ENV)]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Bearer token for a colony started with --tokens-file.
    #[arg(long = "token", global = true, env = coral_client::TOKEN_ENV, hide_env_values = true)]
    pub token: Option<String>,
}

impl ColonyAddr {
    /// TLS trust and token for the colony connection.
    pub fn security(&self) -> coral_client::Security {
        coral_client::Security {
            tls_ca: self.tls_ca.clone(),
            token: self.token.clone(),
            ..Default::default()
        }
    }

    /// Connects now, with the TLS settings and token.
    pub async fn connect(&self) -> Result<coral_client::Channel, coral_client::ConnectError> {
        let security = self.security();
        let channel = coral_client::connect_with(&self.addr, &security).await?;
        let _ = CONNECTED.set((self.addr.clone(), security));
        Ok(channel)
    }
}

/// How `coral agent start` and `coral colony start` log, and where they serve metrics.
#[derive(Args, Debug, Clone)]
pub struct Observability {
    /// Serve Prometheus metrics at http://ADDR/metrics ("off" to disable; e.g.
    /// 127.0.0.1:9464).
    #[arg(long, env = "CORAL_METRICS", default_value = "off")]
    pub metrics: String,
    /// Log format: text for people, json for log collectors (one object per line).
    #[arg(long, env = "CORAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Observability {
    /// Binds the metrics listener, unless the address is "off".
    pub async fn bind_metrics(&self) -> anyhow::Result<Option<tokio::net::TcpListener>> {
        use anyhow::Context;
        if self.metrics == "off" {
            return Ok(None);
        }
        let listener = tokio::net::TcpListener::bind(&self.metrics)
            .await
            .with_context(|| {
                format!(
                    "cannot serve metrics on {} (in use? pick another with --metrics, or \"off\")",
                    self.metrics
                )
            })?;
        tracing::info!(
            "metrics listening on http://{}/metrics",
            listener.local_addr()?
        );
        Ok(Some(listener))
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr; `RUST_LOG` overrides the level (default: info).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_ansi(false)
            .try_init(),
    };
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
