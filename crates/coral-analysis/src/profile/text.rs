//! Compact text for people and LLMs.

use std::io;

use super::{FrameKind, Hotspot, Profile, ProfileType, WeightedStack, function_name, is_of_type};
use crate::duration::format_duration_ns;

/// Writes a compact summary of the stacks of type `ty`: totals, then the `top`
/// functions by self time and the `top` by total (inclusive) time, one aligned line
/// each. Functions on every stack (the trunk: `_start`, `main`) are named on one line
/// instead of being ranked by total, where their 100 % would hide the function that
/// explains the time. The first line says the type's total:
///
/// ```text
/// 1234 samples, 12.5s CPU, 87 stacks, 412 frames                           (cpu)
/// 1.01s off-CPU in 12 waits, 3 stacks, 9 frames                            (offcpu)
/// 1.04s wall-clock: 31.0ms CPU in 3 samples, 1.01s off-CPU in 12 waits, …  (wall)
/// 380 MiB made resident (huge pages 260 MiB) in 1214 records, 5 stacks, …  (memory)
/// ```
///
/// then, for `cpu`:
///
/// ```text
/// top self:
///    42.1%  self   5.26s  validate_signature (payment-svc)
/// top total:
///    95.9%  total  12.0s  handle_payment (payment-svc)
/// on every stack: _start, __libc_start_main, main
/// ```
///
/// Values are times, or bytes for `memory` (`  96.0%  total  365 MiB  grab_block (svc)`).
/// Wait and page frames are listed by their `[off-cpu: CAUSE]` and `[memory: PAGE]`
/// names, without a module; in a `memory` profile the page frames hold all self bytes.
pub fn write_text_summary(
    profile: &Profile,
    ty: ProfileType,
    top: usize,
    mut w: impl io::Write,
) -> io::Result<()> {
    let stacks: Vec<&WeightedStack> = profile
        .stacks
        .iter()
        .filter(|s| is_of_type(ty, s))
        .collect();
    let mut frames: Vec<u32> = stacks
        .iter()
        .flat_map(|s| s.frames.iter().copied())
        .collect();
    frames.sort_unstable();
    frames.dedup();
    writeln!(
        w,
        "{}, {} stacks, {} frames",
        totals(profile, ty),
        stacks.len(),
        frames.len()
    )?;
    if stacks.is_empty() {
        let nothing = match ty {
            ProfileType::Cpu | ProfileType::Wall => "(no samples)",
            ProfileType::Offcpu => "(no waits)",
            ProfileType::Memory => "(no memory records)",
        };
        writeln!(w, "{nothing}")?;
        return Ok(());
    }
    let mut all = profile.all_hotspots(ty);
    if ty == ProfileType::Memory {
        // Every memory stack ends in its page frame, which holds all self bytes: the
        // call paths say where the memory was made resident.
        write_top_stacks(&mut w, profile, ty, top)?;
    } else {
        let by_self: Vec<&Hotspot> = all.iter().filter(|h| h.self_ns > 0).take(top).collect();
        write_section(&mut w, ty, "top self:", "self ", &by_self, |h| {
            (h.self_share, h.self_ns)
        })?;
    }
    all.sort_by(super::cmp_total);
    let total = profile.total(ty);
    let (trunk, branches): (Vec<&Hotspot>, Vec<&Hotspot>) =
        all.iter().partition(|h| h.is_on_every_stack(total));
    let by_total: Vec<&Hotspot> = branches.into_iter().take(top).collect();
    write_section(&mut w, ty, "top total:", "total", &by_total, |h| {
        (h.total_share, h.total_ns)
    })?;
    if top > 0 && !trunk.is_empty() {
        writeln!(w, "on every stack: {}", trunk_names(profile, ty, &trunk))?;
    }
    Ok(())
}

/// The first words of the summary: the type's total and what it was measured from.
fn totals(profile: &Profile, ty: ProfileType) -> String {
    let (samples, cpu_ns) = (
        profile.count(ProfileType::Cpu),
        profile.total(ProfileType::Cpu),
    );
    let (waits, off_cpu_ns) = (
        profile.count(ProfileType::Offcpu),
        profile.total(ProfileType::Offcpu),
    );
    match ty {
        ProfileType::Cpu => format!("{samples} samples, {} CPU", ns(cpu_ns)),
        ProfileType::Offcpu => format!("{} off-CPU in {waits} waits", ns(off_cpu_ns)),
        ProfileType::Wall => format!(
            "{} wall-clock: {} CPU in {samples} samples, {} off-CPU in {waits} waits",
            ns(cpu_ns.saturating_add(off_cpu_ns)),
            ns(cpu_ns),
            ns(off_cpu_ns)
        ),
        ProfileType::Memory => {
            let memory = profile.memory_breakdown();
            format!(
                "{} made resident (huge pages {}) in {} records",
                super::format_bytes(memory.resident_bytes),
                super::format_bytes(memory.huge_page_bytes),
                memory.records
            )
        }
    }
}

/// The trunk's functions root first (as the first stack has them). A trunk of more than
/// [`TRUNK_NAMES`] keeps its outermost and its innermost functions: the innermost say
/// most (all of a request's memory under `grab_block`).
fn trunk_names(profile: &Profile, ty: ProfileType, trunk: &[&Hotspot]) -> String {
    let first = profile.stacks.iter().find(|s| ty.value(s) > 0);
    let depth = |h: &Hotspot| {
        first
            .and_then(|s| {
                s.frames.iter().position(|&fi| {
                    let f = profile.frame(fi);
                    function_name(f) == h.function.as_str()
                        && f.module == h.module
                        && f.kind == h.kind
                })
            })
            .unwrap_or(usize::MAX)
    };
    let mut ordered: Vec<(usize, &Hotspot)> = trunk.iter().map(|h| (depth(h), *h)).collect();
    ordered.sort_by_key(|(d, _)| *d);
    let names: Vec<&str> = ordered.iter().map(|(_, h)| h.function.as_str()).collect();
    if names.len() <= TRUNK_NAMES {
        return names.join(", ");
    }
    let (outer, inner) = (TRUNK_NAMES_OUTER, TRUNK_NAMES - TRUNK_NAMES_OUTER);
    format!(
        "{}, … {} more …, {}",
        names[..outer].join(", "),
        names.len() - TRUNK_NAMES,
        names[names.len() - inner..].join(", ")
    )
}

/// Of the [`TRUNK_NAMES`] of a cut trunk, how many are its outermost.
const TRUNK_NAMES_OUTER: usize = 3;

/// The trunk is summarised on one line; a deep one is cut.
const TRUNK_NAMES: usize = 8;

/// Frames of a call path in the `top stacks` section: the innermost, where the path
/// says most.
pub const TOP_STACK_DEPTH: usize = 8;

/// The `top` stacks by value, each as its innermost call path:
///
/// ```text
/// top stacks:
///    98.4%  306 MiB  … → build_snapshot → grab_block → alloc::vec::from_elem → __memset_avx2_unaligned_erms → [memory: 4 KiB page]
/// ```
fn write_top_stacks(
    w: &mut impl io::Write,
    profile: &Profile,
    ty: ProfileType,
    top: usize,
) -> io::Result<()> {
    let stacks = profile.top_stacks(ty, top, TOP_STACK_DEPTH);
    if stacks.is_empty() {
        return Ok(());
    }
    writeln!(w, "top stacks:")?;
    let values: Vec<String> = stacks.iter().map(|s| value_text(ty, s.value)).collect();
    let width = values.iter().map(|v| v.chars().count()).max().unwrap_or(0);
    for (stack, value) in stacks.iter().zip(&values) {
        let pct = format!("{:.1}%", stack.share * 100.0);
        writeln!(w, "  {pct:>6}  {value:>width$}  {}", stack.path())?;
    }
    Ok(())
}

/// A value of `ty` for people: a time, or bytes for `memory`.
fn value_text(ty: ProfileType, v: u64) -> String {
    if ty.is_bytes() {
        super::format_bytes(v)
    } else {
        ns(v)
    }
}

fn write_section(
    w: &mut impl io::Write,
    ty: ProfileType,
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
            let (share, v) = value(h);
            (format!("{:.1}%", share * 100.0), value_text(ty, v))
        })
        .collect();
    let time_width = cells
        .iter()
        .map(|(_, t)| t.chars().count())
        .max()
        .unwrap_or(0);
    for (h, (pct, time)) in rows.iter().zip(&cells) {
        let pad = time_width - time.chars().count();
        let pad = " ".repeat(pad);
        if matches!(h.kind, FrameKind::Wait | FrameKind::Page) {
            writeln!(w, "  {pct:>6}  {label}  {pad}{time}  {}", h.function)?;
        } else {
            writeln!(
                w,
                "  {pct:>6}  {label}  {pad}{time}  {} ({})",
                h.function, h.module
            )?;
        }
    }
    Ok(())
}

fn ns(v: u64) -> String {
    format_duration_ns(i64::try_from(v).unwrap_or(i64::MAX))
}
