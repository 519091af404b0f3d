//! The identity header's value: `v1;c=<client>;s=<subject>;t=<signed at>;sig=<HMAC-SHA256>`,
//! fields percent-encoded, the signature over everything before `;sig=`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use ring::hmac;

use super::{Identity, IdentityConfig};
use crate::config::{ConfigError, Problems};

/// Why an identity header is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidIdentity {
    /// Not of the form the gateway writes.
    #[error("the identity header is malformed: {0}")]
    Malformed(&'static str),
    /// No signature, or one made with none of the configured secrets.
    #[error("the identity header's signature is missing or wrong")]
    BadSignature,
    /// Signed longer ago than `identity.max_age`, or in the future.
    #[error("the identity header was signed {0} seconds from now, outside identity.max_age")]
    Expired(i64),
    /// This service has no secret and does not accept unsigned identities.
    #[error("this service trusts no identity header: set identity.secrets (the gateway's) or identity.accept_unsigned")]
    Untrusted,
}

/// How far a signature may be in the future: the gateway's and the service's clocks differ.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

fn keys(config: &IdentityConfig) -> Vec<hmac::Key> {
    config
        .secrets
        .iter()
        .map(|secret| hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()))
        .collect()
}

/// Percent-encodes everything but unreserved characters (RFC 3986), so any client id or
/// subject, newlines and separators included, travels intact and unambiguous.
pub(super) fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => encoded.push(byte as char),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    encoded
}

fn decode(text: &str) -> Result<String, InvalidIdentity> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .ok_or(InvalidIdentity::Malformed("a cut percent escape"))?;
            decoded.push(u8::from_str_radix(hex, 16).map_err(|_| InvalidIdentity::Malformed("a bad percent escape"))?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| InvalidIdentity::Malformed("a field that is not UTF-8"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unix_seconds(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    }
}

/// Signs identities for the header, at the gateway.
#[derive(Clone)]
pub struct IdentitySigner {
    key: hmac::Key,
    header: http::HeaderName,
}

impl std::fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySigner")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl IdentitySigner {
    /// A signer with the first of `config.secrets`; an error when there is none.
    pub fn new(config: &IdentityConfig) -> Result<Self, ConfigError> {
        crate::config::validate("identity", config)?;
        let Some(key) = keys(config).into_iter().next() else {
            let mut problems = Problems::default();
            problems.push(
                "identity.secrets",
                "is empty; the gateway signs identities with the first secret, shared with the services",
            );
            return Err(problems.into_result().expect_err("a problem was pushed"));
        };
        Ok(Self {
            key,
            header: config.header_name(),
        })
    }

    /// The header identities travel in.
    pub fn header(&self) -> &http::HeaderName {
        &self.header
    }

    /// The header value for `identity`, signed now.
    pub fn header_value(&self, identity: &Identity) -> HeaderValue {
        self.header_value_at(identity, SystemTime::now())
    }

    /// The header value for `identity`, signed as of `at`.
    pub fn header_value_at(&self, identity: &Identity, at: SystemTime) -> HeaderValue {
        let mut text = format!("v1;c={}", encode(&identity.client));
        if let Some(subject) = &identity.subject {
            text.push_str(";s=");
            text.push_str(&encode(subject));
        }
        text.push_str(&format!(";t={}", unix_seconds(at)));
        let signature = hmac::sign(&self.key, text.as_bytes());
        text.push_str(";sig=");
        text.push_str(&hex(signature.as_ref()));
        HeaderValue::try_from(text).expect("percent-encoded fields are visible ASCII")
    }

    /// Removes every value of the identity header from `headers`: what a client sends is never
    /// forwarded.
    pub fn strip(&self, headers: &mut http::HeaderMap) {
        while headers.remove(&self.header).is_some() {}
    }
}

/// Checks identity headers, in the services.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<hmac::Key>,
    max_age: Duration,
    accept_unsigned: bool,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.keys.len())
            .field("max_age", &self.max_age)
            .field("accept_unsigned", &self.accept_unsigned)
            .finish()
    }
}

impl Verifier {
    /// A verifier of `config`'s secrets, or its problems.
    pub fn new(config: &IdentityConfig) -> Result<Self, ConfigError> {
        crate::config::validate("identity", config)?;
        Ok(Self {
            keys: keys(config),
            max_age: config.max_age,
            accept_unsigned: config.accept_unsigned,
        })
    }

    /// The identity in `value`, checked now.
    pub fn verify(&self, value: &HeaderValue) -> Result<Identity, InvalidIdentity> {
        self.verify_at(value, SystemTime::now())
    }

    /// The identity in `value`, checked as of `now`.
    pub fn verify_at(&self, value: &HeaderValue, now: SystemTime) -> Result<Identity, InvalidIdentity> {
        if self.keys.is_empty() && !self.accept_unsigned {
            return Err(InvalidIdentity::Untrusted);
        }
        let text = value
            .to_str()
            .map_err(|_| InvalidIdentity::Malformed("not visible ASCII"))?;
        let (signed, signature) = match text.rsplit_once(";sig=") {
            Some((signed, signature)) => (signed, Some(signature)),
            None => (text, None),
        };
        if !self.keys.is_empty() {
            let signature = signature.and_then(unhex).ok_or(InvalidIdentity::BadSignature)?;
            // Constant time, whichever key matches.
            let valid = self.keys.iter().fold(false, |valid, key| {
                hmac::verify(key, signed.as_bytes(), &signature).is_ok() | valid
            });
            if !valid {
                return Err(InvalidIdentity::BadSignature);
            }
        }
        let mut fields = signed.split(';');
        if fields.next() != Some("v1") {
            return Err(InvalidIdentity::Malformed("not a v1 identity"));
        }
        let (mut client, mut subject, mut signed_at) = (None, None, None);
        for field in fields {
            match field.split_once('=') {
                Some(("c", value)) => client = Some(decode(value)?),
                Some(("s", value)) => subject = Some(decode(value)?),
                Some(("t", value)) => {
                    signed_at = Some(
                        value
                            .parse::<i64>()
                            .map_err(|_| InvalidIdentity::Malformed("a bad time"))?,
                    )
                }
                _ => return Err(InvalidIdentity::Malformed("an unknown field")),
            }
        }
        let client = client
            .filter(|c| !c.is_empty())
            .ok_or(InvalidIdentity::Malformed("no client"))?;
        if !self.keys.is_empty() {
            let signed_at = signed_at.ok_or(InvalidIdentity::Malformed("no time"))?;
            let age = unix_seconds(now) - signed_at;
            if age > self.max_age.as_secs() as i64 || -age > CLOCK_SKEW.as_secs() as i64 {
                return Err(InvalidIdentity::Expired(-age));
            }
        }
        Ok(Identity { client, subject })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn pair() -> (IdentitySigner, Verifier) {
        let config = IdentityConfig::signed_with(SECRET);
        (IdentitySigner::new(&config).unwrap(), Verifier::new(&config).unwrap())
    }

    #[test]
    fn any_client_and_subject_travel_intact() {
        let (signer, verifier) = pair();
        for (client, subject) in [
            ("api-key-0", None),
            ("web app;c=x", Some("alice\nbob")),
            ("ü", Some("%41")),
        ] {
            let mut identity = Identity::new(client);
            if let Some(subject) = subject {
                identity = identity.with_subject(subject);
            }
            assert_eq!(verifier.verify(&signer.header_value(&identity)).unwrap(), identity);
        }
        assert_ne!(
            Identity::new("a/b").scope(),
            Identity::new("a").with_subject("b").scope(),
            "scopes never collide"
        );
    }

    #[test]
    fn a_changed_field_or_another_key_breaks_the_signature() {
        let (signer, verifier) = pair();
        let value = signer
            .header_value(&Identity::new("alice"))
            .to_str()
            .unwrap()
            .replace("c=alice", "c=mallory");
        assert_eq!(
            verifier.verify(&HeaderValue::try_from(value).unwrap()),
            Err(InvalidIdentity::BadSignature)
        );
        let other = IdentitySigner::new(&IdentityConfig::signed_with("another secret of thirty-two bytes!")).unwrap();
        assert_eq!(
            verifier.verify(&other.header_value(&Identity::new("alice"))),
            Err(InvalidIdentity::BadSignature)
        );
        assert_eq!(
            verifier.verify(&HeaderValue::from_static("v1;c=alice;t=0")),
            Err(InvalidIdentity::BadSignature),
            "an unsigned header is refused where secrets are set"
        );
    }

    #[test]
    fn old_signatures_expire_and_rotated_keys_verify() {
        let (signer, verifier) = pair();
        let now = SystemTime::now();
        let old = signer.header_value_at(&Identity::new("alice"), now - Duration::from_secs(301));
        assert!(matches!(
            verifier.verify_at(&old, now),
            Err(InvalidIdentity::Expired(_))
        ));
        let future = signer.header_value_at(&Identity::new("alice"), now + Duration::from_secs(120));
        assert!(matches!(
            verifier.verify_at(&future, now),
            Err(InvalidIdentity::Expired(_))
        ));

        let mut rotated = IdentityConfig::signed_with("the new secret, thirty-two bytes long");
        rotated.secrets.push(crate::config::Secret::new(SECRET));
        let verifier = Verifier::new(&rotated).unwrap();
        assert!(verifier.verify(&signer.header_value(&Identity::new("alice"))).is_ok());
    }

    #[test]
    fn without_secrets_only_accept_unsigned_trusts_the_header() {
        let value = HeaderValue::from_static("v1;c=alice;s=bob");
        let strict = Verifier::new(&IdentityConfig::default()).unwrap();
        assert_eq!(strict.verify(&value), Err(InvalidIdentity::Untrusted));
        let config = IdentityConfig {
            accept_unsigned: true,
            ..Default::default()
        };
        let lax = Verifier::new(&config).unwrap();
        assert_eq!(lax.verify(&value).unwrap(), Identity::new("alice").with_subject("bob"));
    }

    #[test]
    fn short_secrets_are_refused() {
        let error = Verifier::new(&IdentityConfig::signed_with("short"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("identity.secrets[0]") && error.contains("at least 32"),
            "{error}"
        );
    }
}
