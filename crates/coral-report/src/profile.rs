//! Profiles: one request's, one trace's, and a service's on demand.

use crate::{non_empty, rfc3339};
use coral_analysis::profile::{
    Breakdown, Hotspot, MemoryBreakdown, Profile, ProfileType, TOP_STACK_DEPTH,
};
use coral_client::v1;
use serde::Serialize;

/// What asked for a profile: a `coral profile cpu` session, a trigger (a request it
/// matched) or a trigger's baseline (a random request it did not match).
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct SourceView {
    /// `session`, `trigger` or `baseline`.
    pub kind: String,
    /// The session or trigger id.
    pub id: String,
}

impl SourceView {
    /// From the wire's `kind:id`; `None` for an empty or unreadable source.
    pub fn parse(source: &str) -> Option<Self> {
        let (kind, id) = source.split_once(':')?;
        Some(Self {
            kind: kind.to_string(),
            id: id.to_string(),
        })
    }
}

/// The unit of a request or merged view's values: `ns`, or `bytes` for `memory`.
pub(crate) fn unit(ty: ProfileType) -> &'static str {
    if ty.is_bytes() { "bytes" } else { "ns" }
}

/// A profile's total of the view's `profile_type`, named by its unit.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(untagged)]
pub enum TotalView {
    /// A time: CPU, off-CPU or wall-clock.
    Time { total_ns: u64 },
    /// Memory made resident.
    Bytes { total_bytes: u64 },
}

impl TotalView {
    pub fn new(value: u64, ty: ProfileType) -> Self {
        if ty.is_bytes() {
            TotalView::Bytes { total_bytes: value }
        } else {
            TotalView::Time { total_ns: value }
        }
    }

    /// The value, whatever its unit.
    pub fn value(&self) -> u64 {
        match *self {
            TotalView::Time { total_ns } => total_ns,
            TotalView::Bytes { total_bytes } => total_bytes,
        }
    }
}

/// A function's values in a profile, named by the unit of the view's `profile_type`.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(untagged)]
pub enum HotspotValuesView {
    /// Time with the function on top of the stack, and anywhere on it.
    Time { self_ns: u64, total_ns: u64 },
    /// Memory made resident with the function on top of the stack (only page frames
    /// are), and anywhere on it.
    Bytes { self_bytes: u64, total_bytes: u64 },
}

/// One function's share of a profile, in the value of the view's `profile_type`.
#[derive(Serialize, Debug, Clone)]
pub struct HotspotView {
    /// The function, `[off-cpu: CAUSE]` for the time waited for one cause, or
    /// `[memory: PAGE]` for memory made resident in pages of one size.
    pub function: String,
    pub module: String,
    /// `self_ns`/`total_ns` for times, `self_bytes`/`total_bytes` for memory.
    #[serde(flatten)]
    pub values: HotspotValuesView,
    /// Self value / the profile's value of this type, in [0, 1].
    pub self_share: f64,
    pub total_share: f64,
}

impl HotspotView {
    /// The view of `h`, a hotspot of type `ty`.
    pub fn new(h: &Hotspot, ty: ProfileType) -> Self {
        Self {
            function: h.function.clone(),
            module: h.module.clone(),
            values: if ty.is_bytes() {
                HotspotValuesView::Bytes {
                    self_bytes: h.self_ns,
                    total_bytes: h.total_ns,
                }
            } else {
                HotspotValuesView::Time {
                    self_ns: h.self_ns,
                    total_ns: h.total_ns,
                }
            },
            self_share: h.self_share,
            total_share: h.total_share,
        }
    }
}

/// The hottest functions of type `ty`, as the text summaries list them: the `top` by
/// self value and the `top` by total value.
fn hotspots(profile: &Profile, ty: ProfileType, top: usize) -> Vec<HotspotView> {
    profile
        .hotspots(ty, top)
        .iter()
        .map(|h| HotspotView::new(h, ty))
        .collect()
}

/// The memory a request made resident (sampled page faults, see `ProfileType::Memory`).
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct MemoryView {
    pub resident_bytes: u64,
    /// Of it, in huge pages.
    pub huge_page_bytes: u64,
    /// The memory records it was estimated from.
    pub records: u64,
    /// The line the text view of a memory profile opens with.
    pub summary: String,
}

impl From<MemoryBreakdown> for MemoryView {
    fn from(m: MemoryBreakdown) -> Self {
        Self {
            resident_bytes: m.resident_bytes,
            huge_page_bytes: m.huge_page_bytes,
            records: m.records,
            summary: m.describe(),
        }
    }
}

/// Where a request's wall-clock time went: on the CPU (sampled), off it by cause
/// (recorded), and what neither accounts for.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct BreakdownView {
    pub duration_ns: i64,
    pub on_cpu_ns: u64,
    /// Off-CPU time, all causes; null when off-CPU time was not recorded.
    pub off_cpu_ns: Option<u64>,
    /// Off-CPU time by cause (`lock`, `disk`, `network`, `sleep`, `runqueue`, `other`);
    /// null when not recorded.
    pub waits: Option<WaitsView>,
    /// The duration minus on-CPU and recorded off-CPU time.
    pub unaccounted_ns: u64,
    /// The line the text view opens with.
    pub summary: String,
}

/// Off-CPU time by wait cause.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct WaitsView {
    pub lock_ns: u64,
    pub disk_ns: u64,
    pub network_ns: u64,
    pub sleep_ns: u64,
    pub runqueue_ns: u64,
    pub other_ns: u64,
}

impl BreakdownView {
    /// The breakdown of a request of `duration_ns` whose profile is `profile`.
    pub fn new(profile: &Profile, duration_ns: i64, off_cpu_collected: bool) -> Self {
        let b: Breakdown = profile.breakdown();
        let duration = u64::try_from(duration_ns).unwrap_or(0);
        let unaccounted = if off_cpu_collected {
            b.unaccounted_ns(duration)
        } else {
            duration.saturating_sub(b.on_cpu_ns)
        };
        Self {
            duration_ns,
            on_cpu_ns: b.on_cpu_ns,
            off_cpu_ns: off_cpu_collected.then_some(b.off_cpu_ns),
            waits: off_cpu_collected.then_some(WaitsView {
                lock_ns: b.lock_ns,
                disk_ns: b.disk_ns,
                network_ns: b.network_ns,
                sleep_ns: b.sleep_ns,
                runqueue_ns: b.runqueue_ns,
                other_ns: b.other_ns,
            }),
            unaccounted_ns: unaccounted,
            summary: b.describe(Some(duration), off_cpu_collected),
        }
    }
}

/// One request's profile (one span of a trace), without its stacks.
#[derive(Serialize, Debug, Clone)]
pub struct RequestProfileView {
    pub trace_id: String,
    pub span_id: String,
    pub service: String,
    pub span_name: String,
    pub start: String,
    pub start_unix_nano: i64,
    pub duration_ns: i64,
    pub node: Option<String>,
    /// The host pid the agent sampled.
    pub pid: Option<i64>,
    /// The host thread id, for thread precision.
    pub thread_id: Option<i64>,
    /// `thread`: the request's own thread; `process`: its whole process.
    pub precision: String,
    pub frequency_hz: u32,
    /// Other requests of the process that overlapped this one.
    pub concurrent_requests: u32,
    /// Samples whose stack stops short of the thread's root (outer frames missing).
    pub truncated_samples: u32,
    /// Samples taken in the request's window that never arrived: at least this many
    /// are missing from the profile.
    pub lost_samples: u64,
    pub source: Option<SourceView>,
    /// What was recorded: `cpu`, `offcpu` when the thread's waits were, `memory` when
    /// the memory it made resident was.
    pub profile_types: Vec<String>,
    /// CPU samples.
    pub samples: u64,
    pub cpu_ns: u64,
    pub breakdown: BreakdownView,
    /// The memory the request made resident; null when memory was not collected.
    pub memory: Option<MemoryView>,
    /// What `hotspots` (and the stacks' values in the chosen format) measure: `cpu`,
    /// `offcpu` or `wall` (times, in nanoseconds), or `memory` (bytes).
    pub profile_type: ProfileType,
    /// The unit of the values of `profile_type`: `ns`, or `bytes` for `memory`.
    pub unit: &'static str,
    /// The profile's value of `profile_type`: `total_ns`, or `total_bytes` for memory.
    #[serde(flatten)]
    pub total: TotalView,
    /// What not to conclude from this profile (too few samples, mixed-in CPU, …).
    pub warnings: Vec<String>,
    pub hotspots: Vec<HotspotView>,
    /// The heaviest stacks of `profile_type`, each by its innermost frames: where a
    /// memory profile says most, since its self values are all in page frames.
    pub top_stacks: Vec<TopStackView>,
}

/// One of a profile's heaviest stacks ([`coral_analysis::profile::TopStack`]).
#[derive(Serialize, Debug, Clone)]
pub struct TopStackView {
    /// The innermost frames, outermost first.
    pub frames: Vec<String>,
    /// Outer frames left out.
    pub elided_frames: usize,
    /// `total_ns`, or `total_bytes` for memory: the stack's value.
    #[serde(flatten)]
    pub total: TotalView,
    /// Of the profile's total, in [0, 1].
    pub share: f64,
}

/// Stacks listed in `top_stacks`, and their frames.
const TOP_STACKS: usize = 5;

fn top_stacks(profile: &Profile, ty: ProfileType) -> Vec<TopStackView> {
    profile
        .top_stacks(ty, TOP_STACKS, TOP_STACK_DEPTH)
        .into_iter()
        .map(|s| TopStackView {
            frames: s.frames,
            elided_frames: s.elided,
            total: TotalView::new(s.value, ty),
            share: s.share,
        })
        .collect()
}

impl RequestProfileView {
    /// The view of `tp`, whose profile is `profile` (already read from the wire), with
    /// its `top` functions of type `ty`.
    pub fn new(tp: &v1::TraceProfile, profile: &Profile, ty: ProfileType, top: usize) -> Self {
        let off_cpu = coral_client::profile::off_cpu_collected(tp);
        Self {
            trace_id: hex::encode(&tp.trace_id),
            span_id: hex::encode(&tp.span_id),
            service: tp.service.clone(),
            span_name: tp.span_name.clone(),
            start: rfc3339(tp.start_time_unix_nano),
            start_unix_nano: tp.start_time_unix_nano,
            duration_ns: tp.duration_ns,
            node: non_empty(&tp.node),
            pid: tp.pid,
            thread_id: tp.thread_id,
            precision: tp.precision.clone(),
            frequency_hz: tp.frequency_hz,
            concurrent_requests: tp.concurrent_requests,
            truncated_samples: tp.truncated_samples,
            lost_samples: tp.lost_samples,
            source: SourceView::parse(&tp.source),
            profile_types: if tp.profile_types.is_empty() {
                vec![ProfileType::Cpu.to_string()]
            } else {
                tp.profile_types.clone()
            },
            samples: profile.count(ProfileType::Cpu),
            cpu_ns: profile.total(ProfileType::Cpu),
            breakdown: BreakdownView::new(profile, tp.duration_ns, off_cpu),
            memory: coral_client::profile::memory_collected(tp)
                .then(|| profile.memory_breakdown().into()),
            profile_type: ty,
            unit: unit(ty),
            total: TotalView::new(profile.total(ty), ty),
            warnings: coral_client::profile::evidence_warnings(tp, profile, ty),
            hotspots: hotspots(profile, ty, top),
            top_stacks: top_stacks(profile, ty),
        }
    }
}

/// [`RequestProfileView`] with the profile's frames and stacks (CLI JSON).
#[derive(Serialize, Debug, Clone)]
pub struct RequestProfileWithStacks {
    #[serde(flatten)]
    pub summary: RequestProfileView,
    /// `{"frames": [...], "stacks": [...]}`.
    pub profile: Profile,
}

/// The selected spans' profiles merged.
#[derive(Serialize, Debug, Clone)]
pub struct MergedProfileView {
    pub samples: u64,
    pub cpu_ns: u64,
    pub profile_type: ProfileType,
    /// `ns`, or `bytes` for `memory`.
    pub unit: &'static str,
    /// `total_ns`, or `total_bytes` for memory.
    #[serde(flatten)]
    pub total: TotalView,
    pub hotspots: Vec<HotspotView>,
    pub profile: Profile,
}

impl MergedProfileView {
    pub fn new(profile: Profile, ty: ProfileType, top: usize) -> Self {
        Self {
            samples: profile.count(ProfileType::Cpu),
            cpu_ns: profile.total(ProfileType::Cpu),
            profile_type: ty,
            unit: unit(ty),
            total: TotalView::new(profile.total(ty), ty),
            hotspots: hotspots(&profile, ty, top),
            profile,
        }
    }
}

/// One trace's request profiles (`coral query trace-profile --format json`): each
/// profiled span with its own profile, and all of them merged.
#[derive(Serialize, Debug, Clone)]
pub struct TraceProfileView {
    pub trace_id: String,
    /// The trace has more request profiles than one answer holds: these are the first.
    pub truncated: bool,
    pub spans: Vec<RequestProfileWithStacks>,
    pub merged: MergedProfileView,
}

/// One agent's part of a `coral profile cpu` session.
#[derive(Serialize, Debug, Clone)]
pub struct AgentProfileView {
    pub node: String,
    /// The service's processes the agent sampled.
    pub processes: u32,
    pub samples: u64,
    pub error: Option<String>,
}

/// A service's CPU profile on demand (`coral profile cpu --format json`).
#[derive(Serialize, Debug, Clone)]
pub struct ProfileCpuView {
    pub service: String,
    pub source: Option<SourceView>,
    pub duration_ns: i64,
    pub frequency_hz: u32,
    pub agents: Vec<AgentProfileView>,
    pub samples: u64,
    pub cpu_ns: u64,
    pub warnings: Vec<String>,
    pub hotspots: Vec<HotspotView>,
    pub profile: Profile,
}

impl ProfileCpuView {
    pub fn new(service: &str, r: &v1::ProfileCpuResponse, profile: Profile, top: usize) -> Self {
        Self {
            service: service.to_string(),
            source: (!r.session_id.is_empty()).then(|| SourceView {
                kind: "session".into(),
                id: r.session_id.clone(),
            }),
            duration_ns: r.duration_ns,
            frequency_hz: r.frequency_hz,
            agents: r
                .agents
                .iter()
                .map(|a| AgentProfileView {
                    node: a.node.clone(),
                    processes: a.processes,
                    samples: a.samples,
                    error: non_empty(&a.error),
                })
                .collect(),
            samples: profile.total_samples(),
            cpu_ns: profile.total_cpu_ns(),
            warnings: r.warnings.clone(),
            hotspots: hotspots(&profile, ProfileType::Cpu, top),
            profile,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coral_analysis::profile::Frame;

    #[test]
    fn a_request_profile_says_what_the_text_says() {
        let mut profile = Profile::new();
        profile.add(
            &[Frame::user("main", "svc"), Frame::user("hot", "svc")],
            3,
            100,
        );
        let tp = v1::TraceProfile {
            trace_id: vec![0xab; 16],
            span_id: vec![1; 8],
            service: "svc".into(),
            span_name: "POST /x".into(),
            start_time_unix_nano: 1_700_000_000_000_000_000,
            duration_ns: 1_000_000_000,
            node: "n1".into(),
            pid: Some(42),
            thread_id: None,
            precision: "thread".into(),
            frequency_hz: 100,
            source: "trigger:5b1f0c3e-0000-4000-8000-000000000000".into(),
            ..Default::default()
        };
        let json = serde_json::to_value(RequestProfileWithStacks {
            summary: RequestProfileView::new(&tp, &profile, ProfileType::Cpu, 10),
            profile,
        })
        .unwrap();
        assert_eq!(json["trace_id"], "ab".repeat(16));
        assert_eq!(json["start"], "2023-11-14T22:13:20.000Z");
        assert_eq!(json["samples"], 3);
        assert_eq!(json["cpu_ns"], 30_000_000);
        assert_eq!(json["thread_id"], serde_json::Value::Null);
        assert_eq!(json["source"]["kind"], "trigger");
        // 3 samples: the text's "too few" warning and "mostly waited" one.
        assert_eq!(json["warnings"].as_array().unwrap().len(), 2, "{json}");
        assert_eq!(json["hotspots"][0]["function"], "hot");
        assert_eq!(json["profile"]["frames"].as_array().unwrap().len(), 2);
        assert_eq!(SourceView::parse(""), None);
        assert_eq!(json["truncated_samples"], 0);
        assert_eq!(json["lost_samples"], 0);
    }

    /// A thread-precision request of `samples` samples, on CPU its whole duration,
    /// so that only the sample-loss warnings can appear.
    fn busy_request(samples: u64, truncated_samples: u32, lost_samples: u64) -> RequestProfileView {
        let mut profile = Profile::new();
        profile.add(&[Frame::user("main", "svc")], samples, 100);
        let tp = v1::TraceProfile {
            trace_id: vec![0xab; 16],
            span_id: vec![1; 8],
            service: "svc".into(),
            precision: "thread".into(),
            frequency_hz: 100,
            duration_ns: profile.total_cpu_ns() as i64,
            truncated_samples,
            lost_samples,
            ..Default::default()
        };
        RequestProfileView::new(&tp, &profile, ProfileType::Cpu, 10)
    }

    #[test]
    fn truncated_and_lost_samples_are_warned_about_only_when_there_are_some() {
        assert!(busy_request(96, 0, 0).warnings.is_empty());

        let lossy = busy_request(96, 12, 40);
        assert_eq!(
            lossy.warnings,
            [
                "12 of 96 samples (13%) have truncated stacks (outer frames missing)",
                "at least 40 samples lost in this request's window (sampler overflow): the \
                 profile undercounts",
            ]
        );
        let json = serde_json::to_value(&lossy).unwrap();
        assert_eq!(json["truncated_samples"], 12);
        assert_eq!(json["lost_samples"], 40);

        assert_eq!(
            busy_request(1000, 1, 1).warnings,
            [
                "1 of 1000 samples (<1%) have truncated stacks (outer frames missing)",
                "at least 1 sample lost in this request's window (sampler overflow): the \
                 profile undercounts",
            ]
        );
    }

    /// A thread-precision request that made 382 MiB resident (260 MiB in huge pages)
    /// and ran 3 CPU samples, collected with `types`.
    fn memory_request(types: &[&str]) -> (v1::TraceProfile, Profile) {
        let mut profile = Profile::new();
        let chain = [
            Frame::user("main", "svc"),
            Frame::user("build_snapshot", "svc"),
            Frame::user("grab_block", "svc"),
        ];
        profile.add(&chain[..1], 3, 100);
        profile.add_memory(&chain, 4096, 240, 122 << 20);
        profile.add_memory(&chain, 2 << 20, 520, 260 << 20);
        let tp = v1::TraceProfile {
            trace_id: vec![0xab; 16],
            span_id: vec![1; 8],
            service: "svc".into(),
            precision: "thread".into(),
            frequency_hz: 100,
            duration_ns: 1_000_000_000,
            source: "trigger:5b1f0c3e-0000-4000-8000-000000000000".into(),
            profile_types: types.iter().map(|t| t.to_string()).collect(),
            ..Default::default()
        };
        (tp, profile)
    }

    #[test]
    fn a_memory_view_says_bytes_never_ns() {
        let (tp, profile) = memory_request(&["cpu", "memory"]);
        let view = RequestProfileView::new(&tp, &profile, ProfileType::Memory, 10);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["profile_type"], "memory");
        assert_eq!(json["unit"], "bytes");
        assert_eq!(json["total_bytes"], 382u64 << 20);
        assert!(json.get("total_ns").is_none(), "{json}");
        assert_eq!(json["memory"]["resident_bytes"], 382u64 << 20);
        assert_eq!(json["memory"]["huge_page_bytes"], 260u64 << 20);
        assert_eq!(json["memory"]["records"], 760);
        assert!(
            json["memory"]["summary"]
                .as_str()
                .unwrap()
                .starts_with("made 382 MiB resident: 4 KiB pages 122 MiB, huge pages 260 MiB"),
            "{json}"
        );
        let grab = json["hotspots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["function"] == "grab_block")
            .unwrap();
        assert_eq!(grab["total_bytes"], 382u64 << 20);
        assert_eq!(grab["self_bytes"], 0);
        assert!(grab.get("total_ns").is_none(), "{grab}");
        let heaviest = &json["top_stacks"][0];
        assert_eq!(heaviest["total_bytes"], 260u64 << 20, "{json}");
        let frames = heaviest["frames"].as_array().unwrap();
        assert_eq!(frames[frames.len() - 2], "grab_block", "{heaviest}");
        assert_eq!(frames[frames.len() - 1], "[memory: 2 MiB huge page]");
        // The CPU warnings (3 samples, mostly waited) are not about memory.
        assert!(view.warnings.is_empty(), "{:?}", view.warnings);
        let merged =
            serde_json::to_value(MergedProfileView::new(profile, ProfileType::Memory, 10)).unwrap();
        assert_eq!(merged["unit"], "bytes");
        assert_eq!(merged["total_bytes"], 382u64 << 20);
        assert_eq!(merged["profile"]["stacks"][1]["memory_bytes"], 122u64 << 20);
    }

    #[test]
    fn a_cpu_view_says_its_unit_and_memory_not_collected_is_null_and_said() {
        let (tp, profile) = memory_request(&["cpu"]);
        let json =
            serde_json::to_value(RequestProfileView::new(&tp, &profile, ProfileType::Cpu, 10))
                .unwrap();
        assert_eq!(json["total_ns"], 30_000_000);
        assert_eq!(json["unit"], "ns");
        assert!(json.get("total_bytes").is_none(), "{json}");
        assert!(json["memory"].is_null(), "not collected: null, {json}");
        assert!(json["hotspots"][0].get("self_ns").is_some(), "{json}");
        let memory = RequestProfileView::new(&tp, &profile, ProfileType::Memory, 10);
        assert_eq!(
            memory.warnings,
            [
                "memory not collected for this request: the trigger did not ask for it \
              (--types cpu,memory)"
            ]
        );
    }
}
