//! The payments service: captures the amount of each placed order (`OrderPlaced`), refunds it
//! when the stock is rejected (`StockRejected`, compensation by event), and offers the same over
//! HTTP to the orchestrator. A demo switch makes its HTTP API fail or slow down, so the breakers
//! of its callers open and the saga compensates. With `[postgres]` the payments are rows of
//! `shop_payments`, changed in the inbox's (or the idempotent request's) transaction together
//! with the events they cause.
//!
//! | route | |
//! |---|---|
//! | `POST /payments` | `{"id", "amount_cents"}` with `Idempotency-Key`; 201 `captured`, 409 when voided |
//! | `POST /payments/{id}/refund` | refunds a capture; voids an id not captured yet, so a late capture is refused; 204 |
//! | `GET /payments/{id}` | the payment: `captured`, `refunded` or `voided` |
//! | `POST /admin/fault` | `{"failing": true}` makes captures and lookups answer 500; `{"delay_ms": 1500}` makes them late; `{}` heals |

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chassis::Context;
use chassis::http::Problem;
use chassis::idempotency::IdempotencyConfig;
use chassis::messaging::{Bus, Incoming};
use chassis::storage::Transaction;
use serde::{Deserialize, Serialize};
use shop_contract::events::{OrderPlaced, PaymentCaptured, PaymentRefunded, StockRejected};
use shop_contract::{Persistence, ServiceSettings, Work, caused_by, not_found};

/// A payment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payment {
    /// The order or checkout it is for.
    pub id: String,
    /// How much.
    pub amount_cents: u64,
    /// `captured`, `refunded` or `voided` (refunded before it was captured).
    pub status: String,
}

/// `POST /admin/fault` body: how the HTTP API misbehaves.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fault {
    /// Answer 500 to every API call.
    pub failing: bool,
    /// Answer this late.
    pub delay_ms: u64,
}

/// The payments table, created at start with PostgreSQL.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS shop_payments (
    id           TEXT        PRIMARY KEY,
    amount_cents BIGINT      NOT NULL,
    status       TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// Payments in memory.
#[derive(Clone, Default)]
struct Memory {
    payments: Arc<Mutex<BTreeMap<String, Payment>>>,
}

impl Memory {
    fn capture(&self, id: &str, amount_cents: u64) -> Payment {
        let mut payments = self.payments.lock().unwrap();
        payments
            .entry(id.to_owned())
            .or_insert_with(|| Payment {
                id: id.to_owned(),
                amount_cents,
                status: "captured".into(),
            })
            .clone()
    }

    fn refund(&self, id: &str, void: bool) -> Option<Payment> {
        let mut payments = self.payments.lock().unwrap();
        match payments.get_mut(id) {
            Some(payment) => {
                let before = payment.clone();
                if payment.status == "captured" {
                    payment.status = "refunded".into();
                }
                Some(before)
            }
            None if void => {
                let voided = Payment {
                    id: id.to_owned(),
                    amount_cents: 0,
                    status: "voided".into(),
                };
                payments.insert(id.to_owned(), voided.clone());
                Some(voided)
            }
            None => None,
        }
    }
}

/// The same in PostgreSQL, within the caller's transaction.
mod sql {
    use sqlx::{PgConnection, Row as _};

    use super::Payment;

    fn payment(row: &sqlx::postgres::PgRow) -> Result<Payment, sqlx::Error> {
        Ok(Payment {
            id: row.try_get("id")?,
            amount_cents: row.try_get::<i64, _>("amount_cents")? as u64,
            status: row.try_get("status")?,
        })
    }

    pub(super) async fn get(connection: &mut PgConnection, id: &str) -> Result<Option<Payment>, sqlx::Error> {
        let row = sqlx::query("SELECT id, amount_cents, status FROM shop_payments WHERE id = $1")
            .bind(id)
            .fetch_optional(connection)
            .await?;
        row.as_ref().map(payment).transpose()
    }

    pub(super) async fn capture(
        connection: &mut PgConnection,
        id: &str,
        amount_cents: u64,
    ) -> Result<Payment, sqlx::Error> {
        sqlx::query(
            "INSERT INTO shop_payments (id, amount_cents, status) VALUES ($1, $2, 'captured') ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(amount_cents as i64)
        .execute(&mut *connection)
        .await?;
        let row = sqlx::query("SELECT id, amount_cents, status FROM shop_payments WHERE id = $1")
            .bind(id)
            .fetch_one(connection)
            .await?;
        payment(&row)
    }

    /// The payment as it was before the refund, if there is one (or a voided one, with `void`).
    pub(super) async fn refund(
        connection: &mut PgConnection,
        id: &str,
        void: bool,
    ) -> Result<Option<Payment>, sqlx::Error> {
        if void {
            // Voids an id never captured. A capture being written concurrently makes this wait
            // for it; once it committed, the refund below finds it.
            let voided = sqlx::query(
                "INSERT INTO shop_payments (id, amount_cents, status) VALUES ($1, 0, 'voided') ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(id)
            .fetch_optional(&mut *connection)
            .await?;
            if voided.is_some() {
                return Ok(Some(Payment {
                    id: id.to_owned(),
                    amount_cents: 0,
                    status: "voided".into(),
                }));
            }
        }
        let row = sqlx::query("SELECT id, amount_cents, status FROM shop_payments WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *connection)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let before = payment(&row)?;
        sqlx::query("UPDATE shop_payments SET status = 'refunded' WHERE id = $1 AND status = 'captured'")
            .bind(id)
            .execute(connection)
            .await?;
        Ok(Some(before))
    }
}

#[derive(Clone)]
struct Payments {
    memory: Memory,
    persistence: Persistence,
    bus: Bus,
    fault: Arc<Mutex<Fault>>,
}

impl Payments {
    /// Captures `amount_cents` for `id` in `work`; asking again answers the first capture (a
    /// voided id stays voided).
    async fn capture(&self, work: &Work, id: &str, amount_cents: u64) -> Result<Payment, String> {
        match work.transaction() {
            None => Ok(self.memory.capture(id, amount_cents)),
            Some(tx) => {
                let mut connection = tx.lock().await.map_err(|e| e.to_string())?;
                sql::capture(&mut connection, id, amount_cents)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Refunds a capture in `work`, answering the payment as it was before. Without a capture,
    /// `void` decides: mark the id voided (so a late capture is refused) or answer `None`.
    async fn refund(&self, work: &Work, id: &str, void: bool) -> Result<Option<Payment>, String> {
        match work.transaction() {
            None => Ok(self.memory.refund(id, void)),
            Some(tx) => {
                let mut connection = tx.lock().await.map_err(|e| e.to_string())?;
                sql::refund(&mut connection, id, void).await.map_err(|e| e.to_string())
            }
        }
    }
}

fn unavailable(error: impl std::fmt::Display) -> Response {
    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "payments-unavailable", "Try again")
        .with_detail(error.to_string())
        .into_response()
}

/// Applies the demo fault to the API routes.
async fn faulty(State(payments): State<Payments>, request: Request, next: Next) -> Response {
    let fault = *payments.fault.lock().unwrap();
    if fault.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
    }
    if fault.failing {
        return Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "payments-down",
            "Payments are failing (demo switch)",
        )
        .into_response();
    }
    next.run(request).await
}

/// `POST /payments` body.
#[derive(Debug, Deserialize)]
pub struct NewPayment {
    id: String,
    amount_cents: u64,
}

async fn create(State(payments): State<Payments>, tx: Option<Transaction>, Json(new): Json<NewPayment>) -> Response {
    let captured = async {
        let work = payments.persistence.work(&payments.bus, tx)?;
        payments.capture(&work, &new.id, new.amount_cents).await
    }
    .await;
    match captured {
        Ok(payment) if payment.status == "voided" => {
            Problem::new(StatusCode::CONFLICT, "payment-voided", "Payment voided")
                .with_detail(format!("payment {} was refunded before it was captured", new.id))
                .into_response()
        }
        Ok(payment) => (StatusCode::CREATED, Json(payment)).into_response(),
        Err(error) => unavailable(error),
    }
}

async fn refund(State(payments): State<Payments>, Path(id): Path<String>) -> Response {
    let refunded = async {
        match payments.persistence.pool() {
            None => payments.refund(&Work::Memory(payments.bus.clone()), &id, true).await,
            Some(pool) => {
                let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
                let before = sql::refund(&mut tx, &id, true).await.map_err(|e| e.to_string())?;
                tx.commit().await.map_err(|e| e.to_string())?;
                Ok(before)
            }
        }
    }
    .await;
    match refunded {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => unavailable(error),
    }
}

async fn show(State(payments): State<Payments>, Path(id): Path<String>) -> Response {
    let found = match payments.persistence.pool() {
        None => Ok(payments.memory.payments.lock().unwrap().get(&id).cloned()),
        Some(pool) => match pool.acquire().await {
            Ok(mut connection) => sql::get(&mut connection, &id).await,
            Err(error) => Err(error),
        },
    };
    match found {
        Ok(Some(payment)) => Json(payment).into_response(),
        Ok(None) => not_found("payment", &id),
        Err(error) => unavailable(error),
    }
}

async fn set_fault(State(payments): State<Payments>, Json(fault): Json<Fault>) -> StatusCode {
    tracing::warn!(failing = fault.failing, delay_ms = fault.delay_ms, "demo fault set");
    *payments.fault.lock().unwrap() = fault;
    StatusCode::NO_CONTENT
}

/// The payments service.
pub async fn service(ctx: Context<ServiceSettings>) -> chassis::Result<Router> {
    let persistence = Persistence::of(&ctx, &ctx.settings().store, "payments", SCHEMA).await?;
    let state = Payments {
        memory: Memory::default(),
        persistence: persistence.clone(),
        bus: ctx.bus().clone(),
        fault: Arc::default(),
    };
    let payments = state.clone();
    persistence
        .subscribe(&ctx, "payments", move |e: Incoming<OrderPlaced>, work: Work| {
            let payments = payments.clone();
            async move {
                let order = &e.message;
                let payment = payments
                    .capture(&work, &order.order_id.to_string(), order.amount_cents)
                    .await?;
                if payment.status != "captured" {
                    return Ok(());
                }
                let event = PaymentCaptured {
                    order_id: order.order_id,
                    amount_cents: payment.amount_cents,
                };
                work.publish(&event, caused_by(&e)).await
            }
        })
        .await?;
    let payments = state.clone();
    persistence
        .subscribe(&ctx, "payments", move |e: Incoming<StockRejected>, work: Work| {
            let payments = payments.clone();
            async move {
                // The capture may not have been seen yet (the two events travel separately):
                // the payment is voided, and the late `OrderPlaced` captures nothing.
                let id = e.message.order_id.to_string();
                let refunded = payments.refund(&work, &id, true).await?;
                let Some(before) = refunded.filter(|before| before.status == "captured") else {
                    return Ok(());
                };
                let event = PaymentRefunded {
                    order_id: e.message.order_id,
                    amount_cents: before.amount_cents,
                };
                work.publish(&event, caused_by(&e)).await
            }
        })
        .await?;
    // The fault hits captures and lookups; refunds stay up, so compensations can finish.
    let faulted = Router::new()
        .route(
            "/payments",
            post(create).layer(persistence.idempotency(IdempotencyConfig::default().with_namespace("payments"))?),
        )
        .route("/payments/{id}", get(show))
        .route_layer(middleware::from_fn_with_state(state.clone(), faulty));
    Ok(faulted
        .route("/payments/{id}/refund", post(refund))
        .route("/admin/fault", post(set_fault))
        .with_state(state))
}
