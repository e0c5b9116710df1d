//! The OTLP trace receivers: [`grpc`] (`TraceService/Export`) and [`http`]
//! (`POST /v1/traces`, protobuf or JSON). Both hand decoded requests to [`Intake`],
//! which converts them ([`crate::otlp`]), shows them to its [`SpanObserver`] (the CPU
//! profiler) and pushes them into the uplink buffer.
//!
//! Answers follow the OTLP specification: invalid spans are reported in
//! `partial_success` (the rest of the request is kept); a full buffer is a retryable
//! error (gRPC `UNAVAILABLE`, HTTP 503 with `Retry-After`), and a request larger than
//! the whole buffer a non-retryable one.

pub mod grpc;
pub mod http;

use crate::otlp;
use crate::stats::AgentStats;
use crate::uplink::{Buffer, Full};
use coral_client::v1;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::sync::Arc;

/// Sees the valid spans of every OTLP request, before they are buffered for the colony
/// (the CPU profiler learns which processes serve which service, and picks the
/// requests it profiles). Called on the receivers' tasks: it must be quick.
pub trait SpanObserver: Send + Sync {
    /// The converted spans of one request (possibly refused afterwards because the
    /// buffer is full, so the same spans may be seen again when the sender retries).
    fn observe(&self, spans: &[v1::Span]);
}

/// Where both receivers deliver: conversion, counting, observing, buffering.
#[derive(Clone)]
pub struct Intake {
    node: Arc<str>,
    buffer: Arc<Buffer>,
    stats: Arc<AgentStats>,
    observer: Option<Arc<dyn SpanObserver>>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("node", &self.node)
            .field("buffer", &self.buffer)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// Why a request was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The buffer is full now; the sender should retry later.
    BufferFull(Full),
    /// The request alone has more spans than the buffer can ever hold.
    TooManySpans(Full),
}

impl Refusal {
    /// What to tell the sender.
    pub fn message(&self) -> String {
        match self {
            Refusal::BufferFull(_) => "agent buffer full; retry later".to_string(),
            Refusal::TooManySpans(full) => format!(
                "the request has {} spans but the agent buffers at most {}; send smaller \
                 batches (e.g. lower the exporter's max export batch size) or raise \
                 --max-buffered-spans",
                full.spans, full.capacity
            ),
        }
    }
}

impl Intake {
    pub fn new(node: impl Into<Arc<str>>, buffer: Arc<Buffer>, stats: Arc<AgentStats>) -> Self {
        Self {
            node: node.into(),
            buffer,
            stats,
            observer: None,
        }
    }

    /// This intake, showing every request's valid spans to `observer` first.
    pub fn with_observer(mut self, observer: Arc<dyn SpanObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Converts `request` and buffers its valid spans (all or none). The answer carries
    /// `partial_success` when spans were rejected.
    pub fn accept(
        &self,
        request: ExportTraceServiceRequest,
    ) -> Result<ExportTraceServiceResponse, Refusal> {
        let conversion = otlp::convert(request, &self.node);
        self.stats.add_received(conversion.received());
        if conversion.truncated > 0 {
            self.stats.add_truncated(conversion.truncated);
        }
        let rejected = conversion.rejections.len();
        let error_message = conversion.error_message();
        if rejected > 0 {
            self.stats.add_rejected(rejected);
            tracing::debug!("{error_message}");
        }
        if let Some(observer) = &self.observer
            && !conversion.spans.is_empty()
        {
            observer.observe(&conversion.spans);
        }
        if let Err(full) = self.buffer.try_push(conversion.spans) {
            if full.never_fits() {
                self.stats
                    .add_dropped(full.spans, "request larger than the buffer");
                return Err(Refusal::TooManySpans(full));
            }
            self.stats.add_dropped(
                full.spans,
                "the agent buffer is full (the colony is slow or unreachable); senders were told to retry",
            );
            return Err(Refusal::BufferFull(full));
        }
        Ok(ExportTraceServiceResponse {
            partial_success: (rejected > 0).then_some(ExportTracePartialSuccess {
                rejected_spans: rejected as i64,
                error_message,
            }),
        })
    }
}
