//! Memory made resident end to end (needs root): this test process is the workload, as
//! in `offcpu`. Requests touch fresh memory in known functions inside server spans
//! exported by the real OpenTelemetry SDK to an agent with the real eBPF sampler; a
//! trigger with `--types cpu,memory` collects them and `coral query trace-profile
//! --type memory`, `coral query profile-compare --type memory` and the MCP server say
//! where each request made memory resident, while CPU profiles stay CPU only.
//!
//! Memory is sampled (one record per ~512 KiB made resident): the sizes here are large
//! enough that a 20 % tolerance is several standard deviations of the estimate.

use crate::offcpu::{
    compare_slow_with_fast, json, on_own_thread, request_profile, run, server_span,
    trigger_running, wait_for_baseline,
};
use crate::profile::{require_root, validate_signature};
use coral_analysis::profile::{FrameKind, Profile, ProfileType};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracer;
use serde_json::json;
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// What `grab_block` maps and touches.
const BLOCK: usize = 256 * 1024;
/// A slow request's snapshot: 300 MiB.
const SLOW_BLOCKS: usize = 1200;
/// What a fast request touches.
const FAST_BYTES: usize = 2 << 20;
/// Every slow request lasts at least this long (the trigger's bound is 200 ms).
const SLOW_AT_LEAST: Duration = Duration::from_millis(250);
const HUGE_PAGE: usize = 2 << 20;
/// The region a request touches with transparent huge pages.
const HUGE_REGION: usize = 64 << 20;

/// Fresh anonymous memory of its own mapping, unmapped when dropped. The workload maps
/// its blocks itself, as an allocator hands out large blocks: what a request touches is
/// then new memory whatever else the process allocated (a busy test process's heap may
/// hold free chunks that `malloc` would reuse without a fault).
struct Fresh {
    base: *mut u8,
    len: usize,
}

// SAFETY: `Fresh` owns its mapping alone; nothing else refers to it.
#[allow(unsafe_code)]
unsafe impl Send for Fresh {}

#[allow(unsafe_code)]
impl Fresh {
    /// Maps `len` bytes and writes every byte (`memset`: every page faults in).
    fn filled(len: usize) -> Self {
        use nix::libc;
        // SAFETY: a new private anonymous mapping: no existing memory is affected.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap failed");
        // SAFETY: the mapping above is `len` bytes, readable and writable.
        unsafe { std::ptr::write_bytes(base.cast::<u8>(), 1, len) };
        Self {
            base: base.cast(),
            len,
        }
    }
}

#[allow(unsafe_code)]
impl Drop for Fresh {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `filled` made, used by no one else.
        let unmapped = unsafe { nix::libc::munmap(self.base.cast(), self.len) };
        assert_eq!(unmapped, 0, "munmap failed");
    }
}

/// One block of fresh memory, every page written.
#[inline(never)]
fn grab_block() -> Fresh {
    black_box(Fresh::filled(BLOCK))
}

/// A slow request's work: `blocks` blocks, kept until the caller drops them.
#[inline(never)]
fn build_snapshot(blocks: usize) -> Vec<Fresh> {
    black_box((0..blocks).map(|_| grab_block()).collect())
}

/// Another thread's work during a request: `blocks` blocks of its own.
#[inline(never)]
fn warm_cache(blocks: usize) -> Vec<Fresh> {
    black_box((0..blocks).map(|_| grab_block()).collect())
}

/// A fast request's work: a little memory.
#[inline(never)]
fn render_page() -> Fresh {
    black_box(Fresh::filled(FAST_BYTES))
}

/// Writes every base page of `region` (each huge page is faulted in whole).
#[inline(never)]
fn fill_huge_region(region: &mut [u8]) {
    for page in region.chunks_mut(4096) {
        page[0] = 1;
    }
    black_box(region);
}

/// Sleeps until `started` is `at_least` ago.
fn pad(started: Instant, at_least: Duration) {
    std::thread::sleep(at_least.saturating_sub(started.elapsed()));
}

/// Which request [`serve`] handles.
#[derive(Clone, Copy)]
enum Route {
    /// Builds a 300 MiB snapshot.
    Snapshot,
    /// Renders a page (2 MiB).
    Page,
}

/// A request of `route` inside a server span: the slow and the fast ones share their
/// code down to [`serve`], as the requests of one server do, so that a comparison
/// finds where their memory differs (their request functions would differ too).
fn request(tracer: &SdkTracer, route: Route) -> String {
    let name = match route {
        Route::Snapshot => "POST /snapshot",
        Route::Page => "GET /page",
    };
    server_span(tracer, name, true, || serve(route))
}

/// Handles a request: its route's memory, a little CPU work, and a slow one lasts at
/// least [`SLOW_AT_LEAST`].
#[inline(never)]
fn serve(route: Route) -> usize {
    let started = Instant::now();
    // Kept until the request ends, then freed.
    let made = match route {
        Route::Snapshot => build_snapshot(SLOW_BLOCKS),
        Route::Page => vec![render_page()],
    };
    validate_signature(Instant::now() + Duration::from_millis(20));
    if let Route::Snapshot = route {
        pad(started, SLOW_AT_LEAST);
    }
    made.len()
}

/// A request on this thread that builds a snapshot of `own_blocks` while another thread
/// of the process warms a cache of `other_blocks`, both within the request.
fn request_beside_another_thread(
    tracer: &SdkTracer,
    name: &str,
    with_thread_id: bool,
    own_blocks: usize,
    other_blocks: usize,
) -> String {
    server_span(tracer, name, with_thread_id, || {
        let started = Instant::now();
        let start = Arc::new(Barrier::new(2));
        let other_start = start.clone();
        let other = std::thread::spawn(move || {
            other_start.wait();
            warm_cache(other_blocks).len()
        });
        start.wait();
        let snapshot = build_snapshot(own_blocks);
        other.join().unwrap();
        pad(started, SLOW_AT_LEAST);
        snapshot.len()
    })
}

/// A fresh anonymous mapping of `len` bytes (a multiple of [`HUGE_PAGE`]) aligned to a
/// huge page and advised `MADV_HUGEPAGE`, given to `f`, then unmapped.
#[allow(unsafe_code)]
fn with_huge_page_region<T>(len: usize, f: impl FnOnce(&mut [u8]) -> T) -> T {
    use nix::libc;
    let mapped = len + HUGE_PAGE;
    // SAFETY: a new private anonymous mapping: no existing memory is affected.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            mapped,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED, "mmap failed");
    let offset = (HUGE_PAGE - base as usize % HUGE_PAGE) % HUGE_PAGE;
    // SAFETY: `offset < HUGE_PAGE`, so `aligned..aligned + len` is inside the mapping.
    let aligned = unsafe { base.cast::<u8>().add(offset) };
    // SAFETY: advice on pages of the mapping above; it changes no contents.
    let advised = unsafe { libc::madvise(aligned.cast(), len, libc::MADV_HUGEPAGE) };
    assert_eq!(advised, 0, "madvise(MADV_HUGEPAGE) failed");
    // SAFETY: the range is mapped readable and writable, zero-filled, and nothing else
    // refers to it until it is unmapped below, after the slice's last use.
    let region = unsafe { std::slice::from_raw_parts_mut(aligned, len) };
    let result = f(region);
    // SAFETY: unmaps exactly the mapping made above; `region` is no longer used.
    let unmapped = unsafe { libc::munmap(base, mapped) };
    assert_eq!(unmapped, 0, "munmap failed");
    result
}

/// The kernel's count of anonymous huge pages in the mapping that starts at `start`
/// (`AnonHugePages` of `/proc/self/smaps`), in bytes.
fn anon_huge_page_bytes(start: usize) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let header = format!("{start:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
    assert!(lines.next().is_some(), "no mapping at {start:#x} in smaps");
    let kb = lines
        // Its fields, up to the next mapping's header (which starts with an address).
        .take_while(|l| l.starts_with(|c: char| c.is_ascii_uppercase()))
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .unwrap_or_else(|| panic!("no AnonHugePages for {start:#x}"));
    kb.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .unwrap()
        * 1024
}

/// Whether the kernel may give this process transparent huge pages when it asks.
fn transparent_huge_pages() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| !mode.contains("[never]"))
}

/// The stored profile in a view of `coral query trace-profile --format json`.
fn profile_of(view: &serde_json::Value) -> Profile {
    serde_json::from_value(view["profile"].clone())
        .unwrap_or_else(|e| panic!("no profile ({e}): {view:#}"))
}

/// Memory made resident in stacks through a function whose name ends with `function`.
fn memory_under(profile: &Profile, function: &str) -> u64 {
    profile
        .stacks
        .iter()
        .filter(|s| {
            s.frames
                .iter()
                .any(|&f| profile.frames[f as usize].function.ends_with(function))
        })
        .map(|s| s.memory_bytes)
        .sum()
}

/// CPU stacks' samples and CPU time: stacks with neither memory nor off-CPU time and
/// no page frame.
fn cpu_stacks(profile: &Profile) -> (u64, u64) {
    profile
        .stacks
        .iter()
        .filter(|s| {
            s.memory_bytes == 0
                && s.off_cpu_ns == 0
                && s.frames
                    .iter()
                    .all(|&f| profile.frames[f as usize].kind != FrameKind::Page)
        })
        .fold((0, 0), |(samples, ns), s| {
            (samples + s.samples, ns + s.cpu_ns)
        })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// `coral profile trace-trigger` finished: its JSON result, collected requests by trace.
async fn trigger_result(
    trigger: tokio::task::JoinHandle<crate::cli::Output>,
) -> (serde_json::Value, HashMap<String, serde_json::Value>) {
    let out = trigger.await.unwrap();
    assert!(out.ok, "{}", out.stderr);
    let result = json(&out.stdout);
    assert_eq!(result["status"], "completed", "{result:#}");
    assert_eq!(
        result["profile_types"],
        json!(["cpu", "memory"]),
        "{result:#}"
    );
    let collected = result["collected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["trace_id"].as_str().unwrap().to_string(), c.clone()))
        .collect();
    (result, collected)
}

/// Slow requests build a 300 MiB snapshot in 256 KiB blocks, fast ones render a 2 MiB
/// page: each slow request's memory profile totals what it touched, under the function
/// that touched it; a memory comparison names that function; a CPU comparison of the
/// same requests counts CPU samples only; the MCP tool answers with the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
async fn each_request_shows_the_memory_it_made_resident() {
    let _ebpf = require_root().await;
    let (stack, provider, trigger) = trigger_running(&[
        "--types",
        "cpu,memory",
        "--min-duration",
        "200ms",
        "--count",
        "6",
        "--baseline",
        "10",
    ])
    .await;
    let p = provider.clone();
    // 6 slow and 10 fast, the last one slow: every fast one is seen before the trigger
    // completes.
    let slow: Vec<String> = crate::harness::produce(move || {
        let tracer = p.tracer("e2e");
        let mut slow = Vec::new();
        for i in 0..16 {
            if matches!(i % 8, 2 | 5 | 7) {
                slow.push(request(&tracer, Route::Snapshot));
            } else {
                request(&tracer, Route::Page);
            }
        }
        slow
    })
    .await;
    let (result, collected) = trigger_result(trigger).await;
    for trace in &slow {
        assert!(collected.contains_key(trace), "{trace}: {result:#}");
        assert_eq!(collected[trace]["precision"], "thread", "{result:#}");
    }
    let colony = stack.colony.as_str();
    let id = result["trigger_id"].as_str().unwrap().to_string();
    wait_for_baseline(colony, &id, 10).await;

    // Each slow request (but the first a trigger collects, which may miss its first
    // records): what it touched, nearly all under grab_block.
    let touched = (SLOW_BLOCKS * BLOCK) as u64;
    let (mut cpu_samples, mut cpu_ns, mut memory_records) = (0u64, 0u64, 0u64);
    let mut totals = Vec::new();
    for (i, trace) in slow.iter().enumerate() {
        let view = request_profile(colony, trace, "memory").await;
        assert_eq!(view["profile_type"], "memory", "{view:#}");
        assert_eq!(view["precision"], "thread", "{view:#}");
        let profile = profile_of(&view);
        let total = profile.total(ProfileType::Memory);
        let under = memory_under(&profile, "grab_block");
        let breakdown = profile.memory_breakdown();
        println!(
            "slow {i}: {:.1} MiB of {:.1} MiB touched, {:.3} under grab_block, {breakdown:?}, \
             lost samples {}",
            mib(total),
            mib(touched),
            under as f64 / total.max(1) as f64,
            view["lost_samples"]
        );
        memory_records += profile.count(ProfileType::Memory);
        // The view's figures are the profile's, in bytes.
        assert_eq!(view["unit"], "bytes", "{view:#}");
        assert_eq!(view["total_bytes"].as_u64(), Some(total), "{view:#}");
        assert_eq!(
            view["memory"]["resident_bytes"].as_u64(),
            Some(total),
            "{view:#}"
        );
        assert_eq!(
            view["memory"]["records"].as_u64(),
            Some(profile.count(ProfileType::Memory)),
            "{view:#}"
        );
        assert_eq!(
            collected[trace]["memory_bytes"].as_u64(),
            Some(total),
            "{result:#}"
        );
        totals.push(total);
        // The CPU view of the same request: its samples and time are the CPU stacks'
        // only, though the profile also holds memory stacks with records of their own.
        let cpu_view = request_profile(colony, trace, "cpu").await;
        let (samples, ns) = cpu_stacks(&profile_of(&cpu_view));
        assert_eq!(cpu_view["samples"].as_u64(), Some(samples), "{cpu_view:#}");
        assert_eq!(cpu_view["cpu_ns"].as_u64(), Some(ns), "{cpu_view:#}");
        assert_eq!(cpu_view["total_ns"].as_u64(), Some(ns), "{cpu_view:#}");
        let hotspots = cpu_view["hotspots"].as_array().unwrap();
        assert!(
            hotspots.iter().all(
                |h| h["kind"] != "page" && !h["function"].as_str().unwrap().contains("[memory")
            ),
            "{cpu_view:#}"
        );
        (cpu_samples, cpu_ns) = (cpu_samples + samples, cpu_ns + ns);
        if i == 0 {
            continue;
        }
        assert!(
            profile.count(ProfileType::Memory) > 0 && profile.count(ProfileType::Cpu) > 0,
            "{view:#}"
        );
        assert!(
            (total as f64 - touched as f64).abs() <= 0.2 * touched as f64,
            "{:.1} MiB made resident, {:.1} MiB touched: {view:#}",
            mib(total),
            mib(touched)
        );
        assert!(
            under as f64 >= 0.8 * total as f64,
            "{:.1} of {:.1} MiB under grab_block: {view:#}",
            mib(under),
            mib(total)
        );
        assert_eq!(breakdown.resident_bytes, total);
    }

    let compare = |ty: &'static str| compare_slow_with_fast(&stack.colony, ty);
    let memory = compare("memory").await;
    assert_eq!(memory["profile_type"], "memory", "{memory:#}");
    assert_eq!(memory["cohort_a"]["requests"], 6, "{memory:#}");
    // The fast ones, but one slowed past 150 ms by a busy machine: `high` needs 5.
    assert!(
        memory["cohort_b"]["requests"].as_u64().unwrap() >= 5,
        "{memory:#}"
    );
    assert_eq!(
        memory["cohort_a"]["samples"].as_u64(),
        Some(memory_records),
        "cohort A's observations are its memory records: {memory:#}"
    );
    assert_eq!(memory["unit"], "bytes", "{memory:#}");
    let mean_bytes = memory["cohort_a"]["mean_bytes"]
        .as_f64()
        .unwrap_or_else(|| panic!("{memory:#}"));
    let expected_bytes = totals.iter().sum::<u64>() as f64 / totals.len() as f64;
    assert!(
        (mean_bytes - expected_bytes).abs() <= 1.0,
        "mean {mean_bytes} B, the requests' {expected_bytes} B: {memory:#}"
    );
    let first = &memory["functions"][0];
    println!(
        "memory: {} vs {} requests; first {} {} delta {} q {}; verdict {}",
        memory["cohort_a"]["requests"],
        memory["cohort_b"]["requests"],
        first["function"],
        first["significance"],
        first["delta_pp"],
        first["q_value"],
        memory["verdict"]
    );
    let name = first["function"].as_str().unwrap();
    assert!(
        name.ends_with("grab_block") || name.ends_with("build_snapshot"),
        "{memory:#}"
    );
    assert_eq!(first["significance"], "high", "{memory:#}");
    assert!(first["delta_pp"].as_f64().unwrap() > 50.0, "{memory:#}");
    let verdict = memory["verdict"].as_str().unwrap_or_default();
    assert!(verdict.contains("build_snapshot"), "{memory:#}");
    let per_request = first["a_bytes_per_request"]
        .as_f64()
        .unwrap_or_else(|| panic!("{memory:#}"));
    assert!(per_request >= 0.8 * expected_bytes, "{memory:#}");

    // The same cohorts on CPU: CPU samples and time only, no page frame.
    let cpu = compare("cpu").await;
    assert_eq!(cpu["profile_type"], "cpu", "{cpu:#}");
    assert_eq!(cpu["cohort_a"]["requests"], 6, "{cpu:#}");
    println!(
        "cpu: cohort A {} samples ({} from the requests' CPU stacks, {} memory records \
         beside them); verdict {}",
        cpu["cohort_a"]["samples"], cpu_samples, memory_records, cpu["verdict"]
    );
    assert_eq!(
        cpu["cohort_a"]["samples"].as_u64(),
        Some(cpu_samples),
        "{cpu:#}"
    );
    let mean_ms = cpu["cohort_a"]["mean_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("{cpu:#}"));
    let expected_ms = cpu_ns as f64 / 1e6 / slow.len() as f64;
    assert!(
        (mean_ms - expected_ms).abs() <= 0.01 * expected_ms + 0.01,
        "CPU ms per request {mean_ms}, the CPU stacks' {expected_ms}: {cpu:#}"
    );
    for f in cpu["functions"].as_array().unwrap() {
        assert!(
            f["kind"] != "page" && !f["function"].as_str().unwrap().contains("[memory"),
            "a page frame in a CPU comparison: {cpu:#}"
        );
    }

    // What people and models read of a slow request: what it made resident, and
    // where (the function that allocated, not only the page frame).
    let names_the_allocation =
        |text: &str| text.contains("grab_block") || text.contains("build_snapshot");
    let text = run(
        colony,
        &["query", "trace-profile", &slow[1], "--type", "memory"],
    )
    .await;
    assert!(text.ok, "{}", text.stderr);
    let cli_text = text.stdout;
    println!("slow 1, memory text:\n{cli_text}");
    assert!(
        cli_text.contains("made ") && cli_text.contains(" resident"),
        "{cli_text}"
    );

    // The MCP tool: the same request's memory, with its bytes and its function.
    let client = crate::mcp::stdio_client(colony).await;
    let (text, data) = crate::mcp::ok(
        &client,
        "coral_query_trace_profile",
        json!({"trace_id": slow[1], "profile_type": "memory"}),
    )
    .await;
    println!("mcp: {text}");
    assert_eq!(data["profile_type"], "memory", "{data:#}");
    assert_eq!(data["unit"], "bytes", "{data:#}");
    let span = &data["spans"][0];
    assert_eq!(
        span["memory"]["resident_bytes"].as_u64(),
        Some(totals[1]),
        "{data:#}"
    );
    let summary = span["memory"]["summary"].as_str().unwrap_or_default();
    assert!(summary.starts_with("made "), "{data:#}");
    assert!(text.contains(summary), "{text}");
    client.cancel().await.unwrap();
    assert!(names_the_allocation(&text), "the MCP answer: {text}");
    assert!(names_the_allocation(&cli_text), "the CLI text: {cli_text}");
    provider.shutdown().unwrap();
}

/// Memory another thread makes resident during a request is not the request's at
/// thread precision; at process precision it is, and the views say so; huge pages are
/// told apart from base pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root for eBPF: run `cargo xtask test`"]
async fn memory_is_the_requests_own_or_its_process() {
    let _ebpf = require_root().await;
    assert!(
        transparent_huge_pages(),
        "transparent huge pages are disabled (/sys/kernel/mm/transparent_hugepage/enabled \
         is [never]): enable them (madvise) to run this test"
    );
    let (stack, provider, trigger) = trigger_running(&[
        "--types",
        "cpu,memory",
        "--min-duration",
        "200ms",
        "--count",
        "4",
        "--baseline",
        "0",
    ])
    .await;
    let p = provider.clone();
    let (traces, kernel_huge_bytes) = crate::harness::produce(move || {
        let tracer = p.tracer("e2e");
        let mut traces = HashMap::new();
        // A first request, not looked at: the first a trigger collects may miss its
        // first records.
        let t = tracer.clone();
        traces.insert(
            "first",
            on_own_thread(move || {
                server_span(&t, "GET /first", true, || std::thread::sleep(SLOW_AT_LEAST))
            }),
        );
        // 150 MiB of its own while another thread makes 150 MiB resident.
        let t = tracer.clone();
        traces.insert(
            "thread",
            on_own_thread(move || {
                request_beside_another_thread(&t, "POST /report", true, 600, 600)
            }),
        );
        // No thread.id: 100 MiB of its own and 100 MiB of another thread.
        let t = tracer.clone();
        traces.insert(
            "process",
            on_own_thread(move || {
                request_beside_another_thread(&t, "POST /export", false, 400, 400)
            }),
        );
        // 64 MiB in transparent huge pages, as many as the kernel gave.
        let t = tracer.clone();
        let (huge, kernel_huge_bytes) = on_own_thread(move || {
            let mut kernel_huge_bytes = 0;
            let trace = server_span(&t, "POST /huge", true, || {
                let started = Instant::now();
                with_huge_page_region(HUGE_REGION, |region| {
                    fill_huge_region(region);
                    kernel_huge_bytes = anon_huge_page_bytes(region.as_ptr() as usize);
                });
                pad(started, SLOW_AT_LEAST);
            });
            (trace, kernel_huge_bytes)
        });
        traces.insert("huge", huge);
        (traces, kernel_huge_bytes)
    })
    .await;
    let (result, collected) = trigger_result(trigger).await;
    for (kind, trace) in &traces {
        assert!(collected.contains_key(trace), "{kind}: {result:#}");
    }
    let colony = stack.colony.as_str();

    // Thread precision: the request's own 150 MiB, not the other thread's.
    let view = request_profile(colony, &traces["thread"], "memory").await;
    assert_eq!(view["precision"], "thread", "{view:#}");
    let profile = profile_of(&view);
    let (total, own) = (profile.total(ProfileType::Memory), 600 * BLOCK as u64);
    let other = memory_under(&profile, "warm_cache");
    println!(
        "thread: {:.1} MiB ({:.1} under build_snapshot, {:.1} under warm_cache) of its own \
         {:.1} MiB",
        mib(total),
        mib(memory_under(&profile, "build_snapshot")),
        mib(other),
        mib(own)
    );
    assert_eq!(other, 0, "the other thread's memory: {view:#}");
    assert!(
        (total as f64 - own as f64).abs() <= 0.2 * own as f64,
        "{:.1} MiB, its own {:.1} MiB: {view:#}",
        mib(total),
        mib(own)
    );

    // Process precision: the process's memory, the other thread's included, and said.
    let process = &traces["process"];
    assert_eq!(collected[process]["precision"], "process", "{result:#}");
    let view = request_profile(colony, process, "memory").await;
    assert_eq!(view["precision"], "process", "{view:#}");
    let profile = profile_of(&view);
    let (total, other) = (
        profile.total(ProfileType::Memory),
        memory_under(&profile, "warm_cache"),
    );
    let (own, others) = (400 * BLOCK as u64, 400 * BLOCK as u64);
    println!(
        "process: {:.1} MiB ({:.1} under warm_cache); its own {:.1} MiB, the other \
         thread's {:.1} MiB; warnings {}",
        mib(total),
        mib(other),
        mib(own),
        mib(others),
        view["warnings"]
    );
    assert!(other as f64 >= 0.6 * others as f64, "{view:#}");
    assert!(
        view["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().starts_with("process precision")),
        "{view:#}"
    );
    assert!(total as f64 >= 0.8 * (own + others) as f64, "{view:#}");
    for ty in ["memory", "cpu"] {
        let text = run(colony, &["query", "trace-profile", process, "--type", ty]).await;
        assert!(text.ok, "{}", text.stderr);
        println!("process, {ty} text:\n{}", text.stdout);
        assert!(
            text.stdout.contains("process precision"),
            "{ty}: {}",
            text.stdout
        );
    }

    // Huge pages: their own page frame, and their bytes apart.
    let view = request_profile(colony, &traces["huge"], "memory").await;
    let profile = profile_of(&view);
    let breakdown = profile.memory_breakdown();
    let huge_frame = profile
        .frames
        .iter()
        .any(|f| f.kind == FrameKind::Page && f.function == "2 MiB huge page");
    println!(
        "huge: {breakdown:?}, the kernel's AnonHugePages {:.1} MiB",
        mib(kernel_huge_bytes)
    );
    assert!(
        kernel_huge_bytes >= HUGE_REGION as u64 / 2,
        "the kernel gave {:.1} MiB of huge pages",
        mib(kernel_huge_bytes)
    );
    assert!(huge_frame, "{view:#}");
    assert_eq!(breakdown.huge_page_bytes, kernel_huge_bytes, "{view:#}");
    assert_eq!(
        view["memory"]["huge_page_bytes"].as_u64(),
        Some(kernel_huge_bytes),
        "{view:#}"
    );
    assert!(
        memory_under(&profile, "fill_huge_region") >= kernel_huge_bytes,
        "{view:#}"
    );
    provider.shutdown().unwrap();
}
