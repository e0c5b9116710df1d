//! The colony's storage: domain records, the [`Store`] trait and [`StoreError`].
//!
//! One crate per backend implements [`Store`] (`coral-store-postgres`,
//! `coral-store-sqlite`), each with its own migrations. The `conformance` feature
//! exposes the suite that every backend's tests run, so both behave the same.

pub mod batch;
mod hashing;
mod ids;
pub mod profile_rows;
mod profiles;
mod records;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use hashing::{frame_hash, stack_hash};
pub use ids::{IdError, SpanId, TraceId};
pub use profiles::{Precision, ProfileSession, SessionResult, TraceProfileRecord};
pub use records::{
    AgentRecord, RequestQuery, SPAN_KIND_CONSUMER, SPAN_KIND_SERVER, ServiceRecord, SpanRecord,
};

use async_trait::async_trait;

/// Boxed source error of a backend (sqlx, I/O).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong in a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing asked for does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The database cannot be reached now; the same call may succeed later.
    #[error("the database is unavailable ({0}); retry shortly")]
    Unavailable(#[source] BoxError),
    /// Migrations could not be applied.
    #[error("database migration failed: {0}")]
    Migration(#[source] BoxError),
    /// Stored data could not be read back (corrupt or from an incompatible version).
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
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

    /// Request spans (see [`SpanRecord::is_request`]) of one service, newest first.
    async fn query_requests(&self, query: &RequestQuery) -> Result<Vec<SpanRecord>, StoreError>;

    /// Every span of a trace, by start time; `NotFound` if there is none.
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
    /// every profile that has them. Returns how many profiles were new.
    async fn insert_trace_profiles(
        &self,
        profiles: &[TraceProfileRecord],
    ) -> Result<u64, StoreError>;

    /// The profiles of a trace's spans, by span start; `NotFound` if there is none.
    async fn trace_profiles(
        &self,
        trace_id: &TraceId,
    ) -> Result<Vec<TraceProfileRecord>, StoreError>;

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
}
