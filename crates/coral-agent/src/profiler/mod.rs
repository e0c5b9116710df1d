//! CPU profiling: sessions the colony asks for, and the profile of every request that
//! ran during one.
//!
//! ```text
//!  receivers ── Intake ── SpanObserver::observe ──► ProcessDirectory (service → pids)
//!                              │ request spans of services being profiled
//!                              ▼
//!  colony ── WatchCommands ──► profiler thread (session.rs, one std thread)
//!                                ├─ session start: pids of the service → Sampler::add_targets
//!                                ├─ every 100 ms: Sampler::drain → SampleRing (recent samples)
//!                                ├─ session end: remove_targets, fold → ReportSession
//!                                └─ held request spans: join (coral_analysis::join),
//!                                   fold → TraceProfile
//!                                │
//!  colony ◄── ReportSession / IngestTraceProfiles (tasks here, retried with backoff;
//!              request profiles wait in the Spool, on disk, until the colony takes them)
//! ```
//!
//! * The [`ProcessDirectory`] learns which processes serve a service from the
//!   `process.pid` resource attribute of its spans (entries expire after 10 minutes).
//!   A span from a container (resource attribute `container.id` or `k8s.pod.uid`)
//!   names a pid of the container's pid namespace: the [`PidResolver`] turns it, and
//!   the span's `thread.id`, into the host's pid and tid, which the directory and the
//!   join use (the spans forwarded to the colony keep the service's numbers). A
//!   process it cannot find is not profiled.
//! * A session samples the service's live processes from its start to its end, then
//!   reports one profile of all of them. A service with no process here is answered at
//!   once with `processes = 0`; a failure (allow list, sampler) with the error text.
//! * While a session of service S runs, and for [`SESSION_GRACE`] after it (spans reach
//!   the agent after their requests end), every *request* span of S (server or consumer
//!   kind, or a root span) overlapping the session is held until the ring holds the
//!   samples up to its end (at most [`MAX_HOLD`]), then joined on thread and time
//!   (*thread* precision) or process and time (*process* precision), and sent as a
//!   `TraceProfile`, even when no sample fell in it (an honest empty profile).
//! * Perf events are attached only while a session or trigger needs them: the sampler
//!   detaches when its last target is removed, and is unloaded after a minute
//!   ([`ProfilingConfig::sampler_idle_unload`]) with nothing to sample. Nothing is
//!   sampled, and the span observer costs one directory update per request, while no
//!   session or trigger runs.

mod directory;
mod fold;
mod pidns;
mod policy;
mod ring;
mod session;
mod spool;
mod trigger;

pub use coral_sampler::{Sampler, SamplerError, UnwindMode};
pub use directory::{DIRECTORY_TTL, ProcessDirectory};
pub use pidns::{HostPid, PidResolver};
pub use policy::ProcessPolicy;
pub use session::{MAX_HOLD, RING_HORIZON, SESSION_GRACE, TICK};
pub use spool::Spool;

use crate::receiver::SpanObserver;
use crate::stats::AgentStats;
use crate::uplink::{Backoff, describe, is_permanent};
use coral_client::AgentServiceClient;
use coral_client::Channel;
use coral_client::v1;
use session::{Msg, Worker};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::Code;

/// Settings of CPU profiling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfilingConfig {
    /// Highest sampling frequency a session may ask for.
    pub max_frequency_hz: u32,
    /// Most samples kept in the ring of recent samples (they also age out after
    /// [`RING_HORIZON`]).
    pub ring_samples: usize,
    /// `None`: any service may be profiled. `Some(list)`: only these; a session for
    /// another is answered with an error.
    pub allow_services: Option<Vec<String>>,
    /// `None`: any process a service's spans name (but the host's init). `Some(globs)`:
    /// only processes whose cgroup path matches one (see [`ProcessPolicy`]).
    pub allow_cgroups: Option<Vec<String>>,
    /// The sampler (BPF program, maps, reader thread) is unloaded after this long with
    /// nothing to sample: detached perf events cost nothing, a loaded sampler a little.
    pub sampler_idle_unload: Duration,
    /// How user stacks are walked.
    pub unwind: UnwindMode,
}

impl ProfilingConfig {
    pub const DEFAULT_MAX_FREQUENCY_HZ: u32 = 1000;
    pub const DEFAULT_RING_SAMPLES: usize = 200_000;
    pub const DEFAULT_SAMPLER_IDLE_UNLOAD: Duration = Duration::from_secs(60);
}

impl Default for ProfilingConfig {
    fn default() -> Self {
        Self {
            max_frequency_hz: Self::DEFAULT_MAX_FREQUENCY_HZ,
            ring_samples: Self::DEFAULT_RING_SAMPLES,
            allow_services: None,
            allow_cgroups: None,
            sampler_idle_unload: Self::DEFAULT_SAMPLER_IDLE_UNLOAD,
            unwind: UnwindMode::Auto,
        }
    }
}

/// Creates the sampler, on the first session that needs one (called again on the next
/// session when it fails). Runs on the profiler thread.
pub type SamplerFactory =
    Arc<dyn Fn(&ProfilingConfig) -> Result<Arc<dyn Sampler>, SamplerError> + Send + Sync>;

/// The real sampler: [`coral_sampler::EbpfSampler`] (root, or CAP_BPF and CAP_PERFMON).
pub fn ebpf_sampler_factory() -> SamplerFactory {
    Arc::new(|config: &ProfilingConfig| {
        let sampler = coral_sampler::EbpfSampler::new(coral_sampler::SamplerConfig {
            max_frequency_hz: config.max_frequency_hz,
            unwind: config.unwind,
            ..Default::default()
        })?;
        Ok(Arc::new(sampler) as Arc<dyn Sampler>)
    })
}

/// Whether a span is a request: server or consumer kind, or a root span.
pub fn is_request(span: &v1::Span) -> bool {
    matches!(span.kind, 2 | 5) || span.parent_span_id.is_empty()
}

/// What the profiler thread needs of a request span: not its other attributes (the
/// largest part, and a copy per request while a trigger runs).
fn request_part(span: &v1::Span) -> v1::Span {
    v1::Span {
        trace_id: span.trace_id.clone(),
        span_id: span.span_id.clone(),
        parent_span_id: span.parent_span_id.clone(),
        service: span.service.clone(),
        name: span.name.clone(),
        kind: span.kind,
        start_time_unix_nano: span.start_time_unix_nano,
        duration_ns: span.duration_ns,
        status_code: span.status_code,
        http_status: span.http_status,
        url: span.url.clone(),
        route: span.route.clone(),
        pid: span.pid,
        thread_id: span.thread_id,
        container_id: None,
        k8s_pod_uid: None,
        status_message: String::new(),
        node: String::new(),
        attributes_json: String::new(),
    }
}

/// Most span batches queued for the profiler thread; beyond it the observer drops them.
const MAX_QUEUED_SPAN_BATCHES: usize = 4096;
/// Most request profiles per spool batch, hence per `IngestTraceProfiles` call.
const PROFILES_PER_CALL: usize = 256;
const _: () = assert!(PROFILES_PER_CALL <= coral_client::limits::MAX_PROFILES_PER_INGEST);
/// A session report is given up after trying this long.
const REPORT_PATIENCE: Duration = Duration::from_secs(120);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the span observer and the profiler thread share.
pub(crate) struct Shared {
    directory: Mutex<ProcessDirectory>,
    /// Locked before `directory` when both are.
    resolver: Mutex<PidResolver>,
    /// Whether any service is being profiled (the observer's fast path).
    watching: AtomicBool,
    /// The services being profiled (session running, or in its grace period).
    watched: RwLock<HashSet<String>>,
    to_worker: std::sync::mpsc::Sender<Msg>,
    queued_span_batches: AtomicUsize,
    /// The latest set of active triggers, not yet taken by the profiler thread: kept
    /// apart from the span queue, so that a busy agent ends a trigger at once.
    pending_triggers: Mutex<Option<Vec<v1::TriggerCommand>>>,
}

impl Shared {
    fn directory(&self) -> MutexGuard<'_, ProcessDirectory> {
        self.directory.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn resolver(&self) -> MutexGuard<'_, PidResolver> {
        self.resolver.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn pids_of(&self, service: &str) -> Vec<u32> {
        self.directory().pids(service, Instant::now())
    }

    pub(crate) fn set_watched(&self, services: HashSet<String>) {
        let any = !services.is_empty();
        *self.watched.write().unwrap_or_else(|e| e.into_inner()) = services;
        self.watching.store(any, Ordering::Release);
    }

    pub(crate) fn take_pending_triggers(&self) -> Option<Vec<v1::TriggerCommand>> {
        self.pending_triggers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    pub(crate) fn span_batch_taken(&self) {
        self.queued_span_batches.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where the profiler thread puts what goes to the colony.
pub(crate) struct Outbox {
    pub(crate) reports: mpsc::UnboundedSender<v1::ReportSessionRequest>,
    pub(crate) profiles: Arc<Spool>,
}

/// The span observer side of the profiler (what [`crate::receiver::Intake`] calls).
#[derive(Clone)]
pub struct Profiler {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Profiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profiler")
            .field("watching", &self.shared.watching.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Whether two spans come from the same process, as far as their resources tell.
fn same_process(a: &v1::Span, b: &v1::Span) -> bool {
    a.pid == b.pid
        && a.service == b.service
        && a.container_id == b.container_id
        && a.k8s_pod_uid == b.k8s_pod_uid
}

impl SpanObserver for Profiler {
    fn observe(&self, spans: &[v1::Span]) {
        let now = Instant::now();
        let watched = self.shared.watching.load(Ordering::Acquire).then(|| {
            self.shared
                .watched
                .read()
                .unwrap_or_else(|e| e.into_inner())
        });
        let mut picked = Vec::new();
        {
            let mut resolver = self.shared.resolver();
            let mut directory = self.shared.directory();
            let mut last: Option<(&v1::Span, Option<HostPid>)> = None;
            for span in spans {
                let Some(pid) = span.pid.and_then(|p| u32::try_from(p).ok()) else {
                    continue;
                };
                if pid == 0 {
                    continue;
                }
                let host = match last {
                    // A request's spans usually share their resource.
                    Some((previous, host)) if same_process(previous, span) => host,
                    _ => {
                        let host = resolver.host_pid(
                            &span.service,
                            pid,
                            span.container_id.as_deref(),
                            span.k8s_pod_uid.as_deref(),
                            now,
                        );
                        if let Some(host) = host {
                            directory.saw(&span.service, host.pid, now);
                        }
                        host
                    }
                };
                last = Some((span, host));
                // Not found on this host: not profiled, rather than a wrong process.
                let (Some(watched), Some(host)) = (&watched, host) else {
                    continue;
                };
                if !is_request(span) || !watched.contains(&span.service) {
                    continue;
                }
                let mut part = request_part(span);
                part.pid = Some(i64::from(host.pid));
                // A thread not found gives process precision.
                part.thread_id = span
                    .thread_id
                    .and_then(|tid| resolver.host_tid(host, tid, now));
                picked.push(part);
            }
        }
        drop(watched);
        if picked.is_empty() {
            return;
        }
        let queued = self
            .shared
            .queued_span_batches
            .fetch_add(1, Ordering::Relaxed);
        if queued >= MAX_QUEUED_SPAN_BATCHES {
            self.shared.span_batch_taken();
            tracing::warn!(
                "the profiler is behind: {} request spans will not be profiled",
                picked.len()
            );
            return;
        }
        if self.shared.to_worker.send(Msg::Spans(picked)).is_err() {
            self.shared.span_batch_taken();
        }
    }
}

/// The running profiler: its thread and its colony tasks.
pub(crate) struct Running {
    profiler: Profiler,
    thread: Option<std::thread::JoinHandle<()>>,
    commands: JoinHandle<()>,
    senders: Vec<JoinHandle<()>>,
    spool: Arc<Spool>,
}

/// What the profiler's colony tasks need.
#[derive(Clone)]
struct Link {
    client: AgentServiceClient<Channel>,
    agent_id: String,
    stats: Arc<AgentStats>,
}

impl Running {
    /// Starts the profiler thread and the colony tasks (command stream, senders).
    pub(crate) fn start(
        config: &crate::AgentConfig,
        channel: Channel,
        stats: Arc<AgentStats>,
        factory: SamplerFactory,
        spool: Arc<Spool>,
    ) -> std::io::Result<Self> {
        let (to_worker, inbox) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            directory: Mutex::new(ProcessDirectory::new()),
            resolver: Mutex::new(PidResolver::new("/proc")),
            watching: AtomicBool::new(false),
            watched: RwLock::new(HashSet::new()),
            to_worker,
            queued_span_batches: AtomicUsize::new(0),
            pending_triggers: Mutex::new(None),
        });
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let outbox = Outbox {
            reports: reports_tx,
            profiles: spool.clone(),
        };
        let worker_parts = (
            shared.clone(),
            config.profiling.clone(),
            factory,
            outbox,
            stats.clone(),
            config.agent_id.clone(),
            config.node.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("coral-profiler".into())
            .spawn(move || {
                let (shared, profiling, factory, outbox, stats, agent_id, node) = worker_parts;
                // Created here: the symbolizer is not Send.
                let symbolizer = Box::new(coral_symbolizer::Symbolizer::new());
                Worker::new(
                    shared, profiling, factory, symbolizer, outbox, stats, agent_id, node,
                )
                .run(inbox);
            })?;
        let link = Link {
            client: coral_client::agent_client(channel),
            agent_id: config.agent_id.clone(),
            stats,
        };
        let commands = tokio::spawn(watch_commands(link.clone(), shared.clone()));
        let senders = vec![
            tokio::spawn(send_reports(link.clone(), reports_rx)),
            tokio::spawn(send_profiles(link, spool.clone())),
        ];
        Ok(Self {
            profiler: Profiler { shared },
            spool,
            thread: Some(thread),
            commands,
            senders,
        })
    }

    /// The span observer to give the intake.
    pub(crate) fn observer(&self) -> Arc<dyn SpanObserver> {
        Arc::new(self.profiler.clone())
    }

    /// Stops sampling, profiles the requests held, reports open sessions, and sends
    /// what is queued, waiting at most `timeout` for the colony.
    pub(crate) async fn shutdown(mut self, timeout: Duration) {
        self.commands.abort();
        let _ = self.profiler.shared.to_worker.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            match tokio::time::timeout(timeout, joined).await {
                Ok(Ok(Ok(()))) => {}
                Ok(_) => tracing::error!("the profiler thread panicked"),
                Err(_) => tracing::warn!("the profiler thread did not stop within {timeout:?}"),
            }
        }
        // The thread is gone: no more pushes. The tasks end once the queues are empty;
        // what is spooled on disk waits for the next start.
        self.spool.close();
        let aborts: Vec<_> = self.senders.iter().map(JoinHandle::abort_handle).collect();
        let sent = futures::future::join_all(std::mem::take(&mut self.senders));
        if tokio::time::timeout(timeout, sent).await.is_err() {
            aborts.iter().for_each(|a| a.abort());
            let lost = self.spool.abandon_memory();
            tracing::warn!(
                "request profiles still unsent {timeout:?} after shutdown: {lost} held in memory \
                 were dropped, the rest stay in the spool for the next start"
            );
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.commands.abort();
        self.senders.iter().for_each(JoinHandle::abort);
        let _ = self.profiler.shared.to_worker.send(Msg::Stop);
    }
}

/// Keeps a `WatchCommands` stream open, reconnecting with backoff, and hands the
/// sessions to the profiler thread (which ignores those it has seen).
async fn watch_commands(link: Link, shared: Arc<Shared>) {
    let mut backoff = Backoff::new();
    let mut warned = false;
    loop {
        let request = v1::WatchCommandsRequest {
            agent_id: link.agent_id.clone(),
        };
        match link.client.clone().watch_commands(request).await {
            Ok(response) => {
                backoff = Backoff::new();
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(command)) => {
                            backoff = Backoff::new();
                            warned = false;
                            let msg = match command.command {
                                Some(v1::agent_command::Command::ProfileSession(session)) => {
                                    Msg::Session(session)
                                }
                                Some(v1::agent_command::Command::ActiveTriggers(active)) => {
                                    *shared
                                        .pending_triggers
                                        .lock()
                                        .unwrap_or_else(|e| e.into_inner()) = Some(active.triggers);
                                    Msg::TriggersChanged
                                }
                                None => continue,
                            };
                            if shared.to_worker.send(msg).is_err() {
                                return;
                            }
                        }
                        Ok(None) => {
                            tracing::debug!("the colony closed the command stream; reconnecting");
                            break;
                        }
                        Err(status) => {
                            tracing::debug!(
                                "the command stream broke ({}); reconnecting",
                                describe(&status)
                            );
                            break;
                        }
                    }
                }
            }
            Err(status) if status.code() == Code::Unimplemented && !warned => {
                warned = true;
                tracing::warn!(
                    "the colony does not serve profiling commands ({}); is it older than this agent?",
                    describe(&status)
                );
            }
            Err(status) => {
                tracing::debug!("cannot open the command stream: {}", describe(&status));
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Sends session reports, each until the colony takes it (or [`REPORT_PATIENCE`]).
async fn send_reports(link: Link, mut reports: mpsc::UnboundedReceiver<v1::ReportSessionRequest>) {
    while let Some(report) = reports.recv().await {
        let deadline = Instant::now() + REPORT_PATIENCE;
        let mut backoff = Backoff::new();
        loop {
            let mut request = tonic::Request::new(report.clone());
            request.set_timeout(CALL_TIMEOUT);
            match link.client.clone().report_session(request).await {
                Ok(_) => {
                    tracing::debug!(session = %report.session_id, "session reported");
                    break;
                }
                Err(status) if is_permanent(&status) || Instant::now() >= deadline => {
                    tracing::warn!(
                        session = %report.session_id,
                        "the session report was not delivered: {}",
                        describe(&status)
                    );
                    break;
                }
                Err(status) => {
                    tracing::debug!(
                        session = %report.session_id,
                        "reporting the session failed ({}); retrying",
                        describe(&status)
                    );
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

/// Delivers the spool's batches in order, each until the colony takes it (the colony
/// is idempotent on trace and span id).
async fn send_profiles(link: Link, spool: Arc<Spool>) {
    while let Some(batch) = spool.next().await {
        let dropped = deliver_profiles(&link, batch.profiles).await;
        spool.delivered(batch.seq, dropped);
    }
}

/// Sends one batch until the colony answers; returns how many profiles it refused.
async fn deliver_profiles(link: &Link, profiles: Vec<v1::TraceProfile>) -> usize {
    let n = profiles.len();
    let request = v1::IngestTraceProfilesRequest {
        agent_id: link.agent_id.clone(),
        profiles,
    };
    let mut backoff = Backoff::new();
    loop {
        let mut call = tonic::Request::new(request.clone());
        call.set_timeout(CALL_TIMEOUT);
        match link.client.clone().ingest_trace_profiles(call).await {
            Ok(response) => {
                let response = response.into_inner();
                let rejected = usize::try_from(response.rejected).unwrap_or(n).min(n);
                link.stats.add_trace_profiles_sent(n - rejected);
                if rejected > 0 {
                    tracing::warn!(
                        "the colony rejected {rejected} of {n} request profiles: {}",
                        response.error_message
                    );
                }
                return rejected;
            }
            Err(status) if is_permanent(&status) => {
                tracing::error!(
                    "the colony refused {n} request profiles ({}); dropping them",
                    describe(&status)
                );
                return n;
            }
            Err(status) => {
                tracing::debug!(
                    "sending {n} request profiles failed ({}); retrying",
                    describe(&status)
                );
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(kind: i32, parent: bool) -> v1::Span {
        v1::Span {
            kind,
            parent_span_id: if parent { vec![1; 8] } else { vec![] },
            ..Default::default()
        }
    }

    #[test]
    fn requests_are_server_consumer_or_root_spans() {
        assert!(is_request(&span(2, true)));
        assert!(is_request(&span(5, true)));
        assert!(is_request(&span(1, false)));
        assert!(is_request(&span(3, false)));
        assert!(!is_request(&span(1, true)));
        assert!(!is_request(&span(3, true)));
        assert!(!is_request(&span(4, true)));
    }

    #[test]
    fn default_config() {
        let config = ProfilingConfig::default();
        assert_eq!(config.max_frequency_hz, 1000);
        assert_eq!(config.ring_samples, 200_000);
        assert_eq!(config.allow_services, None);
    }
}
