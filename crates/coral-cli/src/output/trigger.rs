//! Trace-profile triggers as `coral profile …` shows them.

use super::{Format, TextOutput, write_json, write_table};
use coral_analysis::format_duration_ns;
use coral_analysis::profile::format_bytes;
use coral_client::v1;
use coral_report::{TriggerView, request_status, rfc3339, span_status};
use std::io::{self, Write};

/// A trigger's criteria as the tables show them: in the cohort filter language, so
/// that they can be pasted into `profile-compare --cohort-a`.
fn criteria(t: &v1::TraceProfileTrigger) -> String {
    coral_client::trigger::cohort_filter(t).unwrap_or_else(|| "-".to_string())
}

/// Whole seconds as a clock reads: `12s`, `4m48s`, `1h05m`.
fn clock(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

/// `collecting payment-svc requests (duration >= 1.00s): 3/10 · 12s elapsed · 4m48s left`
pub fn progress_line(t: &v1::TraceProfileTrigger, now_unix_nano: i64) -> String {
    const S: i64 = 1_000_000_000;
    format!(
        "collecting {} requests ({}): {}/{} · {} elapsed · {} left",
        t.service,
        criteria(t),
        t.collected_requests,
        t.max_requests,
        clock((now_unix_nano - t.created_unix_nano) / S),
        clock((t.expires_unix_nano - now_unix_nano + S - 1) / S),
    )
}

/// A trigger in the chosen format, where asked.
pub fn print_trigger(t: &v1::TraceProfileTrigger, output: &TextOutput) -> anyhow::Result<()> {
    output.emit(|format, out| write_trigger(out, t, format))
}

/// Triggers in the chosen format, where asked.
pub fn print_triggers(
    triggers: &[v1::TraceProfileTrigger],
    all: bool,
    output: &TextOutput,
) -> anyhow::Result<()> {
    output.emit(|format, out| write_triggers(out, triggers, all, format))
}

/// A trigger, the requests it collected, and what to run next.
pub fn write_trigger(
    out: &mut Vec<u8>,
    t: &v1::TraceProfileTrigger,
    format: Format,
) -> io::Result<()> {
    if format == Format::Json {
        return write_json(out, &TriggerView::from(t));
    }
    let ended = match t.status.as_str() {
        "active" => format!("until {}", rfc3339(t.expires_unix_nano)),
        _ if t.ended_unix_nano > 0 => format!("at {}", rfc3339(t.ended_unix_nano)),
        _ => String::new(),
    };
    writeln!(
        out,
        "trigger {} · {} · {} {ended}",
        t.trigger_id, t.service, t.status
    )?;
    writeln!(
        out,
        "  {}/{} requests with {} · baseline {}/{} · {} Hz · {}",
        t.collected_requests,
        t.max_requests,
        criteria(t),
        t.baseline_collected,
        t.baseline_requests,
        t.frequency_hz,
        if t.profile_types.is_empty() {
            "cpu".to_string()
        } else {
            t.profile_types.join(",")
        }
    )?;
    if t.collected.is_empty() {
        if t.status != "active" {
            writeln!(
                out,
                "No request matched. Check that such requests exist \
                 (coral query traces --service {} ...), that their spans carry process.pid, \
                 and that an agent runs on their node.",
                t.service
            )?;
        }
        return Ok(());
    }
    // A MEMORY column (bytes made resident per request) only for a trigger that
    // collects memory, so the others' tables read as before.
    let memory = t.profile_types.iter().any(|ty| ty == "memory");
    let rows: Vec<_> = t
        .collected
        .iter()
        .map(|c| {
            let mut row = vec![
                c.trace_id.clone(),
                format_duration_ns(c.duration_ns),
                request_status(c.http_status, span_status(c.status_code)),
                c.samples.to_string(),
                format_duration_ns(c.cpu_ns as i64),
                if c.off_cpu_collected {
                    format_duration_ns(c.off_cpu_ns as i64)
                } else {
                    "-".to_string()
                },
            ];
            if memory {
                row.push(if c.memory_collected {
                    format_bytes(c.memory_bytes)
                } else {
                    "-".to_string()
                });
            }
            row.extend([c.precision.clone(), c.span_name.clone(), c.node.clone()]);
            row
        })
        .collect();
    let mut header = vec![
        "TRACE ID", "DURATION", "STATUS", "SAMPLES", "ON-CPU", "WAITING",
    ];
    if memory {
        header.push("MEMORY");
    }
    header.extend(["PRECISION", "SPAN", "NODE"]);
    write_table(out, &header, &rows)?;
    // Requests that mostly waited are explained by where they waited, not by their CPU.
    let waited = t
        .collected
        .iter()
        .filter(|c| c.off_cpu_collected && c.off_cpu_ns > c.cpu_ns)
        .count();
    let type_flag = if waited * 2 > t.collected.len() {
        " --type wall"
    } else {
        ""
    };
    writeln!(
        out,
        "Next: one request's flame graph: coral query trace-profile {}{type_flag} --format svg --output-file slow.svg",
        t.collected[0].trace_id
    )?;
    if t.baseline_requests > 0
        && let Some(filter) = coral_client::trigger::cohort_filter(t)
    {
        writeln!(
            out,
            "      what differs from the others: coral query profile-compare --service {} \\\n          --cohort-a '{filter}' --cohort-b 'not ({filter})'{type_flag}",
            t.service
        )?;
    }
    Ok(())
}

/// Triggers, newest first.
pub fn write_triggers(
    out: &mut Vec<u8>,
    triggers: &[v1::TraceProfileTrigger],
    all: bool,
    format: Format,
) -> io::Result<()> {
    if format == Format::Json {
        return write_json(
            out,
            &triggers.iter().map(TriggerView::from).collect::<Vec<_>>(),
        );
    }
    if triggers.is_empty() {
        return writeln!(
            out,
            "{} Start one with coral profile trace-trigger --service S --min-duration 1s.",
            if all {
                "No triggers."
            } else {
                "No active triggers (--all lists ended ones)."
            }
        );
    }
    let rows: Vec<_> = triggers
        .iter()
        .map(|t| {
            vec![
                t.trigger_id.clone(),
                t.service.clone(),
                t.status.clone(),
                format!("{}/{}", t.collected_requests, t.max_requests),
                criteria(t),
                rfc3339(t.created_unix_nano),
            ]
        })
        .collect();
    write_table(
        out,
        &[
            "TRIGGER ID",
            "SERVICE",
            "STATUS",
            "COLLECTED",
            "CRITERIA",
            "CREATED",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_criteria_column_is_a_filter_that_parses() {
        let t = v1::TraceProfileTrigger {
            trigger_id: "5b1f0c3e-0000-4000-8000-000000000000".into(),
            service: "payment-svc".into(),
            status: "active".into(),
            min_duration_ms: 1500,
            status_code_pattern: "5xx".into(),
            url_pattern: "/checkout*".into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        write_triggers(&mut out, &[t], false, Format::Text).unwrap();
        let text = String::from_utf8(out).unwrap();
        let row = text.lines().nth(1).unwrap();
        let criteria = row
            .split("  ")
            .map(str::trim)
            .find(|cell| cell.starts_with("duration"))
            .unwrap_or_else(|| panic!("no criteria in {row:?}"));
        assert_eq!(
            criteria,
            "duration >= 1500ms and status = 5xx and (url ~ \"/checkout*\" or route ~ \"/checkout*\")"
        );
        coral_analysis::filter::parse(criteria).unwrap();
    }

    #[test]
    fn collected_requests_show_status_as_the_requests_table_does() {
        let t = v1::TraceProfileTrigger {
            status: "completed".into(),
            collected: vec![v1::CollectedRequest {
                trace_id: "ab".repeat(16),
                http_status: Some(503),
                status_code: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut out = Vec::new();
        write_trigger(&mut out, &t, Format::Text).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(" 503 error "), "{text}");
    }

    #[test]
    fn progress_reads_well() {
        let t = v1::TraceProfileTrigger {
            service: "payment-svc".into(),
            min_duration_ms: 1000,
            status_code_pattern: "5xx".into(),
            max_requests: 10,
            collected_requests: 3,
            created_unix_nano: 0,
            expires_unix_nano: 300_000_000_000,
            ..Default::default()
        };
        assert_eq!(
            progress_line(&t, 12_400_000_000),
            "collecting payment-svc requests (duration >= 1s and status = 5xx): 3/10 · 12s elapsed · 4m48s left"
        );
        assert_eq!(clock(3 * 3600 + 5 * 60 + 9), "3h05m");
    }
}
