//! The body of an OTLP/HTTP trace export (`ExportTraceServiceRequest`, protobuf), written
//! straight from the ended spans (the SDK's [`SpanData`] and the chassis' own server spans)
//! into one buffer.
//!
//! The OTLP exporter of the SDK first converts every span into the generated protobuf
//! messages (a `String` per attribute key and value, a `Vec` per id), encodes those and frees
//! them again: at tens of thousands of spans a second that is most of the export thread's
//! time. Here each field is written where it lies, so a batch costs one buffer. The output decodes to the same message the SDK's conversion builds
//! (a test compares the two).

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::server_span::{EndedSpan, ServerRecord};

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `SpanFlags`: the span's context says whether its parent is remote, and whether it is.
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// A protobuf writer over a borrowed buffer.
struct Writer<'a> {
    buf: &'a mut Vec<u8>,
}

impl Writer<'_> {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.buf.push((value as u8) | 0x80);
            value >>= 7;
        }
        self.buf.push(value as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    fn uint(&mut self, field: u32, value: u64) {
        self.key(field, VARINT);
        self.varint(value);
    }

    /// A scalar field proto3 leaves out at its default.
    fn uint_unless_zero(&mut self, field: u32, value: u64) {
        if value != 0 {
            self.uint(field, value);
        }
    }

    fn fixed64(&mut self, field: u32, value: u64) {
        self.key(field, FIXED64);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    fn fixed32(&mut self, field: u32, value: u32) {
        self.key(field, FIXED32);
        self.buf.extend_from_slice(&value.to_le_bytes());
    }

    fn bytes(&mut self, field: u32, value: &[u8]) {
        self.key(field, LEN);
        self.varint(value.len() as u64);
        self.buf.extend_from_slice(value);
    }

    fn string_unless_empty(&mut self, field: u32, value: &str) {
        if !value.is_empty() {
            self.bytes(field, value.as_bytes());
        }
    }

    /// A nested message: `body` writes its fields, and its length goes in front of them
    /// afterwards. One byte is set aside for the length, which fits any message shorter than
    /// 128 bytes (most attributes).
    fn message(&mut self, field: u32, body: impl FnOnce(&mut Self)) {
        self.message_sized(field, 1, body);
    }

    /// A nested message whose length usually takes `width` bytes as a varint (2 for a span,
    /// 3 for a batch's scope): set aside up front, so that only a message of another size
    /// moves its bytes, by what its length needs more or less.
    fn message_sized(&mut self, field: u32, width: usize, body: impl FnOnce(&mut Self)) {
        self.key(field, LEN);
        let at = self.buf.len();
        self.buf.resize(at + width, 0);
        body(self);
        let end = self.buf.len();
        let len = end - at - width;
        let mut prefix = [0u8; 10];
        let mut used = 0;
        let mut rest = len as u64;
        while rest >= 0x80 {
            prefix[used] = (rest as u8) | 0x80;
            rest >>= 7;
            used += 1;
        }
        prefix[used] = rest as u8;
        used += 1;
        if used > width {
            self.buf.resize(end + used - width, 0);
            self.buf.copy_within(at + width..end, at + used);
        } else if used < width {
            self.buf.copy_within(at + width..end, at + used);
            self.buf.truncate(end - (width - used));
        }
        self.buf[at..at + used].copy_from_slice(&prefix[..used]);
    }

    /// `AnyValue`: the one field of its `oneof` is written even at its default, as the SDK's
    /// conversion does, so an empty string stays a string.
    fn any_value(&mut self, value: &Value) {
        match value {
            Value::String(text) => self.bytes(1, text.as_str().as_bytes()),
            Value::Bool(flag) => self.uint(2, u64::from(*flag)),
            Value::I64(number) => self.uint(3, *number as u64),
            Value::F64(number) => self.fixed64(4, number.to_bits()),
            Value::Array(array) => self.message(5, |array_value| match array {
                Array::Bool(values) => {
                    for value in values {
                        array_value.message(1, |any| any.uint(2, u64::from(*value)));
                    }
                }
                Array::I64(values) => {
                    for value in values {
                        array_value.message(1, |any| any.uint(3, *value as u64));
                    }
                }
                Array::F64(values) => {
                    for value in values {
                        array_value.message(1, |any| any.fixed64(4, value.to_bits()));
                    }
                }
                Array::String(values) => {
                    for value in values {
                        array_value.message(1, |any| any.bytes(1, value.as_str().as_bytes()));
                    }
                }
                // Kinds of array added to the API after this was written: their text.
                other => array_value.message(1, |any| any.bytes(1, other.to_string().as_bytes())),
            }),
            other => self.bytes(1, other.to_string().as_bytes()),
        }
    }

    /// `repeated KeyValue` at `field`.
    fn attributes(&mut self, field: u32, attributes: &[KeyValue]) {
        for attribute in attributes {
            let key = attribute.key.as_str().as_bytes();
            match &attribute.value {
                Value::String(text) => self.text_attribute(field, key, text.as_str().as_bytes()),
                Value::I64(number) => self.int_attribute(field, key, *number),
                other => self.message(field, |kv| {
                    kv.string_unless_empty(1, attribute.key.as_str());
                    kv.message(2, |any| any.any_value(other));
                }),
            }
        }
    }

    /// A `KeyValue` with a string value, its lengths known up front: the common attribute,
    /// written without going back to fill in lengths.
    fn text_attribute(&mut self, field: u32, key: &[u8], value: &[u8]) {
        let any = 1 + varint_len(value.len()) + value.len();
        self.key_value(field, key, any);
        self.buf.push(1 << 3 | LEN as u8);
        self.varint(value.len() as u64);
        self.buf.extend_from_slice(value);
    }

    /// A `KeyValue` with an integer value.
    fn int_attribute(&mut self, field: u32, key: &[u8], value: i64) {
        let any = 1 + varint_len(value as u64 as usize);
        self.key_value(field, key, any);
        self.buf.push(3 << 3 | VARINT as u8);
        self.varint(value as u64);
    }

    /// The start of a `KeyValue` whose `AnyValue` is `any` bytes long: up to that value's
    /// own field.
    fn key_value(&mut self, field: u32, key: &[u8], any: usize) {
        let key_field = if key.is_empty() {
            0
        } else {
            1 + varint_len(key.len()) + key.len()
        };
        let len = key_field + 1 + varint_len(any) + any;
        self.key(field, LEN);
        self.varint(len as u64);
        self.buf.reserve(len);
        if !key.is_empty() {
            self.buf.push(1 << 3 | LEN as u8);
            self.varint(key.len() as u64);
            self.buf.extend_from_slice(key);
        }
        self.buf.push(2 << 3 | LEN as u8);
        self.varint(any as u64);
    }

    fn ids(&mut self, context: &SpanContext) {
        self.bytes(1, &context.trace_id().to_bytes());
        self.bytes(2, &context.span_id().to_bytes());
        self.string_unless_empty(3, &context.trace_state().header());
    }

    /// A span's fields before its attributes.
    fn head(&mut self, context: &SpanContext, parent: SpanId, name: &str, kind: &SpanKind, times: [SystemTime; 2]) {
        self.ids(context);
        if parent != SpanId::INVALID {
            self.bytes(4, &parent.to_bytes());
        }
        self.string_unless_empty(5, name);
        self.uint_unless_zero(6, span_kind(kind));
        self.fixed64(7, nanos(times[0]));
        self.fixed64(8, nanos(times[1]));
    }

    fn span(&mut self, span: &SpanData) {
        let times = [span.start_time, span.end_time];
        self.head(
            &span.span_context,
            span.parent_span_id,
            &span.name,
            &span.span_kind,
            times,
        );
        self.attributes(9, &span.attributes);
        self.rest(
            span.dropped_attributes_count,
            &span.events,
            &span.links,
            &span.status,
            &span.span_context,
            span.parent_span_is_remote,
        );
    }

    /// A span's fields after its attributes.
    fn rest(
        &mut self,
        dropped_attributes_count: u32,
        events: &SpanEvents,
        links: &SpanLinks,
        status: &Status,
        context: &SpanContext,
        parent_is_remote: bool,
    ) {
        self.uint_unless_zero(10, u64::from(dropped_attributes_count));
        for event in events.iter() {
            self.message(11, |e| {
                e.fixed64(1, nanos(event.timestamp));
                e.string_unless_empty(2, &event.name);
                e.attributes(3, &event.attributes);
                e.uint_unless_zero(4, u64::from(event.dropped_attributes_count));
            });
        }
        self.uint_unless_zero(12, u64::from(events.dropped_count));
        for link in links.iter() {
            self.message(13, |l| {
                l.ids(&link.span_context);
                l.attributes(4, &link.attributes);
                l.uint_unless_zero(5, u64::from(link.dropped_attributes_count));
                l.fixed32(6, flags(&link.span_context, link.span_context.is_remote()));
            });
        }
        self.uint_unless_zero(14, u64::from(links.dropped_count));
        self.message(15, |s| {
            let (code, message) = match status {
                Status::Unset => (0, ""),
                Status::Ok => (1, ""),
                Status::Error { description } => (2, description.as_ref()),
            };
            s.string_unless_empty(2, message);
            s.uint_unless_zero(3, code);
        });
        self.fixed32(16, flags(context, parent_is_remote));
    }

    fn ended(&mut self, span: &EndedSpan, constants: &mut RequestConstants) {
        match span {
            EndedSpan::Sdk(span) => self.span(span),
            EndedSpan::Server(record) => self.server(record, constants),
        }
    }

    /// A server span, its attributes in the order the SDK's span would hold them.
    fn server(&mut self, span: &ServerRecord, constants: &mut RequestConstants) {
        let times = [span.start, span.end];
        self.head(&span.context, span.parent_span_id, &span.name, &SpanKind::Server, times);
        let request = &span.request;
        constants.write(self, request);
        for (key, value) in request.texts() {
            self.text_attribute(9, key.as_bytes(), value);
        }
        if let Some(client) = request.client {
            let mut text = [0u8; 48];
            let len = ip_text(client, &mut text);
            self.text_attribute(9, b"client.address", &text[..len]);
        }
        self.attributes(9, &span.attributes);
        self.rest(
            span.dropped_attributes_count,
            &span.events,
            &span.links,
            &span.status,
            &span.context,
            span.parent_is_remote,
        );
    }

    fn scope(&mut self, scope: &InstrumentationScope) {
        self.string_unless_empty(1, scope.name());
        self.string_unless_empty(2, scope.version().unwrap_or_default());
        let attributes: Vec<KeyValue> = scope.attributes().cloned().collect();
        self.attributes(3, &attributes);
    }
}

/// A server span's method, scheme and protocol version attributes, encoded once per batch:
/// nearly every request of a batch has the same three, so each span copies their bytes
/// instead of writing three attributes.
#[derive(Default)]
struct RequestConstants {
    /// The values `encoded` holds, compared by address: the fields are `&'static str`s from
    /// small fixed sets, and another address of the same text only costs an encoding.
    of: Option<[&'static str; 3]>,
    encoded: Vec<u8>,
}

impl RequestConstants {
    fn write(&mut self, writer: &mut Writer<'_>, request: &super::server_span::RequestFields) {
        let values = [request.method, request.scheme, request.protocol_version];
        let same = self
            .of
            .is_some_and(|of| of.iter().zip(&values).all(|(held, value)| std::ptr::eq(*held, *value)));
        if !same {
            self.encoded.clear();
            let mut encoder = Writer { buf: &mut self.encoded };
            for (key, value) in [
                (&b"http.request.method"[..], values[0]),
                (b"url.scheme", values[1]),
                (b"network.protocol.version", values[2]),
            ] {
                encoder.text_attribute(9, key, value.as_bytes());
            }
            self.of = Some(values);
        }
        writer.buf.extend_from_slice(&self.encoded);
    }
}

/// The bytes `value` takes as a varint.
fn varint_len(value: usize) -> usize {
    let bits = usize::BITS - (value | 1).leading_zeros();
    bits.div_ceil(7) as usize
}

fn span_kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// `ip` as text into `out`, returning its length: IPv4 by hand (`Display` costs ten times
/// as much, per span), IPv6 through `Display` (at most 45 characters).
fn ip_text(ip: std::net::IpAddr, out: &mut [u8; 48]) -> usize {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out[len] = b'.';
                    len += 1;
                }
                if octet >= 100 {
                    out[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    out[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                out[len] = b'0' + octet % 10;
                len += 1;
            }
            len
        }
        v6 => {
            let mut cursor = std::io::Cursor::new(&mut out[..]);
            let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{v6}"));
            cursor.position() as usize
        }
    }
}

fn flags(context: &SpanContext, remote: bool) -> u32 {
    let mut flags = u32::from(context.trace_flags().to_u8()) | CONTEXT_HAS_IS_REMOTE;
    if remote {
        flags |= CONTEXT_IS_REMOTE;
    }
    flags
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| since.as_nanos() as u64)
        .unwrap_or(0)
}

/// The resource every batch is sent with, encoded once: the fields of `ResourceSpans` that
/// precede its scopes (`resource`) and follow them (`schema_url`).
#[derive(Debug, Default, Clone)]
pub(crate) struct EncodedResource {
    resource: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    pub(crate) fn new(resource: &Resource) -> Self {
        let attributes: Vec<KeyValue> = resource
            .iter()
            .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
            .collect();
        let mut encoded = Vec::new();
        Writer { buf: &mut encoded }.attributes(1, &attributes);
        Self {
            resource: encoded,
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }
}

/// Writes `batch` as an `ExportTraceServiceRequest` into `out` (cleared first): one
/// `ResourceSpans` of `resource`, one `ScopeSpans` per instrumentation scope in the order the
/// scopes first appear, the spans of each in batch order.
pub(crate) fn encode_spans(resource: &EncodedResource, batch: &[EndedSpan], out: &mut Vec<u8>) {
    out.clear();
    if batch.is_empty() {
        return;
    }
    // Spans of a process come from a handful of tracers: finding a span's scope in a short
    // list beats hashing every span's.
    let same = |a: &InstrumentationScope, b: &InstrumentationScope| std::ptr::eq(a, b) || a == b;
    let mut scopes: Vec<&InstrumentationScope> = Vec::new();
    for span in batch {
        if !scopes.iter().any(|scope| same(scope, span.scope())) {
            scopes.push(span.scope());
        }
    }
    let mut constants = RequestConstants::default();
    let mut writer = Writer { buf: out };
    writer.message_sized(1, 3, |resource_spans| {
        resource_spans.message(1, |r| r.buf.extend_from_slice(&resource.resource));
        for scope in scopes {
            resource_spans.message_sized(2, 3, |scope_spans| {
                scope_spans.message(1, |s| s.scope(scope));
                for span in batch.iter().filter(|span| same(span.scope(), scope)) {
                    scope_spans.message_sized(2, 2, |s| s.ended(span, &mut constants));
                }
                scope_spans.string_unless_empty(3, scope.schema_url().unwrap_or_default());
            });
        }
        resource_spans.string_unless_empty(3, &resource.schema_url);
    });
}

#[cfg(all(test, feature = "testing"))]
pub(crate) mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{Event, Link, SpanContext, TraceFlags, TraceId, TraceState};
    use opentelemetry::{KeyValue, StringValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;

    use super::*;
    use crate::telemetry::server_span::CHASSIS_SCOPE;

    fn context(trace: u128, span: u64, sampled: bool, remote: bool, state: &str) -> SpanContext {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let state: TraceState = state.parse().expect("a trace state");
        SpanContext::new(TraceId::from(trace), SpanId::from(span), flags, remote, state)
    }

    /// A sampled server span of 1.25 ms.
    pub(crate) fn span(name: &'static str, scope: &InstrumentationScope, attributes: Vec<KeyValue>) -> SpanData {
        let start = UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789);
        SpanData {
            span_context: context(
                0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
                0xb7ad_6b71_6920_3331,
                true,
                false,
                "",
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Server,
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: start + Duration::from_micros(1_250),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        }
    }

    /// What the SDK's exporter would send for `batch`.
    fn sdk_encoding(resource: &Resource, batch: Vec<SpanData>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &ResourceAttributesWithSchema::from(resource)),
        }
    }

    fn ours(resource: &Resource, batch: &[SpanData]) -> ExportTraceServiceRequest {
        let batch: Vec<EndedSpan> = batch
            .iter()
            .cloned()
            .map(|span| EndedSpan::Sdk(Box::new(span)))
            .collect();
        ours_ended(resource, &batch)
    }

    fn ours_ended(resource: &Resource, batch: &[EndedSpan]) -> ExportTraceServiceRequest {
        let mut body = Vec::new();
        encode_spans(&EncodedResource::new(resource), batch, &mut body);
        ExportTraceServiceRequest::decode(body.as_slice()).expect("the body decodes as an ExportTraceServiceRequest")
    }

    #[test]
    fn batches_decode_to_what_the_sdk_conversion_builds() {
        let resource = Resource::builder()
            .with_service_name("checkout")
            .with_attributes([
                KeyValue::new("service.instance.id", "pod-7"),
                KeyValue::new("host.cpus", 8),
            ])
            .build();
        let chassis = InstrumentationScope::builder("chassis").build();
        let library = InstrumentationScope::builder("orders-lib")
            .with_version("1.2.0")
            .with_schema_url("https://opentelemetry.io/schemas/1.37.0")
            .with_attributes([KeyValue::new("scope.attr", true)])
            .build();
        // Every kind of value, at its default too; a long string so that lengths take more
        // than one byte at every level.
        let long_path = format!("/orders/{}", "x".repeat(300));
        let mut server = span(
            "GET /orders/{id}",
            &chassis,
            vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("url.path", long_path),
                KeyValue::new("http.response.status_code", 503),
                KeyValue::new("negative", -42),
                KeyValue::new("zero", 0),
                KeyValue::new("empty", ""),
                KeyValue::new("ratio", 0.25),
                KeyValue::new("flag", false),
                KeyValue::new("codes", Value::Array(Array::I64(vec![1, -2, 300]))),
                KeyValue::new(
                    "names",
                    Value::Array(Array::String(vec![StringValue::from("a"), "".into()])),
                ),
                KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
                KeyValue::new("weights", Value::Array(Array::F64(vec![1.5, -0.0]))),
            ],
        );
        server.status = Status::error("upstream unavailable");
        server.dropped_attributes_count = 3;
        server.events.events.push(Event::new(
            "exception",
            UNIX_EPOCH + Duration::from_secs(1_764_000_000),
            vec![KeyValue::new("exception.message", "boom")],
            1,
        ));
        server.events.dropped_count = 2;
        server.links.links.push(Link::new(
            context(7, 9, false, true, "vendor=value"),
            vec![KeyValue::new("link.kind", "follows")],
            4,
        ));
        server.links.dropped_count = 5;
        let mut child = span(
            "SELECT orders",
            &library,
            vec![KeyValue::new("db.system.name", "postgresql")],
        );
        child.span_context = context(
            0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c,
            0x1111,
            true,
            false,
            "a=1,b=2",
        );
        child.parent_span_id = SpanId::from(0xb7ad_6b71_6920_3331);
        child.span_kind = SpanKind::Client;
        child.status = Status::Ok;
        let mut remote_child = span("consume", &chassis, vec![]);
        remote_child.parent_span_id = SpanId::from(0x2222);
        remote_child.parent_span_is_remote = true;
        remote_child.span_kind = SpanKind::Consumer;
        remote_child.span_context = context(0xfeed, 0x3333, false, false, "");
        // Scopes interleave: the spans of each still come out together, in batch order.
        let batch = vec![server, child, remote_child];

        assert_eq!(ours(&resource, &batch), sdk_encoding(&resource, batch));
    }

    #[test]
    fn large_batches_decode_to_what_the_sdk_conversion_builds() {
        let resource = Resource::builder().with_service_name("bench").build();
        let scope = InstrumentationScope::builder("chassis").build();
        let batch: Vec<SpanData> = (0..512)
            .map(|i| {
                span(
                    "GET /users/{id}",
                    &scope,
                    vec![KeyValue::new("url.path", format!("/users/{i}"))],
                )
            })
            .collect();
        let decoded = ours(&resource, &batch);
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 512);
        assert_eq!(decoded, sdk_encoding(&resource, batch));
    }

    /// The value of `span`'s attribute `key`, as decoded.
    fn attribute(
        span: &opentelemetry_proto::tonic::trace::v1::Span,
        key: &str,
    ) -> Option<opentelemetry_proto::tonic::common::v1::any_value::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .and_then(|v| v.value)
    }

    /// A server span of a request with every optional attribute, ended with a status code,
    /// a route, an event and an error status.
    fn server_record(method: &str, remote_parent: bool) -> EndedSpan {
        use crate::telemetry::server_span::{RequestFields, ServerRecord};
        let mut request = http::Request::builder()
            .method(method)
            .uri("/orders/42?expand=items")
            .header(http::header::USER_AGENT, "curl/8.5.0")
            .body(())
            .unwrap();
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [10, 1, 2, 3],
                51000,
            ))));
        request
            .extensions_mut()
            .insert(crate::telemetry::RequestId(http::HeaderValue::from_static("req-1")));
        let label = crate::http::method_label(request.method());
        let start = UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789);
        let mut events = SpanEvents::default();
        events
            .events
            .push(Event::new("retrying", start, vec![KeyValue::new("attempt", 2)], 0));
        EndedSpan::Server(Box::new(ServerRecord {
            context: context(0xabc, 0xdef, true, false, "k=v"),
            parent_span_id: if remote_parent {
                SpanId::from(0x99)
            } else {
                SpanId::INVALID
            },
            parent_is_remote: remote_parent,
            name: Cow::Borrowed("GET /orders/{id}"),
            start,
            end: start + Duration::from_millis(3),
            request: RequestFields::of(&request, label, "1.1"),
            attributes: smallvec::smallvec![
                KeyValue::new("http.response.status_code", 500),
                KeyValue::new("http.route", "/orders/{id}"),
                KeyValue::new("error.type", "500"),
            ],
            dropped_attributes_count: 0,
            events,
            links: SpanLinks::default(),
            status: Status::error(""),
        }))
    }

    #[test]
    fn server_spans_decode_to_what_the_sdk_conversion_of_their_span_data_builds() {
        let resource = Resource::builder().with_service_name("orders").build();
        for (method, remote_parent) in [("GET", true), ("PURGE", false)] {
            // With an SDK span of the chassis' scope: one scope for both.
            let sdk = span(
                "SELECT",
                &CHASSIS_SCOPE,
                vec![KeyValue::new("db.system.name", "postgresql")],
            );
            let batch = vec![server_record(method, remote_parent), EndedSpan::Sdk(Box::new(sdk))];
            let decoded = ours_ended(&resource, &batch);
            let expected = sdk_encoding(&resource, batch.into_iter().map(EndedSpan::into_span_data).collect());
            assert_eq!(decoded, expected);
            let spans = &decoded.resource_spans[0].scope_spans[0].spans;
            let attribute = |key: &str| attribute(&spans[0], key);
            use opentelemetry_proto::tonic::common::v1::any_value::Value as Proto;
            assert_eq!(attribute("client.address"), Some(Proto::StringValue("10.1.2.3".into())));
            assert_eq!(attribute("url.path"), Some(Proto::StringValue("/orders/42".into())));
            assert_eq!(attribute("http.response.status_code"), Some(Proto::IntValue(500)));
            let original = attribute("http.request.method_original");
            match method {
                "PURGE" => assert_eq!(original, Some(Proto::StringValue("PURGE".into()))),
                _ => assert_eq!(original, None),
            }
        }
    }

    #[test]
    fn each_server_span_of_a_batch_carries_its_own_method_scheme_and_protocol_version() {
        let resource = Resource::builder().with_service_name("orders").build();
        let with_version = |method, version: &'static str| {
            let mut span = server_record(method, false);
            if let EndedSpan::Server(record) = &mut span {
                record.request.protocol_version = version;
            }
            span
        };
        // The encoding made for one span's three values must not carry over to the next's.
        let batch = vec![
            with_version("GET", "1.1"),
            with_version("POST", "1.1"),
            with_version("POST", "2"),
            with_version("PURGE", "2"),
            with_version("GET", "1.1"),
        ];
        let decoded = ours_ended(&resource, &batch);
        let expected = sdk_encoding(&resource, batch.into_iter().map(EndedSpan::into_span_data).collect());
        assert_eq!(decoded, expected);
        use opentelemetry_proto::tonic::common::v1::any_value::Value as Proto;
        let seen: Vec<_> = decoded.resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|span| {
                (
                    attribute(span, "http.request.method"),
                    attribute(span, "network.protocol.version"),
                )
            })
            .collect();
        let written = [
            ("GET", "1.1"),
            ("POST", "1.1"),
            ("POST", "2"),
            ("_OTHER", "2"),
            ("GET", "1.1"),
        ]
        .map(|(method, version)| {
            (
                Some(Proto::StringValue(method.into())),
                Some(Proto::StringValue(version.into())),
            )
        });
        assert_eq!(seen, written);
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let addresses: [std::net::IpAddr; 6] = [
            [0, 0, 0, 0].into(),
            [127, 0, 0, 1].into(),
            [10, 99, 100, 255].into(),
            [9, 10, 109, 110].into(),
            "::1".parse().unwrap(),
            "::ffff:192.168.100.200".parse().unwrap(),
        ];
        for address in addresses {
            let mut text = [0u8; 48];
            let len = ip_text(address, &mut text);
            assert_eq!(std::str::from_utf8(&text[..len]).unwrap(), address.to_string());
        }
    }

    #[test]
    fn messages_of_any_length_get_the_length_they_need_whatever_was_set_aside() {
        for width in 1..=3 {
            for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 2_097_151, 2_097_152] {
                let mut buf = Vec::new();
                Writer { buf: &mut buf }.message_sized(2, width, |m| m.buf.resize(m.buf.len() + len, 7));
                let mut rest = &buf[1..];
                assert_eq!(buf[0], 2 << 3 | LEN as u8);
                assert_eq!(prost::encoding::decode_varint(&mut rest).unwrap() as usize, len);
                assert_eq!(rest.len(), len, "{len} bytes behind a length of {width} set aside");
                assert!(rest.iter().all(|&b| b == 7));
                assert_eq!(buf.len(), 1 + varint_len(len) + len, "the shortest length");
            }
        }
    }

    #[test]
    fn varint_lengths() {
        for (value, len) in [(0, 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3), (usize::MAX, 10)] {
            assert_eq!(varint_len(value), len, "{value}");
        }
    }

    #[test]
    fn an_empty_batch_is_an_empty_body() {
        let mut body = vec![1, 2, 3];
        encode_spans(&EncodedResource::default(), &[], &mut body);
        assert!(body.is_empty());
    }
}
