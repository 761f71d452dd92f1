//! OpenTelemetry traces: an OTLP/HTTP receiver on loopback collects what the server exports.
//! A refresh started by a request shows as the request's span (in the caller's trace) with a
//! provider-call span under it; no secret of the test is in any exported byte; the trace
//! context reaches a provider only when its connector type allows it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;

use crate::helpers::{
    eventually, now, spawn_app_with, unique, wait_until, AppOptions, FakeProvider, TestApp,
    CLIENT_ID,
};

/// OTLP span kinds (`opentelemetry.proto.trace.v1.Span.SpanKind`).
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// A collector: every body posted to `/v1/traces` and accepted, as received.
#[derive(Clone)]
struct OtlpReceiver {
    url: String,
    state: Arc<Collector>,
}

#[derive(Default)]
struct Collector {
    bodies: Mutex<Vec<Bytes>>,
    /// Posts received, refused ones included.
    posts: AtomicUsize,
    /// While `true`, posts are answered 503 (a collector that is down) and not kept.
    refusing: AtomicBool,
}

impl OtlpReceiver {
    async fn start() -> Self {
        let state = Arc::new(Collector::default());
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, state }
    }

    /// Every byte received so far, bodies end to end.
    fn raw(&self) -> Vec<u8> {
        self.state.bodies.lock().unwrap().concat()
    }

    fn posts(&self) -> usize {
        self.state.posts.load(Ordering::SeqCst)
    }

    fn refuse(&self, refusing: bool) {
        self.state.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Exported> {
        let bodies = self.state.bodies.lock().unwrap().clone();
        let mut spans = Vec::new();
        for body in bodies {
            let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
            for resource in request.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                    .unwrap_or_default();
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        spans.push(Exported {
                            service: service.clone(),
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent: hex(&span.parent_span_id),
                            trace_state: span.trace_state,
                            name: span.name,
                            kind: span.kind,
                            attributes: span
                                .attributes
                                .into_iter()
                                .map(|kv| {
                                    let value =
                                        text(kv.value.as_ref().and_then(|v| v.value.as_ref()));
                                    (kv.key, value)
                                })
                                .collect(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// Waits for the span named `name` in trace `trace_id`, and returns it.
    async fn span(&self, trace_id: &str, name: &str) -> Exported {
        eventually(&format!("the span {name} of trace {trace_id}"), || {
            let found = self
                .spans()
                .into_iter()
                .find(|s| s.trace_id == trace_id && s.name == name);
            async move { found }
        })
        .await
    }

    /// Waits for a span named `name`, in any trace, and returns the only one.
    async fn only_span(&self, name: &str) -> Exported {
        eventually(&format!("a span {name}"), || {
            let found: Vec<Exported> = self
                .spans()
                .into_iter()
                .filter(|s| s.name == name)
                .collect();
            assert!(found.len() <= 1, "{found:?}");
            async move { found.into_iter().next() }
        })
        .await
    }
}

async fn receive(
    State(state): State<Arc<Collector>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-protobuf")
    );
    if state.refusing.load(Ordering::SeqCst) {
        state.posts.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    state.bodies.lock().unwrap().push(body);
    state.posts.fetch_add(1, Ordering::SeqCst);
    StatusCode::OK
}

/// One exported span, its ids in hex and its attributes as text.
#[derive(Clone, Debug)]
struct Exported {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    trace_state: String,
    name: String,
    kind: i32,
    attributes: BTreeMap<String, String>,
}

impl Exported {
    fn attribute(&self, key: &str) -> &str {
        self.attributes
            .get(key)
            .unwrap_or_else(|| panic!("{} has no attribute {key}: {self:?}", self.name))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(n)) => n.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// A caller's W3C trace context: its trace id, its span id, and the `traceparent` header.
fn caller_context() -> (String, String, String) {
    let trace_id = format!("{:032x}", rand::random::<u128>() | 1);
    let span_id = format!("{:016x}", rand::random::<u64>() | 1);
    let header = format!("00-{trace_id}-{span_id}-01");
    (trace_id, span_id, header)
}

/// A server exporting to `receiver` with a short batch delay, with `extra` configuration.
async fn traced_app(provider: &FakeProvider, receiver: &OtlpReceiver, extra: &str) -> TestApp {
    spawn_app_with(AppOptions {
        provider: Some(provider.clone()),
        extra_config: format!(
            "otlp_endpoint = \"{}\"\notlp_service_name = \"tokenbox-under-test\"\notlp_batch_delay_millis = 20\n{extra}",
            receiver.url
        ),
        ..AppOptions::default()
    })
    .await
}

/// Must show 3 of issue 19: a refresh made for a request is exported as the request's span
/// (a child of the caller's, in the caller's trace) with the provider call under it, and the
/// provider's HTTP request under that; the attributes name the connector type, the outcome and
/// the attempt, and no secret of the test is anywhere in what was sent to the collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_is_exported_as_a_request_span_with_a_provider_call_under_it_and_no_secret() {
    let provider = FakeProvider::start().await;
    let receiver = OtlpReceiver::start().await;
    let app = traced_app(&provider, &receiver, "").await;
    let app_id = unique("traced");
    let imported = app.import_expired(&app_id).await;
    let (trace_id, caller_span, traceparent) = caller_context();

    let response = app
        .get(&format!("/{app_id}/acme/binb-token"))
        .as_superadmin()
        .header("traceparent", &traceparent)
        .header("tracestate", "vendor=opaque")
        .send()
        .await;
    assert_eq!(response.status(), 200);
    let served = response.json::<serde_json::Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(served, imported, "the expired token was refreshed");
    assert_eq!(provider.calls(), 1);

    // Each span is the only one of its name in this test: found in whichever trace it is, so
    // that a wrong trace or parent fails an assertion rather than a wait.
    let request = receiver
        .only_span("GET /{app_id}/{connector_type}/binb-token")
        .await;
    assert_eq!(
        request.trace_id, trace_id,
        "the caller's trace: {request:?}"
    );
    assert_eq!(
        request.parent, caller_span,
        "the caller's span is the parent"
    );
    assert_eq!(
        request.trace_state, "vendor=opaque",
        "the caller's tracestate"
    );
    assert_eq!(request.kind, SERVER);
    assert_eq!(request.service, "tokenbox-under-test");
    assert_eq!(request.attribute("http.request.method"), "GET");
    assert_eq!(
        request.attribute("http.route"),
        "/{app_id}/{connector_type}/binb-token"
    );
    assert_eq!(request.attribute("http.response.status_code"), "200");
    assert_eq!(request.attribute("app_id"), app_id);
    assert_eq!(request.attribute("connector_type"), "acme");

    let call = receiver.only_span("provider_call").await;
    assert_eq!(call.trace_id, trace_id, "in the caller's trace: {call:?}");
    assert_eq!(
        call.parent, request.span_id,
        "the provider call is a child of the request span: {call:?}"
    );
    assert_eq!(call.attribute("connector_type"), "acme");
    assert_eq!(call.attribute("kind"), "oauth2");
    assert_eq!(call.attribute("outcome"), "ok");
    assert_eq!(call.attribute("attempts"), "1");
    assert_eq!(call.attribute("server.address"), "127.0.0.1");

    let exchange = receiver.only_span("POST 127.0.0.1").await;
    assert_eq!(exchange.parent, call.span_id, "{exchange:?}");
    assert_eq!(exchange.kind, CLIENT);
    assert_eq!(exchange.attribute("attempt"), "1");
    assert_eq!(exchange.attribute("http.response.status_code"), "200");
    assert_eq!(exchange.attribute("connector_type"), "acme");

    // Nothing that could hold a secret: no URL (its path or query), no header.
    for span in receiver.spans() {
        for (key, value) in &span.attributes {
            assert!(
                !value.contains("://") && !value.contains('?'),
                "{}: {key} = {value}",
                span.name
            );
        }
    }
    // And no secret anywhere in the bytes sent: the imported and the refreshed tokens, the
    // refresh tokens, the connector type's client secret, the service accounts' tokens.
    let raw = receiver.raw();
    let secrets = app.all_secrets();
    assert!(secrets.contains(&served) && secrets.contains(&imported));
    assert!(secrets.contains(&provider.state.client_secret));
    assert!(secrets.contains(&app.superadmin) && secrets.contains(&app.admin));
    assert!(secrets.len() >= 7, "{}", secrets.len());
    for secret in secrets {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a secret ({}...) was exported",
            &secret[..8]
        );
    }
}

/// The trace context goes to a provider only when its connector type says
/// `propagate_trace = true`: then the provider sees the caller's trace, with tokenbox's
/// provider request as the parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_context_reaches_a_provider_only_when_its_connector_type_allows_it() {
    let provider = FakeProvider::start().await;
    let receiver = OtlpReceiver::start().await;
    let traced = format!(
        "\n[connector_types.traced]\nauthorization_url = \"{url}/authorize\"\ntoken_url = \"{url}/token\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{secret}\"\nclient_auth = \"basic\"\npropagate_trace = true\n",
        url = provider.url,
        secret = provider.state.client_secret,
    );
    let app = traced_app(&provider, &receiver, &traced).await;

    // `acme` does not allow it.
    let app_id = unique("untraced");
    app.import_expired(&app_id).await;
    let (_, _, traceparent) = caller_context();
    let response = app
        .get(&format!("/{app_id}/acme/binb-token"))
        .as_superadmin()
        .header("traceparent", &traceparent)
        .send()
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(*provider.state.traceparents.lock().unwrap(), vec![None]);

    // `traced` does.
    let app_id = unique("traced");
    app.import_ok(
        &app_id,
        "traced",
        &json!({
            "access_token": unique("imported-at"),
            "refresh_token": provider.new_refresh_token(),
            "expires_at": now() - 10,
        }),
    )
    .await;
    let (trace_id, caller_span, traceparent) = caller_context();
    let response = app
        .get(&format!("/{app_id}/traced/binb-token"))
        .as_superadmin()
        .header("traceparent", &traceparent)
        .send()
        .await;
    assert_eq!(response.status(), 200);
    let sent = provider.state.traceparents.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let sent = sent[1].clone().expect("a traceparent sent to the provider");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[1], trace_id, "the caller's trace");
    assert_ne!(parts[2], caller_span, "tokenbox's span, not the caller's");
    assert_eq!(parts[3], "01", "sampled");
    // The parent the provider sees is tokenbox's request to it.
    let exchange = receiver.span(&trace_id, "POST 127.0.0.1").await;
    assert_eq!(parts[2], exchange.span_id);
    assert_eq!(exchange.attribute("connector_type"), "traced");
}

/// The background refresher's provider calls are roots of their own traces (no request
/// started them), with their provider requests under them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_refresh_is_a_trace_of_its_own() {
    let provider = FakeProvider::start().await;
    let receiver = OtlpReceiver::start().await;
    let app = spawn_app_with(AppOptions {
        provider: Some(provider.clone()),
        refresher: true,
        extra_config: format!(
            "otlp_endpoint = \"{}\"\notlp_batch_delay_millis = 20\nrefresher_interval_seconds = 1\n",
            receiver.url
        ),
        ..AppOptions::default()
    })
    .await;
    let app_id = unique("background");
    app.import_ok(
        &app_id,
        "acme",
        &json!({
            "access_token": unique("imported-at"),
            "refresh_token": provider.new_refresh_token(),
            "expires_at": now() + 120,
        }),
    )
    .await;

    let call = receiver.only_span("provider_call").await;
    assert_eq!(call.parent, "", "a root span: {call:?}");
    assert_eq!(call.attribute("outcome"), "ok");
    assert_eq!(call.attribute("connector_type"), "acme");
    let exchange = receiver.only_span("POST 127.0.0.1").await;
    assert_eq!(exchange.parent, call.span_id);
    let in_trace: Vec<String> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == call.trace_id)
        .map(|s| s.name)
        .collect();
    assert_eq!(in_trace.len(), 2, "no request in this trace: {in_trace:?}");
}

/// The spans still waiting in the exporter's batch are sent when the server stops: with a
/// batch delay of ten minutes, nothing is sent before SIGTERM, everything after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spans_still_in_the_batch_are_sent_at_shutdown() {
    let provider = FakeProvider::start().await;
    let receiver = OtlpReceiver::start().await;
    let mut app = spawn_app_with(AppOptions {
        provider: Some(provider.clone()),
        extra_config: format!(
            "otlp_endpoint = \"{}\"\notlp_batch_delay_millis = 600000\n",
            receiver.url
        ),
        ..AppOptions::default()
    })
    .await;
    let app_id = unique("shutdown");
    app.import_expired(&app_id).await;
    let response = app.get_token(&app_id, "acme", "").await;
    assert_eq!(response.status(), 200);
    assert_eq!(provider.calls(), 1);
    assert!(receiver.spans().is_empty(), "still in the batch");

    assert_eq!(
        app.terminate(std::time::Duration::from_secs(30)),
        Some(0),
        "a clean exit"
    );
    let names: Vec<String> = receiver.spans().into_iter().map(|s| s.name).collect();
    for name in [
        "PUT /{app_id}/{connector_type}/connection",
        "GET /{app_id}/{connector_type}/binb-token",
        "provider_call",
        "POST 127.0.0.1",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
}

/// A collector that refuses spans is logged once, not once per batch, and its recovery once;
/// the server serves on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_is_logged_once_and_its_return_once() {
    let receiver = OtlpReceiver::start().await;
    receiver.refuse(true);
    let app = spawn_app_with(AppOptions {
        extra_config: format!(
            "otlp_endpoint = \"{}\"\notlp_batch_delay_millis = 20\n",
            receiver.url
        ),
        ..AppOptions::default()
    })
    .await;
    let down = "spans could not be sent to the OTLP endpoint";
    for n in 1..=3 {
        assert_eq!(app.get("/healthz").send().await.status(), 200);
        wait_until("the batch's post", || receiver.posts() >= n).await;
    }
    wait_until("the warning", || app.log_lines_containing(down) > 0).await;
    assert_eq!(app.log_lines_containing(down), 1, "{}", app.logs());
    assert!(receiver.spans().is_empty());

    receiver.refuse(false);
    assert_eq!(app.get("/healthz").send().await.status(), 200);
    wait_until("the recovery", || {
        app.log_lines_containing("the OTLP endpoint accepts spans again") == 1
    })
    .await;
    receiver.only_span("GET /healthz").await;
    assert_eq!(app.log_lines_containing(down), 1);
}
