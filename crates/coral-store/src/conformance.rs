//! The behaviour every [`Store`] backend must have, as checks that each backend's
//! tests run on a fresh, empty store:
//!
//! ```ignore
//! coral_store::conformance_suite!(fresh_store());
//! ```

use crate::{AgentRecord, RequestQuery, SpanId, SpanRecord, Store, StoreError, TraceId};
use coral_analysis::StatusPattern;
use serde_json::json;

/// Generates one `#[tokio::test]` per check; `$store` is an expression (usually an
/// `async` call, awaited here) giving a fresh, empty store. Attributes before the
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
            concurrent_batches_store_each_span_once, agents_are_listed_by_node);
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
            $crate::conformance::$check(&store).await;
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
