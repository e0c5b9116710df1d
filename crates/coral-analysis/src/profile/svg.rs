//! Flame graphs as SVG, drawn by inferno.

use std::io;

use inferno::flamegraph::{self, Options, color::MultiPalette, color::Palette};

use super::{Profile, folded_lines};

/// Writes an interactive SVG flame graph of the profile (inferno). Widths are CPU time
/// in microseconds, so profiles merged from different sampling frequencies are drawn
/// to scale (sample counts when the profile carries no CPU time); colours are derived
/// from function names (kernel frames orange, their `_[k]` annotation is not shown), so
/// equal profiles give byte-identical output. An empty profile draws a single
/// `[no samples]` frame.
pub fn write_svg(profile: &Profile, title: &str, w: impl io::Write) -> io::Result<()> {
    let (mut lines, count_name) = if profile.total_cpu_ns() > 0 {
        (folded_lines(profile, |s| s.cpu_ns.div_ceil(1_000)), "µs")
    } else {
        (folded_lines(profile, |s| s.samples), "samples")
    };
    if lines.is_empty() {
        lines.push(("[no samples]".to_string(), 1));
    }
    let lines: Vec<String> = lines
        .into_iter()
        .map(|(line, weight)| format!("{line} {weight}"))
        .collect();
    let mut options = Options::default();
    options.title = title.to_string();
    options.count_name = count_name.to_string();
    options.colors = Palette::Multi(MultiPalette::Java);
    options.deterministic = true;
    options.subtitle = Some(format!(
        "{} samples, {} CPU",
        profile.total_samples(),
        crate::duration::format_duration_ns(
            i64::try_from(profile.total_cpu_ns()).unwrap_or(i64::MAX)
        )
    ));
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), w)
}
