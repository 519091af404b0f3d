//! The smallest chassis service: one route, one setting, and a readiness check for the one
//! dependency it can be given.
//!
//! ```text
//! cargo run -p hello
//! curl localhost:8080/hello/world          # {"message":"Hello, world!"}
//! curl localhost:9090/health/ready         # application/health+json
//! curl localhost:9090/metrics              # Prometheus text
//! APP__GREETING=Howdy cargo run -p hello   # settings come from config/ and APP__* variables
//! APP__UPSTREAM=127.0.0.1:6379 cargo run -p hello   # readiness fails while that is unreachable
//! ```

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chassis::health::checks;
use serde::{Deserialize, Serialize};

/// The service's own settings: everything outside the chassis' sections.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct Settings {
    greeting: String,
    /// `host:port` of a server this service depends on; readiness checks that it accepts
    /// connections. None by default: hello depends on nothing.
    upstream: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            greeting: "Hello".into(),
            upstream: None,
        }
    }
}

#[derive(Clone)]
struct AppState {
    greeting: Arc<str>,
}

#[derive(Serialize)]
struct Greeting {
    message: String,
}

async fn hello(State(state): State<AppState>, Path(name): Path<String>) -> Json<Greeting> {
    tracing::info!(%name, "greeting");
    Json(Greeting {
        message: format!("{}, {name}!", state.greeting),
    })
}

#[chassis::main]
async fn main(ctx: chassis::Context<Settings>) -> chassis::Result<Router> {
    let state = AppState {
        greeting: ctx.settings().greeting.as_str().into(),
    };
    if let Some(upstream) = &ctx.settings().upstream {
        ctx.health()
            .register(checks::tcp("upstream:connect", upstream.as_str()));
    }
    Ok(Router::new().route("/hello/{name}", get(hello)).with_state(state))
}
