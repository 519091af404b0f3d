//! Connections to the stores the chassis keeps its own state in (idempotency keys, processed
//! messages, saga state), shared by the modules that keep it there, and the readiness checks
//! that watch them.

#[cfg(feature = "postgres")]
pub(crate) mod postgres;
#[cfg(feature = "redis")]
pub(crate) mod redis;
