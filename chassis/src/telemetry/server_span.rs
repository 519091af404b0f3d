//! The server span of a request when spans are exported, recorded by the chassis instead of
//! the SDK: the same span, at a fraction of the cost on the request's thread.
//!
//! An SDK span turns each request attribute into an owned `KeyValue` (the path, the user
//! agent, the client address formatted as text, the request id) when the request starts, and
//! builds its export data when it ends. Here the request's text attributes are copied into one
//! buffer, the client address is kept as an address, and the ended span goes to the batch
//! processor as it is: the export thread writes its attributes straight into the OTLP body
//! (see [`otlp_encode`](super::otlp_encode)), or, for gRPC, converts it into the SDK's
//! [`SpanData`]. Everything set through the OpenTelemetry API (attributes, events, links,
//! status, name) is kept as the SDK keeps it, within the SDK's default limits.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::SystemTime;

use axum::extract::ConnectInfo;
use http::{Request, header};
use opentelemetry::trace::{Event, Link, SpanContext, SpanId, SpanKind, Status, TraceContextExt};
use opentelemetry::{Context as OtelContext, InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use smallvec::SmallVec;

use super::RequestId;
use super::batch::BatchProcessor;

/// The SDK's default span limits, which the SDK's spans of the service follow too.
const MAX_ATTRIBUTES: usize = 128;
const MAX_EVENTS: usize = 128;
const MAX_LINKS: usize = 128;
const MAX_ATTRIBUTES_PER_EVENT: usize = 128;
const MAX_ATTRIBUTES_PER_LINK: usize = 128;

/// The instrumentation scope of the chassis' spans (the SDK tracer's `chassis`).
pub(crate) static CHASSIS_SCOPE: LazyLock<InstrumentationScope> =
    LazyLock::new(|| InstrumentationScope::builder("chassis").build());

/// An ended span on its way to the exporter: a pointer, so that queueing it moves 16 bytes.
#[derive(Debug)]
pub(crate) enum EndedSpan {
    /// A span of the SDK (the service's own, the chassis' client and store spans).
    Sdk(Box<SpanData>),
    /// A server span of the inbound layer.
    Server(Box<ServerRecord>),
}

impl EndedSpan {
    /// The scope the span is exported under.
    #[cfg(feature = "otlp-http")]
    pub(crate) fn scope(&self) -> &InstrumentationScope {
        match self {
            Self::Sdk(span) => &span.instrumentation_scope,
            Self::Server(_) => &CHASSIS_SCOPE,
        }
    }

    /// The span as the SDK's exporters take it.
    pub(crate) fn into_span_data(self) -> SpanData {
        match self {
            Self::Sdk(span) => *span,
            Self::Server(record) => record.into_span_data(),
        }
    }
}

/// The request's attributes, as they were when it arrived.
#[derive(Debug)]
pub(crate) struct RequestFields {
    pub(crate) method: &'static str,
    pub(crate) scheme: &'static str,
    pub(crate) protocol_version: &'static str,
    pub(crate) client: Option<IpAddr>,
    /// The text attributes, one after another in `text`: each with where it ends.
    texts: [(&'static str, u32); 4],
    texts_len: u8,
    /// Inside the span's own allocation for the usual path, user agent and request id.
    text: SmallVec<[u8; 160]>,
}

impl RequestFields {
    /// The fields of `request`, whose method label is `method`.
    pub(crate) fn of<B>(request: &Request<B>, method: &'static str, protocol_version: &'static str) -> Self {
        let agent = request.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok());
        // Request ids are visible ASCII (accepted or generated so), text as they are.
        let request_id = request.extensions().get::<RequestId>().map(|id| id.0.as_bytes());
        let original = (method == "_OTHER").then(|| request.method().as_str());
        let texts = [
            ("http.request.method_original", original.map(str::as_bytes)),
            ("url.path", Some(request.uri().path().as_bytes())),
            ("user_agent.original", agent.map(str::as_bytes)),
            ("request_id", request_id),
        ];
        let mut fields = Self {
            method,
            scheme: crate::http::url_scheme(request),
            protocol_version,
            client: request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip()),
            texts: [("", 0); 4],
            texts_len: 0,
            text: SmallVec::new(),
        };
        for (key, text) in texts {
            if let Some(text) = text {
                fields.text.extend_from_slice(text);
                fields.texts[usize::from(fields.texts_len)] = (key, fields.text.len() as u32);
                fields.texts_len += 1;
            }
        }
        fields
    }

    /// The text attributes: key and value (UTF-8, from `&str`s and visible ASCII).
    pub(crate) fn texts(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        let mut start = 0;
        self.texts[..usize::from(self.texts_len)]
            .iter()
            .map(move |&(key, end)| {
                let value = &self.text[start..end as usize];
                start = end as usize;
                (key, value)
            })
    }

    /// How many attributes these are.
    fn count(&self) -> usize {
        3 + usize::from(self.texts_len) + usize::from(self.client.is_some())
    }

    /// Every attribute, as the SDK's span would carry it.
    fn into_attributes(self, into: &mut Vec<KeyValue>) {
        into.push(KeyValue::new("http.request.method", self.method));
        into.push(KeyValue::new("url.scheme", self.scheme));
        into.push(KeyValue::new("network.protocol.version", self.protocol_version));
        for (key, value) in self.texts() {
            into.push(KeyValue::new(key, String::from_utf8_lossy(value).into_owned()));
        }
        if let Some(client) = self.client {
            into.push(KeyValue::new("client.address", client.to_string()));
        }
    }
}

/// An ended server span: what the export thread encodes.
#[derive(Debug)]
pub(crate) struct ServerRecord {
    pub(crate) context: SpanContext,
    pub(crate) parent_span_id: SpanId,
    pub(crate) parent_is_remote: bool,
    pub(crate) name: Cow<'static, str>,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) request: RequestFields,
    /// The attributes set through the API: the status code, the route and, on failure, the
    /// error type fit inside.
    pub(crate) attributes: SmallVec<[KeyValue; 3]>,
    pub(crate) dropped_attributes_count: u32,
    pub(crate) events: SpanEvents,
    pub(crate) links: SpanLinks,
    pub(crate) status: Status,
}

impl ServerRecord {
    fn into_span_data(self: Box<Self>) -> SpanData {
        let record = *self;
        let mut attributes = Vec::with_capacity(record.request.count() + record.attributes.len());
        record.request.into_attributes(&mut attributes);
        attributes.extend(record.attributes);
        SpanData {
            span_context: record.context,
            parent_span_id: record.parent_span_id,
            parent_span_is_remote: record.parent_is_remote,
            span_kind: SpanKind::Server,
            name: record.name,
            start_time: record.start,
            end_time: record.end,
            attributes,
            dropped_attributes_count: record.dropped_attributes_count,
            events: record.events,
            links: record.links,
            status: record.status,
            instrumentation_scope: CHASSIS_SCOPE.clone(),
        }
    }
}

/// Exported server spans' records, handed back from the export thread for the next requests.
///
/// A record is allocated on a request's thread and let go on the export thread. Freed there,
/// each one would cost glibc's allocator the allocating thread's arena lock, and the request
/// threads, whose thread caches never get that memory back, would allocate every record from
/// their arena again. Handed back a batch at a time, a record costs a lock per batch and no
/// allocation. At most [`STASHED_BATCHES`] batches wait here, plus one batch held by each
/// request thread; the rest are freed.
pub(crate) struct Spares {
    #[expect(clippy::vec_box, reason = "the boxes are the allocations handed to the next spans")]
    stash: Mutex<Vec<Vec<Box<ServerRecord>>>>,
    /// How many batches `stash` holds, read without its lock: with the gRPC exporter, which
    /// hands nothing back, a span only reads this.
    stashed: AtomicUsize,
}

/// How many batches of records [`Spares`] keeps.
#[cfg(feature = "otlp-http")]
const STASHED_BATCHES: usize = 4;

/// The spares of the process' server spans.
pub(crate) static SPARES: Spares = Spares::new();

thread_local! {
    /// The batch of spares this thread takes its records from.
    #[expect(clippy::vec_box, reason = "the boxes are the allocations handed to the next spans")]
    static HELD: RefCell<Vec<Box<ServerRecord>>> = const { RefCell::new(Vec::new()) };
}

impl Spares {
    pub(crate) const fn new() -> Self {
        Self {
            stash: Mutex::new(Vec::new()),
            stashed: AtomicUsize::new(0),
        }
    }

    /// `record` in a spare allocation, or in a new one when there is none.
    fn boxed(&self, record: ServerRecord) -> Box<ServerRecord> {
        match self.take() {
            Some(mut spare) => {
                // A spare is emptied (owns no memory), so it is overwritten without being
                // dropped: dropping it would read each of its fields, which the export thread
                // touched last and are out of this core's cache by now.
                std::mem::forget(std::mem::replace(&mut *spare, record));
                spare
            }
            None => Box::new(record),
        }
    }

    fn take(&self) -> Option<Box<ServerRecord>> {
        HELD.try_with(|held| {
            let mut held = held.borrow_mut();
            if let Some(spare) = held.pop() {
                return Some(spare);
            }
            if self.stashed.load(Ordering::Relaxed) == 0 {
                return None;
            }
            let mut stash = self.stash.lock().ok()?;
            *held = stash.pop()?;
            self.stashed.store(stash.len(), Ordering::Relaxed);
            drop(stash);
            held.pop()
        })
        .ok()
        .flatten()
    }

    /// Keeps the records of the server spans in `batch`, emptied, for the next requests.
    #[cfg(feature = "otlp-http")]
    pub(crate) fn give_back(&self, batch: Vec<EndedSpan>) {
        let records: Vec<Box<ServerRecord>> = batch
            .into_iter()
            .filter_map(|span| match span {
                EndedSpan::Server(mut record) => {
                    record.empty();
                    Some(record)
                }
                EndedSpan::Sdk(_) => None,
            })
            .collect();
        if records.is_empty() {
            return;
        }
        let Ok(mut stash) = self.stash.lock() else { return };
        if stash.len() < STASHED_BATCHES {
            stash.push(records);
            self.stashed.store(stash.len(), Ordering::Relaxed);
        }
    }
}

#[cfg(feature = "otlp-http")]
impl ServerRecord {
    /// Lets go of everything the record owns, here on the export thread: a spare owns no
    /// memory, so that the next request can overwrite it without dropping it.
    fn empty(&mut self) {
        *self = Self {
            context: SpanContext::NONE,
            parent_span_id: SpanId::INVALID,
            parent_is_remote: false,
            name: Cow::Borrowed(""),
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            request: RequestFields {
                method: "",
                scheme: "",
                protocol_version: "",
                client: None,
                texts: [("", 0); 4],
                texts_len: 0,
                text: SmallVec::new(),
            },
            attributes: SmallVec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
        };
    }
}

/// Where the server spans of an exporting process go.
pub(crate) struct ServerSpans {
    batch: &'static BatchProcessor<EndedSpan>,
}

impl ServerSpans {
    pub(crate) fn new(batch: &'static BatchProcessor<EndedSpan>) -> Self {
        Self { batch }
    }

    /// `parent` with a recording server span of `context` (sampled) as its span.
    pub(crate) fn start(
        &self,
        parent: OtelContext,
        context: SpanContext,
        name: &'static str,
        request: RequestFields,
    ) -> OtelContext {
        let (parent_span_id, parent_is_remote) = {
            let parent_span = parent.span();
            let parent = parent_span.span_context();
            match parent.is_valid() {
                true => (parent.span_id(), parent.is_remote()),
                false => (SpanId::INVALID, false),
            }
        };
        let start = opentelemetry::time::now();
        let record = SPARES.boxed(ServerRecord {
            context: context.clone(),
            parent_span_id,
            parent_is_remote,
            name: Cow::Borrowed(name),
            start,
            end: start,
            request,
            attributes: SmallVec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
        });
        parent.with_span(ServerSpan {
            context,
            record: Some(record),
            batch: self.batch,
        })
    }
}

/// A recording server span; see the module docs.
#[derive(Debug)]
pub(crate) struct ServerSpan {
    context: SpanContext,
    /// Until the span ends.
    record: Option<Box<ServerRecord>>,
    batch: &'static BatchProcessor<EndedSpan>,
}

impl ServerSpan {
    fn finish(&mut self, end: SystemTime) {
        if let Some(mut record) = self.record.take() {
            record.end = end;
            self.batch.enqueue(EndedSpan::Server(record));
        }
    }
}

impl opentelemetry::trace::Span for ServerSpan {
    fn add_event_with_timestamp<T>(&mut self, name: T, timestamp: SystemTime, mut attributes: Vec<KeyValue>)
    where
        T: Into<Cow<'static, str>>,
    {
        let Some(record) = self.record.as_mut() else { return };
        if record.events.len() < MAX_EVENTS {
            let dropped = cap(&mut attributes, MAX_ATTRIBUTES_PER_EVENT);
            record
                .events
                .events
                .push(Event::new(name, timestamp, attributes, dropped));
        } else {
            record.events.dropped_count += 1;
        }
    }

    fn span_context(&self) -> &SpanContext {
        &self.context
    }

    fn is_recording(&self) -> bool {
        self.record.is_some()
    }

    fn set_attribute(&mut self, attribute: KeyValue) {
        let Some(record) = self.record.as_mut() else { return };
        if record.request.count() + record.attributes.len() < MAX_ATTRIBUTES {
            record.attributes.push(attribute);
        } else {
            record.dropped_attributes_count += 1;
        }
    }

    fn set_status(&mut self, status: Status) {
        if let Some(record) = self.record.as_mut() {
            // As the SDK: Ok is final, Error replaces Unset.
            if status > record.status {
                record.status = status;
            }
        }
    }

    fn update_name<T>(&mut self, new_name: T)
    where
        T: Into<Cow<'static, str>>,
    {
        if let Some(record) = self.record.as_mut() {
            record.name = new_name.into();
        }
    }

    fn add_link(&mut self, span_context: SpanContext, mut attributes: Vec<KeyValue>) {
        let Some(record) = self.record.as_mut() else { return };
        if record.links.len() < MAX_LINKS {
            let dropped = cap(&mut attributes, MAX_ATTRIBUTES_PER_LINK);
            record.links.links.push(Link::new(span_context, attributes, dropped));
        } else {
            record.links.dropped_count += 1;
        }
    }

    fn end_with_timestamp(&mut self, timestamp: SystemTime) {
        self.finish(timestamp);
    }
}

/// Keeps the first `limit` of an event's or link's attributes, as the SDK does; the number
/// left out.
fn cap(attributes: &mut Vec<KeyValue>, limit: usize) -> u32 {
    let dropped = attributes.len().saturating_sub(limit);
    attributes.truncate(limit);
    dropped as u32
}

impl Drop for ServerSpan {
    /// A span dropped without `end` ends now, as the SDK's does.
    fn drop(&mut self) {
        // An ended span has nothing to end: no clock read for it.
        if self.record.is_some() {
            self.finish(opentelemetry::time::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use opentelemetry::trace::{TraceFlags, TraceId};
    use opentelemetry_sdk::error::OTelSdkResult;

    use super::*;
    use crate::telemetry::batch::Export;

    /// Keeps what it is handed.
    struct Capture(Arc<Mutex<Vec<EndedSpan>>>);

    impl Export for Capture {
        type Item = EndedSpan;
        const NOUN: &'static str = "spans";
        const TOTAL: &'static str = "test_spans_total";
        const WHEN_DROPPING: &'static str = "";

        fn export(&mut self, batch: Vec<EndedSpan>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }

        fn set_resource(&mut self, _: &opentelemetry_sdk::Resource) {}

        fn shutdown(&mut self) {}
    }

    /// Server spans into a batch processor of their own; `ended` flushes it and hands over the
    /// records.
    struct Harness {
        spans: ServerSpans,
        batch: &'static BatchProcessor<EndedSpan>,
        captured: Arc<Mutex<Vec<EndedSpan>>>,
    }

    impl Harness {
        fn new() -> Self {
            let captured = Arc::new(Mutex::new(Vec::new()));
            let config = crate::telemetry::OtlpConfig {
                batch_delay: Duration::from_secs(3600),
                ..Default::default()
            };
            let batch: &'static BatchProcessor<EndedSpan> = Box::leak(Box::new(BatchProcessor::new(
                Capture(captured.clone()),
                "test".into(),
                &config,
            )));
            Self {
                spans: ServerSpans::new(batch),
                batch,
                captured,
            }
        }

        fn start(&self, parent: OtelContext) -> OtelContext {
            let request = Request::builder().uri("/orders/7").body(()).unwrap();
            let context = SpanContext::new(
                TraceId::from(1),
                SpanId::from(2),
                TraceFlags::SAMPLED,
                false,
                Default::default(),
            );
            self.spans
                .start(parent, context, "GET", RequestFields::of(&request, "GET", "1.1"))
        }

        fn ended(&self) -> Vec<ServerRecord> {
            self.batch.flush_within(Duration::from_secs(10)).unwrap();
            std::mem::take(&mut *self.captured.lock().unwrap())
                .into_iter()
                .map(|span| match span {
                    EndedSpan::Server(record) => *record,
                    EndedSpan::Sdk(_) => panic!("only server spans here"),
                })
                .collect()
        }
    }

    #[test]
    fn the_api_records_as_the_sdk_span_does_within_its_limits() {
        let harness = Harness::new();
        let remote_parent = OtelContext::new().with_remote_span_context(SpanContext::new(
            TraceId::from(1),
            SpanId::from(9),
            TraceFlags::SAMPLED,
            true,
            Default::default(),
        ));
        let cx = harness.start(remote_parent);
        let span = cx.span();
        assert!(span.is_recording());
        for i in 0..200 {
            span.set_attribute(KeyValue::new("n", i));
        }
        for _ in 0..130 {
            span.add_event("tick", vec![]);
        }
        span.set_status(Status::error("boom"));
        span.set_status(Status::Unset);
        span.update_name("GET /orders/{id}");
        span.end();
        span.end();
        span.set_attribute(KeyValue::new("after", "end"));
        assert!(!span.is_recording(), "an ended span records nothing more");
        drop(cx);

        let ended = harness.ended();
        assert_eq!(ended.len(), 1, "ended once");
        let record = &ended[0];
        assert_eq!(record.name, "GET /orders/{id}");
        assert_eq!(record.parent_span_id, SpanId::from(9));
        assert!(record.parent_is_remote);
        // The request's own attributes count against the limit of 128.
        assert_eq!(record.request.count() + record.attributes.len(), MAX_ATTRIBUTES);
        assert_eq!(
            record.dropped_attributes_count as usize,
            200 - (MAX_ATTRIBUTES - record.request.count())
        );
        assert_eq!(record.events.len(), MAX_EVENTS);
        assert_eq!(record.events.dropped_count, 2);
        assert_eq!(record.status, Status::error("boom"), "Unset does not replace Error");
        assert!(record.end >= record.start);
    }

    #[test]
    fn a_span_dropped_without_end_is_ended_and_exported() {
        let harness = Harness::new();
        let cx = harness.start(OtelContext::new());
        cx.span().set_status(Status::Ok);
        cx.span().set_status(Status::error("late"));
        drop(cx);

        let ended = harness.ended();
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].parent_span_id, SpanId::INVALID);
        assert_eq!(ended[0].status, Status::Ok, "Ok is final");
        let texts: Vec<(&str, &[u8])> = ended[0].request.texts().collect();
        assert_eq!(texts, [("url.path", &b"/orders/7"[..])]);
    }

    #[cfg(feature = "otlp-http")]
    #[test]
    fn records_handed_back_serve_the_next_spans_emptied() {
        // A thread of its own: its batch of spares is empty until it takes one from `spares`.
        std::thread::spawn(|| {
            let harness = Harness::new();
            let cx = harness.start(OtelContext::new());
            cx.span().set_attribute(KeyValue::new("http.route", "/orders/{id}"));
            cx.span().add_event("tick", vec![]);
            cx.span().set_status(Status::error("boom"));
            cx.span().update_name("GET /orders/{id}");
            drop(cx);
            harness.batch.flush_within(Duration::from_secs(10)).unwrap();
            let ended = std::mem::take(&mut *harness.captured.lock().unwrap());
            let EndedSpan::Server(record) = &ended[0] else {
                panic!("a server span")
            };
            let address: *const ServerRecord = &**record;

            let spares = Spares::new();
            spares.give_back(ended);
            let spare = spares.take().expect("the record handed back");
            assert_eq!(
                &*spare as *const ServerRecord, address,
                "the exported record's allocation"
            );
            assert_eq!(spare.name, "");
            assert!(spare.attributes.is_empty() && spare.events.is_empty());
            assert_eq!(spare.status, Status::Unset);
            assert_eq!(spare.request.texts().count(), 0, "nothing of the old request");
            assert_eq!(spare.context, SpanContext::NONE, "no trace state kept");
            assert!(
                !spare.attributes.spilled() && !spare.request.text.spilled(),
                "a spare owns no memory: it is overwritten without a drop"
            );
            spares.stash.lock().unwrap().push(vec![spare]);
            spares.stashed.store(1, Ordering::Relaxed);
            let reused = spares.boxed(ServerRecord {
                context: SpanContext::empty_context(),
                parent_span_id: SpanId::INVALID,
                parent_is_remote: false,
                name: Cow::Borrowed("next"),
                start: SystemTime::UNIX_EPOCH,
                end: SystemTime::UNIX_EPOCH,
                request: RequestFields::of(&Request::builder().body(()).unwrap(), "GET", "1.1"),
                attributes: SmallVec::new(),
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: Status::Unset,
            });
            assert_eq!(
                &*reused as *const ServerRecord, address,
                "the exported record's allocation"
            );
            assert_eq!(reused.name, "next", "the new span's fields in it");
            assert!(spares.take().is_none(), "one record was handed back, and it is taken");

            // A full stash frees what comes on top.
            for _ in 0..STASHED_BATCHES + 2 {
                let cx = harness.start(OtelContext::new());
                drop(cx);
                harness.batch.flush_within(Duration::from_secs(10)).unwrap();
                spares.give_back(std::mem::take(&mut *harness.captured.lock().unwrap()));
            }
            assert_eq!(spares.stash.lock().unwrap().len(), STASHED_BATCHES);
        })
        .join()
        .unwrap();
    }
}
