//! One module per top-level command.

pub mod agent;
pub mod colony;
pub mod demo;
pub mod mcp;
pub mod profile;
pub mod query;
pub mod trigger;

use clap::Args;

/// Where the colony is, for commands that talk to it.
#[derive(Args, Debug, Clone)]
pub struct ColonyAddr {
    /// Colony address (host:port or http://host:port).
    #[arg(long = "colony", global = true, env = coral_client::COLONY_ADDR_ENV, default_value = coral_client::DEFAULT_COLONY_ADDR)]
    pub addr: String,
}

/// Logs go to stderr; `RUST_LOG` overrides the level (default: info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
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
