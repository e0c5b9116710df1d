//! `coral demo`: the whole RFD 080 flow on one machine, with a known right answer.
//!
//! It starts a colony (embedded store), an agent (eBPF) and `payment-svc` (a service
//! instrumented with the OpenTelemetry SDK, with a planted slow path) under load, then
//! runs the commands an on-call engineer would, as child processes, printing each
//! command before its output so the reader learns them: trace-trigger for the bad
//! requests, profile-compare bad vs good, and the flame graphs.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVICE: &str = "payment-svc";

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 1.5% of checkouts miss a signature cache and spend ~1 s in validate_signature.
    Latency,
    /// 5% of checkouts are flagged for fraud review and fail with 503 after
    /// score_fraud_rules.
    Errors,
    /// A background job holds the ledger lock 4% of the time: ~2% of checkouts wait
    /// 250-500 ms in acquire_ledger_lock, on no CPU.
    Lock,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Errors => "errors",
            Scenario::Lock => "lock",
        }
    }

    fn story(self) -> &'static str {
        match self {
            Scenario::Latency => {
                "payment-svc's /checkout takes ~50 ms, but about 1.5% of requests take over 1 s."
            }
            Scenario::Errors => "payment-svc's /checkout fails with 503 for about 5% of requests.",
            Scenario::Lock => {
                "payment-svc's /checkout takes ~50 ms, but about 2% of requests take 300-550 ms \
                 while using no more CPU."
            }
        }
    }

    fn planted_share(self) -> &'static str {
        match self {
            Scenario::Latency => "0.015",
            Scenario::Errors => "0.05",
            Scenario::Lock => "0.04",
        }
    }

    /// The planted function, which the comparison must name first.
    fn planted_function(self) -> &'static str {
        match self {
            Scenario::Latency => "validate_signature",
            Scenario::Errors => "score_fraud_rules",
            Scenario::Lock => "acquire_ledger_lock",
        }
    }

    fn trigger_criteria(self) -> [&'static str; 2] {
        match self {
            Scenario::Latency => ["--min-duration", "500ms"],
            Scenario::Errors => ["--status-code", "5xx"],
            Scenario::Lock => ["--min-duration", "300ms"],
        }
    }

    /// Cohort A (the bad requests, being explained) and cohort B (the good ones).
    fn cohorts(self) -> [&'static str; 2] {
        match self {
            Scenario::Latency => ["duration > 500ms", "duration < 100ms"],
            Scenario::Errors => ["status = 5xx", "status != 5xx"],
            Scenario::Lock => ["duration > 300ms", "duration < 100ms"],
        }
    }

    /// What the comparison measures: where the bad requests spent their wall-clock
    /// time when they waited, CPU time otherwise.
    fn profile_type(self) -> &'static str {
        match self {
            Scenario::Latency | Scenario::Errors => "cpu",
            Scenario::Lock => "wall",
        }
    }
}

#[derive(Args)]
pub struct DemoArgs {
    /// What is wrong with payment-svc.
    #[arg(long, value_enum, default_value_t = Scenario::Latency)]
    scenario: Scenario,
    /// Bad requests the trigger collects (5 to 100; at least 5 are needed for
    /// 'high' significance).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(5..=100))]
    count: u32,
    /// Load on payment-svc, in requests per second.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(5..=200))]
    rps: u32,
    /// Where the flame graphs, the comparison (JSON), the store and the logs go.
    #[arg(long, default_value = "coral-demo")]
    output_dir: PathBuf,
    /// The payment-svc binary [default: next to coral; `cargo build -p coral-demo`].
    #[arg(long)]
    payment_svc: Option<PathBuf>,
    /// Keep everything running after the result, until Ctrl-C, to try commands on it.
    #[arg(long)]
    keep_running: bool,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    tokio::select! {
        biased; // with --keep-running, Ctrl-C ends the demo normally
        result = demo(args) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; every demo process was stopped"),
    }
}

async fn demo(args: DemoArgs) -> Result<()> {
    let started = Instant::now();
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the demo samples CPU with eBPF, which needs root: run `sudo coral demo` \
             (or `cargo xtask demo` as root)"
        );
    }
    let coral = std::env::current_exe().context("cannot locate the coral binary")?;
    let payment_svc = args
        .payment_svc
        .clone()
        .unwrap_or_else(|| coral.with_file_name(SERVICE));
    if !payment_svc.is_file() {
        bail!(
            "{} not found: build it with `cargo build -p coral-demo` (`cargo xtask demo` \
             does), or point --payment-svc at it",
            payment_svc.display()
        );
    }
    let out = &args.output_dir;
    let data = out.join("data");
    // A fresh store each run, so the comparison sees only this run's requests.
    match std::fs::remove_dir_all(&data) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot clear {}", data.display()));
        }
        _ => {}
    }
    std::fs::create_dir_all(out.join("logs"))
        .with_context(|| format!("cannot create {}", out.display()))?;
    let scenario = args.scenario;
    println!(
        "Coral demo ({} scenario): {}",
        scenario.name(),
        scenario.story()
    );
    println!("Question: why? Coral answers without any change to payment-svc's code.\n");

    let [colony, otlp_grpc, otlp_http, http] = free_ports()?;
    let colony = format!("127.0.0.1:{colony}");
    let service_addr = format!("127.0.0.1:{http}");
    let mut procs = Processes::new(out.join("logs"));
    println!(
        "[1/4] starting a colony (embedded store in {}), an agent (eBPF CPU sampling), \
         payment-svc and {} requests/s of load",
        data.display(),
        args.rps
    );
    procs.spawn(
        "colony",
        Command::new(&coral)
            .args(["colony", "start", "--listen", &colony, "--data-dir"])
            .arg(&data),
    )?;
    wait_for_colony(&colony, &mut procs).await?;
    procs.spawn(
        "agent",
        Command::new(&coral)
            .args([
                "agent",
                "start",
                "--colony",
                &colony,
                "--otlp-grpc",
                &format!("127.0.0.1:{otlp_grpc}"),
                "--otlp-http",
                &format!("127.0.0.1:{otlp_http}"),
                "--node",
                "demo-node",
                "--data-dir",
            ])
            .arg(data.join("agent")),
    )?;
    wait_for_port(otlp_grpc, "the agent", &mut procs).await?;
    procs.spawn(
        SERVICE,
        Command::new(&payment_svc).args([
            "serve",
            "--listen",
            &service_addr,
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{otlp_grpc}"),
            "--scenario",
            scenario.name(),
            "--planted-share",
            scenario.planted_share(),
        ]),
    )?;
    wait_for_port(http, SERVICE, &mut procs).await?;
    procs.spawn(
        "load",
        Command::new(&payment_svc).args([
            "load",
            "--target",
            &service_addr,
            "--rps",
            &args.rps.to_string(),
        ]),
    )?;
    wait_for_service(&colony, &mut procs).await?;
    println!(
        "      payment-svc's spans reach the colony ({:.0} s); logs in {}\n",
        started.elapsed().as_secs_f64(),
        out.join("logs").display()
    );

    let run = Runner {
        coral: &coral,
        colony: &colony,
    };
    let count = args.count.to_string();
    let [criterion, value] = scenario.trigger_criteria();
    println!("[2/4] profile the next {count} bad requests whole, from first to last moment:");
    run.shown(&[
        "profile",
        "trace-trigger",
        "--service",
        SERVICE,
        criterion,
        value,
        "--count",
        &count,
        "--timeout",
        "3m",
    ])
    .await?;
    let triggers: Value = serde_json::from_slice(
        &run.quiet(&[
            "profile",
            "triggers",
            "--service",
            SERVICE,
            "--all",
            "--output",
            "json",
        ])
        .await?,
    )?;
    let trigger_id = triggers[0]["trigger_id"]
        .as_str()
        .context("the colony lists no trigger")?;
    let trigger: Value = serde_json::from_slice(
        &run.quiet(&["profile", "trigger-status", trigger_id, "--output", "json"])
            .await?,
    )?;
    if trigger["status"] != "completed" {
        bail!(
            "the trigger ended {} after collecting {} of {count} requests; see the logs in {}",
            trigger["status"],
            trigger["collected_requests"],
            out.join("logs").display()
        );
    }
    let slow_trace = trigger["collected"][0]["trace_id"]
        .as_str()
        .context("the completed trigger lists no request")?
        .to_string();

    let [cohort_a, cohort_b] = scenario.cohorts();
    let compare = [
        "query",
        "profile-compare",
        "--service",
        SERVICE,
        "--cohort-a",
        cohort_a,
        "--cohort-b",
        cohort_b,
        "--type",
        scenario.profile_type(),
    ];
    println!("\n[3/4] compare the bad requests with the good ones, function by function:");
    run.shown(&compare).await?;
    let comparison_json = out.join("comparison.json");
    run.quiet(
        &[
            &compare[..],
            &["--format", "json", "--output-file"],
            &[&path(&comparison_json)],
        ]
        .concat(),
    )
    .await?;

    println!("\n[4/4] flame graphs:");
    let differential = out.join("compare.svg");
    run.shown(
        &[
            &compare[..],
            &["--format", "svg", "--output-file"],
            &[&path(&differential)],
        ]
        .concat(),
    )
    .await?;
    let one_request = out.join("slow-request.svg");
    run.shown(&[
        "query",
        "trace-profile",
        &slow_trace,
        "--type",
        scenario.profile_type(),
        "--format",
        "svg",
        "--output-file",
        &path(&one_request),
    ])
    .await?;

    let comparison: Value = serde_json::from_slice(
        &std::fs::read(&comparison_json)
            .with_context(|| format!("cannot read {}", comparison_json.display()))?,
    )?;
    let found = verdict(scenario, &comparison);
    println!("\n{}", found.as_ref().unwrap_or_else(|e| e));
    let slow_profile: Value = serde_json::from_slice(
        &run.quiet(&["query", "trace-profile", &slow_trace, "--format", "json"])
            .await?,
    )?;
    if let Some(path) = call_path(&slow_profile, scenario.planted_function()) {
        println!("Its call path in one bad request (payment-svc has no frame pointers): {path}");
    }
    println!(
        "\nFiles in {}:\n  compare.svg       differential flame graph (red: hotter in the bad requests)\n  \
         slow-request.svg  one bad request ({slow_trace}), whole\n  \
         comparison.json   the comparison, for programs\n  \
         logs/             colony, agent, payment-svc and load",
        out.display()
    );
    println!(
        "\nTry next:\n  \
         coral demo --scenario {}    # another planted problem\n  \
         coral demo --keep-running        # then, in another shell, export CORAL_COLONY=<address it prints> and:\n    \
         coral query traces --service payment-svc --min-duration 500ms\n    \
         coral query trace-profile <trace-id>\n    \
         coral mcp                        # let an AI assistant run the diagnosis (docs/user-guide.md)\n  \
         docs/runbooks.md                 # what to do when P99 is high, errors spike, ...",
        match scenario {
            Scenario::Latency => "lock   ",
            Scenario::Errors => "latency",
            Scenario::Lock => "errors ",
        }
    );
    if let Some(dir) = coral.parent().filter(|dir| !on_path(dir)) {
        println!("  (coral is in {0}: export PATH={0}:$PATH)", dir.display());
    }
    if args.keep_running && found.is_ok() {
        println!(
            "\nStill running: colony {colony}, OTLP on 127.0.0.1:{otlp_grpc} (gRPC) and \
             127.0.0.1:{otlp_http} (HTTP), payment-svc on http://{service_addr}/checkout.\n\
             export CORAL_COLONY={colony}   # then any coral command. Ctrl-C stops everything."
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    procs.stop();
    println!(
        "\nDone in {:.0} s; every demo process stopped.",
        started.elapsed().as_secs_f64()
    );
    found.map(|_| ()).map_err(anyhow::Error::msg)
}

/// The sentence a person reads first; an error if the planted function was not named
/// first with high significance (the demo knows the right answer).
fn verdict(scenario: Scenario, comparison: &Value) -> Result<String, String> {
    let top = &comparison["functions"][0];
    let function = top["function"].as_str().unwrap_or("nothing");
    let planted = scenario.planted_function();
    let measure = comparison["measure"].as_str().unwrap_or("CPU time");
    let per_request = match scenario.profile_type() {
        "cpu" => "of CPU".to_string(),
        _ => format!("of {measure}"),
    };
    let mut line = format!(
        "Coral's answer: {function} is {:+.1} percentage points hotter in the bad requests \
         ({:.0} ms {per_request} per request vs {:.1} ms in the good ones), {} significance (q = {:.2e}).",
        top["delta_pp"].as_f64().unwrap_or(0.0),
        top["a_ms_per_request"].as_f64().unwrap_or(0.0),
        top["b_ms_per_request"].as_f64().unwrap_or(0.0),
        top["significance"].as_str().unwrap_or("no"),
        top["q_value"].as_f64().unwrap_or(1.0),
    );
    // Time off the CPU: say why it waited (the wait frame as much hotter in A).
    if let Some(wait) = comparison["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["significance"] == "high" && f["delta_pp"].as_f64() > Some(0.0))
        .filter_map(|f| f["function"].as_str())
        .find(|f| f.starts_with("[off-cpu: "))
    {
        line.push_str(&format!(" It waited off the CPU: {wait}."));
    }
    if function.ends_with(planted) && top["significance"] == "high" {
        Ok(format!("{line}\nThat is the planted cause ({planted})."))
    } else {
        Err(format!(
            "{line}\nThe planted cause was {planted}, which Coral did not name first with high \
             significance: see comparison.json"
        ))
    }
}

/// The hottest stack through `function` in a request's profile (`trace-profile --format
/// json`), from the thread's root to `function`: `a → b → function`.
fn call_path(trace_profile: &Value, function: &str) -> Option<String> {
    let profile = &trace_profile["merged"]["profile"];
    let frames = profile["frames"].as_array()?;
    let name = |index: &Value| -> Option<String> {
        let frame = &frames[usize::try_from(index.as_u64()?).ok()?];
        let function = frame["function"].as_str()?;
        Some(if function == coral_analysis::profile::UNKNOWN_FUNCTION {
            format!("[{}]", frame["module"].as_str().unwrap_or("unknown"))
        } else {
            function.to_string()
        })
    };
    profile["stacks"]
        .as_array()?
        .iter()
        .filter_map(|stack| {
            let names: Vec<String> = stack["frames"]
                .as_array()?
                .iter()
                .map(name)
                .collect::<Option<_>>()?;
            let end = names.iter().position(|n| n.ends_with(function))?;
            Some((
                stack["samples"].as_u64().unwrap_or(0),
                names[..=end].join(" → "),
            ))
        })
        .max_by_key(|(samples, _)| *samples)
        .map(|(_, path)| path)
}

/// Whether `dir` is on PATH, so that `coral` there runs as just `coral`.
fn on_path(dir: &Path) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|p| p == dir))
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Runs `coral` subcommands against the demo's colony.
struct Runner<'a> {
    coral: &'a Path,
    colony: &'a str,
}

impl Runner<'_> {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.coral);
        cmd.args(args)
            .env(coral_client::COLONY_ADDR_ENV, self.colony)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Prints the command as a user would type it, then runs it with its output shown.
    async fn shown(&self, args: &[&str]) -> Result<()> {
        println!("$ coral {}", quoted(args));
        let status = self.command(args).status().await?;
        if !status.success() {
            bail!("`coral {}` failed ({status})", quoted(args));
        }
        Ok(())
    }

    /// Runs the command for its output.
    async fn quiet(&self, args: &[&str]) -> Result<Vec<u8>> {
        let out = self.command(args).stderr(Stdio::inherit()).output().await?;
        if !out.status.success() {
            bail!("`coral {}` failed ({})", quoted(args), out.status);
        }
        Ok(out.stdout)
    }
}

fn quoted(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                a.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn free_ports<const N: usize>() -> Result<[u16; N]> {
    // Hold every listener until all ports are chosen, so no two are the same.
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The services the colony knows, or `None` while it does not answer.
async fn known_services(colony: &str) -> Option<Vec<String>> {
    let channel = coral_client::connect(colony).await.ok()?;
    let response = coral_client::query_client(channel)
        .list_services(coral_client::v1::ListServicesRequest {})
        .await
        .ok()?;
    Some(
        response
            .into_inner()
            .services
            .into_iter()
            .map(|s| s.name)
            .collect(),
    )
}

async fn wait_for_colony(colony: &str, procs: &mut Processes) -> Result<()> {
    procs
        .wait_until("the colony", async || {
            known_services(colony).await.is_some()
        })
        .await
}

async fn wait_for_port(port: u16, what: &str, procs: &mut Processes) -> Result<()> {
    procs
        .wait_until(what, async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await
}

async fn wait_for_service(colony: &str, procs: &mut Processes) -> Result<()> {
    procs
        .wait_until("payment-svc's spans in the colony", async || {
            known_services(colony)
                .await
                .is_some_and(|names| names.iter().any(|n| n == SERVICE))
        })
        .await
}

/// The demo's processes, each logging to its own file. Stopped (SIGTERM, then SIGKILL
/// after a grace period) in reverse start order on [`Processes::stop`] or on drop,
/// so none outlives the demo whatever ends it.
struct Processes {
    logs: PathBuf,
    children: Vec<(&'static str, Child)>,
}

impl Processes {
    fn new(logs: PathBuf) -> Self {
        Self {
            logs,
            children: Vec::new(),
        }
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) -> Result<()> {
        let log_path = self.logs.join(format!("{name}.log"));
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        self.children.push((name, child));
        Ok(())
    }

    /// Polls `ready` until it holds; fails early, naming its log, if a process exits.
    async fn wait_until(&mut self, what: &str, mut ready: impl AsyncFnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ready().await {
                return Ok(());
            }
            for (name, child) in &mut self.children {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{name} exited ({status}) while waiting for {what}: see {}",
                        self.logs.join(format!("{name}.log")).display()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {}s waiting for {what}: see the logs in {}",
                    READY_TIMEOUT.as_secs(),
                    self.logs.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&mut self) {
        while let Some((_, mut child)) = self.children.pop() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop();
    }
}
