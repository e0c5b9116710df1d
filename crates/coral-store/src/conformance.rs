//! The behaviour every [`Store`] backend must have, as checks that each backend's
//! tests run on a fresh, empty store:
//!
//! ```ignore
//! coral_store::conformance_suite!(fresh_store());
//! ```

use std::collections::{BTreeMap, HashMap};

use crate::{
    AgentRecord, Precision, ProfileSession, RequestQuery, SessionResult, SpanId, SpanRecord, Store,
    StoreError, TraceId, TraceProfileRecord, frame_hash, stack_hash,
};
use coral_analysis::StatusPattern;
use coral_analysis::profile::{Frame, FrameKind, Profile, WeightedStack};
use serde_json::json;

/// Generates one `#[tokio::test]` per check; `$store` is an expression (usually an
/// `async` call, awaited here) giving a fresh, empty store, or a guard that derefs to
/// one (to keep a temporary database alive). Attributes before the
/// expression (such as `#[ignore = "…"]`) go on every test.
#[macro_export]
macro_rules! conformance_suite {
    // Leading attributes are gathered into one bracketed group first: matched as
    // `$(#[$meta:meta])* $store:expr` they would be ambiguous (an expression may
    // start with an attribute), and a group of them can't be repeated inside the
    // repetition over the checks.
    (@attrs [$($attr:tt)*] #[$meta:meta] $($rest:tt)+) => {
        $crate::conformance_suite!(@attrs [$($attr)* #[$meta]] $($rest)+);
    };
    (@attrs $attrs:tt $store:expr) => {
        $crate::conformance_suite!(@each $attrs $store;
            spans_round_trip, duplicate_spans_stored_once, large_batch_is_stored,
            services_are_recorded, unknown_trace_is_not_found, requests_are_filtered,
            agents_register_and_heartbeat, empty_batch_is_a_no_op,
            concurrent_batches_store_each_span_once, agents_are_listed_by_node,
            trace_profiles_round_trip, duplicate_trace_profiles_stored_once,
            stacks_and_frames_are_shared, unknown_trace_has_no_profiles,
            large_profile_batch_is_stored, concurrent_profile_batches_store_each_once,
            profile_sessions_are_active_until_they_end,
            session_results_replace_and_list_by_node);
    };
    (@each $attrs:tt $store:expr; $check:ident $(, $rest:ident)*) => {
        $crate::conformance_suite!(@one $attrs $store; $check);
        $crate::conformance_suite!(@each $attrs $store; $($rest),*);
    };
    (@each $attrs:tt $store:expr;) => {};
    (@one [$($attr:tt)*] $store:expr; $check:ident) => {
        #[tokio::test]
        $($attr)*
        async fn $check() {
            let store = $store;
            $crate::conformance::$check(&*store).await;
        }
    };
    ($($input:tt)+) => {
        $crate::conformance_suite!(@attrs [] $($input)+);
    };
}

const SEC: i64 = 1_000_000_000;
/// A fixed "now" far enough from the epoch that `since` arithmetic is meaningful.
const T0: i64 = 1_700_000_000 * SEC;

fn trace(n: u8) -> TraceId {
    TraceId([n; 16])
}

fn span_id(n: u8) -> SpanId {
    SpanId([n; 8])
}

/// A request span of `service` with everything set.
pub fn full_span(service: &str, trace_n: u8, span_n: u8) -> SpanRecord {
    let mut attributes = serde_json::Map::new();
    attributes.insert("http.request.method".into(), json!("POST"));
    attributes.insert("retry".into(), json!(3));
    attributes.insert("tags".into(), json!(["a", "b"]));
    attributes.insert("quote's \"here\"".into(), json!("ünïcode ✓"));
    SpanRecord {
        trace_id: trace(trace_n),
        span_id: span_id(span_n),
        parent_span_id: None,
        service: service.to_string(),
        name: "POST /checkout".into(),
        kind: crate::SPAN_KIND_SERVER,
        start_unix_nano: T0 + 123_456_789,
        duration_ns: 1_500_000_001,
        status_code: 2,
        status_message: "payment declined".into(),
        http_status: Some(502),
        url: Some("/checkout?id=1".into()),
        route: Some("/checkout".into()),
        pid: Some(4242),
        thread_id: Some(4243),
        node: "node-a".into(),
        attributes,
    }
}

/// An internal child span with only the required fields.
pub fn minimal_child(parent: &SpanRecord, span_n: u8, offset_ns: i64, dur_ns: i64) -> SpanRecord {
    SpanRecord {
        trace_id: parent.trace_id,
        span_id: span_id(span_n),
        parent_span_id: Some(parent.span_id),
        service: parent.service.clone(),
        name: format!("child-{span_n}"),
        kind: 1,
        start_unix_nano: parent.start_unix_nano + offset_ns,
        duration_ns: dur_ns,
        status_code: 0,
        status_message: String::new(),
        http_status: None,
        url: None,
        route: None,
        pid: None,
        thread_id: None,
        node: String::new(),
        attributes: serde_json::Map::new(),
    }
}

pub async fn spans_round_trip(store: &dyn Store) {
    let root = full_span("payment-svc", 1, 1);
    let child = minimal_child(&root, 2, 10, 5);
    assert_eq!(
        store
            .insert_spans(&[child.clone(), root.clone()])
            .await
            .unwrap(),
        2
    );
    let got = store.get_trace(&root.trace_id).await.unwrap();
    assert_eq!(
        got,
        vec![root, child],
        "spans come back whole, by start time"
    );
}

pub async fn duplicate_spans_stored_once(store: &dyn Store) {
    let root = full_span("payment-svc", 1, 1);
    assert_eq!(
        store
            .insert_spans(&[root.clone(), root.clone()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .insert_spans(std::slice::from_ref(&root))
            .await
            .unwrap(),
        0
    );
    assert_eq!(store.get_trace(&root.trace_id).await.unwrap().len(), 1);
}

pub async fn large_batch_is_stored(store: &dyn Store) {
    // More rows than a naive one-statement insert can bind parameters for.
    let root = full_span("bulk-svc", 9, 1);
    let mut spans = vec![root.clone()];
    for i in 0..5000u32 {
        let mut s = minimal_child(&root, 0, i64::from(i), 1);
        s.span_id = SpanId([(i >> 8) as u8, i as u8, 1, 2, 3, 4, 5, 6]);
        spans.push(s);
    }
    assert_eq!(store.insert_spans(&spans).await.unwrap(), 5001);
    assert_eq!(store.get_trace(&root.trace_id).await.unwrap().len(), 5001);
}

pub async fn services_are_recorded(store: &dyn Store) {
    let mut a = full_span("svc-a", 1, 1);
    let mut b = full_span("svc-b", 2, 1);
    b.start_unix_nano = T0 + 5 * SEC;
    store.insert_spans(&[a.clone(), b.clone()]).await.unwrap();
    a.span_id = span_id(2);
    a.start_unix_nano = T0 + 60 * SEC;
    store.insert_spans(&[a.clone()]).await.unwrap();
    let services = store.list_services().await.unwrap();
    let names: Vec<_> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["svc-a", "svc-b"]);
    let svc_a = store.service("svc-a").await.unwrap();
    assert_eq!(svc_a.first_seen_unix_nano, T0 + 123_456_789);
    assert_eq!(svc_a.last_seen_unix_nano, T0 + 60 * SEC);
    assert_eq!(svc_a.service_id, services[0].service_id, "ids are stable");
    assert!(matches!(
        store.service("nope").await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn unknown_trace_is_not_found(store: &dyn Store) {
    let err = store.get_trace(&trace(77)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

pub async fn requests_are_filtered(store: &dyn Store) {
    // Ten requests one second apart; the i-th lasts i*100ms, and status 200/503/404.
    let mut spans = Vec::new();
    for i in 0..10u8 {
        let mut r = full_span("shop", 10 + i, 1);
        r.start_unix_nano = T0 + i64::from(i) * SEC;
        r.duration_ns = i64::from(i) * 100_000_000;
        r.http_status = Some([200, 503, 404][usize::from(i % 3)]);
        r.status_code = if i % 3 == 1 { 2 } else { 0 };
        spans.push(minimal_child(&r, 2, 1, 1)); // internal: never a request
        spans.push(r);
    }
    let mut other = full_span("elsewhere", 99, 1);
    other.start_unix_nano = T0 + 5 * SEC;
    spans.push(other);
    store.insert_spans(&spans).await.unwrap();

    let query = |min_ms: Option<i64>, status: Option<&str>, since_s: i64, limit| RequestQuery {
        service: "shop".into(),
        since_unix_nano: T0 + since_s * SEC,
        min_duration_ns: min_ms.map(|ms| ms * 1_000_000),
        status: status.map(|s| StatusPattern::parse(s).unwrap()),
        limit,
    };
    let starts = |spans: Vec<SpanRecord>| -> Vec<i64> {
        spans
            .iter()
            .map(|s| {
                assert!(s.is_request() && s.service == "shop");
                (s.start_unix_nano - T0) / SEC
            })
            .collect()
    };
    let all = store
        .query_requests(&query(None, None, 0, 100))
        .await
        .unwrap();
    assert_eq!(starts(all), [9, 8, 7, 6, 5, 4, 3, 2, 1, 0], "newest first");
    let slow = store
        .query_requests(&query(Some(700), None, 0, 100))
        .await
        .unwrap();
    assert_eq!(starts(slow), [9, 8, 7]);
    let recent = store
        .query_requests(&query(None, None, 8, 100))
        .await
        .unwrap();
    assert_eq!(starts(recent), [9, 8]);
    let limited = store
        .query_requests(&query(None, None, 0, 3))
        .await
        .unwrap();
    assert_eq!(starts(limited), [9, 8, 7]);
    let s5xx = store
        .query_requests(&query(None, Some("5xx"), 0, 100))
        .await
        .unwrap();
    assert_eq!(starts(s5xx), [7, 4, 1]);
    let mixed = store
        .query_requests(&query(Some(300), Some("404,503"), 0, 100))
        .await
        .unwrap();
    assert_eq!(starts(mixed), [8, 7, 5, 4]);
    let errors = store
        .query_requests(&query(None, Some("error"), 0, 100))
        .await
        .unwrap();
    assert_eq!(starts(errors), [7, 4, 1]);
    // Request 9 answered 200 (9 % 3 == 0): matched by 2xx, and the only one since 9s.
    let ok = store
        .query_requests(&query(None, Some("2xx"), 9, 100))
        .await
        .unwrap();
    assert_eq!(starts(ok), [9]);
    let none = store
        .query_requests(&query(None, Some("4xx"), 9, 100))
        .await
        .unwrap();
    assert!(none.is_empty());
}

pub async fn agents_register_and_heartbeat(store: &dyn Store) {
    let agent = AgentRecord {
        agent_id: "agent-1".into(),
        node: "node-a".into(),
        version: "0.1.0".into(),
        registered_unix_nano: T0,
        last_heartbeat_unix_nano: T0,
        counters: json!({}),
    };
    store.register_agent(&agent).await.unwrap();
    store
        .heartbeat("agent-1", T0 + SEC, &json!({"spans_received": 5}))
        .await
        .unwrap();
    let err = store.heartbeat("ghost", T0, &json!({})).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    // Re-registering (after a reconnect) keeps one row and updates it.
    store
        .register_agent(&AgentRecord {
            registered_unix_nano: T0 + 2 * SEC,
            version: "0.2.0".into(),
            ..agent.clone()
        })
        .await
        .unwrap();
    let agents = store.list_agents().await.unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].version, "0.2.0");
    assert_eq!(agents[0].registered_unix_nano, T0 + 2 * SEC);
    assert_eq!(agents[0].counters, json!({"spans_received": 5}));
}

pub async fn empty_batch_is_a_no_op(store: &dyn Store) {
    assert_eq!(store.insert_spans(&[]).await.unwrap(), 0);
    assert!(store.list_services().await.unwrap().is_empty());
}

pub async fn concurrent_batches_store_each_span_once(store: &dyn Store) {
    // Four batches at once holding the same 600 spans of two services, each in
    // another order, plus one span of their own: every span is new to exactly one
    // batch, and the writers must neither deadlock nor fail.
    let root_a = full_span("busy-a", 5, 1);
    let root_b = full_span("busy-b", 6, 1);
    let shared: Vec<SpanRecord> = (0..600u32)
        .map(|i| {
            let root = if i % 2 == 0 { &root_a } else { &root_b };
            let mut s = minimal_child(root, 0, i64::from(i), 1);
            s.span_id = SpanId([2, (i >> 8) as u8, i as u8, 0, 0, 0, 0, 1]);
            s
        })
        .collect();
    let batch = |k: u8| {
        let mut b = shared.clone();
        b.rotate_left(usize::from(k) * 150);
        if k % 2 == 1 {
            b.reverse();
        }
        let mut own = minimal_child(&root_a, 0, 1000 + i64::from(k), 1);
        own.span_id = SpanId([3, k, 0, 0, 0, 0, 0, 1]);
        b.push(own);
        b
    };
    let (b0, b1, b2, b3) = (batch(0), batch(1), batch(2), batch(3));
    let (n0, n1, n2, n3) = tokio::join!(
        store.insert_spans(&b0),
        store.insert_spans(&b1),
        store.insert_spans(&b2),
        store.insert_spans(&b3),
    );
    assert_eq!(n0.unwrap() + n1.unwrap() + n2.unwrap() + n3.unwrap(), 604);
    assert_eq!(store.get_trace(&root_a.trace_id).await.unwrap().len(), 304);
    assert_eq!(store.get_trace(&root_b.trace_id).await.unwrap().len(), 300);
    let names: Vec<_> = store
        .list_services()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["busy-a", "busy-b"]);
}

pub async fn agents_are_listed_by_node(store: &dyn Store) {
    for (agent_id, node) in [
        ("b", "node-b"),
        ("c", "node-a"),
        ("a", "node-c"),
        ("a2", "node-a"),
    ] {
        let agent = AgentRecord {
            agent_id: agent_id.into(),
            node: node.into(),
            version: "0.1.0".into(),
            registered_unix_nano: T0,
            last_heartbeat_unix_nano: T0,
            counters: json!({"spans_received": 0}),
        };
        store.register_agent(&agent).await.unwrap();
    }
    let agents = store.list_agents().await.unwrap();
    let order: Vec<_> = agents
        .iter()
        .map(|a| (a.node.as_str(), a.agent_id.as_str()))
        .collect();
    assert_eq!(
        order,
        [
            ("node-a", "a2"),
            ("node-a", "c"),
            ("node-b", "b"),
            ("node-c", "a")
        ],
        "by node, then agent id"
    );
    assert_eq!(agents[0].counters, json!({"spans_received": 0}));
}

/// `profile` as a store gives it back: stacks with equal frames merged (a profile
/// built with `from_parts` may repeat one), a frame index out of the dictionary read as
/// the unknown user frame; stacks by CPU time descending, then [`stack_hash`]; frames
/// in the order they first appear in those stacks, root to leaf.
pub fn canonical_profile(profile: &Profile) -> Profile {
    type StackWeight<'a> = (Vec<&'a Frame>, u64, u64);
    let unknown = Frame::unknown(FrameKind::User);
    // Stack hash → (frames, samples, CPU time).
    let mut stacks: BTreeMap<i64, StackWeight> = BTreeMap::new();
    for stack in &profile.stacks {
        let frames: Vec<&Frame> = stack
            .frames
            .iter()
            .map(|&i| profile.frames.get(i as usize).unwrap_or(&unknown))
            .collect();
        let hashes: Vec<i64> = frames.iter().map(|f| frame_hash(f)).collect();
        let entry = stacks.entry(stack_hash(&hashes)).or_insert((frames, 0, 0));
        entry.1 = entry.1.saturating_add(stack.samples);
        entry.2 = entry.2.saturating_add(stack.cpu_ns);
    }
    let mut stacks: Vec<(i64, StackWeight)> = stacks.into_iter().collect();
    stacks.sort_by(|(ha, a), (hb, b)| b.2.cmp(&a.2).then(ha.cmp(hb)));
    let mut dictionary: Vec<Frame> = Vec::new();
    let mut index: HashMap<&Frame, u32> = HashMap::new();
    let mut weighted = Vec::new();
    for (_, (frames, samples, cpu_ns)) in stacks {
        let ids = frames
            .into_iter()
            .map(|f| {
                *index.entry(f).or_insert_with(|| {
                    dictionary.push(f.clone());
                    (dictionary.len() - 1) as u32
                })
            })
            .collect();
        weighted.push(WeightedStack {
            frames: ids,
            samples,
            cpu_ns,
        });
    }
    Profile::from_parts(dictionary, weighted)
}

/// `record` as a store gives it back (see [`canonical_profile`]).
pub fn canonical(record: &TraceProfileRecord) -> TraceProfileRecord {
    TraceProfileRecord {
        profile: canonical_profile(&record.profile),
        ..record.clone()
    }
}

/// A checkout request's profile: user frames of two modules, a syscall into the
/// kernel, a frame whose name has separators and non-ASCII text, and a sample
/// without a stack. `scale` multiplies the counts.
pub fn checkout_profile(scale: u64) -> Profile {
    let main = Frame::user("main", "payment-svc");
    let handle = Frame::user("checkout::handle", "payment-svc");
    let query = Frame::user("db::query", "payment-svc");
    let write = Frame::user("__libc_write", "libc.so.6");
    let mut p = Profile::new();
    p.add(
        &[main.clone(), handle.clone(), query.clone()],
        5 * scale,
        99,
    );
    p.add(
        &[
            main.clone(),
            handle.clone(),
            write,
            Frame::kernel("do_syscall_64"),
            Frame::kernel("tcp_sendmsg"),
        ],
        3 * scale,
        99,
    );
    p.add(
        &[main, Frame::user("fmt<a;b> ünï \"q\"\n", "[unknown]")],
        scale,
        49,
    );
    p.add(&[], 2 * scale, 99);
    p
}

/// Another profile sharing frames (and a kernel stack) with [`checkout_profile`].
pub fn refund_profile() -> Profile {
    let main = Frame::user("main", "payment-svc");
    let handle = Frame::user("refund::handle", "payment-svc");
    let mut p = Profile::new();
    p.add(
        &[
            main.clone(),
            handle.clone(),
            Frame::user("__libc_write", "libc.so.6"),
            Frame::kernel("do_syscall_64"),
            Frame::kernel("tcp_sendmsg"),
        ],
        7,
        99,
    );
    p.add(&[main, handle, Frame::unknown(FrameKind::User)], 1, 99);
    p
}

/// A thread-precision profile of span `span_n` of trace `trace_n`.
pub fn trace_profile(trace_n: u8, span_n: u8, profile: Profile) -> TraceProfileRecord {
    TraceProfileRecord {
        trace_id: trace(trace_n),
        span_id: span_id(span_n),
        service: "payment-svc".into(),
        span_name: "POST /checkout".into(),
        start_unix_nano: T0 + 123_456_789,
        duration_ns: 1_500_000_001,
        node: "node-a".into(),
        pid: Some(4242),
        thread_id: Some(4243),
        precision: Precision::Thread,
        frequency_hz: 99,
        concurrent_requests: 0,
        source: "session:6f1c7b0e-2c1a-4d8e-9f3b-0a1b2c3d4e5f".into(),
        profile,
    }
}

pub async fn trace_profiles_round_trip(store: &dyn Store) {
    let mut late = trace_profile(1, 1, checkout_profile(1));
    late.start_unix_nano = T0 + 2 * SEC;
    let mut early = trace_profile(1, 2, refund_profile());
    early.start_unix_nano = T0 + SEC;
    early.span_name = "POST /refund".into();
    early.precision = Precision::Process;
    early.thread_id = None;
    early.concurrent_requests = 3;
    early.frequency_hz = 49;
    early.node = "node-b".into();
    let mut no_pid = trace_profile(1, 3, Profile::new());
    no_pid.start_unix_nano = T0 + 3 * SEC;
    no_pid.pid = None;
    no_pid.thread_id = None;
    let other = trace_profile(2, 1, checkout_profile(2));
    let n = store
        .insert_trace_profiles(&[late.clone(), other.clone(), no_pid.clone(), early.clone()])
        .await
        .unwrap();
    assert_eq!(n, 4);
    let got = store.trace_profiles(&trace(1)).await.unwrap();
    assert_eq!(
        got,
        [canonical(&early), canonical(&late), no_pid],
        "profiles come back whole, by start time"
    );
    assert_eq!(got[1].samples(), 5 + 3 + 1 + 2);
    assert_eq!(
        got[1].profile.total_cpu_ns(),
        late.profile.total_cpu_ns(),
        "CPU time of stacks sampled at different rates is kept"
    );
    let kernel = got[0]
        .profile
        .frames
        .iter()
        .filter(|f| f.kind == FrameKind::Kernel)
        .count();
    assert_eq!(kernel, 2);
    assert_eq!(
        store.trace_profiles(&trace(2)).await.unwrap(),
        [canonical(&other)]
    );
}

pub async fn duplicate_trace_profiles_stored_once(store: &dyn Store) {
    let p = trace_profile(1, 1, checkout_profile(1));
    assert_eq!(
        store
            .insert_trace_profiles(&[p.clone(), p.clone()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .insert_trace_profiles(std::slice::from_ref(&p))
            .await
            .unwrap(),
        0
    );
    // A retry with other content leaves the stored profile as it is.
    let mut changed = trace_profile(1, 1, refund_profile());
    changed.span_name = "changed".into();
    let fresh = trace_profile(1, 2, refund_profile());
    assert_eq!(
        store
            .insert_trace_profiles(&[changed, fresh.clone()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.trace_profiles(&trace(1)).await.unwrap(),
        [canonical(&p), canonical(&fresh)]
    );
}

pub async fn stacks_and_frames_are_shared(store: &dyn Store) {
    // The same stacks in three profiles with different weights, stored in separate
    // calls and together in one.
    let a = trace_profile(1, 1, checkout_profile(1));
    let b = trace_profile(2, 1, checkout_profile(3));
    let mut c = trace_profile(3, 1, checkout_profile(5));
    c.profile.merge(&refund_profile());
    // A dictionary that repeats a frame, so that two stacks are equal: stored merged.
    let main = Frame::user("main", "payment-svc");
    let handle = Frame::user("checkout::handle", "payment-svc");
    let repeated = Profile::from_parts(
        vec![main.clone(), handle, main],
        vec![
            WeightedStack {
                frames: vec![0, 1],
                samples: 2,
                cpu_ns: 20,
            },
            WeightedStack {
                frames: vec![2, 1],
                samples: 3,
                cpu_ns: 30,
            },
            WeightedStack {
                frames: vec![0, 7],
                samples: 1,
                cpu_ns: 10,
            },
        ],
    );
    let d = trace_profile(4, 1, repeated);
    assert_eq!(
        store
            .insert_trace_profiles(std::slice::from_ref(&a))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .insert_trace_profiles(&[c.clone(), b.clone(), d.clone()])
            .await
            .unwrap(),
        3
    );
    for (n, p) in [(1, &a), (2, &b), (3, &c), (4, &d)] {
        assert_eq!(
            store.trace_profiles(&trace(n)).await.unwrap(),
            [canonical(p)]
        );
    }
    let d_back = &store.trace_profiles(&trace(4)).await.unwrap()[0].profile;
    assert_eq!(d_back.stacks.len(), 2);
    assert_eq!((d_back.stacks[0].samples, d_back.stacks[0].cpu_ns), (5, 50));
    assert_eq!(d_back.frames[2], Frame::unknown(FrameKind::User));
}

pub async fn unknown_trace_has_no_profiles(store: &dyn Store) {
    assert_eq!(store.insert_trace_profiles(&[]).await.unwrap(), 0);
    let err = store.trace_profiles(&trace(77)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    // A trace with spans but no profile.
    let span = full_span("svc", 78, 1);
    store.insert_spans(&[span]).await.unwrap();
    let err = store.trace_profiles(&trace(78)).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

/// Profile `i` of the large batches: its own trace, five stacks, three frames of its
/// own per stack and two shared ones.
fn numbered_profile(i: u32) -> TraceProfileRecord {
    let mut p = Profile::new();
    for k in 0..5u32 {
        p.add(
            &[
                Frame::user("main", "bulk-svc"),
                Frame::user(format!("handler-{}", i % 7), "bulk-svc"),
                Frame::user(format!("f-{i}-{k}"), "bulk-svc"),
                Frame::kernel(format!("k-{i}-{k}")),
                Frame::user(format!("leaf-{i}-{k}"), "libc.so.6"),
            ],
            u64::from(k + 1),
            99,
        );
    }
    let mut record = trace_profile(0, 1, p);
    let [a, b, c, d] = i.to_be_bytes();
    record.trace_id = TraceId([7, a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    record.start_unix_nano = T0 + i64::from(i);
    record
}

pub async fn large_profile_batch_is_stored(store: &dyn Store) {
    // More profiles, frames, stacks and samples than a naive one-statement insert can
    // bind parameters for.
    let profiles: Vec<TraceProfileRecord> = (0..900).map(numbered_profile).collect();
    assert_eq!(store.insert_trace_profiles(&profiles).await.unwrap(), 900);
    for i in [0, 499, 500, 899] {
        let p = &profiles[i];
        assert_eq!(
            store.trace_profiles(&p.trace_id).await.unwrap(),
            [canonical(p)]
        );
    }
}

pub async fn concurrent_profile_batches_store_each_once(store: &dyn Store) {
    // Four batches at once holding the same 200 profiles in different orders (with
    // shared frames and stacks), plus one of their own: no deadlock, no failure, each
    // profile new to exactly one batch.
    let shared: Vec<TraceProfileRecord> = (0..200).map(numbered_profile).collect();
    let batch = |k: u32| {
        let mut b = shared.clone();
        b.rotate_left(k as usize * 50);
        if k % 2 == 1 {
            b.reverse();
        }
        b.push(numbered_profile(1000 + k));
        b
    };
    let (b0, b1, b2, b3) = (batch(0), batch(1), batch(2), batch(3));
    let (n0, n1, n2, n3) = tokio::join!(
        store.insert_trace_profiles(&b0),
        store.insert_trace_profiles(&b1),
        store.insert_trace_profiles(&b2),
        store.insert_trace_profiles(&b3),
    );
    assert_eq!(n0.unwrap() + n1.unwrap() + n2.unwrap() + n3.unwrap(), 204);
    for p in [&shared[0], &shared[123], &b3[200]] {
        assert_eq!(
            store.trace_profiles(&p.trace_id).await.unwrap(),
            [canonical(p)]
        );
    }
}

fn session(n: u8, created_unix_nano: i64, duration_ns: i64) -> ProfileSession {
    ProfileSession {
        session_id: uuid::Uuid::from_bytes([n; 16]),
        service: format!("svc-{n}"),
        frequency_hz: 49,
        created_unix_nano,
        duration_ns,
    }
}

pub async fn profile_sessions_are_active_until_they_end(store: &dyn Store) {
    let ended = session(1, T0 - 100 * SEC, 10 * SEC);
    let short = session(2, T0, 10 * SEC);
    let long = session(3, T0 + 5 * SEC, 60 * SEC);
    // Its end is past i64::MAX: it never ends.
    let endless = session(4, T0 + 6 * SEC, i64::MAX);
    for s in [&long, &endless, &ended, &short] {
        store.create_profile_session(s).await.unwrap();
    }
    let active = |now| async move { store.active_profile_sessions(now).await.unwrap() };
    assert_eq!(
        active(T0 + SEC).await,
        [short.clone(), long.clone(), endless.clone()],
        "oldest first"
    );
    assert_eq!(
        active(T0 + 10 * SEC).await,
        [long.clone(), endless.clone()],
        "a session has ended at its end"
    );
    assert_eq!(active(T0 + 10 * SEC - 1).await.len(), 3);
    assert_eq!(active(T0 + 65 * SEC).await, std::slice::from_ref(&endless));
    assert_eq!(active(i64::MAX - 1).await, [endless]);
}

pub async fn session_results_replace_and_list_by_node(store: &dyn Store) {
    let s = session(1, T0, 30 * SEC);
    let other = session(2, T0, 30 * SEC);
    store.create_profile_session(&s).await.unwrap();
    store.create_profile_session(&other).await.unwrap();
    let failed = SessionResult {
        session_id: s.session_id,
        agent_id: "agent-1".into(),
        node: "node-b".into(),
        processes: 2,
        profile: Profile::new(),
        error: Some("perf_event_open: permission denied (CAP_PERFMON)".into()),
    };
    store.put_session_result(&failed).await.unwrap();
    // The agent's second answer replaces its first.
    let answered = SessionResult {
        node: "node-b2".into(),
        processes: 3,
        profile: checkout_profile(4),
        error: None,
        ..failed.clone()
    };
    store.put_session_result(&answered).await.unwrap();
    let elsewhere = SessionResult {
        agent_id: "agent-2".into(),
        node: "node-a".into(),
        processes: 0,
        profile: Profile::new(),
        error: None,
        ..failed.clone()
    };
    store.put_session_result(&elsewhere).await.unwrap();
    assert_eq!(
        store.session_results(s.session_id).await.unwrap(),
        [elsewhere, answered],
        "by node"
    );
    assert!(
        store
            .session_results(other.session_id)
            .await
            .unwrap()
            .is_empty()
    );
    let unknown = SessionResult {
        session_id: uuid::Uuid::from_bytes([9; 16]),
        ..failed
    };
    let err = store.put_session_result(&unknown).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert!(
        store
            .session_results(unknown.session_id)
            .await
            .unwrap()
            .is_empty()
    );
}
