//! Helpers for service authors' tests (feature `testing`): start a service on free loopback
//! ports, and capture the spans it exports with an in-process OTLP receiver.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//!
//! # async fn demo() {
//! let service = chassis::testing::spawn(|_ctx: chassis::Context<()>| async {
//!     Ok(Router::new().route("/", get(|| async { "hi" })))
//! })
//! .await;
//! let url = format!("http://{}/", service.http_addr());
//! # let _ = url;
//! service.stop().await;
//! # }
//! ```

mod otlp;

use std::future::Future;

use axum::Router;
use serde::de::DeserializeOwned;

pub use otlp::{OtlpReceiver, ReceivedSpan};

use crate::runtime::{Context, Options, RunningService};

/// Options for a test: both listeners on `127.0.0.1` with free ports, no readiness delay at
/// shutdown. Adjust further with [`Options::configure`].
pub fn options() -> Options {
    Options::new().configure(|loader| {
        loader
            .set("http.host", "127.0.0.1")
            .set("http.port", 0)
            .set("admin.host", "127.0.0.1")
            .set("admin.port", 0)
            .set("shutdown.readiness_delay", "0s")
    })
}

/// Starts a service with [`options`] and panics with the start-up error if it cannot start.
pub async fn spawn<T, F, Fut>(init: F) -> RunningService
where
    T: DeserializeOwned + Send + Sync + 'static,
    F: FnOnce(Context<T>) -> Fut,
    Fut: Future<Output = crate::Result<Router>>,
{
    spawn_with(options(), init).await
}

/// Starts a service with the given options and panics with the start-up error if it cannot
/// start.
pub async fn spawn_with<T, F, Fut>(options: Options, init: F) -> RunningService
where
    T: DeserializeOwned + Send + Sync + 'static,
    F: FnOnce(Context<T>) -> Fut,
    Fut: Future<Output = crate::Result<Router>>,
{
    match crate::runtime::start(options, init).await {
        Ok(service) => service,
        Err(error) => panic!("the service under test could not start: {error}"),
    }
}
