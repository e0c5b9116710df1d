use super::*;
use crate::profile::{Frame, FrameKind, ProfileType, WaitCause};

/// splitmix64: a small seeded generator, so every test run sees the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn frames(stack: &str) -> Vec<Frame> {
    stack.split(';').map(|f| Frame::user(f, "svc")).collect()
}

/// One request: `samples` samples at `hz`, each drawn from the weighted stacks.
fn request(rng: &mut Rng, stacks: &[(&str, f64)], samples: u64, hz: u32) -> Profile {
    let total: f64 = stacks.iter().map(|s| s.1).sum();
    let mut counts = vec![0u64; stacks.len()];
    for _ in 0..samples {
        let mut x = rng.uniform() * total;
        let i = stacks
            .iter()
            .position(|s| {
                x -= s.1;
                x < 0.0
            })
            .unwrap_or(stacks.len() - 1);
        counts[i] += 1;
    }
    let mut p = Profile::new();
    for (s, n) in stacks.iter().zip(counts) {
        p.add(&frames(s.0), n, hz);
    }
    p
}

const BACKGROUND: [(&str, f64); 5] = [
    ("main;handle_request;parse_body", 1.0),
    ("main;handle_request;query_db;socket_read", 3.0),
    ("main;handle_request;query_db;encode_row", 1.5),
    ("main;handle_request;render;serialize_json", 2.0),
    ("main;handle_request;log_access", 0.5),
];

/// The background stacks with per-request log-normal noise, weights summing to `mass`.
fn background(rng: &mut Rng, sigma: f64, mass: f64) -> Vec<(&'static str, f64)> {
    let noisy: Vec<(&str, f64)> = BACKGROUND
        .iter()
        .map(|&(s, w)| (s, w * (sigma * rng.normal()).exp()))
        .collect();
    let total: f64 = noisy.iter().map(|s| s.1).sum();
    noisy
        .into_iter()
        .map(|(s, w)| (s, w / total * mass))
        .collect()
}

const VALIDATE: &str = "main;handle_request;verify_request;validate_signature";

/// 20 slow requests spending ~85% in `validate_signature`, 100 fast ones almost never.
fn planted(seed: u64) -> (Vec<Profile>, Vec<Profile>) {
    let mut rng = Rng(seed);
    let slow = (0..20)
        .map(|_| {
            let v = (0.85 + 0.04 * rng.normal()).clamp(0.5, 0.98);
            let mut stacks = background(&mut rng, 0.5, 1.0 - v);
            stacks.push((VALIDATE, v));
            let samples = rng.range(150, 400);
            request(&mut rng, &stacks, samples, 99)
        })
        .collect();
    let fast = (0..100)
        .map(|i| {
            let v = if rng.uniform() < 0.2 { 0.01 } else { 0.0 };
            let mut stacks = background(&mut rng, 0.5, 1.0 - v);
            stacks.push((VALIDATE, v));
            // Half of the fast requests were sampled at 499 Hz: same CPU, 5× the samples.
            let (hz, scale) = if i % 2 == 0 { (99, 1) } else { (499, 5) };
            let samples = rng.range(8, 60) * scale;
            request(&mut rng, &stacks, samples, hz)
        })
        .collect();
    (slow, fast)
}

fn refs(v: &[Profile]) -> Vec<&Profile> {
    v.iter().collect()
}

fn find<'a>(c: &'a Comparison, function: &str) -> &'a FunctionDiff {
    c.functions
        .iter()
        .find(|f| f.function == function)
        .unwrap_or_else(|| panic!("{function} not in {:#?}", c.functions))
}

#[test]
fn planted_difference_is_found_first_with_high_significance() {
    let (slow, fast) = planted(42);
    let c = compare(&refs(&slow), &refs(&fast), &CompareOptions::default());
    let top = &c.functions[0];
    assert_eq!(top.function, "validate_signature", "{:#?}", c.functions);
    assert_eq!(top.module, "svc");
    assert_eq!(top.significance, Significance::High);
    assert!((top.delta_pp - 85.0).abs() < 3.0, "delta {}", top.delta_pp);
    assert!((top.self_delta_pp - top.delta_pp).abs() < 1e-9);
    assert!(top.q_value < 0.001 && top.effect_size > 0.9);
    assert!(
        top.a_per_request > 1000.0 && top.b_per_request < 5.0,
        "{top:?}"
    );
    assert_eq!(top.only_in, None);
    // Its caller has the same inclusive shares: same delta, ranked after it on self time.
    assert_eq!(c.functions[1].function, "verify_request");
    assert_eq!(c.functions[1].delta_pp, top.delta_pp);
    // Everything else takes a smaller share of the slow requests: hotter in B.
    assert!(find(&c, "socket_read").delta_pp < -10.0);
    // On every stack: no difference.
    let main = find(&c, "main");
    assert!(main.delta_pp.abs() < 1e-9 && main.significance == Significance::None);

    let verdict = c.verdict.as_deref().expect("a verdict");
    println!("{verdict}");
    assert!(
        verdict.starts_with("validate_signature is hotter in A: +8"),
        "{verdict}"
    );
    assert!(
        verdict.ends_with("high significance (q < 0.001, 20 vs 100 requests)"),
        "{verdict}"
    );
    assert_eq!((c.a.requests, c.b.requests), (20, 100));
    assert!(
        c.warnings.iter().any(|w| w.contains("99, 499 Hz")),
        "{:?}",
        c.warnings
    );
}

/// Counts, over many A/A comparisons (both cohorts from one distribution), the runs in
/// which any function reached each level, and the fraction of raw p-values below 0.05.
fn aa_runs(runs: u64, n: usize, first_seed: u64) -> ([usize; 4], f64) {
    aa_runs_unbalanced(runs, (n, n), first_seed)
}

/// [`aa_runs`] with cohorts of different sizes.
fn aa_runs_unbalanced(runs: u64, (na, nb): (usize, usize), first_seed: u64) -> ([usize; 4], f64) {
    let mut any = [0usize; 4];
    let (mut below, mut tested) = (0usize, 0usize);
    for seed in first_seed..first_seed + runs {
        let mut rng = Rng(seed);
        let cohort = |rng: &mut Rng, n: usize| -> Vec<Profile> {
            (0..n)
                .map(|_| {
                    let mut stacks = background(rng, 0.6, 1.0);
                    // A sparse function: many requests at share 0 (ties).
                    if rng.uniform() < 0.3 {
                        stacks.push(("main;handle_request;cache_miss", 0.15));
                    }
                    let samples = rng.range(10, 200);
                    let hz = if rng.uniform() < 0.5 { 99 } else { 499 };
                    request(rng, &stacks, samples, hz)
                })
                .collect()
        };
        let (a, b) = (cohort(&mut rng, na), cohort(&mut rng, nb));
        let c = compare(&refs(&a), &refs(&b), &CompareOptions::default());
        let best = c.functions.iter().map(|f| f.significance).max().unwrap();
        for (level, count) in any.iter_mut().enumerate() {
            if best as usize >= level {
                *count += 1;
            }
        }
        for f in c.functions.iter().filter(|f| f.tested) {
            tested += 1;
            below += usize::from(f.p_value < 0.05);
        }
    }
    (any, below as f64 / tested as f64)
}

#[test]
fn aa_comparisons_rarely_claim_a_difference() {
    // 30 vs 30 requests: the normal approximation.
    let (any, p05) = aa_runs(200, 30, 1000);
    println!(
        "A/A 30 vs 30, 200 runs: any low+ {}, medium+ {}, high {}; raw p < 0.05 in {:.1}% of tests",
        any[1],
        any[2],
        any[3],
        p05 * 100.0
    );
    assert!(any[3] <= 2, "high in {} of 200 runs", any[3]);
    assert!(any[2] <= 10, "medium or better in {} of 200 runs", any[2]);
    // The test itself is calibrated, not just throttled by the correction.
    assert!(p05 < 0.07, "raw p < 0.05 in {:.3} of tests", p05);
}

#[test]
fn aa_comparisons_of_small_cohorts_rarely_claim_a_difference() {
    // 8 vs 8 requests: the exact distribution. The effect floor rarely helps here (chance
    // differences of 8 requests exceed 5 pp), so this is the level of the test and the
    // correction alone: 1,000 runs to measure it more finely than 200 could.
    let (any, p05) = aa_runs(1000, 8, 100_000);
    println!(
        "A/A 8 vs 8, 1000 runs: any low+ {}, medium+ {}, high {}; raw p < 0.05 in {:.1}% of tests",
        any[1],
        any[2],
        any[3],
        p05 * 100.0
    );
    assert!(any[3] <= 10, "high in {} of 1000 runs", any[3]);
    assert!(any[2] <= 50, "medium or better in {} of 1000 runs", any[2]);
    assert!(p05 <= 0.05, "raw p < 0.05 in {:.3} of tests", p05);
}

#[test]
fn aa_comparisons_of_a_few_requests_against_many_rarely_claim_a_difference() {
    // The exact test for a small cohort against a larger one.
    for (sizes, seed) in [((3, 100), 200_000), ((10, 150), 300_000)] {
        let (any, p05) = aa_runs_unbalanced(200, sizes, seed);
        println!(
            "A/A {} vs {}, 200 runs: any low+ {}, medium+ {}, high {}; raw p < 0.05 in {:.1}% \
             of tests",
            sizes.0,
            sizes.1,
            any[1],
            any[2],
            any[3],
            p05 * 100.0
        );
        // At the nominal 5 % of runs, 200 runs see more than 16 in about 1 % of cases.
        assert!(any[3] <= 2, "high in {} of 200 runs", any[3]);
        assert!(any[2] <= 16, "medium or better in {} of 200 runs", any[2]);
        assert!(p05 <= 0.06, "raw p < 0.05 in {:.3} of tests", p05);
    }
}

#[test]
fn functions_in_one_cohort_only_are_marked() {
    let mut rng = Rng(7);
    let a: Vec<Profile> = (0..10)
        .map(|_| {
            request(
                &mut rng,
                &[("main;work", 1.0), ("main;only_a", 1.0)],
                100,
                99,
            )
        })
        .collect();
    let b: Vec<Profile> = (0..10)
        .map(|_| {
            request(
                &mut rng,
                &[("main;work", 1.0), ("main;only_b", 0.2)],
                100,
                99,
            )
        })
        .collect();
    let c = compare(&refs(&a), &refs(&b), &CompareOptions::default());
    assert_eq!(find(&c, "only_a").only_in, Some(Cohort::A));
    assert_eq!(find(&c, "only_b").only_in, Some(Cohort::B));
    assert_eq!(find(&c, "work").only_in, None);
    assert_eq!(find(&c, "only_a").significance, Significance::High);
    assert!(find(&c, "only_b").delta_pp < -10.0);
    assert_eq!(find(&c, "only_b").significance, Significance::High);
    assert_eq!(c.tests, 4);
}

#[test]
fn one_request_per_cohort_makes_no_claim() {
    let mut rng = Rng(3);
    let a = request(&mut rng, &[("main;slow", 9.0), ("main;x", 1.0)], 500, 99);
    let b = request(&mut rng, &[("main;fast", 9.0), ("main;x", 1.0)], 500, 99);
    let c = compare(&[&a], &[&b], &CompareOptions::default());
    assert!(
        c.functions
            .iter()
            .all(|f| f.significance == Significance::None)
    );
    assert_eq!(c.verdict, None);
    assert_eq!(find(&c, "slow").p_value, 1.0);
    assert!((find(&c, "slow").delta_pp - 90.0).abs() < 5.0);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("cohort A has only 1 request")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn small_cohorts_never_reach_high() {
    let mut rng = Rng(11);
    let mut cohort = |stacks: &[(&str, f64)], n| -> Vec<Profile> {
        (0..n).map(|_| request(&mut rng, stacks, 300, 99)).collect()
    };
    let a = cohort(&[("main;slow", 9.0), ("main;x", 1.0)], 4);
    let b = cohort(&[("main;fast", 9.0), ("main;x", 1.0)], 40);
    let c = compare(&refs(&a), &refs(&b), &CompareOptions::default());
    let slow = find(&c, "slow");
    assert_eq!(slow.significance, Significance::Medium, "{slow:?}");
    assert!(slow.q_value < 0.01 && slow.effect_size == 1.0);
    assert!(c.warnings.iter().any(|w| w.contains("capped at medium")));
}

#[test]
fn empty_cohorts_give_warnings_and_no_significance() {
    let mut rng = Rng(5);
    let p = request(&mut rng, &[("main;work", 1.0)], 50, 99);
    for (a, b) in [(vec![], vec![]), (vec![&p], vec![]), (vec![], vec![&p, &p])] {
        let c = compare(&a, &b, &CompareOptions::default());
        assert_eq!(c.verdict, None);
        assert_eq!(c.tests, 0);
        assert!(
            c.functions
                .iter()
                .all(|f| { f.significance == Significance::None && f.p_value == 1.0 && !f.tested })
        );
        let empty = usize::from(a.is_empty()) + usize::from(b.is_empty());
        assert_eq!(
            c.warnings.iter().filter(|w| w.contains("is empty")).count(),
            empty,
            "{:?}",
            c.warnings
        );
        assert_eq!(c.a.requests, a.len());
        assert_eq!(
            c.a.mean_per_request,
            if a.is_empty() {
                0.0
            } else {
                p.total_cpu_ns() as f64 / 1e6
            }
        );
    }
}

#[test]
fn requests_without_cpu_count_in_cpu_time_not_in_shares() {
    let mut rng = Rng(9);
    let a: Vec<Profile> = (0..6)
        .map(|_| request(&mut rng, &[("main;work", 1.0)], 99, 99))
        .collect();
    let mut b: Vec<Profile> = (0..6)
        .map(|_| request(&mut rng, &[("main;work", 1.0)], 99, 99))
        .collect();
    b.extend((0..6).map(|_| Profile::new()));
    let c = compare(&refs(&a), &refs(&b), &CompareOptions::default());
    let work = find(&c, "work");
    assert_eq!(work.delta_pp, 0.0);
    assert!((work.a_per_request - 1000.0).abs() < 1e-6);
    assert!((work.b_per_request - 500.0).abs() < 1e-6);
    assert_eq!((c.b.requests, c.b.requests_with_value), (12, 6));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("6 of 12 requests have no CPU samples"))
    );
}

#[test]
fn mixed_frequencies_with_the_same_cpu_time_show_no_difference() {
    let at = |hz: u32| -> Vec<Profile> {
        (0..10)
            .map(|_| {
                let mut p = Profile::new();
                // Two seconds of CPU, half in each function.
                p.add(&frames("main;parse"), u64::from(hz), hz);
                p.add(&frames("main;query"), u64::from(hz), hz);
                p
            })
            .collect()
    };
    let (a, b) = (at(99), at(499));
    let c = compare(&refs(&a), &refs(&b), &CompareOptions::default());
    for f in &c.functions {
        assert_eq!(f.delta_pp, 0.0, "{f:?}");
        assert_eq!(f.a_per_request, f.b_per_request, "{f:?}");
        assert_eq!(f.significance, Significance::None);
    }
    assert_eq!(c.a.value, c.b.value);
    assert_eq!((c.a.samples, c.b.samples), (1980, 9980));
    assert!(
        c.warnings.iter().any(|w| w.contains("(99, 499 Hz)")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn recursion_counts_once_per_stack() {
    let mut p = Profile::new();
    p.add(&frames("main;walk;walk;walk"), 3, 100);
    p.add(&frames("main;other"), 1, 100);
    let c = compare(&[&p], &[&p], &CompareOptions::default());
    let walk = find(&c, "walk");
    assert_eq!((walk.a_per_request, walk.a_self_per_request), (30.0, 30.0));
    assert_eq!(walk.a_share_pct, 75.0);
}

#[test]
fn top_and_min_significance_filter_the_report() {
    let (slow, fast) = planted(1);
    let all = compare(&refs(&slow), &refs(&fast), &CompareOptions::default());
    let top2 = compare(
        &refs(&slow),
        &refs(&fast),
        &CompareOptions {
            top: 2,
            ..CompareOptions::default()
        },
    );
    assert_eq!(top2.functions, all.functions[..2]);
    assert_eq!(top2.verdict, all.verdict);
    let high = compare(
        &refs(&slow),
        &refs(&fast),
        &CompareOptions {
            min_significance: Significance::High,
            ..CompareOptions::default()
        },
    );
    assert!(!high.functions.is_empty());
    assert!(
        high.functions
            .iter()
            .all(|f| f.significance == Significance::High)
    );
    // Sorted: significant first, by |delta| within each group.
    let first_none = all
        .functions
        .iter()
        .position(|f| f.significance == Significance::None)
        .unwrap();
    assert!(
        all.functions[first_none..]
            .iter()
            .all(|f| f.significance == Significance::None)
    );
    for w in all.functions[..first_none].windows(2) {
        assert!(w[0].delta_pp.abs() >= w[1].delta_pp.abs());
    }
}

#[test]
fn significance_parses_prints_and_orders() {
    for s in ["none", "low", "medium", "high"] {
        assert_eq!(s.parse::<Significance>().unwrap().to_string(), s);
    }
    assert_eq!(" High ".parse::<Significance>(), Ok(Significance::High));
    assert!("strong".parse::<Significance>().is_err());
    assert!(Significance::None < Significance::Low);
    assert!(Significance::Low < Significance::Medium);
    assert!(Significance::Medium < Significance::High);
}

#[test]
fn comparison_serializes_to_json() {
    let (slow, fast) = planted(2);
    let c = compare(&refs(&slow), &refs(&fast), &CompareOptions::default());
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["functions"][0]["function"], "validate_signature");
    assert_eq!(json["functions"][0]["significance"], "high");
    assert_eq!(json["functions"][0]["only_in"], serde_json::Value::Null);
    assert_eq!(json["a"]["requests"], 20);
}

// Mann–Whitney and Benjamini–Hochberg against known values.

#[test]
fn mann_whitney_matches_the_textbook_example() {
    // scipy.stats.mannwhitneyu docs: U = 17; exact p = 14/126 (two-sided; 7 of the 126
    // ways to choose 4 ranks of 9 give U ≤ 3); asymptotic p = 0.11134688653314041.
    let males = [19.0, 22.0, 16.0, 29.0, 24.0];
    let females = [20.0, 11.0, 17.0, 12.0];
    let r = mann_whitney(&males, &females);
    assert_eq!(r.u, 17.0);
    assert!((r.p_value - 14.0 / 126.0).abs() < 1e-12, "{r:?}");
    assert!((r.effect_size - (2.0 * 17.0 / 20.0 - 1.0)).abs() < 1e-12);
    assert!((normal_p(17.0, 5, 4, 0.0) - 0.11134688653314041).abs() < 1e-9);
    // Swapping the samples: U' = nA·nB − U, same p, opposite effect.
    let s = mann_whitney(&females, &males);
    assert_eq!(s.u, 3.0);
    assert_eq!(s.p_value, r.p_value);
    assert_eq!(s.effect_size, -r.effect_size);
}

#[test]
fn mann_whitney_handles_ties() {
    // Ranks 1 | 3 3 3 | 5.5 5.5 | 7 | 8: R_A = 1 + 3 + 3 + 5.5 = 12.5, U = 12.5 − 10 = 2.5;
    // ties (3, 2): Σ t³ − t = 24 + 6 = 30. Exact (by enumeration of the 70 splits): 14/70.
    let a = [1.0, 2.0, 2.0, 3.0];
    let b = [2.0, 3.0, 4.0, 5.0];
    let r = mann_whitney(&a, &b);
    assert_eq!(r.u, 2.5);
    assert!((r.p_value - 0.2).abs() < 1e-12, "{r:?}");
    assert_eq!(tie_term(&doubled_midranks(&a, &b)), 30.0);
    // σ² = 16/12 · (9 − 30/56), z = (5.5 − 0.5)/σ, p = 2·(1 − Φ(z)).
    assert!((normal_p(2.5, 4, 4, 30.0) - 0.13665824773814753).abs() < 1e-9);
    // All values equal: no evidence at all.
    assert_eq!(mann_whitney(&[0.0; 5], &[0.0; 7]).p_value, 1.0);
    assert_eq!(mann_whitney(&[], &[1.0]).p_value, 1.0);
}

#[test]
fn exact_distribution_matches_enumeration() {
    let mut rng = Rng(99);
    for _ in 0..200 {
        let na = rng.range(1, 6) as usize;
        let nb = rng.range(1, 7) as usize;
        // Values on a coarse grid, so ties are common.
        let mut draw = |n| -> Vec<f64> { (0..n).map(|_| rng.range(0, 4) as f64).collect() };
        let (a, b) = (draw(na), draw(nb));
        let ranks = doubled_midranks(&a, &b);
        let doubled: Vec<u64> = ranks.iter().map(|r| r.0).collect();
        let observed: u64 = ranks.iter().filter(|r| r.1).map(|r| r.0).sum();
        let n = na + nb;
        // Twice the smaller tail: ties make the distribution asymmetric.
        let (mut lower, mut upper, mut total) = (0u64, 0u64, 0u64);
        for mask in 0u32..1 << n {
            if mask.count_ones() as usize != na {
                continue;
            }
            let s: u64 = (0..n)
                .filter(|i| mask >> i & 1 == 1)
                .map(|i| doubled[i])
                .sum();
            total += 1;
            lower += u64::from(s <= observed);
            upper += u64::from(s >= observed);
        }
        let want = (2.0 * lower.min(upper) as f64 / total as f64).min(1.0);
        let got = exact_p(&doubled, na, observed);
        assert!((got - want).abs() < 1e-12, "{a:?} {b:?}: {got} vs {want}");
    }
}

#[test]
fn normal_approximation_is_close_to_exact_at_the_switch() {
    let a: Vec<f64> = (0..15).map(|i| f64::from(i) + 4.5).collect();
    let b: Vec<f64> = (0..15).map(f64::from).collect();
    let ranks = doubled_midranks(&a, &b);
    let doubled: Vec<u64> = ranks.iter().map(|r| r.0).collect();
    let observed: u64 = ranks.iter().filter(|r| r.1).map(|r| r.0).sum();
    let r = mann_whitney(&a, &b);
    let exact = exact_p(&doubled, 15, observed);
    let normal = normal_p(r.u, 15, 15, 0.0);
    assert!((exact - normal).abs() < 0.005, "{exact} vs {normal}");
}

#[test]
fn transformed_distribution_matches_the_subset_sum_table() {
    // Beyond 30 values the exact distribution of a small cohort's rank sum comes from a
    // Fourier transform; the subset-sum table is the reference, ties and all.
    let mut rng = Rng(7);
    for _ in 0..60 {
        let k = rng.range(1, 10) as usize;
        let n = rng.range(31, 70) as usize;
        let grid = rng.range(2, 60);
        let values: Vec<f64> = (0..n).map(|_| rng.range(0, grid) as f64).collect();
        let ranks = doubled_midranks(&values[..k], &values[k..]);
        let doubled: Vec<u64> = ranks.iter().map(|r| r.0).collect();
        let counts = rank_sum_counts(&doubled, k);
        let total: f64 = counts.iter().sum();
        let probabilities = rank_sum_probabilities(&doubled, k);
        for (sum, count) in counts.iter().enumerate() {
            let p = probabilities.get(sum).copied().unwrap_or(0.0);
            assert!(
                (count / total - p).abs() < 1e-12,
                "k {k}, n {n}, sum {sum}: {} vs {p}",
                count / total
            );
        }
    }
}

#[test]
fn the_smaller_cohort_decides_whether_the_test_is_exact() {
    assert!(uses_exact_test(15, 15));
    assert!(!uses_exact_test(16, 15));
    assert!(uses_exact_test(1, 5000) && uses_exact_test(5000, 1));
    assert!(uses_exact_test(10, 5000));
    assert!(!uses_exact_test(11, 5000));
    assert!(!uses_exact_test(10, 9_991));
}

#[test]
fn one_value_against_many_has_p_at_least_two_over_n_plus_one() {
    // 1 vs 375, all of B tied at 0: the normal approximation with its tie correction
    // gave p ≈ 0; the exact one-sided tail is 1/376, so p = 2/376.
    let b = vec![0.0; 375];
    let r = mann_whitney(&[0.4], &b);
    assert!((r.p_value - 2.0 / 376.0).abs() < 1e-12, "{r:?}");
    assert_eq!(r.effect_size, 1.0);
    assert_eq!(mann_whitney(&b, &[0.4]).p_value, r.p_value);
    // Distinct values, the one above all 5,000 others.
    let b: Vec<f64> = (0..5000).map(|i| f64::from(i) / 5000.0).collect();
    let r = mann_whitney(&[2.0], &b);
    assert!((r.p_value - 2.0 / 5001.0).abs() < 1e-12, "{r:?}");
    // In the middle: no evidence.
    assert_eq!(mann_whitney(&[0.5], &b).p_value, 1.0);
}

#[test]
fn ten_values_against_five_thousand_are_exact() {
    // No ties: the distribution of U is symmetric, the extreme has p = 2 / C(5010, 10),
    // far below anything the normal approximation resolves; one step in from it, the
    // count doubles.
    let b: Vec<f64> = (0..5000).map(f64::from).collect();
    let top: Vec<f64> = (0..10).map(|i| 10_000.0 + f64::from(i)).collect();
    let r = mann_whitney(&top, &b);
    let floor = 2.0 * (-ln_choose(5010, 10)).exp();
    assert!(r.p_value >= floor && r.p_value < 1e-12, "{r:?}");
    // Nine far above, one at the median: a U of 9 × 5000 + 2500.
    let mut mixed = top[..9].to_vec();
    mixed.push(2499.5);
    let r = mann_whitney(&mixed, &b);
    assert_eq!(r.u, 47_500.0);
    // Without ties, a 10-subset with U' = 50,000 − U = u is a partition of u into at
    // most 10 parts of at most 5,000 (the number of B values below each A value), and
    // for u ≤ 2,500 the bound of 5,000 never binds: by conjugation, partitions into
    // parts of at most 10.
    let mut partitions = vec![0f64; 2501];
    partitions[0] = 1.0;
    for part in 1..=10 {
        for u in part..partitions.len() {
            partitions[u] += partitions[u - part];
        }
    }
    let want = 2.0 * partitions.iter().sum::<f64>() / ln_choose(5010, 10).exp();
    // Rounding in the transform is absolute, about 1e-17 here.
    assert!((r.p_value - want).abs() < 1e-14, "{r:?} vs {want}");
    // The normal approximation is conservative in this corner (Σ of 10 uniforms has
    // lighter tails than a normal): the trouble is ties and single requests.
    assert!(normal_p(r.u, 10, 5000, 0.0) > r.p_value);
}

/// One request against many (issue 14: `trace = <id>` against 375 requests was rated
/// medium with q < 0.001): p is never below 2/(n + 1) and one request is a lead at best.
#[test]
fn one_request_against_many_is_never_more_than_a_lead() {
    for n in [375usize, 5000] {
        let mut rng = Rng(n as u64);
        let many: Vec<Profile> = (0..n)
            .map(|_| {
                let stacks = background(&mut rng, 0.5, 1.0);
                request(&mut rng, &stacks, 40, 99)
            })
            .collect();
        // The outlier: 95 % in a function no other request has.
        let mut stacks = background(&mut rng, 0.5, 0.05);
        stacks.push(("main;handle_request;stuck_in_regex", 0.95));
        let one = request(&mut rng, &stacks, 400, 99);
        let floor = 2.0 / (n as f64 + 1.0);
        for (a, b) in [(vec![&one], refs(&many)), (refs(&many), vec![&one])] {
            let c = compare(&a, &b, &CompareOptions::default());
            for f in c.functions.iter().filter(|f| f.tested) {
                assert!(f.p_value >= floor * (1.0 - 1e-9), "{f:?}");
                assert!(f.significance <= Significance::Low, "{f:?}");
            }
            let stuck = find(&c, "stuck_in_regex");
            assert!((stuck.p_value - floor).abs() < 1e-9, "{stuck:?}");
            assert!(stuck.delta_pp.abs() > 80.0);
            assert_eq!(stuck.significance, Significance::Low);
            assert_eq!(c.verdict, None);
            assert!(
                c.warnings.iter().any(|w| w.contains("capped at low")),
                "{:?}",
                c.warnings
            );
        }
    }
}

/// A planted difference in a few requests is still found against many.
#[test]
fn a_few_requests_against_many_still_show_a_planted_difference() {
    for (few, many) in [(5usize, 375usize), (10, 5000)] {
        let mut rng = Rng(few as u64);
        let slow: Vec<Profile> = (0..few)
            .map(|_| {
                let v = (0.6 + 0.1 * rng.normal()).clamp(0.3, 0.9);
                let mut stacks = background(&mut rng, 0.5, 1.0 - v);
                stacks.push((VALIDATE, v));
                request(&mut rng, &stacks, 200, 99)
            })
            .collect();
        let fast: Vec<Profile> = (0..many)
            .map(|_| {
                let stacks = background(&mut rng, 0.5, 1.0);
                request(&mut rng, &stacks, 40, 99)
            })
            .collect();
        let c = compare(&refs(&slow), &refs(&fast), &CompareOptions::default());
        let top = &c.functions[0];
        assert_eq!(top.function, "validate_signature", "{:#?}", c.functions);
        assert_eq!(top.significance, Significance::High, "{top:?}");
        let verdict = c.verdict.expect("a verdict");
        assert!(
            verdict.starts_with("validate_signature is hotter in A"),
            "{verdict}"
        );
    }
}

#[test]
fn benjamini_hochberg_matches_hand_computation() {
    // Sorted 0.005, 0.01, 0.03, 0.04 → ·4/1, ·4/2, ·4/3, ·4/4 = 0.02, 0.02, 0.04, 0.04.
    let q = benjamini_hochberg(&[0.01, 0.04, 0.03, 0.005]);
    for (got, want) in q.iter().zip([0.02, 0.04, 0.04, 0.02]) {
        assert!((got - want).abs() < 1e-12, "{q:?}");
    }
    // Step-up: 0.02·2/1 = 0.04 is lowered to the next one's 0.03·2/2 = 0.03.
    let q = benjamini_hochberg(&[0.02, 0.03]);
    assert!((q[0] - 0.03).abs() < 1e-12 && (q[1] - 0.03).abs() < 1e-12);
    // Never above 1; the empty set is fine.
    assert_eq!(benjamini_hochberg(&[0.9, 0.8, 1.0]), vec![1.0, 1.0, 1.0]);
    assert!(benjamini_hochberg(&[]).is_empty());
}

// Differential flame graphs.

#[test]
fn differential_folded_gives_mean_microseconds_per_request() {
    let mut a1 = Profile::new();
    a1.add(&frames("main;slow"), 3, 100); // 30 ms
    a1.add(&frames("main;shared"), 1, 100); // 10 ms
    let mut a2 = Profile::new();
    a2.add(&frames("main;slow"), 1, 100); // 10 ms
    let mut b = Profile::new();
    b.add(&frames("main;shared"), 2, 100); // 20 ms
    b.add(&frames("main;fast"), 1, 1000); // 1 ms
    let folded = differential_folded(&[&a1, &a2], &[&b], ProfileType::Cpu);
    assert_eq!(
        folded,
        "main;fast 0 1000\nmain;shared 5000 20000\nmain;slow 20000 0\n"
    );
    assert_eq!(differential_folded(&[], &[], ProfileType::Cpu), "");
}

#[test]
fn differential_svg_is_red_where_a_is_hotter() {
    let folded = "main;slow 20000 0\nmain;shared 5000 20000\n";
    let mut svg = Vec::new();
    write_differential_svg(folded, ProfileType::Cpu, "slow vs fast", &mut svg).unwrap();
    let svg = String::from_utf8(svg).unwrap();
    assert!(svg.contains("slow vs fast"));
    // Widths are A's; red rgb(255,c,c) where A is hotter, blue rgb(c,c,255) where B is.
    assert!(svg.contains(
        "<title>slow (20,000 µs, 80.00%; +80.00%)</title><rect x=\"20.0000%\" y=\"61\" \
         width=\"80.0000%\" height=\"15\" fill=\"rgb(255,100,100)\""
    ));
    assert!(svg.contains(
        "<title>shared (5,000 µs, 20.00%; -60.00%)</title><rect x=\"0.0000%\" y=\"61\" \
         width=\"20.0000%\" height=\"15\" fill=\"rgb(137,137,255)\""
    ));

    let mut empty = Vec::new();
    write_differential_svg("", ProfileType::Cpu, "nothing", &mut empty).unwrap();
    assert!(
        String::from_utf8(empty)
            .unwrap()
            .contains("no samples in cohort A")
    );
    assert!(write_differential_svg("main;x 12", ProfileType::Cpu, "bad", &mut Vec::new()).is_err());
}

/// The slow requests spend 88 % in `validate_signature`; the fast ones 92 % in a fast
/// path the slow ones skip. Both differences are real, the fast path's |delta| is the
/// larger, and cohort A (the one being explained) is named by what it does more.
#[test]
fn what_cohort_a_does_more_comes_first_and_is_the_verdict() {
    let mut rng = Rng(11);
    let a: Vec<Profile> = (0..8)
        .map(|_| {
            request(
                &mut rng,
                &[("main;validate_signature", 0.88), ("main;other", 0.12)],
                40,
                99,
            )
        })
        .collect();
    let b: Vec<Profile> = (0..30)
        .map(|_| {
            request(
                &mut rng,
                &[("main;render_receipt", 0.92), ("main;other", 0.08)],
                40,
                99,
            )
        })
        .collect();
    let c = compare(&refs(&a), &refs(&b), &CompareOptions::default());
    assert!(
        find(&c, "render_receipt").delta_pp.abs() > find(&c, "validate_signature").delta_pp.abs()
    );
    assert_eq!(c.functions[0].function, "validate_signature");
    assert_eq!(c.functions[0].significance, Significance::High);
    assert_eq!(c.functions[1].function, "render_receipt");
    let verdict = c.verdict.expect("a verdict");
    assert!(
        verdict.starts_with("validate_signature is hotter in A"),
        "{verdict}"
    );
}

/// Issue 14: a function V8 ran in two tiers (`JS:*f` in some requests, `JS:^f` in
/// others) was two functions, hotter in opposite cohorts.
#[test]
fn jit_tiers_of_one_function_compare_as_one() {
    let js =
        |stack: &str| -> Vec<Frame> { stack.split(';').map(|f| Frame::user(f, "[jit]")).collect() };
    let cohort = |tier: char| -> Vec<Profile> {
        (0..12)
            .map(|_| {
                // Stored dictionaries may hold tiered names: build them as stored.
                let parser = format!("JS:{tier}parserOnIncoming node:_http_server:1050:27");
                let frames = js(&format!("JS:~main;{parser}"));
                let mut p = Profile::from_parts(frames, Vec::new());
                p.stacks.push(crate::profile::WeightedStack {
                    frames: vec![0, 1],
                    samples: 80,
                    cpu_ns: 800_000_000,
                    off_cpu_ns: 0,
                    memory_bytes: 0,
                });
                p.add(&js("JS:~main;JS:~other"), 20, 100);
                p
            })
            .collect()
    };
    let (a, b) = (cohort('*'), cohort('^'));
    let c = compare(&refs(&a), &refs(&b), &CompareOptions::default());
    let parser: Vec<&FunctionDiff> = c
        .functions
        .iter()
        .filter(|f| f.function.contains("parserOnIncoming"))
        .collect();
    assert_eq!(parser.len(), 1, "{:#?}", c.functions);
    assert_eq!(
        parser[0].function,
        "JS:parserOnIncoming node:_http_server:1050:27"
    );
    assert_eq!(parser[0].delta_pp, 0.0);
    assert_eq!(parser[0].significance, Significance::None);
    assert!(
        c.functions
            .iter()
            .all(|f| f.significance == Significance::None)
    );
    assert_eq!(c.verdict, None);
}

/// Functions on every stack in both cohorts (`_start`, `main`) have a delta of 0 and
/// sort after every function that differs.
#[test]
fn the_trunk_does_not_crowd_the_top_of_a_comparison() {
    let (slow, fast) = planted(5);
    let c = compare(&refs(&slow), &refs(&fast), &CompareOptions::default());
    let trunk = c.functions.len() - 2;
    let names: Vec<&str> = c.functions[trunk..]
        .iter()
        .map(|f| f.function.as_str())
        .collect();
    assert_eq!(names, ["main", "handle_request"], "{:#?}", c.functions);
    assert!(c.functions[..trunk].iter().all(|f| f.delta_pp.abs() > 0.0));
    assert!(c.functions[trunk..].iter().all(|f| f.delta_pp == 0.0));
}

// Profile types: where the requests waited.

/// Issue 16: cohort A's requests wait ~500 ms for a lock in `acquire_ledger_lock`,
/// cohort B's do not; both cohorts' CPU profiles come from one distribution and both
/// wait a little on the network.
fn lock_cohorts(seed: u64) -> (Vec<Profile>, Vec<Profile>) {
    let mut rng = Rng(seed);
    let mut cohort = |waits_for_lock: bool| -> Vec<Profile> {
        (0..20)
            .map(|_| {
                let stacks = background(&mut rng, 0.5, 1.0);
                let samples = rng.range(20, 60);
                // ~20-60 ms of CPU at 999 Hz.
                let mut p = request(&mut rng, &stacks, samples, 999);
                let network_ns = rng.range(1_000_000, 5_000_000);
                p.add_off_cpu(
                    &frames("main;handle_request;query_db;socket_read"),
                    WaitCause::Network,
                    rng.range(1, 3),
                    network_ns,
                );
                if waits_for_lock {
                    let lock_ns = rng.range(400_000_000, 600_000_000);
                    p.add_off_cpu(
                        &frames("main;handle_request;acquire_ledger_lock"),
                        WaitCause::Lock,
                        1,
                        lock_ns,
                    );
                }
                p
            })
            .collect()
    };
    let slow = cohort(true);
    let fast = cohort(false);
    (slow, fast)
}

fn compare_as(a: &[Profile], b: &[Profile], profile_type: ProfileType) -> Comparison {
    compare(
        &refs(a),
        &refs(b),
        &CompareOptions {
            profile_type,
            ..CompareOptions::default()
        },
    )
}

#[test]
fn a_wall_comparison_names_the_function_that_waited_for_the_lock() {
    let (slow, fast) = lock_cohorts(16);
    let c = compare_as(&slow, &fast, ProfileType::Wall);
    assert_eq!(c.profile_type, ProfileType::Wall);
    let top = &c.functions[0];
    assert_eq!(top.function, "acquire_ledger_lock", "{:#?}", c.functions);
    assert_eq!(top.kind, FrameKind::User);
    assert_eq!(top.significance, Significance::High);
    assert!(top.delta_pp > 85.0, "{top:?}");
    assert!(
        top.a_per_request > 400.0 && top.b_per_request == 0.0,
        "{top:?}"
    );
    // The time is the wait frame's self time; the code is named, not the wait.
    assert_eq!(top.self_delta_pp, 0.0, "{top:?}");
    let wait = &c.functions[1];
    assert!((wait.self_delta_pp - top.delta_pp).abs() < 1e-9, "{wait:?}");
    assert_eq!(wait.function, "[off-cpu: lock]");
    assert_eq!(
        (wait.module.as_str(), wait.kind),
        ("[off-cpu]", FrameKind::Wait)
    );
    assert_eq!(wait.delta_pp, top.delta_pp);
    // The lock is one hypothesis with its only caller, not two.
    assert_eq!(wait.q_value, top.q_value);
    let verdict = c.verdict.as_deref().expect("a verdict");
    assert!(
        verdict.starts_with("acquire_ledger_lock is hotter in A: +")
            && verdict.contains(" pp of request wall-clock time, ")
            && verdict.contains(" ms vs 0.0 ms per request, waiting in [off-cpu: lock], high")
            && verdict.ends_with("(q < 0.001, 20 vs 20 requests)"),
        "{verdict}"
    );
    assert!(
        c.a.mean_per_request > 400.0 && c.b.mean_per_request < 100.0,
        "{:?}",
        c.a
    );
    assert_eq!(c.a.requests_with_value, 20);
    assert!(c.a.waiting_share.unwrap() > 0.8, "{:?}", c.a);
    assert!(c.b.waiting_share.unwrap() < 0.2, "{:?}", c.b);

    // Off-CPU alone says the same.
    let off = compare_as(&slow, &fast, ProfileType::Offcpu);
    assert_eq!(off.functions[0].function, "acquire_ledger_lock");
    assert_eq!(off.functions[0].significance, Significance::High);
    assert!(
        off.verdict
            .as_deref()
            .unwrap()
            .contains("pp of request off-CPU time"),
        "{:?}",
        off.verdict
    );
    // Waits are counted, not sampled: no coarse-shares warning for 1-3 waits a request.
    assert!(
        !off.warnings.iter().any(|w| w.contains("coarse")),
        "{:?}",
        off.warnings
    );
}

#[test]
fn a_cpu_comparison_of_waiting_requests_claims_nothing_and_suggests_wall() {
    let (slow, fast) = lock_cohorts(16);
    let c = compare_as(&slow, &fast, ProfileType::Cpu);
    assert!(
        c.functions
            .iter()
            .all(|f| f.significance < Significance::High && f.kind != FrameKind::Wait),
        "{:#?}",
        c.functions
    );
    assert!(
        c.functions
            .iter()
            .all(|f| f.function != "acquire_ledger_lock")
    );
    let verdict = c.verdict.as_deref().expect("a verdict");
    assert!(
        verdict.starts_with(
            "no function explains the difference on the CPU: cohort A's requests spent 9"
        ) && verdict.contains("% of their recorded time waiting (lock 9")
            && verdict.ends_with("%); compare with --type wall"),
        "{verdict}"
    );
    // CPU time only: the waits are not in the cohort's time.
    assert!(c.a.mean_per_request < 100.0, "{:?}", c.a);

    // Cohorts that did not wait get no such suggestion.
    let (_, fast_again) = lock_cohorts(17);
    let calm = compare_as(&fast, &fast_again, ProfileType::Cpu);
    assert!(
        calm.verdict
            .as_deref()
            .is_none_or(|v| !v.contains("--type wall")),
        "{:?}",
        calm.verdict
    );
}

#[test]
fn differential_folded_by_type() {
    let mut a = Profile::new();
    a.add(&frames("main;work"), 2, 100); // 20 ms
    a.add_off_cpu(&frames("main;lock"), WaitCause::Lock, 1, 500_000_000);
    let mut b = Profile::new();
    b.add(&frames("main;work"), 4, 100); // 40 ms
    assert_eq!(
        differential_folded(&[&a], &[&b], ProfileType::Cpu),
        "main;work 20000 40000\n"
    );
    assert_eq!(
        differential_folded(&[&a], &[&b], ProfileType::Offcpu),
        "main;lock;[off-cpu: lock] 500000 0\n"
    );
    assert_eq!(
        differential_folded(&[&a], &[&b], ProfileType::Wall),
        "main;lock;[off-cpu: lock] 500000 0\nmain;work 20000 40000\n"
    );
    let mut svg = Vec::new();
    let folded = differential_folded(&[&a], &[&b], ProfileType::Wall);
    write_differential_svg(&folded, ProfileType::Wall, "slow vs fast", &mut svg).unwrap();
    let svg = String::from_utf8(svg).unwrap();
    assert!(
        svg.contains("widths: cohort A, mean wall-clock time per request, µs"),
        "{svg}"
    );
}

/// `n` slow requests that make ~300 MiB resident under build_snapshot → grab_block in
/// ~600 records (plus a little in parse, and CPU samples at 100 Hz), and `n` fast ones
/// that make ~2 MiB resident in parse only (CPU samples at 49 Hz).
fn memory_cohorts(n: usize) -> (Vec<Profile>, Vec<Profile>) {
    let mut rng = Rng(17);
    let cohort = |rng: &mut Rng, slow: bool| -> Vec<Profile> {
        (0..n)
            .map(|_| {
                let mut p = Profile::new();
                let hz = if slow { 100 } else { 49 };
                p.add(
                    &frames("main;handle_request;validate"),
                    rng.range(5, 15),
                    hz,
                );
                let parse_records = rng.range(3, 6);
                p.add_memory(
                    &frames("main;handle_request;parse"),
                    4096,
                    parse_records,
                    parse_records * (512 << 10),
                );
                if slow {
                    let records = rng.range(560, 640);
                    p.add_memory(
                        &frames("main;handle_request;build_snapshot;grab_block"),
                        4096,
                        records,
                        records * (512 << 10),
                    );
                }
                p
            })
            .collect()
    };
    let slow = cohort(&mut rng, true);
    let fast = cohort(&mut rng, false);
    (slow, fast)
}

#[test]
fn a_memory_comparison_names_the_chain_that_made_memory_resident() {
    let (slow, fast) = memory_cohorts(12);
    let c = compare_as(&slow, &fast, ProfileType::Memory);
    assert_eq!(c.profile_type, ProfileType::Memory);
    // The chain with one delta: its outermost code first, its page frame after the code.
    let names: Vec<&str> = c.functions.iter().map(|f| f.function.as_str()).collect();
    assert_eq!(
        names[..2],
        ["build_snapshot", "grab_block"],
        "{:#?}",
        c.functions
    );
    let top = &c.functions[0];
    assert_eq!(top.significance, Significance::High, "{top:?}");
    assert!(top.delta_pp > 95.0, "{top:?}");
    // Per-request values are bytes: ~300 MiB against none.
    assert!(
        (280.0..320.0).contains(&(top.a_per_request / f64::from(1 << 20)))
            && top.b_per_request == 0.0,
        "{top:?}"
    );
    assert!(
        c.a.mean_per_request > 250.0 * f64::from(1 << 20),
        "{:?}",
        c.a
    );
    assert!(c.b.mean_per_request < 4.0 * f64::from(1 << 20), "{:?}", c.b);
    assert_eq!(
        c.a.samples,
        slow.iter()
            .map(|p| p.count(ProfileType::Memory))
            .sum::<u64>()
    );
    let verdict = c.verdict.as_deref().expect("a verdict");
    assert!(
        verdict.starts_with("cohort A made ")
            && verdict.contains(" MiB more memory resident per request than cohort B (")
            && verdict
                .contains("% of it in build_snapshot → grab_block (vs 0% in B), high significance")
            && verdict.ends_with("(q < 0.001, 12 vs 12 requests)")
            && !verdict.contains(" ms"),
        "{verdict}"
    );
    // Memory records are not taken at a frequency: no frequency warning, although the
    // cohorts' CPU samples were taken at 100 and 49 Hz. B's few records are coarse.
    assert_eq!(
        c.warnings,
        [
            "cohort B: a median of 6 memory records per request: per-request shares are \
          coarse, so only large differences show (more requests help; one record stands \
          for ~512 KiB made resident)"
        ]
    );

    // The same cohorts compared on the CPU see no difference: memory stacks stay out.
    let cpu = compare_as(&slow, &fast, ProfileType::Cpu);
    assert!(cpu.verdict.is_none(), "{:?}", cpu.verdict);
    assert!(
        cpu.functions
            .iter()
            .all(|f| f.kind != FrameKind::Page && f.function != "grab_block")
    );

    // The differential stacks are mean bytes per request.
    let diff = differential_folded(&refs(&slow), &refs(&fast), ProfileType::Memory);
    let line = diff
        .lines()
        .find(|l| {
            l.starts_with("main;handle_request;build_snapshot;grab_block;[memory: 4 KiB page] ")
        })
        .expect("the chain's line");
    let bytes: Vec<u64> = line
        .rsplit(' ')
        .take(2)
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(bytes[0], 0, "none in B: {line}");
    assert!(bytes[1] > 250 << 20, "{line}");
}

#[test]
fn memory_requests_with_few_records_are_warned_about() {
    let few: Vec<Profile> = (0..6)
        .map(|_| {
            let mut p = Profile::new();
            p.add_memory(&frames("main;grab_block"), 4096, 2, 1 << 20);
            p
        })
        .collect();
    let c = compare_as(&few, &few, ProfileType::Memory);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("a median of 2 memory records per request")),
        "{:?}",
        c.warnings
    );
}
