//! Redis connections.

use redis::aio::ConnectionManager;

use crate::health::{Check, CheckResult};

/// `redis:ping`: a `PING` through `connection`; `fail` with the error when Redis cannot be
/// reached.
pub(crate) fn health_check(connection: ConnectionManager) -> Check {
    Check::new("redis:ping", move || {
        let mut connection = connection.clone();
        async move {
            match redis::cmd("PING").query_async::<String>(&mut connection).await {
                Ok(_) => CheckResult::pass(),
                Err(error) => CheckResult::fail(format!("Redis is unreachable: {error}")),
            }
        }
    })
    .component_type("datastore")
}
