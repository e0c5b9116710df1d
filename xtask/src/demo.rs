//! The main job until the full demo exists: a colony on the embedded store, an agent,
//! one sample trace sent over OTLP/HTTP JSON, and the queries a newcomer tries first.

use crate::system;
use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Kills the processes it holds when dropped, so that no demo process outlives it.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The default port if it is free, else any free port.
fn port(default: u16) -> Result<u16> {
    match std::net::TcpListener::bind(("127.0.0.1", default)) {
        Ok(_) => Ok(default),
        Err(_) => crate::system::free_port(),
    }
}

fn coral(bin: &PathBuf, colony: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .env("CORAL_COLONY", colony)
        .output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}

/// A three-span trace of a slow checkout, as an OTel SDK would export it (OTLP JSON).
fn sample_trace(trace_id: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let t0 = now - 2_000_000_000;
    let span = |id: &str,
                parent: &str,
                name: &str,
                kind: u8,
                start_ms: u64,
                dur_ms: u64,
                attrs: &str| {
        format!(
            r#"{{"traceId":"{trace_id}","spanId":"{id}","parentSpanId":"{parent}","name":"{name}","kind":{kind},
               "startTimeUnixNano":"{}","endTimeUnixNano":"{}","attributes":[{attrs}],"status":{{}}}}"#,
            t0 + start_ms * 1_000_000,
            t0 + (start_ms + dur_ms) * 1_000_000
        )
    };
    let http = r#"{"key":"http.route","value":{"stringValue":"/checkout"}},
                  {"key":"http.response.status_code","value":{"intValue":"200"}},
                  {"key":"thread.id","value":{"intValue":"4243"}}"#;
    let spans = [
        span("a1a1a1a1a1a1a1a1", "", "POST /checkout", 2, 0, 1210, http),
        span(
            "b2b2b2b2b2b2b2b2",
            "a1a1a1a1a1a1a1a1",
            "validate_signature",
            1,
            12,
            1050,
            "",
        ),
        span(
            "c3c3c3c3c3c3c3c3",
            "a1a1a1a1a1a1a1a1",
            "SELECT orders",
            3,
            1070,
            120,
            "",
        ),
    ];
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[
             {{"key":"service.name","value":{{"stringValue":"payment-svc"}}}},
             {{"key":"process.pid","value":{{"intValue":"4242"}}}}]}},
           "scopeSpans":[{{"scope":{{"name":"demo"}},"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}

fn post_json(port: u16, path: &str, body: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

pub fn run(args: &[String]) -> Result<()> {
    let exit = args.iter().any(|a| a == "--exit");
    crate::system::ensure_debian_packages(crate::BUILD_PREREQUISITES)?;
    eprintln!("demo: building coral…");
    system::run("cargo", &["build", "--quiet", "-p", "coral-cli"])?;
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let bin = PathBuf::from(target).join("debug/coral");
    let data_dir = std::env::temp_dir().join(format!("coral-demo-{}", std::process::id()));
    let (colony_port, grpc_port, http_port) = (port(7070)?, port(4317)?, port(4318)?);
    let colony = format!("127.0.0.1:{colony_port}");

    let mut procs = Processes(Vec::new());
    let quiet = || {
        if exit {
            Stdio::null()
        } else {
            Stdio::inherit()
        }
    };
    procs.0.push(
        Command::new(&bin)
            .args(["colony", "start", "--listen", &colony, "--data-dir"])
            .arg(&data_dir)
            .stderr(quiet())
            .spawn()
            .context("cannot start the colony")?,
    );
    wait_for("the colony", || {
        coral(&bin, &colony, &["query", "services"]).is_ok()
    })?;
    procs.0.push(
        Command::new(&bin)
            .args(["agent", "start", "--colony", &colony, "--node", "demo-node"])
            .args(["--otlp-grpc", &format!("127.0.0.1:{grpc_port}")])
            .args(["--otlp-http", &format!("127.0.0.1:{http_port}")])
            .stderr(quiet())
            .spawn()
            .context("cannot start the agent")?,
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = sample_trace(trace_id);
    wait_for("the agent", || {
        post_json(http_port, "/v1/traces", &body).is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
    })?;
    wait_for("the sample trace to reach the colony", || {
        coral(&bin, &colony, &["query", "trace", trace_id]).is_ok()
    })?;

    println!("\n$ coral query services");
    print!("{}", coral(&bin, &colony, &["query", "services"])?);
    println!("\n$ coral query traces --service payment-svc --min-duration 1s");
    print!(
        "{}",
        coral(
            &bin,
            &colony,
            &[
                "query",
                "traces",
                "--service",
                "payment-svc",
                "--min-duration",
                "1s"
            ]
        )?
    );
    println!("\n$ coral query trace {trace_id}");
    print!("{}", coral(&bin, &colony, &["query", "trace", trace_id])?);
    println!(
        "\nColony on {colony} (embedded store in {}), agent receiving OTLP on \
         127.0.0.1:{grpc_port} (gRPC) and 127.0.0.1:{http_port} (HTTP).",
        data_dir.display()
    );
    if exit {
        drop(procs);
        let _ = std::fs::remove_dir_all(&data_dir);
        return Ok(());
    }
    println!(
        "Send your own spans: point any OpenTelemetry SDK at the agent, e.g.\n  \
         OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{grpc_port} OTEL_SERVICE_NAME=my-svc ./my-app\n\
         and query them with\n  \
         CORAL_COLONY={colony} {} query traces --service my-svc\n\
         Ctrl-C stops the colony and the agent.",
        bin.display()
    );
    for child in &mut procs.0 {
        let _ = child.wait();
    }
    Ok(())
}
