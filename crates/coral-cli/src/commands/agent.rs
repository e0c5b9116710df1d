//! `coral agent start`.

use super::ColonyAddr;
use anyhow::Context;
use clap::{Args, Subcommand};
use coral_agent::privileges::{Dropped, PrivilegeError};

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Start the node agent (foreground; Ctrl-C or SIGTERM stops it).
    ///
    /// It receives OpenTelemetry traces (OTLP over gRPC, and over HTTP with protobuf or
    /// JSON bodies), registers with the colony, sends heartbeats, and forwards spans in
    /// batches. When the colony is slow or away it buffers up to --max-buffered-spans
    /// and retries; beyond that it refuses spans with a retryable error and counts them.
    Start(StartArgs),
}

#[derive(Args)]
pub struct StartArgs {
    #[command(flatten)]
    colony: ColonyAddr,
    /// OTLP/gRPC listen address ("off" to disable).
    #[arg(long, env = "CORAL_OTLP_GRPC", default_value = "0.0.0.0:4317")]
    otlp_grpc: String,
    /// OTLP/HTTP listen address ("off" to disable).
    #[arg(long, env = "CORAL_OTLP_HTTP", default_value = "0.0.0.0:4318")]
    otlp_http: String,
    /// Node name reported with every span [default: NODE_NAME, else the hostname].
    #[arg(long, env = "CORAL_NODE")]
    node: Option<String>,
    /// Most spans held while the colony is unreachable.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    max_buffered_spans: u64,
    /// Highest CPU sampling frequency a profile may ask for, in Hz.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    max_frequency: u32,
    /// How user stacks are walked: "auto" copies the top of each sampled stack and
    /// unwinds it with the modules' unwind tables (.eh_frame) where they have them,
    /// frame pointers elsewhere (JIT code); "fp" walks frame pointers only (whole
    /// stacks only in code built with them, at a smaller cost per sample).
    #[arg(long, env = "CORAL_UNWIND", default_value = "auto", value_parser = ["auto", "fp"])]
    unwind: String,
    /// Most recent CPU samples kept for joining to requests (about 32 bytes each plus
    /// one copy of each distinct stack).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1_000..=100_000_000))]
    ring_samples: u64,
    /// Only these services may be profiled (comma-separated; default: any service that
    /// sends spans through this agent).
    #[arg(long, env = "CORAL_PROFILE_ALLOW", value_delimiter = ',')]
    profile_allow: Option<Vec<String>>,
    /// Only processes whose cgroup path matches one of these globs may be sampled
    /// (comma-separated; `*` matches anything), e.g. "*kubepods*" for pods only
    /// [default: any process but the host's init].
    #[arg(long, env = "CORAL_PROFILE_CGROUP", value_delimiter = ',')]
    profile_cgroup: Option<Vec<String>>,
    /// Where request profiles wait for the colony, so that an outage or a restart
    /// loses none [default: /var/lib/coral/agent as root, else
    /// $XDG_STATE_HOME/coral/agent or ~/.local/state/coral/agent].
    #[arg(long, env = "CORAL_AGENT_DATA_DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// Most bytes of request profiles kept for the colony; newer ones are dropped (and
    /// counted) beyond it.
    #[arg(long, env = "CORAL_SPOOL_MAX_BYTES", default_value_t = 256 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024 * 1024..=1024 * 1024 * 1024 * 1024))]
    spool_max_bytes: u64,
    /// Client certificate (PEM) for a colony that requires mutual TLS (--client-ca).
    #[arg(long, env = "CORAL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "CORAL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    #[command(flatten)]
    observability: super::Observability,
}

fn default_node() -> String {
    std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn default_data_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/coral/agent");
    }
    if let Some(state) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(state).join("coral/agent");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/state/coral/agent"),
        None => PathBuf::from("coral-agent-data"),
    }
}

async fn bind(addr: &str, what: &str) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    if addr == "off" {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen for {what} on {addr} (in use? pick another with --{what})")
    })?;
    tracing::info!("{what} listening on {}", listener.local_addr()?);
    Ok(Some(listener))
}

/// Runs the agent; `privileges` is what dropping capabilities did, before the runtime
/// started (see [`coral_agent::privileges`]).
pub async fn run(
    cmd: AgentCommand,
    privileges: Option<Result<Dropped, PrivilegeError>>,
) -> anyhow::Result<()> {
    let AgentCommand::Start(args) = cmd;
    super::init_logging(args.observability.log_format);
    match privileges {
        Some(Ok(Dropped::Kept { kept, dropped })) => {
            let kept: Vec<String> = kept.iter().map(ToString::to_string).collect();
            tracing::info!(
                "dropped {dropped} capabilities the agent does not need; kept {}",
                kept.join(", ")
            );
        }
        Some(Ok(Dropped::NothingToDrop)) | None => {}
        Some(Err(e)) => tracing::warn!("{e}; the agent runs with the capabilities it was given"),
    }
    let node = args.node.unwrap_or_else(default_node);
    let listeners = coral_agent::Listeners {
        otlp_grpc: bind(&args.otlp_grpc, "otlp-grpc").await?,
        otlp_http: bind(&args.otlp_http, "otlp-http").await?,
        metrics: args.observability.bind_metrics().await?,
    };
    anyhow::ensure!(
        listeners.otlp_grpc.is_some() || listeners.otlp_http.is_some(),
        "both OTLP receivers are off: enable --otlp-grpc or --otlp-http"
    );
    let mut security = args.colony.security();
    security.tls_cert = args.tls_cert;
    security.tls_key = args.tls_key;
    let mut config = coral_agent::AgentConfig::new(args.colony.addr, node);
    config.security = security;
    config.max_buffered_spans = args.max_buffered_spans as usize;
    config.data_dir = Some(args.data_dir.unwrap_or_else(default_data_dir));
    config.spool_max_bytes = args.spool_max_bytes;
    config.profiling = coral_agent::ProfilingConfig {
        max_frequency_hz: args.max_frequency,
        ring_samples: args.ring_samples as usize,
        allow_services: args.profile_allow,
        allow_cgroups: args.profile_cgroup,
        unwind: match args.unwind.as_str() {
            "fp" => coral_agent::UnwindMode::FramePointer,
            _ => coral_agent::UnwindMode::Auto,
        },
        ..coral_agent::ProfilingConfig::default()
    };
    coral_agent::serve(config, listeners, super::shutdown_signal()).await?;
    Ok(())
}
