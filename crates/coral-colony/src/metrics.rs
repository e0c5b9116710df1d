//! The colony's Prometheus metrics: RPC latencies by method and gRPC status code
//! (measured by [`RpcMetricsLayer`], a tower layer on the tonic server), what the
//! ingest RPCs stored, store errors, and the triggers the sweeper sees.
//!
//! Counted per colony instance (no process globals): the handlers reach their
//! colony's [`ColonyMetrics`] through a task-local that the layer sets around each
//! call, so [`crate::store_status`] counts store errors without being handed it.

use coral_metrics::{Exposition, Histogram, Kind, LATENCY_BUCKETS};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::codegen::http;

tokio::task_local! {
    static CURRENT: Arc<ColonyMetrics>;
}

/// One colony's metrics. Cheap to update (atomics, one short lock per RPC).
#[derive(Debug, Default)]
pub struct ColonyMetrics {
    /// (service, method, code) → latency histogram.
    rpcs: Mutex<BTreeMap<(String, String, &'static str), Histogram>>,
    spans_new: AtomicU64,
    spans_duplicate: AtomicU64,
    spans_rejected: AtomicU64,
    profiles_new: AtomicU64,
    profiles_over_limit: AtomicU64,
    profiles_duplicate: AtomicU64,
    profiles_rejected: AtomicU64,
    store_errors: AtomicU64,
    triggers_active: AtomicU64,
    /// Trigger lifecycle events this colony caused, by [`TriggerEvent`].
    trigger_events: [AtomicU64; TriggerEvent::ALL.len()],
}

/// What happens to a trigger: started, then completed (its count reached), cancelled
/// or expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TriggerEvent {
    Started,
    Completed,
    Cancelled,
    Expired,
}

impl TriggerEvent {
    const ALL: [TriggerEvent; 4] = [
        Self::Started,
        Self::Completed,
        Self::Cancelled,
        Self::Expired,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }
}

/// Runs `f` on the metrics of the colony serving the current RPC, if any.
pub(crate) fn with_current(f: impl FnOnce(&ColonyMetrics)) {
    let _ = CURRENT.try_with(|m| f(m));
}

/// The name the Go gRPC libraries (and so most dashboards) give a status code.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

impl ColonyMetrics {
    /// One finished call of `path` (`/package.Service/Method`).
    fn observe_rpc(&self, path: &str, code: Code, elapsed: Duration) {
        // Unknown paths are answered UNIMPLEMENTED: one series for all of them, so a
        // client cannot create series at will.
        let (service, method) = match path.trim_start_matches('/').split_once('/') {
            Some((s, m)) if code != Code::Unimplemented => (s, m),
            _ => ("unknown", "unknown"),
        };
        let mut rpcs = self.rpcs.lock().unwrap_or_else(|e| e.into_inner());
        rpcs.entry((service.to_string(), method.to_string(), code_name(code)))
            .or_insert_with(|| Histogram::new(&LATENCY_BUCKETS))
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn add_spans(&self, new: u64, duplicate: u64, rejected: u64) {
        self.spans_new.fetch_add(new, Relaxed);
        self.spans_duplicate.fetch_add(duplicate, Relaxed);
        self.spans_rejected.fetch_add(rejected, Relaxed);
    }

    pub(crate) fn add_profiles(&self, new: u64, over_limit: u64, duplicate: u64, rejected: u64) {
        self.profiles_new.fetch_add(new, Relaxed);
        self.profiles_over_limit.fetch_add(over_limit, Relaxed);
        self.profiles_duplicate.fetch_add(duplicate, Relaxed);
        self.profiles_rejected.fetch_add(rejected, Relaxed);
    }

    pub(crate) fn add_store_error(&self) {
        self.store_errors.fetch_add(1, Relaxed);
    }

    pub(crate) fn set_triggers_active(&self, n: usize) {
        self.triggers_active.store(n as u64, Relaxed);
    }

    /// Counts `n` trigger `event`s.
    pub(crate) fn add_trigger_event(&self, event: TriggerEvent, n: u64) {
        self.trigger_events[event as usize].fetch_add(n, Relaxed);
    }

    /// The exposition now.
    pub fn render(&self) -> String {
        let mut e = Exposition::new();
        e.family(
            "coral_colony_rpc_duration_seconds",
            "gRPC calls served, by service, method and status code: time until the \
             response began (for streams, until the stream opened).",
            Kind::Histogram,
        );
        {
            let rpcs = self.rpcs.lock().unwrap_or_else(|e| e.into_inner());
            for ((service, method, code), histogram) in rpcs.iter() {
                e.histogram(
                    "coral_colony_rpc_duration_seconds",
                    &[("service", service), ("method", method), ("code", code)],
                    histogram,
                );
            }
        }
        let spans = "coral_colony_spans_ingested_total";
        e.family(
            spans,
            "Spans agents sent, by result: new (stored), duplicate (already stored: a \
             retry), rejected (invalid).",
            Kind::Counter,
        );
        for (result, n) in [
            ("new", &self.spans_new),
            ("duplicate", &self.spans_duplicate),
            ("rejected", &self.spans_rejected),
        ] {
            e.sample(spans, &[("result", result)], n.load(Relaxed) as f64);
        }
        let profiles = "coral_colony_trace_profiles_ingested_total";
        e.family(
            profiles,
            "Request profiles agents sent, by result: new (stored), over_limit (beyond \
             their trigger's max_requests or baseline, not kept), duplicate (already \
             stored), rejected (invalid).",
            Kind::Counter,
        );
        for (result, n) in [
            ("new", &self.profiles_new),
            ("over_limit", &self.profiles_over_limit),
            ("duplicate", &self.profiles_duplicate),
            ("rejected", &self.profiles_rejected),
        ] {
            e.sample(profiles, &[("result", result)], n.load(Relaxed) as f64);
        }
        e.counter(
            "coral_colony_store_errors_total",
            "Store operations that failed (database unavailable or an internal error), \
             in RPCs and in the sweeper.",
            self.store_errors.load(Relaxed),
        )
        .family(
            "coral_colony_triggers",
            "Trace-profile triggers by state, as the sweeper last saw them (every second).",
            Kind::Gauge,
        )
        .sample(
            "coral_colony_triggers",
            &[("state", "active")],
            self.triggers_active.load(Relaxed) as f64,
        )
        .family(
            "coral_colony_trigger_events_total",
            "Trace-profile triggers this colony started, completed (count reached), \
             cancelled or expired.",
            Kind::Counter,
        );
        for (event, n) in TriggerEvent::ALL.iter().zip(&self.trigger_events) {
            e.sample(
                "coral_colony_trigger_events_total",
                &[("event", event.label())],
                n.load(Relaxed) as f64,
            );
        }
        e.finish()
    }
}

/// A tower layer that times every gRPC call and counts it by method and status code
/// into a [`ColonyMetrics`], and makes that the handlers' current metrics.
#[derive(Debug, Clone)]
pub(crate) struct RpcMetricsLayer(pub(crate) Arc<ColonyMetrics>);

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<ColonyMetrics>,
}

impl<S, B, R> tonic::codegen::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tonic::codegen::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let metrics = self.metrics.clone();
        let call = CURRENT.scope(metrics.clone(), self.inner.call(request));
        let start = Instant::now();
        Box::pin(async move {
            let result = call.await;
            // An error is in the headers (a trailers-only response); a success's OK
            // status comes in the trailers, after the body.
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(Code::Ok, Code::from_i32),
                Err(_) => Code::Unknown,
            };
            metrics.observe_rpc(&path, code, start.elapsed());
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpcs_are_counted_by_method_and_code() {
        let m = ColonyMetrics::default();
        let ingest = "/coral.v1.AgentService/IngestSpans";
        m.observe_rpc(ingest, Code::Ok, Duration::from_millis(3));
        m.observe_rpc(ingest, Code::Ok, Duration::from_millis(30));
        m.observe_rpc("/x.Y/Nope", Code::Unimplemented, Duration::ZERO);
        m.observe_rpc("/x.Y/Other", Code::Unimplemented, Duration::ZERO);
        let text = m.render();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(
            has(
                "coral_colony_rpc_duration_seconds_count{service=\"coral.v1.AgentService\",\
                 method=\"IngestSpans\",code=\"OK\"} 2"
            ),
            "{text}"
        );
        assert!(
            has(
                "coral_colony_rpc_duration_seconds_bucket{service=\"coral.v1.AgentService\",\
                 method=\"IngestSpans\",code=\"OK\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(
            has(
                "coral_colony_rpc_duration_seconds_count{service=\"unknown\",\
                 method=\"unknown\",code=\"Unimplemented\"} 2"
            ),
            "{text}"
        );
    }
}
