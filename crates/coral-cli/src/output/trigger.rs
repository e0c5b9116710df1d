//! Trace-profile triggers as `coral profile …` shows them.

use super::{Format, format_timestamp, print_json, print_table};
use coral_analysis::format_duration_ns;
use coral_client::v1;
use serde::Serialize;
use std::io;

/// A trigger's criteria in words: `duration >= 1.00s and status 5xx`.
fn criteria(t: &v1::TraceProfileTrigger) -> String {
    let mut parts = Vec::new();
    if t.min_duration_ms > 0 {
        parts.push(format!(
            "duration >= {}",
            format_duration_ns(i64::from(t.min_duration_ms) * 1_000_000)
        ));
    }
    if t.max_duration_ms > 0 {
        parts.push(format!(
            "duration <= {}",
            format_duration_ns(i64::from(t.max_duration_ms) * 1_000_000)
        ));
    }
    if !t.status_code_pattern.is_empty() {
        parts.push(format!("status {}", t.status_code_pattern));
    }
    if !t.url_pattern.is_empty() {
        parts.push(format!("url {}", t.url_pattern));
    }
    if parts.is_empty() {
        "any request".to_string()
    } else {
        parts.join(" and ")
    }
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

#[derive(Serialize)]
struct CollectedView<'a> {
    trace_id: &'a str,
    span_id: &'a str,
    span_name: &'a str,
    start: String,
    duration_ns: i64,
    http_status: Option<i32>,
    error: bool,
    node: &'a str,
    samples: u64,
    precision: &'a str,
}

#[derive(Serialize)]
struct TriggerView<'a> {
    trigger_id: &'a str,
    service: &'a str,
    status: &'a str,
    criteria: String,
    min_duration_ms: Option<i32>,
    max_duration_ms: Option<i32>,
    status_code_pattern: Option<&'a str>,
    url_pattern: Option<&'a str>,
    frequency_hz: u32,
    max_requests: u32,
    collected_requests: u32,
    baseline_requests: u32,
    baseline_collected: u32,
    created: String,
    expires: String,
    ended: Option<String>,
    collected: Vec<CollectedView<'a>>,
}

fn some(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn view(t: &v1::TraceProfileTrigger) -> TriggerView<'_> {
    TriggerView {
        trigger_id: &t.trigger_id,
        service: &t.service,
        status: &t.status,
        criteria: criteria(t),
        min_duration_ms: (t.min_duration_ms > 0).then_some(t.min_duration_ms),
        max_duration_ms: (t.max_duration_ms > 0).then_some(t.max_duration_ms),
        status_code_pattern: some(&t.status_code_pattern),
        url_pattern: some(&t.url_pattern),
        frequency_hz: t.frequency_hz,
        max_requests: t.max_requests,
        collected_requests: t.collected_requests,
        baseline_requests: t.baseline_requests,
        baseline_collected: t.baseline_collected,
        created: format_timestamp(t.created_unix_nano),
        expires: format_timestamp(t.expires_unix_nano),
        ended: (t.ended_unix_nano > 0).then(|| format_timestamp(t.ended_unix_nano)),
        collected: t
            .collected
            .iter()
            .map(|c| CollectedView {
                trace_id: &c.trace_id,
                span_id: &c.span_id,
                span_name: &c.span_name,
                start: format_timestamp(c.start_time_unix_nano),
                duration_ns: c.duration_ns,
                http_status: c.http_status,
                error: c.status_code == 2,
                node: &c.node,
                samples: c.samples,
                precision: &c.precision,
            })
            .collect(),
    }
}

fn status_label(c: &v1::CollectedRequest) -> String {
    match (c.http_status, c.status_code == 2) {
        (Some(code), _) => code.to_string(),
        (None, true) => "error".to_string(),
        (None, false) => "-".to_string(),
    }
}

/// A trigger, the requests it collected, and what to run next.
pub fn print_trigger(t: &v1::TraceProfileTrigger, format: Format) -> io::Result<()> {
    if format == Format::Json {
        return print_json(&view(t));
    }
    let ended = match t.status.as_str() {
        "active" => format!("until {}", format_timestamp(t.expires_unix_nano)),
        _ if t.ended_unix_nano > 0 => format!("at {}", format_timestamp(t.ended_unix_nano)),
        _ => String::new(),
    };
    println!(
        "trigger {} · {} · {} {ended}",
        t.trigger_id, t.service, t.status
    );
    println!(
        "  {}/{} requests with {} · baseline {}/{} · {} Hz",
        t.collected_requests,
        t.max_requests,
        criteria(t),
        t.baseline_collected,
        t.baseline_requests,
        t.frequency_hz
    );
    if t.collected.is_empty() {
        if t.status != "active" {
            println!(
                "No request matched. Check that such requests exist \
                 (coral query traces --service {} ...), that their spans carry process.pid, \
                 and that an agent runs on their node.",
                t.service
            );
        }
        return Ok(());
    }
    let rows: Vec<_> = t
        .collected
        .iter()
        .map(|c| {
            vec![
                c.trace_id.clone(),
                format_duration_ns(c.duration_ns),
                status_label(c),
                c.samples.to_string(),
                c.precision.clone(),
                c.span_name.clone(),
                c.node.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "TRACE ID",
            "DURATION",
            "STATUS",
            "SAMPLES",
            "PRECISION",
            "SPAN",
            "NODE",
        ],
        &rows,
    )?;
    println!(
        "Next: one request's flame graph: coral query trace-profile {} --format svg --output-file slow.svg",
        t.collected[0].trace_id
    );
    if t.baseline_requests > 0 {
        let filter = cohort_filter(t);
        println!(
            "      what differs from the others: coral query profile-compare --service {} \\\n          --cohort-a '{filter}' --cohort-b 'not ({filter})'",
            t.service
        );
    }
    Ok(())
}

/// The trigger's criteria in the cohort filter language (`coral query profile-compare`).
fn cohort_filter(t: &v1::TraceProfileTrigger) -> String {
    let mut parts = Vec::new();
    if t.min_duration_ms > 0 {
        parts.push(format!("duration >= {}ms", t.min_duration_ms));
    }
    if t.max_duration_ms > 0 {
        parts.push(format!("duration <= {}ms", t.max_duration_ms));
    }
    if !t.status_code_pattern.is_empty() {
        let terms: Vec<&str> = t.status_code_pattern.split(',').map(str::trim).collect();
        parts.push(match terms.as_slice() {
            [one] => format!("status = {one}"),
            many => format!("status in ({})", many.join(", ")),
        });
    }
    if !t.url_pattern.is_empty() {
        let quoted = t.url_pattern.replace('\\', "\\\\").replace('"', "\\\"");
        parts.push(format!("url ~ \"{quoted}\""));
    }
    if parts.is_empty() {
        "duration >= 0ms".to_string()
    } else {
        parts.join(" and ")
    }
}

/// Triggers, newest first.
pub fn print_triggers(
    triggers: &[v1::TraceProfileTrigger],
    all: bool,
    format: Format,
) -> io::Result<()> {
    if format == Format::Json {
        return print_json(&triggers.iter().map(view).collect::<Vec<_>>());
    }
    if triggers.is_empty() {
        println!(
            "{} Start one with coral profile trace-trigger --service S --min-duration 1s.",
            if all {
                "No triggers."
            } else {
                "No active triggers (--all lists ended ones)."
            }
        );
        return Ok(());
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
                format_timestamp(t.created_unix_nano),
            ]
        })
        .collect();
    print_table(
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
    fn trigger_criteria_become_a_cohort_filter_that_parses() {
        let t = v1::TraceProfileTrigger {
            min_duration_ms: 1000,
            max_duration_ms: 5000,
            status_code_pattern: "4xx,503".into(),
            url_pattern: "/check\"out*".into(),
            ..Default::default()
        };
        let filter = cohort_filter(&t);
        assert_eq!(
            filter,
            "duration >= 1000ms and duration <= 5000ms and status in (4xx, 503) and url ~ \"/check\\\"out*\""
        );
        coral_analysis::filter::parse(&filter).unwrap();
        coral_analysis::filter::parse(&format!("not ({filter})")).unwrap();
        let errors = v1::TraceProfileTrigger {
            status_code_pattern: "error".into(),
            ..Default::default()
        };
        assert_eq!(cohort_filter(&errors), "status = error");
        coral_analysis::filter::parse(&cohort_filter(&v1::TraceProfileTrigger::default())).unwrap();
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
            "collecting payment-svc requests (duration >= 1.00s and status 5xx): 3/10 · 12s elapsed · 4m48s left"
        );
        assert_eq!(clock(3 * 3600 + 5 * 60 + 9), "3h05m");
    }
}
