//! Forwarding one request through a chassis client: end-to-end headers only, bodies streamed,
//! upgraded connections spliced once the other side accepts the upgrade.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chassis::client::{Client, ClientError};
use chassis::http::{Problem, problem_for};
use hyper_util::rt::TokioIo;

/// Headers that belong to one connection (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Drops the hop-by-hop headers, including those the `Connection` header names.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|name| name.trim().to_ascii_lowercase()))
        .collect();
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !HOP_BY_HOP.contains(&name) && name != "host" && !named.iter().any(|n| n == name)
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The protocol a request asks to switch to (`Connection: upgrade` with `Upgrade: websocket`).
fn upgrade_to(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|token| token.trim().eq_ignore_ascii_case("upgrade")));
    asks.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

fn with_upgrade(mut headers: HeaderMap, protocol: Option<&HeaderValue>) -> HeaderMap {
    if let Some(protocol) = protocol {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    headers
}

/// Sends `request` to `client`'s downstream and answers with what it answers. `ingress` adds
/// `X-Forwarded-For` and `X-Forwarded-Host` for the app.
pub(crate) async fn forward(client: &Client, mut request: Request, ingress: bool) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let protocol = upgrade_to(request.headers());
    let accepted_upgrade = protocol.as_ref().map(|_| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut outbound = match client.request(parts.method.clone(), path) {
        Ok(builder) => builder,
        Err(error) => {
            return Problem::new(StatusCode::BAD_REQUEST, "bad-path", "Bad path")
                .with_detail(error.to_string())
                .into_response();
        }
    };
    let mut headers = with_upgrade(end_to_end(&parts.headers), protocol.as_ref());
    if ingress {
        if let Some(host) = parts.headers.get(header::HOST) {
            headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
        }
        if let Some(peer) = peer {
            let forwarded_for = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(earlier) => format!("{earlier}, {peer}"),
                None => peer.to_string(),
            };
            if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
                headers.insert(HeaderName::from_static("x-forwarded-for"), value);
            }
        }
    }
    if let Some(target) = outbound.headers_mut() {
        target.extend(headers);
    }
    // Streamed as it arrives: a body of known small size is kept by the client's retry layer
    // for a resend, anything else is sent once.
    let request = outbound.body(body).expect("a valid request");
    match client.send(request).await {
        Ok(mut response) => {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(accepted) = accepted_upgrade
            {
                let upstream = hyper::upgrade::on(&mut response);
                tokio::spawn(splice(accepted, upstream));
            }
            let (mut parts, body) = response.into_parts();
            let upgraded = (parts.status == StatusCode::SWITCHING_PROTOCOLS)
                .then(|| parts.headers.get(header::UPGRADE).cloned())
                .flatten();
            parts.headers = with_upgrade(end_to_end(&parts.headers), upgraded.as_ref());
            Response::from_parts(parts, body)
        }
        Err(error) => unavailable(error, ingress),
    }
}

/// Copies bytes both ways between the two upgraded connections until either closes.
async fn splice(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(%error, "upgraded connection ended");
            }
        }
        Err(error) => tracing::warn!(%error, "the upgrade was accepted but a connection could not switch"),
    }
}

/// The problem for a failed call: the breaker's 503 and the timeout's as the chassis answers
/// them, anything else (refused connection, reset, a certificate not trusted) a 502.
fn unavailable(error: ClientError, ingress: bool) -> Response {
    let unreachable = |error: &ClientError| {
        let problem = match ingress {
            true => Problem::new(StatusCode::BAD_GATEWAY, "app-unreachable", "The app is unreachable"),
            false => Problem::new(
                StatusCode::BAD_GATEWAY,
                "upstream-unreachable",
                "The upstream is unreachable",
            ),
        };
        problem.with_detail(error.to_string())
    };
    let problem = match &error {
        ClientError::Request { source, .. } => {
            let problem = problem_for(source.as_ref());
            if problem.status() == StatusCode::INTERNAL_SERVER_ERROR {
                unreachable(&error)
            } else {
                problem
            }
        }
        other => unreachable(other),
    };
    problem.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrades_are_recognised_among_other_connection_options() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_to(&headers).unwrap(), "websocket");
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert_eq!(
            upgrade_to(&headers),
            None,
            "Upgrade without Connection: upgrade is ignored"
        );
    }
}
