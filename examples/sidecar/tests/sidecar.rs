//! The sidecar in front of a plain axum app (no chassis inside), over loopback: HTTP and HTTPS
//! in, HTTPS out through the egress port, streamed bodies and upgraded connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use chassis::testing::TestPki;
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Hits {
    flaky: Arc<AtomicU32>,
    down: Arc<AtomicU32>,
    post: Arc<AtomicU32>,
}

/// What the app saw.
async fn echo(request: Request) -> impl IntoResponse {
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap();
    let mut response_headers = HeaderMap::new();
    response_headers.insert("x-app", "yes".parse().unwrap());
    response_headers.insert("keep-alive", "timeout=5".parse().unwrap());
    let seen = json!({ "method": method, "uri": uri, "headers": headers, "body": String::from_utf8_lossy(&body) });
    (StatusCode::CREATED, response_headers, Json(seen))
}

/// 503 on the first call, then 200.
async fn flaky(State(hits): State<Hits>) -> StatusCode {
    match hits.flaky.fetch_add(1, Ordering::SeqCst) {
        0 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    }
}

async fn down(State(hits): State<Hits>) -> StatusCode {
    hits.down.fetch_add(1, Ordering::SeqCst);
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn post_once(State(hits): State<Hits>, _body: Bytes) -> StatusCode {
    hits.post.fetch_add(1, Ordering::SeqCst);
    StatusCode::SERVICE_UNAVAILABLE
}

/// The app behind the sidecar: plain axum, nothing of the chassis.
async fn app() -> (SocketAddr, Hits) {
    let hits = Hits::default();
    let router = axum::Router::new()
        .route("/echo/{*rest}", any(echo))
        .route("/flaky", get(flaky))
        .route("/down", get(down))
        .route("/payments", post(post_once))
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (addr, hits)
}

async fn sidecar(app: SocketAddr, requests_per_second: u32) -> chassis::RunningService {
    sidecar_with(app, requests_per_second, Vec::new()).await
}

async fn sidecar_with(
    app: SocketAddr,
    requests_per_second: u32,
    extra: Vec<(String, String)>,
) -> chassis::RunningService {
    let options = chassis::testing::options().configure(move |loader| {
        let mut loader = loader.set("egress.port", 0);
        for (key, value) in &extra {
            loader = loader.set(key, value.as_str());
        }
        loader
            .set("clients.app.base_url", format!("http://{app}"))
            .set("clients.app.retry.base_delay", "1ms")
            .set("clients.app.retry.max_retries", 1)
            .set("clients.app.circuit_breaker.consecutive_failures", 5)
            .set("clients.app.circuit_breaker.open_duration", "60s")
            .set("rate_limit.requests", requests_per_second)
            .set("rate_limit.per", "60s")
    });
    chassis::testing::spawn_with(options, sidecar::service).await
}

#[tokio::test]
async fn forwards_requests_and_answers_end_to_end() {
    let (app, _) = app().await;
    let proxy = sidecar(app, 1000).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = reqwest::Client::new()
        .put(format!("http://{}/echo/a/b?x=1&y=2", proxy.http_addr()))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("connection", "x-private")
        .header("x-private", "not for the app")
        .header("x-custom", "for the app")
        .body("the body")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201, "the app's status");
    assert_eq!(answer.headers()["x-app"], "yes", "the app's headers");
    assert!(
        answer.headers().get("keep-alive").is_none(),
        "hop-by-hop headers stay behind"
    );
    assert!(
        answer.headers().get("x-request-id").is_some(),
        "the sidecar's edge answers"
    );
    let seen: Value = answer.json().await.unwrap();
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["uri"], "/echo/a/b?x=1&y=2");
    assert_eq!(seen["body"], "the body");
    let headers = &seen["headers"];
    assert_eq!(headers["x-custom"], "for the app");
    assert!(
        headers.get("x-private").is_none(),
        "headers named by Connection are dropped"
    );
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-host"], proxy.http_addr().to_string());
    let traceparent = headers["traceparent"].as_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "the trace goes on: {traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "with the sidecar's span as parent"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn retries_idempotent_requests_only() {
    let (app, hits) = app().await;
    let proxy = sidecar(app, 1000).await;
    let http = reqwest::Client::new();
    let flaky = http
        .get(format!("http://{}/flaky", proxy.http_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(flaky.status(), 200, "the 503 was retried");
    assert_eq!(hits.flaky.load(Ordering::SeqCst), 2);

    let payment = http
        .post(format!("http://{}/payments", proxy.http_addr()))
        .body("50 EUR");
    assert_eq!(payment.send().await.unwrap().status(), 503);
    assert_eq!(
        hits.post.load(Ordering::SeqCst),
        1,
        "a POST without Idempotency-Key is sent once"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn the_breaker_stops_calling_a_failing_app() {
    let (app, hits) = app().await;
    let proxy = sidecar(app, 1000).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/down", proxy.http_addr());
    // Two attempts per request (one retry): the fifth failure opens the breaker.
    for _ in 0..2 {
        assert_eq!(http.get(&url).send().await.unwrap().status(), 500, "the app's answer");
    }
    let opened = http.get(&url).send().await.unwrap();
    assert_eq!(opened.status(), 503, "the retry after the fifth failure is refused");
    let calls = hits.down.load(Ordering::SeqCst);
    assert_eq!(calls, 5);
    for _ in 0..3 {
        let rejected = http.get(&url).send().await.unwrap();
        assert_eq!(rejected.status(), 503);
        assert!(rejected.headers().get("retry-after").is_some());
        let problem: Value = rejected.json().await.unwrap();
        assert_eq!(problem["type"], "urn:chassis:problem:circuit-open", "{problem}");
    }
    assert_eq!(hits.down.load(Ordering::SeqCst), calls, "the app was not called again");

    let breakers: Value = http
        .get(format!("http://{}/circuit-breakers", proxy.admin_addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(breakers.to_string().contains("\"open\""), "{breakers}");
    proxy.stop().await;
}

#[tokio::test]
async fn rate_limits_and_reports_metrics() {
    let (app, _) = app().await;
    let proxy = sidecar(app, 2).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/echo/x", proxy.http_addr());
    let statuses = statuses(&http, &url, 3).await;
    assert_eq!(statuses, [201, 201, 429]);

    let metrics = http
        .get(format!("http://{}/metrics", proxy.admin_addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let server = metrics
        .lines()
        .find(|l| l.starts_with("http_server_request_duration_seconds_count") && l.contains("/{*path}"))
        .unwrap_or_else(|| panic!("no server series for the proxied route:\n{metrics}"));
    assert!(!server.contains("/echo/x"), "the raw path is never a label: {server}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("http_client_request_duration_seconds_count") && l.contains("client=\"app\"")),
        "the calls to the app are measured:\n{metrics}"
    );
    proxy.stop().await;
}

async fn statuses(http: &reqwest::Client, url: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        statuses.push(http.get(url).send().await.unwrap().status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn an_unreachable_app_is_a_bad_gateway() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = sidecar(closed, 1000).await;
    let answer = reqwest::get(format!("http://{}/anything", proxy.http_addr()))
        .await
        .unwrap();
    assert_eq!(answer.status(), 502);
    let problem: Value = answer.json().await.unwrap();
    assert_eq!(problem["type"], "urn:chassis:problem:app-unreachable", "{problem}");
    proxy.stop().await;
}

fn trusting(pki: &TestPki, base_url: String) -> chassis::client::Client {
    let mut config = chassis::client::ClientConfig::new(base_url);
    config.tls = chassis::tls::ClientTlsConfig::default().ca_file(pki.ca_file());
    chassis::client::Client::new("test", config, &chassis::resilience::CircuitBreakerRegistry::new()).unwrap()
}

#[tokio::test]
async fn terminates_https_in_front_of_a_plain_app() {
    let pki = TestPki::new("sidecar CA");
    let certificate = pki.server(&["localhost"]);
    let (app, _) = app().await;
    let proxy = sidecar_with(
        app,
        1000,
        vec![
            ("http.tls.cert_file".into(), certificate.cert_file.clone()),
            ("http.tls.key_file".into(), certificate.key_file.clone()),
        ],
    )
    .await;
    let client = trusting(&pki, format!("https://localhost:{}", proxy.http_addr().port()));
    let response = client
        .post_json("/echo/secure", &json!({ "card": "4242" }))
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let seen: Value = serde_json::from_slice(&client.bytes(response).await.unwrap()).unwrap();
    assert_eq!(seen["uri"], "/echo/secure", "the app got the request in plain HTTP");
    assert_eq!(seen["body"], r#"{"card":"4242"}"#);
    proxy.stop().await;
}

/// An upstream on HTTPS: a chassis service answering with the version it was called with.
async fn https_upstream(pki: &TestPki) -> chassis::RunningService {
    let certificate = pki.server(&["localhost"]);
    let options = chassis::testing::options().configure(move |loader| {
        loader
            .set("http.tls.cert_file", certificate.cert_file.as_str())
            .set("http.tls.key_file", certificate.key_file.as_str())
    });
    chassis::testing::spawn_with(options, |_: chassis::Context<()>| async {
        Ok(axum::Router::new().route(
            "/charge",
            post(|request: Request| async move {
                let traced = request.headers().contains_key("traceparent");
                Json(json!({ "version": format!("{:?}", request.version()), "traced": traced }))
            }),
        ))
    })
    .await
}

/// Sends `request` over a new plain HTTP/1.1 connection to `addr`, as an app without TLS would.
async fn plain(addr: SocketAddr, request: http::Request<String>) -> (StatusCode, Value) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_app_calls_https_upstreams_in_plain_http_through_the_egress_port() {
    let pki = TestPki::new("upstream CA");
    let upstream = https_upstream(&pki).await;
    let (app, _) = app().await;
    let egress = chassis::testing::free_port();
    let proxy = sidecar_with(
        app,
        1000,
        vec![
            ("egress.port".into(), egress.to_string()),
            (
                "clients.payments.base_url".into(),
                format!("https://localhost:{}", upstream.http_addr().port()),
            ),
            ("clients.payments.tls.ca_file".into(), pki.ca_file().to_owned()),
        ],
    )
    .await;
    let egress_addr: SocketAddr = format!("127.0.0.1:{egress}").parse().unwrap();

    let host = format!("localhost:{}", upstream.http_addr().port());
    let call = |host: String| {
        http::Request::post("/charge")
            .header("host", host)
            .header("content-type", "application/json")
            .body("{}".to_owned())
            .unwrap()
    };
    let (status, answer) = plain(egress_addr, call(host)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["version"], "HTTP/2.0", "out over HTTPS with HTTP/2: {answer}");
    assert_eq!(answer["traced"], true, "the call carries the trace context");

    let (status, problem) = plain(egress_addr, call("unknown.example".into())).await;
    assert_eq!(status, 502);
    assert_eq!(problem["type"], "urn:chassis:problem:no-egress-route", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("localhost"), "{problem}");

    let metrics = reqwest::get(format!("http://{}/metrics", proxy.admin_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("http_client_request_duration_seconds_count") && l.contains("client=\"payments\"")),
        "the egress call is measured:\n{metrics}"
    );
    proxy.stop().await;
    upstream.stop().await;
}

/// An app that streams: `/first-chunk` answers with the first chunk of the request body as
/// soon as it has it; `/two-chunks` sends one chunk, then the second once `release` is
/// notified.
async fn streaming_app(release: Arc<tokio::sync::Notify>) -> SocketAddr {
    use http_body_util::BodyExt as _;
    let router = axum::Router::new()
        .route(
            "/first-chunk",
            post(|request: Request| async move {
                let mut body = request.into_body();
                body.frame().await.unwrap().unwrap().into_data().unwrap()
            }),
        )
        .route(
            "/two-chunks",
            get(move || async move {
                let chunks = futures_util::stream::unfold(0, move |n| {
                    let release = release.clone();
                    async move {
                        match n {
                            0 => Some((Ok::<_, std::io::Error>(Bytes::from_static(b"first")), 1)),
                            1 => {
                                release.notified().await;
                                Some((Ok(Bytes::from_static(b"second")), 2))
                            }
                            _ => None,
                        }
                    }
                });
                axum::body::Body::from_stream(chunks)
            }),
        )
        .route(
            "/upgrade",
            get(|mut request: Request| async move {
                let upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    let mut upgraded = hyper_util::rt::TokioIo::new(upgrade.await.unwrap());
                    let (mut reader, mut writer) = tokio::io::split(&mut upgraded);
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
                axum::response::Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("connection", "upgrade")
                    .header("upgrade", "echo")
                    .body(axum::body::Body::empty())
                    .unwrap()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// What must happen within this time happens; it only runs out when the code is broken.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

#[tokio::test]
async fn bodies_stream_through_in_both_directions_without_being_buffered_whole() {
    use http_body_util::BodyExt as _;
    let release = Arc::new(tokio::sync::Notify::new());
    let app = streaming_app(release.clone()).await;
    let proxy = sidecar(app, 1000).await;

    // A request body whose end is not sent until its start was answered.
    let (chunks, mut receiver) =
        tokio::sync::mpsc::unbounded_channel::<Result<http_body::Frame<Bytes>, std::io::Error>>();
    chunks
        .send(Ok(http_body::Frame::data(Bytes::from_static(b"first"))))
        .unwrap();
    let receiver = futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx));
    let tcp = tokio::net::TcpStream::connect(proxy.http_addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("/first-chunk")
        .header("host", "sidecar")
        .body(http_body_util::StreamBody::new(receiver))
        .unwrap();
    let response = tokio::time::timeout(LIMIT, sender.send_request(request))
        .await
        .expect("the app answered before the request body ended: it was streamed")
        .unwrap();
    assert_eq!(response.status(), 200);
    drop(chunks);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "first");

    // A response whose second chunk waits until the first one arrived.
    let response = reqwest::get(format!("http://{}/two-chunks", proxy.http_addr()))
        .await
        .unwrap();
    let mut response = response;
    let first = tokio::time::timeout(LIMIT, response.chunk())
        .await
        .expect("the first chunk arrives before the app sends the second")
        .unwrap()
        .unwrap();
    assert_eq!(first, "first");
    release.notify_one();
    assert_eq!(response.chunk().await.unwrap().unwrap(), "second");
    proxy.stop().await;
}

#[tokio::test]
async fn upgraded_connections_pass_through() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = streaming_app(Arc::new(tokio::sync::Notify::new())).await;
    let proxy = sidecar(app, 1000).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.http_addr()).await.unwrap();
    tcp.write_all(b"GET /upgrade HTTP/1.1\r\nhost: sidecar\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(LIMIT, tcp.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    tcp.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(LIMIT, tcp.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping", "bytes cross the spliced connections");
    proxy.stop().await;
}
