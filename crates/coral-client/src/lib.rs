//! Coral's API: the gRPC code generated from `proto/coral/v1`, and [`connect`].
//!
//! Every program that talks to the colony (agent, CLI, MCP server) goes through this
//! crate; nothing else defines wire types.

pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("coral.v1");
}

pub mod limits;
pub mod profile;
pub mod trigger;

pub use v1::agent_service_client::AgentServiceClient;
pub use v1::profile_service_client::ProfileServiceClient;
pub use v1::query_service_client::QueryServiceClient;

use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The colony address used when neither a flag nor `CORAL_COLONY` names one.
pub const DEFAULT_COLONY_ADDR: &str = "http://127.0.0.1:7070";

/// The environment variable that names the colony address.
pub const COLONY_ADDR_ENV: &str = "CORAL_COLONY";
/// The environment variable with the bearer token sent to the colony.
pub const TOKEN_ENV: &str = "CORAL_TOKEN";
/// The environment variable naming the CA certificate (PEM) that signs the colony's.
pub const TLS_CA_ENV: &str = "CORAL_TLS_CA";

/// A connection to the colony: a tonic channel that adds the bearer token (if any) to
/// every call.
pub type Channel = InterceptedService<tonic::transport::Channel, BearerToken>;

/// Adds `authorization: Bearer TOKEN` to every request when a token is set.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.write_str(if self.0.is_some() {
            "BearerToken(set)"
        } else {
            "BearerToken(none)"
        })
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// How to reach the colony securely: TLS trust and identity, and the bearer token.
/// The default is plaintext `http://` and no token. TLS is used for `https://`
/// addresses.
#[derive(Clone, Default)]
pub struct Security {
    /// CA certificate (PEM) that signs the colony's certificate; unset: the public
    /// webpki roots.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (agents), with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Bearer token sent with every call.
    pub token: Option<String>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A failure to reach the colony.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid colony address {addr:?}: {source} (expected e.g. {DEFAULT_COLONY_ADDR})")]
    InvalidAddress {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// `cause` is the transport error's root cause (`Connection refused (os error
    /// 111)`), said once: the layers above it only repeat "transport error".
    #[error(
        "cannot reach the colony at {addr}: {cause}. Is it running (`coral colony start`)? \
         Set the address with --colony or {COLONY_ADDR_ENV}."
    )]
    Unreachable { addr: String, cause: String },
    #[error("{0}")]
    Config(String),
    #[error(
        "the colony at {addr} speaks TLS: use https://{hostport} (and --tls-ca if its \
         certificate is signed by a private CA)"
    )]
    ColonySpeaksTls { addr: String, hostport: String },
    #[error(
        "the colony at {addr} does not speak TLS (plaintext port): use http://{hostport}, \
         or start the colony with --tls-cert and --tls-key"
    )]
    ColonyIsPlaintext { addr: String, hostport: String },
    #[error(
        "the colony's certificate is not signed by the CA in {ca} ({addr}): pass the CA \
         that signed the colony's certificate with --tls-ca or {TLS_CA_ENV}"
    )]
    WrongCa { addr: String, ca: String },
    #[error(
        "the colony's certificate at {addr} is expired or not yet valid: renew it \
         (--tls-cert on the colony)"
    )]
    ExpiredCertificate { addr: String },
    #[error("the colony's certificate at {addr} was refused: {detail}")]
    BadCertificate { addr: String, detail: String },
    #[error(
        "the colony at {addr} refused this client's TLS certificate: {detail}. Agents need \
         a certificate signed by the colony's --client-ca (--tls-cert, --tls-key)"
    )]
    ClientCertificateRefused { addr: String, detail: String },
}

/// Accepts `host:port` as well as a full `http://host:port` URL.
pub fn normalize_addr(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

fn hostport(url: &str) -> String {
    url.split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/').to_string())
        .unwrap_or_else(|| url.to_string())
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, ConnectError> {
    let pem = std::fs::read(path)
        .map_err(|e| ConnectError::Config(format!("cannot read {what} {}: {e}", path.display())))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN") {
        return Err(ConnectError::Config(format!(
            "{what} {} is not PEM (expected a -----BEGIN …----- block)",
            path.display()
        )));
    }
    Ok(pem)
}

fn endpoint(addr: &str, security: &Security) -> Result<Endpoint, ConnectError> {
    let url = normalize_addr(addr);
    let endpoint = Endpoint::from_shared(url.clone())
        .map(|e| {
            e.connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
        })
        .map_err(|source| ConnectError::InvalidAddress {
            addr: url.clone(),
            source,
        })?;
    let tls_asked =
        security.tls_ca.is_some() || security.tls_cert.is_some() || security.tls_key.is_some();
    if !url.starts_with("https://") {
        if tls_asked {
            return Err(ConnectError::Config(format!(
                "TLS options are set but the colony address {url} is plaintext: use https://{}",
                hostport(&url)
            )));
        }
        return Ok(endpoint);
    }
    let mut tls = ClientTlsConfig::new();
    tls = match &security.tls_ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read_pem(ca, "--tls-ca")?)),
        None => tls.with_webpki_roots(),
    };
    match (&security.tls_cert, &security.tls_key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read_pem(cert, "--tls-cert")?,
                read_pem(key, "--tls-key")?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(ConnectError::Config(
                "--tls-cert and --tls-key go together (the client certificate and its key)".into(),
            ));
        }
    }
    endpoint
        .tls_config(tls)
        .map_err(|e| ConnectError::Config(format!("bad TLS configuration: {}", chain(&e))))
}

fn bearer(security: &Security) -> Result<BearerToken, ConnectError> {
    match &security.token {
        None => Ok(BearerToken(None)),
        Some(t) => format!("Bearer {}", t.trim())
            .parse::<MetadataValue<Ascii>>()
            .map(|v| BearerToken(Some(v)))
            .map_err(|_| {
                ConnectError::Config(
                    "the token (--token or CORAL_TOKEN) has characters a header cannot hold".into(),
                )
            }),
    }
}

/// The innermost source of an error: what actually went wrong.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = err;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}

/// The error and all its sources, as one line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

/// Classifies a failed connection or call by its source chain: TLS mismatches and
/// certificate problems get a message that says what to change.
pub fn classify(
    addr: &str,
    security: &Security,
    err: &(dyn std::error::Error + 'static),
) -> Option<ConnectError> {
    let url = normalize_addr(addr);
    let text = format!("{err:?} {}", chain(err));
    let https = url.starts_with("https://");
    if https {
        if text.contains("InvalidContentType") || text.contains("corrupt message") {
            return Some(ConnectError::ColonyIsPlaintext {
                addr: url.clone(),
                hostport: hostport(&url),
            });
        }
        if text.contains("UnknownIssuer") || text.contains("BadSignature") {
            return Some(ConnectError::WrongCa {
                addr: url,
                ca: security
                    .tls_ca
                    .as_ref()
                    .map(|p| format!("--tls-ca {}", p.display()))
                    .unwrap_or_else(|| "the public webpki roots (no --tls-ca)".into()),
            });
        }
        if text.contains("Expired") || text.contains("NotValidYet") {
            return Some(ConnectError::ExpiredCertificate { addr: url });
        }
        // With TLS 1.3 the colony judges the client certificate after the client's
        // handshake is done: a refusal arrives as an alert, or as a connection closed
        // under the first call.
        let alert = text.contains("CertificateRequired")
            || text.contains("received fatal alert: BadCertificate")
            || text.contains("UnknownCA")
            || text.contains("CertificateExpired");
        let closed = text.contains("broken pipe")
            || text.contains("BrokenPipe")
            || text.contains("onnection reset")
            || text.contains("ConnectionReset")
            || text.contains("connection closed");
        if alert || (closed && security.tls_cert.is_some()) {
            return Some(ConnectError::ClientCertificateRefused {
                addr: url,
                detail: chain(err),
            });
        }
        if text.contains("invalid peer certificate") || text.contains("InvalidCertificate") {
            return Some(ConnectError::BadCertificate {
                addr: url,
                detail: chain(err),
            });
        }
    } else if text.contains("connection reset")
        // hyper's word for a connection that died before the request could be sent:
        // a TLS server closing on the plaintext preface, when the close wins the race
        // with the reset.
        || text.contains("connection was not ready")
        || text.contains("Connection reset")
        || text.contains("broken pipe")
        || text.contains("connection closed")
        || text.contains("frame with invalid size")
        || text.contains("FRAME_SIZE_ERROR")
        || text.contains("ConnectionReset")
        || text.contains("BrokenPipe")
    {
        return Some(ConnectError::ColonySpeaksTls {
            addr: url.clone(),
            hostport: hostport(&url),
        });
    }
    None
}

/// Connects now, with no TLS options and no token.
pub async fn connect(addr: &str) -> Result<Channel, ConnectError> {
    connect_with(addr, &Security::default()).await
}

/// Connects now (TLS for `https://`, the token on every call), failing with a message
/// that says how to fix the address or the TLS settings.
pub async fn connect_with(addr: &str, security: &Security) -> Result<Channel, ConnectError> {
    let endpoint = endpoint(addr, security)?;
    let token = bearer(security)?;
    match endpoint.connect().await {
        Ok(channel) => Ok(InterceptedService::new(channel, token)),
        Err(source) => {
            Err(
                classify(addr, security, &source).unwrap_or_else(|| ConnectError::Unreachable {
                    addr: normalize_addr(addr),
                    cause: root_cause(&source),
                }),
            )
        }
    }
}

/// A channel that connects on first use and reconnects by itself: for long-running
/// callers (the agent) that must survive a colony restart.
pub fn connect_lazy(addr: &str) -> Result<Channel, ConnectError> {
    connect_lazy_with(addr, &Security::default())
}

/// [`connect_lazy`] with TLS and a token.
pub fn connect_lazy_with(addr: &str, security: &Security) -> Result<Channel, ConnectError> {
    let token = bearer(security)?;
    Ok(InterceptedService::new(
        endpoint(addr, security)?.connect_lazy(),
        token,
    ))
}

/// The metadata key the colony sets on an `UNAVAILABLE` status that it returns itself
/// because its database cannot be reached (value [`CAUSE_DATABASE`]), so that clients
/// do not take it for a colony they cannot reach.
pub const UNAVAILABLE_CAUSE_KEY: &str = "coral-unavailable-cause";
/// The value of [`UNAVAILABLE_CAUSE_KEY`] for an unreachable database.
pub const CAUSE_DATABASE: &str = "database";

/// True when the colony answered, and answered that its database is unreachable: the
/// request can be retried as it is once the database is back.
pub fn is_database_unavailable(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && status
            .metadata()
            .get(UNAVAILABLE_CAUSE_KEY)
            .is_some_and(|v| v.as_bytes() == CAUSE_DATABASE.as_bytes())
}

/// A call's status, with a TLS or certificate cause explained when the call failed
/// because the connection could not be made.
pub fn explain_status(
    addr: &str,
    security: &Security,
    status: &tonic::Status,
) -> Option<ConnectError> {
    // The colony answered: its message (which may quote the database's "connection
    // reset") says what is wrong, not the transport.
    if is_database_unavailable(status) {
        return None;
    }
    if !matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal
    ) {
        return None;
    }
    classify(addr, security, status)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_that_cannot_work_are_refused_before_connecting() {
        let dir = std::env::temp_dir().join(format!("coral-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let with_ca = |ca: &Path| Security {
            tls_ca: Some(ca.to_path_buf()),
            ..Default::default()
        };
        let err = connect_lazy_with("http://127.0.0.1:1", &with_ca(&not_pem)).unwrap_err();
        assert!(err.to_string().contains("use https://127.0.0.1:1"), "{err}");
        let err = connect_lazy_with("https://127.0.0.1:1", &with_ca(&not_pem)).unwrap_err();
        assert!(err.to_string().contains("is not PEM"), "{err}");
        let err = connect_lazy_with("https://127.0.0.1:1", &with_ca(&dir.join("missing.pem")))
            .unwrap_err();
        assert!(err.to_string().contains("cannot read --tls-ca"), "{err}");
        let half = Security {
            tls_cert: Some(not_pem.clone()),
            ..Default::default()
        };
        let err = connect_lazy_with("https://127.0.0.1:1", &half).unwrap_err();
        assert!(err.to_string().contains("go together"), "{err}");
        let bad_token = Security {
            token: Some("a\nb".into()),
            ..Default::default()
        };
        let err = connect_lazy_with("http://127.0.0.1:1", &bad_token).unwrap_err();
        assert!(err.to_string().contains("token"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_colony_is_explained_with_each_cause_once() {
        // Port 1 on loopback: nothing listens there.
        let err = connect_with("127.0.0.1:1", &Security::default())
            .await
            .unwrap_err();
        let text = format!("{:#}", anyhow_like(&err));
        assert_eq!(text.matches("transport error").count(), 0, "{text}");
        assert_eq!(text.matches("onnection refused").count(), 1, "{text}");
        assert!(text.contains("Is it running"), "{text}");
    }

    /// The error with its sources, as `anyhow`'s `{:#}` prints it for the CLI.
    fn anyhow_like(err: &ConnectError) -> String {
        let mut out = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(e) = source {
            out.push_str(&format!(": {e}"));
            source = e.source();
        }
        out
    }

    #[test]
    fn debug_never_shows_the_token() {
        let s = Security {
            token: Some("sekrit-token-value".into()),
            ..Default::default()
        };
        assert!(!format!("{s:?}").contains("sekrit"));
        let b = bearer(&s).unwrap();
        assert!(!format!("{b:?}").contains("sekrit"));
    }
}
