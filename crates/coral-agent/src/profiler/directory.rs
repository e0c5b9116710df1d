//! Which processes serve which service on this node, as learnt from spans: the
//! `process.pid` resource attribute of every span the receivers accept.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A pid not seen in a span for this long is forgotten.
pub const DIRECTORY_TTL: Duration = Duration::from_secs(600);

/// How often [`ProcessDirectory::saw`] sweeps out expired entries.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Service → pids with the last time a span named them. Times are passed in, so the
/// directory is testable without waiting.
#[derive(Debug, Default)]
pub struct ProcessDirectory {
    services: HashMap<String, HashMap<u32, Instant>>,
    last_prune: Option<Instant>,
}

impl ProcessDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    /// A span of `service` came from process `pid` at `now`. Allocates only for a
    /// service not seen before.
    pub fn saw(&mut self, service: &str, pid: u32, now: Instant) {
        match self.services.get_mut(service) {
            Some(pids) => {
                pids.insert(pid, now);
            }
            None => {
                self.services
                    .insert(service.to_string(), HashMap::from([(pid, now)]));
            }
        }
        let due = self
            .last_prune
            .is_none_or(|last| now.saturating_duration_since(last) >= PRUNE_INTERVAL);
        if due {
            self.prune(now);
        }
    }

    /// The pids of `service` seen within [`DIRECTORY_TTL`] of `now`, ascending.
    pub fn pids(&self, service: &str, now: Instant) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .services
            .get(service)
            .into_iter()
            .flatten()
            .filter(|&(_, &seen)| !expired(seen, now))
            .map(|(&pid, _)| pid)
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Forgets every entry older than [`DIRECTORY_TTL`], and services left without pids.
    pub fn prune(&mut self, now: Instant) {
        self.last_prune = Some(now);
        self.services.retain(|_, pids| {
            pids.retain(|_, &mut seen| !expired(seen, now));
            !pids.is_empty()
        });
    }

    /// Number of (service, pid) entries, expired or not.
    pub fn len(&self) -> usize {
        self.services.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

fn expired(seen: Instant, now: Instant) -> bool {
    now.saturating_duration_since(seen) > DIRECTORY_TTL
}

/// Whether process `pid` exists (`/proc/<pid>` on this host).
pub fn process_alive(pid: u32) -> bool {
    pid != 0 && std::path::Path::new("/proc").join(pid.to_string()).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_pids_per_service() {
        let t0 = Instant::now();
        let mut dir = ProcessDirectory::new();
        assert!(dir.is_empty());
        dir.saw("checkout", 30, t0);
        dir.saw("checkout", 10, t0);
        dir.saw("checkout", 30, t0);
        dir.saw("cart", 20, t0);
        assert_eq!(dir.pids("checkout", t0), [10, 30]);
        assert_eq!(dir.pids("cart", t0), [20]);
        assert!(dir.pids("unknown", t0).is_empty());
        assert_eq!(dir.len(), 3);
    }

    #[test]
    fn entries_expire_after_the_ttl_unless_seen_again() {
        let t0 = Instant::now();
        let mut dir = ProcessDirectory::new();
        dir.saw("checkout", 10, t0);
        dir.saw("checkout", 11, t0);
        let later = t0 + Duration::from_secs(300);
        dir.saw("checkout", 11, later);
        assert_eq!(dir.pids("checkout", t0 + DIRECTORY_TTL), [10, 11]);
        let expiry = t0 + DIRECTORY_TTL + Duration::from_secs(1);
        assert_eq!(dir.pids("checkout", expiry), [11]);
        assert!(
            dir.pids("checkout", later + DIRECTORY_TTL + Duration::from_secs(1))
                .is_empty()
        );
    }

    #[test]
    fn pruning_frees_expired_entries_and_empty_services() {
        let t0 = Instant::now();
        let mut dir = ProcessDirectory::new();
        dir.saw("old", 1, t0);
        dir.saw("new", 2, t0);
        let later = t0 + DIRECTORY_TTL + Duration::from_secs(1);
        // A sighting long after the last sweep sweeps.
        dir.saw("new", 2, later);
        assert_eq!(dir.len(), 1);
        assert!(dir.pids("old", later).is_empty());
        dir.prune(later + DIRECTORY_TTL + Duration::from_secs(1));
        assert!(dir.is_empty());
    }

    #[test]
    fn this_process_is_alive() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(0));
        assert!(!process_alive(u32::MAX));
    }
}
