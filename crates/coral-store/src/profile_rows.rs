//! Trace profiles to rows and back, independent of the database: the part of profile
//! storage that every backend shares.
//!
//! Writing, a profile becomes one sample row per distinct stack: its stack hash,
//! samples (or waits, or memory records), CPU time, off-CPU time and memory made
//! resident (an off-CPU stack ends in a wait frame and a memory stack in a page
//! frame, so neither shares a row with a CPU stack). Stacks are keyed by
//! [`stack_hash`] of their frames'
//! [`frame_hash`]es and frames by their hash, so equal stacks of one profile (a
//! profile built with `from_parts` may repeat one) are merged, and every profile
//! with a stack shares its one stored copy. A stack's frame index out of the
//! profile's dictionary becomes the unknown user frame, as renderers show it.
//!
//! Reading, a profile is rebuilt in a canonical order, the same in every backend:
//! stacks by CPU time descending, then off-CPU time descending, then memory
//! descending, then stack hash;
//! frames in the order they first appear in those stacks, root to leaf.
//!
//! The profile types a request or a trigger collected are stored as one text,
//! [`profile_types_text`]: `cpu`, `cpu,offcpu`, `cpu,offcpu,memory`...
//!
//! Counts are `u64` in the model and BIGINT in the databases: larger values (only
//! reachable by saturating arithmetic) are stored as `i64::MAX`.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::{
    ProfileSource, SpanId, StoreError, TraceId, TraceProfileRecord, frame_hash, stack_hash,
};
use coral_analysis::profile::{Frame, FrameKind, Profile, ProfileType, WeightedStack};

/// The batch without repeated (trace id, span id), sorted by them; of repeats, the
/// first one given is kept.
pub fn distinct_sorted(profiles: &[TraceProfileRecord]) -> Vec<&TraceProfileRecord> {
    let mut sorted: Vec<&TraceProfileRecord> = profiles.iter().collect();
    // Stable, so the first of equal keys stays first and survives `dedup_by_key`.
    sorted.sort_by_key(|p| (p.trace_id, p.span_id));
    sorted.dedup_by_key(|p| (p.trace_id, p.span_id));
    sorted
}

/// One stored stack weight of one profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleRow {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub stack_hash: i64,
    pub samples: i64,
    pub cpu_ns: i64,
    pub off_cpu_ns: i64,
    pub memory_bytes: i64,
}

/// The rows that store some profiles' samples, each table's rows sorted by key (so
/// that concurrent writers lock rows in the same order).
#[derive(Debug, Default)]
pub struct ProfileRows {
    /// Distinct frames by hash.
    pub frames: BTreeMap<i64, Frame>,
    /// Distinct stacks by hash: their frame hashes, root first.
    pub stacks: BTreeMap<i64, Vec<i64>>,
    /// By (trace id, span id, stack hash) when the profiles come sorted.
    pub samples: Vec<SampleRow>,
}

impl ProfileRows {
    pub fn of<'a>(profiles: impl IntoIterator<Item = &'a TraceProfileRecord>) -> Self {
        let mut rows = ProfileRows::default();
        for record in profiles {
            rows.add(record);
        }
        rows
    }

    fn add(&mut self, record: &TraceProfileRecord) {
        let profile = &record.profile;
        let hashes: Vec<i64> = profile.frames.iter().map(frame_hash).collect();
        let mut unknown: Option<i64> = None;
        // This profile's stacks by hash, equal ones merged.
        let mut weights: BTreeMap<i64, [u64; 4]> = BTreeMap::new();
        for stack in &profile.stacks {
            let frame_hashes: Vec<i64> = stack
                .frames
                .iter()
                .map(|&i| match hashes.get(i as usize) {
                    Some(&h) => {
                        self.frames
                            .entry(h)
                            .or_insert_with(|| profile.frames[i as usize].clone());
                        h
                    }
                    None => *unknown.get_or_insert_with(|| {
                        let frame = Frame::unknown(FrameKind::User);
                        let h = frame_hash(&frame);
                        self.frames.entry(h).or_insert(frame);
                        h
                    }),
                })
                .collect();
            let sh = stack_hash(&frame_hashes);
            self.stacks.entry(sh).or_insert(frame_hashes);
            let w = weights.entry(sh).or_default();
            let add = [
                stack.samples,
                stack.cpu_ns,
                stack.off_cpu_ns,
                stack.memory_bytes,
            ];
            for (total, value) in w.iter_mut().zip(add) {
                *total = total.saturating_add(value);
            }
        }
        self.samples.extend(weights.into_iter().map(
            |(sh, [samples, cpu_ns, off_cpu_ns, memory_bytes])| SampleRow {
                trace_id: record.trace_id,
                span_id: record.span_id,
                stack_hash: sh,
                samples: to_i64(samples),
                cpu_ns: to_i64(cpu_ns),
                off_cpu_ns: to_i64(off_cpu_ns),
                memory_bytes: to_i64(memory_bytes),
            },
        ));
    }
}

/// Collected profile types as a `profile_types` column stores them: in
/// [`ProfileType`]'s order, each once, comma-separated (`cpu`, `cpu,offcpu`,
/// `cpu,memory`).
/// `InvalidArgument` for no type, or one that is not collected (`wall`).
pub fn profile_types_text(types: &[ProfileType]) -> Result<String, StoreError> {
    if let Some(ty) = types.iter().find(|&&ty| !ty.is_collected()) {
        return Err(StoreError::InvalidArgument(format!(
            "profile type {ty} is not collected (it is a view of others); collect cpu, \
             offcpu or memory"
        )));
    }
    let mut sorted = types.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.is_empty() {
        return Err(StoreError::InvalidArgument(
            "no profile type to collect: give at least one of cpu, offcpu, memory".into(),
        ));
    }
    Ok(sorted
        .iter()
        .map(|ty| ty.as_str())
        .collect::<Vec<_>>()
        .join(","))
}

/// The inverse of [`profile_types_text`] for the stored `column`; `Corrupt` unless
/// `text` is what it writes (collected types, in order, each once, at least one).
pub fn parse_profile_types(text: &str, column: &str) -> Result<Vec<ProfileType>, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("{column} is {text:?}: {why}"));
    let types = text
        .split(',')
        .map(|name| {
            ProfileType::ALL
                .into_iter()
                .find(|ty| ty.as_str() == name)
                .filter(|ty| ty.is_collected())
                .ok_or_else(|| corrupt(&format!("{name:?} is not a collected profile type")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !types.windows(2).all(|pair| pair[0] < pair[1]) {
        return Err(corrupt("not in order, or repeated"));
    }
    Ok(types)
}

/// A count for a BIGINT column, saturating.
pub fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored count; `Corrupt` if negative.
pub fn to_u64(n: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{what} is negative ({n})")))
}

/// A stored `u32`; `Corrupt` if out of range.
pub fn to_u32(n: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{what} is out of range ({n})")))
}

/// A stored `trace_profiles.source`; `Corrupt` if it is not one.
pub fn parse_source(text: &str) -> Result<ProfileSource, StoreError> {
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("trace_profiles.source: {e}")))
}

pub fn kind_str(kind: FrameKind) -> &'static str {
    match kind {
        FrameKind::User => "user",
        FrameKind::Kernel => "kernel",
        FrameKind::Wait => "wait",
        FrameKind::Page => "page",
    }
}

pub fn parse_kind(kind: &str) -> Result<FrameKind, StoreError> {
    match kind {
        "user" => Ok(FrameKind::User),
        "kernel" => Ok(FrameKind::Kernel),
        "wait" => Ok(FrameKind::Wait),
        "page" => Ok(FrameKind::Page),
        other => Err(StoreError::Corrupt(format!(
            "profile_frames.kind is {other:?}, not user, kernel, wait or page"
        ))),
    }
}

/// One stored stack of a profile as read: its hash, weight and frame hashes.
#[derive(Debug, Clone)]
pub struct StackRead {
    pub stack_hash: i64,
    pub samples: u64,
    pub cpu_ns: u64,
    pub off_cpu_ns: u64,
    pub memory_bytes: u64,
    pub frame_hashes: Vec<i64>,
}

/// A profile from its stored stacks, in the canonical order (see the module docs);
/// `Corrupt` if a frame is missing from `frames`.
pub fn build_profile(
    mut stacks: Vec<StackRead>,
    frames: &HashMap<i64, Frame>,
) -> Result<Profile, StoreError> {
    stacks.sort_by(|a, b| {
        b.cpu_ns
            .cmp(&a.cpu_ns)
            .then(b.off_cpu_ns.cmp(&a.off_cpu_ns))
            .then(b.memory_bytes.cmp(&a.memory_bytes))
            .then(a.stack_hash.cmp(&b.stack_hash))
    });
    let mut dictionary: Vec<Frame> = Vec::new();
    let mut index: HashMap<i64, u32> = HashMap::new();
    let mut weighted = Vec::with_capacity(stacks.len());
    for stack in stacks {
        let ids = stack
            .frame_hashes
            .iter()
            .map(|h| match index.get(h) {
                Some(&i) => Ok(i),
                None => {
                    let frame = frames.get(h).ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "stack {} has frame {h}, which is not stored",
                            stack.stack_hash
                        ))
                    })?;
                    let i = u32::try_from(dictionary.len())
                        .map_err(|_| StoreError::Corrupt("too many frames".into()))?;
                    dictionary.push(frame.clone());
                    index.insert(*h, i);
                    Ok(i)
                }
            })
            .collect::<Result<Vec<u32>, StoreError>>()?;
        weighted.push(WeightedStack {
            frames: ids,
            samples: stack.samples,
            cpu_ns: stack.cpu_ns,
            off_cpu_ns: stack.off_cpu_ns,
            memory_bytes: stack.memory_bytes,
        });
    }
    Ok(Profile::from_parts(dictionary, weighted))
}

/// Stored stacks by the (trace id, span id) of their profile.
pub type StacksByProfile = HashMap<(TraceId, SpanId), Vec<StackRead>>;

/// The distinct frame hashes of `stacks`: the frames to read.
pub fn frame_hashes_of(stacks: &StacksByProfile) -> Vec<i64> {
    let hashes: HashSet<i64> = stacks
        .values()
        .flatten()
        .flat_map(|s| s.frame_hashes.iter().copied())
        .collect();
    hashes.into_iter().collect()
}

/// Sets the profile of each of `records` from its stored stacks (none: an empty
/// profile), in the canonical order; `Corrupt` if a frame is missing from `frames`.
pub fn attach_profiles(
    records: &mut [TraceProfileRecord],
    mut stacks: StacksByProfile,
    frames: &HashMap<i64, Frame>,
) -> Result<(), StoreError> {
    for record in records {
        let stacks = stacks
            .remove(&(record.trace_id, record.span_id))
            .unwrap_or_default();
        record.profile = build_profile(stacks, frames)?;
    }
    Ok(())
}

/// Frame hashes as a little-endian byte string (SQLite's encoding of a stack).
#[allow(dead_code)] // in the PostgreSQL backend, which stores BIGINT[]
pub fn hashes_to_bytes(hashes: &[i64]) -> Vec<u8> {
    hashes.iter().flat_map(|h| h.to_le_bytes()).collect()
}

/// The inverse of [`hashes_to_bytes`]; `None` unless the length is a multiple of 8.
#[allow(dead_code)] // in the PostgreSQL backend
pub fn hashes_from_bytes(bytes: &[u8]) -> Option<Vec<i64>> {
    if !bytes.len().is_multiple_of(8) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows as a store reads them back: the profile's stacks and its frames.
    fn read_back(rows: &ProfileRows) -> (Vec<StackRead>, HashMap<i64, Frame>) {
        let stacks = rows
            .samples
            .iter()
            .map(|r| StackRead {
                stack_hash: r.stack_hash,
                samples: r.samples as u64,
                cpu_ns: r.cpu_ns as u64,
                off_cpu_ns: r.off_cpu_ns as u64,
                memory_bytes: r.memory_bytes as u64,
                frame_hashes: rows.stacks[&r.stack_hash].clone(),
            })
            .collect();
        (stacks, rows.frames.clone().into_iter().collect())
    }

    fn record(profile: Profile) -> TraceProfileRecord {
        TraceProfileRecord {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            service: "svc".into(),
            span_name: "GET /".into(),
            start_unix_nano: 0,
            duration_ns: 1,
            node: "n".into(),
            pid: None,
            thread_id: None,
            precision: crate::Precision::Process,
            frequency_hz: 99,
            concurrent_requests: 0,
            truncated_samples: 0,
            lost_samples: 0,
            source: ProfileSource::Session(uuid::Uuid::nil()),
            profile_types: vec![ProfileType::Cpu],
            profile,
        }
    }

    #[test]
    fn equal_stacks_merge_and_bad_indices_become_unknown() {
        let main = Frame::user("main", "app");
        let f = Frame::user("f", "app");
        let profile = Profile::from_parts(
            // `main` twice in the dictionary: stacks [0, 2] and [1, 2] are equal.
            vec![main.clone(), main.clone(), f.clone()],
            vec![
                WeightedStack {
                    frames: vec![0, 2],
                    samples: 1,
                    cpu_ns: 10,
                    off_cpu_ns: 0,
                    memory_bytes: 0,
                },
                WeightedStack {
                    frames: vec![1, 2],
                    samples: 2,
                    cpu_ns: 20,
                    off_cpu_ns: 0,
                    memory_bytes: 0,
                },
                WeightedStack {
                    frames: vec![0, 9],
                    samples: 4,
                    cpu_ns: u64::MAX,
                    off_cpu_ns: 0,
                    memory_bytes: 0,
                },
            ],
        );
        let rows = ProfileRows::of([&record(profile)]);
        assert_eq!(rows.frames.len(), 3, "main, f and the unknown frame");
        assert_eq!(rows.stacks.len(), 2);
        assert_eq!(rows.samples.len(), 2);
        let merged = stack_hash(&[frame_hash(&main), frame_hash(&f)]);
        let row = rows
            .samples
            .iter()
            .find(|r| r.stack_hash == merged)
            .unwrap();
        assert_eq!((row.samples, row.cpu_ns), (3, 30));
        assert!(rows.samples.iter().any(|r| r.cpu_ns == i64::MAX));

        let (stacks, frames) = read_back(&rows);
        let back = build_profile(stacks, &frames).unwrap();
        assert_eq!(
            back.frames,
            [main, Frame::unknown(FrameKind::User), f],
            "by first use in the hottest stack first"
        );
        assert_eq!(back.stacks[0].frames, [0, 1]);
        assert_eq!(back.stacks[1].frames, [0, 2]);
        assert!(matches!(
            build_profile(
                vec![StackRead {
                    stack_hash: 1,
                    samples: 1,
                    cpu_ns: 1,
                    off_cpu_ns: 0,
                    memory_bytes: 0,
                    frame_hashes: vec![42]
                }],
                &frames
            ),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn off_cpu_stacks_keep_their_time_and_follow_cpu_stacks() {
        use coral_analysis::profile::WaitCause;
        let main = Frame::user("main", "app");
        let lock = Frame::user("take_lock", "app");
        let mut profile = Profile::new();
        profile.add(&[main.clone(), lock.clone()], 2, 100);
        profile.add_off_cpu(&[main.clone(), lock.clone()], WaitCause::Lock, 3, 900);
        profile.add_off_cpu(std::slice::from_ref(&main), WaitCause::Sleep, 1, 50);
        profile.add_off_cpu(&[main.clone(), lock.clone()], WaitCause::Lock, 1, 100);
        let rows = ProfileRows::of([&record(profile.clone())]);
        assert_eq!(rows.samples.len(), 3);
        let weights: Vec<(i64, i64, i64)> = rows
            .samples
            .iter()
            .map(|r| (r.samples, r.cpu_ns, r.off_cpu_ns))
            .collect();
        assert!(weights.contains(&(2, 20_000_000, 0)), "{weights:?}");
        assert!(weights.contains(&(4, 0, 1000)), "{weights:?}");
        assert!(weights.contains(&(1, 0, 50)), "{weights:?}");
        assert_eq!(profile.total(ProfileType::Offcpu), 1050);

        let (stacks, frames) = read_back(&rows);
        let back = build_profile(stacks, &frames).unwrap();
        let order: Vec<(u64, u64)> = back
            .stacks
            .iter()
            .map(|s| (s.cpu_ns, s.off_cpu_ns))
            .collect();
        assert_eq!(order, [(20_000_000, 0), (0, 1000), (0, 50)]);
        assert_eq!(back.breakdown(), profile.breakdown());
        assert_eq!(back.frames[2], WaitCause::Lock.frame());
    }

    #[test]
    fn memory_stacks_keep_their_bytes_and_follow_time_stacks() {
        use coral_analysis::profile::{WaitCause, page_frame};
        let main = Frame::user("main", "app");
        let grab = Frame::user("grab_block", "app");
        let mut profile = Profile::new();
        profile.add(&[main.clone(), grab.clone()], 2, 100);
        profile.add_off_cpu(std::slice::from_ref(&main), WaitCause::Sleep, 1, 50);
        profile.add_memory(&[main.clone(), grab.clone()], 4096, 3, 3 << 16);
        profile.add_memory(&[main.clone(), grab.clone()], 2 << 20, 1, 2 << 20);
        profile.add_memory(&[main.clone(), grab.clone()], 4096, 1, 1 << 16);
        let rows = ProfileRows::of([&record(profile.clone())]);
        assert_eq!(rows.samples.len(), 4, "CPU, off-CPU, 4 KiB and huge pages");
        let weights: Vec<(i64, i64, i64, i64)> = rows
            .samples
            .iter()
            .map(|r| (r.samples, r.cpu_ns, r.off_cpu_ns, r.memory_bytes))
            .collect();
        assert!(weights.contains(&(2, 20_000_000, 0, 0)), "{weights:?}");
        assert!(weights.contains(&(1, 0, 50, 0)), "{weights:?}");
        assert!(weights.contains(&(4, 0, 0, 4 << 16)), "{weights:?}");
        assert!(weights.contains(&(1, 0, 0, 2 << 20)), "{weights:?}");

        let (stacks, frames) = read_back(&rows);
        let back = build_profile(stacks, &frames).unwrap();
        let order: Vec<(u64, u64, u64)> = back
            .stacks
            .iter()
            .map(|s| (s.cpu_ns, s.off_cpu_ns, s.memory_bytes))
            .collect();
        assert_eq!(
            order,
            [
                (20_000_000, 0, 0),
                (0, 50, 0),
                (0, 0, 2 << 20),
                (0, 0, 4 << 16)
            ]
        );
        assert_eq!(back.memory_breakdown(), profile.memory_breakdown());
        assert_eq!(back.total(ProfileType::Memory), (2 << 20) + (4 << 16));
        assert!(back.frames.contains(&page_frame(4096)));
        assert!(back.frames.contains(&page_frame(2 << 20)));
    }

    #[test]
    fn profile_types_are_stored_in_order_once() {
        use ProfileType::{Cpu, Memory, Offcpu, Wall};
        assert_eq!(profile_types_text(&[Cpu]).unwrap(), "cpu");
        assert_eq!(
            profile_types_text(&[Offcpu, Cpu, Offcpu]).unwrap(),
            "cpu,offcpu"
        );
        assert_eq!(
            profile_types_text(&[Memory, Cpu, Offcpu]).unwrap(),
            "cpu,offcpu,memory"
        );
        assert_eq!(profile_types_text(&[Memory, Cpu]).unwrap(), "cpu,memory");
        for bad in [&[][..], &[Cpu, Wall][..]] {
            assert!(
                matches!(profile_types_text(bad), Err(StoreError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        let column = "trace_profiles.profile_types";
        assert_eq!(parse_profile_types("cpu", column).unwrap(), [Cpu]);
        assert_eq!(parse_profile_types("offcpu", column).unwrap(), [Offcpu]);
        assert_eq!(
            parse_profile_types("cpu,offcpu", column).unwrap(),
            [Cpu, Offcpu]
        );
        assert_eq!(parse_profile_types("memory", column).unwrap(), [Memory]);
        assert_eq!(
            parse_profile_types("cpu,offcpu,memory", column).unwrap(),
            [Cpu, Offcpu, Memory]
        );
        for bad in [
            "",
            "wall",
            "cpu,wall",
            "memory,cpu",
            "cpu,memory,memory",
            "offcpu,cpu",
            "cpu,cpu",
            "CPU",
            "cpu, offcpu",
            "off-cpu",
        ] {
            let err = parse_profile_types(bad, column).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt(_)), "{bad:?}: {err}");
            assert!(err.to_string().contains(column), "{err}");
        }
    }

    #[test]
    fn hash_bytes_round_trip() {
        let hashes = [i64::MIN, -1, 0, 1, i64::MAX];
        let bytes = hashes_to_bytes(&hashes);
        assert_eq!(bytes.len(), 40);
        assert_eq!(hashes_from_bytes(&bytes).unwrap(), hashes);
        assert_eq!(hashes_from_bytes(&[]).unwrap(), Vec::<i64>::new());
        assert!(hashes_from_bytes(&[1, 2, 3]).is_none());
    }
}
