//! Consuming a queue: one channel per queue and connection, shared by the queue's consumers;
//! deliveries with the broker's count; and the return to the queue of what a consumer leaves
//! unacknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection};

use super::{error, headers_of};
use crate::messaging::{Acker, Delivery, MessagingError, RawMessage, Subscription};

/// The channels a connection consumes on, one per queue.
///
/// A quorum queue counts a delivery each time a consumer holding the message goes away. When a
/// connection drops, the broker ends its channels one after another, and a message returned by
/// the first is handed to another consumer of the queue whose channel is not ended yet. With a
/// channel per consumer, one lost connection would count once per consumer, and a few outages
/// would dead-letter messages no handler failed. The consumers of a queue on one channel end
/// together, and a lost connection counts once.
#[derive(Default)]
pub(super) struct ConsumerChannels {
    channels: tokio::sync::Mutex<HashMap<String, Channel>>,
}

impl ConsumerChannels {
    /// The open channel `queue` is consumed on over `connection`; opened when there is none,
    /// with a prefetch of one message per consumer.
    pub(super) async fn channel(&self, connection: &Connection, queue: &str) -> Result<Channel, MessagingError> {
        let mut channels = self.channels.lock().await;
        if let Some(channel) = channels.get(queue)
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = connection.create_channel().await.map_err(error)?;
        // Not global: each consumer of the channel holds one message at a time.
        channel.basic_qos(1, BasicQosOptions::default()).await.map_err(error)?;
        channels.insert(queue.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// How many times the broker delivered the message: one more than a quorum queue's
/// `x-delivery-count`, or at least two when it only says it was delivered before.
fn delivery_count(properties: &BasicProperties, redelivered: bool) -> u32 {
    let counted = properties
        .headers()
        .as_ref()
        .and_then(|table| table.inner().get("x-delivery-count").cloned())
        .and_then(|value| match value {
            AMQPValue::LongLongInt(n) => u32::try_from(n).ok(),
            AMQPValue::LongInt(n) => u32::try_from(n).ok(),
            AMQPValue::LongUInt(n) => Some(n),
            AMQPValue::ShortInt(n) => u32::try_from(n).ok(),
            AMQPValue::ShortUInt(n) => Some(u32::from(n)),
            _ => None,
        });
    match counted {
        Some(previous) => previous.saturating_add(1),
        None if redelivered => 2,
        None => 1,
    }
}

/// One consumer on its queue's shared channel.
pub(super) struct AmqpSubscription {
    /// Taken when the subscription is dropped, to be cancelled before anything is returned.
    consumer: Option<lapin::Consumer>,
    channel: Channel,
    unsettled: Arc<Mutex<Unsettled>>,
}

/// The deliveries of a subscription dropped without an acknowledgement, to be returned to the
/// queue: the shared channel stays open, so closing it no longer returns them.
#[derive(Default)]
struct Unsettled {
    /// The subscription ended and its consumer is cancelled: a delivery dropped from now on is
    /// returned at once, as nothing can hand it back to that consumer.
    retired: bool,
    ackers: Vec<lapin::Acker>,
}

fn lock(unsettled: &Mutex<Unsettled>) -> MutexGuard<'_, Unsettled> {
    unsettled.lock().unwrap_or_else(|e| e.into_inner())
}

impl AmqpSubscription {
    pub(super) fn new(consumer: lapin::Consumer, channel: Channel) -> Self {
        Self {
            consumer: Some(consumer),
            channel,
            unsettled: Arc::default(),
        }
    }
}

impl Subscription for AmqpSubscription {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery, MessagingError>>> {
        Box::pin(async move {
            let dropped = std::mem::take(&mut lock(&self.unsettled).ackers);
            for acker in dropped {
                requeue(&acker).await;
            }
            let delivery = match self.consumer.as_mut()?.next().await {
                Some(Ok(delivery)) => delivery,
                // The channel or its connection is gone: the subscription ends, and the
                // supervisor subscribes again on a new connection. Deliveries not yet
                // acknowledged are requeued by the broker and come again.
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer interrupted; subscribing again");
                    return None;
                }
                None => return None,
            };
            let raw = RawMessage {
                headers: headers_of(&delivery.properties),
                body: delivery.data.clone().into(),
            };
            let delivered = delivery_count(&delivery.properties, delivery.redelivered);
            let acker = AmqpAcker {
                acker: Some(delivery.acker),
                unsettled: self.unsettled.clone(),
            };
            Some(Ok(Delivery::new(raw, delivered, Box::new(acker))))
        })
    }
}

impl Drop for AmqpSubscription {
    fn drop(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        spawn(retire(self.channel.clone(), consumer, self.unsettled.clone()));
    }
}

/// Ends a subscription on a channel the queue's other consumers go on using. The consumer is
/// cancelled first, so that nothing returned is handed straight back to it and counted twice;
/// then what it left unacknowledged goes back to the queue, and so does what the broker sent it
/// before the cancel took effect.
async fn retire(channel: Channel, mut consumer: lapin::Consumer, unsettled: Arc<Mutex<Unsettled>>) {
    let cancelled = channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await;
    let dropped = {
        let mut unsettled = lock(&unsettled);
        unsettled.retired = true;
        std::mem::take(&mut unsettled.ackers)
    };
    if cancelled.is_err() {
        // The channel is gone, and the broker returned whatever it held.
        return;
    }
    for acker in dropped {
        requeue(&acker).await;
    }
    // The cancellation ends the stream after the deliveries that arrived before it.
    while let Ok(Some(Ok(delivery))) = tokio::time::timeout(RETIRE_TIMEOUT, consumer.next()).await {
        requeue(&delivery.acker).await;
    }
}

/// Runs `task`, the settling a drop starts, on the current runtime. Without one (a drop after
/// the runtime ended) it does not run: what the consumer held goes back to the queue when the
/// connection closes.
fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(task);
    }
}

/// The longest wait for the end of a cancelled consumer's deliveries.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(5);

async fn requeue(acker: &lapin::Acker) {
    if let Err(e) = acker.reject(BasicRejectOptions { requeue: true }).await {
        tracing::debug!(error = %e, "returning an unacknowledged message failed; the broker returns it when the channel closes");
    }
}

/// Acknowledges one delivery on its channel; dropped unacknowledged, it returns the message to
/// the queue.
struct AmqpAcker {
    acker: Option<lapin::Acker>,
    unsettled: Arc<Mutex<Unsettled>>,
}

impl Acker for AmqpAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), MessagingError>> {
        let acker = self.acker.take();
        Box::pin(async move {
            let Some(acker) = acker else { return Ok(()) };
            if acker.ack(BasicAckOptions::default()).await.map_err(error)? {
                Ok(())
            } else {
                Err(error(
                    "the channel closed before the acknowledgement; the broker delivers the message again",
                ))
            }
        })
    }
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        let Some(acker) = self.acker.take() else {
            return;
        };
        let mut unsettled = lock(&self.unsettled);
        if !unsettled.retired {
            // Returned by the subscription's next call or by its end, whichever comes first.
            unsettled.ackers.push(acker);
            return;
        }
        drop(unsettled);
        spawn(async move { requeue(&acker).await });
    }
}
