//! Connection hygiene over real sockets, the way a slow or idle client meets it: header-read and
//! keep-alive timeouts, the connection limit, requests per connection, and draining at shutdown
//! that closes keep-alive connections without losing a request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use chassis::runtime::Stopped;
use chassis::testing::{eventually, options, spawn_with};
use chassis::{Context, RunningService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A deadline for what must happen; it only decides the outcome when the code is broken.
const LIMIT: Duration = Duration::from_secs(10);

async fn service(settings: &[(&str, &str)]) -> RunningService {
    let settings: Vec<(String, String)> = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let options = options().configure(move |mut loader| {
        for (key, value) in &settings {
            loader = loader.set(key, value.as_str());
        }
        loader
    });
    spawn_with(options, |_: Context<()>| async {
        Ok(Router::new().route("/hello", get(|| async { "hello" })))
    })
    .await
}

/// Reads one HTTP/1.1 response (head and a `content-length` body) and returns its head.
async fn read_response(tcp: &mut TcpStream) -> String {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let read = tokio::time::timeout(LIMIT, tcp.read(&mut chunk))
            .await
            .expect("a response in time")
            .expect("a readable connection");
        assert!(read > 0, "the connection closed before a whole response");
        buffer.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&buffer).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return head.to_owned();
            }
        }
    }
}

/// How long until the server closes `tcp` (a read of 0 bytes or a reset).
async fn closed_after(tcp: &mut TcpStream, since: Instant) -> Duration {
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(LIMIT, tcp.read(&mut chunk)).await {
            Err(_) => panic!("the server kept the connection open for {LIMIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => continue,
        }
    }
}

const GET: &[u8] = b"GET /hello HTTP/1.1\r\nhost: test\r\n\r\n";

#[tokio::test]
async fn a_slowloris_connection_is_closed_at_the_header_read_timeout() {
    let service = service(&[("http.header_read_timeout", "300ms")]).await;
    let mut tcp = TcpStream::connect(service.http_addr()).await.unwrap();
    let opened = Instant::now();
    let (mut reader, mut writer) = tcp.split();
    // One header byte every 50 ms: it never finishes, and every byte is progress.
    let trickle = async {
        writer.write_all(b"GET /hello HTTP/1.1\r\nx-slow: ").await.unwrap();
        loop {
            if writer.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let closed = async {
        let mut chunk = [0u8; 64];
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => opened.elapsed(),
            Ok(_) => panic!("a slowloris request must not be answered"),
        }
    };
    let elapsed = tokio::time::timeout(LIMIT, async {
        tokio::select! {
            elapsed = closed => elapsed,
            () = trickle => opened.elapsed(),
        }
    })
    .await
    .expect("the server closes the slow connection");
    assert!(elapsed >= Duration::from_millis(300), "closed after {elapsed:?}");

    // A client that sends its request at once is served.
    let mut tcp = TcpStream::connect(service.http_addr()).await.unwrap();
    tcp.write_all(GET).await.unwrap();
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    service.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_keep_alive_timeout() {
    let service = service(&[("http.keep_alive_timeout", "300ms")]).await;
    let mut tcp = TcpStream::connect(service.http_addr()).await.unwrap();
    for _ in 0..2 {
        tcp.write_all(GET).await.unwrap();
        let head = read_response(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
    }
    let idle = Instant::now();
    let elapsed = closed_after(&mut tcp, idle).await;
    assert!(elapsed >= Duration::from_millis(300), "closed after {elapsed:?}");

    let metrics = reqwest::get(format!("http://{}/metrics", service.admin_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("chassis_http_server_connections_closed_total{")
                && l.contains("reason=\"keep_alive_timeout\"")),
        "{metrics}"
    );
    service.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_answered_503_and_closed() {
    let service = service(&[("http.max_connections", "2")]).await;
    let first = TcpStream::connect(service.http_addr()).await.unwrap();
    let mut second = TcpStream::connect(service.http_addr()).await.unwrap();
    // The second is accepted and counted once it is served.
    second.write_all(GET).await.unwrap();
    read_response(&mut second).await;

    let mut third = TcpStream::connect(service.http_addr()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(LIMIT, third.read_to_string(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("urn:chassis:problem:overloaded"), "{answer}");

    // A closed connection makes room for a new one.
    drop(first);
    let addr = service.http_addr();
    eventually("a connection to be served again", async || {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        tcp.write_all(GET).await.ok()?;
        let mut answer = vec![0u8; 12];
        tcp.read_exact(&mut answer).await.ok()?;
        (answer == b"HTTP/1.1 200").then_some(())
    })
    .await;
    service.stop().await;
}

#[tokio::test]
async fn a_connection_closes_after_its_last_allowed_request() {
    let service = service(&[("http.max_requests_per_connection", "2")]).await;
    let mut tcp = TcpStream::connect(service.http_addr()).await.unwrap();
    tcp.write_all(GET).await.unwrap();
    let first = read_response(&mut tcp).await.to_ascii_lowercase();
    assert!(!first.contains("connection: close"), "{first}");
    tcp.write_all(GET).await.unwrap();
    let last = read_response(&mut tcp).await.to_ascii_lowercase();
    assert!(last.contains("connection: close"), "{last}");
    closed_after(&mut tcp, Instant::now()).await;
    service.stop().await;
}

#[tokio::test]
async fn draining_closes_idle_connections_and_answers_with_connection_close() {
    // A readiness delay far longer than the test: what happens, happens at the start of draining.
    let service = service(&[("shutdown.readiness_delay", "60s")]).await;
    let mut idle = TcpStream::connect(service.http_addr()).await.unwrap();
    idle.write_all(GET).await.unwrap();
    read_response(&mut idle).await;

    service.shutdown();
    closed_after(&mut idle, Instant::now()).await;
    // The listener still accepts while the load balancer notices; each answer closes its
    // connection so clients move on.
    let mut late = TcpStream::connect(service.http_addr()).await.unwrap();
    late.write_all(GET).await.unwrap();
    let head = read_response(&mut late).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    closed_after(&mut late, Instant::now()).await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_request_that_was_never_sent_whole() {
    let service = service(&[("shutdown.grace_period", "60s")]).await;
    let mut half = TcpStream::connect(service.http_addr()).await.unwrap();
    half.write_all(b"GET /hello HTTP/1.1\r\nhost: test\r\n").await.unwrap();
    let mut silent = TcpStream::connect(service.http_addr()).await.unwrap();
    // Both connections are accepted before the shutdown begins.
    let mut served = TcpStream::connect(service.http_addr()).await.unwrap();
    served.write_all(GET).await.unwrap();
    read_response(&mut served).await;

    let stopped = tokio::time::timeout(LIMIT, service.stop())
        .await
        .expect("shutdown does not wait out the grace period");
    assert_eq!(stopped, Stopped::Drained);
    closed_after(&mut half, Instant::now()).await;
    closed_after(&mut silent, Instant::now()).await;
}

#[derive(Default)]
struct Counts {
    answered: AtomicU64,
    told_to_close: AtomicU64,
    /// Written to a connection and never answered: what a drain must not cause.
    lost: AtomicU64,
    /// Not sent: the connection was already closed when the client tried.
    not_sent: AtomicU64,
}

/// A keep-alive client: one connection at a time, a request after the other, a new connection
/// when the server closes the old one, until connecting is refused.
async fn keep_alive_client(addr: SocketAddr, counts: Arc<Counts>) {
    use http_body_util::{BodyExt, Empty};
    loop {
        let Ok(tcp) = TcpStream::connect(addr).await else {
            return;
        };
        let io = hyper_util::rt::TokioIo::new(tcp);
        let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake::<_, Empty<bytes::Bytes>>(io).await
        else {
            continue;
        };
        tokio::spawn(connection);
        loop {
            if sender.ready().await.is_err() {
                counts.not_sent.fetch_add(1, Ordering::Relaxed);
                break;
            }
            let request = http::Request::get("/hello")
                .header("host", "test")
                .body(Empty::new())
                .unwrap();
            match sender.send_request(request).await {
                Ok(response) => {
                    let close = response
                        .headers()
                        .get("connection")
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                    if response.into_body().collect().await.is_ok() {
                        counts.answered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        counts.lost.fetch_add(1, Ordering::Relaxed);
                    }
                    if close {
                        counts.told_to_close.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
                Err(error) if error.is_canceled() => {
                    counts.not_sent.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(_) => {
                    counts.lost.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_under_load_with_keep_alive_clients_loses_no_request() {
    let service = service(&[("shutdown.readiness_delay", "1s"), ("shutdown.grace_period", "10s")]).await;
    let counts = Arc::new(Counts::default());
    let clients: Vec<_> = (0..16)
        .map(|_| tokio::spawn(keep_alive_client(service.http_addr(), counts.clone())))
        .collect();
    let addr = service.http_addr();
    // Load first: every client has been answered on a kept-alive connection.
    eventually("the clients to be served", async || {
        (counts.answered.load(Ordering::Relaxed) > 200).then_some(())
    })
    .await;
    let before = counts.answered.load(Ordering::Relaxed);
    let stopped = service.stop().await;
    for client in clients {
        tokio::time::timeout(LIMIT, client)
            .await
            .expect("clients end once connecting is refused")
            .unwrap();
    }
    let answered = counts.answered.load(Ordering::Relaxed);
    let told_to_close = counts.told_to_close.load(Ordering::Relaxed);
    let lost = counts.lost.load(Ordering::Relaxed);
    let not_sent = counts.not_sent.load(Ordering::Relaxed);
    println!(
        "answered {answered} ({} during the drain), told to close {told_to_close}, lost {lost}, not sent {not_sent}",
        answered - before
    );
    assert_eq!(stopped, Stopped::Drained);
    assert_eq!(lost, 0, "requests written to a connection the server then dropped");
    assert!(told_to_close >= 16, "every kept-alive client was told to close");
    assert!(answered > before, "the service kept answering while it drained");
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
}
