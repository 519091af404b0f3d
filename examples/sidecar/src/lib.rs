//! A sidecar: gives an HTTP app it does not change (any language, any framework) the chassis'
//! edge in both directions.
//!
//! - **Ingress.** Clients call the sidecar (HTTPS when `[http.tls]` is set); it terminates TLS
//!   and passes each request through its inbound stack (request id, trace span, RED metrics,
//!   timeout, load shedding) and its rate limit to the app's plain-HTTP port, through the
//!   chassis client: W3C trace context injected, retries with a budget for idempotent
//!   requests, a circuit breaker that answers 503 at once while the app is down.
//! - **Egress.** The app sends its outbound calls in plain HTTP to the sidecar's egress port
//!   (as its HTTP proxy, `HTTP_PROXY=http://127.0.0.1:15001`, or with the target in the `Host`
//!   header); the sidecar sends each to the `[clients.<name>]` whose `base_url` has that host,
//!   over HTTPS with that client's retries, breaker and telemetry.
//!
//! Bodies stream through in both directions without being buffered whole, and upgraded
//! connections (WebSocket) are passed through once the app accepts the upgrade.
//!
//! ```toml
//! [http.tls]                    # HTTPS for the app's clients
//! cert_file = "/etc/tls/tls.crt"
//! key_file = "/etc/tls/tls.key"
//!
//! [clients.app]                 # the app behind the sidecar
//! base_url = "http://127.0.0.1:3000"
//!
//! [clients.payments]            # an upstream the app calls through the egress port
//! base_url = "https://api.payments.example"
//!
//! [egress]
//! port = 15001                  # default; host "127.0.0.1"
//!
//! [rate_limit]                  # in front of the app; default 100/s for everybody
//! requests = 20
//! key = "client_ip"
//! ```

mod forward;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use chassis::Context;
use chassis::client::Client;
use chassis::http::Problem;
use chassis::resilience::rate_limit::{RateLimitConfig, RateLimitLayer};
use serde::Deserialize;

/// The sidecar's settings (the app itself is `[clients.app]`, upstreams are the other
/// `[clients.<name>]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `[rate_limit]`: requests let through to the app.
    pub rate_limit: RateLimitConfig,
    /// `[egress]`: the port the app sends its outbound calls to.
    pub egress: EgressSettings,
}

/// `[egress]`: where the app's outbound calls come in.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressSettings {
    /// `host`: default `"127.0.0.1"`: only the app next to the sidecar can use it.
    pub host: IpAddr,
    /// `port`: default `15001`; `0` picks a free port.
    pub port: u16,
}

impl Default for EgressSettings {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 15001,
        }
    }
}

/// The upstreams of the egress port, by the host the app calls.
#[derive(Clone)]
struct Upstreams(BTreeMap<String, Client>);

impl Upstreams {
    /// The host a proxied request is for: the authority of an absolute-form request
    /// (`GET http://host/path`, as HTTP proxies get them), or its `Host` header.
    fn host(request: &Request) -> Option<String> {
        let host = match request.uri().host() {
            Some(host) => host.to_owned(),
            None => request.headers().get(header::HOST)?.to_str().ok()?.to_owned(),
        };
        // `Host: name:port` or `[::1]:port`: the name alone.
        let name = match host.rsplit_once(':') {
            Some((name, port)) if !name.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host.as_str(),
        };
        Some(name.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase())
    }
}

async fn egress(State(upstreams): State<Upstreams>, request: Request) -> Response {
    let Some(client) = Upstreams::host(&request).and_then(|host| upstreams.0.get(&host).cloned()) else {
        let known: Vec<&str> = upstreams.0.keys().map(String::as_str).collect();
        return Problem::new(StatusCode::BAD_GATEWAY, "no-egress-route", "No upstream for this host")
            .with_detail(format!(
                "the egress port forwards to the hosts of the configured clients: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
            .into_response();
    };
    forward::forward(&client, request, false).await
}

async fn ingress(State(app): State<Client>, request: Request) -> Response {
    forward::forward(&app, request, true).await
}

/// The sidecar service: every path and method goes to `[clients.app]`; the egress port
/// forwards to the other clients.
pub async fn service(ctx: Context<Settings>) -> chassis::Result<Router> {
    let settings = ctx.settings().clone();
    let app = ctx.client("app")?;
    let mut upstreams = BTreeMap::new();
    for name in ctx.config().clients.keys().filter(|name| name.as_str() != "app") {
        let client = ctx.client(name)?;
        let host = ctx.config().clients[name]
            .base_url
            .parse::<axum::http::Uri>()?
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        upstreams.insert(host, client);
    }
    let egress_routes = Router::new()
        .route("/", any(egress))
        .route("/{*path}", any(egress))
        .with_state(Upstreams(upstreams));
    let egress_addr = SocketAddr::new(settings.egress.host, settings.egress.port);
    let bound = ctx.listen("egress", egress_addr, egress_routes).await?;
    tracing::info!(egress = %bound, "the app's outbound calls go through the egress port");

    let rate_limit = RateLimitLayer::new("sidecar", settings.rate_limit)?;
    Ok(Router::new()
        .route("/", any(ingress))
        .route("/{*path}", any(ingress))
        .with_state(app)
        .layer(rate_limit))
}
