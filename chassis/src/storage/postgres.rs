//! PostgreSQL connection pools.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

/// The small pool the chassis' PostgreSQL stores open for themselves.
pub(crate) async fn connect_pool(url: &str) -> Result<PgPool, String> {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect: {e}"))
}
