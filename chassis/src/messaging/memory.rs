use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use futures_util::future::BoxFuture;

use super::{Acker, DeadLetter, Delivery, Kind, MessagingError, RawMessage, Subscription, Transport};

#[derive(Default)]
struct GroupQueue {
    pending: Mutex<VecDeque<(RawMessage, u32)>>,
    arrived: Notify,
}

impl GroupQueue {
    fn push(&self, message: RawMessage, delivered: u32, front: bool) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if front {
            pending.push_front((message, delivered));
        } else {
            pending.push_back((message, delivered));
        }
        drop(pending);
        self.arrived.notify_one();
    }
}

/// Group name -> its queue.
type Groups = HashMap<String, Arc<GroupQueue>>;

#[derive(Default)]
struct Inner {
    destinations: Mutex<HashMap<(Kind, String), Groups>>,
    dead_letters: Mutex<Vec<DeadLetter>>,
    next_dead_letter: std::sync::atomic::AtomicU64,
}

/// The in-process bus: the embedded default. Groups, fan-out, competing consumers,
/// redelivery of unacknowledged messages and dead letters behave as with a broker, within one
/// process and without persistence. Events published while no group is subscribed go nowhere,
/// as on a broker with no bound queue; commands wait for their handler.
///
/// ```
/// let transport = chassis::messaging::MemoryTransport::new();
/// assert!(transport.dead_letters().is_empty());
/// ```
#[derive(Clone, Default)]
pub struct MemoryTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTransport").finish_non_exhaustive()
    }
}

impl MemoryTransport {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// The dead letters so far.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner
            .dead_letters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn group(&self, kind: Kind, message_type: &str, group: &str) -> Arc<GroupQueue> {
        let mut destinations = self.inner.destinations.lock().unwrap_or_else(|e| e.into_inner());
        destinations
            .entry((kind, message_type.to_owned()))
            .or_default()
            .entry(group.to_owned())
            .or_default()
            .clone()
    }
}

struct MemorySubscription {
    queue: Arc<GroupQueue>,
}

struct MemoryAcker {
    queue: Arc<GroupQueue>,
    message: Option<(RawMessage, u32)>,
}

impl Acker for MemoryAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), MessagingError>> {
        self.message = None;
        Box::pin(async { Ok(()) })
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        // Unacknowledged (the consumer died or was cancelled): deliver it again.
        if let Some((message, delivered)) = self.message.take() {
            self.queue.push(message, delivered, true);
        }
    }
}

impl Subscription for MemorySubscription {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery, MessagingError>>> {
        Box::pin(async move {
            loop {
                let arrived = self.queue.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                let next = self.queue.pending.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                if let Some((message, delivered)) = next {
                    let delivered = delivered + 1;
                    let acker = MemoryAcker {
                        queue: self.queue.clone(),
                        message: Some((message.clone(), delivered)),
                    };
                    return Some(Ok(Delivery::new(message, delivered, Box::new(acker))));
                }
                arrived.await;
            }
        })
    }
}

impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn publish<'a>(
        &'a self,
        kind: Kind,
        message_type: &'a str,
        message: RawMessage,
    ) -> BoxFuture<'a, Result<(), MessagingError>> {
        Box::pin(async move {
            let queues: Vec<Arc<GroupQueue>> = match kind {
                Kind::Event => self
                    .inner
                    .destinations
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&(kind, message_type.to_owned()))
                    .map(|groups| groups.values().cloned().collect())
                    .unwrap_or_default(),
                Kind::Command => vec![self.group(kind, message_type, message_type)],
            };
            for queue in queues {
                queue.push(message.clone(), 0, false);
            }
            Ok(())
        })
    }

    fn subscribe<'a>(
        &'a self,
        kind: Kind,
        message_type: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, MessagingError>> {
        Box::pin(async move {
            let queue = self.group(kind, message_type, group);
            Ok(Box::new(MemorySubscription { queue }) as Box<dyn Subscription>)
        })
    }

    fn dead_letter<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), MessagingError>> {
        let id = self
            .inner
            .next_dead_letter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut letter = letter.clone();
        letter.id = id.to_string();
        self.inner
            .dead_letters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(letter);
        Box::pin(async { Ok(()) })
    }

    fn list_dead_letters<'a>(
        &'a self,
        group: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, MessagingError>> {
        let letters = self
            .dead_letters()
            .into_iter()
            .filter(|letter| letter.group == group)
            .take(limit)
            .collect();
        Box::pin(async { Ok(letters) })
    }

    fn replay_dead_letters<'a>(
        &'a self,
        group: &'a str,
        ids: &'a [String],
        limit: usize,
    ) -> BoxFuture<'a, Result<usize, MessagingError>> {
        Box::pin(async move {
            let chosen: Vec<DeadLetter> = {
                let mut letters = self.inner.dead_letters.lock().unwrap_or_else(|e| e.into_inner());
                let mut chosen = Vec::new();
                letters.retain(|letter| {
                    let pick =
                        letter.group == group && (ids.is_empty() && chosen.len() < limit || ids.contains(&letter.id));
                    if pick {
                        chosen.push(letter.clone());
                    }
                    !pick
                });
                chosen
            };
            for letter in &chosen {
                // A replayed event goes back to the group that gave up on it, not to every group.
                self.group(letter.kind, &letter.message_type, group)
                    .push(letter.message.clone(), 0, false);
            }
            Ok(chosen.len())
        })
    }
}
