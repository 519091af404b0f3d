//! Request ids: [`SetRequestIdLayer`], its service [`SetRequestId`], [`ResponseFuture`] and the
//! [`RequestId`] handlers see.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{Entry, HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// The request id header, `x-request-id`.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming id accepted; longer ones are replaced so logs stay sane.
const MAX_LEN: usize = 128;

/// The id of the current request, from the `x-request-id` header or generated (a random UUID
/// v4, from a fast non-cryptographic generator: an id to correlate by, never a secret).
/// Handlers can extract it from the request's extensions.
///
/// ```
/// use axum::Extension;
/// use chassis::telemetry::RequestId;
///
/// async fn handler(Extension(id): Extension<RequestId>) -> String {
///     format!("your request is {}", id.as_str())
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub(crate) HeaderValue);

impl RequestId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only visible ASCII is ever accepted or generated.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_LEN && bytes.iter().all(|b| b.is_ascii_graphic())
}

fn generate() -> HeaderValue {
    // A correlation id, not a secret: random bits from a fast generator are enough, and a
    // cryptographic one is measurable per request.
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    // Owned by one shared allocation from the start: the id goes into the request's headers,
    // its extensions and the response, and a copied value would allocate again on first clone.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(hyphenated(id.as_bytes())))
        .expect("a UUID is a valid header value")
}

/// The lowercase hyphenated form of a UUID (`8-4-4-4-12` hex digits), a byte pair at a time
/// from a table: a third of the instructions of the `uuid` crate's formatter, per request.
fn hyphenated(bytes: &[u8; 16]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const PAIRS: [[u8; 2]; 256] = {
        let mut pairs = [[0u8; 2]; 256];
        let mut byte = 0;
        while byte < 256 {
            pairs[byte] = [HEX[byte >> 4], HEX[byte & 0xf]];
            byte += 1;
        }
        pairs
    };
    let mut text = [b'-'; 36];
    let mut at = 0;
    for (n, byte) in bytes.iter().enumerate() {
        if matches!(n, 4 | 6 | 8 | 10) {
            at += 1;
        }
        text[at..at + 2].copy_from_slice(&PAIRS[usize::from(*byte)]);
        at += 2;
    }
    text
}

/// Sets `x-request-id` on the request when missing (or unusable: empty, longer than 128
/// characters, or not visible ASCII), exposes it as a [`RequestId`] extension, and echoes it
/// on the response.
///
/// ```
/// use axum::{Router, routing::get};
/// use chassis::telemetry::SetRequestIdLayer;
/// use tower::ServiceBuilder;
///
/// let app = ServiceBuilder::new()
///     .layer(SetRequestIdLayer::new())
///     .service(Router::<()>::new().route("/", get(|| async { "hi" })));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SetRequestIdLayer {
    _private: (),
}

impl SetRequestIdLayer {
    /// The layer.
    pub fn new() -> Self {
        Self { _private: () }
    }
}

impl<S> Layer<S> for SetRequestIdLayer {
    type Service = SetRequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SetRequestId { inner }
    }
}

/// The service of [`SetRequestIdLayer`].
#[derive(Debug, Clone)]
pub struct SetRequestId<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for SetRequestId<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // One lookup of the header for both reading it and (when missing or unusable) setting it.
        let id = match request.headers_mut().entry(REQUEST_ID_HEADER) {
            Entry::Occupied(entry) if acceptable(entry.get()) => entry.get().clone(),
            Entry::Occupied(mut entry) => {
                entry.insert(generate());
                entry.get().clone()
            }
            Entry::Vacant(entry) => entry.insert(generate()).clone(),
        };
        request.extensions_mut().insert(RequestId(id.clone()));
        ResponseFuture {
            inner: self.inner.call(request),
            id: Some(id),
        }
    }
}

pin_project! {
    /// The response future of [`SetRequestId`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            response.headers_mut().entry(REQUEST_ID_HEADER).or_insert(id);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{Extension, Router, body::Body, routing::get};
    use tower::ServiceExt;

    fn app() -> SetRequestId<Router> {
        SetRequestIdLayer::new().layer(Router::new().route(
            "/",
            get(|Extension(id): Extension<RequestId>| async move { id.as_str().to_owned() }),
        ))
    }

    #[test]
    fn ids_are_written_as_the_uuid_crate_writes_them() {
        for _ in 0..100 {
            let id = uuid::Uuid::from_u128(fastrand::u128(..));
            assert_eq!(&hyphenated(id.as_bytes())[..], id.hyphenated().to_string().as_bytes());
        }
    }

    #[tokio::test]
    async fn generates_an_id_and_echoes_it() {
        let response = app()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let id = response.headers()[REQUEST_ID_HEADER].to_str().unwrap().to_owned();
        let uuid = uuid::Uuid::parse_str(&id).expect("a UUID");
        assert_eq!(uuid.get_version_num(), 4, "{id}");
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 1000, "ids do not repeat");
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        assert_eq!(body, id.as_bytes(), "the handler sees the same id");
    }

    #[tokio::test]
    async fn keeps_a_sane_incoming_id_and_replaces_a_bad_one() {
        let response = app()
            .oneshot(
                Request::get("/")
                    .header("x-request-id", "abc-123")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.headers()[REQUEST_ID_HEADER], "abc-123");

        let long = "x".repeat(500);
        let response = app()
            .oneshot(
                Request::get("/")
                    .header("x-request-id", long.as_str())
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let id = response.headers()[REQUEST_ID_HEADER].to_str().unwrap();
        assert_ne!(id, long);
        assert!(uuid::Uuid::parse_str(id).is_ok());
    }

    #[tokio::test]
    async fn the_request_carries_the_id_it_is_served_with() {
        // What a proxy behind the layer forwards: the request's own header, set or replaced.
        let echo = SetRequestIdLayer::new().layer(Router::new().route(
            "/",
            get(|headers: http::HeaderMap| async move { headers[REQUEST_ID_HEADER].to_str().unwrap().to_owned() }),
        ));
        for incoming in [None, Some("abc-123"), Some("bad id with spaces")] {
            let mut request = Request::get("/");
            if let Some(incoming) = incoming {
                request = request.header("x-request-id", incoming);
            }
            let response = echo
                .clone()
                .oneshot(request.body(Body::empty()).unwrap())
                .await
                .unwrap();
            let served = response.headers()[REQUEST_ID_HEADER].to_str().unwrap().to_owned();
            let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
            assert_eq!(body, served.as_bytes(), "{incoming:?}");
            match incoming {
                Some("abc-123") => assert_eq!(served, "abc-123"),
                _ => assert!(uuid::Uuid::parse_str(&served).is_ok(), "{incoming:?}: {served}"),
            }
        }
    }
}
