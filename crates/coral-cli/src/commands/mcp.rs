//! `coral mcp`: the MCP server for AI assistants, on stdio or streamable HTTP.

use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;

#[derive(Args)]
pub struct McpArgs {
    /// Colony address (host:port, http://host:port, or https://host:port for TLS).
    #[arg(long = "colony", value_name = "ADDR", env = coral_client::COLONY_ADDR_ENV, default_value = coral_client::DEFAULT_COLONY_ADDR)]
    colony: String,
    /// CA certificate (PEM) that signs the colony's TLS certificate (https:// addresses).
    #[arg(long = "tls-ca", env = coral_client::TLS_CA_ENV)]
    tls_ca: Option<std::path::PathBuf>,
    /// Bearer token for the colony (when it was started with --tokens-file).
    #[arg(long = "colony-token", env = coral_client::TOKEN_ENV, hide_env_values = true)]
    colony_token: Option<String>,
    /// Serve streamable HTTP at http://ADDR/mcp instead of stdio (e.g. 127.0.0.1:7080).
    /// Bind a non-loopback address only with --token.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// With --http: every request must carry `Authorization: Bearer TOKEN` (stdio
    /// ignores it).
    #[arg(long, env = "CORAL_MCP_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

pub async fn run(args: McpArgs) -> anyhow::Result<()> {
    // stdout is the MCP channel on stdio: logs go to stderr only.
    super::init_logging(super::LogFormat::Text);
    let security = coral_client::Security {
        tls_ca: args.tls_ca.clone(),
        token: args.colony_token.clone(),
        ..Default::default()
    };
    let server = coral_mcp::CoralMcp::with_security(&args.colony, &security)?;
    let Some(addr) = args.http else {
        return coral_mcp::serve_stdio_with(server)
            .await
            .map_err(Into::into);
    };
    if !addr.ip().is_loopback() && args.token.is_none() {
        anyhow::bail!(
            "refusing to serve MCP on {addr} without --token: anyone who can reach it could \
             start profiling. Pass --token (or CORAL_MCP_TOKEN), or bind 127.0.0.1."
        );
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(
        "MCP on http://{}/mcp, colony {}",
        listener.local_addr()?,
        args.colony
    );
    coral_mcp::serve_http(listener, server, args.token, super::shutdown_signal())
        .await
        .map_err(Into::into)
}
