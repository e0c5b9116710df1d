//! `coral query …`: read-only questions to the colony.

use super::ColonyAddr;
use crate::output::profile::ProfileFormat;
use crate::output::{self, Format, SpanView};
use anyhow::Context;
use clap::{Args, Subcommand};
use coral_analysis::{StatusPattern, parse_duration};
use coral_client::v1;

#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    colony: ColonyAddr,
    /// Output format: a table for people, or JSON for programs.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    #[command(subcommand)]
    command: QueryCommand,
}

#[derive(Subcommand)]
enum QueryCommand {
    /// Services that have sent spans.
    Services,
    /// Recent requests (server, consumer or root spans) of one service, newest first.
    Traces(TracesArgs),
    /// One trace as a tree of spans with durations.
    Trace {
        /// The trace id: 32 hex digits.
        trace_id: String,
    },
    /// Agents that registered, with their last heartbeat and counters.
    Agents,
    /// The CPU profile of one request: per profiled span, its samples, CPU time,
    /// precision and top functions, with a warning when the evidence is weak.
    TraceProfile(TraceProfileArgs),
}

#[derive(Args)]
struct TraceProfileArgs {
    /// The trace id: 32 hex digits.
    trace_id: String,
    /// Only this service's spans (for a trace that crosses services).
    #[arg(long)]
    service: Option<String>,
    /// text: summary per span; folded, svg (flame graph), pprof (gzipped
    /// profile.proto), json: the selected spans' profiles merged.
    #[arg(long, value_enum, default_value_t = ProfileFormat::Text)]
    format: ProfileFormat,
    /// Write to this file instead of standard output (svg, pprof, folded, json).
    #[arg(long = "output-file")]
    output_file: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct TracesArgs {
    /// The service (as in its service.name resource attribute).
    #[arg(long)]
    service: String,
    /// How far back to look (e.g. 15m, 1h, 2d).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    since: std::time::Duration,
    /// Only requests at least this long (e.g. 500ms, 1s).
    #[arg(long, value_parser = parse_duration)]
    min_duration: Option<std::time::Duration>,
    /// Only these HTTP statuses: 500, 5xx, 4xx,503; or "error" for span status ERROR.
    #[arg(long, value_parser = |s: &str| StatusPattern::parse(s).map(|p| p.to_string()))]
    status_code: Option<String>,
    /// At most this many requests.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
}

pub(crate) fn proto_duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A gRPC error as a person should read it: the colony's message, not the transport's.
pub(crate) fn rpc_error(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unavailable => anyhow::anyhow!(
            "the colony is unavailable: {}. Is it running (`coral colony start`)?",
            status.message()
        ),
        _ => anyhow::anyhow!("{}", status.message()),
    }
}

pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    // Validate arguments before touching the network, so typos fail fast.
    match &args.command {
        QueryCommand::Trace { trace_id } => output::parse_trace_id(trace_id)?,
        QueryCommand::TraceProfile(t) => {
            output::parse_trace_id(&t.trace_id)?;
            output::profile::check_destination(t.format, t.output_file.as_deref())?;
        }
        _ => {}
    }
    let channel = coral_client::connect(&args.colony.addr).await?;
    let mut client = coral_client::query_client(channel);
    let format = args.output;
    match args.command {
        QueryCommand::Services => {
            let resp = client
                .list_services(v1::ListServicesRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            output::print_services(&resp.services, format)
        }
        QueryCommand::Traces(t) => {
            let service = t.service.clone();
            let resp = client
                .query_traces(v1::QueryTracesRequest {
                    service: t.service,
                    since: Some(proto_duration(t.since)),
                    min_duration: t.min_duration.map(proto_duration),
                    status_code_pattern: t.status_code.unwrap_or_default(),
                    limit: t.limit,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let spans: Vec<SpanView> = resp.spans.iter().map(SpanView::from).collect();
            output::print_requests(&service, &spans, format)
        }
        QueryCommand::Trace { trace_id } => {
            let resp = client
                .get_trace(v1::GetTraceRequest { trace_id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let spans: Vec<SpanView> = resp.spans.iter().map(SpanView::from).collect();
            output::print_trace(&spans, format)
        }
        QueryCommand::Agents => {
            let resp = client
                .list_agents(v1::ListAgentsRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            output::print_agents(&resp.agents, format)
        }
        QueryCommand::TraceProfile(t) => {
            let channel = coral_client::connect(&args.colony.addr).await?;
            let resp = coral_client::profile_client(channel)
                .get_trace_profile(v1::GetTraceProfileRequest {
                    trace_id: t.trace_id.clone(),
                    service: t.service.unwrap_or_default(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            return output::profile::print_trace_profiles(
                &t.trace_id,
                &resp.profiles,
                t.format,
                t.output_file.as_deref(),
            );
        }
    }
    .context("cannot write the output")
}
