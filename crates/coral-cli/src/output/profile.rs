//! Profiles as people and tools read them.

use super::write_json;
use coral_analysis::format_duration_ns;
use coral_analysis::profile::{
    Profile, ProfileType, write_folded, write_pprof, write_svg, write_text_summary,
};
use coral_client::profile::{has_type, missing_type_reason, no_off_cpu_reason};
use coral_client::v1;
use coral_report::{
    MergedProfileView, ProfileCpuView, RequestProfileView, RequestProfileWithStacks,
    TraceProfileView,
};
use std::io::{IsTerminal, Write};
use std::path::Path;

/// The formats of the commands that print a profile (`trace-profile`, `profile cpu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileFormat {
    // A summary: samples, CPU time, top functions, warnings.
    #[value(alias = "table")]
    Text,
    // Brendan Gregg's folded stacks.
    Folded,
    // A flame graph.
    Svg,
    // Gzipped profile.proto (go tool pprof, Speedscope, Pyroscope).
    Pprof,
    // Everything the text says, and the stacks.
    Json,
}

/// How many functions the text summary lists.
pub const TOP_FUNCTIONS: usize = 10;

/// Refuses to write a binary format to a terminal, before any work is done.
pub fn check_destination(format: ProfileFormat, file: Option<&Path>) -> anyhow::Result<()> {
    anyhow::ensure!(
        !(format == ProfileFormat::Pprof && file.is_none() && std::io::stdout().is_terminal()),
        "pprof is a binary format: write it to a file (--output-file FILE) or pipe it"
    );
    Ok(())
}

/// A profile in one of the stack formats (folded, svg, pprof).
fn write_stacks(
    out: &mut Vec<u8>,
    profile: &Profile,
    ty: ProfileType,
    title: &str,
    format: ProfileFormat,
) -> std::io::Result<()> {
    match format {
        ProfileFormat::Folded => write_folded(profile, ty, out),
        ProfileFormat::Svg => write_svg(profile, ty, title, out),
        ProfileFormat::Pprof => write_pprof(profile, ty, out),
        ProfileFormat::Text | ProfileFormat::Json => {
            unreachable!("text and json are written by their command")
        }
    }
}

fn from_wire(p: Option<v1::Profile>) -> anyhow::Result<Profile> {
    coral_client::profile::profile_from_wire(p.unwrap_or_default())
        .map_err(|e| anyhow::anyhow!("the colony sent an invalid profile: {e}"))
}

/// `coral profile cpu`: the header line and top functions, the JSON view, or the
/// profile in a stack format. Warnings go to standard error in every format but JSON
/// (which carries them).
pub fn write_cpu_profile(
    out: &mut Vec<u8>,
    service: &str,
    response: &v1::ProfileCpuResponse,
    format: ProfileFormat,
) -> anyhow::Result<()> {
    let profile = from_wire(response.profile.clone())?;
    if format != ProfileFormat::Json {
        for warning in &response.warnings {
            super::warn(warning);
        }
    }
    match format {
        ProfileFormat::Text => {
            let hosts: Vec<String> = response
                .agents
                .iter()
                .filter(|a| a.processes > 0)
                .map(|a| {
                    format!(
                        "{} ({} process(es), {} samples)",
                        a.node, a.processes, a.samples
                    )
                })
                .collect();
            writeln!(
                out,
                "{} · {} at {} Hz · {}",
                service,
                format_duration_ns(response.duration_ns),
                response.frequency_hz,
                if hosts.is_empty() {
                    "no agent hosts it".to_string()
                } else {
                    hosts.join(", ")
                }
            )?;
            write_text_summary(&profile, ProfileType::Cpu, TOP_FUNCTIONS, out)?;
        }
        ProfileFormat::Json => write_json(
            out,
            &ProfileCpuView::new(service, response, profile, TOP_FUNCTIONS),
        )?,
        _ => {
            let title = format!(
                "{service} CPU, {}",
                format_duration_ns(response.duration_ns)
            );
            write_stacks(out, &profile, ProfileType::Cpu, &title, format)?;
        }
    }
    Ok(())
}

/// `coral query trace-profile`: a section per profiled span in text, each opening with
/// where the request's time went; in JSON each span with its own profile and the spans
/// merged; the merged profile in the stack formats. With `ty` offcpu or wall, spans
/// without off-CPU records are named and left out of the merged profile, and a trace
/// with none is an error; the same with `ty` memory for spans without memory records,
/// whose text sections open with the memory they made resident instead.
pub fn write_trace_profiles(
    out: &mut Vec<u8>,
    trace_id: &str,
    response: &v1::GetTraceProfileResponse,
    ty: ProfileType,
    format: ProfileFormat,
) -> anyhow::Result<()> {
    if let Some(first) = response.profiles.first()
        && !response.profiles.iter().any(|p| has_type(p, ty))
    {
        if ty == ProfileType::Memory {
            anyhow::bail!(
                "no memory profile for trace {trace_id}: {}; use --type cpu",
                missing_type_reason(first, ty)
            );
        }
        anyhow::bail!(
            "no {ty} profile for trace {trace_id}: its requests recorded no off-CPU time ({}); \
             use --type cpu",
            no_off_cpu_reason(first)
        );
    }
    let mut merged = Profile::new();
    let mut spans = Vec::with_capacity(response.profiles.len());
    for p in &response.profiles {
        let profile = from_wire(p.profile.clone())?;
        if has_type(p, ty) {
            merged.merge(&profile);
        }
        spans.push(RequestProfileWithStacks {
            summary: RequestProfileView::new(p, &profile, ty, TOP_FUNCTIONS),
            profile,
        });
    }
    match format {
        ProfileFormat::Text => {
            for (span, p) in spans.iter().zip(&response.profiles) {
                let s = &span.summary;
                writeln!(
                    out,
                    "{} · {} · {} · {} samples · on CPU {} · {} precision",
                    s.service,
                    s.span_name,
                    format_duration_ns(s.duration_ns),
                    s.samples,
                    format_duration_ns(s.cpu_ns as i64),
                    s.precision
                )?;
                match (&s.memory, ty) {
                    (Some(memory), ProfileType::Memory) => writeln!(out, "{}", memory.summary)?,
                    _ => writeln!(out, "{}", s.breakdown.summary)?,
                }
                for warning in &s.warnings {
                    writeln!(out, "warning: {warning}")?;
                }
                if !has_type(p, ty) {
                    // A memory view's warnings already say why.
                    if ty != ProfileType::Memory {
                        writeln!(out, "no {ty} profile: {}", no_off_cpu_reason(p))?;
                    }
                } else if s.total.value() > 0 {
                    write_text_summary(&span.profile, ty, TOP_FUNCTIONS, &mut *out)?;
                }
                writeln!(out)?;
            }
        }
        ProfileFormat::Json => write_json(
            out,
            &TraceProfileView {
                trace_id: trace_id.to_string(),
                truncated: response.truncated,
                spans,
                merged: MergedProfileView::new(merged, ty, TOP_FUNCTIONS),
            },
        )?,
        _ => {
            let title = format!("trace {trace_id}, {}", ty.measure());
            write_stacks(out, &merged, ty, &title, format)?;
        }
    }
    Ok(())
}
