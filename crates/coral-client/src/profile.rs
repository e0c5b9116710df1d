//! Wire profiles (`v1::Profile`) to and from the profile model of `coral-analysis`,
//! shared by everything that sends or shows profiles.

use crate::v1;
use coral_analysis::profile::{Frame, FrameKind, Profile, ProfileType, WeightedStack};

/// Validates and converts a wire profile: every stack must index existing frames.
pub fn profile_from_wire(profile: v1::Profile) -> Result<Profile, String> {
    let frames: Vec<Frame> = profile
        .frames
        .into_iter()
        .map(|f| Frame {
            function: f.function,
            module: f.module,
            kind: if f.page {
                FrameKind::Page
            } else if f.wait {
                FrameKind::Wait
            } else if f.kernel {
                FrameKind::Kernel
            } else {
                FrameKind::User
            },
        })
        .collect();
    let mut stacks = Vec::with_capacity(profile.stacks.len());
    for stack in profile.stacks {
        if let Some(bad) = stack
            .frame_ids
            .iter()
            .find(|&&i| i as usize >= frames.len())
        {
            return Err(format!(
                "a stack refers to frame {bad}, but the profile has {} frames",
                frames.len()
            ));
        }
        stacks.push(WeightedStack {
            frames: stack.frame_ids,
            samples: stack.samples,
            cpu_ns: stack.cpu_ns,
            off_cpu_ns: stack.off_cpu_ns,
            memory_bytes: stack.memory_bytes,
        });
    }
    Ok(Profile::from_parts(frames, stacks))
}

pub fn profile_to_wire(profile: &Profile) -> v1::Profile {
    v1::Profile {
        frames: profile
            .frames
            .iter()
            .map(|f| v1::Frame {
                function: f.function.clone(),
                module: f.module.clone(),
                kernel: f.kind == FrameKind::Kernel,
                wait: f.kind == FrameKind::Wait,
                page: f.kind == FrameKind::Page,
            })
            .collect(),
        stacks: profile
            .stacks
            .iter()
            .map(|s| v1::Stack {
                frame_ids: s.frames.clone(),
                samples: s.samples,
                cpu_ns: s.cpu_ns,
                off_cpu_ns: s.off_cpu_ns,
                memory_bytes: s.memory_bytes,
            })
            .collect(),
    }
}

/// Fewer samples than this and a request's profile cannot say where its time went.
pub const WEAK_SAMPLES: u64 = 5;

/// Whether a wire request profile recorded off-CPU time.
pub fn off_cpu_collected(p: &v1::TraceProfile) -> bool {
    collected(p, ProfileType::Offcpu)
}

/// Whether a wire request profile recorded the memory it made resident.
pub fn memory_collected(p: &v1::TraceProfile) -> bool {
    collected(p, ProfileType::Memory)
}

fn collected(p: &v1::TraceProfile, ty: ProfileType) -> bool {
    p.profile_types.iter().any(|t| t == ty.as_str())
}

/// Whether a wire request profile has values of type `ty`: CPU time always, off-CPU and
/// wall time when it recorded off-CPU time, memory when it recorded memory.
pub fn has_type(p: &v1::TraceProfile, ty: ProfileType) -> bool {
    match ty {
        ProfileType::Memory => memory_collected(p),
        _ => !ty.needs_off_cpu() || off_cpu_collected(p),
    }
}

/// Why a request profile has no values of type `ty` ([`has_type`] says it has none):
/// `recorded no off-CPU time (process precision, …)`, or for `memory`
/// `memory not collected for this request: the trigger did not ask for it (--types
/// cpu,memory)`.
pub fn missing_type_reason(p: &v1::TraceProfile, ty: ProfileType) -> String {
    if ty != ProfileType::Memory {
        return format!("recorded no off-CPU time ({})", no_off_cpu_reason(p));
    }
    let why = if p.source.starts_with("session:") {
        "collected by a `profile cpu` session, which samples CPU only"
    } else {
        "the trigger did not ask for it (--types cpu,memory)"
    };
    format!("memory not collected for this request: {why}")
}

/// Why a request profile has no off-CPU time (for a view of type offcpu or wall).
pub fn no_off_cpu_reason(p: &v1::TraceProfile) -> &'static str {
    if p.precision != "thread" {
        "process precision (the span has no thread.id), where off-CPU time would be every \
         idle thread's"
    } else if p.source.starts_with("session:") {
        "collected by a `profile cpu` session, which samples CPU only"
    } else {
        "collected by a trigger that recorded CPU only"
    }
}

/// What a reader should not conclude from one request's profile, viewed as type `ty`.
pub fn evidence_warnings(p: &v1::TraceProfile, profile: &Profile, ty: ProfileType) -> Vec<String> {
    if ty == ProfileType::Memory {
        return memory_warnings(p, profile);
    }
    let samples = profile.count(ProfileType::Cpu);
    let cpu_ns = profile.total(ProfileType::Cpu);
    let mut warnings = Vec::new();
    if samples < WEAK_SAMPLES {
        warnings.push(format!(
            "only {samples} sample(s) at {} Hz: too few to say where the time went",
            p.frequency_hz
        ));
    }
    if p.precision == "process" && p.concurrent_requests > 0 {
        warnings.push(format!(
            "process precision while {} other request(s) ran in this process: their CPU is \
             mixed in (spans with a thread.id attribute get thread precision)",
            p.concurrent_requests
        ));
    }
    if p.precision == "thread" && p.duration_ns > 0 && (cpu_ns as f64) < 0.5 * p.duration_ns as f64
    {
        let on_cpu = format!(
            "on CPU {} of {}: the request mostly waited",
            coral_analysis::format_duration_ns(cpu_ns as i64),
            coral_analysis::format_duration_ns(p.duration_ns)
        );
        warnings.push(if off_cpu_collected(p) {
            format!("{on_cpu}; its offcpu and wall profiles show where")
        } else {
            format!(
                "{on_cpu} (I/O, locks, other services), which CPU samples do not show; a \
                 trigger collecting offcpu records where"
            )
        });
    }
    let truncated = u64::from(p.truncated_samples).min(samples);
    if truncated > 0 {
        warnings.push(format!(
            "{truncated} of {samples} samples ({}) have truncated stacks (outer frames missing)",
            percent(truncated, samples)
        ));
    }
    warnings.extend(lost_samples_warning(p));
    warnings
}

/// What a reader should not conclude from one request's memory profile: that it made
/// nothing resident when memory was not collected, a total estimated from few records,
/// or other requests' memory mixed in at process precision.
fn memory_warnings(p: &v1::TraceProfile, profile: &Profile) -> Vec<String> {
    if !memory_collected(p) {
        return vec![missing_type_reason(p, ProfileType::Memory)];
    }
    let mut warnings = Vec::new();
    let records = profile.count(ProfileType::Memory);
    if records < WEAK_SAMPLES {
        warnings.push(format!(
            "only {records} memory record(s) (one per ~512 KiB made resident, on average): the \
             total and where it went are rough estimates"
        ));
    }
    if p.precision == "process" {
        let others = if p.concurrent_requests > 0 {
            format!(", {} other request(s) included", p.concurrent_requests)
        } else {
            String::new()
        };
        warnings.push(format!(
            "process precision: memory made resident by every thread of the process while the \
             request ran{others} (spans with a thread.id attribute get thread precision)"
        ));
    }
    warnings.extend(lost_samples_warning(p));
    warnings
}

fn lost_samples_warning(p: &v1::TraceProfile) -> Option<String> {
    (p.lost_samples > 0).then(|| {
        format!(
            "at least {} lost in this request's window (sampler overflow): the profile \
             undercounts",
            count_of_samples(p.lost_samples)
        )
    })
}

/// `part` of `whole` as a whole percentage; `<1%` rather than a misleading `0%`.
fn percent(part: u64, whole: u64) -> String {
    let share = (part as f64 * 100.0 / whole as f64).round();
    if share < 1.0 {
        "<1%".to_string()
    } else {
        format!("{share}%")
    }
}

/// `1 sample`, `40 samples`.
fn count_of_samples(n: u64) -> String {
    if n == 1 {
        "1 sample".to_string()
    } else {
        format!("{n} samples")
    }
}
