//! {{description}}

use std::sync::Arc;
{%- if idempotency_store != "postgres" %}
use std::sync::atomic::{AtomicU64, Ordering};
{%- endif %}

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chassis::Context;
{%- if messaging != "none" or idempotency_store == "postgres" or downstream_client %}
use chassis::http::Problem;
{%- endif %}
{%- if idempotency_store == "postgres" %}
use chassis::idempotency::{IdempotencyConfig, IdempotencyLayer, PostgresStore};
{%- else %}
use chassis::idempotency::{IdempotencyConfig, IdempotencyLayer, IdempotencyStore};
{%- endif %}
{%- if messaging != "none" and idempotency_store == "postgres" %}
use chassis::messaging::{Event, Incoming, Message};
{%- elsif messaging != "none" %}
use chassis::messaging::{Bus, Event, Incoming, Message};
{%- endif %}
{%- if idempotency_store == "postgres" %}
use chassis::storage::Transaction;
{%- endif %}
use serde::{Deserialize, Serialize};

/// The service's own settings: every key of `config/*.toml` outside the chassis' sections, or
/// `APP__<KEY>` environment variables.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Greeting used by `GET /hello/{name}`.
    pub greeting: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            greeting: "Hello".into(),
        }
    }
}
{%- if idempotency_store == "postgres" %}

/// The service's tables, created at start (under the chassis' migration lock, so replicas
/// starting together take turns).
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS orders (
    id         BIGSERIAL   PRIMARY KEY,
    item       TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";
{%- endif %}
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
{%- if idempotency_store == "postgres" %}
{%- if messaging != "none" %}
    outbox: chassis::outbox::Outbox,
{%- endif %}
{%- else %}
    orders: Arc<AtomicU64>,
{%- if messaging != "none" %}
    bus: Bus,
{%- endif %}
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

{%- if idempotency_store == "postgres" %}
/// Creates an order. Guarded by `Idempotency-Key` in transactional mode: the order row, the
/// stored response{% if messaging != "none" %} and `OrderPlaced` (through the outbox){% endif %} commit in one
/// transaction, so a retried, cancelled or failed request takes effect once or not at all.
async fn place_order(
    State(state): State<AppState>,
    tx: Transaction,
    Json(order): Json<NewOrder>,
) -> axum::response::Response {
    let placed = async {
        let mut connection = tx.lock().await.map_err(|e| e.to_string())?;
        let id: i64 = sqlx::query_scalar("INSERT INTO orders (item) VALUES ($1) RETURNING id")
            .bind(&order.item)
            .fetch_one(&mut *connection)
            .await
            .map_err(|e| e.to_string())?;
{%- if messaging != "none" %}
        let event = OrderPlaced {
            order_id: id as u64,
            item: order.item.clone(),
        };
        let added = state.outbox.add(&mut connection, &event).await;
        added.map_err(|e| e.to_string())?;
{%- else %}
        let _ = &state;
{%- endif %}
        Ok::<_, String>(id as u64)
    }
    .await;
    match placed {
        Ok(id) => {
            let order = Order {
                id,
                item: order.item,
            };
            (StatusCode::CREATED, Json(order)).into_response()
        }
        Err(error) => {
            tracing::error!(%error, "placing the order failed");
            // A 5xx rolls the transaction back and frees the key: the retry runs afresh.
            let title = "Could not record the order; try again";
            let problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "order-not-placed", title);
            problem.with_detail(error).into_response()
        }
    }
}
{%- else %}
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
{%- endif %}
{%- if downstream_client %}

/// Calls the downstream service's `/health/live` through the chassis client (tracing, retries,
/// circuit breaker); a failed call is a 502 problem saying why.
async fn downstream(State(state): State<AppState>) -> impl IntoResponse {
    match state.downstream.get("/health/live").await {
        Ok(response) => {
            let status = response.status();
            (StatusCode::OK, format!("downstream answered {status}")).into_response()
        }
        Err(error) => {
            let title = "Downstream unavailable";
            Problem::new(StatusCode::BAD_GATEWAY, "downstream-unavailable", title)
                .with_detail(error.to_string())
                .into_response()
        }
    }
}
{%- endif %}
{%- if idempotency_store == "redis" %}

/// The store of idempotency keys: the chassis' `[redis]` connection.
fn idempotency_store(ctx: &Context<Settings>) -> chassis::Result<Arc<dyn IdempotencyStore>> {
    let namespace = env!("CARGO_PKG_NAME");
    let store = chassis::idempotency::RedisStore::from_connection(ctx.redis()?, namespace);
    Ok(Arc::new(store))
}
{%- elsif idempotency_store == "memory" %}

/// The store of idempotency keys.
fn idempotency_store(_: &Context<Settings>) -> chassis::Result<Arc<dyn IdempotencyStore>> {
    Ok(Arc::new(chassis::idempotency::MemoryStore::default()))
}
{%- endif %}

/// Builds the service: registers its subscriptions, returns its routes.
pub async fn init(ctx: Context<Settings>) -> chassis::Result<Router> {
    let settings = ctx.settings().clone();
{%- if idempotency_store == "postgres" %}
    // `[postgres]`: the runtime connected the pool, created the chassis' tables and registered
    // the `postgres:connections` readiness check.
    let pool = ctx.postgres()?.clone();
    chassis::storage::migrate(&pool, &[SCHEMA]).await?;
{%- endif %}
    let state = AppState {
        greeting: settings.greeting.as_str().into(),
{%- if idempotency_store == "postgres" %}
{%- if messaging != "none" %}
        outbox: ctx.outbox()?,
{%- endif %}
{%- else %}
        orders: Arc::default(),
{%- if messaging != "none" %}
        bus: ctx.bus().clone(),
{%- endif %}
{%- endif %}
{%- if downstream_client %}
        downstream: ctx.client("downstream")?,
{%- endif %}
    };

{%- if messaging != "none" %}
{%- if idempotency_store == "postgres" %}

    // Every group subscribed to OrderPlaced gets each one; this is the service's own audit log.
    // The inbox records each message in the handler's transaction: a redelivery is skipped.
    let audit = ctx.inbox()?.handler(
        "{{crate_name}}-audit:order.placed",
        |incoming: Incoming<OrderPlaced>, _tx: Transaction| async move {
            tracing::info!(order_id = incoming.message.order_id, item = %incoming.message.item, "order placed");
            Ok::<_, std::convert::Infallible>(())
        },
    );
    ctx.subscribe("{{crate_name}}-audit", audit).await?;
{%- else %}

    // Every group subscribed to OrderPlaced gets each one; this is the service's own audit log.
    ctx.subscribe("{{crate_name}}-audit", |incoming: Incoming<OrderPlaced>| async move {
        tracing::info!(order_id = incoming.message.order_id, item = %incoming.message.item, "order placed");
        Ok::<_, std::convert::Infallible>(())
    })
    .await?;
{%- endif %}
{%- endif %}

{%- if idempotency_store == "postgres" %}
    let store = PostgresStore::from_pool(pool);
    let config = IdempotencyConfig::default().with_namespace(env!("CARGO_PKG_NAME"));
    let idempotency = IdempotencyLayer::transactional(store, config)?;
{%- else %}
    let store = idempotency_store(&ctx)?;
    let config = IdempotencyConfig::default().with_namespace(env!("CARGO_PKG_NAME"));
    let idempotency = IdempotencyLayer::new(store, config)?;
{%- endif %}
    let routes = Router::new()
        .route("/hello/{name}", get(hello))
        .route("/orders", post(place_order).layer(idempotency));
{%- if downstream_client %}
    let routes = routes.route("/downstream", get(downstream));
{%- endif %}
    Ok(routes.with_state(state))
}
