use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::post;
use http::{StatusCode, header};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::sync::Notify;

/// A span as an OTLP receiver got it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReceivedSpan {
    /// The span name, e.g. `GET /users/{id}`.
    pub name: String,
    /// The trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// The span id, 16 lowercase hex digits.
    pub span_id: String,
    /// The parent span id, empty for a root span.
    pub parent_span_id: String,
    /// The span kind as OTLP numbers it (2 = server, 3 = client, 4 = producer, 5 = consumer).
    pub kind: i32,
    /// String, integer, float and boolean attributes, rendered as strings.
    pub attributes: BTreeMap<String, String>,
    /// The status code as OTLP numbers it (0 = unset, 1 = ok, 2 = error).
    pub status_code: i32,
    /// `service.name` of the resource that sent the span.
    pub service_name: String,
    /// The OTLP type of each attribute: `"string"`, `"int"`, `"double"` or `"bool"`, to check
    /// that integers arrive as integers.
    pub attribute_types: BTreeMap<String, &'static str>,
    /// The attributes of the resource that sent the span, rendered as strings.
    pub resource: BTreeMap<String, String>,
}

/// A log record as an OTLP receiver got it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReceivedLog {
    /// The message, rendered as a string.
    pub body: String,
    /// `INFO`, `WARN`, ...
    pub severity_text: String,
    /// The OTLP severity number (9 = INFO, 13 = WARN, 17 = ERROR).
    pub severity_number: i32,
    /// The trace id of where it was logged, 32 lowercase hex digits; empty outside a trace.
    pub trace_id: String,
    /// The span id of where it was logged; empty outside a trace.
    pub span_id: String,
    /// The event's fields, rendered as strings.
    pub attributes: BTreeMap<String, String>,
    /// The OTLP type of each attribute, as in [`ReceivedSpan::attribute_types`].
    pub attribute_types: BTreeMap<String, &'static str>,
    /// The attributes of the resource that sent the record, rendered as strings.
    pub resource: BTreeMap<String, String>,
}

/// One data point of a metric as an OTLP receiver got it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReceivedMetric {
    /// The metric's name, e.g. `http.server.request.duration`.
    pub name: String,
    /// Its unit, e.g. `s`; empty when it has none.
    pub unit: String,
    /// Its description.
    pub description: String,
    /// `"sum"`, `"gauge"` or `"histogram"`.
    pub kind: &'static str,
    /// Whether a sum only goes up (a counter); `false` for gauges and histograms.
    pub monotonic: bool,
    /// The value of a sum or gauge; the sum of a histogram's samples.
    pub value: f64,
    /// How many samples a histogram holds; 0 for sums and gauges.
    pub count: u64,
    /// A histogram's bucket bounds; empty for sums and gauges.
    pub bounds: Vec<f64>,
    /// The data point's attributes, rendered as strings.
    pub attributes: BTreeMap<String, String>,
    /// The OTLP type of each attribute, as in [`ReceivedSpan::attribute_types`].
    pub attribute_types: BTreeMap<String, &'static str>,
    /// The attributes of the resource that sent the metric, rendered as strings.
    pub resource: BTreeMap<String, String>,
}

#[derive(Default)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    logs: Mutex<Vec<ReceivedLog>>,
    metrics: Mutex<Vec<ReceivedMetric>>,
    arrived: Notify,
}

/// An OTLP/HTTP receiver of traces, logs and metrics on a free loopback port: point `telemetry.otlp.endpoint` at
/// [`OtlpReceiver::endpoint`] and assert on what arrives.
///
/// ```no_run
/// # async fn demo() {
/// let receiver = chassis::testing::OtlpReceiver::start().await;
/// let options = chassis::testing::options()
///     .configure(|loader| loader.set("telemetry.otlp.endpoint", receiver.endpoint()));
/// // ... start a service with `options`, send it a request ...
/// let span = receiver.wait_for(|span| span.kind == 2).await;
/// # let _ = span;
/// # }
/// ```
#[derive(Clone)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Received>,
}

impl std::fmt::Debug for OtlpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpReceiver")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl OtlpReceiver {
    /// Binds `127.0.0.1:0` and serves `POST /v1/traces`, `POST /v1/logs` and `POST /v1/metrics`
    /// (protobuf) in the background.
    pub async fn start() -> Self {
        let received = Arc::new(Received::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port for the OTLP receiver");
        let addr = listener.local_addr().expect("the OTLP receiver's address");
        let app = Router::new()
            .route("/v1/traces", post(export))
            .route("/v1/logs", post(export_logs))
            .route("/v1/metrics", post(export_metrics))
            .with_state(received.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, received }
    }

    /// The base URL to configure as `telemetry.otlp.endpoint`, e.g. `http://127.0.0.1:43111`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every log record received so far.
    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.received.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every metric data point received so far, in the order they arrived (a metric exported
    /// at every collection appears once per collection).
    pub fn metrics(&self) -> Vec<ReceivedMetric> {
        self.received.metrics.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (up to 10 s of real time: metrics go out every `telemetry.otlp.metrics_interval`)
    /// for a metric data point matching `predicate`.
    ///
    /// # Panics
    ///
    /// When no such data point arrives in time, listing the ones that did.
    pub async fn wait_for_metric(&self, predicate: impl Fn(&ReceivedMetric) -> bool) -> ReceivedMetric {
        self.wait("metric", Self::metrics, predicate).await
    }

    /// Waits (up to 10 s of real time: the exporter batches) for a log record matching
    /// `predicate`.
    ///
    /// # Panics
    ///
    /// When no such record arrives in time, listing the records that did.
    pub async fn wait_for_log(&self, predicate: impl Fn(&ReceivedLog) -> bool) -> ReceivedLog {
        self.wait("log record", Self::logs, predicate).await
    }

    /// Waits (up to 10 s of real time: the exporter batches) for a span matching `predicate`.
    ///
    /// # Panics
    ///
    /// When no such span arrives in time, listing the spans that did.
    pub async fn wait_for(&self, predicate: impl Fn(&ReceivedSpan) -> bool) -> ReceivedSpan {
        self.wait("span", Self::spans, predicate).await
    }

    /// Waits up to 10 s for an item of `received` (a snapshot of spans or of log records)
    /// matching `predicate`; `what` names them in the panic.
    async fn wait<T: std::fmt::Debug>(
        &self,
        what: &str,
        received: fn(&Self) -> Vec<T>,
        predicate: impl Fn(&T) -> bool,
    ) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let arrived = self.received.arrived.notified();
            if let Some(item) = received(self).into_iter().find(|item| predicate(item)) {
                return item;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("no matching {what} arrived within 10s; received: {:#?}", received(self));
            }
        }
    }
}

async fn export(State(received): State<Arc<Received>>, body: Bytes) -> axum::response::Response {
    receive(
        &received,
        |r| &r.spans,
        body,
        received_spans,
        ExportTraceServiceResponse { partial_success: None },
    )
}

/// The spans of a trace export request.
fn received_spans(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = rendered(resource_spans.resource.as_ref().map_or(&[][..], |r| &r.attributes));
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                spans.push(ReceivedSpan {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: rendered(&span.attributes),
                    attribute_types: types(&span.attributes),
                    status_code: span.status.map(|s| s.code).unwrap_or(0),
                    service_name: service_name.clone(),
                    resource: resource.clone(),
                });
            }
        }
    }
    spans
}

/// Decodes an export request, files the items `items` makes of it in `into`, wakes the waiters
/// and answers `response`: the body of every signal's endpoint.
fn receive<R: prost::Message + Default, T>(
    received: &Received,
    into: fn(&Received) -> &Mutex<Vec<T>>,
    body: Bytes,
    items: fn(R) -> Vec<T>,
    response: impl prost::Message,
) -> axum::response::Response {
    let request = match R::decode(body) {
        Ok(request) => request,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    let items = items(request);
    into(received).lock().unwrap_or_else(|e| e.into_inner()).extend(items);
    received.arrived.notify_waiters();
    accepted(response)
}

/// The collector's answer: everything was taken.
fn accepted(response: impl prost::Message) -> axum::response::Response {
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        response.encode_to_vec(),
    )
        .into_response()
}

async fn export_logs(State(received): State<Arc<Received>>, body: Bytes) -> axum::response::Response {
    receive(
        &received,
        |r| &r.logs,
        body,
        received_logs,
        ExportLogsServiceResponse { partial_success: None },
    )
}

/// The log records of a log export request.
fn received_logs(request: ExportLogsServiceRequest) -> Vec<ReceivedLog> {
    let mut logs = Vec::new();
    for resource_logs in request.resource_logs {
        let resource = rendered(resource_logs.resource.as_ref().map_or(&[][..], |r| &r.attributes));
        for scope_logs in resource_logs.scope_logs {
            for record in scope_logs.log_records {
                logs.push(ReceivedLog {
                    body: record
                        .body
                        .as_ref()
                        .and_then(|body| body.value.as_ref())
                        .map(render)
                        .unwrap_or_default(),
                    severity_text: record.severity_text,
                    severity_number: record.severity_number,
                    trace_id: hex(&record.trace_id),
                    span_id: hex(&record.span_id),
                    attributes: rendered(&record.attributes),
                    attribute_types: types(&record.attributes),
                    resource: resource.clone(),
                });
            }
        }
    }
    logs
}

async fn export_metrics(State(received): State<Arc<Received>>, body: Bytes) -> axum::response::Response {
    receive(
        &received,
        |r| &r.metrics,
        body,
        received_metrics,
        ExportMetricsServiceResponse { partial_success: None },
    )
}

/// The data points of a metric export request.
fn received_metrics(request: ExportMetricsServiceRequest) -> Vec<ReceivedMetric> {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as Number;
    let mut points = Vec::new();
    for resource_metrics in request.resource_metrics {
        let resource = rendered(resource_metrics.resource.as_ref().map_or(&[][..], |r| &r.attributes));
        for metric in resource_metrics
            .scope_metrics
            .into_iter()
            .flat_map(|scope| scope.metrics)
        {
            let point = |kind, monotonic, attributes: &[KeyValue], value, count, bounds| ReceivedMetric {
                name: metric.name.clone(),
                unit: metric.unit.clone(),
                description: metric.description.clone(),
                kind,
                monotonic,
                value,
                count,
                bounds,
                attributes: rendered(attributes),
                attribute_types: types(attributes),
                resource: resource.clone(),
            };
            let number = |value: &Option<Number>| match value {
                Some(Number::AsDouble(v)) => *v,
                Some(Number::AsInt(v)) => *v as f64,
                None => f64::NAN,
            };
            match &metric.data {
                Some(Data::Sum(sum)) => points.extend(
                    sum.data_points
                        .iter()
                        .map(|p| point("sum", sum.is_monotonic, &p.attributes, number(&p.value), 0, Vec::new())),
                ),
                Some(Data::Gauge(gauge)) => points.extend(
                    gauge
                        .data_points
                        .iter()
                        .map(|p| point("gauge", false, &p.attributes, number(&p.value), 0, Vec::new())),
                ),
                Some(Data::Histogram(histogram)) => points.extend(histogram.data_points.iter().map(|p| {
                    point(
                        "histogram",
                        false,
                        &p.attributes,
                        p.sum.unwrap_or_default(),
                        p.count,
                        p.explicit_bounds.clone(),
                    )
                })),
                _ => {}
            }
        }
    }
    points
}

fn rendered(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), render(kv.value.as_ref()?.value.as_ref()?))))
        .collect()
}

fn types(attributes: &[KeyValue]) -> BTreeMap<String, &'static str> {
    attributes
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), type_of(kv.value.as_ref()?.value.as_ref()?))))
        .collect()
}

fn render(value: &Value) -> String {
    match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::StringValue(_) => "string",
        Value::IntValue(_) => "int",
        Value::DoubleValue(_) => "double",
        Value::BoolValue(_) => "bool",
        _ => "other",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
