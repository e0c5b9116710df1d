//! Cohort comparisons as `coral query profile-compare` shows them.

use super::{print_json, print_table};
use crate::commands::query::CompareFormat;
use coral_client::v1;
use serde::Serialize;
use std::io::Write;
use std::path::Path;

/// What was compared, as the user wrote it.
pub struct Cohorts<'a> {
    pub service: &'a str,
    pub a: &'a str,
    pub b: &'a str,
}

#[derive(Serialize)]
struct CohortView<'a> {
    filter: &'a str,
    requests: u32,
    samples: i32,
    mean_cpu_ms: f64,
}

#[derive(Serialize)]
struct FunctionView<'a> {
    function: &'a str,
    module: &'a str,
    delta_pp: f32,
    self_delta_pp: f32,
    a_cpu_ms_per_request: f64,
    b_cpu_ms_per_request: f64,
    a_self_cpu_ms_per_request: f64,
    b_self_cpu_ms_per_request: f64,
    p_value: f64,
    q_value: f64,
    effect_size: f64,
    significance: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    only_in: Option<&'a str>,
}

#[derive(Serialize)]
struct ComparisonView<'a> {
    service: &'a str,
    cohort_a: CohortView<'a>,
    cohort_b: CohortView<'a>,
    functions: Vec<FunctionView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verdict: Option<&'a str>,
    warnings: &'a [String],
}

fn view<'a>(c: &Cohorts<'a>, r: &'a v1::CompareTraceProfilesResponse) -> ComparisonView<'a> {
    ComparisonView {
        service: c.service,
        cohort_a: CohortView {
            filter: c.a,
            requests: r.cohort_a_requests,
            samples: r.cohort_a_sample_count,
            mean_cpu_ms: r.cohort_a_mean_cpu_ms,
        },
        cohort_b: CohortView {
            filter: c.b,
            requests: r.cohort_b_requests,
            samples: r.cohort_b_sample_count,
            mean_cpu_ms: r.cohort_b_mean_cpu_ms,
        },
        functions: r
            .hotspots
            .iter()
            .map(|h| FunctionView {
                function: &h.function,
                module: &h.module,
                delta_pp: h.delta_percentage,
                self_delta_pp: h.self_delta_percentage,
                a_cpu_ms_per_request: h.cohort_a_cpu_ms_per_request,
                b_cpu_ms_per_request: h.cohort_b_cpu_ms_per_request,
                a_self_cpu_ms_per_request: h.cohort_a_self_cpu_ms,
                b_self_cpu_ms_per_request: h.cohort_b_self_cpu_ms,
                p_value: h.p_value,
                q_value: h.q_value,
                effect_size: h.effect_size,
                significance: &h.significance,
                only_in: (!h.only_in.is_empty()).then_some(h.only_in.as_str()),
            })
            .collect(),
        verdict: (!r.verdict.is_empty()).then_some(r.verdict.as_str()),
        warnings: &r.warnings,
    }
}

/// Long (generic, fully qualified) names keep their informative end in the table;
/// JSON has them whole.
fn short_name(name: &str) -> String {
    const MAX: usize = 60;
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= MAX {
        return name.to_string();
    }
    let tail: String = chars[chars.len() - (MAX - 1)..].iter().collect();
    format!("…{tail}")
}

fn q_value(q: f64) -> String {
    if q < 0.001 {
        "<0.001".to_string()
    } else {
        format!("{q:.3}")
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn print_text(c: &Cohorts<'_>, r: &v1::CompareTraceProfilesResponse) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", c.service)?;
    for (name, filter, requests, samples, cpu) in [
        (
            "A",
            c.a,
            r.cohort_a_requests,
            r.cohort_a_sample_count,
            r.cohort_a_mean_cpu_ms,
        ),
        (
            "B",
            c.b,
            r.cohort_b_requests,
            r.cohort_b_sample_count,
            r.cohort_b_mean_cpu_ms,
        ),
    ] {
        writeln!(
            out,
            "  cohort {name}: {filter} · {requests} requests · {samples} samples · {} ms CPU per request",
            ms(cpu)
        )?;
    }
    drop(out);
    if !r.hotspots.is_empty() {
        let rows: Vec<Vec<String>> = r
            .hotspots
            .iter()
            .map(|h| {
                vec![
                    short_name(&h.function),
                    format!("{:+.1}pp", h.delta_percentage),
                    ms(h.cohort_a_cpu_ms_per_request),
                    ms(h.cohort_b_cpu_ms_per_request),
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
        print_table(
            &[
                "FUNCTION",
                "DELTA",
                "A MS/REQ",
                "B MS/REQ",
                "Q-VALUE",
                "SIGNIFICANCE",
                "",
            ],
            &rows,
        )?;
        println!(
            "(delta: percentage points of request CPU time, + hotter in A; CPU ms per request in the function, inclusive)"
        );
    }
    if !r.verdict.is_empty() {
        println!("Verdict: {}", r.verdict);
    }
    for warning in &r.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(())
}

/// Writes the comparison in `format`, to the file or standard output.
pub fn print_comparison(
    c: &Cohorts<'_>,
    r: &v1::CompareTraceProfilesResponse,
    format: CompareFormat,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let bytes = match format {
        CompareFormat::Table => {
            anyhow::ensure!(
                output.is_none(),
                "the table is for reading: write --format json, folded or svg to a file"
            );
            return Ok(print_text(c, r)?);
        }
        CompareFormat::Json if output.is_none() => return Ok(print_json(&view(c, r))?),
        CompareFormat::Json => {
            let mut v = serde_json::to_vec_pretty(&view(c, r))?;
            v.push(b'\n');
            v
        }
        CompareFormat::Folded => r.differential_folded.clone().into_bytes(),
        CompareFormat::Svg => {
            let title = format!("{}: {} (A) vs {} (B)", c.service, c.a, c.b);
            let mut svg = Vec::new();
            coral_analysis::compare::write_differential_svg(
                &r.differential_folded,
                &title,
                &mut svg,
            )?;
            svg
        }
    };
    match output {
        Some(path) => {
            std::fs::write(path, &bytes)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!("wrote {} ({} bytes)", path.display(), bytes.len());
        }
        None => std::io::stdout().lock().write_all(&bytes)?,
    }
    for warning in &r.warnings {
        if format != CompareFormat::Json {
            eprintln!("warning: {warning}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_names_keep_their_end() {
        assert_eq!(
            super::short_name("validate_signature"),
            "validate_signature"
        );
        let long = format!("{}::next", "a".repeat(80));
        let short = super::short_name(&long);
        assert_eq!(short.chars().count(), 60);
        assert!(short.starts_with('…') && short.ends_with("aaa::next"));
    }
}
