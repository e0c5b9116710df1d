//! TLS, mutual TLS for agents and bearer tokens with roles, with real parts:
//! certificates generated here with rcgen (a CA, the colony's, an agent's, an expired
//! one, one from another CA), a real colony (`coral_colony::serve_with`) on port 0, a
//! real agent, the real `coral` binary and `coral_client`.

use crate::cli::coral;
use coral_client::{ConnectError, Security, v1};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType, date_time_ymd,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const READ: &str = "read-token-0123456789abcdef";
const OPERATE: &str = "operate-token-0123456789abcdef";
const AGENT: &str = "agent-token-0123456789abcdef";

/// Certificates and keys as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    fn tls(&self, cert: &str, client_ca: Option<&str>) -> coral_colony::TlsOptions {
        coral_colony::TlsOptions {
            cert_pem: self.read(&format!("{cert}.pem")),
            key_pem: self.read(&format!("{cert}.key")),
            client_ca_pem: client_ca.map(|ca| self.read(&format!("{ca}.pem"))),
        }
    }

    fn generate() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let ca = |cn: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let leaf = |issuer: &CertifiedIssuer<'_, KeyPair>, name: &str, expired: bool| {
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            if expired {
                params.not_before = date_time_ymd(2020, 1, 1);
                params.not_after = date_time_ymd(2021, 1, 1);
            }
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            write(&format!("{name}.pem"), &cert.pem());
            write(&format!("{name}.key"), &key.serialize_pem());
        };
        let main = ca("Coral test CA");
        let other = ca("Another CA");
        write("ca.pem", &main.pem());
        write("other-ca.pem", &other.pem());
        leaf(&main, "server", false);
        leaf(&main, "agent", false);
        leaf(&main, "expired", true);
        leaf(&other, "other-server", false);
        leaf(&other, "other-agent", false);
        write("not-a-cert.pem", "hello\n");
        Pki { dir }
    }
}

/// A colony on port 0 with an embedded store; stopped when dropped.
struct Colony {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    _data: tempfile::TempDir,
}

impl Drop for Colony {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Colony {
    async fn start(tls: Option<coral_colony::TlsOptions>, tokens: bool) -> Colony {
        let data = tempfile::tempdir().unwrap();
        let store = coral_colony::open_store(&coral_colony::StoreConfig::Embedded {
            data_dir: data.path().to_path_buf(),
        })
        .await
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tokens = tokens.then(|| {
            Arc::new(
                coral_colony::Tokens::parse(
                    &format!("# test tokens\nread {READ}\noperate {OPERATE}\nagent {AGENT}\n"),
                    "tokens.txt",
                )
                .unwrap(),
            )
        });
        let options = coral_colony::ColonyOptions {
            tls,
            tokens,
            ..Default::default()
        };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            coral_colony::serve_with(listener, store, options, async {
                let _ = stopped.await;
            })
            .await
            .expect("the colony serves");
        });
        Colony {
            addr,
            stop: Some(stop),
            _data: data,
        }
    }

    fn https(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn http(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn security(ca: Option<&Path>, token: Option<&str>) -> Security {
    Security {
        tls_ca: ca.map(Path::to_path_buf),
        token: token.map(str::to_string),
        ..Default::default()
    }
}

async fn connect_err(addr: &str, security: &Security) -> ConnectError {
    match coral_client::connect_with(addr, security).await {
        Ok(channel) => {
            // The handshake may finish before the server has looked at everything: the
            // first call then reports it.
            let status = coral_client::query_client(channel)
                .list_services(v1::ListServicesRequest::default())
                .await
                .expect_err("the call must fail");
            coral_client::explain_status(addr, security, &status)
                .unwrap_or_else(|| panic!("unexplained: {status:?}"))
        }
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_registers_over_mutual_tls_and_the_cli_queries_with_a_token() {
    let pki = Pki::generate();
    let colony = Colony::start(Some(pki.tls("server", Some("ca"))), true).await;

    // A real agent with its client certificate and the agent token.
    let mut config = coral_agent::AgentConfig::new(colony.https(), "mtls-node");
    config.security = Security {
        tls_ca: Some(pki.path("ca.pem")),
        tls_cert: Some(pki.path("agent.pem")),
        tls_key: Some(pki.path("agent.key")),
        token: Some(AGENT.to_string()),
    };
    let listeners = coral_agent::Listeners {
        otlp_grpc: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
        otlp_http: None,
        metrics: None,
    };
    let (stop_agent, agent_stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(coral_agent::serve_with(
        config,
        listeners,
        coral_agent::ServeOptions::default(),
        async {
            let _ = agent_stopped.await;
        },
    ));

    // A query client with no certificate, only the CA and a read token.
    let channel = coral_client::connect_with(
        &colony.https(),
        &security(Some(&pki.path("ca.pem")), Some(READ)),
    )
    .await
    .expect("TLS without a client certificate is allowed for queries");
    let mut query = coral_client::query_client(channel);
    let mut registered = false;
    for _ in 0..100 {
        let agents = query
            .list_agents(v1::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents;
        if agents.iter().any(|a| a.node == "mtls-node") {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(registered, "the agent registered over mutual TLS");

    // The real CLI over TLS with a token.
    let ca = pki.path("ca.pem");
    let out = coral(
        Some(&colony.https()),
        &[
            "query",
            "agents",
            "--tls-ca",
            ca.to_str().unwrap(),
            "--token",
            READ,
        ],
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stdout.contains("mtls-node"), "{}", out.stdout);

    // AgentService without a client certificate: refused, saying what is missing.
    let channel = coral_client::connect_with(&colony.https(), &security(Some(&ca), Some(AGENT)))
        .await
        .unwrap();
    let status = coral_client::agent_client(channel)
        .register_agent(v1::RegisterAgentRequest {
            agent_id: "no-cert".into(),
            node: "no-cert".into(),
            version: "test".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("--tls-cert"),
        "{}",
        status.message()
    );

    // A client certificate from another CA: the handshake is refused.
    let other = Security {
        tls_ca: Some(ca.clone()),
        tls_cert: Some(pki.path("other-agent.pem")),
        tls_key: Some(pki.path("other-agent.key")),
        token: Some(AGENT.to_string()),
    };
    let err = connect_err(&colony.https(), &other).await;
    assert!(
        matches!(err, ConnectError::ClientCertificateRefused { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--client-ca"), "{err}");

    let _ = stop_agent.send(());
    agent.await.unwrap().expect("the agent stops cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_mistakes_get_errors_that_say_what_to_change() {
    let pki = Pki::generate();
    let ca = pki.path("ca.pem");
    let tls = Colony::start(Some(pki.tls("server", None)), false).await;
    let plain = Colony::start(None, false).await;

    // A plaintext client on the TLS port.
    let err = connect_err(&tls.http(), &Security::default()).await;
    assert!(
        matches!(err, ConnectError::ColonySpeaksTls { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("speaks TLS: use https://127.0.0.1:"), "{msg}");

    // A TLS client on the plaintext port.
    let err = connect_err(
        &format!("https://{}", plain.addr),
        &security(Some(&ca), None),
    )
    .await;
    assert!(
        matches!(err, ConnectError::ColonyIsPlaintext { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("does not speak TLS"), "{err}");

    // The wrong CA.
    let err = connect_err(
        &tls.https(),
        &security(Some(&pki.path("other-ca.pem")), None),
    )
    .await;
    assert!(matches!(err, ConnectError::WrongCa { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("the colony's certificate is not signed by the CA in --tls-ca"),
        "{err}"
    );

    // An expired server certificate.
    let expired = Colony::start(Some(pki.tls("expired", None)), false).await;
    let err = connect_err(&expired.https(), &security(Some(&ca), None)).await;
    assert!(
        matches!(err, ConnectError::ExpiredCertificate { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("expired"), "{err}");

    // A CA file that is not a certificate.
    let err = connect_err(
        &tls.https(),
        &security(Some(&pki.path("not-a-cert.pem")), None),
    )
    .await;
    assert!(err.to_string().contains("is not PEM"), "{err}");

    // TLS options with a plaintext address.
    let err = connect_err(&tls.http(), &security(Some(&ca), None)).await;
    assert!(err.to_string().contains("use https://"), "{err}");

    // The CLI shows these messages too.
    let out = coral(Some(&tls.http()), &["query", "services"]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("speaks TLS: use https://"),
        "{}",
        out.stderr
    );
    let out = coral(
        Some(&tls.https()),
        &[
            "query",
            "services",
            "--tls-ca",
            pki.path("other-ca.pem").to_str().unwrap(),
        ],
    );
    assert!(!out.ok);
    assert!(
        out.stderr.contains("not signed by the CA in --tls-ca"),
        "{}",
        out.stderr
    );
    let out = coral(
        Some(&tls.https()),
        &["query", "services", "--tls-ca", ca.to_str().unwrap()],
    );
    assert!(out.ok, "{}", out.stderr);

    // A colony given a bad certificate refuses to start.
    let store = coral_colony::open_store(&coral_colony::StoreConfig::Embedded {
        data_dir: pki.path("bad-colony"),
    })
    .await
    .unwrap();
    let options = coral_colony::ColonyOptions {
        tls: Some(coral_colony::TlsOptions {
            cert_pem: pki.read("not-a-cert.pem"),
            key_pem: pki.read("server.key"),
            client_ca_pem: None,
        }),
        ..Default::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = coral_colony::serve_with(listener, store, options, async {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_roles_are_checked_on_every_rpc() {
    let colony = Colony::start(None, true).await;
    let addr = colony.http();
    let client = |token: Option<&'static str>| {
        let addr = addr.clone();
        async move {
            coral_client::connect_with(&addr, &security(None, token))
                .await
                .unwrap()
        }
    };
    let trigger = || v1::StartTraceProfileTriggerRequest {
        service_id: "svc".into(),
        min_duration_ms: 1000,
        ..Default::default()
    };

    // No token: UNAUTHENTICATED, on every service.
    let status = coral_client::query_client(client(None).await)
        .list_services(v1::ListServicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("--token"), "{}", status.message());
    let status = coral_client::agent_client(client(None).await)
        .heartbeat(v1::HeartbeatRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    // An unknown token: UNAUTHENTICATED.
    let status = coral_client::query_client(client(Some("not-a-known-token-at-all")).await)
        .list_services(v1::ListServicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // A read token queries, but cannot start a trigger or act as an agent.
    coral_client::query_client(client(Some(READ)).await)
        .list_services(v1::ListServicesRequest::default())
        .await
        .expect("read may query");
    let mut profile = coral_client::profile_client(client(Some(READ)).await);
    profile
        .list_trace_profile_triggers(v1::ListTraceProfileTriggersRequest::default())
        .await
        .expect("read may list triggers");
    let status = profile
        .start_trace_profile_trigger(trigger())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("operate"), "{}", status.message());
    let status = coral_client::agent_client(client(Some(READ)).await)
        .heartbeat(v1::HeartbeatRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("agent role"),
        "{}",
        status.message()
    );

    // An operate token gets past the check (the colony then judges the request itself).
    let result = coral_client::profile_client(client(Some(OPERATE)).await)
        .start_trace_profile_trigger(trigger())
        .await;
    if let Err(status) = &result {
        assert!(
            !matches!(
                status.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ),
            "{status:?}"
        );
    }
    // The agent token is for AgentService only.
    let status = coral_client::query_client(client(Some(AGENT)).await)
        .list_services(v1::ListServicesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let status = coral_client::agent_client(client(Some(AGENT)).await)
        .heartbeat(v1::HeartbeatRequest {
            agent_id: "nobody".into(),
            counters: None,
        })
        .await
        .map(|_| ())
        .unwrap_err_or_ok();
    assert!(
        !matches!(
            status,
            Some(tonic::Code::PermissionDenied | tonic::Code::Unauthenticated)
        ),
        "{status:?}"
    );

    // The real CLI: a read token cannot create a trigger, and says which role it needs.
    let out = coral(
        Some(&addr),
        &[
            "profile",
            "trace-trigger",
            "--service",
            "svc",
            "--min-duration",
            "1s",
            "--token",
            READ,
        ],
    );
    assert!(!out.ok);
    assert!(out.stderr.contains("operate"), "{}", out.stderr);
    assert!(
        !out.stderr.contains(READ),
        "never print the token: {}",
        out.stderr
    );
    let out = coral(Some(&addr), &["query", "services"]);
    assert!(!out.ok);
    assert!(out.stderr.contains("requires a token"), "{}", out.stderr);
    let out = coral(Some(&addr), &["query", "services", "--token", READ]);
    assert!(out.ok, "{}", out.stderr);
}

trait ErrCode {
    fn unwrap_err_or_ok(self) -> Option<tonic::Code>;
}

impl ErrCode for Result<(), tonic::Status> {
    fn unwrap_err_or_ok(self) -> Option<tonic::Code> {
        self.err().map(|s| s.code())
    }
}

#[test]
fn the_colony_refuses_a_malformed_tokens_file_and_warns_when_exposed_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, format!("# ok\nread {READ}\nwrite {OPERATE}\n")).unwrap();
    let data = dir.path().join("data");
    let out = coral(
        None,
        &[
            "colony",
            "start",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--tokens-file",
            tokens.to_str().unwrap(),
        ],
    );
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("tokens.txt, line 3: unknown role \"write\""),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains(READ),
        "never print a token: {}",
        out.stderr
    );

    // Beyond loopback without TLS: a warning that says how to enable it.
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coral"))
        .args(["colony", "start", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .env_remove("CORAL_TLS_CERT")
        .env_remove("CORAL_TLS_KEY")
        .env_remove("CORAL_TOKENS_FILE")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read on a thread, so a missing warning fails the test instead of hanging it.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut warned = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("WARN") => {
                warned = Some(line);
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let warned = warned.expect("a warning");
    assert!(
        warned.contains("plaintext") && warned.contains("--tls-cert"),
        "{warned}"
    );
}

/// `coral mcp` on stdio, reaching a TLS colony with a colony token.
#[tokio::test(flavor = "multi_thread")]
async fn mcp_reaches_a_tls_colony_with_its_colony_token() {
    use rmcp::ServiceExt;
    use rmcp::model::CallToolRequestParams;
    let pki = Pki::generate();
    let colony = Colony::start(Some(pki.tls("server", None)), true).await;
    let mcp = |token: Option<&str>| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_coral"));
        for (key, _) in std::env::vars() {
            if key.starts_with("CORAL_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("RUST_LOG", "warn")
            .args(["mcp", "--colony", &colony.https(), "--tls-ca"])
            .arg(pki.path("ca.pem"));
        if let Some(token) = token {
            cmd.env("CORAL_TOKEN", token);
        }
        cmd
    };
    for (token, allowed) in [(Some(READ), true), (None, false)] {
        let client =
            ().serve(rmcp::transport::TokioChildProcess::new(mcp(token)).unwrap())
                .await
                .expect("MCP handshake over stdio");
        let result = client
            .call_tool(
                CallToolRequestParams::new("coral_list_services")
                    .with_arguments(serde_json::Map::new()),
            )
            .await
            .unwrap();
        assert_eq!(result.is_error == Some(true), !allowed, "{result:?}");
        client.cancel().await.unwrap();
    }
}

/// `coral agent start` as root keeps only the capabilities profiling needs, in every
/// thread and in the bounding set (so nothing it runs can get the others back). The
/// demo tests show that it still profiles with them.
#[test]
#[ignore = "needs root: run `cargo xtask test`, which runs root tests"]
fn the_agent_keeps_only_the_capabilities_it_needs() {
    use coral_agent::privileges::NEEDED;
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test checks what root gives up: run it as root"
    );
    let data = tempfile::tempdir().unwrap();
    let logged = std::sync::Mutex::new(Vec::new());
    let (agent, _) = crate::metrics::spawn_until(
        &[
            "agent",
            "start",
            "--colony",
            "http://127.0.0.1:1",
            "--otlp-grpc",
            "127.0.0.1:0",
            "--otlp-http",
            "127.0.0.1:0",
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        "otlp-http listening on",
        |line| logged.lock().unwrap().push(line.to_string()),
    );
    let needed = NEEDED.iter().fold(0u64, |m, c| m | c.bitmask());
    let tasks = std::fs::read_dir(format!("/proc/{}/task", agent.0.id())).unwrap();
    let mut threads = 0;
    for task in tasks {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        for set in ["CapPrm", "CapEff", "CapBnd", "CapInh", "CapAmb"] {
            let value = status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{set}:")))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
                .unwrap();
            let expected = if matches!(set, "CapInh" | "CapAmb") {
                0
            } else {
                needed
            };
            assert_eq!(value, expected, "{set} {value:#x} (thread {threads})");
        }
        threads += 1;
    }
    assert!(threads > 1, "the runtime's threads are checked too");
    let logged = logged.lock().unwrap();
    assert!(
        logged
            .iter()
            .any(|l| l.contains("capabilities the agent does not need; kept CAP_")),
        "{logged:?}"
    );
}
