//! Who may call what: the tokens file (`ROLE TOKEN` lines), and the tower layer that
//! checks every RPC before it reaches a service — the bearer token's role when a
//! tokens file is set, and a verified client certificate for `AgentService` when the
//! colony requires mutual TLS for agents.

use futures::future::{Either, Ready, ready};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// QueryService and the read-only ProfileService RPCs.
    Read,
    /// `read`, plus ProfileCpu and starting/cancelling trace-profile triggers.
    Operate,
    /// AgentService (what agents call).
    Agent,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "operate" => Some(Role::Operate),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Agent => "agent",
        }
    }

    /// Whether a token of this role may call what `needed` is required for.
    fn allows(self, needed: Role) -> bool {
        matches!(
            (self, needed),
            (Role::Read, Role::Read)
                | (Role::Operate, Role::Read | Role::Operate)
                | (Role::Agent, Role::Agent)
        )
    }
}

/// The tokens of a tokens file. Its `Debug` never shows them.
#[derive(Clone)]
pub struct Tokens {
    entries: Vec<(Role, Vec<u8>)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tokens({} entries)", self.entries.len())
    }
}

/// A tokens file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tokens file {path}, line {line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("tokens file {path} has no tokens: every RPC would be refused")]
    Empty { path: String },
}

impl Tokens {
    /// Reads and parses a tokens file.
    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Tokens::parse(&text, &path.display().to_string())
    }

    /// Parses `ROLE TOKEN` lines; blank lines and `#` comments are skipped. `path`
    /// names the file in errors.
    pub fn parse(text: &str, path: &str) -> Result<Tokens, TokensError> {
        let mut entries: Vec<(Role, Vec<u8>)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| TokensError::Line {
                path: path.to_string(),
                line: i + 1,
                message,
            };
            let mut words = line.split_whitespace();
            let (Some(role), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(err(
                    "expected `ROLE TOKEN` (two words: read|operate|agent and the token)".into(),
                ));
            };
            let role = Role::parse(role).ok_or_else(|| {
                err(format!(
                    "unknown role {role:?}: expected read, operate or agent"
                ))
            })?;
            if token.len() < 16 {
                return Err(err(
                    "token shorter than 16 characters: use a long random token \
                     (e.g. `openssl rand -hex 32`)"
                        .into(),
                ));
            }
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err("the token must be printable ASCII".into()));
            }
            if entries.iter().any(|(_, t)| t == token.as_bytes()) {
                return Err(err("this token is listed twice".into()));
            }
            entries.push((role, token.as_bytes().to_vec()));
        }
        if entries.is_empty() {
            return Err(TokensError::Empty {
                path: path.to_string(),
            });
        }
        Ok(Tokens { entries })
    }

    /// The role of `token`, comparing with every entry in constant time.
    fn role_of(&self, token: &[u8]) -> Option<Role> {
        let mut found = None;
        for (role, t) in &self.entries {
            if constant_time_eq(t, token) {
                found = Some(*role);
            }
        }
        found
    }
}

/// Equal in time independent of where the inputs differ (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The role an RPC needs, from its path `/coral.v1.Service/Method`; `None` for
/// anything that is not Coral's API.
fn needed_role(path: &str) -> Option<Role> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    match service {
        "coral.v1.AgentService" => Some(Role::Agent),
        "coral.v1.QueryService" => Some(Role::Read),
        "coral.v1.ProfileService" => match method {
            "ProfileCpu" | "StartTraceProfileTrigger" | "CancelTraceProfileTrigger" => {
                Some(Role::Operate)
            }
            _ => Some(Role::Read),
        },
        _ => None,
    }
}

/// What the colony checks on every call.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Set: every RPC needs a bearer token of the right role.
    pub tokens: Option<Arc<Tokens>>,
    /// AgentService calls need a client certificate verified against `--client-ca`.
    pub require_agent_certificate: bool,
}

impl Guard {
    fn check<B>(&self, req: &http::Request<B>) -> Result<(), tonic::Status> {
        let path = req.uri().path();
        let Some(needed) = needed_role(path) else {
            // Not Coral's API: let the router answer UNIMPLEMENTED, but never without a
            // valid token when tokens are required.
            return match &self.tokens {
                Some(tokens) => bearer_role(tokens, req).map(|_| ()),
                None => Ok(()),
            };
        };
        if needed == Role::Agent && self.require_agent_certificate {
            let verified = req
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.peer_certs())
                .is_some_and(|certs| !certs.is_empty());
            if !verified {
                return Err(tonic::Status::unauthenticated(
                    "agent calls need a client certificate signed by the colony's \
                     --client-ca: start the agent with --tls-cert and --tls-key",
                ));
            }
        }
        if let Some(tokens) = &self.tokens {
            let role = bearer_role(tokens, req)?;
            if !role.allows(needed) {
                return Err(tonic::Status::permission_denied(format!(
                    "{path} needs a token with the {} role; this token has the {} role",
                    needed.name(),
                    role.name()
                )));
            }
        }
        Ok(())
    }
}

fn bearer_role<B>(tokens: &Tokens, req: &http::Request<B>) -> Result<Role, tonic::Status> {
    let Some(value) = req.headers().get(http::header::AUTHORIZATION) else {
        return Err(tonic::Status::unauthenticated(
            "this colony requires a token: pass --token or set CORAL_TOKEN",
        ));
    };
    let token = value
        .as_bytes()
        .strip_prefix(b"Bearer ")
        .ok_or_else(|| tonic::Status::unauthenticated("expected `authorization: Bearer TOKEN`"))?;
    tokens.role_of(token).ok_or_else(|| {
        tonic::Status::unauthenticated("unknown token (not in the colony's tokens file)")
    })
}

impl<S> tower::Layer<S> for Guard {
    type Service = Guarded<S>;
    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

/// A service behind the [`Guard`].
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Guard,
}

impl<S, B> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Self::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self.guard.check(&req) {
            Ok(()) => Either::Left(self.inner.call(req)),
            Err(status) => Either::Right(ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "0123456789abcdef-read";
    const T2: &str = "0123456789abcdef-operate";
    const T3: &str = "0123456789abcdef-agent";

    fn tokens() -> Tokens {
        Tokens::parse(
            &format!("# tokens\n\nread {T1}\n  operate {T2}  \nagent {T3} \n"),
            "t",
        )
        .unwrap()
    }

    #[test]
    fn parses_roles_comments_and_blank_lines() {
        let t = tokens();
        assert_eq!(t.role_of(T1.as_bytes()), Some(Role::Read));
        assert_eq!(t.role_of(T2.as_bytes()), Some(Role::Operate));
        assert_eq!(t.role_of(T3.as_bytes()), Some(Role::Agent));
        assert_eq!(t.role_of(b"0123456789abcdef-other"), None);
        assert_eq!(t.role_of(b""), None);
        assert!(!format!("{t:?}").contains("0123"), "Debug shows no token");
    }

    #[test]
    fn refuses_malformed_files_with_the_line_number() {
        let cases = [
            (
                format!("read {T1}\nwrite {T2}\n"),
                2,
                "unknown role \"write\"",
            ),
            ("# c\nread\n".to_string(), 2, "ROLE TOKEN"),
            (format!("read {T1} extra\n"), 1, "ROLE TOKEN"),
            ("\n\nread short\n".to_string(), 3, "shorter than 16"),
            (format!("read {T1}\nagent {T1}\n"), 2, "twice"),
        ];
        for (text, line, needle) in cases {
            let err = Tokens::parse(&text, "tokens.txt").unwrap_err().to_string();
            assert!(
                err.contains(&format!("tokens.txt, line {line}:")) && err.contains(needle),
                "{text:?}: {err}"
            );
        }
        let err = Tokens::parse("# nothing\n", "tokens.txt").unwrap_err();
        assert!(err.to_string().contains("no tokens"), "{err}");
    }

    #[test]
    fn roles_per_rpc() {
        assert_eq!(
            needed_role("/coral.v1.AgentService/IngestSpans"),
            Some(Role::Agent)
        );
        assert_eq!(
            needed_role("/coral.v1.QueryService/QueryTraces"),
            Some(Role::Read)
        );
        for m in [
            "ProfileCpu",
            "StartTraceProfileTrigger",
            "CancelTraceProfileTrigger",
        ] {
            assert_eq!(
                needed_role(&format!("/coral.v1.ProfileService/{m}")),
                Some(Role::Operate)
            );
        }
        for m in [
            "GetTraceProfile",
            "GetTraceProfileTrigger",
            "ListTraceProfileTriggers",
            "CompareTraceProfiles",
        ] {
            assert_eq!(
                needed_role(&format!("/coral.v1.ProfileService/{m}")),
                Some(Role::Read)
            );
        }
        assert_eq!(needed_role("/grpc.health.v1.Health/Check"), None);
        assert!(Role::Operate.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Operate));
        assert!(!Role::Agent.allows(Role::Read));
        assert!(!Role::Operate.allows(Role::Agent));
    }

    fn request(path: &str, token: Option<&str>) -> http::Request<()> {
        let mut b = http::Request::builder().uri(format!("http://x{path}"));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(()).unwrap()
    }

    #[test]
    fn guard_answers_unauthenticated_and_permission_denied() {
        let guard = Guard {
            tokens: Some(Arc::new(tokens())),
            require_agent_certificate: false,
        };
        let start = "/coral.v1.ProfileService/StartTraceProfileTrigger";
        let e = guard.check(&request(start, None)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = guard
            .check(&request(start, Some("nope-nope-nope-nope")))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let e = guard.check(&request(start, Some(T1))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("operate"), "{}", e.message());
        assert!(!e.message().contains(T1), "never echo the token");
        guard.check(&request(start, Some(T2))).unwrap();
        guard
            .check(&request("/coral.v1.QueryService/ListServices", Some(T1)))
            .unwrap();
        let e = guard
            .check(&request("/coral.v1.AgentService/Heartbeat", Some(T2)))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        guard
            .check(&request("/coral.v1.AgentService/Heartbeat", Some(T3)))
            .unwrap();
        let e = guard.check(&request("/x.Y/Z", None)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // Without a tokens file, everything passes as before.
        Guard::default().check(&request(start, None)).unwrap();
        // mTLS required for agents: a plain (certificate-less) call is refused.
        let guard = Guard {
            tokens: None,
            require_agent_certificate: true,
        };
        let e = guard
            .check(&request("/coral.v1.AgentService/Heartbeat", None))
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("--tls-cert"), "{}", e.message());
        guard
            .check(&request("/coral.v1.QueryService/ListServices", None))
            .unwrap();
    }
}
