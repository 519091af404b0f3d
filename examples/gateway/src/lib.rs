//! The API gateway: the shop's single front door. It authenticates every request (an API key
//! in `x-api-key`, or an HS256 JWT in `Authorization: Bearer`), forwards who the client is to
//! the services in the signed identity header (and removes any identity header a client sends),
//! rate-limits per client, routes to the services through the chassis client (retries, circuit
//! breakers), and aggregates one order summary from three services, degrading gracefully when
//! one of them is down.
//!
//! | route | goes to |
//! |---|---|
//! | `POST /orders`, `GET /orders/{id}` | orders (choreographed checkout); an order is visible to the client that placed it only |
//! | `GET /orders/{id}/summary` | orders + payments + inventory in one answer; `partial: true` when a part is missing |
//! | `POST /checkouts`, `GET /checkouts/{id}` | orchestrator (orchestrated checkout) |

mod auth;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chassis::Context;
use chassis::client::{Client, ClientError};
use chassis::http::Problem;
use chassis::identity::{Identity, IdentitySigner};
use chassis::resilience::rate_limit::{RateLimitConfig, RateLimitKey, RateLimitLayer};
use serde::Deserialize;
use serde_json::{Value, json};

pub use auth::JwtSettings;

/// The gateway's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `[api_keys]`: client name → accepted `x-api-key` value. Default `{ demo = "demo-key" }`.
    /// From the environment: `APP__API_KEYS__<CLIENT>=<key>`.
    pub api_keys: std::collections::BTreeMap<String, chassis::config::Secret>,
    /// `[jwt]`: bearer tokens.
    pub jwt: JwtSettings,
    /// `requests_per_second`: per client. Default 50.
    pub requests_per_second: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            api_keys: [("demo".to_owned(), chassis::config::Secret::new("demo-key"))].into(),
            jwt: JwtSettings::default(),
            requests_per_second: 50,
        }
    }
}

#[derive(Clone)]
struct Gateway {
    orders: Client,
    payments: Client,
    inventory: Client,
    orchestrator: Client,
    signer: Arc<IdentitySigner>,
}

/// The headers of a downstream answer a client gets.
const RELAYED: [header::HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::LOCATION,
    header::RETRY_AFTER,
    header::HeaderName::from_static("idempotent-replayed"),
];

/// Passes a downstream answer through: status, body and the headers a client needs.
async fn relay(client: &Client, result: Result<Response<Body>, ClientError>) -> Response {
    match result {
        Ok(response) => {
            let status = response.status();
            let headers = response.headers().clone();
            let body = match client.bytes(response).await {
                Ok(body) => body,
                Err(error) => return unavailable(error),
            };
            let mut relayed = (status, body).into_response();
            for name in RELAYED {
                match headers.get(&name) {
                    // One value each: the body's own type replaces the default of bytes.
                    Some(value) => {
                        relayed.headers_mut().insert(name, value.clone());
                    }
                    None => {
                        relayed.headers_mut().remove(name);
                    }
                }
            }
            relayed
        }
        Err(error) => unavailable(error),
    }
}

fn unavailable(error: ClientError) -> Response {
    Problem::new(StatusCode::BAD_GATEWAY, "upstream-unavailable", "Upstream unavailable")
        .with_detail(error.to_string())
        .into_response()
}

impl Gateway {
    /// A request to `client` on behalf of `identity`: the signed identity header set.
    fn request(&self, client: &Client, method: Method, path: &str, identity: &Identity) -> http::request::Builder {
        let builder = client.request(method, path).expect("the gateway's paths are valid");
        builder.header(self.signer.header(), self.signer.header_value(identity))
    }

    async fn get(&self, client: &Client, path: &str, identity: &Identity) -> Result<Response<Body>, ClientError> {
        let request = self
            .request(client, Method::GET, path, identity)
            .body(Body::empty())
            .expect("a valid request");
        client.send(request).await
    }

    /// Forwards a JSON POST with its `Idempotency-Key`, so the service dedupes the client's
    /// retries (within the client's own scope: the identity travels with it).
    async fn post(
        &self,
        client: &Client,
        path: &str,
        identity: &Identity,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response {
        let mut request = self
            .request(client, Method::POST, path, identity)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(key) = headers.get("idempotency-key") {
            request = request.header("idempotency-key", key);
        }
        let request = request.body(Body::from(body)).expect("a valid request");
        relay(client, client.send(request).await).await
    }
}

async fn place_order(State(gateway): State<Gateway>, identity: Identity, headers: HeaderMap, body: Bytes) -> Response {
    gateway
        .post(&gateway.orders, "/orders", &identity, &headers, body)
        .await
}

async fn get_order(State(gateway): State<Gateway>, identity: Identity, Path(id): Path<u64>) -> Response {
    let orders = &gateway.orders;
    relay(orders, gateway.get(orders, &format!("/orders/{id}"), &identity).await).await
}

async fn start_checkout(
    State(gateway): State<Gateway>,
    identity: Identity,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    gateway
        .post(&gateway.orchestrator, "/checkouts", &identity, &headers, body)
        .await
}

async fn get_checkout(State(gateway): State<Gateway>, identity: Identity, Path(id): Path<String>) -> Response {
    let client = &gateway.orchestrator;
    relay(
        client,
        gateway.get(client, &format!("/checkouts/{id}"), &identity).await,
    )
    .await
}

/// A part of the summary: its JSON, or why it is missing (with the downstream's status).
async fn part(
    gateway: &Gateway,
    client: &Client,
    path: String,
    identity: &Identity,
) -> Result<Value, (Option<StatusCode>, String)> {
    let response = gateway
        .get(client, &path, identity)
        .await
        .map_err(|e| (None, e.to_string()))?;
    let status = response.status();
    let body = client.bytes(response).await.map_err(|e| (None, e.to_string()))?;
    if !status.is_success() {
        return Err((Some(status), format!("{} answered {status}", client.name())));
    }
    serde_json::from_slice(&body).map_err(|e| (None, e.to_string()))
}

/// Order, payment and stock in one answer. The order is required and read first: an order
/// that is unknown, or another client's, is a 404 like the order itself, and nothing else is
/// fetched for it. A missing payment or stock part is marked `unavailable` and the response
/// `partial`.
async fn summary(State(gateway): State<Gateway>, identity: Identity, Path(id): Path<u64>) -> Response {
    let order = match part(&gateway, &gateway.orders, format!("/orders/{id}"), &identity).await {
        Ok(order) => order,
        Err((Some(StatusCode::NOT_FOUND), _)) => {
            return Problem::new(StatusCode::NOT_FOUND, "not-found", "No such order")
                .with_detail(format!("there is no order {id} of yours"))
                .into_response();
        }
        Err((_, reason)) => {
            return Problem::new(StatusCode::BAD_GATEWAY, "order-unavailable", "Order unavailable")
                .with_detail(reason)
                .into_response();
        }
    };
    let (payment, stock) = tokio::join!(
        part(&gateway, &gateway.payments, format!("/payments/{id}"), &identity),
        part(&gateway, &gateway.inventory, format!("/reservations/{id}"), &identity),
    );
    let mut partial = false;
    let mut show = |part: Result<Value, (Option<StatusCode>, String)>| {
        part.unwrap_or_else(|(_, reason)| {
            partial = true;
            json!({ "unavailable": reason })
        })
    };
    let payment = show(payment);
    let stock = show(stock);
    Json(json!({ "order": order, "payment": payment, "stock": stock, "partial": partial })).into_response()
}

/// The gateway service. It needs `clients.{orders,payments,inventory,orchestrator}.base_url`,
/// `identity.secrets` shared with them and `identity.incoming = "strip"`.
pub async fn service(ctx: Context<Settings>) -> chassis::Result<Router> {
    let settings = ctx.settings().clone();
    if ctx.config().identity.incoming != chassis::identity::IncomingIdentity::Strip {
        return Err(chassis::Error::msg(
            "the gateway faces clients: set identity.incoming = \"strip\", so no client can send its own identity",
        ));
    }
    let state = Gateway {
        orders: ctx.client("orders")?,
        payments: ctx.client("payments")?,
        inventory: ctx.client("inventory")?,
        orchestrator: ctx.client("orchestrator")?,
        signer: Arc::new(IdentitySigner::new(&ctx.config().identity)?),
    };
    let mut limit = RateLimitConfig::default();
    limit.requests = settings.requests_per_second;
    limit.key = RateLimitKey::Identity;
    let rate_limit = RateLimitLayer::new("client", limit)?;
    let authenticator = Arc::new(auth::Authenticator::new(&settings.api_keys, &settings.jwt)?);
    Ok(Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/summary", get(summary))
        .route("/checkouts", post(start_checkout))
        .route("/checkouts/{id}", get(get_checkout))
        .with_state(state)
        // The last layer is the outermost: authenticate first, then limit the known client.
        .layer(rate_limit)
        .layer(middleware::from_fn_with_state(authenticator, auth::authenticate)))
}
