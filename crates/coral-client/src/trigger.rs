//! Following a trace-profile trigger to its end, then its baseline: the one path the
//! CLI and the MCP server share, so both answer only once a comparison can be made.
//!
//! Agents send a trigger's baseline (the random non-matching requests) when they learn
//! that it ended, so it lands a moment after the end. An answer given at the end would
//! show `baseline 0/50` and suggest a comparison whose cohort B is still empty.

use crate::Channel;
use crate::v1;
use crate::v1::profile_service_client::ProfileServiceClient;
use std::time::Duration;
use tokio::time::Instant;

/// How often the trigger is polled.
const POLL: Duration = Duration::from_millis(500);

/// After the end, how long the baseline may take to arrive without growing before it
/// is taken as complete (agents learn of the end within a second and send at once;
/// one with requests still being joined sends when they are).
const BASELINE_QUIET: Duration = Duration::from_secs(3);

/// The longest wait for the baseline after the end, however it keeps growing.
const BASELINE_MAX: Duration = Duration::from_secs(15);

/// Whether a trigger is still collecting.
pub fn is_active(trigger: &v1::TraceProfileTrigger) -> bool {
    trigger.status == "active"
}

/// Polls the trigger until it ends or `deadline` passes, calling `progress` with
/// every state seen while it is active; then, if it ended, waits for its baseline
/// ([`wait_for_baseline`]). Returns the last state seen.
pub async fn follow(
    client: &mut ProfileServiceClient<Channel>,
    trigger_id: &str,
    deadline: Option<Instant>,
    mut progress: impl FnMut(&v1::TraceProfileTrigger),
) -> Result<v1::TraceProfileTrigger, tonic::Status> {
    loop {
        let trigger = get(client, trigger_id).await?;
        if !is_active(&trigger) {
            return wait_for_baseline(client, trigger).await;
        }
        progress(&trigger);
        if deadline.is_some_and(|d| Instant::now() + POLL > d) {
            return Ok(trigger);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits, after a trigger ended, until its baseline is full, or has not grown for
/// [`BASELINE_QUIET`], or [`BASELINE_MAX`] passed.
async fn wait_for_baseline(
    client: &mut ProfileServiceClient<Channel>,
    mut trigger: v1::TraceProfileTrigger,
) -> Result<v1::TraceProfileTrigger, tonic::Status> {
    let start = Instant::now();
    let mut grew_at = start;
    while trigger.baseline_collected < trigger.baseline_requests
        && grew_at.elapsed() < BASELINE_QUIET
        && start.elapsed() < BASELINE_MAX
    {
        tokio::time::sleep(POLL).await;
        let now = get(client, &trigger.trigger_id).await?;
        if now.baseline_collected > trigger.baseline_collected {
            grew_at = Instant::now();
        }
        trigger = now;
    }
    Ok(trigger)
}

async fn get(
    client: &mut ProfileServiceClient<Channel>,
    trigger_id: &str,
) -> Result<v1::TraceProfileTrigger, tonic::Status> {
    Ok(client
        .get_trace_profile_trigger(v1::GetTraceProfileTriggerRequest {
            trigger_id: trigger_id.to_string(),
        })
        .await?
        .into_inner())
}

/// The trigger's criteria as a cohort filter (what `profile-compare` takes): the
/// requests it collected are cohort A, `not (…)` of it the others. `None` for a
/// stored trigger whose criteria no longer parse (never for one this colony started).
pub fn cohort_filter(trigger: &v1::TraceProfileTrigger) -> Option<String> {
    let ms = |v: i32| u64::try_from(v).ok().filter(|&v| v > 0);
    coral_analysis::RequestCriteria::new(
        ms(trigger.min_duration_ms),
        ms(trigger.max_duration_ms),
        Some(trigger.status_code_pattern.as_str()),
        Some(trigger.url_pattern.as_str()),
    )
    .ok()
    .map(|c| c.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_reads_as_a_filter_whose_negation_is_its_baseline() {
        let t = v1::TraceProfileTrigger {
            min_duration_ms: 1000,
            status_code_pattern: "5xx".into(),
            url_pattern: "/checkout*".into(),
            ..Default::default()
        };
        let filter = cohort_filter(&t).unwrap();
        assert_eq!(
            filter,
            "duration >= 1s and status = 5xx and (url ~ \"/checkout*\" or route ~ \"/checkout*\")"
        );
        coral_analysis::filter::parse(&format!("not ({filter})")).unwrap();
    }
}
