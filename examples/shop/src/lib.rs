//! The whole shop in one process: the six services of `examples/`, each an ordinary chassis
//! service, started side by side on loopback. On [`Backend::Memory`] they share one in-memory
//! bus and keep their state in memory; on [`Backend::Broker`] each connects to the broker and
//! the database named by its config, exactly as it would as a separate process.

use std::sync::Arc;
use std::time::Duration;

use chassis::messaging::{MemoryTransport, Transport};
use chassis::{Options, RunningService};

/// The secret the shop's gateway signs identities with, and its services verify them with. A
/// demo value: a deployment reads its own from a file (`identity.secrets = [{ file = ... }]`).
pub const DEMO_IDENTITY_SECRET: &str = "demo-identity-secret-of-32-bytes!";

/// Where messages and state live.
#[derive(Debug, Clone)]
pub enum Backend {
    /// One in-memory bus shared by the services; state in memory.
    Memory,
    /// A broker and a database, selected by config: `messaging.transport`, `messaging.url`,
    /// `messaging.namespace`, and `postgres.url` or `store.kind = "redis"` with `redis.url`.
    Broker {
        /// `amqp` (RabbitMQ) or `nats` (JetStream).
        transport: String,
        /// The broker's URL.
        url: String,
        /// Prefix of queues, streams and subjects.
        namespace: String,
        /// Where the services keep their state.
        database: Database,
    },
}

/// The database of a [`Backend::Broker`] shop.
#[derive(Debug, Clone)]
pub enum Database {
    /// Everything in PostgreSQL: the services' rows, the outbox, the inbox, idempotent
    /// responses and the sagas. The URL may choose a schema (`?options=-c%20search_path%3Dname`).
    Postgres(String),
    /// Idempotency keys and processed message ids in Redis; the services' state and the sagas
    /// in memory.
    Redis(String),
}

/// How to start the shop.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The gateway's port, the others on the next five; 0 picks free ports.
    pub base_port: u16,
    /// Messages and state.
    pub backend: Backend,
    /// The gateway's limit for one attempt of a downstream call. Default 1 s.
    pub call_timeout: Duration,
    /// The orchestrator's limit for one attempt of a saga step. Default 2 s.
    pub step_timeout: Duration,
    /// The gateway's rate limit per client. Default 50.
    pub requests_per_second: u32,
    /// Further `(key, value)` config overrides for every service, e.g. an OTLP endpoint.
    pub overrides: Vec<(String, String)>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            base_port: 8080,
            backend: Backend::Memory,
            call_timeout: Duration::from_secs(1),
            step_timeout: Duration::from_secs(2),
            requests_per_second: 50,
            overrides: Vec::new(),
        }
    }
}

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
    /// Runs checkouts as sagas.
    pub orchestrator: RunningService,
    /// The in-memory bus the services share on [`Backend::Memory`].
    pub bus: Option<MemoryTransport>,
}

fn ms(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

impl Setup {
    fn options(&self, name: &str, offset: u16, bus: &Arc<dyn Transport>) -> Options {
        let port = if self.base_port == 0 {
            0
        } else {
            self.base_port + offset
        };
        let mut options = Options::new().service_defaults(name, env!("CARGO_PKG_VERSION"));
        let keeps_state = name != "gateway";
        if let Backend::Memory = self.backend {
            options = options.transport(bus.clone());
        }
        let (backend, overrides) = (self.backend.clone(), self.overrides.clone());
        options.configure(move |mut loader| {
            loader = loader
                .set("http.host", "127.0.0.1")
                .set("http.port", port)
                .set("admin.host", "127.0.0.1")
                .set("admin.port", 0)
                .set("shutdown.readiness_delay", "0s")
                // The gateway signs who each request is from; the services check it.
                .set("identity.secrets", vec![DEMO_IDENTITY_SECRET])
                .set("identity.incoming", if keeps_state { "verify" } else { "strip" });
            if let Backend::Broker {
                transport,
                url,
                namespace,
                database,
            } = backend
            {
                loader = loader
                    .set("messaging.transport", transport)
                    .set("messaging.url", url)
                    .set("messaging.namespace", namespace);
                // The gateway keeps no state.
                if keeps_state {
                    loader = match database {
                        Database::Postgres(url) => loader.set("postgres.url", url),
                        Database::Redis(url) => loader.set("store.kind", "redis").set("redis.url", url),
                    };
                }
            }
            for (key, value) in overrides {
                loader = loader.set(&key, value);
            }
            loader
        })
    }

    /// Points `[clients.<name>]` at each running service, with the shop's timeouts, one retry
    /// and a breaker that opens after three failures in a row.
    fn clients(options: Options, timeout: Duration, targets: Vec<(&'static str, std::net::SocketAddr)>) -> Options {
        options.configure(move |mut loader| {
            for (name, addr) in targets {
                let key = |k: &str| format!("clients.{name}.{k}");
                loader = loader
                    .set(&key("base_url"), format!("http://{addr}"))
                    .set(&key("attempt_timeout"), ms(timeout))
                    .set(&key("timeout"), ms(timeout * 3))
                    .set(&key("retry.max_retries"), 1)
                    .set(&key("retry.base_delay"), "10ms")
                    .set(&key("circuit_breaker.consecutive_failures"), 3)
                    .set(&key("circuit_breaker.open_duration"), "5s")
                    .set(&key("circuit_breaker.half_open_calls"), 1);
            }
            loader
        })
    }

    /// Starts the six services.
    pub async fn start(&self) -> Result<System, chassis::runtime::StartError> {
        let memory = MemoryTransport::new();
        let bus: Arc<dyn Transport> = Arc::new(memory.clone());
        let orders = chassis::start(self.options("orders", 1, &bus), shop_orders::service).await?;
        let inventory = chassis::start(self.options("inventory", 2, &bus), shop_inventory::service).await?;
        let payments = chassis::start(self.options("payments", 3, &bus), shop_payments::service).await?;
        let notifications = chassis::start(self.options("notifications", 4, &bus), shop_notifications::service).await?;
        let step_timeout = ms(self.step_timeout);
        let orchestrator_options = Self::clients(
            self.options("orchestrator", 5, &bus),
            self.step_timeout,
            vec![("inventory", inventory.http_addr()), ("payments", payments.http_addr())],
        )
        .configure(move |loader| loader.set("step_timeout", step_timeout));
        let orchestrator = chassis::start(orchestrator_options, shop_orchestrator::service).await?;
        let requests_per_second = self.requests_per_second;
        let gateway_options = Self::clients(
            self.options("gateway", 0, &bus),
            self.call_timeout,
            vec![
                ("orders", orders.http_addr()),
                ("payments", payments.http_addr()),
                ("inventory", inventory.http_addr()),
                ("orchestrator", orchestrator.http_addr()),
            ],
        )
        .configure(|loader| {
            loader
                .set("jwt.secrets", vec!["demo-secret"])
                .set("requests_per_second", requests_per_second)
        });
        let gateway = chassis::start(gateway_options, shop_gateway::service).await?;
        Ok(System {
            bus: matches!(self.backend, Backend::Memory).then_some(memory),
            gateway,
            orders,
            inventory,
            payments,
            notifications,
            orchestrator,
        })
    }
}

impl System {
    /// Stops every service, the gateway first.
    pub async fn stop(self) {
        self.gateway.stop().await;
        for service in [
            self.orchestrator,
            self.orders,
            self.inventory,
            self.payments,
            self.notifications,
        ] {
            service.stop().await;
        }
    }
}
