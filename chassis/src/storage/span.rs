//! Spans of the chassis' own database calls (its idempotency records, inbox, outbox and saga
//! state), after OpenTelemetry's stable database conventions: kind CLIENT, named
//! `{db.operation.name} {db.collection.name}`, with `db.system.name`, `db.namespace`,
//! `server.address` and `server.port` (an integer), and on failure `error.type`,
//! `db.response.status_code` and status ERROR.

use std::future::Future;
use std::sync::Arc;

use tracing::field::Empty;
use tracing::{Instrument as _, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The database a store talks to, as its spans name it. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Database {
    /// `db.system.name`: `postgresql` or `redis`.
    system: &'static str,
    /// `db.namespace`: the PostgreSQL database, the Redis database index.
    namespace: Option<Arc<str>>,
    /// `server.address` and `server.port`; `None` over a Unix socket or when not known.
    server: Option<(Arc<str>, u16)>,
}

impl Database {
    /// The database `pool` connects to.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres(pool: &sqlx::PgPool) -> Self {
        let options = pool.connect_options();
        Self {
            system: "postgresql",
            namespace: options.get_database().map(Into::into),
            server: options
                .get_socket()
                .is_none()
                .then(|| (options.get_host().into(), options.get_port())),
        }
    }

    /// PostgreSQL reached through a connection the caller holds, whose address is not known here.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres_unknown() -> Self {
        Self {
            system: "postgresql",
            namespace: None,
            server: None,
        }
    }

    /// The Redis server `info` describes; `None`: a connection made elsewhere.
    #[cfg(feature = "redis")]
    pub(crate) fn redis(info: Option<&redis::ConnectionInfo>) -> Self {
        let server = info.and_then(|info| match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) | redis::ConnectionAddr::TcpTls { host, port, .. } => {
                Some((Arc::from(host.as_str()), *port))
            }
            _ => None,
        });
        Self {
            system: "redis",
            namespace: Some(info.map_or(0, |info| info.redis_settings().db()).to_string().into()),
            server,
        }
    }

    /// A span for one call: `operation` is the statement's verb (`INSERT`) or the Redis
    /// command (`EVALSHA`), `collection` the table, if any.
    pub(crate) fn span(&self, operation: &'static str, collection: Option<&'static str>) -> Span {
        let span = tracing::info_span!(
            target: "chassis::storage",
            "database call",
            otel.kind = "client",
            otel.name = Empty,
            db.system.name = self.system,
            db.operation.name = operation,
            db.collection.name = collection,
            db.namespace = self.namespace.as_deref(),
            server.address = self.server.as_ref().map(|(host, _)| &**host),
            otel.status_code = Empty,
            error.type = Empty,
            db.response.status_code = Empty,
        );
        if !span.is_disabled() {
            match collection {
                Some(collection) => span.record("otel.name", format!("{operation} {collection}")),
                None => span.record("otel.name", operation),
            };
            if let Some((_, port)) = &self.server {
                // An integer through the OpenTelemetry API: a `tracing` field would arrive as a string.
                span.set_attribute("server.port", i64::from(*port));
            }
        }
        span
    }

    /// Runs `call` inside a span of its own (see [`span`](Self::span)), recording its failure.
    pub(crate) async fn call<T, E: CallError>(
        &self,
        operation: &'static str,
        collection: Option<&'static str>,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let span = self.span(operation, collection);
        let result = call.instrument(span.clone()).await;
        if let Err(error) = &result {
            failed(&span, error);
        }
        result
    }
}

/// Marks `span` failed with `error`'s class and the database's own code.
pub(crate) fn failed(span: &Span, error: &impl CallError) {
    span.record("otel.status_code", "error");
    let code = error.status_code();
    span.record("error.type", code.as_deref().unwrap_or(error.class()));
    if let Some(code) = code {
        span.record("db.response.status_code", code.as_str());
    }
}

/// What a failed database call records on its span.
pub(crate) trait CallError {
    /// The database's code for the failure (PostgreSQL's SQLSTATE, Redis' error prefix).
    fn status_code(&self) -> Option<String>;
    /// A low-cardinality class for the failure when the database gave no code.
    fn class(&self) -> &'static str;
}

#[cfg(feature = "postgres")]
impl CallError for sqlx::Error {
    fn status_code(&self) -> Option<String> {
        match self {
            sqlx::Error::Database(error) => error.code().map(|code| code.into_owned()),
            _ => None,
        }
    }

    fn class(&self) -> &'static str {
        match self {
            sqlx::Error::PoolTimedOut => "pool_timed_out",
            sqlx::Error::PoolClosed => "pool_closed",
            sqlx::Error::Io(_) => "io",
            sqlx::Error::Tls(_) => "tls",
            sqlx::Error::Protocol(_) => "protocol",
            sqlx::Error::RowNotFound => "row_not_found",
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => "decode",
            _ => "_OTHER",
        }
    }
}

#[cfg(feature = "redis")]
impl CallError for redis::RedisError {
    fn status_code(&self) -> Option<String> {
        self.code().map(str::to_owned)
    }

    fn class(&self) -> &'static str {
        if self.is_timeout() {
            "timeout"
        } else if self.is_connection_refusal() || self.is_connection_dropped() || self.is_io_error() {
            "io"
        } else {
            "_OTHER"
        }
    }
}
