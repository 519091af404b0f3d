//! {{description}}

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chassis::Context;
{%- if messaging != "none" %}
use chassis::http::Problem;
{%- endif %}
use chassis::idempotency::{IdempotencyConfig, IdempotencyLayer, IdempotencyStore};
{%- if messaging != "none" %}
use chassis::messaging::{Bus, Event, Incoming, Message};
{%- endif %}
use serde::{Deserialize, Serialize};

/// The service's own settings: every key of `config/*.toml` outside the chassis' sections, or
/// `APP__<KEY>` environment variables.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Greeting used by `GET /hello/{name}`.
    pub greeting: String,
{%- if idempotency_store == "redis" %}
    /// Redis holding the idempotency keys.
    pub redis_url: String,
{%- endif %}
{%- if idempotency_store == "postgres" %}
    /// PostgreSQL holding the idempotency keys.
    pub database_url: String,
{%- endif %}
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            greeting: "Hello".into(),
{%- if idempotency_store == "redis" %}
            redis_url: "redis://127.0.0.1:6379".into(),
{%- endif %}
{%- if idempotency_store == "postgres" %}
            database_url: "postgres://postgres@127.0.0.1:5432/test".into(),
{%- endif %}
        }
    }
}
{%- if messaging != "none" %}

/// Published when an order is placed; every subscribed group gets it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order's id.
    pub order_id: u64,
    /// What was ordered.
    pub item: String,
}

impl Message for OrderPlaced {
    const TYPE: &'static str = "{{crate_name}}.order.placed";
}
impl Event for OrderPlaced {}
{%- endif %}

#[derive(Clone)]
struct AppState {
    greeting: Arc<str>,
    orders: Arc<AtomicU64>,
{%- if messaging != "none" %}
    bus: Bus,
{%- endif %}
{%- if downstream_client %}
    downstream: chassis::client::Client,
{%- endif %}
}

#[derive(Serialize)]
struct Greeting {
    message: String,
}

async fn hello(State(state): State<AppState>, Path(name): Path<String>) -> Json<Greeting> {
    Json(Greeting {
        message: format!("{}, {name}!", state.greeting),
    })
}

/// The body of `POST /orders`.
#[derive(Debug, Deserialize)]
pub struct NewOrder {
    /// What to order.
    pub item: String,
}

#[derive(Serialize)]
struct Order {
    id: u64,
    item: String,
}

/// Creates an order. Guarded by `Idempotency-Key`: a retried request gets the first answer.
async fn place_order(
    State(state): State<AppState>,
    Json(order): Json<NewOrder>,
) -> impl IntoResponse {
    let id = state.orders.fetch_add(1, Ordering::SeqCst) + 1;
{%- if messaging != "none" %}
    let event = OrderPlaced {
        order_id: id,
        item: order.item.clone(),
    };
    if let Err(error) = state.bus.publish(&event).await {
        tracing::error!(%error, "publishing OrderPlaced failed");
        let title = "Could not record the order; try again";
        let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "bus-unavailable", title);
        return problem.into_response();
    }
{%- endif %}
    let order = Order {
        id,
        item: order.item,
    };
    (StatusCode::CREATED, Json(order)).into_response()
}
{%- if downstream_client %}

/// Calls the downstream service's `/health/live` through the chassis client (tracing, retries,
/// circuit breaker).
async fn downstream(State(state): State<AppState>) -> impl IntoResponse {
    match state.downstream.get("/health/live").await {
        Ok(response) => {
            let status = response.status();
            (StatusCode::OK, format!("downstream answered {status}")).into_response()
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}
{%- endif %}

/// The store of idempotency keys{% if idempotency_store != "memory" %}, its readiness check registered{% endif %}.
{%- if idempotency_store == "redis" %}
async fn idempotency_store(ctx: &Context<Settings>) -> chassis::Result<Arc<dyn IdempotencyStore>> {
    let url = &ctx.settings().redis_url;
    let store = chassis::idempotency::RedisStore::connect(url, env!("CARGO_PKG_NAME")).await?;
    ctx.health().register(store.health_check());
    Ok(Arc::new(store))
}
{%- elsif idempotency_store == "postgres" %}
async fn idempotency_store(ctx: &Context<Settings>) -> chassis::Result<Arc<dyn IdempotencyStore>> {
    let store = chassis::idempotency::PostgresStore::connect(&ctx.settings().database_url).await?;
    store.migrate().await?;
    ctx.health().register(store.health_check());
    Ok(Arc::new(store))
}
{%- else %}
async fn idempotency_store(_: &Context<Settings>) -> chassis::Result<Arc<dyn IdempotencyStore>> {
    Ok(Arc::new(chassis::idempotency::MemoryStore::default()))
}
{%- endif %}

/// Builds the service: registers its health checks and subscriptions, returns its routes.
pub async fn init(ctx: Context<Settings>) -> chassis::Result<Router> {
    let settings = ctx.settings().clone();
    let state = AppState {
        greeting: settings.greeting.as_str().into(),
        orders: Arc::default(),
{%- if messaging != "none" %}
        bus: ctx.bus().clone(),
{%- endif %}
{%- if downstream_client %}
        downstream: ctx.client("downstream")?,
{%- endif %}
    };

{%- if messaging != "none" %}

    // Every group subscribed to OrderPlaced gets each one; this is the service's own audit log.
    ctx.subscribe("{{crate_name}}-audit", |incoming: Incoming<OrderPlaced>| async move {
        tracing::info!(order_id = incoming.message.order_id, item = %incoming.message.item, "order placed");
        Ok::<_, std::convert::Infallible>(())
    })
    .await?;
{%- endif %}

    let store = idempotency_store(&ctx).await?;
    let idempotency = IdempotencyLayer::new(store, IdempotencyConfig::default())?;
    let routes = Router::new()
        .route("/hello/{name}", get(hello))
        .route("/orders", post(place_order).layer(idempotency));
{%- if downstream_client %}
    let routes = routes.route("/downstream", get(downstream));
{%- endif %}
    Ok(routes.with_state(state))
}
