//! A sidecar: a reverse proxy that gives an HTTP app it does not change (any language, any
//! framework) the chassis' edge. Requests arrive at the sidecar's inbound stack (request id,
//! trace span, RED metrics, timeout, load shedding, body limit), pass its rate limit, and go to
//! the app through the chassis client: W3C trace context injected, retries with a budget for
//! idempotent requests, and a circuit breaker that answers 503 at once while the app is down.
//!
//! ```toml
//! [clients.app]                 # the app behind the sidecar
//! base_url = "http://127.0.0.1:3000"
//! attempt_timeout = "5s"
//!
//! [rate_limit]                  # in front of the app; default 100/s for everybody
//! requests = 20
//! key = "client_ip"
//! ```

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use chassis::Context;
use chassis::client::{Client, ClientError};
use chassis::http::{Problem, problem_for};
use chassis::resilience::rate_limit::{RateLimitConfig, RateLimitLayer};
use serde::Deserialize;

/// The sidecar's settings (the app itself is `[clients.app]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `[rate_limit]`: requests let through to the app.
    pub rate_limit: RateLimitConfig,
    /// `max_body_bytes`: the largest request body forwarded (it is buffered so that a retry can
    /// send it again). Default: the chassis' `http.body_limit`.
    pub max_body_bytes: Option<usize>,
}

/// Headers that belong to one connection (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Drops the hop-by-hop headers, including those the `Connection` header names.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|name| name.trim().to_ascii_lowercase()))
        .collect();
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !HOP_BY_HOP.contains(&name) && name != "host" && !named.iter().any(|n| n == name)
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

#[derive(Clone)]
struct Proxy {
    app: Client,
    max_body_bytes: usize,
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, proxy.max_body_bytes).await {
        Ok(body) => body,
        Err(error) => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
            )
            .with_detail(error.to_string())
            .into_response();
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outbound = match proxy.app.request(parts.method.clone(), path) {
        Ok(builder) => builder,
        Err(error) => {
            return Problem::new(StatusCode::BAD_REQUEST, "bad-path", "Bad path")
                .with_detail(error.to_string())
                .into_response();
        }
    };
    let mut headers = end_to_end(&parts.headers);
    if let Some(host) = parts.headers.get(header::HOST) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    if let Some(peer) = peer {
        let forwarded_for = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) => format!("{earlier}, {peer}"),
            None => peer.to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), value);
        }
    }
    if let Some(target) = outbound.headers_mut() {
        target.extend(headers);
    }
    let request = outbound.body(Body::from(body)).expect("a valid request");
    match proxy.app.send(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            parts.headers = end_to_end(&parts.headers);
            // Streamed back as it arrives.
            Response::from_parts(parts, body)
        }
        Err(error) => unavailable(error),
    }
}

/// The problem for a failed call: the breaker's 503 and the timeout's as the chassis answers
/// them, anything else (refused connection, reset) a 502.
fn unavailable(error: ClientError) -> Response {
    let problem = match &error {
        ClientError::Request { source, .. } => {
            let problem = problem_for(source.as_ref());
            if problem.status() == StatusCode::INTERNAL_SERVER_ERROR {
                Problem::new(StatusCode::BAD_GATEWAY, "app-unreachable", "The app is unreachable")
                    .with_detail(error.to_string())
            } else {
                problem
            }
        }
        other => Problem::new(StatusCode::BAD_GATEWAY, "app-unreachable", "The app is unreachable")
            .with_detail(other.to_string()),
    };
    problem.into_response()
}

/// The sidecar service: every path and method goes to `[clients.app]`.
pub async fn service(ctx: Context<Settings>) -> chassis::Result<Router> {
    let settings = ctx.settings().clone();
    let proxy = Proxy {
        app: ctx.client("app")?,
        max_body_bytes: settings
            .max_body_bytes
            .unwrap_or(ctx.config().http.body_limit.as_usize()),
    };
    let rate_limit = RateLimitLayer::new("sidecar", settings.rate_limit)?;
    Ok(Router::new()
        .route("/", any(forward))
        .route("/{*path}", any(forward))
        .with_state(proxy)
        .layer(rate_limit))
}
