//! The notifications service: one message per event it hears of (its own group in the
//! fan-out), and one per `SendNotification` command from the orchestrator. Sending is not
//! idempotent (each call is one more message), which is why each message is applied through the
//! inbox: with `[postgres]` the messages are rows of `shop_notifications`, written in the inbox's
//! transaction.
//!
//! | route | |
//! |---|---|
//! | `GET /notifications` | the messages sent so far |

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chassis::Context;
use chassis::http::Problem;
use chassis::messaging::{Event, Incoming};
use shop_contract::events::{OrderPlaced, PaymentCaptured, PaymentRefunded, SendNotification, StockRejected};
use shop_contract::{Persistence, ServiceSettings, Work};

/// The notifications table, created at start with PostgreSQL.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS shop_notifications (
    id      BIGSERIAL   PRIMARY KEY,
    text    TEXT        NOT NULL,
    sent_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

#[derive(Clone)]
struct Notifications {
    sent: Arc<Mutex<Vec<String>>>,
    persistence: Persistence,
}

impl Notifications {
    /// Sends `text` in `work`.
    async fn send(&self, work: &Work, text: String) -> Result<(), String> {
        match work.transaction() {
            None => {
                self.sent.lock().unwrap().push(text);
                Ok(())
            }
            Some(tx) => {
                let mut connection = tx.lock().await.map_err(|e| e.to_string())?;
                sqlx::query("INSERT INTO shop_notifications (text) VALUES ($1)")
                    .bind(text)
                    .execute(&mut *connection)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }
}

async fn notify<E: Event + Clone>(
    ctx: &Context<ServiceSettings>,
    notifications: &Notifications,
    text: fn(&E) -> String,
) -> chassis::Result<()> {
    let sender = notifications.clone();
    notifications
        .persistence
        .subscribe(ctx, "notifications", move |e: Incoming<E>, work: Work| {
            let sender = sender.clone();
            async move { sender.send(&work, text(&e.message)).await }
        })
        .await
}

async fn list(State(notifications): State<Notifications>) -> Response {
    let Some(pool) = notifications.persistence.pool() else {
        return Json(notifications.sent.lock().unwrap().clone()).into_response();
    };
    match sqlx::query_scalar::<_, String>("SELECT text FROM shop_notifications ORDER BY id")
        .fetch_all(pool)
        .await
    {
        Ok(sent) => Json(sent).into_response(),
        Err(error) => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "notifications-unavailable",
            "Try again",
        )
        .with_detail(error.to_string())
        .into_response(),
    }
}

/// The notifications service.
pub async fn service(ctx: Context<ServiceSettings>) -> chassis::Result<Router> {
    let persistence = Persistence::of(&ctx, &ctx.settings().store, "notifications", SCHEMA).await?;
    let state = Notifications {
        sent: Arc::default(),
        persistence: persistence.clone(),
    };
    notify(&ctx, &state, |e: &OrderPlaced| {
        format!("order {} placed: {} x {}", e.order_id, e.quantity, e.item)
    })
    .await?;
    notify(&ctx, &state, |e: &PaymentCaptured| format!("order {} paid", e.order_id)).await?;
    notify(&ctx, &state, |e: &StockRejected| {
        format!("order {} cancelled: {}", e.order_id, e.reason)
    })
    .await?;
    notify(&ctx, &state, |e: &PaymentRefunded| {
        format!("order {} refunded", e.order_id)
    })
    .await?;

    // A command has one handler; the inbox still guards against redelivery.
    let sender = state.clone();
    persistence
        .handle(&ctx, move |c: Incoming<SendNotification>, work: Work| {
            let sender = sender.clone();
            async move { sender.send(&work, c.message.text).await }
        })
        .await?;
    Ok(Router::new().route("/notifications", get(list)).with_state(state))
}
