//! `coral query …`: read-only questions to the colony.

use super::ColonyAddr;
use crate::output::compare::CompareFormat;
use crate::output::profile::ProfileFormat;
use crate::output::{self, TextOutput};
use clap::{Args, Subcommand};
use coral_analysis::profile::ProfileType;
use coral_analysis::{StatusPattern, parse_duration};
use coral_client::v1;
use coral_report::SpanView;

#[derive(Args)]
pub struct QueryArgs {
    #[command(flatten)]
    colony: ColonyAddr,
    #[command(subcommand)]
    command: QueryCommand,
}

#[derive(Subcommand)]
enum QueryCommand {
    /// Services that have sent spans.
    Services(TextOutput),
    /// Recent requests (server, consumer or root spans) of one service, newest first.
    Traces(TracesArgs),
    /// One trace as a tree of spans with durations.
    Trace {
        /// The trace id: 32 hex digits.
        trace_id: String,
        #[command(flatten)]
        output: TextOutput,
    },
    /// Agents that registered, with their last heartbeat and counters.
    Agents(TextOutput),
    /// The CPU profile of one request: per profiled span, its samples, CPU time,
    /// precision and top functions, with a warning when the evidence is weak.
    TraceProfile(TraceProfileArgs),
    /// Compare two cohorts of a service's profiled requests: the functions that are
    /// significantly hotter in one (Mann–Whitney U per function, requests as the unit,
    /// Benjamini–Hochberg across functions; see docs/statistics.md).
    ProfileCompare(ProfileCompareArgs),
}

#[derive(Args)]
struct ProfileCompareArgs {
    /// The service (as in its service.name resource attribute).
    #[arg(long)]
    service: String,
    /// Cohort A, e.g. "duration > 1s", "status = 5xx and url ~ \"/checkout*\"".
    #[arg(long = "cohort-a")]
    cohort_a: String,
    /// Cohort B, e.g. "duration < 100ms".
    #[arg(long = "cohort-b")]
    cohort_b: String,
    /// Requests that started this far back (e.g. 15m, 1h, 2d; at most 30d).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    since: std::time::Duration,
    /// Functions shown.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    top: u32,
    /// Only functions at least this significant.
    #[arg(long, value_enum)]
    min_significance: Option<MinSignificance>,
    /// What to compare: cpu (CPU time), offcpu (time waiting: locks, disk, network,
    /// sleep, run queue), wall (both: where the requests' wall-clock time went) or
    /// memory (memory made resident, in bytes: new pages the requests' page faults
    /// allocated).
    #[arg(long = "type", value_enum, default_value_t = ProfileTypeArg::Cpu)]
    profile_type: ProfileTypeArg,
    /// Output format: text (the cohorts, the functions with delta, CPU ms per request,
    /// q-value and significance, the verdict; "table" is accepted too), json (all of it,
    /// for programs), folded (differential folded stacks) or svg (differential flame
    /// graph: red hotter in A, blue hotter in B).
    #[arg(
        long = "format",
        short = 'o',
        visible_alias = "output",
        value_name = "FORMAT",
        value_enum,
        default_value_t = CompareFormat::Text
    )]
    format: CompareFormat,
    /// Write the output to this file instead of standard output.
    #[arg(long = "output-file", value_name = "PATH")]
    output_file: Option<std::path::PathBuf>,
}

/// `--type`: a profile type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileTypeArg {
    Cpu,
    Offcpu,
    Wall,
    Memory,
}

impl From<ProfileTypeArg> for ProfileType {
    fn from(arg: ProfileTypeArg) -> Self {
        match arg {
            ProfileTypeArg::Cpu => ProfileType::Cpu,
            ProfileTypeArg::Offcpu => ProfileType::Offcpu,
            ProfileTypeArg::Wall => ProfileType::Wall,
            ProfileTypeArg::Memory => ProfileType::Memory,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum MinSignificance {
    Low,
    Medium,
    High,
}

#[derive(Args)]
struct TraceProfileArgs {
    /// The trace id: 32 hex digits.
    trace_id: String,
    /// Only this service's spans (for a trace that crosses services).
    #[arg(long)]
    service: Option<String>,
    /// Which profile: cpu (CPU time), offcpu (time the request's thread waited, by
    /// stack and cause), wall (both) or memory (memory made resident, in bytes, by the
    /// stack that faulted). Every text view opens with where the time (or the memory)
    /// went.
    #[arg(long = "type", value_enum, default_value_t = ProfileTypeArg::Cpu)]
    profile_type: ProfileTypeArg,
    /// Output format: text (a summary per profiled span; "table" is accepted too),
    /// json (each span's profile with its summary, and the spans merged), or the
    /// selected spans merged as folded (folded stacks), svg (flame graph) or pprof
    /// (gzipped profile.proto: needs --output-file or a pipe).
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
    /// Only requests with a stored profile, with what it was collected for (PROFILE:
    /// trigger, baseline or session); see it with `coral query trace-profile`.
    #[arg(long)]
    profiled: bool,
    #[command(flatten)]
    output: TextOutput,
}

pub(crate) fn proto_duration(d: std::time::Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A gRPC error as a person should read it: the colony's message, not the transport's.
pub(crate) fn rpc_error(status: tonic::Status) -> anyhow::Error {
    // A TLS mismatch or refused certificate shows up at the first call: say what to change.
    if let Some((addr, security)) = super::CONNECTED.get()
        && let Some(err) = coral_client::explain_status(addr, security, &status)
    {
        return err.into();
    }
    if coral_client::is_database_unavailable(&status) {
        return anyhow::anyhow!(
            "the colony is running but cannot reach its database: {}. Run \
             the command again once the database is back (the colony reconnects by itself).",
            status.message()
        );
    }
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
        QueryCommand::Trace { trace_id, .. } => output::parse_trace_id(trace_id)?,
        QueryCommand::TraceProfile(t) => {
            output::parse_trace_id(&t.trace_id)?;
            output::profile::check_destination(t.format, t.output_file.as_deref())?;
        }
        _ => {}
    }
    let channel = args.colony.connect().await?;
    let mut client = coral_client::query_client(channel.clone());
    match args.command {
        QueryCommand::Services(out) => {
            let resp = client
                .list_services(v1::ListServicesRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            out.emit(|format, w| output::write_services(w, &resp.services, format))
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
                    profiled: t.profiled,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let spans: Vec<SpanView> = resp.spans.iter().map(SpanView::from).collect();
            t.output.emit(|format, w| {
                output::write_requests(
                    w,
                    &service,
                    &spans,
                    &resp.profile_sources,
                    t.profiled,
                    format,
                )
            })
        }
        QueryCommand::Trace { trace_id, output } => {
            let resp = client
                .get_trace(v1::GetTraceRequest { trace_id })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let spans: Vec<SpanView> = resp.spans.iter().map(SpanView::from).collect();
            if resp.truncated {
                output::note(&format!(
                    "note: the trace has more than {} spans; these are the first {0} by start time",
                    spans.len()
                ));
            }
            output.emit(|format, w| output::write_trace(w, &spans, format))
        }
        QueryCommand::Agents(out) => {
            let resp = client
                .list_agents(v1::ListAgentsRequest {})
                .await
                .map_err(rpc_error)?
                .into_inner();
            out.emit(|format, w| output::write_agents(w, &resp.agents, format))
        }
        QueryCommand::ProfileCompare(c) => {
            let request = v1::CompareTraceProfilesRequest {
                service_id: c.service.clone(),
                cohort_a_filter: c.cohort_a.clone(),
                cohort_b_filter: c.cohort_b.clone(),
                time_range: Some(proto_duration(c.since)),
                top: c.top,
                min_significance: c
                    .min_significance
                    .map(|m| format!("{m:?}").to_lowercase())
                    .unwrap_or_default(),
                differential: matches!(c.format, CompareFormat::Folded | CompareFormat::Svg),
                profile_type: ProfileType::from(c.profile_type).to_string(),
            };
            let resp = coral_client::profile_client(channel)
                .compare_trace_profiles(request)
                .await
                .map_err(rpc_error)?
                .into_inner();
            let cohorts = output::compare::Cohorts {
                service: &c.service,
                a: &c.cohort_a,
                b: &c.cohort_b,
                since_ns: i64::try_from(c.since.as_nanos()).unwrap_or(i64::MAX),
            };
            let mut w = Vec::new();
            let width = output::terminal_width();
            output::compare::write_comparison(&mut w, &cohorts, &resp, c.format, width)?;
            output::emit(&w, c.output_file.as_deref())
        }
        QueryCommand::TraceProfile(t) => {
            let resp = coral_client::profile_client(channel)
                .get_trace_profile(v1::GetTraceProfileRequest {
                    trace_id: t.trace_id.clone(),
                    service: t.service.unwrap_or_default(),
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            if resp.truncated {
                output::note(&format!(
                    "note: the trace has more request profiles than one answer holds; these are \
                     the first {} by start time (--service narrows it)",
                    resp.profiles.len()
                ));
            }
            let mut w = Vec::new();
            output::profile::write_trace_profiles(
                &mut w,
                &t.trace_id,
                &resp,
                t.profile_type.into(),
                t.format,
            )?;
            output::emit(&w, t.output_file.as_deref())
        }
    }
}
