//! HTTPS in and out over loopback, with certificates made at test time: the listener serving
//! `[http.tls]`, the client verifying servers and showing its own certificate, HTTP/2 by ALPN
//! and h2c, and each way verification fails told clearly.

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use chassis::client::{Client, ClientConfig, HttpVersion};
use chassis::resilience::CircuitBreakerRegistry;
use chassis::testing::{IssuedCertificate, TestPki, eventually, options, spawn_with};
use chassis::tls::ClientTlsConfig;
use chassis::{Context, RunningService};

/// Answers with the HTTP version the request came in with.
fn routes() -> Router {
    Router::new().route(
        "/version",
        get(|request: Request| async move { format!("{:?}", request.version()) }),
    )
}

async fn https_service(certificate: &IssuedCertificate, extra: &[(&str, String)]) -> RunningService {
    let mut settings = vec![
        ("http.tls.cert_file", certificate.cert_file.clone()),
        ("http.tls.key_file", certificate.key_file.clone()),
    ];
    settings.extend(extra.iter().cloned());
    let settings: Vec<(String, String)> = settings.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let options = options().configure(move |mut loader| {
        for (key, value) in &settings {
            loader = loader.set(key, value.as_str());
        }
        loader
    });
    spawn_with(options, |_: Context<()>| async { Ok(routes()) }).await
}

fn client(base_url: String, tls: ClientTlsConfig, version: HttpVersion) -> Client {
    let mut config = ClientConfig::new(base_url);
    config.tls = tls;
    config.http_version = version;
    config.retry.max_retries = 0;
    Client::new("tls-test", config, &CircuitBreakerRegistry::new()).unwrap()
}

async fn version(client: &Client) -> Result<String, String> {
    let response = client.get("/version").await.map_err(|e| e.to_string())?;
    assert_eq!(response.status(), 200);
    Ok(String::from_utf8(client.bytes(response).await.unwrap().to_vec()).unwrap())
}

fn https_url(service: &RunningService) -> String {
    format!("https://localhost:{}", service.http_addr().port())
}

#[tokio::test]
async fn an_https_listener_serves_http2_and_http1_to_a_verifying_client() {
    let pki = TestPki::new("test CA");
    let service = https_service(&pki.server(&["localhost"]), &[]).await;
    let trusting = ClientTlsConfig::default().ca_file(pki.ca_file());
    let auto = client(https_url(&service), trusting.clone(), HttpVersion::Auto);
    assert_eq!(version(&auto).await.unwrap(), "HTTP/2.0", "HTTP/2 by ALPN");
    let http1 = client(https_url(&service), trusting, HttpVersion::Http1);
    assert_eq!(version(&http1).await.unwrap(), "HTTP/1.1");
    service.stop().await;
}

#[tokio::test]
async fn a_client_says_why_it_does_not_trust_a_server() {
    let pki = TestPki::new("test CA");
    let stranger = TestPki::new("another CA");
    let trusting = ClientTlsConfig::default().ca_file(pki.ca_file());

    let service = https_service(&stranger.server(&["localhost"]), &[]).await;
    let error = version(&client(https_url(&service), trusting.clone(), HttpVersion::Auto))
        .await
        .unwrap_err();
    assert!(
        error.contains("UnknownIssuer") || error.contains("unknown issuer"),
        "a certificate of an unknown CA: {error}"
    );
    service.stop().await;

    let service = https_service(&pki.expired_server(&["localhost"]), &[]).await;
    let error = version(&client(https_url(&service), trusting.clone(), HttpVersion::Auto))
        .await
        .unwrap_err();
    assert!(error.contains("certificate expired"), "an expired certificate: {error}");
    service.stop().await;

    let service = https_service(&pki.server(&["payments.example"]), &[]).await;
    let error = version(&client(https_url(&service), trusting, HttpVersion::Auto))
        .await
        .unwrap_err();
    assert!(
        error.contains("certificate not valid for name \"localhost\""),
        "a certificate for another host name: {error}"
    );
    service.stop().await;
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_of_the_configured_ca() {
    let pki = TestPki::new("test CA");
    let service = https_service(
        &pki.server(&["localhost"]),
        &[("http.tls.client_ca_file", pki.ca_file().to_owned())],
    )
    .await;
    let trusting = ClientTlsConfig::default().ca_file(pki.ca_file());

    let anonymous = client(https_url(&service), trusting.clone(), HttpVersion::Auto);
    assert!(version(&anonymous).await.is_err(), "no client certificate, no service");

    let other_ca = TestPki::new("another CA");
    let stranger = other_ca.client("intruder");
    let intruder = client(
        https_url(&service),
        trusting
            .clone()
            .client_certificate(&stranger.cert_file, &stranger.key_file),
        HttpVersion::Auto,
    );
    assert!(
        version(&intruder).await.is_err(),
        "a certificate of another CA is refused"
    );

    let mine = pki.client("orders");
    let known = client(
        https_url(&service),
        trusting.client_certificate(&mine.cert_file, &mine.key_file),
        HttpVersion::Auto,
    );
    assert_eq!(version(&known).await.unwrap(), "HTTP/2.0");
    service.stop().await;
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let old = TestPki::new("old CA");
    let new = TestPki::new("new CA");
    let files = old.server(&["localhost"]);
    let service = https_service(&files, &[("http.tls.reload_interval", "1s".to_owned())]).await;
    // A new client each time: a failed call counts against the client's breaker.
    let trusting_new = || {
        client(
            https_url(&service),
            ClientTlsConfig::default().ca_file(new.ca_file()),
            HttpVersion::Http1,
        )
    };
    assert!(version(&trusting_new()).await.is_err());

    let renewed = new.server(&["localhost"]);
    std::fs::copy(&renewed.cert_file, &files.cert_file).unwrap();
    std::fs::copy(&renewed.key_file, &files.key_file).unwrap();
    eventually("the renewed certificate to be served", async || {
        version(&trusting_new()).await.ok()
    })
    .await;
    service.stop().await;
}

#[tokio::test]
async fn a_plain_listener_speaks_h2c_to_a_client_that_asks_for_http2() {
    let service = spawn_with(options(), |_: Context<()>| async { Ok(routes()) }).await;
    let h2c = client(
        format!("http://{}", service.http_addr()),
        ClientTlsConfig::default(),
        HttpVersion::Http2,
    );
    assert_eq!(version(&h2c).await.unwrap(), "HTTP/2.0");
    service.stop().await;
}

#[tokio::test]
async fn unusable_certificate_files_stop_the_start_with_the_key_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let cert = cert.display().to_string();
    let options = options().configure(move |loader| {
        loader
            .set("http.tls.cert_file", cert.as_str())
            .set("http.tls.key_file", "/missing/key.pem")
    });
    let error = chassis::start(options, |_: Context<()>| async { Ok(routes()) })
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("http.tls.cert_file"), "{error}");
    assert!(error.contains("holds no certificate"), "{error}");

    let error = chassis::tls::ReloadingAcceptor::new(&chassis::tls::ServerTlsConfig::new(
        TestPki::new("ca").server(&["localhost"]).cert_file,
        "/missing/key.pem",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("/missing/key.pem") && error.contains("cannot be read"),
        "{error}"
    );
}

#[tokio::test]
async fn a_client_refuses_urls_of_another_host() {
    let client = client(
        "http://127.0.0.1:1".into(),
        ClientTlsConfig::default(),
        HttpVersion::Auto,
    );
    let request = http::Request::get("http://127.0.0.2:1/x")
        .body(axum::body::Body::empty())
        .unwrap();
    let error = client.send(request).await.unwrap_err().to_string();
    assert!(error.contains("a client per downstream host"), "{error}");
}
