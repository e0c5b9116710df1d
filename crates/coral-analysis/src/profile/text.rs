//! Compact text for people and LLMs.

use std::io;

use super::{Hotspot, Profile};
use crate::duration::format_duration_ns;

/// Writes a compact summary: totals, then the `top` functions by self CPU time and the
/// `top` by total (inclusive) CPU time, one aligned line each:
///
/// ```text
/// 1234 samples, 12.5s CPU, 87 stacks, 412 frames
/// top self:
///    42.1%  self   5.26s  validate_signature (payment-svc)
/// top total:
///    98.0%  total  12.3s  main (payment-svc)
/// ```
pub fn write_text_summary(profile: &Profile, top: usize, mut w: impl io::Write) -> io::Result<()> {
    writeln!(
        w,
        "{} samples, {} CPU, {} stacks, {} frames",
        profile.total_samples(),
        ns(profile.total_cpu_ns()),
        profile.stacks.len(),
        profile.frames.len()
    )?;
    if profile.is_empty() {
        writeln!(w, "(no samples)")?;
        return Ok(());
    }
    let mut all = profile.all_hotspots();
    let by_self: Vec<&Hotspot> = all.iter().filter(|h| h.self_cpu_ns > 0).take(top).collect();
    write_section(&mut w, "top self:", "self ", &by_self, |h| {
        (h.self_share, h.self_cpu_ns)
    })?;
    drop(by_self);
    all.sort_by(super::cmp_total);
    let by_total: Vec<&Hotspot> = all.iter().take(top).collect();
    write_section(&mut w, "top total:", "total", &by_total, |h| {
        (h.total_share, h.total_cpu_ns)
    })
}

fn write_section(
    w: &mut impl io::Write,
    heading: &str,
    label: &str,
    rows: &[&Hotspot],
    value: impl Fn(&Hotspot) -> (f64, u64),
) -> io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(w, "{heading}")?;
    let cells: Vec<(String, String)> = rows
        .iter()
        .map(|h| {
            let (share, cpu) = value(h);
            (format!("{:.1}%", share * 100.0), ns(cpu))
        })
        .collect();
    let time_width = cells
        .iter()
        .map(|(_, t)| t.chars().count())
        .max()
        .unwrap_or(0);
    for (h, (pct, time)) in rows.iter().zip(&cells) {
        let pad = time_width - time.chars().count();
        writeln!(
            w,
            "  {pct:>6}  {label}  {}{time}  {} ({})",
            " ".repeat(pad),
            h.function,
            h.module
        )?;
    }
    Ok(())
}

fn ns(v: u64) -> String {
    format_duration_ns(i64::try_from(v).unwrap_or(i64::MAX))
}
