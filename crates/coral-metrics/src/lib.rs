//! Self-observability: the Prometheus text exposition format (version 0.0.4) written
//! by hand — a handful of counters, gauges and one histogram need no client library —
//! and the `GET /metrics` endpoint that serves it on a listener of its own.
//!
//! Metric values live where they are counted (relaxed atomics in the agent and the
//! colony); a scrape reads them and renders them with [`Exposition`], so scraping
//! costs a few loads and one string, and nothing is counted twice.

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the latency histogram buckets: 1 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A metric's type, as its `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// A text exposition being written: one family (`# HELP`, `# TYPE`, its samples) after
/// another.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its `# HELP` and `# TYPE` lines. Its samples follow.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Self {
        debug_assert!(valid_name(name), "bad metric name {name:?}");
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        self
    }

    /// One sample line: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        write_labels(&mut self.out, labels);
        self.out.push(' ');
        write_value(&mut self.out, value);
        self.out.push('\n');
        self
    }

    /// A family of one unlabelled counter.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.family(name, help, Kind::Counter)
            .sample(name, &[], value as f64)
    }

    /// A family of one unlabelled gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.family(name, help, Kind::Gauge)
            .sample(name, &[], value)
    }

    /// The samples of one histogram series (after [`family`](Self::family) with
    /// [`Kind::Histogram`]): cumulative `_bucket`s up to `+Inf`, `_sum`, `_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        histogram: &Histogram,
    ) -> &mut Self {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
            cumulative += count;
            let mut le = String::new();
            write_value(&mut le, *bound);
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&bucket, &with_le, cumulative as f64);
        }
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", "+Inf"));
        self.sample(&bucket, &with_le, histogram.count as f64);
        self.sample(&format!("{name}_sum"), labels, histogram.sum);
        self.sample(&format!("{name}_count"), labels, histogram.count as f64)
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Whether `name` is a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_infinite() {
        out.push_str(if value > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{value}");
    }
}

/// A histogram's buckets (not cumulative), sum and count. Not atomic: keep it behind
/// a lock shared with the code that observes.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram with these bucket upper bounds (ascending; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

/// What renders the exposition at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` (the exposition `render` returns) on `listener` until
/// `shutdown` resolves; any other path is 404.
pub async fn serve(
    listener: TcpListener,
    render: Render,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], render()).into_response() }
        }),
    );
    let app = app.fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            "not found: metrics are served at GET /metrics\n",
        )
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_text_format() {
        let mut e = Exposition::new();
        e.counter("a_total", "Things\\counted\nhere.", 3);
        e.family("b", "A gauge.", Kind::Gauge)
            .sample("b", &[("x", "q\"\\\n")], 1.5);
        e.family("h_seconds", "Latency.", Kind::Histogram);
        let mut h = Histogram::new(&[0.5, 1.0]);
        h.observe(0.25);
        h.observe(0.5);
        h.observe(4.0);
        e.histogram("h_seconds", &[("method", "M")], &h);
        assert_eq!(
            e.finish(),
            "# HELP a_total Things\\\\counted\\nhere.\n# TYPE a_total counter\na_total 3\n\
             # HELP b A gauge.\n# TYPE b gauge\nb{x=\"q\\\"\\\\\\n\"} 1.5\n\
             # HELP h_seconds Latency.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{method=\"M\",le=\"0.5\"} 2\n\
             h_seconds_bucket{method=\"M\",le=\"1\"} 2\n\
             h_seconds_bucket{method=\"M\",le=\"+Inf\"} 3\n\
             h_seconds_sum{method=\"M\"} 4.75\n\
             h_seconds_count{method=\"M\"} 3\n"
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("coral_agent_spans_received_total"));
        assert!(valid_name("_a:b1"));
        assert!(!valid_name("1a"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(""));
    }
}
