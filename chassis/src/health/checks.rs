//! Ready-made checks: TCP connect and HTTP GET. For anything else, [`Check::new`] takes a
//! closure.

use std::time::{Duration, Instant};

use http::Uri;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{Check, CheckResult};

fn millis(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// Passes when a TCP connection to `address` (`host:port`) opens; reports the connect time in
/// milliseconds.
///
/// ```
/// use chassis::health::checks;
///
/// let check = checks::tcp("redis:connect", "127.0.0.1:6379");
/// assert_eq!(check.name(), "redis:connect");
/// ```
pub fn tcp(name: impl Into<String>, address: impl Into<String>) -> Check {
    let address = address.into();
    Check::new(name, move || {
        let address = address.clone();
        async move {
            let started = Instant::now();
            match tokio::net::TcpStream::connect(&address).await {
                Ok(_) => CheckResult::pass().with_observed_value(millis(started.elapsed()), "ms"),
                Err(e) => CheckResult::fail(format!("cannot connect to {address}: {e}")),
            }
        }
    })
    .component_type("component")
}

/// Passes when `GET url` answers 2xx; reports the response time in milliseconds. Plain `http://`
/// only: it is meant for sidecars and dependencies on the internal network.
///
/// ```
/// use chassis::health::checks;
///
/// let check = checks::http_get("payments:ready", "http://127.0.0.1:9091/health/ready").unwrap();
/// assert!(checks::http_get("bad", "not a url").is_err());
/// ```
pub fn http_get(name: impl Into<String>, url: &str) -> Result<Check, http::uri::InvalidUri> {
    let uri: Uri = url.parse()?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<bytes::Bytes>>();
    Ok(Check::new(name, move || {
        let uri = uri.clone();
        let client = client.clone();
        async move {
            let started = Instant::now();
            match client.get(uri.clone()).await {
                Ok(response) if response.status().is_success() => {
                    CheckResult::pass().with_observed_value(millis(started.elapsed()), "ms")
                }
                Ok(response) => CheckResult::fail(format!("GET {uri} answered {}", response.status()))
                    .with_observed_value(millis(started.elapsed()), "ms"),
                Err(e) => CheckResult::fail(format!("GET {uri} failed: {e}")),
            }
        }
    })
    .component_type("component"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Status;

    #[tokio::test]
    async fn tcp_check_passes_on_an_open_port_and_fails_on_a_closed_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let check = tcp("open:connect", open);
        assert_eq!((check.run)().await.status(), Status::Pass);

        drop(listener);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let result = (tcp("closed:connect", addr.clone()).run)().await;
        assert_eq!(result.status(), Status::Fail);
        assert!(result.output().unwrap().contains(&addr));
    }

    #[tokio::test]
    async fn http_check_wants_2xx() {
        use axum::{Router, routing::get};
        let app = Router::new().route("/ok", get(|| async { "ok" })).route(
            "/bad",
            get(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "no") }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let ok = http_get("a:b", &format!("http://{addr}/ok")).unwrap();
        assert_eq!((ok.run)().await.status(), Status::Pass);
        let bad = http_get("a:b", &format!("http://{addr}/bad")).unwrap();
        let result = (bad.run)().await;
        assert_eq!(result.status(), Status::Fail);
        assert!(result.output().unwrap().contains("500"), "{result:?}");
    }
}
