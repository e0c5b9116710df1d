//! `coral query traces --service S --min-duration 1s` and the service summary behind
//! `coral_query_summary` (exact over every request of the hour) over 1,000,000 stored
//! spans.

use crate::workload::{self, Database, Processes};
use anyhow::Result;
use coral_client::v1;
use std::time::{Duration, Instant};

const TRACES: u64 = 200_000;
const SPANS_PER_TRACE: u64 = 5;
const SERVICES: u64 = 5;
const RUNS: usize = 200;

pub async fn run(coral: &str, postgres: Option<&str>) -> Result<()> {
    println!();
    println!(
        "## query: traces --service svc-0 --min-duration 1s over {} spans ({TRACES} traces, {SERVICES} services, last hour), {RUNS} runs",
        TRACES * SPANS_PER_TRACE
    );
    println!(
        "| store | p50 | p95 | GetServiceSummary svc-0 1h p50 | p95 | ListServices round trip p50 (baseline) | ratio p50/baseline |"
    );
    println!("|---|---|---|---|---|---|---|");
    for pg in workload::backends(postgres) {
        let db = Database::fresh(pg).await?;
        let store = coral_colony::open_store(&db.config).await?;
        let records = workload::records(
            3,
            TRACES,
            SPANS_PER_TRACE,
            SERVICES,
            Duration::from_secs(3000),
        );
        for chunk in records.chunks(5_000) {
            store.insert_spans(chunk).await?;
        }
        drop(store);
        let mut procs = Processes::default();
        let colony = workload::start_colony(coral, &db, &mut procs).await?;
        let mut client = coral_client::query_client(coral_client::connect(&colony).await?);
        let request = v1::QueryTracesRequest {
            service: "svc-0".into(),
            min_duration: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            limit: 20,
            ..Default::default()
        };
        let found = client
            .query_traces(request.clone())
            .await?
            .into_inner()
            .spans
            .len();
        anyhow::ensure!(found == 20, "expected 20 slow requests, got {found}");
        let summary = v1::GetServiceSummaryRequest {
            service: "svc-0".into(),
            since: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            slowest: Some(3),
        };
        let counted = client
            .get_service_summary(summary.clone())
            .await?
            .into_inner();
        let requests = counted.services.first().map_or(0, |s| s.requests);
        anyhow::ensure!(requests > 0, "the summary counted no request");
        let mut summary_times = Vec::with_capacity(RUNS);
        let mut query_times = Vec::with_capacity(RUNS);
        let mut floor_times = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let t = Instant::now();
            client.query_traces(request.clone()).await?;
            query_times.push(t.elapsed());
            let t = Instant::now();
            client.get_service_summary(summary.clone()).await?;
            summary_times.push(t.elapsed());
            let t = Instant::now();
            client.list_services(v1::ListServicesRequest {}).await?;
            floor_times.push(t.elapsed());
        }
        let (p50, p95) = workload::percentiles(query_times);
        let (floor, _) = workload::percentiles(floor_times);
        let (s50, s95) = workload::percentiles(summary_times);
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms ({requests} requests) | {:.2} ms | {:.2} ms | {:.1} |",
            db.label,
            p50.as_secs_f64() * 1e3,
            p95.as_secs_f64() * 1e3,
            s50.as_secs_f64() * 1e3,
            s95.as_secs_f64() * 1e3,
            floor.as_secs_f64() * 1e3,
            p50.as_secs_f64() / floor.as_secs_f64()
        );
    }
    Ok(())
}
