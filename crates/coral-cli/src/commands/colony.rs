//! `coral colony start`.

use anyhow::Context;
use clap::{Args, Subcommand};
use coral_colony::StoreConfig;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum ColonyCommand {
    /// Start the colony server (foreground; Ctrl-C or SIGTERM stops it).
    ///
    /// Without --database-url the colony keeps its data in an embedded SQLite store in
    /// the data directory, created (and migrated) on first start. With a PostgreSQL URL
    /// it uses that server and runs its migrations; several colonies may share one
    /// PostgreSQL.
    Start(StartArgs),
}

#[derive(Args)]
pub struct StartArgs {
    /// Address to listen on for agents and clients.
    #[arg(long, env = "CORAL_LISTEN", default_value = "127.0.0.1:7070")]
    listen: String,
    /// PostgreSQL URL (postgres://user:pass@host:port/db). Unset: the embedded store.
    #[arg(long, env = "CORAL_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Directory of the embedded store [default: $XDG_DATA_HOME/coral or ~/.local/share/coral].
    #[arg(long, env = "CORAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Request profiles (and ended triggers and sessions) are deleted after this long.
    #[arg(long, env = "CORAL_PROFILE_RETENTION", default_value = "7d", value_parser = parse_retention)]
    profile_retention: Duration,
    /// Serve TLS with this certificate (PEM; with --tls-key). Clients then use https://.
    #[arg(long, env = "CORAL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "CORAL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS for agents: agent calls need a client certificate signed by this CA
    /// (PEM). Query and profile clients may still connect without one.
    #[arg(long, env = "CORAL_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Require a bearer token on every call: a file of `ROLE TOKEN` lines (roles: read,
    /// operate, agent; `#` comments).
    #[arg(long, env = "CORAL_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    #[command(flatten)]
    observability: super::Observability,
}

fn read_file(path: &std::path::Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
}

fn parse_retention(s: &str) -> Result<Duration, String> {
    let d = coral_analysis::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(60) {
        return Err("must be at least 1m (profiles would be gone before anyone looks)".into());
    }
    Ok(d)
}

fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(xdg).join("coral");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/coral"),
        None => PathBuf::from("coral-data"),
    }
}

pub async fn run(cmd: ColonyCommand) -> anyhow::Result<()> {
    let ColonyCommand::Start(args) = cmd;
    super::init_logging(args.observability.log_format);
    let config = match args.database_url {
        Some(url) => {
            anyhow::ensure!(
                url.starts_with("postgres://") || url.starts_with("postgresql://"),
                "--database-url must be a PostgreSQL URL (postgres://user:pass@host:port/db); \
                 leave it unset to use the embedded store"
            );
            StoreConfig::Postgres { url }
        }
        None => StoreConfig::Embedded {
            data_dir: args.data_dir.unwrap_or_else(default_data_dir),
        },
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(coral_colony::TlsOptions {
            cert_pem: read_file(cert, "--tls-cert")?,
            key_pem: read_file(key, "--tls-key")?,
            client_ca_pem: args
                .client_ca
                .as_deref()
                .map(|p| read_file(p, "--client-ca"))
                .transpose()?,
        }),
        _ => None,
    };
    let tokens = args
        .tokens_file
        .as_deref()
        .map(coral_colony::Tokens::load)
        .transpose()?
        .map(std::sync::Arc::new);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another colony running?)",
                args.listen
            )
        })?;
    let metrics = args.observability.bind_metrics().await?;
    let store = coral_colony::open_store(&config).await?;
    let where_ = match &config {
        StoreConfig::Embedded { data_dir } => format!("embedded store in {}", data_dir.display()),
        StoreConfig::Postgres { .. } => "PostgreSQL".to_string(),
    };
    tracing::info!(
        "colony listening on {} ({where_})",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or(args.listen.clone())
    );
    let local = listener.local_addr().ok();
    if tls.is_none() && local.is_some_and(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            "listening on {} without TLS: spans, profiles{} travel in plaintext. Enable TLS \
             with --tls-cert FILE --tls-key FILE (clients then use https:// and --tls-ca)",
            args.listen,
            if tokens.is_some() { " and tokens" } else { "" }
        );
    }
    let options = coral_colony::ColonyOptions {
        profile_retention: args.profile_retention,
        tls,
        tokens,
    };
    coral_colony::serve_with_metrics(listener, metrics, store, options, super::shutdown_signal())
        .await?;
    Ok(())
}
