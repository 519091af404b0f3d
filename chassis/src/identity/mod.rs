//! Who a request is from, end to end: the gateway authenticates the client and forwards its
//! [`Identity`] in a header it signs; every service behind it verifies the signature and hands
//! the identity to its handlers, its idempotency keys and its rate limits.
//!
//! - The gateway strips the header from every incoming request (a client cannot send its own)
//!   and sets it with [`IdentitySigner::header_value`] once it knows the client.
//! - A service configured with the same `[identity]` secret verifies it in its inbound stack
//!   ([`VerifyIdentityLayer`], which the runtime adds): a valid header becomes the request's
//!   `Identity` extension, an invalid, forged or expired one is answered `401`, and none means
//!   an anonymous request.
//! - Handlers take `Identity` as an extractor: a route that does is answered `401
//!   identity-required` for an anonymous request, never served from a shared scope.
//!
//! ```
//! use chassis::identity::{Identity, IdentityConfig, IdentitySigner, Verifier};
//!
//! let config = IdentityConfig::signed_with("a shared secret of 32 bytes or more");
//! let signer = IdentitySigner::new(&config).unwrap();
//! let header = signer.header_value(&Identity::new("api-key-0").with_subject("alice"));
//!
//! let verifier = Verifier::new(&config).unwrap();
//! let identity = verifier.verify(&header).unwrap();
//! assert_eq!(identity.client(), "api-key-0");
//! assert_eq!(identity.subject(), Some("alice"));
//! ```

mod config;
mod token;
pub mod verify;

pub use config::{IdentityConfig, IncomingIdentity};
pub use token::{IdentitySigner, InvalidIdentity, Verifier};
pub use verify::{VerifyIdentity, VerifyIdentityLayer};

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::problem::Problem;

/// The authenticated client a request is from, as the gateway established it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    client: String,
    subject: Option<String>,
}

impl Identity {
    /// The client `client` (an API key's name, an OAuth client id).
    pub fn new(client: impl Into<String>) -> Self {
        Self {
            client: client.into(),
            subject: None,
        }
    }

    /// The user the client acts for (a JWT's `sub`).
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// The client.
    pub fn client(&self) -> &str {
        &self.client
    }

    /// The user the client acts for, when there is one.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// One string naming this identity, for scoping keys: the client, and the subject when
    /// there is one (`"web-app/alice"`), each part percent-encoded so no two identities share
    /// it.
    pub fn scope(&self) -> String {
        let client = token::encode(&self.client);
        match &self.subject {
            Some(subject) => format!("{client}/{}", token::encode(subject)),
            None => client,
        }
    }
}

/// The answer to a request that needs an identity and has none.
pub(crate) fn required() -> Response {
    Problem::new(StatusCode::UNAUTHORIZED, "identity-required", "Authentication required")
        .with_detail("this route serves authenticated clients only; call it through the gateway with your credentials")
        .into_response()
}

/// The identity of the request, or `401 identity-required` for an anonymous one.
impl<S: Send + Sync> FromRequestParts<S> for Identity {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Identity>().cloned().ok_or_else(required)
    }
}

/// `Option<Identity>`: the identity when the request has one, for routes that serve anonymous
/// clients too.
impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Identity {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Identity>().cloned())
    }
}
