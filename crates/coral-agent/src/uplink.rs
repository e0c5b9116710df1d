//! The uplink to the colony: a bounded [`Buffer`] that the receivers push whole
//! requests into, workers that ship batches with `IngestSpans`, and a session task
//! that registers the agent and sends heartbeats.
//!
//! * The buffer counts spans queued *and* in flight against `max_buffered_spans`, so
//!   memory stays bounded while the colony is away. A push is all-or-nothing.
//! * [`WORKERS`] workers each take a batch (`batch_size` spans, at most
//!   [`MAX_BATCH_BYTES`] encoded, or whatever is queued once `flush_interval` has
//!   passed), encode it once, and send it until the colony accepts it, backing off
//!   from [`BACKOFF_START`] to [`BACKOFF_MAX`]. Colony ingest is idempotent, so a batch
//!   sent again after a lost reply is harmless.
//! * One warning per outage ("colony unreachable"), one info line on recovery; after
//!   recovery, and when a heartbeat answers `NOT_FOUND` (the colony forgot us), the
//!   agent registers again.

use crate::AgentConfig;
use crate::stats::AgentStats;
use bytes::{BufMut, Bytes};
use coral_client::AgentServiceClient;
use coral_client::Channel;
use coral_client::v1::{self, HeartbeatRequest, IngestSpansResponse, RegisterAgentRequest};
use prost::Message;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Concurrent `IngestSpans` calls.
pub const WORKERS: usize = 2;
/// A batch stops growing at this encoded size (a single larger span still goes alone).
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// First retry delay after a failed call.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

const INGEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
const FINAL_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
const INGEST_PATH: &str = "/coral.v1.AgentService/IngestSpans";

/// The buffer could not take a request's spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// Spans in the refused push.
    pub spans: usize,
    /// Spans held when it was refused.
    pub buffered: usize,
    /// The bound (`max_buffered_spans`).
    pub capacity: usize,
}

impl Full {
    /// True when the push is larger than the whole buffer: retrying cannot help.
    pub fn never_fits(&self) -> bool {
        self.spans > self.capacity
    }
}

/// Spans waiting for the colony, bounded by `max_buffered_spans` (queued plus in
/// flight).
#[derive(Debug)]
pub struct Buffer {
    state: Mutex<BufferState>,
    notify: Notify,
    capacity: usize,
    batch_size: usize,
    flush_interval: Duration,
    stats: Arc<AgentStats>,
}

#[derive(Debug, Default)]
struct BufferState {
    /// Pushed requests, oldest first; the front one may have been partly taken.
    chunks: VecDeque<Vec<v1::Span>>,
    queued: usize,
    in_flight: usize,
    closing: bool,
}

impl Buffer {
    pub fn new(
        capacity: usize,
        batch_size: usize,
        flush_interval: Duration,
        stats: Arc<AgentStats>,
    ) -> Self {
        Self {
            state: Mutex::default(),
            notify: Notify::new(),
            capacity,
            batch_size: batch_size.max(1),
            flush_interval,
            stats,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BufferState> {
        // A panic while holding the lock leaves consistent state (plain pushes/pops).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_gauge(&self, state: &BufferState) {
        self.stats.set_buffered(state.queued + state.in_flight);
    }

    /// Queues all of `spans`, or none of them when they do not fit.
    pub fn try_push(&self, spans: Vec<v1::Span>) -> Result<(), Full> {
        if spans.is_empty() {
            return Ok(());
        }
        let n = spans.len();
        {
            let mut state = self.lock();
            let buffered = state.queued + state.in_flight;
            if buffered + n > self.capacity {
                return Err(Full {
                    spans: n,
                    buffered,
                    capacity: self.capacity,
                });
            }
            state.chunks.push_back(spans);
            state.queued += n;
            self.update_gauge(&state);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Spans queued or in flight.
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.queued + state.in_flight
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next batch to send: as soon as a full batch is queued, or whatever is
    /// queued once `flush_interval` has passed since this worker saw it (at once when
    /// closing). `None` once closed and empty.
    async fn next_batch(&self) -> Option<Vec<v1::Span>> {
        let mut deadline: Option<Instant> = None;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.queued == 0 {
                    if state.closing {
                        return None;
                    }
                    deadline = None;
                } else {
                    let due = deadline.is_some_and(|d| Instant::now() >= d);
                    if state.queued >= self.batch_size || state.closing || due {
                        let batch = self.take(&mut state);
                        if state.queued > 0 {
                            self.notify.notify_one(); // more for the other worker
                        }
                        return Some(batch);
                    }
                    deadline.get_or_insert_with(|| Instant::now() + self.flush_interval);
                }
            }
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Moves up to `batch_size` spans (and about [`MAX_BATCH_BYTES`]) to in flight.
    fn take(&self, state: &mut BufferState) -> Vec<v1::Span> {
        let mut batch: Vec<v1::Span> = Vec::new();
        let mut bytes = 0;
        'chunks: while let Some(chunk) = state.chunks.front_mut() {
            // Fast path: a whole request that fits becomes the batch without copying.
            if batch.is_empty() && chunk.len() <= self.batch_size {
                let size: usize = chunk.iter().map(Message::encoded_len).sum();
                if size <= MAX_BATCH_BYTES {
                    batch = state.chunks.pop_front().unwrap_or_default();
                    bytes = size;
                    continue;
                }
            }
            let mut count = 0;
            for span in chunk.iter() {
                let size = span.encoded_len();
                let full = batch.len() + count >= self.batch_size
                    || (bytes + size > MAX_BATCH_BYTES && batch.len() + count > 0);
                if full {
                    batch.extend(chunk.drain(..count));
                    break 'chunks;
                }
                bytes += size;
                count += 1;
            }
            batch.extend(chunk.drain(..count));
            state.chunks.pop_front();
        }
        state.queued -= batch.len();
        state.in_flight += batch.len();
        self.update_gauge(state);
        batch
    }

    /// `n` in-flight spans are done with (delivered, or given up).
    fn finish(&self, n: usize) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(n);
        self.update_gauge(&state);
    }

    /// From now on batches are taken at once, and workers stop when it is empty.
    fn close(&self) {
        self.lock().closing = true;
        self.notify.notify_waiters();
    }

    /// Forgets everything (at the end of shutdown); returns how many spans that was.
    fn discard(&self) -> usize {
        let mut state = self.lock();
        let lost = state.queued + state.in_flight;
        *state = BufferState {
            closing: true,
            ..BufferState::default()
        };
        self.update_gauge(&state);
        lost
    }
}

/// Exponential backoff with a little jitter, so that many agents do not reconnect in
/// step after a colony restart.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self {
            next: BACKOFF_START,
        }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        // 90% .. 110%
        delay.mul_f64(0.9 + f64::from(nanos % 1000) / 5000.0)
    }
}

/// What the workers and the session share about the colony connection.
struct Link {
    channel: Channel,
    client: AgentServiceClient<Channel>,
    colony: String,
    /// To explain TLS and certificate failures in the outage warning.
    security: coral_client::Security,
    agent_id: String,
    node: String,
    stats: Arc<AgentStats>,
    down: AtomicBool,
    needs_register: AtomicBool,
    /// Wakes the session when the colony comes back, to register at once.
    recovered: Notify,
}

impl Link {
    fn failed(&self, what: &str, status: &Status) {
        self.needs_register.store(true, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            let problem = if coral_client::is_database_unavailable(status) {
                "colony cannot reach its database"
            } else {
                "colony unreachable"
            };
            tracing::warn!(
                colony = %self.colony,
                "{problem} ({what}: {}); buffering spans and retrying",
                coral_client::explain_status(&self.colony, &self.security, status)
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| describe(status))
            );
        }
    }

    fn succeeded(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(colony = %self.colony, "colony reachable again");
            self.recovered.notify_one();
        }
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    async fn register(&self) -> Result<(), Status> {
        let mut request = tonic::Request::new(RegisterAgentRequest {
            agent_id: self.agent_id.clone(),
            node: self.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        });
        request.set_timeout(CONTROL_TIMEOUT);
        self.client.clone().register_agent(request).await?;
        tracing::info!(agent = %self.agent_id, colony = %self.colony, "registered with the colony");
        Ok(())
    }

    async fn heartbeat(&self, timeout: Duration) -> Result<(), Status> {
        let mut request = tonic::Request::new(HeartbeatRequest {
            agent_id: self.agent_id.clone(),
            counters: Some(self.stats.snapshot()),
        });
        request.set_timeout(timeout);
        self.client.clone().heartbeat(request).await?;
        Ok(())
    }

    async fn ingest(&self, encoded: Bytes) -> Result<IngestSpansResponse, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone())
            .max_decoding_message_size(coral_client::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(coral_client::MAX_MESSAGE_BYTES);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
        let mut request = tonic::Request::new(encoded);
        request.set_timeout(INGEST_TIMEOUT);
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(INGEST_PATH);
        let response = grpc.unary(request, path, EncodedCodec::default()).await?;
        Ok(response.into_inner())
    }
}

/// A status with its cause, short enough for one log line.
pub(crate) fn describe(status: &Status) -> String {
    use std::error::Error;
    let mut text = format!("{}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Errors that sending the same batch again cannot fix.
pub(crate) fn is_permanent(status: &Status) -> bool {
    matches!(status.code(), Code::InvalidArgument | Code::OutOfRange)
}

/// Sends an `IngestSpansRequest` that is already encoded, so that a retried batch is
/// neither cloned nor encoded again; decodes the reply with prost.
struct EncodedCodec<T>(PhantomData<T>);

impl<T> Default for EncodedCodec<T> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

struct EncodedEncoder;

impl Encoder for EncodedEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct ProstDecoder<T>(PhantomData<T>);

impl<T: Message + Default> Decoder for ProstDecoder<T> {
    type Item = T;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        T::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode the colony's reply: {e}")))
    }
}

impl<T: Message + Default + Send + 'static> Codec for EncodedCodec<T> {
    type Encode = Bytes;
    type Decode = T;
    type Encoder = EncodedEncoder;
    type Decoder = ProstDecoder<T>;
    fn encoder(&mut self) -> EncodedEncoder {
        EncodedEncoder
    }
    fn decoder(&mut self) -> ProstDecoder<T> {
        ProstDecoder(PhantomData)
    }
}

/// The running uplink: buffer, workers and session.
pub(crate) struct Uplink {
    buffer: Arc<Buffer>,
    link: Arc<Link>,
    workers: Vec<JoinHandle<()>>,
    session: JoinHandle<()>,
}

impl Uplink {
    /// Starts the workers and the session on `channel` (lazy: nothing needs to be
    /// reachable yet).
    pub(crate) fn start(config: &AgentConfig, channel: Channel, stats: Arc<AgentStats>) -> Self {
        let buffer = Arc::new(Buffer::new(
            config.max_buffered_spans,
            config.batch_size,
            config.flush_interval,
            stats.clone(),
        ));
        let link = Arc::new(Link {
            client: coral_client::agent_client(channel.clone()),
            channel,
            colony: coral_client::normalize_addr(&config.colony),
            security: config.security.clone(),
            agent_id: config.agent_id.clone(),
            node: config.node.clone(),
            stats,
            down: AtomicBool::new(false),
            needs_register: AtomicBool::new(true),
            recovered: Notify::new(),
        });
        let workers = (0..WORKERS)
            .map(|_| tokio::spawn(work(buffer.clone(), link.clone())))
            .collect();
        let session = tokio::spawn(session(link.clone(), config.heartbeat_interval));
        Self {
            buffer,
            link,
            workers,
            session,
        }
    }

    pub(crate) fn buffer(&self) -> Arc<Buffer> {
        self.buffer.clone()
    }

    /// Sends what is buffered, waiting at most `timeout`; what is still unsent then is
    /// counted as dropped. Sends a last heartbeat so the colony sees final counters.
    pub(crate) async fn shutdown(self, timeout: Duration) {
        self.buffer.close();
        let aborts: Vec<_> = self.workers.iter().map(|w| w.abort_handle()).collect();
        let drained = futures::future::join_all(self.workers);
        if tokio::time::timeout(timeout, drained).await.is_err() {
            aborts.iter().for_each(|a| a.abort());
        }
        self.session.abort();
        let lost = self.buffer.discard();
        if lost > 0 {
            tracing::warn!(
                colony = %self.link.colony,
                "{lost} spans were not delivered to the colony within {timeout:?} of shutdown"
            );
            self.link
                .stats
                .add_dropped(lost, "not delivered before shutdown");
        }
        if !self.link.is_down() {
            let _ = self.link.heartbeat(FINAL_HEARTBEAT_TIMEOUT).await;
        }
    }
}

/// A worker: takes batches and sends each until the colony accepts it.
async fn work(buffer: Arc<Buffer>, link: Arc<Link>) {
    while let Some(batch) = buffer.next_batch().await {
        let n = batch.len();
        let encoded: Bytes = v1::IngestSpansRequest {
            agent_id: link.agent_id.clone(),
            spans: batch,
        }
        .encode_to_vec()
        .into();
        deliver(&link, encoded, n).await;
        buffer.finish(n);
    }
}

async fn deliver(link: &Link, encoded: Bytes, n: usize) {
    let mut backoff = Backoff::new();
    loop {
        match link.ingest(encoded.clone()).await {
            Ok(response) => {
                link.succeeded();
                let rejected = usize::try_from(response.rejected).unwrap_or(n).min(n);
                link.stats.add_forwarded(n - rejected);
                if rejected > 0 {
                    link.stats.add_rejected(rejected);
                    tracing::warn!(
                        rejected,
                        "the colony rejected {rejected} of {n} spans: {}",
                        response.error_message
                    );
                }
                return;
            }
            Err(status) if is_permanent(&status) => {
                tracing::error!(
                    "the colony refused a batch of {n} spans ({}); dropping it",
                    describe(&status)
                );
                link.stats.add_dropped(n, "refused by the colony");
                return;
            }
            Err(status) => {
                link.failed("IngestSpans", &status);
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Registers (at start, after an outage, when the colony forgot us) and sends
/// heartbeats.
async fn session(link: Arc<Link>, heartbeat_interval: Duration) {
    let mut backoff = Backoff::new();
    loop {
        if link.needs_register.load(Ordering::Relaxed) {
            // Cleared first: an outage noticed during the call sets it again.
            link.needs_register.store(false, Ordering::Relaxed);
            match link.register().await {
                Ok(()) => {
                    link.succeeded();
                    backoff = Backoff::new();
                }
                Err(status) => {
                    link.failed("RegisterAgent", &status);
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(heartbeat_interval) => {}
            () = link.recovered.notified() => continue,
        }
        match link.heartbeat(CONTROL_TIMEOUT).await {
            Ok(()) => link.succeeded(),
            Err(status) if status.code() == Code::NotFound => {
                tracing::info!(agent = %link.agent_id, "the colony does not know this agent; registering again");
                link.needs_register.store(true, Ordering::Relaxed);
            }
            Err(status) => link.failed("Heartbeat", &status),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(ids: std::ops::Range<u32>) -> Vec<v1::Span> {
        ids.map(|i| v1::Span {
            span_id: i.to_be_bytes().to_vec(),
            ..Default::default()
        })
        .collect()
    }

    fn ids(batch: &[v1::Span]) -> Vec<u32> {
        batch
            .iter()
            .map(|s| u32::from_be_bytes(s.span_id[..4].try_into().unwrap()))
            .collect()
    }

    fn buffer(capacity: usize, batch_size: usize) -> (Buffer, Arc<AgentStats>) {
        let stats = Arc::new(AgentStats::default());
        let buffer = Buffer::new(
            capacity,
            batch_size,
            Duration::from_millis(20),
            stats.clone(),
        );
        (buffer, stats)
    }

    #[test]
    fn push_is_all_or_nothing() {
        let (buffer, stats) = buffer(10, 100);
        buffer.try_push(spans(0..6)).unwrap();
        let full = buffer.try_push(spans(6..11)).unwrap_err();
        assert_eq!(
            full,
            Full {
                spans: 5,
                buffered: 6,
                capacity: 10
            }
        );
        assert!(!full.never_fits());
        buffer.try_push(spans(6..10)).unwrap();
        assert_eq!(buffer.len(), 10);
        assert_eq!(stats.snapshot().spans_buffered, 10);
        assert!(buffer.try_push(spans(0..11)).unwrap_err().never_fits());
        buffer.try_push(Vec::new()).unwrap();
    }

    #[tokio::test]
    async fn full_batches_are_taken_at_once_across_chunks() {
        let (buffer, _) = buffer(100, 4);
        buffer.try_push(spans(0..3)).unwrap();
        buffer.try_push(spans(3..10)).unwrap();
        assert_eq!(ids(&buffer.next_batch().await.unwrap()), vec![0, 1, 2, 3]);
        assert_eq!(ids(&buffer.next_batch().await.unwrap()), vec![4, 5, 6, 7]);
        // In-flight spans still count against the bound until finished.
        assert_eq!(buffer.len(), 10);
        buffer.finish(8);
        assert_eq!(buffer.len(), 2);
    }

    #[tokio::test]
    async fn a_partial_batch_goes_after_the_flush_interval() {
        let (buffer, _) = buffer(100, 1000);
        buffer.try_push(spans(0..3)).unwrap();
        let batch = tokio::time::timeout(Duration::from_secs(10), buffer.next_batch())
            .await
            .expect("a partial batch is flushed");
        assert_eq!(ids(&batch.unwrap()), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn closing_flushes_then_ends() {
        let (buffer, _) = buffer(100, 1000);
        buffer.try_push(spans(0..2)).unwrap();
        buffer.close();
        assert_eq!(ids(&buffer.next_batch().await.unwrap()), vec![0, 1]);
        assert!(buffer.next_batch().await.is_none());
        assert_eq!(buffer.discard(), 2);
        assert!(buffer.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_worker_wakes_up_on_close() {
        let (buffer, _) = buffer(100, 1000);
        let buffer = Arc::new(buffer);
        let waiting = tokio::spawn({
            let buffer = buffer.clone();
            async move { buffer.next_batch().await }
        });
        tokio::task::yield_now().await;
        buffer.close();
        let result = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken up")
            .unwrap();
        assert!(result.is_none());
    }

    #[tokio::test]
    async fn batches_are_bounded_in_bytes() {
        let (buffer, _) = buffer(100, 1000);
        let big = |i: u32| v1::Span {
            span_id: i.to_be_bytes().to_vec(),
            attributes_json: "x".repeat(MAX_BATCH_BYTES / 2),
            ..Default::default()
        };
        buffer.try_push((0..3).map(big).collect()).unwrap();
        buffer.close();
        assert_eq!(ids(&buffer.next_batch().await.unwrap()), vec![0]);
        assert_eq!(ids(&buffer.next_batch().await.unwrap()), vec![1]);
        assert_eq!(ids(&buffer.next_batch().await.unwrap()), vec![2]);
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= BACKOFF_START.mul_f64(0.9) && delays[0] <= BACKOFF_START.mul_f64(1.1));
        assert!(delays[1] > delays[0]);
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX.mul_f64(1.1)));
        assert!(delays[11] >= BACKOFF_MAX.mul_f64(0.9));
    }
}
