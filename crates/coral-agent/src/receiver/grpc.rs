//! OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export`, plain or
//! gzip-compressed.

use super::{Intake, Refusal};
use crate::AgentError;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::future::Future;
use tokio::net::TcpListener;
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

/// The gRPC trace service over an [`Intake`].
#[derive(Debug, Clone)]
pub struct GrpcReceiver {
    intake: Intake,
}

impl GrpcReceiver {
    pub fn new(intake: Intake) -> Self {
        Self { intake }
    }

    /// The tonic service, with the decode limit and gzip accepted.
    pub fn into_service(self, max_request_bytes: usize) -> TraceServiceServer<Self> {
        TraceServiceServer::new(self)
            .max_decoding_message_size(max_request_bytes)
            .accept_compressed(CompressionEncoding::Gzip)
    }
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        match self.intake.accept(request.into_inner()) {
            Ok(response) => Ok(Response::new(response)),
            // UNAVAILABLE is retryable for OTLP exporters.
            Err(refusal @ Refusal::BufferFull(_)) => Err(Status::unavailable(refusal.message())),
            // RESOURCE_EXHAUSTED without RetryInfo is not retried.
            Err(refusal @ Refusal::TooManySpans(_)) => {
                Err(Status::resource_exhausted(refusal.message()))
            }
        }
    }
}

/// Serves OTLP/gRPC on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    intake: Intake,
    max_request_bytes: usize,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::debug!("OTLP/gRPC receiver on {addr}");
    }
    tonic::transport::Server::builder()
        .add_service(GrpcReceiver::new(intake).into_service(max_request_bytes))
        .serve_with_incoming_shutdown(coral_client::incoming(listener), shutdown)
        .await?;
    Ok(())
}
