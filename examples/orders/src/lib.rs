//! The orders service: takes orders with an `Idempotency-Key`, publishes `OrderPlaced` (fanned
//! out to inventory, payments and notifications), and follows each order's state from the
//! events those services publish back (choreography).
//!
//! With `[postgres]` configured the orders are rows of `shop_orders`: placing one writes the
//! row, the stored response and `OrderPlaced` (through the outbox) in one transaction, and the
//! events that follow are applied through the inbox. Without it, they live in memory.
//!
//! | route | |
//! |---|---|
//! | `POST /orders` | `{"item", "quantity", "amount_cents"}` with `Idempotency-Key`; 201 with the order |
//! | `GET /orders/{id}` | the order: `pending`, `confirmed` or `cancelled`, with what happened |
//!
//! Both need the caller's identity, which the gateway signs into the identity header: an order
//! belongs to the client that placed it, and to every other client it answers 404.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chassis::Context;
use chassis::http::Problem;
use chassis::idempotency::IdempotencyConfig;
use chassis::identity::Identity;
use chassis::messaging::{Bus, Event, Incoming, Publish};
use chassis::storage::Transaction;
use serde::{Deserialize, Serialize};
use shop_contract::events::{OrderPlaced, PaymentCaptured, PaymentRefunded, StockRejected, StockReserved};
use shop_contract::{Persistence, ServiceSettings, Work, not_found};
use sqlx::Row as _;

/// The orders table, created at start with PostgreSQL.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS shop_orders (
    id             BIGSERIAL   PRIMARY KEY,
    item           TEXT        NOT NULL,
    quantity       INTEGER     NOT NULL,
    amount_cents   BIGINT      NOT NULL,
    status         TEXT        NOT NULL,
    stock_reserved BOOLEAN     NOT NULL DEFAULT false,
    paid           BOOLEAN     NOT NULL DEFAULT false,
    refunded       BOOLEAN     NOT NULL DEFAULT false,
    reason         TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE shop_orders ADD COLUMN IF NOT EXISTS owner TEXT NOT NULL DEFAULT ''";

/// An order as the orders service sees it: its state follows the other services' events.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Order {
    /// The order id.
    pub id: u64,
    /// What was ordered.
    pub item: String,
    /// How many.
    pub quantity: u32,
    /// The price.
    pub amount_cents: u64,
    /// `pending`, `confirmed` (stock reserved and paid) or `cancelled`.
    pub status: String,
    /// Stock was reserved.
    pub stock_reserved: bool,
    /// Payment was captured.
    pub paid: bool,
    /// Payment was refunded (compensation after a rejected reservation).
    pub refunded: bool,
    /// Why it was cancelled.
    pub reason: Option<String>,
    /// The client that placed it (its identity's scope); only that client sees it.
    #[serde(skip)]
    pub owner: String,
}

impl Order {
    fn settle(&mut self) {
        if self.status == "pending" && self.stock_reserved && self.paid {
            self.status = "confirmed".into();
        }
    }

    fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get::<i64, _>("id")? as u64,
            item: row.try_get("item")?,
            quantity: row.try_get::<i32, _>("quantity")? as u32,
            amount_cents: row.try_get::<i64, _>("amount_cents")? as u64,
            status: row.try_get("status")?,
            stock_reserved: row.try_get("stock_reserved")?,
            paid: row.try_get("paid")?,
            refunded: row.try_get("refunded")?,
            reason: row.try_get("reason")?,
            owner: row.try_get("owner")?,
        })
    }
}

/// `POST /orders` body.
#[derive(Debug, Deserialize)]
pub struct NewOrder {
    item: String,
    quantity: u32,
    amount_cents: u64,
}

/// Where the orders are: in memory, or in `shop_orders`.
#[derive(Clone)]
enum Book {
    Memory {
        table: Arc<Mutex<BTreeMap<u64, Order>>>,
        next: Arc<AtomicU64>,
    },
    Postgres(sqlx::PgPool),
}

const COLUMNS: &str = "id, item, quantity, amount_cents, status, stock_reserved, paid, refunded, reason, owner";

impl Book {
    /// Writes a new order of `owner` in `work`.
    async fn place(&self, work: &Work, new: &NewOrder, owner: String) -> Result<Order, String> {
        let mut order = Order {
            item: new.item.clone(),
            quantity: new.quantity,
            amount_cents: new.amount_cents,
            status: "pending".into(),
            owner,
            ..Default::default()
        };
        match (self, work.transaction()) {
            (Book::Memory { table, next }, _) => {
                order.id = next.fetch_add(1, Ordering::SeqCst) + 1;
                table.lock().unwrap().insert(order.id, order.clone());
            }
            (Book::Postgres(_), Some(tx)) => {
                let mut connection = tx.lock().await.map_err(|e| e.to_string())?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO shop_orders (item, quantity, amount_cents, status, owner) VALUES ($1, $2, $3, 'pending', $4) RETURNING id",
                )
                .bind(&order.item)
                .bind(order.quantity as i32)
                .bind(order.amount_cents as i64)
                .bind(&order.owner)
                .fetch_one(&mut *connection)
                .await
                .map_err(|e| e.to_string())?;
                order.id = id as u64;
            }
            (Book::Postgres(_), None) => return Err("no transaction".into()),
        }
        Ok(order)
    }

    async fn get(&self, id: u64) -> Result<Option<Order>, String> {
        match self {
            Book::Memory { table, .. } => Ok(table.lock().unwrap().get(&id).cloned()),
            Book::Postgres(pool) => {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM shop_orders WHERE id = $1"
                )))
                .bind(id as i64)
                .fetch_optional(pool)
                .await
                .map_err(|e| e.to_string())?;
                row.as_ref().map(Order::from_row).transpose().map_err(|e| e.to_string())
            }
        }
    }

    /// Applies `change` to order `id` in `work`; an unknown order is an error, so the bus
    /// retries (the event may have overtaken the order's own commit).
    async fn apply(&self, work: &Work, id: u64, change: impl FnOnce(&mut Order)) -> Result<(), String> {
        match (self, work.transaction()) {
            (Book::Memory { table, .. }, _) => match table.lock().unwrap().get_mut(&id) {
                Some(order) => {
                    change(order);
                    order.settle();
                    Ok(())
                }
                None => Err(format!("no order {id}")),
            },
            (Book::Postgres(_), Some(tx)) => {
                let mut connection = tx.lock().await.map_err(|e| e.to_string())?;
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM shop_orders WHERE id = $1 FOR UPDATE"
                )))
                .bind(id as i64)
                .fetch_optional(&mut *connection)
                .await
                .map_err(|e| e.to_string())?;
                let mut order = match row {
                    Some(row) => Order::from_row(&row).map_err(|e| e.to_string())?,
                    None => return Err(format!("no order {id}")),
                };
                change(&mut order);
                order.settle();
                sqlx::query(
                    "UPDATE shop_orders SET status = $2, stock_reserved = $3, paid = $4, refunded = $5, reason = $6 WHERE id = $1",
                )
                .bind(id as i64)
                .bind(&order.status)
                .bind(order.stock_reserved)
                .bind(order.paid)
                .bind(order.refunded)
                .bind(&order.reason)
                .execute(&mut *connection)
                .await
                .map_err(|e| e.to_string())?;
                Ok(())
            }
            (Book::Postgres(_), None) => Err("no transaction".into()),
        }
    }
}

#[derive(Clone)]
struct Orders {
    book: Book,
    persistence: Persistence,
    bus: Bus,
}

async fn place_order(
    State(orders): State<Orders>,
    identity: Identity,
    tx: Option<Transaction>,
    Json(new): Json<NewOrder>,
) -> Response {
    if new.quantity == 0 {
        return Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-order",
            "Quantity must be at least 1",
        )
        .into_response();
    }
    let placed = async {
        let work = orders.persistence.work(&orders.bus, tx)?;
        let order = orders.book.place(&work, &new, identity.scope()).await?;
        let event = OrderPlaced {
            order_id: order.id,
            item: new.item.clone(),
            quantity: new.quantity,
            amount_cents: new.amount_cents,
        };
        let publish = Publish {
            subject: Some(order.id.to_string()),
            caused_by: None,
        };
        work.publish(&event, publish).await?;
        Ok::<_, String>(order)
    }
    .await;
    match placed {
        Ok(order) => (StatusCode::CREATED, Json(order)).into_response(),
        Err(error) => {
            tracing::error!(%error, "placing the order failed");
            // A 5xx rolls the transaction back and releases the idempotency key: the client's
            // retry places the order afresh, and nothing of this attempt remains.
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "order-not-placed", "Try again")
                .with_detail(error)
                .into_response()
        }
    }
}

/// The order, to the client that placed it; to any other it does not exist.
async fn get_order(State(orders): State<Orders>, identity: Identity, Path(id): Path<u64>) -> Response {
    match orders.book.get(id).await {
        Ok(Some(order)) if order.owner == identity.scope() => Json(order).into_response(),
        Ok(_) => not_found("order", &id.to_string()),
        Err(error) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "orders-unavailable", "Try again")
            .with_detail(error)
            .into_response(),
    }
}

/// Subscribes the orders group to `E`, applying `change` to the order the event is about.
async fn follow<E: Event + Clone>(
    ctx: &Context<ServiceSettings>,
    orders: &Orders,
    order_id: fn(&E) -> u64,
    change: fn(&E, &mut Order),
) -> chassis::Result<()> {
    let book = orders.book.clone();
    orders
        .persistence
        .subscribe(ctx, "orders", move |e: Incoming<E>, work: Work| {
            let book = book.clone();
            async move {
                let id = order_id(&e.message);
                book.apply(&work, id, |order| change(&e.message, order)).await
            }
        })
        .await
}

/// The orders service.
pub async fn service(ctx: Context<ServiceSettings>) -> chassis::Result<Router> {
    let persistence = Persistence::of(&ctx, &ctx.settings().store, "orders", SCHEMA).await?;
    let book = match persistence.pool() {
        Some(pool) => Book::Postgres(pool.clone()),
        None => Book::Memory {
            table: Arc::default(),
            next: Arc::default(),
        },
    };
    let state = Orders {
        book,
        persistence: persistence.clone(),
        bus: ctx.bus().clone(),
    };
    follow(
        &ctx,
        &state,
        |e: &StockReserved| e.order_id,
        |_, o| o.stock_reserved = true,
    )
    .await?;
    follow(&ctx, &state, |e: &PaymentCaptured| e.order_id, |_, o| o.paid = true).await?;
    follow(&ctx, &state, |e: &PaymentRefunded| e.order_id, |_, o| o.refunded = true).await?;
    follow(
        &ctx,
        &state,
        |e: &StockRejected| e.order_id,
        |e, o| {
            o.status = "cancelled".into();
            o.reason = Some(e.reason.clone());
        },
    )
    .await?;
    Ok(Router::new()
        .route(
            "/orders",
            post(place_order).layer(
                persistence.idempotency(
                    IdempotencyConfig::default()
                        .with_namespace("orders")
                        .requiring_identity(),
                )?,
            ),
        )
        .route("/orders/{id}", get(get_order))
        .with_state(state))
}
