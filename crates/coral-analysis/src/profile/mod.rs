//! The profile model every part of Coral shares, and its renderers.
//!
//! The agent assembles a [`Profile`] from symbolized samples and off-CPU records, the
//! colony stores it, the CLI and the MCP server render it, each renderer for one
//! [`ProfileType`] (`cpu`, `offcpu`, `wall` or `memory`) given explicitly: [`write_folded`]
//! (Brendan Gregg's folded stacks), [`write_svg`] (an inferno flame graph),
//! [`write_pprof`] (gzipped `profile.proto`, for `go tool pprof`, Speedscope,
//! Pyroscope), [`write_text_summary`] (compact text for people and LLMs), and JSON
//! through serde.
//!
//! A profile is a frame dictionary plus weighted stacks that index into it (root → leaf).
//! Every CPU stack carries both its sample count and its CPU time: samples taken at
//! different frequencies are not comparable, CPU time (`samples × 1e9 / Hz`) is, so
//! merging profiles sampled at 99 Hz and 49 Hz keeps an exact CPU total. Off-CPU stacks
//! carry the time switched out and end in a wait frame (see [`ProfileType`]); memory
//! stacks carry the bytes made resident and end in a page frame (see [`page_frame`]).

mod folded;
mod kinds;
mod memory;
mod pprof;
mod svg;
mod text;

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use folded::write_folded;
pub use kinds::{Breakdown, OFF_CPU_MODULE, ProfileType, ProfileTypeError, SwitchState, WaitCause};
pub use memory::{MEMORY_MODULE, MemoryBreakdown, format_bytes, page_frame};
pub use pprof::write_pprof;
pub use svg::write_svg;
pub use text::{TOP_STACK_DEPTH, write_text_summary};

/// The function name of a frame whose symbol is not known.
pub const UNKNOWN_FUNCTION: &str = "[unknown]";
/// The module of a frame whose mapping is not known.
pub const UNKNOWN_MODULE: &str = "[unknown]";
/// The module of every kernel frame.
pub const KERNEL_MODULE: &str = "[kernel]";

/// V8's code-event tags whose names carry a tier marker in perf maps
/// (`JS:*parserOnIncoming node:_http_server:1050:27`, older `LazyCompile:~foo`).
const V8_TIER_TAGS: [&str; 5] = ["JS", "LazyCompile", "Function", "Script", "Eval"];
/// V8's tier markers: `~` interpreted (Ignition), `^` baseline (Sparkplug), `+` Maglev,
/// `*` optimized (TurboFan).
const V8_TIER_MARKERS: [char; 4] = ['~', '^', '+', '*'];

/// The name that identifies a function: `name` without a V8 JIT tier marker
/// (`JS:*foo` and `JS:^foo` are both `JS:foo`), since one JavaScript function moves
/// between tiers while it runs and would otherwise be several functions whose times
/// split and, in a comparison, differ with opposite signs. Other names are unchanged.
///
/// Frames are normalised when they enter a profile ([`Profile::add`],
/// [`Profile::merge`]); hotspots, folded stacks, flame graphs, pprof and comparisons
/// apply it again so that dictionaries stored before it agree.
pub fn function_identity(name: &str) -> Cow<'_, str> {
    if let Some((tag, rest)) = name.split_once(':')
        && V8_TIER_TAGS.contains(&tag)
        && let Some(untiered) = rest.strip_prefix(V8_TIER_MARKERS)
    {
        return Cow::Owned(format!("{tag}:{untiered}"));
    }
    Cow::Borrowed(name)
}

/// Whether a frame ran in user space or in the kernel, or is the wait pseudo-frame
/// that ends an off-CPU stack (its function is the [`WaitCause`]), or the page
/// pseudo-frame that ends a memory stack (its function is the page size, see
/// [`page_frame`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    User,
    Kernel,
    Wait,
    Page,
}

/// One symbolized stack frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Frame {
    /// The demangled function name, or [`UNKNOWN_FUNCTION`].
    pub function: String,
    /// The file name of the module (`payment-svc`, `libc.so.6`), [`KERNEL_MODULE`] for
    /// kernel frames, or [`UNKNOWN_MODULE`].
    pub module: String,
    pub kind: FrameKind,
}

impl Frame {
    /// A user-space frame.
    pub fn user(function: impl Into<String>, module: impl Into<String>) -> Self {
        Frame {
            function: function.into(),
            module: module.into(),
            kind: FrameKind::User,
        }
    }

    /// A kernel frame (module [`KERNEL_MODULE`]).
    pub fn kernel(function: impl Into<String>) -> Self {
        Frame {
            function: function.into(),
            module: KERNEL_MODULE.to_string(),
            kind: FrameKind::Kernel,
        }
    }

    /// A frame with neither a known function nor a known module.
    pub fn unknown(kind: FrameKind) -> Self {
        Frame {
            function: UNKNOWN_FUNCTION.to_string(),
            module: match kind {
                FrameKind::User => UNKNOWN_MODULE.to_string(),
                FrameKind::Kernel => KERNEL_MODULE.to_string(),
                FrameKind::Wait => OFF_CPU_MODULE.to_string(),
                FrameKind::Page => MEMORY_MODULE.to_string(),
            },
            kind,
        }
    }

    /// Whether the function name is unknown.
    pub fn is_unknown(&self) -> bool {
        self.function == UNKNOWN_FUNCTION
    }
}

/// One distinct stack of a profile with its weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WeightedStack {
    /// Indices into [`Profile::frames`], root first, leaf last.
    pub frames: Vec<u32>,
    /// Number of observations of this stack: CPU samples, or for an off-CPU stack
    /// the off-CPU records (waits) summed into it.
    pub samples: u64,
    /// CPU time those samples represent, in nanoseconds.
    pub cpu_ns: u64,
    /// Time the thread was off the CPU in this stack, in nanoseconds (off-CPU stacks,
    /// which end in a wait frame, only).
    #[serde(default)]
    pub off_cpu_ns: u64,
    /// Memory made resident in this stack, in bytes (memory stacks, which end in a page
    /// frame, only; their `samples` are the memory records summed into it). Left out of
    /// JSON when 0, so profiles without memory read as before.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub memory_bytes: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl WeightedStack {
    /// Whether it has no value of any type.
    pub fn is_empty(&self) -> bool {
        self.samples == 0 && self.cpu_ns == 0 && self.off_cpu_ns == 0 && self.memory_bytes == 0
    }
}

/// A profile: a frame dictionary and the weighted stacks that use it.
///
/// Build one with [`Profile::add`] and [`Profile::merge`] (which deduplicate frames and
/// merge equal stacks), or from stored parts with [`Profile::from_parts`]. The fields
/// are public for reading; a private lookup index speeds up `add` and is rebuilt
/// whenever the frame or stack count no longer matches it (after deserialization, or
/// after pushing to the fields directly).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    pub frames: Vec<Frame>,
    pub stacks: Vec<WeightedStack>,
    #[serde(skip)]
    index: Index,
}

#[derive(Debug, Clone, Default)]
struct Index {
    frames: HashMap<Frame, u32>,
    stacks: HashMap<Vec<u32>, usize>,
    /// `(frames.len(), stacks.len())` of the profile when the index was built.
    built_for: (usize, usize),
}

impl PartialEq for Profile {
    fn eq(&self, other: &Self) -> bool {
        self.frames == other.frames && self.stacks == other.stacks
    }
}

impl Eq for Profile {}

/// One function's share of a profile, in the value of one [`ProfileType`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hotspot {
    /// The function's [`function_identity`]; a wait frame's is `[off-cpu: CAUSE]`, a
    /// page frame's `[memory: PAGE]`.
    pub function: String,
    pub module: String,
    pub kind: FrameKind,
    /// The value of the profile type with this function on top of the stack: time in
    /// nanoseconds, or bytes for `memory` ([`ProfileType::is_bytes`]; views name it by
    /// its unit).
    pub self_ns: u64,
    /// The value with this function anywhere on the stack (counted once per stack, even
    /// when it recurses); nanoseconds or bytes, as `self_ns`.
    pub total_ns: u64,
    /// `self_ns` / the profile's total of the type, in [0, 1].
    pub self_share: f64,
    /// `total_ns` / the profile's total of the type, in [0, 1].
    pub total_share: f64,
}

impl Hotspot {
    /// Whether the function is on every stack with a value of a profile whose total of
    /// the same type is `total_ns` (its total is all of it): the common trunk, such as
    /// `_start` or `main`.
    pub fn is_on_every_stack(&self, total_ns: u64) -> bool {
        total_ns > 0 && self.total_ns >= total_ns
    }
}

/// One of a profile's heaviest stacks in the value of one [`ProfileType`]: its
/// innermost frames, where a call path says most.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopStack {
    /// The innermost frames, outermost first, by their folded names (`grab_block`,
    /// `[memory: 4 KiB page]`, `do_sys_poll_[k]`).
    pub frames: Vec<String>,
    /// How many outer frames were left out (0: the whole stack).
    pub elided: usize,
    /// The stack's value: nanoseconds, or bytes for `memory`.
    pub value: u64,
    /// `value` / the profile's total of the type, in [0, 1].
    pub share: f64,
}

impl TopStack {
    /// `… → build_snapshot → grab_block → [memory: 4 KiB page]`.
    pub fn path(&self) -> String {
        let path = self.frames.join(" → ");
        if self.elided > 0 {
            format!("… → {path}")
        } else {
            path
        }
    }
}

/// CPU time of `samples` samples taken at `frequency_hz`, rounded to the nearest
/// nanosecond; 0 for a frequency of 0.
pub fn samples_to_cpu_ns(samples: u64, frequency_hz: u32) -> u64 {
    if frequency_hz == 0 {
        return 0;
    }
    let hz = u128::from(frequency_hz);
    let ns = (u128::from(samples) * 1_000_000_000 + hz / 2) / hz;
    u64::try_from(ns).unwrap_or(u64::MAX)
}

impl Profile {
    /// An empty profile.
    pub fn new() -> Self {
        Self::default()
    }

    /// A profile from stored parts, taken as they are (no deduplication). Stacks whose
    /// frame indices are out of range are kept but rendered as unknown frames.
    pub fn from_parts(frames: Vec<Frame>, stacks: Vec<WeightedStack>) -> Self {
        Profile {
            frames,
            stacks,
            index: Index::default(),
        }
    }

    /// Whether the profile has no samples.
    pub fn is_empty(&self) -> bool {
        self.stacks.iter().all(WeightedStack::is_empty)
    }

    /// Adds `samples` samples of one stack (frames root → leaf) taken at `frequency_hz`.
    /// Frames are deduplicated in the dictionary and equal stacks merged; the stack's CPU
    /// time grows by `samples × 1e9 / frequency_hz` (nothing for a frequency of 0). An
    /// empty stack is kept as a stack without frames (rendered `[no stack]`).
    pub fn add(&mut self, stack: &[Frame], samples: u64, frequency_hz: u32) {
        if samples == 0 {
            return;
        }
        self.ensure_index();
        let ids: Vec<u32> = stack.iter().map(|f| self.intern_frame(f)).collect();
        self.add_ids(
            ids,
            WeightedStack {
                frames: Vec::new(),
                samples,
                cpu_ns: samples_to_cpu_ns(samples, frequency_hz),
                off_cpu_ns: 0,
                memory_bytes: 0,
            },
        );
    }

    /// Adds every stack of `other` to this profile, keeping its samples and CPU time.
    pub fn merge(&mut self, other: &Profile) {
        self.ensure_index();
        let mut map: Vec<Option<u32>> = vec![None; other.frames.len()];
        for stack in &other.stacks {
            if stack.is_empty() {
                continue;
            }
            let ids: Vec<u32> = stack
                .frames
                .iter()
                .map(|&i| match map.get(i as usize) {
                    Some(Some(id)) => *id,
                    Some(None) => {
                        let id = self.intern_frame(&other.frames[i as usize]);
                        map[i as usize] = Some(id);
                        id
                    }
                    None => self.intern_frame(&Frame::unknown(FrameKind::User)),
                })
                .collect();
            self.add_ids(ids, stack.clone());
        }
    }

    /// Total number of samples.
    pub fn total_samples(&self) -> u64 {
        self.stacks
            .iter()
            .fold(0u64, |acc, s| acc.saturating_add(s.samples))
    }

    /// Total CPU time in nanoseconds: `total(ProfileType::Cpu)`.
    pub fn total_cpu_ns(&self) -> u64 {
        self.total(ProfileType::Cpu)
    }

    /// Total value of type `ty`: CPU time, off-CPU time or both in nanoseconds, or the
    /// bytes made resident (`memory`).
    pub fn total(&self, ty: ProfileType) -> u64 {
        self.stacks
            .iter()
            .fold(0u64, |acc, s| acc.saturating_add(ty.value(s)))
    }

    /// The observations behind [`Profile::total`]: CPU samples (`cpu`), waits
    /// (`offcpu`), both (`wall`), or memory records (`memory`).
    pub fn count(&self, ty: ProfileType) -> u64 {
        self.stacks
            .iter()
            .filter(|s| is_of_type(ty, s))
            .fold(0u64, |acc, s| acc.saturating_add(s.samples))
    }

    /// The frame at `index`, or a shared unknown frame when out of range.
    pub(crate) fn frame(&self, index: u32) -> &Frame {
        static UNKNOWN: std::sync::OnceLock<Frame> = std::sync::OnceLock::new();
        self.frames
            .get(index as usize)
            .unwrap_or_else(|| UNKNOWN.get_or_init(|| Frame::unknown(FrameKind::User)))
    }

    /// The hottest functions by the value of `ty`: the `top` functions by self time
    /// together with any of the `top` functions by total (inclusive) time not already
    /// among them, so up to `2 × top` entries. Functions on every stack (`_start`,
    /// `main`: the trunk, see [`Hotspot::is_on_every_stack`]) are not ranked by total,
    /// since their 100 % says nothing about where the time goes and would hide the
    /// function that does. Sorted by self time descending, then total descending, then
    /// name. Functions are identified by ([`function_identity`], module, kind); a
    /// function appearing several times in one stack (recursion) counts once for that
    /// stack's total. Wait frames are functions like any other (kind
    /// [`FrameKind::Wait`], named `[off-cpu: CAUSE]`), so a `wall` profile can show a
    /// lock wait as its hottest entry; so are page frames (`[memory: 4 KiB page]`), which
    /// hold all of a `memory` profile's self bytes (the code that faulted has them as
    /// total).
    pub fn hotspots(&self, ty: ProfileType, top: usize) -> Vec<Hotspot> {
        let all = self.all_hotspots(ty);
        if top == 0 {
            return Vec::new();
        }
        let total = self.total(ty);
        let mut by_total: Vec<usize> = (0..all.len())
            .filter(|&i| !all[i].is_on_every_stack(total))
            .collect();
        by_total.sort_by(|&a, &b| cmp_total(&all[a], &all[b]));
        let mut keep = vec![false; all.len()];
        // `all` is already sorted by self.
        for k in keep.iter_mut().take(top) {
            *k = true;
        }
        for &i in by_total.iter().take(top) {
            keep[i] = true;
        }
        all.into_iter()
            .zip(keep)
            .filter_map(|(h, k)| k.then_some(h))
            .collect()
    }

    /// The `top` stacks with the most value of `ty`, each by its `depth` innermost
    /// frames; equal values in stack order.
    pub fn top_stacks(&self, ty: ProfileType, top: usize, depth: usize) -> Vec<TopStack> {
        let total = self.total(ty);
        let mut stacks: Vec<&WeightedStack> =
            self.stacks.iter().filter(|s| ty.value(s) > 0).collect();
        stacks.sort_by_key(|s| std::cmp::Reverse(ty.value(s)));
        stacks
            .into_iter()
            .take(top)
            .map(|stack| {
                let elided = stack.frames.len().saturating_sub(depth);
                TopStack {
                    frames: stack.frames[elided..]
                        .iter()
                        .map(|&i| folded_frame_name(self.frame(i)))
                        .collect(),
                    elided,
                    value: ty.value(stack),
                    share: share(ty.value(stack), total),
                }
            })
            .collect()
    }

    /// Every function with a value of `ty` as a hotspot, sorted like
    /// [`Profile::hotspots`].
    pub fn all_hotspots(&self, ty: ProfileType) -> Vec<Hotspot> {
        let total = self.total(ty);
        let mut keys: HashMap<(Cow<str>, &str, FrameKind), usize> = HashMap::new();
        let mut out: Vec<Hotspot> = Vec::new();
        let mut frame_to_hotspot: Vec<Option<usize>> = vec![None; self.frames.len() + 1];
        let unknown_slot = self.frames.len();
        let mut seen_gen: Vec<u64> = Vec::new();
        for (gen_, stack) in self.stacks.iter().enumerate() {
            let value = ty.value(stack);
            if value == 0 {
                continue;
            }
            let gen_ = gen_ as u64 + 1;
            for (pos, &fi) in stack.frames.iter().enumerate() {
                let slot = if (fi as usize) < self.frames.len() {
                    fi as usize
                } else {
                    unknown_slot
                };
                let h = match frame_to_hotspot[slot] {
                    Some(h) => h,
                    None => {
                        let frame = self.frame(fi);
                        let key = (function_name(frame), frame.module.as_str(), frame.kind);
                        let h = *keys.entry(key).or_insert_with_key(|key| {
                            out.push(Hotspot {
                                function: key.0.to_string(),
                                module: frame.module.clone(),
                                kind: frame.kind,
                                self_ns: 0,
                                total_ns: 0,
                                self_share: 0.0,
                                total_share: 0.0,
                            });
                            seen_gen.push(0);
                            out.len() - 1
                        });
                        frame_to_hotspot[slot] = Some(h);
                        h
                    }
                };
                if seen_gen[h] != gen_ {
                    seen_gen[h] = gen_;
                    out[h].total_ns = out[h].total_ns.saturating_add(value);
                }
                if pos + 1 == stack.frames.len() {
                    out[h].self_ns = out[h].self_ns.saturating_add(value);
                }
            }
        }
        for h in &mut out {
            h.self_share = share(h.self_ns, total);
            h.total_share = share(h.total_ns, total);
        }
        out.retain(|h| h.total_ns > 0);
        out.sort_by(cmp_self);
        out
    }

    fn ensure_index(&mut self) {
        if self.index.built_for == (self.frames.len(), self.stacks.len()) {
            return;
        }
        let mut index = Index::default();
        for (i, f) in self.frames.iter().enumerate() {
            index.frames.entry(f.clone()).or_insert(i as u32);
        }
        for (i, s) in self.stacks.iter().enumerate() {
            index.stacks.entry(s.frames.clone()).or_insert(i);
        }
        index.built_for = (self.frames.len(), self.stacks.len());
        self.index = index;
    }

    /// Index must be current.
    fn intern_frame(&mut self, frame: &Frame) -> u32 {
        if let Some(&id) = self.index.frames.get(frame) {
            return id;
        }
        let Cow::Owned(function) = function_identity(&frame.function) else {
            return self.push_frame(frame.clone());
        };
        let identity = Frame {
            function,
            ..frame.clone()
        };
        let id = match self.index.frames.get(&identity) {
            Some(&id) => id,
            None => self.push_frame(identity),
        };
        // The tiered name too, so that the next lookup of it is one hash away.
        self.index.frames.insert(frame.clone(), id);
        id
    }

    /// Index must be current.
    fn push_frame(&mut self, frame: Frame) -> u32 {
        let id = u32::try_from(self.frames.len()).expect("more than 4 billion distinct frames");
        self.frames.push(frame.clone());
        self.index.frames.insert(frame, id);
        self.index.built_for.0 = self.frames.len();
        id
    }

    /// Index must be current.
    /// Adds the values of `add` (its frames ignored) to the stack `ids`.
    fn add_ids(&mut self, ids: Vec<u32>, add: WeightedStack) {
        match self.index.stacks.get(&ids) {
            Some(&i) => {
                let s = &mut self.stacks[i];
                s.samples = s.samples.saturating_add(add.samples);
                s.cpu_ns = s.cpu_ns.saturating_add(add.cpu_ns);
                s.off_cpu_ns = s.off_cpu_ns.saturating_add(add.off_cpu_ns);
                s.memory_bytes = s.memory_bytes.saturating_add(add.memory_bytes);
            }
            None => {
                self.index.stacks.insert(ids.clone(), self.stacks.len());
                self.stacks.push(WeightedStack { frames: ids, ..add });
                self.index.built_for.1 = self.stacks.len();
            }
        }
    }
}

fn share(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        part as f64 / total as f64
    }
}

fn cmp_names(a: &Hotspot, b: &Hotspot) -> std::cmp::Ordering {
    (&a.function, &a.module, a.kind).cmp(&(&b.function, &b.module, b.kind))
}

fn cmp_self(a: &Hotspot, b: &Hotspot) -> std::cmp::Ordering {
    b.self_ns
        .cmp(&a.self_ns)
        .then(b.total_ns.cmp(&a.total_ns))
        .then_with(|| cmp_names(a, b))
}

fn cmp_total(a: &Hotspot, b: &Hotspot) -> std::cmp::Ordering {
    b.total_ns
        .cmp(&a.total_ns)
        .then(b.self_ns.cmp(&a.self_ns))
        .then_with(|| cmp_names(a, b))
}

/// The name that identifies a frame's function in hotspots and comparisons: its
/// [`function_identity`], `[off-cpu: CAUSE]` for a wait frame, `[memory: PAGE]` for a
/// page frame.
pub(crate) fn function_name(frame: &Frame) -> Cow<'_, str> {
    match pseudo_frame_name(frame) {
        Some(name) => Cow::Owned(name),
        None => function_identity(&frame.function),
    }
}

/// The name of a wait or page pseudo-frame (`[off-cpu: lock]`, `[memory: 4 KiB page]`),
/// `None` for code.
fn pseudo_frame_name(frame: &Frame) -> Option<String> {
    let prefix = match frame.kind {
        FrameKind::Wait => "off-cpu",
        FrameKind::Page => "memory",
        FrameKind::User | FrameKind::Kernel => return None,
    };
    Some(format!(
        "[{prefix}: {}]",
        frame.function.replace([';', '\n', '\r'], " ")
    ))
}

/// Whether a stack belongs to profiles of type `ty`: CPU stacks (any without off-CPU
/// time, including samples taken at an unknown frequency) to `cpu`, off-CPU stacks to
/// `offcpu`, both to `wall`.
pub(crate) fn is_of_type(ty: ProfileType, stack: &WeightedStack) -> bool {
    let cpu = stack.off_cpu_ns == 0 && (stack.samples > 0 || stack.cpu_ns > 0);
    let cpu = cpu && stack.memory_bytes == 0;
    let off_cpu = stack.off_cpu_ns > 0;
    match ty {
        ProfileType::Cpu => cpu,
        ProfileType::Offcpu => off_cpu,
        ProfileType::Wall => cpu || off_cpu,
        ProfileType::Memory => stack.memory_bytes > 0,
    }
}

/// The text of a frame in folded stacks and flame graphs: the function name, `[module]`
/// when the function is unknown but the module is not (the perf convention), kernel
/// frames suffixed `_[k]`, wait frames `[off-cpu: CAUSE]`, page frames `[memory: PAGE]`.
/// `;` and line breaks, which would break the folded format, become `:` and spaces.
pub(crate) fn folded_frame_name(frame: &Frame) -> String {
    if let Some(name) = pseudo_frame_name(frame) {
        return name;
    }
    let base = if frame.is_unknown()
        && frame.module != UNKNOWN_MODULE
        && frame.module != KERNEL_MODULE
        && !frame.module.is_empty()
    {
        format!("[{}]", frame.module)
    } else {
        function_identity(&frame.function).into_owned()
    };
    let mut name: String = base
        .chars()
        .map(|c| match c {
            ';' => ':',
            '\n' | '\r' => ' ',
            c => c,
        })
        .collect();
    if frame.kind == FrameKind::Kernel {
        name.push_str("_[k]");
    }
    name
}

/// Folded lines (without counts) with their summed weights, sorted by line.
pub(crate) fn folded_lines(
    profile: &Profile,
    weight: impl Fn(&WeightedStack) -> u64,
) -> Vec<(String, u64)> {
    let names: Vec<String> = profile.frames.iter().map(folded_frame_name).collect();
    let unknown = folded_frame_name(&Frame::unknown(FrameKind::User));
    let mut lines: HashMap<String, u64> = HashMap::new();
    for stack in &profile.stacks {
        let w = weight(stack);
        if w == 0 {
            continue;
        }
        let line = if stack.frames.is_empty() {
            "[no stack]".to_string()
        } else {
            let mut line = String::new();
            for (i, &fi) in stack.frames.iter().enumerate() {
                if i > 0 {
                    line.push(';');
                }
                line.push_str(names.get(fi as usize).unwrap_or(&unknown));
            }
            line
        };
        let e = lines.entry(line).or_insert(0);
        *e = e.saturating_add(w);
    }
    let mut lines: Vec<(String, u64)> = lines.into_iter().collect();
    lines.sort();
    lines
}

#[cfg(test)]
mod tests;
