//! The matched-route slot: how layers outside the router learn which route template matched.

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use http::Request;
use tower::{Layer, Service};

/// The label used for requests that matched no route (404 fallback, scanners).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// A per-request slot where the router records the route template that matched
/// (`/users/{id}`, not `/users/42`).
///
/// ```
/// use chassis::http::MatchedRoute;
///
/// let mut request = http::Request::new(());
/// let slot = MatchedRoute::attach(&mut request);
/// assert_eq!(slot.get(), None);
/// assert_eq!(slot.label(), chassis::http::UNMATCHED_ROUTE);
/// ```
#[derive(Clone)]
pub struct MatchedRoute(Arc<dyn HoldsRoute>);

/// Something a request's [`MatchedRoute`] slot lives in: its own allocation, or per-request
/// state a layer allocates anyway (the trace layer's), so the slot costs no allocation of its own.
pub(crate) trait HoldsRoute: Send + Sync + 'static {
    fn route_slot(&self) -> &OnceLock<MatchedPath>;
}

impl HoldsRoute for OnceLock<MatchedPath> {
    fn route_slot(&self) -> &OnceLock<MatchedPath> {
        self
    }
}

impl Default for MatchedRoute {
    fn default() -> Self {
        Self(Arc::new(OnceLock::<MatchedPath>::new()))
    }
}

impl std::fmt::Debug for MatchedRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MatchedRoute").field(&self.get()).finish()
    }
}

impl MatchedRoute {
    /// Returns the slot already attached to `request`, attaching a new one if there is none,
    /// so several outer layers share one slot.
    pub fn attach<B>(request: &mut Request<B>) -> Self {
        Self::attach_with(request, Self::default)
    }

    /// Like [`attach`](Self::attach), with the new slot living in `holder`.
    pub(crate) fn attach_in<B, H: HoldsRoute>(request: &mut Request<B>, holder: &Arc<H>) -> Self {
        Self::attach_with(request, || Self(holder.clone()))
    }

    fn attach_with<B>(request: &mut Request<B>, new: impl FnOnce() -> Self) -> Self {
        if let Some(slot) = request.extensions().get::<Self>() {
            return slot.clone();
        }
        let slot = new();
        request.extensions_mut().insert(slot.clone());
        slot
    }

    /// The matched route template, once routing has happened.
    pub fn get(&self) -> Option<&str> {
        self.0.route_slot().get().map(MatchedPath::as_str)
    }

    /// The route for labels: the template, or [`UNMATCHED_ROUTE`].
    pub fn label(&self) -> &str {
        self.get().unwrap_or(UNMATCHED_ROUTE)
    }

    fn set(&self, path: &MatchedPath) {
        let _ = self.0.route_slot().set(path.clone());
    }
}

/// Records axum's [`MatchedPath`] into the request's [`MatchedRoute`] slot.
///
/// Add it with `Router::layer` so it runs after routing; the chassis runtime does this for you.
///
/// ```
/// use axum::{Router, routing::get};
/// use chassis::http::CaptureRouteLayer;
///
/// let app: Router = Router::new()
///     .route("/users/{id}", get(|| async { "user" }))
///     .layer(CaptureRouteLayer);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureRouteLayer;

impl<S> Layer<S> for CaptureRouteLayer {
    type Service = CaptureRoute<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CaptureRoute { inner }
    }
}

/// The service of [`CaptureRouteLayer`].
#[derive(Debug, Clone)]
pub struct CaptureRoute<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for CaptureRoute<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        let extensions = request.extensions();
        if let (Some(slot), Some(path)) = (extensions.get::<MatchedRoute>(), extensions.get::<MatchedPath>()) {
            slot.set(path);
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{Router, body::Body, routing::get};
    use tower::ServiceExt;

    #[tokio::test]
    async fn the_router_fills_the_slot_with_the_template() {
        let app = Router::new()
            .route("/users/{id}", get(|| async { "ok" }))
            .layer(CaptureRouteLayer);

        let mut request = Request::get("/users/42").body(Body::empty()).unwrap();
        let slot = MatchedRoute::attach(&mut request);
        app.clone().oneshot(request).await.unwrap();
        assert_eq!(slot.get(), Some("/users/{id}"));

        let mut request = Request::get("/wp-admin.php").body(Body::empty()).unwrap();
        let slot = MatchedRoute::attach(&mut request);
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(slot.label(), UNMATCHED_ROUTE);
    }

    #[tokio::test]
    async fn attach_twice_shares_one_slot() {
        let app = Router::new()
            .route("/x", get(|| async { "ok" }))
            .layer(CaptureRouteLayer);
        let mut request = Request::get("/x").body(Body::empty()).unwrap();
        let a = MatchedRoute::attach(&mut request);
        let b = MatchedRoute::attach(&mut request);
        app.oneshot(request).await.unwrap();
        assert_eq!(a.get(), Some("/x"));
        assert_eq!(b.get(), Some("/x"));
    }
}
