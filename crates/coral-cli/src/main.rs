//! `coral`: the command line. Starts the colony and the agent, and asks the colony
//! questions. It reaches the colony only through `coral-client`.

mod commands;
mod output;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Coral finds out why a request was slow: agents tie CPU samples to the trace span
/// that was running, the colony stores and compares them.
#[derive(Parser)]
#[command(name = "coral", version, propagate_version = true, after_help = QUICK_START)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const QUICK_START: &str = "\
Quick start:
  coral demo                              # the whole diagnosis on a demo service (root)
  coral colony start                      # the server, embedded store, 127.0.0.1:7070
  coral agent start                       # OTLP on :4317 (gRPC) and :4318 (HTTP)
  coral query services
  coral query traces --service payment-svc --min-duration 1s
  coral query trace <trace-id>
  coral profile cpu --service payment-svc --duration 10s
  coral profile trace-trigger --service payment-svc --min-duration 1s --count 10
  coral query trace-profile <trace-id>
  coral query profile-compare --service payment-svc --cohort-a \"duration > 1s\" --cohort-b \"duration < 100ms\"
  coral mcp                               # MCP tools for AI assistants, on stdio";

#[derive(Subcommand)]
enum Command {
    /// Run the colony: the server that stores spans and answers queries.
    #[command(subcommand)]
    Colony(commands::colony::ColonyCommand),
    /// Run the node agent: receives OpenTelemetry spans and ships them to the colony.
    #[command(subcommand)]
    Agent(commands::agent::AgentCommand),
    /// Ask the colony: services, requests, traces, request profiles, cohort comparisons.
    Query(commands::query::QueryArgs),
    /// Profile CPU: now, or the next requests that match a trigger.
    #[command(subcommand)]
    Profile(commands::profile::ProfileCommand),
    /// Serve the MCP tools for AI assistants (stdio, or streamable HTTP with --http).
    Mcp(commands::mcp::McpArgs),
    /// Run the whole diagnosis on a demo service with a planted slow path (root).
    Demo(commands::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before the runtime starts its threads: capabilities are per thread.
    let privileges =
        matches!(cli.command, Command::Agent(_)).then(coral_agent::privileges::drop_unneeded);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            output::note(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Colony(cmd) => commands::colony::run(cmd).await,
            Command::Agent(cmd) => commands::agent::run(cmd, privileges).await,
            Command::Query(args) => commands::query::run(args).await,
            Command::Profile(cmd) => commands::profile::run(cmd).await,
            Command::Mcp(args) => commands::mcp::run(args).await,
            Command::Demo(args) => commands::demo::run(args).await,
        }
    });
    // Not waiting for a blocking read of the terminal that an interruption left behind.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(ref e) if let Some(commands::Interrupted(signal)) = e.downcast_ref() => {
            ExitCode::from((128 + signal) as u8)
        }
        // The reader of standard output went away (`coral … | head -1`): done, quietly.
        Err(e) if output::closed_stdout(&e) => ExitCode::SUCCESS,
        Err(e) => {
            output::note(&format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}
