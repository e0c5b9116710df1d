use std::io::Read;

use prost::Message;

use super::pprof::PprofProfile;
use super::*;

fn u(f: &str, m: &str) -> Frame {
    Frame::user(f, m)
}

fn k(f: &str) -> Frame {
    Frame::kernel(f)
}

/// main → handle → validate_signature (99 Hz) and main → handle → serialize, plus a
/// kernel tail under validate_signature.
fn sample_profile() -> Profile {
    let mut p = Profile::new();
    let main = u("main", "payment-svc");
    let handle = u("handle", "payment-svc");
    let validate = u("validate_signature", "payment-svc");
    let serialize = u("serialize", "payment-svc");
    p.add(&[main.clone(), handle.clone(), validate.clone()], 60, 100);
    p.add(&[main.clone(), handle.clone(), serialize], 30, 100);
    p.add(&[main, handle, validate, k("schedule")], 10, 100);
    p
}

fn svg_string(p: &Profile, title: &str) -> String {
    svg_of(p, ProfileType::Cpu, title)
}

fn svg_of(p: &Profile, ty: ProfileType, title: &str) -> String {
    let mut out = Vec::new();
    write_svg(p, ty, title, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn folded_string(p: &Profile) -> String {
    folded_of(p, ProfileType::Cpu)
}

fn folded_of(p: &Profile, ty: ProfileType) -> String {
    let mut out = Vec::new();
    write_folded(p, ty, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn text_of(p: &Profile, ty: ProfileType, top: usize) -> String {
    let mut out = Vec::new();
    write_text_summary(p, ty, top, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn decode_pprof(p: &Profile) -> PprofProfile {
    decode_pprof_of(p, ProfileType::Cpu)
}

fn decode_pprof_of(p: &Profile, ty: ProfileType) -> PprofProfile {
    let mut gz = Vec::new();
    write_pprof(p, ty, &mut gz).unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .unwrap();
    PprofProfile::decode(&raw[..]).unwrap()
}

#[test]
fn add_deduplicates_frames_and_merges_equal_stacks() {
    let mut p = Profile::new();
    let a = u("a", "bin");
    let b = u("b", "bin");
    p.add(&[a.clone(), b.clone()], 3, 100);
    p.add(&[a.clone(), b.clone()], 2, 100);
    p.add(std::slice::from_ref(&a), 1, 100);
    p.add(&[b.clone(), a.clone()], 1, 100);
    assert_eq!(p.frames, vec![a, b]);
    assert_eq!(p.stacks.len(), 3);
    assert_eq!(
        p.stacks[0],
        WeightedStack {
            frames: vec![0, 1],
            samples: 5,
            cpu_ns: 50_000_000,
            off_cpu_ns: 0,
            memory_bytes: 0,
        }
    );
    assert_eq!(p.stacks[1].frames, vec![0]);
    assert_eq!(p.stacks[2].frames, vec![1, 0]);
    assert_eq!(p.total_samples(), 7);
    assert_eq!(p.total_cpu_ns(), 70_000_000);
}

#[test]
fn same_function_in_other_module_or_kind_is_another_frame() {
    let mut p = Profile::new();
    p.add(&[u("f", "a")], 1, 1);
    p.add(&[u("f", "b")], 1, 1);
    p.add(
        &[Frame {
            function: "f".into(),
            module: "a".into(),
            kind: FrameKind::Kernel,
        }],
        1,
        1,
    );
    assert_eq!(p.frames.len(), 3);
    assert_eq!(p.stacks.len(), 3);
}

#[test]
fn zero_samples_are_ignored_and_zero_hz_gives_no_cpu() {
    let mut p = Profile::new();
    p.add(&[u("a", "bin")], 0, 99);
    assert!(p.stacks.is_empty());
    assert!(p.is_empty());
    p.add(&[u("a", "bin")], 4, 0);
    assert_eq!(p.total_samples(), 4);
    assert_eq!(p.total_cpu_ns(), 0);
}

#[test]
fn frequency_normalisation_99_and_49_hz_merge_exactly() {
    let stack = [u("main", "svc"), u("work", "svc")];
    let mut fast = Profile::new();
    fast.add(&stack, 99, 99);
    let mut slow = Profile::new();
    slow.add(&stack, 49, 49);
    assert_eq!(fast.total_cpu_ns(), 1_000_000_000);
    assert_eq!(slow.total_cpu_ns(), 1_000_000_000);

    let mut merged = fast.clone();
    merged.merge(&slow);
    assert_eq!(merged.stacks.len(), 1);
    assert_eq!(merged.total_samples(), 148);
    assert_eq!(merged.total_cpu_ns(), 2_000_000_000);

    // One sample at 99 Hz is 10.101 ms, rounded to the nearest nanosecond.
    assert_eq!(samples_to_cpu_ns(1, 99), 10_101_010);
    assert_eq!(samples_to_cpu_ns(2, 3), 666_666_667);
    assert_eq!(samples_to_cpu_ns(u64::MAX, 1), u64::MAX);
}

#[test]
fn merge_remaps_frame_indices() {
    let mut a = Profile::new();
    a.add(&[u("x", "m"), u("y", "m")], 1, 10);
    let mut b = Profile::new();
    b.add(&[u("z", "m")], 2, 10);
    b.add(&[u("x", "m"), u("y", "m")], 3, 10);
    b.add(&[], 1, 10);
    a.merge(&b);
    assert_eq!(a.frames.len(), 3);
    assert_eq!(a.stacks.len(), 3);
    let xy = a.stacks.iter().find(|s| s.frames == vec![0, 1]).unwrap();
    assert_eq!(xy.samples, 4);
    assert_eq!(xy.cpu_ns, 400_000_000);
    let z = a.stacks.iter().find(|s| s.frames == vec![2]).unwrap();
    assert_eq!(z.samples, 2);
    assert!(
        a.stacks
            .iter()
            .any(|s| s.frames.is_empty() && s.samples == 1)
    );
    assert_eq!(a.total_samples(), 7);

    // Merging into an empty profile reproduces the other one.
    let mut empty = Profile::new();
    empty.merge(&b);
    assert_eq!(empty, b);
}

#[test]
fn index_is_rebuilt_after_deserialisation_and_direct_edits() {
    let p = sample_profile();
    let json = serde_json::to_string(&p).unwrap();
    let mut back: Profile = serde_json::from_str(&json).unwrap();
    back.add(
        &[
            u("main", "payment-svc"),
            u("handle", "payment-svc"),
            u("serialize", "payment-svc"),
        ],
        5,
        100,
    );
    assert_eq!(back.frames.len(), p.frames.len());
    assert_eq!(back.stacks.len(), p.stacks.len());

    let mut parts = Profile::from_parts(vec![u("a", "m")], Vec::new());
    parts.frames.push(u("b", "m"));
    parts.add(&[u("b", "m")], 1, 1);
    assert_eq!(parts.frames.len(), 2);
    assert_eq!(parts.stacks[0].frames, vec![1]);
}

#[test]
fn hotspots_self_vs_inclusive() {
    let p = sample_profile();
    let total = p.total_cpu_ns();
    assert_eq!(total, 1_000_000_000);
    let hs = p.hotspots(ProfileType::Cpu, 10);
    let names: Vec<&str> = hs.iter().map(|h| h.function.as_str()).collect();
    // Self descending, then total descending, then name.
    assert_eq!(
        names,
        [
            "validate_signature",
            "serialize",
            "schedule",
            "handle",
            "main"
        ]
    );
    let v = &hs[0];
    assert_eq!(v.module, "payment-svc");
    assert_eq!(v.kind, FrameKind::User);
    assert_eq!(v.self_ns, 600_000_000);
    assert_eq!(v.total_ns, 700_000_000);
    assert!((v.self_share - 0.6).abs() < 1e-12);
    assert!((v.total_share - 0.7).abs() < 1e-12);
    let sched = &hs[2];
    assert_eq!(sched.kind, FrameKind::Kernel);
    assert_eq!(sched.module, KERNEL_MODULE);
    assert_eq!(sched.self_ns, 100_000_000);
    let main = &hs[4];
    assert_eq!(main.self_ns, 0);
    assert_eq!(main.total_ns, total);
    assert!((main.total_share - 1.0).abs() < 1e-12);
}

#[test]
fn hotspots_top_is_union_of_top_self_and_top_total() {
    let p = sample_profile();
    let hs = p.hotspots(ProfileType::Cpu, 1);
    let names: Vec<&str> = hs.iter().map(|h| h.function.as_str()).collect();
    // Top self is validate_signature; by total, main and handle are on every stack and
    // not ranked, so top total is validate_signature again (70 %).
    assert_eq!(names, ["validate_signature"]);
    let names: Vec<String> = p
        .hotspots(ProfileType::Cpu, 2)
        .into_iter()
        .map(|h| h.function)
        .collect();
    assert_eq!(names, ["validate_signature", "serialize"]);
    assert!(p.hotspots(ProfileType::Cpu, 0).is_empty());
    assert!(Profile::new().hotspots(ProfileType::Cpu, 5).is_empty());
}

#[test]
fn recursion_counts_once_per_stack() {
    let mut p = Profile::new();
    let r = u("recurse", "bin");
    p.add(&[u("main", "bin"), r.clone(), r.clone(), r.clone()], 10, 10);
    p.add(&[u("main", "bin"), u("other", "bin")], 10, 10);
    let hs = p.all_hotspots(ProfileType::Cpu);
    let rec = hs.iter().find(|h| h.function == "recurse").unwrap();
    assert_eq!(rec.self_ns, 1_000_000_000);
    assert_eq!(rec.total_ns, 1_000_000_000);
    assert!((rec.total_share - 0.5).abs() < 1e-12);
    let main = hs.iter().find(|h| h.function == "main").unwrap();
    assert_eq!(main.total_ns, 2_000_000_000);
    assert!(hs.iter().all(|h| h.total_share <= 1.0));
}

#[test]
fn folded_exact_text() {
    let p = sample_profile();
    assert_eq!(
        folded_string(&p),
        "main;handle;serialize 30\n\
         main;handle;validate_signature 60\n\
         main;handle;validate_signature;schedule_[k] 10\n"
    );
}

#[test]
fn folded_conventions_unknown_module_semicolons_and_empty_stacks() {
    let mut p = Profile::new();
    p.add(
        &[
            u("main", "svc"),
            u(UNKNOWN_FUNCTION, "libfoo.so"),
            u(UNKNOWN_FUNCTION, UNKNOWN_MODULE),
            u("<[u8; 32] as Debug>::fmt", "svc"),
            Frame::unknown(FrameKind::Kernel),
        ],
        2,
        99,
    );
    p.add(&[], 3, 99);
    // Two stacks that differ only by module render to the same line and are summed.
    p.add(&[u("f", "a")], 1, 99);
    p.add(&[u("f", "b")], 1, 99);
    assert_eq!(
        folded_string(&p),
        "[no stack] 3\n\
         f 2\n\
         main;[libfoo.so];[unknown];<[u8: 32] as Debug>::fmt;[unknown]_[k] 2\n"
    );
    assert_eq!(folded_string(&Profile::new()), "");
}

#[test]
fn svg_contains_names_and_is_deterministic() {
    let p = sample_profile();
    let a = svg_string(&p, "checkout 1.2s");
    let b = svg_string(&p, "checkout 1.2s");
    assert_eq!(a, b);
    assert!(a.starts_with("<?xml"), "{}", &a[..100]);
    // inferno shows kernel frames without their `_[k]` annotation (it only colours them).
    for name in [
        "validate_signature",
        "serialize",
        "handle",
        "main",
        "schedule",
    ] {
        assert!(a.contains(name), "{name} missing");
    }
    assert!(a.contains("checkout 1.2s"));
    // Widths are CPU time in microseconds.
    assert!(a.contains("<title>validate_signature (700,000 µs, 70.00%)</title>"));
    assert!(a.contains("100 samples, 1.00s CPU"), "subtitle");
    // A profile built in another order draws the same graph.
    let mut q = Profile::new();
    q.add(
        &[
            u("main", "payment-svc"),
            u("handle", "payment-svc"),
            u("validate_signature", "payment-svc"),
            k("schedule"),
        ],
        10,
        100,
    );
    q.merge(&p);
    let mut r = p.clone();
    r.merge(&Profile::from_parts(Vec::new(), Vec::new()));
    r.add(
        &[
            u("main", "payment-svc"),
            u("handle", "payment-svc"),
            u("validate_signature", "payment-svc"),
            k("schedule"),
        ],
        10,
        100,
    );
    assert_eq!(svg_string(&q, "t"), svg_string(&r, "t"));
}

#[test]
fn svg_of_an_empty_profile_is_still_an_svg() {
    let s = svg_string(&Profile::new(), "empty");
    assert!(s.contains("<svg"), "{s}");
    assert!(s.contains("[no samples]"));
    // Samples without CPU time (frequency 0) are drawn by sample count.
    let mut p = Profile::new();
    p.add(&[u("only", "m")], 3, 0);
    let s = svg_string(&p, "counts");
    assert!(s.contains("only (3 samples, 100.00%)"), "{s}");
}

#[test]
fn pprof_round_trip_structure() {
    let p = sample_profile();
    let pp = decode_pprof(&p);
    let st = &pp.string_table;
    let s = |i: i64| st[usize::try_from(i).unwrap()].as_str();
    assert_eq!(st[0], "");

    // Sample types: [samples/count, cpu/nanoseconds], default cpu.
    let types: Vec<(&str, &str)> = pp
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    assert_eq!(s(pp.default_sample_type), "cpu");
    let period_type = pp.period_type.as_ref().unwrap();
    assert_eq!(
        (s(period_type.r#type), s(period_type.unit)),
        ("cpu", "nanoseconds")
    );
    assert_eq!(pp.period, 10_000_000);

    // Ids are non-zero and unique; references are valid.
    let fn_ids: Vec<u64> = pp.function.iter().map(|f| f.id).collect();
    let loc_ids: Vec<u64> = pp.location.iter().map(|l| l.id).collect();
    let map_ids: Vec<u64> = pp.mapping.iter().map(|m| m.id).collect();
    for ids in [&fn_ids, &loc_ids, &map_ids] {
        assert!(ids.iter().all(|&i| i != 0));
        let mut sorted = ids.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
    }
    assert_eq!(pp.location.len(), p.frames.len(), "one location per frame");
    assert_eq!(pp.function.len(), p.frames.len());
    for l in &pp.location {
        assert!(map_ids.contains(&l.mapping_id));
        assert_eq!(l.line.len(), 1);
        assert!(fn_ids.contains(&l.line[0].function_id));
    }
    for f in &pp.function {
        assert!((f.name as usize) < st.len());
        assert!((f.system_name as usize) < st.len());
    }
    // One mapping per module, all with functions so pprof does not symbolize.
    let mut modules: Vec<&str> = pp.mapping.iter().map(|m| s(m.filename)).collect();
    modules.sort();
    assert_eq!(modules, ["[kernel]", "payment-svc"]);
    assert!(pp.mapping.iter().all(|m| m.has_functions));

    // Samples: leaf first, values [samples, cpu_ns], totals preserved.
    let name_of_location = |id: u64| {
        let l = pp.location.iter().find(|l| l.id == id).unwrap();
        let f = pp
            .function
            .iter()
            .find(|f| f.id == l.line[0].function_id)
            .unwrap();
        s(f.name)
    };
    let mut stacks: Vec<(Vec<&str>, Vec<i64>)> = pp
        .sample
        .iter()
        .map(|smp| {
            assert_eq!(smp.value.len(), pp.sample_type.len());
            (
                smp.location_id
                    .iter()
                    .map(|&id| name_of_location(id))
                    .collect(),
                smp.value.clone(),
            )
        })
        .collect();
    stacks.sort();
    assert_eq!(
        stacks,
        [
            (
                vec!["schedule", "validate_signature", "handle", "main"],
                vec![10, 100_000_000]
            ),
            (vec!["serialize", "handle", "main"], vec![30, 300_000_000]),
            (
                vec!["validate_signature", "handle", "main"],
                vec![60, 600_000_000]
            ),
        ]
    );
    let kernel_loc = pp
        .location
        .iter()
        .find(|l| name_of_location(l.id) == "schedule")
        .unwrap();
    let kernel_map = pp
        .mapping
        .iter()
        .find(|m| m.id == kernel_loc.mapping_id)
        .unwrap();
    assert_eq!(s(kernel_map.filename), "[kernel]");
}

#[test]
fn pprof_is_deterministic_and_handles_empty_and_bad_parts() {
    let p = sample_profile();
    let mut a = Vec::new();
    let mut b = Vec::new();
    write_pprof(&p, ProfileType::Cpu, &mut a).unwrap();
    write_pprof(&p, ProfileType::Cpu, &mut b).unwrap();
    assert_eq!(a, b);

    let empty = decode_pprof(&Profile::new());
    assert_eq!(empty.string_table[0], "");
    assert!(empty.sample.is_empty());
    assert_eq!(empty.sample_type.len(), 2);

    // A stored stack referencing a frame that does not exist gets an unknown location.
    let bad = Profile::from_parts(
        vec![u("a", "m")],
        vec![WeightedStack {
            frames: vec![0, 7],
            samples: 1,
            cpu_ns: 5,
            off_cpu_ns: 0,
            memory_bytes: 0,
        }],
    );
    let pp = decode_pprof(&bad);
    assert_eq!(pp.location.len(), 2);
    let leaf = pp.sample[0].location_id[0];
    let loc = pp.location.iter().find(|l| l.id == leaf).unwrap();
    let f = pp
        .function
        .iter()
        .find(|f| f.id == loc.line[0].function_id)
        .unwrap();
    assert_eq!(pp.string_table[f.name as usize], UNKNOWN_FUNCTION);
    assert_eq!(folded_string(&bad), "a;[unknown] 1\n");
    assert_eq!(bad.all_hotspots(ProfileType::Cpu).len(), 2);
}

#[test]
fn json_round_trip_and_shape() {
    let p = sample_profile();
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["frames"][0]["function"], "main");
    assert_eq!(json["frames"][3]["kind"], "user");
    assert_eq!(
        json["frames"].as_array().unwrap().last().unwrap()["kind"],
        "kernel"
    );
    assert_eq!(json["stacks"][0]["samples"], 60);
    assert_eq!(json["stacks"][0]["cpu_ns"], 600_000_000);
    assert_eq!(
        json.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["frames", "stacks"]
    );
    let back: Profile = serde_json::from_value(json).unwrap();
    assert_eq!(back, p);

    let hs = p.hotspots(ProfileType::Cpu, 3);
    let hs_json = serde_json::to_string(&hs).unwrap();
    let hs_back: Vec<Hotspot> = serde_json::from_str(&hs_json).unwrap();
    assert_eq!(hs_back, hs);
    assert!(hs_json.contains("\"self_share\":0.6"));
}

#[test]
fn text_summary() {
    let p = sample_profile();
    let mut out = Vec::new();
    write_text_summary(&p, ProfileType::Cpu, 2, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        "100 samples, 1.00s CPU, 3 stacks, 5 frames\n\
         top self:\n\
         \x20  60.0%  self   600ms  validate_signature (payment-svc)\n\
         \x20  30.0%  self   300ms  serialize (payment-svc)\n\
         top total:\n\
         \x20  70.0%  total  700ms  validate_signature (payment-svc)\n\
         \x20  30.0%  total  300ms  serialize (payment-svc)\n\
         on every stack: main, handle\n"
    );

    let mut out = Vec::new();
    write_text_summary(&Profile::new(), ProfileType::Cpu, 5, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "0 samples, 0ns CPU, 0 stacks, 0 frames\n(no samples)\n"
    );
}

#[test]
fn pprof_names_unknown_functions_after_their_module() {
    let mut p = Profile::new();
    p.add(
        &[
            u("main", "svc"),
            u(UNKNOWN_FUNCTION, "libc.so.6"),
            u(UNKNOWN_FUNCTION, UNKNOWN_MODULE),
            Frame::unknown(FrameKind::Kernel),
        ],
        1,
        99,
    );
    let pp = decode_pprof(&p);
    let names: Vec<&str> = pp
        .function
        .iter()
        .map(|f| pp.string_table[f.name as usize].as_str())
        .collect();
    assert_eq!(names, ["main", "[libc.so.6]", "[unknown]", "[unknown]"]);
    let leaf = pp.sample[0].location_id[0];
    assert_eq!(leaf, 4, "leaf first: the kernel frame");
}

/// Issue 14: "top total" listed `_start`, `__libc_start_main`, `main` (all 100 %) and
/// hid the function at 95.9 % that explains the time.
#[test]
fn top_total_skips_the_trunk_every_stack_shares() {
    let trunk = [
        u("_start", "node"),
        u("__libc_start_main", "libc.so.6"),
        u("main", "node"),
    ];
    let with = |rest: &[Frame]| -> Vec<Frame> { trunk.iter().chain(rest).cloned().collect() };
    let mut p = Profile::new();
    let handle = u("handle_payment", "node");
    p.add(&with(&[handle.clone(), u("parse", "node")]), 500, 100);
    p.add(&with(&[handle.clone(), u("hash", "node")]), 459, 100);
    p.add(&with(&[u("gc", "node")]), 41, 100);
    let mut out = Vec::new();
    write_text_summary(&p, ProfileType::Cpu, 2, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let total = text.split("top total:\n").nth(1).expect(&text);
    let lines: Vec<&str> = total.lines().collect();
    assert_eq!(
        lines,
        [
            "   95.9%  total  9.59s  handle_payment (node)",
            "   50.0%  total  5.00s  parse (node)",
            "on every stack: _start, __libc_start_main, main",
        ],
        "{text}"
    );
    let names: Vec<String> = p
        .hotspots(ProfileType::Cpu, 1)
        .into_iter()
        .map(|h| h.function)
        .collect();
    assert_eq!(names, ["parse", "handle_payment"]);

    // A single stack is all trunk: top self still says where the time went.
    let mut one = Profile::new();
    one.add(&with(&[handle]), 10, 100);
    let mut out = Vec::new();
    write_text_summary(&one, ProfileType::Cpu, 5, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "10 samples, 100ms CPU, 1 stacks, 4 frames\n\
         top self:\n\
         \x20 100.0%  self   100ms  handle_payment (node)\n\
         on every stack: _start, __libc_start_main, main, handle_payment\n"
    );
}

#[test]
fn function_identity_drops_v8_tier_markers() {
    for (name, identity) in [
        ("JS:*parserOnIncoming", "JS:parserOnIncoming"),
        ("JS:^parserOnIncoming", "JS:parserOnIncoming"),
        ("JS:~parserOnIncoming", "JS:parserOnIncoming"),
        ("JS:+parserOnIncoming", "JS:parserOnIncoming"),
        (
            "JS:*parserOnIncoming node:_http_server:1050:27",
            "JS:parserOnIncoming node:_http_server:1050:27",
        ),
        (
            "LazyCompile:*foo /srv/app/lib.js:30:29",
            "LazyCompile:foo /srv/app/lib.js:30:29",
        ),
        ("Function:^foo", "Function:foo"),
        (
            "Script:~ /srv/app/main.js:1:1",
            "Script: /srv/app/main.js:1:1",
        ),
        // Not tier markers: unchanged.
        ("JS:parserOnIncoming", "JS:parserOnIncoming"),
        (
            "Builtin:ArgumentsAdaptorTrampoline",
            "Builtin:ArgumentsAdaptorTrampoline",
        ),
        ("std::ops::Mul::mul", "std::ops::Mul::mul"),
        ("operator*", "operator*"),
        ("Foo:*bar", "Foo:*bar"),
        ("", ""),
    ] {
        assert_eq!(function_identity(name), identity, "{name}");
    }
    assert!(matches!(function_identity("main"), Cow::Borrowed(_)));
}

/// Issue 14: V8 tiers made one function two, with opposite signs in a comparison.
#[test]
fn jit_tiers_of_one_function_are_one_frame() {
    let js = |name: &str| u(name, "[jit]");
    let mut p = Profile::new();
    p.add(
        &[js("JS:~main"), js("JS:*parserOnIncoming a.js:3:1")],
        3,
        100,
    );
    p.add(
        &[js("JS:~main"), js("JS:^parserOnIncoming a.js:3:1")],
        1,
        100,
    );
    assert_eq!(p.frames.len(), 2);
    assert_eq!(p.stacks.len(), 1);
    assert_eq!(p.frames[1].function, "JS:parserOnIncoming a.js:3:1");
    // The tiered name is found again, without a new frame.
    p.add(&[js("JS:*parserOnIncoming a.js:3:1")], 1, 100);
    assert_eq!(p.frames.len(), 2);

    // Stored before normalisation: every renderer still sees one function.
    let stored = Profile::from_parts(
        vec![
            js("JS:~main"),
            js("JS:*parserOnIncoming a.js:3:1"),
            js("JS:^parserOnIncoming a.js:3:1"),
        ],
        vec![
            WeightedStack {
                frames: vec![0, 1],
                samples: 3,
                cpu_ns: 30_000_000,
                off_cpu_ns: 0,
                memory_bytes: 0,
            },
            WeightedStack {
                frames: vec![0, 2],
                samples: 1,
                cpu_ns: 10_000_000,
                off_cpu_ns: 0,
                memory_bytes: 0,
            },
        ],
    );
    let hs = stored.all_hotspots(ProfileType::Cpu);
    let parser: Vec<&Hotspot> = hs
        .iter()
        .filter(|h| h.function.contains("parser"))
        .collect();
    assert_eq!(parser.len(), 1, "{hs:?}");
    assert_eq!(parser[0].function, "JS:parserOnIncoming a.js:3:1");
    assert_eq!(parser[0].self_ns, 40_000_000);
    assert_eq!(
        folded_string(&stored),
        "JS:main;JS:parserOnIncoming a.js:3:1 4\n"
    );
    let mut merged = Profile::new();
    merged.merge(&stored);
    assert_eq!(merged.frames.len(), 2);
    let pprof = decode_pprof(&stored);
    let names: std::collections::BTreeSet<&str> = pprof
        .function
        .iter()
        .map(|f| pprof.string_table[f.name as usize].as_str())
        .collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["JS:main", "JS:parserOnIncoming a.js:3:1"]
    );
}

// Profile types: off-CPU and wall-clock views of one profile.

/// 3 CPU samples at 100 Hz in `validate_signature` (30 ms); 10 lock waits under
/// `acquire_ledger_lock` (980.0004 ms) and 2 network waits under `read_socket` (22 ms).
fn waited_profile() -> Profile {
    let main = u("main", "payment-svc");
    let handle = u("handle", "payment-svc");
    let mut p = Profile::new();
    p.add(
        &[
            main.clone(),
            handle.clone(),
            u("validate_signature", "payment-svc"),
        ],
        3,
        100,
    );
    p.add_off_cpu(
        &[
            main.clone(),
            handle.clone(),
            u("acquire_ledger_lock", "payment-svc"),
        ],
        WaitCause::Lock,
        10,
        980_000_400,
    );
    p.add_off_cpu(
        &[main, handle, u("read_socket", "payment-svc")],
        WaitCause::Network,
        2,
        22_000_000,
    );
    p
}

#[test]
fn totals_and_counts_per_type() {
    let p = waited_profile();
    assert_eq!(p.total(ProfileType::Cpu), 30_000_000);
    assert_eq!(p.total_cpu_ns(), 30_000_000);
    assert_eq!(p.total(ProfileType::Offcpu), 1_002_000_400);
    assert_eq!(p.total(ProfileType::Wall), 1_032_000_400);
    assert_eq!(p.count(ProfileType::Cpu), 3);
    assert_eq!(p.count(ProfileType::Offcpu), 12);
    assert_eq!(p.count(ProfileType::Wall), 15);
}

#[test]
fn folded_per_type_cpu_in_samples_off_cpu_and_wall_in_microseconds() {
    let p = waited_profile();
    assert_eq!(
        folded_of(&p, ProfileType::Cpu),
        "main;handle;validate_signature 3\n"
    );
    // 980,000.4 µs rounds up: no stack's time is lost to rounding.
    assert_eq!(
        folded_of(&p, ProfileType::Offcpu),
        "main;handle;acquire_ledger_lock;[off-cpu: lock] 980001\n\
         main;handle;read_socket;[off-cpu: network] 22000\n"
    );
    assert_eq!(
        folded_of(&p, ProfileType::Wall),
        "main;handle;acquire_ledger_lock;[off-cpu: lock] 980001\n\
         main;handle;read_socket;[off-cpu: network] 22000\n\
         main;handle;validate_signature 30000\n"
    );
    // A wait shorter than a microsecond is still 1.
    let mut short = Profile::new();
    short.add_off_cpu(&[u("main", "svc")], WaitCause::Runqueue, 1, 300);
    assert_eq!(
        folded_of(&short, ProfileType::Offcpu),
        "main;[off-cpu: runqueue] 1\n"
    );
    assert_eq!(folded_of(&short, ProfileType::Cpu), "");
}

#[test]
fn svg_per_type_names_the_measure_and_colours_wait_frames_apart() {
    let p = waited_profile();
    let wait_fill = format!(
        "fill=\"rgb({},{},{})\"",
        svg::WAIT_FRAME_COLOR.r,
        svg::WAIT_FRAME_COLOR.g,
        svg::WAIT_FRAME_COLOR.b
    );
    // The attributes of the rectangle drawn for the frame whose title starts so.
    let rect = |svg: &str, title: &str| -> String {
        let after = svg
            .split(&format!("<title>{title}"))
            .nth(1)
            .unwrap_or_else(|| panic!("{title} not drawn"));
        after[..after.find("/>").unwrap()].to_string()
    };
    let off = svg_of(&p, ProfileType::Offcpu, "checkout");
    assert!(
        off.contains("off-CPU time, µs: 1.00s in 12 waits"),
        "subtitle"
    );
    let lock = rect(&off, "[off-cpu: lock] (980,001 µs, 97.80%)</title>");
    assert!(lock.contains(&wait_fill), "{lock}");
    let caller = rect(&off, "acquire_ledger_lock (980,001 µs");
    assert!(!caller.contains(&wait_fill), "{caller}");
    assert!(
        !off.contains("validate_signature"),
        "CPU stacks are not off-CPU"
    );

    let wall = svg_of(&p, ProfileType::Wall, "checkout");
    assert!(
        wall.contains(
            "wall-clock time, µs: 1.03s: 30.0ms CPU in 3 samples, 1.00s off-CPU in 12 waits"
        ),
        "subtitle"
    );
    // Both wait frames are the wait colour, and nothing else is.
    assert_eq!(wall.matches(&wait_fill).count(), 2, "{wall}");
    let validate = rect(&wall, "validate_signature (30,000 µs");
    assert!(!validate.contains(&wait_fill), "{validate}");
    assert_eq!(
        wall,
        svg_of(&p, ProfileType::Wall, "checkout"),
        "deterministic"
    );

    // The CPU view of the same profile: the CPU stack only, as before.
    let cpu = svg_of(&p, ProfileType::Cpu, "checkout");
    assert!(cpu.contains("CPU time, µs: 3 samples, 30.0ms CPU"), "{cpu}");
    assert!(!cpu.contains("off-cpu") && !cpu.contains(&wait_fill));
    // Nothing of the type: still an SVG.
    let none = svg_of(&sample_profile(), ProfileType::Offcpu, "no waits");
    assert!(none.contains("[no samples]") && none.contains("off-CPU time, µs: 0ns in 0 waits"));
}

#[test]
fn pprof_sample_types_per_type() {
    let p = waited_profile();
    for (ty, types, values) in [
        (
            ProfileType::Cpu,
            [("samples", "count"), ("cpu", "nanoseconds")],
            vec![(
                vec!["validate_signature", "handle", "main"],
                vec![3, 30_000_000],
            )],
        ),
        (
            ProfileType::Offcpu,
            [("waits", "count"), ("off_cpu", "nanoseconds")],
            vec![
                (
                    vec!["[off-cpu: lock]", "acquire_ledger_lock", "handle", "main"],
                    vec![10, 980_000_400],
                ),
                (
                    vec!["[off-cpu: network]", "read_socket", "handle", "main"],
                    vec![2, 22_000_000],
                ),
            ],
        ),
        (
            ProfileType::Wall,
            [("samples", "count"), ("wall", "nanoseconds")],
            vec![
                (
                    vec!["[off-cpu: lock]", "acquire_ledger_lock", "handle", "main"],
                    vec![10, 980_000_400],
                ),
                (
                    vec!["[off-cpu: network]", "read_socket", "handle", "main"],
                    vec![2, 22_000_000],
                ),
                (
                    vec!["validate_signature", "handle", "main"],
                    vec![3, 30_000_000],
                ),
            ],
        ),
    ] {
        let pp = decode_pprof_of(&p, ty);
        let s = |i: i64| pp.string_table[usize::try_from(i).unwrap()].as_str();
        let got: Vec<(&str, &str)> = pp
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect();
        assert_eq!(got, types, "{ty}");
        assert_eq!(s(pp.default_sample_type), types[1].0, "{ty}");
        let period_type = pp.period_type.as_ref().unwrap();
        assert_eq!(
            (s(period_type.r#type), s(period_type.unit)),
            types[1],
            "{ty}"
        );
        assert_eq!(
            pp.period,
            i64::try_from(p.total(ty) / p.count(ty)).unwrap(),
            "{ty}"
        );
        let name_of = |id: u64| {
            let l = pp.location.iter().find(|l| l.id == id).unwrap();
            let f = pp
                .function
                .iter()
                .find(|f| f.id == l.line[0].function_id)
                .unwrap();
            s(f.name)
        };
        let mut stacks: Vec<(Vec<&str>, Vec<i64>)> = pp
            .sample
            .iter()
            .map(|smp| {
                (
                    smp.location_id.iter().map(|&id| name_of(id)).collect(),
                    smp.value.clone(),
                )
            })
            .collect();
        stacks.sort();
        assert_eq!(stacks, values, "{ty}");
    }
}

#[test]
fn text_summary_first_line_per_type() {
    let p = waited_profile();
    let first = |ty| text_of(&p, ty, 3).lines().next().unwrap().to_string();
    assert_eq!(
        first(ProfileType::Cpu),
        "3 samples, 30.0ms CPU, 1 stacks, 3 frames"
    );
    assert_eq!(
        first(ProfileType::Offcpu),
        "1.00s off-CPU in 12 waits, 2 stacks, 6 frames"
    );
    assert_eq!(
        first(ProfileType::Wall),
        "1.03s wall-clock: 30.0ms CPU in 3 samples, 1.00s off-CPU in 12 waits, 3 stacks, 7 frames"
    );
    // Wait frames rank like functions, named without a module.
    let wall = text_of(&p, ProfileType::Wall, 2);
    assert_eq!(
        wall.lines().skip(1).collect::<Vec<_>>(),
        [
            "top self:",
            "   95.0%  self    980ms  [off-cpu: lock]",
            "    2.9%  self   30.0ms  validate_signature (payment-svc)",
            "top total:",
            "   95.0%  total  980ms  [off-cpu: lock]",
            "   95.0%  total  980ms  acquire_ledger_lock (payment-svc)",
            "on every stack: main, handle",
        ],
        "{wall}"
    );
    assert_eq!(
        text_of(&sample_profile(), ProfileType::Offcpu, 3),
        "0ns off-CPU in 0 waits, 0 stacks, 0 frames\n(no waits)\n"
    );
}

#[test]
fn wait_frames_are_hotspots_of_off_cpu_and_wall_time() {
    let p = waited_profile();
    let wall = p.hotspots(ProfileType::Wall, 1);
    assert_eq!(wall[0].function, "[off-cpu: lock]");
    assert_eq!(wall[0].kind, FrameKind::Wait);
    assert_eq!(wall[0].module, OFF_CPU_MODULE);
    assert_eq!(
        (wall[0].self_ns, wall[0].total_ns),
        (980_000_400, 980_000_400)
    );
    assert!((wall[0].self_share - 980_000_400.0 / 1_032_000_400.0).abs() < 1e-12);
    let cpu = p.all_hotspots(ProfileType::Cpu);
    assert!(cpu.iter().all(|h| h.kind != FrameKind::Wait), "{cpu:?}");
    assert_eq!(cpu[0].function, "validate_signature");
    assert_eq!(cpu[0].total_ns, 30_000_000);
    let off = p.all_hotspots(ProfileType::Offcpu);
    let main = off.iter().find(|h| h.function == "main").unwrap();
    assert!(main.is_on_every_stack(p.total(ProfileType::Offcpu)));
    assert!(off.iter().all(|h| h.function != "validate_signature"));
}

/// A request that made 382 MiB resident: main → build_snapshot → grab_block in 4 KiB
/// and 2 MiB pages, a little under parse, and 3 CPU samples that no memory view shows.
fn memory_profile() -> Profile {
    let main = u("main", "svc");
    let build = u("build_snapshot", "svc");
    let grab = u("grab_block", "svc");
    let mut p = Profile::new();
    p.add(&[main.clone(), u("validate_signature", "svc")], 3, 100);
    let chain = [main.clone(), build, grab];
    p.add_memory(&chain, 4096, 240, 120 << 20);
    p.add_memory(&chain, 2 << 20, 520, 260 << 20);
    p.add_memory(&[main, u("parse", "svc")], 4096, 4, 2 << 20);
    p
}

#[test]
fn folded_memory_is_bytes_with_page_frames_last() {
    assert_eq!(
        folded_of(&memory_profile(), ProfileType::Memory),
        "main;build_snapshot;grab_block;[memory: 2 MiB huge page] 272629760\n\
         main;build_snapshot;grab_block;[memory: 4 KiB page] 125829120\n\
         main;parse;[memory: 4 KiB page] 2097152\n"
    );
    // The CPU view does not see memory stacks, nor the memory view CPU stacks.
    assert_eq!(
        folded_of(&memory_profile(), ProfileType::Cpu),
        "main;validate_signature 3\n"
    );
}

#[test]
fn svg_memory_says_bytes_and_colours_page_frames_apart() {
    let svg = svg_of(&memory_profile(), ProfileType::Memory, "snapshot");
    assert!(
        svg.contains("memory made resident, bytes: 382 MiB made resident in 764 records"),
        "subtitle"
    );
    assert!(!svg.contains("µs"), "no times in a memory graph");
    let page_fill = format!(
        "fill=\"rgb({},{},{})\"",
        svg::PAGE_FRAME_COLOR.r,
        svg::PAGE_FRAME_COLOR.g,
        svg::PAGE_FRAME_COLOR.b
    );
    // The three page frames (two under grab_block, one under parse) are drawn in the
    // page colour, and nothing else is.
    assert_eq!(svg.matches(&page_fill).count(), 3);
    assert!(svg.contains("[memory: 2 MiB huge page]"));
    assert!(!svg.contains("validate_signature"));
}

#[test]
fn pprof_memory_is_faults_and_space() {
    let p = memory_profile();
    let pp = decode_pprof_of(&p, ProfileType::Memory);
    let s = |i: i64| pp.string_table[usize::try_from(i).unwrap()].as_str();
    let types: Vec<(&str, &str)> = pp
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(types, [("faults", "count"), ("space", "bytes")]);
    assert_eq!(s(pp.default_sample_type), "space");
    assert_eq!(pp.sample.len(), 3, "memory stacks only");
    let mut values: Vec<Vec<i64>> = pp.sample.iter().map(|x| x.value.clone()).collect();
    values.sort();
    assert_eq!(
        values,
        [vec![4, 2 << 20], vec![240, 120 << 20], vec![520, 260 << 20]]
    );
    let names: Vec<&str> = pp.function.iter().map(|f| s(f.name)).collect();
    assert!(names.contains(&"[memory: 4 KiB page]"), "{names:?}");
    assert_eq!(pp.period, (382 << 20) / 764);
}

#[test]
fn text_memory_gives_bytes_never_times() {
    let text = text_of(&memory_profile(), ProfileType::Memory, 3);
    assert_eq!(
        text,
        "382 MiB made resident (huge pages 260 MiB) in 764 records, 3 stacks, 6 frames\n\
         top stacks:\n\
         \x20  68.1%   260 MiB  main → build_snapshot → grab_block → [memory: 2 MiB huge page]\n\
         \x20  31.4%   120 MiB  main → build_snapshot → grab_block → [memory: 4 KiB page]\n\
         \x20   0.5%  2.00 MiB  main → parse → [memory: 4 KiB page]\n\
         top total:\n\
         \x20  99.5%  total  380 MiB  build_snapshot (svc)\n\
         \x20  99.5%  total  380 MiB  grab_block (svc)\n\
         \x20  68.1%  total  260 MiB  [memory: 2 MiB huge page]\n\
         on every stack: main\n"
    );
    assert!(!text.contains("ns") && !text.contains("ms"), "{text}");
    assert_eq!(
        text_of(&sample_profile(), ProfileType::Memory, 3),
        "0 B made resident (huge pages 0 B) in 0 records, 0 stacks, 0 frames\n\
         (no memory records)\n"
    );
}

#[test]
fn page_frames_are_hotspots_of_memory_and_hold_its_self_bytes() {
    let p = memory_profile();
    let hs = p.all_hotspots(ProfileType::Memory);
    let grab = hs.iter().find(|h| h.function == "grab_block").unwrap();
    assert_eq!((grab.self_ns, grab.total_ns), (0, 380 << 20));
    let page = hs
        .iter()
        .find(|h| h.function == "[memory: 4 KiB page]")
        .unwrap();
    assert_eq!(page.kind, FrameKind::Page);
    assert_eq!(page.self_ns, 122 << 20);
    assert!(
        p.all_hotspots(ProfileType::Cpu)
            .iter()
            .all(|h| h.kind != FrameKind::Page)
    );
}

#[test]
fn top_stacks_keep_the_innermost_frames_and_a_deep_trunk_its_inner_end() {
    let frames: Vec<Frame> = (0..12)
        .map(|i| Frame::user(format!("f{i}"), "svc"))
        .collect();
    let mut p = Profile::new();
    p.add_memory(&frames, 4096, 3, 3 << 20);
    p.add_memory(&frames[..11], 4096, 1, 1 << 20);
    let top = p.top_stacks(ProfileType::Memory, 5, 4);
    assert_eq!(top.len(), 2);
    assert_eq!(
        (top[0].path(), top[0].elided, top[0].value),
        (
            "… → f9 → f10 → f11 → [memory: 4 KiB page]".to_string(),
            9,
            3 << 20
        )
    );
    assert!((top[1].share - 0.25).abs() < 1e-9);
    // f0..f10 and the page frame are on every stack: the summary keeps the outer three
    // and the inner five.
    let text = text_of(&p, ProfileType::Memory, 3);
    assert!(
        text.ends_with(
            "on every stack: f0, f1, f2, … 4 more …, f7, f8, f9, f10, [memory: 4 KiB page]\n"
        ),
        "{text}"
    );
}
