//! The store behind the idempotency layer and the idempotent consumer.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use futures_util::future::BoxFuture;

/// A response kept for replay: status, the chosen headers and the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The status code.
    pub status: u16,
    /// The stored headers (names lowercase), in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl StoredResponse {
    /// An empty `200`: what the idempotent consumer stores for a processed message.
    pub fn empty() -> Self {
        Self {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    #[cfg(any(feature = "redis", feature = "postgres"))]
    pub(crate) fn encode_headers(&self) -> String {
        let headers: Vec<(&str, String)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value).into_owned()))
            .collect();
        serde_json::to_string(&headers).unwrap_or_else(|_| "[]".into())
    }

    #[cfg(any(feature = "redis", feature = "postgres"))]
    pub(crate) fn decode_headers(encoded: &str) -> Vec<(String, Vec<u8>)> {
        serde_json::from_str::<Vec<(String, String)>>(encoded)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| (name, value.into_bytes()))
            .collect()
    }
}

/// The outcome of [`IdempotencyStore::begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The key was free (or its claim or record had expired): the caller owns it now and must
    /// [`complete`](IdempotencyStore::complete) or [`release`](IdempotencyStore::release) it with
    /// this token.
    Claimed {
        /// Identifies this claim; a late call with an expired claim's token changes nothing.
        token: String,
    },
    /// Another request holds the key and has not finished.
    InFlight {
        /// Time left on the other claim's lease.
        lease_left: Duration,
    },
    /// The key was completed with this fingerprint: replay the response.
    Completed(StoredResponse),
    /// The key is known with a different fingerprint: a different request reused the key.
    Mismatch,
}

/// The store could not be reached or answered something unexpected.
#[derive(Debug, thiserror::Error)]
#[error("idempotency store {store} failed: {message}")]
pub struct StoreError {
    /// `memory`, `redis` or `postgres`.
    pub store: &'static str,
    /// What went wrong.
    pub message: String,
}

impl StoreError {
    /// An error of `store`.
    pub fn new(store: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            store,
            message: message.to_string(),
        }
    }
}

/// Atomic claim / complete / release of idempotency keys.
///
/// Every implementation passes the same conformance suite
/// (`chassis::testing::idempotency_store_conformance`, feature `testing`).
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for a request with `fingerprint`, for at most `lease` (after which a crashed
    /// claimer no longer blocks the key). Atomic: of concurrent callers exactly one gets
    /// [`Begin::Claimed`].
    fn begin<'a>(
        &'a self,
        key: &'a str,
        fingerprint: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>>;

    /// Records the response of the claim `token` on `key`, kept for `ttl`. Does nothing when
    /// the claim is no longer the current one.
    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Frees `key` if `token` is still its claim, so the request can be made again.
    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The store's name, for errors and logs.
    fn name(&self) -> &'static str;
}

pub(crate) fn new_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
