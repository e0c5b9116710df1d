//! `coral-bench`: speed figures for docs/benchmarks.md. Run through `cargo xtask bench`,
//! which builds in release mode, provides PostgreSQL and passes its URL.
//!
//! - `ingest`: OTLP/gRPC into a real agent process → colony process → store, in spans/s,
//!   beside the store's own bulk-insert rate (the baseline: the ceiling the pipeline
//!   could reach) measured in the same run.
//! - `query`: `QueryTraces --min-duration 1s` over 1,000,000 stored spans, p50/p95 in
//!   the colony, beside a `ListServices` round trip (the RPC floor) measured in the
//!   same run.
//! - `overhead`: a CPU-bound workload without frame pointers on both cores, in
//!   alternating rounds without (the baseline) and with a profiler at 99 Hz: Coral's
//!   eBPF sampler in `auto` and `fp` unwinding (drained every 100 ms and symbolized, as
//!   the agent does), `perf record --call-graph dwarf` and `perf record -g`:
//!   iterations/s, the loss, and the share of Coral's stacks reaching a thread root.
//!   Needs root.
//! - `unwind`: stacks/s per core of the agent's unwinding + symbolization, over real
//!   samples (registers + stack bytes) of a workload without frame pointers, cold then
//!   warm. Needs ptrace (root).
//! - `symbolize`: frames/s of the symbolizer on stacks of this process, warm cache,
//!   beside the cold first pass (the baseline).
//! - `mcp`: every query tool of `coral mcp`, called by rmcp's client over the child's
//!   stdio, against a colony holding 1,000,000 spans and a few thousand request
//!   profiles: p50/p95 and answer sizes, beside the `coral_list_services` call (the
//!   baseline) and a raw `ListServices` round trip measured in the same run.
//! - `trace-profile`: `GetTraceProfile` p50/p95 in a colony over 10,000,000 stored
//!   profile samples (PostgreSQL; fewer on SQLite), beside a `ListServices` round trip.
//! - `trigger`: trace-triggered profiling (root). The agent's perf events with no
//!   trigger, an active one and a cancelled one; a saturated service's requests/s in
//!   alternating rounds without (the baseline) and with an active trigger at 99 Hz;
//!   `RequestCriteria::matches` spans/s beside a duration comparison, and span ingest
//!   through an agent with and without an active trigger; a matching span's arrival to
//!   its trace id in `GetTraceProfileTrigger`, beside that RPC's round trip.
//! - `offcpu`: off-CPU recording (root). Pairs of threads ping-ponging a token (over
//!   50,000 context switches/s), in alternating rounds without (the baseline) and with
//!   Coral's off-CPU records (threshold 1 ms, then 100 µs) + CPU sampling at 99 Hz,
//!   drained and symbolized as the agent does, and bcc's `offcputime` (when installed):
//!   round trips/s, the loss, switches/s, off-CPU records/s sent to user space and
//!   throttled, and the direct cost (profiler CPU and eBPF run time) per switch.
//! - `memory`: memory made resident (root). Threads mapping, touching and unmapping
//!   256 KiB blocks (over 100,000 page faults/s), in alternating rounds without (the
//!   baseline) and with Coral's memory records + CPU sampling at 99 Hz, Coral's CPU
//!   sampling alone, and `perf record -e page-faults` (`-g`, `-c 1 -g`, `--call-graph
//!   dwarf`): iterations/s, the loss, faults/s, memory records/s and throttled, the
//!   direct cost per fault, and whether the page-fault probes were attached.
//! - `agent-memory [--minutes N] [--workload nofp|busy-service]` (only when named: it
//!   takes 10 minutes, `--minutes` or `CORAL_BENCH_MEMORY_SECS` shortens it): the
//!   agent's RSS while profiling a busy service (by default one without frame pointers)
//!   at 99 Hz, beside its RSS before the session, and its slope. Needs root.
//! - `load [--seconds N] [--rate SPANS_PER_S] [--store postgres|sqlite|both]` (only
//!   when named; 600 s at 20,000 spans/s into PostgreSQL by default): colony and agent
//!   processes under a steady open-loop OTLP load with an active trace trigger and
//!   queries every second; progress every 10 s; then lost and duplicated spans
//!   (counted in the store), both processes' RSS over time, query latencies. The one
//!   benchmark that exits non-zero: when a span was lost or duplicated, or under 95 %
//!   of the target rate was held.
//!
//! Every figure is printed; apart from `load` (above), nothing here passes or fails.
//!
//! Hidden subcommands run the workloads the benchmarks sample, as child processes:
//! `spin <seconds>`, `pingpong <seconds>`, `faulter <seconds> [threads]` and
//! `busy-service --otlp HOST:PORT [--rate N] [--work-ms M] [--saturate]`.

mod agent_memory;
mod busy;
mod ingest;
mod load;
mod mcp;
mod memory;
mod nofp;
mod offcpu;
mod overhead;
mod query;
mod symbolize;
mod trace_profile;
mod trigger;
mod unwind;
mod workload;

use anyhow::{Result, bail};

const USAGE: &str = "usage: coral-bench [all|ingest|query|mcp|overhead|offcpu|memory|unwind|symbolize|trace-profile|trigger|agent-memory [--minutes N]|load [--seconds N] [--rate SPANS_PER_S] [--store postgres|sqlite|both]]";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("all");
    match which {
        "spin" => return busy::spin(&args[1..]),
        "busy-service" => return busy::busy_service(&args[1..]),
        "pingpong" => return offcpu::pingpong(&args[1..]),
        "faulter" => return memory::faulter(&args[1..]),
        "all" | "ingest" | "query" | "mcp" | "overhead" | "offcpu" | "memory" | "unwind"
        | "symbolize" | "trace-profile" | "trigger" | "agent-memory" | "load" => {}
        _ => bail!(USAGE),
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(which, &args[1..]))
}

async fn run(which: &str, rest: &[String]) -> Result<()> {
    let postgres = std::env::var("CORAL_BENCH_POSTGRES_URL").ok();
    let postgres = postgres.as_deref();
    let coral = std::env::var("CORAL_BIN").unwrap_or_else(|_| "target/release/coral".into());
    let all = which == "all";
    if all || which == "ingest" {
        ingest::run(&coral, postgres).await?;
    }
    if all || which == "query" {
        query::run(&coral, postgres).await?;
    }
    if all || which == "mcp" {
        mcp::run(&coral, postgres).await?;
    }
    if all || which == "overhead" {
        overhead::run()?;
    }
    if all || which == "offcpu" {
        offcpu::run()?;
    }
    if all || which == "memory" {
        memory::run()?;
    }
    if all || which == "unwind" {
        unwind::run()?;
    }
    if all || which == "symbolize" {
        symbolize::run()?;
    }
    if all || which == "trace-profile" {
        trace_profile::run(&coral, postgres).await?;
    }
    if all || which == "trigger" {
        trigger::run(&coral, postgres).await?;
    }
    // Not part of `all`: it takes 10 minutes.
    if which == "agent-memory" {
        agent_memory::run(&coral, postgres, rest).await?;
    }
    // Not part of `all`: 10 minutes by default, and it fails when a span is lost.
    if which == "load" {
        load::run(&coral, postgres, rest).await?;
    }
    Ok(())
}
