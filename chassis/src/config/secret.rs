//! [`Secret`]: a value that must not appear in logs, given inline or read from a file.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A secret setting: an inline string, or `{ file = "path" }` to read it from a file (a mounted
/// Kubernetes or Docker secret; a trailing newline is dropped). Its `Debug` form hides it.
///
/// ```
/// use chassis::config::Secret;
///
/// #[derive(serde::Deserialize)]
/// struct Settings { token: Secret }
///
/// let path = std::env::temp_dir().join("chassis-secret-doctest");
/// std::fs::write(&path, "s3cret\n").unwrap();
/// let json = format!(r#"{{"token":{{"file":{:?}}}}}"#, path.display().to_string());
/// let settings: Settings = serde_json::from_str(&json).unwrap();
/// assert_eq!(settings.token.expose(), "s3cret");
/// assert_eq!(format!("{:?}", settings.token), "Secret(***)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret with this value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the code that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Inline(String),
            File { file: String },
        }
        match Given::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected a secret: a string, or { file = \"path\" } to read it from a file")
        })? {
            Given::Inline(value) => Ok(Self(value)),
            Given::File { file } => match std::fs::read_to_string(&file) {
                Ok(value) => Ok(Self(value.trim_end_matches(['\r', '\n']).to_owned())),
                Err(error) => Err(serde::de::Error::custom(format!(
                    "cannot read the secret file {file:?}: {error}"
                ))),
            },
        }
    }
}
