//! Host pids and tids of processes in containers (their own pid namespace).
//!
//! A span's `process.pid` and `thread.id` are numbers in the service's pid namespace;
//! the eBPF sampler reports pids and tids of the agent's namespace (the host's, with
//! `hostPID: true`). For a span whose resource names its container (`container.id`) or
//! pod (`k8s.pod.uid`), [`PidResolver`] finds the host process: among the processes
//! whose `/proc/<pid>/cgroup` mentions the container id (or the pod uid, dashed or with
//! underscores as systemd's cgroup driver writes it), the one whose `NSpid:` line in
//! `/proc/<pid>/status` ends with the span's pid. A pod's sandbox process (`pause`,
//! pid 1 of its own namespace) is never taken. A thread likewise, among
//! `/proc/<host pid>/task/*/status`, when the process is in another pid namespace. A
//! span naming neither container nor pod is taken to be from the agent's namespace:
//! its pid is used as is.
//!
//! Cost: lookups are cache hits. A cached process is checked against its start time
//! (`/proc/<pid>/stat` field 22, so that a reused pid is caught) at most once per
//! [`VALIDATE_EVERY`]; a cached thread against its `NSpid`. A miss scans `/proc` (one
//! `cgroup` file per process, and the `status` and `stat` of the container's processes,
//! all cached at once) at most once per container per [`SCAN_INTERVAL`], with at most
//! one scan per [`SCAN_GAP`] over all containers; a process's threads are scanned at
//! most once per [`THREAD_SCAN_INTERVAL`]. The caches are bounded.
//!
//! When no single process matches, the answer is "unknown" (never a guess): the
//! profiler then does not profile that process, and the reason is logged once per
//! container (or pod). A thread that cannot be found gives process precision.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A cached process or thread is checked against `/proc` at most this often.
pub const VALIDATE_EVERY: Duration = Duration::from_secs(1);
/// A container (or pod) is looked up in `/proc` at most this often.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(5);
/// At most one `/proc` scan this often, over all containers.
pub const SCAN_GAP: Duration = Duration::from_millis(50);
/// A process's threads are scanned at most this often.
pub const THREAD_SCAN_INTERVAL: Duration = Duration::from_millis(200);
/// Cache entries unused this long go first when a cache is full.
const IDLE: Duration = Duration::from_secs(600);
/// Most cached (container or pod, namespaced pid) entries, over all scopes.
const MAX_PROCESSES: usize = 8192;
/// Most containers and pods remembered (each with its scan time and warning).
const MAX_SCOPES: usize = 1024;
/// Most processes whose threads are cached.
const MAX_THREAD_PROCESSES: usize = 1024;
/// Shortest container id or pod uid looked for: a shorter one could match the cgroup
/// of some other container by chance (Docker's short ids have 12 characters).
const MIN_ID_LEN: usize = 12;

/// A process as the sampler sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPid {
    pub pid: u32,
    /// Its start time (`/proc/<pid>/stat` field 22); 0 when not looked up.
    start: u64,
    /// In a pid namespace below the agent's (`NSpid` has more than one entry): its
    /// thread ids need translating.
    nested: bool,
}

impl HostPid {
    /// A process of the agent's own pid namespace.
    fn same(pid: u32) -> Self {
        Self {
            pid,
            start: 0,
            nested: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Container,
    Pod,
}

impl Kind {
    fn attribute(self) -> &'static str {
        match self {
            Kind::Container => "container.id",
            Kind::Pod => "k8s.pod.uid",
        }
    }
}

/// Why a process was not found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Miss {
    /// The id cannot identify a container.
    BadId,
    /// No process here is in that container or pod.
    NoProcess,
    /// Its processes have no such pid in their namespace.
    NoSuchPid,
    /// Several have it (two containers of a pod, each with its pid 1).
    Ambiguous(usize),
    /// Not looked up now (rate limit); nothing to report.
    Later,
}

struct Cached {
    host: HostPid,
    checked: Instant,
    /// For a pod: the service whose span it was found for. Another service asking for
    /// the same pid of the pod is looked up afresh, so that a container started after
    /// the first lookup, with the same namespaced pid, shows as ambiguous.
    service: Option<String>,
}

/// One container or pod.
struct Scope {
    /// Namespaced pid → its host process, for pids that match one process.
    pids: HashMap<u32, Cached>,
    last_scan: Option<Instant>,
    /// The last scan found no process in it.
    empty: bool,
    used: Instant,
    warned: bool,
}

/// The threads of one host process: namespaced tid → (host tid, last checked).
struct Threads {
    start: u64,
    tids: HashMap<u32, (u32, Instant)>,
    last_scan: Option<Instant>,
    used: Instant,
}

/// Translates namespaced pids and tids to host ones, with the caches described in the
/// module documentation. Reads a `/proc`-like tree, so that tests can use a fake one.
pub struct PidResolver {
    proc: PathBuf,
    containers: HashMap<String, Scope>,
    pods: HashMap<String, Scope>,
    threads: HashMap<u32, Threads>,
    last_scan: Option<Instant>,
}

impl std::fmt::Debug for PidResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PidResolver")
            .field("proc", &self.proc)
            .field("containers", &self.containers.len())
            .field("pods", &self.pods.len())
            .finish_non_exhaustive()
    }
}

impl PidResolver {
    /// A resolver reading `proc` (`/proc` in the agent).
    pub fn new(proc: impl Into<PathBuf>) -> Self {
        Self {
            proc: proc.into(),
            containers: HashMap::new(),
            pods: HashMap::new(),
            threads: HashMap::new(),
            last_scan: None,
        }
    }

    /// The host process of `pid` as a span of `service` names it, with the span's
    /// `container.id` and `k8s.pod.uid`. `None`: not known (yet), do not profile it.
    /// The container id is tried first; the pod uid when the container id matches no
    /// process here.
    pub fn host_pid(
        &mut self,
        service: &str,
        pid: u32,
        container_id: Option<&str>,
        pod_uid: Option<&str>,
        now: Instant,
    ) -> Option<HostPid> {
        if container_id.is_none() && pod_uid.is_none() {
            return Some(HostPid::same(pid));
        }
        for (kind, id) in [(Kind::Container, container_id), (Kind::Pod, pod_uid)] {
            let Some(id) = id else { continue };
            match self.lookup(kind, id, pid, service, now) {
                Ok(host) => return Some(host),
                Err(Miss::Later) => return None,
                Err(miss) => {
                    let scope = self.scope(kind, id, now);
                    if !std::mem::replace(&mut scope.warned, true) {
                        warn(service, pid, kind, id, miss);
                    }
                    if !matches!(miss, Miss::BadId | Miss::NoProcess) {
                        return None;
                    }
                }
            }
        }
        None
    }

    /// The host thread id of thread `tid` (as the span names it) of process `host`.
    /// The same number for a process of the agent's namespace; `None` when not found.
    pub fn host_tid(&mut self, host: HostPid, tid: i64, now: Instant) -> Option<i64> {
        if !host.nested {
            return Some(tid);
        }
        let tid = u32::try_from(tid).ok()?;
        if !self.threads.contains_key(&host.pid) && self.threads.len() >= MAX_THREAD_PROCESSES {
            self.threads
                .retain(|_, t| now.saturating_duration_since(t.used) < IDLE);
            if self.threads.len() >= MAX_THREAD_PROCESSES {
                self.threads.clear();
            }
        }
        let fresh = || Threads {
            start: host.start,
            tids: HashMap::new(),
            last_scan: None,
            used: now,
        };
        let threads = self.threads.entry(host.pid).or_insert_with(fresh);
        if threads.start != host.start {
            *threads = fresh(); // another process has this pid now
        }
        threads.used = now;
        if let Some((host_tid, checked)) = threads.tids.get_mut(&tid) {
            if now.saturating_duration_since(*checked) < VALIDATE_EVERY {
                return Some(i64::from(*host_tid));
            }
            let status = self
                .proc
                .join(format!("{}/task/{host_tid}/status", host.pid));
            if nspid(&status).and_then(|ids| ids.last().copied()) == Some(tid) {
                *checked = now;
                return Some(i64::from(*host_tid));
            }
            threads.tids.remove(&tid);
        }
        if threads
            .last_scan
            .is_some_and(|t| now.saturating_duration_since(t) < THREAD_SCAN_INTERVAL)
        {
            return None;
        }
        threads.last_scan = Some(now);
        threads.tids = scan_threads(&self.proc.join(host.pid.to_string()).join("task"))
            .into_iter()
            .map(|(ns, host_tid)| (ns, (host_tid, now)))
            .collect();
        threads.tids.get(&tid).map(|(t, _)| i64::from(*t))
    }

    fn scopes(&mut self, kind: Kind) -> &mut HashMap<String, Scope> {
        match kind {
            Kind::Container => &mut self.containers,
            Kind::Pod => &mut self.pods,
        }
    }

    /// The scope of `id`, created if new (forgetting idle scopes, or all, when full).
    fn scope(&mut self, kind: Kind, id: &str, now: Instant) -> &mut Scope {
        let scopes = self.scopes(kind);
        if scopes.contains_key(id) {
            return scopes.get_mut(id).expect("present");
        }
        if scopes.len() >= MAX_SCOPES {
            scopes.retain(|_, s| now.saturating_duration_since(s.used) < IDLE);
            if scopes.len() >= MAX_SCOPES {
                scopes.clear();
            }
        }
        scopes.entry(id.to_string()).or_insert(Scope {
            pids: HashMap::new(),
            last_scan: None,
            empty: false,
            used: now,
            warned: false,
        })
    }

    fn lookup(
        &mut self,
        kind: Kind,
        id: &str,
        pid: u32,
        service: &str,
        now: Instant,
    ) -> Result<HostPid, Miss> {
        if id.len() < MIN_ID_LEN
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Miss::BadId);
        }
        let proc = &self.proc;
        let scopes = match kind {
            Kind::Container => &mut self.containers,
            Kind::Pod => &mut self.pods,
        };
        if let Some(scope) = scopes.get_mut(id) {
            scope.used = now;
            if let Some(cached) = scope.pids.get_mut(&pid)
                && cached.service.as_deref().is_none_or(|s| s == service)
            {
                if now.saturating_duration_since(cached.checked) < VALIDATE_EVERY {
                    return Ok(cached.host);
                }
                if start_time(&proc.join(cached.host.pid.to_string()).join("stat"))
                    == Some(cached.host.start)
                {
                    cached.checked = now;
                    return Ok(cached.host);
                }
                // Gone, or its pid was reused: look again.
                scope.pids.remove(&pid);
            }
            if scope
                .last_scan
                .is_some_and(|t| now.saturating_duration_since(t) < SCAN_INTERVAL)
            {
                return Err(if scope.empty {
                    Miss::NoProcess
                } else {
                    Miss::Later
                });
            }
        }
        if self
            .last_scan
            .is_some_and(|t| now.saturating_duration_since(t) < SCAN_GAP)
        {
            return Err(Miss::Later);
        }
        self.last_scan = Some(now);
        let needles: Vec<String> = match kind {
            Kind::Container => vec![id.to_string()],
            Kind::Pod => vec![id.to_string(), id.replace('-', "_")],
        };
        let (in_scope, found) = scan(&self.proc, &needles);
        let result = match found.get(&pid).map(Vec::as_slice) {
            Some([host]) => {
                let attribute = kind.attribute();
                tracing::debug!(service, pid, host_pid = host.pid, "{attribute} {id}: found");
                Ok(*host)
            }
            Some(hosts) => Err(Miss::Ambiguous(hosts.len())),
            None if in_scope == 0 => Err(Miss::NoProcess),
            None => Err(Miss::NoSuchPid),
        };
        let scope = self.scope(kind, id, now);
        scope.last_scan = Some(now);
        scope.empty = in_scope == 0;
        let mut old = std::mem::take(&mut scope.pids);
        // Every process of a container is cached (one scan serves them all); of a pod,
        // the one looked up, and those found before that are still the only ones with
        // their pid.
        scope.pids = found
            .into_iter()
            .filter_map(|(ns, hosts)| {
                let [host] = hosts.as_slice() else {
                    return None;
                };
                let service = match kind {
                    Kind::Container => None,
                    Kind::Pod if ns == pid => Some(service.to_string()),
                    Kind::Pod => old.remove(&ns).filter(|c| c.host == *host)?.service,
                };
                let cached = Cached {
                    host: *host,
                    checked: now,
                    service,
                };
                Some((ns, cached))
            })
            .take(MAX_PROCESSES)
            .collect();
        self.bound(now);
        result
    }

    /// Keeps the cached processes under [`MAX_PROCESSES`]: idle scopes go first, then
    /// everything.
    fn bound(&mut self, now: Instant) {
        let total = |r: &Self| {
            r.containers
                .values()
                .chain(r.pods.values())
                .map(|s| s.pids.len())
                .sum::<usize>()
        };
        if total(self) <= MAX_PROCESSES {
            return;
        }
        for scopes in [&mut self.containers, &mut self.pods] {
            for scope in scopes.values_mut() {
                if now.saturating_duration_since(scope.used) >= IDLE {
                    scope.pids.clear();
                }
            }
        }
        if total(self) > MAX_PROCESSES {
            for scopes in [&mut self.containers, &mut self.pods] {
                scopes.values_mut().for_each(|s| s.pids.clear());
            }
        }
    }
}

fn warn(service: &str, pid: u32, kind: Kind, id: &str, miss: Miss) {
    let what = kind.attribute();
    let subject = match kind {
        Kind::Container => "container",
        Kind::Pod => "pod",
    };
    let why = match miss {
        Miss::BadId => format!(
            "{what} {id:?} cannot identify a {subject} (at least {MIN_ID_LEN} letters, digits, \
             '-' or '_')"
        ),
        Miss::NoProcess => format!(
            "no process of {subject} {id} is visible in /proc here: the agent needs hostPID: \
             true to see other pods' processes, and the spans must come from a process on \
             this node"
        ),
        Miss::NoSuchPid => format!(
            "no process of {subject} {id} has pid {pid} in its pid namespace (exited, or \
             process.pid is not the process's own pid)"
        ),
        Miss::Ambiguous(n) => format!(
            "{n} processes of {subject} {id} have pid {pid} in their pid namespaces (one per \
             container): set container.id on the spans to tell them apart"
        ),
        Miss::Later => return,
    };
    tracing::warn!(
        service,
        pid,
        "not profiling this process of {service}: {why} (logged once per {subject})"
    );
}

/// Scans `proc` for the processes whose cgroup mentions one of `needles`: how many
/// there are (sandboxes aside), and by namespaced pid (the last `NSpid` entry).
fn scan(proc: &Path, needles: &[String]) -> (usize, HashMap<u32, Vec<HostPid>>) {
    let mut found: HashMap<u32, Vec<HostPid>> = HashMap::new();
    let mut in_scope = 0;
    let Ok(entries) = std::fs::read_dir(proc) else {
        return (0, found);
    };
    let mut text = String::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if !read_into(&dir.join("cgroup"), &mut text)
            || !needles.iter().any(|n| text.contains(n.as_str()))
        {
            continue;
        }
        let Some(ids) = nspid(&dir.join("status")) else {
            continue;
        };
        let (Some(&ns), nested) = (ids.last(), ids.len() > 1) else {
            continue;
        };
        if nested && ns == 1 && is_sandbox(&dir) {
            continue;
        }
        let Some(start) = start_time(&dir.join("stat")) else {
            continue; // exited meanwhile
        };
        in_scope += 1;
        found
            .entry(ns)
            .or_default()
            .push(HostPid { pid, start, nested });
    }
    (in_scope, found)
}

/// A pod's sandbox ("pause") process, which holds the pod's namespaces and never
/// sends spans.
fn is_sandbox(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.trim_end() == "pause")
}

/// The threads in `task` (`/proc/<pid>/task`): namespaced tid → host tid.
fn scan_threads(task: &Path) -> HashMap<u32, u32> {
    let Ok(entries) = std::fs::read_dir(task) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let tid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let ns = *nspid(&entry.path().join("status"))?.last()?;
            Some((ns, tid))
        })
        .collect()
}

fn read_into(path: &Path, text: &mut String) -> bool {
    text.clear();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(text))
        .is_ok()
}

/// The `NSpid:` line of a `status` file: the pid in each namespace, outermost first.
fn nspid(status: &Path) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(status).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let ids: Option<Vec<u32>> = line.split_whitespace().map(|n| n.parse().ok()).collect();
    ids.filter(|ids| !ids.is_empty())
}

/// Field 22 of a `stat` file: the process's start time, in clock ticks after boot.
fn start_time(stat: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces and ')'.
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINER_A: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
    const CONTAINER_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    const POD: &str = "5f3c8e2a-1b4d-4c6e-9f0a-2b3c4d5e6f70";

    /// A fake `/proc`.
    struct Proc(tempfile::TempDir);

    impl Proc {
        fn new() -> Self {
            Self(tempfile::tempdir().unwrap())
        }

        fn path(&self) -> &Path {
            self.0.path()
        }

        /// Process `pid` with `NSpid` `nspid`, in `cgroup` (v2 line), started at
        /// `start`, named `comm`.
        fn process(&self, pid: u32, nspid: &[u32], cgroup: &str, start: u64, comm: &str) {
            let dir = self.path().join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
            std::fs::write(dir.join("status"), status(comm, nspid)).unwrap();
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            let stat = format!(
                "{pid} ({comm}) S 1 {pid} {pid} 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 {start} \
                 1000 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n"
            );
            std::fs::write(dir.join("stat"), stat).unwrap();
            self.thread(pid, pid, nspid);
        }

        /// Thread `tid` of process `pid`, with `NSpid` `nspid`.
        fn thread(&self, pid: u32, tid: u32, nspid: &[u32]) {
            let dir = self.path().join(format!("{pid}/task/{tid}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("status"), status("worker", nspid)).unwrap();
        }

        fn remove(&self, pid: u32) {
            std::fs::remove_dir_all(self.path().join(pid.to_string())).unwrap();
        }
    }

    fn status(comm: &str, nspid: &[u32]) -> String {
        let ids: Vec<String> = nspid.iter().map(u32::to_string).collect();
        format!(
            "Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{0}\nNgid:\t0\n\
             Pid:\t{0}\nPPid:\t1\nNStgid:\t{1}\nNSpid:\t{1}\nNSpgid:\t{1}\n",
            nspid[0],
            ids.join("\t")
        )
    }

    fn pid_of(
        r: &mut PidResolver,
        pid: u32,
        c: Option<&str>,
        p: Option<&str>,
        now: Instant,
    ) -> Option<u32> {
        r.host_pid("svc", pid, c, p, now).map(|h| h.pid)
    }

    /// Host processes: init (1), a host process with pid 7 (7), container A's pid 1
    /// (500) and pid 7 (501), container B's pid 1 (600).
    fn node() -> Proc {
        let proc = Proc::new();
        proc.process(1, &[1], "/init.scope", 1, "systemd");
        proc.process(7, &[7], "/system.slice/cron.service", 2, "cron");
        let a = format!("/kubepods/burstable/pod{POD}/{CONTAINER_A}");
        proc.process(500, &[500, 1], &a, 100, "payment-svc");
        proc.process(501, &[501, 7], &a, 101, "worker");
        let b = format!(
            "/system.slice/containerd.service/kubepods-besteffort-pod00000000_1111_2222_3333_444444444444.slice:cri-containerd:{CONTAINER_B}"
        );
        proc.process(600, &[600, 1], &b, 200, "ledger");
        proc
    }

    #[test]
    fn without_container_or_pod_the_pid_is_the_hosts() {
        let proc = node();
        let mut r = PidResolver::new(proc.path());
        let now = Instant::now();
        let host = r.host_pid("svc", 7, None, None, now).unwrap();
        assert_eq!(host.pid, 7);
        // Nothing is read: even a pid that does not exist here.
        assert_eq!(pid_of(&mut r, 4242, None, None, now), Some(4242));
        // Its threads too.
        assert_eq!(r.host_tid(host, 9, now), Some(9));
        assert_eq!(r.host_tid(host, i64::MAX, now), Some(i64::MAX));
    }

    #[test]
    fn a_container_id_finds_the_process_by_its_namespaced_pid() {
        let proc = node();
        let mut r = PidResolver::new(proc.path());
        let t0 = Instant::now();
        assert_eq!(pid_of(&mut r, 1, Some(CONTAINER_A), None, t0), Some(500));
        // Same scan: the container's other processes are cached with it.
        assert_eq!(pid_of(&mut r, 7, Some(CONTAINER_A), None, t0), Some(501));
        let b = t0 + SCAN_GAP;
        assert_eq!(pid_of(&mut r, 1, Some(CONTAINER_B), None, b), Some(600));
        // A pid the container does not have: unknown, not the host's pid 7's namesake.
        assert_eq!(
            pid_of(&mut r, 7, Some(CONTAINER_B), None, b + SCAN_GAP),
            None
        );
        // A container with no process here (the agent without hostPID sees none).
        let unknown = "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef";
        assert_eq!(
            pid_of(&mut r, 1, Some(unknown), None, b + SCAN_GAP * 2),
            None
        );
        // Ids too short to identify a container are refused.
        assert_eq!(
            pid_of(&mut r, 1, Some("0a1b"), None, b + SCAN_GAP * 3),
            None
        );
    }

    #[test]
    fn cgroup_v1_and_docker_paths_match() {
        let proc = Proc::new();
        let dir = proc.path().join("300");
        proc.process(300, &[300, 1], "/", 5, "app");
        std::fs::write(
            dir.join("cgroup"),
            format!(
                "12:memory:/docker/{CONTAINER_A}\n11:cpu,cpuacct:/docker/{CONTAINER_A}\n0::/\n"
            ),
        )
        .unwrap();
        proc.process(
            301,
            &[301, 1],
            &format!("/system.slice/docker-{CONTAINER_B}.scope"),
            6,
            "app",
        );
        let mut r = PidResolver::new(proc.path());
        let t0 = Instant::now();
        assert_eq!(pid_of(&mut r, 1, Some(CONTAINER_A), None, t0), Some(300));
        assert_eq!(
            pid_of(&mut r, 1, Some(CONTAINER_B), None, t0 + SCAN_GAP),
            Some(301)
        );
    }

    #[test]
    fn a_pod_uid_matches_dashed_and_underscored_cgroup_paths() {
        let proc = node();
        let mut r = PidResolver::new(proc.path());
        let t0 = Instant::now();
        // Dashed (cgroupfs driver): container A is in pod POD, whose pid 7 is 501.
        assert_eq!(pid_of(&mut r, 7, None, Some(POD), t0), Some(501));
        // Underscored (systemd driver): container B's pod.
        let pod_b = "00000000-1111-2222-3333-444444444444";
        assert_eq!(
            pid_of(&mut r, 1, None, Some(pod_b), t0 + SCAN_GAP),
            Some(600)
        );
        // The container id, when present, is tried first; a wrong one falls back to the pod.
        let other = "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef";
        assert_eq!(
            pid_of(&mut r, 7, Some(other), Some(POD), t0 + SCAN_GAP * 2),
            Some(501)
        );
    }

    #[test]
    fn a_pod_uid_matching_several_processes_is_ambiguous_and_the_sandbox_is_skipped() {
        let proc = node();
        let pod = |c: &str| format!("/kubepods/pod{POD}/{c}");
        // The pod's sandbox: pid 1 of its own namespace, never taken.
        let sandbox = "c0ffee0000000000000000000000000000000000000000000000000000000000";
        proc.process(400, &[400, 1], &pod(sandbox), 90, "pause");
        let mut r = PidResolver::new(proc.path());
        let t0 = Instant::now();
        assert_eq!(pid_of(&mut r, 1, None, Some(POD), t0), Some(500));
        // A second container in the pod, with its own pid 1, sending spans of another
        // service: a fresh look finds two pid 1s, and guesses neither.
        let sidecar = "beef000000000000000000000000000000000000000000000000000000000000";
        proc.process(700, &[700, 1], &pod(sidecar), 300, "sidecar");
        let t1 = t0 + SCAN_INTERVAL;
        let proxy = |r: &mut PidResolver, t| r.host_pid("proxy", 1, None, Some(POD), t);
        assert_eq!(proxy(&mut r, t1), None);
        // Nor the first service's pid 1 any more.
        assert_eq!(pid_of(&mut r, 1, None, Some(POD), t1), None);
        assert_eq!(pid_of(&mut r, 1, None, Some(POD), t1 + SCAN_INTERVAL), None);
        // pid 7 is still one process.
        assert_eq!(
            pid_of(&mut r, 7, None, Some(POD), t1 + SCAN_INTERVAL * 2),
            Some(501)
        );
        // The container id tells them apart.
        let t2 = t1 + SCAN_INTERVAL * 3;
        assert_eq!(
            pid_of(&mut r, 1, Some(CONTAINER_A), Some(POD), t2),
            Some(500)
        );
        assert_eq!(
            r.host_pid("proxy", 1, Some(sidecar), Some(POD), t2 + SCAN_GAP)
                .map(|h| h.pid),
            Some(700)
        );
        // A container id naming the sandbox (as some container detectors report) finds
        // no process: the sandbox is not one. With the pod uid, the pod decides.
        let t3 = t2 + SCAN_GAP * 2;
        assert_eq!(pid_of(&mut r, 1, Some(sandbox), None, t3), None);
        let t4 = t3 + SCAN_INTERVAL;
        assert_eq!(pid_of(&mut r, 7, Some(sandbox), Some(POD), t4), Some(501));
    }

    #[test]
    fn a_reused_pid_is_caught_by_its_start_time() {
        let proc = node();
        let mut r = PidResolver::new(proc.path());
        let t0 = Instant::now();
        assert_eq!(pid_of(&mut r, 1, Some(CONTAINER_A), None, t0), Some(500));
        // Container A's process exits; a host process gets pid 500; the container's
        // new pid 1 is 800.
        proc.remove(500);
        proc.process(500, &[500], "/system.slice/other.service", 900, "other");
        proc.process(
            800,
            &[800, 1],
            &format!("/kubepods/pod{POD}/{CONTAINER_A}"),
            901,
            "payment-svc",
        );
        // Not checked again within VALIDATE_EVERY.
        let soon = t0 + VALIDATE_EVERY / 2;
        assert_eq!(pid_of(&mut r, 1, Some(CONTAINER_A), None, soon), Some(500));
        // Then the start time differs; the container was scanned too recently to look
        // again: unknown, not the wrong process.
        let t1 = t0 + VALIDATE_EVERY;
        assert_eq!(pid_of(&mut r, 1, Some(CONTAINER_A), None, t1), None);
        // After the scan interval, the new process.
        let t2 = t0 + SCAN_INTERVAL;
        assert_eq!(pid_of(&mut r, 1, Some(CONTAINER_A), None, t2), Some(800));
        // A process that exited and whose pid is free: unknown until found again.
        proc.remove(800);
        assert_eq!(
            pid_of(&mut r, 1, Some(CONTAINER_A), None, t2 + VALIDATE_EVERY),
            None
        );
    }

    #[test]
    fn lookups_of_an_unknown_container_are_rate_limited() {
        let proc = node();
        let mut r = PidResolver::new(proc.path());
        let t0 = Instant::now();
        let unknown = "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef";
        assert_eq!(pid_of(&mut r, 1, Some(unknown), None, t0), None);
        // The container appears; it is not looked for again before the interval.
        proc.process(900, &[900, 1], &format!("/docker/{unknown}"), 1000, "late");
        for ms in [1, 100, 1000, 4999] {
            let t = t0 + Duration::from_millis(ms);
            assert_eq!(pid_of(&mut r, 1, Some(unknown), None, t), None);
        }
        assert_eq!(
            pid_of(&mut r, 1, Some(unknown), None, t0 + SCAN_INTERVAL),
            Some(900)
        );
        // Scans of different containers are spaced by SCAN_GAP.
        let t1 = t0 + SCAN_INTERVAL;
        assert_eq!(pid_of(&mut r, 1, Some(CONTAINER_A), None, t1), None);
        assert_eq!(
            pid_of(&mut r, 1, Some(CONTAINER_A), None, t1 + SCAN_GAP),
            Some(500)
        );
    }

    #[test]
    fn threads_are_translated_within_their_process() {
        let proc = node();
        // Container A's pid 1 has threads 2 and 3 of its namespace: host 510 and 511.
        proc.thread(500, 510, &[510, 2]);
        proc.thread(500, 511, &[511, 3]);
        let mut r = PidResolver::new(proc.path());
        let t0 = Instant::now();
        let host = r.host_pid("svc", 1, Some(CONTAINER_A), None, t0).unwrap();
        assert_eq!(r.host_tid(host, 1, t0), Some(500));
        assert_eq!(r.host_tid(host, 2, t0), Some(510));
        assert_eq!(r.host_tid(host, 3, t0), Some(511));
        // Not a thread of the process (or not an OS thread id at all).
        assert_eq!(r.host_tid(host, 4, t0), None);
        assert_eq!(r.host_tid(host, -1, t0), None);
        // A thread started later is found on the next scan.
        proc.thread(500, 512, &[512, 4]);
        assert_eq!(r.host_tid(host, 4, t0 + THREAD_SCAN_INTERVAL), Some(512));
        // A thread whose namespaced tid now belongs to another host thread.
        std::fs::remove_dir_all(proc.path().join("500/task/510")).unwrap();
        proc.thread(500, 513, &[513, 2]);
        let t1 = t0 + THREAD_SCAN_INTERVAL + VALIDATE_EVERY;
        assert_eq!(r.host_tid(host, 2, t1), Some(513));
        // A process of the agent's namespace found through its container: same tids.
        let proc2 = Proc::new();
        proc2.process(42, &[42], &format!("/docker/{CONTAINER_B}"), 3, "hostpid");
        let mut r2 = PidResolver::new(proc2.path());
        let host = r2.host_pid("svc", 42, Some(CONTAINER_B), None, t0).unwrap();
        assert_eq!(host.pid, 42);
        assert_eq!(r2.host_tid(host, 43, t0), Some(43));
    }

    #[test]
    fn parses_stat_and_status() {
        let proc = Proc::new();
        proc.process(10, &[10, 3, 1], "/", 12345, "a) b (c");
        assert_eq!(start_time(&proc.path().join("10/stat")), Some(12345));
        assert_eq!(nspid(&proc.path().join("10/status")), Some(vec![10, 3, 1]));
        assert_eq!(start_time(&proc.path().join("11/stat")), None);
        // This process, from the real /proc.
        let me = Path::new("/proc/self");
        assert!(start_time(&me.join("stat")).is_some_and(|s| s > 0));
        assert_eq!(
            nspid(&me.join("status")).and_then(|ids| ids.first().copied()),
            Some(std::process::id())
        );
    }
}
