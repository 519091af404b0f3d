//! The payments service: captures the amount of each placed order (`OrderPlaced`), refunds it
//! when the stock is rejected (`StockRejected`, compensation by event), and offers the same over
//! HTTP to the orchestrator. A demo switch makes its HTTP API fail or slow down, so the breakers
//! of its callers open and the saga compensates.
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
use chassis::idempotency::IdempotencyLayer;
use chassis::messaging::Incoming;
use serde::{Deserialize, Serialize};
use shop_contract::events::{OrderPlaced, PaymentCaptured, PaymentRefunded, StockRejected};
use shop_contract::{ServiceSettings, caused_by, not_found, subscribe_once};

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

#[derive(Clone, Default)]
struct Payments {
    payments: Arc<Mutex<BTreeMap<String, Payment>>>,
    fault: Arc<Mutex<Fault>>,
}

impl Payments {
    /// Captures `amount_cents` for `id`; asking again answers the first capture. A voided id
    /// is refused.
    fn capture(&self, id: &str, amount_cents: u64) -> Result<Payment, Payment> {
        let mut payments = self.payments.lock().unwrap();
        let payment = payments.entry(id.to_owned()).or_insert_with(|| Payment {
            id: id.to_owned(),
            amount_cents,
            status: "captured".into(),
        });
        match payment.status.as_str() {
            "voided" => Err(payment.clone()),
            _ => Ok(payment.clone()),
        }
    }

    /// Refunds a capture: the amount the first time, `None` after. Without a capture, `void`
    /// decides: mark the id voided (so a late capture is refused) or report it missing.
    fn refund(&self, id: &str, void: bool) -> Result<Option<u64>, String> {
        let mut payments = self.payments.lock().unwrap();
        match payments.get_mut(id) {
            Some(p) if p.status == "captured" => {
                p.status = "refunded".into();
                Ok(Some(p.amount_cents))
            }
            Some(_) => Ok(None),
            None if void => {
                let voided = Payment {
                    id: id.to_owned(),
                    amount_cents: 0,
                    status: "voided".into(),
                };
                payments.insert(id.to_owned(), voided);
                Ok(None)
            }
            None => Err(format!("no payment {id} yet")),
        }
    }
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

async fn create(State(payments): State<Payments>, Json(new): Json<NewPayment>) -> Response {
    match payments.capture(&new.id, new.amount_cents) {
        Ok(payment) => (StatusCode::CREATED, Json(payment)).into_response(),
        Err(_) => Problem::new(StatusCode::CONFLICT, "payment-voided", "Payment voided")
            .with_detail(format!("payment {} was refunded before it was captured", new.id))
            .into_response(),
    }
}

async fn refund(State(payments): State<Payments>, Path(id): Path<String>) -> StatusCode {
    let _ = payments.refund(&id, true);
    StatusCode::NO_CONTENT
}

async fn show(State(payments): State<Payments>, Path(id): Path<String>) -> Response {
    match payments.payments.lock().unwrap().get(&id) {
        Some(p) => Json(p.clone()).into_response(),
        None => not_found("payment", &id),
    }
}

async fn set_fault(State(payments): State<Payments>, Json(fault): Json<Fault>) -> StatusCode {
    tracing::warn!(failing = fault.failing, delay_ms = fault.delay_ms, "demo fault set");
    *payments.fault.lock().unwrap() = fault;
    StatusCode::NO_CONTENT
}

/// The payments service.
pub async fn service(ctx: Context<ServiceSettings>) -> chassis::Result<Router> {
    let store = ctx.settings().store.idempotency("payments").await?;
    let state = Payments::default();
    let (payments, bus) = (state.clone(), ctx.bus().clone());
    subscribe_once(&ctx, &store, "payments", move |e: Incoming<OrderPlaced>| {
        let (payments, bus) = (payments.clone(), bus.clone());
        async move {
            let order = &e.message;
            let Ok(payment) = payments.capture(&order.order_id.to_string(), order.amount_cents) else {
                return Ok(());
            };
            let event = PaymentCaptured {
                order_id: order.order_id,
                amount_cents: payment.amount_cents,
            };
            bus.publish_with(&event, caused_by(&e))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await?;
    let (payments, bus) = (state.clone(), ctx.bus().clone());
    subscribe_once(&ctx, &store, "payments", move |e: Incoming<StockRejected>| {
        let (payments, bus) = (payments.clone(), bus.clone());
        async move {
            // The capture may not have been seen yet: the error makes the bus retry.
            if let Some(amount_cents) = payments.refund(&e.message.order_id.to_string(), false)? {
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
    let idempotency = IdempotencyLayer::new(store, Default::default())?;
    // The fault hits captures and lookups; refunds stay up, so compensations can finish.
    let faulted = Router::new()
        .route("/payments", post(create).layer(idempotency))
        .route("/payments/{id}", get(show))
        .route_layer(middleware::from_fn_with_state(state.clone(), faulty));
    Ok(faulted
        .route("/payments/{id}/refund", post(refund))
        .route("/admin/fault", post(set_fault))
        .with_state(state))
}
