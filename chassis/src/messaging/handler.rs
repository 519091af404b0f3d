//! What a subscription runs for each message.

use std::future::Future;

use super::{Envelope, Message};

/// A received message with its envelope.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Incoming<M> {
    /// The decoded message.
    pub message: M,
    /// Its CloudEvents attributes.
    pub envelope: Envelope,
    /// Which delivery this is (1 the first time).
    pub delivered: u32,
}

/// Handles one message of type `M`: what [`Bus::subscribe`](super::Bus::subscribe) and
/// `Context::subscribe` run for each delivery.
///
/// Any `Fn(Incoming<M>) -> impl Future<Output = Result<(), E>>` closure is a handler (`E`
/// printable): an `Err` is a failed attempt: retried, and finally dead-lettered with its text.
///
/// ```
/// use chassis::messaging::{Incoming, Message, MessageHandler};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Ping;
/// impl Message for Ping { const TYPE: &'static str = "ping"; }
///
/// fn assert_handler<H: MessageHandler<Ping>>(_: H) {}
/// assert_handler(|_: Incoming<Ping>| async { Ok::<_, std::io::Error>(()) });
/// ```
pub trait MessageHandler<M: Message>: Clone + Send + Sync + 'static {
    /// Why an attempt failed.
    type Error: std::fmt::Display + Send + 'static;
    /// One attempt.
    type Future: Future<Output = Result<(), Self::Error>> + Send + 'static;

    /// Handles `incoming`.
    fn handle(&self, incoming: Incoming<M>) -> Self::Future;
}

impl<M, F, Fut, E> MessageHandler<M> for F
where
    M: Message,
    F: Fn(Incoming<M>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    type Error = E;
    type Future = Fut;

    fn handle(&self, incoming: Incoming<M>) -> Fut {
        self(incoming)
    }
}
