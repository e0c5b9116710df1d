//! Request profiles on their way to the colony, kept on disk until it takes them.
//!
//! A triggered profile is the rarest thing the agent has: the slow request it belongs
//! to will not come again. So the profiler thread [`Spool::push`]es each batch into the
//! data directory (`<seq>.pb`, written to a `.tmp` file and renamed, so a crash leaves
//! either the whole batch or nothing), and the sender task delivers the oldest batch
//! until the colony takes it, then deletes it. A colony outage of any length, or an
//! agent restart with the same `--data-dir`, loses nothing; the colony's writes are
//! idempotent on (trace id, span id), so a batch sent again after a lost reply is not
//! stored twice.
//!
//! The spool is bounded by `max_bytes`: a batch that does not fit is dropped and
//! counted. When the disk fails (full, read-only) batches are kept in memory under the
//! same bound, with one warning per episode and a counter. Without a data directory
//! the spool is memory only (tests, or an agent with nowhere to write).

use crate::stats::AgentStats;
use coral_client::v1;
use prost::Message;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// Batch files end in this; anything else in the directory is left alone.
const EXTENSION: &str = "pb";
/// Files being written end in this; left over by a crash, they are removed at start.
const PARTIAL: &str = "tmp";
/// The lock file (see [`Spool`]'s `_lock`).
const LOCK: &str = "lock";

/// Profiles waiting for the colony: the batches in order, on disk where possible.
#[derive(Debug)]
pub struct Spool {
    dir: Option<PathBuf>,
    /// Held while the spool is open: two agents on one directory would send each
    /// other's batches and delete them under each other.
    _lock: Option<std::fs::File>,
    max_bytes: u64,
    state: Mutex<State>,
    ready: Notify,
    stats: Arc<AgentStats>,
}

#[derive(Debug, Default)]
struct State {
    batches: VecDeque<Batch>,
    bytes: u64,
    next_seq: u64,
    /// A write failed and has not succeeded since (one warning per episode).
    disk_failing: bool,
    /// A batch was refused for lack of room and none has fitted since.
    full: bool,
    closed: bool,
}

#[derive(Debug)]
struct Batch {
    seq: u64,
    bytes: u64,
    /// Profiles in it (0 when recovered from disk and not read yet).
    profiles: usize,
    body: Body,
}

#[derive(Debug)]
enum Body {
    File(PathBuf),
    Memory(Vec<u8>),
}

/// A batch taken by the sender: deliver it, then [`Spool::delivered`].
#[derive(Debug)]
pub struct Taken {
    pub seq: u64,
    pub profiles: Vec<v1::TraceProfile>,
}

impl Spool {
    /// A spool in `dir` (created if missing), holding at most `max_bytes`. Batches a
    /// previous run left there are queued first.
    pub fn open(
        dir: Option<&Path>,
        max_bytes: u64,
        stats: Arc<AgentStats>,
    ) -> std::io::Result<Self> {
        let mut state = State::default();
        let mut lock = None;
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir)?;
            lock = Some(lock_dir(dir)?);
            state.batches = recover(dir)?;
            state.bytes = state.batches.iter().map(|b| b.bytes).sum();
            state.next_seq = state.batches.back().map_or(0, |b| b.seq + 1);
            if !state.batches.is_empty() {
                tracing::info!(
                    batches = state.batches.len(),
                    bytes = state.bytes,
                    "request profiles from before the restart are waiting in {} for the colony",
                    dir.display()
                );
            }
        }
        let spool = Self {
            dir: dir.map(Path::to_path_buf),
            _lock: lock,
            max_bytes,
            state: Mutex::new(state),
            ready: Notify::new(),
            stats,
        };
        spool.update_gauges(&spool.lock());
        Ok(spool)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain queue operations: a panic while locked leaves it consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_gauges(&self, state: &State) {
        self.stats.set_spool(state.batches.len(), state.bytes);
    }

    /// Queues `profiles` as one batch: on disk, in memory if the disk fails, dropped
    /// (and counted) if the spool is full or closed.
    pub fn push(&self, profiles: Vec<v1::TraceProfile>) {
        let n = profiles.len();
        if n == 0 {
            return;
        }
        let encoded = encode(profiles);
        let bytes = encoded.len() as u64;
        let mut state = self.lock();
        if state.closed {
            drop(state);
            self.stats.add_trace_profiles_dropped(n);
            tracing::warn!("dropped {n} request profiles: the agent is shutting down");
            return;
        }
        if state.bytes + bytes > self.max_bytes {
            if !state.full {
                tracing::warn!(
                    "the profile spool is full ({} of {} bytes; the colony has been away a long time): \
                     dropping new request profiles until it drains (raise --spool-max-bytes to keep more)",
                    state.bytes,
                    self.max_bytes
                );
            }
            state.full = true;
            drop(state);
            self.stats.add_trace_profiles_dropped(n);
            return;
        }
        state.full = false;
        let seq = state.next_seq;
        state.next_seq += 1;
        // Written under the lock: batches are small and few per second, and the files
        // must appear in sequence order for a restart to read them back in order.
        let body = match self.dir.as_deref().map(|dir| write(dir, seq, &encoded)) {
            None => Body::Memory(encoded),
            Some(Ok(path)) => {
                if state.disk_failing {
                    state.disk_failing = false;
                    tracing::info!("the profile spool writes to disk again");
                }
                Body::File(path)
            }
            Some(Err(e)) => {
                self.stats.add_spool_write_error();
                if !state.disk_failing {
                    state.disk_failing = true;
                    tracing::warn!(
                        "cannot write request profiles to the spool in {} ({e}); keeping them \
                         in memory until the disk takes writes again (a restart would lose them)",
                        self.dir.as_deref().unwrap_or(Path::new("")).display()
                    );
                }
                Body::Memory(encoded)
            }
        };
        state.batches.push_back(Batch {
            seq,
            bytes,
            profiles: n,
            body,
        });
        state.bytes += bytes;
        self.update_gauges(&state);
        drop(state);
        self.ready.notify_one();
    }

    /// The oldest batch, waiting for one; `None` once closed and empty. A batch that
    /// cannot be read back (a damaged file) is dropped with an error line.
    pub async fn next(&self) -> Option<Taken> {
        loop {
            let notified = self.ready.notified();
            let front = {
                let state = self.lock();
                match state.batches.front() {
                    Some(batch) => Some((batch.seq, read(&batch.body))),
                    None if state.closed => return None,
                    None => None,
                }
            };
            match front {
                Some((seq, Ok(profiles))) => return Some(Taken { seq, profiles }),
                Some((seq, Err(e))) => {
                    tracing::error!("dropping spooled request-profile batch {seq}: {e}");
                    self.delivered(seq, 0);
                }
                None => notified.await,
            }
        }
    }

    /// Removes batch `seq` (delivered, or given up with its `dropped` profiles counted).
    pub fn delivered(&self, seq: u64, dropped: usize) {
        let mut state = self.lock();
        let Some(i) = state.batches.iter().position(|b| b.seq == seq) else {
            return;
        };
        let batch = state.batches.remove(i).expect("position is in range");
        state.bytes -= batch.bytes;
        self.update_gauges(&state);
        drop(state);
        if let Body::File(path) = batch.body
            && let Err(e) = std::fs::remove_file(&path)
        {
            tracing::warn!("cannot remove delivered spool file {}: {e}", path.display());
        }
        self.stats.add_trace_profiles_dropped(dropped);
    }

    /// No more pushes: [`Spool::next`] returns `None` once the queue is empty. Profiles
    /// held only in memory are counted as dropped if the agent stops before they go.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_waiters();
    }

    /// Profiles in memory only (not on disk): lost if the agent stops now.
    pub fn in_memory(&self) -> usize {
        let state = self.lock();
        state
            .batches
            .iter()
            .filter(|b| matches!(b.body, Body::Memory(_)))
            .map(|b| b.profiles)
            .sum()
    }

    /// At shutdown, when the colony did not take them in time: counts the profiles
    /// held only in memory as dropped, and returns how many.
    pub fn abandon_memory(&self) -> usize {
        let lost = self.in_memory();
        self.stats.add_trace_profiles_dropped(lost);
        lost
    }
}

/// Locks `dir` for this process (released when the file closes, also on a crash).
fn lock_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::File::create(dir.join(LOCK))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::new(
            std::io::ErrorKind::ResourceBusy,
            "another agent is using it; give each agent its own data directory",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

fn encode(profiles: Vec<v1::TraceProfile>) -> Vec<u8> {
    v1::IngestTraceProfilesRequest {
        agent_id: String::new(),
        profiles,
    }
    .encode_to_vec()
}

fn read(body: &Body) -> Result<Vec<v1::TraceProfile>, String> {
    let bytes = match body {
        Body::Memory(bytes) => std::borrow::Cow::Borrowed(bytes.as_slice()),
        Body::File(path) => std::fs::read(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .into(),
    };
    v1::IngestTraceProfilesRequest::decode(bytes.as_ref())
        .map(|request| request.profiles)
        .map_err(|e| format!("not a profile batch: {e}"))
}

fn write(dir: &Path, seq: u64, encoded: &[u8]) -> std::io::Result<PathBuf> {
    let path = dir.join(format!("{seq:020}.{EXTENSION}"));
    let partial = path.with_extension(PARTIAL);
    let result = (|| {
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(encoded)?;
        file.sync_data()?;
        std::fs::rename(&partial, &path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result.map(|()| path)
}

/// The batches a previous run left in `dir`, oldest first; partial files are removed.
fn recover(dir: &Path) -> std::io::Result<VecDeque<Batch>> {
    let mut batches = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let extension = path.extension().and_then(|e| e.to_str());
        if extension == Some(PARTIAL) {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let seq = path
            .file_stem()
            .and_then(|s| s.to_str()?.parse::<u64>().ok());
        if let (Some(EXTENSION), Some(seq)) = (extension, seq) {
            let bytes = std::fs::metadata(&path)?.len();
            batches.push(Batch {
                seq,
                bytes,
                profiles: 0,
                body: Body::File(path),
            });
        }
    }
    batches.sort_by_key(|b| b.seq);
    Ok(batches.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profiles(ids: std::ops::Range<u8>) -> Vec<v1::TraceProfile> {
        ids.map(|i| v1::TraceProfile {
            trace_id: vec![i; 16],
            span_id: vec![i; 8],
            ..Default::default()
        })
        .collect()
    }

    fn ids(taken: &Taken) -> Vec<u8> {
        taken.profiles.iter().map(|p| p.trace_id[0]).collect()
    }

    async fn drain(spool: &Spool) -> Vec<Vec<u8>> {
        spool.close();
        let mut out = Vec::new();
        while let Some(taken) = spool.next().await {
            out.push(ids(&taken));
            spool.delivered(taken.seq, 0);
        }
        out
    }

    #[tokio::test]
    async fn batches_survive_a_restart_in_order_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(AgentStats::default());
        let spool = Spool::open(Some(dir.path()), 1 << 20, stats.clone()).unwrap();
        for i in 0..12u8 {
            spool.push(profiles(i * 2..i * 2 + 2));
        }
        let first = spool.next().await.unwrap();
        assert_eq!(ids(&first), [0, 1]);
        spool.delivered(first.seq, 0);
        assert_eq!(stats.profiling().spool_batches, 11);
        assert_eq!(spool.in_memory(), 0);
        // A crash mid-write leaves a partial file; the agent stops without delivering.
        std::fs::write(dir.path().join("00000000000000000099.tmp"), b"junk").unwrap();
        drop(spool);

        let stats = Arc::new(AgentStats::default());
        let spool = Spool::open(Some(dir.path()), 1 << 20, stats.clone()).unwrap();
        spool.push(profiles(100..101));
        let delivered = drain(&spool).await;
        let expected: Vec<Vec<u8>> = (1..12u8)
            .map(|i| vec![i * 2, i * 2 + 1])
            .chain([vec![100]])
            .collect();
        assert_eq!(delivered, expected);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [LOCK]);
        assert_eq!(stats.profiling().spool_bytes, 0);
        assert_eq!(stats.profiling().trace_profiles_dropped, 0);
    }

    #[tokio::test]
    async fn a_full_spool_drops_new_batches_and_counts_them() {
        let stats = Arc::new(AgentStats::default());
        let one = encode(profiles(0..1)).len() as u64;
        let spool = Spool::open(None, one * 3, stats.clone()).unwrap();
        for i in 0..5u8 {
            spool.push(profiles(i..i + 1));
        }
        assert_eq!(stats.profiling().trace_profiles_dropped, 2);
        assert_eq!(spool.in_memory(), 3);
        // Room again: new batches fit.
        let taken = spool.next().await.unwrap();
        spool.delivered(taken.seq, 0);
        spool.push(profiles(9..10));
        assert_eq!(drain(&spool).await, [vec![1], vec![2], vec![9]]);
    }

    #[test]
    fn two_agents_cannot_share_a_spool() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(AgentStats::default());
        let first = Spool::open(Some(dir.path()), 1 << 20, stats.clone()).unwrap();
        let err = Spool::open(Some(dir.path()), 1 << 20, stats.clone()).unwrap_err();
        assert!(err.to_string().contains("another agent"), "{err}");
        drop(first);
        Spool::open(Some(dir.path()), 1 << 20, stats).unwrap();
    }

    #[tokio::test]
    async fn a_damaged_file_is_dropped_and_the_rest_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(AgentStats::default());
        let spool = Spool::open(Some(dir.path()), 1 << 20, stats.clone()).unwrap();
        spool.push(profiles(0..1));
        spool.push(profiles(1..2));
        drop(spool);
        std::fs::write(dir.path().join(format!("{:020}.pb", 0)), [0xff; 7]).unwrap();
        let spool = Spool::open(Some(dir.path()), 1 << 20, stats).unwrap();
        assert_eq!(drain(&spool).await, [vec![1]]);
    }

    /// A real full disk: a 64 KiB tmpfs as the data directory.
    #[tokio::test]
    #[ignore = "needs root (mounts a tmpfs): run `cargo xtask test`, which runs root tests"]
    async fn a_full_disk_keeps_batches_in_memory_and_loses_none() {
        struct Tmpfs(tempfile::TempDir);
        impl Drop for Tmpfs {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount")
                    .arg(self.0.path())
                    .status();
            }
        }
        let dir = Tmpfs(tempfile::tempdir().unwrap());
        let mount = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.0.path())
            .status()
            .expect("run mount");
        assert!(mount.success(), "mounting a tmpfs failed (not root?)");
        let stats = Arc::new(AgentStats::default());
        let spool = Spool::open(Some(dir.0.path()), 1 << 30, stats.clone()).unwrap();
        let big = |i: u8| {
            let mut p = profiles(i..i + 1);
            p[0].span_name = "x".repeat(20_000);
            p
        };
        for i in 0..10u8 {
            spool.push(big(i));
        }
        let errors = stats.profiling().spool_write_errors;
        let in_memory = spool.in_memory();
        let delivered = drain(&spool).await;
        assert!(errors > 0, "the tmpfs never filled up");
        assert!(
            in_memory > 0 && in_memory < 10,
            "{in_memory} batches in memory"
        );
        assert_eq!(delivered, (0..10u8).map(|i| vec![i]).collect::<Vec<_>>());
        assert_eq!(stats.profiling().trace_profiles_dropped, 0);
    }
}
