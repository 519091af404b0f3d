//! Assembles the layers, serves the main and admin listeners, and shuts down gracefully.
//!
//! [`run`] is what `#[chassis::main]` calls: it builds the tokio runtime, [`start`]s the
//! service, waits for SIGTERM or Ctrl-C and turns the outcome into an exit code. [`start`] is
//! the same without the runtime and the signals, for tests and for embedding.
//!
//! Start-up, in order: load and validate the config; install logging, tracing and metrics;
//! bind both listeners (so a taken port fails before any work is done); serve the admin
//! endpoints (the startup probe answers `fail` until init finishes); run the service's init
//! function; serve its routes; mark the service ready.
//!
//! Shutdown, in order: readiness turns to `fail`; after `shutdown.readiness_delay` the listener
//! closes and [`Context::shutdown_token`] fires; in-flight requests and the tasks started with
//! [`Context::spawn`] get `shutdown.grace_period` to finish; the admin listener closes;
//! buffered spans are exported.

mod admin;
mod checks;
mod config;
mod connection;
mod context;
mod dependencies;
pub mod inbound;
#[cfg(feature = "postgres")]
mod retention;
mod server;
mod settings;

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use admin::{PROMETHEUS_TEXT, admin_router};
pub use config::{ChassisConfig, Config};
pub use context::{Context, NotConfigured};
pub use inbound::Inbound;
#[cfg(feature = "postgres")]
pub use retention::RETENTION_DELETED_TOTAL;
pub use server::{CLOSED_CONNECTIONS, OPEN_CONNECTIONS, REJECTED_CONNECTIONS};
pub use settings::{AdminConfig, HttpConfig, RetentionConfig, ShutdownConfig, StartupConfig};

use crate::client::Clients;
use crate::config::{ConfigError, ConfigLoader};
use crate::health::HealthRegistry;
use crate::metrics::MetricsError;
use crate::resilience::CircuitBreakerRegistry;
use crate::telemetry::{TelemetryError, TelemetryGuard};

/// How to start a service: where its config comes from and how many worker threads it gets.
///
/// ```
/// use chassis::Options;
///
/// let options = Options::new()
///     .prefix("ORDERS")
///     .service_defaults("orders", "1.2.0")
///     .configure(|loader| loader.set("http.port", 0).set("admin.port", 0));
/// ```
#[derive(Default)]
pub struct Options {
    loader: ConfigLoader,
    worker_threads: Option<usize>,
    transport: Option<std::sync::Arc<dyn crate::messaging::Transport>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("loader", &self.loader)
            .field("worker_threads", &self.worker_threads)
            .field("transport", &self.transport.as_ref().map(|t| t.name()))
            .finish()
    }
}

impl Options {
    /// Config from `config/` and `APP__*` environment variables; as many worker threads as cores.
    pub fn new() -> Self {
        Self::default()
    }

    /// The environment variable prefix: `prefix("ORDERS")` reads `ORDERS__HTTP__PORT`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.loader = self.loader.prefix(prefix);
        self
    }

    /// The service's name and version unless the config sets `service.name` /
    /// `service.version`. `#[chassis::main]` passes the crate's name and version.
    pub fn service_defaults(mut self, name: &str, version: &str) -> Self {
        self.loader = self
            .loader
            .default_value("service.name", name)
            .default_value("service.version", version);
        self
    }

    /// Adjusts the config loader: extra files, defaults, overrides.
    pub fn configure(mut self, adjust: impl FnOnce(ConfigLoader) -> ConfigLoader) -> Self {
        self.loader = adjust(self.loader);
        self
    }

    /// Uses this message transport instead of connecting the one `[messaging]` names: several
    /// services started in one process (examples, tests) share one in-memory bus this way.
    pub fn transport(mut self, transport: std::sync::Arc<dyn crate::messaging::Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// Worker threads of the runtime [`run`] builds. Default: one per core.
    pub fn worker_threads(mut self, threads: usize) -> Self {
        self.worker_threads = Some(threads);
        self
    }
}

/// Why a service could not start. Each variant says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Logging or tracing could not be installed.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The metrics recorder could not be installed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({listener}): {source}; free the port or set {key} to another one")]
    Bind {
        /// `"http"` or `"admin"`.
        listener: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The config key that sets the port.
        key: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The message broker could not be set up: a transport that is not compiled in, or a
    /// broker that refused what the chassis declares.
    #[error("cannot start messaging: {0}; check messaging.url and that the broker is up")]
    Messaging(#[from] crate::messaging::MessagingError),
    /// A dependency (the broker, PostgreSQL, Redis) could not be reached within
    /// `startup.connect_timeout`, or refused what start-up asked of it.
    #[error(
        "cannot reach {what} (check {key}; waited {}): {reason}",
        crate::config::duration::format(waited)
    )]
    Unreachable {
        /// The dependency.
        what: String,
        /// The config key that points at it.
        key: String,
        /// How long start-up tried.
        waited: Duration,
        /// The last attempt's error.
        reason: String,
    },
    /// The listener's TLS certificate or key could not be loaded.
    #[error("cannot serve HTTPS: {0}; check http.tls.cert_file and http.tls.key_file")]
    Tls(crate::tls::TlsError),
    /// The service's init function returned an error.
    #[error("the service's init function failed: {}", .0.report())]
    Init(crate::Error),
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// Every in-flight request and background task finished within the grace period.
    Drained,
    /// The grace period ran out; the work still running was abandoned.
    GracePeriodExceeded,
}

impl Stopped {
    /// The process exit code for this outcome: success only when drained.
    pub fn exit_code(self) -> ExitCode {
        match self {
            Self::Drained => ExitCode::SUCCESS,
            Self::GracePeriodExceeded => ExitCode::FAILURE,
        }
    }
}

/// Triggers a graceful shutdown of a [`RunningService`] from anywhere. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Begins the graceful shutdown. Calling it again has no effect.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

/// A started service. Dropping it does not stop it; call [`RunningService::shutdown`] and
/// [`RunningService::wait`].
#[derive(Debug)]
pub struct RunningService {
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    health: HealthRegistry,
    begin: CancellationToken,
    supervisor: JoinHandle<Stopped>,
}

impl RunningService {
    /// The address the main listener is bound to (the real port when `http.port = 0`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The address serving `/health/*` and `/metrics` (the main one when `admin.shared`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The service's health registry.
    pub fn health(&self) -> &HealthRegistry {
        &self.health
    }

    /// A handle that begins the shutdown, for signal handlers and tests.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.begin.clone())
    }

    /// Begins the graceful shutdown.
    pub fn shutdown(&self) {
        self.begin.cancel();
    }

    /// Waits until the service has shut down.
    pub async fn wait(self) -> Stopped {
        self.supervisor.await.unwrap_or(Stopped::GracePeriodExceeded)
    }

    /// Begins the graceful shutdown and waits for it to end.
    pub async fn stop(self) -> Stopped {
        self.shutdown();
        self.wait().await
    }
}

/// Binds `addr` and returns the listener with the address it got (the real port for port 0).
async fn bind(
    addr: SocketAddr,
    listener: &'static str,
    key: &'static str,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Bind {
        listener,
        addr,
        key,
        source,
    };
    let bound = TcpListener::bind(addr).await.map_err(error)?;
    let local = bound.local_addr().map_err(error)?;
    Ok((bound, local))
}

/// Starts a service on the current tokio runtime and returns once it serves.
///
/// `init` gets the [`Context`] and returns the service's routes; it runs after the admin
/// endpoints are up and before the main listener accepts.
///
/// ```no_run
/// # async fn demo() -> Result<(), chassis::runtime::StartError> {
/// use axum::{Router, routing::get};
///
/// let service = chassis::start(chassis::Options::new(), |_ctx: chassis::Context<()>| async {
///     Ok(Router::new().route("/", get(|| async { "hi" })))
/// })
/// .await?;
/// println!("serving on {}", service.http_addr());
/// service.stop().await;
/// # Ok(()) }
/// ```
pub async fn start<T, F, Fut>(options: Options, init: F) -> Result<RunningService, StartError>
where
    T: DeserializeOwned + Send + Sync + 'static,
    F: FnOnce(Context<T>) -> Fut,
    Fut: Future<Output = crate::Result<Router>>,
{
    let config = Config::<T>::load(&options.loader)?;
    let chassis = config.chassis.clone();
    let telemetry = crate::telemetry::init(&chassis.service, &chassis.telemetry)?;
    let metrics = match chassis.metrics.enabled {
        true => Some(crate::metrics::install(&chassis.metrics, &chassis.service)?),
        false => None,
    };
    #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
    if let (Some(handle), Some(export)) = (&metrics, crate::telemetry::metric_export()) {
        // Before any request: the HTTP metrics keep the handles they register.
        if handle.export_to(
            export.meter(),
            Some(tokio::runtime::Handle::current()),
            &chassis.service,
        ) {
            let hooks = handle.clone();
            export.before_collection(move || hooks.run_hooks());
        }
    }
    let health = HealthRegistry::for_service(chassis.health.clone(), &chassis.service.name, &chassis.service.version);

    let (main_listener, http_addr) = bind(chassis.http.addr(), "http", "http.port").await?;
    let breakers = CircuitBreakerRegistry::new();
    health.register(checks::circuit_breakers(breakers.clone()));
    let dead_letters = admin::DeadLetterSource::default();
    let admin = admin_router(health.clone(), metrics.clone(), breakers.clone())
        .merge(admin::dead_letter_routes(dead_letters.clone()));
    let limits = std::sync::Arc::new(connection::Limits::of(&chassis.http));
    let tls = match &chassis.http.tls {
        Some(tls) => Some(std::sync::Arc::new(
            crate::tls::ReloadingAcceptor::new(tls).map_err(StartError::Tls)?,
        )),
        None => None,
    };
    describe_metrics();
    let connections = TaskTracker::new();
    // The admin listener keeps answering while the service drains: readiness must say `fail`.
    let admin_phases = connection::Phases::default();
    let admin_stop = admin_phases.stop.clone();
    let (admin_addr, admin_server) = if chassis.admin.shared {
        (http_addr, None)
    } else {
        let (listener, addr) = bind(chassis.admin.addr(), "admin", "admin.port").await?;
        let listener = server::Listener {
            tcp: listener,
            name: "admin",
            tls: None,
            max_connections: chassis.http.max_connections,
            limits: limits.clone(),
        };
        let admin = admin.clone();
        let accept = server::spawn(listener, move |_| admin.clone(), admin_phases, TaskTracker::new());
        (addr, Some(accept))
    };
    // A service that configured no broker and uses none reports no messaging checks.
    let messaging_configured = chassis.messaging.transport != "memory" || options.transport.is_some();
    // The admin endpoints answer from here on; the startup probe fails until init is done.
    let dependencies = match dependencies::connect(&chassis, options.transport, &health).await {
        Ok(dependencies) => dependencies,
        Err(error) => {
            admin_stop.cancel();
            return Err(error);
        }
    };
    let _ = dead_letters.set(dependencies.transport.clone());
    #[cfg(feature = "postgres")]
    if let (Some(handle), Some(pool)) = (&metrics, &dependencies.postgres) {
        let (pool, name) = (pool.clone(), chassis.service.name.clone());
        handle.on_scrape(move || crate::storage::postgres::record_pool(&pool, &name));
    }

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let clients = Clients::new(chassis.clients.clone(), breakers);
    let bus = crate::messaging::Bus::from_arc(
        dependencies.transport.clone(),
        chassis.service.name.as_str(),
        chassis.messaging.clone(),
    );
    let phases = connection::Phases {
        stop: stop.clone(),
        ..connection::Phases::default()
    };
    let ctx = Context::new(context::Parts {
        config,
        clients,
        bus,
        health: health.clone(),
        metrics,
        shutdown: stop.clone(),
        tasks: tasks.clone(),
        #[cfg(feature = "postgres")]
        postgres: dependencies.postgres.clone(),
        #[cfg(feature = "redis")]
        redis: dependencies.redis.clone(),
        listeners: context::Listeners {
            limits: limits.clone(),
            phases: phases.clone(),
            connections: connections.clone(),
        },
    });
    let outbox_used = ctx.outbox_used();
    let messaging_bus = ctx.bus().clone();
    let routes = match init(ctx).await {
        Ok(routes) => routes,
        Err(error) => {
            stop.cancel();
            admin_stop.cancel();
            return Err(StartError::Init(error));
        }
    };
    if messaging_configured || messaging_bus.has_consumers() || outbox_used.load(std::sync::atomic::Ordering::Acquire) {
        health.register(checks::broker(dependencies.transport.clone()));
        health.register(messaging_bus.consumers_check());
    }
    #[cfg(feature = "postgres")]
    if let Some(pool) = &dependencies.postgres {
        if outbox_used.load(std::sync::atomic::Ordering::Acquire) {
            let (namespace, service) = (&chassis.messaging.namespace, &chassis.service.name);
            let relay = crate::outbox::Relay::new(
                pool.clone(),
                dependencies.transport.clone(),
                chassis.outbox.clone(),
                namespace,
                service,
            );
            tasks.spawn(relay.run(stop.clone()));
            health.register(crate::outbox::health_check(
                pool.clone(),
                namespace,
                service,
                chassis.outbox.lag_warning,
            ));
        }
        tasks.spawn(retention::run(pool.clone(), chassis.retention.clone(), stop.clone()));
    }
    #[cfg(not(feature = "postgres"))]
    let _ = outbox_used;

    let mut inbound = Inbound::new(routes, &chassis);
    if chassis.admin.shared {
        inbound = inbound.with_admin(admin);
    }
    if let Some(tls) = &tls {
        tasks.spawn(reload_certificates(tls.clone(), stop.clone()));
    }
    let listener = server::Listener {
        tcp: main_listener,
        name: "http",
        tls,
        max_connections: chassis.http.max_connections,
        limits,
    };
    server::spawn(
        listener,
        move |peer| inbound.clone().with_remote_addr(peer),
        phases.clone(),
        connections.clone(),
    );
    health.mark_ready();
    tracing::info!(
        service = %chassis.service.name,
        version = %chassis.service.version,
        environment = %chassis.service.environment,
        http = %http_addr,
        admin = %admin_addr,
        "service started"
    );

    let begin = CancellationToken::new();
    let supervisor = tokio::spawn(supervise(Supervised {
        begin: begin.clone(),
        phases,
        admin_stop,
        connections,
        admin_server,
        tasks,
        health: health.clone(),
        config: chassis.shutdown.clone(),
        telemetry,
    }));
    Ok(RunningService {
        http_addr,
        admin_addr,
        health,
        begin,
        supervisor,
    })
}

struct Supervised {
    begin: CancellationToken,
    phases: connection::Phases,
    admin_stop: CancellationToken,
    connections: TaskTracker,
    admin_server: Option<JoinHandle<()>>,
    tasks: TaskTracker,
    health: HealthRegistry,
    config: ShutdownConfig,
    telemetry: TelemetryGuard,
}

async fn supervise(s: Supervised) -> Stopped {
    s.begin.cancelled().await;
    s.health.mark_draining();
    // From here every response closes its connection and idle connections are closed, so
    // clients move to other replicas while this one still answers.
    s.phases.draining.cancel();
    tracing::info!(
        readiness_delay = %crate::config::duration::format(&s.config.readiness_delay),
        "shutdown started: readiness now fails and connections are closed after their response; \
         the listener closes after the readiness delay"
    );
    tokio::time::sleep(s.config.readiness_delay).await;
    s.phases.stop.cancel();
    s.tasks.close();
    s.connections.close();
    let drain = async {
        tokio::join!(s.connections.wait(), s.tasks.wait());
    };
    let outcome = match tokio::time::timeout(s.config.grace_period, drain).await {
        Ok(()) => {
            tracing::info!("in-flight work drained");
            Stopped::Drained
        }
        Err(_) => {
            s.phases.abandon.cancel();
            tracing::error!(
                grace_period = %crate::config::duration::format(&s.config.grace_period),
                connections = s.connections.len(),
                background_tasks = s.tasks.len(),
                "shutdown.grace_period ran out; abandoning the requests and tasks still running"
            );
            Stopped::GracePeriodExceeded
        }
    };
    s.admin_stop.cancel();
    if let Some(admin) = s.admin_server {
        // Scrapers and probes hold no long requests; a second is plenty.
        let _ = tokio::time::timeout(Duration::from_secs(1), admin).await;
    }
    s.telemetry.shutdown().await;
    outcome
}

/// Gives every metric the chassis records its HELP text (and unit), so each exposition passes
/// `promtool check metrics`.
fn describe_metrics() {
    server::describe_metrics();
    crate::resilience::describe_metrics();
    crate::client::describe_metrics();
    crate::idempotency::describe_metrics();
    crate::messaging::describe_metrics();
    crate::saga::describe_metrics();
    crate::outbox::describe_metrics();
    crate::telemetry::describe_metrics();
    #[cfg(feature = "postgres")]
    crate::storage::postgres::describe_metrics();
    #[cfg(feature = "postgres")]
    metrics::describe_counter!(
        RETENTION_DELETED_TOTAL,
        "Rows of the chassis' tables deleted by retention, by table."
    );
}

/// Checks the listener's certificate files every `reload_interval` and uses renewed ones.
async fn reload_certificates(tls: std::sync::Arc<crate::tls::ReloadingAcceptor>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(tls.reload_interval()) => {}
        }
        match tls.reload_if_changed() {
            Ok(true) => tracing::info!("the listener's TLS certificate changed on disk and is in use"),
            Ok(false) => {}
            Err(error) => tracing::error!(
                %error,
                "the listener's TLS files changed but cannot be used; the previous certificate stays in use"
            ),
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Runs a service to completion: builds the tokio runtime, [`start`]s the service, shuts it down
/// gracefully on SIGTERM or Ctrl-C (a second signal exits at once), and returns the exit code.
/// A start-up failure is printed as one clear message on stderr.
///
/// This is what `#[chassis::main]` expands to.
///
/// ```no_run
/// use axum::{Router, routing::get};
///
/// fn main() -> std::process::ExitCode {
///     chassis::run(chassis::Options::new(), |_ctx: chassis::Context<()>| async {
///         Ok(Router::new().route("/", get(|| async { "hi" })))
///     })
/// }
/// ```
pub fn run<T, F, Fut>(options: Options, init: F) -> ExitCode
where
    T: DeserializeOwned + Send + Sync + 'static,
    F: FnOnce(Context<T>) -> Fut,
    Fut: Future<Output = crate::Result<Router>>,
{
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = options.worker_threads {
        builder.worker_threads(threads);
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot build the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let service = match start(options, init).await {
            Ok(service) => service,
            Err(error) => {
                eprintln!("error: the service could not start: {error}");
                return ExitCode::FAILURE;
            }
        };
        let handle = service.shutdown_handle();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("signal received; shutting down gracefully (send it again to exit at once)");
            handle.shutdown();
            shutdown_signal().await;
            eprintln!("second signal: exiting without waiting for in-flight work");
            std::process::exit(130);
        });
        service.wait().await.exit_code()
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}
