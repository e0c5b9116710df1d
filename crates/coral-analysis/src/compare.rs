//! Cohort comparison: what is different about the slow requests, with evidence.
//!
//! Two cohorts of requests (A, e.g. slow; B, e.g. fast), one [`Profile`] per request,
//! compared in the value of one [`ProfileType`] ([`CompareOptions::profile_type`]: CPU
//! time, off-CPU time, both (wall-clock), or memory made resident). For every function
//! (name + module) each request contributes its inclusive share (fraction of the
//! request's value of that type in stacks containing the function, counted once per
//! stack), its self share (leaf frames: an off-CPU stack's wait frame, a memory stack's
//! page frame) and its value in the function. The
//! cohorts' inclusive shares are compared per function with a two-sided Mann–Whitney U
//! test, **the request being the unit** (samples of one request are not independent),
//! p-values are corrected across functions with Benjamini–Hochberg, and a function is
//! only called significant when its effect is large enough to matter. The method and
//! its reasoning are in `docs/statistics.md`.
//!
//! [`differential_folded`] and [`write_differential_svg`] draw the same comparison as a
//! differential flame graph.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::str::FromStr;

use inferno::flamegraph::{self, Options};
use rustfft::FftPlanner;
use rustfft::num_complex::Complex64;
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal};

use crate::profile::{
    Breakdown, FrameKind, Profile, ProfileType, WaitCause, folded_lines, format_bytes,
    function_name,
};

/// Cohorts with at most this many requests together get the exact distribution of the
/// rank sum, counted with a subset-sum table.
const EXACT_MAX_REQUESTS: usize = 30;
/// A smaller cohort of at most this many requests gets the exact distribution too,
/// whatever the other's size: the normal approximation is far too optimistic when one
/// side is tiny (1 request against 375 tied at share 0 gave p ≈ 0 for an exact 2/376).
const EXACT_MAX_SMALLER: usize = 10;
/// ... as long as smaller × total stays within this, which bounds the transform size
/// (at most 2¹⁸ points) and so the cost of one test. Cohorts are truncated at 5,000
/// requests, so 10 vs 5,000 is within it.
const EXACT_MAX_SMALLER_TIMES_TOTAL: usize = 100_000;
/// Cliff's delta thresholds for small, medium and large effects (Romano et al. 2006).
const CLIFF_SMALL: f64 = 0.147;
const CLIFF_MEDIUM: f64 = 0.33;
const CLIFF_LARGE: f64 = 0.474;
/// Below this median number of samples per request, per-request shares are coarse.
const FEW_SAMPLES_PER_REQUEST: u64 = 10;
/// In the verdict, significant functions whose deltas are within this many points of
/// the largest (same sign) are taken to be one call path; the one with the largest self
/// delta is named, since that is where the time goes.
const SAME_PATH_PP: f64 = 2.0;

/// How strongly a function's difference between the cohorts is supported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Significance {
    /// Not significant: too little evidence, or an effect below the floor.
    #[default]
    None,
    /// q < 0.10, effect at least small.
    Low,
    /// q < 0.05, effect at least medium.
    Medium,
    /// q < 0.01, large effect, both cohorts of at least the minimum size.
    High,
}

impl Significance {
    fn as_str(self) -> &'static str {
        match self {
            Significance::None => "none",
            Significance::Low => "low",
            Significance::Medium => "medium",
            Significance::High => "high",
        }
    }
}

impl fmt::Display for Significance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A significance level that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid significance {0:?} (expected none, low, medium or high)")]
pub struct SignificanceError(pub String);

impl FromStr for Significance {
    type Err = SignificanceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Significance::None),
            "low" => Ok(Significance::Low),
            "medium" => Ok(Significance::Medium),
            "high" => Ok(Significance::High),
            _ => Err(SignificanceError(s.to_string())),
        }
    }
}

/// One of the two cohorts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Cohort {
    A,
    B,
}

impl fmt::Display for Cohort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cohort::A => "A",
            Cohort::B => "B",
        })
    }
}

/// What to compare and report.
#[derive(Debug, Clone, PartialEq)]
pub struct CompareOptions {
    /// The value compared: `cpu` (default), `offcpu`, `wall` or `memory`.
    pub profile_type: ProfileType,
    /// Cohorts with fewer requests (with a value of the type) are warned about and never
    /// reach [`Significance::High`].
    pub min_cohort_requests: usize,
    /// The smallest difference in mean inclusive share, in percentage points of the
    /// request's time of the type, that can be significant.
    pub effect_floor_pp: f64,
    /// How many functions to report (0 = all).
    pub top: usize,
    /// Report only functions at least this significant.
    pub min_significance: Significance,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            profile_type: ProfileType::Cpu,
            min_cohort_requests: 5,
            effect_floor_pp: 5.0,
            top: 0,
            min_significance: Significance::None,
        }
    }
}

/// One cohort in numbers, in the compared type.
///
/// Per-request values (here and in [`FunctionDiff`]) are in the type's unit per
/// request: milliseconds for the times, bytes for `memory` ([`ProfileType::is_bytes`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CohortSummary {
    pub requests: usize,
    /// Requests with a value of the type (CPU samples, off-CPU time, memory made
    /// resident): the units of the share tests.
    pub requests_with_value: usize,
    /// The observations: CPU samples (`cpu`), waits (`offcpu`), both (`wall`), or memory
    /// records (`memory`).
    pub samples: u64,
    /// The cohort's total value of the type: nanoseconds, or bytes for `memory`.
    pub value: u64,
    /// Mean value of the type per request (all requests): milliseconds, or bytes.
    pub mean_per_request: f64,
    /// Mean over the requests with off-CPU time of the fraction of their recorded time
    /// (on-CPU + off-CPU) spent off the CPU, whatever the compared type; `None` when no
    /// request has off-CPU time.
    pub waiting_share: Option<f64>,
}

/// One function compared between the cohorts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionDiff {
    /// The function's identity; a wait frame's is `[off-cpu: CAUSE]`, a page frame's
    /// `[memory: PAGE]`.
    pub function: String,
    pub module: String,
    /// User or kernel code, a wait frame (the cause of off-CPU time) or a page frame
    /// (the page size of memory made resident).
    pub kind: FrameKind,
    /// Its smallest distance from the thread's root in the compared stacks (0: the
    /// root): of functions with the same delta (a call chain), callers come first.
    pub depth: usize,
    /// Mean inclusive share in A − in B, in percentage points of the request's time of
    /// the compared type (+ = hotter in A).
    pub delta_pp: f64,
    /// The same for self (leaf) time.
    pub self_delta_pp: f64,
    /// Mean inclusive share in A and in B, in percent of the request's time of the type.
    pub a_share_pct: f64,
    pub b_share_pct: f64,
    /// Mean inclusive value of the type per request: milliseconds, or bytes for
    /// `memory`.
    pub a_per_request: f64,
    pub b_per_request: f64,
    /// Mean self value of the type per request, in the same unit.
    pub a_self_per_request: f64,
    pub b_self_per_request: f64,
    /// Mann–Whitney U of cohort A's inclusive shares.
    pub u: f64,
    /// Two-sided p-value (1 when not tested).
    pub p_value: f64,
    /// Benjamini–Hochberg q-value across the tests (1 when not tested).
    pub q_value: f64,
    /// Cliff's delta (= rank-biserial correlation) in [-1, 1], + = larger shares in A.
    pub effect_size: f64,
    pub significance: Significance,
    /// Whether the function was tested: functions that cannot reach the effect floor
    /// whatever the labels are not, which keeps the correction for the others tight.
    pub tested: bool,
    /// Set when the function has time of the type in only one cohort.
    pub only_in: Option<Cohort>,
}

/// The comparison of two cohorts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The value compared.
    pub profile_type: ProfileType,
    pub a: CohortSummary,
    pub b: CohortSummary,
    /// Significant functions first, each group by |delta_pp| descending.
    pub functions: Vec<FunctionDiff>,
    /// Number of distinct tests, the m of the Benjamini–Hochberg correction: functions
    /// with the same share in every request (a function and its only callee) are one.
    pub tests: usize,
    /// One line naming the function that explains the difference, when one does.
    pub verdict: Option<String>,
    pub warnings: Vec<String>,
}

/// Compares cohort A with cohort B, one profile per request, in
/// [`CompareOptions::profile_type`]. See the module docs.
///
/// A request without a value of the type (no CPU samples, no off-CPU time, no memory
/// made resident) counts in its cohort's value per request (as 0) but not in the share
/// tests: its composition is
/// unknown, not zero, and counting it as zero in every function would make every
/// function look hotter in the other cohort.
pub fn compare(a: &[&Profile], b: &[&Profile], options: &CompareOptions) -> Comparison {
    let ty = options.profile_type;
    let mut names = Names::default();
    let requests_a: Vec<Request> = a.iter().map(|p| Request::new(p, ty, &mut names)).collect();
    let requests_b: Vec<Request> = b.iter().map(|p| Request::new(p, ty, &mut names)).collect();
    let stats_a = CohortStats::new(&requests_a, names.len());
    let stats_b = CohortStats::new(&requests_b, names.len());
    let (na, nb) = (stats_a.units, stats_b.units);
    let small = na < options.min_cohort_requests || nb < options.min_cohort_requests;
    // One request can only be unusual among the other cohort's, which says what that
    // request did, not what its cohort does: a lead, never evidence.
    let single = na == 1 || nb == 1;

    let mut functions: Vec<FunctionDiff> = Vec::with_capacity(names.len());
    for (id, (function, module, kind)) in names.names.iter().enumerate() {
        let (fa, fb) = (&stats_a.functions[id], &stats_b.functions[id]);
        let mean_a = mean(fa.incl_shares.iter().map(|s| s.1).sum(), na);
        let mean_b = mean(fb.incl_shares.iter().map(|s| s.1).sum(), nb);
        let pooled = mean(mean_a * na as f64 + mean_b * nb as f64, na + nb);
        // |mean A − mean B| ≤ pooled × N / min(nA, nB) for shares ≥ 0, so a function
        // below this bound cannot reach the floor. The bound depends on the pooled data
        // only, not on the labels, so filtering on it keeps the tests valid.
        let testable = na > 0
            && nb > 0
            && pooled > 0.0
            && pooled * 100.0 * (na + nb) as f64 >= options.effect_floor_pp * na.min(nb) as f64;
        let test = (na > 0 && nb > 0).then(|| {
            mann_whitney(
                &with_zeros(&fa.incl_shares, na),
                &with_zeros(&fb.incl_shares, nb),
            )
        });
        let only_in = match (fa.incl_ns > 0, fb.incl_ns > 0) {
            (true, false) => Some(Cohort::A),
            (false, true) => Some(Cohort::B),
            _ => None,
        };
        functions.push(FunctionDiff {
            function: function.clone(),
            module: module.clone(),
            kind: *kind,
            depth: names.depth[id],
            delta_pp: (mean_a - mean_b) * 100.0,
            self_delta_pp: (mean(fa.self_share_sum, na) - mean(fb.self_share_sum, nb)) * 100.0,
            a_share_pct: mean_a * 100.0,
            b_share_pct: mean_b * 100.0,
            a_per_request: per_request(fa.incl_ns, stats_a.requests, ty),
            b_per_request: per_request(fb.incl_ns, stats_b.requests, ty),
            a_self_per_request: per_request(fa.self_ns, stats_a.requests, ty),
            b_self_per_request: per_request(fb.self_ns, stats_b.requests, ty),
            u: test.map_or(0.0, |t| t.u),
            p_value: match test {
                Some(t) if testable => t.p_value,
                _ => 1.0,
            },
            q_value: 1.0,
            effect_size: test.map_or(0.0, |t| t.effect_size),
            significance: Significance::None,
            tested: testable,
            only_in,
        });
    }

    // Functions with the same share in every request are one hypothesis: two copies of
    // one p-value would share a step of the correction and halve it for both.
    let mut tests: HashMap<Vec<(usize, u64)>, usize> = HashMap::new();
    let mut test_of: Vec<Option<usize>> = vec![None; functions.len()];
    let mut p: Vec<f64> = Vec::new();
    // `functions` is still in id order here.
    for (id, f) in functions.iter().enumerate().filter(|(_, f)| f.tested) {
        let b_shares = stats_b.functions[id].incl_shares.iter();
        let key = (stats_a.functions[id].incl_shares.iter().copied())
            .chain(b_shares.map(|&(r, s)| (r + stats_a.requests, s)))
            .map(|(r, s)| (r, s.to_bits()))
            .collect();
        test_of[id] = Some(*tests.entry(key).or_insert_with(|| {
            p.push(f.p_value);
            p.len() - 1
        }));
    }
    let q = benjamini_hochberg(&p);
    for (d, t) in functions.iter_mut().zip(test_of) {
        let Some(t) = t else { continue };
        d.q_value = q[t];
        d.significance = classify(q[t], d.effect_size, d.delta_pp, options.effect_floor_pp);
        if small {
            d.significance = d.significance.min(Significance::Medium);
        }
        if single {
            d.significance = d.significance.min(Significance::Low);
        }
    }

    // Cohort A is the one being explained (the slow requests): among significant
    // functions, what A does more comes before what it does less (the complement: a
    // fast path B takes instead can have the larger |delta|). Of a function that blocked
    // and its wait frame (equal deltas), or that faulted and its page frame, the
    // function, which is code, comes first.
    let significant = |f: &FunctionDiff| f.significance > Significance::None;
    let hotter_in_a = |f: &FunctionDiff| significant(f) && f.delta_pp > 0.0;
    let is_pseudo = |f: &FunctionDiff| is_pseudo_frame(f.kind);
    functions.sort_by(|x, y| {
        significant(y)
            .cmp(&significant(x))
            .then(hotter_in_a(y).cmp(&hotter_in_a(x)))
            .then(y.delta_pp.abs().total_cmp(&x.delta_pp.abs()))
            // A call chain with one delta: code before its wait or page frame; the code
            // with the most self time first (where CPU time was spent), then callers
            // first (a chain that waited or faulted has no self value: its outermost
            // code first).
            .then(is_pseudo(x).cmp(&is_pseudo(y)))
            .then(y.self_delta_pp.abs().total_cmp(&x.self_delta_pp.abs()))
            .then(x.depth.cmp(&y.depth))
            .then_with(|| (&x.function, &x.module).cmp(&(&y.function, &y.module)))
    });
    let (summary_a, summary_b) = (
        stats_a.summary(&requests_a, ty),
        stats_b.summary(&requests_b, ty),
    );
    let mut verdict = verdict(&functions, na, nb, ty, (&summary_a, &summary_b));
    let high = functions
        .iter()
        .any(|f| f.significance == Significance::High);
    if ty == ProfileType::Cpu
        && !high
        && let Some(waiting) = mostly_waiting(&requests_a)
    {
        verdict = Some(match verdict {
            Some(v) => format!("{v}; but {waiting}"),
            None => format!("no function explains the difference on the CPU: {waiting}"),
        });
    }
    functions.retain(|f| f.significance >= options.min_significance);
    if options.top > 0 {
        functions.truncate(options.top);
    }

    let mut warnings = Vec::new();
    cohort_warnings(Cohort::A, &requests_a, options, &mut warnings);
    cohort_warnings(Cohort::B, &requests_b, options, &mut warnings);
    // Only CPU samples are taken at a frequency.
    if matches!(ty, ProfileType::Cpu | ProfileType::Wall) {
        frequency_warning(requests_a.iter().chain(&requests_b), &mut warnings);
    }

    Comparison {
        profile_type: ty,
        a: summary_a,
        b: summary_b,
        functions,
        tests: p.len(),
        verdict,
        warnings,
    }
}

/// Functions identified by (function, module), numbered in order of appearance; the
/// function by its [`function_name`] (its [`function_identity`](crate::profile::function_identity),
/// `[off-cpu: CAUSE]` for a wait frame), so that JIT tiers of one function are one.
#[derive(Default)]
struct Names {
    ids: HashMap<(String, String), usize>,
    names: Vec<(String, String, FrameKind)>,
    /// Each function's smallest position from the root in any stack compared.
    depth: Vec<usize>,
}

impl Names {
    fn id(&mut self, frame: &crate::profile::Frame) -> usize {
        let key = (function_name(frame).into_owned(), frame.module.clone());
        if let Some(&id) = self.ids.get(&key) {
            return id;
        }
        self.names.push((key.0.clone(), key.1.clone(), frame.kind));
        self.depth.push(usize::MAX);
        self.ids.insert(key, self.names.len() - 1);
        self.names.len() - 1
    }

    fn seen_at(&mut self, id: usize, depth: usize) {
        self.depth[id] = self.depth[id].min(depth);
    }

    fn len(&self) -> usize {
        self.names.len()
    }
}

/// One request's value of the compared type, total and per function.
struct Request {
    /// Value of the type (nanoseconds, or bytes for `memory`).
    value: u64,
    /// Observations of the type (CPU samples, waits, memory records).
    samples: u64,
    /// Profile sampling frequency, recovered from CPU samples and CPU time.
    hz: Option<u64>,
    /// On-CPU and off-CPU time by cause, whatever the type.
    breakdown: Breakdown,
    /// (function id, inclusive value, self value).
    functions: Vec<(usize, u64, u64)>,
}

impl Request {
    fn new(profile: &Profile, ty: ProfileType, names: &mut Names) -> Request {
        let mut ids: Vec<Option<usize>> = vec![None; profile.frames.len() + 1];
        let unknown_slot = profile.frames.len();
        let mut per_fn: HashMap<usize, (u64, u64)> = HashMap::new();
        let mut on_stack: Vec<usize> = Vec::new();
        for stack in &profile.stacks {
            let value = ty.value(stack);
            if value == 0 {
                continue;
            }
            on_stack.clear();
            for (depth, &fi) in stack.frames.iter().enumerate() {
                let slot = (fi as usize).min(unknown_slot);
                let id = *ids[slot].get_or_insert_with(|| names.id(profile.frame(fi)));
                names.seen_at(id, depth);
                on_stack.push(id);
            }
            // Self value is the leaf's (an off-CPU stack's: its wait frame's; a memory
            // stack's: its page frame's).
            let leaf = on_stack.last().copied();
            // Once per stack for inclusive time, even when the function recurses.
            on_stack.sort_unstable();
            on_stack.dedup();
            for &id in &on_stack {
                let e = per_fn.entry(id).or_default();
                e.0 = e.0.saturating_add(value);
            }
            if let Some(id) = leaf {
                let e = per_fn.entry(id).or_default();
                e.1 = e.1.saturating_add(value);
            }
        }
        let (cpu_samples, cpu_ns) = (
            profile.count(ProfileType::Cpu),
            profile.total(ProfileType::Cpu),
        );
        Request {
            value: profile.total(ty),
            samples: profile.count(ty),
            hz: (cpu_ns > 0 && cpu_samples > 0)
                .then(|| (cpu_samples as f64 * 1e9 / cpu_ns as f64).round() as u64),
            breakdown: profile.breakdown(),
            functions: per_fn.into_iter().map(|(id, (i, s))| (id, i, s)).collect(),
        }
    }
}

/// Per-function sums over one cohort.
#[derive(Default, Clone)]
struct FunctionStats {
    /// (request index, inclusive share) where the share is not 0, in request order;
    /// the other requests with time of the type have share 0.
    incl_shares: Vec<(usize, f64)>,
    self_share_sum: f64,
    incl_ns: u128,
    self_ns: u128,
}

struct CohortStats {
    requests: usize,
    /// Requests with time of the type.
    units: usize,
    functions: Vec<FunctionStats>,
}

impl CohortStats {
    fn new(requests: &[Request], n_functions: usize) -> CohortStats {
        let mut functions = vec![FunctionStats::default(); n_functions];
        for (i, r) in requests.iter().enumerate().filter(|(_, r)| r.value > 0) {
            let total = r.value as f64;
            for &(id, incl, self_ns) in &r.functions {
                let f = &mut functions[id];
                f.incl_shares.push((i, incl as f64 / total));
                f.self_share_sum += self_ns as f64 / total;
                f.incl_ns += u128::from(incl);
                f.self_ns += u128::from(self_ns);
            }
        }
        CohortStats {
            requests: requests.len(),
            units: requests.iter().filter(|r| r.value > 0).count(),
            functions,
        }
    }

    fn summary(&self, requests: &[Request], ty: ProfileType) -> CohortSummary {
        let value = requests
            .iter()
            .fold(0u64, |acc, r| acc.saturating_add(r.value));
        CohortSummary {
            requests: self.requests,
            requests_with_value: self.units,
            samples: requests
                .iter()
                .fold(0u64, |acc, r| acc.saturating_add(r.samples)),
            value,
            mean_per_request: per_request(u128::from(value), self.requests, ty),
            waiting_share: waiting_shares(requests).map(|w| w.waiting),
        }
    }
}

fn mean(sum: f64, n: usize) -> f64 {
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// The mean of a sum of values of `ty` over `n` requests, in its unit per request:
/// milliseconds for the times, bytes for `memory`.
fn per_request(sum: u128, n: usize, ty: ProfileType) -> f64 {
    let sum = if ty.is_bytes() {
        sum as f64
    } else {
        sum as f64 / 1e6
    };
    mean(sum, n)
}

/// A per-request value of `ty` for people: `812 ms`, or `300 MiB` for `memory`.
pub fn format_per_request(value: f64, ty: ProfileType) -> String {
    if ty.is_bytes() {
        format_bytes(value.max(0.0).round() as u64)
    } else {
        format!("{value:.1} ms")
    }
}

/// Whether a frame kind is a pseudo-frame (a wait or a page) rather than code.
fn is_pseudo_frame(kind: FrameKind) -> bool {
    matches!(kind, FrameKind::Wait | FrameKind::Page)
}

fn with_zeros(nonzero: &[(usize, f64)], n: usize) -> Vec<f64> {
    let mut v: Vec<f64> = nonzero.iter().map(|s| s.1).collect();
    v.resize(n, 0.0);
    v
}

/// The level a tested function reaches; see `docs/statistics.md` for the reasoning.
fn classify(q: f64, effect_size: f64, delta_pp: f64, floor_pp: f64) -> Significance {
    let effect = effect_size.abs();
    if delta_pp.abs() < floor_pp {
        Significance::None
    } else if q < 0.01 && effect >= CLIFF_LARGE {
        Significance::High
    } else if q < 0.05 && effect >= CLIFF_MEDIUM {
        Significance::Medium
    } else if q < 0.10 && effect >= CLIFF_SMALL {
        Significance::Low
    } else {
        Significance::None
    }
}

fn verdict(
    sorted: &[FunctionDiff],
    na: usize,
    nb: usize,
    ty: ProfileType,
    cohorts: (&CohortSummary, &CohortSummary),
) -> Option<String> {
    let strong = |f: &&FunctionDiff| f.significance >= Significance::Medium;
    let top = sorted.iter().find(strong)?;
    let same_path: Vec<&FunctionDiff> = sorted
        .iter()
        .filter(strong)
        .filter(|f| {
            f.delta_pp.signum() == top.delta_pp.signum()
                && f.delta_pp.abs() >= top.delta_pp.abs() - SAME_PATH_PP
        })
        .collect();
    let evidence = |f: &FunctionDiff| {
        let q = if f.q_value < 0.001 {
            "q < 0.001".to_string()
        } else {
            format!("q = {:.3}", f.q_value)
        };
        format!(
            "{} significance ({q}, {na} vs {nb} requests)",
            f.significance
        )
    };
    // Code is named rather than a wait or page frame, which says why it waited or what
    // was mapped, not where.
    let is_wait = |f: &&FunctionDiff| f.kind == FrameKind::Wait;
    let code = || {
        same_path
            .iter()
            .copied()
            .filter(|f| !is_pseudo_frame(f.kind))
    };
    if ty.is_bytes() {
        return Some(memory_verdict(code(), top, cohorts, &evidence));
    }
    let wait = same_path.iter().copied().find(is_wait);
    // Time on the CPU is named where it was spent (the most self time); time waited, by
    // the outermost code of the chain that led to the wait: where the service's code
    // took the lock or made the call, not the library and kernel frames below it.
    let winner = if wait.is_some() {
        code().min_by_key(|f| f.depth)
    } else {
        code().reduce(|best, f| {
            if f.self_delta_pp.abs() > best.self_delta_pp.abs() {
                f
            } else {
                best
            }
        })
    }
    .unwrap_or(top);
    let waiting = match wait {
        Some(wait) if !is_wait(&winner) => format!(", waiting in {}", wait.function),
        _ => String::new(),
    };
    let hotter = if winner.delta_pp > 0.0 { "A" } else { "B" };
    Some(format!(
        "{} is hotter in {hotter}: {:+.1} pp of request {}, {} vs {} per request{waiting}, {}",
        winner.function,
        winner.delta_pp,
        ty.measure(),
        format_per_request(winner.a_per_request, ty),
        format_per_request(winner.b_per_request, ty),
        evidence(winner)
    ))
}

/// The verdict of a `memory` comparison: how much more the cohort that made more
/// resident made per request, and the call chain it did it in, from the outermost code
/// to the innermost user code of the chain (where the service touched the memory):
/// `cohort A made 300 MiB more memory resident per request than cohort B (310 MiB vs
/// 10.0 MiB), 96% of it in build_snapshot → grab_block (vs 0% in B), high significance
/// (…)`.
fn memory_verdict<'a>(
    code: impl Iterator<Item = &'a FunctionDiff> + Clone,
    top: &'a FunctionDiff,
    (a, b): (&CohortSummary, &CohortSummary),
    evidence: &dyn Fn(&FunctionDiff) -> String,
) -> String {
    let outer = code.clone().min_by_key(|f| f.depth).unwrap_or(top);
    let inner = code
        .clone()
        .filter(|f| f.kind == FrameKind::User)
        .max_by_key(|f| f.depth)
        .or_else(|| code.max_by_key(|f| f.depth))
        .unwrap_or(top);
    let chain = if outer.function == inner.function && outer.module == inner.module {
        outer.function.clone()
    } else {
        format!("{} → {}", outer.function, inner.function)
    };
    // The cohort the chain is hotter in, against the other.
    let (hot, other, hot_share, other_share) = if top.delta_pp > 0.0 {
        (("A", a), ("B", b), top.a_share_pct, top.b_share_pct)
    } else {
        (("B", b), ("A", a), top.b_share_pct, top.a_share_pct)
    };
    // Shares are never negative; `abs` turns an empty sum's -0 into 0 for printing.
    let (hot_share, other_share) = (hot_share.abs(), other_share.abs());
    let (hot_mean, other_mean) = (hot.1.mean_per_request, other.1.mean_per_request);
    let amount = if hot_mean >= other_mean {
        format!(
            "{} more",
            format_per_request(hot_mean - other_mean, ProfileType::Memory)
        )
    } else {
        format!(
            "{} less",
            format_per_request(other_mean - hot_mean, ProfileType::Memory)
        )
    };
    format!(
        "cohort {} made {amount} memory resident per request than cohort {} ({} vs {}), \
         {hot_share:.0}% of it in {chain} (vs {other_share:.0}% in {}), {}",
        hot.0,
        other.0,
        format_per_request(hot_mean, ProfileType::Memory),
        format_per_request(other_mean, ProfileType::Memory),
        other.0,
        evidence(top)
    )
}

/// Mean shares of recorded time (on-CPU + off-CPU) over a cohort's requests with
/// off-CPU time.
struct WaitingShares {
    waiting: f64,
    /// Per cause, in [`WaitCause::ALL`] order.
    causes: [f64; 6],
}

fn waiting_shares(requests: &[Request]) -> Option<WaitingShares> {
    let waited: Vec<&Breakdown> = requests
        .iter()
        .map(|r| &r.breakdown)
        .filter(|b| b.off_cpu_ns > 0)
        .collect();
    if waited.is_empty() {
        return None;
    }
    let share =
        |b: &Breakdown, ns: u64| ns as f64 / b.on_cpu_ns.saturating_add(b.off_cpu_ns) as f64;
    let n = waited.len();
    let mut causes = [0.0; 6];
    for (slot, cause) in causes.iter_mut().zip(WaitCause::ALL) {
        *slot = mean(waited.iter().map(|b| share(b, b.cause_ns(cause))).sum(), n);
    }
    Some(WaitingShares {
        waiting: mean(waited.iter().map(|b| share(b, b.off_cpu_ns)).sum(), n),
        causes,
    })
}

/// When cohort A's requests spent most of their recorded time off the CPU, what a CPU
/// comparison cannot see, and what to compare instead.
fn mostly_waiting(requests_a: &[Request]) -> Option<String> {
    let shares = waiting_shares(requests_a).filter(|w| w.waiting > 0.5)?;
    let (cause, cause_share) =
        WaitCause::ALL
            .into_iter()
            .zip(shares.causes)
            .fold((WaitCause::Other, -1.0), |best, c| {
                if c.1 > best.1 { c } else { best }
            });
    Some(format!(
        "cohort A's requests spent {:.0}% of their recorded time waiting ({cause} {:.0}%); \
         compare with --type wall",
        shares.waiting * 100.0,
        cause_share * 100.0
    ))
}

fn cohort_warnings(
    cohort: Cohort,
    requests: &[Request],
    options: &CompareOptions,
    warnings: &mut Vec<String>,
) {
    let n = requests.len();
    let ty = options.profile_type;
    let what = match ty {
        ProfileType::Cpu => "CPU samples",
        ProfileType::Offcpu => "off-CPU time",
        ProfileType::Wall => "CPU samples or off-CPU time",
        ProfileType::Memory => "memory records",
    };
    let mut samples: Vec<u64> = requests
        .iter()
        .filter(|r| r.value > 0)
        .map(|r| r.samples)
        .collect();
    let units = samples.len();
    if n == 0 {
        warnings.push(format!(
            "cohort {cohort} is empty: nothing to compare, no significance claimed"
        ));
        return;
    }
    if units == 0 {
        warnings.push(format!(
            "cohort {cohort}: none of its {n} requests has {what}: nothing to compare, no \
             significance claimed"
        ));
        return;
    }
    if units < n {
        warnings.push(format!(
            "cohort {cohort}: {} of {n} requests have no {what}: they count in the {} per \
             request (as 0), not in the share tests",
            n - units,
            ty.measure()
        ));
    }
    if units == 1 {
        warnings.push(format!(
            "cohort {cohort} has only 1 request with {what}: significance is capped at \
             low (one request shows what it did, not what its cohort does), and against n \
             requests no p-value is below 2/(n + 1)"
        ));
    } else if units < options.min_cohort_requests {
        warnings.push(format!(
            "cohort {cohort} has only {units} requests with {what} (fewer than {}): \
             significance is capped at medium and small differences cannot be detected",
            options.min_cohort_requests
        ));
    }
    // Off-CPU time is recorded exactly, not sampled: only CPU and memory shares are
    // coarse.
    let (observations, remedy) = match ty {
        ProfileType::Cpu => (
            "samples",
            "more requests or a higher sampling frequency help",
        ),
        ProfileType::Memory => (
            "memory records",
            "more requests help; one record stands for ~512 KiB made resident",
        ),
        ProfileType::Offcpu | ProfileType::Wall => return,
    };
    samples.sort_unstable();
    let median = samples[units / 2];
    if median < FEW_SAMPLES_PER_REQUEST {
        warnings.push(format!(
            "cohort {cohort}: a median of {median} {observations} per request: per-request \
             shares are coarse, so only large differences show ({remedy})"
        ));
    }
}

fn frequency_warning<'a>(requests: impl Iterator<Item = &'a Request>, warnings: &mut Vec<String>) {
    let hz: BTreeSet<u64> = requests.filter_map(|r| r.hz).collect();
    if hz.len() > 1 {
        let list: Vec<String> = hz.iter().map(u64::to_string).collect();
        warnings.push(format!(
            "requests were sampled at different frequencies ({} Hz): they are compared in \
             time, which normalises them; their sample counts are not comparable",
            list.join(", ")
        ));
    }
}

/// The result of a two-sided Mann–Whitney U test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MannWhitney {
    /// U of the first sample: the number of (a, b) pairs with a > b, ties counting ½.
    pub u: f64,
    pub p_value: f64,
    /// Cliff's delta, 2U / (nA·nB) − 1.
    pub effect_size: f64,
}

/// Two-sided Mann–Whitney U test of `a` against `b`, with midranks for ties. When
/// [`uses_exact_test`] says so, the p-value comes from the exact permutation
/// distribution of the rank sum given the ties; otherwise from the normal approximation
/// with tie and continuity corrections. Empty samples or all-equal values give p = 1.
pub(crate) fn mann_whitney(a: &[f64], b: &[f64]) -> MannWhitney {
    let (na, nb) = (a.len(), b.len());
    if na == 0 || nb == 0 {
        return MannWhitney {
            u: 0.0,
            p_value: 1.0,
            effect_size: 0.0,
        };
    }
    let ranks = doubled_midranks(a, b);
    let rank_sum_a2: u64 = ranks.iter().filter(|r| r.1).map(|r| r.0).sum();
    let u = rank_sum_a2 as f64 / 2.0 - (na * (na + 1)) as f64 / 2.0;
    let all_tied = ranks.iter().all(|r| r.0 == ranks[0].0);
    let p_value = if all_tied {
        1.0
    } else if uses_exact_test(na, nb) {
        let doubled: Vec<u64> = ranks.iter().map(|r| r.0).collect();
        // The smaller cohort's rank sum has the same p-value (B's is the total minus
        // A's) and a much smaller range.
        let (k, observed) = if na <= nb {
            (na, rank_sum_a2)
        } else {
            (nb, doubled.iter().sum::<u64>() - rank_sum_a2)
        };
        exact_p(&doubled, k, observed)
    } else {
        let tie_term = tie_term(&ranks);
        normal_p(u, na, nb, tie_term)
    };
    MannWhitney {
        u,
        p_value,
        effect_size: 2.0 * u / (na * nb) as f64 - 1.0,
    }
}

/// Whether cohorts of `na` and `nb` requests get the exact test: up to
/// [`EXACT_MAX_REQUESTS`] together, or a smaller cohort of at most [`EXACT_MAX_SMALLER`]
/// with smaller × total at most [`EXACT_MAX_SMALLER_TIMES_TOTAL`].
pub(crate) fn uses_exact_test(na: usize, nb: usize) -> bool {
    let (smaller, total) = (na.min(nb), na + nb);
    total <= EXACT_MAX_REQUESTS
        || (smaller <= EXACT_MAX_SMALLER && smaller * total <= EXACT_MAX_SMALLER_TIMES_TOTAL)
}

/// Twice the midrank of every value (so ranks stay integers), with whether it is from
/// `a`, sorted by value.
fn doubled_midranks(a: &[f64], b: &[f64]) -> Vec<(u64, bool)> {
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|&x| (x, true))
        .chain(b.iter().map(|&x| (x, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    let mut out = Vec::with_capacity(all.len());
    let mut i = 0;
    while i < all.len() {
        let j = (i..all.len())
            .find(|&j| all[j].0 != all[i].0)
            .unwrap_or(all.len());
        // Positions i..j hold ranks i+1..=j; their mean doubled is i + 1 + j.
        let doubled = (i + 1 + j) as u64;
        out.extend(all[i..j].iter().map(|v| (doubled, v.1)));
        i = j;
    }
    out
}

/// Σ (t³ − t) over the groups of tied values.
fn tie_term(ranks: &[(u64, bool)]) -> f64 {
    ranks
        .chunk_by(|x, y| x.0 == y.0)
        .map(|g| {
            let t = g.len() as f64;
            t * t * t - t
        })
        .sum()
}

/// Exact two-sided p-value of a (doubled) rank sum `observed` of `k` of the values:
/// twice the smaller tail, P(S ≤ observed) or P(S ≥ observed), over all equally likely
/// ways to choose which `k` of the values are the cohort's, at most 1. Twice the smaller
/// tail rather than "as far from the mean" because ties make the distribution
/// asymmetric: one request above 375 tied ones has a one-sided tail of 1/376 and no
/// opposite tail at all, and its p must still be 2/376.
///
/// Up to [`EXACT_MAX_REQUESTS`] values the distribution is counted exactly with a
/// subset-sum table; beyond (small `k` only), with a discrete Fourier transform, exact up
/// to floating-point rounding (about 1e-12).
fn exact_p(doubled_ranks: &[u64], k: usize, observed: u64) -> f64 {
    let n = doubled_ranks.len();
    let distribution = if n <= EXACT_MAX_REQUESTS {
        rank_sum_counts(doubled_ranks, k)
    } else {
        rank_sum_probabilities(doubled_ranks, k)
    };
    let observed = observed as usize;
    let total: f64 = distribution.iter().sum();
    let lower: f64 = distribution.iter().take(observed + 1).sum();
    let upper: f64 = distribution.iter().skip(observed).sum();
    // The observed split itself has probability 1 / C(n, k): rounding never takes a
    // tail below that.
    let floor = (-ln_choose(n, k)).exp();
    let tail = (lower.min(upper) / total).max(floor);
    (2.0 * tail).min(1.0)
}

/// Counts of the k-subsets of `doubled_ranks` by sum (index = sum), from a subset-sum
/// table: O(n · k · max sum), for small n.
fn rank_sum_counts(doubled_ranks: &[u64], k: usize) -> Vec<f64> {
    let width = doubled_ranks.iter().sum::<u64>() as usize + 1;
    // ways[j * width + s]: subsets of j values with doubled rank sum s.
    let mut ways = vec![0f64; (k + 1) * width];
    ways[0] = 1.0;
    for &r in doubled_ranks {
        let r = r as usize;
        for j in (1..=k).rev() {
            for s in (r..width).rev() {
                let add = ways[(j - 1) * width + s - r];
                if add != 0.0 {
                    ways[j * width + s] += add;
                }
            }
        }
    }
    ways.split_off(k * width)
}

/// The probabilities of the k-subsets' sums of `doubled_ranks` (index = sum), for small
/// k and any n, in O(M log M + M k²) with M ≈ 2kn.
///
/// The counts are the coefficients of e_k(x^r₁, …, x^rₙ), the k-th elementary symmetric
/// polynomial of the monomials. At each M-th root of unity it follows from the power
/// sums p_j = Σ x^(j·rᵢ) by Newton's identities, and every p_j is a value of one
/// transform of the rank histogram; an inverse transform gives the coefficients.
/// Dividing e_j by C(n, j) keeps every quantity within [−1, 1]-ish, so nothing
/// overflows and rounding stays near the machine epsilon.
fn rank_sum_probabilities(doubled_ranks: &[u64], k: usize) -> Vec<f64> {
    let n = doubled_ranks.len();
    // Sums are taken above k × the smallest rank, which shrinks the transform when the
    // smallest values are many ties (requests without the function).
    let lowest = doubled_ranks.iter().copied().min().unwrap_or(0);
    let highest = doubled_ranks.iter().copied().max().unwrap_or(0);
    let span = k * (highest - lowest) as usize;
    let m = (span + 1).next_power_of_two();
    let zero = Complex64::new(0.0, 0.0);
    let mut histogram = vec![zero; m];
    for &r in doubled_ranks {
        histogram[(r - lowest) as usize].re += 1.0;
    }
    let mut planner = FftPlanner::new();
    planner.plan_fft_forward(m).process(&mut histogram);
    // Newton: e_j = (1/j) Σᵢ (−1)^(i−1) e_(j−i) p_i; with f_j = e_j / C(n, j),
    // f_j = Σᵢ (−1)^(i−1) f_(j−i) p_i · C(n, j−i) / (j · C(n, j)).
    let mut weight = vec![vec![0f64; k + 1]; k + 1];
    for (j, row) in weight.iter_mut().enumerate().skip(1) {
        // C(n, j−i) / C(n, j) = Π over l in (j−i, j] of l / (n − l + 1).
        let mut ratio = 1.0;
        for (i, w) in row.iter_mut().enumerate().take(j + 1).skip(1) {
            let l = j - i + 1;
            ratio *= l as f64 / (n - l + 1) as f64;
            let sign = if i % 2 == 1 { 1.0 } else { -1.0 };
            *w = sign * ratio / j as f64;
        }
    }
    let mut spectrum = vec![zero; m];
    let mut f = vec![zero; k + 1];
    let mut power_sums = vec![zero; k + 1];
    // The distribution is real, so its transform at m − t is the conjugate of that at t.
    for t in 0..=m / 2 {
        for (i, p) in power_sums.iter_mut().enumerate().skip(1) {
            *p = histogram[(i * t) & (m - 1)];
        }
        f[0] = Complex64::new(1.0, 0.0);
        for j in 1..=k {
            f[j] = (1..=j)
                .map(|i| f[j - i] * power_sums[i] * weight[j][i])
                .sum();
        }
        spectrum[t] = f[k];
        if t > 0 && t < m - t {
            spectrum[m - t] = f[k].conj();
        }
    }
    // Unscaled, as rustfft's transforms are: divided by m below.
    planner.plan_fft_inverse(m).process(&mut spectrum);
    // Back to sums of the ranks themselves.
    let offset = k * lowest as usize;
    let mut probabilities = vec![0f64; offset];
    probabilities.extend(
        spectrum
            .iter()
            .take(span + 1)
            .map(|c| (c.re / m as f64).max(0.0)),
    );
    probabilities
}

/// ln C(n, k).
fn ln_choose(n: usize, k: usize) -> f64 {
    (0..k).map(|i| ((n - i) as f64 / (k - i) as f64).ln()).sum()
}

/// Two-sided p-value of U under the normal approximation, with the tie correction of
/// the variance and a continuity correction of ½.
fn normal_p(u: f64, na: usize, nb: usize, tie_term: f64) -> f64 {
    let (na, nb) = (na as f64, nb as f64);
    let n = na + nb;
    let variance = na * nb / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if variance <= 0.0 {
        return 1.0;
    }
    let z = ((u - na * nb / 2.0).abs() - 0.5).max(0.0) / variance.sqrt();
    (2.0 * Normal::standard().sf(z)).min(1.0)
}

/// Benjamini–Hochberg q-values (adjusted p-values), in the order of `p`: for the i-th
/// smallest of m p-values, min over j ≥ i of p₍ⱼ₎ · m / j, at most 1.
pub(crate) fn benjamini_hochberg(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&x, &y| p[x].total_cmp(&p[y]));
    let mut q = vec![1.0; m];
    let mut running = 1.0f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        running = running.min(p[i] * m as f64 / (rank + 1) as f64);
        q[i] = running;
    }
    q
}

/// Differential folded stacks for a differential flame graph: one `stack a b` line per
/// distinct stack of type `ty` (root → leaf, `;`-joined, sorted, wait frames
/// `[off-cpu: CAUSE]`, page frames `[memory: PAGE]`), `a` and `b` the mean value of the
/// type per request in each cohort (microseconds, or bytes for `memory`), so that cohort
/// sizes do not bias the picture. Stacks whose means both round to 0 are left out.
pub fn differential_folded(a: &[&Profile], b: &[&Profile], ty: ProfileType) -> String {
    let mut lines: BTreeMap<String, [u128; 2]> = BTreeMap::new();
    for (side, cohort) in [a, b].into_iter().enumerate() {
        for profile in cohort {
            for (line, ns) in folded_lines(profile, |s| ty.value(s)) {
                lines.entry(line).or_default()[side] += u128::from(ns);
            }
        }
    }
    let scale = if ty.is_bytes() { 1.0 } else { 1e3 };
    let mean_us = |value: u128, n: usize| {
        if n == 0 {
            0
        } else {
            (value as f64 / n as f64 / scale).round() as u64
        }
    };
    let mut out = String::new();
    for (line, [ns_a, ns_b]) in lines {
        let (us_a, us_b) = (mean_us(ns_a, a.len()), mean_us(ns_b, b.len()));
        if us_a > 0 || us_b > 0 {
            out.push_str(&format!("{line} {us_a} {us_b}\n"));
        }
    }
    out
}

/// Writes a differential flame graph (inferno) of [`differential_folded`] output of type
/// `ty`: frame widths are cohort A's mean value of the type per request, red frames are
/// hotter in A, blue ones hotter in B, the deeper the colour the larger the difference.
/// Stacks only in B have no width in A and are not drawn (swap the cohorts to see them).
pub fn write_differential_svg(
    folded_diff: &str,
    ty: ProfileType,
    title: &str,
    w: impl io::Write,
) -> io::Result<()> {
    // inferno draws the second count and colours by second − first, so A goes second.
    let mut lines = Vec::new();
    let mut width_a = 0u64;
    for line in folded_diff.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut parts = line.rsplitn(3, ' ');
        let (Some(b), Some(a), Some(stack)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad_line(line));
        };
        let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) else {
            return Err(bad_line(line));
        };
        width_a = width_a.saturating_add(a);
        lines.push(format!("{stack} {b} {a}"));
    }
    if width_a == 0 {
        lines.push("[no samples in cohort A] 1 1".to_string());
    }
    let mut options = Options::default();
    options.title = title.to_string();
    let unit = if ty.is_bytes() { "bytes" } else { "µs" };
    options.count_name = unit.to_string();
    options.deterministic = true;
    options.subtitle = Some(format!(
        "widths: cohort A, mean {} per request, {unit}; red: hotter in A, blue: hotter in B",
        ty.measure()
    ));
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), w)
}

fn bad_line(line: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a differential folded line (`stack count_a count_b`): {line:?}"),
    )
}

#[cfg(test)]
mod tests;
