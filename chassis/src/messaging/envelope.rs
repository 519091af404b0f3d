//! The CloudEvents envelope, the raw message the transports carry, and how a typed message
//! becomes both.

use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Message, MessagingError};

/// The CloudEvents 1.0 attributes and the tracing context of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Envelope {
    /// `id`: a UUID v7 (time-ordered).
    pub id: String,
    /// `source`: the publishing service.
    pub source: String,
    /// `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `specversion`: `"1.0"`.
    pub specversion: String,
    /// `time`, RFC 3339.
    pub time: String,
    /// `datacontenttype`: `"application/json"`.
    pub datacontenttype: String,
    /// `subject`: what the message is about (an order id), if set.
    pub subject: Option<String>,
    /// The conversation this message belongs to (the first message's id unless given).
    pub correlation_id: String,
    /// The id of the message that caused this one, if any.
    pub causation_id: Option<String>,
    /// W3C `traceparent` of the publisher's span.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
}

type Attribute = fn(&Envelope) -> Option<&str>;

const HEADERS: [(&str, Attribute); 11] = [
    ("ce-id", |e| Some(&e.id)),
    ("ce-source", |e| Some(&e.source)),
    ("ce-type", |e| Some(&e.kind)),
    ("ce-specversion", |e| Some(&e.specversion)),
    ("ce-time", |e| Some(&e.time)),
    ("content-type", |e| Some(&e.datacontenttype)),
    ("ce-subject", |e| e.subject.as_deref()),
    ("ce-correlationid", |e| Some(&e.correlation_id)),
    ("ce-causationid", |e| e.causation_id.as_deref()),
    ("traceparent", |e| e.traceparent.as_deref()),
    ("tracestate", |e| e.tracestate.as_deref()),
];

impl Envelope {
    /// The attributes as CloudEvents binary-mode headers (`ce-id`, `ce-type`, ...).
    pub fn to_headers(&self) -> Vec<(String, String)> {
        HEADERS
            .iter()
            .filter_map(|(name, get)| get(self).map(|v| ((*name).to_owned(), v.to_owned())))
            .collect()
    }

    /// The W3C trace context the envelope carries, as HTTP headers for the propagator.
    pub fn trace_headers(&self) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [("traceparent", &self.traceparent), ("tracestate", &self.tracestate)] {
            if let Some(value) = value.as_deref().and_then(|v| http::HeaderValue::from_str(v).ok()) {
                headers.insert(name, value);
            }
        }
        headers
    }

    /// Reads binary-mode headers back; `None` when a required attribute is missing.
    pub fn from_headers(headers: &[(String, String)]) -> Option<Self> {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        Some(Self {
            id: get("ce-id")?,
            source: get("ce-source")?,
            kind: get("ce-type")?,
            specversion: get("ce-specversion").unwrap_or_else(|| "1.0".into()),
            time: get("ce-time").unwrap_or_default(),
            datacontenttype: get("content-type").unwrap_or_else(|| "application/json".into()),
            subject: get("ce-subject"),
            correlation_id: get("ce-correlationid").or_else(|| get("ce-id"))?,
            causation_id: get("ce-causationid"),
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
        })
    }
}

/// A message as the transports carry it: binary-mode headers and the JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub body: Bytes,
}

/// Optional attributes of a message being published.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    /// `subject`: what it is about.
    pub subject: Option<String>,
    /// The message that caused this one: sets the correlation and causation ids.
    pub caused_by: Option<Envelope>,
}

/// The envelope and the raw message of `message` published by `source`, carrying the trace
/// context `cx` (the publisher's span).
pub(crate) fn encode<M: Message>(
    source: &str,
    message: &M,
    options: Publish,
    cx: &opentelemetry::Context,
) -> Result<(Envelope, RawMessage), MessagingError> {
    let body = serde_json::to_vec(message).map_err(|e| MessagingError::Encode {
        kind: M::TYPE,
        reason: e.to_string(),
    })?;
    let mut trace_headers = http::HeaderMap::new();
    crate::telemetry::inject_context(cx, &mut trace_headers);
    let header = |name: &str| trace_headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let id = uuid::Uuid::now_v7().to_string();
    let envelope = Envelope {
        correlation_id: options
            .caused_by
            .as_ref()
            .map(|c| c.correlation_id.clone())
            .unwrap_or_else(|| id.clone()),
        causation_id: options.caused_by.as_ref().map(|c| c.id.clone()),
        id,
        source: source.to_owned(),
        kind: M::TYPE.to_owned(),
        specversion: "1.0".into(),
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        datacontenttype: "application/json".into(),
        subject: options.subject,
        traceparent: header("traceparent"),
        tracestate: header("tracestate"),
    };
    let raw = RawMessage {
        headers: envelope.to_headers(),
        body: Bytes::from(body),
    };
    Ok((envelope, raw))
}
