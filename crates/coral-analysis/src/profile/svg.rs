//! Flame graphs as SVG, drawn by inferno.

use std::io;

use inferno::flamegraph::color::{Color, MultiPalette, Palette, PaletteMap};
use inferno::flamegraph::{self, Options};

use super::{FrameKind, Profile, ProfileType, folded_frame_name, folded_lines, is_of_type};
use crate::duration::format_duration_ns;

/// The fill of every wait frame: a blue no frame of the Java palette (reds, yellows,
/// greens, aqua, orange) has, so that a `wall` graph tells waiting from running at a
/// glance, as in Brendan Gregg's off-CPU flame graphs.
pub(crate) const WAIT_FRAME_COLOR: Color = Color {
    r: 70,
    g: 130,
    b: 220,
};

/// The fill of every page frame (`[memory: 4 KiB page]`): a violet outside the Java
/// palette and apart from the wait frames' blue, so the page sizes stand out at the top
/// of a `memory` graph.
pub(crate) const PAGE_FRAME_COLOR: Color = Color {
    r: 150,
    g: 90,
    b: 200,
};

/// Writes an interactive SVG flame graph of the stacks of type `ty` (inferno). Widths
/// are the type's time in microseconds (each stack rounded up), so profiles merged from
/// different sampling frequencies are drawn to scale (a `cpu` profile without CPU time
/// is drawn by sample count), or for `memory` the bytes made resident; the subtitle
/// names the measure, its unit and the totals. Colours are derived from function names
/// (kernel frames orange, their `_[k]` annotation is not shown), wait frames
/// (`[off-cpu: CAUSE]`) have one blue of their own and page frames
/// (`[memory: PAGE]`) one violet, so equal profiles give byte-identical output. An
/// empty profile draws a single `[no samples]` frame.
pub fn write_svg(
    profile: &Profile,
    ty: ProfileType,
    title: &str,
    w: impl io::Write,
) -> io::Result<()> {
    let by_time = ty != ProfileType::Cpu || profile.total(ty) > 0;
    let (mut lines, count_name) = if ty.is_bytes() {
        (folded_lines(profile, |s| ty.value(s)), "bytes")
    } else if by_time {
        (folded_lines(profile, |s| ty.value(s).div_ceil(1_000)), "µs")
    } else {
        let cpu = ProfileType::Cpu;
        (
            folded_lines(profile, |s| if is_of_type(cpu, s) { s.samples } else { 0 }),
            "samples",
        )
    };
    if lines.is_empty() {
        lines.push(("[no samples]".to_string(), 1));
    }
    let lines: Vec<String> = lines
        .into_iter()
        .map(|(line, weight)| format!("{line} {weight}"))
        .collect();
    let mut pseudo_frame_colours = PaletteMap::default();
    for frame in &profile.frames {
        let colour = match frame.kind {
            FrameKind::Wait => WAIT_FRAME_COLOR,
            FrameKind::Page => PAGE_FRAME_COLOR,
            FrameKind::User | FrameKind::Kernel => continue,
        };
        pseudo_frame_colours.insert(folded_frame_name(frame), colour);
    }
    let mut options = Options::default();
    options.title = title.to_string();
    options.count_name = count_name.to_string();
    options.colors = Palette::Multi(MultiPalette::Java);
    options.deterministic = true;
    options.palette_map = Some(&mut pseudo_frame_colours);
    let measure = if by_time {
        format!("{}, {count_name}", ty.measure())
    } else {
        "CPU samples".to_string()
    };
    options.subtitle = Some(format!("{measure}: {}", totals(profile, ty)));
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), w)
}

/// The totals of a profile for `ty`: `100 samples, 1.00s CPU`, `1.01s in 12 waits`,
/// `1.04s: 31.0ms CPU in 3 samples, 1.01s off-CPU in 12 waits`, or
/// `380 MiB made resident in 1214 records`.
fn totals(profile: &Profile, ty: ProfileType) -> String {
    let cpu = || {
        (
            profile.count(ProfileType::Cpu),
            profile.total(ProfileType::Cpu),
        )
    };
    let off = || {
        (
            profile.count(ProfileType::Offcpu),
            profile.total(ProfileType::Offcpu),
        )
    };
    match ty {
        ProfileType::Cpu => {
            let (samples, ns) = cpu();
            format!("{samples} samples, {} CPU", time(ns))
        }
        ProfileType::Offcpu => {
            let (waits, ns) = off();
            format!("{} in {waits} waits", time(ns))
        }
        ProfileType::Wall => {
            let ((samples, cpu_ns), (waits, off_ns)) = (cpu(), off());
            format!(
                "{}: {} CPU in {samples} samples, {} off-CPU in {waits} waits",
                time(cpu_ns.saturating_add(off_ns)),
                time(cpu_ns),
                time(off_ns)
            )
        }
        ProfileType::Memory => format!(
            "{} made resident in {} records",
            super::format_bytes(profile.total(ty)),
            profile.count(ty)
        ),
    }
}

fn time(ns: u64) -> String {
    format_duration_ns(i64::try_from(ns).unwrap_or(i64::MAX))
}
