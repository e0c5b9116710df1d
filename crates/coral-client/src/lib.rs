//! Coral's API: the gRPC code generated from `proto/coral/v1`, and [`connect`].
//!
//! Every program that talks to the colony (agent, CLI, MCP server) goes through this
//! crate; nothing else defines wire types.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("coral.v1");
}

pub mod profile;

pub use v1::agent_service_client::AgentServiceClient;
pub use v1::profile_service_client::ProfileServiceClient;
pub use v1::query_service_client::QueryServiceClient;

use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// The colony address used when neither a flag nor `CORAL_COLONY` names one.
pub const DEFAULT_COLONY_ADDR: &str = "http://127.0.0.1:7070";

/// The environment variable that names the colony address.
pub const COLONY_ADDR_ENV: &str = "CORAL_COLONY";

/// A failure to reach the colony.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid colony address {addr:?}: {source} (expected e.g. {DEFAULT_COLONY_ADDR})")]
    InvalidAddress {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "cannot reach the colony at {addr}: {source}. Is it running (`coral colony start`)? \
         Set the address with --colony or {COLONY_ADDR_ENV}."
    )]
    Unreachable {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// Accepts `host:port` as well as a full `http://host:port` URL.
pub fn normalize_addr(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

fn endpoint(addr: &str) -> Result<Endpoint, ConnectError> {
    let url = normalize_addr(addr);
    Endpoint::from_shared(url.clone())
        .map(|e| {
            e.connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
        })
        .map_err(|source| ConnectError::InvalidAddress { addr: url, source })
}

/// Connects now, failing with a message that says how to fix the address.
pub async fn connect(addr: &str) -> Result<Channel, ConnectError> {
    let endpoint = endpoint(addr)?;
    endpoint
        .connect()
        .await
        .map_err(|source| ConnectError::Unreachable {
            addr: normalize_addr(addr),
            source,
        })
}

/// A channel that connects on first use and reconnects by itself: for long-running
/// callers (the agent) that must survive a colony restart.
pub fn connect_lazy(addr: &str) -> Result<Channel, ConnectError> {
    Ok(endpoint(addr)?.connect_lazy())
}

/// Spans and batches may be large; the default 4 MiB decode limit is too small for a
/// full agent batch.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A query client with Coral's message limits.
pub fn query_client(channel: Channel) -> QueryServiceClient<Channel> {
    QueryServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// An agent-side client with Coral's message limits.
pub fn agent_client(channel: Channel) -> AgentServiceClient<Channel> {
    AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A profile client with Coral's message limits.
pub fn profile_client(channel: Channel) -> ProfileServiceClient<Channel> {
    ProfileServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Accepted connections for a tonic server on `listener`, with `TCP_NODELAY`: without
/// it, a response of more than one segment waits for the client's delayed ACK (40 ms
/// on Linux).
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
