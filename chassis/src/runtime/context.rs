use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ChassisConfig, Config};
use crate::client::{Client, ClientError, Clients};
use crate::health::HealthRegistry;
use crate::messaging::{Bus, Command, Event, MessageHandler, MessagingError};
use crate::metrics::MetricsHandle;
use crate::resilience::CircuitBreakerRegistry;

/// What a service's init function gets: its settings, the chassis config, the health registry
/// and the hooks into graceful shutdown. Cheap to clone.
///
/// ```
/// use chassis::Context;
/// use chassis::health::{Check, CheckResult};
///
/// #[derive(serde::Deserialize)]
/// struct Settings { greeting: String }
///
/// async fn init(ctx: Context<Settings>) -> chassis::Result<axum::Router> {
///     let greeting = ctx.settings().greeting.clone();
///     ctx.health().register(Check::new("cache", || async { CheckResult::pass() }));
///     let stop = ctx.shutdown_token();
///     ctx.spawn(async move { stop.cancelled().await /* a worker loop would select on this */ });
///     Ok(axum::Router::new().route("/", axum::routing::get(move || async move { greeting })))
/// }
/// ```
pub struct Context<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    config: Config<T>,
    clients: Clients,
    bus: Bus,
    health: HealthRegistry,
    metrics: Option<MetricsHandle>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    #[cfg(feature = "postgres")]
    postgres: Option<sqlx::PgPool>,
    #[cfg(feature = "redis")]
    redis: Option<redis::aio::ConnectionManager>,
    /// Set when the service asks for the outbox: the runtime then runs its relay.
    outbox_used: Arc<AtomicBool>,
    listeners: Listeners,
}

/// What an extra listener shares with the main one: its connection limits, its phases at
/// shutdown and the tracker shutdown waits on.
#[derive(Debug, Clone)]
pub(super) struct Listeners {
    pub(super) limits: Arc<super::connection::Limits>,
    pub(super) phases: super::connection::Phases,
    pub(super) connections: TaskTracker,
}

/// What the runtime hands a [`Context`].
pub(super) struct Parts<T> {
    pub(super) config: Config<T>,
    pub(super) clients: Clients,
    pub(super) bus: Bus,
    pub(super) health: HealthRegistry,
    pub(super) metrics: Option<MetricsHandle>,
    pub(super) shutdown: CancellationToken,
    pub(super) tasks: TaskTracker,
    #[cfg(feature = "postgres")]
    pub(super) postgres: Option<sqlx::PgPool>,
    #[cfg(feature = "redis")]
    pub(super) redis: Option<redis::aio::ConnectionManager>,
    pub(super) listeners: Listeners,
}

/// The service asked for a dependency its configuration does not set up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} is not configured: set {key} (for example with the environment variable {variable})")]
pub struct NotConfigured {
    /// The dependency.
    pub what: &'static str,
    /// The config key that sets it up.
    pub key: &'static str,
    /// The environment variable for the key, with the default prefix.
    pub variable: &'static str,
}

impl<T> Clone for Context<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Context<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("service", &self.inner.config.chassis.service.name)
            .field("shutting_down", &self.inner.shutdown.is_cancelled())
            .field("tasks", &self.inner.tasks.len())
            .finish_non_exhaustive()
    }
}

impl<T> Context<T> {
    pub(super) fn new(parts: Parts<T>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config: parts.config,
                clients: parts.clients,
                bus: parts.bus,
                health: parts.health,
                metrics: parts.metrics,
                shutdown: parts.shutdown,
                tasks: parts.tasks,
                #[cfg(feature = "postgres")]
                postgres: parts.postgres,
                #[cfg(feature = "redis")]
                redis: parts.redis,
                outbox_used: Arc::default(),
                listeners: parts.listeners,
            }),
        }
    }

    pub(super) fn outbox_used(&self) -> Arc<AtomicBool> {
        self.inner.outbox_used.clone()
    }

    /// The pool of the service's PostgreSQL (`[postgres]`), connected at start with the
    /// chassis' tables created; its readiness check is registered.
    ///
    /// Needs the cargo feature `postgres`.
    #[cfg(feature = "postgres")]
    pub fn postgres(&self) -> Result<&sqlx::PgPool, NotConfigured> {
        self.inner.postgres.as_ref().ok_or(NotConfigured {
            what: "PostgreSQL",
            key: "postgres.url",
            variable: "APP__POSTGRES__URL",
        })
    }

    /// The connection to the service's Redis (`[redis]`), connected at start; its readiness
    /// check is registered. Cheap to clone; it reconnects by itself.
    ///
    /// Needs the cargo feature `redis`.
    #[cfg(feature = "redis")]
    pub fn redis(&self) -> Result<redis::aio::ConnectionManager, NotConfigured> {
        self.inner.redis.clone().ok_or(NotConfigured {
            what: "Redis",
            key: "redis.url",
            variable: "APP__REDIS__URL",
        })
    }

    /// The transactional outbox in the service's PostgreSQL: messages added in a transaction
    /// are published once it commits. Asking for it makes the runtime run the outbox relay and
    /// its `outbox:lag` readiness check.
    ///
    /// Needs the cargo feature `postgres`.
    #[cfg(feature = "postgres")]
    pub fn outbox(&self) -> Result<crate::outbox::Outbox, NotConfigured> {
        self.postgres()?;
        self.inner.outbox_used.store(true, std::sync::atomic::Ordering::Release);
        let config = self.config();
        Ok(crate::outbox::Outbox::new(
            config.service.name.as_str(),
            &config.messaging.namespace,
        ))
    }

    /// The inbox in the service's PostgreSQL: message handlers whose effect and processed
    /// record commit in one transaction.
    ///
    /// Needs the cargo feature `postgres`.
    #[cfg(feature = "postgres")]
    pub fn inbox(&self) -> Result<crate::messaging::Inbox, NotConfigured> {
        Ok(crate::messaging::Inbox::new(self.postgres()?.clone()))
    }

    /// The service's own settings: everything in the config tree outside the chassis' sections.
    pub fn settings(&self) -> &T {
        &self.inner.config.settings
    }

    /// The chassis' sections of the config (`[service]`, `[http]`, `[telemetry]`, ...).
    pub fn config(&self) -> &ChassisConfig {
        &self.inner.config.chassis
    }

    /// The health registry behind `/health/*`: register checks for the service's dependencies.
    pub fn health(&self) -> &HealthRegistry {
        &self.inner.health
    }

    /// The Prometheus handle, when metrics are enabled.
    pub fn metrics(&self) -> Option<&MetricsHandle> {
        self.inner.metrics.as_ref()
    }

    /// The client configured under `[clients.<name>]`, built on first use and shared after.
    ///
    /// A name that is not configured is an error listing the names that are.
    pub fn client(&self, name: &str) -> Result<Client, ClientError> {
        self.inner.clients.get(name)
    }

    /// The service's circuit breakers (those of its clients, and any it creates itself). An
    /// open breaker turns readiness to `warn`.
    pub fn circuit_breakers(&self) -> &CircuitBreakerRegistry {
        self.inner.clients.breakers()
    }

    /// The message bus configured under `[messaging]` (in-memory unless set).
    pub fn bus(&self) -> &Bus {
        &self.inner.bus
    }

    /// Subscribes `group` to events of type `M` with `handler`, run as tracked background
    /// tasks: at shutdown they stop taking messages, finish the ones in hand and acknowledge
    /// them within the grace period.
    pub async fn subscribe<M, H>(&self, group: &str, handler: H) -> Result<(), MessagingError>
    where
        M: Event,
        H: MessageHandler<M>,
    {
        let consumers = self.inner.bus.subscribe(group, handler, self.shutdown_token()).await?;
        self.track(consumers);
        Ok(())
    }

    /// Registers the handler of command `C`, run like [`Context::subscribe`].
    pub async fn handle<C, H>(&self, handler: H) -> Result<(), MessagingError>
    where
        C: Command,
        H: MessageHandler<C>,
    {
        let consumers = self.inner.bus.handle::<C, _>(handler, self.shutdown_token()).await?;
        self.track(consumers);
        Ok(())
    }

    fn track(&self, consumers: Vec<JoinHandle<()>>) {
        self.inner.tasks.spawn(async move {
            for consumer in consumers {
                let _ = consumer.await;
            }
        });
    }

    /// A token cancelled when the listener closes at shutdown (after the readiness delay).
    /// Background loops (consumers, pollers) stop taking new work when it fires and finish what
    /// they hold within `shutdown.grace_period`.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Spawns a background task that shutdown waits for (within `shutdown.grace_period`).
    /// The task should watch [`Context::shutdown_token`] to know when to stop.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.tasks.spawn(task)
    }

    /// Serves `routes` on a listener of their own at `addr`, with the same inbound stack and
    /// connection limits as the main listener, draining and closing with it at shutdown.
    /// Returns the bound address (the real port for port 0). `name` is the `listener` label
    /// of its connection metrics.
    ///
    /// For a second face of one service: the sidecar's egress port next to its ingress, an
    /// internal API on another interface.
    ///
    /// ```no_run
    /// # async fn demo(ctx: chassis::Context<()>) -> chassis::Result<()> {
    /// let internal = axum::Router::new().route("/internal", axum::routing::get(|| async { "ok" }));
    /// let addr = ctx.listen("internal", "127.0.0.1:15001".parse()?, internal).await?;
    /// # let _ = addr; Ok(()) }
    /// ```
    pub async fn listen(
        &self,
        name: &'static str,
        addr: std::net::SocketAddr,
        routes: axum::Router,
    ) -> crate::Result<std::net::SocketAddr> {
        let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            crate::Error::msg(format!(
                "cannot listen on {addr} ({name}): {e}; free the port or choose another"
            ))
        })?;
        let bound = tcp.local_addr()?;
        let inbound = super::Inbound::new(routes, self.config());
        let listeners = &self.inner.listeners;
        let listener = super::server::Listener {
            tcp,
            name,
            tls: None,
            max_connections: self.config().http.max_connections,
            limits: listeners.limits.clone(),
        };
        super::server::spawn(
            listener,
            move |peer| inbound.clone().with_remote_addr(peer),
            listeners.phases.clone(),
            listeners.connections.clone(),
        );
        Ok(bound)
    }

    /// The tracker of tasks started with [`Context::spawn`].
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }
}
