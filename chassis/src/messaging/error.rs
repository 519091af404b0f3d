//! What failed when publishing or subscribing.

/// Publishing or subscribing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessagingError {
    /// The payload could not be encoded.
    #[error("cannot encode {kind}: {reason}")]
    Encode {
        /// The message type.
        kind: &'static str,
        /// Why.
        reason: String,
    },
    /// The broker did not accept or confirm the message, or a subscription failed.
    #[error("{transport} transport: {reason}")]
    Transport {
        /// `memory` or `nats`.
        transport: &'static str,
        /// What went wrong.
        reason: String,
    },
}

impl MessagingError {
    pub(crate) fn transport(transport: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Transport {
            transport,
            reason: reason.to_string(),
        }
    }
}
