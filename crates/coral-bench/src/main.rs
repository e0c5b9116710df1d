//! `coral-bench`: speed figures for docs/benchmarks.md. Run through `cargo xtask bench`,
//! which builds in release mode, provides PostgreSQL and passes its URL.
//!
//! - `ingest`: OTLP/gRPC into a real agent process → colony process → store, in spans/s,
//!   beside the store's own bulk-insert rate (the baseline: the ceiling the pipeline
//!   could reach) measured in the same run.
//! - `query`: `QueryTraces --min-duration 1s` over 1,000,000 stored spans, p50/p95 in
//!   the colony, beside a `ListServices` round trip (the RPC floor) measured in the
//!   same run.
//!
//! Every figure is printed; nothing here passes or fails on a timing.

mod ingest;
mod query;
mod workload;

use anyhow::{Result, bail};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let postgres = std::env::var("CORAL_BENCH_POSTGRES_URL").ok();
    let coral = std::env::var("CORAL_BIN").unwrap_or_else(|_| "target/release/coral".into());
    let which = args.first().map(String::as_str).unwrap_or("all");
    if !matches!(which, "all" | "ingest" | "query") {
        bail!("usage: coral-bench [all|ingest|query]");
    }
    if matches!(which, "all" | "ingest") {
        ingest::run(&coral, postgres.as_deref()).await?;
    }
    if matches!(which, "all" | "query") {
        query::run(&coral, postgres.as_deref()).await?;
    }
    Ok(())
}
