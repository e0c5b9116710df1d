//! What `coral` prints. One model for every command: `--format` (`-o`, `--output`)
//! says *what* (text for people, json for programs, and the profile formats where they
//! apply), `--output-file` says *where*. Each command renders into a buffer and hands it
//! to [`emit`], the one place that writes to standard output or the file; the JSON
//! shapes are `coral-report`'s, which the MCP tools share.

pub mod compare;
pub mod profile;
pub mod trigger;

use clap::Args;
use coral_analysis::format_duration_ns;
use coral_client::v1;
use coral_report::{AgentView, ServiceView, SourceView, SpanView, request_status, rfc3339};
use serde::Serialize;
use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The formats of the commands that print records: services, requests, traces,
/// agents, triggers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    // Tables and trees for people.
    #[value(alias = "table")]
    Text,
    // JSON for programs.
    Json,
}

/// `--format` and `--output-file` of the commands that print text or JSON.
#[derive(Args, Debug, Clone)]
pub struct TextOutput {
    /// Output format: text (tables for people; "table" is accepted too) or json (for
    /// programs).
    #[arg(
        long = "format",
        short = 'o',
        visible_alias = "output",
        value_name = "FORMAT",
        value_enum,
        default_value_t = Format::Text
    )]
    pub format: Format,
    /// Write the output to this file instead of standard output.
    #[arg(long = "output-file", value_name = "PATH")]
    pub file: Option<PathBuf>,
}

impl TextOutput {
    /// Renders with `render` in the chosen format and writes it where asked.
    pub fn emit(
        &self,
        render: impl FnOnce(Format, &mut Vec<u8>) -> io::Result<()>,
    ) -> anyhow::Result<()> {
        let mut buffer = Vec::new();
        render(self.format, &mut buffer)?;
        emit(&buffer, self.file.as_deref())
    }
}

/// Standard output was closed by its reader (`coral … | head -1`): nothing more to
/// say, and nothing went wrong. `main` exits quietly with status 0, as Unix tools do.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct StdoutClosed;

/// Whether `error` is (or was caused by) a write to a standard output that its reader
/// has closed.
pub fn closed_stdout(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<StdoutClosed>())
}

/// The one writer: `bytes` to the file (and a line on standard error saying so), or to
/// standard output.
pub fn emit(bytes: &[u8], file: Option<&Path>) -> anyhow::Result<()> {
    match file {
        Some(path) => {
            std::fs::write(path, bytes)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            note(&format!("wrote {} ({} bytes)", path.display(), bytes.len()));
            Ok(())
        }
        None => {
            let mut out = io::stdout().lock();
            match out.write_all(bytes).and_then(|()| out.flush()) {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
                Err(e) => Err(anyhow::anyhow!("cannot write to standard output: {e}")),
                Ok(()) => Ok(()),
            }
        }
    }
}

/// A line for the person at the terminal (progress, notes, warnings) on standard
/// error. A closed standard error is no reason to fail: the line is dropped.
pub fn note(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// A live progress line on a terminal's standard error, redrawn in place (empty:
/// cleared); dropped when standard error is closed.
pub fn progress(line: &str) {
    let mut err = io::stderr().lock();
    let _ = write!(err, "\r\x1b[2K{line}").and_then(|()| err.flush());
}

/// `warning: …` on standard error.
pub fn warn(warning: &str) {
    note(&format!("warning: {warning}"));
}

/// Pretty JSON and a newline.
pub(crate) fn write_json<T: Serialize>(out: &mut Vec<u8>, value: &T) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub(crate) fn write_table(
    out: &mut Vec<u8>,
    header: &[&str],
    rows: &[Vec<String>],
) -> io::Result<()> {
    let widths = column_widths(header, rows);
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

/// The width of each column: its widest cell or header.
pub(crate) fn column_widths(header: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    widths
}

/// Columns available for a table: `COLUMNS` when set, else the terminal's width when
/// standard output is one, else 100.
pub(crate) fn terminal_width() -> usize {
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
    {
        return columns;
    }
    match rustix::termios::tcgetwinsize(io::stdout()) {
        Ok(size) if size.ws_col > 0 => usize::from(size.ws_col),
        _ => 100,
    }
}

fn span_target(s: &SpanView) -> &str {
    s.route.as_deref().or(s.url.as_deref()).unwrap_or("")
}

pub fn parse_trace_id(s: &str) -> anyhow::Result<()> {
    let ok =
        s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0');
    let given = if s.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!("{} hex digits", s.chars().count())
    } else {
        format!("{} characters, not all hex digits", s.chars().count())
    };
    anyhow::ensure!(
        ok,
        "invalid trace id {s:?} ({given}): expected 32 hex digits, not all zero \
         (find ids with `coral query traces --service S`)"
    );
    Ok(())
}

pub fn write_services(
    out: &mut Vec<u8>,
    services: &[v1::ServiceInfo],
    format: Format,
) -> io::Result<()> {
    if format == Format::Json {
        return write_json(
            out,
            &services.iter().map(ServiceView::from).collect::<Vec<_>>(),
        );
    }
    if services.is_empty() {
        return writeln!(
            out,
            "No services yet. Point an OpenTelemetry exporter at an agent (OTLP :4317 gRPC, :4318 HTTP)."
        );
    }
    let rows: Vec<_> = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                rfc3339(s.first_seen_unix_nano),
                rfc3339(s.last_seen_unix_nano),
            ]
        })
        .collect();
    write_table(out, &["SERVICE", "FIRST SEEN", "LAST SEEN"], &rows)
}

/// A listed request in JSON: its span and the source of its stored profile (null
/// when it has none).
#[derive(Serialize)]
struct RequestView<'a> {
    #[serde(flatten)]
    span: &'a SpanView,
    profile_source: Option<SourceView>,
}

/// Requests, newest first; `profile_sources` is parallel to `spans` ("" for none), and
/// `show_profiles` adds the PROFILE column (trigger, baseline, session or -).
pub fn write_requests(
    out: &mut Vec<u8>,
    service: &str,
    spans: &[SpanView],
    profile_sources: &[String],
    show_profiles: bool,
    format: Format,
) -> io::Result<()> {
    let source = |i: usize| profile_sources.get(i).and_then(|s| SourceView::parse(s));
    if format == Format::Json {
        let requests: Vec<RequestView> = (spans.iter().enumerate())
            .map(|(i, span)| RequestView {
                span,
                profile_source: source(i),
            })
            .collect();
        return write_json(out, &requests);
    }
    if spans.is_empty() {
        return writeln!(
            out,
            "No requests of {service} match. Widen --since, lower --min-duration or drop --status-code{}.",
            if show_profiles { " or --profiled" } else { "" }
        );
    }
    let rows: Vec<_> = (spans.iter().enumerate())
        .map(|(i, s)| {
            let mut row = vec![
                s.trace_id.clone(),
                s.start.clone(),
                format_duration_ns(s.duration_ns),
                request_status(s.http_status, s.status),
                s.name.clone(),
                span_target(s).to_string(),
            ];
            if show_profiles {
                let kind = source(i).map(|s| s.kind);
                row.insert(4, kind.unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    let mut header = vec!["TRACE ID", "START", "DURATION", "STATUS", "NAME", "ROUTE"];
    if show_profiles {
        header.insert(4, "PROFILE");
    }
    write_table(out, &header, &rows)?;
    writeln!(
        out,
        "{} request(s), newest first. Span tree: coral query trace {}",
        spans.len(),
        spans[0].trace_id
    )
}

/// The span tree, children under parents by start time, with each span's offset from
/// the trace start. Spans whose parent never arrived are shown as roots.
pub fn write_trace(out: &mut Vec<u8>, spans: &[SpanView], format: Format) -> io::Result<()> {
    if format == Format::Json {
        return write_json(out, &spans);
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
    writeln!(
        out,
        "trace {}  {} span(s)  {} service(s)  {}  started {}",
        first.trace_id,
        spans.len(),
        services.len(),
        format_duration_ns(end - start),
        rfc3339(start)
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
        request_status(span.http_status, span.status)
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

pub fn write_agents(out: &mut Vec<u8>, agents: &[v1::AgentInfo], format: Format) -> io::Result<()> {
    let views: Vec<AgentView> = agents.iter().map(AgentView::from).collect();
    if format == Format::Json {
        return write_json(out, &views);
    }
    if views.is_empty() {
        return writeln!(
            out,
            "No agents have registered. Start one with `coral agent start`."
        );
    }
    let count =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0).to_string();
    let rows: Vec<_> = views
        .iter()
        .map(|v| {
            vec![
                v.node.clone(),
                v.agent_id.clone(),
                v.last_heartbeat.clone(),
                count(&v.counters, "spans_received"),
                count(&v.counters, "spans_dropped"),
            ]
        })
        .collect();
    write_table(
        out,
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
