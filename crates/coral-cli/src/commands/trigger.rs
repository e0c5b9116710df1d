//! `coral profile trace-trigger | trigger-status | triggers | trigger-cancel`:
//! trace-triggered profiling (RFD 080).

use super::ColonyAddr;
use crate::commands::query::{proto_duration, rpc_error};
use crate::output::trigger::{print_trigger, print_triggers, progress_line};
use crate::output::{self, Format, TextOutput};
use anyhow::Context;
use clap::Args;
use coral_analysis::{RequestCriteria, parse_duration};
use coral_client::Channel;
use coral_client::v1;
use coral_client::v1::profile_service_client::ProfileServiceClient;
use nix::sys::signal::Signal;
use std::io::IsTerminal;
use std::time::Duration;

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
    /// What to collect, comma-separated: cpu (always), offcpu (where each request's
    /// thread waited: locks, disk, network, sleep, run queue), memory (the memory each
    /// request made resident, by stack) [default: cpu,offcpu].
    #[arg(long, value_delimiter = ',', value_parser = ["cpu", "offcpu", "memory"])]
    types: Vec<String>,
    /// Print the trigger id and return; the trigger keeps collecting.
    #[arg(long)]
    detach: bool,
    #[command(flatten)]
    output: TextOutput,
}

#[derive(Args)]
pub struct TriggerIdArgs {
    #[command(flatten)]
    colony: ColonyAddr,
    /// The trigger id (a UUID, as `coral profile triggers` lists them).
    trigger_id: String,
    #[command(flatten)]
    output: TextOutput,
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
    #[command(flatten)]
    output: TextOutput,
}

fn millis(d: Option<Duration>, flag: &str) -> anyhow::Result<i32> {
    let Some(d) = d else { return Ok(0) };
    anyhow::ensure!(
        !d.is_zero(),
        "{flag} must be more than 0 (leave it out for no bound)"
    );
    i32::try_from(d.as_millis()).with_context(|| format!("{flag} is too large"))
}

/// A trigger id, or a unique prefix of it of at least 4 hex digits (hyphens optional,
/// as git takes a short commit id); the colony resolves prefixes.
fn check_trigger_id(id: &str) -> anyhow::Result<()> {
    let id = id.trim();
    let digits = id.chars().filter(|&c| c != '-').count();
    anyhow::ensure!(
        uuid::Uuid::parse_str(id).is_ok()
            || ((4..=32).contains(&digits)
                && id.chars().all(|c| c == '-' || c.is_ascii_hexdigit())),
        "invalid trigger id {id:?}: expected a UUID or at least its first 4 hex digits \
         (list them with `coral profile triggers --all`)"
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
        .map_err(trigger_error)?
        .into_inner())
}

/// The colony's refusal of a trigger id, with where to find the ids.
fn trigger_error(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::NotFound | tonic::Code::InvalidArgument => anyhow::anyhow!(
            "{} (`coral profile triggers --all` lists the triggers)",
            status.message()
        ),
        _ => rpc_error(status),
    }
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
        .map_err(trigger_error)?
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
    )
    .and_then(RequestCriteria::require_some)?;
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
        profile_types: args.types.clone(),
    };
    let started = client
        .start_trace_profile_trigger(request)
        .await
        .map_err(|status| match status.code() {
            tonic::Code::ResourceExhausted => anyhow::anyhow!(
                "{} (`coral profile triggers --service {}` lists them, `coral profile \
                 trigger-cancel ID` stops one)",
                status.message(),
                args.service
            ),
            _ => rpc_error(status),
        })?
        .into_inner();
    let id = started.trigger_id;
    if args.detach {
        if args.output.format == Format::Json {
            let trigger = started.trigger.unwrap_or_default();
            return print_trigger(&trigger, &args.output);
        }
        output::emit(format!("{id}\n").as_bytes(), args.output.file.as_deref())?;
        output::note(&format!(
            "collecting in the background: {}",
            follow_hint(&id)
        ));
        return Ok(());
    }

    // Listening before the id is out: whoever reads it may signal at once.
    let mut signals = Signals::listen()?;
    // Said before waiting, so that whatever happens to this process (a terminal closed,
    // `timeout`, CI or Kubernetes stopping it) the user knows what runs and how to reach it.
    output::note(&format!(
        "trigger {id} started on {}: {}",
        args.service,
        follow_hint(&id)
    ));
    let trigger = tokio::select! {
        result = wait(&mut client, &id) => result?,
        signal = signals.recv() => {
            clear_progress();
            return interrupted(&mut client, &id, signal, &args.output).await;
        }
    };
    print_trigger(&trigger, &args.output)
}

/// How to follow or stop a trigger that keeps running without this command.
fn follow_hint(id: &str) -> String {
    format!(
        "`coral profile trigger-status {id}` shows progress, `coral profile trigger-cancel {id}` \
         stops it"
    )
}

/// Polls the trigger until it ends and its baseline has arrived (the path the MCP tool
/// shares), with a live progress line on a terminal (a line per newly collected request
/// otherwise).
async fn wait(
    client: &mut ProfileServiceClient<Channel>,
    id: &str,
) -> anyhow::Result<v1::TraceProfileTrigger> {
    let live = std::io::stderr().is_terminal();
    let mut shown = None;
    let trigger = coral_client::trigger::follow(client, id, None, |trigger| {
        let line = progress_line(trigger, now_unix_nano());
        if live {
            output::progress(&line);
        } else if shown != Some(trigger.collected_requests) {
            output::note(&line);
            shown = Some(trigger.collected_requests);
        }
    })
    .await
    .map_err(rpc_error)?;
    clear_progress();
    Ok(trigger)
}

fn now_unix_nano() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn clear_progress() {
    if std::io::stderr().is_terminal() {
        output::progress("");
    }
}

/// SIGINT (Ctrl-C) and SIGTERM (what `timeout`, CI and Kubernetes send), caught from
/// [`Signals::listen`] on.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The signal that stopped the wait.
    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.interrupt.recv() => Signal::SIGINT,
            _ = self.terminate.recv() => Signal::SIGTERM,
        }
    }
}

/// The wait was interrupted. Ctrl-C on a terminal asks whether to cancel (a second
/// Ctrl-C leaves it running); otherwise the trigger is left running, with a line that
/// says how to follow or cancel it, and `-o json` still prints the trigger as JSON.
/// Exits with 128 + the signal, as a shell expects of an interrupted command.
async fn interrupted(
    client: &mut ProfileServiceClient<Channel>,
    id: &str,
    signal: Signal,
    output: &TextOutput,
) -> anyhow::Result<()> {
    let interactive = signal == Signal::SIGINT
        && std::io::stdin().is_terminal()
        && std::io::stderr().is_terminal();
    if interactive && ask_to_cancel(id).await? {
        let trigger = cancel_rpc(client, id).await?;
        output::note(&format!(
            "trigger {id} cancelled; what it collected is kept"
        ));
        print_trigger(&trigger, output)?;
        return Ok(());
    }
    output::note(&format!(
        "trigger {id} is still running: {}",
        follow_hint(id)
    ));
    if output.format == Format::Json {
        // Whatever the colony can tell now; the id alone if it cannot answer.
        let trigger = get(client, id)
            .await
            .unwrap_or_else(|_| v1::TraceProfileTrigger {
                trigger_id: id.to_string(),
                status: "active".into(),
                ..Default::default()
            });
        print_trigger(&trigger, output)?;
    }
    Err(super::Interrupted(signal as i32).into())
}

/// Asks on the terminal whether to cancel; a second Ctrl-C answers no.
async fn ask_to_cancel(id: &str) -> anyhow::Result<bool> {
    eprint!("Cancel trigger {id}? What it collected so far is kept. [y/N] ");
    let answer = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    });
    tokio::select! {
        answer = answer => Ok(matches!(answer??.trim(), "y" | "Y" | "yes")),
        _ = tokio::signal::ctrl_c() => {
            eprintln!();
            Ok(false)
        }
    }
}

pub async fn status(args: TriggerIdArgs) -> anyhow::Result<()> {
    check_trigger_id(&args.trigger_id)?;
    let mut client = client(&args.colony).await?;
    let trigger = get(&mut client, args.trigger_id.trim()).await?;
    print_trigger(&trigger, &args.output)
}

pub async fn cancel(args: TriggerIdArgs) -> anyhow::Result<()> {
    check_trigger_id(&args.trigger_id)?;
    let id = args.trigger_id.trim();
    let mut client = client(&args.colony).await?;
    let before = get(&mut client, id).await?;
    if !coral_client::trigger::is_active(&before) {
        output::note(&format!(
            "trigger {id} had already ended ({}): nothing to cancel",
            before.status
        ));
        return print_trigger(&before, &args.output);
    }
    let trigger = cancel_rpc(&mut client, id).await?;
    if trigger.status != "cancelled" {
        // It completed or expired between the two calls.
        output::note(&format!(
            "trigger {id} ended ({}) before it could be cancelled",
            trigger.status
        ));
    }
    print_trigger(&trigger, &args.output)
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
    print_triggers(&triggers, args.all, &args.output)
}

#[cfg(test)]
mod check_trigger_id_tests {
    use super::check_trigger_id;

    #[test]
    fn whole_ids_and_prefixes_of_four_hex_digits_or_more_pass() {
        for ok in [
            "0af76519-16cd-43dd-8448-eb211c80319c",
            "0af7",
            "0AF7",
            "0af76519-16",
            " 0af765 ",
        ] {
            assert!(check_trigger_id(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "0af",
            "0a-f",
            "0af7g",
            "",
            "last",
            "0af76519-16cd-43dd-8448-eb211c80319c0",
        ] {
            assert!(check_trigger_id(bad).is_err(), "{bad:?}");
        }
    }
}
