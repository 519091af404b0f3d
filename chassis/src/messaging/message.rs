//! Typed messages: events and commands.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A typed message: its CloudEvents `type` and a JSON payload.
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The CloudEvents `type`, e.g. `"shop.order.placed"`. Also names the subject.
    const TYPE: &'static str;
}

/// An event: published to every subscribed group.
pub trait Event: Message {}

/// A command: sent to the one group that handles it.
pub trait Command: Message {}
