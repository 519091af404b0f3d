//! A PostgreSQL transaction shared by the code that opened it and the handler that writes in
//! it: how an effect commits together with the chassis' record of it.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;
use sqlx::{PgConnection, Postgres};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::problem::Problem;

type Slot = Option<sqlx::Transaction<'static, Postgres>>;

/// A transaction the chassis opened for a unit of work (an idempotent request, a message
/// through the inbox) and commits when the work succeeded, together with its own record of it
/// (the stored response, the processed message id). Write the work's effect in it:
///
/// ```no_run
/// # async fn demo(tx: chassis::storage::Transaction) -> chassis::Result<()> {
/// let mut connection = tx.lock().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES ($1)")
///     .bind(42_i64)
///     .execute(&mut *connection)
///     .await?;
/// # Ok(()) }
/// ```
///
/// In a handler behind a transactional [`IdempotencyLayer`](crate::idempotency::IdempotencyLayer)
/// it is an axum extractor. Do not commit or roll it back yourself, and do not keep it past the
/// handler: the chassis finishes it, and [`lock`](Transaction::lock) fails after that.
#[derive(Clone)]
pub struct Transaction {
    slot: Arc<Mutex<Slot>>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").finish_non_exhaustive()
    }
}

/// The transaction was already finished by the chassis: it was used after the unit of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the transaction has ended; use it only while the handler it was given to runs")]
pub struct TransactionEnded;

impl Transaction {
    pub(crate) fn new(transaction: sqlx::Transaction<'static, Postgres>) -> Self {
        Self {
            slot: Arc::new(Mutex::new(Some(transaction))),
        }
    }

    /// The transaction's connection, exclusively, until the guard is dropped.
    pub async fn lock(&self) -> Result<TransactionGuard, TransactionEnded> {
        let guard = self.slot.clone().lock_owned().await;
        match guard.is_some() {
            true => Ok(TransactionGuard { guard }),
            false => Err(TransactionEnded),
        }
    }

    /// Takes the transaction back to finish it; `None` when it was taken already.
    pub(crate) async fn finish(&self) -> Option<sqlx::Transaction<'static, Postgres>> {
        self.slot.lock().await.take()
    }
}

/// Exclusive use of a [`Transaction`]'s connection: pass `&mut *guard` wherever sqlx takes an
/// executor.
pub struct TransactionGuard {
    guard: OwnedMutexGuard<Slot>,
}

impl std::fmt::Debug for TransactionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionGuard").finish_non_exhaustive()
    }
}

impl Deref for TransactionGuard {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.guard.as_ref().expect("checked when the guard was made")
    }
}

impl DerefMut for TransactionGuard {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.guard.as_mut().expect("checked when the guard was made")
    }
}

/// The extractor's rejection: the route has no transaction to give.
#[derive(Debug, Clone, Copy)]
pub struct NoTransaction;

impl IntoResponse for NoTransaction {
    fn into_response(self) -> Response {
        tracing::error!(
            "a handler asked for a Transaction on a route without one; guard the route with IdempotencyLayer::transactional"
        );
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error").into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Transaction {
    type Rejection = NoTransaction;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Transaction>().cloned().ok_or(NoTransaction)
    }
}

/// `Option<Transaction>`: the request's transaction when its route has one, `None` otherwise,
/// for handlers that serve with and without a database.
impl<S: Send + Sync> OptionalFromRequestParts<S> for Transaction {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Transaction>().cloned())
    }
}
