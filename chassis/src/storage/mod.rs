//! The service's own connections to PostgreSQL and Redis (`[postgres]`, `[redis]`), the
//! transaction an effect commits in together with the chassis' record of it, and the readiness
//! checks that watch the stores.

mod config;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "redis")]
pub(crate) mod redis;
#[cfg(any(feature = "postgres", feature = "redis"))]
pub(crate) mod span;
#[cfg(feature = "postgres")]
mod transaction;

pub use config::{PostgresConfig, RedisConfig};
#[cfg(feature = "postgres")]
pub use postgres::{POOL_CONNECTIONS, POOL_MAX_CONNECTIONS, migrate};
#[cfg(feature = "postgres")]
pub use transaction::{NoTransaction, Transaction, TransactionEnded, TransactionGuard};
