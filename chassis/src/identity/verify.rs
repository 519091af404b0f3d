//! [`VerifyIdentityLayer`]: turns a valid identity header into the request's [`Identity`](super::Identity)
//! extension and answers `401` to an invalid one.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, Request, StatusCode};
use tower::{Layer, Service};

use super::{IdentityConfig, IncomingIdentity, InvalidIdentity, Verifier};
use crate::config::ConfigError;
use crate::future::{Answered, Call};
use crate::problem::Problem;

/// Verifies the identity header of every request (see the [module docs](super)): a valid one
/// becomes the request's [`Identity`](super::Identity) extension, an invalid one is answered
/// `401 identity-invalid` with the reason, and a request without one passes anonymous. With
/// `identity.incoming = "strip"` (a gateway) the header is removed unread instead. The runtime
/// adds it to the inbound stack with `[identity]`.
///
/// ```
/// use chassis::identity::{IdentityConfig, VerifyIdentityLayer};
///
/// let layer = VerifyIdentityLayer::new(&IdentityConfig::signed_with("a shared secret of 32 bytes or more")).unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct VerifyIdentityLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    header: HeaderName,
    verifier: Verifier,
    incoming: IncomingIdentity,
}

impl VerifyIdentityLayer {
    /// A layer verifying with `config`, or its problems.
    pub fn new(config: &IdentityConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            shared: Arc::new(Shared {
                header: config.header_name(),
                verifier: Verifier::new(config)?,
                incoming: config.incoming,
            }),
        })
    }
}

impl<S> Layer<S> for VerifyIdentityLayer {
    type Service = VerifyIdentity<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifyIdentity {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`VerifyIdentityLayer`].
#[derive(Debug, Clone)]
pub struct VerifyIdentity<S> {
    inner: S,
    shared: Arc<Shared>,
}

pin_project_lite::pin_project! {
    /// The response future of [`VerifyIdentity`].
    pub struct ResponseFuture<F> {
        #[pin]
        call: Call<F, Answered>,
    }
}

impl<F, E> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    #[inline(always)]
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().call.poll(cx)
    }
}

/// Reads and checks the identity of `request`, making a valid one its extension.
fn verify(shared: &Shared, request: &mut Request<Body>) -> Result<(), InvalidIdentity> {
    // A request has few headers, and comparing names (a standard one differs from a custom one
    // in its tag) costs less than hashing the custom name for a lookup, on every request.
    let Some(value) = request
        .headers()
        .iter()
        .find_map(|(name, value)| (*name == shared.header).then_some(value))
    else {
        return Ok(());
    };
    if shared.incoming == IncomingIdentity::Strip {
        while request.headers_mut().remove(&shared.header).is_some() {}
        return Ok(());
    }
    let identity = shared.verifier.verify(value)?;
    request.extensions_mut().insert(identity);
    Ok(())
}

fn refuse(shared: &Shared, error: InvalidIdentity) -> Response {
    tracing::warn!(%error, header = %shared.header, "request refused: its identity header is not valid");
    Problem::new(StatusCode::UNAUTHORIZED, "identity-invalid", "Invalid identity")
        .with_detail(error.to_string())
        .into_response()
}

impl<S> Service<Request<Body>> for VerifyIdentity<S>
where
    S: Service<Request<Body>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let call = match verify(&self.shared, &mut request) {
            Ok(()) => Call::called(self.inner.call(request)),
            Err(error) => Call::answered(Answered(Box::new(refuse(&self.shared, error)))),
        };
        ResponseFuture { call }
    }
}
