//! Shared fixtures of the benchmarks: the same routes served bare and behind the chassis.

use axum::Router;
use axum::routing::get;

/// A small JSON-ish route with a path parameter, the shape of a typical API call.
pub fn routes() -> Router {
    Router::new()
        .route(
            "/users/{id}",
            get(|axum::extract::Path(id): axum::extract::Path<u64>| async move { format!("{{\"id\":{id}}}") }),
        )
        .route("/health", get(|| async { "ok" }))
}

/// `POST /payments` answering 201, for the idempotency load runs.
pub fn payments() -> Router {
    Router::new().route(
        "/payments",
        axum::routing::post(|| async { (axum::http::StatusCode::CREATED, r#"{"id":1}"#) }),
    )
}
