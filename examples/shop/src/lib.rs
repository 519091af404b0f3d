//! An event-driven shop on the chassis: an API gateway in front of orders, inventory, payments
//! and notifications, which talk through events (fan-out, choreography with compensation) and
//! call each other over HTTP through the chassis client (retries, circuit breakers).
//!
//! `start` runs the whole system in one process on a shared in-memory bus.

pub mod events;
pub mod gateway;
pub mod services;

use std::sync::Arc;

use chassis::messaging::{MemoryTransport, Transport};
use chassis::{Options, RunningService};

/// The running system.
#[derive(Debug)]
pub struct System {
    /// The front door.
    pub gateway: RunningService,
    /// Takes orders, follows their state.
    pub orders: RunningService,
    /// Reserves stock.
    pub inventory: RunningService,
    /// Captures and refunds payments.
    pub payments: RunningService,
    /// Sends messages.
    pub notifications: RunningService,
}

fn options(name: &str, port: u16, bus: &Arc<dyn Transport>) -> Options {
    Options::new()
        .service_defaults(name, env!("CARGO_PKG_VERSION"))
        .transport(bus.clone())
        .configure(move |loader| {
            loader
                .set("http.host", "127.0.0.1")
                .set("http.port", port)
                .set("admin.host", "127.0.0.1")
                .set("admin.port", 0)
                .set("shutdown.readiness_delay", "0s")
        })
}

/// Starts the five services; `base_port` 0 picks free ports (tests), otherwise the gateway gets
/// `base_port` and the others the next four.
pub async fn start(base_port: u16) -> Result<System, chassis::runtime::StartError> {
    let bus: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let port = |offset: u16| if base_port == 0 { 0 } else { base_port + offset };
    let orders = chassis::start(options("orders", port(1), &bus), services::orders).await?;
    let inventory = chassis::start(options("inventory", port(2), &bus), services::inventory).await?;
    let payments = chassis::start(options("payments", port(3), &bus), services::payments).await?;
    let notifications = chassis::start(options("notifications", port(4), &bus), services::notifications).await?;
    let urls = [
        ("orders", orders.http_addr()),
        ("payments", payments.http_addr()),
        ("inventory", inventory.http_addr()),
    ];
    let gateway_options = options("gateway", port(0), &bus).configure(move |mut loader| {
        for (name, addr) in urls {
            let key = |k: &str| format!("clients.{name}.{k}");
            loader = loader
                .set(&key("base_url"), format!("http://{addr}"))
                .set(&key("attempt_timeout"), "1s")
                .set(&key("timeout"), "3s")
                .set(&key("retry.max_retries"), 1)
                .set(&key("retry.base_delay"), "10ms")
                .set(&key("circuit_breaker.consecutive_failures"), 3)
                .set(&key("circuit_breaker.open_duration"), "5s")
                .set(&key("circuit_breaker.half_open_calls"), 1);
        }
        loader
    });
    let gateway = chassis::start(gateway_options, gateway::gateway).await?;
    Ok(System {
        gateway,
        orders,
        inventory,
        payments,
        notifications,
    })
}

impl System {
    /// Stops every service, the gateway first.
    pub async fn stop(self) {
        self.gateway.stop().await;
        for service in [self.orders, self.inventory, self.payments, self.notifications] {
            service.stop().await;
        }
    }
}
