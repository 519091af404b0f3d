//! The admin listener's endpoints: health probes, `/metrics`, the circuit breakers, and the
//! dead letters with their replay.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::health::HealthRegistry;
use crate::http::Problem;
use crate::messaging::{DeadLetter, Transport};
use crate::metrics::MetricsHandle;
use crate::resilience::CircuitBreakerRegistry;

/// The media type of `/metrics`.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The admin endpoints: `/health/live`, `/health/ready`, `/health/startup`,
/// `/circuit-breakers` (state, rates and window of every breaker, as JSON), `/log-filter`
/// (`GET` the log filter, `PUT` `{"filter": "..."}` to change it while the service runs) and,
/// with metrics enabled, `/metrics`. The runtime adds the dead letters' endpoints (see the messaging guide).
pub fn admin_router(
    health: HealthRegistry,
    metrics: Option<MetricsHandle>,
    breakers: CircuitBreakerRegistry,
) -> Router {
    let router = crate::health::router(health)
        .route(
            "/circuit-breakers",
            get(move || {
                let breakers = breakers.clone();
                async move { axum::Json(breakers.snapshots()) }
            }),
        )
        .route("/log-filter", get(log_filter).put(set_log_filter));
    let router = match metrics {
        Some(handle) => router.route(
            "/metrics",
            get(move |headers: http::HeaderMap| {
                let handle = handle.clone();
                async move {
                    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
                    // OpenMetrics when the scraper asks for it (Prometheus does): it carries exemplars.
                    let (media, text) = match MetricsHandle::wants_openmetrics(accept) {
                        true => (crate::metrics::OPENMETRICS_TEXT, handle.render_openmetrics()),
                        false => (PROMETHEUS_TEXT, handle.render()),
                    };
                    ([(header::CONTENT_TYPE, HeaderValue::from_static(media))], text)
                }
            }),
        ),
        None => router,
    };
    // Handlers become services once, not per request (see `Inbound::new`).
    router.with_state(())
}

#[derive(Serialize, Deserialize)]
struct LogFilterBody {
    filter: String,
}

/// `GET /log-filter`: the log filter in force.
async fn log_filter() -> Response {
    match crate::telemetry::log_filter() {
        Some(filter) => axum::Json(LogFilterBody { filter }).into_response(),
        None => Problem::new(StatusCode::NOT_FOUND, "log-filter-unavailable", "No log filter")
            .with_detail("the chassis' logging is not installed in this process")
            .into_response(),
    }
}

/// `PUT /log-filter` with `{"filter": "info,chassis::messaging=debug"}`: replaces the filter
/// until the next change or restart.
async fn set_log_filter(body: Result<axum::Json<LogFilterBody>, axum::extract::rejection::JsonRejection>) -> Response {
    let axum::Json(body) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return Problem::new(StatusCode::BAD_REQUEST, "invalid-log-filter", "Invalid log filter")
                .with_detail(format!("send {{\"filter\": \"<EnvFilter directives>\"}}: {rejection}"))
                .into_response();
        }
    };
    match crate::telemetry::set_log_filter(&body.filter) {
        Ok(()) => axum::Json(body).into_response(),
        Err(reason) => Problem::new(StatusCode::BAD_REQUEST, "invalid-log-filter", "Invalid log filter")
            .with_detail(reason)
            .into_response(),
    }
}

/// The transport whose dead letters the admin endpoints show, once start-up has connected it.
pub(super) type DeadLetterSource = Arc<OnceLock<Arc<dyn Transport>>>;

/// `GET /dead-letters/{group}?limit=N` lists a group's dead letters (oldest first, 100 unless
/// `limit` says otherwise); `POST /dead-letters/{group}/replay` sends them back to their
/// destination, for that group only: all of them up to `limit`, or those whose `ids` the JSON
/// body lists.
pub(super) fn dead_letter_routes(source: DeadLetterSource) -> Router {
    Router::new()
        .route("/dead-letters/{group}", get(list))
        .route("/dead-letters/{group}/replay", post(replay))
        .with_state(source)
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<usize>,
}

/// A dead letter as the admin endpoint shows it.
#[derive(Serialize)]
struct Shown {
    #[serde(flatten)]
    letter: DeadLetter,
    headers: Vec<(String, String)>,
    body: String,
}

fn starting() -> Response {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "starting",
        "The service is still starting",
    )
    .with_retry_after(std::time::Duration::from_secs(1))
    .into_response()
}

fn failed(error: impl std::fmt::Display) -> Response {
    Problem::new(StatusCode::BAD_GATEWAY, "broker-failed", "The message broker failed")
        .with_detail(error.to_string())
        .into_response()
}

async fn list(
    State(source): State<DeadLetterSource>,
    Path(group): Path<String>,
    Query(limit): Query<Limit>,
) -> Response {
    let Some(transport) = source.get() else {
        return starting();
    };
    match transport.list_dead_letters(&group, limit.limit.unwrap_or(100)).await {
        Ok(letters) => {
            let shown: Vec<Shown> = letters
                .into_iter()
                .map(|letter| Shown {
                    headers: letter.message.headers.clone(),
                    body: String::from_utf8_lossy(&letter.message.body).into_owned(),
                    letter,
                })
                .collect();
            axum::Json(shown).into_response()
        }
        Err(error) => failed(error),
    }
}

#[derive(Deserialize, Default)]
struct Replay {
    #[serde(default)]
    ids: Vec<String>,
    limit: Option<usize>,
}

async fn replay(
    State(source): State<DeadLetterSource>,
    Path(group): Path<String>,
    body: Option<axum::Json<Replay>>,
) -> Response {
    let Some(transport) = source.get() else {
        return starting();
    };
    let Replay { ids, limit } = body.map(|axum::Json(replay)| replay).unwrap_or_default();
    match transport.replay_dead_letters(&group, &ids, limit.unwrap_or(100)).await {
        Ok(replayed) => {
            tracing::info!(group, replayed, "dead letters replayed");
            axum::Json(serde_json::json!({ "replayed": replayed })).into_response()
        }
        Err(error) => failed(error),
    }
}
