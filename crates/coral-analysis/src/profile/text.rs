//! Compact text for people and LLMs.

use std::io;

use super::{Hotspot, Profile, function_identity};
use crate::duration::format_duration_ns;

/// Writes a compact summary: totals, then the `top` functions by self CPU time and the
/// `top` by total (inclusive) CPU time, one aligned line each. Functions on every stack
/// (the trunk: `_start`, `main`) are named on one line instead of being ranked by
/// total, where their 100 % would hide the function that explains the time:
///
/// ```text
/// 1234 samples, 12.5s CPU, 87 stacks, 412 frames
/// top self:
///    42.1%  self   5.26s  validate_signature (payment-svc)
/// top total:
///    95.9%  total  12.0s  handle_payment (payment-svc)
/// on every stack: _start, __libc_start_main, main
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
    let total = profile.total_cpu_ns();
    let (trunk, branches): (Vec<&Hotspot>, Vec<&Hotspot>) =
        all.iter().partition(|h| h.is_on_every_stack(total));
    let by_total: Vec<&Hotspot> = branches.into_iter().take(top).collect();
    write_section(&mut w, "top total:", "total", &by_total, |h| {
        (h.total_share, h.total_cpu_ns)
    })?;
    if top > 0 && !trunk.is_empty() {
        writeln!(w, "on every stack: {}", trunk_names(profile, &trunk))?;
    }
    Ok(())
}

/// The trunk's functions root first (as the first stack has them), at most
/// [`TRUNK_NAMES`] of them.
fn trunk_names(profile: &Profile, trunk: &[&Hotspot]) -> String {
    let first = profile.stacks.iter().find(|s| s.cpu_ns > 0);
    let depth = |h: &Hotspot| {
        first
            .and_then(|s| {
                s.frames.iter().position(|&fi| {
                    let f = profile.frame(fi);
                    function_identity(&f.function) == h.function.as_str()
                        && f.module == h.module
                        && f.kind == h.kind
                })
            })
            .unwrap_or(usize::MAX)
    };
    let mut ordered: Vec<(usize, &Hotspot)> = trunk.iter().map(|h| (depth(h), *h)).collect();
    ordered.sort_by_key(|(d, _)| *d);
    let mut names: Vec<&str> = ordered
        .iter()
        .take(TRUNK_NAMES)
        .map(|(_, h)| h.function.as_str())
        .collect();
    let more = trunk.len().saturating_sub(TRUNK_NAMES);
    let more = format!("and {more} more");
    if trunk.len() > TRUNK_NAMES {
        names.push(&more);
    }
    names.join(", ")
}

/// The trunk is summarised on one line; a deep one is cut.
const TRUNK_NAMES: usize = 8;

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
