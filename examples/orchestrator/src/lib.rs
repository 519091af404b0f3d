//! The checkout as an orchestrated saga (compare the choreography of orders, inventory and
//! payments): the orchestrator owns the flow and calls each service in turn.
//!
//! | step | action | compensation |
//! |---|---|---|
//! | `reserve-stock` | `POST inventory /reservations` | `DELETE inventory /reservations/{id}` |
//! | `charge` | `POST payments /payments` | `POST payments /payments/{id}/refund` |
//! | `notify` | `SendNotification` command on the bus | — |
//!
//! Each call carries the step's idempotency key, so a retried or resumed step is replayed by
//! the service, not repeated. The sagas live in PostgreSQL when `[postgres]` is configured (in
//! memory otherwise); unfinished checkouts of a dead orchestrator are resumed by whichever
//! instance notices first.
//!
//! | route | |
//! |---|---|
//! | `POST /checkouts` | `{"item", "quantity", "amount_cents"}` with `Idempotency-Key`; 202 with the checkout id |
//! | `GET /checkouts/{id}` | the saga: `running`, `completed`, `compensated` or `failed`, and why |

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Method, Response, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chassis::Context;
use chassis::client::{Client, ClientError};
use chassis::http::Problem;
use chassis::idempotency::IdempotencyConfig;
use chassis::identity::Identity;
use chassis::messaging::Bus;
use chassis::saga::{Saga, SagaRecord, Step, StepContext};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shop_contract::events::SendNotification;
use shop_contract::{Persistence, StoreSettings, not_found, saga_store};
use tracing::Instrument;

/// The orchestrator's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `[store]`: where idempotency keys live without `[postgres]`.
    pub store: StoreSettings,
    /// `step_timeout`: the limit of one attempt of each step. Default `"2s"`.
    #[serde(with = "chassis::config::duration")]
    pub step_timeout: Duration,
    /// `resume_after`: a checkout not written for this long has lost its orchestrator and is
    /// resumed. Default `"30s"`; keep it above `step_timeout` times the attempts.
    #[serde(with = "chassis::config::duration")]
    pub resume_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            store: StoreSettings::default(),
            step_timeout: Duration::from_secs(2),
            resume_after: Duration::from_secs(30),
        }
    }
}

/// The saga's data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkout {
    /// The checkout id (`c-` and a UUID).
    pub id: String,
    /// What.
    pub item: String,
    /// How many.
    pub quantity: u32,
    /// The price.
    pub amount_cents: u64,
    /// The client that started it (its identity's scope); only that client sees it.
    #[serde(default)]
    pub owner: String,
}

/// `POST /checkouts` body.
#[derive(Debug, Deserialize)]
pub struct NewCheckout {
    item: String,
    quantity: u32,
    amount_cents: u64,
}

/// A 2xx, or the reason the call failed, from the answer's problem detail when it has one.
async fn succeeded(client: &Client, answer: Result<Response<Body>, ClientError>) -> Result<(), String> {
    let response = answer.map_err(|e| e.to_string())?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = client.bytes(response).await.unwrap_or_default();
    let detail = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|problem| problem["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(format!("{} answered {status}: {detail}", client.name()))
}

/// Sends `method path` with `body` and the step's idempotency key.
async fn call(
    client: &Client,
    cx: &StepContext,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(), String> {
    let request = client
        .request(method, path)
        .map_err(|e| e.to_string())?
        .header("idempotency-key", cx.idempotency_key())
        .header(header::CONTENT_TYPE, "application/json");
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let answer = client.send(request.body(body).map_err(|e| e.to_string())?).await;
    succeeded(client, answer).await
}

/// The checkout saga over the given clients and bus.
pub fn checkout_saga(
    store: std::sync::Arc<dyn chassis::saga::SagaStore>,
    inventory: Client,
    payments: Client,
    bus: Bus,
    step_timeout: Duration,
) -> Result<Saga<Checkout>, chassis::saga::SagaError> {
    let (reserve, release) = (inventory.clone(), inventory);
    let (charge, refund) = (payments.clone(), payments);
    // A compensation must happen eventually: keep trying for minutes, long enough for the
    // breaker of a struggling service to half-open and let the call through.
    Saga::builder("checkout", store)
        .compensation_attempts(12)
        .compensation_retry_delay(Duration::from_millis(500))
        .step(
            Step::new("reserve-stock", move |cx, c: Checkout| {
                let inventory = reserve.clone();
                async move {
                    let body = json!({ "id": c.id, "item": c.item, "quantity": c.quantity });
                    call(&inventory, &cx, Method::POST, "/reservations", Some(body)).await?;
                    Ok::<_, String>(c)
                }
            })
            .compensate(move |cx, c: Checkout| {
                let inventory = release.clone();
                async move {
                    call(
                        &inventory,
                        &cx,
                        Method::DELETE,
                        &format!("/reservations/{}", c.id),
                        None,
                    )
                    .await
                }
            })
            .timeout(step_timeout),
        )
        .step(
            Step::new("charge", move |cx, c: Checkout| {
                let payments = charge.clone();
                async move {
                    let body = json!({ "id": c.id, "amount_cents": c.amount_cents });
                    call(&payments, &cx, Method::POST, "/payments", Some(body)).await?;
                    Ok::<_, String>(c)
                }
            })
            .compensate(move |cx, c: Checkout| {
                let payments = refund.clone();
                async move {
                    call(
                        &payments,
                        &cx,
                        Method::POST,
                        &format!("/payments/{}/refund", c.id),
                        None,
                    )
                    .await
                }
            })
            .timeout(step_timeout),
        )
        .step(
            Step::new("notify", move |_cx, c: Checkout| {
                let bus = bus.clone();
                async move {
                    let text = format!("checkout {} confirmed: {} x {}", c.id, c.quantity, c.item);
                    bus.send(&SendNotification { text }).await.map_err(|e| e.to_string())?;
                    Ok::<_, String>(c)
                }
            })
            .timeout(step_timeout),
        )
        .build()
}

/// `GET /checkouts/{id}` answer.
#[derive(Debug, Serialize)]
struct CheckoutView {
    id: String,
    status: &'static str,
    failed_step: Option<String>,
    error: Option<String>,
    checkout: serde_json::Value,
}

impl From<SagaRecord> for CheckoutView {
    fn from(record: SagaRecord) -> Self {
        Self {
            id: record.id,
            status: record.status.as_str(),
            failed_step: record.failed_step,
            error: record.error,
            checkout: {
                let mut data = record.data;
                if let Some(fields) = data.as_object_mut() {
                    fields.remove("owner");
                }
                data
            },
        }
    }
}

#[derive(Clone)]
struct Orchestrator {
    saga: Saga<Checkout>,
    ctx: Context<Settings>,
}

async fn start(
    State(o): State<Orchestrator>,
    identity: Identity,
    Json(new): Json<NewCheckout>,
) -> axum::response::Response {
    if new.quantity == 0 {
        return Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-checkout",
            "Quantity must be at least 1",
        )
        .into_response();
    }
    let checkout = Checkout {
        id: format!("c-{}", uuid::Uuid::now_v7()),
        item: new.item,
        quantity: new.quantity,
        amount_cents: new.amount_cents,
        owner: identity.scope(),
    };
    let id = checkout.id.clone();
    // Persisted before the answer, so `GET /checkouts/{id}` finds it at once.
    let created = match o.saga.create(&id, checkout).await {
        Ok(created) => created,
        Err(error) => {
            return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "saga-store-unavailable", "Try again")
                .with_detail(error.to_string())
                .into_response();
        }
    };
    // The saga runs on after the answer: a tracked task, so shutdown lets it finish, and a
    // crash leaves it to `resume_stalled`. It stays in the request's trace.
    let run = async move {
        let id = created.id().to_owned();
        match created.run().await {
            Ok(outcome) => tracing::info!(checkout = %id, ?outcome, "checkout finished"),
            Err(error) => tracing::error!(checkout = %id, %error, "checkout saga stopped"),
        }
    };
    o.ctx.spawn(run.in_current_span());
    let location = format!("/checkouts/{id}");
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(json!({ "id": id, "status": "running" })),
    )
        .into_response()
}

/// The checkout, to the client that started it; to any other it does not exist.
async fn show(State(o): State<Orchestrator>, identity: Identity, Path(id): Path<String>) -> axum::response::Response {
    match o.saga.status(&id).await {
        Ok(Some(record)) if record.data["owner"] == identity.scope().as_str() => {
            Json(CheckoutView::from(record)).into_response()
        }
        Ok(_) => not_found("checkout", &id),
        Err(error) => Problem::new(StatusCode::SERVICE_UNAVAILABLE, "saga-store-unavailable", "Try again")
            .with_detail(error.to_string())
            .into_response(),
    }
}

/// The orchestrator service.
pub async fn service(ctx: Context<Settings>) -> chassis::Result<Router> {
    let settings = ctx.settings().clone();
    let persistence = Persistence::of(&ctx, &settings.store, "orchestrator", "").await?;
    let saga = checkout_saga(
        saga_store(&ctx),
        ctx.client("inventory")?,
        ctx.client("payments")?,
        ctx.bus().clone(),
        settings.step_timeout,
    )?;
    let resumer = saga.clone();
    let stop = ctx.shutdown_token();
    ctx.spawn(async move {
        loop {
            match resumer.resume_stalled(settings.resume_after).await {
                Ok(resumed) => {
                    for (id, outcome) in resumed {
                        tracing::info!(checkout = %id, ?outcome, "resumed checkout finished");
                    }
                }
                Err(error) => tracing::warn!(%error, "looking for stalled checkouts failed"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(settings.resume_after / 2) => {}
            }
        }
    });
    let idempotency = persistence.idempotency(
        IdempotencyConfig::default()
            .with_namespace("orchestrator")
            .requiring_identity(),
    )?;
    let state = Orchestrator { saga, ctx: ctx.clone() };
    Ok(Router::new()
        .route("/checkouts", post(start).layer(idempotency))
        .route("/checkouts/{id}", get(show))
        .with_state(state))
}
