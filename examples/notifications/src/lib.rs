//! The notifications service: one message per event it hears of (its own group in the
//! fan-out), and one per `SendNotification` command from the orchestrator.
//!
//! | route | |
//! |---|---|
//! | `GET /notifications` | the messages sent so far |

use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::{Json, Router};
use chassis::Context;
use chassis::idempotency::IdempotencyStore;
use chassis::messaging::{Event, Incoming, Message};
use shop_contract::events::{OrderPlaced, PaymentCaptured, PaymentRefunded, SendNotification, StockRejected};
use shop_contract::{ServiceSettings, deduplicated, subscribe_once};

type Outbox = Arc<Mutex<Vec<String>>>;

async fn notify<E: Event + Clone>(
    ctx: &Context<ServiceSettings>,
    store: &Arc<dyn IdempotencyStore>,
    outbox: &Outbox,
    text: fn(&E) -> String,
) -> chassis::Result<()> {
    let outbox = outbox.clone();
    subscribe_once(ctx, store, "notifications", move |e: Incoming<E>| {
        let outbox = outbox.clone();
        async move {
            outbox.lock().unwrap().push(text(&e.message));
            Ok(())
        }
    })
    .await
}

/// The notifications service.
pub async fn service(ctx: Context<ServiceSettings>) -> chassis::Result<Router> {
    let store = ctx.settings().store.idempotency("notifications").await?;
    let outbox = Outbox::default();
    notify(&ctx, &store, &outbox, |e: &OrderPlaced| {
        format!("order {} placed: {} x {}", e.order_id, e.quantity, e.item)
    })
    .await?;
    notify(&ctx, &store, &outbox, |e: &PaymentCaptured| {
        format!("order {} paid", e.order_id)
    })
    .await?;
    notify(&ctx, &store, &outbox, |e: &StockRejected| {
        format!("order {} cancelled: {}", e.order_id, e.reason)
    })
    .await?;
    notify(&ctx, &store, &outbox, |e: &PaymentRefunded| {
        format!("order {} refunded", e.order_id)
    })
    .await?;

    // A command has one handler; the consumer still guards against redelivery.
    let commanded = outbox.clone();
    let name = <SendNotification as Message>::TYPE.to_owned();
    ctx.handle(deduplicated(&store, name, move |c: Incoming<SendNotification>| {
        let outbox = commanded.clone();
        async move {
            outbox.lock().unwrap().push(c.message.text);
            Ok(())
        }
    }))
    .await?;
    Ok(Router::new().route(
        "/notifications",
        get(move || {
            let outbox = outbox.clone();
            async move { Json(outbox.lock().unwrap().clone()) }
        }),
    ))
}
