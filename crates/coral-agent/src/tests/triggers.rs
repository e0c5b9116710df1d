//! Trace-profile triggers on the agent: the (fake) colony sets the active triggers,
//! a `FakeSampler` stands in for eBPF, spans arrive over OTLP/gRPC.

use super::profiling::{
    MS, announce, export, factory, function_names, hot_fn, now_ns, other_fn, pid, request_span,
    sample, stack, total_samples, wait_for_targets,
};
use super::{FakeColony, PATIENCE, TestAgent, test_config};
use crate::AgentConfig;
use coral_client::v1;
use coral_sampler::{FakeSampler, Sampler};
use std::sync::Arc;
use std::time::Duration;

fn trigger(id: &str, min_ms: i64, frequency_hz: u32, baseline: u32) -> v1::TriggerCommand {
    v1::TriggerCommand {
        trigger_id: id.to_string(),
        service: "checkout".to_string(),
        min_duration_ns: min_ms * MS,
        frequency_hz,
        expires_unix_nano: now_ns() + 600_000 * MS,
        baseline_requests: baseline,
        ..Default::default()
    }
}

fn profiles_from(colony: &FakeColony, source: &str) -> Vec<v1::TraceProfile> {
    colony.with(|c| {
        c.trace_profiles
            .iter()
            .filter(|p| p.source == source)
            .cloned()
            .collect()
    })
}

fn span_number(p: &v1::TraceProfile) -> u8 {
    p.span_id[0]
}

/// The heart of tail-based capture: only the requests that match are collected, each
/// with the samples of its whole duration; a bounded random baseline of the others is
/// sent when the trigger ends; sampling stops with the trigger.
#[tokio::test]
async fn a_trigger_collects_matching_requests_whole_and_a_baseline_of_the_rest() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let agent = TestAgent::start_with(test_config(&colony.url()), factory(&sampler)).await;
    announce(&agent, "checkout", pid()).await;
    let before = now_ns() - 100 * MS;
    colony.set_triggers(vec![trigger("t-1", 300, 99, 2)]);
    wait_for_targets(&sampler, &[pid()]).await;
    let sampling_since = now_ns();
    assert_eq!(sampler.stats().frequency_hz, 99);
    tokio::time::sleep(Duration::from_millis(800)).await;

    let t0 = sampling_since + 10 * MS;
    // The slow request burns CPU from its first to its last millisecond.
    sampler.push([
        sample(pid(), 101, t0 + MS, hot_fn),
        sample(pid(), 101, t0 + 250 * MS, hot_fn),
        sample(pid(), 101, t0 + 499 * MS, hot_fn),
        sample(pid(), 102, t0 + 20 * MS, other_fn),
    ]);
    let mut spans = vec![request_span(1, t0, 500, Some(101))];
    // Five fast ones (not matching): baseline candidates.
    spans.extend((2..=6).map(|n| request_span(n, t0 + 10 * MS, 50, Some(102))));
    // Slow, but it began before sampling did: only its tail could be profiled.
    spans.push(request_span(7, before, 600, Some(101)));
    export(&agent, "checkout", pid(), spans).await;

    colony
        .wait_until("the slow request's profile", |c| {
            c.trace_profiles.iter().any(|p| p.source == "trigger:t-1")
        })
        .await;
    let collected = profiles_from(&colony, "trigger:t-1");
    assert_eq!(collected.len(), 1, "{collected:?}");
    let slow = &collected[0];
    assert_eq!(span_number(slow), 1);
    assert_eq!((slow.precision.as_str(), slow.frequency_hz), ("thread", 99));
    let profile = slow.profile.as_ref().unwrap();
    assert_eq!(
        total_samples(profile),
        3,
        "first, middle and last millisecond"
    );
    assert!(function_names(profile).iter().any(|n| n.contains("hot_fn")));

    // The baseline is held until the trigger ends.
    assert!(profiles_from(&colony, "baseline:t-1").is_empty());
    colony.set_triggers(vec![]);
    wait_for_targets(&sampler, &[]).await;
    colony
        .wait_until("the baseline", |c| {
            c.trace_profiles.iter().any(|p| p.source == "baseline:t-1")
        })
        .await;
    let baseline = profiles_from(&colony, "baseline:t-1");
    assert_eq!(baseline.len(), 2, "the reservoir holds 2");
    assert!(baseline.iter().all(|p| (2..=6).contains(&span_number(p))));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        colony.with(|c| !c.trace_profiles.iter().any(|p| span_number(p) == 7)),
        "a request that began before sampling is neither collected nor baseline"
    );
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_trigger_stops_sampling_at_its_expiry_without_the_colony() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let agent = TestAgent::start_with(test_config(&colony.url()), factory(&sampler)).await;
    announce(&agent, "checkout", pid()).await;
    let mut short = trigger("t-2", 0, 99, 0);
    short.expires_unix_nano = now_ns() + 1_500 * MS;
    colony.set_triggers(vec![short]);
    wait_for_targets(&sampler, &[pid()]).await;
    // The colony still lists it (its sweeper is late): the agent stops on its own.
    wait_for_targets(&sampler, &[]).await;
    assert_eq!(sampler.stats().frequency_hz, 0, "perf events detached");
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn overlapping_triggers_sample_once_at_the_highest_frequency() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let agent = TestAgent::start_with(test_config(&colony.url()), factory(&sampler)).await;
    announce(&agent, "checkout", pid()).await;
    colony.set_triggers(vec![trigger("slow", 100, 99, 0), trigger("any", 0, 499, 0)]);
    wait_for_targets(&sampler, &[pid()]).await;
    // The triggers start one after the other: sampling runs once, at the higher rate.
    for _ in 0..100 {
        if sampler.stats().frequency_hz == 499 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sampler.stats().frequency_hz, 499);
    assert_eq!(sampler.targets(), [pid()]);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = now_ns() - 250 * MS;
    sampler.push([sample(pid(), 101, t0 + 10 * MS, hot_fn)]);
    export(
        &agent,
        "checkout",
        pid(),
        vec![
            request_span(1, t0, 200, Some(101)),
            request_span(2, t0, 20, Some(101)),
        ],
    )
    .await;
    colony
        .wait_until("two profiles", |c| c.trace_profiles.len() == 2)
        .await;
    // A request both triggers match is collected once, by the older trigger; each
    // profile carries the frequency its samples were taken at.
    let slow = profiles_from(&colony, "trigger:slow");
    assert_eq!(slow.len(), 1);
    assert_eq!(span_number(&slow[0]), 1);
    assert_eq!(slow[0].frequency_hz, 499);
    let any = profiles_from(&colony, "trigger:any");
    assert_eq!(any.len(), 1);
    assert_eq!(span_number(&any[0]), 2);

    // One trigger ends: the other still needs the process.
    colony.set_triggers(vec![trigger("slow", 100, 99, 0)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sampler.targets(), [pid()]);
    colony.set_triggers(vec![]);
    wait_for_targets(&sampler, &[]).await;
    agent.stop().await.unwrap();
}

#[tokio::test]
async fn a_trigger_for_a_service_outside_the_allow_list_samples_nothing() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let mut config: AgentConfig = test_config(&colony.url());
    config.profiling.allow_services = Some(vec!["payments".to_string()]);
    let agent = TestAgent::start_with(config, factory(&sampler)).await;
    announce(&agent, "checkout", pid()).await;
    colony.set_triggers(vec![trigger("t-3", 0, 99, 10)]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    export(
        &agent,
        "checkout",
        pid(),
        vec![request_span(1, now_ns() - 100 * MS, 50, None)],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sampler.targets().is_empty());
    assert!(colony.with(|c| c.trace_profiles.is_empty()));
    agent.stop().await.unwrap();
}

/// A process of the service that appears while a trigger runs is sampled from then
/// on; its requests that began earlier are not collected.
#[tokio::test]
async fn a_new_process_is_sampled_from_its_first_request_on() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let agent = TestAgent::start_with(test_config(&colony.url()), factory(&sampler)).await;
    colony.set_triggers(vec![trigger("t-4", 0, 99, 0)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sampler.targets().is_empty(), "no process known yet");
    // The first span of the service reveals its process.
    let early = now_ns() - 50 * MS;
    export(
        &agent,
        "checkout",
        pid(),
        vec![request_span(1, early, 10, None)],
    )
    .await;
    wait_for_targets(&sampler, &[pid()]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = now_ns() - 100 * MS;
    sampler.push([sample(pid(), 101, t0 + 5 * MS, other_fn)]);
    export(
        &agent,
        "checkout",
        pid(),
        vec![request_span(2, t0, 50, None)],
    )
    .await;
    colony
        .wait_until("a profile", |c| !c.trace_profiles.is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let collected = profiles_from(&colony, "trigger:t-4");
    let numbers: Vec<u8> = collected.iter().map(span_number).collect();
    assert_eq!(numbers, [2]);
    assert_eq!(collected[0].precision, "process");
    agent.stop().await.unwrap();
}

/// Detached perf events cost nothing, a loaded sampler a little: it is unloaded once
/// nothing has needed it for a while, and loaded again by the next trigger.
#[tokio::test]
async fn an_idle_sampler_is_unloaded_and_loaded_again_when_needed() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let options = {
        let (sampler, loads) = (sampler.clone(), loads.clone());
        crate::ServeOptions {
            sampler_factory: Arc::new(move |_| {
                loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(sampler.clone() as Arc<dyn Sampler>)
            }),
            ..crate::ServeOptions::default()
        }
    };
    let mut config: AgentConfig = test_config(&colony.url());
    config.profiling.sampler_idle_unload = Duration::from_millis(300);
    let agent = TestAgent::start_with(config, options).await;
    announce(&agent, "checkout", pid()).await;
    let load_count = || loads.load(std::sync::atomic::Ordering::SeqCst);

    colony.set_triggers(vec![trigger("t-5", 0, 99, 0)]);
    wait_for_targets(&sampler, &[pid()]).await;
    assert_eq!(load_count(), 1);
    colony.set_triggers(vec![]);
    wait_for_targets(&sampler, &[]).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    colony.set_triggers(vec![trigger("t-6", 0, 99, 0)]);
    wait_for_targets(&sampler, &[pid()]).await;
    assert_eq!(load_count(), 2, "unloaded while idle, loaded again");
    agent.stop().await.unwrap();
}

/// Overlapping triggers of one service each get their own baseline: every reservoir
/// is offered every request it does not match, including one another trigger
/// collected; each profile is assembled once and sent once per trigger that kept it.
#[tokio::test]
async fn overlapping_triggers_each_fill_their_own_baseline() {
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let agent = TestAgent::start_with(test_config(&colony.url()), factory(&sampler)).await;
    announce(&agent, "checkout", pid()).await;
    // "long" started first; "slow" collects requests of 300 ms or more, "long" none.
    colony.set_triggers(vec![
        trigger("long", 60_000, 99, 5),
        trigger("slow", 300, 99, 2),
    ]);
    wait_for_targets(&sampler, &[pid()]).await;
    let sampling_since = now_ns();
    tokio::time::sleep(Duration::from_millis(800)).await;

    let t0 = sampling_since + 10 * MS;
    sampler.push([
        sample(pid(), 101, t0 + 20 * MS, hot_fn),
        sample(pid(), 102, t0 + 20 * MS, other_fn),
    ]);
    // Request 1 meets "slow"'s criteria, not "long"'s; 2 to 4 meet neither.
    let mut spans = vec![request_span(1, t0, 500, Some(101))];
    spans.extend((2..=4).map(|n| request_span(n, t0 + 10 * MS, 50, Some(102))));
    export(&agent, "checkout", pid(), spans).await;
    colony
        .wait_until("the collected request", |c| {
            c.trace_profiles.iter().any(|p| p.source == "trigger:slow")
        })
        .await;

    colony.set_triggers(vec![]);
    wait_for_targets(&sampler, &[]).await;
    colony
        .wait_until("both baselines", |c| {
            let count = |source: &str| {
                c.trace_profiles
                    .iter()
                    .filter(|p| p.source == source)
                    .count()
            };
            count("baseline:long") == 4 && count("baseline:slow") == 2
        })
        .await;
    let numbers = |source: &str| {
        let mut numbers: Vec<u8> = profiles_from(&colony, source)
            .iter()
            .map(span_number)
            .collect();
        numbers.sort_unstable();
        numbers
    };
    assert_eq!(numbers("trigger:slow"), [1]);
    assert_eq!(
        numbers("baseline:long"),
        [1, 2, 3, 4],
        "every request, the one \"slow\" collected too"
    );
    let slow_baseline = numbers("baseline:slow");
    assert!(
        slow_baseline.iter().all(|n| (2..=4).contains(n)),
        "{slow_baseline:?}"
    );
    // One join for all of them: the copies are the same profile.
    let one = |source: &str| {
        profiles_from(&colony, source)
            .into_iter()
            .find(|p| span_number(p) == 1)
            .unwrap()
    };
    let (collected, in_baseline) = (one("trigger:slow"), one("baseline:long"));
    assert_eq!(collected.profile, in_baseline.profile);
    assert_eq!(total_samples(collected.profile.as_ref().unwrap()), 1);
    agent.stop().await.unwrap();
}

/// A memory record of thread `tid` of this process at `time`, in the stack of `hot_fn`.
fn memory_sample(tid: u32, time: i64, bytes: u64, page_bytes: u64) -> coral_sampler::Sample {
    let memory = coral_sampler::Memory { bytes, page_bytes };
    coral_sampler::Sample::new_memory(pid(), tid, time, memory, &stack(hot_fn), &[])
}

/// A wire profile's CPU samples, and its memory stacks' (records, bytes) by page frame.
fn cpu_and_memory(profile: &v1::Profile) -> (u64, Vec<(String, u64, u64)>) {
    let cpu = profile
        .stacks
        .iter()
        .filter(|s| s.off_cpu_ns == 0 && s.memory_bytes == 0)
        .map(|s| s.samples)
        .sum();
    let mut memory: Vec<(String, u64, u64)> = profile
        .stacks
        .iter()
        .filter(|s| s.memory_bytes > 0)
        .map(|s| {
            let leaf = &profile.frames[*s.frame_ids.last().unwrap() as usize];
            assert!(leaf.page, "a memory stack ends in its page frame: {leaf:?}");
            (leaf.function.clone(), s.samples, s.memory_bytes)
        })
        .collect();
    memory.sort();
    (cpu, memory)
}

/// A trigger collecting memory turns the sampler's memory records on for its processes
/// (one without leaves them off), and a request's profile has the memory its thread
/// (thread precision) or process (process precision) made resident within its window,
/// by page size, apart from its CPU samples.
#[tokio::test]
async fn a_memory_trigger_records_the_memory_a_request_made_resident() {
    const HUGE: u64 = 2 << 20;
    let colony = FakeColony::start().await;
    let sampler = Arc::new(FakeSampler::new());
    let agent = TestAgent::start_with(test_config(&colony.url()), factory(&sampler)).await;
    announce(&agent, "checkout", pid()).await;
    // Older, CPU only, and matching nothing: it collects none of the requests.
    let cpu_only = trigger("cpu-only", 60_000, 99, 0);
    colony.set_triggers(vec![cpu_only.clone()]);
    wait_for_targets(&sampler, &[pid()]).await;
    assert!(
        sampler.memory_targets().is_empty(),
        "no trigger asks for memory"
    );
    let memory = v1::TriggerCommand {
        memory: true,
        ..trigger("memory", 0, 99, 0)
    };
    colony.set_triggers(vec![cpu_only, memory]);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sampler.memory_targets() != [pid()] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "memory never asked for"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sampler.off_cpu_targets().is_empty(), "memory only");
    let sampling_since = now_ns();
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Request 1: thread 101, [t0, t0 + 500 ms]; request 2: process, [t0 + 250 ms,
    // t0 + 450 ms].
    let t0 = sampling_since + 20 * MS;
    sampler.push([
        memory_sample(101, t0 - 10 * MS, 65_536, 4096), // before both
        sample(pid(), 101, t0 + MS, hot_fn),
        memory_sample(101, t0 + 100 * MS, 65_536, 4096),
        memory_sample(101, t0 + 200 * MS, HUGE, HUGE),
        memory_sample(102, t0 + 300 * MS, 65_536, 4096), // another thread
        memory_sample(101, t0 + 400 * MS, 65_536, 4096),
        memory_sample(101, t0 + 600 * MS, 65_536, 4096), // after both
    ]);
    export(
        &agent,
        "checkout",
        pid(),
        vec![
            request_span(1, t0, 500, Some(101)),
            request_span(2, t0 + 250 * MS, 200, None),
        ],
    )
    .await;
    colony
        .wait_until("both requests' profiles", |c| {
            c.trace_profiles
                .iter()
                .filter(|p| p.source == "trigger:memory")
                .count()
                == 2
        })
        .await;
    let mut collected = profiles_from(&colony, "trigger:memory");
    collected.sort_by_key(span_number);
    let (thread, process) = (&collected[0], &collected[1]);
    assert_eq!(thread.precision, "thread");
    assert_eq!(process.precision, "process");
    for p in [thread, process] {
        assert_eq!(p.profile_types, ["cpu", "memory"]);
    }
    assert_eq!(
        cpu_and_memory(thread.profile.as_ref().unwrap()),
        (
            1,
            vec![
                ("2 MiB huge page".into(), 1, HUGE),
                ("4 KiB page".into(), 2, 131_072),
            ]
        ),
        "its thread's records within its window, not another thread's"
    );
    assert_eq!(thread.truncated_samples, 0);
    assert_eq!(
        cpu_and_memory(process.profile.as_ref().unwrap()),
        (0, vec![("4 KiB page".into(), 2, 131_072)]),
        "every thread of the process within its window"
    );
    assert!(profiles_from(&colony, "trigger:cpu-only").is_empty());

    // The memory trigger ends; the CPU-only one goes on sampling the process, with no
    // page-fault probe left for a trigger that ended.
    colony.set_triggers(vec![trigger("cpu-only", 60_000, 99, 0)]);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !sampler.memory_targets().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "memory still recorded after its trigger ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        sampler.targets(),
        [pid()],
        "the CPU trigger still samples it"
    );
    agent.stop().await.unwrap();
}
