//! Symbolization speed: realistic user stacks of this very process (addresses of a few
//! dozen functions of this binary, and of libc), cold (a new `Symbolizer`) and warm.

use crate::workload::Rng;
use anyhow::Result;
use coral_analysis::profile::UNKNOWN_FUNCTION;
use coral_symbolizer::Symbolizer;
use std::collections::{BTreeMap, HashSet};
use std::hint::black_box;
use std::time::{Duration, Instant};

const STACKS: usize = 300;
const DEPTH: usize = 32;
/// Warm passes after the cold one.
const WARM_PASSES: usize = 50;

/// Functions that end up as frames: distinct bodies (distinct constants), so that the
/// compiler neither inlines nor merges them.
macro_rules! frame_functions {
    ($($name:ident = $k:literal;)*) => {
        $(
            #[inline(never)]
            fn $name(x: u64) -> u64 {
                const K: u64 = $k;
                let mut v = black_box(x);
                for i in 0..3u64 {
                    v = v.wrapping_mul(K).rotate_left((K % 31) as u32) ^ i;
                }
                black_box(v)
            }
        )*
        const FUNCTIONS: &[fn(u64) -> u64] = &[$($name),*];
    };
}

frame_functions! {
    app_main_loop = 0x9e37_79b9_7f4a_7c15;
    app_runtime_block_on = 0xbf58_476d_1ce4_e5b9;
    app_runtime_poll_task = 0x94d0_49bb_1331_11eb;
    app_worker_run = 0xd6e8_feb8_6659_fd93;
    app_http_serve_connection = 0xa076_1d64_78bd_642f;
    app_http_read_request = 0xe703_7ed1_a0b4_28db;
    app_http_parse_headers = 0x8ebc_6af0_9c88_c6e3;
    app_http_route = 0x5899_65cc_7537_4cc3;
    app_middleware_auth = 0x1d8e_4e27_c47d_124f;
    app_middleware_tracing = 0xff51_afd7_ed55_8ccd;
    app_middleware_timeout = 0xc4ce_b9fe_1a85_ec53;
    app_handler_checkout = 0x2545_f491_4f6c_dd1d;
    app_handler_cart = 0x6a09_e667_f3bc_c909;
    app_handler_search = 0xbb67_ae85_84ca_a73b;
    app_service_price_items = 0x3c6e_f372_fe94_f82b;
    app_service_apply_discounts = 0xa54f_f53a_5f1d_36f1;
    app_service_compute_tax = 0x510e_527f_ade6_82d1;
    app_service_reserve_stock = 0x9b05_688c_2b3e_6c1f;
    app_repo_load_cart = 0x1f83_d9ab_fb41_bd6b;
    app_repo_query_rows = 0x5be0_cd19_137e_2179;
    app_db_encode_params = 0x428a_2f98_d728_ae23;
    app_db_decode_row = 0x7137_4491_23ef_65cd;
    app_db_pool_acquire = 0xb5c0_fbcf_ec4d_3b2f;
    app_json_serialize = 0xe9b5_dba5_8189_dbbc;
    app_json_deserialize = 0x3956_c25b_f348_b538;
    app_json_escape_str = 0x59f1_11f1_b605_d019;
    app_hash_map_insert = 0x923f_82a4_af19_4f9b;
    app_hash_map_lookup = 0xab1c_5ed5_da6d_8118;
    app_vec_extend = 0xd807_aa98_a303_0242;
    app_string_format = 0x1283_5b01_4570_6fbe;
    app_crypto_sha256_block = 0x2431_85be_4ee4_b28c;
    app_compress_deflate = 0x550c_7dc3_d5ff_b4e2;
    app_log_record = 0x72be_5d74_f27b_896f;
    app_metrics_observe = 0x80de_b1fe_3b16_96b1;
    app_cache_get = 0x9bdc_06a7_25c7_1235;
    app_cache_put = 0xc19b_f174_cf69_2694;
}

/// libc functions whose addresses appear in the stacks (roots and some leaves).
fn libc_addresses() -> Vec<u64> {
    vec![
        libc::memcpy as *const () as usize as u64,
        libc::memmove as *const () as usize as u64,
        libc::malloc as *const () as usize as u64,
        libc::free as *const () as usize as u64,
        libc::strlen as *const () as usize as u64,
        libc::read as *const () as usize as u64,
        libc::write as *const () as usize as u64,
        libc::pthread_mutex_lock as *const () as usize as u64,
        libc::clock_gettime as *const () as usize as u64,
        libc::epoll_wait as *const () as usize as u64,
    ]
}

/// `STACKS` distinct stacks of `DEPTH` addresses, leaf first (as the sampler gives
/// them): two libc frames at the root (thread start), application frames above, and a
/// leaf that is a libc function one time in three. Leaves point anywhere in the first
/// bytes of a function, callers a few bytes in (return addresses).
fn stacks() -> Vec<Vec<u64>> {
    let app: Vec<u64> = FUNCTIONS.iter().map(|&f| f as usize as u64).collect();
    let libc = libc_addresses();
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(STACKS);
    while out.len() < STACKS {
        let mut stack = Vec::with_capacity(DEPTH);
        stack.push(if rng.below(3) == 0 {
            libc[rng.below(libc.len())] + rng.below(16) as u64
        } else {
            app[rng.below(app.len())] + rng.below(16) as u64
        });
        while stack.len() < DEPTH - 2 {
            stack.push(app[rng.below(app.len())] + 4 + rng.below(12) as u64);
        }
        stack.push(libc[7] + 8);
        stack.push(libc[9] + 8);
        if seen.insert(stack.clone()) {
            out.push(stack);
        }
    }
    out
}

/// How one API is called.
#[derive(Clone, Copy)]
enum Mode {
    Batch,
    PerStack,
}

/// One pass over all stacks; returns the frames produced.
fn pass(symbolizer: &mut Symbolizer, pid: u32, stacks: &[Vec<u64>], mode: Mode) -> usize {
    match mode {
        Mode::Batch => {
            let refs: Vec<&[u64]> = stacks.iter().map(Vec::as_slice).collect();
            black_box(symbolizer.symbolize_user_stacks(pid, &refs))
                .iter()
                .map(Vec::len)
                .sum()
        }
        Mode::PerStack => stacks
            .iter()
            .map(|s| black_box(symbolizer.symbolize_user(pid, s)).len())
            .sum(),
    }
}

pub fn run() -> Result<()> {
    // Call every function once (so that none is optimized out).
    let mut acc = 0u64;
    for f in FUNCTIONS {
        acc = acc.wrapping_add(f(acc));
    }
    black_box(acc);
    let pid = std::process::id();
    let stacks = stacks();
    let per_pass = STACKS * DEPTH;

    // What the frames resolve to, as a check that this measures real lookups.
    let mut modules: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let check = Symbolizer::new()
        .symbolize_user_stacks(pid, &stacks.iter().map(Vec::as_slice).collect::<Vec<_>>());
    for frame in check.iter().flatten() {
        let e = modules.entry(frame.module.clone()).or_default();
        e.0 += 1;
        if frame.function != UNKNOWN_FUNCTION {
            e.1 += 1;
        }
    }

    println!();
    println!(
        "## symbolize: {STACKS} distinct user stacks × {DEPTH} frames (functions of coral-bench and libc), pass 1 cold (new Symbolizer), passes 2..{} warm",
        WARM_PASSES + 1
    );
    println!(
        "| API | cold: frames/s (baseline) | warm: frames/s | warm/cold | warm: µs per stack |"
    );
    println!("|---|---|---|---|---|");
    for (label, mode) in [
        (
            format!("`symbolize_user_stacks`, {STACKS} stacks per call"),
            Mode::Batch,
        ),
        (
            "`symbolize_user`, one stack per call (as the agent's fold)".to_string(),
            Mode::PerStack,
        ),
    ] {
        let mut symbolizer = Symbolizer::new();
        let t = Instant::now();
        let frames = pass(&mut symbolizer, pid, &stacks, mode);
        let cold = t.elapsed();
        anyhow::ensure!(frames == per_pass, "got {frames} frames of {per_pass}");
        let t = Instant::now();
        for _ in 0..WARM_PASSES {
            pass(&mut symbolizer, pid, &stacks, mode);
        }
        let warm = t.elapsed();
        let rate = |frames: usize, d: Duration| frames as f64 / d.as_secs_f64();
        let (cold_rate, warm_rate) = (rate(per_pass, cold), rate(per_pass * WARM_PASSES, warm));
        println!(
            "| {label} | {cold_rate:.0} | {warm_rate:.0} | {:.1} | {:.1} |",
            warm_rate / cold_rate,
            warm.as_secs_f64() * 1e6 / (WARM_PASSES * STACKS) as f64
        );
    }
    let resolved: Vec<String> = modules
        .iter()
        .map(|(m, (n, named))| format!("{m}: {named} of {n} named"))
        .collect();
    println!();
    println!("Frames per module: {}.", resolved.join("; "));
    let example: Vec<&str> = check[0].iter().map(|f| f.function.as_str()).collect();
    println!("A stack, leaf first: {}.", example.join(" ← "));
    Ok(())
}
