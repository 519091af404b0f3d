//! The API gateway: the shop's single front door. It authenticates every request (an API key
//! in `x-api-key`, or a JWT in `Authorization: Bearer`), rate-limits per client, routes to the
//! services through the chassis client (retries, circuit breakers), and aggregates one order
//! summary from three services, degrading gracefully when one of them is down.
//!
//! | route | goes to |
//! |---|---|
//! | `POST /orders`, `GET /orders/{id}` | orders (choreographed checkout) |
//! | `GET /orders/{id}/summary` | orders + payments + inventory in one answer; `partial: true` when a part is missing |
//! | `POST /checkouts`, `GET /checkouts/{id}` | orchestrator (orchestrated checkout) |

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chassis::Context;
use chassis::client::{Client, ClientError};
use chassis::http::Problem;
use chassis::resilience::rate_limit::{RateLimitConfig, RateLimitKey, RateLimitLayer};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};

/// The header the gateway sets to the authenticated client, for the rate limiter. A value sent
/// by the client is overwritten.
pub const CLIENT_HEADER: &str = "x-client-id";

/// The gateway's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `api_keys`: accepted `x-api-key` values. Default `["demo-key"]`.
    pub api_keys: Vec<String>,
    /// `[jwt]`: bearer tokens.
    pub jwt: JwtSettings,
    /// `requests_per_second`: per client. Default 50.
    pub requests_per_second: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            api_keys: vec!["demo-key".into()],
            jwt: JwtSettings::default(),
            requests_per_second: 50,
        }
    }
}

/// `[jwt]`: HS256 bearer tokens signed with one of `secrets`. Tokens must carry `sub` and
/// `exp`; `iss` and `aud` are checked when configured. No secrets: bearer tokens are refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// `secrets`: HMAC keys; more than one during a rotation.
    pub secrets: Vec<String>,
    /// `issuer`: the required `iss`.
    pub issuer: Option<String>,
    /// `audience`: the required `aud`.
    pub audience: Option<String>,
}

struct Authenticator {
    api_keys: Vec<String>,
    jwt_keys: Vec<DecodingKey>,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl Authenticator {
    fn new(settings: &Settings) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = &settings.jwt.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &settings.jwt.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Self {
            api_keys: settings.api_keys.clone(),
            jwt_keys: settings
                .jwt
                .secrets
                .iter()
                .map(|s| DecodingKey::from_secret(s.as_bytes()))
                .collect(),
            validation,
        }
    }

    /// The client's identity, or why it has none.
    fn identify(&self, headers: &HeaderMap) -> Result<String, String> {
        if let Some(key) = headers.get("x-api-key") {
            let key = key.to_str().unwrap_or_default();
            return match self.api_keys.iter().position(|k| k == key) {
                Some(index) => Ok(format!("api-key-{index}")),
                None => Err("the x-api-key is not one of the configured keys".into()),
            };
        }
        let Some(authorization) = headers.get(header::AUTHORIZATION) else {
            return Err("send an x-api-key header or an Authorization: Bearer token".into());
        };
        let token = authorization
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("the Authorization header must be \"Bearer <token>\"")?;
        if self.jwt_keys.is_empty() {
            return Err("bearer tokens are not accepted here (no jwt.secrets configured)".into());
        }
        let mut last = String::new();
        for key in &self.jwt_keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return Ok(format!("jwt-{}", data.claims.sub)),
                Err(error) => last = error.to_string(),
            }
        }
        Err(format!("invalid bearer token: {last}"))
    }
}

async fn authenticate(State(auth): State<Arc<Authenticator>>, mut request: Request, next: Next) -> Response {
    match auth.identify(request.headers()) {
        Ok(client) => {
            let value = HeaderValue::from_str(&client).unwrap_or(HeaderValue::from_static("unknown"));
            request.headers_mut().insert(CLIENT_HEADER, value);
            next.run(request).await
        }
        Err(reason) => {
            tracing::info!(%reason, "request refused: not authenticated");
            let mut response = Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication required")
                .with_detail(reason)
                .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}

#[derive(Clone)]
struct Gateway {
    orders: Client,
    payments: Client,
    inventory: Client,
    orchestrator: Client,
}

/// Passes a downstream answer through: status, body and the headers a client needs.
async fn relay(client: &Client, result: Result<Response<Body>, ClientError>) -> Response {
    match result {
        Ok(response) => {
            let status = response.status();
            let kept: Vec<_> = [header::CONTENT_TYPE, header::LOCATION, header::RETRY_AFTER]
                .into_iter()
                .chain([header::HeaderName::from_static("idempotent-replayed")])
                .filter_map(|name| response.headers().get(&name).cloned().map(|value| (name, value)))
                .collect();
            let body = client.bytes(response).await.unwrap_or_default();
            let mut relayed = (status, body).into_response();
            relayed.headers_mut().extend(kept);
            relayed
        }
        Err(error) => Problem::new(StatusCode::BAD_GATEWAY, "upstream-unavailable", "Upstream unavailable")
            .with_detail(error.to_string())
            .into_response(),
    }
}

/// Forwards a JSON POST with its `Idempotency-Key`, so the service dedupes the client's retries.
async fn forward_post(client: &Client, path: &str, headers: &HeaderMap, body: Bytes) -> Response {
    let mut request = match client.request(Method::POST, path) {
        Ok(builder) => builder.header(header::CONTENT_TYPE, "application/json"),
        Err(error) => return (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    };
    if let Some(key) = headers.get("idempotency-key") {
        request = request.header("idempotency-key", key);
    }
    let request = request.body(Body::from(body)).expect("a valid request");
    relay(client, client.send(request).await).await
}

async fn place_order(State(gateway): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    forward_post(&gateway.orders, "/orders", &headers, body).await
}

async fn get_order(State(gateway): State<Gateway>, Path(id): Path<u64>) -> Response {
    relay(&gateway.orders, gateway.orders.get(&format!("/orders/{id}")).await).await
}

async fn start_checkout(State(gateway): State<Gateway>, headers: HeaderMap, body: Bytes) -> Response {
    forward_post(&gateway.orchestrator, "/checkouts", &headers, body).await
}

async fn get_checkout(State(gateway): State<Gateway>, Path(id): Path<String>) -> Response {
    let client = &gateway.orchestrator;
    relay(client, client.get(&format!("/checkouts/{id}")).await).await
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

/// Order, payment and stock in one answer, fetched concurrently. The order is required; a
/// missing payment or stock part is marked `unavailable` and the response `partial`.
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

/// The gateway service. It needs `clients.{orders,payments,inventory,orchestrator}.base_url`.
pub async fn service(ctx: Context<Settings>) -> chassis::Result<Router> {
    let settings = ctx.settings().clone();
    let state = Gateway {
        orders: ctx.client("orders")?,
        payments: ctx.client("payments")?,
        inventory: ctx.client("inventory")?,
        orchestrator: ctx.client("orchestrator")?,
    };
    let mut limit = RateLimitConfig::default();
    limit.requests = settings.requests_per_second;
    limit.key = RateLimitKey::Header(CLIENT_HEADER.into());
    let rate_limit = RateLimitLayer::new("client", limit)?;
    let auth = Arc::new(Authenticator::new(&settings));
    Ok(Router::new()
        .route("/orders", post(place_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/summary", get(summary))
        .route("/checkouts", post(start_checkout))
        .route("/checkouts/{id}", get(get_checkout))
        .with_state(state)
        // The last layer is the outermost: authenticate first, then limit the known client.
        .layer(rate_limit)
        .layer(middleware::from_fn_with_state(auth, authenticate)))
}
