//! The four back-end services. Each is an ordinary chassis service: an init function returning
//! its routes, subscribing to the events it reacts to.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chassis::Context;
use chassis::http::Problem;
use chassis::idempotency::{IdempotencyLayer, IdempotentConsumer, MemoryStore, Processed};
use chassis::messaging::{Bus, Event, Incoming, Publish};
use serde::{Deserialize, Serialize};

use crate::events::{OrderPlaced, PaymentCaptured, PaymentRefunded, StockRejected, StockReserved};

type Table<T> = Arc<Mutex<BTreeMap<u64, T>>>;

fn not_found(what: &str, id: u64) -> Response {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
        .with_detail(format!("no {what} for order {id}"))
        .into_response()
}

/// Subscribes `group` to `E`, skipping redeliveries of a message already handled (the
/// idempotent consumer), and logging handler errors for the retry machinery.
async fn on<E, F, Fut>(ctx: &Context<()>, group: &str, handler: F) -> chassis::Result<()>
where
    E: Event + Clone,
    F: Fn(Incoming<E>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let consumer = IdempotentConsumer::new(Arc::new(MemoryStore::default()), format!("{group}:{}", E::TYPE));
    ctx.subscribe(group, move |incoming: Incoming<E>| {
        let (consumer, handler) = (consumer.clone(), handler.clone());
        async move {
            let id = incoming.envelope.id.clone();
            match consumer.process(&id, || handler(incoming)).await {
                Ok(Processed::Done(())) | Ok(Processed::Duplicate) => Ok(()),
                Err(error) => Err(error.to_string()),
            }
        }
    })
    .await?;
    Ok(())
}

fn caused_by<E>(incoming: &Incoming<E>) -> Publish {
    Publish {
        subject: incoming.envelope.subject.clone(),
        caused_by: Some(incoming.envelope.clone()),
    }
}

// ---------------------------------------------------------------------------------------------
// orders

/// An order as the orders service sees it: its state follows the other services' events.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct OrderView {
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

impl OrderView {
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

#[derive(Clone)]
struct Orders {
    table: Table<OrderView>,
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
    let view = OrderView {
        id,
        item: new.item.clone(),
        quantity: new.quantity,
        amount_cents: new.amount_cents,
        status: "pending".into(),
        ..Default::default()
    };
    orders.table.lock().unwrap().insert(id, view.clone());
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
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "bus-unavailable", "Try again").into_response();
    }
    (StatusCode::CREATED, Json(view)).into_response()
}

async fn get_order(State(orders): State<Orders>, Path(id): Path<u64>) -> Response {
    match orders.table.lock().unwrap().get(&id) {
        Some(view) => Json(view.clone()).into_response(),
        None => not_found("order", id),
    }
}

fn update(table: &Table<OrderView>, id: u64, change: impl FnOnce(&mut OrderView)) {
    if let Some(view) = table.lock().unwrap().get_mut(&id) {
        change(view);
        view.settle();
    }
}

/// The orders service: takes orders (with `Idempotency-Key`), publishes `OrderPlaced`, and
/// follows the order's state from the events of the others.
pub async fn orders(ctx: Context<()>) -> chassis::Result<Router> {
    let state = Orders {
        table: Table::default(),
        next: Arc::default(),
        bus: ctx.bus().clone(),
    };
    let t = state.table.clone();
    on(&ctx, "orders", move |e: Incoming<StockReserved>| {
        let t = t.clone();
        async move {
            update(&t, e.message.order_id, |o| o.stock_reserved = true);
            Ok(())
        }
    })
    .await?;
    let t = state.table.clone();
    on(&ctx, "orders", move |e: Incoming<PaymentCaptured>| {
        let t = t.clone();
        async move {
            update(&t, e.message.order_id, |o| o.paid = true);
            Ok(())
        }
    })
    .await?;
    let t = state.table.clone();
    on(&ctx, "orders", move |e: Incoming<StockRejected>| {
        let t = t.clone();
        async move {
            update(&t, e.message.order_id, |o| {
                o.status = "cancelled".into();
                o.reason = Some(e.message.reason.clone());
            });
            Ok(())
        }
    })
    .await?;
    let t = state.table.clone();
    on(&ctx, "orders", move |e: Incoming<PaymentRefunded>| {
        let t = t.clone();
        async move {
            update(&t, e.message.order_id, |o| o.refunded = true);
            Ok(())
        }
    })
    .await?;
    let idempotency = IdempotencyLayer::new(Arc::new(MemoryStore::default()), Default::default())?;
    Ok(Router::new()
        .route("/orders", post(place_order).layer(idempotency))
        .route("/orders/{id}", get(get_order))
        .with_state(state))
}

// ---------------------------------------------------------------------------------------------
// inventory

#[derive(Debug, Clone, Serialize)]
struct Reservation {
    order_id: u64,
    item: String,
    quantity: u32,
    status: &'static str,
}

#[derive(Clone)]
struct Inventory {
    stock: Arc<Mutex<BTreeMap<String, u32>>>,
    reservations: Table<Reservation>,
}

async fn get_reservation(State(inventory): State<Inventory>, Path(id): Path<u64>) -> Response {
    match inventory.reservations.lock().unwrap().get(&id) {
        Some(r) => Json(r.clone()).into_response(),
        None => not_found("reservation", id),
    }
}

/// The inventory service: reserves stock for each placed order, or rejects it.
pub async fn inventory(ctx: Context<()>) -> chassis::Result<Router> {
    let state = Inventory {
        stock: Arc::new(Mutex::new(BTreeMap::from([("book".into(), 10), ("pen".into(), 100)]))),
        reservations: Table::default(),
    };
    let (s, bus) = (state.clone(), ctx.bus().clone());
    on(&ctx, "inventory", move |e: Incoming<OrderPlaced>| {
        let (s, bus) = (s.clone(), bus.clone());
        async move {
            let order = &e.message;
            let reserved = {
                let mut stock = s.stock.lock().unwrap();
                match stock.get_mut(&order.item) {
                    Some(left) if *left >= order.quantity => {
                        *left -= order.quantity;
                        true
                    }
                    _ => false,
                }
            };
            let reservation = Reservation {
                order_id: order.order_id,
                item: order.item.clone(),
                quantity: order.quantity,
                status: if reserved { "reserved" } else { "rejected" },
            };
            s.reservations.lock().unwrap().insert(order.order_id, reservation);
            let result = if reserved {
                let event = StockReserved {
                    order_id: order.order_id,
                };
                bus.publish_with(&event, caused_by(&e)).await
            } else {
                let reason = format!("not enough {} in stock", order.item);
                let event = StockRejected {
                    order_id: order.order_id,
                    reason,
                };
                bus.publish_with(&event, caused_by(&e)).await
            };
            result.map(|_| ()).map_err(|e| e.to_string())
        }
    })
    .await?;
    Ok(Router::new()
        .route("/reservations/{id}", get(get_reservation))
        .with_state(state))
}

// ---------------------------------------------------------------------------------------------
// payments

#[derive(Debug, Clone, Serialize)]
struct Payment {
    order_id: u64,
    amount_cents: u64,
    status: &'static str,
}

#[derive(Clone)]
struct Payments {
    payments: Table<Payment>,
    failing: Arc<AtomicBool>,
}

async fn get_payment(State(payments): State<Payments>, Path(id): Path<u64>) -> Response {
    if payments.failing.load(Ordering::SeqCst) {
        return Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "payments-down",
            "Payments are failing (demo switch)",
        )
        .into_response();
    }
    match payments.payments.lock().unwrap().get(&id) {
        Some(p) => Json(p.clone()).into_response(),
        None => not_found("payment", id),
    }
}

/// `POST /admin/failure` body: make the payments API fail, to watch breakers open.
#[derive(Debug, Deserialize)]
pub struct Failure {
    failing: bool,
}

async fn set_failure(State(payments): State<Payments>, Json(failure): Json<Failure>) -> StatusCode {
    payments.failing.store(failure.failing, Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

/// The payments service: captures the amount of each placed order, refunds it when the stock
/// reservation is rejected (compensation by event).
pub async fn payments(ctx: Context<()>) -> chassis::Result<Router> {
    let state = Payments {
        payments: Table::default(),
        failing: Arc::default(),
    };
    let (s, bus) = (state.clone(), ctx.bus().clone());
    on(&ctx, "payments", move |e: Incoming<OrderPlaced>| {
        let (s, bus) = (s.clone(), bus.clone());
        async move {
            let payment = Payment {
                order_id: e.message.order_id,
                amount_cents: e.message.amount_cents,
                status: "captured",
            };
            s.payments.lock().unwrap().insert(e.message.order_id, payment);
            let event = PaymentCaptured {
                order_id: e.message.order_id,
                amount_cents: e.message.amount_cents,
            };
            bus.publish_with(&event, caused_by(&e))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await?;
    let (s, bus) = (state.clone(), ctx.bus().clone());
    on(&ctx, "payments", move |e: Incoming<StockRejected>| {
        let (s, bus) = (s.clone(), bus.clone());
        async move {
            let refunded = {
                let mut payments = s.payments.lock().unwrap();
                match payments.get_mut(&e.message.order_id) {
                    Some(p) if p.status == "captured" => {
                        p.status = "refunded";
                        Some(p.amount_cents)
                    }
                    // The capture has not been seen yet: fail, so the retry finds it.
                    None => return Err(format!("no payment for order {} yet", e.message.order_id)),
                    Some(_) => None,
                }
            };
            if let Some(amount_cents) = refunded {
                let event = PaymentRefunded {
                    order_id: e.message.order_id,
                    amount_cents,
                };
                bus.publish_with(&event, caused_by(&e))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    })
    .await?;
    Ok(Router::new()
        .route("/payments/{id}", get(get_payment))
        .route("/admin/failure", post(set_failure))
        .with_state(state))
}

// ---------------------------------------------------------------------------------------------
// notifications

type Outbox = Arc<Mutex<Vec<String>>>;

async fn notify<E: Event + Clone>(ctx: &Context<()>, outbox: &Outbox, text: fn(&E) -> String) -> chassis::Result<()> {
    let outbox = outbox.clone();
    on(ctx, "notifications", move |e: Incoming<E>| {
        let outbox = outbox.clone();
        async move {
            outbox.lock().unwrap().push(text(&e.message));
            Ok(())
        }
    })
    .await
}

/// The notifications service: one message per event it hears of.
pub async fn notifications(ctx: Context<()>) -> chassis::Result<Router> {
    let outbox = Outbox::default();
    notify(&ctx, &outbox, |e: &OrderPlaced| {
        format!("order {} placed: {} x {}", e.order_id, e.quantity, e.item)
    })
    .await?;
    notify(&ctx, &outbox, |e: &PaymentCaptured| {
        format!("order {} paid", e.order_id)
    })
    .await?;
    notify(&ctx, &outbox, |e: &StockRejected| {
        format!("order {} cancelled: {}", e.order_id, e.reason)
    })
    .await?;
    notify(&ctx, &outbox, |e: &PaymentRefunded| {
        format!("order {} refunded", e.order_id)
    })
    .await?;
    Ok(Router::new().route(
        "/notifications",
        get(move || {
            let outbox = outbox.clone();
            async move { Json(outbox.lock().unwrap().clone()) }
        }),
    ))
}
