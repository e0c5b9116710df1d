//! `coral profile …`: CPU profiles on demand, and trace-triggered profiling.

use super::ColonyAddr;
use crate::commands::query::{proto_duration, rpc_error};
use crate::output;
use crate::output::profile::ProfileFormat;
use clap::{Args, Subcommand};
use coral_analysis::parse_duration;
use coral_client::v1;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum ProfileCommand {
    /// Profile a service's CPU now: every agent hosting it samples its processes.
    ///
    /// Agents know a service's processes from the process.pid resource attribute of its
    /// spans. While the profile runs, each request of the service also gets its own
    /// profile (see `coral query trace-profile`).
    Cpu(CpuArgs),
    /// Profile the next requests of a service that match (slower than --min-duration,
    /// with --status-code, on --url), each from its first to its last moment, plus a
    /// random baseline of the others. Shows progress until --count requests are
    /// collected or --timeout passes.
    TraceTrigger(super::trigger::TraceTriggerArgs),
    /// One trigger: its progress and the requests it collected.
    TriggerStatus(super::trigger::TriggerIdArgs),
    /// Triggers, newest first: the active ones, or --all.
    Triggers(super::trigger::TriggersArgs),
    /// Stop an active trigger (what it collected is kept).
    TriggerCancel(super::trigger::TriggerIdArgs),
}

#[derive(Args)]
pub struct CpuArgs {
    #[command(flatten)]
    colony: ColonyAddr,
    /// The service (as in its service.name resource attribute).
    #[arg(long)]
    service: String,
    /// How long to sample (1s to 10m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Samples per second of each thread's CPU time (1 to 1000).
    #[arg(long, default_value_t = 99, value_parser = clap::value_parser!(u32).range(1..=1000))]
    frequency: u32,
    /// Output format: text (the agents, top functions; "table" is accepted too), json
    /// (all of it, with the stacks), folded (Brendan Gregg's folded stacks), svg (flame
    /// graph) or pprof (gzipped profile.proto for go tool pprof, Speedscope, Pyroscope:
    /// needs --output-file or a pipe).
    #[arg(
        long = "format",
        short = 'o',
        visible_alias = "output",
        value_name = "FORMAT",
        value_enum,
        default_value_t = ProfileFormat::Text
    )]
    format: ProfileFormat,
    /// Write the output to this file instead of standard output.
    #[arg(long = "output-file", value_name = "PATH")]
    output_file: Option<PathBuf>,
}

/// A live "profiling S: 3s / 10s" line on a terminal until the future finishes.
async fn with_progress<T>(
    label: String,
    total: Duration,
    fut: impl std::future::Future<Output = T>,
) -> T {
    if !std::io::stderr().is_terminal() {
        return fut.await;
    }
    let start = Instant::now();
    let ticker = async {
        loop {
            let elapsed = start.elapsed();
            let state = if elapsed < total {
                format!("{}s / {}s", elapsed.as_secs(), total.as_secs())
            } else {
                "waiting for agents to report".to_string()
            };
            output::progress(&format!("{label}: {state}"));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let result = tokio::select! {
        r = fut => r,
        () = ticker => unreachable!("the ticker never ends"),
    };
    output::progress("");
    result
}

pub async fn run(cmd: ProfileCommand) -> anyhow::Result<()> {
    match cmd {
        ProfileCommand::Cpu(args) => cpu(args).await,
        ProfileCommand::TraceTrigger(args) => super::trigger::trace_trigger(args).await,
        ProfileCommand::TriggerStatus(args) => super::trigger::status(args).await,
        ProfileCommand::Triggers(args) => super::trigger::list(args).await,
        ProfileCommand::TriggerCancel(args) => super::trigger::cancel(args).await,
    }
}

async fn cpu(args: CpuArgs) -> anyhow::Result<()> {
    output::profile::check_destination(args.format, args.output_file.as_deref())?;
    let channel = args.colony.connect().await?;
    let mut client = coral_client::profile_client(channel);
    let request = v1::ProfileCpuRequest {
        service: args.service.clone(),
        duration: Some(proto_duration(args.duration)),
        frequency_hz: args.frequency,
    };
    let label = format!("profiling {} at {} Hz", args.service, args.frequency);
    let response = with_progress(label, args.duration, client.profile_cpu(request))
        .await
        .map_err(rpc_error)?
        .into_inner();
    let mut out = Vec::new();
    output::profile::write_cpu_profile(&mut out, &args.service, &response, args.format)?;
    output::emit(&out, args.output_file.as_deref())
}
