//! The inventory service: reserves stock. Choreographed orders arrive as `OrderPlaced` events
//! and are answered with `StockReserved` or `StockRejected`; the orchestrator calls the HTTP API.
//! With `[postgres]` the stock and reservations are tables, changed in the inbox's (or the
//! idempotent request's) transaction together with the events they cause.
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
use chassis::idempotency::IdempotencyConfig;
use chassis::messaging::Incoming;
use chassis::storage::Transaction;
use serde::{Deserialize, Serialize};
use shop_contract::events::{OrderPlaced, StockRejected, StockReserved};
use shop_contract::{Persistence, ServiceSettings, Work, caused_by, not_found};

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

/// The stock and reservations tables, created at start with PostgreSQL (10 books and 100 pens).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS shop_stock (item TEXT PRIMARY KEY, quantity INTEGER NOT NULL);
INSERT INTO shop_stock (item, quantity) VALUES ('book', 10), ('pen', 100) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS shop_reservations (
    id         TEXT        PRIMARY KEY,
    item       TEXT        NOT NULL,
    quantity   INTEGER     NOT NULL,
    status     TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);";

/// Stock and reservations in memory.
#[derive(Clone, Default)]
struct Memory {
    stock: Arc<Mutex<BTreeMap<String, u32>>>,
    reservations: Arc<Mutex<BTreeMap<String, Reservation>>>,
}

impl Memory {
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

/// The same in PostgreSQL, within the caller's transaction.
mod sql {
    use sqlx::{PgConnection, Row as _};

    use super::Reservation;

    fn reservation(row: &sqlx::postgres::PgRow) -> Result<Reservation, sqlx::Error> {
        Ok(Reservation {
            id: row.try_get("id")?,
            item: row.try_get("item")?,
            quantity: row.try_get::<i32, _>("quantity")? as u32,
            status: row.try_get("status")?,
        })
    }

    pub(super) async fn get(connection: &mut PgConnection, id: &str) -> Result<Option<Reservation>, sqlx::Error> {
        let row = sqlx::query("SELECT id, item, quantity, status FROM shop_reservations WHERE id = $1")
            .bind(id)
            .fetch_optional(connection)
            .await?;
        row.as_ref().map(reservation).transpose()
    }

    pub(super) async fn reserve(
        connection: &mut PgConnection,
        id: &str,
        item: &str,
        quantity: u32,
    ) -> Result<Reservation, sqlx::Error> {
        if let Some(existing) = get(connection, id).await? {
            return Ok(existing);
        }
        let taken = sqlx::query("UPDATE shop_stock SET quantity = quantity - $2 WHERE item = $1 AND quantity >= $2")
            .bind(item)
            .bind(quantity as i32)
            .execute(&mut *connection)
            .await?
            .rows_affected();
        let status = if taken == 1 { "reserved" } else { "rejected" };
        sqlx::query("INSERT INTO shop_reservations (id, item, quantity, status) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(item)
            .bind(quantity as i32)
            .bind(status)
            .execute(&mut *connection)
            .await?;
        Ok(Reservation {
            id: id.to_owned(),
            item: item.to_owned(),
            quantity,
            status: status.into(),
        })
    }

    pub(super) async fn release(connection: &mut PgConnection, id: &str) -> Result<(), sqlx::Error> {
        let released = sqlx::query(
            "UPDATE shop_reservations SET status = 'released' WHERE id = $1 AND status = 'reserved' RETURNING item, quantity",
        )
        .bind(id)
        .fetch_optional(&mut *connection)
        .await?;
        if let Some(row) = released {
            sqlx::query("UPDATE shop_stock SET quantity = quantity + $2 WHERE item = $1")
                .bind(row.try_get::<String, _>("item")?)
                .bind(row.try_get::<i32, _>("quantity")?)
                .execute(connection)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn stock(connection: &mut PgConnection) -> Result<Vec<(String, i32)>, sqlx::Error> {
        sqlx::query_as("SELECT item, quantity FROM shop_stock ORDER BY item")
            .fetch_all(connection)
            .await
    }
}

#[derive(Clone)]
struct Inventory {
    memory: Memory,
    persistence: Persistence,
    bus: chassis::messaging::Bus,
}

impl Inventory {
    /// Reserves in `work`: in memory, or in its transaction.
    async fn reserve(&self, work: &Work, id: &str, item: &str, quantity: u32) -> Result<Reservation, String> {
        match work.transaction() {
            None => Ok(self.memory.reserve(id, item, quantity)),
            Some(tx) => {
                let mut connection = tx.lock().await.map_err(|e| e.to_string())?;
                sql::reserve(&mut connection, id, item, quantity)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }
}

fn unavailable(error: impl std::fmt::Display) -> Response {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "inventory-unavailable", "Try again")
        .with_detail(error.to_string())
        .into_response()
}

/// `POST /reservations` body.
#[derive(Debug, Deserialize)]
pub struct NewReservation {
    id: String,
    item: String,
    quantity: u32,
}

async fn create(
    State(inventory): State<Inventory>,
    tx: Option<Transaction>,
    Json(new): Json<NewReservation>,
) -> Response {
    let reserved = async {
        let work = inventory.persistence.work(&inventory.bus, tx)?;
        inventory.reserve(&work, &new.id, &new.item, new.quantity).await
    }
    .await;
    let reservation = match reserved {
        Ok(reservation) => reservation,
        Err(error) => return unavailable(error),
    };
    if reservation.status == "rejected" {
        return Problem::new(StatusCode::CONFLICT, "out-of-stock", "Not enough stock")
            .with_detail(format!("not enough {} in stock for {}", new.item, new.quantity))
            .into_response();
    }
    (StatusCode::CREATED, Json(reservation)).into_response()
}

async fn release(State(inventory): State<Inventory>, Path(id): Path<String>) -> Response {
    let Some(pool) = inventory.persistence.pool() else {
        inventory.memory.release(&id);
        return StatusCode::NO_CONTENT.into_response();
    };
    let released = async {
        let mut tx = pool.begin().await?;
        sql::release(&mut tx, &id).await?;
        tx.commit().await
    }
    .await;
    match released {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => unavailable(error),
    }
}

async fn show(State(inventory): State<Inventory>, Path(id): Path<String>) -> Response {
    let found = match inventory.persistence.pool() {
        None => Ok(inventory.memory.reservations.lock().unwrap().get(&id).cloned()),
        Some(pool) => match pool.acquire().await {
            Ok(mut connection) => sql::get(&mut connection, &id).await,
            Err(error) => Err(error),
        },
    };
    match found {
        Ok(Some(r)) => Json(r).into_response(),
        Ok(None) => not_found("reservation", &id),
        Err(error) => unavailable(error),
    }
}

async fn stock(State(inventory): State<Inventory>) -> Response {
    let Some(pool) = inventory.persistence.pool() else {
        return Json(inventory.memory.stock.lock().unwrap().clone()).into_response();
    };
    let stock = match pool.acquire().await {
        Ok(mut connection) => sql::stock(&mut connection).await,
        Err(error) => Err(error),
    };
    match stock {
        Ok(rows) => Json(rows.into_iter().collect::<BTreeMap<String, i32>>()).into_response(),
        Err(error) => unavailable(error),
    }
}

/// The inventory service. Starts with 10 books and 100 pens.
pub async fn service(ctx: Context<ServiceSettings>) -> chassis::Result<Router> {
    let persistence = Persistence::of(&ctx, &ctx.settings().store, "inventory", SCHEMA).await?;
    let state = Inventory {
        memory: Memory::default(),
        persistence: persistence.clone(),
        bus: ctx.bus().clone(),
    };
    state
        .memory
        .stock
        .lock()
        .unwrap()
        .extend([("book".to_owned(), 10), ("pen".to_owned(), 100)]);
    let inventory = state.clone();
    persistence
        .subscribe(&ctx, "inventory", move |e: Incoming<OrderPlaced>, work: Work| {
            let inventory = inventory.clone();
            async move {
                let order = &e.message;
                let reservation = inventory
                    .reserve(&work, &order.order_id.to_string(), &order.item, order.quantity)
                    .await?;
                if reservation.status == "reserved" {
                    let event = StockReserved {
                        order_id: order.order_id,
                    };
                    work.publish(&event, caused_by(&e)).await
                } else {
                    let event = StockRejected {
                        order_id: order.order_id,
                        reason: format!("not enough {} in stock", order.item),
                    };
                    work.publish(&event, caused_by(&e)).await
                }
            }
        })
        .await?;
    Ok(Router::new()
        .route(
            "/reservations",
            post(create).layer(persistence.idempotency(IdempotencyConfig::default().with_namespace("inventory"))?),
        )
        .route("/reservations/{id}", get(show).delete(release))
        .route("/stock", get(stock))
        .with_state(state))
}
