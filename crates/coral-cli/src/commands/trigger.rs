//! `coral profile trace-trigger | trigger-status | triggers | trigger-cancel`:
//! trace-triggered profiling (RFD 080).

use super::ColonyAddr;
use crate::commands::query::{proto_duration, rpc_error};
use crate::output::Format;
use crate::output::trigger::{print_trigger, print_triggers, progress_line};
use anyhow::Context;
use clap::Args;
use coral_analysis::{RequestCriteria, parse_duration};
use coral_client::Channel;
use coral_client::v1;
use coral_client::v1::profile_service_client::ProfileServiceClient;
use std::io::IsTerminal;
use std::time::Duration;

/// How often the progress is polled.
const POLL: Duration = Duration::from_millis(500);

/// How long to wait for the baseline after the trigger ended.
const BASELINE_GRACE: Duration = Duration::from_secs(3);

#[derive(Args)]
pub struct TraceTriggerArgs {
    #[command(flatten)]
    colony: ColonyAddr,
    /// The service (as in its service.name resource attribute).
    #[arg(long)]
    service: String,
    /// Only requests at least this long (e.g. 500ms, 1s).
    #[arg(long, value_parser = parse_duration)]
    min_duration: Option<Duration>,
    /// Only requests at most this long.
    #[arg(long, value_parser = parse_duration)]
    max_duration: Option<Duration>,
    /// Only these HTTP statuses: 500, 5xx, 4xx,503; or "error" for span status ERROR.
    #[arg(long)]
    status_code: Option<String>,
    /// Only requests whose URL path (or route) matches this glob: /checkout*, /api/*/pay.
    #[arg(long)]
    url: Option<String>,
    /// Samples per second of each thread's CPU time (1 to 1000).
    #[arg(long, default_value_t = 99, value_parser = clap::value_parser!(u32).range(1..=1000))]
    frequency: u32,
    /// How many matching requests to collect (1 to 1000).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    count: u32,
    /// Non-matching requests kept as the baseline cohort (default: 5 × count, at most
    /// 1000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=1000))]
    baseline: Option<u32>,
    /// Give up after this long (up to 24h).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the trigger id and return; the trigger keeps collecting.
    #[arg(long)]
    detach: bool,
    /// Output format: a table for people, or JSON for programs.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(Args)]
pub struct TriggerIdArgs {
    #[command(flatten)]
    colony: ColonyAddr,
    /// The trigger id (a UUID, as `coral profile triggers` lists them).
    trigger_id: String,
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(Args)]
pub struct TriggersArgs {
    #[command(flatten)]
    colony: ColonyAddr,
    /// Only this service's triggers.
    #[arg(long)]
    service: Option<String>,
    /// Also the triggers that have ended (completed, expired, cancelled).
    #[arg(long)]
    all: bool,
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    output: Format,
}

fn millis(d: Option<Duration>, flag: &str) -> anyhow::Result<i32> {
    let Some(d) = d else { return Ok(0) };
    anyhow::ensure!(
        !d.is_zero(),
        "{flag} must be more than 0 (leave it out for no bound)"
    );
    i32::try_from(d.as_millis()).with_context(|| format!("{flag} is too large"))
}

fn check_trigger_id(id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        uuid::Uuid::parse_str(id.trim()).is_ok(),
        "invalid trigger id {id:?}: expected a UUID (list them with `coral profile triggers --all`)"
    );
    Ok(())
}

async fn client(colony: &ColonyAddr) -> anyhow::Result<ProfileServiceClient<Channel>> {
    Ok(coral_client::profile_client(colony.connect().await?))
}

async fn get(
    client: &mut ProfileServiceClient<Channel>,
    id: &str,
) -> anyhow::Result<v1::TraceProfileTrigger> {
    Ok(client
        .get_trace_profile_trigger(v1::GetTraceProfileTriggerRequest {
            trigger_id: id.to_string(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner())
}

async fn cancel_rpc(
    client: &mut ProfileServiceClient<Channel>,
    id: &str,
) -> anyhow::Result<v1::TraceProfileTrigger> {
    Ok(client
        .cancel_trace_profile_trigger(v1::CancelTraceProfileTriggerRequest {
            trigger_id: id.to_string(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner())
}

pub async fn trace_trigger(args: TraceTriggerArgs) -> anyhow::Result<()> {
    let min_duration_ms = millis(args.min_duration, "--min-duration")?;
    let max_duration_ms = millis(args.max_duration, "--max-duration")?;
    anyhow::ensure!(
        !args.timeout.is_zero(),
        "--timeout must be more than 0 (e.g. 5m)"
    );
    // The colony checks these too; checking here fails fast, before any connection.
    RequestCriteria::new(
        args.min_duration.map(|d| d.as_millis() as u64),
        args.max_duration.map(|d| d.as_millis() as u64),
        args.status_code.as_deref(),
        args.url.as_deref(),
    )?;
    let mut client = client(&args.colony).await?;
    let request = v1::StartTraceProfileTriggerRequest {
        service_id: args.service.clone(),
        min_duration_ms,
        status_code_pattern: args.status_code.clone().unwrap_or_default(),
        frequency_hz: Some(args.frequency as i32),
        max_requests: Some(args.count as i32),
        timeout: Some(proto_duration(args.timeout)),
        max_duration_ms,
        url_pattern: args.url.clone().unwrap_or_default(),
        baseline_requests: args.baseline.map(|b| b as i32),
    };
    let started = client
        .start_trace_profile_trigger(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
    let id = started.trigger_id;
    if args.detach {
        if args.output == Format::Json {
            let trigger = started.trigger.unwrap_or_default();
            return print_trigger(&trigger, Format::Json).map_err(Into::into);
        }
        println!("{id}");
        eprintln!(
            "collecting in the background: `coral profile trigger-status {id}` shows progress, \
             `coral profile trigger-cancel {id}` stops it"
        );
        return Ok(());
    }

    let trigger = tokio::select! {
        result = wait(&mut client, &id) => result?,
        _ = tokio::signal::ctrl_c() => {
            clear_progress();
            return interrupted(&mut client, &id).await;
        }
    };
    print_trigger(&trigger, args.output)?;
    Ok(())
}

/// Polls the trigger until it ends, with a live progress line on a terminal (a line
/// per newly collected request otherwise).
async fn wait(
    client: &mut ProfileServiceClient<Channel>,
    id: &str,
) -> anyhow::Result<v1::TraceProfileTrigger> {
    let live = std::io::stderr().is_terminal();
    let mut shown = None;
    loop {
        let trigger = get(client, id).await?;
        let now = now_unix_nano();
        if trigger.status != "active" {
            clear_progress();
            return Ok(with_baseline(client, trigger).await);
        }
        let line = progress_line(&trigger, now);
        if live {
            eprint!("\r\x1b[2K{line}");
        } else if shown != Some(trigger.collected_requests) {
            eprintln!("{line}");
            shown = Some(trigger.collected_requests);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Agents send a trigger's baseline when it ends, so it lands a moment after the end:
/// wait a little for it, so that a `profile-compare` run next finds it.
async fn with_baseline(
    client: &mut ProfileServiceClient<Channel>,
    mut trigger: v1::TraceProfileTrigger,
) -> v1::TraceProfileTrigger {
    let deadline = tokio::time::Instant::now() + BASELINE_GRACE;
    while trigger.baseline_collected < trigger.baseline_requests
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(POLL).await;
        match get(client, &trigger.trigger_id).await {
            Ok(t) => trigger = t,
            Err(_) => break,
        }
    }
    trigger
}

fn now_unix_nano() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn clear_progress() {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K");
    }
}

/// Ctrl-C while waiting: on a terminal, ask whether to cancel; otherwise leave the
/// trigger running and say how to follow it.
async fn interrupted(client: &mut ProfileServiceClient<Channel>, id: &str) -> anyhow::Result<()> {
    let cancel = if std::io::stdin().is_terminal() {
        eprint!("Cancel trigger {id}? What it collected so far is kept. [y/N] ");
        let answer = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map(|_| line)
        })
        .await??;
        matches!(answer.trim(), "y" | "Y" | "yes")
    } else {
        false
    };
    if cancel {
        let trigger = cancel_rpc(client, id).await?;
        eprintln!("trigger {id} cancelled");
        print_trigger(&trigger, Format::Table)?;
    } else {
        eprintln!(
            "trigger {id} left running: `coral profile trigger-status {id}` shows progress, \
             `coral profile trigger-cancel {id}` stops it"
        );
    }
    Ok(())
}

pub async fn status(args: TriggerIdArgs) -> anyhow::Result<()> {
    check_trigger_id(&args.trigger_id)?;
    let mut client = client(&args.colony).await?;
    let trigger = get(&mut client, args.trigger_id.trim()).await?;
    print_trigger(&trigger, args.output).map_err(Into::into)
}

pub async fn cancel(args: TriggerIdArgs) -> anyhow::Result<()> {
    check_trigger_id(&args.trigger_id)?;
    let id = args.trigger_id.trim();
    let mut client = client(&args.colony).await?;
    let before = get(&mut client, id).await?;
    if before.status != "active" {
        eprintln!(
            "trigger {id} had already ended ({}): nothing to cancel",
            before.status
        );
        return print_trigger(&before, args.output).map_err(Into::into);
    }
    let trigger = cancel_rpc(&mut client, id).await?;
    if trigger.status != "cancelled" {
        // It completed or expired between the two calls.
        eprintln!(
            "trigger {id} ended ({}) before it could be cancelled",
            trigger.status
        );
    }
    print_trigger(&trigger, args.output).map_err(Into::into)
}

pub async fn list(args: TriggersArgs) -> anyhow::Result<()> {
    let mut client = client(&args.colony).await?;
    let triggers = client
        .list_trace_profile_triggers(v1::ListTraceProfileTriggersRequest {
            service: args.service.unwrap_or_default(),
            all: args.all,
            limit: 0,
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .triggers;
    print_triggers(&triggers, args.all, args.output).map_err(Into::into)
}
