//! A steady stream of `/checkout` requests: an open-loop generator (requests start on
//! schedule whether or not earlier ones have finished, as real traffic does).

use clap::Args;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Args)]
pub struct LoadArgs {
    /// The service's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: String,
    /// Requests per second (1 to 1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rps: u32,
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    unreachable: AtomicU64,
}

pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let counts = Arc::new(Counts::default());
    let mut tick = tokio::time::interval(Duration::from_secs(1) / args.rps);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    eprintln!(
        "load: {} requests/s to http://{}/checkout",
        args.rps, args.target
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        let (target, counts) = (args.target.clone(), counts.clone());
        tokio::spawn(async move {
            let counter = match checkout(&target).await {
                Ok(true) => &counts.ok,
                Ok(false) => &counts.failed,
                Err(_) => &counts.unreachable,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }
    eprintln!(
        "load: {} ok, {} failed, {} unreachable",
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        counts.unreachable.load(Ordering::Relaxed)
    );
    Ok(())
}

/// One request; whether it got a 2xx.
async fn checkout(target: &str) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(target).await?;
    stream
        .write_all(
            format!(
                "POST /checkout HTTP/1.1\r\nHost: {target}\r\nContent-Length: 0\r\n\
                 Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(response.starts_with(b"HTTP/1.1 2"))
}
