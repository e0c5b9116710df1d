//! Cohort comparisons as `coral query profile-compare` shows them.

use super::{column_widths, write_json, write_table};
use coral_analysis::profile::{ProfileType, format_bytes};
use coral_client::v1;
use coral_report::ComparisonView;
use std::io::Write;

/// The formats of `coral query profile-compare`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CompareFormat {
    // The cohorts, a table of functions, the verdict.
    #[value(alias = "table")]
    Text,
    // Everything the text says, for programs.
    Json,
    // Differential folded stacks (mean µs, or bytes for memory, per request in A, then B).
    Folded,
    // A differential flame graph (red: hotter in A, blue: hotter in B).
    Svg,
}

/// What was compared, as the user wrote it.
pub struct Cohorts<'a> {
    pub service: &'a str,
    pub a: &'a str,
    pub b: &'a str,
    pub since_ns: i64,
}

/// Fits a function's name into `width` columns without cutting the function itself:
/// the file location (`name /path/to/file.js:30:29`) or the qualifying path
/// (`crate::module::name`, `pkg.Class.name`) gives way, from its middle, keeping its
/// start and its end. A name that cannot fit is left whole (JSON always has it whole).
pub(crate) fn fit_function(name: &str, width: usize) -> String {
    if chars(name) <= width {
        return name.to_string();
    }
    if let Some((function, location)) = name.split_once(' ')
        && !function.is_empty()
    {
        let room = width.saturating_sub(chars(function) + 1);
        return format!("{function} {}", elide_middle(location, room, '/'));
    }
    if let Some(split) = last_separator(name) {
        let (path, function) = name.split_at(split);
        let room = width.saturating_sub(chars(function));
        let sep = if function.starts_with("::") { ':' } else { '.' };
        return format!("{}{function}", elide_middle(path, room, sep));
    }
    name.to_string()
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// The byte index of the last `::` (or, without one, `.`) outside brackets: where the
/// function's own name starts.
fn last_separator(name: &str) -> Option<usize> {
    let bytes = name.as_bytes();
    let mut depth = 0i32;
    let mut last_colons = None;
    let mut last_dot = None;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'<' | b'(' | b'[' => depth += 1,
            b'>' | b')' | b']' => depth -= 1,
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b':') && i > 0 => last_colons = Some(i),
            b'.' if depth == 0 && i > 0 => last_dot = Some(i),
            _ => {}
        }
    }
    last_colons.or(last_dot)
}

/// `s` in at most `room` columns: its start, `…`, and its end, the end keeping its last
/// `sep`-separated part whole when it can (`/work/…/server.js:30:29`).
fn elide_middle(s: &str, room: usize, sep: char) -> String {
    let n = chars(s);
    if n <= room {
        return s.to_string();
    }
    if room <= 1 {
        return "…".to_string();
    }
    let all: Vec<char> = s.chars().collect();
    let last_part = s.rfind(sep).map_or(n, |i| chars(&s[i..]));
    // The end is worth more than the start: at least two thirds of the room.
    let tail = last_part.max((room - 1) * 2 / 3).min(room - 1);
    let head = room - 1 - tail;
    let start: String = all[..head].iter().collect();
    let end: String = all[n - tail..].iter().collect();
    format!("{start}…{end}")
}

fn q_value(q: f64) -> String {
    if q < 0.001 {
        "<0.001".to_string()
    } else {
        format!("{q:.3}")
    }
}

/// The type the colony compared (`cpu` from a colony that does not say).
fn profile_type(r: &v1::CompareTraceProfilesResponse) -> ProfileType {
    r.profile_type.parse().unwrap_or(ProfileType::Cpu)
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A per-request value of `ty` from the wire (milliseconds, or bytes for memory).
fn per_request(v: f64, ty: ProfileType) -> String {
    if ty.is_bytes() {
        format_bytes(v.max(0.0).round() as u64)
    } else {
        ms(v)
    }
}

/// The table's columns, FUNCTION first; the per-request columns named by `ty`'s unit.
fn header(ty: ProfileType) -> [&'static str; 7] {
    let (a, b) = if ty.is_bytes() {
        ("A MEM/REQ", "B MEM/REQ")
    } else {
        ("A MS/REQ", "B MS/REQ")
    };
    ["FUNCTION", "DELTA", a, b, "Q-VALUE", "SIGNIFICANCE", ""]
}

fn write_text(
    out: &mut Vec<u8>,
    c: &Cohorts<'_>,
    r: &v1::CompareTraceProfilesResponse,
    width: usize,
) -> std::io::Result<()> {
    let ty = profile_type(r);
    writeln!(out, "{} · {}", c.service, ty.measure())?;
    // What a cohort line's mean is per type.
    let unit = match ty {
        ProfileType::Cpu => "ms CPU",
        ProfileType::Offcpu => "ms off-CPU",
        ProfileType::Wall => "ms wall-clock",
        ProfileType::Memory => "made resident",
    };
    let observations = if ty.is_bytes() {
        "memory records"
    } else {
        "samples"
    };
    for (name, filter, requests, with_samples, samples, cpu) in [
        (
            "A",
            c.a,
            r.cohort_a_requests,
            r.cohort_a_requests_with_samples,
            r.cohort_a_sample_count,
            r.cohort_a_mean_cpu_ms,
        ),
        (
            "B",
            c.b,
            r.cohort_b_requests,
            r.cohort_b_requests_with_samples,
            r.cohort_b_sample_count,
            r.cohort_b_mean_cpu_ms,
        ),
    ] {
        writeln!(
            out,
            "  cohort {name}: {filter} · {requests} requests ({with_samples} with {observations}) · \
             {samples} {observations} · {} {unit} per request",
            per_request(cpu, ty)
        )?;
    }
    if !r.hotspots.is_empty() {
        let mut rows: Vec<Vec<String>> = r
            .hotspots
            .iter()
            .map(|h| {
                vec![
                    h.function.clone(),
                    format!("{:+.1}pp", h.delta_percentage),
                    per_request(h.cohort_a_cpu_ms_per_request, ty),
                    per_request(h.cohort_b_cpu_ms_per_request, ty),
                    q_value(h.q_value),
                    h.significance.clone(),
                    match h.only_in.as_str() {
                        "a" => "A only".to_string(),
                        "b" => "B only".to_string(),
                        _ => String::new(),
                    },
                ]
            })
            .collect();
        // What the other columns leave to FUNCTION (two spaces between columns).
        let header = header(ty);
        let widths = column_widths(&header, &rows);
        // (The last column, "A only"/"B only", takes no room when it is empty.)
        let mut others: usize = widths[1..].iter().map(|w| w + 2).sum();
        if widths.last() == Some(&0) {
            others -= 2;
        }
        let room = width.saturating_sub(others).max(header[0].len());
        for row in &mut rows {
            row[0] = fit_function(&row[0], room);
        }
        write_table(out, &header, &rows)?;
        let per_request = if ty.is_bytes() { "" } else { "ms of " };
        writeln!(
            out,
            "(delta: percentage points of request {0}, + hotter in A; {per_request}{0} per request in the function, inclusive)",
            ty.measure()
        )?;
    }
    if !r.verdict.is_empty() {
        writeln!(out, "Verdict: {}", r.verdict)?;
    }
    Ok(())
}

/// Renders the comparison in `format`. Warnings go to standard error, except in JSON,
/// which carries them.
pub fn write_comparison(
    out: &mut Vec<u8>,
    c: &Cohorts<'_>,
    r: &v1::CompareTraceProfilesResponse,
    format: CompareFormat,
    width: usize,
) -> anyhow::Result<()> {
    match format {
        CompareFormat::Text => write_text(out, c, r, width)?,
        CompareFormat::Json => write_json(
            out,
            &ComparisonView::new(c.service, c.since_ns, c.a, c.b, r),
        )?,
        CompareFormat::Folded => out.extend_from_slice(r.differential_folded.as_bytes()),
        CompareFormat::Svg => {
            let title = format!("{}: {} (A) vs {} (B)", c.service, c.a, c.b);
            coral_analysis::compare::write_differential_svg(
                &r.differential_folded,
                profile_type(r),
                &title,
                out,
            )?;
        }
    }
    if format != CompareFormat::Json {
        for warning in &r.warnings {
            super::warn(warning);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_give_up_their_path_never_the_function() {
        assert_eq!(fit_function("validate_signature", 10), "validate_signature");
        let node = "validateToken /work/app/node_modules/@corp/auth/lib/server.js:30:29";
        let fitted = fit_function(node, 40);
        assert_eq!(chars(&fitted), 40, "{fitted}");
        assert!(fitted.starts_with("validateToken /"), "{fitted}");
        assert!(fitted.ends_with("/server.js:30:29"), "{fitted}");
        assert!(fitted.contains('…'), "{fitted}");

        let rust = format!(
            "payment_svc::{}::handlers::validate_signature",
            "deep".repeat(20)
        );
        let fitted = fit_function(&rust, 50);
        assert_eq!(chars(&fitted), 50, "{fitted}");
        assert!(fitted.starts_with("payment_"), "{fitted}");
        assert!(
            fitted.ends_with("::handlers::validate_signature"),
            "{fitted}"
        );

        // Too narrow for any path: the function's own name stays whole.
        let fitted = fit_function("a::b::c::a_rather_long_function_name", 10);
        assert!(
            fitted.ends_with("::a_rather_long_function_name"),
            "{fitted}"
        );
        assert_eq!(
            fit_function("a_rather_long_function_name", 10),
            "a_rather_long_function_name"
        );
    }

    #[test]
    fn the_table_fits_the_width() {
        let hotspot = |function: &str| v1::DifferentialHotspot {
            function: function.into(),
            delta_percentage: 61.5,
            cohort_a_cpu_ms_per_request: 812.0,
            cohort_b_cpu_ms_per_request: 3.2,
            q_value: 0.0001,
            significance: "high".into(),
            ..Default::default()
        };
        let r = v1::CompareTraceProfilesResponse {
            hotspots: vec![
                hotspot("validateToken /work/app/node_modules/@corp/auth/lib/server.js:30:29"),
                hotspot("main"),
            ],
            ..Default::default()
        };
        let c = Cohorts {
            service: "svc",
            a: "duration > 1s",
            b: "duration < 100ms",
            since_ns: 0,
        };
        for width in [80, 100, 160] {
            let mut out = Vec::new();
            write_text(&mut out, &c, &r, width).unwrap();
            let text = String::from_utf8(out).unwrap();
            let row = text
                .lines()
                .find(|l| l.starts_with("validateToken"))
                .unwrap();
            assert!(chars(row) <= width, "{width}: {row}");
            assert!(row.starts_with("validateToken "), "{row}");
            if width >= 100 {
                assert!(row.contains("/server.js:30:29"), "{row}");
            }
        }
    }

    #[test]
    fn a_memory_comparison_shows_bytes_per_request() {
        let r = v1::CompareTraceProfilesResponse {
            profile_type: "memory".into(),
            cohort_a_requests: 12,
            cohort_a_requests_with_samples: 12,
            cohort_a_sample_count: 7200,
            cohort_a_mean_cpu_ms: 314_572_800.0,
            hotspots: vec![v1::DifferentialHotspot {
                function: "grab_block".into(),
                delta_percentage: 96.0,
                cohort_a_cpu_ms_per_request: 301_989_888.0,
                q_value: 0.0001,
                significance: "high".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let c = Cohorts {
            service: "svc",
            a: "duration > 1s",
            b: "duration < 100ms",
            since_ns: 0,
        };
        let mut out = Vec::new();
        write_text(&mut out, &c, &r, 120).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("svc · memory made resident\n"), "{text}");
        assert!(
            text.contains(
                "cohort A: duration > 1s · 12 requests (12 with memory records) · 7200 memory \
                 records · 300 MiB made resident per request"
            ),
            "{text}"
        );
        assert!(text.contains("A MEM/REQ"), "{text}");
        let row = text.lines().find(|l| l.starts_with("grab_block")).unwrap();
        assert!(row.contains("288 MiB") && row.contains("0 B"), "{row}");
        assert!(
            !text.contains("MS/REQ") && !text.contains("ms of"),
            "{text}"
        );
    }
}
