//! The orders service: takes orders with an `Idempotency-Key`, publishes `OrderPlaced` (fanned
//! out to inventory, payments and notifications), and follows each order's state from the
//! events those services publish back (choreography).
//!
//! | route | |
//! |---|---|
//! | `POST /orders` | `{"item", "quantity", "amount_cents"}` with `Idempotency-Key`; 201 with the order |
//! | `GET /orders/{id}` | the order: `pending`, `confirmed` or `cancelled`, with what happened |

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
use chassis::idempotency::IdempotencyLayer;
use chassis::messaging::{Bus, Incoming, Publish};
use serde::{Deserialize, Serialize};
use shop_contract::events::{OrderPlaced, PaymentCaptured, PaymentRefunded, StockRejected, StockReserved};
use shop_contract::{ServiceSettings, not_found, subscribe_once};

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
}

impl Order {
    fn settle(&mut self) {
        if self.status == "pending" && self.stock_reserved && self.paid {
            self.status = "confirmed".into();
        }
    }
}

/// `POST /orders` body.
#[derive(Debug, Deserialize)]
pub struct NewOrder {
    item: String,
    quantity: u32,
    amount_cents: u64,
}

type Table = Arc<Mutex<BTreeMap<u64, Order>>>;

#[derive(Clone)]
struct Orders {
    table: Table,
    next: Arc<AtomicU64>,
    bus: Bus,
}

async fn place_order(State(orders): State<Orders>, Json(new): Json<NewOrder>) -> Response {
    if new.quantity == 0 {
        return Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-order",
            "Quantity must be at least 1",
        )
        .into_response();
    }
    let id = orders.next.fetch_add(1, Ordering::SeqCst) + 1;
    let order = Order {
        id,
        item: new.item.clone(),
        quantity: new.quantity,
        amount_cents: new.amount_cents,
        status: "pending".into(),
        ..Default::default()
    };
    orders.table.lock().unwrap().insert(id, order.clone());
    let event = OrderPlaced {
        order_id: id,
        item: new.item,
        quantity: new.quantity,
        amount_cents: new.amount_cents,
    };
    let publish = Publish {
        subject: Some(id.to_string()),
        caused_by: None,
    };
    if let Err(error) = orders.bus.publish_with(&event, publish).await {
        tracing::error!(%error, "publishing OrderPlaced failed");
        orders.table.lock().unwrap().remove(&id);
        // A 5xx releases the idempotency key, so the client's retry places the order afresh.
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "bus-unavailable", "Try again")
            .with_detail(error.to_string())
            .into_response();
    }
    (StatusCode::CREATED, Json(order)).into_response()
}

async fn get_order(State(orders): State<Orders>, Path(id): Path<u64>) -> Response {
    match orders.table.lock().unwrap().get(&id) {
        Some(order) => Json(order.clone()).into_response(),
        None => not_found("order", &id.to_string()),
    }
}

/// Subscribes the orders group to `E`, applying `change` to the order the event is about.
async fn follow<E: chassis::messaging::Event + Clone>(
    ctx: &Context<ServiceSettings>,
    store: &Arc<dyn chassis::idempotency::IdempotencyStore>,
    table: &Table,
    order_id: fn(&E) -> u64,
    change: fn(&E, &mut Order),
) -> chassis::Result<()> {
    let table = table.clone();
    subscribe_once(ctx, store, "orders", move |e: Incoming<E>| {
        let table = table.clone();
        async move {
            let id = order_id(&e.message);
            match table.lock().unwrap().get_mut(&id) {
                Some(order) => {
                    change(&e.message, order);
                    order.settle();
                    Ok(())
                }
                None => Err(format!("no order {id}")),
            }
        }
    })
    .await
}

/// The orders service.
pub async fn service(ctx: Context<ServiceSettings>) -> chassis::Result<Router> {
    let store = ctx.settings().store.idempotency("orders").await?;
    let state = Orders {
        table: Table::default(),
        next: Arc::default(),
        bus: ctx.bus().clone(),
    };
    let table = &state.table;
    follow(
        &ctx,
        &store,
        table,
        |e: &StockReserved| e.order_id,
        |_, o| o.stock_reserved = true,
    )
    .await?;
    follow(
        &ctx,
        &store,
        table,
        |e: &PaymentCaptured| e.order_id,
        |_, o| o.paid = true,
    )
    .await?;
    follow(
        &ctx,
        &store,
        table,
        |e: &PaymentRefunded| e.order_id,
        |_, o| o.refunded = true,
    )
    .await?;
    follow(
        &ctx,
        &store,
        table,
        |e: &StockRejected| e.order_id,
        |e, o| {
            o.status = "cancelled".into();
            o.reason = Some(e.reason.clone());
        },
    )
    .await?;
    let idempotency = IdempotencyLayer::new(store, Default::default())?;
    Ok(Router::new()
        .route("/orders", post(place_order).layer(idempotency))
        .route("/orders/{id}", get(get_order))
        .with_state(state))
}
