use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};

use super::{HealthRegistry, Probe};

/// The media type of health responses.
pub const HEALTH_JSON: &str = "application/health+json";

/// The probe endpoints: `/health/live`, `/health/ready` and `/health/startup`.
///
/// The runtime mounts them on the admin listener; mount them yourself only when you assemble
/// your own server.
///
/// ```
/// use chassis::health::{HealthRegistry, router};
///
/// let admin: axum::Router = router(HealthRegistry::new(Default::default()));
/// ```
pub fn router(registry: HealthRegistry) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health/startup", get(startup))
        .with_state(registry)
}

async fn live(State(registry): State<HealthRegistry>) -> Response {
    respond(&registry, Probe::Liveness).await
}

async fn ready(State(registry): State<HealthRegistry>) -> Response {
    respond(&registry, Probe::Readiness).await
}

async fn startup(State(registry): State<HealthRegistry>) -> Response {
    respond(&registry, Probe::Startup).await
}

async fn respond(registry: &HealthRegistry, probe: Probe) -> Response {
    let report = registry.report(probe).await;
    let status = if report.status.is_healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_vec(&report).unwrap_or_default();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(HEALTH_JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
