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

/// Deletes the streams a run made on NATS for `namespace`.
pub async fn delete_nats_streams(nats: &chassis::messaging::NatsTransport, namespace: &str) {
    for family in ["EVENTS", "COMMANDS", "DEAD_LETTERS"] {
        let _ = nats
            .jetstream()
            .delete_stream(format!("{}_{family}", namespace.to_uppercase()))
            .await;
    }
}

/// `POST /payments` answering 201, for the idempotency load runs.
pub fn payments() -> Router {
    Router::new().route(
        "/payments",
        axum::routing::post(|| async { (axum::http::StatusCode::CREATED, r#"{"id":1}"#) }),
    )
}

/// The in-process pair every inbound benchmark compares: [`routes`] bare, and the same routes in
/// the chassis' inbound stack with telemetry and metrics installed as a service has them by
/// default (logs at WARN, server span per request, no exporter). Keep the guard alive for the
/// run.
pub fn inbound_pair() -> (chassis::telemetry::TelemetryGuard, Router, chassis::runtime::Inbound) {
    let (config, ()) = chassis::config::ConfigLoader::new()
        .set("telemetry.log_level", "warn")
        .load::<chassis::runtime::ChassisConfig, ()>()
        .expect("bench config");
    let telemetry = chassis::telemetry::init(&config.service, &config.telemetry).expect("telemetry");
    chassis::metrics::install(&config.metrics, &config.service).expect("metrics");
    let stack = chassis::runtime::Inbound::new(routes(), &config);
    (telemetry, routes(), stack)
}

/// The request of the inbound benchmarks: `GET /users/42` with the one header wrk sends, so the
/// header map is allocated by the "client", as hyper does for every real request, not by the
/// first layer that adds a header.
pub fn get_user() -> axum::http::Request<axum::body::Body> {
    axum::http::Request::get("/users/42")
        .header(axum::http::header::HOST, "127.0.0.1:3000")
        .body(axum::body::Body::empty())
        .expect("a valid request")
}

/// The single-threaded runtime the in-process benchmarks drive the services on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}
