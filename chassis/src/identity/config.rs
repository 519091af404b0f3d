//! `[identity]`: the header that carries a request's identity and the secrets that sign it.

use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use crate::config::{Problems, Secret, Validate};

/// `[identity]`: how the gateway forwards who a request is from, and how services trust it.
///
/// ```toml
/// [identity]
/// secrets = [{ file = "/run/secrets/identity" }]   # or a string; the first signs, all verify
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct IdentityConfig {
    /// `header`: the header the identity travels in. The gateway removes it from every
    /// incoming request before it sets its own. Default `"x-chassis-identity"`.
    pub header: String,
    /// `secrets`: HMAC-SHA256 keys shared by the gateway and the services, each at least 32
    /// bytes: the gateway signs with the first, services accept any (so a new key can be
    /// rolled out before the old one is dropped). Each is a string or `{ file = "path" }`.
    /// Default: none, and then a service accepts no identity header (answering `401`) unless
    /// `accept_unsigned` is set.
    pub secrets: Vec<Secret>,
    /// `max_age`: how long after signing an identity is accepted, bounding the replay of a
    /// captured header. Default `"5m"`.
    #[serde(with = "crate::config::duration")]
    pub max_age: Duration,
    /// `accept_unsigned`: trust the header without a signature. Only for services that no
    /// client can reach except through a gateway (or a mesh) that strips and sets it. Default
    /// `false`.
    pub accept_unsigned: bool,
    /// `incoming`: what the inbound stack does with the header of an incoming request:
    /// `"verify"` (default: the services behind a gateway) or `"strip"` (the gateway itself,
    /// which faces clients: their header is removed unread, and the gateway sets its own once it
    /// has authenticated them).
    pub incoming: IncomingIdentity,
}

crate::config::choices! {
    /// What the inbound stack does with an incoming identity header (`identity.incoming`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    #[non_exhaustive]
    pub enum IncomingIdentity {
        /// Verify it and make it the request's identity; answer an invalid one with `401`.
        #[default]
        Verify = "verify",
        /// Remove it unread: the request is anonymous until the service authenticates it.
        Strip = "strip",
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            header: "x-chassis-identity".into(),
            secrets: Vec::new(),
            max_age: Duration::from_secs(300),
            accept_unsigned: false,
            incoming: IncomingIdentity::Verify,
        }
    }
}

impl IdentityConfig {
    /// The defaults, signing and verifying with `secret`.
    pub fn signed_with(secret: impl Into<String>) -> Self {
        Self {
            secrets: vec![Secret::new(secret)],
            ..Self::default()
        }
    }

    pub(crate) fn header_name(&self) -> HeaderName {
        HeaderName::try_from(self.header.to_ascii_lowercase()).expect("validated: a header name")
    }
}

/// The shortest secret accepted: HMAC-SHA256's own output length.
pub(super) const MIN_SECRET_BYTES: usize = 32;

impl Validate for IdentityConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.check(
            HeaderName::try_from(self.header.as_str()).is_ok(),
            "header",
            format!("{:?} is not a header name", self.header),
        );
        for (index, secret) in self.secrets.iter().enumerate() {
            problems.check(
                secret.expose().len() >= MIN_SECRET_BYTES,
                &format!("secrets[{index}]"),
                format!(
                    "is {} bytes long; use at least {MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -hex 32`)",
                    secret.expose().len()
                ),
            );
        }
        problems.check(!self.max_age.is_zero(), "max_age", "must be greater than zero");
    }
}
