//! The `/checkout` handler and its planted slow paths.
//!
//! A checkout parses the cart (~3 ms of CPU), checks the card signature, charges the
//! card at the payment gateway (~30 ms waiting on the network, no CPU) and renders a
//! receipt (~12 ms of CPU): about 50 ms. Every checkout also records the payment in the
//! ledger, under the ledger's lock (`acquire_ledger_lock`, uncontended: microseconds).
//! Three planted scenarios:
//! - `latency`: a small share of requests miss the signature cache and verify the
//!   signature themselves, ~1 s of CPU in `validate_signature`.
//! - `errors`: a share of requests is flagged for fraud review, scored in
//!   `score_fraud_rules` (~150 ms of CPU), and refused with 503 because the review
//!   queue is unavailable.
//! - `lock`: a background settlement job holds the ledger lock for 500 ms at a time
//!   (writing a batch), `--planted-share` of the time; checkouts that arrive meanwhile
//!   wait for it in `acquire_ledger_lock`, on no CPU.

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use clap::{Args, ValueEnum};
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider,
};
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Some requests miss the signature cache: ~1 s in `validate_signature`.
    Latency,
    /// Some requests are flagged for fraud review and fail with 503 after
    /// `score_fraud_rules`.
    Errors,
    /// A background job holds the ledger lock; some requests wait up to 500 ms in
    /// `acquire_ledger_lock`.
    Lock,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// OTLP/gRPC endpoint of the Coral agent (or any collector).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        default_value = "http://127.0.0.1:4317"
    )]
    otlp_endpoint: String,
    /// service.name of the exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "payment-svc")]
    service_name: String,
    /// Which slow path is planted.
    #[arg(long, value_enum, default_value_t = Scenario::Latency)]
    scenario: Scenario,
    /// Share of requests that take the planted path (0 to 1).
    #[arg(long, default_value_t = 0.015, value_parser = share)]
    planted_share: f64,
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1 (e.g. 0.015)")),
    }
}

struct App {
    tracer: SdkTracer,
    scenario: Scenario,
    planted_share: f64,
    /// Payments recorded; the lock the `lock` scenario's settlement job holds.
    ledger: Arc<Mutex<u64>>,
}

/// How long the settlement job of the `lock` scenario holds the ledger at a time.
const SETTLEMENT_HOLD: Duration = Duration::from_millis(500);

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let provider = tracer_provider(&args.otlp_endpoint, &args.service_name)?;
    let app = Arc::new(App {
        tracer: provider.tracer("payment-svc"),
        scenario: args.scenario,
        planted_share: args.planted_share,
        ledger: Arc::new(Mutex::new(0)),
    });
    if args.scenario == Scenario::Lock && args.planted_share > 0.0 {
        let ledger = Arc::clone(&app.ledger);
        let period = SETTLEMENT_HOLD.div_f64(args.planted_share);
        std::thread::Builder::new()
            .name("settlement".into())
            .spawn(move || settle_ledger(&ledger, period))?;
    }
    let router = Router::new()
        .route("/checkout", post(checkout).get(checkout))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (in use? pick another with --listen)",
                args.listen
            )
        })?;
    eprintln!(
        "payment-svc: serving http://{}/checkout, spans to {}",
        listener.local_addr()?,
        args.otlp_endpoint
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(stopped())
        .await?;
    // Export what is still batched before exiting.
    provider.shutdown()?;
    Ok(())
}

async fn stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The SDK set up as a service would: a batch exporter over OTLP/gRPC, and the
/// process id as a resource attribute (what ties the spans to the process Coral
/// samples). `Resource::builder()` also reads `OTEL_RESOURCE_ATTRIBUTES`, e.g.
/// `k8s.pod.uid=…` or `container.id=…`, with which the agent finds the process when
/// it runs in a container (its own pid namespace).
fn tracer_provider(endpoint: &str, service: &str) -> anyhow::Result<SdkTracerProvider> {
    let exporter = SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .context("cannot build the OTLP exporter")?;
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_millis(500))
                .build(),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_string())
                .with_attribute(KeyValue::new("process.pid", std::process::id() as i64))
                .build(),
        )
        .with_span_processor(batch)
        .build())
}

async fn checkout(State(app): State<Arc<App>>) -> (StatusCode, &'static str) {
    // The work runs on one thread from start to end, as in a thread-per-request
    // server, so the span's thread.id names the thread whose samples are the request's.
    tokio::task::spawn_blocking(move || app.checkout())
        .await
        .unwrap_or((StatusCode::INTERNAL_SERVER_ERROR, "checkout panicked\n"))
}

impl App {
    fn checkout(&self) -> (StatusCode, &'static str) {
        let planted = fastrand::f64() < self.planted_share;
        let span = self
            .tracer
            .span_builder("POST /checkout")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("http.route", "/checkout"),
                KeyValue::new("url.path", "/checkout"),
                KeyValue::new("thread.id", nix::unistd::gettid().as_raw() as i64),
            ])
            .start(&self.tracer);
        let cx = Context::current_with_span(span);
        let _active = cx.clone().attach();

        let cart = parse_cart(ms(3));
        if planted && self.scenario == Scenario::Latency {
            black_box(validate_signature(Duration::from_secs(1)));
        } else {
            black_box(cached_signature(cart));
        }
        acquire_ledger_lock(&self.ledger);
        let (status, body) = if planted && self.scenario == Scenario::Errors {
            black_box(score_fraud_rules(ms(150)));
            cx.span()
                .set_status(Status::error("fraud review queue unavailable"));
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "fraud review unavailable\n",
            )
        } else {
            self.charge_card(&cx);
            black_box(render_receipt(ms(12)));
            (StatusCode::OK, "paid\n")
        };
        cx.span().set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        cx.span().end();
        (status, body)
    }

    /// The payment gateway call: a client span, waiting on the network, no CPU.
    fn charge_card(&self, parent: &Context) {
        let mut span = self
            .tracer
            .span_builder("POST /v1/charges")
            .with_kind(SpanKind::Client)
            .with_attributes([KeyValue::new("server.address", "gateway.example")])
            .start_with_context(&self.tracer, parent);
        std::thread::sleep(ms(30));
        span.end();
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Records the payment in the ledger: takes its lock, which is free unless the
/// settlement job holds it.
#[inline(never)]
fn acquire_ledger_lock(ledger: &Mutex<u64>) {
    let mut payments = ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *payments += 1;
}

/// The `lock` scenario's background job: every `period`, holds the ledger lock for
/// [`SETTLEMENT_HOLD`] while it "writes a settlement batch" (sleeps).
fn settle_ledger(ledger: &Mutex<u64>, period: Duration) {
    loop {
        std::thread::sleep(period.saturating_sub(SETTLEMENT_HOLD));
        let payments = ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::thread::sleep(SETTLEMENT_HOLD);
        drop(payments);
    }
}

// CPU work that shows in a flame graph under its own name: each loops until its
// deadline, with a different body so the compiler cannot fold them into one.

#[inline(never)]
fn parse_cart(busy: Duration) -> u64 {
    let until = Instant::now() + busy;
    let mut x = 7u64;
    while Instant::now() < until {
        for i in 0..5_000u64 {
            x = black_box(x ^ (i << 3)).rotate_right(5);
        }
    }
    x
}

#[inline(never)]
fn cached_signature(cart: u64) -> u64 {
    black_box(cart.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[inline(never)]
fn validate_signature(busy: Duration) -> u64 {
    let until = Instant::now() + busy;
    let mut x = 0u64;
    while Instant::now() < until {
        for i in 0..10_000u64 {
            x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
        }
    }
    x
}

#[inline(never)]
fn score_fraud_rules(busy: Duration) -> u64 {
    let until = Instant::now() + busy;
    let mut x = 3u64;
    while Instant::now() < until {
        for i in 0..10_000u64 {
            x = black_box(x.wrapping_add(i * i) ^ 0x5555);
        }
    }
    x
}

#[inline(never)]
fn render_receipt(busy: Duration) -> u64 {
    let until = Instant::now() + busy;
    let mut x = 1u64;
    while Instant::now() < until {
        for i in 0..10_000u64 {
            x = black_box(x.rotate_left(7) ^ i);
        }
    }
    x
}
