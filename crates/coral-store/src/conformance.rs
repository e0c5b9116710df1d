//! The behaviour every [`Store`] backend must have, as checks that each backend's
//! tests run on a fresh, empty store:
//!
//! ```ignore
//! coral_store::conformance_suite!(fresh_store());
//! ```

use std::collections::{BTreeMap, HashMap};

use crate::batch::now_unix_nano;
use crate::{
    AgentRecord, CollectedRequest, InsertedProfiles, ListedRequest, Precision, ProfileSession,
    ProfileSource, ProfileType, RequestQuery, SessionResult, SpanId, SpanRecord, Store, StoreError,
    TraceId, TraceProfileRecord, TraceProfileTrigger, TriggerStatus, frame_hash, stack_hash,
};
use coral_analysis::StatusPattern;
use coral_analysis::profile::{Frame, FrameKind, Profile, WaitCause, WeightedStack};
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
            trace_profiles_round_trip, sample_losses_round_trip, off_cpu_profiles_round_trip,
            memory_profiles_round_trip,
            non_collected_profile_types_are_refused,
            duplicate_trace_profiles_stored_once,
            stacks_and_frames_are_shared, unknown_trace_has_no_profiles,
            large_profile_batch_is_stored, concurrent_profile_batches_store_each_once,
            profile_sessions_are_active_until_they_end,
            session_results_replace_and_list_by_node, triggers_round_trip,
            trigger_of_unknown_service_is_not_found, unknown_trigger_is_not_found,
            active_triggers_exclude_expired_and_ended, cancelling_ends_only_active_triggers,
            expiring_ends_the_triggers_due, trigger_collects_up_to_max_requests,
            a_trace_counts_once_per_trigger, concurrent_trigger_profiles_never_exceed_max,
            baseline_is_capped, trigger_requests_come_with_their_spans,
            a_request_counts_in_the_baseline_of_every_trigger_it_is_sent_for,
            trigger_ids_resolve_from_unique_prefixes, requests_are_listed_with_their_profiles,
            purge_deletes_old_profiles_and_ended_triggers, cohorts_are_selected_by_filter,
            cohorts_respect_service_since_and_limit, cohort_filter_values_are_never_sql,
            request_summary_is_exact_over_the_window);
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

pub async fn request_summary_is_exact_over_the_window(store: &dyn Store) {
    const MS: i64 = 1_000_000;
    // Thirty requests in the window lasting 10ms..300ms, stored out of order. Errors:
    // OTel status error (every 5th), HTTP 503 (every 7th), both (the 30th: counted
    // once); HTTP 404 is not an error.
    let mut spans = Vec::new();
    for i in (1..=30u8).rev().step_by(2).chain((1..=30u8).step_by(2)) {
        let mut r = full_span("shop", i, 1);
        r.start_unix_nano = T0 + i64::from(i) * SEC;
        r.duration_ns = i64::from(i) * 10 * MS;
        r.status_code = if i % 5 == 0 { 2 } else { 0 };
        r.http_status = Some(match i {
            30 => 500,
            i if i % 7 == 0 => 503,
            i if i % 3 == 0 => 404,
            _ => 200,
        });
        // Not requests: never counted, however slow.
        spans.push(minimal_child(&r, 2, 1, 999 * SEC));
        spans.push(r);
    }
    // Before the window, and another service: not counted either.
    let mut old = full_span("shop", 100, 1);
    old.start_unix_nano = T0 - SEC;
    old.duration_ns = 999 * SEC;
    let mut other = full_span("elsewhere", 101, 1);
    other.start_unix_nano = T0 + 5 * SEC;
    other.duration_ns = 999 * SEC;
    spans.extend([old, other]);
    store.insert_spans(&spans).await.unwrap();

    let summary = store.request_summary("shop", T0, 3).await.unwrap();
    assert_eq!(summary.requests, 30);
    assert_eq!(summary.errors, 10, "6 OTel errors + 4 HTTP 503");
    // Nearest rank over 30: the 15th, 29th (28.5 rounded up) and 30th (29.7).
    assert_eq!(summary.percentiles_ns, [150 * MS, 290 * MS, 300 * MS]);
    let slowest: Vec<_> = summary
        .slowest
        .iter()
        .map(|s| (s.trace_id, s.duration_ns))
        .collect();
    assert_eq!(
        slowest,
        [
            (trace(30), 300 * MS),
            (trace(29), 290 * MS),
            (trace(28), 280 * MS)
        ]
    );
    assert_eq!(summary.slowest[0], spans[1], "the whole span");
    // The time the data covers: the first and the last request in the window.
    assert_eq!(
        (summary.first_start_unix_nano, summary.last_start_unix_nano),
        (Some(T0 + SEC), Some(T0 + 30 * SEC))
    );

    // From the 21st second: requests 21..=30.
    let recent = store
        .request_summary("shop", T0 + 21 * SEC, 1)
        .await
        .unwrap();
    assert_eq!((recent.requests, recent.errors), (10, 4));
    assert_eq!(recent.percentiles_ns, [250 * MS, 300 * MS, 300 * MS]);
    assert_eq!(recent.slowest.len(), 1);

    let empty = store
        .request_summary("shop", T0 + 31 * SEC, 3)
        .await
        .unwrap();
    assert_eq!(
        empty,
        crate::RequestSummary {
            requests: 0,
            errors: 0,
            percentiles_ns: vec![],
            slowest: vec![],
            first_start_unix_nano: None,
            last_start_unix_nano: None,
        }
    );
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
        profiled: false,
    };
    let starts = |requests: Vec<ListedRequest>| -> Vec<i64> {
        requests
            .iter()
            .map(|r| &r.span)
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
/// the unknown user frame; stacks by CPU time descending, then off-CPU time
/// descending, then memory descending, then [`stack_hash`]; frames in the order they first appear in those
/// stacks, root to leaf.
pub fn canonical_profile(profile: &Profile) -> Profile {
    type StackWeight<'a> = (Vec<&'a Frame>, u64, u64, u64, u64);
    let unknown = Frame::unknown(FrameKind::User);
    // Stack hash → (frames, samples, CPU time, off-CPU time, memory).
    let mut stacks: BTreeMap<i64, StackWeight> = BTreeMap::new();
    for stack in &profile.stacks {
        let frames: Vec<&Frame> = stack
            .frames
            .iter()
            .map(|&i| profile.frames.get(i as usize).unwrap_or(&unknown))
            .collect();
        let hashes: Vec<i64> = frames.iter().map(|f| frame_hash(f)).collect();
        let entry = stacks
            .entry(stack_hash(&hashes))
            .or_insert((frames, 0, 0, 0, 0));
        entry.1 = entry.1.saturating_add(stack.samples);
        entry.2 = entry.2.saturating_add(stack.cpu_ns);
        entry.3 = entry.3.saturating_add(stack.off_cpu_ns);
        entry.4 = entry.4.saturating_add(stack.memory_bytes);
    }
    let mut stacks: Vec<(i64, StackWeight)> = stacks.into_iter().collect();
    stacks.sort_by(|(ha, a), (hb, b)| {
        b.2.cmp(&a.2)
            .then(b.3.cmp(&a.3))
            .then(b.4.cmp(&a.4))
            .then(ha.cmp(hb))
    });
    let mut dictionary: Vec<Frame> = Vec::new();
    let mut index: HashMap<&Frame, u32> = HashMap::new();
    let mut weighted = Vec::new();
    for (_, (frames, samples, cpu_ns, off_cpu_ns, memory_bytes)) in stacks {
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
            off_cpu_ns,
            memory_bytes,
        });
    }
    Profile::from_parts(dictionary, weighted)
}

/// `record` as a store gives it back (see [`canonical_profile`]), its profile types
/// in order, each once.
pub fn canonical(record: &TraceProfileRecord) -> TraceProfileRecord {
    let mut profile_types = record.profile_types.clone();
    profile_types.sort_unstable();
    profile_types.dedup();
    TraceProfileRecord {
        profile: canonical_profile(&record.profile),
        profile_types,
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

/// Where a checkout request waited: off-CPU stacks (each ending in its wait frame)
/// for a lock taken in `checkout::handle` (0.98 s), for the network under a socket
/// read (22 ms, with a kernel frame) and briefly in the handler itself (1 µs).
/// `scale` multiplies the times.
pub fn waiting_profile(scale: u64) -> Profile {
    let main = Frame::user("main", "payment-svc");
    let handle = Frame::user("checkout::handle", "payment-svc");
    let lock = Frame::user("acquire_ledger_lock", "payment-svc");
    let read = Frame::user("__libc_recv", "libc.so.6");
    let mut p = Profile::new();
    p.add_off_cpu(
        &[main.clone(), handle.clone(), lock],
        WaitCause::Lock,
        2,
        980_000_000 * scale,
    );
    p.add_off_cpu(
        &[
            main.clone(),
            handle.clone(),
            read,
            Frame::kernel("tcp_recvmsg"),
        ],
        WaitCause::Network,
        3,
        22_000_000 * scale,
    );
    p.add_off_cpu(&[main, handle], WaitCause::Network, 1, 1_000 * scale);
    p
}

/// Where a checkout request made memory resident, `scale` times: 4 KiB pages under
/// `grab_block` (3 records of 64 KiB, and one of a file page read in under a kernel
/// frame) and a 2 MiB huge page under `build_snapshot`.
pub fn memory_profile(scale: u64) -> Profile {
    let main = Frame::user("main", "payment-svc");
    let handle = Frame::user("checkout::handle", "payment-svc");
    let snapshot = Frame::user("build_snapshot", "payment-svc");
    let grab = Frame::user("grab_block", "payment-svc");
    let mut p = Profile::new();
    p.add_memory(
        &[main.clone(), handle.clone(), snapshot.clone(), grab],
        4096,
        3,
        3 * 65_536 * scale,
    );
    p.add_memory(
        &[main.clone(), handle.clone(), snapshot],
        2 << 20,
        1,
        (2 << 20) * scale,
    );
    p.add_memory(
        &[main, handle, Frame::user("read_config", "payment-svc")],
        4096,
        1,
        4096 * scale,
    );
    p
}

/// A request that both ran and waited: [`checkout_profile`] and [`waiting_profile`].
pub fn ran_and_waited_profile() -> Profile {
    let mut p = checkout_profile(1);
    p.merge(&waiting_profile(1));
    p
}

/// The session that [`trace_profile`]'s profiles are collected for.
const SESSION: uuid::Uuid = uuid::Uuid::from_u128(0x6f1c7b0e_2c1a_4d8e_9f3b_0a1b2c3d4e5f);

/// What storing `new` profiles, none refused, returns.
fn stored(new: u64) -> InsertedProfiles {
    InsertedProfiles {
        new,
        ..InsertedProfiles::default()
    }
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
        truncated_samples: 0,
        lost_samples: 0,
        source: ProfileSource::Session(SESSION),
        profile_types: vec![ProfileType::Cpu],
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
    assert_eq!(n, stored(4));
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

/// A profile with CPU and off-CPU stacks comes back exactly: its wait frames, each
/// stack's samples (waits), CPU and off-CPU time, and the types collected.
pub async fn off_cpu_profiles_round_trip(store: &dyn Store) {
    let mut both = trace_profile(1, 1, ran_and_waited_profile());
    // Given out of order and repeated: stored in order, once.
    both.profile_types = vec![ProfileType::Offcpu, ProfileType::Cpu, ProfileType::Offcpu];
    let mut waited_only = trace_profile(1, 2, waiting_profile(3));
    waited_only.start_unix_nano += SEC;
    waited_only.profile_types = vec![ProfileType::Offcpu];
    // Collected for off-CPU time, but it never waited.
    let mut never_waited = trace_profile(1, 3, checkout_profile(2));
    never_waited.start_unix_nano += 2 * SEC;
    never_waited.profile_types = vec![ProfileType::Cpu, ProfileType::Offcpu];
    assert_eq!(
        store
            .insert_trace_profiles(&[never_waited.clone(), both.clone(), waited_only.clone()])
            .await
            .unwrap(),
        stored(3)
    );
    let got = store.trace_profiles(&trace(1)).await.unwrap();
    assert_eq!(
        got,
        [
            canonical(&both),
            canonical(&waited_only),
            canonical(&never_waited)
        ]
    );
    assert_eq!(
        got[0].profile_types,
        [ProfileType::Cpu, ProfileType::Offcpu]
    );
    assert_eq!(got[1].profile_types, [ProfileType::Offcpu]);

    let profile = &got[0].profile;
    let waits: Vec<&Frame> = profile
        .frames
        .iter()
        .filter(|f| f.kind == FrameKind::Wait)
        .collect();
    assert_eq!(
        waits,
        [&WaitCause::Lock.frame(), &WaitCause::Network.frame()]
    );
    let off_cpu: Vec<(u64, u64, u64, Option<WaitCause>)> = profile
        .stacks
        .iter()
        .filter(|s| s.off_cpu_ns > 0)
        .map(|s| (s.samples, s.cpu_ns, s.off_cpu_ns, profile.wait_cause(s)))
        .collect();
    assert_eq!(
        off_cpu,
        [
            (2, 0, 980_000_000, Some(WaitCause::Lock)),
            (3, 0, 22_000_000, Some(WaitCause::Network)),
            (1, 0, 1_000, Some(WaitCause::Network)),
        ],
        "after the CPU stacks, by off-CPU time"
    );
    assert!(
        profile.stacks[..profile.stacks.len() - 3]
            .iter()
            .all(|s| s.cpu_ns > 0 && s.off_cpu_ns == 0)
    );
    let breakdown = profile.breakdown();
    assert_eq!(breakdown, both.profile.breakdown());
    assert_eq!(breakdown.on_cpu_ns, checkout_profile(1).total_cpu_ns());
    assert_eq!(breakdown.off_cpu_ns, 1_002_001_000);
    assert_eq!(breakdown.lock_ns, 980_000_000);
    assert_eq!(got[1].profile.breakdown().off_cpu_ns, 3 * 1_002_001_000);
    assert_eq!(got[1].profile.total_cpu_ns(), 0);
}

/// A profile with CPU, off-CPU and memory stacks comes back exactly: its page frames
/// (base and huge pages apart), each memory stack's records and bytes, the request's
/// memory total, and the types collected; memory never counts as CPU samples.
pub async fn memory_profiles_round_trip(store: &dyn Store) {
    let mut all = ran_and_waited_profile();
    all.merge(&memory_profile(1));
    let mut all = trace_profile(1, 1, all);
    // Given out of order: stored in order.
    all.profile_types = vec![ProfileType::Memory, ProfileType::Offcpu, ProfileType::Cpu];
    let mut memory_only = trace_profile(1, 2, memory_profile(5));
    memory_only.start_unix_nano += SEC;
    memory_only.precision = Precision::Process;
    memory_only.thread_id = None;
    memory_only.profile_types = vec![ProfileType::Memory];
    // Collected for memory, but it made nothing resident.
    let mut none_resident = trace_profile(1, 3, checkout_profile(1));
    none_resident.start_unix_nano += 2 * SEC;
    none_resident.profile_types = vec![ProfileType::Cpu, ProfileType::Memory];
    assert_eq!(
        store
            .insert_trace_profiles(&[none_resident.clone(), memory_only.clone(), all.clone()])
            .await
            .unwrap(),
        stored(3)
    );
    let got = store.trace_profiles(&trace(1)).await.unwrap();
    assert_eq!(
        got,
        [
            canonical(&all),
            canonical(&memory_only),
            canonical(&none_resident)
        ]
    );
    assert_eq!(
        got[0].profile_types,
        [ProfileType::Cpu, ProfileType::Offcpu, ProfileType::Memory]
    );
    assert_eq!(got[1].profile_types, [ProfileType::Memory]);
    assert_eq!(
        got[2].profile_types,
        [ProfileType::Cpu, ProfileType::Memory]
    );

    let profile = &got[0].profile;
    let pages: Vec<&str> = profile
        .frames
        .iter()
        .filter(|f| f.kind == FrameKind::Page)
        .map(|f| f.function.as_str())
        .collect();
    assert_eq!(
        pages,
        ["2 MiB huge page", "4 KiB page"],
        "by memory, descending"
    );
    let memory: Vec<(u64, u64, u64, u64)> = profile
        .stacks
        .iter()
        .filter(|s| s.memory_bytes > 0)
        .map(|s| (s.samples, s.cpu_ns, s.off_cpu_ns, s.memory_bytes))
        .collect();
    assert_eq!(
        memory,
        [(1, 0, 0, 2 << 20), (3, 0, 0, 3 * 65_536), (1, 0, 0, 4096)],
        "after the CPU and off-CPU stacks, by memory"
    );
    assert_eq!(profile.memory_breakdown(), all.profile.memory_breakdown());
    assert_eq!(profile.memory_breakdown().huge_page_bytes, 2 << 20);
    assert_eq!(
        profile.total(ProfileType::Memory),
        (2 << 20) + 3 * 65_536 + 4096
    );
    assert_eq!(profile.breakdown(), all.profile.breakdown());
    assert_eq!(
        got[0].samples(),
        checkout_profile(1).count(ProfileType::Cpu)
    );
    assert_eq!(got[1].samples(), 0, "memory records are not CPU samples");
    assert_eq!(
        got[1].profile.total(ProfileType::Memory),
        5 * ((2 << 20) + 3 * 65_536 + 4096)
    );
    assert_eq!(got[1].profile.total_cpu_ns(), 0);
}

/// Only collected profile types are stored: `wall` is a view, and a profile or
/// trigger collects at least one type. Nothing of a refused batch is stored.
pub async fn non_collected_profile_types_are_refused(store: &dyn Store) {
    services_send_spans(store, &["payment-svc"]).await;
    let fine = trace_profile(1, 1, checkout_profile(1));
    for types in [vec![ProfileType::Cpu, ProfileType::Wall], vec![]] {
        let bad = TraceProfileRecord {
            profile_types: types.clone(),
            ..trace_profile(1, 2, checkout_profile(1))
        };
        let err = store
            .insert_trace_profiles(&[fine.clone(), bad])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidArgument(_)),
            "{types:?}: {err}"
        );
        let trigger = TraceProfileTrigger {
            profile_types: types.clone(),
            ..new_trigger(1, "payment-svc")
        };
        let err = store.create_trigger(&trigger).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidArgument(_)),
            "{types:?}: {err}"
        );
    }
    assert!(!has_profiles(store, 1).await);
    assert!(matches!(
        store
            .trigger(new_trigger(1, "payment-svc").trigger_id)
            .await,
        Err(StoreError::NotFound(_))
    ));
}

/// A trigger and the request it collected, as a database before off-CPU profiles
/// (migration 0006) held them: CPU samples only, with a kernel frame. A backend's
/// migration test writes them with plain SQL (its rows: [`crate::profile_rows::ProfileRows`]
/// of the profile, without off-CPU columns), migrates, and checks the store with
/// [`data_from_before_off_cpu_reads_as_cpu_only`].
pub fn before_off_cpu() -> (TraceProfileTrigger, TraceProfileRecord) {
    let trigger = TraceProfileTrigger {
        collected_requests: 1,
        trace_ids: vec![trace(1)],
        baseline_requests: 5,
        ..new_trigger(1, "payment-svc")
    };
    let profile = TraceProfileRecord {
        truncated_samples: 1,
        lost_samples: 2,
        ..sourced_profile(1, 1, ProfileSource::Trigger(trigger.trigger_id), 3)
    };
    (trigger, profile)
}

/// What a store reads of [`before_off_cpu`]'s data once migrated: a trigger and a
/// profile that collected CPU samples only, no off-CPU time; and the migrated store
/// takes off-CPU profiles (wait frames) like a new one.
pub async fn data_from_before_off_cpu_reads_as_cpu_only(store: &dyn Store) {
    let (trigger, profile) = before_off_cpu();
    assert_eq!(trigger.profile_types, [ProfileType::Cpu]);
    assert_eq!(profile.profile_types, [ProfileType::Cpu]);
    assert_eq!(store.trigger(trigger.trigger_id).await.unwrap(), trigger);
    let got = store.trace_profiles(&profile.trace_id).await.unwrap();
    assert_eq!(got, [canonical(&profile)]);
    assert!(got[0].profile.stacks.iter().all(|s| s.off_cpu_ns == 0));
    let collected = store.trigger_requests(trigger.trigger_id).await.unwrap();
    let summary: Vec<(TraceId, u64, u64, u64, Vec<ProfileType>)> = collected
        .into_iter()
        .map(|r| {
            (
                r.trace_id,
                r.samples,
                r.cpu_ns,
                r.off_cpu_ns,
                r.profile_types,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [(
            profile.trace_id,
            profile.samples(),
            profile.profile.total_cpu_ns(),
            0,
            vec![ProfileType::Cpu]
        )]
    );

    let waited = TraceProfileRecord {
        profile_types: vec![ProfileType::Cpu, ProfileType::Offcpu],
        ..trace_profile(2, 1, ran_and_waited_profile())
    };
    assert_eq!(
        store
            .insert_trace_profiles(std::slice::from_ref(&waited))
            .await
            .unwrap(),
        stored(1)
    );
    assert_eq!(
        store.trace_profiles(&waited.trace_id).await.unwrap(),
        [canonical(&waited)]
    );
}

/// How complete a profile is (truncated and lost samples) comes back as stored;
/// a lost count beyond the column's range is kept as the largest it holds, which
/// is still a lower bound.
pub async fn sample_losses_round_trip(store: &dyn Store) {
    let mut lossy = trace_profile(1, 1, checkout_profile(1));
    lossy.truncated_samples = 7;
    lossy.lost_samples = 5_000_000_000;
    let mut complete = trace_profile(1, 2, refund_profile());
    complete.start_unix_nano += SEC;
    let mut overflowing = trace_profile(1, 3, Profile::new());
    overflowing.start_unix_nano += 2 * SEC;
    overflowing.truncated_samples = u32::MAX;
    overflowing.lost_samples = u64::MAX;
    store
        .insert_trace_profiles(&[lossy.clone(), complete.clone(), overflowing.clone()])
        .await
        .unwrap();
    let got = store.trace_profiles(&trace(1)).await.unwrap();
    let losses: Vec<(u32, u64)> = got
        .iter()
        .map(|p| (p.truncated_samples, p.lost_samples))
        .collect();
    assert_eq!(
        losses,
        [(7, 5_000_000_000), (0, 0), (u32::MAX, i64::MAX as u64)]
    );
    assert_eq!(got[0], canonical(&lossy));
    assert_eq!(got[1], canonical(&complete));
}

pub async fn duplicate_trace_profiles_stored_once(store: &dyn Store) {
    let p = trace_profile(1, 1, checkout_profile(1));
    assert_eq!(
        store
            .insert_trace_profiles(&[p.clone(), p.clone()])
            .await
            .unwrap(),
        stored(1)
    );
    assert_eq!(
        store
            .insert_trace_profiles(std::slice::from_ref(&p))
            .await
            .unwrap(),
        stored(0)
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
        stored(1)
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
                off_cpu_ns: 0,
                memory_bytes: 0,
            },
            WeightedStack {
                frames: vec![2, 1],
                samples: 3,
                cpu_ns: 30,
                off_cpu_ns: 0,
                memory_bytes: 0,
            },
            WeightedStack {
                frames: vec![0, 7],
                samples: 1,
                cpu_ns: 10,
                off_cpu_ns: 0,
                memory_bytes: 0,
            },
        ],
    );
    let d = trace_profile(4, 1, repeated);
    assert_eq!(
        store
            .insert_trace_profiles(std::slice::from_ref(&a))
            .await
            .unwrap(),
        stored(1)
    );
    assert_eq!(
        store
            .insert_trace_profiles(&[c.clone(), b.clone(), d.clone()])
            .await
            .unwrap(),
        stored(3)
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
    assert_eq!(store.insert_trace_profiles(&[]).await.unwrap(), stored(0));
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
    assert_eq!(
        store.insert_trace_profiles(&profiles).await.unwrap(),
        stored(900)
    );
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
    let new = [n0, n1, n2, n3].map(|n| n.unwrap().new);
    assert_eq!(new.iter().sum::<u64>(), 204);
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

/// Trigger `n` of `service`, active and empty: created `n` seconds after [`T0`],
/// expiring a minute later. Its times are whole microseconds, which PostgreSQL keeps.
pub fn new_trigger(n: u8, service: &str) -> TraceProfileTrigger {
    let created = T0 + i64::from(n) * SEC;
    TraceProfileTrigger {
        trigger_id: uuid::Uuid::from_bytes([n; 16]),
        service: service.to_string(),
        created_unix_nano: created,
        expires_unix_nano: created + 60 * SEC,
        ended_unix_nano: None,
        status: TriggerStatus::Active,
        min_duration_ms: Some(500),
        max_duration_ms: None,
        status_code_pattern: Some("5xx".into()),
        url_pattern: None,
        frequency_hz: 99,
        max_requests: 10,
        collected_requests: 0,
        trace_ids: Vec::new(),
        baseline_requests: 0,
        baseline_collected: 0,
        profile_types: vec![ProfileType::Cpu],
    }
}

/// `trigger`, ended with `status` at `at`.
fn ended(mut trigger: TraceProfileTrigger, status: TriggerStatus, at: i64) -> TraceProfileTrigger {
    trigger.status = status;
    trigger.ended_unix_nano = Some(at);
    trigger
}

/// Makes `services` known, as their first spans do (trace 250, never profiled here).
async fn services_send_spans(store: &dyn Store, services: &[&str]) {
    let spans: Vec<SpanRecord> = services
        .iter()
        .zip(1u8..)
        .map(|(service, n)| full_span(service, 250, n))
        .collect();
    store.insert_spans(&spans).await.unwrap();
}

/// A profile of span `span_n` of trace `trace_n` collected for `source`, of a
/// request that started `start_s` seconds after [`T0`].
pub fn sourced_profile(
    trace_n: u8,
    span_n: u8,
    source: ProfileSource,
    start_s: i64,
) -> TraceProfileRecord {
    TraceProfileRecord {
        source,
        start_unix_nano: T0 + start_s * SEC,
        ..trace_profile(trace_n, span_n, checkout_profile(1))
    }
}

/// Whether trace `n` has stored profiles.
async fn has_profiles(store: &dyn Store, n: u8) -> bool {
    match store.trace_profiles(&trace(n)).await {
        Ok(_) => true,
        Err(StoreError::NotFound(_)) => false,
        Err(e) => panic!("{e}"),
    }
}

pub async fn triggers_round_trip(store: &dyn Store) {
    services_send_spans(store, &["svc-a", "svc-b"]).await;
    // Every field set, and an expiry that needs all 63 bits of its nanoseconds.
    let a1 = TraceProfileTrigger {
        expires_unix_nano: i64::MAX / 1000 * 1000,
        max_duration_ms: Some(2000),
        url_pattern: Some("/checkout*".into()),
        collected_requests: 2,
        trace_ids: vec![
            trace(9),
            "0af7651916cd43dd8448eb211c80319c".parse().unwrap(),
        ],
        baseline_requests: 50,
        baseline_collected: 3,
        profile_types: vec![ProfileType::Cpu, ProfileType::Offcpu],
        ..new_trigger(1, "svc-a")
    };
    let b2 = new_trigger(2, "svc-b");
    let a3 = TraceProfileTrigger {
        min_duration_ms: None,
        status_code_pattern: None,
        profile_types: vec![ProfileType::Offcpu, ProfileType::Memory],
        ..new_trigger(3, "svc-a")
    };
    let a4 = ended(
        new_trigger(4, "svc-a"),
        TriggerStatus::Completed,
        T0 + 5 * SEC + 1000,
    );
    for t in [&a3, &a1, &a4, &b2] {
        store.create_trigger(t).await.unwrap();
    }
    for t in [&a1, &b2, &a3, &a4] {
        assert_eq!(&store.trigger(t.trigger_id).await.unwrap(), t);
    }
    let list = |service, include_ended, limit| async move {
        store
            .list_triggers(service, include_ended, limit)
            .await
            .unwrap()
    };
    assert_eq!(
        list(None, true, 100).await,
        [a4.clone(), a3.clone(), b2.clone(), a1.clone()],
        "newest first"
    );
    assert_eq!(
        list(None, false, 100).await,
        [a3.clone(), b2.clone(), a1.clone()],
        "active ones"
    );
    assert_eq!(list(Some("svc-a"), false, 100).await, [a3.clone(), a1]);
    assert_eq!(list(Some("svc-a"), true, 2).await, [a4, a3]);
    assert!(list(Some("svc-c"), true, 100).await.is_empty());
}

pub async fn trigger_of_unknown_service_is_not_found(store: &dyn Store) {
    services_send_spans(store, &["svc-a"]).await;
    let err = store
        .create_trigger(&new_trigger(1, "ghost"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("\"ghost\"") && message.contains("spans"),
        "{message}"
    );
    assert!(
        store
            .list_triggers(None, true, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn unknown_trigger_is_not_found(store: &dyn Store) {
    let id = uuid::Uuid::from_bytes([7; 16]);
    let err = store.trigger(id).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    let err = store.cancel_trigger(id, T0).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert!(store.trigger_requests(id).await.unwrap().is_empty());
    // Its profiles have nowhere to count: refused.
    let profiles = [
        sourced_profile(1, 1, ProfileSource::Trigger(id), 0),
        sourced_profile(2, 1, ProfileSource::Baseline(id), 0),
    ];
    assert_eq!(
        store.insert_trace_profiles(&profiles).await.unwrap(),
        InsertedProfiles {
            new: 0,
            over_limit: 2,
            completed_triggers: 0
        }
    );
    assert!(!has_profiles(store, 1).await && !has_profiles(store, 2).await);
}

pub async fn active_triggers_exclude_expired_and_ended(store: &dyn Store) {
    services_send_spans(store, &["svc-a", "svc-b"]).await;
    let t1 = new_trigger(1, "svc-a");
    let t2 = new_trigger(2, "svc-b");
    let completed = ended(
        new_trigger(3, "svc-a"),
        TriggerStatus::Completed,
        T0 + 4 * SEC,
    );
    let short = TraceProfileTrigger {
        expires_unix_nano: T0 + 20 * SEC,
        ..new_trigger(4, "svc-a")
    };
    let cancelled = ended(
        new_trigger(5, "svc-a"),
        TriggerStatus::Cancelled,
        T0 + 6 * SEC,
    );
    for t in [&short, &cancelled, &t2, &completed, &t1] {
        store.create_trigger(t).await.unwrap();
    }
    let active = |now| async move { store.active_triggers(now).await.unwrap() };
    assert_eq!(
        active(T0 + 10 * SEC).await,
        [t1.clone(), t2.clone(), short.clone()],
        "oldest first"
    );
    assert_eq!(active(T0 + 20 * SEC - 1000).await.len(), 3);
    assert_eq!(
        active(T0 + 20 * SEC).await,
        [t1.clone(), t2.clone()],
        "past its expiry, even before the sweeper marks it"
    );
    assert_eq!(active(T0 + 61 * SEC).await, [t2]);
    assert!(active(T0 + 62 * SEC).await.is_empty());
}

pub async fn cancelling_ends_only_active_triggers(store: &dyn Store) {
    services_send_spans(store, &["svc-a"]).await;
    let t1 = new_trigger(1, "svc-a");
    let completed = ended(
        new_trigger(2, "svc-a"),
        TriggerStatus::Completed,
        T0 + 5 * SEC,
    );
    let expired = ended(
        new_trigger(3, "svc-a"),
        TriggerStatus::Expired,
        T0 + 63 * SEC,
    );
    for t in [&t1, &completed, &expired] {
        store.create_trigger(t).await.unwrap();
    }
    let cancelled = ended(t1.clone(), TriggerStatus::Cancelled, T0 + 10 * SEC);
    assert_eq!(
        store
            .cancel_trigger(t1.trigger_id, T0 + 10 * SEC)
            .await
            .unwrap(),
        cancelled
    );
    assert_eq!(store.trigger(t1.trigger_id).await.unwrap(), cancelled);
    assert_eq!(
        store
            .cancel_trigger(t1.trigger_id, T0 + 20 * SEC)
            .await
            .unwrap(),
        cancelled,
        "cancelling again changes nothing"
    );
    for t in [completed, expired] {
        assert_eq!(
            store
                .cancel_trigger(t.trigger_id, T0 + 30 * SEC)
                .await
                .unwrap(),
            t,
            "an ended trigger stays as it ended"
        );
    }
    assert!(store.active_triggers(T0).await.unwrap().is_empty());
}

pub async fn expiring_ends_the_triggers_due(store: &dyn Store) {
    services_send_spans(store, &["svc-a"]).await;
    let t1 = new_trigger(1, "svc-a");
    let t2 = new_trigger(2, "svc-a");
    let short = TraceProfileTrigger {
        expires_unix_nano: T0 + 20 * SEC,
        ..new_trigger(3, "svc-a")
    };
    // Completed before its expiry, which has passed too.
    let completed = TraceProfileTrigger {
        expires_unix_nano: T0 + 10 * SEC,
        ..ended(
            new_trigger(4, "svc-a"),
            TriggerStatus::Completed,
            T0 + 5 * SEC,
        )
    };
    for t in [&t1, &t2, &short, &completed] {
        store.create_trigger(t).await.unwrap();
    }
    assert_eq!(
        store.expire_triggers(T0 + 20 * SEC - 1000).await.unwrap(),
        0
    );
    assert_eq!(store.expire_triggers(T0 + 20 * SEC).await.unwrap(), 1);
    assert_eq!(
        store.trigger(short.trigger_id).await.unwrap(),
        ended(short.clone(), TriggerStatus::Expired, T0 + 20 * SEC)
    );
    assert_eq!(
        store.trigger(completed.trigger_id).await.unwrap(),
        completed
    );
    assert_eq!(store.expire_triggers(T0 + 20 * SEC).await.unwrap(), 0);
    // Late: each ends at its own expiry, not at the sweep.
    assert_eq!(store.expire_triggers(T0 + 100 * SEC).await.unwrap(), 2);
    for t in [t1, t2] {
        let at = t.expires_unix_nano;
        assert_eq!(
            store.trigger(t.trigger_id).await.unwrap(),
            ended(t, TriggerStatus::Expired, at)
        );
    }
}

pub async fn trigger_collects_up_to_max_requests(store: &dyn Store) {
    services_send_spans(store, &["payment-svc"]).await;
    let trigger = TraceProfileTrigger {
        max_requests: 3,
        ..new_trigger(1, "payment-svc")
    };
    store.create_trigger(&trigger).await.unwrap();
    let id = trigger.trigger_id;
    let source = ProfileSource::Trigger(id);
    // Five matching requests of five traces, not given in start order.
    let batch: Vec<TraceProfileRecord> = [(1, 40), (2, 10), (3, 50), (4, 30), (5, 20)]
        .into_iter()
        .map(|(n, start_s)| sourced_profile(n, 1, source, start_s))
        .collect();
    let before = now_unix_nano();
    let inserted = store.insert_trace_profiles(&batch).await.unwrap();
    let after = now_unix_nano();
    assert_eq!(
        inserted,
        InsertedProfiles {
            new: 3,
            over_limit: 2,
            completed_triggers: 1
        }
    );
    let done = store.trigger(id).await.unwrap();
    assert_eq!(done.status, TriggerStatus::Completed);
    assert_eq!(done.collected_requests, 3);
    assert_eq!(
        done.trace_ids,
        [trace(2), trace(5), trace(4)],
        "a batch's earliest requests, in order"
    );
    let ended_at = done.ended_unix_nano.expect("a completed trigger has ended");
    // PostgreSQL truncates to the microsecond.
    assert!(
        (before / 1000 * 1000..=after).contains(&ended_at),
        "ended at {ended_at}, stored between {before} and {after}"
    );
    for (n, kept) in [(1, false), (2, true), (3, false), (4, true), (5, true)] {
        assert_eq!(has_profiles(store, n).await, kept, "trace {n}");
    }

    // An agent's retry of a collected profile: nothing new, nothing refused.
    assert_eq!(
        store.insert_trace_profiles(&batch[1..2]).await.unwrap(),
        stored(0)
    );
    // A second request span of a collected trace is kept, without counting.
    let second = sourced_profile(2, 2, source, 11);
    assert_eq!(
        store.insert_trace_profiles(&[second]).await.unwrap(),
        stored(1)
    );
    assert_eq!(store.trace_profiles(&trace(2)).await.unwrap().len(), 2);
    // Another trace is over the limit.
    assert_eq!(
        store
            .insert_trace_profiles(&[sourced_profile(6, 1, source, 60)])
            .await
            .unwrap(),
        InsertedProfiles {
            new: 0,
            over_limit: 1,
            completed_triggers: 0
        }
    );
    assert_eq!(
        store.trigger(id).await.unwrap(),
        done,
        "nothing more counted"
    );
}

pub async fn a_trace_counts_once_per_trigger(store: &dyn Store) {
    services_send_spans(store, &["payment-svc"]).await;
    let trigger = TraceProfileTrigger {
        max_requests: 3,
        ..new_trigger(1, "payment-svc")
    };
    store.create_trigger(&trigger).await.unwrap();
    let source = ProfileSource::Trigger(trigger.trigger_id);
    // Two request spans of trace 1 (a server span and a consumer span, say) in one
    // batch, and one of trace 2.
    let batch = [
        sourced_profile(2, 1, source, 20),
        sourced_profile(1, 2, source, 11),
        sourced_profile(1, 1, source, 10),
    ];
    assert_eq!(
        store.insert_trace_profiles(&batch).await.unwrap(),
        stored(3)
    );
    let got = store.trigger(trigger.trigger_id).await.unwrap();
    assert_eq!(got.collected_requests, 2);
    assert_eq!(got.trace_ids, [trace(1), trace(2)]);
    assert_eq!(got.status, TriggerStatus::Active);
}

pub async fn concurrent_trigger_profiles_never_exceed_max(store: &dyn Store) {
    services_send_spans(store, &["payment-svc"]).await;
    let triggers = [1, 2].map(|n| TraceProfileTrigger {
        max_requests: 7,
        ..new_trigger(n, "payment-svc")
    });
    for t in &triggers {
        store.create_trigger(t).await.unwrap();
    }
    let [first, second] = triggers
        .each_ref()
        .map(|t| ProfileSource::Trigger(t.trigger_id));
    // Twenty agents' batches at once, each with a matching request of its own trace
    // for each trigger; in half of them the second trigger's request started first,
    // so claiming in start order would lock the triggers in opposite orders.
    let batches: Vec<[TraceProfileRecord; 2]> = (1..=20u8)
        .map(|n| {
            let start_s = i64::from(n) * 10;
            let later = if n % 2 == 0 { 1 } else { -1 };
            [
                sourced_profile(n, 1, first, start_s),
                sourced_profile(n, 2, second, start_s + later),
            ]
        })
        .collect();
    let results =
        futures::future::join_all(batches.iter().map(|b| store.insert_trace_profiles(b))).await;
    let (new, over_limit, completed) = results.into_iter().fold((0, 0, 0), |(n, o, c), r| {
        let r = r.unwrap();
        (n + r.new, o + r.over_limit, c + r.completed_triggers)
    });
    assert_eq!(
        (new, over_limit, completed),
        (14, 26, 2),
        "each trigger completed once"
    );
    for t in &triggers {
        let done = store.trigger(t.trigger_id).await.unwrap();
        assert_eq!(done.collected_requests, 7);
        assert_eq!(done.status, TriggerStatus::Completed);
        let mut counted = done.trace_ids.clone();
        counted.sort();
        let mut kept: Vec<TraceId> = store
            .trigger_requests(t.trigger_id)
            .await
            .unwrap()
            .iter()
            .map(|r| r.trace_id)
            .collect();
        kept.sort();
        assert_eq!(kept, counted, "the traces stored are those counted");
    }
}

/// Not in the suite, which has one store: two stores on one database (two colonies)
/// storing 40 trigger profiles of distinct traces at once, alternately, for one
/// trigger of `max_requests` 10, keep exactly 10. Backends' tests call it on a fresh
/// database; each profile has [`checkout_profile`]'s four stacks.
pub async fn two_stores_collect_at_most_max_requests(a: &dyn Store, b: &dyn Store) {
    services_send_spans(a, &["payment-svc"]).await;
    let trigger = TraceProfileTrigger {
        max_requests: 10,
        ..new_trigger(1, "payment-svc")
    };
    a.create_trigger(&trigger).await.unwrap();
    let source = ProfileSource::Trigger(trigger.trigger_id);
    let profiles: Vec<TraceProfileRecord> = (1..=40)
        .map(|n| sourced_profile(n, 1, source, i64::from(n)))
        .collect();
    let results = futures::future::join_all(
        profiles
            .iter()
            .zip([a, b].iter().cycle())
            .map(|(p, store)| store.insert_trace_profiles(std::slice::from_ref(p))),
    )
    .await;
    let (new, over_limit) = results.into_iter().fold((0, 0), |(new, over), r| {
        let r = r.unwrap();
        (new + r.new, over + r.over_limit)
    });
    assert_eq!((new, over_limit), (10, 30));
    let done = b.trigger(trigger.trigger_id).await.unwrap();
    assert_eq!(done.collected_requests, 10);
    assert_eq!(done.status, TriggerStatus::Completed);
    assert_eq!(
        a.trigger_requests(trigger.trigger_id).await.unwrap().len(),
        10
    );
}

pub async fn baseline_is_capped(store: &dyn Store) {
    services_send_spans(store, &["payment-svc"]).await;
    let trigger = TraceProfileTrigger {
        max_requests: 1,
        baseline_requests: 2,
        ..new_trigger(1, "payment-svc")
    };
    store.create_trigger(&trigger).await.unwrap();
    let id = trigger.trigger_id;
    let baseline = |n| sourced_profile(n, 1, ProfileSource::Baseline(id), i64::from(n));
    assert_eq!(
        store.insert_trace_profiles(&[baseline(1)]).await.unwrap(),
        stored(1)
    );
    let matching = sourced_profile(2, 1, ProfileSource::Trigger(id), 2);
    assert_eq!(
        store.insert_trace_profiles(&[matching]).await.unwrap(),
        InsertedProfiles {
            new: 1,
            over_limit: 0,
            completed_triggers: 1
        }
    );
    assert_eq!(
        store.trigger(id).await.unwrap().status,
        TriggerStatus::Completed
    );
    // Agents send the baseline when the trigger has ended: still kept, up to its size.
    assert_eq!(
        store
            .insert_trace_profiles(&[baseline(3), baseline(4), baseline(5)])
            .await
            .unwrap(),
        InsertedProfiles {
            new: 1,
            over_limit: 2,
            completed_triggers: 0
        }
    );
    let done = store.trigger(id).await.unwrap();
    assert_eq!((done.collected_requests, done.baseline_collected), (1, 2));
    assert_eq!(done.trace_ids, [trace(2)], "the baseline is not collected");
    assert!(
        has_profiles(store, 3).await && !has_profiles(store, 4).await,
        "the earliest first"
    );
    let requests = store.trigger_requests(id).await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].trace_id, trace(2));
}

/// Overlapping triggers of one service: an agent offers each request to every
/// trigger's baseline, and sends it once per trigger that kept it; the store keeps one
/// copy (its first source) and counts it in each baseline, once.
pub async fn a_request_counts_in_the_baseline_of_every_trigger_it_is_sent_for(store: &dyn Store) {
    services_send_spans(store, &["payment-svc"]).await;
    let with_baseline = |n: u8, size: u32| TraceProfileTrigger {
        baseline_requests: size,
        ..new_trigger(n, "payment-svc")
    };
    let (a, b, c) = (
        with_baseline(1, 2),
        with_baseline(2, 2),
        with_baseline(3, 1),
    );
    for t in [&a, &b, &c] {
        store.create_trigger(t).await.unwrap();
    }
    let (a, b, c) = (a.trigger_id, b.trigger_id, c.trigger_id);
    let profile = |n: u8, source| sourced_profile(n, 1, source, i64::from(n));
    let counts = async |id| {
        let t = store.trigger(id).await.unwrap();
        (t.collected_requests, t.baseline_collected)
    };
    let sources = async |n: u8| -> Vec<ProfileSource> {
        let profiles = store.trace_profiles(&trace(n)).await.unwrap();
        profiles.iter().map(|p| p.source).collect()
    };
    let nothing_new = InsertedProfiles::default();

    // Request 1, in A's baseline and then in B's: stored once, counted by both.
    let in_a = profile(1, ProfileSource::Baseline(a));
    assert_eq!(
        store.insert_trace_profiles(&[in_a]).await.unwrap(),
        stored(1)
    );
    let in_b = profile(1, ProfileSource::Baseline(b));
    for _retry in 0..2 {
        assert_eq!(
            store
                .insert_trace_profiles(std::slice::from_ref(&in_b))
                .await
                .unwrap(),
            nothing_new
        );
    }
    assert_eq!((counts(a).await, counts(b).await), ((0, 1), (0, 1)));
    assert_eq!(sources(1).await, [ProfileSource::Baseline(a)]);

    // Request 2, collected by A (it matched A's criteria, not B's), is in B's baseline.
    let collected = profile(2, ProfileSource::Trigger(a));
    store.insert_trace_profiles(&[collected]).await.unwrap();
    let in_b = profile(2, ProfileSource::Baseline(b));
    assert_eq!(
        store.insert_trace_profiles(&[in_b]).await.unwrap(),
        nothing_new
    );
    assert_eq!((counts(a).await, counts(b).await), ((1, 1), (0, 2)));
    assert_eq!(sources(2).await, [ProfileSource::Trigger(a)]);

    // Request 3, profiled for a session: B's baseline is full, so it is not counted
    // there, and the session's profile stays.
    store
        .insert_trace_profiles(&[trace_profile(3, 1, checkout_profile(1))])
        .await
        .unwrap();
    let in_b = profile(3, ProfileSource::Baseline(b));
    assert_eq!(
        store.insert_trace_profiles(&[in_b]).await.unwrap(),
        InsertedProfiles {
            over_limit: 1,
            ..nothing_new
        }
    );
    assert_eq!(counts(b).await, (0, 2));
    assert_eq!(sources(3).await, [ProfileSource::Session(SESSION)]);

    // Two triggers ended together: both baselines of request 4 in one batch. A takes
    // it (its last slot), B is full; one copy, labelled for A.
    let batch = [
        profile(4, ProfileSource::Baseline(b)),
        profile(4, ProfileSource::Baseline(a)),
    ];
    assert_eq!(
        store.insert_trace_profiles(&batch).await.unwrap(),
        InsertedProfiles {
            new: 1,
            over_limit: 1,
            completed_triggers: 0
        }
    );
    assert_eq!((counts(a).await, counts(b).await), ((1, 2), (0, 2)));
    assert_eq!(sources(4).await, [ProfileSource::Baseline(a)]);
    // The same batch again (the agent's retry) counts nothing twice.
    let again = store.insert_trace_profiles(&batch).await.unwrap();
    assert_eq!((again.new, again.completed_triggers), (0, 0));
    assert_eq!((counts(a).await, counts(b).await), ((1, 2), (0, 2)));

    // Request 5 is new, first sent for a full baseline (B) and then for C's: C keeps
    // it, and it is stored as C's.
    let batch = [
        profile(5, ProfileSource::Baseline(b)),
        profile(5, ProfileSource::Baseline(c)),
    ];
    assert_eq!(
        store.insert_trace_profiles(&batch).await.unwrap(),
        InsertedProfiles {
            new: 1,
            over_limit: 1,
            completed_triggers: 0
        }
    );
    assert_eq!(counts(c).await, (0, 1));
    assert_eq!(sources(5).await, [ProfileSource::Baseline(c)]);
    // Full everywhere: request 6 is not stored at all.
    let batch = [
        profile(6, ProfileSource::Baseline(b)),
        profile(6, ProfileSource::Baseline(c)),
    ];
    assert_eq!(
        store.insert_trace_profiles(&batch).await.unwrap(),
        InsertedProfiles {
            new: 0,
            over_limit: 2,
            completed_triggers: 0
        }
    );
    assert!(!has_profiles(store, 6).await);

    // Retention deletes the profiles, and their baseline memberships with them.
    assert_eq!(
        store
            .purge_profiles_before(now_unix_nano() + SEC)
            .await
            .unwrap(),
        5
    );
    assert!(!has_profiles(store, 1).await);
    assert_eq!(counts(b).await, (0, 2), "the counts stay");
}

/// Trigger ids may be shortened to a unique prefix, as git's commit ids.
pub async fn trigger_ids_resolve_from_unique_prefixes(store: &dyn Store) {
    services_send_spans(store, &["payment-svc"]).await;
    let with_id = |n: u8, id: &str| TraceProfileTrigger {
        trigger_id: id.parse().unwrap(),
        ..new_trigger(n, "payment-svc")
    };
    let ids = [
        "0af76519-16cd-43dd-8448-eb211c80319c",
        "0af7c0de-0000-4000-8000-000000000001",
        "b7ad6b71-6920-4ad0-a8b9-0aa2f0e8c6d1",
    ];
    for (n, id) in (1u8..).zip(ids) {
        store.create_trigger(&with_id(n, id)).await.unwrap();
    }
    let resolve = async |prefix: &str| store.resolve_trigger_id(prefix).await;
    let expect = |i: usize| ids[i].parse::<uuid::Uuid>().unwrap();
    for (prefix, want) in [
        ("0af765", 0),
        ("0AF76519-16CD", 0), // any case, hyphens where the id has them
        ("0af7651916cd43dd", 0),
        ("0af7c", 1),
        ("b7ad", 2),
        (" b7ad6b71-6920-4ad0-a8b9-0aa2f0e8c6d1 ", 2), // the whole id
        ("b7ad6b7169204ad0a8b90aa2f0e8c6d1", 2),
    ] {
        assert_eq!(resolve(prefix).await.unwrap(), expect(want), "{prefix}");
    }
    match resolve("0af7").await {
        Err(StoreError::InvalidArgument(message)) => {
            assert!(
                message.contains("ambiguous") && message.contains('2'),
                "{message}"
            )
        }
        other => panic!("an ambiguous prefix: {other:?}"),
    }
    for missing in ["ffff", "0af76519-16cd-43dd-8448-eb211c80319d"] {
        assert!(
            matches!(resolve(missing).await, Err(StoreError::NotFound(_))),
            "{missing}"
        );
    }
    for malformed in [
        "0af",
        "0af7g",
        "",
        "0af7%",
        "0af7_",
        "0af76519-16cd-43dd-8448-eb211c80319c0",
    ] {
        assert!(
            matches!(
                resolve(malformed).await,
                Err(StoreError::InvalidArgument(_))
            ),
            "{malformed:?}"
        );
    }
}

/// Request listings say which requests have a profile, and can list only those.
pub async fn requests_are_listed_with_their_profiles(store: &dyn Store) {
    let mut spans = Vec::new();
    for n in 1..=4u8 {
        let mut r = full_span("payment-svc", n, 1);
        r.start_unix_nano = T0 + i64::from(n) * SEC;
        spans.push(minimal_child(&r, 2, 1, 1));
        spans.push(r);
    }
    spans.push(full_span("elsewhere", 9, 1));
    store.insert_spans(&spans).await.unwrap();
    let trigger = new_trigger(1, "payment-svc");
    store.create_trigger(&trigger).await.unwrap();
    let collected = ProfileSource::Trigger(trigger.trigger_id);
    let profiles = [
        sourced_profile(2, 1, collected, 2),
        trace_profile(4, 1, checkout_profile(1)), // a session's
        sourced_profile(3, 2, collected, 3),      // of an internal span: not a request
        TraceProfileRecord {
            service: "elsewhere".into(),
            ..trace_profile(9, 1, checkout_profile(1))
        },
    ];
    store.insert_trace_profiles(&profiles).await.unwrap();
    let query = |profiled| RequestQuery {
        service: "payment-svc".into(),
        since_unix_nano: T0,
        min_duration_ns: None,
        status: None,
        limit: 100,
        profiled,
    };
    let listed = |requests: Vec<ListedRequest>| -> Vec<(u8, Option<ProfileSource>)> {
        requests
            .into_iter()
            .map(|r| (r.span.trace_id.0[0], r.profile_source))
            .collect()
    };
    let session = ProfileSource::Session(SESSION);
    let all = store.query_requests(&query(false)).await.unwrap();
    assert_eq!(
        listed(all),
        [
            (4, Some(session)),
            (3, None),
            (2, Some(collected)),
            (1, None)
        ]
    );
    let profiled = store.query_requests(&query(true)).await.unwrap();
    assert_eq!(listed(profiled), [(4, Some(session)), (2, Some(collected))]);
    let slow_profiled = store
        .query_requests(&RequestQuery {
            min_duration_ns: Some(10 * SEC),
            ..query(true)
        })
        .await
        .unwrap();
    assert!(slow_profiled.is_empty(), "other conditions still apply");
}

pub async fn trigger_requests_come_with_their_spans(store: &dyn Store) {
    // Trace 1's request span is stored (502, error); trace 2's is not (yet).
    let span = full_span("payment-svc", 1, 1);
    store
        .insert_spans(std::slice::from_ref(&span))
        .await
        .unwrap();
    let trigger = new_trigger(1, "payment-svc");
    store.create_trigger(&trigger).await.unwrap();
    let id = trigger.trigger_id;
    let source = ProfileSource::Trigger(id);
    let with_span = TraceProfileRecord {
        profile_types: vec![ProfileType::Cpu, ProfileType::Offcpu],
        profile: ran_and_waited_profile(),
        ..sourced_profile(1, 1, source, 20)
    };
    let mut without_span = sourced_profile(2, 1, source, 10);
    without_span.precision = Precision::Process;
    without_span.node = "node-b".into();
    // Memory at process precision too.
    without_span.profile.merge(&memory_profile(1));
    without_span.profile_types = vec![ProfileType::Cpu, ProfileType::Memory];
    // Not the trigger's requests.
    let others = [
        sourced_profile(3, 1, ProfileSource::Baseline(id), 5),
        trace_profile(4, 1, checkout_profile(1)),
    ];
    let mut batch = vec![with_span.clone(), without_span.clone()];
    batch.extend(others);
    assert_eq!(
        store.insert_trace_profiles(&batch).await.unwrap(),
        InsertedProfiles {
            new: 3,
            over_limit: 1,
            completed_triggers: 0
        },
        "a baseline of 0 keeps none"
    );
    // Collected later, though it started first.
    let late = sourced_profile(5, 1, source, 1);
    store
        .insert_trace_profiles(std::slice::from_ref(&late))
        .await
        .unwrap();
    let collected = |p: &TraceProfileRecord, http_status, status_code| CollectedRequest {
        trace_id: p.trace_id,
        span_id: p.span_id,
        span_name: p.span_name.clone(),
        start_unix_nano: p.start_unix_nano,
        duration_ns: p.duration_ns,
        http_status,
        status_code,
        node: p.node.clone(),
        samples: p.samples(),
        precision: p.precision,
        cpu_ns: p.profile.total_cpu_ns(),
        off_cpu_ns: p.profile.breakdown().off_cpu_ns,
        memory_bytes: p.profile.total(ProfileType::Memory),
        profile_types: p.profile_types.clone(),
    };
    let requests = store.trigger_requests(id).await.unwrap();
    assert_eq!(
        requests,
        [
            collected(&without_span, None, None),
            collected(&with_span, Some(502), Some(2)),
            collected(&late, None, None),
        ],
        "in collection order"
    );
    let totals: Vec<(u64, u64, u64, u64)> = requests
        .iter()
        .map(|r| (r.samples, r.cpu_ns, r.off_cpu_ns, r.memory_bytes))
        .collect();
    let checkout_samples = checkout_profile(1).count(ProfileType::Cpu);
    let checkout_cpu_ns = checkout_profile(1).total_cpu_ns();
    assert_eq!(
        totals,
        [
            (
                checkout_samples,
                checkout_cpu_ns,
                0,
                (2 << 20) + 3 * 65_536 + 4096
            ),
            (checkout_samples, checkout_cpu_ns, 1_002_001_000, 0),
            (checkout_samples, checkout_cpu_ns, 0, 0)
        ]
    );
    assert_eq!(
        store.trigger(id).await.unwrap().trace_ids,
        [trace(2), trace(1), trace(5)]
    );
}

pub async fn purge_deletes_old_profiles_and_ended_triggers(store: &dyn Store) {
    services_send_spans(store, &["payment-svc"]).await;
    // The cutoff is now (profiles are stamped when stored); triggers and sessions
    // end either long ago (T0) or in an hour.
    let hour_later = now_unix_nano() / 1000 * 1000 + 3600 * SEC;
    let active = new_trigger(1, "payment-svc");
    let cancelled_long_ago = ended(new_trigger(2, "payment-svc"), TriggerStatus::Cancelled, T0);
    let completed_later = ended(
        new_trigger(3, "payment-svc"),
        TriggerStatus::Completed,
        hour_later,
    );
    for t in [&active, &cancelled_long_ago, &completed_later] {
        store.create_trigger(t).await.unwrap();
    }
    let old_session = session(1, T0, 10 * SEC);
    let current_session = session(2, now_unix_nano(), 3600 * SEC);
    let result = |s: &ProfileSession| SessionResult {
        session_id: s.session_id,
        agent_id: "agent-1".into(),
        node: "node-a".into(),
        processes: 1,
        profile: checkout_profile(1),
        error: None,
    };
    for s in [&old_session, &current_session] {
        store.create_profile_session(s).await.unwrap();
        store.put_session_result(&result(s)).await.unwrap();
    }

    let old = [
        trace_profile(1, 1, checkout_profile(1)),
        trace_profile(1, 2, refund_profile()),
        sourced_profile(2, 1, ProfileSource::Trigger(active.trigger_id), 0),
    ];
    assert_eq!(store.insert_trace_profiles(&old).await.unwrap(), stored(3));
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let cutoff = now_unix_nano();
    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    let recent = trace_profile(3, 1, checkout_profile(2));
    assert_eq!(
        store
            .insert_trace_profiles(std::slice::from_ref(&recent))
            .await
            .unwrap(),
        stored(1)
    );

    assert_eq!(store.purge_profiles_before(cutoff).await.unwrap(), 3);
    assert!(!has_profiles(store, 1).await && !has_profiles(store, 2).await);
    assert_eq!(
        store.trace_profiles(&trace(3)).await.unwrap(),
        [canonical(&recent)]
    );
    // The samples went with their profiles: the same span profiled again has only
    // its new stacks.
    let again = trace_profile(1, 1, refund_profile());
    assert_eq!(
        store
            .insert_trace_profiles(std::slice::from_ref(&again))
            .await
            .unwrap(),
        stored(1)
    );
    assert_eq!(
        store.trace_profiles(&trace(1)).await.unwrap(),
        [canonical(&again)]
    );
    // The old session went with its results; the current one stays.
    assert!(
        store
            .session_results(old_session.session_id)
            .await
            .unwrap()
            .is_empty()
    );
    let err = store
        .put_session_result(&result(&old_session))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(
        store
            .session_results(current_session.session_id)
            .await
            .unwrap()
            .len(),
        1
    );
    // Triggers: active ones stay whatever their age, ended ones until the cutoff.
    let ids: Vec<uuid::Uuid> = store
        .list_triggers(None, true, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.trigger_id)
        .collect();
    assert_eq!(ids, [completed_later.trigger_id, active.trigger_id]);
    let err = store
        .trigger(cancelled_long_ago.trigger_id)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
    assert_eq!(store.purge_profiles_before(cutoff).await.unwrap(), 0);
}

/// The cohort fixture's request `n` (trace `n`, span 1) of payment-svc, started `n`
/// seconds after [`T0`]: its span (if stored) and its profile.
struct CohortRequest {
    n: u8,
    duration_ms: i64,
    name: &'static str,
    /// `None`: the profile's span is not stored.
    span: Option<CohortSpan>,
}

struct CohortSpan {
    http_status: Option<i32>,
    status_code: i32,
    url: Option<&'static str>,
    route: Option<&'static str>,
    attributes: serde_json::Value,
}

fn cohort_requests() -> Vec<CohortRequest> {
    let span = |http_status, status_code, url, route, attributes| {
        Some(CohortSpan {
            http_status,
            status_code,
            url,
            route,
            attributes,
        })
    };
    vec![
        CohortRequest {
            n: 1,
            duration_ms: 2000,
            name: "POST /checkout",
            span: span(
                Some(500),
                2,
                Some("/checkout?id=1"),
                Some("/checkout"),
                json!({"retry": 3, "region": "eu-west", "cached": false, "tier": "3",
                    "http.request.method": "POST"}),
            ),
        },
        CohortRequest {
            n: 2,
            duration_ms: 50,
            name: "POST /checkout",
            span: span(
                Some(200),
                0,
                Some("/checkout"),
                Some("/checkout"),
                json!({"retry": 0, "region": "us-east", "cached": true}),
            ),
        },
        CohortRequest {
            n: 3,
            duration_ms: 1500,
            name: "POST /pay",
            span: span(
                Some(503),
                0,
                Some("/api/v2/pay"),
                Some("/api/{v}/pay"),
                json!({"retry": 1.5, "region": "eu-central"}),
            ),
        },
        CohortRequest {
            n: 4,
            duration_ms: 80,
            name: "GET /health",
            span: span(Some(404), 0, Some("/health"), None, json!({})),
        },
        CohortRequest {
            n: 5,
            duration_ms: 300,
            name: "consume 'orders'; --",
            span: span(None, 2, None, None, json!({"region": "eu-west"})),
        },
        CohortRequest {
            n: 6,
            duration_ms: 3000,
            name: "POST /checkout",
            span: None,
        },
    ]
}

/// Stores the cohort fixture: [`cohort_requests`] (request 3 collected by a trigger,
/// 4 by its baseline, the others by a session), plus a request of another service
/// (trace 7) and one of payment-svc that started before [`T0`] (trace 8). Returns the
/// profiles of the requests, by `n`.
async fn store_cohort_fixture(store: &dyn Store) -> Vec<TraceProfileRecord> {
    let mut spans = Vec::new();
    let mut profiles = Vec::new();
    let mut trigger = new_trigger(1, "payment-svc");
    trigger.baseline_requests = 5;
    for r in cohort_requests() {
        let mut p = trace_profile(r.n, 1, checkout_profile(u64::from(r.n)));
        p.start_unix_nano = T0 + i64::from(r.n) * SEC;
        p.duration_ns = r.duration_ms * 1_000_000;
        p.span_name = r.name.into();
        p.source = match r.n {
            3 => ProfileSource::Trigger(trigger.trigger_id),
            4 => ProfileSource::Baseline(trigger.trigger_id),
            _ => p.source,
        };
        if r.n == 3 {
            // It waited too.
            p.profile.merge(&waiting_profile(1));
            p.profile_types = vec![ProfileType::Cpu, ProfileType::Offcpu];
        }
        if let Some(s) = r.span {
            let mut span = full_span("payment-svc", r.n, 1);
            span.start_unix_nano = p.start_unix_nano;
            span.duration_ns = p.duration_ns;
            span.name = r.name.into();
            span.http_status = s.http_status;
            span.status_code = s.status_code;
            span.url = s.url.map(String::from);
            span.route = s.route.map(String::from);
            span.attributes = s.attributes.as_object().unwrap().clone();
            spans.push(span);
        }
        profiles.push(p);
    }
    let mut other = trace_profile(7, 1, checkout_profile(1));
    other.service = "other-svc".into();
    other.start_unix_nano = T0 + 7 * SEC;
    let mut old = trace_profile(8, 1, checkout_profile(1));
    old.start_unix_nano = T0 - 10 * SEC;
    let mut old_span = full_span("payment-svc", 8, 1);
    old_span.start_unix_nano = old.start_unix_nano;
    spans.push(old_span);

    store.insert_spans(&spans).await.unwrap();
    store.create_trigger(&trigger).await.unwrap();
    let mut batch = profiles.clone();
    batch.extend([other, old]);
    assert_eq!(
        store.insert_trace_profiles(&batch).await.unwrap(),
        stored(8)
    );
    profiles
}

/// The trace numbers of payment-svc's cohort for `filter` since [`T0`], newest first.
async fn cohort(store: &dyn Store, filter: &str) -> Vec<u8> {
    let filter = coral_analysis::filter::parse(filter).unwrap();
    let (profiles, truncated) = store
        .cohort_profiles("payment-svc", T0, &filter, 100)
        .await
        .unwrap();
    assert!(!truncated);
    profiles.iter().map(|p| p.trace_id.0[0]).collect()
}

pub async fn cohorts_are_selected_by_filter(store: &dyn Store) {
    let profiles = store_cohort_fixture(store).await;
    let t = |n: u8| hex::encode(trace(n).0);
    let cases: Vec<(String, &[u8])> = vec![
        // Durations (the profile's own, so request 6 without a span is in).
        ("duration > 1s".into(), &[6, 3, 1]),
        ("duration < 100ms".into(), &[4, 2]),
        ("duration >= 1500".into(), &[6, 3, 1]),
        ("duration in (50ms, 3s)".into(), &[6, 2]),
        // Statuses: codes, classes, OpenTelemetry ERROR.
        ("status = 5xx".into(), &[3, 1]),
        ("status = 503".into(), &[3]),
        ("status >= 4xx".into(), &[4, 3, 1]),
        ("status < 300".into(), &[2]),
        ("status = error".into(), &[5, 1]),
        ("status in (5xx, error)".into(), &[5, 3, 1]),
        ("status in (200, 404)".into(), &[4, 2]),
        // A missing value matches no comparison, != and not in included ...
        ("status != 200".into(), &[4, 3, 1]),
        ("status not in (500, 503)".into(), &[4, 2]),
        ("status != error".into(), &[4, 3, 2]),
        // ... but `not` negates the whole condition.
        ("not status = 200".into(), &[6, 5, 4, 3, 1]),
        ("not status in (500, 503)".into(), &[6, 5, 4, 2]),
        // URLs are paths (without the query string); globs are anchored and
        // case-sensitive, `%` and `_` literal; regexes unanchored.
        ("url = \"/checkout\"".into(), &[2, 1]),
        ("url ~ \"/check*\"".into(), &[2, 1]),
        ("url ~ \"/heal?h\"".into(), &[4]),
        ("url ~ \"/health%\"".into(), &[]),
        ("url ~ \"/he_lth\"".into(), &[]),
        ("url ~ \"/CHECKOUT\"".into(), &[]),
        ("url ~ \"pay\"".into(), &[]),
        ("url ~ /pay/".into(), &[3]),
        (r"url ~ /^\/api\/v[0-9]+\/pay$/".into(), &[3]),
        ("url != \"/checkout\"".into(), &[4, 3]),
        ("not url = \"/checkout\"".into(), &[6, 5, 4, 3]),
        ("url in (\"/health\", \"/api/v2/pay\")".into(), &[4, 3]),
        ("route = \"/api/{v}/pay\"".into(), &[3]),
        ("route ~ \"/check*\"".into(), &[2, 1]),
        ("route not in (\"/checkout\")".into(), &[3]),
        // Names are the profile's (request 6 included).
        ("name = \"POST /checkout\"".into(), &[6, 2, 1]),
        ("name ~ \"POST *\"".into(), &[6, 3, 2, 1]),
        ("name ~ \"post*\"".into(), &[]),
        ("name ~ /^GET/".into(), &[4]),
        ("name ~ /[[:digit:]]/".into(), &[]),
        ("name = \"consume 'orders'; --\"".into(), &[5]),
        // Traces.
        (format!("trace = {}", t(3)), &[3]),
        (format!("trace in ({}, {})", t(1), t(6)), &[6, 1]),
        (format!("trace != {}", t(1)), &[6, 5, 4, 3, 2]),
        (format!("trace = {}", t(7)), &[]),
        // Attributes: strings, numbers and booleans, each only of its JSON type.
        ("attr.region = \"eu-west\"".into(), &[5, 1]),
        ("attr.region ~ \"eu-*\"".into(), &[5, 3, 1]),
        ("attr.region ~ /central$/".into(), &[3]),
        ("attr.region not in (\"eu-west\")".into(), &[3, 2]),
        ("attr.retry > 1".into(), &[3, 1]),
        ("attr.retry = 3".into(), &[1]),
        ("attr.retry >= 0".into(), &[3, 2, 1]),
        ("attr.retry in (0, 3)".into(), &[2, 1]),
        ("attr.retry = \"3\"".into(), &[]),
        ("attr.tier = 3".into(), &[]),
        ("attr.tier = \"3\"".into(), &[1]),
        ("attr.tier > 2".into(), &[]),
        ("attr.cached = true".into(), &[2]),
        ("attr.cached != true".into(), &[1]),
        ("not attr.cached = true".into(), &[6, 5, 4, 3, 1]),
        ("attr.missing = 1 or attr.missing != 1".into(), &[]),
        ("attr.http.request.method = POST".into(), &[1]),
        // and / or / not, with precedence.
        ("duration > 1s and status = 5xx".into(), &[3, 1]),
        ("duration < 100ms or status = error".into(), &[5, 4, 2, 1]),
        ("not (duration > 1s or status = error)".into(), &[4, 2]),
        (
            "status = error or duration > 1s and url ~ \"/api/*\"".into(),
            &[5, 3, 1],
        ),
        (
            "(status = error or duration > 1s) and url ~ \"/api/*\"".into(),
            &[3],
        ),
    ];
    for (filter, expected) in &cases {
        assert_eq!(&cohort(store, filter).await, expected, "{filter}");
    }

    // Whole profiles come back, whatever collected them.
    let parsed = coral_analysis::filter::parse("duration > 1s").unwrap();
    let (got, truncated) = store
        .cohort_profiles("payment-svc", T0, &parsed, 10)
        .await
        .unwrap();
    assert!(!truncated);
    let by_n = |n: u8| canonical(&profiles[usize::from(n) - 1]);
    assert_eq!(got, [by_n(6), by_n(3), by_n(1)]);
    assert!(matches!(got[1].source, ProfileSource::Trigger(_)));
    assert_eq!(
        got[1].profile_types,
        [ProfileType::Cpu, ProfileType::Offcpu]
    );
    assert_eq!(got[1].profile.breakdown().off_cpu_ns, 1_002_001_000);
    assert_eq!(got[1].profile.breakdown().network_ns, 22_001_000);
    assert_eq!(got[0].profile_types, [ProfileType::Cpu]);
}

pub async fn cohorts_respect_service_since_and_limit(store: &dyn Store) {
    store_cohort_fixture(store).await;
    let all = coral_analysis::filter::parse("duration >= 0").unwrap();
    let traces = |profiles: &[TraceProfileRecord]| -> Vec<u8> {
        profiles.iter().map(|p| p.trace_id.0[0]).collect()
    };
    let get = |service: &'static str, since: i64, limit: u32| {
        let all = all.clone();
        async move {
            let (profiles, truncated) = store
                .cohort_profiles(service, since, &all, limit)
                .await
                .unwrap();
            (traces(&profiles), truncated)
        }
    };
    assert_eq!(
        get("payment-svc", T0, 10).await,
        (vec![6, 5, 4, 3, 2, 1], false)
    );
    assert_eq!(
        get("payment-svc", T0, 6).await,
        (vec![6, 5, 4, 3, 2, 1], false)
    );
    assert_eq!(get("payment-svc", T0, 5).await, (vec![6, 5, 4, 3, 2], true));
    assert_eq!(get("payment-svc", T0, 1).await, (vec![6], true));
    assert_eq!(get("payment-svc", T0, 0).await, (vec![], true));
    assert_eq!(
        get("payment-svc", T0 + 3 * SEC, 10).await,
        (vec![6, 5, 4, 3], false)
    );
    assert_eq!(
        get("payment-svc", T0 - 60 * SEC, 10).await,
        (vec![6, 5, 4, 3, 2, 1, 8], false)
    );
    assert_eq!(get("other-svc", T0, 10).await, (vec![7], false));
    assert_eq!(get("unknown-svc", T0, 10).await, (vec![], false));
}

pub async fn cohort_filter_values_are_never_sql(store: &dyn Store) {
    store_cohort_fixture(store).await;
    let attacks = [
        "'; DROP TABLE spans; --",
        "x' OR '1'='1",
        "'); DELETE FROM trace_profiles; --",
        "\\'; DROP TABLE trace_profiles; --",
        "/* */ OR 1=1",
        "$1",
        "?1",
    ];
    for attack in attacks {
        let quoted = {
            let escaped = attack.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{escaped}\"")
        };
        for filter in [
            format!("name = {quoted}"),
            format!("url = {quoted} or route = {quoted}"),
            format!("name ~ {quoted}"),
            format!("url ~ {quoted}"),
            format!("name in (\"a\", {quoted})"),
            format!("attr.region = {quoted}"),
            format!("attr.region ~ {quoted}"),
        ] {
            assert_eq!(cohort(store, &filter).await, [] as [u8; 0], "{filter}");
        }
        // What the value means literally: every name differs from it.
        assert_eq!(
            cohort(store, &format!("name != {quoted}")).await,
            [6, 5, 4, 3, 2, 1]
        );
    }
    for filter in [
        r"name ~ /'; DROP TABLE spans; --/",
        r"name ~ /\$1|\?1/",
        "attr.x-y--z = 1",
    ] {
        assert_eq!(cohort(store, filter).await, [] as [u8; 0], "{filter}");
    }
    // The name with a quote and a comment marker is matched as the text it is.
    assert_eq!(cohort(store, r#"name ~ "*'; --""#).await, [5]);
    assert_eq!(cohort(store, r"name ~ /'orders'; --$/").await, [5]);
    // Every table still has its rows.
    assert_eq!(cohort(store, "duration >= 0").await, [6, 5, 4, 3, 2, 1]);
    assert_eq!(store.get_trace(&trace(1)).await.unwrap().len(), 1);
    assert_eq!(store.trace_profiles(&trace(1)).await.unwrap().len(), 1);
    assert_eq!(store.list_services().await.unwrap().len(), 1);
    assert_eq!(store.list_triggers(None, true, 10).await.unwrap().len(), 1);
}
