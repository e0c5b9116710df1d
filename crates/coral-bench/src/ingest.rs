//! Span ingest: OTLP/gRPC → agent process → colony process → store.

use crate::workload::{self, Database, Processes};
use anyhow::{Result, bail};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use std::time::{Duration, Instant};

/// Spans sent end to end per backend.
const SPANS: u64 = 500_000;
/// Spans per OTLP request (an SDK batch processor's usual size is 512).
pub const PER_REQUEST: u64 = 1_000;
/// Concurrent exporters.
pub const SENDERS: usize = 4;

pub async fn run(coral: &str, postgres: Option<&str>) -> Result<()> {
    println!(
        "## ingest: OTLP/gRPC → agent → colony → store ({SPANS} spans, {PER_REQUEST} per request, {SENDERS} senders)"
    );
    println!("| store | end-to-end spans/s | store bulk insert spans/s (baseline) | ratio |");
    println!("|---|---|---|---|");
    for pg in workload::backends(postgres) {
        let baseline = store_baseline(pg).await?;
        let (label, e2e) = end_to_end(coral, pg).await?;
        println!(
            "| {label} | {e2e:.0} | {baseline:.0} | {:.2} |",
            e2e / baseline
        );
    }
    Ok(())
}

/// The store alone: batches of 2,000 straight into `insert_spans`.
async fn store_baseline(pg: Option<&str>) -> Result<f64> {
    let db = Database::fresh(pg).await?;
    let store = coral_colony::open_store(&db.config).await?;
    let records = workload::records(1, SPANS, 1, 1, Duration::from_secs(3600));
    let start = Instant::now();
    for chunk in records.chunks(2_000) {
        store.insert_spans(chunk).await?;
    }
    Ok(SPANS as f64 / start.elapsed().as_secs_f64())
}

async fn end_to_end(coral: &str, pg: Option<&str>) -> Result<(&'static str, f64)> {
    let db = Database::fresh(pg).await?;
    let mut procs = Processes::default();
    let colony = workload::start_colony(coral, &db, &mut procs).await?;
    let (otlp, _) = workload::start_agent(coral, &colony, &mut procs)?;
    let requests = workload::otlp_requests(2, SPANS, PER_REQUEST, 1000);
    let elapsed = pump(&otlp, &db, requests, SPANS).await?;
    Ok((db.label, SPANS as f64 / elapsed.as_secs_f64()))
}

/// Sends `requests` to the agent at `otlp` from [`SENDERS`] concurrent exporters, then
/// waits until `db` holds `stored` spans. Returns the time from the first export on.
pub async fn pump(
    otlp: &str,
    db: &Database,
    requests: Vec<ExportTraceServiceRequest>,
    stored: u64,
) -> Result<Duration> {
    let client = workload::otlp_client(otlp).await;
    let start = Instant::now();
    let mut senders = Vec::new();
    for part in requests.chunks(requests.len().div_ceil(SENDERS)) {
        let (mut client, part) = (client.clone(), part.to_vec());
        senders.push(tokio::spawn(async move {
            for request in part {
                // A full agent buffer answers UNAVAILABLE: back off and retry, as SDKs do.
                while let Err(status) = client.export(request.clone()).await {
                    if status.code() != tonic::Code::Unavailable {
                        return Err(anyhow::anyhow!("export failed: {status}"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            Ok(())
        }));
    }
    for s in senders {
        s.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let count = db.count_spans().await? as u64;
        if count >= stored {
            return Ok(start.elapsed());
        }
        if Instant::now() > deadline {
            bail!("only {count} of {stored} spans were stored");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
