//! Span export over OTLP/HTTP: each batch written by [`otlp_encode`](super::otlp_encode) into
//! one reused buffer and POSTed to the collector's `/v1/traces` from the export thread itself,
//! retried as the OTLP specification asks.
//!
//! It follows the configuration of the SDK's HTTP exporter: the endpoint is
//! `telemetry.otlp.endpoint` + `/v1/traces`, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it
//! is, else `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`, else `http://localhost:4318/v1/traces`;
//! `telemetry.otlp.headers`, overridden by `OTEL_EXPORTER_OTLP_TRACES_HEADERS` (or
//! `OTEL_EXPORTER_OTLP_HEADERS`), go with every request; `telemetry.otlp.timeout` bounds an
//! export with its retries. A failed attempt is retried (at most three times, after 100 ms,
//! 200 ms, 400 ms, each with up to 100 ms of jitter, or after the collector's `Retry-After`)
//! when the collector could not be reached or answered 429, 502, 503 or 504; any other answer
//! fails the batch at once.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};

use super::batch::{Export, SPANS_NOUN, SPANS_TOTAL, SPANS_WHEN_DROPPING};
use super::otlp_encode::{EncodedResource, encode_spans};
use super::server_span::EndedSpan;
use super::{OtlpConfig, TelemetryError};

const TRACES_PATH: &str = "/v1/traces";
const DEFAULT_ENDPOINT: &str = "http://localhost:4318";
const MAX_RETRIES: u32 = 3;
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_millis(1600);
const MAX_JITTER_MS: u64 = 100;
/// The most a body is allocated with before it is written: a batch after one with a few very
/// large spans (long attribute values) must not reserve that size for each of its spans.
const MAX_PRESIZED_BODY: usize = 4 << 20;
/// A collector's `Retry-After` is followed up to this long (within the timeout).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Spans to an OTLP/HTTP collector; see the module docs.
pub(crate) struct HttpSpans {
    endpoint: String,
    headers: HeaderMap,
    timeout: Duration,
    resource: EncodedResource,
    /// The last batch's bytes per span, so that the next body, whatever its number of spans,
    /// is allocated once at about the size it needs: a batch after a small one (a tick's or
    /// a flush's) would otherwise grow its body a dozen times, copying it each time.
    bytes_per_span: usize,
    client: reqwest::Client,
    /// The export thread's own runtime, made there on the first export: the request is driven
    /// on this thread instead of being handed to another one.
    runtime: Option<tokio::runtime::Runtime>,
}

/// Why an attempt failed, and whether to try again.
struct Failure {
    reason: String,
    retry: Retry,
}

enum Retry {
    Never,
    Backoff,
    /// The collector said when (`Retry-After`).
    After(Duration),
}

impl HttpSpans {
    /// The exporter `config` and the `OTEL_EXPORTER_OTLP_*` variables describe.
    pub(crate) fn new(config: &OtlpConfig) -> Result<Self, TelemetryError> {
        Self::from_env(config, |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    fn from_env(config: &OtlpConfig, env: impl Fn(&str) -> Option<String>) -> Result<Self, TelemetryError> {
        let endpoint = match (&config.endpoint, env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
            (Some(base), _) => join(base, TRACES_PATH),
            (None, Some(full)) => full,
            (None, None) => join(
                &env("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()),
                TRACES_PATH,
            ),
        };
        let error = |reason: String| TelemetryError::Exporter {
            endpoint: endpoint.clone(),
            reason,
        };
        match reqwest::Url::parse(&endpoint) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            Ok(url) => return Err(error(format!("the scheme `{}` is not HTTP", url.scheme()))),
            Err(e) => return Err(error(format!("not a URL: {e}"))),
        }
        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ] {
            if let Some(compression) = env(variable).filter(|c| !c.trim().eq_ignore_ascii_case("none")) {
                return Err(error(format!(
                    "{variable}={compression}: compressed exports are not supported; unset it"
                )));
            }
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(concat!("chassis/", env!("CARGO_PKG_VERSION"))),
        );
        let from_env = env("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS"));
        let pairs = config
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.clone(), "telemetry.otlp.headers"))
            .chain(
                from_env
                    .iter()
                    .flat_map(|list| parse_header_list(list))
                    .map(|(name, value)| (name, value, "OTEL_EXPORTER_OTLP_HEADERS")),
            );
        for (name, value, origin) in pairs {
            let header = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| error(format!("{origin}: `{name}` is not a header name")))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| error(format!("{origin}: the value of `{name}` is not a header value")))?;
            headers.insert(header, value);
        }
        let client = reqwest::Client::builder()
            .build()
            .map_err(|e| error(format!("the HTTP client: {e}")))?;
        Ok(Self {
            endpoint,
            headers,
            timeout: config.timeout,
            resource: EncodedResource::default(),
            bytes_per_span: 0,
            client,
            runtime: None,
        })
    }

    /// One POST of `body`, given at most `within`.
    fn attempt(&mut self, body: &Bytes, within: Duration) -> Result<(), Failure> {
        let runtime = match &self.runtime {
            Some(runtime) => runtime,
            None => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Failure {
                        reason: format!("cannot start the export thread's runtime: {e}"),
                        retry: Retry::Never,
                    })?;
                self.runtime.insert(runtime)
            }
        };
        let request = self
            .client
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .timeout(within)
            .body(body.clone());
        runtime.block_on(async {
            let response = request.send().await.map_err(|e| Failure {
                // reqwest's own message names the URL only; the causes say what happened.
                reason: crate::error::with_causes(&e, ": "),
                retry: Retry::Backoff,
            })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            // Read to the end, so the connection is kept for the next export. The body may
            // echo what was sent (credentials included): it is not logged.
            let _ = response.bytes().await;
            if status.is_success() {
                return Ok(());
            }
            Err(Failure {
                reason: format!("the collector answered {status}"),
                retry: match (status, retry_after) {
                    (StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE, Some(after)) => {
                        Retry::After(after.min(MAX_RETRY_AFTER))
                    }
                    (
                        StatusCode::TOO_MANY_REQUESTS
                        | StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT,
                        _,
                    ) => Retry::Backoff,
                    _ => Retry::Never,
                },
            })
        })
    }
}

impl Export for HttpSpans {
    type Item = EndedSpan;
    const NOUN: &'static str = SPANS_NOUN;
    const TOTAL: &'static str = SPANS_TOTAL;
    const WHEN_DROPPING: &'static str = SPANS_WHEN_DROPPING;

    fn export(&mut self, batch: Vec<EndedSpan>) -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let expected = (self.bytes_per_span * batch.len()).min(MAX_PRESIZED_BODY);
        let mut body = Vec::with_capacity(expected + expected / 8);
        encode_spans(&self.resource, &batch, &mut body);
        self.bytes_per_span = body.len().div_ceil(batch.len());
        // The spans' memory goes back before the wait on the network.
        super::server_span::SPARES.give_back(batch);
        let body = Bytes::from(body);
        let deadline = Instant::now() + self.timeout;
        let mut delay = FIRST_DELAY;
        let mut attempts = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let failure = match self.attempt(&body, left) {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            attempts += 1;
            let wait = match failure.retry {
                Retry::Never => None,
                Retry::Backoff => Some(delay + jitter()),
                Retry::After(after) => Some(after),
            }
            .filter(|wait| attempts <= MAX_RETRIES && Instant::now() + *wait < deadline);
            let Some(wait) = wait else {
                let tries = if attempts == 1 {
                    String::new()
                } else {
                    format!(" (after {attempts} attempts)")
                };
                return Err(OTelSdkError::InternalFailure(format!(
                    "POST {}: {}{tries}",
                    self.endpoint, failure.reason
                )));
            };
            std::thread::sleep(wait);
            delay = (delay * 2).min(MAX_DELAY);
        }
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.resource = EncodedResource::new(resource);
    }

    fn shutdown(&mut self) {}
}

/// `base` and `path` with one `/` between them.
fn join(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// The pairs of an `OTEL_EXPORTER_OTLP_HEADERS` value: `key=value` separated by commas,
/// percent-encoded (W3C Baggage's format, as the specification says); malformed pairs are
/// left out.
fn parse_header_list(list: &str) -> impl Iterator<Item = (String, String)> + '_ {
    list.split(',').filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        Some((percent_decode(name)?, percent_decode(value.trim())?))
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// Up to [`MAX_JITTER_MS`] of jitter, so that instances that failed together do not retry
/// together.
fn jitter() -> Duration {
    Duration::from_millis(fastrand::u64(..=MAX_JITTER_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exporter(config: &OtlpConfig, vars: &[(&str, &str)]) -> Result<HttpSpans, TelemetryError> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HttpSpans::from_env(config, |name| {
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    fn with_endpoint(endpoint: &str) -> OtlpConfig {
        OtlpConfig {
            endpoint: Some(endpoint.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_endpoint_follows_the_configuration_then_the_standard_variables() {
        let endpoint = |config: &OtlpConfig, vars: &[(&str, &str)]| exporter(config, vars).unwrap().endpoint;
        let none = OtlpConfig::default();
        assert_eq!(endpoint(&none, &[]), "http://localhost:4318/v1/traces");
        assert_eq!(
            endpoint(&none, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            endpoint(
                &none,
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:9000/custom"),
                ]
            ),
            "http://traces:9000/custom",
            "the signal's own variable is taken as it is"
        );
        assert_eq!(
            endpoint(
                &with_endpoint("http://configured:4318"),
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:9000/custom")]
            ),
            "http://configured:4318/v1/traces",
            "the chassis' key wins, as the SDK's programmatic endpoint does"
        );
    }

    #[test]
    fn headers_come_from_the_configuration_and_the_variables_override_them() {
        let mut config = with_endpoint("http://collector:4318");
        config.headers.insert("x-api-key".into(), "from-config".into());
        config.headers.insert("x-tenant".into(), "shop".into());
        let exporter = exporter(
            &config,
            &[(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=from%20env, authorization = Bearer%3Dtoken,broken",
            )],
        )
        .unwrap();
        assert_eq!(exporter.headers["x-api-key"], "from env");
        assert_eq!(exporter.headers["x-tenant"], "shop");
        assert_eq!(exporter.headers["authorization"], "Bearer=token");
        assert_eq!(exporter.headers["content-type"], "application/x-protobuf");
    }

    #[test]
    fn bad_settings_are_refused_with_what_is_wrong() {
        let reason = |config: &OtlpConfig, vars: &[(&str, &str)]| match exporter(config, vars) {
            Err(TelemetryError::Exporter { reason, .. }) => reason,
            Ok(_) => panic!("accepted"),
        };
        assert!(reason(&with_endpoint("collector:4318"), &[]).contains("not HTTP"));
        assert!(reason(&with_endpoint("not a url"), &[]).contains("not a URL"));
        let mut config = with_endpoint("http://collector:4318");
        config.headers.insert("bad header".into(), "x".into());
        assert!(reason(&config, &[]).contains("`bad header` is not a header name"));
        assert!(
            reason(
                &with_endpoint("http://collector:4318"),
                &[("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")]
            )
            .contains("OTEL_EXPORTER_OTLP_COMPRESSION=gzip")
        );
    }

    /// A collector on loopback that answers each export with the next status of its script
    /// (and `Retry-After` when given), then 200, and keeps what it was sent.
    #[cfg(feature = "testing")]
    struct Collector {
        url: String,
        received: std::sync::Arc<std::sync::Mutex<Vec<(HeaderMap, Bytes)>>>,
    }

    #[cfg(feature = "testing")]
    impl Collector {
        fn start(script: Vec<(u16, Option<&'static str>)>) -> Self {
            use std::sync::{Arc, Mutex};
            let received = Arc::new(Mutex::new(Vec::new()));
            let kept = received.clone();
            let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
            let (address, listening) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    address.send(listener.local_addr().unwrap()).unwrap();
                    let export = move |headers: HeaderMap, body: Bytes| async move {
                        kept.lock().unwrap().push((headers, body));
                        let mut response = http::Response::builder();
                        if let Some((status, retry_after)) = script.lock().unwrap().pop_front() {
                            response = response.status(status);
                            if let Some(after) = retry_after {
                                response = response.header(http::header::RETRY_AFTER, after);
                            }
                        }
                        response.body(axum::body::Body::empty()).unwrap()
                    };
                    let app = axum::Router::new().route("/v1/traces", axum::routing::post(export));
                    axum::serve(listener, app).await.unwrap();
                });
            });
            Self {
                url: format!("http://{}", listening.recv().unwrap()),
                received,
            }
        }

        fn received(&self) -> Vec<(HeaderMap, Bytes)> {
            self.received.lock().unwrap().clone()
        }
    }

    #[cfg(feature = "testing")]
    fn one_span() -> Vec<EndedSpan> {
        let scope = opentelemetry::InstrumentationScope::builder("chassis").build();
        let span = crate::telemetry::otlp_encode::tests::span("GET /users/{id}", &scope, vec![]);
        vec![EndedSpan::Sdk(Box::new(span))]
    }

    #[cfg(feature = "testing")]
    #[test]
    fn an_unavailable_collector_is_retried_and_gets_the_batch_once_it_answers() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message as _;
        let collector = Collector::start(vec![(503, Some("0")), (502, None)]);
        let mut config = with_endpoint(&collector.url);
        config.headers.insert("x-api-key".into(), "secret".into());
        let mut exporter = exporter(&config, &[]).unwrap();
        exporter.set_resource(
            &opentelemetry_sdk::Resource::builder()
                .with_service_name("orders")
                .build(),
        );

        exporter.export(one_span()).expect("delivered on the third attempt");

        let received = collector.received();
        assert_eq!(received.len(), 3, "503, 502, then 200");
        assert!(
            received.iter().all(|(_, body)| body == &received[0].1),
            "the same body each time"
        );
        let (headers, body) = &received[2];
        assert_eq!(headers["x-api-key"], "secret");
        assert_eq!(headers["content-type"], "application/x-protobuf");
        let request = ExportTraceServiceRequest::decode(body.clone()).unwrap();
        assert_eq!(
            request.resource_spans[0].scope_spans[0].spans[0].name,
            "GET /users/{id}"
        );
    }

    #[cfg(feature = "testing")]
    #[test]
    fn a_refused_batch_is_not_retried_and_the_error_says_what_the_collector_answered() {
        let collector = Collector::start(vec![(400, None)]);
        let mut exporter = exporter(&with_endpoint(&collector.url), &[]).unwrap();
        let error = exporter.export(one_span()).unwrap_err().to_string();
        assert!(error.contains("the collector answered 400 Bad Request"), "{error}");
        assert!(!error.contains("attempts"), "{error}");
        assert_eq!(collector.received().len(), 1);
    }

    #[cfg(feature = "testing")]
    #[test]
    fn a_retry_after_beyond_the_timeout_fails_the_batch_at_once() {
        let collector = Collector::start(vec![(503, Some("5"))]);
        let mut config = with_endpoint(&collector.url);
        config.timeout = Duration::from_secs(1);
        let mut exporter = exporter(&config, &[]).unwrap();
        let error = exporter.export(one_span()).unwrap_err().to_string();
        assert!(error.contains("503 Service Unavailable"), "{error}");
        assert_eq!(collector.received().len(), 1, "waiting 5 s would pass the 1 s timeout");
    }

    #[cfg(feature = "testing")]
    #[test]
    fn an_unreachable_collector_fails_after_the_retries_naming_the_cause() {
        // A port that was just free: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut exporter = exporter(&with_endpoint(&format!("http://127.0.0.1:{port}")), &[]).unwrap();
        let error = exporter.export(one_span()).unwrap_err().to_string();
        assert!(error.contains("refused"), "the cause, not only the URL: {error}");
        assert!(error.contains("after 4 attempts"), "{error}");
    }
}
