//! `payment-svc`: the service the Coral demo profiles, and the load that drives it.
//!
//! It is an ordinary HTTP service instrumented with the OpenTelemetry SDK: it knows
//! nothing about Coral except where to send OTLP. Its slow path is planted so the demo
//! has a known right answer.

mod load;
mod service;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "payment-svc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve `/checkout`, exporting a span per request over OTLP/gRPC.
    Serve(service::ServeArgs),
    /// Send `/checkout` requests at a steady rate until stopped.
    Load(load::LoadArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => service::serve(args).await,
        Command::Load(args) => load::run(args).await,
    }
}
