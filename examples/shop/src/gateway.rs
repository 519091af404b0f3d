//! The API gateway: the single front door. Checks API keys, rate-limits per key, forwards to the
//! services, and aggregates one order summary from three of them, degrading gracefully.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chassis::Context;
use chassis::client::Client;
use chassis::http::Problem;
use chassis::resilience::rate_limit::{RateLimitConfig, RateLimitKey, RateLimitLayer};
use serde::Deserialize;
use serde_json::{Value, json};

/// The gateway's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Accepted `x-api-key` values.
    pub api_keys: Vec<String>,
    /// Requests per second per API key.
    pub requests_per_second: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            api_keys: vec!["demo-key".into()],
            requests_per_second: 50,
        }
    }
}

#[derive(Clone)]
struct Gateway {
    orders: Client,
    payments: Client,
    inventory: Client,
}

async fn authenticate(State(keys): State<Arc<Vec<String>>>, request: Request, next: Next) -> Response {
    let given = request.headers().get("x-api-key").and_then(|v| v.to_str().ok());
    match given {
        Some(key) if keys.iter().any(|k| k == key) => next.run(request).await,
        _ => Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "API key required")
            .with_detail("send a valid x-api-key header")
            .into_response(),
    }
}

/// Passes a downstream answer through, status and body.
async fn relay(client: &Client, result: Result<Response<Body>, chassis::client::ClientError>) -> Response {
    match result {
        Ok(response) => {
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let replayed = response.headers().get("idempotent-replayed").cloned();
            let body = client.bytes(response).await.unwrap_or_default();
            let mut relayed = (status, body).into_response();
            if let Some(value) = content_type {
                relayed.headers_mut().insert(header::CONTENT_TYPE, value);
            }
            if let Some(value) = replayed {
                relayed.headers_mut().insert("idempotent-replayed", value);
            }
            relayed
        }
        Err(error) => Problem::new(StatusCode::BAD_GATEWAY, "upstream-unavailable", "Upstream unavailable")
            .with_detail(error.to_string())
            .into_response(),
    }
}

async fn place_order(State(gateway): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    let mut request = match gateway.orders.request(Method::POST, "/orders") {
        Ok(builder) => builder.header(header::CONTENT_TYPE, "application/json"),
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    };
    if let Some(key) = headers.get("idempotency-key") {
        request = request.header("idempotency-key", key);
    }
    let request = request.body(Body::from(body)).expect("valid request");
    let result = gateway.orders.send(request).await;
    relay(&gateway.orders, result).await
}

async fn get_order(State(gateway): State<Gateway>, Path(id): Path<u64>) -> Response {
    let result = gateway.orders.get(&format!("/orders/{id}")).await;
    relay(&gateway.orders, result).await
}

/// The JSON of a part of the summary, or why it is missing.
async fn part(client: &Client, path: String) -> Result<Value, String> {
    let response = client.get(&path).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = client.bytes(response).await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{} answered {status}", client.name()));
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// Order, payment and stock in one answer. The order is required; a missing payment or stock
/// part is marked `unavailable` and the response `partial`.
async fn summary(State(gateway): State<Gateway>, Path(id): Path<u64>) -> Response {
    let (order, payment, stock) = tokio::join!(
        part(&gateway.orders, format!("/orders/{id}")),
        part(&gateway.payments, format!("/payments/{id}")),
        part(&gateway.inventory, format!("/reservations/{id}")),
    );
    let order = match order {
        Ok(order) => order,
        Err(reason) => {
            return Problem::new(StatusCode::BAD_GATEWAY, "order-unavailable", "Order unavailable")
                .with_detail(reason)
                .into_response();
        }
    };
    let mut partial = false;
    let mut show = |part: Result<Value, String>| {
        part.unwrap_or_else(|reason| {
            partial = true;
            json!({ "unavailable": reason })
        })
    };
    let payment = show(payment);
    let stock = show(stock);
    Json(json!({ "order": order, "payment": payment, "stock": stock, "partial": partial })).into_response()
}

/// The gateway service.
pub async fn gateway(ctx: Context<Settings>) -> chassis::Result<Router> {
    let settings = ctx.settings().clone();
    let state = Gateway {
        orders: ctx.client("orders")?,
        payments: ctx.client("payments")?,
        inventory: ctx.client("inventory")?,
    };
    let mut limit = RateLimitConfig::default();
    limit.requests = settings.requests_per_second;
    limit.key = RateLimitKey::Header("x-api-key".into());
    let rate_limit = RateLimitLayer::new("api-key", limit)?;
    let keys = Arc::new(settings.api_keys);
    Ok(Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/summary", get(summary))
        .with_state(state)
        // Outermost last: authenticate, then rate-limit per (now known) key.
        .layer(rate_limit)
        .layer(middleware::from_fn_with_state(keys, authenticate)))
}
