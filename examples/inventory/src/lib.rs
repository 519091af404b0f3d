//! The inventory service: reserves stock. Choreographed orders arrive as `OrderPlaced` events
//! and are answered with `StockReserved` or `StockRejected`; the orchestrator calls the HTTP API.
//!
//! | route | |
//! |---|---|
//! | `POST /reservations` | `{"id", "item", "quantity"}` with `Idempotency-Key`; 201, or 409 `out-of-stock` |
//! | `DELETE /reservations/{id}` | releases the stock (compensation); 204, also when there is nothing to release |
//! | `GET /reservations/{id}` | the reservation: `reserved`, `rejected` or `released` |
//! | `GET /stock` | what is left |

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chassis::Context;
use chassis::http::Problem;
use chassis::idempotency::IdempotencyLayer;
use chassis::messaging::Incoming;
use serde::{Deserialize, Serialize};
use shop_contract::events::{OrderPlaced, StockRejected, StockReserved};
use shop_contract::{ServiceSettings, caused_by, not_found, subscribe_once};

/// A reservation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reservation {
    /// The order or checkout it is for.
    pub id: String,
    /// What.
    pub item: String,
    /// How many.
    pub quantity: u32,
    /// `reserved`, `rejected` or `released`.
    pub status: String,
}

#[derive(Clone, Default)]
struct Inventory {
    stock: Arc<Mutex<BTreeMap<String, u32>>>,
    reservations: Arc<Mutex<BTreeMap<String, Reservation>>>,
}

impl Inventory {
    /// Reserves `quantity` of `item` for `id`, or records the rejection. Asking again for the
    /// same id answers what was decided the first time.
    fn reserve(&self, id: &str, item: &str, quantity: u32) -> Reservation {
        let mut reservations = self.reservations.lock().unwrap();
        if let Some(existing) = reservations.get(id) {
            return existing.clone();
        }
        let reserved = match self.stock.lock().unwrap().get_mut(item) {
            Some(left) if *left >= quantity => {
                *left -= quantity;
                true
            }
            _ => false,
        };
        let reservation = Reservation {
            id: id.to_owned(),
            item: item.to_owned(),
            quantity,
            status: if reserved { "reserved" } else { "rejected" }.into(),
        };
        reservations.insert(id.to_owned(), reservation.clone());
        reservation
    }

    fn release(&self, id: &str) {
        if let Some(reservation) = self.reservations.lock().unwrap().get_mut(id)
            && reservation.status == "reserved"
        {
            *self.stock.lock().unwrap().entry(reservation.item.clone()).or_default() += reservation.quantity;
            reservation.status = "released".into();
        }
    }
}

/// `POST /reservations` body.
#[derive(Debug, Deserialize)]
pub struct NewReservation {
    id: String,
    item: String,
    quantity: u32,
}

async fn create(State(inventory): State<Inventory>, Json(new): Json<NewReservation>) -> Response {
    let reservation = inventory.reserve(&new.id, &new.item, new.quantity);
    if reservation.status == "rejected" {
        return Problem::new(StatusCode::CONFLICT, "out-of-stock", "Not enough stock")
            .with_detail(format!("not enough {} in stock for {}", new.item, new.quantity))
            .into_response();
    }
    (StatusCode::CREATED, Json(reservation)).into_response()
}

async fn release(State(inventory): State<Inventory>, Path(id): Path<String>) -> StatusCode {
    inventory.release(&id);
    StatusCode::NO_CONTENT
}

async fn show(State(inventory): State<Inventory>, Path(id): Path<String>) -> Response {
    match inventory.reservations.lock().unwrap().get(&id) {
        Some(r) => Json(r.clone()).into_response(),
        None => not_found("reservation", &id),
    }
}

async fn stock(State(inventory): State<Inventory>) -> Json<BTreeMap<String, u32>> {
    Json(inventory.stock.lock().unwrap().clone())
}

/// The inventory service. Starts with 10 books and 100 pens.
pub async fn service(ctx: Context<ServiceSettings>) -> chassis::Result<Router> {
    let store = ctx.settings().store.idempotency("inventory").await?;
    let state = Inventory::default();
    state
        .stock
        .lock()
        .unwrap()
        .extend([("book".to_owned(), 10), ("pen".to_owned(), 100)]);
    let (inventory, bus) = (state.clone(), ctx.bus().clone());
    subscribe_once(&ctx, &store, "inventory", move |e: Incoming<OrderPlaced>| {
        let (inventory, bus) = (inventory.clone(), bus.clone());
        async move {
            let order = &e.message;
            let reservation = inventory.reserve(&order.order_id.to_string(), &order.item, order.quantity);
            let published = if reservation.status == "reserved" {
                let event = StockReserved {
                    order_id: order.order_id,
                };
                bus.publish_with(&event, caused_by(&e)).await
            } else {
                let event = StockRejected {
                    order_id: order.order_id,
                    reason: format!("not enough {} in stock", order.item),
                };
                bus.publish_with(&event, caused_by(&e)).await
            };
            published.map(|_| ()).map_err(|e| e.to_string())
        }
    })
    .await?;
    let idempotency = IdempotencyLayer::new(store, Default::default())?;
    Ok(Router::new()
        .route("/reservations", post(create).layer(idempotency))
        .route("/reservations/{id}", get(show).delete(release))
        .route("/stock", get(stock))
        .with_state(state))
}
