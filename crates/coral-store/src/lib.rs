//! The colony's storage: domain records, the [`Store`] trait and [`StoreError`].
//!
//! One crate per backend implements [`Store`] (`coral-store-postgres`,
//! `coral-store-sqlite`), each with its own migrations. The `conformance` feature
//! exposes the suite that every backend's tests run, so both behave the same.

pub mod batch;
pub mod filter_sql;
mod hashing;
mod ids;
pub mod profile_rows;
mod profiles;
mod records;
pub mod trigger_rows;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use hashing::{frame_hash, stack_hash};
pub use ids::{IdError, SpanId, TraceId};
pub use profiles::{
    Claim, CollectedRequest, InsertedProfiles, Precision, ProfileSession, ProfileSource,
    ProfileType, SessionResult, TraceProfileRecord, TraceProfileTrigger, TriggerStatus,
};
pub use records::{
    AgentRecord, ListedRequest, RequestQuery, RequestSummary, SPAN_KIND_CONSUMER, SPAN_KIND_SERVER,
    SUMMARY_PERCENTILES, ServiceRecord, SpanRecord, nearest_rank_offset,
};

use async_trait::async_trait;

/// Most spans of one trace that `GetTrace` returns (the earliest ones). A trace of a
/// batch job or a runaway loop can have millions of spans; 10,000 is far beyond any
/// request a person reads as a tree, and keeps the answer around 10 MB.
pub const MAX_TRACE_SPANS: usize = 10_000;

/// Boxed source error of a backend (sqlx, I/O).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The database cannot be reached now (down, restarting, refusing connections);
    /// the same call may succeed later.
    #[error("the database is unreachable ({0}); the request can be retried once it is back")]
    Unavailable(#[source] BoxError),
    /// Migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migration(#[source] BoxError),
    /// Stored data could not be read back (corrupt or from an incompatible version).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The caller's argument cannot be used as given (a malformed or ambiguous trigger
    /// id prefix); the message says how to fix it.
    #[error("{0}")]
    InvalidArgument(String),
    /// Any other database failure.
    #[error("database error: {0}")]
    Backend(#[source] BoxError),
}

/// Where the colony keeps everything it knows. Implementations hold no state that a
/// second colony process on the same database would not see.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for logs: `postgres` or `sqlite`.
    fn backend(&self) -> &'static str;

    /// Stores spans; a span already stored (same trace id and span id) is left as it
    /// is. Also records each span's service. Returns how many spans were new.
    async fn insert_spans(&self, spans: &[SpanRecord]) -> Result<u64, StoreError>;

    /// All services that have sent spans, by name.
    async fn list_services(&self) -> Result<Vec<ServiceRecord>, StoreError>;

    /// One service by name; `NotFound` if it never sent a span.
    async fn service(&self, name: &str) -> Result<ServiceRecord, StoreError>;

    /// Request spans (see [`SpanRecord::is_request`]) of one service, newest first,
    /// each with the source of its stored profile, if it has one (with
    /// [`RequestQuery::profiled`], only those that have one).
    async fn query_requests(&self, query: &RequestQuery) -> Result<Vec<ListedRequest>, StoreError>;

    /// Counts, error count and latency percentiles of `service`'s requests that started
    /// at or after `since_unix_nano`, over all of them, with the `slowest` longest.
    async fn request_summary(
        &self,
        service: &str,
        since_unix_nano: i64,
        slowest: u32,
    ) -> Result<RequestSummary, StoreError>;

    /// The spans of a trace, by start time: all of them up to [`MAX_TRACE_SPANS`], else
    /// the first `MAX_TRACE_SPANS + 1` (one more than the limit says the trace is
    /// longer); `NotFound` if there is none.
    async fn get_trace(&self, trace_id: &TraceId) -> Result<Vec<SpanRecord>, StoreError>;

    /// Records an agent. Registering again (after a reconnect) updates node, version,
    /// registration and heartbeat times, and keeps the last counters.
    async fn register_agent(&self, agent: &AgentRecord) -> Result<(), StoreError>;

    /// Updates an agent's last heartbeat and counters; `NotFound` if it never registered.
    async fn heartbeat(
        &self,
        agent_id: &str,
        at_unix_nano: i64,
        counters: &serde_json::Value,
    ) -> Result<(), StoreError>;

    /// All agents, by node name.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    /// Stores request profiles; one already stored for the same (trace id, span id) is
    /// left as it is (an agent's retry). Stacks and frames are stored once, shared by
    /// every profile that has them.
    ///
    /// A [`ProfileSource::Trigger`] profile is kept only if it claims one of the
    /// trigger's `max_requests` slots, decided atomically in the database so that
    /// concurrent colonies never collect more: the trigger must be active, not full,
    /// and not have the trace already (a second request span of a collected trace is
    /// kept without counting). The last slot turns the trigger `completed`. A
    /// [`ProfileSource::Baseline`] profile is kept while the trigger's baseline is not
    /// full (whatever its status: agents send the baseline when it ends). Profiles not
    /// kept are counted in [`InsertedProfiles::over_limit`].
    ///
    /// A request is stored once, whatever it was collected for, but may belong to the
    /// baselines of several triggers (an agent offers a request to every trigger of
    /// its service). A [`ProfileSource::Baseline`] profile whose request is already
    /// stored (as another trigger's or baseline's, or a session's, in this batch or
    /// before) is not stored again but still counts towards its trigger's
    /// `baseline_collected`, once per trigger and request, while that baseline is
    /// not full (else it is counted in `over_limit`).
    async fn insert_trace_profiles(
        &self,
        profiles: &[TraceProfileRecord],
    ) -> Result<InsertedProfiles, StoreError>;

    /// The profiles of a trace's spans, by span start; `NotFound` if there is none.
    async fn trace_profiles(
        &self,
        trace_id: &TraceId,
    ) -> Result<Vec<TraceProfileRecord>, StoreError>;

    /// Request profiles of `service` whose request started at or after
    /// `since_unix_nano` and matches `filter` (trigger, baseline and session profiles
    /// alike), newest first, at most `limit`. Returns the profiles and whether more
    /// matched than `limit`. A profile whose span is not stored matches only
    /// conditions on what the profile itself records (duration, name, trace); see
    /// [`filter_sql`] for how missing values are treated.
    async fn cohort_profiles(
        &self,
        service: &str,
        since_unix_nano: i64,
        filter: &coral_analysis::filter::Filter,
        limit: u32,
    ) -> Result<(Vec<TraceProfileRecord>, bool), StoreError>;

    /// Records a new on-demand profiling session.
    async fn create_profile_session(&self, session: &ProfileSession) -> Result<(), StoreError>;

    /// Sessions that have not ended at `now_unix_nano`, oldest first.
    async fn active_profile_sessions(
        &self,
        now_unix_nano: i64,
    ) -> Result<Vec<ProfileSession>, StoreError>;

    /// Records an agent's answer to a session; a second answer from the same agent
    /// replaces the first. `NotFound` if the session does not exist.
    async fn put_session_result(&self, result: &SessionResult) -> Result<(), StoreError>;

    /// The answers to a session so far, by node.
    async fn session_results(
        &self,
        session_id: uuid::Uuid,
    ) -> Result<Vec<SessionResult>, StoreError>;

    /// Records a new trigger (status, counts and trace ids as given, normally active
    /// and empty). `NotFound` if its service never sent a span. PostgreSQL keeps
    /// trigger times to the microsecond: nanoseconds below it are truncated.
    async fn create_trigger(&self, trigger: &TraceProfileTrigger) -> Result<(), StoreError>;

    /// One trigger; `NotFound` if there is none with this id.
    async fn trigger(&self, trigger_id: uuid::Uuid) -> Result<TraceProfileTrigger, StoreError>;

    /// The id of the one trigger whose id starts with `prefix`, as git resolves a
    /// short commit id: at least [`trigger_rows::MIN_TRIGGER_ID_PREFIX`] hex digits of
    /// the id's text form, hyphens optional, any case (see
    /// [`trigger_rows::trigger_id_prefix`]). `InvalidArgument` for a malformed prefix
    /// or one that several triggers share (saying how many); `NotFound` if none has it.
    async fn resolve_trigger_id(&self, prefix: &str) -> Result<uuid::Uuid, StoreError>;

    /// Triggers, newest first, at most `limit`: of one service or all, active ones or
    /// all.
    async fn list_triggers(
        &self,
        service: Option<&str>,
        include_ended: bool,
        limit: u32,
    ) -> Result<Vec<TraceProfileTrigger>, StoreError>;

    /// Triggers still active at `now_unix_nano` (status active, not past expiry),
    /// oldest first: what agents run.
    async fn active_triggers(
        &self,
        now_unix_nano: i64,
    ) -> Result<Vec<TraceProfileTrigger>, StoreError>;

    /// Cancels an active trigger (ended at `now_unix_nano`) and returns it; a trigger
    /// that has already ended is returned unchanged. `NotFound` if there is none.
    async fn cancel_trigger(
        &self,
        trigger_id: uuid::Uuid,
        now_unix_nano: i64,
    ) -> Result<TraceProfileTrigger, StoreError>;

    /// Marks every active trigger whose expiry is at or before `now_unix_nano` expired
    /// (ended at its expiry time). Returns how many.
    async fn expire_triggers(&self, now_unix_nano: i64) -> Result<u64, StoreError>;

    /// The requests a trigger collected (its `trigger:<id>` profiles, with the status
    /// of their spans when stored), in collection order.
    async fn trigger_requests(
        &self,
        trigger_id: uuid::Uuid,
    ) -> Result<Vec<CollectedRequest>, StoreError>;

    /// Retention: deletes request profiles created before `cutoff_unix_nano`, and the
    /// sessions and the ended triggers that ended before it. Returns how many request
    /// profiles were deleted.
    async fn purge_profiles_before(&self, cutoff_unix_nano: i64) -> Result<u64, StoreError>;
}
