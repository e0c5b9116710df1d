//! Giving up the capabilities the agent does not need.
//!
//! The agent runs as root on every node, but all it needs from the kernel is to load
//! and attach its eBPF sampler (`CAP_BPF`, `CAP_PERFMON`), to read other processes'
//! memory maps and binaries for symbols (`CAP_SYS_PTRACE`), and to read kernel symbol
//! addresses (`CAP_SYSLOG`). It keeps those — it loads the sampler on demand, when a
//! profile or trigger asks, and unloads it when idle, so the first two stay needed —
//! and drops every other one from all its sets, the bounding set included, so that
//! nothing it runs later can get them back. On a kernel older than 5.8, which has
//! no `CAP_BPF` or `CAP_PERFMON`, `CAP_SYS_ADMIN` stands in for both.
//!
//! Capabilities belong to threads: [`drop_unneeded`] must run before any other thread
//! starts (`coral agent start` calls it before it builds its async runtime).

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities the agent keeps (see the module documentation).
pub const NEEDED: [Capability; 4] = [
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_SYSLOG,
];

/// What [`drop_unneeded`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// It kept these (sorted) and dropped `dropped` others.
    Kept {
        kept: Vec<Capability>,
        dropped: usize,
    },
    /// The process had none of the capabilities it would drop (not root): nothing to do.
    NothingToDrop,
}

/// A failure to change the capability sets.
#[derive(Debug, thiserror::Error)]
#[error("cannot drop unneeded capabilities: {0}")]
pub struct PrivilegeError(#[from] caps::errors::CapsError);

/// The capabilities to keep on this kernel, out of those the process has.
fn keep(permitted: &CapsHashSet, supported: &CapsHashSet) -> CapsHashSet {
    let mut wanted: CapsHashSet = NEEDED.into_iter().collect();
    if !supported.contains(&Capability::CAP_BPF) {
        wanted.remove(&Capability::CAP_BPF);
        wanted.remove(&Capability::CAP_PERFMON);
        wanted.insert(Capability::CAP_SYS_ADMIN);
    }
    wanted.intersection(permitted).copied().collect()
}

/// Drops every capability but the [`NEEDED`] ones from this thread's sets (bounding,
/// ambient, inheritable, permitted, effective). Call it while the process has one
/// thread.
pub fn drop_unneeded() -> Result<Dropped, PrivilegeError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    let supported = caps::runtime::thread_all_supported();
    let keep = keep(&permitted, &supported);
    let bounding = caps::read(None, CapSet::Bounding)?;
    let dropped = permitted.iter().filter(|c| !keep.contains(c)).count();
    if dropped == 0 {
        return Ok(Dropped::NothingToDrop);
    }
    // The bounding set first: dropping from it takes CAP_SETPCAP, dropped below.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in bounding.iter().filter(|c| !keep.contains(c)) {
            caps::drop(None, CapSet::Bounding, *cap)?;
        }
    }
    // Ambient capabilities need Linux 4.3; without them there is nothing to clear.
    if caps::runtime::ambient_set_supported().is_ok() {
        caps::clear(None, CapSet::Ambient)?;
    }
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    let mut kept: Vec<Capability> = keep.into_iter().collect();
    kept.sort_by_key(|c| c.index());
    Ok(Dropped::Kept { kept, dropped })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> CapsHashSet {
        caps.iter().copied().collect()
    }

    #[test]
    fn keeps_only_what_profiling_needs_of_what_the_process_has() {
        let all = caps::all();
        assert_eq!(keep(&all, &all), set(&NEEDED));
        let some = set(&[Capability::CAP_BPF, Capability::CAP_NET_ADMIN]);
        assert_eq!(keep(&some, &all), set(&[Capability::CAP_BPF]));
        assert!(keep(&CapsHashSet::new(), &all).is_empty());
    }

    #[test]
    fn an_old_kernel_keeps_sys_admin_instead_of_bpf_and_perfmon() {
        let mut old = caps::all();
        old.remove(&Capability::CAP_BPF);
        old.remove(&Capability::CAP_PERFMON);
        assert_eq!(
            keep(&old, &old),
            set(&[
                Capability::CAP_SYS_ADMIN,
                Capability::CAP_SYS_PTRACE,
                Capability::CAP_SYSLOG
            ])
        );
    }
}
