//! The accept loop of a listener: connections up to `http.max_connections` (the one over the
//! limit is answered 503 and closed), TLS when the listener has a certificate, and each
//! connection served on a task of its own by [`connection::serve`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::Request;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use tower::Service;

use super::connection::{self, Closed, Limits, Phases};
use crate::tls::ReloadingAcceptor;

/// Connections open now, by listener.
pub const OPEN_CONNECTIONS: &str = "chassis_http_server_open_connections";
/// Connections refused because `http.max_connections` were open, by listener.
pub const REJECTED_CONNECTIONS: &str = "chassis_http_server_connections_rejected_total";
/// Connections ended, by listener and reason (`completed`, `header_read_timeout`,
/// `keep_alive_timeout`, `shutdown`, `error`, `tls_handshake`).
pub const CLOSED_CONNECTIONS: &str = "chassis_http_server_connections_closed_total";

pub(crate) fn describe_metrics() {
    metrics::describe_gauge!(OPEN_CONNECTIONS, "Connections open on the listener.");
    metrics::describe_counter!(
        REJECTED_CONNECTIONS,
        "Connections answered 503 and closed because http.max_connections were open."
    );
    metrics::describe_counter!(CLOSED_CONNECTIONS, "Connections ended, by reason.");
}

/// The answer to a connection over the limit, written before anything is read.
fn over_capacity() -> &'static [u8] {
    static ANSWER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    ANSWER.get_or_init(|| {
        let problem = crate::problem::Problem::new(http::StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Overloaded")
            .with_detail("too many open connections; retry on a new connection");
        let body = serde_json::to_string(&problem).expect("a problem serializes");
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {}\r\nretry-after: 1\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            crate::problem::PROBLEM_JSON,
            body.len()
        )
        .into_bytes()
    })
}

/// A bound listener and how its connections are served.
pub(crate) struct Listener {
    pub(crate) tcp: TcpListener,
    /// `"http"` or `"admin"`: the `listener` label.
    pub(crate) name: &'static str,
    pub(crate) tls: Option<Arc<ReloadingAcceptor>>,
    /// Open connections allowed at once; 0 for no limit.
    pub(crate) max_connections: usize,
    pub(crate) limits: Arc<Limits>,
}

/// Accepts connections until `phases.stop`, serving each on a task of `connections` with the
/// service `make` returns for its peer. The accept loop is a task of `connections` too, so
/// waiting for them all includes the connections it takes from the listen queue at the close.
pub(crate) fn spawn<M, S>(listener: Listener, make: M, phases: Phases, connections: TaskTracker) -> JoinHandle<()>
where
    M: Fn(SocketAddr) -> S + Send + 'static,
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    connections.spawn(accept(listener, make, phases, connections.clone()))
}

async fn accept<M, S>(listener: Listener, make: M, phases: Phases, connections: TaskTracker)
where
    M: Fn(SocketAddr) -> S + Send + 'static,
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let Listener {
        tcp: socket,
        name,
        tls,
        max_connections,
        limits,
    } = listener;
    let accepted = Accepted {
        name,
        tls,
        max_connections,
        limits,
        open: Arc::new(AtomicUsize::new(0)),
        watch: phases.watch(),
        phases,
        connections,
    };
    let mut failures = AcceptFailures::default();
    loop {
        tokio::select! {
            biased;
            () = accepted.phases.stop.cancelled() => break,
            result = socket.accept() => match result {
                Ok((tcp, peer)) => accepted.serve(tcp, peer, &make),
                Err(error) if is_connection_error(&error) => {}
                Err(error) => {
                    failures.log(name, &error);
                    // Out of file descriptors, most likely: give open connections time to end.
                    tokio::select! {
                        () = accepted.phases.stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            },
        }
    }
    // Connections the kernel accepted before the close would be reset with it: take them
    // from the listen queue and serve them, so a request already on its way is answered.
    let Ok(queue) = socket.into_std() else {
        return;
    };
    let _ = queue.set_nonblocking(true);
    while let Ok((tcp, peer)) = queue.accept() {
        let _ = tcp.set_nonblocking(true);
        match TcpStream::from_std(tcp) {
            Ok(tcp) => accepted.serve(tcp, peer, &make),
            Err(_) => break,
        }
    }
}

/// How a listener serves the connections it accepts.
struct Accepted {
    name: &'static str,
    tls: Option<Arc<ReloadingAcceptor>>,
    max_connections: usize,
    limits: Arc<Limits>,
    open: Arc<AtomicUsize>,
    phases: Phases,
    watch: Arc<connection::PhaseWatch>,
    connections: TaskTracker,
}

impl Accepted {
    /// Serves `tcp` on a task of its own, or refuses it when the listener is full.
    fn serve<M, S>(&self, tcp: TcpStream, peer: SocketAddr, make: &M)
    where
        M: Fn(SocketAddr) -> S,
        S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let name = self.name;
        // Responses are written whole; waiting for Nagle only adds latency.
        let _ = tcp.set_nodelay(true);
        if self.max_connections > 0 && self.open.load(Ordering::Relaxed) >= self.max_connections {
            metrics::counter!(REJECTED_CONNECTIONS, "listener" => name).increment(1);
            if self.tls.is_none() {
                tokio::spawn(refuse(tcp));
            }
            return;
        }
        let count = OpenConnection::new(self.open.clone(), name);
        let service = make(peer);
        let limits = self.limits.clone();
        let phases = self.watch.clone();
        let tls = self.tls.as_ref().map(|tls| tls.acceptor());
        self.connections.spawn(async move {
            let closed = match tls {
                None => connection::serve(tcp, service, limits, phases, false).await,
                Some(tls) => match tokio::time::timeout(limits.header_read_timeout, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => connection::serve(stream, service, limits, phases, true).await,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, %peer, "TLS handshake failed");
                        metrics::counter!(CLOSED_CONNECTIONS, "listener" => name, "reason" => "tls_handshake")
                            .increment(1);
                        return;
                    }
                    Err(_) => Closed::HeaderReadTimeout,
                },
            };
            metrics::counter!(CLOSED_CONNECTIONS, "listener" => name, "reason" => closed.as_str()).increment(1);
            drop(count);
        });
    }
}

/// Counts a connection as open for as long as it lives.
struct OpenConnection {
    open: Arc<AtomicUsize>,
    listener: &'static str,
}

impl OpenConnection {
    fn new(open: Arc<AtomicUsize>, listener: &'static str) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(OPEN_CONNECTIONS, "listener" => listener).increment(1);
        Self { open, listener }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(OPEN_CONNECTIONS, "listener" => self.listener).decrement(1);
    }
}

/// Answers a connection over the limit with 503 and closes it, reading (and dropping) what the
/// client sent meanwhile so the close does not reset the answer away.
async fn refuse(mut tcp: TcpStream) {
    let answer = async {
        tcp.write_all(over_capacity()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}

/// Errors of one connection that `accept` reports; the listener is fine.
fn is_connection_error(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Logs failing accepts at most every 10 s, with how many failed meanwhile.
#[derive(Default)]
struct AcceptFailures {
    since_logged: u64,
    logged_at: Option<tokio::time::Instant>,
}

impl AcceptFailures {
    fn log(&mut self, listener: &str, error: &std::io::Error) {
        self.since_logged += 1;
        let now = tokio::time::Instant::now();
        if self.logged_at.is_some_and(|at| now < at + Duration::from_secs(10)) {
            return;
        }
        tracing::error!(
            listener,
            %error,
            failures = self.since_logged,
            "cannot accept connections; lower http.max_connections below the open-file limit (ulimit -n)"
        );
        self.since_logged = 0;
        self.logged_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_over_capacity_answer_declares_its_length() {
        let text = std::str::from_utf8(super::over_capacity()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 503);
        assert_eq!(problem["type"], "urn:chassis:problem:overloaded");
    }
}
