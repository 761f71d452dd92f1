//! OpenTelemetry traces, off unless `otlp_endpoint` is set: spans sent to a collector over
//! OTLP/HTTP (protobuf), and the W3C trace context taken from callers and, where a connector
//! type allows it, passed on to its provider.
//!
//! The spans are ordinary `tracing` spans with the target [`TARGET`]. Only the OpenTelemetry
//! layer sees them (the log lines never show them), and only that target reaches it (no log
//! event becomes a span event). Without an endpoint no layer is interested in the target: each
//! such span is a disabled one, decided once per call site, and the request layer is not even
//! added to the router.
//!
//! What a span carries is chosen here and at its call site, field by field: names, hosts,
//! route templates, outcomes, numbers. Never a token, a secret, a header or a URL's path or
//! query.
//!
//! This module imports nothing of the crate, so that every layer (the HTTP API, the keeper,
//! the provider client) can use it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
};
use opentelemetry_sdk::Resource;
use tracing::field::Empty;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::{Layer, Registry};

/// The `tracing` target of every exported span: `info_span!(target: TARGET, ...)`.
pub const TARGET: &str = "tokenbox::otel";

/// Whether spans are exported (set once, when the layer is built).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The exporter's provider, flushed and shut down by [`shutdown`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The W3C trace context (`traceparent`, `tracestate`): the only propagation format.
static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();

/// What the exporter needs from the configuration.
pub struct Settings<'a> {
    /// The collector's OTLP/HTTP base URL; spans are posted to `{endpoint}/v1/traces`.
    pub endpoint: &'a str,
    /// The `service.name` resource attribute.
    pub service_name: &'a str,
    /// How long a finished span waits in the batch before it is sent.
    pub batch_delay: Duration,
}

/// Whether spans are exported: false until [`layer`] has built the exporter.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Builds the exporter (a batch processor on its own thread, with reqwest's blocking client)
/// and returns the layer that turns this module's spans into OpenTelemetry spans.
pub fn layer(settings: &Settings<'_>) -> anyhow::Result<Box<dyn Layer<Registry> + Send + Sync>> {
    let endpoint = format!("{}/v1/traces", settings.endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .context("cannot build the OTLP exporter")?;
    let processor = BatchSpanProcessor::builder(Reporting {
        inner: exporter,
        failing: AtomicBool::new(false),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_scheduled_delay(settings.batch_delay)
            .build(),
    )
    .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.to_string())
                .build(),
        )
        .build();
    let tracer = provider.tracer("tokenbox");
    if PROVIDER.set(provider).is_err() {
        anyhow::bail!("the OTLP exporter is already set up");
    }
    ENABLED.store(true, Ordering::Relaxed);
    Ok(tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::TRACE))
        .boxed())
}

/// Sends the spans still in the batch and stops the exporter (blocking: call it off the
/// runtime's workers). Does nothing when traces are off.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(e) = provider.shutdown() {
            tracing::warn!(error = %e, "the last spans could not be sent to the OTLP endpoint");
        }
    }
}

/// Adds the request span to every route when traces are on; returns the router untouched
/// otherwise (nothing is added to a request's path).
pub fn with_request_spans(router: Router) -> Router {
    if enabled() {
        router.layer(axum::middleware::from_fn(request_span))
    } else {
        router
    }
}

/// The request span: method, route template, status, and the `app_id` and `connector_type`
/// of the path. A caller's `traceparent` (and `tracestate`) makes it a child of the caller's
/// span, in the caller's trace.
async fn request_span(request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let route = parts.extensions.get::<MatchedPath>().cloned();
    let route = route.as_ref().map(MatchedPath::as_str);
    let name = match route {
        Some(route) => format!("{} {route}", parts.method),
        None => parts.method.to_string(),
    };
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %parts.method,
        http.route = route,
        http.response.status_code = Empty,
        app_id = Empty,
        connector_type = Empty,
    );
    if let Ok(params) = RawPathParams::from_request_parts(&mut parts, &()).await {
        for (name, value) in &params {
            if matches!(name, "app_id" | "connector_type") {
                span.record(name, value);
            }
        }
    }
    let parent = propagator().extract(&HeaderExtractor(&parts.headers));
    // Fails only for a span that is disabled or already started: neither is the case here.
    let _ = span.set_parent(parent);
    let response = next
        .run(Request::from_parts(parts, body))
        .instrument(span.clone())
        .await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    response
}

/// Adds `span`'s trace context (`traceparent`, and `tracestate` when there is one) to
/// `headers`. Nothing is added when the span is not exported (traces off).
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if !enabled() {
        return;
    }
    propagator().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// The OTLP exporter, logging when exports start failing (once) and when they succeed again.
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(error = %e, spans, "spans could not be sent to the OTLP endpoint (logged once until it works again)");
            }
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!("the OTLP endpoint accepts spans again");
            }
            _ => {}
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

fn propagator() -> &'static TraceContextPropagator {
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
