//! Who a request is from: an API key, compared in constant time, or an HS256 JWT whose time
//! claims are checked with a small leeway. A refusal says what to fix without the verifier's
//! internals.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chassis::config::Secret;
use chassis::http::Problem;
use chassis::identity::Identity;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use ring::hmac;
use serde::Deserialize;

/// `[jwt]`: HS256 bearer tokens signed with one of `secrets`. Tokens must carry `sub` and
/// `exp`; `nbf` is checked when present, `iss` and `aud` when configured. No secrets: bearer
/// tokens are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// `secrets`: HMAC keys; more than one during a rotation. Each a string or
    /// `{ file = "path" }`; from the environment as a JSON list,
    /// `APP__JWT__SECRETS='["one","two"]'`.
    pub secrets: Vec<Secret>,
    /// `issuer`: the required `iss`.
    pub issuer: Option<String>,
    /// `audience`: the required `aud`.
    pub audience: Option<String>,
    /// `leeway`: how far `exp` and `nbf` may be off, for clocks that differ. Default `"5s"`.
    #[serde(with = "chassis::config::duration")]
    pub leeway: Duration,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// The longest `sub` accepted.
const MAX_SUBJECT: usize = 256;

pub(crate) struct Authenticator {
    /// Each client's key as an HMAC tag under a key of this process: comparing tags with
    /// `hmac::verify` takes the same time whatever the presented key has in common with them.
    api_keys: Vec<(String, hmac::Tag)>,
    tagging: hmac::Key,
    jwt_keys: Vec<DecodingKey>,
    validation: Validation,
}

/// Why a request is not authenticated: what the client is told.
struct Refusal(&'static str);

impl Authenticator {
    pub(crate) fn new(api_keys: &BTreeMap<String, Secret>, jwt: &JwtSettings) -> chassis::Result<Self> {
        let rng = ring::rand::SystemRandom::new();
        let tagging = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| chassis::Error::msg("no randomness"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = jwt.leeway.as_secs();
        if let Some(issuer) = &jwt.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &jwt.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Ok(Self {
            api_keys: api_keys
                .iter()
                .map(|(client, key)| (client.clone(), hmac::sign(&tagging, key.expose().as_bytes())))
                .collect(),
            tagging,
            jwt_keys: jwt
                .secrets
                .iter()
                .map(|s| DecodingKey::from_secret(s.expose().as_bytes()))
                .collect(),
            validation,
        })
    }

    fn api_key(&self, presented: &HeaderValue) -> Result<Identity, Refusal> {
        // Every configured key is compared, so the time taken does not tell which one is close.
        let mut found = None;
        for (client, tag) in &self.api_keys {
            if hmac::verify(&self.tagging, presented.as_bytes(), tag.as_ref()).is_ok() {
                found = Some(client);
            }
        }
        found
            .map(Identity::new)
            .ok_or(Refusal("the x-api-key is not one of the configured keys"))
    }

    fn bearer(&self, authorization: &HeaderValue) -> Result<Identity, Refusal> {
        let token = authorization
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Refusal("the Authorization header must be \"Bearer <token>\""))?;
        if self.jwt_keys.is_empty() {
            return Err(Refusal("bearer tokens are not accepted here"));
        }
        let mut refusal = Refusal("the token's signature is not valid");
        for key in &self.jwt_keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => {
                    let sub = data.claims.sub;
                    if sub.is_empty() || sub.len() > MAX_SUBJECT || sub.chars().any(char::is_control) {
                        return Err(Refusal(
                            "the token's sub must be 1 to 256 characters without control characters",
                        ));
                    }
                    return Ok(Identity::new("jwt").with_subject(sub));
                }
                Err(error) => {
                    refusal = match error.kind() {
                        ErrorKind::InvalidSignature => continue,
                        ErrorKind::ExpiredSignature => Refusal("the token has expired"),
                        ErrorKind::ImmatureSignature => Refusal("the token is not valid yet (nbf)"),
                        ErrorKind::InvalidIssuer => Refusal("the token's issuer is not accepted"),
                        ErrorKind::InvalidAudience => Refusal("the token's audience is not accepted"),
                        ErrorKind::MissingRequiredClaim(_) => Refusal("the token must carry sub and exp"),
                        ErrorKind::InvalidAlgorithm => Refusal("the token must be signed with HS256"),
                        _ => Refusal("the token is malformed"),
                    };
                    break;
                }
            }
        }
        Err(refusal)
    }

    /// The client's identity, or why it has none.
    fn identify(&self, headers: &HeaderMap) -> Result<Identity, Refusal> {
        if let Some(key) = headers.get("x-api-key") {
            return self.api_key(key);
        }
        match headers.get(header::AUTHORIZATION) {
            Some(authorization) => self.bearer(authorization),
            None => Err(Refusal("send an x-api-key header or an Authorization: Bearer token")),
        }
    }
}

/// Authenticates the request and makes the client its [`Identity`]; answers 401 otherwise.
pub(crate) async fn authenticate(State(auth): State<Arc<Authenticator>>, mut request: Request, next: Next) -> Response {
    match auth.identify(request.headers()) {
        Ok(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Err(Refusal(reason)) => {
            tracing::debug!(%reason, "request refused: not authenticated");
            let mut response = Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication required")
                .with_detail(reason)
                .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
    }
}
