//! The profiler thread: profiling sessions, triggers (their logic in `trigger.rs`), the
//! recent-sample ring, and the requests held until their samples are in.
//!
//! Everything here runs on one plain thread ([`Worker::run`]): the sampler's calls may
//! block (eBPF attach), the symbolizer is blocking work and not `Send`. The thread
//! wakes on a message (a session command, the active triggers, spans to hold, stop) or
//! every [`TICK`].

use super::directory::process_alive;
use super::fold::{MemoryRecords, OffCpuWindow, StackCache, Symbolize, fold, is_cpu_sample};
use super::policy::ProcessPolicy;
use super::ring::SampleRing;
use super::trigger::Trigger;
use super::{Outbox, ProfilingConfig, SamplerFactory, Shared, is_request};
use crate::stats::AgentStats;
use coral_analysis::join::{self, RequestWindow};
use coral_analysis::profile::{Profile, ProfileType};
use coral_client::profile::profile_to_wire;
use coral_client::v1;
use coral_sampler::{Recording, Sampler, Unwind};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How often the sampler is drained and held requests are looked at.
/// Sample losses are logged at most this often (they are counted always).
const LOSS_WARNING_INTERVAL: Duration = Duration::from_secs(60);

pub const TICK: Duration = Duration::from_millis(100);
/// Samples older than this leave the ring (it is also bounded by count).
pub const RING_HORIZON: Duration = Duration::from_secs(60);
/// After a session's end, its requests are still profiled for this long: their spans
/// reach the agent after the requests end (SDKs export in batches).
pub const SESSION_GRACE: Duration = Duration::from_secs(10);
/// A held request is joined at the latest this long after its span arrived, even if
/// the sampler has not caught up with its end.
pub const MAX_HOLD: Duration = Duration::from_secs(2);
/// Samples reach the ring this late at most (the sampler's reader runs every 10 ms):
/// after a drain at time T, the ring is taken to be complete up to T − this.
const SAMPLER_LAG: Duration = Duration::from_millis(100);
/// A session is closed this long after its end, so that the samples of its last moments
/// have reached the ring.
const CLOSE_DELAY: Duration = Duration::from_millis(250);
/// Requests are remembered this long to count concurrent ones, and to ignore a span
/// seen twice (an OTLP request retried after a refusal).
const REQUEST_MEMORY: Duration = Duration::from_secs(60);

/// What the rest of the agent tells the profiler thread.
pub(crate) enum Msg {
    Session(v1::ProfileSessionCommand),
    /// The set of active triggers changed (it waits in `Shared::pending_triggers`).
    TriggersChanged,
    /// Request spans of services being profiled.
    Spans(Vec<v1::Span>),
    Stop,
}

/// A span's identity: trace id and span id (the receivers checked their lengths).
type SpanKey = ([u8; 16], [u8; 8]);

fn span_key(span: &v1::Span) -> SpanKey {
    (
        span.trace_id.as_slice().try_into().unwrap_or_default(),
        span.span_id.as_slice().try_into().unwrap_or_default(),
    )
}

/// Trace and span ids are random, so a cheap mix of their bytes hashes them well;
/// SipHash of every request span's key showed in the profiler thread's profile.
#[derive(Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
}

type SpanKeyMap<V> = HashMap<SpanKey, V, std::hash::BuildHasherDefault<IdHasher>>;

pub(crate) fn now_unix_nano() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// One profiling session this agent samples for.
#[derive(Debug)]
struct Session {
    id: String,
    service: String,
    /// The frequency asked for.
    frequency_hz: u32,
    /// The frequency the sampler actually ran at (higher when another session asked
    /// for more at the same time): what CPU time is computed from.
    effective_hz: u32,
    start: i64,
    end: i64,
    pids: BTreeSet<u32>,
    /// The session's profile so far, folded at every drain: a session may last longer
    /// than the ring keeps samples.
    profile: Profile,
    /// Reported to the colony, targets removed; only its late requests are still
    /// joined, until `end + SESSION_GRACE`.
    closed: bool,
}

/// What a request's profile is for: sent at once for what collected it, and kept in
/// the baseline reservoirs that chose it (a copy in each, sent when its trigger
/// ends). It is joined and symbolized once for all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Dest {
    pub(crate) collected: Option<Collected>,
    pub(crate) baselines: Vec<BaselineSlot>,
}

impl Dest {
    pub(crate) fn is_empty(&self) -> bool {
        self.collected.is_none() && self.baselines.is_empty()
    }

    /// Whether a copy goes to trigger `id`'s baseline.
    pub(crate) fn has_baseline_of(&self, id: &str) -> bool {
        self.baselines.iter().any(|b| b.trigger == id)
    }
}

/// What collected a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Collected {
    /// The session it overlapped.
    Session(String),
    /// A trigger whose criteria it met.
    Trigger(String),
}

impl Collected {
    /// The profile's `source` on the wire.
    fn source(&self) -> String {
        match self {
            Self::Session(id) => format!("session:{id}"),
            Self::Trigger(id) => format!("trigger:{id}"),
        }
    }
}

/// A slot of a trigger's baseline reservoir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaselineSlot {
    pub(crate) trigger: String,
    pub(crate) slot: usize,
}

/// A request span waiting for its samples.
#[derive(Debug)]
pub(crate) struct Held {
    span: v1::Span,
    key: SpanKey,
    window: RequestWindow,
    pub(crate) dest: Dest,
    frequency_hz: u32,
    arrived: Instant,
}

pub(crate) struct Worker {
    pub(crate) shared: Arc<Shared>,
    pub(crate) config: ProfilingConfig,
    factory: SamplerFactory,
    sampler: Option<Arc<dyn Sampler>>,
    /// Since when the loaded sampler has had nothing to sample.
    sampler_idle_since: Option<Instant>,
    /// The loaded sampler's cumulative lost and dropped samples, and stack errors, as
    /// last counted.
    sampler_lost_seen: u64,
    sampler_stack_errors_seen: u64,
    sampler_clock_steps_seen: u64,
    /// When sample losses were last logged (at most once per [`LOSS_WARNING_INTERVAL`]).
    loss_warned: Option<(Instant, u64, u64)>,
    /// Which processes may be sampled, whatever the spans say.
    pub(crate) policy: ProcessPolicy,
    symbolizer: Box<dyn Symbolize>,
    outbox: Outbox,
    stats: Arc<AgentStats>,
    agent_id: String,
    node: String,
    pub(crate) ring: SampleRing,
    /// The ring holds every sample taken up to this time.
    covered_until: i64,
    sessions: Vec<Session>,
    /// Session ids already handled, with their end (the colony sends active sessions
    /// again after every reconnect).
    seen_sessions: HashMap<String, i64>,
    /// Triggers running here, and those ended lately (still sending their baseline).
    pub(crate) triggers: Vec<Trigger>,
    /// Trigger ids ended (or refused) here, with when: not started again.
    pub(crate) ended_triggers: HashMap<String, i64>,
    pub(crate) held: Vec<Held>,
    /// Request spans seen lately (with when), so that a span seen twice counts once.
    seen_requests: SpanKeyMap<i64>,
    /// The same keys in the order seen, to forget the old ones without a full scan.
    seen_order: VecDeque<(i64, SpanKey)>,
    /// Recent request windows per pid, to count concurrent requests.
    windows: HashMap<u32, Windows>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: ProfilingConfig,
        factory: SamplerFactory,
        symbolizer: Box<dyn Symbolize>,
        outbox: Outbox,
        stats: Arc<AgentStats>,
        agent_id: String,
        node: String,
    ) -> Self {
        Self {
            ring: SampleRing::new(config.ring_samples),
            policy: ProcessPolicy::new("/proc", config.allow_cgroups.clone()),
            shared,
            config,
            factory,
            sampler: None,
            sampler_idle_since: None,
            sampler_lost_seen: 0,
            sampler_stack_errors_seen: 0,
            sampler_clock_steps_seen: 0,
            loss_warned: None,
            symbolizer,
            outbox,
            stats,
            agent_id,
            node,
            covered_until: 0,
            sessions: Vec::new(),
            seen_sessions: HashMap::new(),
            triggers: Vec::new(),
            ended_triggers: HashMap::new(),
            held: Vec::new(),
            seen_requests: SpanKeyMap::default(),
            seen_order: VecDeque::new(),
            windows: HashMap::new(),
        }
    }

    /// Serves messages until [`Msg::Stop`] or until every sender is gone.
    pub(crate) fn run(mut self, inbox: Receiver<Msg>) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match inbox.recv_timeout(wait) {
                Ok(Msg::Session(command)) => self.start_session(command),
                Ok(Msg::TriggersChanged) => {}
                Ok(Msg::Spans(spans)) => {
                    self.shared.span_batch_taken();
                    self.hold(spans);
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Before the next span batch, however many are queued.
            if let Some(triggers) = self.shared.take_pending_triggers() {
                self.set_triggers(triggers, now_unix_nano());
            }
            if Instant::now() >= next_tick {
                self.tick(false);
                next_tick = Instant::now() + TICK;
            }
        }
        self.stop();
    }

    /// At shutdown: profile what is held with the samples there are, report open
    /// sessions, detach.
    fn stop(&mut self) {
        for session in &mut self.sessions {
            // Close now: what was sampled so far is all there will be.
            session.end = session.end.min(now_unix_nano());
        }
        // Closes (and detaches from) every session, joins every held request.
        self.tick(true);
        self.shared.set_watched(HashSet::new());
    }

    pub(crate) fn sampler(&mut self) -> Result<Arc<dyn Sampler>, String> {
        if let Some(sampler) = &self.sampler {
            return Ok(sampler.clone());
        }
        let sampler = (self.factory)(&self.config).map_err(|e| e.to_string())?;
        tracing::info!("CPU sampler started");
        self.sampler = Some(sampler.clone());
        self.sampler_lost_seen = 0;
        self.sampler_stack_errors_seen = 0;
        self.sampler_clock_steps_seen = 0;
        Ok(sampler)
    }

    fn report(&self, session_id: &str, processes: usize, profile: v1::Profile, error: String) {
        self.stats.add_session(!error.is_empty());
        let report = v1::ReportSessionRequest {
            agent_id: self.agent_id.clone(),
            node: self.node.clone(),
            session_id: session_id.to_string(),
            processes: u32::try_from(processes).unwrap_or(u32::MAX),
            profile: Some(profile),
            error,
        };
        if self.outbox.reports.send(report).is_err() {
            tracing::debug!(session = %session_id, "the report sender is gone (shutting down)");
        }
    }

    fn start_session(&mut self, command: v1::ProfileSessionCommand) {
        let start = command.start_time_unix_nano;
        let end = start.saturating_add(command.duration_ns.max(0));
        if self.seen_sessions.contains_key(&command.session_id) {
            return;
        }
        self.seen_sessions.insert(command.session_id.clone(), end);
        let service = command.service.as_str();
        let mut refusals = Vec::new();
        let pids: Vec<u32> = self
            .shared
            .pids_of(service)
            .into_iter()
            .filter(|&pid| match self.policy.check(pid) {
                Ok(()) => true,
                Err(why) => {
                    refusals.push(format!("pid {pid}: {why}"));
                    false
                }
            })
            .collect();
        tracing::info!(
            session = %command.session_id,
            service,
            frequency_hz = command.frequency_hz,
            duration_ms = command.duration_ns / 1_000_000,
            processes = pids.len(),
            "profiling session"
        );
        let refuse = |worker: &Self, error: String| {
            tracing::warn!(session = %command.session_id, service, "cannot profile: {error}");
            worker.report(
                &command.session_id,
                pids.len(),
                v1::Profile::default(),
                error,
            );
        };
        if pids.is_empty() && refusals.iter().any(|r| !r.ends_with("the process is gone")) {
            return refuse(
                self,
                format!(
                    "no process of {service} may be sampled here ({})",
                    refusals.join("; ")
                ),
            );
        }
        if pids.is_empty() {
            // Not hosted here: answer at once so the colony does not wait for us (and
            // without an error, even when the allow list would refuse the service).
            return self.report(
                &command.session_id,
                0,
                v1::Profile::default(),
                String::new(),
            );
        }
        if let Some(allowed) = &self.config.allow_services
            && !allowed.iter().any(|s| s == service)
        {
            return refuse(
                self,
                format!("service {service} is not in this agent's --profile-allow list"),
            );
        }
        if now_unix_nano() >= end {
            return refuse(
                self,
                "the session was over before this agent received it".to_string(),
            );
        }
        let sampler = match self.sampler() {
            Ok(sampler) => sampler,
            Err(error) => return refuse(self, error),
        };
        if let Err(e) = sampler.add_targets(&pids, command.frequency_hz, Recording::CPU) {
            return refuse(self, e.to_string());
        }
        let effective_hz = command.frequency_hz.max(sampler.stats().frequency_hz);
        self.sessions.push(Session {
            id: command.session_id,
            service: command.service,
            frequency_hz: command.frequency_hz,
            effective_hz,
            start,
            end,
            pids: pids.into_iter().collect(),
            profile: Profile::new(),
            closed: false,
        });
        self.update_watched();
    }

    /// The services whose request spans the observer sends here.
    pub(crate) fn update_watched(&self) {
        let services = self
            .sessions
            .iter()
            .map(|s| s.service.clone())
            .chain(
                self.triggers
                    .iter()
                    .filter(|t| t.is_active())
                    .map(|t| t.service.clone()),
            )
            .collect();
        self.shared.set_watched(services);
    }

    /// Stops sampling those of `pids` that no open session or active trigger needs, and
    /// stops recording off-CPU time or memory of the others where no active trigger
    /// asks for it any more (so no scheduler or page-fault probe stays attached for a
    /// trigger that ended).
    pub(crate) fn release(&mut self, pids: &[u32]) {
        let needed: BTreeSet<u32> = self
            .sessions
            .iter()
            .filter(|s| !s.closed)
            .flat_map(|s| s.pids.iter().copied())
            .chain(
                self.triggers
                    .iter()
                    .filter(|t| t.is_active())
                    .flat_map(|t| t.pids.keys().copied()),
            )
            .collect();
        let release: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| !needed.contains(p))
            .collect();
        let Some(sampler) = &self.sampler else {
            return;
        };
        if let Err(e) = sampler.remove_targets(&release) {
            tracing::warn!("cannot stop sampling: {e}");
        }
        for &pid in pids.iter().filter(|p| needed.contains(p)) {
            let recording = self
                .triggers
                .iter()
                .filter(|t| t.is_active() && t.pids.contains_key(&pid))
                .fold(Recording::CPU, |all, t| all.union(t.recording()));
            if let Err(e) = sampler.set_recording(&[pid], recording) {
                tracing::warn!(pid, "cannot stop recording off-CPU time or memory: {e}");
            }
        }
    }

    /// Request spans of profiled services: remembered for concurrency, and held for a
    /// profile when they fall within a session.
    fn hold(&mut self, spans: Vec<v1::Span>) {
        let now = now_unix_nano();
        for span in spans {
            if !is_request(&span) {
                continue;
            }
            let Some(pid) = span.pid.and_then(|p| u32::try_from(p).ok()) else {
                continue; // no process: nothing can be joined
            };
            let start = span.start_time_unix_nano;
            let window = RequestWindow {
                pid: Some(pid),
                // A thread.id that is no OS thread id (too large) cannot be joined on.
                thread_id: span.thread_id.and_then(|t| u32::try_from(t).ok()),
                start_unix_nano: start,
                end_unix_nano: start.saturating_add(span.duration_ns.max(0)),
            };
            let key = span_key(&span);
            if self.seen_requests.insert(key, now).is_some() {
                continue;
            }
            self.seen_order.push_back((now, key));
            self.windows.entry(pid).or_default().insert(key, window);

            let mut dest = self.trigger_dest(&span, pid, start);
            if dest.collected.is_none() {
                dest.collected = self.session_of(&span, pid, &window).map(Collected::Session);
            }
            if dest.is_empty() {
                continue;
            }
            let frequency_hz = frequency_of(&self.sessions, &self.triggers, &dest);
            self.held.push(Held {
                span,
                key,
                window,
                dest,
                frequency_hz,
                arrived: Instant::now(),
            });
        }
    }

    /// The session that a request of process `pid` overlapped (an instant span counts
    /// when inside it) and that sampled the process, if any.
    fn session_of(&mut self, span: &v1::Span, pid: u32, window: &RequestWindow) -> Option<String> {
        let session = self.sessions.iter_mut().find(|s| {
            s.service == span.service
                && window.start_unix_nano <= s.end
                && s.start <= window.end_unix_nano
        })?;
        if !session.pids.contains(&pid) {
            // A process that appeared after the session started: sample it too while
            // the session runs; otherwise it was not sampled.
            let sampler = self.sampler.clone();
            let added = !session.closed
                && self.policy.check(pid).is_ok()
                && sampler.is_some_and(|s| {
                    s.add_targets(&[pid], session.frequency_hz, Recording::CPU)
                        .is_ok()
                });
            if !added {
                return None;
            }
            tracing::debug!(session = %session.id, pid, "sampling a new process of the service");
            session.pids.insert(pid);
        }
        Some(session.id.clone())
    }

    /// Logs samples lost and stacks not stored since the last warning (kernel maps or
    /// buffers full), at most once per [`LOSS_WARNING_INTERVAL`].
    fn warn_of_losses(&mut self) {
        let counters = self.stats.profiling();
        let (lost, stack_errors) = (counters.samples_lost, counters.stack_errors);
        let (last, lost_then, errors_then) = self.loss_warned.unwrap_or((Instant::now(), 0, 0));
        if (lost, stack_errors) == (lost_then, errors_then)
            || self.loss_warned.is_some() && last.elapsed() < LOSS_WARNING_INTERVAL
        {
            return;
        }
        tracing::warn!(
            samples_lost = lost - lost_then,
            stacks_not_stored = stack_errors - errors_then,
            "the CPU sampler lost {} samples and could not take {} stacks since the last \
             warning (its kernel or user-space buffer was full: profiles undercount, and \
             requests overlapping the losses say so; a lower sampling frequency or fewer \
             profiled processes helps)",
            lost - lost_then,
            stack_errors - errors_then
        );
        self.loss_warned = Some((Instant::now(), lost, stack_errors));
    }

    fn tick(&mut self, finishing: bool) {
        let now = now_unix_nano();
        if let Some(sampler) = &self.sampler {
            let samples = sampler.drain();
            self.ring.add_losses(sampler.take_losses());
            self.stats.add_samples(samples.len());
            self.stats.add_stacks(&samples);
            let sampler_stats = sampler.stats();
            let lost = sampler_stats.lost
                + sampler_stats.dropped
                + sampler_stats.off_cpu_throttled
                + sampler_stats.memory_throttled;
            self.stats
                .add_samples_lost(lost.saturating_sub(self.sampler_lost_seen));
            self.sampler_lost_seen = lost;
            let stack_errors = sampler_stats.stack_errors;
            self.stats
                .add_stack_errors(stack_errors.saturating_sub(self.sampler_stack_errors_seen));
            self.sampler_stack_errors_seen = stack_errors;
            self.stats.add_clock_steps(
                sampler_stats
                    .clock_steps
                    .saturating_sub(self.sampler_clock_steps_seen),
            );
            self.sampler_clock_steps_seen = sampler_stats.clock_steps;
            self.warn_of_losses();
            for trigger in self.triggers.iter_mut().filter(|t| t.is_active()) {
                trigger.effective_hz = trigger.effective_hz.max(sampler_stats.frequency_hz);
            }
            for session in self.sessions.iter_mut().filter(|s| !s.closed) {
                session.effective_hz = session.effective_hz.max(sampler_stats.frequency_hz);
                let mut cache = StackCache::new();
                let part = fold(
                    samples.iter().filter(|s| {
                        session.pids.contains(&s.tgid)
                            && (session.start..=session.end).contains(&s.time_unix_nano)
                    }),
                    &mut cache,
                    self.symbolizer.as_mut(),
                    session.effective_hz,
                    OffCpuWindow::Skip,
                    // Sessions sample CPU only: memory records in the ring are a
                    // trigger's.
                    MemoryRecords::Skip,
                );
                session.profile.merge(&part);
            }
            let evicted = self.ring.extend(samples);
            if evicted > 0 {
                self.stats.add_samples_evicted(evicted);
            }
        }
        self.covered_until = now - nanos(SAMPLER_LAG);
        if !self.ring.is_empty() {
            self.ring.trim(now - nanos(RING_HORIZON));
        }

        let due: Vec<usize> = (0..self.sessions.len())
            .filter(|&i| {
                let s = &self.sessions[i];
                !s.closed && (finishing || now >= s.end + nanos(CLOSE_DELAY))
            })
            .collect();
        for i in due {
            self.close_session(i);
        }

        self.join_ready(finishing);
        self.tick_triggers(now, finishing);

        let before = self.sessions.len();
        let mut ended_pids = Vec::new();
        self.sessions.retain(|s| {
            let keep = !finishing && now < s.end + nanos(SESSION_GRACE);
            if !keep {
                ended_pids.extend(s.pids.iter().copied());
            }
            keep
        });
        if self.sessions.len() != before {
            self.update_watched();
            for pid in ended_pids {
                if !process_alive(pid) {
                    self.symbolizer.forget(pid);
                }
            }
        }
        self.unload_idle_sampler();
        let (processes, attached) = self.sampler.as_ref().map_or((0, false), |s| {
            let stats = s.stats();
            (stats.targets, stats.attached)
        });
        let active = self.triggers.iter().filter(|t| t.is_active()).count();
        self.stats.set_profiler_state(active, processes, attached);
        let memory = now - nanos(REQUEST_MEMORY);
        while let Some(&(when, key)) = self.seen_order.front()
            && when < memory
        {
            self.seen_order.pop_front();
            self.seen_requests.remove(&key);
        }
        self.windows.retain(|_, windows| {
            windows.forget_before(memory);
            !windows.is_empty()
        });
        let forget_before = now - nanos(Duration::from_secs(3600));
        self.seen_sessions
            .retain(|_, &mut end| end >= forget_before);
        self.ended_triggers
            .retain(|_, &mut end| end >= forget_before);
    }

    fn unload_idle_sampler(&mut self) {
        let needed =
            self.sessions.iter().any(|s| !s.closed) || self.triggers.iter().any(|t| t.is_active());
        if needed || self.sampler.is_none() {
            self.sampler_idle_since = None;
            return;
        }
        let idle_since = *self.sampler_idle_since.get_or_insert_with(Instant::now);
        if idle_since.elapsed() >= self.config.sampler_idle_unload {
            self.sampler = None;
            self.sampler_idle_since = None;
            tracing::info!(
                "CPU sampler unloaded: nothing to sample for {:?}",
                self.config.sampler_idle_unload
            );
        }
    }

    /// Stops sampling for session `i` (the processes no other open session needs),
    /// builds its profile and reports it.
    fn close_session(&mut self, i: usize) {
        self.sessions[i].closed = true;
        let pids: Vec<u32> = self.sessions[i].pids.iter().copied().collect();
        self.release(&pids);
        let session = &mut self.sessions[i];
        let profile = std::mem::take(&mut session.profile);
        let counters = self.stats.profiling();
        tracing::info!(
            session = %session.id,
            service = %session.service,
            processes = session.pids.len(),
            samples = profile.total_samples(),
            stacks = profile.stacks.len(),
            frequency_hz = session.effective_hz,
            ring_samples = self.ring.len(),
            samples_total = counters.samples,
            samples_lost = counters.samples_lost,
            trace_profiles_sent = counters.trace_profiles_sent,
            "profiling session done"
        );
        if session.effective_hz != session.frequency_hz {
            tracing::info!(
                session = %session.id,
                "sampled at {} Hz rather than {} Hz: another session asked for more",
                session.effective_hz,
                session.frequency_hz
            );
        }
        let (id, processes) = (session.id.clone(), session.pids.len());
        self.report(&id, processes, profile_to_wire(&profile), String::new());
    }

    /// Joins the held requests whose samples are in (or that waited long enough), and
    /// sends their profiles.
    fn join_ready(&mut self, everything: bool) {
        let covered_until = self.covered_until;
        let (ready, waiting): (Vec<Held>, Vec<Held>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| {
                everything
                    || covered_until >= h.window.end_unix_nano
                    || h.arrived.elapsed() >= MAX_HOLD
            });
        self.held = waiting;
        if ready.is_empty() {
            return;
        }
        let lost: Vec<u64> = ready.iter().map(|h| self.ring.lost_in(&h.window)).collect();
        let samples = self.ring.as_slice();
        let mut cache = StackCache::new();
        let mut profiles = Vec::with_capacity(ready.len());
        for (held, lost) in ready.into_iter().zip(lost) {
            let Some(joined) = join::join(&held.window, samples) else {
                continue;
            };
            let pid = held.window.pid.unwrap_or_default();
            let concurrent = self
                .windows
                .get(&pid)
                .map_or(0, |w| w.concurrent(&held.key, &held.window));
            let frequency_hz =
                frequency_of(&self.sessions, &self.triggers, &held.dest).max(held.frequency_hz);
            // Of the CPU samples, as readers count them (of the profile's samples).
            let truncated = joined
                .samples
                .iter()
                .filter(|s| is_cpu_sample(&s.0) && s.0.stack.unwind == Unwind::Truncated)
                .count();
            // Off-CPU time says where the request's own thread waited: at process
            // precision it would be every idle thread's, so only thread precision has it.
            let off_cpu = wants(&self.triggers, &held.dest, |t| t.off_cpu)
                && joined.precision == join::Precision::Thread;
            // Memory made resident is work, like CPU samples: at process precision it is
            // the process's (concurrent requests' too), as its CPU samples are.
            let memory = wants(&self.triggers, &held.dest, |t| t.memory);
            let window = if off_cpu {
                OffCpuWindow::Within {
                    start: held.window.start_unix_nano,
                    end: held.window.end_unix_nano,
                }
            } else {
                OffCpuWindow::Skip
            };
            let profile = fold(
                joined.samples.into_iter().map(|s| &s.0),
                &mut cache,
                self.symbolizer.as_mut(),
                frequency_hz,
                window,
                if memory {
                    MemoryRecords::Keep
                } else {
                    MemoryRecords::Skip
                },
            );
            let mut profile_types = vec![ProfileType::Cpu.as_str().to_string()];
            if off_cpu {
                profile_types.push(ProfileType::Offcpu.as_str().to_string());
            }
            if memory {
                profile_types.push(ProfileType::Memory.as_str().to_string());
            }
            let span = held.span;
            let profile = v1::TraceProfile {
                trace_id: span.trace_id,
                span_id: span.span_id,
                service: span.service,
                span_name: span.name,
                start_time_unix_nano: span.start_time_unix_nano,
                duration_ns: span.duration_ns,
                node: self.node.clone(),
                pid: span.pid,
                thread_id: span.thread_id,
                precision: joined.precision.as_str().to_string(),
                frequency_hz,
                concurrent_requests: concurrent,
                truncated_samples: u32::try_from(truncated).unwrap_or(u32::MAX),
                lost_samples: lost,
                source: String::new(),
                profile: Some(profile_to_wire(&profile)),
                profile_types,
            };
            for BaselineSlot { trigger, slot } in held.dest.baselines {
                if let Some(t) = self.triggers.iter_mut().find(|t| t.id == trigger) {
                    let source = format!("baseline:{trigger}");
                    t.baseline.put(
                        slot,
                        v1::TraceProfile {
                            source,
                            ..profile.clone()
                        },
                    );
                }
            }
            if let Some(collected) = held.dest.collected {
                profiles.push(v1::TraceProfile {
                    source: collected.source(),
                    ..profile
                });
            }
        }
        tracing::debug!(
            profiles = profiles.len(),
            stacks = cache.distinct_stacks(),
            "request profiles assembled"
        );
        self.send_profiles(profiles);
    }

    /// Spools request profiles for the colony, in batches of at most
    /// [`PROFILES_PER_CALL`](super::PROFILES_PER_CALL).
    pub(crate) fn send_profiles(&self, mut profiles: Vec<v1::TraceProfile>) {
        while !profiles.is_empty() {
            let rest = profiles.split_off(profiles.len().min(super::PROFILES_PER_CALL));
            self.outbox
                .profiles
                .push(std::mem::replace(&mut profiles, rest));
        }
    }
}

/// Whether a trigger that `dest` goes to records what `records` says (off-CPU time,
/// memory): then the process's records of it were on while it was sampled for that
/// trigger, from the request's start.
fn wants(triggers: &[Trigger], dest: &Dest, records: impl Fn(&Trigger) -> bool) -> bool {
    let wants = |id: &str| triggers.iter().any(|t| t.id == id && records(t));
    let collected = matches!(&dest.collected, Some(Collected::Trigger(id)) if wants(id));
    collected || dest.baselines.iter().any(|b| wants(&b.trigger))
}

/// The sampling frequency that profiles for `dest` are computed with: the highest of
/// its session's and triggers' (the sampler runs at the highest asked for; 0 if all
/// are gone).
fn frequency_of(sessions: &[Session], triggers: &[Trigger], dest: &Dest) -> u32 {
    let trigger_hz = |id: &str| {
        triggers
            .iter()
            .find(|t| t.id == id)
            .map_or(0, |t| t.effective_hz)
    };
    let collected_hz = match &dest.collected {
        Some(Collected::Session(id)) => sessions
            .iter()
            .find(|s| s.id == *id)
            .map_or(0, |s| s.effective_hz),
        Some(Collected::Trigger(id)) => trigger_hz(id),
        None => 0,
    };
    (dest.baselines.iter())
        .map(|b| trigger_hz(&b.trigger))
        .fold(collected_hz, u32::max)
}

/// Recent request windows of one process, ordered by end time, to count the requests
/// that overlap a given one. A tree: spans of one process reach the agent out of end
/// order when it has several exporters, and a sorted vector then copies at every
/// insert.
#[derive(Debug, Default)]
struct Windows(BTreeMap<(i64, SpanKey), RequestWindow>);

const LOWEST_KEY: SpanKey = ([0; 16], [0; 8]);

impl Windows {
    fn insert(&mut self, key: SpanKey, window: RequestWindow) {
        self.0.insert((window.end_unix_nano, key), window);
    }

    /// The requests other than `key` that overlap `window`. Only the windows ending
    /// after `window` starts are looked at.
    fn concurrent(&self, key: &SpanKey, window: &RequestWindow) -> u32 {
        let from = (window.start_unix_nano.saturating_add(1), LOWEST_KEY);
        let others: Vec<RequestWindow> = self
            .0
            .range(from..)
            .filter(|((_, k), _)| k != key)
            .map(|(_, w)| *w)
            .collect();
        join::concurrent_requests(window, &others)
    }

    /// Forgets the windows that ended before `oldest_end`.
    fn forget_before(&mut self, oldest_end: i64) {
        self.0 = self.0.split_off(&(oldest_end, LOWEST_KEY));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: i64, end: i64) -> RequestWindow {
        RequestWindow {
            pid: Some(1),
            thread_id: None,
            start_unix_nano: start,
            end_unix_nano: end,
        }
    }

    fn key(n: u8) -> SpanKey {
        ([1; 16], [n; 8])
    }

    #[test]
    fn windows_count_overlapping_requests_but_not_the_request_itself() {
        let mut windows = Windows::default();
        windows.insert(key(1), window(0, 100));
        windows.insert(key(3), window(150, 300));
        windows.insert(key(2), window(50, 120)); // arrives late, sorted in by end
        windows.insert(key(4), window(400, 500));
        let ends: Vec<i64> = windows.0.values().map(|w| w.end_unix_nano).collect();
        assert_eq!(ends, [100, 120, 300, 500]);

        assert_eq!(windows.concurrent(&key(2), &window(50, 120)), 1);
        assert_eq!(windows.concurrent(&key(1), &window(0, 100)), 1);
        assert_eq!(windows.concurrent(&key(3), &window(150, 300)), 0);
        // Not remembered itself: every overlapping one counts.
        assert_eq!(windows.concurrent(&key(9), &window(90, 450)), 4);

        windows.forget_before(120);
        assert_eq!(windows.0.len(), 3);
        windows.forget_before(1000);
        assert!(windows.is_empty());
    }
}
