use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use opentelemetry::context::FutureExt as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tower::{Layer, Service, ServiceExt as _};

use super::store::{Begin, IdempotencyStore, StoredResponse};
use crate::config::{ByteSize, ConfigError, Problems, Validate};
use crate::problem::Problem;

/// Name of the request counter.
pub const REQUESTS_TOTAL: &str = "chassis_idempotency_requests_total";

/// The header set on replayed responses.
pub const REPLAYED_HEADER: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Settings of the idempotency layer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct IdempotencyConfig {
    /// `methods`: the methods that take part. Default `["POST", "PATCH"]`.
    pub methods: Vec<String>,
    /// `required`: a request of those methods without a key is rejected with 400. Default
    /// `true`; with `false` it passes unguarded.
    pub required: bool,
    /// `header`: the key's header. Default `"idempotency-key"`.
    pub header: String,
    /// `max_key_length`: longest accepted key. Default `255` (Stripe's).
    pub max_key_length: usize,
    /// `namespace`: a prefix of every key in the store, so services sharing a store never see
    /// each other's keys. Set it to the service's name (`ctx.config().service.name`). Default:
    /// none.
    pub namespace: Option<String>,
    /// `require_identity`: a request without an [`Identity`](crate::identity::Identity) is
    /// answered `401 identity-required`. Keys are always scoped by the request's identity
    /// when it has one, so one client's key never replays another client's response; without
    /// this setting, anonymous requests share one scope. Default `false`.
    pub require_identity: bool,
    /// `lease`: how long a claim holds the key before a crashed request stops blocking it.
    /// Default `"60s"`; keep it above `http.request_timeout`. Not needed by
    /// [`IdempotencyLayer::transactional`], whose claim ends with its transaction.
    #[serde(with = "crate::config::duration")]
    pub lease: Duration,
    /// `ttl`: how long completed responses are replayed. Default `"24h"`.
    #[serde(with = "crate::config::duration")]
    pub ttl: Duration,
    /// `max_request_bytes`: largest body fingerprinted; larger requests get 413. Default `"1MiB"`.
    pub max_request_bytes: ByteSize,
    /// `max_response_bytes`: largest response stored; a larger one is sent but not stored (the
    /// key is released and a WARN logged). Default `"1MiB"`.
    pub max_response_bytes: ByteSize,
    /// `release_on_server_error`: a 5xx (or panic, or cancelled request) frees the key so the
    /// client can retry. Default `true`; with `false` 5xx responses are replayed like others.
    pub release_on_server_error: bool,
    /// `stored_headers`: the response headers replayed. Default
    /// `["content-type", "location", "etag"]`.
    pub stored_headers: Vec<String>,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            methods: vec!["POST".into(), "PATCH".into()],
            required: true,
            header: "idempotency-key".into(),
            max_key_length: 255,
            namespace: None,
            require_identity: false,
            lease: Duration::from_secs(60),
            ttl: Duration::from_secs(24 * 3600),
            max_request_bytes: ByteSize::mib(1),
            max_response_bytes: ByteSize::mib(1),
            release_on_server_error: true,
            stored_headers: vec!["content-type".into(), "location".into(), "etag".into()],
        }
    }
}

impl IdempotencyConfig {
    /// The defaults with `namespace` as the prefix of every key: the service's name.
    ///
    /// ```
    /// let config = chassis::idempotency::IdempotencyConfig::default().with_namespace("orders").requiring_identity();
    /// assert_eq!(config.namespace.as_deref(), Some("orders"));
    /// assert!(config.require_identity);
    /// ```
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Answers requests without an identity `401` (`require_identity`).
    pub fn requiring_identity(mut self) -> Self {
        self.require_identity = true;
        self
    }
}

impl Validate for IdempotencyConfig {
    fn validate(&self, problems: &mut Problems) {
        for method in &self.methods {
            problems.check(
                Method::from_bytes(method.as_bytes()).is_ok(),
                "methods",
                format!("{method:?} is not an HTTP method"),
            );
        }
        problems.check(
            HeaderName::try_from(self.header.as_str()).is_ok(),
            "header",
            "must be a valid header name",
        );
        problems.check(self.max_key_length > 0, "max_key_length", "must be at least 1");
        problems.check(!self.lease.is_zero(), "lease", "must be greater than zero");
        problems.check(self.ttl >= self.lease, "ttl", "must be at least the lease");
    }
}

struct Shared {
    store: Arc<dyn IdempotencyStore>,
    /// In transactional mode, the store whose database the handler's transaction is opened in.
    #[cfg(feature = "postgres")]
    transactional: Option<super::PostgresStore>,
    config: IdempotencyConfig,
    methods: Vec<Method>,
    header: HeaderName,
    stored_headers: Vec<HeaderName>,
}

/// Makes POST and PATCH (by default) safe to repeat, per the IETF Idempotency-Key draft.
///
/// | request | answer |
/// |---|---|
/// | first with a key | handled; the response stored |
/// | same key and payload, after completion | the stored response, `Idempotent-Replayed: true`, handler not called |
/// | same key, first still running | 409 `idempotency-key-in-use`, `Retry-After` |
/// | same key, different payload | 422 `idempotency-key-reused` |
/// | no key (when required) | 400 `idempotency-key-missing` |
/// | empty, too long or non-ASCII key | 400 `idempotency-key-invalid` |
/// | store unreachable | 503 `idempotency-store-unavailable` (the handler is not run unguarded) |
///
/// Add it to the routes that change state:
///
/// ```
/// use std::sync::Arc;
/// use axum::{Router, routing::post};
/// use chassis::idempotency::{IdempotencyLayer, MemoryStore};
///
/// let layer = IdempotencyLayer::new(Arc::new(MemoryStore::default()), Default::default()).unwrap();
/// let app: Router = Router::new().route("/payments", post(|| async { "paid" })).layer(layer);
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("store", &self.shared.store.name())
            .field("config", &self.shared.config)
            .finish()
    }
}

impl IdempotencyLayer {
    /// A layer keeping keys in `store`, or the problems with `config`.
    pub fn new(store: Arc<dyn IdempotencyStore>, config: IdempotencyConfig) -> Result<Self, ConfigError> {
        Self::build(store, config, None)
    }

    /// A layer keeping keys in PostgreSQL whose handlers write their effect in the same
    /// transaction as the stored response: a request either committed (its retry is replayed)
    /// or left nothing behind (its retry runs it), whether it was cancelled, its process died,
    /// or the database failed midway. Handlers take the transaction as an extractor,
    /// [`Transaction`](crate::storage::Transaction); a 5xx answer (with
    /// `release_on_server_error`) rolls it back.
    ///
    /// The key is claimed in that transaction too, so nothing outlives a request that did not
    /// commit: no lease to wait out after a crash. A concurrent request with the same key waits
    /// up to a second for the first to end (then replays its response, or runs if it rolled
    /// back), and answers 409 after that.
    ///
    /// ```no_run
    /// # async fn demo(ctx: chassis::Context<()>) -> chassis::Result<axum::Router> {
    /// use axum::{Router, routing::post};
    /// use chassis::idempotency::{IdempotencyLayer, PostgresStore};
    /// use chassis::storage::Transaction;
    ///
    /// async fn pay(tx: Transaction) -> Result<&'static str, http::StatusCode> {
    ///     let mut connection = tx.lock().await.map_err(|_| http::StatusCode::INTERNAL_SERVER_ERROR)?;
    ///     sqlx::query("INSERT INTO payments DEFAULT VALUES")
    ///         .execute(&mut *connection)
    ///         .await
    ///         .map_err(|_| http::StatusCode::SERVICE_UNAVAILABLE)?;
    ///     Ok("paid")
    /// }
    ///
    /// let store = PostgresStore::from_pool(ctx.postgres()?.clone());
    /// let layer = IdempotencyLayer::transactional(store, Default::default())?;
    /// Ok(Router::new().route("/payments", post(pay)).layer(layer))
    /// # }
    /// ```
    ///
    /// Needs the cargo feature `postgres`.
    #[cfg(feature = "postgres")]
    pub fn transactional(store: super::PostgresStore, config: IdempotencyConfig) -> Result<Self, ConfigError> {
        Self::build(Arc::new(store.clone()), config, Some(store))
    }

    fn build(
        store: Arc<dyn IdempotencyStore>,
        config: IdempotencyConfig,
        #[cfg_attr(not(feature = "postgres"), allow(unused_variables))] transactional: Option<TransactionalStore>,
    ) -> Result<Self, ConfigError> {
        crate::config::validate("idempotency", &config)?;
        let parse = |name: &str| HeaderName::try_from(name.to_ascii_lowercase()).expect("validated");
        Ok(Self {
            shared: Arc::new(Shared {
                methods: config
                    .methods
                    .iter()
                    .map(|m| Method::from_bytes(m.as_bytes()).expect("validated"))
                    .collect(),
                header: parse(&config.header),
                stored_headers: config
                    .stored_headers
                    .iter()
                    .filter_map(|h| HeaderName::try_from(h.to_ascii_lowercase()).ok())
                    .collect(),
                store,
                #[cfg(feature = "postgres")]
                transactional,
                config,
            }),
        })
    }
}

#[cfg(feature = "postgres")]
type TransactionalStore = super::PostgresStore;
#[cfg(not(feature = "postgres"))]
type TransactionalStore = std::convert::Infallible;

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`IdempotencyLayer`].
#[derive(Clone)]
pub struct Idempotency<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> std::fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency").finish_non_exhaustive()
    }
}

fn count(outcome: &'static str) {
    metrics::counter!(REQUESTS_TOTAL, "outcome" => outcome).increment(1);
}

fn reject(status: StatusCode, name: &str, title: &str, detail: String) -> Response {
    count("rejected");
    Problem::new(status, name, title).with_detail(detail).into_response()
}

/// The key from the header: a structured-field string (`"abc"`, as the draft writes it) or,
/// for compatibility, a bare token (`abc`, as most APIs accept).
fn parse_key(value: &HeaderValue, max: usize) -> Result<String, &'static str> {
    let raw = value.to_str().map_err(|_| "must be visible ASCII")?.trim();
    let key = match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(quoted) => quoted,
        None => raw,
    };
    if key.is_empty() {
        return Err("must not be empty");
    }
    if key.len() > max {
        return Err("is too long");
    }
    if !key
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err("must be visible ASCII without quotes or backslashes");
    }
    Ok(key.to_owned())
}

/// Whether reading a body failed because it was over the limit (and not cut or malformed).
fn too_large(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = cause.source();
    }
    false
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Frees the claim if the request ends any way other than through `complete` or `release`
/// (a panic unwinding through, the client going away).
struct ClaimGuard {
    store: Arc<dyn IdempotencyStore>,
    key: String,
    token: String,
    armed: bool,
}

impl ClaimGuard {
    async fn release(mut self) {
        self.armed = false;
        if let Err(error) = self.store.release(&self.key, &self.token).await {
            tracing::warn!(%error, "releasing an idempotency key failed; it frees itself when its lease ends");
        }
    }

    async fn complete(mut self, response: &StoredResponse, ttl: Duration) {
        self.armed = false;
        if let Err(error) = self.store.complete(&self.key, &self.token, response, ttl).await {
            tracing::warn!(%error, "storing an idempotent response failed; a retry will run the request again after the lease");
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (store, key, token) = (
            self.store.clone(),
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(
                async move {
                    let _ = store.release(&key, &token).await;
                }
                .with_current_context(),
            );
        }
    }
}

impl<S> Service<Request<Body>> for Idempotency<S>
where
    S: Service<Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let inner: BoxFuture<'static, Result<Response, S::Error>> = if self.shared.methods.contains(request.method()) {
            Box::pin(guarded(inner, self.shared.clone(), request))
        } else {
            Box::pin(inner.oneshot(request))
        };
        ResponseFuture { inner }
    }
}

/// The response future of [`Idempotency`]: the request, guarded by its key.
pub struct ResponseFuture<E> {
    inner: BoxFuture<'static, Result<Response, E>>,
}

impl<E> std::fmt::Debug for ResponseFuture<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<E> Future for ResponseFuture<E> {
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

async fn guarded<S>(inner: S, shared: Arc<Shared>, request: Request<Body>) -> Result<Response, S::Error>
where
    S: Service<Request<Body>, Response = Response>,
{
    let config = &shared.config;
    let identity = request.extensions().get::<crate::identity::Identity>();
    if identity.is_none() && config.require_identity {
        count("rejected");
        return Ok(crate::identity::required());
    }
    let scope = identity.map_or_else(|| "-".to_owned(), |identity| identity.scope());
    let key = match request.headers().get(&shared.header) {
        None if config.required => {
            return Ok(reject(
                StatusCode::BAD_REQUEST,
                "idempotency-key-missing",
                "Idempotency-Key required",
                format!(
                    "{} {} needs an {} header",
                    request.method(),
                    request.uri().path(),
                    shared.header
                ),
            ));
        }
        None => return inner.oneshot(request).await,
        Some(value) => match parse_key(value, config.max_key_length) {
            Ok(key) => key,
            Err(problem) => {
                return Ok(reject(
                    StatusCode::BAD_REQUEST,
                    "idempotency-key-invalid",
                    "Invalid Idempotency-Key",
                    format!(
                        "the {} header {problem} (at most {} characters)",
                        shared.header, config.max_key_length
                    ),
                ));
            }
        },
    };
    let store_key = match &config.namespace {
        Some(namespace) => format!("{namespace}:{scope}:{key}"),
        None => format!("{scope}:{key}"),
    };

    let (parts, body) = request.into_parts();
    let limit = config.max_request_bytes.as_usize();
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(error) if too_large(&error) => {
            return Ok(reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
                format!("idempotent requests are limited to {} bytes", config.max_request_bytes),
            ));
        }
        Err(error) => {
            return Ok(reject(
                StatusCode::BAD_REQUEST,
                "body-unreadable",
                "The request body could not be read",
                format!("the body ended early or is malformed: {error}"),
            ));
        }
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update(b"\n");
    hasher.update(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
    hasher.update(b"\n");
    hasher.update(&body);
    let fingerprint = hex(&hasher.finalize());

    #[cfg(feature = "postgres")]
    if let Some(store) = &shared.transactional {
        let request = Request::from_parts(parts, Body::from(body));
        return transactional(inner, &shared, store, request, &key, store_key, &fingerprint).await;
    }
    let guard = match claim(&shared, store_key, fingerprint, &key).await {
        ControlFlow::Continue(guard) => guard,
        ControlFlow::Break(answer) => return Ok(answer),
    };
    count("new");
    let request = Request::from_parts(parts, Body::from(body));
    let response = inner.oneshot(request).await?;
    if response.status().is_server_error() && config.release_on_server_error {
        guard.release().await;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let limit = config.max_response_bytes.as_usize();
    let (collected, rest) = collect_up_to(body, limit).await;
    let Some(rest) = rest else {
        let stored = stored(&shared, &parts, &collected);
        guard.complete(&stored, config.ttl).await;
        return Ok(Response::from_parts(parts, Body::from(collected)));
    };
    tracing::warn!(
        idempotency_key = %key,
        limit = limit,
        "response larger than idempotency.max_response_bytes: sent but not stored; a retry runs the request again"
    );
    guard.release().await;
    let stream =
        futures_util::stream::once(async move { Ok::<_, axum::Error>(collected) }).chain(rest.into_data_stream());
    Ok(Response::from_parts(parts, Body::from_stream(stream)))
}

/// Claims `store_key` in a task of its own, so a request cancelled while the store is
/// answering cannot leave a claim nobody releases: the claim comes back to the task, whose
/// guard releases it. The task runs in the request's trace context, so the store's spans are
/// children of the request's.
async fn claim(
    shared: &Shared,
    store_key: String,
    fingerprint: String,
    key: &str,
) -> ControlFlow<Response, ClaimGuard> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let (store, lease) = (shared.store.clone(), shared.config.lease);
    tokio::spawn(
        async move {
            let claimed = match store.begin(&store_key, &fingerprint, lease).await {
                Ok(Begin::Claimed { token }) => Ok(ClaimGuard {
                    store,
                    key: store_key,
                    token,
                    armed: true,
                }),
                other => Err(other),
            };
            // Sent back to a request that is gone, the guard is dropped here and releases the key.
            let _ = sender.send(claimed);
        }
        .with_current_context(),
    );
    match receiver.await {
        Ok(Ok(guard)) => ControlFlow::Continue(guard),
        Ok(Err(begun)) => ControlFlow::Break(
            claimed(begun, key)
                .break_value()
                .unwrap_or_else(|| store_unavailable(&"the store answered a claim without a token")),
        ),
        Err(_) => ControlFlow::Break(store_unavailable(&"the store's claim panicked")),
    }
}

/// The claim's token, or the answer when the key is not this request's to run: the stored
/// response, 409 while another request holds it, 422 for another request under the same key,
/// 503 when the store failed.
fn claimed(begun: Result<Begin, super::StoreError>, key: &str) -> ControlFlow<Response, String> {
    ControlFlow::Break(match begun {
        Ok(Begin::Claimed { token }) => return ControlFlow::Continue(token),
        Err(error) => store_unavailable(&error),
        Ok(Begin::Completed(stored)) => {
            count("replayed");
            tracing::info!(idempotency_key = %key, status = stored.status, "replaying the stored response");
            replay(stored)
        }
        Ok(Begin::InFlight { lease_left }) => {
            count("conflict");
            tracing::info!(idempotency_key = %key, "request with this key still in flight");
            Problem::new(
                StatusCode::CONFLICT,
                "idempotency-key-in-use",
                "Request with this Idempotency-Key in progress",
            )
            .with_detail("a request with the same key is still being processed; retry after it completes")
            .with_retry_after(lease_left.clamp(Duration::from_secs(1), Duration::from_secs(5)))
            .into_response()
        }
        Ok(Begin::Mismatch) => {
            count("mismatch");
            tracing::warn!(idempotency_key = %key, "idempotency key reused with a different request");
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused with a different request",
            )
            .with_detail("this key was used for a request with another method, path or body; use a new key")
            .into_response()
        }
    })
}

/// How long a transactional request waits for a concurrent one with the same key to end
/// before answering 409.
#[cfg(feature = "postgres")]
const CONCURRENT_WAIT: Duration = Duration::from_secs(1);

/// A request in transactional mode: the key is claimed in the transaction the handler writes
/// its effect in, and the stored response is written there too; all of it commits together or
/// none of it does.
#[cfg(feature = "postgres")]
async fn transactional<S>(
    inner: S,
    shared: &Shared,
    store: &super::PostgresStore,
    request: Request<Body>,
    key: &str,
    store_key: String,
    fingerprint: &str,
) -> Result<Response, S::Error>
where
    S: Service<Request<Body>, Response = Response>,
{
    let mut transaction = match store.pool().begin().await {
        Ok(transaction) => transaction,
        Err(error) => return Ok(store_unavailable(&error)),
    };
    let begun = store
        .claim_in(
            &mut transaction,
            &store_key,
            fingerprint,
            CONCURRENT_WAIT,
            shared.config.lease,
        )
        .await;
    let token = match claimed(begun, key) {
        ControlFlow::Continue(token) => token,
        // Dropping the transaction rolls it back.
        ControlFlow::Break(answer) => return Ok(answer),
    };
    count("new");
    let transaction = crate::storage::Transaction::new(transaction);
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(transaction.clone());
    let response = inner.oneshot(Request::from_parts(parts, body)).await?;
    let transaction = transaction.finish().await;
    Ok(commit(shared, store, &store_key, &token, key, transaction, response).await)
}

/// The response as it is kept for replay.
fn stored(shared: &Shared, parts: &http::response::Parts, body: &Bytes) -> StoredResponse {
    StoredResponse {
        status: parts.status.as_u16(),
        headers: shared
            .stored_headers
            .iter()
            .filter_map(|name| {
                parts
                    .headers
                    .get(name)
                    .map(|v| (name.as_str().to_owned(), v.as_bytes().to_vec()))
            })
            .collect(),
        body: body.to_vec(),
    }
}

fn store_unavailable(error: &dyn std::fmt::Display) -> Response {
    count("unavailable");
    tracing::error!(%error, "idempotency store unavailable; refusing the request rather than risking a double execution");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "idempotency-store-unavailable",
        "Idempotency store unavailable",
    )
    .with_detail("the request was not processed; retry it with the same Idempotency-Key")
    .with_retry_after(Duration::from_secs(1))
    .into_response()
}

/// Finishes a transactional request: the stored response is written in the handler's
/// transaction and both commit, or the transaction is rolled back, taking the claim with it.
#[cfg(feature = "postgres")]
async fn commit(
    shared: &Shared,
    store: &super::PostgresStore,
    store_key: &str,
    token: &str,
    key: &str,
    transaction: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
    response: Response,
) -> Response {
    let config = &shared.config;
    let Some(mut transaction) = transaction else {
        // Not reachable: only this layer finishes the transaction it opened.
        return Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error").into_response();
    };
    if response.status().is_server_error() && config.release_on_server_error {
        let _ = transaction.rollback().await;
        return response;
    }
    let (parts, body) = response.into_parts();
    let limit = config.max_response_bytes.as_usize();
    let (collected, rest) = collect_up_to(body, limit).await;
    if rest.is_some() {
        // The effect cannot commit without a record a retry could replay.
        let _ = transaction.rollback().await;
        tracing::error!(
            idempotency_key = %key,
            limit,
            "response larger than idempotency.max_response_bytes: rolled back, nothing was done"
        );
        return Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error").into_response();
    }
    let record = stored(shared, &parts, &collected);
    let committed = async {
        let current = store
            .complete_in(&mut transaction, store_key, token, &record, config.ttl)
            .await?;
        if !current {
            return Err(super::StoreError::new(
                "postgres",
                "the claim was not found in the request's own transaction",
            ));
        }
        transaction
            .commit()
            .await
            .map_err(|e| super::StoreError::new("postgres", e))
    }
    .await;
    match committed {
        Ok(()) => Response::from_parts(parts, Body::from(collected)),
        Err(error) => store_unavailable(&error),
    }
}

use futures_util::StreamExt as _;

/// Reads `body` until it ends (`(all, None)`) or passes `limit` (`(prefix, Some(rest))`).
async fn collect_up_to(mut body: Body, limit: usize) -> (Bytes, Option<Body>) {
    let mut collected = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            break;
        };
        if let Ok(data) = frame.into_data() {
            collected.extend_from_slice(&data);
            if collected.len() > limit {
                return (collected.freeze(), Some(body));
            }
        }
    }
    (collected.freeze(), None)
}

fn replay(stored: StoredResponse) -> Response {
    let mut response = Response::new(Body::from(stored.body));
    *response.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    for (name, value) in stored.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_bytes(&value)) {
            headers.append(name, value);
        }
    }
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sf_strings_or_bare_tokens() {
        let parse = |v: &'static str| parse_key(&HeaderValue::from_static(v), 255);
        assert_eq!(parse("\"8e03978e-40d5-43e8\""), Ok("8e03978e-40d5-43e8".into()));
        assert_eq!(parse("abc-123"), Ok("abc-123".into()));
        assert!(parse("\"\"").is_err());
        assert!(parse("a b").is_err());
        assert!(parse_key(&HeaderValue::from_str(&"k".repeat(256)).unwrap(), 255).is_err());
    }
}
