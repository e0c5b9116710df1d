//! Profiles as people and tools read them.

use coral_analysis::profile::{Profile, write_folded, write_pprof, write_svg, write_text_summary};
use std::io::{IsTerminal, Write};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileFormat {
    Text,
    Folded,
    Svg,
    Pprof,
    Json,
}

/// How many functions the text summary lists.
pub const TOP_FUNCTIONS: usize = 10;

/// Refuses to write a binary format to a terminal, before any work is done.
pub fn check_destination(format: ProfileFormat, output: Option<&Path>) -> anyhow::Result<()> {
    anyhow::ensure!(
        !(format == ProfileFormat::Pprof && output.is_none() && std::io::stdout().is_terminal()),
        "pprof is a binary format: write it to a file (--output-file FILE; -o FILE for `profile cpu`) or pipe it"
    );
    Ok(())
}

/// Writes a profile in `format` to the file, or to standard output.
pub fn write_profile(
    profile: &Profile,
    title: &str,
    format: ProfileFormat,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let mut buffer = Vec::new();
    match format {
        ProfileFormat::Text => write_text_summary(profile, TOP_FUNCTIONS, &mut buffer)?,
        ProfileFormat::Folded => write_folded(profile, &mut buffer)?,
        ProfileFormat::Svg => write_svg(profile, title, &mut buffer)?,
        ProfileFormat::Pprof => write_pprof(profile, &mut buffer)?,
        ProfileFormat::Json => {
            serde_json::to_writer_pretty(&mut buffer, profile)?;
            buffer.push(b'\n');
        }
    }
    match output {
        Some(path) => {
            std::fs::write(path, &buffer)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!("wrote {} ({} bytes)", path.display(), buffer.len());
        }
        None => std::io::stdout().lock().write_all(&buffer)?,
    }
    Ok(())
}

/// One request's profiles: a section per span in text, else the spans merged.
pub fn print_trace_profiles(
    trace_id: &str,
    profiles: &[coral_client::v1::TraceProfile],
    format: ProfileFormat,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let mut merged = Profile::new();
    let mut text = Vec::new();
    for p in profiles {
        let profile =
            coral_client::profile::profile_from_wire(p.profile.clone().unwrap_or_default())
                .map_err(|e| anyhow::anyhow!("the colony sent an invalid profile: {e}"))?;
        let (samples, cpu_ns) = (profile.total_samples(), profile.total_cpu_ns());
        if format == ProfileFormat::Text {
            writeln!(
                text,
                "{} · {} · {} · {} samples · on CPU {} · {} precision",
                p.service,
                p.span_name,
                coral_analysis::format_duration_ns(p.duration_ns),
                samples,
                coral_analysis::format_duration_ns(cpu_ns as i64),
                p.precision
            )?;
            for warning in coral_client::profile::evidence_warnings(p, samples, cpu_ns) {
                writeln!(text, "warning: {warning}")?;
            }
            if samples > 0 {
                write_text_summary(&profile, TOP_FUNCTIONS, &mut text)?;
            }
            writeln!(text)?;
        }
        merged.merge(&profile);
    }
    if format == ProfileFormat::Text {
        std::io::stdout().lock().write_all(&text)?;
        return Ok(());
    }
    write_profile(&merged, &format!("trace {trace_id}"), format, output)
}
