//! What `coral` prints: compact tables for people, JSON for programs.

pub mod compare;
pub mod profile;
pub mod trigger;

use coral_analysis::format_duration_ns;
use coral_client::v1;
use serde::Serialize;
use std::collections::HashMap;
use std::io::{self, Write};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// A span as the CLI shows it (ids in hex, attributes as JSON).
#[derive(Serialize, Debug, Clone)]
pub struct SpanView {
    pub trace_id: String,
    pub span_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    pub service: String,
    pub name: String,
    pub kind: &'static str,
    pub start: String,
    pub start_unix_nano: i64,
    pub duration_ns: i64,
    pub status: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status_message: String,
    pub http_status: Option<i32>,
    pub url: Option<String>,
    pub route: Option<String>,
    pub pid: Option<i64>,
    pub thread_id: Option<i64>,
    pub node: String,
    pub attributes: serde_json::Value,
}

const KINDS: [&str; 6] = [
    "unspecified",
    "internal",
    "server",
    "client",
    "producer",
    "consumer",
];
const STATUSES: [&str; 3] = ["unset", "ok", "error"];

impl From<&v1::Span> for SpanView {
    fn from(s: &v1::Span) -> Self {
        Self {
            trace_id: hex::encode(&s.trace_id),
            span_id: hex::encode(&s.span_id),
            parent_span_id: (!s.parent_span_id.is_empty()).then(|| hex::encode(&s.parent_span_id)),
            service: s.service.clone(),
            name: s.name.clone(),
            kind: KINDS.get(s.kind as usize).copied().unwrap_or("unspecified"),
            start: format_timestamp(s.start_time_unix_nano),
            start_unix_nano: s.start_time_unix_nano,
            duration_ns: s.duration_ns,
            status: STATUSES
                .get(s.status_code as usize)
                .copied()
                .unwrap_or("unset"),
            status_message: s.status_message.clone(),
            http_status: s.http_status,
            url: s.url.clone(),
            route: s.route.clone(),
            pid: s.pid,
            thread_id: s.thread_id,
            node: s.node.clone(),
            attributes: serde_json::from_str(&s.attributes_json)
                .unwrap_or_else(|_| serde_json::json!({})),
        }
    }
}

impl SpanView {
    /// `502`, `error`, `502 error`, or `-`.
    fn status_label(&self) -> String {
        match (self.http_status, self.status) {
            (Some(code), "error") => format!("{code} error"),
            (Some(code), _) => code.to_string(),
            (None, "error") => "error".into(),
            _ => "-".into(),
        }
    }

    fn target(&self) -> &str {
        self.route.as_deref().or(self.url.as_deref()).unwrap_or("")
    }
}

pub fn parse_trace_id(s: &str) -> anyhow::Result<()> {
    let ok =
        s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0');
    anyhow::ensure!(
        ok,
        "invalid trace id {s:?}: expected 32 hex digits, not all zero \
         (find ids with `coral query traces --service S`)"
    );
    Ok(())
}

/// UTC `YYYY-MM-DDTHH:MM:SS.mmmZ` from Unix nanoseconds.
pub fn format_timestamp(unix_nano: i64) -> String {
    let secs = unix_nano.div_euclid(1_000_000_000);
    let millis = unix_nano.rem_euclid(1_000_000_000) / 1_000_000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

pub(crate) fn print_json<T: Serialize>(value: &T) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = io::stdout().lock();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| -> io::Result<()> {
        let cells: Vec<&str> = cells.collect();
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(&mut header.iter().copied())?;
    for row in rows {
        line(&mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

pub fn print_services(services: &[v1::ServiceInfo], format: Format) -> io::Result<()> {
    if format == Format::Json {
        #[derive(Serialize)]
        struct View<'a> {
            name: &'a str,
            first_seen: String,
            last_seen: String,
        }
        let views: Vec<_> = services
            .iter()
            .map(|s| View {
                name: &s.name,
                first_seen: format_timestamp(s.first_seen_unix_nano),
                last_seen: format_timestamp(s.last_seen_unix_nano),
            })
            .collect();
        return print_json(&views);
    }
    if services.is_empty() {
        println!(
            "No services yet. Point an OpenTelemetry exporter at an agent (OTLP :4317 gRPC, :4318 HTTP)."
        );
        return Ok(());
    }
    let rows: Vec<_> = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                format_timestamp(s.first_seen_unix_nano),
                format_timestamp(s.last_seen_unix_nano),
            ]
        })
        .collect();
    print_table(&["SERVICE", "FIRST SEEN", "LAST SEEN"], &rows)
}

pub fn print_requests(service: &str, spans: &[SpanView], format: Format) -> io::Result<()> {
    if format == Format::Json {
        return print_json(&spans);
    }
    if spans.is_empty() {
        println!(
            "No requests of {service} match. Widen --since, lower --min-duration or drop --status-code."
        );
        return Ok(());
    }
    let rows: Vec<_> = spans
        .iter()
        .map(|s| {
            vec![
                s.trace_id.clone(),
                s.start.clone(),
                format_duration_ns(s.duration_ns),
                s.status_label(),
                s.name.clone(),
                s.target().to_string(),
            ]
        })
        .collect();
    print_table(
        &["TRACE ID", "START", "DURATION", "STATUS", "NAME", "ROUTE"],
        &rows,
    )?;
    println!(
        "{} request(s), newest first. Span tree: coral query trace {}",
        spans.len(),
        spans[0].trace_id
    );
    Ok(())
}

/// The span tree, children under parents by start time, with each span's offset from
/// the trace start. Spans whose parent never arrived are shown as roots.
pub fn print_trace(spans: &[SpanView], format: Format) -> io::Result<()> {
    if format == Format::Json {
        return print_json(&spans);
    }
    let Some(first) = spans.first() else {
        return Ok(());
    };
    let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
    let end = spans
        .iter()
        .map(|s| s.start_unix_nano + s.duration_ns)
        .max()
        .unwrap_or(start);
    let mut services: Vec<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    services.sort_unstable();
    services.dedup();
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "trace {}  {} span(s)  {} service(s)  {}  started {}",
        first.trace_id,
        spans.len(),
        services.len(),
        format_duration_ns(end - start),
        format_timestamp(start)
    )?;
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<Option<&str>, Vec<&SpanView>> = HashMap::new();
    for span in spans {
        let parent = span.parent_span_id.as_deref().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(span);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| (s.start_unix_nano, s.span_id.clone()));
    }
    let mut lines = Vec::new();
    let roots = children.get(&None).cloned().unwrap_or_default();
    for (i, root) in roots.iter().enumerate() {
        tree_lines(
            root,
            "",
            i + 1 == roots.len(),
            true,
            start,
            &children,
            &mut lines,
        );
    }
    let width = lines
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    for (left, right) in lines {
        let pad = width - left.chars().count();
        writeln!(out, "{left}{:pad$}  {right}", "")?;
    }
    Ok(())
}

fn tree_lines<'a>(
    span: &'a SpanView,
    prefix: &str,
    last: bool,
    root: bool,
    trace_start: i64,
    children: &HashMap<Option<&'a str>, Vec<&'a SpanView>>,
    lines: &mut Vec<(String, String)>,
) {
    let branch = if root {
        ""
    } else if last {
        "└─ "
    } else {
        "├─ "
    };
    let left = format!("{prefix}{branch}{} {}", span.service, span.name);
    let right = format!(
        "{:>8}  +{:<8}  {}",
        format_duration_ns(span.duration_ns),
        format_duration_ns(span.start_unix_nano - trace_start),
        span.status_label()
    );
    lines.push((left, right));
    let child_prefix = if root {
        prefix.to_string()
    } else {
        format!("{prefix}{}", if last { "   " } else { "│  " })
    };
    if let Some(kids) = children.get(&Some(span.span_id.as_str())) {
        for (i, kid) in kids.iter().enumerate() {
            tree_lines(
                kid,
                &child_prefix,
                i + 1 == kids.len(),
                false,
                trace_start,
                children,
                lines,
            );
        }
    }
}

pub fn print_agents(agents: &[v1::AgentInfo], format: Format) -> io::Result<()> {
    #[derive(Serialize)]
    struct View<'a> {
        agent_id: &'a str,
        node: &'a str,
        version: &'a str,
        registered: String,
        last_heartbeat: String,
        counters: serde_json::Value,
    }
    let views: Vec<_> = agents
        .iter()
        .map(|a| View {
            agent_id: &a.agent_id,
            node: &a.node,
            version: &a.version,
            registered: format_timestamp(a.registered_unix_nano),
            last_heartbeat: format_timestamp(a.last_heartbeat_unix_nano),
            counters: serde_json::from_str(&a.counters_json).unwrap_or_default(),
        })
        .collect();
    if format == Format::Json {
        return print_json(&views);
    }
    if views.is_empty() {
        println!("No agents have registered. Start one with `coral agent start`.");
        return Ok(());
    }
    let count =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0).to_string();
    let rows: Vec<_> = views
        .iter()
        .map(|v| {
            vec![
                v.node.to_string(),
                v.agent_id.to_string(),
                v.last_heartbeat.clone(),
                count(&v.counters, "spans_received"),
                count(&v.counters, "spans_dropped"),
            ]
        })
        .collect();
    print_table(
        &[
            "NODE",
            "AGENT",
            "LAST HEARTBEAT",
            "SPANS RECEIVED",
            "DROPPED",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(format_timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp(1_700_000_000_123_000_000),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            format_timestamp(951_782_400 * 1_000_000_000),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn trace_ids_are_checked() {
        assert!(parse_trace_id("0af7651916cd43dd8448eb211c80319c").is_ok());
        for bad in [
            "",
            "xyz",
            "0af7651916cd43dd8448eb211c80319",
            &"0".repeat(32),
        ] {
            assert!(parse_trace_id(bad).is_err(), "{bad}");
        }
    }
}
