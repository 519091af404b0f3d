//! The smallest chassis service: one route, one setting, one health check.
//!
//! ```text
//! cargo run -p hello
//! curl localhost:8080/hello/world          # {"message":"Hello, world!"}
//! curl localhost:9090/health/ready         # application/health+json
//! curl localhost:9090/metrics              # Prometheus text
//! APP__GREETING=Howdy cargo run -p hello   # settings come from config/ and APP__* variables
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chassis::health::{Check, CheckResult};
use serde::{Deserialize, Serialize};

/// The service's own settings: everything outside the chassis' sections.
#[derive(Debug, Deserialize)]
#[serde(default)]
struct Settings {
    greeting: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            greeting: "Hello".into(),
        }
    }
}

#[derive(Clone)]
struct AppState {
    greeting: Arc<str>,
    served: Arc<AtomicU64>,
}

#[derive(Serialize)]
struct Greeting {
    message: String,
}

async fn hello(State(state): State<AppState>, Path(name): Path<String>) -> Json<Greeting> {
    state.served.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%name, "greeting");
    Json(Greeting {
        message: format!("{}, {name}!", state.greeting),
    })
}

#[chassis::main]
async fn main(ctx: chassis::Context<Settings>) -> chassis::Result<Router> {
    let state = AppState {
        greeting: ctx.settings().greeting.as_str().into(),
        served: Arc::default(),
    };
    let served = state.served.clone();
    ctx.health().register(Check::new("greetings:served", move || {
        let served = served.load(Ordering::Relaxed);
        async move { CheckResult::pass().with_observed_value(served, "greetings") }
    }));
    Ok(Router::new().route("/hello/{name}", get(hello)).with_state(state))
}
